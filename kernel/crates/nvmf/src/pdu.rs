//! NVMe/TCP PDUs (NVMe/TCP transport 1.0, section 3.6): the 8-byte common
//! header, the PDU-specific headers the target reads and writes, digests
//! and data alignment.
//!
//! Every field read goes through [`le16`]/[`le32`] on a slice, so nothing
//! here can go out of bounds whatever the host sent.

use alloc::vec::Vec;
use ironbay_crc::{crc32c, crc32c_append};

/// Common header length.
pub const CH_LEN: usize = 8;
/// Header and data digest length (CRC32C).
pub const DIGEST_LEN: usize = 4;

/// PDU types.
pub mod ty {
    pub const IC_REQ: u8 = 0x00;
    pub const IC_RESP: u8 = 0x01;
    pub const H2C_TERM_REQ: u8 = 0x02;
    pub const C2H_TERM_REQ: u8 = 0x03;
    pub const CAPSULE_CMD: u8 = 0x04;
    pub const CAPSULE_RESP: u8 = 0x05;
    pub const H2C_DATA: u8 = 0x06;
    pub const C2H_DATA: u8 = 0x07;
    pub const R2T: u8 = 0x09;
}

/// Common header flags.
pub mod flag {
    pub const HDGSTF: u8 = 0x01;
    pub const DDGSTF: u8 = 0x02;
    /// Last data PDU of a command (C2HData) or of an R2T window (H2CData).
    pub const LAST_PDU: u8 = 0x04;
    /// C2HData: the command succeeded, no response capsule follows.
    pub const SUCCESS: u8 = 0x08;
}

/// Header lengths (HLEN) per type.
pub const IC_LEN: usize = 128;
pub const TERM_HLEN: usize = 24;
pub const CMD_HLEN: usize = 72;
pub const RESP_HLEN: usize = 24;
pub const DATA_HLEN: usize = 24;
pub const R2T_HLEN: usize = 24;
/// A TermReq carries at most this much of the offending PDU.
pub const TERM_MAX_DATA: usize = 128;

/// Fatal error status of a TermReq.
pub mod fes {
    pub const INVALID_HEADER_FIELD: u16 = 0x01;
    pub const SEQUENCE_ERROR: u16 = 0x02;
    pub const HEADER_DIGEST: u16 = 0x03;
    pub const OUT_OF_RANGE: u16 = 0x04;
    pub const LIMIT_EXCEEDED: u16 = 0x05;
    pub const UNSUPPORTED_PARAMETER: u16 = 0x06;
}

/// Byte offsets of common header fields (FEI values).
pub mod at {
    pub const TYPE: u32 = 0;
    pub const FLAGS: u32 = 1;
    pub const HLEN: u32 = 2;
    pub const PDO: u32 = 3;
    pub const PLEN: u32 = 4;
    /// ICReq PFV / HPDA; H2CData CCCID / TTAG / DATAO / DATAL.
    pub const PFV: u32 = 8;
    pub const HPDA: u32 = 10;
    pub const CCCID: u32 = 8;
    pub const TTAG: u32 = 10;
    pub const DATAO: u32 = 12;
    pub const DATAL: u32 = 16;
}

pub fn le16(b: &[u8], off: usize) -> u16 {
    match b.get(off..off + 2) {
        Some(s) => u16::from_le_bytes([s[0], s[1]]),
        None => 0,
    }
}

pub fn le32(b: &[u8], off: usize) -> u32 {
    match b.get(off..off + 4) {
        Some(s) => u32::from_le_bytes([s[0], s[1], s[2], s[3]]),
        None => 0,
    }
}

fn put16(b: &mut [u8], off: usize, v: u16) {
    if let Some(s) = b.get_mut(off..off + 2) {
        s.copy_from_slice(&v.to_le_bytes());
    }
}

fn put32(b: &mut [u8], off: usize, v: u32) {
    if let Some(s) = b.get_mut(off..off + 4) {
        s.copy_from_slice(&v.to_le_bytes());
    }
}

