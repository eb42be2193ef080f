//! Boot path of the ironbay kernel image.
//!
//! `entry.s` carries the Multiboot1 header (with address fields, so loaders that
//! do not parse ELF64 can still load the image), the Xen PVH note, and the
//! 32-bit code that enters long mode. This crate also turns what either loader
//! hands over into one [`BootInfo`]: memory map, command line, modules and RSDP.
//!
//! Parsing reads physical memory only through [`PhysRead`], so it is plain safe
//! code tested on the host against byte fixtures; the kernel supplies the one
//! implementation that touches real memory.

#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]

mod info;
mod multiboot;
mod pvh;

pub use info::{BootError, BootInfo, MemKind, MemRegion, Module, Protocol};

#[cfg(target_os = "none")]
#[allow(unsafe_code, reason = "the 32-bit entry and the headers are assembly")]
mod entry {
    core::arch::global_asm!(include_str!("entry.s"), options(att_syntax));
}

/// Reads bytes of physical memory for the boot-info parsers.
pub trait PhysRead {
    /// Fills `buf` from physical address `addr`; false if the range is not readable.
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool;

    fn read_u32(&self, addr: u64) -> Option<u32> {
        let mut b = [0; 4];
        self.read(addr, &mut b).then(|| u32::from_le_bytes(b))
    }

    fn read_u64(&self, addr: u64) -> Option<u64> {
        let mut b = [0; 8];
        self.read(addr, &mut b).then(|| u64::from_le_bytes(b))
    }
}

/// Multiboot1 magic the loader leaves in eax.
pub const MULTIBOOT_LOADER_MAGIC: u32 = 0x2BAD_B002;

/// Normalises the loader's hand-over into a [`BootInfo`].
///
/// `protocol` and `magic` are what the 32-bit entry passed on; `info` is the
/// physical address of the Multiboot information or the PVH start info.
pub fn parse(
    mem: &impl PhysRead,
    protocol: u32,
    info: u64,
    magic: u32,
) -> Result<BootInfo, BootError> {
    match protocol {
        1 if magic == MULTIBOOT_LOADER_MAGIC => multiboot::parse(mem, info),
        1 => Err(BootError::BadMagic(magic)),
        2 => pvh::parse(mem, info),
        other => Err(BootError::UnknownProtocol(other)),
    }
}

/// TSC value recorded by the first instruction of the 32-bit entry.
#[cfg(target_os = "none")]
#[allow(unsafe_code, reason = "reads a word the assembly entry wrote")]
pub fn entry_tsc() -> u64 {
    unsafe extern "C" {
        static boot_tsc: u64;
    }
    // SAFETY: `boot_tsc` is a 64-bit word in `.data` written once by the 32-bit
    // entry before any Rust code runs and never written again.
    unsafe { core::ptr::read_volatile(&raw const boot_tsc) }
}

/// Physical extent of the loaded image (code, data and bss).
#[cfg(target_os = "none")]
#[allow(unsafe_code, reason = "declares the linker's image symbols")]
pub fn image_range() -> core::ops::Range<u64> {
    unsafe extern "C" {
        static __image_start: u8;
        static __image_end: u8;
    }
    // Only the addresses of the linker symbols are taken, never their contents.
    let start = (&raw const __image_start) as u64;
    let end = (&raw const __image_end) as u64;
    start..end
}

#[cfg(test)]
pub(crate) mod fake {
    use super::PhysRead;

    /// Physical memory made of a few byte blocks at chosen addresses.
    #[derive(Default)]
    pub struct FakeMem {
        blocks: Vec<(u64, Vec<u8>)>,
    }

    impl FakeMem {
        pub fn put(&mut self, addr: u64, bytes: &[u8]) {
            self.blocks.push((addr, bytes.to_vec()));
        }
    }

    impl PhysRead for FakeMem {
        fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
            for (base, data) in &self.blocks {
                let end = base + data.len() as u64;
                if addr >= *base && addr + buf.len() as u64 <= end {
                    let off = (addr - base) as usize;
                    buf.copy_from_slice(&data[off..off + buf.len()]);
                    return true;
                }
            }
            false
        }
    }
}
