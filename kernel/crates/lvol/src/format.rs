//! The on-disk format (docs/lvol-format.md): the super block, checkpoints
//! and journal records, each sealed with CRC32C. Decoding is bounded: every
//! length is checked against the bytes present, so a damaged or hostile
//! image is refused, never trusted.

use crate::state::{State, StoredBitmap, Volume};
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use ironbay_bdev::Uuid;

pub const SUPER_MAGIC: &[u8; 16] = b"IRONBAY-LVSTORE\0";
pub const FORMAT_VERSION: u32 = 1;
const CHECKPOINT_MAGIC: u32 = 0x5043_564c; // "LVCP"
const RECORD_MAGIC: u32 = 0x524a_564c; // "LVJR"
/// Metadata is laid out and written in units of this many bytes (or the
/// device block, if larger).
pub const UNIT: u64 = 4096;
/// Volumes per store: bounds the checkpoint size.
pub const MAX_VOLUMES: u64 = 1024;
/// Longest store or volume name, in bytes (SPDK's limit).
pub const MAX_NAME: usize = 63;
/// Persistent dirty bitmaps per store, and the longest bitmap name
/// (QEMU's): together they bound the checkpoint's bitmap part.
pub const MAX_BITMAPS: usize = 256;
pub const MAX_BITMAP_NAME: usize = 1023;
const NO_PARENT: u32 = u32::MAX;

/// Where everything lives, fixed when the store is created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub uuid: Uuid,
    pub block_size: u32,
    pub cluster_size: u64,
    /// Byte offsets and sizes on the base device.
    pub slots: [u64; 2],
    pub slot_bytes: u64,
    pub journal: u64,
    pub journal_bytes: u64,
    /// Byte offset of cluster 0.
    pub data: u64,
    /// Clusters the metadata area was sized for (growth limit).
    pub max_clusters: u64,
}

impl Layout {
    /// Plans a store on a device of `dev_bytes`; `None` if it cannot hold
    /// the metadata and one data cluster.
    pub fn plan(uuid: Uuid, block_size: u32, cluster_size: u64, dev_bytes: u64) -> Option<Self> {
        let unit = UNIT.max(block_size as u64);
        let round = |x: u64, to: u64| x.div_ceil(to) * to;
        let clusters_guess = dev_bytes / cluster_size;
        let max_clusters = (clusters_guess.saturating_mul(4)).max(16384);
        let slot_bytes = round(
            checkpoint_bound(MAX_VOLUMES, max_clusters + MAX_VOLUMES),
            unit,
        );
        let journal_bytes = round(1 << 20, unit);
        let slots = [unit, unit + slot_bytes];
        let journal = unit + 2 * slot_bytes;
        let data = round(journal + journal_bytes, cluster_size);
        if dev_bytes < data + cluster_size {
            return None;
        }
        Some(Layout {
            uuid,
            block_size,
            cluster_size,
            slots,
            slot_bytes,
            journal,
            journal_bytes,
            data,
            max_clusters,
        })
    }

    pub fn unit(&self) -> u64 {
        UNIT.max(self.block_size as u64)
    }

    /// Data clusters a device of `dev_bytes` holds.
    pub fn clusters_for(&self, dev_bytes: u64) -> u64 {
        (dev_bytes.saturating_sub(self.data) / self.cluster_size).min(self.max_clusters)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.bytes(SUPER_MAGIC);
        w.u32(FORMAT_VERSION);
        w.bytes(&self.uuid.0);
        w.u32(self.block_size);
        w.u64(self.cluster_size);
        w.u64(self.slots[0]);
        w.u64(self.slots[1]);
        w.u64(self.slot_bytes);
        w.u64(self.journal);
        w.u64(self.journal_bytes);
        w.u64(self.data);
        w.u64(self.max_clusters);
        seal(w.0, self.unit() as usize)
    }

    /// Reads a super block; `None` if the bytes are not one (or damaged).
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.get(..16)? != SUPER_MAGIC {
            return None;
        }
        let body = unseal(b)?;
        let mut r = Reader(body, 0);
        r.take(16)?;
        if r.u32()? != FORMAT_VERSION {
            return None;
        }
        let l = Layout {
            uuid: Uuid(r.take(16)?.try_into().ok()?),
            block_size: r.u32()?,
            cluster_size: r.u64()?,
            slots: [r.u64()?, r.u64()?],
            slot_bytes: r.u64()?,
            journal: r.u64()?,
            journal_bytes: r.u64()?,
            data: r.u64()?,
            max_clusters: r.u64()?,
        };
        let sane = l.block_size.is_power_of_two()
            && l.block_size >= 512
            && l.cluster_size.is_power_of_two()
            && l.cluster_size >= l.unit()
            && l.slot_bytes > 0
            && l.journal_bytes >= l.unit()
            && l.data >= l.journal.checked_add(l.journal_bytes)?
            && l.journal >= l.slots[1].checked_add(l.slot_bytes)?
            && l.slots[1] >= l.slots[0].checked_add(l.slot_bytes)?
            && l.data.is_multiple_of(l.cluster_size);
        sane.then_some(l)
    }
}

