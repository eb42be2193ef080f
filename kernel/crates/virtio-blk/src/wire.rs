//! virtio-blk on the wire (virtio 1.2, section 5.2).

use bitflags::bitflags;
use zerocopy::{Immutable, IntoBytes, KnownLayout};

bitflags! {
    /// Feature bits we may negotiate.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Features: u64 {
        const SEG_MAX = 1 << 2;
        const RO = 1 << 5;
        const BLK_SIZE = 1 << 6;
        const FLUSH = 1 << 9;
        const DISCARD = 1 << 13;
        const WRITE_ZEROES = 1 << 14;
        const VERSION_1 = 1 << 32;
    }
}

/// What we ask for. No indirect descriptors (they allocate per request) and
/// no event index: requests are three direct descriptors each.
pub const WANTED: Features = Features::SEG_MAX
    .union(Features::RO)
    .union(Features::BLK_SIZE)
    .union(Features::FLUSH)
    .union(Features::DISCARD)
    .union(Features::WRITE_ZEROES)
    .union(Features::VERSION_1);

/// Byte offsets in `struct virtio_blk_config`.
pub mod config {
    pub const CAPACITY: usize = 0;
    pub const SEG_MAX: usize = 12;
    pub const BLK_SIZE: usize = 20;
    pub const MAX_DISCARD_SECTORS: usize = 36;
    pub const MAX_DISCARD_SEG: usize = 40;
    pub const MAX_WRITE_ZEROES_SECTORS: usize = 48;
    pub const MAX_WRITE_ZEROES_SEG: usize = 52;
}

pub const SECTOR: u64 = 512;

pub mod req {
    pub const IN: u32 = 0;
    pub const OUT: u32 = 1;
    pub const FLUSH: u32 = 4;
    pub const DISCARD: u32 = 11;
    pub const WRITE_ZEROES: u32 = 13;
}

pub mod status {
    pub const OK: u8 = 0;
    pub const IOERR: u8 = 1;
    pub const UNSUPP: u8 = 2;
}

/// `struct virtio_blk_req` header: type, reserved, sector (in 512-byte units).
#[derive(Clone, Copy, Debug, Default, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct Header {
    pub kind: u32,
    pub reserved: u32,
    pub sector: u64,
}

const _: () = assert!(core::mem::size_of::<Header>() == 16);

/// `struct virtio_blk_discard_write_zeroes`.
#[derive(Clone, Copy, Debug, Default, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct Segment {
    pub sector: u64,
    pub sectors: u32,
    /// Bit 0: the device may unmap the zeroed range.
    pub flags: u32,
}

const _: () = assert!(core::mem::size_of::<Segment>() == 16);

/// Device geometry and limits after negotiation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub block_size: u32,
    pub num_blocks: u64,
    pub read_only: bool,
    pub flush: bool,
    /// Largest discard / write-zeroes request in blocks; 0 when not offered.
    pub max_discard_blocks: u32,
    pub max_write_zeroes_blocks: u32,
    /// Data descriptors per request the device accepts (we use one).
    pub seg_max: u32,
}

/// Config values as read from the device: capacity in sectors, then the
/// optional fields (meaningful only with their feature).
pub struct RawConfig {
    pub capacity: u64,
    pub seg_max: u32,
    pub blk_size: u32,
    pub max_discard_sectors: u32,
    pub max_discard_seg: u32,
    pub max_write_zeroes_sectors: u32,
    pub max_write_zeroes_seg: u32,
}

impl Geometry {
    pub fn new(f: Features, c: &RawConfig) -> Self {
        // A logical block size must be a power of two from 512 to 64 KiB.
        let block_size = if f.contains(Features::BLK_SIZE)
            && c.blk_size.is_power_of_two()
            && (512..=65536).contains(&c.blk_size)
        {
            c.blk_size
        } else {
            SECTOR as u32
        };
        let per_block = block_size as u64 / SECTOR;
        let blocks = |sectors: u32| (sectors as u64 / per_block).min(u32::MAX as u64) as u32;
        Geometry {
            block_size,
            num_blocks: c.capacity / per_block,
            read_only: f.contains(Features::RO),
            flush: f.contains(Features::FLUSH),
            max_discard_blocks: if f.contains(Features::DISCARD) && c.max_discard_seg > 0 {
                blocks(c.max_discard_sectors)
            } else {
                0
            },
            max_write_zeroes_blocks: if f.contains(Features::WRITE_ZEROES)
                && c.max_write_zeroes_seg > 0
            {
                blocks(c.max_write_zeroes_sectors)
            } else {
                0
            },
            seg_max: if f.contains(Features::SEG_MAX) {
                c.seg_max
            } else {
                1
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw() -> RawConfig {
        RawConfig {
            capacity: 2048,
            seg_max: 254,
            blk_size: 4096,
            max_discard_sectors: 0x3FFF_FFFF,
            max_discard_seg: 1,
            max_write_zeroes_sectors: 0x3FFF_FFFF,
            max_write_zeroes_seg: 1,
        }
    }

    #[test]
    fn geometry_from_negotiated_features() {
        let g = Geometry::new(WANTED - Features::RO, &raw());
        assert_eq!((g.block_size, g.num_blocks), (4096, 256));
        assert_eq!(g.max_discard_blocks, 0x3FFF_FFFF / 8);
        assert!(g.flush && !g.read_only);
        let bare = Geometry::new(Features::VERSION_1, &raw());
        assert_eq!(
            (
                bare.block_size,
                bare.num_blocks,
                bare.max_discard_blocks,
                bare.max_write_zeroes_blocks
            ),
            (512, 2048, 0, 0)
        );
        assert!(!bare.flush);
        let odd = Geometry::new(
            WANTED,
            &RawConfig {
                blk_size: 3000,
                ..raw()
            },
        );
        assert_eq!(odd.block_size, 512);
    }

    #[test]
    fn encodings() {
        let h = Header {
            kind: req::OUT,
            reserved: 0,
            sector: 0x0102,
        };
        assert_eq!(
            h.as_bytes(),
            &[1, 0, 0, 0, 0, 0, 0, 0, 2, 1, 0, 0, 0, 0, 0, 0]
        );
        let s = Segment {
            sector: 8,
            sectors: 16,
            flags: 0,
        };
        assert_eq!(&s.as_bytes()[8..12], &[16, 0, 0, 0]);
    }
}
