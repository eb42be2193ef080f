//! Physical Region Page entries for one data transfer.
//!
//! PRP1 points at the first byte (any dword-aligned address). The rest of the
//! transfer is described page by page: one page more fits in PRP2 directly,
//! more pages need a PRP list, whose address goes in PRP2.

/// Pages after the first that a transfer of `len` bytes at `phys` touches.
pub fn extra_pages(phys: u64, len: usize, page: u64) -> u64 {
    if len == 0 {
        return 0;
    }
    let first_end = (phys / page + 1) * page;
    let end = phys + len as u64;
    if end <= first_end {
        0
    } else {
        (end - first_end).div_ceil(page)
    }
}

/// The page addresses after the first, in order.
pub fn entries(phys: u64, len: usize, page: u64) -> impl Iterator<Item = u64> {
    let first_page = phys / page * page;
    (1..=extra_pages(phys, len, page)).map(move |i| first_page + i * page)
}

/// Where PRP2 comes from for a transfer.
#[derive(Debug, PartialEq, Eq)]
pub enum Prp2 {
    None,
    Page(u64),
    /// A list of this many entries must be written at the list address.
    List(u64),
}

pub fn plan(phys: u64, len: usize, page: u64) -> Prp2 {
    match extra_pages(phys, len, page) {
        0 => Prp2::None,
        1 => Prp2::Page((phys / page + 1) * page),
        n => Prp2::List(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    const P: u64 = 4096;

    #[test]
    fn one_and_two_pages() {
        assert_eq!(plan(0x10000, 4096, P), Prp2::None);
        assert_eq!(plan(0x10000, 512, P), Prp2::None);
        assert_eq!(plan(0x10000, 8192, P), Prp2::Page(0x11000));
        // Unaligned start: 4 KiB spans two pages.
        assert_eq!(plan(0x10200, 4096, P), Prp2::Page(0x11000));
        assert_eq!(plan(0x10E00, 512, P), Prp2::None);
        assert_eq!(plan(0x10E00, 1024, P), Prp2::Page(0x11000));
    }

    #[test]
    fn lists_beyond_two_pages() {
        assert_eq!(plan(0x10000, 3 * 4096, P), Prp2::List(2));
        let e: Vec<u64> = entries(0x10200, 128 * 1024, P).collect();
        assert_eq!(e.len(), 32);
        assert_eq!(e[0], 0x11000);
        assert_eq!(*e.last().unwrap(), 0x10000 + 32 * 4096);
        assert_eq!(plan(0x10200, 128 * 1024, P), Prp2::List(32));
        assert_eq!(extra_pages(0x10000, 1 << 20, P), 255);
        assert_eq!(extra_pages(0, 0, P), 0);
    }
}