/// Whether a block starts like a super block (the tasting test).
pub fn looks_like_store(b: &[u8]) -> bool {
    b.get(..16) == Some(&SUPER_MAGIC[..])
}

/// Largest checkpoint for `volumes` volumes with `runs` extent runs.
fn checkpoint_bound(volumes: u64, runs: u64) -> u64 {
    64 + volumes * (48 + MAX_NAME as u64)
        + runs * 20
        + MAX_BITMAPS as u64 * (32 + MAX_BITMAP_NAME as u64)
}

/// Appends the length and CRC32C of `body` and pads to `unit`.
fn seal(mut body: Vec<u8>, unit: usize) -> Vec<u8> {
    let len = body.len() as u32;
    let crc = ironbay_crc::crc32c(&body);
    body.extend_from_slice(&len.to_le_bytes());
    body.extend_from_slice(&crc.to_le_bytes());
    let padded = body.len().div_ceil(unit) * unit;
    body.resize(padded, 0);
    body
}

/// The body of a sealed block run, if its trailer checks out. The trailer
/// sits right after the body; the body length comes from a field the
/// caller's framing knows (here: we search the fixed header for it).
fn unseal(b: &[u8]) -> Option<&[u8]> {
    // Super blocks have a fixed body size.
    const SUPER_BODY: usize = 16 + 4 + 16 + 4 + 8 * 8;
    check(b, SUPER_BODY)
}

fn check(b: &[u8], body_len: usize) -> Option<&[u8]> {
    let body = b.get(..body_len)?;
    let len = u32::from_le_bytes(b.get(body_len..body_len + 4)?.try_into().ok()?);
    let crc = u32::from_le_bytes(b.get(body_len + 4..body_len + 8)?.try_into().ok()?);
    (len as usize == body_len && crc == ironbay_crc::crc32c(body)).then_some(body)
}

/// A frame: magic, generation/epoch, sequence, payload length, then the
/// payload and a CRC32C over all of it.
fn frame(magic: u32, epoch: u64, seq: u64, payload: &[u8], unit: usize) -> Vec<u8> {
    let mut w = Writer::default();
    w.u32(magic);
    w.u64(epoch);
    w.u64(seq);
    w.u32(payload.len() as u32);
    w.bytes(payload);
    seal(w.0, unit)
}

/// Bytes of the fixed frame header before the payload.
pub const FRAME_HEADER: usize = 24;

/// The total length (padded) a frame with `payload_len` bytes takes.
pub fn frame_len(payload_len: usize, unit: usize) -> usize {
    (FRAME_HEADER + payload_len + 8).div_ceil(unit) * unit
}

/// Reads the header of a frame: (epoch, seq, payload length).
pub fn frame_header(b: &[u8], magic: u32) -> Option<(u64, u64, usize)> {
    let mut r = Reader(b, 0);
    if r.u32()? != magic {
        return None;
    }
    Some((r.u64()?, r.u64()?, r.u32()? as usize))
}

/// The payload of a whole frame whose CRC checks out.
fn unframe(b: &[u8], magic: u32) -> Option<(u64, u64, &[u8])> {
    let (epoch, seq, len) = frame_header(b, magic)?;
    if len > b.len() {
        return None;
    }
    let body = check(b, FRAME_HEADER.checked_add(len)?)?;
    Some((epoch, seq, &body[FRAME_HEADER..]))
}

pub fn record_magic() -> u32 {
    RECORD_MAGIC
}

/// A checkpoint: the whole state at generation `generation`.
pub fn encode_checkpoint(state: &State, generation: u64, unit: usize) -> Vec<u8> {
    let mut w = Writer::default();
    w.str(&state.name);
    w.u64(state.total_clusters);
    w.u32(state.next_id);
    w.u8(state.clean as u8);
    w.u32(state.volumes.len() as u32);
    for v in state.volumes.values() {
        put_volume(&mut w, v);
    }
    w.u32(state.bitmaps.len() as u32);
    for b in &state.bitmaps {
        put_bitmap(&mut w, b);
    }
    frame(CHECKPOINT_MAGIC, generation, 0, &w.0, unit)
}

