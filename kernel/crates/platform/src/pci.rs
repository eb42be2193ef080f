//! PCI configuration space: enumeration, BAR decoding, device control.
//!
//! [`ConfigAccess`] is implemented by the kernel twice: legacy port I/O
//! (0xCF8/0xCFC, segment 0 only) and ECAM where ACPI's MCFG describes it. The
//! walk tries every device on every bus in range, so it finds devices behind
//! bridges without relying on firmware's bus numbering.

use alloc::vec::Vec;
use core::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bdf {
    pub segment: u16,
    pub bus: u8,
    pub device: u8,
    pub function: u8,
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{}",
            self.segment, self.bus, self.device, self.function
        )
    }
}

/// Reads and writes 32-bit configuration registers. `offset` is dword-aligned.
pub trait ConfigAccess {
    fn read32(&self, bdf: Bdf, offset: u16) -> u32;
    fn write32(&self, bdf: Bdf, offset: u16, value: u32);
}

pub const COMMAND: u16 = 0x04;
pub const CMD_IO: u16 = 1 << 0;
pub const CMD_MEMORY: u16 = 1 << 1;
pub const CMD_BUS_MASTER: u16 = 1 << 2;
pub const CMD_INTX_DISABLE: u16 = 1 << 10;
const STATUS_CAP_LIST: u32 = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    Io,
    Mem32,
    Mem64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bar {
    pub index: u8,
    pub kind: BarKind,
    pub base: u64,
    pub size: u64,
    pub prefetchable: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Function {
    pub bdf: Bdf,
    pub vendor: u16,
    pub device: u16,
    pub class: u8,
    pub subclass: u8,
    pub prog_if: u8,
    pub revision: u8,
    pub header_type: u8,
    pub bars: Vec<Bar>,
    pub interrupt_pin: u8,
    pub interrupt_line: u8,
    /// Capability IDs with their config-space offsets (MSI 0x05, MSI-X 0x11, vendor 0x09, ...).
    pub capabilities: Vec<(u8, u8)>,
}

impl Function {
    /// A short human name: the device if we know it, else its class.
    pub fn name(&self) -> &'static str {
        device_name(self.vendor, self.device)
            .unwrap_or_else(|| class_name(self.class, self.subclass))
    }

    pub fn bar(&self, index: u8) -> Option<&Bar> {
        self.bars.iter().find(|b| b.index == index)
    }

    pub fn capability(&self, id: u8) -> Option<u8> {
        self.capabilities.iter().find(|c| c.0 == id).map(|c| c.1)
    }

    pub fn is_nvme(&self) -> bool {
        self.class == 0x01 && self.subclass == 0x08 && self.prog_if == 0x02
    }
}

fn device_name(vendor: u16, device: u16) -> Option<&'static str> {
    Some(match (vendor, device) {
        (0x1af4, 0x1000 | 0x1041) => "virtio-net",
        (0x1af4, 0x1001 | 0x1042) => "virtio-blk",
        (0x1af4, 0x1004 | 0x1048) => "virtio-scsi",
        (0x1af4, 0x1005 | 0x1044) => "virtio-rng",
        (0x1b36, 0x0010) => "NVMe (QEMU)",
        (0x8086, 0x1237) => "i440FX host bridge",
        (0x8086, 0x29c0) => "Q35 host bridge",
        (0x8086, 0x7000) => "PIIX3 ISA bridge",
        (0x8086, 0x2918) => "ICH9 LPC bridge",
        (0x8086, 0x100e) => "e1000",
        _ => return None,
    })
}

pub fn class_name(class: u8, subclass: u8) -> &'static str {
    match (class, subclass) {
        (0x01, 0x00) => "SCSI controller",
        (0x01, 0x01) => "IDE controller",
        (0x01, 0x06) => "SATA controller",
        (0x01, 0x08) => "NVM controller",
        (0x01, _) => "storage controller",
        (0x02, 0x00) => "Ethernet controller",
        (0x02, _) => "network controller",
        (0x03, _) => "display controller",
        (0x06, 0x00) => "host bridge",
        (0x06, 0x01) => "ISA bridge",
        (0x06, 0x04) => "PCI bridge",
        (0x06, _) => "bridge",
        (0x0c, 0x03) => "USB controller",
        (0x0c, 0x05) => "SMBus controller",
        (0x08, _) => "system peripheral",
        _ => "device",
    }
}

