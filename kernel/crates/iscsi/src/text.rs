//! Text keys (RFC 7143 §6 and §13): `key=value\0` parsing with bounds, and
//! the target's side of operational parameter negotiation.

use crate::config::Options;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

/// Longest key name (RFC 7143 §6.1).
pub const MAX_KEY: usize = 63;
/// Longest value we take (CHAP challenges and responses are the long ones).
pub const MAX_VALUE: usize = 8192;
/// Most text accumulated across continued Login / Text PDUs.
pub const MAX_TEXT: usize = 64 * 1024;
/// Most pairs in one negotiation.
pub const MAX_PAIRS: usize = 256;

/// Smallest and largest legal data segment and burst lengths.
pub const MIN_LEN: u32 = 512;
pub const MAX_LEN: u32 = (1 << 24) - 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextError {
    /// A pair without `=`, an empty or overlong key, an overlong value,
    /// non-UTF-8 bytes, or too many pairs.
    Malformed,
}

/// Splits `key=value\0...` text. Trailing NULs (padding) are ignored; the
/// last pair may lack its NUL.
pub fn parse(data: &[u8]) -> Result<Vec<(String, String)>, TextError> {
    let mut out = Vec::new();
    for item in data.split(|&b| b == 0) {
        if item.is_empty() {
            continue;
        }
        let eq = item
            .iter()
            .position(|&b| b == b'=')
            .ok_or(TextError::Malformed)?;
        let (k, v) = (&item[..eq], &item[eq + 1..]);
        if k.is_empty() || k.len() > MAX_KEY || v.len() > MAX_VALUE || out.len() >= MAX_PAIRS {
            return Err(TextError::Malformed);
        }
        let k = core::str::from_utf8(k).map_err(|_| TextError::Malformed)?;
        let v = core::str::from_utf8(v).map_err(|_| TextError::Malformed)?;
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

/// Whether a key appears twice (RFC 7143 §6.2: a negotiation names each
/// key once). Quadratic, but [`parse`] caps the pairs at [`MAX_PAIRS`].
pub fn has_duplicate_keys(pairs: &[(String, String)]) -> bool {
    pairs
        .iter()
        .enumerate()
        .any(|(i, (k, _))| pairs[..i].iter().any(|(k2, _)| k2 == k))
}

/// Encodes pairs as `key=value\0` each.
pub fn encode(pairs: &[(String, String)]) -> Vec<u8> {
    let mut v = Vec::new();
    for (k, val) in pairs {
        v.extend_from_slice(k.as_bytes());
        v.push(b'=');
        v.extend_from_slice(val.as_bytes());
        v.push(0);
    }
    v
}

/// Special answers (RFC 7143 §6.2).
pub const NOT_UNDERSTOOD: &str = "NotUnderstood";
pub const IRRELEVANT: &str = "Irrelevant";
pub const REJECT: &str = "Reject";

/// Parses a numerical value: decimal, or hex with `0x`.
pub fn number(v: &str) -> Option<u64> {
    if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        if h.is_empty() || h.len() > 16 {
            return None;
        }
        return u64::from_str_radix(h, 16).ok();
    }
    if v.is_empty() || v.len() > 20 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

fn boolean(v: &str) -> Option<bool> {
    match v {
        "Yes" => Some(true),
        "No" => Some(false),
        _ => None,
    }
}

fn yes_no(b: bool) -> String {
    if b { "Yes" } else { "No" }.to_string()
}

/// Operational parameters of a session and connection, as negotiated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Params {
    pub header_digest: bool,
    pub data_digest: bool,
    pub max_connections: u32,
    pub initial_r2t: bool,
    pub immediate_data: bool,
    /// What the initiator takes in one PDU: our sending limit.
    pub initiator_mrdsl: u32,
    /// What we take in one PDU (declared by us).
    pub target_mrdsl: u32,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub default_time2wait: u32,
    pub default_time2retain: u32,
    pub max_outstanding_r2t: u32,
    pub data_pdu_in_order: bool,
    pub data_sequence_in_order: bool,
    pub error_recovery_level: u32,
}

impl Default for Params {
    /// RFC 7143 defaults.
    fn default() -> Self {
        Params {
            header_digest: false,
            data_digest: false,
            max_connections: 1,
            initial_r2t: true,
            immediate_data: true,
            initiator_mrdsl: 8192,
            target_mrdsl: 8192,
            max_burst_length: 262_144,
            first_burst_length: 65_536,
            default_time2wait: 2,
            default_time2retain: 20,
            max_outstanding_r2t: 1,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            error_recovery_level: 0,
        }
    }
}

/// What the target wants, from the global options and the node.
#[derive(Clone, Debug)]
pub struct Limits {
    pub require_header_digest: bool,
    pub require_data_digest: bool,
    pub initial_r2t: bool,
    pub immediate_data: bool,
    pub mrdsl: u32,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub default_time2wait: u32,
    pub default_time2retain: u32,
    pub max_outstanding_r2t: u32,
    pub data_pdu_in_order: bool,
    pub data_sequence_in_order: bool,
}

impl Limits {
    pub fn from_options(o: &Options) -> Self {
        let len = |v: u32| v.clamp(MIN_LEN, MAX_LEN);
        Limits {
            require_header_digest: false,
            require_data_digest: false,
            initial_r2t: o.initial_r2t,
            immediate_data: o.immediate_data,
            mrdsl: len(o.max_recv_data_segment_length),
            max_burst_length: len(o.max_burst_length),
            first_burst_length: len(o.first_burst_length).min(len(o.max_burst_length)),
            default_time2wait: o.default_time2wait.min(3600),
            default_time2retain: o.default_time2retain.min(3600),
            max_outstanding_r2t: o.max_outstanding_r2t.clamp(1, 65535),
            data_pdu_in_order: o.data_pdu_in_order,
            data_sequence_in_order: o.data_sequence_in_order,
        }
    }
}

/// Keys negotiated only at login (§13), answered in a Text Request with
/// Reject.
const LOGIN_ONLY: &[&str] = &[
    "HeaderDigest",
    "DataDigest",
    "MaxConnections",
    "InitialR2T",
    "ImmediateData",
    "MaxBurstLength",
    "FirstBurstLength",
    "DefaultTime2Wait",
    "DefaultTime2Retain",
    "MaxOutstandingR2T",
    "DataPDUInOrder",
    "DataSequenceInOrder",
    "ErrorRecoveryLevel",
    "SessionType",
    "InitiatorName",
    "TargetName",
    "AuthMethod",
    "IFMarker",
    "OFMarker",
];

pub fn is_login_only(key: &str) -> bool {
    LOGIN_ONLY.contains(&key)
}

/// Keys that don't apply to discovery sessions (§13: "Irrelevant when:
/// SessionType=Discovery").
const NOT_FOR_DISCOVERY: &[&str] = &[
    "MaxConnections",
    "InitialR2T",
    "ImmediateData",
    "MaxBurstLength",
    "FirstBurstLength",
    "MaxOutstandingR2T",
    "DataPDUInOrder",
    "DataSequenceInOrder",
];

/// Answer to one operational key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Reply with this value.
    Value(String),
    /// Declarative key taken; nothing to reply.
    Silent,
    /// Not an operational key: the caller handles it.
    Unknown,
}

