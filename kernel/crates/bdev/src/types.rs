//! The vocabulary of block I/O.

use crate::buf::IoBuf;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// Kinds of I/O, with SPDK's names for them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IoType {
    Read,
    Write,
    Flush,
    Unmap,
    WriteZeroes,
}

impl IoType {
    pub const ALL: [IoType; 5] = [
        IoType::Read,
        IoType::Write,
        IoType::Flush,
        IoType::Unmap,
        IoType::WriteZeroes,
    ];

    /// SPDK's key in `supported_io_types`.
    pub fn name(self) -> &'static str {
        match self {
            IoType::Read => "read",
            IoType::Write => "write",
            IoType::Flush => "flush",
            IoType::Unmap => "unmap",
            IoType::WriteZeroes => "write_zeroes",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// A set of [`IoType`]s.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoTypes(u8);

impl IoTypes {
    pub const fn empty() -> Self {
        IoTypes(0)
    }

    pub const fn with(self, t: IoType) -> Self {
        IoTypes(self.0 | 1 << t as u8)
    }

    pub const fn contains(self, t: IoType) -> bool {
        self.0 & (1 << t as u8) != 0
    }

    pub fn iter(self) -> impl Iterator<Item = IoType> {
        IoType::ALL.into_iter().filter(move |t| self.contains(*t))
    }
}

impl fmt::Display for IoTypes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.iter().map(IoType::name).collect();
        write!(f, "{}", names.join(","))
    }
}

/// A 128-bit identifier, printed in the RFC 4122 form.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Uuid(pub [u8; 16]);

impl Uuid {
    /// A name-derived UUID (version 8 layout) for devices that carry none, so
    /// the same device gets the same UUID on every boot.
    pub fn from_name(parts: &[&[u8]]) -> Self {
        // FNV-1a over the parts, stretched to 128 bits by two seeds.
        let hash = |seed: u64| {
            let mut h = seed;
            for p in parts {
                for &b in *p {
                    h ^= b as u64;
                    h = h.wrapping_mul(0x100_0000_01b3);
                }
                h ^= 0xff;
                h = h.wrapping_mul(0x100_0000_01b3);
            }
            h
        };
        let mut u = [0u8; 16];
        u[..8].copy_from_slice(&hash(0xcbf2_9ce4_8422_2325).to_be_bytes());
        u[8..].copy_from_slice(&hash(0x8422_2325_cbf2_9ce4).to_be_bytes());
        u[6] = (u[6] & 0x0f) | 0x80;
        u[8] = (u[8] & 0x3f) | 0x80;
        Uuid(u)
    }

    pub fn is_nil(&self) -> bool {
        self.0 == [0; 16]
    }

