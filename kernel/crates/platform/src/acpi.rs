//! ACPI tables: RSDP, RSDT/XSDT, MADT, MCFG, FADT and the `\_S5` sleep type.
//!
//! Only what the appliance uses: CPU count for SMP, ECAM regions for PCI, and
//! the registers for power-off and reset. Every table is length-bounded and
//! checksummed before use; a bad table is skipped and reported, never trusted.

use crate::PhysRead;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

const HEADER_LEN: usize = 36;
/// Largest table we read (a DSDT on big servers runs to hundreds of KiB).
const MAX_TABLE: u32 = 4 << 20;
const MAX_TABLES: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcpiError {
    NoRsdp,
    BadRsdp(u64),
    Unreadable(u64),
    BadChecksum([u8; 4]),
    BadLength([u8; 4]),
}

impl fmt::Display for AcpiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sig = |s: &[u8; 4]| String::from_utf8_lossy(s).into_owned();
        match self {
            AcpiError::NoRsdp => write!(f, "no RSDP found"),
            AcpiError::BadRsdp(a) => write!(f, "RSDP at {a:#x} fails its checksum"),
            AcpiError::Unreadable(a) => write!(f, "table at {a:#x} unreadable"),
            AcpiError::BadChecksum(s) => write!(f, "table {} fails its checksum", sig(s)),
            AcpiError::BadLength(s) => write!(f, "table {} has an impossible length", sig(s)),
        }
    }
}

/// ACPI Generic Address Structure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GenericAddress {
    /// 0 = system memory, 1 = system I/O, 2 = PCI config.
    pub space: u8,
    pub bit_width: u8,
    pub address: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cpu {
    pub apic_id: u32,
    pub enabled: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EcamRegion {
    pub base: u64,
    pub segment: u16,
    pub bus_start: u8,
    pub bus_end: u8,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fadt {
    pub pm1a_cnt: u32,
    pub pm1b_cnt: u32,
    pub smi_cmd: u32,
    pub acpi_enable: u8,
    pub reset: Option<(GenericAddress, u8)>,
    pub dsdt: u64,
    /// ACPI PM timer I/O port (3.579545 MHz) and whether it counts 32 bits (else 24).
    pub pm_timer: Option<(u16, bool)>,
}

#[derive(Clone, Debug, Default)]
pub struct AcpiInfo {
    pub rsdp: u64,
    pub revision: u8,
    pub oem: String,
    /// Signature and address of every table the root table lists.
    pub tables: Vec<([u8; 4], u64)>,
    pub lapic_base: u64,
    pub cpus: Vec<Cpu>,
    pub ecam: Vec<EcamRegion>,
    pub fadt: Option<Fadt>,
    /// SLP_TYPa and SLP_TYPb for soft-off, from the DSDT.
    pub s5: Option<(u8, u8)>,
    /// Tables skipped because they failed validation.
    pub problems: Vec<AcpiError>,
}

impl AcpiInfo {
    pub fn enabled_cpus(&self) -> usize {
        self.cpus.iter().filter(|c| c.enabled).count()
    }
}

/// Looks for the RSDP where BIOS systems keep it: the first KiB of the EBDA
/// and 0xE0000..0x100000, on 16-byte boundaries.
pub fn find_rsdp(mem: &impl PhysRead) -> Option<u64> {
    let mut areas: Vec<(u64, u64)> = Vec::new();
    if let Some(seg) = mem.read_u32(0x40E).map(|v| v & 0xffff) {
        let ebda = (seg as u64) << 4;
        if (0x8_0000..0xA_0000).contains(&ebda) {
            areas.push((ebda, ebda + 1024));
        }
    }
    areas.push((0xE_0000, 0x10_0000));
    for (start, end) in areas {
        let mut a = start;
        while a < end {
            if parse_rsdp(mem, a).is_ok() {
                return Some(a);
            }
            a += 16;
        }
    }
    None
}

struct Rsdp {
    revision: u8,
    oem: [u8; 6],
    rsdt: u32,
    xsdt: u64,
}

fn checksum_ok(bytes: &[u8]) -> bool {
    bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)) == 0
}

