//! Kernel command line: whitespace-separated `key=value` options.
//!
//! Every option the kernel knows is a row of [`OPTIONS`]: its key, a check for
//! its value and a line of help. [`Cmdline::parse`] keeps the options that pass
//! and turns everything else (unknown keys, bad values, stray words, unbalanced
//! quotes, repeats) into [`Diagnostic`]s. A value may be double-quoted to hold
//! spaces. A first word without `=` is the image name that Multiboot loaders
//! put in front, and is skipped.

use crate::net::Ipv4Cidr;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use core::net::Ipv4Addr;
use core::str::FromStr;

/// One known option.
pub struct OptionSpec {
    pub key: &'static str,
    pub check: fn(&str) -> Result<(), &'static str>,
    pub help: &'static str,
}

fn one_of(value: &str, allowed: &[&str]) -> Result<(), &'static str> {
    if allowed.contains(&value) {
        Ok(())
    } else {
        Err("not one of the allowed values")
    }
}

fn is_log_level(v: &str) -> Result<(), &'static str> {
    one_of(v, &["error", "warn", "info", "debug", "trace"])
}
fn is_panic_action(v: &str) -> Result<(), &'static str> {
    one_of(v, &["halt", "reboot"])
}
fn is_crc_engine(v: &str) -> Result<(), &'static str> {
    one_of(v, &["auto", "soft", "hw"])
}
fn is_cidr(v: &str) -> Result<(), &'static str> {
    Ipv4Cidr::from_str(v).map(drop)
}
fn is_cidr_list(v: &str) -> Result<(), &'static str> {
    v.split(',').try_for_each(is_cidr)
}
fn is_ipv4(v: &str) -> Result<(), &'static str> {
    Ipv4Addr::from_str(v)
        .map(drop)
        .map_err(|_| "not an IPv4 address")
}
fn is_secret(v: &str) -> Result<(), &'static str> {
    if (1..=256).contains(&v.len()) {
        Ok(())
    } else {
        Err("expected 1-256 characters")
    }
}
fn is_name(v: &str) -> Result<(), &'static str> {
    let ok = !v.is_empty()
        && v.len() <= 64
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err("expected 1-64 characters of [A-Za-z0-9._-]")
    }
}
fn is_config_source(v: &str) -> Result<(), &'static str> {
    one_of(v, &["stored", "boot"])
}
fn is_bench_list(v: &str) -> Result<(), &'static str> {
    let ok = v
        .split(',')
        .all(|job| job.parse::<ironbay_bdev::bench::BenchSpec>().is_ok());
    if ok {
        Ok(())
    } else {
        Err("expected BDEV:WORKLOAD:BLOCK_SIZE:QUEUE_DEPTH:SECONDS[,...]")
    }
}
fn is_ip_mode(v: &str) -> Result<(), &'static str> {
    if v == "dhcp" { Ok(()) } else { is_cidr(v) }
}
fn is_ipv6_cidr(v: &str) -> Result<(), &'static str> {
    let (a, p) = v.split_once('/').ok_or("expected ADDRESS/PREFIX")?;
    core::net::Ipv6Addr::from_str(a).map_err(|_| "not an IPv6 address")?;
    match p.parse::<u8>() {
        Ok(p) if p <= 128 => Ok(()),
        _ => Err("prefix is 0-128"),
    }
}
fn is_mtu(v: &str) -> Result<(), &'static str> {
    match v.parse::<u32>() {
        Ok(m) if (576..=9000).contains(&m) => Ok(()),
        _ => Err("MTU is 576-9000"),
    }
}
fn is_bool(v: &str) -> Result<(), &'static str> {
    match v {
        "0" | "1" | "yes" | "no" | "on" | "off" | "true" | "false" => Ok(()),
        _ => Err("expected 1|0, yes|no, on|off or true|false"),
    }
}
fn is_count(v: &str) -> Result<(), &'static str> {
    match v.parse::<u16>() {
        Ok(n) if n <= 256 => Ok(()),
        _ => Err("expected 0-256"),
    }
}
fn is_seconds(v: &str) -> Result<(), &'static str> {
    match v.parse::<u16>() {
        Ok(n) if (1..=3600).contains(&n) => Ok(()),
        _ => Err("expected 1-3600 seconds"),
    }
}
fn is_export_list(v: &str) -> Result<(), &'static str> {
    v.split(',').try_for_each(|e| {
        let (bdev, ro) = e.split_once(':').map_or((e, None), |(b, r)| (b, Some(r)));
        is_name(bdev)?;
        match ro {
            None | Some("ro") | Some("rw") => Ok(()),
            Some(_) => Err("export is BDEV[:ro|:rw]"),
        }
    })
}
fn is_diag(v: &str) -> Result<(), &'static str> {
    let (mode, port) = v.split_once(':').ok_or("expected MODE:PORT")?;
    if !["discard", "echo", "source"].contains(&mode) {
        return Err("mode is discard|echo|source");
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err("port is 1-65535"),
    }
}
fn is_percent(v: &str) -> Result<(), &'static str> {
    match v.parse::<u8>() {
        Ok(p) if (10..=90).contains(&p) => Ok(()),
        _ => Err("expected a whole percentage from 10 to 90"),
    }
}