/// The common header every PDU starts with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Common {
    pub ty: u8,
    pub flags: u8,
    pub hlen: u8,
    pub pdo: u8,
    pub plen: u32,
}

impl Common {
    pub fn parse(b: &[u8]) -> Option<Common> {
        let h = b.get(..CH_LEN)?;
        Some(Common {
            ty: h[0],
            flags: h[1],
            hlen: h[2],
            pdo: h[3],
            plen: le32(h, 4),
        })
    }

    pub fn write(&self, b: &mut [u8]) {
        if let Some(h) = b.get_mut(..4) {
            h.copy_from_slice(&[self.ty, self.flags, self.hlen, self.pdo]);
        }
        put32(b, 4, self.plen);
    }
}

/// Digests travel least significant byte first.
pub fn digest_bytes(crc: u32) -> [u8; 4] {
    crc.to_le_bytes()
}

/// CRC32C over data that may be in several pieces.
pub fn data_digest<'a>(pieces: impl IntoIterator<Item = &'a [u8]>) -> u32 {
    pieces.into_iter().fold(0, crc32c_append)
}

/// Rounds `n` up to a multiple of `align` (a power of two or any value > 0).
pub fn align_up(n: usize, align: usize) -> usize {
    let a = align.max(1);
    n.div_ceil(a).saturating_mul(a)
}

/// A PDU with no data: header, optional header digest.
fn header_only(mut h: Vec<u8>, hd: bool) -> Vec<u8> {
    let plen = h.len() + if hd { DIGEST_LEN } else { 0 };
    put32(&mut h, 4, plen as u32);
    if hd {
        if let Some(f) = h.get_mut(1) {
            *f |= flag::HDGSTF;
        }
        let crc = crc32c(&h);
        h.extend_from_slice(&digest_bytes(crc));
    }
    h
}

/// ICResp: PFV 0, CPDA, the digests granted, MAXH2CDATA.
pub fn ic_resp(cpda: u8, dgst: u8, maxh2cdata: u32) -> Vec<u8> {
    let mut h = alloc::vec![0u8; IC_LEN];
    Common {
        ty: ty::IC_RESP,
        flags: 0,
        hlen: IC_LEN as u8,
        pdo: 0,
        plen: IC_LEN as u32,
    }
    .write(&mut h);
    h[10] = cpda;
    h[11] = dgst;
    put32(&mut h, 12, maxh2cdata);
    h
}

/// CapsuleResp carrying one completion.
pub fn capsule_resp(cqe: &[u8; 16], hd: bool) -> Vec<u8> {
    let mut h = alloc::vec![0u8; RESP_HLEN];
    Common {
        ty: ty::CAPSULE_RESP,
        flags: 0,
        hlen: RESP_HLEN as u8,
        pdo: 0,
        plen: 0,
    }
    .write(&mut h);
    h[8..24].copy_from_slice(cqe);
    header_only(h, hd)
}

/// R2T soliciting `len` bytes at `offset` of command `cccid`.
pub fn r2t(cccid: u16, ttag: u16, offset: u32, len: u32, hd: bool) -> Vec<u8> {
    let mut h = alloc::vec![0u8; R2T_HLEN];
    Common {
        ty: ty::R2T,
        flags: 0,
        hlen: R2T_HLEN as u8,
        pdo: 0,
        plen: 0,
    }
    .write(&mut h);
    put16(&mut h, 8, cccid);
    put16(&mut h, 10, ttag);
    put32(&mut h, 12, offset);
    put32(&mut h, 16, len);
    header_only(h, hd)
}

