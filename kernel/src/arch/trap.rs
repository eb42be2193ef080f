//! Exceptions and interrupts: the IDT, the dispatcher and the fatal report.
//!
//! Every vector enters through a stub in `trap.s`. CPU exceptions are fatal:
//! they print vector, error code, RIP, CR2, registers and a frame-pointer
//! backtrace, then leave as `panic=` says. Device vectors (32 and up) go to
//! handlers registered at run time.

use super::gdt::{DOUBLE_FAULT_IST, NMI_IST};
use core::fmt::Write;
use core::sync::atomic::{AtomicUsize, Ordering};
use x86_64::VirtAddr;
use x86_64::instructions::segmentation::{CS, Segment};
use x86_64::instructions::tables::lidt;
use x86_64::structures::DescriptorTablePointer;

core::arch::global_asm!(include_str!("trap.s"), options(att_syntax));

unsafe extern "C" {
    static trap_stubs: u8;
}

/// Registers as `trap_common` saved them, lowest address first.
#[repr(C)]
#[derive(Debug)]
pub struct TrapFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

const _: () = assert!(core::mem::size_of::<TrapFrame>() == 22 * 8);

#[repr(C, align(16))]
#[derive(Clone, Copy)]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    attributes: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

const _: () = assert!(core::mem::size_of::<Gate>() == 16);

#[repr(C, align(16))]
struct Idt([Gate; 256]);

static IDT: spin::Once<Idt> = spin::Once::new();

/// Handlers for device vectors 32..=255.
static HANDLERS: [AtomicUsize; 224] = [const { AtomicUsize::new(0) }; 224];

pub fn init() {
    let selector = CS::get_reg().0;
    let base = (&raw const trap_stubs) as u64;
    let idt = IDT.call_once(|| {
        let mut gates = [Gate {
            offset_low: 0,
            selector: 0,
            ist: 0,
            attributes: 0,
            offset_mid: 0,
            offset_high: 0,
            reserved: 0,
        }; 256];
        for (v, g) in gates.iter_mut().enumerate() {
            let addr = base + 16 * v as u64;
            let ist = match v {
                8 => DOUBLE_FAULT_IST + 1,
                2 => NMI_IST + 1,
                _ => 0,
            };
            *g = Gate {
                offset_low: addr as u16,
                selector,
                ist: ist as u8,
                attributes: 0x8E, // present, DPL 0, 64-bit interrupt gate
                offset_mid: (addr >> 16) as u16,
                offset_high: (addr >> 32) as u32,
                reserved: 0,
            };
        }
        Idt(gates)
    });
    let ptr = DescriptorTablePointer {
        limit: (core::mem::size_of::<Idt>() - 1) as u16,
        base: VirtAddr::from_ptr(idt),
    };
    // SAFETY: the IDT lives in a static for the kernel's lifetime and every gate
    // points at a stub in `trap.s` with the kernel code selector.
    unsafe { lidt(&ptr) };
}

/// Installs `handler` for a device vector (32..=255). Returns false if taken.
#[allow(
    dead_code,
    reason = "device drivers register their vectors in later stages"
)]
pub fn register(vector: u8, handler: fn(u8)) -> bool {
    let Some(slot) = (vector as usize)
        .checked_sub(32)
        .and_then(|i| HANDLERS.get(i))
    else {
        return false;
    };
    slot.compare_exchange(0, handler as usize, Ordering::AcqRel, Ordering::Acquire)
        .is_ok()
}

const NAMES: [&str; 32] = [
    "#DE divide error",
    "#DB debug",
    "NMI",
    "#BP breakpoint",
    "#OF overflow",
    "#BR bound range",
    "#UD invalid opcode",
    "#NM device not available",
    "#DF double fault",
    "coprocessor overrun",
    "#TS invalid TSS",
    "#NP segment not present",
    "#SS stack fault",
    "#GP general protection",
    "#PF page fault",
    "reserved",
    "#MF x87 error",
    "#AC alignment check",
    "#MC machine check",
    "#XM SIMD error",
    "#VE virtualization",
    "#CP control protection",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "#HV hypervisor injection",
    "#VC VMM communication",
    "#SX security",
    "reserved",
];