    /// Parses the RFC 4122 text form (`8-4-4-4-12` hex digits).
    pub fn parse(s: &str) -> Option<Uuid> {
        let groups: Vec<&str> = s.split('-').collect();
        if groups.iter().map(|g| g.len()).collect::<Vec<_>>() != [8, 4, 4, 4, 12] {
            return None;
        }
        let hex: String = groups.concat();
        let mut u = [0u8; 16];
        for (i, b) in u.iter_mut().enumerate() {
            *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Uuid(u))
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                write!(f, "-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// What a block device says about itself.
#[derive(Clone, Debug)]
pub struct BdevInfo {
    pub name: String,
    pub uuid: Uuid,
    /// Human description, SPDK's `product_name` ("NVMe disk", "Malloc disk", ...).
    pub product: String,
    pub block_size: u32,
    pub num_blocks: u64,
    pub io_types: IoTypes,
    /// Largest single data transfer in bytes.
    pub max_transfer: u32,
    /// Largest single unmap and write-zeroes request, in blocks.
    pub max_unmap_blocks: u32,
    pub max_write_zeroes_blocks: u32,
    /// How many requests the device accepts at once.
    pub queue_depth: u32,
    /// Writes may sit in a volatile cache until a flush.
    pub write_cache: bool,
    pub read_only: bool,
    /// Unmapped blocks read back as zeroes (SCSI LBPRZ, NVMe DLFEAT).
    pub unmap_zeroes: bool,
}

impl BdevInfo {
    /// A device that lives in memory (RAM or nothing at all): every I/O type,
    /// 32 MiB transfers, a deep queue.
    pub fn in_memory(
        name: &str,
        product: &str,
        uuid: Uuid,
        num_blocks: u64,
        block_size: u32,
    ) -> Self {
        BdevInfo {
            name: String::from(name),
            uuid,
            product: String::from(product),
            block_size,
            num_blocks,
            io_types: IoType::ALL
                .into_iter()
                .fold(IoTypes::empty(), IoTypes::with),
            max_transfer: 32 << 20,
            max_unmap_blocks: u32::MAX,
            max_write_zeroes_blocks: u32::MAX,
            queue_depth: 4096,
            write_cache: false,
            read_only: false,
            unmap_zeroes: true,
        }
    }

    pub fn size_bytes(&self) -> u64 {
        self.num_blocks * self.block_size as u64
    }
}

/// One I/O. The caller's `tag` comes back in the completion.
#[derive(Debug)]
pub struct IoRequest {
    pub tag: u64,
    pub op: IoOp,
    /// Force unit access: complete only once the data is durable.
    pub fua: bool,
}

#[derive(Debug)]
pub enum IoOp {
    /// Reads `buf.len() / block_size` blocks starting at `lba`.
    Read {
        lba: u64,
        buf: IoBuf,
    },
    /// Writes `buf.len() / block_size` blocks starting at `lba`.
    Write {
        lba: u64,
        buf: IoBuf,
    },
    Flush,
    Unmap {
        lba: u64,
        blocks: u32,
    },
    WriteZeroes {
        lba: u64,
        blocks: u32,
    },
}

impl IoOp {
    pub fn io_type(&self) -> IoType {
        match self {
            IoOp::Read { .. } => IoType::Read,
            IoOp::Write { .. } => IoType::Write,
            IoOp::Flush => IoType::Flush,
            IoOp::Unmap { .. } => IoType::Unmap,
            IoOp::WriteZeroes { .. } => IoType::WriteZeroes,
        }
    }

    /// Bytes of data moved (0 for flush, unmap and write zeroes).
    pub fn data_bytes(&self) -> usize {
        match self {
            IoOp::Read { buf, .. } | IoOp::Write { buf, .. } => buf.len(),
            _ => 0,
        }
    }

    /// Gives the data buffer back (for error completions).
    pub fn into_buf(self) -> Option<IoBuf> {
        match self {
            IoOp::Read { buf, .. } | IoOp::Write { buf, .. } => Some(buf),
            _ => None,
        }
    }
}

/// How an I/O ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoStatus {
    Success,
    /// LBA range beyond the end of the device.
    OutOfRange,
    /// Length not a whole, non-zero number of blocks.
    Misaligned,
    /// The device does not do this kind of I/O.
    Unsupported,
    /// Larger than the device's maximum transfer.
    TooLarge,
    ReadOnly,
    /// The device reported an error; the code is the device's own.
    DeviceError(u16),
    /// The device did not answer in time; the buffer is withheld (the device
    /// may still write to it).
    Timeout,
    /// The device failed and was stopped.
    DeviceFailed,
    NoMemory,
    /// A thinly provisioned device found no free space for the write.
    NoSpace,
    /// The device belongs to a stacked device (a volume store, a
    /// pass-through) and takes no requests from anyone else.
    Claimed,
}

impl IoStatus {
    pub fn is_ok(self) -> bool {
        self == IoStatus::Success
    }
}

impl fmt::Display for IoStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IoStatus::Success => write!(f, "success"),
            IoStatus::OutOfRange => write!(f, "LBA out of range"),
            IoStatus::Misaligned => write!(f, "length not a whole number of blocks"),
            IoStatus::Unsupported => write!(f, "I/O type not supported"),
            IoStatus::TooLarge => write!(f, "transfer larger than the device allows"),
            IoStatus::ReadOnly => write!(f, "device is read-only"),
            IoStatus::DeviceError(c) => write!(f, "device error {c:#x}"),
            IoStatus::Timeout => write!(f, "device timed out"),
            IoStatus::DeviceFailed => write!(f, "device failed"),
            IoStatus::NoMemory => write!(f, "out of memory"),
            IoStatus::NoSpace => write!(f, "no space left to allocate"),
            IoStatus::Claimed => write!(f, "device is claimed by another bdev"),
        }
    }
}