/// The part of a C2HData PDU before its data: header, header digest and
/// zero padding up to PDO (a multiple of the host's alignment `hpda`,
/// in bytes).
pub fn c2h_data_head(
    cccid: u16,
    datao: u32,
    datal: u32,
    flags: u8,
    hd: bool,
    dd: bool,
    align: usize,
) -> Vec<u8> {
    let head = DATA_HLEN + if hd { DIGEST_LEN } else { 0 };
    let pdo = align_up(head, align).min(255);
    let mut f = flags;
    if hd {
        f |= flag::HDGSTF;
    }
    let with_dd = dd && datal > 0;
    if with_dd {
        f |= flag::DDGSTF;
    }
    let plen = (pdo as u32)
        .saturating_add(datal)
        .saturating_add(if with_dd { DIGEST_LEN as u32 } else { 0 });
    let mut h = alloc::vec![0u8; DATA_HLEN];
    Common {
        ty: ty::C2H_DATA,
        flags: f,
        hlen: DATA_HLEN as u8,
        pdo: pdo as u8,
        plen,
    }
    .write(&mut h);
    put16(&mut h, 8, cccid);
    put32(&mut h, 12, datao);
    put32(&mut h, 16, datal);
    if hd {
        let crc = crc32c(&h);
        h.extend_from_slice(&digest_bytes(crc));
    }
    h.resize(pdo, 0);
    h
}

/// C2HTermReq: fatal error status, its field offset and (a prefix of) the
/// offending PDU header. TermReqs carry no digests.
pub fn c2h_term_req(fes: u16, fei: u32, bad: &[u8]) -> Vec<u8> {
    let data = bad.get(..bad.len().min(TERM_MAX_DATA)).unwrap_or(&[]);
    let mut h = alloc::vec![0u8; TERM_HLEN];
    Common {
        ty: ty::C2H_TERM_REQ,
        flags: 0,
        hlen: TERM_HLEN as u8,
        pdo: 0,
        plen: (TERM_HLEN + data.len()) as u32,
    }
    .write(&mut h);
    put16(&mut h, 8, fes);
    put32(&mut h, 10, fei);
    h.extend_from_slice(data);
    h
}

/// What the host asked for in its ICReq.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcReq {
    pub pfv: u16,
    pub hpda: u8,
    pub hdgst: bool,
    pub ddgst: bool,
    pub maxr2t: u32,
}

impl IcReq {
    pub fn parse(b: &[u8]) -> IcReq {
        let dgst = b.get(11).copied().unwrap_or(0);
        IcReq {
            pfv: le16(b, 8),
            hpda: b.get(10).copied().unwrap_or(0),
            hdgst: dgst & 1 != 0,
            ddgst: dgst & 2 != 0,
            maxr2t: le32(b, 12),
        }
    }
}

/// H2CData PDU header fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct H2cData {
    pub cccid: u16,
    pub ttag: u16,
    pub datao: u32,
    pub datal: u32,
}

impl H2cData {
    pub fn parse(b: &[u8]) -> H2cData {
        H2cData {
            cccid: le16(b, 8),
            ttag: le16(b, 10),
            datao: le32(b, 12),
            datal: le32(b, 16),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts() {
        let r = ic_resp(0, 3, 131072);
        assert_eq!(r.len(), 128);
        assert_eq!(Common::parse(&r).unwrap().plen, 128);
        assert_eq!(le32(&r, 12), 131072);
        let c = capsule_resp(&[1; 16], true);
        assert_eq!(c.len(), 28);
        assert_eq!(c[1], flag::HDGSTF);
        assert_eq!(le32(&c, 24), crc32c(&c[..24]));
        let d = c2h_data_head(5, 0, 512, flag::LAST_PDU, true, true, 32);
        assert_eq!(d.len(), 32);
        let h = Common::parse(&d).unwrap();
        assert_eq!(h.pdo, 32);
        assert_eq!(h.plen, 32 + 512 + 4);
        assert_eq!(h.flags, flag::LAST_PDU | flag::HDGSTF | flag::DDGSTF);
        let t = c2h_term_req(fes::INVALID_HEADER_FIELD, 2, &[0u8; 200]);
        assert_eq!(t.len(), 152);
        assert_eq!(le16(&t, 8), 1);
        assert_eq!(le32(&t, 10), 2);
        assert_eq!(align_up(28, 4), 28);
        assert_eq!(align_up(28, 128), 128);
        assert_eq!(data_digest([&b"1234"[..], b"56789"]), crc32c(b"123456789"));
    }
}
