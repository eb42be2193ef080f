//! iSCSI PDU framing (RFC 7143 §11): the 48-byte Basic Header Segment,
//! Additional Header Segments, padding and CRC32C digests.
//!
//! [`Bhs`] is a plain 48-byte array with accessors at fixed offsets, so no
//! field read can go out of bounds whatever the peer sent.

use alloc::vec::Vec;
use ironbay_crc::{crc32c, crc32c_append};

/// Basic Header Segment length.
pub const BHS_LEN: usize = 48;
/// Digest length (CRC32C).
pub const DIGEST_LEN: usize = 4;
/// The reserved "no task" tag for ITT / TTT.
pub const NO_TAG: u32 = 0xffff_ffff;

/// Opcodes (byte 0, low six bits).
pub mod op {
    pub const NOP_OUT: u8 = 0x00;
    pub const SCSI_CMD: u8 = 0x01;
    pub const TMF_REQ: u8 = 0x02;
    pub const LOGIN_REQ: u8 = 0x03;
    pub const TEXT_REQ: u8 = 0x04;
    pub const DATA_OUT: u8 = 0x05;
    pub const LOGOUT_REQ: u8 = 0x06;
    pub const SNACK: u8 = 0x10;
    pub const NOP_IN: u8 = 0x20;
    pub const SCSI_RSP: u8 = 0x21;
    pub const TMF_RSP: u8 = 0x22;
    pub const LOGIN_RSP: u8 = 0x23;
    pub const TEXT_RSP: u8 = 0x24;
    pub const DATA_IN: u8 = 0x25;
    pub const LOGOUT_RSP: u8 = 0x26;
    pub const R2T: u8 = 0x31;
    pub const ASYNC: u8 = 0x32;
    pub const REJECT: u8 = 0x3f;
}

/// Reject reasons (§11.17.1).
pub mod reject {
    pub const DATA_DIGEST: u8 = 0x02;
    pub const SNACK_REJECT: u8 = 0x03;
    pub const PROTOCOL_ERROR: u8 = 0x04;
    pub const NOT_SUPPORTED: u8 = 0x05;
    pub const IMMEDIATE_REJECT: u8 = 0x06;
    pub const TASK_IN_PROGRESS: u8 = 0x07;
    pub const INVALID_FIELD: u8 = 0x09;
    pub const LONG_OP_REJECT: u8 = 0x0a;
    pub const WAITING_FOR_LOGOUT: u8 = 0x0c;
}

/// Byte 1 flag bits.
pub mod flag {
    pub const FINAL: u8 = 0x80;
    /// Text / Login continue.
    pub const CONTINUE: u8 = 0x40;
    /// Login transit.
    pub const TRANSIT: u8 = 0x80;
    /// SCSI command read / write.
    pub const READ: u8 = 0x40;
    pub const WRITE: u8 = 0x20;
    /// Residual flags (SCSI Response, Data-In).
    pub const OVERFLOW: u8 = 0x04;
    pub const UNDERFLOW: u8 = 0x02;
    /// Data-In carries status.
    pub const STATUS: u8 = 0x01;
}

/// Byte offsets of the fields shared by many PDUs.
pub mod at {
    pub const DSL: usize = 5;
    pub const LUN: usize = 8;
    pub const ITT: usize = 16;
    /// TTT, EDTL, CID or RefTaskTag depending on the opcode.
    pub const W20: usize = 20;
    /// CmdSN (requests) or StatSN (responses).
    pub const W24: usize = 24;
    /// ExpStatSN (requests) or ExpCmdSN (responses).
    pub const W28: usize = 28;
    /// MaxCmdSN (responses), RefCmdSN (TMF) or CDB start.
    pub const W32: usize = 32;
    /// DataSN / R2TSN / ExpDataSN.
    pub const W36: usize = 36;
    /// Buffer offset.
    pub const W40: usize = 40;
    /// Residual count, desired data transfer length.
    pub const W44: usize = 44;
    pub const CDB: usize = 32;
}

