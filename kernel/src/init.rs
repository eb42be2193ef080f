//! Boot sequence, the ready line, the idle loop and the fatal exits.
//!
//! Order matters: console first (so everything after can report), then CPU
//! tables (so faults are caught), the clock (timestamps), boot info and memory
//! (the heap), then ACPI, PCI, the boot config, and "ready".

use crate::arch::{self, ExitCode};
use crate::settings::{CrcChoice, Settings};
use crate::{acpi, blktest, console, mem, net, pci, selftest, services, storage, time};
use core::fmt::Write;
use core::sync::atomic::{AtomicBool, Ordering};
use ironbay_boot::BootInfo;
use ironbay_config::{BootConfig, Cmdline};
use ironbay_platform::pci::Size;

const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The rest of memory is for RAM disks, caches and DMA (see mem::pages).
const DEFAULT_HEAP_PERCENT: u64 = 20;

#[unsafe(no_mangle)]
extern "C" fn kernel_entry(protocol: u32, info: u32, magic: u32) -> ! {
    console::init();
    arch::init();
    let entry_tsc = ironbay_boot::entry_tsc();
    let clock = time::init(entry_tsc);
    console::write_str("\n");
    log::info!("ironbay {VERSION} starting");

    let boot = match ironbay_boot::parse(&mem::Phys, protocol, info as u64, magic) {
        Ok(b) => b,
        Err(e) => {
            log::error!("cannot read boot information: {e}");
            fatal_exit();
        }
    };
    // The heap comes first: parsing the command line allocates. Its size is
    // the one option read before that, and checked again by the full parse.
    let heap_percent = ironbay_config::cmdline::peek(&boot.cmdline, "heap")
        .and_then(|v| v.parse().ok())
        .filter(|p| (10..=90).contains(p))
        .unwrap_or(DEFAULT_HEAP_PERCENT);
    let report = mem::init(&boot, ironbay_boot::image_range(), heap_percent);
    console::enable_ring();

    let cmdline = Cmdline::parse(&boot.cmdline);
    let settings = Settings::from_cmdline(&cmdline);
    console::set_level(settings.log);
    log::info!(
        "booted via {}{}{}; command line: {}",
        boot.protocol.name(),
        if boot.loader_name.is_empty() {
            ""
        } else {
            " by "
        },
        boot.loader_name,
        ironbay_config::cmdline::redacted(&boot.cmdline)
    );
    if boot.truncated {
        log::warn!(
            "boot information was cut to fit (too many regions, modules or a long command line)"
        );
    }
    for d in &cmdline.diagnostics {
        log::warn!("command line: {d}");
    }

    log::info!(
        "memory: {} usable, heap {} at {:#x}, {} for RAM disks, caches and DMA",
        Size(report.usable),
        Size(report.heap.end - report.heap.start),
        report.heap.start,
        Size(report.free_frames)
    );
    for r in &boot.memory {
        log::debug!("  e820 {:#014x}..{:#014x} {:?}", r.base, r.end(), r.kind);
    }

    select_crc(settings.crc);

    let acpi = acpi::init(boot.rsdp);
    let clock =
        time::refine_with_pm_timer(clock, acpi.and_then(|a| a.fadt).and_then(|f| f.pm_timer));
    if matches!(clock, time::Source::Assumed) {
        log::warn!("no reference clock found: TSC assumed at 1 GHz, timestamps may be off");
    }
    let mut brand = [0u8; 48];
    log::info!(
        "cpu: {}; TSC {} MHz via {:?}",
        arch::cpu::brand(&mut brand),
        time::tsc_hz() / 1_000_000,
        clock
    );
    if let Some(a) = acpi {
        let sigs: heapless::String<512> =
            a.tables
                .iter()
                .fold(heapless::String::new(), |mut s, (sig, _)| {
                    let _ = write!(s, " {}", core::str::from_utf8(sig).unwrap_or("????"));
                    s
                });
        log::info!(
            "ACPI rev {} ({}): {} CPUs, {} ECAM regions, tables:{}",
            a.revision,
            a.oem,
            a.enabled_cpus(),
            a.ecam.len(),
            sigs
        );
    }
    let devices = pci::init(acpi.map_or(&[], |a| a.ecam.as_slice()));

    let config = load_boot_config(&boot);
    let wait_for_init = cmdline.flag("mgmt.wait_for_init");
    let store = crate::persist::Options::from_cmdline(&cmdline);
    let mut storage = storage::init(devices, config.as_ref(), wait_for_init, &store);
    // CHAP challenges must not be predictable: RDRAND where there is one,
    // else at least the boot's TSC.
    let seed = arch::cpu::rdrand().unwrap_or_else(|| {
        log::warn!("no RDRAND: CHAP challenges are seeded from the TSC only");
        arch::cpu::rdtsc()
    });
    storage.iscsi.seed_entropy(seed);
    let mut network = net::init(devices, &cmdline);
    let mut services = services::init(&mut network, &mut storage, &cmdline);
    if wait_for_init && !services.has_rpc() {
        log::warn!("mgmt.wait_for_init: no JSON-RPC service to start init; starting now");
        storage.finish_init();
    } else if wait_for_init {
        log::info!("mgmt: waiting for framework_start_init over JSON-RPC");
    }
    let lapic = acpi.map_or(0xFEE0_0000, |a| a.lapic_base);
    match arch::lapic::init(lapic) {
        Ok(hz) => log::info!(
            "local APIC timer {} MHz: idle halts until the next network deadline",
            hz / 1_000_000
        ),
        Err(e) => log::warn!("local APIC timer unavailable ({e}): idle loop will spin"),
    }

    let entry_ms = time::uptime_us() as f64 / 1000.0;
    let reset_ms = time::since_reset_us() as f64 / 1000.0;
    log::info!(
        "ironbay ready: boot-to-ready {entry_ms:.1} ms from kernel entry, {reset_ms:.1} ms from machine reset"
    );
    READY.store(true, Ordering::Relaxed);

    if let Some(name) = &settings.test {
        let ok = selftest::run(name, &mut storage, &settings);
        arch::debug_exit(if ok {
            ExitCode::Success
        } else {
            ExitCode::Failure
        });
        arch::halt_forever();
    }
    if let Some(jobs) = &settings.bench {
        blktest::run_benchmarks(&mut storage, jobs);
    }
    run(&mut storage, &mut network, &mut services)
}