/// The options this kernel understands. Later subsystems add rows here.
pub static OPTIONS: &[OptionSpec] = &[
    OptionSpec {
        key: "log",
        check: is_log_level,
        help: "console log level: error|warn|info|debug|trace",
    },
    OptionSpec {
        key: "panic",
        check: is_panic_action,
        help: "after a fatal error: halt|reboot",
    },
    OptionSpec {
        key: "test",
        check: is_name,
        help: "run the named in-kernel self-test and exit",
    },
    OptionSpec {
        key: "crc",
        check: is_crc_engine,
        help: "CRC32C engine: auto|soft|hw",
    },
    OptionSpec {
        key: "heap",
        check: is_percent,
        help: "percent of free memory given to the heap",
    },
    OptionSpec {
        key: "bench",
        check: is_bench_list,
        help: "block benchmarks to run after ready: BDEV:WORKLOAD:BLOCK_SIZE:QUEUE_DEPTH:SECONDS,...",
    },
    OptionSpec {
        key: "mgmt.ip",
        check: is_ip_mode,
        help: "management NIC IPv4: dhcp or ADDRESS/PREFIX, e.g. 10.0.2.15/24",
    },
    OptionSpec {
        key: "mgmt.gw",
        check: is_ipv4,
        help: "management NIC IPv4 gateway",
    },
    OptionSpec {
        key: "mgmt.ip6",
        check: is_ipv6_cidr,
        help: "management NIC static IPv6 ADDRESS/PREFIX",
    },
    OptionSpec {
        key: "mgmt.mtu",
        check: is_mtu,
        help: "management NIC MTU (576-9000)",
    },
    OptionSpec {
        key: "data.ip",
        check: is_ip_mode,
        help: "first data NIC IPv4: dhcp or ADDRESS/PREFIX, e.g. 10.0.2.15/24",
    },
    OptionSpec {
        key: "data.gw",
        check: is_ipv4,
        help: "first data NIC IPv4 gateway",
    },
    OptionSpec {
        key: "data.ip6",
        check: is_ipv6_cidr,
        help: "first data NIC static IPv6 ADDRESS/PREFIX",
    },
    OptionSpec {
        key: "data.mtu",
        check: is_mtu,
        help: "first data NIC MTU (576-9000)",
    },
    OptionSpec {
        key: "mgmt.allow",
        check: is_cidr_list,
        help: "management clients allowed, CIDR list",
    },
    OptionSpec {
        key: "targetd.user",
        check: is_name,
        help: "targetd API user (default admin)",
    },
    OptionSpec {
        key: "targetd.password",
        check: is_secret,
        help: "targetd API password; wins over one set over JSON-RPC, never saved or shown",
    },
    OptionSpec {
        key: "mgmt.wait_for_init",
        check: is_bool,
        help: "hold the boot config's runtime methods until framework_start_init over JSON-RPC",
    },
    OptionSpec {
        key: "diag",
        check: is_diag,
        help: "TCP diagnostics service on the first data NIC: discard|echo|source:PORT",
    },
    OptionSpec {
        key: "config.store",
        check: is_name,
        help: "bdev holding the config area (saved after every change, applied at boot); none: no store this boot (default: scan every bdev for one)",
    },
    OptionSpec {
        key: "config.prefer",
        check: is_config_source,
        help: "stored|boot: which applies when both a stored config and a boot module exist (stored)",
    },
    OptionSpec {
        key: "nbd.exports",
        check: is_export_list,
        help: "bdevs the NBD target exports, BDEV[:ro],... (default: every bdev, read-write)",
    },
    OptionSpec {
        key: "nbd.max_connections",
        check: is_count,
        help: "NBD connection limit, 0 = default (16); 1 also withdraws multi-conn",
    },
    OptionSpec {
        key: "nbd.handshake_timeout",
        check: is_seconds,
        help: "seconds an NBD client may take to finish its handshake (10)",
    },
    OptionSpec {
        key: "iscsi.max_connections",
        check: is_count,
        help: "iSCSI connection limit (sockets on port 3260), 0 = default (16)",
    },
    OptionSpec {
        key: "nvmf.max_connections",
        check: is_count,
        help: "NVMe-oF/TCP sockets per listening port, 0 = default (16)",
    },
    OptionSpec {
        key: "target.stall_timeout",
        check: is_seconds,
        help: "seconds a storage client may leave our replies unread before it is dropped (30)",
    },
];