/// AHS types.
pub mod ahs {
    pub const EXTENDED_CDB: u8 = 1;
    pub const BIDI_READ_LEN: u8 = 2;
}

/// A Basic Header Segment.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Bhs(pub [u8; BHS_LEN]);

const _: () = assert!(core::mem::size_of::<Bhs>() == BHS_LEN);

impl core::fmt::Debug for Bhs {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "Bhs(op {:#04x} flags {:#04x} itt {:#x} dsl {})",
            self.opcode(),
            self.flags(),
            self.itt(),
            self.data_len()
        )
    }
}

impl Bhs {
    /// A zeroed header with `opcode` set.
    pub fn new(opcode: u8) -> Self {
        let mut b = [0u8; BHS_LEN];
        b[0] = opcode & 0x3f;
        Bhs(b)
    }

    pub fn from_slice(s: &[u8]) -> Option<Self> {
        s.get(..BHS_LEN)?.try_into().ok().map(Bhs)
    }

    pub fn opcode(&self) -> u8 {
        self.0[0] & 0x3f
    }

    /// The I bit: delivered immediately, CmdSN not advanced.
    pub fn immediate(&self) -> bool {
        self.0[0] & 0x40 != 0
    }

    pub fn flags(&self) -> u8 {
        self.0[1]
    }

    pub fn is_final(&self) -> bool {
        self.0[1] & flag::FINAL != 0
    }

    pub fn set_flags(&mut self, f: u8) -> &mut Self {
        self.0[1] = f;
        self
    }

    pub fn byte(&self, i: usize) -> u8 {
        self.0.get(i).copied().unwrap_or(0)
    }

    pub fn set_byte(&mut self, i: usize, v: u8) -> &mut Self {
        if let Some(b) = self.0.get_mut(i) {
            *b = v;
        }
        self
    }

    /// TotalAHSLength in bytes.
    pub fn ahs_len(&self) -> usize {
        self.0[4] as usize * 4
    }

    pub fn data_len(&self) -> usize {
        u32::from_be_bytes([0, self.0[5], self.0[6], self.0[7]]) as usize
    }

    /// Sets DataSegmentLength (24 bits; callers keep segments below 16 MiB).
    pub fn set_data_len(&mut self, n: usize) -> &mut Self {
        let b = (n as u32).to_be_bytes();
        self.0[5..8].copy_from_slice(&b[1..4]);
        self
    }

    pub fn u16_at(&self, off: usize) -> u16 {
        match self.0.get(off..off + 2) {
            Some(s) => u16::from_be_bytes([s[0], s[1]]),
            None => 0,
        }
    }

    pub fn u32_at(&self, off: usize) -> u32 {
        match self.0.get(off..off + 4) {
            Some(s) => u32::from_be_bytes([s[0], s[1], s[2], s[3]]),
            None => 0,
        }
    }

    pub fn set_u16(&mut self, off: usize, v: u16) -> &mut Self {
        if let Some(s) = self.0.get_mut(off..off + 2) {
            s.copy_from_slice(&v.to_be_bytes());
        }
        self
    }

    pub fn set_u32(&mut self, off: usize, v: u32) -> &mut Self {
        if let Some(s) = self.0.get_mut(off..off + 4) {
            s.copy_from_slice(&v.to_be_bytes());
        }
        self
    }

    pub fn lun_raw(&self) -> [u8; 8] {
        let mut l = [0u8; 8];
        l.copy_from_slice(&self.0[8..16]);
        l
    }

    pub fn set_lun_raw(&mut self, l: [u8; 8]) -> &mut Self {
        self.0[8..16].copy_from_slice(&l);
        self
    }

    pub fn itt(&self) -> u32 {
        self.u32_at(at::ITT)
    }

    pub fn set_itt(&mut self, v: u32) -> &mut Self {
        self.set_u32(at::ITT, v)
    }

    /// CmdSN of a request.
    pub fn cmd_sn(&self) -> u32 {
        self.u32_at(at::W24)
    }