fn parse_rsdp(mem: &impl PhysRead, addr: u64) -> Result<Rsdp, AcpiError> {
    let mut b = [0u8; 36];
    if !mem.read(addr, &mut b[..20]) {
        return Err(AcpiError::Unreadable(addr));
    }
    if &b[..8] != b"RSD PTR " || !checksum_ok(&b[..20]) {
        return Err(AcpiError::BadRsdp(addr));
    }
    let revision = b[15];
    let mut xsdt = 0;
    if revision >= 2 && mem.read(addr, &mut b) && checksum_ok(&b) {
        xsdt = u64::from_le_bytes(b[24..32].try_into().unwrap_or_default());
    }
    Ok(Rsdp {
        revision,
        oem: b[9..15].try_into().unwrap_or_default(),
        rsdt: u32::from_le_bytes([b[16], b[17], b[18], b[19]]),
        xsdt,
    })
}

/// Reads and validates one whole table.
fn read_table(mem: &impl PhysRead, addr: u64) -> Result<([u8; 4], Vec<u8>), AcpiError> {
    let mut h = [0u8; HEADER_LEN];
    if !mem.read(addr, &mut h) {
        return Err(AcpiError::Unreadable(addr));
    }
    let sig: [u8; 4] = [h[0], h[1], h[2], h[3]];
    let len = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    if (len as usize) < HEADER_LEN || len > MAX_TABLE {
        return Err(AcpiError::BadLength(sig));
    }
    let mut t = vec![0u8; len as usize];
    if !mem.read(addr, &mut t) {
        return Err(AcpiError::Unreadable(addr));
    }
    if !checksum_ok(&t) {
        return Err(AcpiError::BadChecksum(sig));
    }
    Ok((sig, t))
}

fn le16(b: &[u8], o: usize) -> u16 {
    b.get(o..o + 2)
        .map_or(0, |s| u16::from_le_bytes([s[0], s[1]]))
}
fn le32(b: &[u8], o: usize) -> u32 {
    b.get(o..o + 4)
        .map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}
fn le64(b: &[u8], o: usize) -> u64 {
    b.get(o..o + 8)
        .map_or(0, |s| u64::from_le_bytes(s.try_into().unwrap_or_default()))
}

/// Reads the root table and the tables the appliance uses.
pub fn discover(mem: &impl PhysRead, rsdp: u64) -> Result<AcpiInfo, AcpiError> {
    let r = parse_rsdp(mem, rsdp)?;
    let mut info = AcpiInfo {
        rsdp,
        revision: r.revision,
        oem: String::from_utf8_lossy(&r.oem).trim_end().into(),
        ..AcpiInfo::default()
    };
    let (root, entry) = if r.xsdt != 0 {
        (r.xsdt, 8)
    } else {
        (r.rsdt as u64, 4)
    };
    let (_, root) = read_table(mem, root)?;
    for chunk in root[HEADER_LEN..].chunks_exact(entry).take(MAX_TABLES) {
        let addr = if entry == 8 {
            le64(chunk, 0)
        } else {
            le32(chunk, 0) as u64
        };
        match read_table(mem, addr) {
            Ok((sig, t)) => {
                info.tables.push((sig, addr));
                match &sig {
                    b"APIC" => parse_madt(&t, &mut info),
                    b"MCFG" => parse_mcfg(&t, &mut info),
                    b"FACP" => info.fadt = Some(parse_fadt(&t)),
                    _ => {}
                }
            }
            Err(e) => info.problems.push(e),
        }
    }
    if let Some(dsdt) = info.fadt.map(|f| f.dsdt).filter(|&d| d != 0) {
        match read_table(mem, dsdt) {
            Ok((_, t)) => {
                info.tables.push((*b"DSDT", dsdt));
                info.s5 = find_s5(&t[HEADER_LEN..]);
            }
            Err(e) => info.problems.push(e),
        }
    }
    Ok(info)
}