/// Every function on `buses` of `segment`.
pub fn scan(
    cfg: &(impl ConfigAccess + ?Sized),
    segment: u16,
    buses: core::ops::RangeInclusive<u8>,
) -> Vec<Function> {
    let mut out = Vec::new();
    for bus in buses {
        for device in 0..32u8 {
            let f0 = Bdf {
                segment,
                bus,
                device,
                function: 0,
            };
            if vendor(cfg, f0).is_none() {
                continue;
            }
            let multi = (cfg.read32(f0, 0x0C) >> 16) & 0x80 != 0;
            for function in 0..if multi { 8 } else { 1 } {
                let bdf = Bdf {
                    segment,
                    bus,
                    device,
                    function,
                };
                if vendor(cfg, bdf).is_some() {
                    out.push(describe(cfg, bdf));
                }
            }
        }
    }
    out
}

fn vendor(cfg: &(impl ConfigAccess + ?Sized), bdf: Bdf) -> Option<u16> {
    let v = cfg.read32(bdf, 0) as u16;
    (v != 0xFFFF && v != 0).then_some(v)
}

/// Reads identity, BARs (sized with decoding off) and capabilities.
pub fn describe(cfg: &(impl ConfigAccess + ?Sized), bdf: Bdf) -> Function {
    let id = cfg.read32(bdf, 0);
    let class = cfg.read32(bdf, 0x08);
    let header_type = ((cfg.read32(bdf, 0x0C) >> 16) & 0x7f) as u8;
    let irq = cfg.read32(bdf, 0x3C);
    let bar_slots = match header_type {
        0 => 6,
        1 => 2,
        _ => 0,
    };
    Function {
        bdf,
        vendor: id as u16,
        device: (id >> 16) as u16,
        class: (class >> 24) as u8,
        subclass: (class >> 16) as u8,
        prog_if: (class >> 8) as u8,
        revision: class as u8,
        header_type,
        bars: probe_bars(cfg, bdf, bar_slots),
        interrupt_pin: (irq >> 8) as u8,
        interrupt_line: irq as u8,
        capabilities: capabilities(cfg, bdf),
    }
}

fn probe_bars(cfg: &(impl ConfigAccess + ?Sized), bdf: Bdf, slots: u8) -> Vec<Bar> {
    let cmd = cfg.read32(bdf, COMMAND);
    // Sizing writes all-ones into live BARs: stop decoding while we do it.
    cfg.write32(bdf, COMMAND, cmd & !((CMD_IO | CMD_MEMORY) as u32));
    let mut bars = Vec::new();
    let mut i = 0u8;
    while i < slots {
        let off = 0x10 + 4 * i as u16;
        let orig = cfg.read32(bdf, off);
        cfg.write32(bdf, off, 0xFFFF_FFFF);
        let mask = cfg.read32(bdf, off);
        cfg.write32(bdf, off, orig);
        if orig & 1 == 1 {
            let size_mask = mask & 0xFFFF_FFFC;
            if size_mask != 0 {
                let size = (!size_mask).wrapping_add(1) & 0xFFFF;
                bars.push(Bar {
                    index: i,
                    kind: BarKind::Io,
                    base: (orig & !3) as u64,
                    size: size as u64,
                    prefetchable: false,
                });
            }
            i += 1;
            continue;
        }
        let is64 = (orig >> 1) & 3 == 2;
        let prefetchable = orig & 8 != 0;
        let mut base = (orig & !0xF) as u64;
        let mut size_mask = (mask & !0xF) as u64;
        if is64 && i + 1 < slots {
            let hi_off = off + 4;
            let orig_hi = cfg.read32(bdf, hi_off);
            cfg.write32(bdf, hi_off, 0xFFFF_FFFF);
            let mask_hi = cfg.read32(bdf, hi_off);
            cfg.write32(bdf, hi_off, orig_hi);
            base |= (orig_hi as u64) << 32;
            size_mask |= (mask_hi as u64) << 32;
        } else {
            size_mask |= 0xFFFF_FFFF_0000_0000;
        }
        if size_mask & 0xFFFF_FFFF != 0 || (is64 && size_mask != 0xFFFF_FFFF_0000_0000) {
            let size = (!size_mask).wrapping_add(1);
            if size != 0 && size_mask != 0 {
                let kind = if is64 { BarKind::Mem64 } else { BarKind::Mem32 };
                bars.push(Bar {
                    index: i,
                    kind,
                    base,
                    size,
                    prefetchable,
                });
            }
        }
        // A 64-bit BAR takes two slots.
        i += if is64 { 2 } else { 1 };
    }
    cfg.write32(bdf, COMMAND, cmd);
    bars
}

