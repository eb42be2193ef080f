//! What every target engine (NBD, iSCSI, NVMe-oF) shares between its
//! protocol and the block layer.

use crate::{BdevId, IoBuf, IoOp};
use alloc::rc::Rc;
use alloc::vec::Vec;

/// A block I/O a target engine wants started; `tag` comes back in the
/// completion.
#[derive(Debug)]
pub struct BlockIo {
    pub tag: u64,
    pub bdev: BdevId,
    pub op: IoOp,
    pub fua: bool,
}

/// Engine tags below 2^39 (the glue owns the bits above): the command's
/// slot, a generation that changes whenever the slot is reused (so a late
/// completion for an earlier command is recognised), and the sub-request.
pub mod tag {
    const SUB_BITS: u32 = 16;
    const GEN_BITS: u32 = 7;
    pub const GEN_MASK: u8 = (1 << GEN_BITS) - 1;

    pub fn pack(slot: u16, generation: u8, sub: u32) -> u64 {
        (slot as u64) << (SUB_BITS + GEN_BITS)
            | ((generation & GEN_MASK) as u64) << SUB_BITS
            | (sub & 0xffff) as u64
    }

    /// (slot, generation, sub-request).
    pub fn unpack(tag: u64) -> (usize, u8, u32) {
        (
            (tag >> (SUB_BITS + GEN_BITS)) as usize & 0xffff,
            (tag >> SUB_BITS) as u8 & GEN_MASK,
            tag as u32 & 0xffff,
        )
    }

    const _: () = assert!(SUB_BITS + GEN_BITS + 16 == 39);
}

/// One piece of queued output: bytes built for it, or a range of a data
/// buffer shared with the command that read it (sent without a copy).
pub enum Out {
    Bytes(Vec<u8>),
    Data {
        buf: Rc<IoBuf>,
        start: usize,
        end: usize,
    },
}

impl Out {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Out::Bytes(v) => v,
            Out::Data { buf, start, end } => buf.as_slice().get(*start..*end).unwrap_or(&[]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::tag;

    #[test]
    fn tags_round_trip() {
        let t = tag::pack(0xffff, 0x7f, 0xffff);
        assert!(t < 1 << 39);
        assert_eq!(tag::unpack(t), (0xffff, 0x7f, 0xffff));
        assert_eq!(tag::unpack(tag::pack(3, 0x80 | 5, 9)), (3, 5, 9));
    }
}
