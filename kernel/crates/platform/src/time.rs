//! Clock arithmetic for TSC calibration and a monotonic microsecond clock.

/// The PIT input clock.
pub const PIT_HZ: u64 = 1_193_182;

/// TSC frequency from a TSC delta measured over `pit_ticks` of the PIT.
pub fn tsc_hz_from_pit(tsc_delta: u64, pit_ticks: u64) -> Option<u64> {
    if pit_ticks == 0 || tsc_delta == 0 {
        return None;
    }
    let hz = (tsc_delta as u128 * PIT_HZ as u128 / pit_ticks as u128) as u64;
    plausible(hz)
}

/// The ACPI PM timer's clock.
pub const PM_TIMER_HZ: u64 = 3_579_545;

/// TSC frequency from a TSC delta measured over `pm_ticks` of the ACPI PM timer.
pub fn tsc_hz_from_pm_timer(tsc_delta: u64, pm_ticks: u64) -> Option<u64> {
    if pm_ticks == 0 {
        return None;
    }
    plausible((tsc_delta as u128 * PM_TIMER_HZ as u128 / pm_ticks as u128) as u64)
}

/// Ticks between two PM timer readings of a 24- or 32-bit counter.
pub fn pm_timer_delta(earlier: u32, later: u32, wide: bool) -> u32 {
    let mask = if wide { u32::MAX } else { 0x00FF_FFFF };
    later.wrapping_sub(earlier) & mask
}

/// TSC frequency from CPUID leaf 0x15 (TSC/crystal ratio and crystal clock).
pub fn tsc_hz_from_leaf15(
    eax_denominator: u32,
    ebx_numerator: u32,
    ecx_crystal_hz: u32,
) -> Option<u64> {
    if eax_denominator == 0 || ebx_numerator == 0 || ecx_crystal_hz == 0 {
        return None;
    }
    plausible(ecx_crystal_hz as u64 * ebx_numerator as u64 / eax_denominator as u64)
}

/// TSC frequency from CPUID leaf 0x16 (processor base frequency in MHz).
pub fn tsc_hz_from_leaf16(eax_base_mhz: u32) -> Option<u64> {
    plausible((eax_base_mhz & 0xffff) as u64 * 1_000_000)
}

/// TSC frequency from the hypervisor timing leaf 0x40000010 (EAX in kHz).
pub fn tsc_hz_from_hypervisor(eax_khz: u32) -> Option<u64> {
    plausible(eax_khz as u64 * 1000)
}

/// Two measurements of one rate agree within 10 % (the short one carries
/// more polling overhead).
pub fn rates_agree(a: u64, b: u64) -> bool {
    let (lo, hi) = (a.min(b) as u128, a.max(b) as u128);
    hi * 10 <= lo * 11
}

/// Rejects frequencies no x86_64 CPU runs at (10 MHz .. 20 GHz).
fn plausible(hz: u64) -> Option<u64> {
    (10_000_000..=20_000_000_000).contains(&hz).then_some(hz)
}

/// Converts TSC ticks to microseconds without overflow for centuries of uptime.
pub fn ticks_to_us(ticks: u64, hz: u64) -> u64 {
    if hz == 0 {
        return 0;
    }
    (ticks as u128 * 1_000_000 / hz as u128) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pit_calibration() {
        // 10 ms of PIT at 2.5 GHz.
        let hz = tsc_hz_from_pit(25_000_000, PIT_HZ / 100).unwrap();
        assert!((2_499_000_000..2_501_000_000).contains(&hz), "{hz}");
        assert_eq!(tsc_hz_from_pit(0, 100), None);
        assert_eq!(tsc_hz_from_pit(100, 0), None);
        assert_eq!(tsc_hz_from_pit(1, PIT_HZ), None);
        assert!(rates_agree(2_500_000_000, 2_600_000_000));
        assert!(!rates_agree(11_000_000, 110_000_000));
        assert!(rates_agree(u64::MAX, u64::MAX));
    }

    #[test]
    fn cpuid_leaves() {
        // 24 MHz crystal, ratio 125/1 -> 3 GHz.
        assert_eq!(tsc_hz_from_leaf15(1, 125, 24_000_000), Some(3_000_000_000));
        assert_eq!(tsc_hz_from_leaf15(1, 125, 0), None);
        assert_eq!(tsc_hz_from_leaf16(2100), Some(2_100_000_000));
        assert_eq!(tsc_hz_from_leaf16(0), None);
        assert_eq!(tsc_hz_from_hypervisor(2_400_000), Some(2_400_000_000));
    }

    #[test]
    fn pm_timer() {
        assert_eq!(pm_timer_delta(0x00FF_FFF0, 0x10, false), 0x20);
        assert_eq!(pm_timer_delta(0xFFFF_FFF0, 0x10, true), 0x20);
        let hz = tsc_hz_from_pm_timer(23_000_000, PM_TIMER_HZ / 100).unwrap();
        assert!((2_299_000_000..2_301_000_000).contains(&hz), "{hz}");
        assert_eq!(tsc_hz_from_pm_timer(1, 0), None);
    }

    #[test]
    fn microseconds() {
        assert_eq!(ticks_to_us(3_000_000_000, 3_000_000_000), 1_000_000);
        assert_eq!(ticks_to_us(u64::MAX, 1_000_000_000), u64::MAX / 1000);
        assert_eq!(ticks_to_us(5, 0), 0);
    }
}
