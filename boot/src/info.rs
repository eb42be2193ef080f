//! The loader-independent description of what we were booted with.

use crate::PhysRead;
use heapless::{String, Vec};

/// Which boot protocol handed over control.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Multiboot,
    Pvh,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Multiboot => "multiboot",
            Protocol::Pvh => "pvh",
        }
    }
}

/// Memory type as both protocols report it (E820 numbering).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemKind {
    Usable,
    Reserved,
    AcpiReclaimable,
    AcpiNvs,
    Bad,
    Other(u32),
}

impl MemKind {
    pub fn from_e820(t: u32) -> Self {
        match t {
            1 => MemKind::Usable,
            2 => MemKind::Reserved,
            3 => MemKind::AcpiReclaimable,
            4 => MemKind::AcpiNvs,
            5 => MemKind::Bad,
            other => MemKind::Other(other),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemRegion {
    pub base: u64,
    pub len: u64,
    pub kind: MemKind,
}

impl MemRegion {
    pub fn end(&self) -> u64 {
        self.base.saturating_add(self.len)
    }
}

/// A module the loader placed in memory (the boot config, for one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Module {
    pub start: u64,
    pub end: u64,
    /// The module's command line: usually its file name, then arguments.
    pub cmdline: String<MAX_NAME>,
}

pub const MAX_REGIONS: usize = 128;
pub const MAX_MODULES: usize = 8;
pub const MAX_CMDLINE: usize = 2048;
pub const MAX_NAME: usize = 128;
/// Bound on table entries walked, whatever counts and lengths the loader claims.
pub(crate) const MAX_WALK: u32 = 1024;

/// Everything the kernel needs from the loader, copied out of the loader's
/// structures so that their memory can be reused.
#[derive(Clone, Debug)]
pub struct BootInfo {
    pub protocol: Protocol,
    pub memory: Vec<MemRegion, MAX_REGIONS>,
    pub cmdline: String<MAX_CMDLINE>,
    pub modules: Vec<Module, MAX_MODULES>,
    pub rsdp: Option<u64>,
    pub loader_name: String<MAX_NAME>,
    /// Things that did not fit or could not be read, for the console.
    pub truncated: bool,
}

impl BootInfo {
    pub(crate) fn new(protocol: Protocol) -> Self {
        BootInfo {
            protocol,
            memory: Vec::new(),
            cmdline: String::new(),
            modules: Vec::new(),
            rsdp: None,
            loader_name: String::new(),
            truncated: false,
        }
    }

    pub(crate) fn push_region(&mut self, region: MemRegion) {
        if region.len == 0 {
            return;
        }
        if self.memory.push(region).is_err() {
            self.truncated = true;
        }
    }

    /// Adds a module whose command line is the C string at `name` (0: none).
    pub(crate) fn push_module_named(
        &mut self,
        mem: &impl PhysRead,
        start: u64,
        end: u64,
        name: u64,
    ) {
        let (cmdline, cut) = if name != 0 {
            read_cstr(mem, name)
        } else {
            (String::new(), false)
        };
        self.truncated |= cut;
        if self
            .modules
            .push(Module {
                start,
                end,
                cmdline,
            })
            .is_err()
        {
            self.truncated = true;
        }
    }

    /// Total usable RAM in bytes.
    pub fn usable_bytes(&self) -> u64 {
        self.memory
            .iter()
            .filter(|r| r.kind == MemKind::Usable)
            .map(|r| r.len)
            .sum()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootError {
    /// Multiboot entry without the loader magic in eax.
    BadMagic(u32),
    /// PVH start info without its magic.
    BadStartInfo(u32),
    UnknownProtocol(u32),
    /// The loader's structure at this address could not be read.
    Unreadable(u64),
    /// No memory map was handed over.
    NoMemoryMap,
}

impl core::fmt::Display for BootError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BootError::BadMagic(m) => write!(f, "multiboot entry with bad magic {m:#x}"),
            BootError::BadStartInfo(m) => write!(f, "PVH start info with bad magic {m:#x}"),
            BootError::UnknownProtocol(p) => write!(f, "unknown boot protocol {p}"),
            BootError::Unreadable(a) => write!(f, "boot structure at {a:#x} unreadable"),
            BootError::NoMemoryMap => write!(f, "loader gave no memory map"),
        }
    }
}

/// Reads a NUL-terminated string of at most `N` bytes; longer ones are cut and
/// reported through the returned flag. Non-UTF-8 bytes become '?'.
pub(crate) fn read_cstr<const N: usize>(mem: &impl PhysRead, addr: u64) -> (String<N>, bool) {
    let mut out = String::new();
    let mut chunk = [0u8; 64];
    let mut off = 0u64;
    loop {
        // Read byte by byte near the end of readable memory; chunks elsewhere.
        let n = if mem.read(addr + off, &mut chunk) {
            chunk.len()
        } else if mem.read(addr + off, &mut chunk[..1]) {
            1
        } else {
            return (out, off == 0);
        };
        for &b in &chunk[..n] {
            if b == 0 {
                return (out, false);
            }
            let c = if b.is_ascii() { b as char } else { '?' };
            if out.push(c).is_err() {
                return (out, true);
            }
        }
        off += n as u64;
    }
}