/// `max_entries`: the most extent-map entries the store can hold.
pub fn decode_checkpoint(b: &[u8], max_entries: u64) -> Option<(u64, State)> {
    let (generation, _, body) = unframe(b, CHECKPOINT_MAGIC)?;
    let mut r = Reader(body, max_entries);
    let name = r.str()?;
    let total_clusters = r.u64()?;
    let next_id = r.u32()?;
    let clean = r.u8()? != 0;
    let n = r.u32()?;
    if n as u64 > MAX_VOLUMES {
        return None;
    }
    let mut volumes = BTreeMap::new();
    for _ in 0..n {
        let v = get_volume(&mut r)?;
        if volumes.insert(v.id, v).is_some() {
            return None;
        }
    }
    // Checkpoints written before bitmaps existed end here.
    let mut bitmaps = Vec::new();
    if !r.0.is_empty() {
        let n = r.u32()? as usize;
        if n > MAX_BITMAPS {
            return None;
        }
        for _ in 0..n {
            bitmaps.push(get_bitmap(&mut r)?);
        }
    }
    Some((
        generation,
        State {
            name,
            total_clusters,
            next_id,
            clean,
            volumes,
            bitmaps,
        },
    ))
}

/// One change in a journal record; a record applies all of its changes or
/// none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A volume as it now is, extent map included.
    Put(Volume),
    Drop(u32),
    Rename(String),
    /// Clusters newly mapped into a volume: (volume cluster, store cluster).
    Map(u32, Vec<(u64, u64)>),
    /// Volume clusters released.
    Unmap(u32, Vec<u64>),
    Grow(u64),
    /// Whether the store was closed cleanly.
    Clean(bool),
    /// A dirty bitmap as it now is.
    PutBitmap(StoredBitmap),
    /// A volume's bitmap removed: (volume, name).
    DropBitmap(u32, String),
}

pub fn encode_record(changes: &[Change], epoch: u64, seq: u64, unit: usize) -> Vec<u8> {
    let mut w = Writer::default();
    w.u32(changes.len() as u32);
    for c in changes {
        match c {
            Change::Put(v) => {
                w.u8(1);
                put_volume(&mut w, v);
            }
            Change::Drop(id) => {
                w.u8(2);
                w.u32(*id);
            }
            Change::Rename(n) => {
                w.u8(3);
                w.str(n);
            }
            Change::Map(id, m) => {
                w.u8(4);
                w.u32(*id);
                w.u32(m.len() as u32);
                for (i, c) in m {
                    w.u64(*i);
                    w.u64(*c);
                }
            }
            Change::Unmap(id, idx) => {
                w.u8(5);
                w.u32(*id);
                w.u32(idx.len() as u32);
                for i in idx {
                    w.u64(*i);
                }
            }
            Change::Grow(n) => {
                w.u8(6);
                w.u64(*n);
            }
            Change::Clean(c) => {
                w.u8(7);
                w.u8(*c as u8);
            }
            Change::PutBitmap(b) => {
                w.u8(8);
                put_bitmap(&mut w, b);
            }
            Change::DropBitmap(id, name) => {
                w.u8(9);
                w.u32(*id);
                w.long_str(name);
            }
        }
    }
    frame(RECORD_MAGIC, epoch, seq, &w.0, unit)
}

pub fn decode_record(b: &[u8], max_entries: u64) -> Option<(u64, u64, Vec<Change>)> {
    let (epoch, seq, body) = unframe(b, RECORD_MAGIC)?;
    let mut r = Reader(body, max_entries);
    let n = r.u32()?;
    let mut out = Vec::new();
    for _ in 0..n {
        let c = match r.u8()? {
            1 => Change::Put(get_volume(&mut r)?),
            2 => Change::Drop(r.u32()?),
            3 => Change::Rename(r.str()?),
            4 => {
                let id = r.u32()?;
                let k = r.u32()? as usize;
                if k > r.0.len() / 16 {
                    return None;
                }
                let mut m = Vec::new();
                for _ in 0..k {
                    m.push((r.u64()?, r.u64()?));
                }
                Change::Map(id, m)
            }
            5 => {
                let id = r.u32()?;
                let k = r.u32()? as usize;
                if k > r.0.len() / 8 {
                    return None;
                }
                let mut m = Vec::new();
                for _ in 0..k {
                    m.push(r.u64()?);
                }
                Change::Unmap(id, m)
            }
            6 => Change::Grow(r.u64()?),
            7 => Change::Clean(r.u8()? != 0),
            8 => Change::PutBitmap(get_bitmap(&mut r)?),
            9 => Change::DropBitmap(r.u32()?, r.long_str()?),
            _ => return None,
        };
        out.push(c);
    }
    Some((epoch, seq, out))
}

