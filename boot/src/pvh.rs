//! Xen PVH direct boot: `struct hvm_start_info` (xen/include/public/arch-x86/hvm/start_info.h).

use crate::PhysRead;
use crate::info::{BootError, BootInfo, MAX_WALK, MemKind, MemRegion, Protocol, read_cstr};

const START_MAGIC: u32 = 0x336e_c578;

const OFF_MAGIC: u64 = 0;
const OFF_VERSION: u64 = 4;
const OFF_NR_MODULES: u64 = 12;
const OFF_MODLIST: u64 = 16;
const OFF_CMDLINE: u64 = 24;
const OFF_RSDP: u64 = 32;
const OFF_MEMMAP: u64 = 40;
const OFF_MEMMAP_ENTRIES: u64 = 48;

const MODLIST_ENTRY: u64 = 32;
const MEMMAP_ENTRY: u64 = 24;

pub(crate) fn parse(mem: &impl PhysRead, si: u64) -> Result<BootInfo, BootError> {
    let u32_at = |off: u64| {
        mem.read_u32(si + off)
            .ok_or(BootError::Unreadable(si + off))
    };
    let u64_at = |off: u64| {
        mem.read_u64(si + off)
            .ok_or(BootError::Unreadable(si + off))
    };
    let magic = u32_at(OFF_MAGIC)?;
    if magic != START_MAGIC {
        return Err(BootError::BadStartInfo(magic));
    }
    let version = u32_at(OFF_VERSION)?;
    let mut info = BootInfo::new(Protocol::Pvh);

    // The memory map exists from version 1 on; without it we cannot go on.
    if version >= 1 {
        let map = u64_at(OFF_MEMMAP)?;
        let entries = u32_at(OFF_MEMMAP_ENTRIES)?.min(MAX_WALK);
        for i in 0..entries as u64 {
            let e = map + i * MEMMAP_ENTRY;
            let base = mem.read_u64(e).ok_or(BootError::Unreadable(e))?;
            let len = mem.read_u64(e + 8).ok_or(BootError::Unreadable(e))?;
            let kind = mem.read_u32(e + 16).ok_or(BootError::Unreadable(e))?;
            info.push_region(MemRegion {
                base,
                len,
                kind: MemKind::from_e820(kind),
            });
        }
    }
    if info.memory.is_empty() {
        return Err(BootError::NoMemoryMap);
    }

    let cmdline = u64_at(OFF_CMDLINE)?;
    if cmdline != 0 {
        let (s, cut) = read_cstr(mem, cmdline);
        info.cmdline = s;
        info.truncated |= cut;
    }

    let rsdp = u64_at(OFF_RSDP)?;
    info.rsdp = (rsdp != 0).then_some(rsdp);

    let count = u32_at(OFF_NR_MODULES)?.min(MAX_WALK);
    let list = u64_at(OFF_MODLIST)?;
    for i in 0..count as u64 {
        let m = list + i * MODLIST_ENTRY;
        let paddr = mem.read_u64(m).ok_or(BootError::Unreadable(m))?;
        let size = mem.read_u64(m + 8).ok_or(BootError::Unreadable(m))?;
        let string = mem.read_u64(m + 16).ok_or(BootError::Unreadable(m))?;
        info.push_module_named(mem, paddr, paddr.saturating_add(size), string);
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeMem;

    fn start_info(version: u32) -> Vec<u8> {
        let mut v = vec![0u8; 56];
        v[0..4].copy_from_slice(&START_MAGIC.to_le_bytes());
        v[4..8].copy_from_slice(&version.to_le_bytes());
        v
    }

    fn put64(v: &mut [u8], off: u64, val: u64) {
        v[off as usize..off as usize + 8].copy_from_slice(&val.to_le_bytes());
    }

    #[test]
    fn version_one_with_map_module_and_rsdp() {
        let mut mem = FakeMem::default();
        let mut v = start_info(1);
        v[12..16].copy_from_slice(&1u32.to_le_bytes());
        put64(&mut v, OFF_MODLIST, 0x7000);
        put64(&mut v, OFF_CMDLINE, 0x7100);
        put64(&mut v, OFF_RSDP, 0xf5000);
        put64(&mut v, OFF_MEMMAP, 0x7200);
        v[48..52].copy_from_slice(&2u32.to_le_bytes());
        mem.put(0x6000, &v);
        let mut m = 0x80_0000u64.to_le_bytes().to_vec();
        m.extend(0x200u64.to_le_bytes());
        m.extend(0u64.to_le_bytes());
        m.extend(0u64.to_le_bytes());
        mem.put(0x7000, &m);
        mem.put(0x7100, b"log=info panic=reboot\0");
        let mut map = Vec::new();
        for (b, l, t) in [(0u64, 0x9fc00u64, 1u32), (0x100000, 0x7ff0_0000, 1)] {
            map.extend(b.to_le_bytes());
            map.extend(l.to_le_bytes());
            map.extend(t.to_le_bytes());
            map.extend(0u32.to_le_bytes());
        }
        mem.put(0x7200, &map);

        let info = parse(&mem, 0x6000).unwrap();
        assert_eq!(info.protocol, Protocol::Pvh);
        assert_eq!(info.memory.len(), 2);
        assert_eq!(info.usable_bytes(), 0x9fc00 + 0x7ff0_0000);
        assert_eq!(info.cmdline.as_str(), "log=info panic=reboot");
        assert_eq!(info.rsdp, Some(0xf5000));
        assert_eq!(info.modules.len(), 1);
        assert_eq!(info.modules[0].end, 0x80_0200);
        assert!(info.modules[0].cmdline.is_empty());
    }

    #[test]
    fn wrong_magic_is_refused() {
        let mut mem = FakeMem::default();
        let mut v = start_info(1);
        v[0] = 0;
        mem.put(0x6000, &v);
        assert!(matches!(
            parse(&mem, 0x6000),
            Err(BootError::BadStartInfo(_))
        ));
    }

    #[test]
    fn version_zero_has_no_memory_map() {
        let mut mem = FakeMem::default();
        mem.put(0x6000, &start_info(0));
        assert_eq!(parse(&mem, 0x6000).unwrap_err(), BootError::NoMemoryMap);
    }
}
