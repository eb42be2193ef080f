//! Logical volume stores and volumes in the object model: the operations
//! behind SPDK's `bdev_lvol_*` methods. Volumes are bdevs named by UUID
//! with the alias `lvs_name/lvol_name`; a store's base bdev is claimed.

use crate::{Error, Model, Result};
use alloc::boxed::Box;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use ironbay_bdev::dirty::{self, DirtyBitmap};
use ironbay_bdev::{BdevId, Registry, Rng, Uuid};
use ironbay_lvol::{Clear, ClockFn, Store, StoreInfo, VolumeInfo};
use ironbay_nbd::Export;

pub use ironbay_lvol::DEFAULT_CLUSTER_SIZE;

/// A loaded store and the bdev under it.
pub struct Loaded {
    pub store: Store,
    pub base: BdevId,
}

/// Every volume store the appliance has loaded.
pub struct Lvols {
    pub stores: Vec<Loaded>,
    clock: ClockFn,
    rng: Rng,
}

/// What a store is named by in requests: its UUID or its name.
#[derive(Clone, Copy, Debug)]
pub enum StoreRef<'a> {
    Uuid(&'a str),
    Name(&'a str),
}

impl Lvols {
    /// `seed` feeds the UUIDs of new stores and volumes; give it something
    /// that differs between boots (a timestamp counter).
    pub fn new(clock: ClockFn, seed: u64) -> Self {
        Lvols {
            stores: Vec::new(),
            clock,
            rng: Rng::new(seed ^ 0x9e37_79b9_7f4a_7c15),
        }
    }

    /// The clock metadata waits run on.
    pub fn clock(&self) -> ClockFn {
        self.clock
    }

    /// A random (version 4) UUID.
    pub fn new_uuid(&mut self) -> Uuid {
        let mut u = [0u8; 16];
        u[..8].copy_from_slice(&self.rng.next_u64().to_le_bytes());
        u[8..].copy_from_slice(&self.rng.next_u64().to_le_bytes());
        u[6] = (u[6] & 0x0f) | 0x40;
        u[8] = (u[8] & 0x3f) | 0x80;
        Uuid(u)
    }

    fn index(&self, r: StoreRef<'_>) -> Result<usize> {
        let found = self.stores.iter().position(|l| match r {
            StoreRef::Uuid(u) => Uuid::parse(u) == Some(l.store.info().uuid),
            StoreRef::Name(n) => l.store.info().name == n,
        });
        found.ok_or_else(no_device)
    }

    /// The store and volume behind a volume bdev.
    pub fn volume_of(&self, bdevs: &Registry, id: BdevId) -> Option<(usize, u32)> {
        let name = &bdevs.info(id)?.name;
        self.stores
            .iter()
            .enumerate()
            .find_map(|(i, l)| Some((i, l.store.find(name)?)))
            .filter(|(i, v)| {
                // The bdev name is the volume's UUID.
                self.stores[*i]
                    .store
                    .volume(*v)
                    .is_some_and(|x| x.uuid.to_string() == *name)
            })
    }

    /// Loads every store found on an unclaimed bdev (tasting); returns
    /// what was found, for the console.
    pub fn taste(&mut self, bdevs: &mut Registry) -> Vec<String> {
        let mut found = Vec::new();
        let mut tasted: Vec<BdevId> = Vec::new();
        // Volumes may hold stores themselves: taste until nothing new shows.
        loop {
            let ids: Vec<BdevId> = bdevs.ids().filter(|i| !tasted.contains(i)).collect();
            if ids.is_empty() {
                break;
            }
            tasted.extend(&ids);
            self.taste_these(bdevs, &ids, &mut found);
        }
        // After every volume was tasted: a bdev with bitmaps cannot be
        // claimed, and a volume may hold a store itself.
        for l in &self.stores {
            self.restore_bitmaps(bdevs, &l.store, &mut found);
        }
        found
    }

    /// Hands the persistent bitmaps a store loaded to its volumes' bdevs.
    fn restore_bitmaps(&self, bdevs: &mut Registry, store: &Store, found: &mut Vec<String>) {
        let name = store.info().name;
        let mut lost = 0;
        for (vol, mut bm) in store.load_bitmaps() {
            let Some(id) = store
                .volume(vol)
                .and_then(|v| bdevs.find(&v.uuid.to_string()))
            else {
                continue;
            };
            let held: u64 = bdevs
                .ids()
                .flat_map(|b| bdevs.bitmaps(b))
                .map(DirtyBitmap::bytes)
                .sum();
            let why = if let Some(by) = bdevs.claimed_by(id) {
                // Writes through its owner would go unseen from now on.
                Some(format!("its volume is claimed by {by}"))
            } else if held + bm.bytes() > dirty::MAX_TOTAL_BYTES {
                Some(format!(
                    "bitmaps may take {} MiB in all",
                    dirty::MAX_TOTAL_BYTES >> 20
                ))
            } else {
                None
            };
            if let Some(why) = why {
                found.push(format!(
                    "lvol store {name}: dirty bitmap {} is lost: {why}",
                    bm.name
                ));
                bm = DirtyBitmap::lost(&bm.name, bm.granularity, bm.size());
            }
            // The store's size for it may be older than the volume's.
            let size = bdevs.info(id).map_or(0, |i| i.size_bytes());
            bm.resize(size);
            lost += bm.inconsistent as usize;
            if let Some(list) = bdevs.bitmaps_mut(id) {
                list.push(bm);
            }
        }
        if lost > 0 {
            found.push(format!(
                "lvol store {name}: {lost} persistent dirty bitmaps are inconsistent (not saved \
                 by an orderly shutdown); remove them and take a full backup"
            ));
        }
    }

    fn taste_these(&mut self, bdevs: &mut Registry, ids: &[BdevId], found: &mut Vec<String>) {
        for &id in ids {
            if bdevs.claimed_by(id).is_some() {
                continue;
            }
            let Some(name) = bdevs.info(id).map(|i| i.name.clone()) else {
                continue;
            };
            let Ok(h) = bdevs.claim(id, "lvol store") else {
                continue;
            };
            let is_store = Store::probe(&mut **h.borrow_mut(), self.clock);
            if !is_store {
                let _ = bdevs.release(id, h);
                continue;
            }
            match Store::open(h.clone(), &name, self.clock) {
                Ok(store) => {
                    let info = store.info();
                    let vols = store.volumes();
                    for v in &vols {
                        register(bdevs, &store, &info.name, v);
                    }
                    found.push(format!(
                        "lvol store {} ({}) on {name}: {} volumes, {} of {} clusters free{}",
                        info.name,
                        info.uuid,
                        vols.len(),
                        info.free_clusters,
                        info.total_data_clusters,
                        if store.was_clean() {
                            ""
                        } else {
                            ", not shut down cleanly: checked"
                        }
                    ));
                    self.stores.push(Loaded { store, base: id });
                }
                Err(e) => {
                    // Not loaded, and handed back: the operator decides
                    // whether to make a new store over it.
                    let _ = bdevs.release(id, h);
                    found.push(format!("lvol store on {name} not loaded: {e}"));
                }
            }
        }
    }

    /// Records a clean shutdown on every store, saving the persistent
    /// dirty bitmaps of its volumes; returns what went wrong, for the
    /// console.
    pub fn close_all(&self, bdevs: &Registry) -> Vec<String> {
        let mut problems = Vec::new();
        for l in &self.stores {
            let mut keep = Vec::new();
            for v in l.store.volumes() {
                let Some(id) = bdevs.find(&v.uuid.to_string()) else {
                    continue;
                };
                for b in bdevs.bitmaps(id).iter().filter(|b| b.persistent) {
                    keep.push((v.id, b));
                }
            }
            let name = l.store.info().name;
            match l.store.close_saving(&keep) {
                Ok(failed) => problems.extend(
                    failed
                        .into_iter()
                        .map(|b| format!("lvol store {name}: dirty bitmap {b} could not be saved")),
                ),
                Err(e) => problems.push(format!("lvol store {name}: clean close failed: {e}")),
            }
        }
        problems
    }

    /// The store holding the volume behind bdev `id`, and the volume.
    pub fn store_of(&self, bdevs: &Registry, id: BdevId) -> Option<(&Store, u32)> {
        let (i, v) = self.volume_of(bdevs, id)?;
        Some((&self.stores[i].store, v))
    }
}

/// Registers a volume's bdev with its alias.
fn register(bdevs: &mut Registry, store: &Store, lvs_name: &str, v: &VolumeInfo) -> Option<BdevId> {
    let b = store.bdev(v.id)?;
    let id = bdevs.add(Box::new(b)).ok()?;
    let _ = bdevs.add_alias(id, &format!("{lvs_name}/{}", v.name));
    Some(id)
}

/// An error as SPDK answers it: its code and its `strerror` text, which
/// scripts written against SPDK match on.
fn spdk(code: i64, message: impl Into<String>) -> Error {
    Error {
        kind: crate::ErrorKind::Code(code),
        message: message.into(),
    }
}

const INVALID_PARAMS: i64 = -32602;

fn no_device() -> Error {
    spdk(-19, "No such device")
}

/// Maps a store's error to SPDK's answer; `renaming`: a taken name is an
/// invalid parameter there, not `-EEXIST`.
fn lvol_error_in(e: ironbay_lvol::Error, renaming: bool) -> Error {
    use ironbay_lvol::Error as E;
    match e {
        E::NotFound => no_device(),
        E::Exists(_) if renaming => spdk(INVALID_PARAMS, "File exists"),
        E::Exists(_) => spdk(-17, "File exists"),
        E::Invalid(_) => spdk(INVALID_PARAMS, "Invalid argument"),
        E::NoSpace | E::MetadataFull => spdk(INVALID_PARAMS, "No space left on device"),
        E::Busy(_) => spdk(-32603, "Device or resource busy"),
        E::Damaged(_) | E::Io(_) => spdk(-5, "Input/output error"),
    }
}

fn lvol_error(e: ironbay_lvol::Error) -> Error {
    lvol_error_in(e, false)
}

/// SPDK's check of a store name on create.
fn check_store_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > ironbay_lvol::MAX_NAME {
        return Err(spdk(-22, "Invalid argument"));
    }
    Ok(())
}

