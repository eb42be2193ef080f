//! Multiboot1 information structure (Multiboot Specification 0.6.96, section 3.3).

use crate::PhysRead;
use crate::info::{BootError, BootInfo, MAX_WALK, MemKind, MemRegion, Protocol, read_cstr};

const FLAG_MEM: u32 = 1 << 0;
const FLAG_CMDLINE: u32 = 1 << 2;
const FLAG_MODS: u32 = 1 << 3;
const FLAG_MMAP: u32 = 1 << 6;
const FLAG_LOADER_NAME: u32 = 1 << 9;

const OFF_FLAGS: u64 = 0;
const OFF_MEM_LOWER: u64 = 4;
const OFF_MEM_UPPER: u64 = 8;
const OFF_CMDLINE: u64 = 16;
const OFF_MODS_COUNT: u64 = 20;
const OFF_MODS_ADDR: u64 = 24;
const OFF_MMAP_LENGTH: u64 = 44;
const OFF_MMAP_ADDR: u64 = 48;
const OFF_LOADER_NAME: u64 = 64;

pub(crate) fn parse(mem: &impl PhysRead, mbi: u64) -> Result<BootInfo, BootError> {
    let field = |off: u64| {
        mem.read_u32(mbi + off)
            .ok_or(BootError::Unreadable(mbi + off))
    };
    let flags = field(OFF_FLAGS)?;
    let mut info = BootInfo::new(Protocol::Multiboot);

    if flags & FLAG_MMAP != 0 {
        let len = field(OFF_MMAP_LENGTH)? as u64;
        let addr = field(OFF_MMAP_ADDR)? as u64;
        let mut off = 0u64;
        let mut walked = 0;
        // Each entry: size (excluding itself), base u64, length u64, type u32.
        while off + 24 <= len && walked < MAX_WALK {
            let e = addr + off;
            let size = mem.read_u32(e).ok_or(BootError::Unreadable(e))? as u64;
            let base = mem.read_u64(e + 4).ok_or(BootError::Unreadable(e))?;
            let length = mem.read_u64(e + 12).ok_or(BootError::Unreadable(e))?;
            let kind = mem.read_u32(e + 20).ok_or(BootError::Unreadable(e))?;
            info.push_region(MemRegion {
                base,
                len: length,
                kind: MemKind::from_e820(kind),
            });
            off += size.max(20) + 4;
            walked += 1;
        }
    } else if flags & FLAG_MEM != 0 {
        // Only the two classic sizes: conventional memory and memory above 1 MiB.
        let lower = field(OFF_MEM_LOWER)? as u64 * 1024;
        let upper = field(OFF_MEM_UPPER)? as u64 * 1024;
        info.push_region(MemRegion {
            base: 0,
            len: lower,
            kind: MemKind::Usable,
        });
        info.push_region(MemRegion {
            base: 0x10_0000,
            len: upper,
            kind: MemKind::Usable,
        });
    }
    if info.memory.is_empty() {
        return Err(BootError::NoMemoryMap);
    }

    if flags & FLAG_CMDLINE != 0 {
        let (s, cut) = read_cstr(mem, field(OFF_CMDLINE)? as u64);
        info.cmdline = s;
        info.truncated |= cut;
    }

    if flags & FLAG_MODS != 0 {
        let count = field(OFF_MODS_COUNT)?.min(MAX_WALK);
        let addr = field(OFF_MODS_ADDR)? as u64;
        for i in 0..count as u64 {
            let m = addr + i * 16;
            let start = mem.read_u32(m).ok_or(BootError::Unreadable(m))? as u64;
            let end = mem.read_u32(m + 4).ok_or(BootError::Unreadable(m))? as u64;
            let string = mem.read_u32(m + 8).ok_or(BootError::Unreadable(m))? as u64;
            info.push_module_named(mem, start, end.max(start), string);
        }
    }

    if flags & FLAG_LOADER_NAME != 0 {
        let (s, _) = read_cstr(mem, field(OFF_LOADER_NAME)? as u64);
        info.loader_name = s;
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeMem;

    fn mbi(flags: u32) -> Vec<u8> {
        let mut v = vec![0u8; 88];
        v[0..4].copy_from_slice(&flags.to_le_bytes());
        v
    }

    fn set(v: &mut [u8], off: u64, val: u32) {
        v[off as usize..off as usize + 4].copy_from_slice(&val.to_le_bytes());
    }

    fn mmap_entry(base: u64, len: u64, kind: u32) -> Vec<u8> {
        let mut e = 20u32.to_le_bytes().to_vec();
        e.extend(base.to_le_bytes());
        e.extend(len.to_le_bytes());
        e.extend(kind.to_le_bytes());
        e
    }

    #[test]
    fn full_structure_as_qemu_builds_it() {
        let mut mem = FakeMem::default();
        let mut v = mbi(FLAG_MEM | FLAG_CMDLINE | FLAG_MODS | FLAG_MMAP | FLAG_LOADER_NAME);
        set(&mut v, OFF_CMDLINE, 0x9000);
        set(&mut v, OFF_MODS_COUNT, 1);
        set(&mut v, OFF_MODS_ADDR, 0x9100);
        let mut map = mmap_entry(0, 0x9fc00, 1);
        map.extend(mmap_entry(0x9fc00, 0x400, 2));
        map.extend(mmap_entry(0x100000, 0x1ff0_0000, 1));
        set(&mut v, OFF_MMAP_LENGTH, map.len() as u32);
        set(&mut v, OFF_MMAP_ADDR, 0x9200);
        set(&mut v, OFF_LOADER_NAME, 0x9300);
        mem.put(0x8000, &v);
        mem.put(0x9000, b"/tmp/ironbay.elf log=debug\0");
        let mut module = 0x40_0000u32.to_le_bytes().to_vec();
        module.extend(0x40_0100u32.to_le_bytes());
        module.extend(0x9400u32.to_le_bytes());
        module.extend(0u32.to_le_bytes());
        mem.put(0x9100, &module);
        mem.put(0x9200, &map);
        mem.put(0x9300, b"qemu\0");
        mem.put(0x9400, b"config.json\0");

        let info = parse(&mem, 0x8000).unwrap();
        assert_eq!(info.protocol, Protocol::Multiboot);
        assert_eq!(info.memory.len(), 3);
        assert_eq!(
            info.memory[2],
            MemRegion {
                base: 0x100000,
                len: 0x1ff0_0000,
                kind: MemKind::Usable
            }
        );
        assert_eq!(info.memory[1].kind, MemKind::Reserved);
        assert_eq!(info.cmdline.as_str(), "/tmp/ironbay.elf log=debug");
        assert_eq!(info.modules.len(), 1);
        assert_eq!(info.modules[0].start, 0x40_0000);
        assert_eq!(info.modules[0].end, 0x40_0100);
        assert_eq!(info.modules[0].cmdline.as_str(), "config.json");
        assert_eq!(info.loader_name.as_str(), "qemu");
        assert!(!info.truncated);
    }

    #[test]
    fn falls_back_to_mem_fields_without_map() {
        let mut mem = FakeMem::default();
        let mut v = mbi(FLAG_MEM);
        set(&mut v, OFF_MEM_LOWER, 639);
        set(&mut v, OFF_MEM_UPPER, 64 * 1024);
        mem.put(0x8000, &v);
        let info = parse(&mem, 0x8000).unwrap();
        assert_eq!(info.usable_bytes(), 639 * 1024 + 64 * 1024 * 1024);
    }

    #[test]
    fn no_memory_information_is_an_error() {
        let mut mem = FakeMem::default();
        mem.put(0x8000, &mbi(0));
        assert_eq!(parse(&mem, 0x8000).unwrap_err(), BootError::NoMemoryMap);
    }

    #[test]
    fn hostile_lengths_are_bounded() {
        let mut mem = FakeMem::default();
        let mut v = mbi(FLAG_MMAP | FLAG_MODS);
        set(&mut v, OFF_MMAP_LENGTH, u32::MAX);
        set(&mut v, OFF_MMAP_ADDR, 0x9000);
        set(&mut v, OFF_MODS_COUNT, u32::MAX);
        set(&mut v, OFF_MODS_ADDR, 0x20_0000);
        mem.put(0x8000, &v);
        // A map entry whose size field is zero must still advance.
        let mut map = Vec::new();
        for _ in 0..2000 {
            let mut e = mmap_entry(0x100000, 0x1000, 1);
            e[0..4].copy_from_slice(&0u32.to_le_bytes());
            map.extend(e);
        }
        mem.put(0x9000, &map);
        // Module list is unreadable: an error, not a hang or a panic.
        assert!(matches!(parse(&mem, 0x8000), Err(BootError::Unreadable(_))));
    }

    #[test]
    fn unreadable_info_is_an_error() {
        let mem = FakeMem::default();
        assert_eq!(
            parse(&mem, 0x8000).unwrap_err(),
            BootError::Unreadable(0x8000)
        );
    }

    #[test]
    fn long_command_line_is_cut_and_flagged() {
        let mut mem = FakeMem::default();
        let mut v = mbi(FLAG_MEM | FLAG_CMDLINE);
        set(&mut v, OFF_MEM_UPPER, 1024);
        set(&mut v, OFF_CMDLINE, 0x9000);
        mem.put(0x8000, &v);
        let mut long = vec![b'a'; 5000];
        long.push(0);
        mem.put(0x9000, &long);
        let info = parse(&mem, 0x8000).unwrap();
        assert_eq!(info.cmdline.len(), crate::info::MAX_CMDLINE);
        assert!(info.truncated);
    }
}
