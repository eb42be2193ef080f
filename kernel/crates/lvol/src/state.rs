//! The store's metadata in memory: volumes with their extent maps. The
//! cluster allocation map is not stored; it is the union of the extent maps,
//! rebuilt and checked at every load, so no crash can leak a cluster or hand
//! one to two volumes without the check seeing it.

use crate::format::Change;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use ironbay_bdev::Uuid;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Volume {
    /// Store-local id; never reused within a store.
    pub id: u32,
    pub uuid: Uuid,
    pub name: String,
    pub size_clusters: u64,
    pub thin: bool,
    pub read_only: bool,
    /// Made by a snapshot (stays one when its clones are gone).
    pub snapshot: bool,
    /// The snapshot this volume reads unallocated clusters from.
    pub parent: Option<u32>,
    /// Volume cluster -> store cluster.
    pub map: crate::extents::Extents,
}

/// A persistent dirty bitmap of a volume: its description here, its bits
/// in store clusters of its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredBitmap {
    pub volume: u32,
    pub name: String,
    pub granularity: u32,
    /// Bytes of the volume the bits cover.
    pub size: u64,
    pub enabled: bool,
    /// Set while the bitmap is loaded and recording; the bits in its
    /// clusters are current only while this is clear.
    pub in_use: bool,
    /// CRC32C of the bits as stored.
    pub crc: u32,
    pub clusters: Vec<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct State {
    pub name: String,
    pub total_clusters: u64,
    pub next_id: u32,
    pub clean: bool,
    pub volumes: BTreeMap<u32, Volume>,
    pub bitmaps: Vec<StoredBitmap>,
}

impl State {
    pub fn new(name: &str, total_clusters: u64) -> Self {
        State {
            name: name.into(),
            total_clusters,
            next_id: 1,
            clean: false,
            volumes: BTreeMap::new(),
            bitmaps: Vec::new(),
        }
    }

    pub fn bitmap(&self, volume: u32, name: &str) -> Option<&StoredBitmap> {
        self.bitmaps
            .iter()
            .find(|b| b.volume == volume && b.name == name)
    }

    /// Applies a journal record's changes; `Err` if they do not fit the
    /// state (a record that does not fit is damage, not something to
    /// guess around).
    pub fn apply(&mut self, changes: Vec<Change>) -> Result<(), String> {
        for c in changes {
            match c {
                Change::Put(v) => {
                    self.next_id = self.next_id.max(v.id.saturating_add(1));
                    self.volumes.insert(v.id, v);
                }
                Change::Drop(id) => {
                    self.volumes
                        .remove(&id)
                        .ok_or_else(|| format!("record drops unknown volume {id}"))?;
                    // A volume's bitmaps go with it.
                    self.bitmaps.retain(|b| b.volume != id);
                }
                Change::PutBitmap(b) => {
                    if !self.volumes.contains_key(&b.volume) {
                        return Err(format!("bitmap {} of unknown volume {}", b.name, b.volume));
                    }
                    match self
                        .bitmaps
                        .iter_mut()
                        .find(|x| x.volume == b.volume && x.name == b.name)
                    {
                        Some(x) => *x = b,
                        None => self.bitmaps.push(b),
                    }
                }
                Change::DropBitmap(id, name) => {
                    let before = self.bitmaps.len();
                    self.bitmaps.retain(|b| !(b.volume == id && b.name == name));
                    if self.bitmaps.len() == before {
                        return Err(format!("record drops unknown bitmap {name}"));
                    }
                }
                Change::Rename(n) => self.name = n,
                Change::Map(id, m) => {
                    let v = self
                        .volumes
                        .get_mut(&id)
                        .ok_or_else(|| format!("record maps into unknown volume {id}"))?;
                    for (i, c) in m {
                        v.map.insert(i, c);
                    }
                }
                Change::Unmap(id, idx) => {
                    let v = self
                        .volumes
                        .get_mut(&id)
                        .ok_or_else(|| format!("record unmaps unknown volume {id}"))?;
                    for i in idx {
                        v.map.remove(&i);
                    }
                }
                Change::Grow(n) => self.total_clusters = n,
                Change::Clean(c) => self.clean = c,
            }
        }
        Ok(())
    }

    pub fn by_name(&self, name: &str) -> Option<&Volume> {
        self.volumes.values().find(|v| v.name == name)
    }

    pub fn children(&self, id: u32) -> impl Iterator<Item = &Volume> {
        self.volumes.values().filter(move |v| v.parent == Some(id))
    }

    /// The store cluster holding volume cluster `idx` of `id`, looking
    /// through parents.
    /// How far down the chain cluster `idx` of volume `id` is mapped: 1 in
    /// the volume itself, 2 in its parent, ...; 0 unallocated.
    pub fn depth(&self, id: u32, idx: u64) -> u32 {
        let mut cur = self.volumes.get(&id);
        for d in 1..=self.volumes.len() as u32 + 1 {
            let Some(v) = cur else { return 0 };
            if idx >= v.size_clusters {
                return 0;
            }
            if v.map.get(idx).is_some() {
                return d;
            }
            let Some(p) = v.parent else { return 0 };
            cur = self.volumes.get(&p);
        }
        0
    }

