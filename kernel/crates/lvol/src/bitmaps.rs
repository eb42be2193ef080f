//! Persistent dirty bitmaps of volumes, kept the way QEMU keeps them in
//! qcow2: a description in the metadata, the bits in clusters of their
//! own, and an in-use flag. Loading a store sets the flag on every bitmap
//! (the bits then live in memory); only an orderly close writes the bits
//! back and clears it. A bitmap found still in use was not saved after its
//! last change, so it is reported lost rather than trusted.

use crate::Error;
use crate::format::{self, Change, MAX_BITMAP_NAME, MAX_BITMAPS};
use crate::state::StoredBitmap;
use crate::store::{Core, Store};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use ironbay_bdev::dirty::{self, DirtyBitmap, MIN_GRANULARITY};
use ironbay_bdev::{IoStatus, sync};

/// What a store holds of a persistent bitmap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BitmapInfo {
    pub volume: u32,
    pub name: String,
    pub granularity: u32,
    pub size: u64,
    pub enabled: bool,
    /// Store clusters its bits take.
    pub clusters: u64,
}

fn bits_bytes(granularity: u32, size: u64) -> u64 {
    DirtyBitmap::heap_bytes(granularity, size)
}

fn encode_words(words: &[u64]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

impl Store {
    pub fn bitmaps(&self) -> Vec<BitmapInfo> {
        let c = self.core().borrow();
        c.meta
            .state
            .bitmaps
            .iter()
            .map(|b| BitmapInfo {
                volume: b.volume,
                name: b.name.clone(),
                granularity: b.granularity,
                size: b.size,
                enabled: b.enabled,
                clusters: b.clusters.len() as u64,
            })
            .collect()
    }

    /// The bitmaps this open found, as (volume, bitmap): those saved by an
    /// orderly close with their bits, the rest lost (inconsistent). Yields
    /// them once; later calls return nothing.
    pub fn load_bitmaps(&self) -> Vec<(u32, DirtyBitmap)> {
        let mut c = self.core().borrow_mut();
        let found = core::mem::take(&mut c.meta.found_bitmaps);
        // What the appliance lets all bitmaps take: a damaged or hostile
        // description cannot make a load take more.
        let mut budget = dirty::MAX_TOTAL_BYTES;
        found
            .into_iter()
            .map(|b| {
                let len = bits_bytes(b.granularity, b.size);
                let bm = if b.in_use || len > budget {
                    None
                } else {
                    c.read_bits(&b)
                };
                if bm.is_some() {
                    budget -= len;
                }
                let bm = bm.unwrap_or_else(|| DirtyBitmap::lost(&b.name, b.granularity, b.size));
                (b.volume, bm)
            })
            .collect()
    }

    /// Records a new persistent bitmap of `volume` and reserves the
    /// clusters its bits need, so saving it at close cannot run out of
    /// space. It starts in use: until a close saves it, a reload finds it
    /// lost.
    pub fn add_bitmap(
        &self,
        volume: u32,
        name: &str,
        granularity: u32,
        size: u64,
        enabled: bool,
    ) -> Result<(), Error> {
        let mut c = self.core().borrow_mut();
        if !c.meta.state.volumes.contains_key(&volume) {
            return Err(Error::NotFound);
        }
        if name.is_empty() || name.len() > MAX_BITMAP_NAME {
            return Err(Error::Invalid(format!(
                "a bitmap name takes 1 to {MAX_BITMAP_NAME} bytes"
            )));
        }
        if !granularity.is_power_of_two() || granularity < MIN_GRANULARITY {
            return Err(Error::Invalid(format!(
                "granularity {granularity} is not a power of two of at least {MIN_GRANULARITY}"
            )));
        }
        if c.meta.state.bitmap(volume, name).is_some() {
            return Err(Error::Exists(format!("bitmap {name} exists")));
        }
        if c.meta.state.bitmaps.len() >= MAX_BITMAPS {
            return Err(Error::Invalid(format!(
                "a store holds at most {MAX_BITMAPS} persistent bitmaps"
            )));
        }
        let need = bits_bytes(granularity, size).div_ceil(c.meta.layout.cluster_size);
        let clusters = c.meta.clusters.take(need).ok_or(Error::NoSpace)?;
        let b = StoredBitmap {
            volume,
            name: name.into(),
            granularity,
            size,
            enabled,
            in_use: true,
            crc: 0,
            clusters: clusters.clone(),
        };
        // Stores made before bitmaps existed sized their checkpoint slots
        // without them: the state must still fit one.
        let mut next = c.meta.state.clone();
        next.bitmaps.push(b.clone());
        let fits = (format::encode_checkpoint(&next, 0, c.meta.layout.unit() as usize).len()
            as u64)
            <= c.meta.layout.slot_bytes;
        let r = if fits {
            c.commit(alloc::vec![Change::PutBitmap(b)])
        } else {
            Err(Error::MetadataFull)
        };
        if r.is_err() {
            for cl in clusters {
                c.meta.clusters.release(cl);
            }
        }
        r
    }

    pub fn remove_bitmap(&self, volume: u32, name: &str) -> Result<(), Error> {
        let mut c = self.core().borrow_mut();
        let b = c
            .meta
            .state
            .bitmap(volume, name)
            .cloned()
            .ok_or(Error::NotFound)?;
        c.commit(alloc::vec![Change::DropBitmap(volume, name.into())])?;
        for cl in b.clusters {
            c.meta.clusters.release(cl);
        }
        Ok(())
    }

    /// Orderly close: writes the bits of `bitmaps` (volume, bitmap) into
    /// their clusters, then one record clears their in-use flags and marks
    /// the store clean. Bitmaps not given, lost ones, and any whose bits
    /// cannot be written stay in use, so a reload reports them lost;
    /// their names come back.
    pub fn close_saving(&self, bitmaps: &[(u32, &DirtyBitmap)]) -> Result<Vec<String>, Error> {
        let mut c = self.core().borrow_mut();
        c.drain()?;
        let cs = c.meta.layout.cluster_size;
        let mut failed = Vec::new();
        let mut changes = Vec::new();
        let mut taken = Vec::new();
        let mut spare = Vec::new();
        for &(volume, bm) in bitmaps {
            let Some(stored) = c.meta.state.bitmap(volume, &bm.name).cloned() else {
                failed.push(bm.name.clone());
                continue;
            };
            if bm.inconsistent {
                continue;
            }
            let data = encode_words(bm.words());
            let need = (data.len() as u64).div_ceil(cs) as usize;
            let mut clusters = stored.clusters.clone();
            let mut extra = Vec::new();
            if clusters.len() < need {
                match c.meta.clusters.take((need - clusters.len()) as u64) {
                    Some(x) => extra = x,
                    None => {
                        failed.push(bm.name.clone());
                        continue;
                    }
                }
                clusters.extend_from_slice(&extra);
            }
            let surplus = clusters.split_off(need);
            if c.write_bits(&clusters, &data).is_err() {
                for cl in extra {
                    c.meta.clusters.release(cl);
                }
                failed.push(bm.name.clone());
                continue;
            }
            taken.extend(extra);
            spare.extend(surplus);
            changes.push(Change::PutBitmap(StoredBitmap {
                volume,
                name: bm.name.clone(),
                granularity: bm.granularity,
                size: bm.size(),
                enabled: bm.enabled,
                in_use: false,
                crc: ironbay_crc::crc32c(&data),
                clusters,
            }));
        }
        changes.push(Change::Clean(true));
        // The bits are durable before the record that vouches for them.
        let r = c.with_base(sync::flush).and_then(|_| c.commit(changes));
        match r {
            Ok(()) => {
                for cl in spare {
                    c.meta.clusters.release(cl);
                }
                Ok(failed)
            }
            Err(e) => {
                for cl in taken {
                    c.meta.clusters.release(cl);
                }
                Err(e)
            }
        }
    }
}

impl Core {
    /// The saved bits of `b`, if they read back whole and match their
    /// checksum.
    fn read_bits(&mut self, b: &StoredBitmap) -> Option<DirtyBitmap> {
        let len = bits_bytes(b.granularity, b.size);
        let cs = self.meta.layout.cluster_size;
        let bs = self.meta.layout.block_size as u64;
        if len.div_ceil(cs) > b.clusters.len() as u64 {
            return None;
        }
        let mut data = Vec::new();
        data.try_reserve_exact(len.next_multiple_of(bs) as usize)
            .ok()?;
        for (k, &cl) in b.clusters.iter().enumerate() {
            let done = k as u64 * cs;
            if done >= len {
                break;
            }
            let part = (len - done).min(cs).next_multiple_of(bs) as usize;
            let at = self.base_lba(cl, 0);
            let start = data.len();
            data.resize(start + part, 0);
            self.with_base(|d, t, o| sync::read_into(d, at, &mut data[start..], t, o))
                .ok()?;
        }
        data.truncate(len as usize);
        if ironbay_crc::crc32c(&data) != b.crc {
            return None;
        }
        let words = data
            .chunks_exact(8)
            .map(|w| u64::from_le_bytes(w.try_into().unwrap_or([0; 8])))
            .collect();
        let mut bm = DirtyBitmap::from_words(&b.name, b.granularity, b.size, words)?;
        bm.enabled = b.enabled;
        Some(bm)
    }

    fn write_bits(&mut self, clusters: &[u64], data: &[u8]) -> Result<(), Error> {
        let cs = self.meta.layout.cluster_size as usize;
        let bs = self.meta.layout.block_size as usize;
        for (k, &cl) in clusters.iter().enumerate() {
            let part = &data[k * cs..data.len().min((k + 1) * cs)];
            let mut buf = Vec::new();
            buf.try_reserve_exact(part.len().next_multiple_of(bs))
                .map_err(|_| Error::Io(IoStatus::NoMemory))?;
            buf.extend_from_slice(part);
            buf.resize(part.len().next_multiple_of(bs), 0);
            let at = self.base_lba(cl, 0);
            self.with_base(|d, t, o| sync::write(d, at, &buf, t, o))?;
        }
        Ok(())
    }
}