fn digest_list(v: &str, required: bool) -> Option<bool> {
    for item in v.split(',') {
        match item {
            "CRC32C" => return Some(true),
            "None" if !required => return Some(false),
            _ => {}
        }
    }
    None
}

fn range(v: &str, lo: u64, hi: u64) -> Option<u32> {
    number(v)
        .filter(|n| (lo..=hi).contains(n))
        .map(|n| n as u32)
}

/// Negotiates one operational key into `p`.
pub fn negotiate(key: &str, v: &str, p: &mut Params, l: &Limits, discovery: bool) -> Answer {
    use Answer::Value;
    let reject = || Value(REJECT.to_string());
    if discovery && NOT_FOR_DISCOVERY.contains(&key) {
        return Value(IRRELEVANT.to_string());
    }
    match key {
        "HeaderDigest" | "DataDigest" => {
            let req = if key == "HeaderDigest" {
                l.require_header_digest
            } else {
                l.require_data_digest
            };
            match digest_list(v, req) {
                Some(on) => {
                    if key == "HeaderDigest" {
                        p.header_digest = on;
                    } else {
                        p.data_digest = on;
                    }
                    Value(if on { "CRC32C" } else { "None" }.to_string())
                }
                None => reject(),
            }
        }
        "MaxConnections" => match range(v, 1, 65535) {
            Some(_) => {
                p.max_connections = 1;
                Value("1".to_string())
            }
            None => reject(),
        },
        "InitialR2T" | "DataPDUInOrder" | "DataSequenceInOrder" => {
            let Some(b) = boolean(v) else {
                return reject();
            };
            let (ours, field) = match key {
                "InitialR2T" => (l.initial_r2t, &mut p.initial_r2t),
                "DataPDUInOrder" => (l.data_pdu_in_order, &mut p.data_pdu_in_order),
                _ => (l.data_sequence_in_order, &mut p.data_sequence_in_order),
            };
            *field = b || ours;
            Value(yes_no(*field))
        }
        "ImmediateData" | "IFMarker" | "OFMarker" => {
            let Some(b) = boolean(v) else {
                return reject();
            };
            if key == "ImmediateData" {
                p.immediate_data = b && l.immediate_data;
                Value(yes_no(p.immediate_data))
            } else {
                // Markers (RFC 3720) are not supported.
                Value(yes_no(false))
            }
        }
        "IFMarkInt" | "OFMarkInt" => Value(IRRELEVANT.to_string()),
        "MaxRecvDataSegmentLength" => match range(v, MIN_LEN as u64, MAX_LEN as u64) {
            Some(n) => {
                p.initiator_mrdsl = n;
                Answer::Silent
            }
            None => reject(),
        },
        "MaxBurstLength" | "FirstBurstLength" => match range(v, MIN_LEN as u64, MAX_LEN as u64) {
            Some(n) => {
                let n = if key == "MaxBurstLength" {
                    p.max_burst_length = n.min(l.max_burst_length);
                    p.first_burst_length = p.first_burst_length.min(p.max_burst_length);
                    p.max_burst_length
                } else {
                    p.first_burst_length = n.min(l.first_burst_length).min(p.max_burst_length);
                    p.first_burst_length
                };
                Value(n.to_string())
            }
            None => reject(),
        },
        "DefaultTime2Wait" => match range(v, 0, 3600) {
            Some(n) => {
                p.default_time2wait = n.max(l.default_time2wait);
                Value(p.default_time2wait.to_string())
            }
            None => reject(),
        },
        "DefaultTime2Retain" => match range(v, 0, 3600) {
            Some(n) => {
                p.default_time2retain = n.min(l.default_time2retain);
                Value(p.default_time2retain.to_string())
            }
            None => reject(),
        },
        "MaxOutstandingR2T" => match range(v, 1, 65535) {
            Some(n) => {
                p.max_outstanding_r2t = n.min(l.max_outstanding_r2t);
                Value(p.max_outstanding_r2t.to_string())
            }
            None => reject(),
        },
        "ErrorRecoveryLevel" => match range(v, 0, 2) {
            // Only level 0 is implemented.
            Some(_) => {
                p.error_recovery_level = 0;
                Value("0".to_string())
            }
            None => reject(),
        },
        "InitiatorAlias" => Answer::Silent,
        // Declared by the target only.
        "TargetAlias" | "TargetAddress" | "TargetPortalGroupTag" => Value(IRRELEVANT.to_string()),
        _ if key.starts_with("X-") || key.starts_with("X#") => Value(NOT_UNDERSTOOD.to_string()),
        _ => Answer::Unknown,
    }
}