    /// The 16-byte CDB field of a SCSI Command.
    pub fn cdb(&self) -> &[u8] {
        &self.0[at::CDB..BHS_LEN]
    }

    /// StatSN, ExpCmdSN and MaxCmdSN of a response.
    pub fn set_sns(&mut self, stat_sn: u32, exp_cmd_sn: u32, max_cmd_sn: u32) -> &mut Self {
        self.set_u32(at::W24, stat_sn)
            .set_u32(at::W28, exp_cmd_sn)
            .set_u32(at::W32, max_cmd_sn)
    }
}

/// The SAM LUN structure to a LUN number: peripheral (bus 0) and flat
/// addressing; anything else yields a number no LUN has.
pub fn decode_lun(raw: [u8; 8]) -> u64 {
    match raw[0] >> 6 {
        0 if raw[0] & 0x3f == 0 => raw[1] as u64,
        1 => ((raw[0] as u64 & 0x3f) << 8) | raw[1] as u64,
        _ => u64::MAX,
    }
}

/// A LUN number in the form REPORT LUNS uses.
pub fn encode_lun(lun: u64) -> [u8; 8] {
    let mut l = [0u8; 8];
    if lun < 256 {
        l[1] = lun as u8;
    } else {
        l[0] = 0x40 | ((lun >> 8) as u8 & 0x3f);
        l[1] = lun as u8;
    }
    l
}

/// Bytes of padding after `n` bytes of data.
pub fn pad_len(n: usize) -> usize {
    (4 - n % 4) % 4
}

/// What an Additional Header Segment area holds.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Ahs {
    /// CDB bytes beyond the 16 in the BHS.
    pub extended_cdb: Vec<u8>,
    pub bidi_read_len: Option<u32>,
}

/// Parses the AHS area; `None` if it is malformed.
pub fn parse_ahs(mut area: &[u8]) -> Option<Ahs> {
    let mut out = Ahs::default();
    while !area.is_empty() {
        let len = u16::from_be_bytes([*area.first()?, *area.get(1)?]) as usize;
        let kind = *area.get(2)?;
        // AHSLength counts the bytes after the type byte.
        let body = area.get(3..3 + len)?;
        match kind {
            ahs::EXTENDED_CDB if len >= 1 && out.extended_cdb.is_empty() => {
                out.extended_cdb.extend_from_slice(body.get(1..)?);
            }
            ahs::BIDI_READ_LEN if len == 5 => {
                out.bidi_read_len = Some(u32::from_be_bytes(body.get(1..5)?.try_into().ok()?));
            }
            _ => return None,
        }
        let total = 3 + len;
        area = area.get(total + pad_len(total)..).unwrap_or(&[]);
    }
    Some(out)
}

/// Builds an AHS area (for tests and initiator-side tools).
pub fn build_ahs(a: &Ahs) -> Vec<u8> {
    let mut v = Vec::new();
    if !a.extended_cdb.is_empty() {
        let len = a.extended_cdb.len() + 1;
        v.extend((len as u16).to_be_bytes());
        v.push(ahs::EXTENDED_CDB);
        v.push(0);
        v.extend(&a.extended_cdb);
        v.resize(v.len() + pad_len(3 + len), 0);
    }
    if let Some(n) = a.bidi_read_len {
        v.extend(5u16.to_be_bytes());
        v.push(ahs::BIDI_READ_LEN);
        v.push(0);
        v.extend(n.to_be_bytes());
        v.resize(v.len() + pad_len(8), 0);
    }
    v
}

/// Whole PDU bytes: header (with AHS and optional digest) then data (with
/// padding and optional digest).
pub fn encode(bhs: &Bhs, ahs: &[u8], data: &[u8], hd: bool, dd: bool) -> Vec<u8> {
    let mut b = *bhs;
    b.set_data_len(data.len());
    b.0[4] = (ahs.len() / 4) as u8;
    let pad = pad_len(data.len());
    let mut v = Vec::with_capacity(BHS_LEN + ahs.len() + data.len() + pad + 8);
    v.extend_from_slice(&b.0);
    v.extend_from_slice(ahs);
    if hd {
        let crc = crc32c(&v);
        v.extend_from_slice(&crc.to_le_bytes());
    }
    if !data.is_empty() {
        v.extend_from_slice(data);
        v.resize(v.len() + pad, 0);
        if dd {
            let crc = crc32c(&v[v.len() - data.len() - pad..]);
            v.extend_from_slice(&crc.to_le_bytes());
        }
    }
    v
}

