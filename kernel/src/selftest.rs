//! In-kernel self-tests, chosen with `test=NAME`. Each runs after "ready" and
//! the kernel leaves through isa-debug-exit: 33 for pass, 35 for fail. `fault`
//! and `panic` exercise the fatal paths and so always end in 35 after their report.

use crate::mem::dma::DmaBuffer;
use crate::settings::Settings;
use crate::storage::Storage;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

type Outcome = Result<String, String>;
type SelfTest = fn(&mut Context<'_>) -> Outcome;

/// What a self-test may use.
pub struct Context<'a> {
    pub storage: &'a mut Storage,
    pub settings: &'a Settings,
}

const TESTS: &[(&str, SelfTest)] = &[
    ("boot", |_| Ok("reached ready".into())),
    ("blk", |cx| crate::blktest::selftest(cx.storage)),
    ("bench", bench),
    ("crc", |_| crc()),
    ("mem", |_| mem()),
    ("time", |_| time()),
    ("pci", |_| pci()),
    ("acpi", |_| acpi()),
    ("fault", |_| fault()),
    ("panic", |_| panic!("self-test panic")),
    ("poweroff", |_| poweroff()),
    ("reboot", |_| reboot()),
];

pub fn run(name: &str, storage: &mut Storage, settings: &Settings) -> bool {
    let mut cx = Context { storage, settings };
    let Some((_, test)) = TESTS.iter().find(|(n, _)| *n == name) else {
        let names: Vec<&str> = TESTS.iter().map(|t| t.0).collect();
        log::error!(
            "self-test `{name}` does not exist; known: {}",
            names.join(", ")
        );
        return false;
    };
    match test(&mut cx) {
        Ok(detail) => {
            log::info!("self-test {name}: PASS ({detail})");
            true
        }
        Err(why) => {
            log::error!("self-test {name}: FAIL: {why}");
            false
        }
    }
}

fn check(ok: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if ok { Ok(()) } else { Err(what()) }
}

