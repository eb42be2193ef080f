//! Parameter data built without block I/O: INQUIRY and VPD pages, REPORT
//! LUNS, REPORT SUPPORTED OPERATION CODES, READ CAPACITY and mode pages.

use super::cdb::{Cdb, OPS, OpInfo, be_at, has_service_actions};
use super::sense::{Sense, asc};
use super::{Geo, MAX_UNMAP_DESCRIPTORS, MAX_WRITE_SAME_BLOCKS};
use alloc::vec;
use alloc::vec::Vec;
use ironbay_bdev::{BdevInfo, Uuid};

pub const VENDOR: &[u8; 8] = b"IRONBAY ";

/// IEEE company ID in the NAA designator: a locally administered value
/// (U/L bit set), as the product holds no IEEE assignment of its own.
const COMPANY_ID: u64 = 0x02_49_42;

/// SAM-5, SPC-4, SBC-3, iSCSI.
const VERSION_DESCRIPTORS: [u16; 4] = [0x00a0, 0x0460, 0x04c0, 0x0960];

/// VPD pages in ascending order.
const VPD_PAGES: [u8; 6] = [0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2];

/// `s` as `n` bytes of printable ASCII, space padded.
fn ascii_field(s: &str, n: usize) -> Vec<u8> {
    let mut v: Vec<u8> = s
        .bytes()
        .map(|b| if (0x20..0x7f).contains(&b) { b } else { b' ' })
        .take(n)
        .collect();
    v.resize(n, b' ');
    v
}

fn revision() -> Vec<u8> {
    let r = alloc::format!(
        "{}.{}",
        env!("CARGO_PKG_VERSION_MAJOR"),
        env!("CARGO_PKG_VERSION_MINOR")
    );
    ascii_field(&r, 4)
}

/// Standard INQUIRY data; `None` for a LUN that does not exist
/// (peripheral qualifier 3, no device type).
pub fn standard_inquiry(info: Option<&BdevInfo>) -> Vec<u8> {
    let mut d = vec![0u8; 96];
    d[0] = if info.is_some() { 0x00 } else { 0x7f };
    d[2] = 0x06; // SPC-4
    d[3] = 0x12; // HiSup, response data format 2
    d[4] = (d.len() - 5) as u8;
    d[7] = 0x02; // CmdQue
    d[8..16].copy_from_slice(VENDOR);
    let product = info.map_or("", |i| {
        if i.product.trim().is_empty() {
            i.name.as_str()
        } else {
            i.product.as_str()
        }
    });
    d[16..32].copy_from_slice(&ascii_field(product, 16));
    d[32..36].copy_from_slice(&revision());
    for (i, v) in VERSION_DESCRIPTORS.iter().enumerate() {
        d[58 + 2 * i..60 + 2 * i].copy_from_slice(&v.to_be_bytes());
    }
    d
}

fn uuid_of(info: &BdevInfo) -> Uuid {
    if info.uuid.is_nil() {
        Uuid::from_name(&[info.name.as_bytes()])
    } else {
        info.uuid
    }
}

fn serial(info: &BdevInfo) -> Vec<u8> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    uuid_of(info)
        .0
        .iter()
        .flat_map(|b| [HEX[(b >> 4) as usize], HEX[(b & 15) as usize]])
        .collect()
}

fn page(code: u8, body: Vec<u8>) -> Vec<u8> {
    let mut d = vec![0, code];
    d.extend((body.len() as u16).to_be_bytes());
    d.extend(body);
    d
}

fn designator(proto_code_set: u8, piv_assoc_type: u8, value: &[u8]) -> Vec<u8> {
    let mut d = vec![proto_code_set, piv_assoc_type, 0, value.len() as u8];
    d.extend_from_slice(value);
    d
}

/// Device identification (83h): NAA IEEE registered extended and T10
/// vendor ID for the LU, relative port and target name for the port and
/// target device.
fn device_identification(info: &BdevInfo, target_name: &str) -> Vec<u8> {
    let u = uuid_of(info).0;
    let hi = u64::from_be_bytes([u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7]]);
    let lo = u64::from_be_bytes([u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15]]);
    // 36 bits of vendor identifier: fold the high half so all of it counts.
    let vsid = (hi ^ (hi >> 36)) & ((1 << 36) - 1);
    let naa = (6u128 << 124) | ((COMPANY_ID as u128) << 100) | ((vsid as u128) << 64) | lo as u128;
    let mut body = designator(0x01, 0x03, &naa.to_be_bytes());
    let mut t10 = VENDOR.to_vec();
    t10.extend(serial(info));
    body.extend(designator(0x02, 0x01, &t10));
    // Relative target port 1 (iSCSI protocol, PIV, target port association).
    body.extend(designator(0x51, 0x94, &[0, 0, 0, 1]));
    if !target_name.is_empty() {
        let mut name: Vec<u8> = target_name.bytes().take(251).collect();
        name.push(0);
        while !name.len().is_multiple_of(4) {
            name.push(0);
        }
        // SCSI name string, UTF-8, target device association.
        body.extend(designator(0x53, 0xa8, &name));
    }
    page(0x83, body)
}

