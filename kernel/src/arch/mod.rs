//! x86_64 specifics: descriptor tables, traps, the legacy PIC, CPU helpers and
//! the ways out (debug exit, halt).

pub mod cpu;
pub mod gdt;
pub mod lapic;
pub mod pic;
pub mod trap;

use x86_64::instructions::port::Port;

/// QEMU's `isa-debug-exit` device (iobase 0xf4): QEMU exits with `(v << 1) | 1`.
const DEBUG_EXIT_PORT: u16 = 0xf4;

/// Exit status values: QEMU reports 33 for success and 35 for failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum ExitCode {
    Success = 0x10,
    Failure = 0x11,
}

/// Leaves QEMU through isa-debug-exit. Without that device this returns and the
/// caller halts instead.
pub fn debug_exit(code: ExitCode) {
    let mut port: Port<u32> = Port::new(DEBUG_EXIT_PORT);
    // SAFETY: 0xf4 is either QEMU's debug-exit device or an unused ISA port on
    // which a write has no effect.
    unsafe { port.write(code as u32) };
}

/// Stops this CPU for good.
pub fn halt_forever() -> ! {
    x86_64::instructions::interrupts::disable();
    loop {
        x86_64::instructions::hlt();
    }
}

/// Brings up the per-CPU tables: GDT with a TSS, IDT, masked legacy PIC.
pub fn init() {
    gdt::init();
    trap::init();
    pic::disable();
}