fn capabilities(cfg: &(impl ConfigAccess + ?Sized), bdf: Bdf) -> Vec<(u8, u8)> {
    let mut caps = Vec::new();
    if cfg.read32(bdf, COMMAND) & STATUS_CAP_LIST == 0 {
        return caps;
    }
    let mut ptr = (cfg.read32(bdf, 0x34) & 0xFC) as u8;
    // 48 is the most capabilities 192 bytes can hold: a loop bound against cycles.
    for _ in 0..48 {
        if ptr < 0x40 {
            break;
        }
        let head = cfg.read32(bdf, ptr as u16);
        caps.push((head as u8, ptr));
        ptr = ((head >> 8) & 0xFC) as u8;
    }
    caps
}

/// Sets command bits (memory decoding, bus mastering, ...) for a device we drive.
pub fn enable(cfg: &(impl ConfigAccess + ?Sized), bdf: Bdf, bits: u16) {
    let v = cfg.read32(bdf, COMMAND);
    cfg.write32(bdf, COMMAND, (v & 0xFFFF) | bits as u32);
}

/// One line of the boot-time table: bdf, ids, class, name, BARs.
pub struct TableRow<'a>(pub &'a Function);

impl fmt::Display for TableRow<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        write!(
            f,
            "{} {:04x}:{:04x} {:02x}{:02x}{:02x} {:<22}",
            d.bdf,
            d.vendor,
            d.device,
            d.class,
            d.subclass,
            d.prog_if,
            d.name()
        )?;
        for b in &d.bars {
            let kind = match b.kind {
                BarKind::Io => "io",
                BarKind::Mem32 => "m32",
                BarKind::Mem64 => "m64",
            };
            write!(f, " BAR{}={}:{:#x}+{}", b.index, kind, b.base, Size(b.size))?;
        }
        Ok(())
    }
}

