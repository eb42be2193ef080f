//! The block self-test's data: which extents it writes on a device and what
//! each block holds. The kernel writes it through the bdevs; host tests read
//! the backing files and check the same bytes, so this module is the single
//! definition both sides use.

use crate::rng::Rng;
use alloc::vec::Vec;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fill {
    /// Blocks carry [`fill`]'s pattern.
    Pattern,
    /// Blocks were written with the pattern, then zeroed with WRITE ZEROES.
    Zeroes,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub lba: u64,
    pub blocks: u64,
    pub fill: Fill,
}

fn name_seed(device: &str) -> u64 {
    device.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// Non-overlapping extents covering the start, the end, a large run in the
/// middle (several maximum-size transfers), a zeroed run and scattered small
/// writes. Devices under 64 blocks get just the first and last blocks.
pub fn extents(device: &str, num_blocks: u64, block_size: u32) -> Vec<Extent> {
    let pat = |lba, blocks| Extent {
        lba,
        blocks,
        fill: Fill::Pattern,
    };
    if num_blocks < 64 {
        let mut v = alloc::vec![pat(0, 1)];
        if num_blocks > 1 {
            v.push(pat(num_blocks - 1, 1));
        }
        return v;
    }
    let bs = block_size as u64;
    let mut v = alloc::vec![pat(0, 8), pat(num_blocks - 8, 8)];
    // 32 regions between the ends; each gets at most one extent.
    let region = (num_blocks - 16) / 32;
    let at = |i: u64| 8 + i * region;
    let big = ((1u64 << 20) / bs).clamp(1, region);
    v.push(pat(at(16), big));
    let zero = ((64u64 << 10) / bs).clamp(1, region);
    v.push(Extent {
        lba: at(8),
        blocks: zero,
        fill: Fill::Zeroes,
    });
    let mut rng = Rng::new(name_seed(device) ^ num_blocks);
    for i in (0..32).filter(|i| *i % 4 == 1) {
        let blocks = 1 + rng.below(8.min(region));
        let offset = rng.below(region - blocks + 1);
        v.push(pat(at(i) + offset, blocks));
    }
    v
}

/// Writes the pattern for `device` blocks starting at `lba` into `buf`.
pub fn fill(buf: &mut [u8], device: &str, lba: u64, block_size: u32) {
    let seed = name_seed(device) as u8;
    for (i, block) in buf.chunks_mut(block_size as usize).enumerate() {
        let lba = lba + i as u64;
        for (j, b) in block.iter_mut().enumerate() {
            *b = (lba as u8).wrapping_mul(31) ^ (j as u8).wrapping_mul(7) ^ (j >> 8) as u8 ^ seed;
        }
        let head = header(device, lba);
        let n = head.len().min(block.len());
        block[..n].copy_from_slice(&head[..n]);
    }
}

fn header(device: &str, lba: u64) -> [u8; 32] {
    let mut h = [b' '; 32];
    h[..8].copy_from_slice(b"IRONBAY ");
    let name = device.as_bytes();
    let n = name.len().min(16);
    h[8..8 + n].copy_from_slice(&name[..n]);
    h[24..].copy_from_slice(&lba.to_le_bytes());
    h
}

/// Checks `buf` against the pattern; the error is the first bad byte's offset.
pub fn check(buf: &[u8], device: &str, lba: u64, block_size: u32) -> Result<(), usize> {
    let mut want = alloc::vec![0u8; block_size as usize];
    for (i, block) in buf.chunks(block_size as usize).enumerate() {
        fill(&mut want[..block.len()], device, lba + i as u64, block_size);
        if let Some(j) = block.iter().zip(&want).position(|(a, b)| a != b) {
            return Err(i * block_size as usize + j);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extents_stay_inside_and_apart() {
        for (blocks, bs) in [
            (131_072u64, 512u32),
            (12_288, 4096),
            (64, 512),
            (10, 512),
            (1, 4096),
            (1_000_003, 512),
        ] {
            let mut v = extents("Nvme0n1", blocks, bs);
            assert_eq!(v, extents("Nvme0n1", blocks, bs), "deterministic");
            v.sort_by_key(|e| e.lba);
            for e in &v {
                assert!(
                    e.blocks > 0 && e.lba + e.blocks <= blocks,
                    "{e:?} in {blocks}"
                );
            }
            for w in v.windows(2) {
                assert!(w[0].lba + w[0].blocks <= w[1].lba, "{w:?}");
            }
        }
        assert!(
            extents("x", 131_072, 512)
                .iter()
                .any(|e| e.fill == Fill::Zeroes)
        );
    }

    #[test]
    fn pattern_is_checkable_and_distinct() {
        let mut b = alloc::vec![0u8; 4096];
        fill(&mut b, "VirtioBlk0", 77, 512);
        assert_eq!(check(&b, "VirtioBlk0", 77, 512), Ok(()));
        assert_eq!(&b[..8], b"IRONBAY ");
        assert!(check(&b, "VirtioBlk0", 78, 512).is_err());
        assert!(check(&b, "VirtioBlk1", 77, 512).is_err());
        b[1000] ^= 1;
        assert_eq!(check(&b, "VirtioBlk0", 77, 512), Err(1000));
    }
}