fn put_volume(w: &mut Writer, v: &Volume) {
    w.u32(v.id);
    w.bytes(&v.uuid.0);
    w.str(&v.name);
    w.u64(v.size_clusters);
    w.u8(v.thin as u8 | (v.read_only as u8) << 1 | (v.snapshot as u8) << 2);
    w.u32(v.parent.unwrap_or(NO_PARENT));
    // Extent map as runs: (volume cluster, store cluster, length).
    // Runs longer than a u32 are written in pieces.
    let mut runs = Vec::new();
    for (i, c, n) in v.map.runs() {
        let mut k = 0;
        while k < n {
            let part = (n - k).min(u32::MAX as u64);
            runs.push((i + k, c + k, part as u32));
            k += part;
        }
    }
    w.u32(runs.len() as u32);
    for (i, c, n) in runs {
        w.u64(i);
        w.u64(c);
        w.u32(n);
    }
}

fn get_volume(r: &mut Reader<'_>) -> Option<Volume> {
    let id = r.u32()?;
    let uuid = Uuid(r.take(16)?.try_into().ok()?);
    let name = r.str()?;
    let size_clusters = r.u64()?;
    let flags = r.u8()?;
    let parent = match r.u32()? {
        NO_PARENT => None,
        p => Some(p),
    };
    let n = r.u32()?;
    let mut map = crate::extents::Extents::default();
    for _ in 0..n {
        let (i, c, len) = (r.u64()?, r.u64()?, r.u32()? as u64);
        r.1 = r.1.checked_sub(len)?;
        i.checked_add(len)?;
        c.checked_add(len)?;
        // Runs must not overlap: damage, not something to merge.
        if (0..len).any(|k| map.contains_key(&(i + k))) {
            return None;
        }
        map.insert_run(i, c, len);
    }
    Some(Volume {
        id,
        uuid,
        name,
        size_clusters,
        thin: flags & 1 != 0,
        read_only: flags & 2 != 0,
        snapshot: flags & 4 != 0,
        parent,
        map,
    })
}

fn put_bitmap(w: &mut Writer, b: &StoredBitmap) {
    w.u32(b.volume);
    w.long_str(&b.name);
    w.u32(b.granularity);
    w.u64(b.size);
    w.u8(b.enabled as u8 | (b.in_use as u8) << 1);
    w.u32(b.crc);
    w.u32(b.clusters.len() as u32);
    for &c in &b.clusters {
        w.u64(c);
    }
}

fn get_bitmap(r: &mut Reader<'_>) -> Option<StoredBitmap> {
    let volume = r.u32()?;
    let name = r.long_str()?;
    let granularity = r.u32()?;
    let size = r.u64()?;
    let flags = r.u8()?;
    let crc = r.u32()?;
    let n = r.u32()? as u64;
    // Each cluster is an extent entry of the store's budget.
    r.1 = r.1.checked_sub(n)?;
    let g = ironbay_bdev::dirty::MIN_GRANULARITY..=ironbay_bdev::dirty::MAX_GRANULARITY;
    if n > r.0.len() as u64 / 8 || !granularity.is_power_of_two() || !g.contains(&granularity) {
        return None;
    }
    let mut clusters = Vec::new();
    for _ in 0..n {
        clusters.push(r.u64()?);
    }
    Some(StoredBitmap {
        volume,
        name,
        granularity,
        size,
        enabled: flags & 1 != 0,
        in_use: flags & 2 != 0,
        crc,
        clusters,
    })
}

#[derive(Default)]
struct Writer(Vec<u8>);

impl Writer {
    fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.bytes(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }
    fn str(&mut self, s: &str) {
        let b = &s.as_bytes()[..s.len().min(MAX_NAME)];
        self.u8(b.len() as u8);
        self.bytes(b);
    }
    /// A bitmap name (callers check the length against
    /// [`MAX_BITMAP_NAME`]).
    fn long_str(&mut self, s: &str) {
        let b = &s.as_bytes()[..s.len().min(MAX_BITMAP_NAME)];
        self.bytes(&(b.len() as u16).to_le_bytes());
        self.bytes(b);
    }
}

/// Bytes left, and extent-map entries a decode may still build (a damaged
/// run length must not make tasting allocate without bound).
struct Reader<'a>(&'a [u8], u64);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn str(&mut self) -> Option<String> {
        let n = self.u8()? as usize;
        if n > MAX_NAME {
            return None;
        }
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
    fn long_str(&mut self) -> Option<String> {
        let n = u16::from_le_bytes(self.take(2)?.try_into().ok()?) as usize;
        if n == 0 || n > MAX_BITMAP_NAME {
            return None;
        }
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
}
