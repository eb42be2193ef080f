//! The local APIC timer, used to sleep until the network stack's next
//! deadline when there is nothing to do.

use core::sync::atomic::{AtomicU64, Ordering};
use spin::Once;

const SVR: usize = 0xF0;
const EOI: usize = 0xB0;
const LVT_TIMER: usize = 0x320;
const INITIAL_COUNT: usize = 0x380;
const CURRENT_COUNT: usize = 0x390;
const DIVIDE: usize = 0x3E0;
const MASKED: u32 = 1 << 16;

pub const TIMER_VECTOR: u8 = 0x20;
const SPURIOUS_VECTOR: u32 = 0xFF;

static BASE: Once<u64> = Once::new();
/// Timer ticks per millisecond (divide by 16).
static TICKS_PER_MS: AtomicU64 = AtomicU64::new(0);

fn write(reg: usize, v: u32) {
    if let Some(base) = BASE.get() {
        // SAFETY: BASE is the LAPIC page, mapped uncached in `init`; the
        // registers used here are 32-bit and 16-byte aligned.
        unsafe { core::ptr::write_volatile((base + reg as u64) as *mut u32, v) }
    }
}

fn read(reg: usize) -> u32 {
    match BASE.get() {
        // SAFETY: as in `write`.
        Some(base) => unsafe { core::ptr::read_volatile((base + reg as u64) as *const u32) },
        None => 0,
    }
}

fn on_timer(_vector: u8) {
    write(EOI, 0);
}

/// Maps and enables the local APIC and calibrates its timer on the TSC.
pub fn init(phys: u64) -> Result<u64, &'static str> {
    let base = crate::mem::map_mmio(phys, 4096).map_err(|_| "cannot map the local APIC")?;
    BASE.call_once(|| base);
    if !super::trap::register(TIMER_VECTOR, on_timer) {
        return Err("timer vector taken");
    }
    write(SVR, 0x100 | SPURIOUS_VECTOR);
    write(DIVIDE, 0x3);
    write(LVT_TIMER, MASKED | TIMER_VECTOR as u32);
    write(INITIAL_COUNT, u32::MAX);
    crate::time::spin_us(10_000);
    let elapsed = u32::MAX - read(CURRENT_COUNT);
    write(INITIAL_COUNT, 0);
    let per_ms = elapsed as u64 / 10;
    if per_ms == 0 {
        return Err("timer does not count");
    }
    TICKS_PER_MS.store(per_ms, Ordering::Relaxed);
    write(LVT_TIMER, TIMER_VECTOR as u32); // one-shot, unmasked
    Ok(per_ms * 16 * 1000)
}

/// Halts until an interrupt or `us` microseconds, whichever comes first.
pub fn sleep_us(us: u64) {
    let per_ms = TICKS_PER_MS.load(Ordering::Relaxed);
    if per_ms == 0 {
        return;
    }
    let ticks = (us * per_ms / 1000).clamp(1, u32::MAX as u64) as u32;
    write(INITIAL_COUNT, ticks);
    x86_64::instructions::interrupts::enable_and_hlt();
    x86_64::instructions::interrupts::disable();
    write(INITIAL_COUNT, 0);
}