/// `TargetAddress` value for a portal.
pub fn target_address(host: &str, port: u16, tpgt: u32) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port},{tpgt}")
    } else {
        format!("{host}:{port},{tpgt}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(k: &str, v: &str) -> (String, String) {
        (k.into(), v.into())
    }

    #[test]
    fn parse_bounds() {
        assert_eq!(parse(b"A=1\0B=\0\0\0").unwrap(), [p("A", "1"), p("B", "")]);
        assert_eq!(parse(b"A=1").unwrap(), [p("A", "1")]);
        assert_eq!(parse(b"A=b=c\0").unwrap(), [p("A", "b=c")]);
        assert!(parse(b"A\0").is_err());
        assert!(parse(b"=1\0").is_err());
        assert!(parse(&[b'A', b'=', 0xff, 0]).is_err());
        let mut long = alloc::vec![b'K'; 64];
        long.extend(b"=1");
        assert!(parse(&long).is_err());
        let mut big = b"K=".to_vec();
        big.extend(alloc::vec![b'v'; MAX_VALUE + 1]);
        assert!(parse(&big).is_err());
        let many: Vec<u8> = (0..=MAX_PAIRS).flat_map(|_| b"a=b\0".to_vec()).collect();
        assert!(parse(&many).is_err());
        assert_eq!(encode(&[p("A", "1"), p("B", "x")]), b"A=1\0B=x\0");
        assert!(!has_duplicate_keys(&[p("A", "1"), p("B", "1")]));
        assert!(has_duplicate_keys(&[p("A", "1"), p("B", "1"), p("A", "2")]));
    }

    #[test]
    fn numbers() {
        assert_eq!(number("512"), Some(512));
        assert_eq!(number("0x200"), Some(512));
        assert_eq!(number(""), None);
        assert_eq!(number("-1"), None);
        assert_eq!(number("1e3"), None);
        assert_eq!(number("99999999999999999999999"), None);
    }

    fn limits() -> Limits {
        Limits::from_options(&Options::default())
    }

    #[test]
    fn negotiation_rules() {
        let l = limits();
        let mut q = Params::default();
        let mut n = |k: &str, v: &str| negotiate(k, v, &mut q, &l, false);
        let val = |s: &str| Answer::Value(s.into());
        assert_eq!(n("HeaderDigest", "CRC32C,None"), val("CRC32C"));
        assert_eq!(n("DataDigest", "None,CRC32C"), val("None"));
        assert_eq!(n("DataDigest", "MD5"), val("Reject"));
        assert_eq!(n("MaxConnections", "4"), val("1"));
        assert_eq!(n("InitialR2T", "No"), val("Yes"), "OR with our Yes");
        assert_eq!(n("ImmediateData", "Yes"), val("Yes"));
        assert_eq!(n("ImmediateData", "maybe"), val("Reject"));
        assert_eq!(n("MaxRecvDataSegmentLength", "262144"), Answer::Silent);
        assert_eq!(n("MaxRecvDataSegmentLength", "100"), val("Reject"));
        assert_eq!(n("MaxBurstLength", "16776192"), val("1048576"));
        assert_eq!(n("FirstBurstLength", "262144"), val("8192"));
        assert_eq!(n("DefaultTime2Wait", "0"), val("2"));
        assert_eq!(n("DefaultTime2Retain", "0"), val("0"));
        assert_eq!(n("MaxOutstandingR2T", "8"), val("1"));
        assert_eq!(n("ErrorRecoveryLevel", "2"), val("0"));
        assert_eq!(n("ErrorRecoveryLevel", "3"), val("Reject"));
        assert_eq!(n("X-com.example.foo", "1"), val("NotUnderstood"));
        assert_eq!(n("X#vendor", "1"), val("NotUnderstood"));
        assert_eq!(n("IFMarker", "Yes"), val("No"));
        assert_eq!(n("OFMarkInt", "1"), val("Irrelevant"));
        assert_eq!(n("Bogus", "1"), Answer::Unknown);
        assert!(q.header_digest && !q.data_digest);
        assert_eq!(q.initiator_mrdsl, 262_144);
        assert_eq!(q.first_burst_length, 8192);
    }

    #[test]
    fn required_digest_refuses_none() {
        let mut l = limits();
        l.require_data_digest = true;
        let mut q = Params::default();
        assert_eq!(
            negotiate("DataDigest", "None", &mut q, &l, false),
            Answer::Value("Reject".into())
        );
        assert_eq!(
            negotiate("DataDigest", "None,CRC32C", &mut q, &l, false),
            Answer::Value("CRC32C".into())
        );
    }

    #[test]
    fn discovery_irrelevant_keys() {
        let mut q = Params::default();
        assert_eq!(
            negotiate("MaxBurstLength", "512", &mut q, &limits(), true),
            Answer::Value("Irrelevant".into())
        );
        assert_eq!(
            negotiate("HeaderDigest", "None", &mut q, &limits(), true),
            Answer::Value("None".into())
        );
    }

    #[test]
    fn addresses() {
        assert_eq!(target_address("10.0.0.1", 3260, 1), "10.0.0.1:3260,1");
        assert_eq!(target_address("fe80::1", 3260, 2), "[fe80::1]:3260,2");
    }
}
