//! Time: the TSC, calibrated at boot, gives a monotonic microsecond clock.
//!
//! Calibration counts TSC ticks across 10 ms of PIT channel 2. Machines with no
//! PIT (some hypervisors, newer hardware) fall back to CPUID leaf 0x15, leaf
//! 0x16, then the hypervisor timing leaf 0x40000010.

use crate::arch::cpu::{cpuid, rdtsc};
use core::sync::atomic::{AtomicU64, Ordering};
use ironbay_platform::time as clock;
use x86_64::instructions::port::Port;

static TSC_HZ: AtomicU64 = AtomicU64::new(0);
static TSC_AT_ENTRY: AtomicU64 = AtomicU64::new(0);

/// How the TSC frequency was found.
#[derive(Clone, Copy, Debug)]
pub enum Source {
    Pit,
    AcpiPmTimer,
    Leaf15,
    Leaf16,
    Hypervisor,
    Assumed,
}

/// A point on the monotonic clock, in microseconds since kernel entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Instant(u64);

impl Instant {
    pub fn now() -> Self {
        Instant(uptime_us())
    }

    pub fn elapsed_us(self) -> u64 {
        uptime_us().saturating_sub(self.0)
    }
}

/// Microseconds since kernel entry; 0 until calibrated.
pub fn uptime_us() -> u64 {
    let hz = TSC_HZ.load(Ordering::Relaxed);
    clock::ticks_to_us(
        rdtsc().saturating_sub(TSC_AT_ENTRY.load(Ordering::Relaxed)),
        hz,
    )
}

/// Microseconds since machine reset, as far as the TSC knows (it starts at
/// zero at reset on QEMU and on hardware).
pub fn since_reset_us() -> u64 {
    clock::ticks_to_us(rdtsc(), TSC_HZ.load(Ordering::Relaxed))
}

pub fn tsc_hz() -> u64 {
    TSC_HZ.load(Ordering::Relaxed)
}

/// Busy-waits for `us` microseconds.
pub fn spin_us(us: u64) {
    let start = Instant::now();
    while start.elapsed_us() < us {
        core::hint::spin_loop();
    }
}

pub fn init(entry_tsc: u64) -> Source {
    TSC_AT_ENTRY.store(entry_tsc, Ordering::Relaxed);
    let (hz, source) = if let Some(hz) = calibrate_pit() {
        (hz, Source::Pit)
    } else if let Some(hz) = from_cpuid() {
        hz
    } else {
        // Nothing to measure against: assume 1 GHz so time still advances.
        (1_000_000_000, Source::Assumed)
    };
    TSC_HZ.store(hz, Ordering::Relaxed);
    source
}

/// Measures the TSC against the ACPI PM timer for 10 ms; `None` if the timer
/// does not move.
pub fn measure_with_pm_timer(port: u16, wide: bool) -> Option<u64> {
    const TICKS: u32 = (clock::PM_TIMER_HZ / 100) as u32;
    const MAX_POLLS: u32 = 50_000_000;
    let mut timer: Port<u32> = Port::new(port);
    // SAFETY: the FADT names this port as the PM timer, a read-only counter.
    let mut read = || unsafe { timer.read() };
    let start = read();
    let tsc0 = rdtsc();
    for _ in 0..MAX_POLLS {
        let ticks = clock::pm_timer_delta(start, read(), wide);
        if ticks >= TICKS {
            return clock::tsc_hz_from_pm_timer(rdtsc() - tsc0, ticks as u64);
        }
    }
    None
}

/// Replaces an assumed TSC rate with one measured on the ACPI PM timer, once
/// ACPI is known (machines without a PIT).
pub fn refine_with_pm_timer(source: Source, pm_timer: Option<(u16, bool)>) -> Source {
    let (Source::Assumed, Some((port, wide))) = (source, pm_timer) else {
        return source;
    };
    match measure_with_pm_timer(port, wide) {
        Some(hz) => {
            TSC_HZ.store(hz, Ordering::Relaxed);
            log::info!(
                "TSC recalibrated on the ACPI PM timer: {} MHz",
                hz / 1_000_000
            );
            Source::AcpiPmTimer
        }
        None => source,
    }
}

fn from_cpuid() -> Option<(u64, Source)> {
    let max = cpuid(0, 0).eax;
    if max >= 0x15 {
        let r = cpuid(0x15, 0);
        if let Some(hz) = clock::tsc_hz_from_leaf15(r.eax, r.ebx, r.ecx) {
            return Some((hz, Source::Leaf15));
        }
    }
    if max >= 0x16
        && let Some(hz) = clock::tsc_hz_from_leaf16(cpuid(0x16, 0).eax)
    {
        return Some((hz, Source::Leaf16));
    }
    if crate::arch::cpu::hypervisor().is_some() && cpuid(0x4000_0000, 0).eax >= 0x4000_0010 {
        return clock::tsc_hz_from_hypervisor(cpuid(0x4000_0010, 0).eax)
            .map(|hz| (hz, Source::Hypervisor));
    }
    None
}

/// Calibrates on the PIT over 1 ms and 10 ms. A machine without a PIT can
/// still flip the status bit we poll; two counts that disagree mean nothing
/// counted, and the caller falls back to other clocks.
fn calibrate_pit() -> Option<u64> {
    let short = count_pit((clock::PIT_HZ / 1000) as u16)?;
    let long = count_pit((clock::PIT_HZ / 100) as u16)?;
    clock::rates_agree(short, long).then_some(long)
}

/// Counts TSC ticks while PIT channel 2 counts `ticks` down in mode 0.
fn count_pit(ticks: u16) -> Option<u64> {
    // Bounds the wait: a missing PIT must not hang the boot.
    const MAX_POLLS: u32 = 50_000_000;
    let mut gate: Port<u8> = Port::new(0x61);
    let mut command: Port<u8> = Port::new(0x43);
    let mut ch2: Port<u8> = Port::new(0x42);
    // SAFETY: ports 0x42/0x43/0x61 are the PIT and the NMI status/control port
    // of every PC-compatible; we drive only channel 2 (the speaker timer) with
    // the speaker output off, which nothing else in the kernel uses.
    unsafe {
        let v = gate.read();
        gate.write((v & !0x02) & !0x01); // gate low, speaker off
        command.write(0b1011_0000); // channel 2, lo/hi byte, mode 0, binary
        ch2.write(ticks as u8);
        ch2.write((ticks >> 8) as u8);
        let v = gate.read();
        gate.write(v | 0x01); // gate high: counting starts
        let start = rdtsc();
        let mut polls = 0;
        while gate.read() & 0x20 == 0 {
            polls += 1;
            if polls >= MAX_POLLS {
                return None;
            }
        }
        let end = rdtsc();
        let v = gate.read();
        gate.write(v & !0x01);
        clock::tsc_hz_from_pit(end - start, ticks as u64)
    }
}