/// Something on the command line that was not taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Diagnostic {
    UnknownOption(String),
    BadValue {
        key: String,
        value: String,
        why: &'static str,
    },
    NotKeyValue(String),
    Repeated(String),
    UnbalancedQuote,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Diagnostic::UnknownOption(k) => write!(f, "unknown option `{k}` (ignored)"),
            Diagnostic::BadValue { key, value, why } => {
                write!(f, "option `{key}={value}`: {why} (ignored)")
            }
            Diagnostic::NotKeyValue(w) => write!(f, "`{w}` is not key=value (ignored)"),
            Diagnostic::Repeated(k) => write!(f, "option `{k}` given again; the last one wins"),
            Diagnostic::UnbalancedQuote => write!(f, "unbalanced double quote at the end"),
        }
    }
}

/// The options that were accepted, in command-line order, plus diagnostics.
#[derive(Clone, Debug, Default)]
pub struct Cmdline {
    entries: Vec<(String, String)>,
    pub diagnostics: Vec<Diagnostic>,
}

impl Cmdline {
    pub fn parse(line: &str) -> Self {
        Self::parse_with(line, OPTIONS)
    }

    pub fn parse_with(line: &str, table: &[OptionSpec]) -> Self {
        let mut out = Cmdline::default();
        let (words, balanced) = split_words(line);
        if !balanced {
            out.diagnostics.push(Diagnostic::UnbalancedQuote);
        }
        for (i, word) in words.into_iter().enumerate() {
            let Some((key, value)) = word.split_once('=') else {
                if i != 0 {
                    out.diagnostics.push(Diagnostic::NotKeyValue(word));
                }
                continue;
            };
            let Some(spec) = table.iter().find(|s| s.key == key) else {
                out.diagnostics
                    .push(Diagnostic::UnknownOption(key.to_string()));
                continue;
            };
            if let Err(why) = (spec.check)(value) {
                out.diagnostics.push(Diagnostic::BadValue {
                    key: key.to_string(),
                    value: value.to_string(),
                    why,
                });
                continue;
            }
            if let Some(slot) = out.entries.iter_mut().find(|(k, _)| k == key) {
                out.diagnostics.push(Diagnostic::Repeated(key.to_string()));
                slot.1 = value.to_string();
            } else {
                out.entries.push((key.to_string(), value.to_string()));
            }
        }
        out
    }

