//! The on-disk layout: where the two slots sit and what a slot header holds
//! (docs/config-area.md is the prose version).
//!
//! A [`Header`] is parsed from and emitted to the first bytes of a slot's
//! header block; every field is little-endian at a fixed byte range, and a
//! header is valid only with the right magic, a version this code knows, the
//! slot number it was found in, a non-zero generation, a length that fits,
//! and a matching header CRC. Parsing never panics on any input.

use core::ops::Range;

/// The first eight bytes of a valid header.
pub const MAGIC: [u8; 8] = *b"IBAYCONF";
/// The format this code writes and reads.
pub const VERSION: u32 = 1;
/// Bytes of one slot: header block, then payload.
pub const SLOT_BYTES: u64 = 1 << 20;
/// Bytes the header block takes at the start of a slot (a 4 KiB block, so
/// the payload stays aligned for 512-byte and 4 KiB devices alike).
pub const HEADER_BLOCK: usize = 4096;
/// The largest payload a slot holds.
pub const MAX_PAYLOAD: usize = SLOT_BYTES as usize - HEADER_BLOCK;
/// Number of slots.
pub const SLOTS: usize = 2;
/// Bytes the area takes from the start of its bdev.
pub const AREA_BYTES: u64 = SLOT_BYTES * SLOTS as u64;

mod field {
    use core::ops::Range;
    pub const MAGIC: Range<usize> = 0..8;
    pub const VERSION: Range<usize> = 8..12;
    pub const SLOT: Range<usize> = 12..16;
    pub const GENERATION: Range<usize> = 16..24;
    pub const LENGTH: Range<usize> = 24..32;
    pub const PAYLOAD_CRC: Range<usize> = 32..36;
    pub const FLAGS: Range<usize> = 36..40;
    pub const HEADER_CRC: Range<usize> = 40..44;
}

/// Bytes of the header proper; the rest of the header block is zero.
pub const HEADER_LEN: usize = field::HEADER_CRC.end;

/// Byte offset of slot `slot` on the bdev.
pub fn slot_offset(slot: usize) -> u64 {
    slot as u64 * SLOT_BYTES
}

/// One slot's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Which slot this header belongs in (0 or 1).
    pub slot: u8,
    /// Grows by one with every save; the valid slot with the highest wins.
    pub generation: u64,
    /// Payload bytes that follow the header block.
    pub length: u32,
    /// CRC32C of those bytes.
    pub payload_crc: u32,
}

/// Why a header block does not hold a valid header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// Shorter than a header.
    Truncated,
    /// No magic: the slot was never written (or was wiped).
    NoMagic,
    /// A format this code does not know.
    Version(u32),
    /// The header CRC does not match: torn or corrupt.
    Checksum,
    /// Fields that cannot be (wrong slot, generation 0, length over the
    /// limit, flags set).
    Invalid,
}

fn le32(b: &[u8], r: Range<usize>) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[r]);
    u32::from_le_bytes(a)
}

fn le64(b: &[u8], r: Range<usize>) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[r]);
    u64::from_le_bytes(a)
}

impl Header {
    /// The header at the start of `block`, found in slot `slot`.
    pub fn parse(block: &[u8], slot: usize) -> Result<Header, HeaderError> {
        let b = block.get(..HEADER_LEN).ok_or(HeaderError::Truncated)?;
        if b[field::MAGIC] != MAGIC {
            return Err(HeaderError::NoMagic);
        }
        let version = le32(b, field::VERSION);
        if version != VERSION {
            return Err(HeaderError::Version(version));
        }
        if ironbay_crc::crc32c(&b[..field::HEADER_CRC.start]) != le32(b, field::HEADER_CRC) {
            return Err(HeaderError::Checksum);
        }
        let h = Header {
            slot: le32(b, field::SLOT) as u8,
            generation: le64(b, field::GENERATION),
            length: le64(b, field::LENGTH).min(u64::from(u32::MAX)) as u32,
            payload_crc: le32(b, field::PAYLOAD_CRC),
        };
        let ok = le32(b, field::SLOT) as usize == slot
            && h.generation != 0
            && le64(b, field::LENGTH) <= MAX_PAYLOAD as u64
            && le32(b, field::FLAGS) == 0;
        if ok { Ok(h) } else { Err(HeaderError::Invalid) }
    }