/// The data digest over data pieces plus padding.
pub fn data_digest<'a>(pieces: impl IntoIterator<Item = &'a [u8]>) -> u32 {
    let mut crc = 0;
    let mut n = 0;
    for p in pieces {
        crc = crc32c_append(crc, p);
        n += p.len();
    }
    crc32c_append(crc, &[0u8; 3][..pad_len(n)])
}

/// Digests travel least significant byte first (RFC 7143 §13.1 / the
/// CRC's natural order as the Linux initiator sends it).
pub fn digest_bytes(crc: u32) -> [u8; 4] {
    crc.to_le_bytes()
}

/// Lengths of a PDU whose header is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    /// BHS + AHS (+ header digest).
    pub header: usize,
    /// Data segment without padding.
    pub data: usize,
    /// Everything, including padding and the data digest.
    pub total: usize,
}

/// Frame lengths for a header, given the digests in force.
pub fn frame(bhs: &Bhs, hd: bool, dd: bool) -> Frame {
    let header = BHS_LEN + bhs.ahs_len() + if hd { DIGEST_LEN } else { 0 };
    let data = bhs.data_len();
    let mut total = header + data + pad_len(data);
    if dd && data > 0 {
        total += DIGEST_LEN;
    }
    Frame {
        header,
        data,
        total,
    }
}

/// One received PDU, framing checked.
#[derive(Debug)]
pub struct Pdu {
    pub bhs: Bhs,
    pub ahs: Vec<u8>,
    pub data: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    HeaderDigest,
    DataDigest,
}