/// Spin this long without work before halting.
const IDLE_SPIN_US: u64 = 200;
/// Longest halt while traffic was recent, and once idle for a while: a packet
/// that arrives during a halt waits for the timer (see ARCHITECTURE.md).
const SHORT_NAP_US: u64 = 1_000;
const LONG_NAP_US: u64 = 10_000;
const LONG_IDLE_US: u64 = 100_000;

/// The main loop: poll NICs and services, poll block completions, and halt
/// with the timer armed once nothing has happened for a little while.
fn run(
    storage: &mut storage::Storage,
    network: &mut net::Network,
    services: &mut services::Services,
) -> ! {
    let mut completions = alloc::vec::Vec::new();
    let mut last_busy = time::uptime_us();
    loop {
        let mut busy = network.poll();
        busy |= services.poll(network, storage);
        completions.clear();
        if storage.poll(&mut completions) > 0 {
            busy = true;
            for (_, c) in completions.drain(..) {
                services.complete(c, storage);
            }
            // Send the replies these completions produced now, not next round.
            services.poll(network, storage);
            network.poll();
        }
        if services.shutdown_requested() {
            shutdown(storage, network, services);
        }
        let now = time::uptime_us();
        if busy || network.has_pending_rx() {
            last_busy = now;
            continue;
        }
        let idle = now - last_busy;
        if idle < IDLE_SPIN_US {
            continue;
        }
        let cap = if idle > LONG_IDLE_US {
            LONG_NAP_US
        } else {
            SHORT_NAP_US
        };
        let nap = network.next_deadline_us().map_or(cap, |d| d.min(cap));
        if nap > 0 {
            arch::lapic::sleep_us(nap);
        }
    }
}

