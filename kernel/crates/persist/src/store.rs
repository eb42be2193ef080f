//! Loading and saving the area on a device the caller owns outright (a
//! claimed bdev), with blocking I/O.
//!
//! A save writes the slot that does *not* hold the newest valid config:
//! payload, flush, header, flush. Whatever a power cut leaves of that slot
//! fails its CRCs, so a load still finds the slot the previous save
//! completed; once the header is down the new generation wins.

use crate::format::{
    AREA_BYTES, HEADER_BLOCK, Header, MAX_PAYLOAD, SLOTS, load_order, slot_offset,
};
use alloc::vec::Vec;
use core::fmt;
use ironbay_bdev::sync::{self, Clock};
use ironbay_bdev::{BdevInfo, BlockDevice, IoStatus};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The device's block size does not divide the 4 KiB header block.
    BlockSize(u32),
    /// The device is smaller than the area.
    TooSmall { bytes: u64 },
    /// The device is read-only.
    ReadOnly,
    /// The config is larger than a slot holds.
    TooLarge { bytes: usize },
    /// The device failed a request.
    Io(IoStatus),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::BlockSize(bs) => write!(
                f,
                "block size {bs} does not divide the {HEADER_BLOCK}-byte header block"
            ),
            Error::TooSmall { bytes } => write!(
                f,
                "the device has {bytes} bytes; the config area needs {AREA_BYTES}"
            ),
            Error::ReadOnly => write!(f, "the device is read-only"),
            Error::TooLarge { bytes } => write!(
                f,
                "the configuration is {bytes} bytes; a config area slot holds at most {MAX_PAYLOAD}"
            ),
            Error::Io(s) => write!(f, "I/O error: {s}"),
        }
    }
}

impl From<IoStatus> for Error {
    fn from(s: IoStatus) -> Self {
        Error::Io(s)
    }
}

/// A config found on the device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loaded {
    pub slot: u8,
    pub generation: u64,
    pub payload: Vec<u8>,
}

/// What is known of an area: which slot holds the newest valid config, and
/// the highest generation seen anywhere (the next save's comes after it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Store {
    current: Option<(u8, u64)>,
    highest: u64,
    /// A save failed part-way: re-read the headers before the next one.
    stale: bool,
}

/// Whether a device can hold the area.
pub fn check(info: &BdevInfo) -> Result<(), Error> {
    let bs = info.block_size;
    if bs == 0 || !(HEADER_BLOCK as u32).is_multiple_of(bs) {
        return Err(Error::BlockSize(bs));
    }
    let bytes = info.size_bytes();
    if bytes < AREA_BYTES {
        return Err(Error::TooSmall { bytes });
    }
    if info.read_only {
        return Err(Error::ReadOnly);
    }
    Ok(())
}

/// Reads `len` bytes at byte `offset`, split to the device's largest transfer.
fn read(
    dev: &mut dyn BlockDevice,
    offset: u64,
    len: usize,
    clock: Clock<'_>,
) -> Result<Vec<u8>, Error> {
    let bs = dev.info().block_size as usize;
    let chunk = (dev.info().max_transfer as usize / bs).max(1) * bs;
    let mut out = Vec::new();
    out.try_reserve_exact(len)
        .map_err(|_| Error::Io(IoStatus::NoMemory))?;
    let mut others = Vec::new();
    while out.len() < len {
        let n = chunk.min(len - out.len());
        let lba = (offset + out.len() as u64) / bs as u64;
        let buf = sync::read(dev, lba, n, clock, &mut others)?;
        out.extend_from_slice(buf.as_slice());
        others.clear();
    }
    Ok(out)
}

fn write(
    dev: &mut dyn BlockDevice,
    offset: u64,
    data: &[u8],
    clock: Clock<'_>,
) -> Result<(), Error> {
    let lba = offset / u64::from(dev.info().block_size);
    let mut others = Vec::new();
    sync::write(dev, lba, data, clock, &mut others)?;
    Ok(())
}

fn flush(dev: &mut dyn BlockDevice, clock: Clock<'_>) -> Result<(), Error> {
    let mut others = Vec::new();
    sync::flush(dev, clock, &mut others)?;
    Ok(())
}