impl Pdu {
    /// Splits a complete frame (`bytes.len() == frame(..).total`) and checks
    /// its digests. A data digest error still returns the header.
    pub fn parse(bytes: &[u8], hd: bool, dd: bool) -> Result<Pdu, (FrameError, Option<Bhs>)> {
        let bhs = Bhs::from_slice(bytes).ok_or((FrameError::HeaderDigest, None))?;
        let f = frame(&bhs, hd, dd);
        if bytes.len() < f.total {
            return Err((FrameError::HeaderDigest, None));
        }
        let hlen = BHS_LEN + bhs.ahs_len();
        if hd {
            let want = crc32c(&bytes[..hlen]);
            if bytes[hlen..hlen + 4] != digest_bytes(want) {
                return Err((FrameError::HeaderDigest, None));
            }
        }
        let padded = f.data + pad_len(f.data);
        let seg = &bytes[f.header..f.header + padded];
        if dd && f.data > 0 {
            let want = crc32c(seg);
            if bytes[f.header + padded..f.header + padded + 4] != digest_bytes(want) {
                return Err((FrameError::DataDigest, Some(bhs)));
            }
        }
        Ok(Pdu {
            bhs,
            ahs: bytes[BHS_LEN..hlen].to_vec(),
            data: seg[..f.data].to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bhs_fields_at_fixed_offsets() {
        let mut b = Bhs::new(op::SCSI_RSP);
        b.set_flags(0x80).set_itt(0x0102_0304).set_sns(5, 6, 7);
        b.set_data_len(0x01_0203);
        assert_eq!(b.0[0], 0x21);
        assert_eq!(&b.0[5..8], &[1, 2, 3]);
        assert_eq!(&b.0[16..20], &[1, 2, 3, 4]);
        assert_eq!(&b.0[24..36], &[0, 0, 0, 5, 0, 0, 0, 6, 0, 0, 0, 7]);
        assert_eq!(b.data_len(), 0x01_0203);
        assert_eq!(b.u32_at(46), 0, "reads past the end are zero, not a panic");
        b.set_u32(46, 9);
        assert_eq!(b.u16_at(46), 0);
    }

    #[test]
    fn luns_round_trip() {
        for l in [0u64, 1, 255, 256, 16383] {
            assert_eq!(decode_lun(encode_lun(l)), l);
        }
        assert_eq!(encode_lun(1), [0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(encode_lun(300), [0x41, 0x2c, 0, 0, 0, 0, 0, 0]);
        assert_eq!(decode_lun([0x81, 0, 0, 0, 0, 0, 0, 0]), u64::MAX);
        assert_eq!(decode_lun([0x01, 0, 0, 0, 0, 0, 0, 0]), u64::MAX);
    }

    #[test]
    fn encode_pads_and_digests() {
        let mut b = Bhs::new(op::NOP_IN);
        b.set_flags(0x80);
        let v = encode(&b, &[], b"abcde", true, true);
        assert_eq!(v.len(), 48 + 4 + 8 + 4);
        assert_eq!(v[7], 5);
        assert_eq!(&v[52..60], b"abcde\0\0\0");
        assert_eq!(&v[48..52], &crc32c(&v[..48]).to_le_bytes());
        assert_eq!(&v[60..64], &crc32c(b"abcde\0\0\0").to_le_bytes());
        let p = Pdu::parse(&v, true, true).unwrap();
        assert_eq!(p.data, b"abcde");
        assert_eq!(frame(&p.bhs, true, true).total, v.len());
        assert_eq!(data_digest([&b"ab"[..], b"cde"]), crc32c(b"abcde\0\0\0"));
        // No data: no data digest.
        assert_eq!(encode(&b, &[], b"", true, true).len(), 52);
    }

    #[test]
    fn digest_errors_are_told_apart() {
        let b = Bhs::new(op::NOP_OUT);
        let mut v = encode(&b, &[], b"xyz", true, true);
        let n = v.len();
        v[n - 1] ^= 1;
        assert_eq!(
            Pdu::parse(&v, true, true).unwrap_err().0,
            FrameError::DataDigest
        );
        v[3] ^= 1;
        assert_eq!(
            Pdu::parse(&v, true, true).unwrap_err().0,
            FrameError::HeaderDigest
        );
    }

    /// A known CRC32C vector: the iSCSI test pattern of 32 zero bytes.
    #[test]
    fn crc32c_fixture() {
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
        // Its wire form, as RFC 7143 Appendix B lists it: aa 36 91 8a.
        assert_eq!(digest_bytes(0x8a91_36aa), [0xaa, 0x36, 0x91, 0x8a]);
    }

    #[test]
    fn ahs_parse_and_build() {
        let a = Ahs {
            extended_cdb: (16u8..32).collect(),
            bidi_read_len: Some(4096),
        };
        let v = build_ahs(&a);
        assert_eq!(v.len() % 4, 0);
        assert_eq!(parse_ahs(&v), Some(a));
        assert_eq!(parse_ahs(&[0, 9, 1]), None);
        assert_eq!(parse_ahs(&[0, 1, 7, 0]), None);
        assert_eq!(parse_ahs(&[]), Some(Ahs::default()));
    }

    #[test]
    fn login_request_fixture() {
        // A Login Request as libiscsi sends its first one (header only).
        let raw: [u8; 48] = [
            0x43, 0x87, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x80, 0x12, 0x34, 0x56, 0x78, 0x9a,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x05,
            0x00, 0x00, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        let b = Bhs(raw);
        assert_eq!(b.opcode(), op::LOGIN_REQ);
        assert!(b.immediate());
        assert_eq!(b.flags() & 0x80, 0x80);
        assert_eq!((b.flags() >> 2) & 3, 1);
        assert_eq!(b.flags() & 3, 3);
        assert_eq!(b.data_len(), 16);
        assert_eq!(b.itt(), 1);
        assert_eq!(b.cmd_sn(), 5);
        assert_eq!(&b.0[8..14], &[0x80, 0x12, 0x34, 0x56, 0x78, 0x9a]);
    }
}