#[derive(Debug)]
pub struct IoCompletion {
    pub tag: u64,
    pub status: IoStatus,
    /// The request's buffer, if it had one (withheld after a timeout).
    pub buf: Option<IoBuf>,
}

/// A block device.
///
/// `submit` takes a request that the [`Registry`](crate::Registry) has
/// already validated against [`BdevInfo`]; when the device queue is full it
/// returns the request so the caller can retry after the next `poll`.
/// `poll` appends finished requests to `out` and returns how many it added.
pub trait BlockDevice {
    fn info(&self) -> &BdevInfo;
    fn submit(&mut self, req: IoRequest, now_us: u64) -> Result<(), IoRequest>;
    fn poll(&mut self, now_us: u64, out: &mut Vec<IoCompletion>) -> usize;
    fn in_flight(&self) -> usize;

    /// Which blocks of `lba..lba+blocks` hold data, as runs of
    /// (blocks, allocated), when the device knows; unallocated blocks read
    /// as zeroes. `None`: not tracked, treat everything as data.
    fn allocation(&self, _lba: u64, _blocks: u64) -> Option<Vec<(u64, bool)>> {
        None
    }

    /// Where the data of `lba..lba+blocks` lives, as runs of (blocks,
    /// depth): 0 unallocated, 1 in this device, 2 and up that many layers
    /// down (a clone's snapshot is 2). `None`: the device has no layers.
    fn allocation_depth(&self, _lba: u64, _blocks: u64) -> Option<Vec<(u64, u32)>> {
        None
    }

    /// Changes the capacity to `num_blocks` (at least 1; the registry
    /// checks). `Unsupported` if the device cannot take that size,
    /// `NoMemory` if a RAM device cannot get the memory.
    fn resize(&mut self, _num_blocks: u64) -> Result<(), IoStatus> {
        Err(IoStatus::Unsupported)
    }

    /// Re-reads what the device says about itself after its owner changed
    /// it (a volume resized, made read-only, cut loose from its parent).
    fn refresh(&mut self) {}

    /// The device as [`Any`](core::any::Any), so the module that made it
    /// can reach its own type again through
    /// [`Registry::with_device`](crate::Registry::with_device) (a stacked
    /// device's settings, and the claim it gives back when deleted).
    /// `None`: the device offers no such access.
    fn as_any_mut(&mut self) -> Option<&mut dyn core::any::Any> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn uuid_formats_and_is_stable() {
        let a = Uuid::from_name(&[b"Malloc0"]);
        assert_eq!(a, Uuid::from_name(&[b"Malloc0"]));
        assert_ne!(a, Uuid::from_name(&[b"Malloc1"]));
        let s = a.to_string();
        assert_eq!(s.len(), 36);
        assert_eq!(&s[14..15], "8");
        assert!(Uuid::default().is_nil());
        assert_eq!(Uuid::parse(&s), Some(a));
        for bad in [
            "",
            "0-0-0-0-0",
            "zzzzzzzz-0000-0000-0000-000000000000",
            "00000000-0000-0000-0000-0000000000000",
        ] {
            assert_eq!(Uuid::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn io_type_sets() {
        let t = IoTypes::empty().with(IoType::Read).with(IoType::Unmap);
        assert!(t.contains(IoType::Read) && !t.contains(IoType::Write));
        assert_eq!(t.to_string(), "read,unmap");
    }
}