fn crc() -> Outcome {
    use ironbay_crc::{Engine, update_with};
    let mut engines = alloc::vec![Engine::Soft];
    if ironbay_crc::hardware_available() && ironbay_crc::selected() == Engine::Sse42 {
        engines.push(Engine::Sse42);
    }
    let data: Vec<u8> = (0..8192u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let reference = update_with(Engine::Soft, 0, &data);
    for &e in &engines {
        check(update_with(e, 0, b"123456789") == 0xE306_9283, || {
            format!("{e:?} check value")
        })?;
        check(update_with(e, 0, &[0u8; 32]) == 0x8A91_36AA, || {
            format!("{e:?} RFC 3720 zeros")
        })?;
        for cut in [0, 1, 7, 4095, 8192] {
            let a = update_with(e, 0, &data[..cut]);
            check(update_with(e, a, &data[cut..]) == reference, || {
                format!("{e:?} split at {cut}")
            })?;
        }
    }
    let names: Vec<&str> = engines.iter().map(|e| e.name()).collect();
    Ok(format!("engines {}", names.join("+")))
}

fn mem() -> Outcome {
    // Heap: many sizes, contents survive.
    let mut blocks: Vec<Vec<u8>> = (0..64)
        .map(|i| alloc::vec![i as u8; 1 << (i % 20)])
        .collect();
    for (i, b) in blocks.iter().enumerate() {
        check(b.iter().all(|&x| x == i as u8), || {
            format!("heap block {i} corrupted")
        })?;
    }
    blocks.clear();
    // DMA: alignment, zeroing, distinct frames, and reuse after free.
    let mut bufs = Vec::new();
    for (len, align) in [
        (4096, 4096),
        (8192, 4096),
        (65536, 65536),
        (1 << 20, 2 << 20),
    ] {
        let mut b =
            DmaBuffer::new(len, align, true).ok_or_else(|| format!("no DMA buffer of {len}"))?;
        check(b.phys() % align == 0, || {
            format!("DMA {len} misaligned at {:#x}", b.phys())
        })?;
        check(b.as_slice().iter().all(|&x| x == 0), || {
            "DMA buffer not zeroed".into()
        })?;
        b.as_mut_slice().fill(0xA5);
        bufs.push(b);
    }
    for w in bufs.windows(2) {
        check(
            w[0].phys() + w[0].len() as u64 <= w[1].phys()
                || w[1].phys() + w[1].len() as u64 <= w[0].phys(),
            || "DMA buffers overlap".into(),
        )?;
    }
    let first = bufs[0].phys();
    drop(bufs);
    let again = DmaBuffer::new(4096, 4096, true).ok_or("no DMA buffer after free")?;
    check(again.phys() == first, || "freed frames not reused".into())?;
    // MMIO mapping: the local APIC page becomes uncached, RAM next to it is untouched.
    let lapic = crate::acpi::info().map_or(0xFEE0_0000, |a| a.lapic_base);
    crate::mem::map_mmio(lapic, 4096).map_err(|e| format!("map_mmio: {e:?}"))?;
    check(crate::mem::paging::is_uncached(lapic) == Some(true), || {
        "LAPIC page not uncached".into()
    })?;
    check(
        crate::mem::paging::is_uncached(0x20_0000) == Some(false),
        || "RAM became uncached".into(),
    )?;
    // RAM above 4 GiB, when the machine has it, is mapped and usable.
    let mut high = "none above 4 GiB".into();
    if let Some(mut b) = DmaBuffer::new_in(1 << 20, 4096, (1 << 32)..u64::MAX) {
        b.as_mut_slice().fill(0x5A);
        check(b.as_slice().iter().all(|&x| x == 0x5A), || {
            "RAM above 4 GiB".into()
        })?;
        high = format!("RAM above 4 GiB at {:#x} ok", b.phys());
    }
    let h = crate::mem::heap_stats();
    Ok(format!("heap {} of {} used; {high}", h.used, h.size))
}

fn time() -> Outcome {
    let hz = crate::time::tsc_hz();
    check((10_000_000..20_000_000_000).contains(&hz), || {
        format!("TSC {hz} Hz implausible")
    })?;
    let mut last = crate::time::uptime_us();
    for _ in 0..10_000 {
        let now = crate::time::uptime_us();
        check(now >= last, || "clock went backwards".into())?;
        last = now;
    }
    let start = crate::time::Instant::now();
    crate::time::spin_us(20_000);
    let took = start.elapsed_us();
    check((20_000..1_000_000).contains(&took), || {
        format!("20 ms spin took {took} us")
    })?;
    // Cross-check the calibrated rate on an independent clock when there is one.
    let mut cross = String::from("no ACPI PM timer to cross-check");
    if let Some((port, wide)) = crate::acpi::info()
        .and_then(|a| a.fadt)
        .and_then(|f| f.pm_timer)
    {
        let pm =
            crate::time::measure_with_pm_timer(port, wide).ok_or("ACPI PM timer does not count")?;
        let ratio = pm as f64 / hz as f64;
        check((0.9..1.1).contains(&ratio), || {
            format!("TSC {hz} Hz but PM timer says {pm} Hz")
        })?;
        cross = format!("PM timer agrees within {:.1}%", (ratio - 1.0).abs() * 100.0);
    }
    Ok(format!(
        "TSC {} MHz, 20 ms spin measured {took} us, {cross}",
        hz / 1_000_000
    ))
}

fn pci() -> Outcome {
    let devs = crate::pci::devices();
    check(!devs.is_empty(), || "no PCI devices".into())?;
    check(
        devs.iter().any(|d| d.class == 0x06 && d.subclass == 0x00),
        || "no host bridge".into(),
    )?;
    Ok(format!("{} functions", devs.len()))
}

fn acpi() -> Outcome {
    let a = crate::acpi::info().ok_or("no ACPI tables")?;
    check(a.enabled_cpus() >= 1, || "MADT lists no CPU".into())?;
    check(a.fadt.is_some(), || "no FADT".into())?;
    check(a.s5.is_some(), || "no \\_S5 in the DSDT".into())?;
    Ok(format!(
        "{} CPUs, {} tables",
        a.enabled_cpus(),
        a.tables.len()
    ))
}

fn fault() -> Outcome {
    // A canonical address nothing maps: the page-fault report must name it in CR2.
    let p = 0x0000_7ead_0000_0000u64 as *const u64;
    // SAFETY: not sound by design: this read faults on purpose, and the fault
    // handler never returns here.
    let v = unsafe { core::ptr::read_volatile(p) };
    Err(format!("read of unmapped memory returned {v}"))
}

fn poweroff() -> Outcome {
    log::info!("self-test poweroff: powering off through ACPI");
    crate::acpi::power_off();
    Err("still running after power-off".into())
}

fn reboot() -> Outcome {
    log::info!("self-test reboot: resetting the machine");
    crate::acpi::reboot()
}

fn bench(cx: &mut Context<'_>) -> Outcome {
    let jobs = cx
        .settings
        .bench
        .as_deref()
        .ok_or("test=bench needs bench=JOBS")?;
    if crate::blktest::run_benchmarks(cx.storage, jobs) {
        Ok(format!("{} jobs", jobs.split(',').count()))
    } else {
        Err("a benchmark job failed or saw errors".into())
    }
}
