//! ACPI glue: finds the tables, keeps what the platform crate parsed, and
//! performs power-off and reset.

use crate::mem::Phys;
use ironbay_platform::acpi::{self, AcpiInfo};
use spin::Once;
use x86_64::instructions::port::Port;

static INFO: Once<AcpiInfo> = Once::new();

pub fn init(rsdp_hint: Option<u64>) -> Option<&'static AcpiInfo> {
    let rsdp = rsdp_hint.or_else(|| acpi::find_rsdp(&Phys));
    let Some(rsdp) = rsdp else {
        log::warn!("no ACPI RSDP: one CPU assumed, no ECAM, power-off through QEMU ports only");
        return None;
    };
    match acpi::discover(&Phys, rsdp) {
        Ok(info) => {
            for p in &info.problems {
                log::warn!("ACPI: {p}; table skipped");
            }
            Some(INFO.call_once(|| info))
        }
        Err(e) => {
            log::warn!("ACPI: {e}");
            None
        }
    }
}

pub fn info() -> Option<&'static AcpiInfo> {
    INFO.get()
}

fn outw(port: u16, v: u16) {
    // SAFETY: called only with ports the FADT names for PM1 control, or QEMU's
    // fixed ACPI/ISA shutdown ports, on the way to stopping the machine.
    unsafe { Port::<u16>::new(port).write(v) };
}

/// Powers the machine off. Returns only if every method failed.
pub fn power_off() {
    const SLP_EN: u16 = 1 << 13;
    if let Some(info) = info()
        && let (Some(f), Some((a, b))) = (info.fadt, info.s5)
        && f.pm1a_cnt != 0
    {
        if f.smi_cmd != 0 && f.acpi_enable != 0 {
            // SAFETY: SMI_CMD and ACPI_ENABLE come from the FADT; writing the
            // enable value is how firmware hands ACPI mode to the OS.
            unsafe { Port::<u8>::new(f.smi_cmd as u16).write(f.acpi_enable) };
            crate::time::spin_us(10_000);
        }
        outw(f.pm1a_cnt as u16, ((a as u16) << 10) | SLP_EN);
        if f.pm1b_cnt != 0 {
            outw(f.pm1b_cnt as u16, ((b as u16) << 10) | SLP_EN);
        }
        crate::time::spin_us(100_000);
    }
    // QEMU: q35/ICH9 PM1a at 0x604, PIIX4 at 0xb004 (older machine types).
    outw(0x604, 0x2000);
    outw(0xb004, 0x2000);
}

/// Resets the machine: FADT reset register, then the keyboard controller,
/// then a triple fault.
pub fn reboot() -> ! {
    if let Some((reg, value)) = info().and_then(|i| i.fadt).and_then(|f| f.reset)
        && reg.space == 1
    {
        // SAFETY: the FADT names this I/O port as the reset register.
        unsafe { Port::<u8>::new(reg.address as u16).write(value) };
        crate::time::spin_us(50_000);
    }
    // SAFETY: 0x64 is the 8042 command port; 0xFE pulses the CPU reset line.
    unsafe { Port::<u8>::new(0x64).write(0xFE) };
    crate::time::spin_us(50_000);
    // Last resort: an empty IDT turns the next interrupt into a triple fault.
    let empty = x86_64::structures::DescriptorTablePointer {
        limit: 0,
        base: x86_64::VirtAddr::new(0),
    };
    // SAFETY: deliberately loads an empty IDT so the following int3 cannot be
    // delivered and the CPU resets; nothing runs afterwards.
    unsafe {
        x86_64::instructions::tables::lidt(&empty);
        core::arch::asm!("int3");
    }
    crate::arch::halt_forever()
}