#[unsafe(no_mangle)]
extern "C" fn trap_dispatch(frame: &mut TrapFrame) {
    let vector = frame.vector as usize;
    if vector < 32 {
        fatal_exception(frame);
    }
    let handler = HANDLERS[vector - 32].load(Ordering::Acquire);
    if handler != 0 {
        // SAFETY: non-zero slots only ever hold a `fn(u8)` stored by `register`.
        let f: fn(u8) = unsafe { core::mem::transmute::<usize, fn(u8)>(handler) };
        f(vector as u8);
    } else if vector != 0xFF {
        log::warn!("unexpected interrupt on vector {vector}");
    }
}

fn fatal_exception(frame: &TrapFrame) -> ! {
    let cr2 = x86_64::registers::control::Cr2::read_raw();
    let mut out = crate::console::emergency();
    let name = NAMES[frame.vector as usize & 31];
    let _ = writeln!(
        out,
        "\n!!! EXCEPTION {name} (vector {}) error={:#x}",
        frame.vector, frame.error
    );
    let _ = writeln!(
        out,
        "    rip={:#018x} cs={:#x} rflags={:#x} rsp={:#018x} ss={:#x} cr2={:#018x}",
        frame.rip, frame.cs, frame.rflags, frame.rsp, frame.ss, cr2
    );
    let regs = [
        ("rax", frame.rax),
        ("rbx", frame.rbx),
        ("rcx", frame.rcx),
        ("rdx", frame.rdx),
        ("rsi", frame.rsi),
        ("rdi", frame.rdi),
        ("rbp", frame.rbp),
        ("r8", frame.r8),
        ("r9", frame.r9),
        ("r10", frame.r10),
        ("r11", frame.r11),
        ("r12", frame.r12),
        ("r13", frame.r13),
        ("r14", frame.r14),
        ("r15", frame.r15),
    ];
    for row in regs.chunks(4) {
        let _ = write!(out, "   ");
        for (n, v) in row {
            let _ = write!(out, " {n:>3}={v:#018x}");
        }
        let _ = writeln!(out);
    }
    backtrace(&mut out, frame.rip, frame.rbp);
    crate::init::fatal_exit()
}

/// Prints return addresses by following saved frame pointers from `rbp`.
/// Only frames inside memory known to hold stacks are read.
pub fn backtrace(out: &mut impl Write, rip: u64, mut rbp: u64) {
    let _ = writeln!(out, "    backtrace:");
    let _ = writeln!(out, "      #0  {rip:#018x}");
    for depth in 1..32 {
        if rbp == 0 || !rbp.is_multiple_of(8) || !crate::mem::is_stack_memory(rbp, 16) {
            break;
        }
        // SAFETY: `is_stack_memory` confirmed rbp..rbp+16 is mapped RAM that
        // holds kernel stacks; we only read two aligned words from it.
        let (next, ret) = unsafe {
            let p = rbp as *const u64;
            (
                core::ptr::read_volatile(p),
                core::ptr::read_volatile(p.add(1)),
            )
        };
        if ret == 0 {
            break;
        }
        let _ = writeln!(out, "      #{depth:<2} {ret:#018x}");
        if next <= rbp {
            break; // frames grow towards higher addresses; anything else is corrupt
        }
        rbp = next;
    }
}

/// Frame pointer of the caller, for panic backtraces.
#[inline(always)]
pub fn current_rbp() -> u64 {
    let rbp: u64;
    // SAFETY: reads a register; frame pointers are forced on for this target.
    unsafe {
        core::arch::asm!("mov {}, rbp", out(reg) rbp, options(nomem, nostack, preserves_flags))
    };
    rbp
}