fn block_limits(g: &Geo) -> Vec<u8> {
    let mut b = vec![0u8; 0x3c];
    // WSNZ clear: WRITE SAME with zero blocks means "to the end".
    b[1] = g.max_caw_blocks() as u8;
    b[2..4].copy_from_slice(&1u16.to_be_bytes());
    b[4..8].copy_from_slice(&(g.max_xfer_blocks as u32).to_be_bytes());
    b[8..12].copy_from_slice(&(g.chunk_blocks.min(g.max_xfer_blocks) as u32).to_be_bytes());
    if g.unmap {
        b[16..20].copy_from_slice(&u32::MAX.to_be_bytes());
        b[20..24].copy_from_slice(&MAX_UNMAP_DESCRIPTORS.to_be_bytes());
        b[24..28].copy_from_slice(&1u32.to_be_bytes());
    }
    b[32..40].copy_from_slice(&MAX_WRITE_SAME_BLOCKS.to_be_bytes());
    // MAXIMUM ATOMIC TRANSFER LENGTH; no alignment, granularity or
    // boundaries.
    b[40..44].copy_from_slice(&(g.max_atomic_blocks() as u32).to_be_bytes());
    page(0xb0, b)
}

fn block_characteristics() -> Vec<u8> {
    let mut b = vec![0u8; 0x3c];
    b[1] = 1; // medium rotation rate: non-rotating
    page(0xb1, b)
}

fn provisioning(g: &Geo) -> Vec<u8> {
    let mut b = vec![0u8; 4];
    if g.unmap {
        // LBPU, LBPWS, LBPWS10 (and LBPRZ where unmapped blocks read
        // zeroes); thin provisioned.
        b[1] = 0x80 | 0x40 | 0x20;
        if g.unmap_zeroes {
            b[1] |= 0x04;
        }
        b[2] = 0x02;
    }
    page(0xb2, b)
}

/// A VPD page, if supported.
pub fn vpd(code: u8, info: &BdevInfo, target_name: &str, g: &Geo) -> Option<Vec<u8>> {
    Some(match code {
        0x00 => page(0x00, VPD_PAGES.to_vec()),
        0x80 => page(0x80, serial(info)),
        0x83 => device_identification(info, target_name),
        0xb0 => block_limits(g),
        0xb1 => block_characteristics(),
        0xb2 => provisioning(g),
        _ => return None,
    })
}

/// The 8-byte SAM LUN for a LUN number: peripheral device addressing
/// below 256, flat space below 16384, otherwise the number is taken as
/// an already encoded LUN.
pub fn encode_lun(id: u64) -> [u8; 8] {
    match id {
        0..=0xff => [0, id as u8, 0, 0, 0, 0, 0, 0],
        0x100..=0x3fff => [0x40 | (id >> 8) as u8, id as u8, 0, 0, 0, 0, 0, 0],
        _ => id.to_be_bytes(),
    }
}

/// The LUN number of an 8-byte SAM LUN (the inverse of [`encode_lun`]).
pub fn decode_lun(lun: [u8; 8]) -> u64 {
    let rest_zero = lun[2..].iter().all(|&b| b == 0);
    match lun[0] >> 6 {
        0 if lun[0] == 0 && rest_zero => lun[1] as u64,
        1 if rest_zero => ((lun[0] & 0x3f) as u64) << 8 | lun[1] as u64,
        _ => u64::from_be_bytes(lun),
    }
}

pub fn report_luns(luns: &[u64]) -> Vec<u8> {
    let mut ids = luns.to_vec();
    ids.sort_unstable();
    ids.dedup();
    let mut d = ((ids.len() * 8) as u32).to_be_bytes().to_vec();
    d.extend([0u8; 4]);
    for id in ids {
        d.extend(encode_lun(id));
    }
    d
}

fn offered(i: &OpInfo, unmap: bool) -> bool {
    unmap || !i.needs_unmap
}

/// Command timeouts descriptor: nominal and recommended unspecified.
fn timeouts() -> [u8; 12] {
    let mut t = [0u8; 12];
    t[1] = 0x0a;
    t
}

