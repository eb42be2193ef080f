//! The SSE4.2 `crc32` instruction. It operates on general-purpose registers, so
//! it is usable in the soft-float kernel without enabling SSE state.
#![allow(
    unsafe_code,
    reason = "CPUID and the crc32 instruction need inline assembly"
)]

use core::arch::asm;

/// CPUID.01H:ECX.SSE4_2[bit 20].
pub(crate) fn available() -> bool {
    let ecx: u32;
    // SAFETY: CPUID exists on every x86_64 CPU and only writes the four
    // registers named here; rbx is reserved by LLVM, so it is saved around it.
    unsafe {
        asm!(
            "mov {tmp}, rbx",
            "cpuid",
            "mov rbx, {tmp}",
            tmp = out(reg) _,
            inout("eax") 1u32 => _,
            inout("ecx") 0u32 => ecx,
            out("edx") _,
            options(nomem, nostack, preserves_flags),
        );
    }
    ecx & (1 << 20) != 0
}

/// Raw register update (no pre/post inversion). Callers check [`available`].
pub(crate) fn update(crc: u32, data: &[u8]) -> u32 {
    let mut crc = crc as u64;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let word = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        // SAFETY: `available()` was true, so the CPU implements crc32; the
        // instruction reads and writes only the two registers given.
        unsafe {
            asm!("crc32 {0}, {1}", inout(reg) crc, in(reg) word, options(pure, nomem, nostack));
        }
    }
    let mut crc32 = crc as u32;
    for &b in chunks.remainder() {
        // SAFETY: as above, for the byte form of the instruction.
        unsafe {
            asm!("crc32 {0:e}, {1}", inout(reg) crc32, in(reg_byte) b, options(pure, nomem, nostack));
        }
    }
    crc32
}