/// SPDK's `clear_method` names.
pub fn parse_clear(s: Option<&str>) -> Result<Clear> {
    match s {
        None | Some("unmap") | Some("write_zeroes") => Ok(Clear::Zero),
        Some("none") => Ok(Clear::None),
        Some(o) => Err(Error::params(format!(
            "clear_method must be none, unmap or write_zeroes, not {o}"
        ))),
    }
}

impl Model<'_> {
    fn lvols(&self) -> Result<&Lvols> {
        self.lvol
            .as_deref()
            .ok_or_else(|| Error::state("logical volumes are not available here"))
    }

    fn lvols_mut(&mut self) -> Result<&mut Lvols> {
        self.lvol
            .as_deref_mut()
            .ok_or_else(|| Error::state("logical volumes are not available here"))
    }

    /// Creates a store on `bdev_name`; returns its UUID.
    pub fn lvs_create(
        &mut self,
        bdev_name: &str,
        lvs_name: &str,
        cluster_size: Option<u64>,
        clear: Clear,
    ) -> Result<String> {
        let id = self.bdevs.find(bdev_name).ok_or_else(no_device)?;
        check_store_name(lvs_name)?;
        let lv = self.lvols()?;
        if lv.stores.iter().any(|l| l.store.info().name == lvs_name) {
            return Err(spdk(-17, "File exists"));
        }
        if let Some(by) = self.bdevs.claimed_by(id) {
            return Err(Error::state(format!(
                "bdev {bdev_name} is already claimed by {by}"
            )));
        }
        let cs = cluster_size.unwrap_or(DEFAULT_CLUSTER_SIZE);
        let clock = lv.clock;
        let uuid = self.lvols_mut()?.new_uuid();
        let h = self
            .bdevs
            .claim(id, "lvol store")
            .map_err(|e| Error::state(e.to_string()))?;
        let made = Store::create(h.clone(), bdev_name, lvs_name, cs, uuid, clock);
        let store = match made {
            Ok(s) => s,
            Err(e) => {
                let _ = self.bdevs.release(id, h);
                return Err(lvol_error(e));
            }
        };
        drop(h);
        // Clusters are zeroed as volumes take them (thick) or written whole
        // (thin), so `clear` has nothing to do for the store itself.
        let _ = clear;
        self.prune_exports_of(id);
        self.lvols_mut()?.stores.push(Loaded { store, base: id });
        Ok(uuid.to_string())
    }

    /// Drops NBD exports of a bdev a store just claimed (they could no
    /// longer do I/O).
    fn prune_exports_of(&mut self, id: BdevId) {
        if let Some(nbd) = self.nbd.as_deref_mut() {
            nbd.list.retain(|e| e.bdev != id);
        }
    }

    /// Deletes a store and every volume on it; refused while a volume has
    /// I/O in flight.
    pub fn lvs_delete(&mut self, r: StoreRef<'_>) -> Result<()> {
        let i = self.lvols()?.index(r)?;
        let vol_ids: Vec<BdevId> = self
            .bdevs
            .ids()
            .filter(|&b| {
                self.lvols()
                    .ok()
                    .and_then(|l| l.volume_of(self.bdevs, b))
                    .is_some_and(|(s, _)| s == i)
            })
            .collect();
        if let Some(&b) = vol_ids.iter().find(|&&b| self.bdevs.in_flight(b) > 0) {
            let name = self
                .bdevs
                .info(b)
                .map(|x| x.name.clone())
                .unwrap_or_default();
            return Err(Error::state(format!("volume {name} has I/O in flight")));
        }
        for b in vol_ids {
            self.bdevs
                .remove(b)
                .map_err(|e| Error::state(e.to_string()))?;
        }
        let l = self.lvols_mut()?.stores.remove(i);
        let destroyed = l.store.destroy();
        let h = l.store.base();
        drop(l.store);
        let _ = self.bdevs.release(l.base, h);
        self.prune_exports();
        destroyed.map_err(lvol_error)
    }

    pub fn lvs_list(&self, r: Option<StoreRef<'_>>) -> Result<Vec<StoreInfo>> {
        let lv = self.lvols()?;
        Ok(match r {
            Some(r) => alloc::vec![lv.stores[lv.index(r)?].store.info()],
            None => lv.stores.iter().map(|l| l.store.info()).collect(),
        })
    }

    pub fn lvs_rename(&mut self, old: &str, new: &str) -> Result<()> {
        let lv = self.lvols()?;
        let i = lv
            .index(StoreRef::Name(old))
            .map_err(|_| spdk(-2, format!("Lvol store {old} not found")))?;
        if old != new && lv.stores.iter().any(|l| l.store.info().name == new) {
            return Err(spdk(INVALID_PARAMS, "File exists"));
        }
        let store = lv.stores[i].store.clone();
        store.rename(new).map_err(|e| lvol_error_in(e, true))?;
        for v in store.volumes() {
            self.realias(&store, old, new, &v.name, &v.name, v.uuid);
        }
        Ok(())
    }

    /// Moves a volume bdev's alias from `old_lvs/old` to `new_lvs/new`.
    fn realias(
        &mut self,
        _s: &Store,
        old_lvs: &str,
        new_lvs: &str,
        old: &str,
        new: &str,
        uuid: Uuid,
    ) {
        if let Some(id) = self.bdevs.find(&uuid.to_string()) {
            self.bdevs.remove_alias(id, &format!("{old_lvs}/{old}"));
            let _ = self.bdevs.add_alias(id, &format!("{new_lvs}/{new}"));
        }
    }

    /// Takes in the space the base bdev gained.
    pub fn lvs_grow(&mut self, r: StoreRef<'_>) -> Result<()> {
        let lv = self.lvols()?;
        let i = lv.index(r)?;
        let (store, base) = (lv.stores[i].store.clone(), lv.stores[i].base);
        self.bdevs.refresh_claimed(base);
        store.grow().map(|_| ()).map_err(lvol_error)
    }

    /// The store and volume a bdev name (UUID or `lvs/lvol` alias) names.
    fn volume(&self, name: &str) -> Result<(BdevId, Store, u32)> {
        let id = self.bdevs.find(name).ok_or_else(no_device)?;
        let lv = self.lvols()?;
        let (i, v) = lv.volume_of(self.bdevs, id).ok_or_else(no_device)?;
        Ok((id, lv.stores[i].store.clone(), v))
    }

    fn add_volume_bdev(&mut self, store: &Store, v: u32) -> Result<String> {
        let info = store
            .volume(v)
            .ok_or_else(|| Error::state("volume vanished"))?;
        let lvs = store.info().name;
        let id = register(self.bdevs, store, &lvs, &info)
            .ok_or_else(|| Error::state("cannot register the volume's bdev"))?;
        if let (Some(nbd), Some(b)) = (self.nbd.as_deref_mut(), self.bdevs.info(id))
            && nbd.list.len() < crate::MAX_EXPORTS
        {
            nbd.list
                .push(Export::new(&b.name, &b.product, id, b, false));
        }
        Ok(info.uuid.to_string())
    }

    /// Creates a volume; returns its UUID.
    pub fn lvol_create(
        &mut self,
        r: StoreRef<'_>,
        name: &str,
        size_bytes: u64,
        thin: bool,
        clear: Clear,
    ) -> Result<String> {
        let lv = self.lvols()?;
        let store = lv.stores[lv.index(r)?].store.clone();
        if self.bdevs.ids().count() >= crate::MAX_BDEVS {
            return Err(Error::state("too many bdevs"));
        }
        let uuid = self.lvols_mut()?.new_uuid();
        let v = store
            .create_volume(name, size_bytes, thin, uuid, clear)
            .map_err(lvol_error)?;
        self.add_volume_bdev(&store, v)
    }

    pub fn lvol_delete(&mut self, name: &str) -> Result<()> {
        let (id, store, v) = self.volume(name)?;
        if self.bdevs.in_flight(id) > 0 {
            return Err(Error::state(format!("{name} has I/O in flight")));
        }
        let kid = store.volumes().into_iter().find(|x| {
            store
                .volume(v)
                .is_some_and(|me| me.clones.contains(&x.name))
        });
        store.delete(v).map_err(lvol_error)?;
        self.bdevs
            .remove(id)
            .map_err(|e| Error::state(e.to_string()))?;
        if let Some(k) = kid
            && let Some(kid_id) = self.bdevs.find(&k.uuid.to_string())
        {
            self.bdevs.refresh(kid_id);
        }
        self.prune_exports();
        Ok(())
    }

    /// Snapshot of a volume; returns the snapshot's UUID.
    pub fn lvol_snapshot(&mut self, name: &str, snapshot: &str) -> Result<String> {
        let (id, store, v) = self.volume(name)?;
        let uuid = self.lvols_mut()?.new_uuid();
        let s = store.snapshot(v, snapshot, uuid).map_err(lvol_error)?;
        self.bdevs.refresh(id);
        self.add_volume_bdev(&store, s)
    }

    pub fn lvol_clone(&mut self, snapshot: &str, clone: &str) -> Result<String> {
        let (_, store, s) = self.volume(snapshot)?;
        let uuid = self.lvols_mut()?.new_uuid();
        let c = store.clone_volume(s, clone, uuid).map_err(lvol_error)?;
        self.add_volume_bdev(&store, c)
    }

    pub fn lvol_rename(&mut self, old: &str, new: &str) -> Result<()> {
        let (_, store, v) = self.volume(old)?;
        let info = store
            .volume(v)
            .ok_or_else(|| Error::state("volume vanished"))?;
        let lvs = store.info().name;
        store
            .rename_volume(v, new)
            .map_err(|e| lvol_error_in(e, true))?;
        self.realias(&store, &lvs, &lvs, &info.name, new, info.uuid);
        Ok(())
    }

    pub fn lvol_resize(&mut self, name: &str, size_bytes: u64) -> Result<()> {
        let (id, store, v) = self.volume(name)?;
        store.resize(v, size_bytes).map_err(lvol_error)?;
        self.bdevs.refresh(id);
        if let (Some(nbd), Some(b)) = (self.nbd.as_deref_mut(), self.bdevs.info(id)) {
            let size = b.size_bytes();
            for e in nbd.list.iter_mut().filter(|e| e.bdev == id) {
                e.size = size;
            }
        }
        Ok(())
    }

    pub fn lvol_set_read_only(&mut self, name: &str) -> Result<()> {
        let (id, store, v) = self.volume(name)?;
        store.set_read_only(v).map_err(lvol_error)?;
        self.bdevs.refresh(id);
        Ok(())
    }

    pub fn lvol_inflate(&mut self, name: &str) -> Result<()> {
        let (id, store, v) = self.volume(name)?;
        store.inflate(v).map_err(lvol_error)?;
        self.bdevs.refresh(id);
        Ok(())
    }

    pub fn lvol_decouple_parent(&mut self, name: &str) -> Result<()> {
        let (id, store, v) = self.volume(name)?;
        store.decouple_parent(v).map_err(lvol_error)?;
        self.bdevs.refresh(id);
        Ok(())
    }

    /// Volumes of one store or all, with their store.
    pub fn lvol_list(&self, r: Option<StoreRef<'_>>) -> Result<Vec<(StoreInfo, VolumeInfo)>> {
        let lv = self.lvols()?;
        let pick: Vec<usize> = match r {
            Some(r) => alloc::vec![lv.index(r)?],
            None => (0..lv.stores.len()).collect(),
        };
        let mut out = Vec::new();
        for i in pick {
            let s = &lv.stores[i].store;
            let info = s.info();
            for v in s.volumes() {
                out.push((info.clone(), v));
            }
        }
        Ok(out)
    }

    /// The store and volume of a bdev, if it is a logical volume (for the
    /// bdev listing's driver-specific part).
    pub fn lvol_of(&self, id: BdevId) -> Option<(StoreInfo, VolumeInfo)> {
        let lv = self.lvol.as_deref()?;
        let (i, v) = lv.volume_of(self.bdevs, id)?;
        let s = &lv.stores[i].store;
        Some((s.info(), s.volume(v)?))
    }
}