/// REPORT SUPPORTED OPERATION CODES, all commands format.
pub fn supported_opcodes_all(rctd: bool, unmap: bool) -> Vec<u8> {
    let mut d = vec![0u8; 4];
    for i in OPS.iter().filter(|i| offered(i, unmap)) {
        d.push(i.op);
        d.push(0);
        d.extend(i.sa.unwrap_or(0).to_be_bytes());
        d.push(0);
        d.push(if rctd { 0x02 } else { 0 } | u8::from(i.sa.is_some()));
        d.extend((i.usage.len() as u16).to_be_bytes());
        if rctd {
            d.extend(timeouts());
        }
    }
    let n = (d.len() - 4) as u32;
    d[0..4].copy_from_slice(&n.to_be_bytes());
    d
}

/// REPORT SUPPORTED OPERATION CODES for one command (reporting options
/// 1, 2 and 3).
pub fn supported_opcodes_one(
    options: u8,
    opcode: u8,
    sa: u16,
    rctd: bool,
    unmap: bool,
) -> Result<Vec<u8>, Sense> {
    let with_sa = has_service_actions(opcode);
    let found = match options {
        1 if with_sa => return Err(Sense::invalid_cdb(2, Some(2))),
        1 => OPS.iter().find(|i| i.op == opcode && i.sa.is_none()),
        2 if !with_sa => return Err(Sense::invalid_cdb(2, Some(2))),
        2 => OPS.iter().find(|i| i.op == opcode && i.sa == Some(sa)),
        3 if with_sa => OPS.iter().find(|i| i.op == opcode && i.sa == Some(sa)),
        3 => OPS
            .iter()
            .find(|i| i.op == opcode && i.sa.is_none() && sa == 0),
        _ => return Err(Sense::invalid_cdb(2, Some(2))),
    }
    .filter(|i| offered(i, unmap));
    let Some(i) = found else {
        // SUPPORT 001b: not supported.
        return Ok(vec![0, 0x01, 0, 0]);
    };
    let mut d = vec![0, if rctd { 0x80 } else { 0 } | 0x03];
    d.extend((i.usage.len() as u16).to_be_bytes());
    d.extend_from_slice(i.usage);
    if rctd {
        d.extend(timeouts());
    }
    Ok(d)
}

pub fn read_capacity_10(g: &Geo) -> Vec<u8> {
    let last = g.num_blocks.saturating_sub(1).min(u32::MAX as u64) as u32;
    let mut d = last.to_be_bytes().to_vec();
    d.extend((g.bs as u32).to_be_bytes());
    d
}

pub fn read_capacity_16(g: &Geo) -> Vec<u8> {
    let mut d = vec![0u8; 32];
    d[0..8].copy_from_slice(&g.num_blocks.saturating_sub(1).to_be_bytes());
    d[8..12].copy_from_slice(&(g.bs as u32).to_be_bytes());
    if g.unmap {
        d[14] = 0x80; // LBPME
        if g.unmap_zeroes {
            d[14] |= 0x40; // LBPRZ
        }
    }
    d
}

/// Mode page control values.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Pc {
    Current,
    Changeable,
    Default,
}

const CACHING: u8 = 0x08;
const CONTROL: u8 = 0x0a;
const INFO_EXCEPTIONS: u8 = 0x1c;
const ALL_PAGES: u8 = 0x3f;
const PAGES: [u8; 3] = [CACHING, CONTROL, INFO_EXCEPTIONS];

/// The mode state pages are built from.
pub struct ModeState {
    /// Write cache enabled now.
    pub wce: bool,
    /// The bdev has a volatile cache, so WCE can change.
    pub cache: bool,
}

fn mode_page(code: u8, pc: Pc, m: &ModeState) -> Vec<u8> {
    match code {
        CACHING => {
            let mut p = vec![0u8; 20];
            p[0] = CACHING;
            p[1] = 0x12;
            p[2] = match pc {
                Pc::Current if m.wce => 0x04,
                Pc::Default if m.cache => 0x04,
                Pc::Changeable if m.cache => 0x04,
                _ => 0,
            };
            p
        }
        CONTROL => {
            let mut p = vec![0u8; 12];
            p[0] = CONTROL;
            p[1] = 0x0a;
            if pc != Pc::Changeable {
                // GLTSD; unrestricted reordering (commands run concurrently);
                // no busy timeout limit.
                p[2] = 0x02;
                p[3] = 0x10;
                p[8..10].copy_from_slice(&0xffffu16.to_be_bytes());
            }
            p
        }
        _ => {
            let mut p = vec![0u8; 12];
            p[0] = INFO_EXCEPTIONS;
            p[1] = 0x0a;
            if pc != Pc::Changeable {
                p[2] = 0x08; // DEXCPT: no exceptions reported
            }
            p
        }
    }
}