static READY: AtomicBool = AtomicBool::new(false);

fn select_crc(choice: CrcChoice) {
    use ironbay_crc::Engine;
    let want = match choice {
        CrcChoice::Soft => Engine::Soft,
        CrcChoice::Auto | CrcChoice::Hardware => Engine::Sse42,
    };
    let got = ironbay_crc::select(want);
    if choice == CrcChoice::Hardware && got != Engine::Sse42 {
        log::warn!("crc=hw asked for, but this CPU has no SSE4.2: using the table-driven CRC32C");
    }
    log::info!("crc32c: {} engine", got.name());
}

/// The first module is the SPDK-format JSON config; later stages apply it.
fn load_boot_config(boot: &BootInfo) -> Option<BootConfig> {
    let module = boot.modules.first()?;
    let len = (module.end - module.start) as usize;
    if len > ironbay_config::bootconfig::MAX_CONFIG_BYTES {
        log::error!("boot config module is {len} bytes, over the limit; ignored");
        return None;
    }
    let mut bytes = alloc::vec![0u8; len];
    if !ironbay_boot::PhysRead::read(&mem::Phys, module.start, &mut bytes) {
        log::error!(
            "boot config module at {:#x} unreadable; ignored",
            module.start
        );
        return None;
    }
    match BootConfig::parse(&bytes) {
        Ok(cfg) => {
            log::info!(
                "boot config `{}`: {} subsystems",
                module.cmdline,
                cfg.subsystems.len()
            );
            for (subsystem, call) in cfg.calls() {
                log::info!("  {subsystem}: {} {}", call.method, serde_params(call));
            }
            Some(cfg)
        }
        Err(e) => {
            log::error!(
                "boot config `{}` rejected: {e}; continuing without it",
                module.cmdline
            );
            None
        }
    }
}

fn serde_params(call: &ironbay_config::MethodCall) -> alloc::string::String {
    let mut s = alloc::string::String::new();
    for (i, (k, v)) in call.params.iter().enumerate() {
        let _ = write!(s, "{}{k}={v}", if i == 0 { "" } else { " " });
    }
    s
}

/// Orderly stop for `spdk_kill_instance`: let the reply go out, flush
/// volatile caches, power off.
fn shutdown(
    storage: &mut storage::Storage,
    network: &mut net::Network,
    services: &mut services::Services,
) -> ! {
    log::info!("shutdown requested over JSON-RPC");
    let until = time::uptime_us() + 200_000;
    while time::uptime_us() < until {
        services.poll(network, storage);
        network.poll();
    }
    storage.flush_all();
    log::info!("ironbay stopped; powering off");
    acpi::power_off();
    arch::halt_forever()
}

/// Leaves after a fatal error as the operator asked: reboot, or in test mode
/// through the debug-exit device, or halt.
pub fn fatal_exit() -> ! {
    let mut out = console::emergency();
    // panic=reboot wins over test mode, so tests can see the reset path too.
    if crate::settings::reboot_on_panic() {
        let _ = writeln!(out, "rebooting (panic=reboot)");
        acpi::reboot();
    }
    if crate::settings::test_mode() {
        let _ = writeln!(out, "fatal error in test mode: exiting with failure");
        arch::debug_exit(ExitCode::Failure);
    }
    let _ = writeln!(out, "halted (panic=halt)");
    arch::halt_forever()
}

static PANICKING: AtomicBool = AtomicBool::new(false);

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    x86_64::instructions::interrupts::disable();
    let mut out = console::emergency();
    if PANICKING.swap(true, Ordering::SeqCst) {
        let _ = writeln!(out, "\n!!! PANIC while panicking: {}", info.message());
        arch::halt_forever();
    }
    let _ = write!(out, "\n!!! PANIC");
    if let Some(loc) = info.location() {
        let _ = write!(out, " at {}:{}:{}", loc.file(), loc.line(), loc.column());
    }
    let _ = writeln!(out, ": {}", info.message());
    let rbp = arch::trap::current_rbp();
    arch::trap::backtrace(&mut out, panic as *const () as u64, rbp);
    fatal_exit()
}