    pub fn resolve(&self, id: u32, idx: u64) -> Option<u64> {
        let mut cur = self.volumes.get(&id);
        // The chain is acyclic (checked at load); the bound is belt and braces.
        for _ in 0..=self.volumes.len() {
            let v = cur?;
            if idx >= v.size_clusters {
                return None;
            }
            if let Some(c) = v.map.get(idx) {
                return Some(c);
            }
            cur = self.volumes.get(&v.parent?);
        }
        None
    }

    /// The allocation map, after checking that every mapped cluster is in
    /// range and owned once, mappings lie within their volume, parents
    /// exist and chains end. This is the load-time check: it refuses damage
    /// rather than guess.
    pub fn check(&self) -> Result<Vec<u64>, String> {
        let mut used = vec![0u64; self.total_clusters.div_ceil(64) as usize];
        let mut names = BTreeMap::new();
        for v in self.volumes.values() {
            if names.insert(v.name.as_str(), v.id).is_some() {
                return Err(format!("two volumes named {}", v.name));
            }
            if v.id >= self.next_id {
                return Err(format!("volume id {} not below next id", v.id));
            }
            if let Some(p) = v.parent {
                if !self.volumes.contains_key(&p) {
                    return Err(format!("volume {} has a missing parent {p}", v.name));
                }
                let mut hops = 0;
                let mut cur = Some(p);
                while let Some(c) = cur {
                    hops += 1;
                    if c == v.id || hops > self.volumes.len() {
                        return Err(format!("volume {} has a parent cycle", v.name));
                    }
                    cur = self.volumes.get(&c).and_then(|x| x.parent);
                }
            }
            for (i, c) in v.map.iter() {
                if i >= v.size_clusters {
                    return Err(format!("volume {} maps cluster {i} past its end", v.name));
                }
                if c >= self.total_clusters {
                    return Err(format!(
                        "volume {} maps store cluster {c} out of range",
                        v.name
                    ));
                }
                let (w, b) = ((c / 64) as usize, c % 64);
                if used[w] & (1 << b) != 0 {
                    return Err(format!("store cluster {c} owned twice"));
                }
                used[w] |= 1 << b;
            }
        }
        let mut seen = BTreeMap::new();
        for bm in &self.bitmaps {
            if !self.volumes.contains_key(&bm.volume) {
                return Err(format!("bitmap {} of a missing volume", bm.name));
            }
            if seen.insert((bm.volume, bm.name.as_str()), ()).is_some() {
                return Err(format!("two bitmaps named {}", bm.name));
            }
            for &c in &bm.clusters {
                if c >= self.total_clusters {
                    return Err(format!(
                        "bitmap {} holds store cluster {c} out of range",
                        bm.name
                    ));
                }
                let (w, b) = ((c / 64) as usize, c % 64);
                if used[w] & (1 << b) != 0 {
                    return Err(format!("store cluster {c} owned twice"));
                }
                used[w] |= 1 << b;
            }
        }
        Ok(used)
    }
}

/// Free/used clusters of a store.
#[derive(Clone, Debug)]
pub struct Clusters {
    bits: Vec<u64>,
    total: u64,
    used: u64,
    hint: u64,
}

impl Clusters {
    pub fn new(bits: Vec<u64>, total: u64) -> Self {
        let used = bits.iter().map(|w| w.count_ones() as u64).sum();
        Clusters {
            bits,
            total,
            used,
            hint: 0,
        }
    }

    pub fn free(&self) -> u64 {
        self.total - self.used
    }

    pub fn is_used(&self, c: u64) -> bool {
        self.bits[(c / 64) as usize] & (1 << (c % 64)) != 0
    }

    pub fn grow(&mut self, total: u64) {
        self.bits.resize(total.div_ceil(64) as usize, 0);
        self.total = total;
    }

    fn set(&mut self, c: u64, on: bool) {
        let (w, b) = ((c / 64) as usize, c % 64);
        if on {
            self.bits[w] |= 1 << b;
            self.used += 1;
        } else {
            self.bits[w] &= !(1 << b);
            self.used -= 1;
        }
    }

    /// `n` free clusters, contiguous where possible, marked used.
    pub fn take(&mut self, n: u64) -> Option<Vec<u64>> {
        if n > self.free() {
            return None;
        }
        let mut out = Vec::new();
        // A contiguous run first, for thick volumes' sequential layout.
        let mut run_start = 0;
        let mut run = 0;
        let scan = if n > 1 { self.total } else { 0 };
        for c in 0..scan {
            if self.is_used(c) {
                run = 0;
                continue;
            }
            if run == 0 {
                run_start = c;
            }
            run += 1;
            if run == n {
                out.extend(run_start..run_start + n);
                break;
            }
        }
        if out.is_empty() {
            let start = self.hint;
            for k in 0..self.total {
                let c = (start + k) % self.total;
                if !self.is_used(c) {
                    out.push(c);
                    if out.len() as u64 == n {
                        break;
                    }
                }
            }
        }
        for &c in &out {
            self.set(c, true);
        }
        if let Some(&last) = out.last() {
            self.hint = (last + 1) % self.total.max(1);
        }
        Some(out)
    }

    pub fn release(&mut self, c: u64) {
        if c < self.total && self.is_used(c) {
            self.set(c, false);
        }
    }
}