    /// Writes the header into the start of `block` (at least
    /// [`HEADER_LEN`] bytes) and zeroes the rest.
    pub fn emit(&self, block: &mut [u8]) {
        block.fill(0);
        let b = &mut block[..HEADER_LEN];
        b[field::MAGIC].copy_from_slice(&MAGIC);
        b[field::VERSION].copy_from_slice(&VERSION.to_le_bytes());
        b[field::SLOT].copy_from_slice(&u32::from(self.slot).to_le_bytes());
        b[field::GENERATION].copy_from_slice(&self.generation.to_le_bytes());
        b[field::LENGTH].copy_from_slice(&u64::from(self.length).to_le_bytes());
        b[field::PAYLOAD_CRC].copy_from_slice(&self.payload_crc.to_le_bytes());
        let crc = ironbay_crc::crc32c(&b[..field::HEADER_CRC.start]);
        b[field::HEADER_CRC].copy_from_slice(&crc.to_le_bytes());
    }

    /// Whether `payload` is what this header describes.
    pub fn matches(&self, payload: &[u8]) -> bool {
        payload.len() == self.length as usize && ironbay_crc::crc32c(payload) == self.payload_crc
    }
}

/// The order to try slots in when loading: valid headers, highest
/// generation first.
pub fn load_order(headers: &[Option<Header>; SLOTS]) -> impl Iterator<Item = Header> {
    let mut v: [Option<Header>; SLOTS] = *headers;
    v.sort_by(|a, b| {
        let g = |h: &Option<Header>| h.map_or(0, |h| h.generation);
        g(b).cmp(&g(a))
    });
    v.into_iter().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Generation 7 in slot 1, the payload `{}`: every byte spelled out.
    fn fixture() -> [u8; HEADER_LEN] {
        let payload_crc = crc32c::crc32c(b"{}");
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(b"IBAYCONF");
        b[8..12].copy_from_slice(&[1, 0, 0, 0]);
        b[12..16].copy_from_slice(&[1, 0, 0, 0]);
        b[16..24].copy_from_slice(&[7, 0, 0, 0, 0, 0, 0, 0]);
        b[24..32].copy_from_slice(&[2, 0, 0, 0, 0, 0, 0, 0]);
        b[32..36].copy_from_slice(&payload_crc.to_le_bytes());
        let crc = crc32c::crc32c(&b[..40]);
        b[40..44].copy_from_slice(&crc.to_le_bytes());
        b
    }

    #[test]
    fn fixture_parses_and_emits_byte_for_byte() {
        let mut block = [0xAAu8; HEADER_BLOCK];
        block[..HEADER_LEN].copy_from_slice(&fixture());
        let h = Header::parse(&block, 1).unwrap();
        assert_eq!(
            h,
            Header {
                slot: 1,
                generation: 7,
                length: 2,
                payload_crc: crc32c::crc32c(b"{}"),
            }
        );
        assert!(h.matches(b"{}") && !h.matches(b"{ }") && !h.matches(b"[]"));
        let mut out = [0xAAu8; HEADER_BLOCK];
        h.emit(&mut out);
        assert_eq!(out[..HEADER_LEN], fixture());
        assert!(out[HEADER_LEN..].iter().all(|&b| b == 0));
    }

    #[test]
    fn every_damage_is_refused() {
        let good = fixture();
        assert_eq!(Header::parse(&good[..43], 1), Err(HeaderError::Truncated));
        assert_eq!(Header::parse(&[0u8; 4096], 1), Err(HeaderError::NoMagic));
        assert_eq!(Header::parse(&good, 0), Err(HeaderError::Invalid));
        let mut v2 = good;
        v2[8] = 2;
        assert_eq!(Header::parse(&v2, 1), Err(HeaderError::Version(2)));
        // Any single flipped bit after the version is caught by the header CRC.
        for byte in 12..HEADER_LEN {
            for bit in 0..8 {
                let mut b = good;
                b[byte] ^= 1 << bit;
                assert!(Header::parse(&b, 1).is_err(), "byte {byte} bit {bit}");
            }
        }
        // Well-formed but impossible fields.
        for (generation, length) in [(0, 2), (1, MAX_PAYLOAD as u32 + 1)] {
            let mut b = [0u8; HEADER_LEN];
            Header {
                slot: 1,
                generation,
                length,
                payload_crc: 0,
            }
            .emit(&mut b);
            assert_eq!(Header::parse(&b, 1), Err(HeaderError::Invalid));
        }
    }

    #[test]
    fn newest_valid_slot_is_tried_first() {
        let h = |slot, generation| {
            Some(Header {
                slot,
                generation,
                length: 0,
                payload_crc: 0,
            })
        };
        let gens =
            |hs: [Option<Header>; 2]| -> Vec<u8> { load_order(&hs).map(|h| h.slot).collect() };
        assert_eq!(gens([h(0, 3), h(1, 4)]), [1, 0]);
        assert_eq!(gens([h(0, 9), h(1, 4)]), [0, 1]);
        assert_eq!(gens([None, h(1, 4)]), [1]);
        assert_eq!(gens([h(0, 1), None]), [0]);
        assert!(gens([None, None]).is_empty());
    }
}