    /// The accepted value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `key` converted; the check in [`OPTIONS`] already passed,
    /// so a failure here means the table and the caller disagree.
    pub fn get_as<T: FromStr>(&self, key: &str) -> Option<T> {
        self.get(key).and_then(|v| v.parse().ok())
    }

    /// A yes/no option; absent is no.
    pub fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("1" | "yes" | "on" | "true"))
    }

    pub fn entries(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// Finds `key=value` without allocating, for the few options needed before
/// the heap exists. Quotes are not interpreted; the full parse still checks it.
pub fn peek<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_ascii_whitespace()
        .rev()
        .filter_map(|w| w.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// Splits on ASCII whitespace, honouring double quotes (which are removed).
fn split_words(line: &str) -> (Vec<String>, bool) {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_quote = false;
    let mut started = false;
    for c in line.chars() {
        match c {
            '"' => {
                in_quote = !in_quote;
                started = true;
            }
            c if c.is_ascii_whitespace() && !in_quote => {
                if started {
                    words.push(core::mem::take(&mut cur));
                    started = false;
                }
            }
            c => {
                cur.push(c);
                started = true;
            }
        }
    }
    if started {
        words.push(cur);
    }
    (words, !in_quote)
}

/// The command line as it may be shown: the values of `*password` options
/// replaced by `***`.
pub fn redacted(cmdline: &str) -> String {
    cmdline
        .split(' ')
        .map(|w| match w.split_once('=') {
            Some((k, _)) if k.ends_with("password") => alloc::format!("{k}=***"),
            _ => w.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_known_options_and_skips_image_name() {
        let c = Cmdline::parse("/boot/ironbay.elf log=debug panic=reboot mgmt.ip=10.0.2.15/24");
        assert!(c.diagnostics.is_empty(), "{:?}", c.diagnostics);
        assert_eq!(c.get("log"), Some("debug"));
        assert_eq!(c.get("panic"), Some("reboot"));
        let ip: Ipv4Cidr = c.get_as("mgmt.ip").unwrap();
        assert_eq!(ip.prefix, 24);
    }

    #[test]
    fn reports_every_kind_of_mistake() {
        let c = Cmdline::parse(
            "img log=loud bogus=1 stray mgmt.ip=10.0.2.15 test=a/b log=info log=warn =x panic=",
        );
        let d = &c.diagnostics;
        assert!(
            d.iter()
                .any(|d| matches!(d, Diagnostic::BadValue { key, .. } if key == "log"))
        );
        assert!(d.contains(&Diagnostic::UnknownOption("bogus".into())));
        assert!(d.contains(&Diagnostic::NotKeyValue("stray".into())));
        assert!(
            d.iter()
                .any(|d| matches!(d, Diagnostic::BadValue { key, .. } if key == "mgmt.ip"))
        );
        assert!(
            d.iter()
                .any(|d| matches!(d, Diagnostic::BadValue { key, .. } if key == "test"))
        );
        assert!(d.contains(&Diagnostic::Repeated("log".into())));
        assert!(d.contains(&Diagnostic::UnknownOption("".into())));
        assert!(
            d.iter()
                .any(|d| matches!(d, Diagnostic::BadValue { key, .. } if key == "panic"))
        );
        assert_eq!(c.get("log"), Some("warn"));
        assert_eq!(c.get("mgmt.ip"), None);
        for d in d {
            assert!(!d.to_string().is_empty());
        }
    }

    #[test]
    fn quotes_group_words() {
        let c = Cmdline::parse_with(
            "x name=\"a b\" other=1",
            &[
                OptionSpec {
                    key: "name",
                    check: |_| Ok(()),
                    help: "",
                },
                OptionSpec {
                    key: "other",
                    check: |_| Ok(()),
                    help: "",
                },
            ],
        );
        assert_eq!(c.get("name"), Some("a b"));
        assert_eq!(c.get("other"), Some("1"));
        let c = Cmdline::parse("x log=\"info");
        assert!(c.diagnostics.contains(&Diagnostic::UnbalancedQuote));
    }

    #[test]
    fn empty_and_garbage_lines_do_not_panic() {
        for line in [
            "",
            "   ",
            "\"",
            "==",
            "a=b=c",
            "\u{0}\u{1}",
            "log=\u{ff}",
            "é=é",
        ] {
            let _ = Cmdline::parse(line);
        }
        assert!(Cmdline::parse("").diagnostics.is_empty());
    }

    #[test]
    fn bench_jobs_are_checked() {
        assert!(
            Cmdline::parse("k bench=Nvme0n1:randread:4k:32:10,Malloc0:verify:512:1:1")
                .diagnostics
                .is_empty()
        );
        assert_eq!(
            Cmdline::parse("k bench=Nvme0n1:randread:4k:32")
                .diagnostics
                .len(),
            1
        );
    }

    #[test]
    fn network_options() {
        let c = Cmdline::parse(
            "k mgmt.ip=dhcp data.ip=10.0.3.15/24 data.mtu=9000 mgmt.ip6=fd00::2/64 diag=echo:7777",
        );
        assert!(c.diagnostics.is_empty(), "{:?}", c.diagnostics);
        for bad in [
            "mgmt.ip=auto",
            "data.mtu=100",
            "mgmt.ip6=fd00::2",
            "diag=echo:0",
            "diag=ping:1",
        ] {
            assert_eq!(
                Cmdline::parse(&alloc::format!("k {bad}")).diagnostics.len(),
                1,
                "{bad}"
            );
        }
    }

    #[test]
    fn nbd_options() {
        assert!(
            Cmdline::parse("k nbd.exports=Malloc0:ro,Nvme0n1 nbd.max_connections=1")
                .diagnostics
                .is_empty()
        );
        assert_eq!(
            Cmdline::parse("k nbd.exports=Malloc0:wo").diagnostics.len(),
            1
        );
        assert_eq!(
            Cmdline::parse("k nbd.max_connections=999")
                .diagnostics
                .len(),
            1
        );
        assert!(
            Cmdline::parse("k iscsi.max_connections=64")
                .diagnostics
                .is_empty()
        );
    }

    #[test]
    fn peek_finds_the_last_value() {
        assert_eq!(peek("img heap=30 log=info heap=40", "heap"), Some("40"));
        assert_eq!(peek("img log=info", "heap"), None);
    }

    #[test]
    fn allow_list_takes_several_subnets() {
        let c = Cmdline::parse("k mgmt.allow=10.0.2.0/24,127.0.0.0/8");
        assert!(c.diagnostics.is_empty());
        let c = Cmdline::parse("k mgmt.allow=10.0.2.0/24,nope");
        assert_eq!(c.diagnostics.len(), 1);
    }

    #[test]
    fn flags() {
        let c = Cmdline::parse("k mgmt.wait_for_init=yes");
        assert!(c.flag("mgmt.wait_for_init") && !c.flag("absent"));
        let c = Cmdline::parse("k mgmt.wait_for_init=maybe");
        assert_eq!(c.diagnostics.len(), 1);
        assert!(!c.flag("mgmt.wait_for_init"));
    }

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(
            super::redacted("img mgmt.ip=1.2.3.4/24 targetd.password=s3cret targetd.user=admin"),
            "img mgmt.ip=1.2.3.4/24 targetd.password=*** targetd.user=admin"
        );
    }
}