/// MODE SENSE (6) or (10) parameter data, or why not.
pub fn mode_sense(c: Cdb<'_>, ten: bool, g: &Geo, m: &ModeState) -> Result<Vec<u8>, Sense> {
    let dbd = c.b(1) & 0x08 != 0;
    let llbaa = ten && c.b(1) & 0x10 != 0;
    let (code, subpage) = (c.b(2) & 0x3f, c.b(3));
    let pc = match c.b(2) >> 6 {
        0 => Pc::Current,
        1 => Pc::Changeable,
        2 => Pc::Default,
        _ => return Err(Sense::illegal(asc::SAVING_PARAMETERS_NOT_SUPPORTED)),
    };
    let codes: Vec<u8> = match code {
        ALL_PAGES => PAGES.to_vec(),
        c if PAGES.contains(&c) => vec![c],
        _ => return Err(Sense::invalid_cdb(2, Some(5))),
    };
    // No subpages: 00h, or FFh (all subpages) with the all-pages code.
    if subpage != 0 && !(subpage == 0xff && code == ALL_PAGES) {
        return Err(Sense::invalid_cdb(3, Some(7)));
    }
    let mut pages = Vec::new();
    for c in codes {
        pages.extend(mode_page(c, pc, m));
    }
    // WP for read-only LUNs, DPOFUA: DPO and FUA are accepted.
    let dsp = if g.read_only { 0x80 } else { 0 } | 0x10;
    let mut bd = Vec::new();
    if !dbd {
        if llbaa {
            bd.extend(g.num_blocks.to_be_bytes());
            bd.extend([0u8; 4]);
            bd.extend((g.bs as u32).to_be_bytes());
        } else {
            bd.extend((g.num_blocks.min(u32::MAX as u64) as u32).to_be_bytes());
            bd.push(0);
            bd.extend(&(g.bs as u32).to_be_bytes()[1..]);
        }
        if pc == Pc::Changeable {
            bd.fill(0);
        }
    }
    let mut d = if ten {
        let mut h = vec![0u8; 8];
        h[3] = dsp;
        h[4] = u8::from(llbaa && !dbd);
        h[6..8].copy_from_slice(&(bd.len() as u16).to_be_bytes());
        h
    } else {
        vec![0, 0, dsp, bd.len() as u8]
    };
    d.extend(bd);
    d.extend(pages);
    if ten {
        let n = (d.len() - 2) as u16;
        d[0..2].copy_from_slice(&n.to_be_bytes());
    } else {
        d[0] = (d.len() - 1).min(255) as u8;
    }
    Ok(d)
}

/// Checks a MODE SELECT parameter list against the pages and returns the
/// write cache setting it asks for (`None`: unchanged).
pub fn mode_select(ten: bool, data: &[u8], g: &Geo, m: &ModeState) -> Result<Option<bool>, Sense> {
    if data.is_empty() {
        return Ok(None);
    }
    let (hdr, bdl) = if ten {
        (8, be_at(data, 6, 2))
    } else {
        (4, be_at(data, 3, 1))
    };
    let Some(bdl) = bdl else {
        return Err(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR));
    };
    let bdl = bdl as usize;
    let Some(desc) = data.get(hdr..hdr + bdl) else {
        return Err(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR));
    };
    // A block descriptor may only restate the block length.
    let bs_field = match bdl {
        0 => None,
        8 => be_at(desc, 5, 3),
        16 if ten => be_at(desc, 12, 4),
        _ => return Err(Sense::invalid_param(if ten { 6 } else { 3 }, None)),
    };
    if let Some(bs) = bs_field
        && bs != g.bs
    {
        return Err(Sense::invalid_param((hdr + bdl - 1) as u16, None));
    }
    let mut wce = None;
    let mut pos = hdr + bdl;
    while pos < data.len() {
        let Some(&first) = data.get(pos) else { break };
        if first & 0x40 != 0 {
            // No subpages here.
            return Err(Sense::invalid_param(pos as u16, Some(6)));
        }
        let code = first & 0x3f;
        let len = match data.get(pos + 1) {
            Some(&l) => l as usize,
            None => return Err(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR)),
        };
        let Some(given) = data.get(pos..pos + 2 + len) else {
            return Err(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR));
        };
        if !PAGES.contains(&code) {
            return Err(Sense::invalid_param(pos as u16, Some(5)));
        }
        let current = mode_page(code, Pc::Current, m);
        let changeable = mode_page(code, Pc::Changeable, m);
        if given.len() != current.len() {
            return Err(Sense::invalid_param(pos as u16 + 1, Some(7)));
        }
        // Byte 0 holds PS (reserved here) and the code; check the rest.
        for i in 2..given.len() {
            if (given[i] ^ current[i]) & !changeable[i] != 0 {
                return Err(Sense::invalid_param((pos + i) as u16, None));
            }
        }
        if code == CACHING {
            wce = Some(given[2] & 0x04 != 0);
        }
        pos += 2 + len;
    }
    Ok(wce.filter(|&w| w != m.wce))
}