fn parse_madt(t: &[u8], info: &mut AcpiInfo) {
    info.lapic_base = le32(t, 36) as u64;
    let mut off = 44;
    while off + 2 <= t.len() {
        let (kind, len) = (t[off], t[off + 1] as usize);
        if len < 2 || off + len > t.len() {
            break;
        }
        let e = &t[off..off + len];
        match (kind, len) {
            // Processor Local APIC: enabled (bit 0) or online capable (bit 1).
            (0, 8..) => info.cpus.push(Cpu {
                apic_id: e[3] as u32,
                enabled: le32(e, 4) & 3 != 0,
            }),
            (9, 16..) => info.cpus.push(Cpu {
                apic_id: le32(e, 4),
                enabled: le32(e, 8) & 3 != 0,
            }),
            (5, 12..) => info.lapic_base = le64(e, 4),
            _ => {}
        }
        off += len;
    }
}

fn parse_mcfg(t: &[u8], info: &mut AcpiInfo) {
    for e in t.get(44..).unwrap_or_default().chunks_exact(16) {
        info.ecam.push(EcamRegion {
            base: le64(e, 0),
            segment: le16(e, 8),
            bus_start: e[10],
            bus_end: e[11],
        });
    }
}

fn gas(t: &[u8], o: usize) -> Option<GenericAddress> {
    let b = t.get(o..o + 12)?;
    Some(GenericAddress {
        space: b[0],
        bit_width: b[1],
        address: le64(b, 4),
    })
}

fn parse_fadt(t: &[u8]) -> Fadt {
    const RESET_REG_SUP: u32 = 1 << 10;
    let flags = le32(t, 112);
    let reset = if flags & RESET_REG_SUP != 0 && t.len() > 128 {
        gas(t, 116).filter(|g| g.address != 0).map(|g| (g, t[128]))
    } else {
        None
    };
    let x_dsdt = if t.len() >= 148 { le64(t, 140) } else { 0 };
    const TMR_VAL_EXT: u32 = 1 << 8;
    let x_pm_tmr = gas(t, 208)
        .filter(|g| g.space == 1 && g.address != 0)
        .map(|g| g.address as u32);
    let pm_tmr = x_pm_tmr.unwrap_or(le32(t, 76));
    let pm_timer =
        (pm_tmr != 0 && pm_tmr <= 0xFFFF).then_some((pm_tmr as u16, flags & TMR_VAL_EXT != 0));
    Fadt {
        smi_cmd: le32(t, 48),
        acpi_enable: t.get(52).copied().unwrap_or(0),
        pm1a_cnt: le32(t, 64),
        pm1b_cnt: le32(t, 68),
        reset,
        dsdt: if x_dsdt != 0 {
            x_dsdt
        } else {
            le32(t, 40) as u64
        },
        pm_timer,
    }
}

