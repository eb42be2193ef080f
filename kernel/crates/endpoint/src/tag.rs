//! Storage tags: what a block completion carries back to find its engine.
//!
//! Bit 63 marks benchmark I/O, bits 61-62 the service, then 8 bits of
//! socket slot (up to 256 connections per service), 14 of slot generation
//! (a closed connection's late completions are dropped, not delivered to
//! its successor) and 39 of engine tag ([`ironbay_bdev::engine::tag`]).

pub const BENCH: u64 = 1 << 63;
const SERVICE_SHIFT: u32 = 61;
const SLOT_SHIFT: u32 = 53;
const GEN_SHIFT: u32 = 39;
pub const GEN_MASK: u16 = (1 << (SLOT_SHIFT - GEN_SHIFT)) - 1;
pub const ENGINE_MASK: u64 = (1 << GEN_SHIFT) - 1;
/// Slots one service may have.
pub const MAX_SLOTS: usize = 1 << (SERVICE_SHIFT - SLOT_SHIFT);
const _: () = assert!(SLOT_SHIFT + 8 == SERVICE_SHIFT && SERVICE_SHIFT + 2 == 63);

pub fn pack(service: u8, slot: usize, generation: u16, engine: u64) -> u64 {
    ((service & 3) as u64) << SERVICE_SHIFT
        | ((slot & (MAX_SLOTS - 1)) as u64) << SLOT_SHIFT
        | ((generation & GEN_MASK) as u64) << GEN_SHIFT
        | (engine & ENGINE_MASK)
}

/// The service of a non-benchmark tag.
pub fn service(tag: u64) -> Option<u8> {
    (tag & BENCH == 0).then_some((tag >> SERVICE_SHIFT) as u8 & 3)
}

/// (slot, generation, engine tag).
pub fn unpack(tag: u64) -> (usize, u16, u64) {
    (
        (tag >> SLOT_SHIFT) as usize & (MAX_SLOTS - 1),
        (tag >> GEN_SHIFT) as u16 & GEN_MASK,
        tag & ENGINE_MASK,
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trip() {
        let t = super::pack(2, 255, 0x3fff, (1 << 39) - 1);
        assert_eq!(super::service(t), Some(2));
        assert_eq!(super::unpack(t), (255, 0x3fff, (1 << 39) - 1));
        assert_eq!(super::service(t | super::BENCH), None);
    }
}