/// Both slots' headers (`None` where invalid or never written).
fn headers(dev: &mut dyn BlockDevice, clock: Clock<'_>) -> Result<[Option<Header>; SLOTS], Error> {
    let mut hs = [None; SLOTS];
    for (slot, h) in hs.iter_mut().enumerate() {
        let block = read(dev, slot_offset(slot), HEADER_BLOCK, clock)?;
        *h = Header::parse(&block, slot).ok();
    }
    Ok(hs)
}

/// Whether the device holds a valid header in either slot, and the highest
/// generation among them: a cheap look for scanning many devices.
pub fn probe(dev: &mut dyn BlockDevice, clock: Clock<'_>) -> Result<Option<u64>, Error> {
    check(dev.info())?;
    let hs = headers(dev, clock)?;
    Ok(hs.iter().flatten().map(|h| h.generation).max())
}

impl Store {
    /// Reads the area: the newest config whose header and payload are both
    /// intact, if any.
    pub fn open(
        dev: &mut dyn BlockDevice,
        clock: Clock<'_>,
    ) -> Result<(Store, Option<Loaded>), Error> {
        check(dev.info())?;
        let hs = headers(dev, clock)?;
        let mut store = Store {
            current: None,
            highest: hs.iter().flatten().map(|h| h.generation).max().unwrap_or(0),
            stale: false,
        };
        for h in load_order(&hs) {
            let offset = slot_offset(h.slot as usize) + HEADER_BLOCK as u64;
            let bs = dev.info().block_size as usize;
            let padded = (h.length as usize).div_ceil(bs) * bs;
            let mut payload = read(dev, offset, padded, clock)?;
            payload.truncate(h.length as usize);
            if h.matches(&payload) {
                store.current = Some((h.slot, h.generation));
                let loaded = Loaded {
                    slot: h.slot,
                    generation: h.generation,
                    payload,
                };
                return Ok((store, Some(loaded)));
            }
        }
        Ok((store, None))
    }

    /// The slot and generation of the newest valid config.
    pub fn current(&self) -> Option<(u8, u64)> {
        self.current
    }

    /// The slot the next save writes: the one not holding the newest config.
    pub fn next_slot(&self) -> u8 {
        match self.current {
            Some((slot, _)) => 1 - slot,
            None => 0,
        }
    }

    /// Writes `payload` as the next generation. On success it is what a
    /// load finds; on failure the previous config still is.
    pub fn save(
        &mut self,
        dev: &mut dyn BlockDevice,
        payload: &[u8],
        clock: Clock<'_>,
    ) -> Result<u64, Error> {
        if payload.len() > MAX_PAYLOAD {
            return Err(Error::TooLarge {
                bytes: payload.len(),
            });
        }
        check(dev.info())?;
        if self.stale {
            // A failed save may have landed more than it acknowledged.
            let (fresh, _) = Store::open(dev, clock)?;
            *self = fresh;
        }
        let slot = self.next_slot();
        let generation = self.highest + 1;
        self.stale = true;
        self.highest = generation;
        let bs = dev.info().block_size as usize;
        let mut data = Vec::new();
        data.try_reserve_exact(payload.len().div_ceil(bs) * bs)
            .map_err(|_| Error::Io(IoStatus::NoMemory))?;
        data.extend_from_slice(payload);
        data.resize(payload.len().div_ceil(bs) * bs, 0);
        let base = slot_offset(slot as usize);
        if !data.is_empty() {
            write(dev, base + HEADER_BLOCK as u64, &data, clock)?;
        }
        flush(dev, clock)?;
        let mut block = alloc::vec![0u8; HEADER_BLOCK];
        Header {
            slot,
            generation,
            length: payload.len() as u32,
            payload_crc: ironbay_crc::crc32c(payload),
        }
        .emit(&mut block);
        write(dev, base, &block, clock)?;
        flush(dev, clock)?;
        self.current = Some((slot, generation));
        self.stale = false;
        Ok(generation)
    }

    /// Erases both headers, so no scan finds the area again. The payloads
    /// stay on the device (see the README on what they reveal).
    pub fn wipe(&mut self, dev: &mut dyn BlockDevice, clock: Clock<'_>) -> Result<(), Error> {
        check(dev.info())?;
        let zero = alloc::vec![0u8; HEADER_BLOCK];
        // The older slot first: until the newer goes, a load still finds it.
        let newest = self.current.map_or(0, |(s, _)| s as usize);
        for slot in [1 - newest, newest] {
            write(dev, slot_offset(slot), &zero, clock)?;
        }
        flush(dev, clock)?;
        *self = Store::default();
        Ok(())
    }
}