/// Byte count in the largest whole unit.
pub struct Size(pub u64);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let units = [(1u64 << 30, "G"), (1 << 20, "M"), (1 << 10, "K")];
        for (scale, unit) in units {
            if self.0 >= scale && self.0.is_multiple_of(scale) {
                return write!(f, "{}{}", self.0 / scale, unit);
            }
        }
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use core::cell::RefCell;
    use std::collections::HashMap;

    /// Config space with BAR sizing behaviour: writes of all-ones read back
    /// the size mask, like hardware.
    #[derive(Default)]
    struct FakeBus {
        regs: RefCell<HashMap<(Bdf, u16), u32>>,
        bar_masks: HashMap<(Bdf, u16), u32>,
    }

    impl FakeBus {
        fn set(&mut self, bdf: Bdf, off: u16, v: u32) {
            self.regs.get_mut().insert((bdf, off), v);
        }
    }

    impl ConfigAccess for FakeBus {
        fn read32(&self, bdf: Bdf, off: u16) -> u32 {
            *self.regs.borrow().get(&(bdf, off)).unwrap_or(&0xFFFF_FFFF)
        }
        fn write32(&self, bdf: Bdf, off: u16, value: u32) {
            // BAR registers: all-ones reads back the size mask; a BAR that
            // is not implemented is hard-wired to zero.
            let is_bar = (0x10..0x28).contains(&off);
            let v = if is_bar && value == 0xFFFF_FFFF {
                let mask = self.bar_masks.get(&(bdf, off)).copied().unwrap_or(0);
                let low = self.regs.borrow().get(&(bdf, off)).copied().unwrap_or(0);
                if mask == 0 { 0 } else { mask | (low & 0xF) }
            } else {
                value
            };
            self.regs.borrow_mut().insert((bdf, off), v);
        }
    }

    fn bdf(bus: u8, device: u8, function: u8) -> Bdf {
        Bdf {
            segment: 0,
            bus,
            device,
            function,
        }
    }

    fn nvme_bus() -> FakeBus {
        let mut b = FakeBus::default();
        let host = bdf(0, 0, 0);
        b.set(host, 0, 0x1237_8086);
        b.set(host, 0x08, 0x0600_0002);
        b.set(host, 0x0C, 0);
        b.set(host, COMMAND, 0);
        b.set(host, 0x3C, 0);
        for i in 0..6 {
            b.set(host, 0x10 + 4 * i, 0);
        }
        let nvme = bdf(0, 3, 0);
        b.set(nvme, 0, 0x0010_1b36);
        b.set(nvme, 0x08, 0x0108_0202);
        b.set(nvme, 0x0C, 0);
        b.set(nvme, COMMAND, STATUS_CAP_LIST | 0x0003);
        b.set(nvme, 0x34, 0x40);
        b.set(nvme, 0x40, 0x0000_5011); // MSI-X, next 0x50
        b.set(nvme, 0x50, 0x0000_0001); // PM, end
        b.set(nvme, 0x3C, 0x0000_010b);
        b.set(nvme, 0x10, 0xfebf_0004); // 64-bit memory
        b.set(nvme, 0x14, 0x0000_0000);
        b.set(nvme, 0x18, 0);
        b.set(nvme, 0x1C, 0);
        b.set(nvme, 0x20, 0xc041); // I/O
        b.set(nvme, 0x24, 0);
        b.bar_masks.insert((nvme, 0x10), 0xffff_c000);
        b.bar_masks.insert((nvme, 0x14), 0xffff_ffff);
        b.bar_masks.insert((nvme, 0x20), 0xffff_ffe0);
        // Multi-function device with function 2 only besides 0.
        let mf = bdf(2, 1, 0);
        b.set(mf, 0, 0x1000_1af4);
        b.set(mf, 0x08, 0x0200_0000);
        b.set(mf, 0x0C, 0x0080_0000);
        b.set(mf, COMMAND, 0);
        b.set(mf, 0x3C, 0);
        let f2 = bdf(2, 1, 2);
        b.set(f2, 0, 0x1001_1af4);
        b.set(f2, 0x08, 0x0100_0000);
        b.set(f2, 0x0C, 0);
        b.set(f2, COMMAND, 0);
        b.set(f2, 0x3C, 0);
        b
    }

    #[test]
    fn finds_devices_on_every_bus_and_functions() {
        let b = nvme_bus();
        let found = scan(&b, 0, 0..=255);
        let ids: Vec<_> = found.iter().map(|f| (f.bdf, f.name())).collect();
        assert_eq!(
            ids,
            vec![
                (bdf(0, 0, 0), "i440FX host bridge"),
                (bdf(0, 3, 0), "NVMe (QEMU)"),
                (bdf(2, 1, 0), "virtio-net"),
                (bdf(2, 1, 2), "virtio-blk"),
            ]
        );
    }

    #[test]
    fn decodes_64_bit_and_io_bars_and_restores_registers() {
        let b = nvme_bus();
        let nvme = bdf(0, 3, 0);
        let f = describe(&b, nvme);
        assert!(f.is_nvme());
        assert_eq!(f.bars.len(), 2);
        assert_eq!(
            f.bars[0],
            Bar {
                index: 0,
                kind: BarKind::Mem64,
                base: 0xfebf_0000,
                size: 0x4000,
                prefetchable: false
            }
        );
        assert_eq!(f.bars[1].kind, BarKind::Io);
        assert_eq!(f.bars[1].index, 4);
        assert_eq!(f.bars[1].size, 32);
        assert_eq!(b.read32(nvme, 0x10), 0xfebf_0004);
        assert_eq!(b.read32(nvme, COMMAND) & 0xffff, 0x0003);
        assert_eq!(f.capability(0x11), Some(0x40));
        assert_eq!(f.capabilities.len(), 2);
        assert_eq!(f.interrupt_line, 11);
        let row = TableRow(&f).to_string();
        assert!(
            row.contains("0000:00:03.0 1b36:0010 010802 NVMe (QEMU)"),
            "{row}"
        );
        assert!(row.contains("BAR0=m64:0xfebf0000+16K"), "{row}");
    }

    #[test]
    fn capability_cycles_are_bounded_and_enable_sets_bits() {
        let mut b = nvme_bus();
        let nvme = bdf(0, 3, 0);
        b.set(nvme, 0x50, 0x0000_4001); // points back to 0x40
        assert_eq!(describe(&b, nvme).capabilities.len(), 48);
        enable(&b, nvme, CMD_MEMORY | CMD_BUS_MASTER);
        assert_eq!(b.read32(nvme, COMMAND) & 0x7, 0x7);
    }
}
