//! Data buffers for block I/O.

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

/// 512 bytes with 512-byte alignment: the unit buffers are made of, so every
/// buffer suits sector-aligned DMA without any unsafe code.
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C, align(512))]
struct Sector([u8; 512]);

/// An owned, 512-byte aligned, zero-initialised I/O buffer.
///
/// It moves into a request and comes back in the completion. In the kernel
/// virtual and physical addresses are equal and the heap is one physically
/// contiguous range, so [`IoBuf::addr`] is also the buffer's bus address.
pub struct IoBuf {
    sectors: Box<[Sector]>,
    len: usize,
    /// The budget share this buffer holds, released when it is dropped.
    charge: Option<crate::budget::Charge>,
}

impl IoBuf {
    pub const ALIGN: usize = 512;

    /// A zeroed buffer of `len` bytes.
    pub fn new(len: usize) -> Self {
        let sectors = vec![Sector::new_zeroed(); len.div_ceil(512)].into_boxed_slice();
        IoBuf {
            sectors,
            len,
            charge: None,
        }
    }

    /// A zeroed buffer of `len` bytes, or `None` when the heap has no room:
    /// the data path never lets a peer's request size abort the appliance.
    pub fn try_new(len: usize) -> Option<Self> {
        let n = len.div_ceil(512);
        let mut v: Vec<Sector> = Vec::new();
        v.try_reserve_exact(n).ok()?;
        v.resize(n, Sector::new_zeroed());
        Some(IoBuf {
            sectors: v.into_boxed_slice(),
            len,
            charge: None,
        })
    }

    pub(crate) fn with_charge(mut self, charge: crate::budget::Charge) -> Self {
        self.charge = Some(charge);
        self
    }

    /// Whether the buffer counts against a budget.
    pub fn is_charged(&self) -> bool {
        self.charge.is_some()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes the buffer can hold without reallocating.
    pub fn capacity(&self) -> usize {
        self.sectors.len() * 512
    }

    /// Changes the length within the capacity (for reuse with another size).
    /// Returns false if `len` exceeds the capacity.
    pub fn set_len(&mut self, len: usize) -> bool {
        if len > self.capacity() {
            return false;
        }
        self.len = len;
        true
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.sectors.as_bytes()[..self.len]
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.sectors.as_mut_bytes()[..self.len]
    }

    /// Address of the first byte (its physical address in the kernel).
    pub fn addr(&self) -> usize {
        self.sectors.as_ptr() as usize
    }
}

impl core::fmt::Debug for IoBuf {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "IoBuf({} bytes at {:#x})", self.len, self.addr())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_zeroed_and_resizable() {
        let mut b = IoBuf::new(1000);
        assert_eq!(b.len(), 1000);
        assert_eq!(b.capacity(), 1024);
        assert_eq!(b.addr() % 512, 0);
        assert!(b.as_slice().iter().all(|&x| x == 0));
        b.as_mut_slice()[999] = 7;
        assert!(b.set_len(1024));
        assert_eq!(b.as_slice()[999], 7);
        assert!(!b.set_len(1025));
        assert!(IoBuf::new(0).is_empty());
    }
}
