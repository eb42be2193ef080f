//! PCI glue: config-space access through ports 0xCF8/0xCFC and through ECAM,
//! the boot-time scan and its table.

use alloc::boxed::Box;
use alloc::vec::Vec;
use ironbay_platform::acpi::EcamRegion;
use ironbay_platform::pci::{self, Bdf, ConfigAccess, Function, TableRow};
use spin::{Mutex, Once};
use x86_64::instructions::port::Port;

static DEVICES: Once<Vec<Function>> = Once::new();

type Access = Box<dyn ConfigAccess + Send + Sync>;
/// The configuration-space accessor of each PCI segment.
static ACCESS: Once<Vec<(u16, Access)>> = Once::new();

/// Legacy configuration mechanism #1: segment 0, 256 bytes per function.
struct PortIo {
    lock: Mutex<()>,
}

impl PortIo {
    fn address(bdf: Bdf, offset: u16) -> u32 {
        0x8000_0000
            | (bdf.bus as u32) << 16
            | (bdf.device as u32 & 31) << 11
            | (bdf.function as u32 & 7) << 8
            | (offset as u32 & 0xFC)
    }
}

impl ConfigAccess for PortIo {
    fn read32(&self, bdf: Bdf, offset: u16) -> u32 {
        if bdf.segment != 0 || offset >= 256 {
            return 0xFFFF_FFFF;
        }
        let _g = self.lock.lock();
        // SAFETY: 0xCF8/0xCFC are the PCI configuration ports; the address/data
        // pair is used under a lock so accesses do not interleave.
        unsafe {
            Port::<u32>::new(0xCF8).write(Self::address(bdf, offset));
            Port::<u32>::new(0xCFC).read()
        }
    }

    fn write32(&self, bdf: Bdf, offset: u16, value: u32) {
        if bdf.segment != 0 || offset >= 256 {
            return;
        }
        let _g = self.lock.lock();
        // SAFETY: as in `read32`.
        unsafe {
            Port::<u32>::new(0xCF8).write(Self::address(bdf, offset));
            Port::<u32>::new(0xCFC).write(value);
        }
    }
}

/// Memory-mapped configuration (PCIe ECAM) for one MCFG region.
struct Ecam {
    region: EcamRegion,
    base: u64,
}

impl Ecam {
    fn addr(&self, bdf: Bdf, offset: u16) -> Option<*mut u32> {
        let r = &self.region;
        if bdf.segment != r.segment
            || bdf.bus < r.bus_start
            || bdf.bus > r.bus_end
            || offset >= 4096
        {
            return None;
        }
        let off = ((bdf.bus - r.bus_start) as u64) << 20
            | (bdf.device as u64 & 31) << 15
            | (bdf.function as u64 & 7) << 12
            | (offset as u64 & 0xFFC);
        Some((self.base + off) as *mut u32)
    }
}

impl ConfigAccess for Ecam {
    fn read32(&self, bdf: Bdf, offset: u16) -> u32 {
        match self.addr(bdf, offset) {
            // SAFETY: the address lies inside this region's ECAM window, which
            // `init` mapped uncached; config reads have no side effects.
            Some(p) => unsafe { core::ptr::read_volatile(p) },
            None => 0xFFFF_FFFF,
        }
    }

    fn write32(&self, bdf: Bdf, offset: u16, value: u32) {
        if let Some(p) = self.addr(bdf, offset) {
            // SAFETY: as in `read32`; the register belongs to a device we manage.
            unsafe { core::ptr::write_volatile(p, value) };
        }
    }
}

/// Scans every bus (ECAM where ACPI describes it, else ports) and prints the table.
pub fn init(ecam: &[EcamRegion]) -> &'static [Function] {
    let mut access: Vec<(u16, Access)> = Vec::new();
    for r in ecam {
        let len = ((r.bus_end as u64 - r.bus_start as u64) + 1) << 20;
        match crate::mem::map_mmio(r.base, len) {
            Ok(base) => access.push((r.segment, Box::new(Ecam { region: *r, base }))),
            Err(e) => log::warn!("cannot map ECAM at {:#x}: {e:?}", r.base),
        }
    }
    let via = if access.is_empty() {
        "port I/O"
    } else {
        "ECAM"
    };
    if access.is_empty() {
        access.push((
            0,
            Box::new(PortIo {
                lock: Mutex::new(()),
            }),
        ));
    }
    let mut found = Vec::new();
    for (segment, a) in &access {
        let buses = ecam
            .iter()
            .find(|r| r.segment == *segment)
            .map_or(0..=255, |r| r.bus_start..=r.bus_end);
        found.extend(pci::scan(a.as_ref(), *segment, buses));
    }
    ACCESS.call_once(|| access);
    log::info!("{} PCI functions (config access via {via}):", found.len());
    for f in &found {
        log::info!("  {}", TableRow(f));
    }
    DEVICES.call_once(|| found)
}

/// The configuration-space accessor for `segment`.
pub fn config(segment: u16) -> Option<&'static dyn ConfigAccess> {
    ACCESS
        .get()?
        .iter()
        .find(|(s, _)| *s == segment)
        .map(|(_, a)| a.as_ref() as &dyn ConfigAccess)
}

/// Turns on memory decoding and bus mastering for a device we drive.
pub fn enable_dma(f: &Function) {
    if let Some(a) = config(f.bdf.segment) {
        pci::enable(a, f.bdf, pci::CMD_MEMORY | pci::CMD_BUS_MASTER);
    }
}

#[allow(dead_code, reason = "drivers look their devices up in later stages")]
pub fn devices() -> &'static [Function] {
    DEVICES.get().map_or(&[], Vec::as_slice)
}