/// Finds `Name(_S5, Package() {a, b, ...})` in AML and returns SLP_TYPa/b.
/// A byte search is enough: the object is a plain named package in every
/// firmware we boot on, and a miss only costs us ACPI power-off.
pub fn find_s5(aml: &[u8]) -> Option<(u8, u8)> {
    let pos = aml.windows(4).position(|w| w == b"_S5_")?;
    // NameOp (0x08), optionally followed by a root prefix, precedes the name.
    let named = pos >= 1
        && (aml[pos - 1] == 0x08 || (pos >= 2 && aml[pos - 1] == b'\\' && aml[pos - 2] == 0x08));
    if !named {
        return None;
    }
    let mut i = pos + 4;
    if *aml.get(i)? != 0x12 {
        return None; // PackageOp
    }
    i += 1;
    let extra = (*aml.get(i)? >> 6) as usize; // PkgLength: extra bytes in bits 7-6
    i += 1 + extra + 1; // PkgLength bytes, then NumElements
    let mut value = || -> Option<u8> {
        let op = *aml.get(i)?;
        let (v, n) = match op {
            0x0A => (*aml.get(i + 1)?, 2), // BytePrefix
            0x00 => (0, 1),                // ZeroOp
            0x01 => (1, 1),                // OneOp
            _ => return None,
        };
        i += n;
        Some(v)
    };
    let a = value()?;
    let b = value().unwrap_or(0);
    Some((a & 7, b & 7))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Mem(Vec<(u64, Vec<u8>)>);
    impl PhysRead for Mem {
        fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
            self.0.iter().any(|(b, d)| {
                let ok = addr >= *b && addr + buf.len() as u64 <= b + d.len() as u64;
                if ok {
                    let o = (addr - b) as usize;
                    buf.copy_from_slice(&d[o..o + buf.len()]);
                }
                ok
            })
        }
    }

    fn fix_checksum(t: &mut [u8], at: usize) {
        t[at] = 0;
        let s = t.iter().fold(0u8, |a, b| a.wrapping_add(*b));
        t[at] = 0u8.wrapping_sub(s);
    }

    fn table(sig: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut t = vec![0u8; HEADER_LEN];
        t[..4].copy_from_slice(sig);
        t.extend_from_slice(body);
        let len = t.len() as u32;
        t[4..8].copy_from_slice(&len.to_le_bytes());
        t[8] = 1;
        fix_checksum(&mut t, 9);
        t
    }

    fn rsdp(rsdt: u32) -> Vec<u8> {
        let mut r = b"RSD PTR ".to_vec();
        r.push(0);
        r.extend(b"BOCHS ");
        r.push(0);
        r.extend(rsdt.to_le_bytes());
        fix_checksum(&mut r, 8);
        r
    }

    /// The tables QEMU's q35 machine gives, cut down to the fields we read.
    fn q35_like() -> Mem {
        let mut madt_body = 0xFEE0_0000u32.to_le_bytes().to_vec();
        madt_body.extend(1u32.to_le_bytes());
        for (id, flags) in [(0u8, 1u32), (1, 1), (2, 0)] {
            madt_body.extend([0, 8, id, id]);
            madt_body.extend(flags.to_le_bytes());
        }
        madt_body.extend([1, 12, 0, 0, 0, 0, 0xC0, 0xFE, 0, 0, 0, 0]); // IO APIC
        let madt = table(b"APIC", &madt_body);

        let mut mcfg_body = vec![0u8; 8];
        mcfg_body.extend(0xB000_0000u64.to_le_bytes());
        mcfg_body.extend([0, 0, 0, 255, 0, 0, 0, 0]);
        let mcfg = table(b"MCFG", &mcfg_body);

        let mut dsdt_body = vec![0x10, 0x05, b'\\', b'_', b'S', b'B', b'_'];
        dsdt_body.extend([
            0x08, b'_', b'S', b'5', b'_', 0x12, 0x06, 0x04, 0x00, 0x00, 0x0A, 0x07,
        ]);
        let dsdt = table(b"DSDT", &dsdt_body);

        let mut fadt_body = vec![0u8; 244 - HEADER_LEN];
        let put32 = |b: &mut Vec<u8>, off: usize, v: u32| {
            b[off - HEADER_LEN..off - HEADER_LEN + 4].copy_from_slice(&v.to_le_bytes())
        };
        put32(&mut fadt_body, 40, 0x9000);
        put32(&mut fadt_body, 48, 0xB2);
        fadt_body[52 - HEADER_LEN] = 0xF1;
        put32(&mut fadt_body, 64, 0x604);
        put32(&mut fadt_body, 76, 0x608);
        put32(&mut fadt_body, 112, 1 << 10 | 1 << 8);
        fadt_body[116 - HEADER_LEN] = 1;
        fadt_body[117 - HEADER_LEN] = 8;
        fadt_body[120 - HEADER_LEN] = 0xF9;
        fadt_body[121 - HEADER_LEN] = 0x0C;
        fadt_body[128 - HEADER_LEN] = 0x0F;
        let fadt = table(b"FACP", &fadt_body);

        let mut bad = table(b"SSDT", &[1, 2, 3]);
        bad[20] ^= 0xff;

        let mut rsdt_body = Vec::new();
        for a in [0x2000u32, 0x3000, 0x4000, 0x5000] {
            rsdt_body.extend(a.to_le_bytes());
        }
        let rsdt = table(b"RSDT", &rsdt_body);
        Mem(vec![
            (0xF_5A00, rsdp(0x1000)),
            (0x1000, rsdt),
            (0x2000, madt),
            (0x3000, mcfg),
            (0x4000, fadt),
            (0x5000, bad),
            (0x9000, dsdt),
        ])
    }

    #[test]
    fn finds_rsdp_in_bios_area() {
        let m = q35_like();
        assert_eq!(find_rsdp(&m), Some(0xF_5A00));
        assert_eq!(find_rsdp(&Mem(vec![])), None);
    }

    #[test]
    fn discovers_cpus_ecam_power_registers() {
        let m = q35_like();
        let info = discover(&m, 0xF_5A00).unwrap();
        assert_eq!(info.oem, "BOCHS");
        assert_eq!(info.cpus.len(), 3);
        assert_eq!(info.enabled_cpus(), 2);
        assert_eq!(info.lapic_base, 0xFEE0_0000);
        assert_eq!(
            info.ecam,
            vec![EcamRegion {
                base: 0xB000_0000,
                segment: 0,
                bus_start: 0,
                bus_end: 255
            }]
        );
        let f = info.fadt.unwrap();
        assert_eq!(f.pm1a_cnt, 0x604);
        assert_eq!(f.pm_timer, Some((0x608, true)));
        assert_eq!(f.reset.unwrap().0.address, 0xCF9);
        assert_eq!(f.reset.unwrap().1, 0x0F);
        assert_eq!(info.s5, Some((0, 0)));
        assert_eq!(info.problems, vec![AcpiError::BadChecksum(*b"SSDT")]);
    }

    #[test]
    fn s5_forms() {
        assert_eq!(
            find_s5(&[
                0x08, b'_', b'S', b'5', b'_', 0x12, 0x08, 0x04, 0x0A, 0x05, 0x0A, 0x05
            ]),
            Some((5, 5))
        );
        assert_eq!(
            find_s5(&[
                0x08, b'\\', b'_', b'S', b'5', b'_', 0x12, 0x06, 0x04, 0x01, 0x00
            ]),
            Some((1, 0))
        );
        assert_eq!(find_s5(&[0x08, b'_', b'S', b'5', b'_']), None);
        assert_eq!(find_s5(&[0x14, b'_', b'S', b'5', b'_', 0x12]), None);
        assert_eq!(find_s5(b""), None);
    }

    #[test]
    fn corrupt_tables_are_errors_not_panics() {
        let mut m = q35_like();
        // RSDT claiming a huge length.
        m.0[1].1[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            discover(&m, 0xF_5A00).unwrap_err(),
            AcpiError::BadLength(*b"RSDT")
        );
        m.0[1].1[4..8].copy_from_slice(&10u32.to_le_bytes());
        assert!(discover(&m, 0xF_5A00).is_err());
        assert!(matches!(
            discover(&m, 0x1234),
            Err(AcpiError::Unreadable(_))
        ));
        // MADT entries with zero or overlong lengths stop the walk.
        let mut info = AcpiInfo::default();
        let mut t = vec![0u8; 44];
        t.extend([0, 0, 9, 200]);
        parse_madt(&t, &mut info);
        assert!(info.cpus.is_empty());
    }
}
