//! RapidDisk's objects: RAM disks (`rd0`, `rd1`, ...) whose pages come from
//! the data pool on first write, and RAM caches (`rc-wt_SRC`, `rc-wa_SRC`,
//! `rc-wb_SRC`) stacking a RAM disk over any bdev. Both are bdevs like any
//! other; the REST API and JSON-RPC reach them through these operations.

use crate::{Error, Model, Result};
use alloc::boxed::Box;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use ironbay_bdev::{BdevId, MallocBdev, Uuid};
use ironbay_cache::{CacheBdev, Mode, Stats};
use ironbay_nbd::Export;

/// The product name of RAM disks.
pub const RAPIDDISK_PRODUCT: &str = "RapidDisk";
/// RAM disks use 512-byte sectors, as RapidDisk's block devices do.
pub const RAPIDDISK_BLOCK: u64 = 512;
const MIB: u64 = 1 << 20;

/// A RAM disk as RapidDisk lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RamDiskInfo {
    pub name: String,
    pub size: u64,
    /// Bytes of pages it really holds.
    pub usage: u64,
    pub locked: bool,
}

/// A cache as RapidDisk lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheInfo {
    pub name: String,
    pub cache: String,
    pub source: String,
    pub mode: Mode,
}

/// A physical disk for `listAllResources`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disk {
    pub name: String,
    pub size: u64,
    pub vendor: String,
    pub model: String,
}

/// Clock for waits outside the data path when the caller gave none: steps
/// of a millisecond, so blocking waits still end.
fn stepping_clock() -> u64 {
    use core::sync::atomic::{AtomicU64, Ordering};
    static T: AtomicU64 = AtomicU64::new(0);
    T.fetch_add(1000, Ordering::Relaxed)
}

impl Model<'_> {
    fn is_ram_disk(&self, id: BdevId) -> bool {
        self.bdevs
            .info(id)
            .is_some_and(|i| i.product == RAPIDDISK_PRODUCT)
    }

    /// The RAM disk named `name`.
    fn ram_disk(&self, name: &str) -> Result<BdevId> {
        let id = self
            .bdevs
            .find(name)
            .ok_or_else(|| Error::params(format!("{name} does not exist")))?;
        if !self.is_ram_disk(id) {
            return Err(Error::params(format!("{name} is not a RapidDisk RAM disk")));
        }
        Ok(id)
    }

    /// Where `id` is served from: an NBD export, an iSCSI LUN or an
    /// NVMe-oF namespace.
    pub fn exported_as(&self, id: BdevId) -> Option<String> {
        if let Some(e) = self
            .nbd
            .as_deref()
            .and_then(|n| n.list.iter().find(|e| e.bdev == id))
        {
            return Some(format!("NBD export {}", e.name));
        }
        if let Some(t) = self.iscsi.as_deref() {
            for n in &t.config.nodes {
                let acl = n.acls.iter().flat_map(|a| &a.luns);
                if n.luns.iter().chain(acl).any(|l| l.bdev == id) {
                    return Some(format!("a LUN of iSCSI target {}", n.name));
                }
            }
        }
        let name = &self.bdevs.info(id)?.name;
        let t = self.nvmf.as_deref()?;
        let s = t
            .config
            .subsystems
            .iter()
            .find(|s| s.namespaces.iter().any(|ns| &ns.bdev_name == name))?;
        Some(format!("a namespace of NVMe-oF subsystem {}", s.nqn))
    }

    /// Creates a RAM disk of `size_mib` MiB named `name`, or the first free
    /// `rdN`. Returns its name.
    pub fn rapiddisk_create(&mut self, name: Option<&str>, size_mib: u64) -> Result<String> {
        if size_mib == 0 {
            return Err(Error::params("the size must be at least 1 MiB"));
        }
        let bytes = size_mib
            .checked_mul(MIB)
            .ok_or_else(|| Error::params("size overflows"))?;
        let name = match name {
            Some(n) => String::from(n),
            None => (0..)
                .map(|i| format!("rd{i}"))
                .find(|n| self.bdevs.find(n).is_none())
                .unwrap_or_default(),
        };
        self.check_new_name(&name)?;
        if self.bdevs.ids().count() >= crate::MAX_BDEVS {
            return Err(Error::state(format!(
                "{} bdevs exist already",
                crate::MAX_BDEVS
            )));
        }
        let uuid = Uuid::from_name(&[b"rapiddisk", name.as_bytes()]);
        let disk = self.new_ram_disk(
            &name,
            RAPIDDISK_PRODUCT,
            uuid,
            bytes / RAPIDDISK_BLOCK,
            RAPIDDISK_BLOCK,
        )?;
        self.bdevs
            .add(Box::new(disk))
            .map_err(|e| Error::params(e.to_string()))?;
        Ok(name)
    }

    /// Grows a RAM disk to `size_mib` MiB (RapidDisk does not shrink).
    pub fn rapiddisk_resize(&mut self, name: &str, size_mib: u64) -> Result<()> {
        let id = self.ram_disk(name)?;
        let size = self.bdevs.info(id).map_or(0, |i| i.size_bytes());
        let bytes = size_mib
            .checked_mul(MIB)
            .ok_or_else(|| Error::params("size overflows"))?;
        if bytes <= size {
            return Err(Error::params(format!(
                "{name} is {} MiB; the new size must be larger",
                size / MIB
            )));
        }
        if let Some(by) = self.bdevs.claimed_by(id) {
            return Err(Error::state(format!("{name} is used by {by}")));
        }
        self.check_ram_tables(bytes - size, RAPIDDISK_BLOCK)?;
        self.bdevs
            .resize(id, bytes / RAPIDDISK_BLOCK)
            .map_err(|e| Error::state(e.to_string()))?;
        if let Some(nbd) = self.nbd.as_deref_mut() {
            nbd.list
                .iter_mut()
                .filter(|e| e.bdev == id)
                .for_each(|e| e.size = bytes);
        }
        Ok(())
    }

    fn with_ram_disk<R>(&mut self, name: &str, f: impl FnOnce(&mut MallocBdev) -> R) -> Result<R> {
        let id = self.ram_disk(name)?;
        self.bdevs
            .with_device(id, f)
            .ok_or_else(|| Error::state(format!("{name} is in use")))
    }

    /// Drops a RAM disk's contents and gives its pages back (RapidDisk's
    /// flush). Refused while a cache holds it or I/O is in flight.
    pub fn rapiddisk_flush(&mut self, name: &str) -> Result<()> {
        let id = self.ram_disk(name)?;
        if let Some(by) = self.bdevs.claimed_by(id) {
            return Err(Error::state(format!("{name} is used by {by}")));
        }
        if self.bdevs.in_flight(id) > 0 {
            return Err(Error::state(format!("{name} has I/O in flight")));
        }
        self.with_ram_disk(name, |d| d.store_mut().clear())
    }

    /// Removes a RAM disk: refused while a cache uses it or it is exported.
    pub fn rapiddisk_remove(&mut self, name: &str) -> Result<()> {
        let id = self.ram_disk(name)?;
        if let Some(by) = self.bdevs.claimed_by(id) {
            return Err(Error::state(format!("{name} is used by cache {by}")));
        }
        if let Some(what) = self.exported_as(id) {
            return Err(Error::state(format!("{name} is exported as {what}")));
        }
        self.bdevs
            .remove(id)
            .map_err(|e| Error::state(format!("{name}: {e}")))?;
        Ok(())
    }

    /// Makes a RAM disk read-only (`true`) or writable again: writes then
    /// fail with each protocol's write-protect error.
    pub fn rapiddisk_lock(&mut self, name: &str, locked: bool) -> Result<()> {
        let id = self.ram_disk(name)?;
        if let Some(by) = self.bdevs.claimed_by(id) {
            return Err(Error::state(format!("{name} is used by cache {by}")));
        }
        self.with_ram_disk(name, |d| d.set_read_only(locked))?;
        self.bdevs.refresh(id);
        Ok(())
    }

    /// Every RAM disk and cache, RAM disks newest name first as RapidDisk
    /// lists them.
    pub fn rapiddisk_list(&mut self) -> (Vec<RamDiskInfo>, Vec<CacheInfo>) {
        let ids: Vec<BdevId> = self.bdevs.ids().collect();
        let mut disks = Vec::new();
        let mut caches = Vec::new();
        for id in ids {
            let Some(info) = self.bdevs.info(id).cloned() else {
                continue;
            };
            if info.product == RAPIDDISK_PRODUCT {
                let usage = self
                    .bdevs
                    .with_device(id, |d: &mut MallocBdev| d.store().held_bytes());
                disks.push(RamDiskInfo {
                    name: info.name.clone(),
                    size: info.size_bytes(),
                    usage: usage.unwrap_or(0),
                    locked: info.read_only,
                });
            } else if info.product == ironbay_cache::PRODUCT {
                let parts = self.bdevs.with_device(id, |c: &mut CacheBdev| {
                    (c.mode(), c.source_id(), c.ram_id())
                });
                if let Some((mode, src, ram)) = parts {
                    let name_of = |b| {
                        self.bdevs
                            .info(b)
                            .map(|i| i.name.clone())
                            .unwrap_or_default()
                    };
                    caches.push(CacheInfo {
                        name: info.name.clone(),
                        cache: name_of(ram),
                        source: name_of(src),
                        mode,
                    });
                }
            }
        }
        disks.sort_by(|a, b| natural(&b.name).cmp(&natural(&a.name)));
        caches.sort_by(|a, b| a.name.cmp(&b.name));
        (disks, caches)
    }

    /// Stacks RAM disk `ram` over `source` with `mode`; returns the cache's
    /// name, `rc-wt_SOURCE` and so on. Both are claimed until it goes.
    pub fn cache_create(&mut self, ram: &str, source: &str, mode: Mode) -> Result<String> {
        let ram_id = self.ram_disk(ram)?;
        let name = format!("{}{source}", mode.prefix());
        let src_id = self.claimable(source, &name)?;
        if src_id == ram_id {
            return Err(Error::params("a RAM disk cannot cache itself"));
        }
        if self.is_ram_disk(src_id) {
            return Err(Error::params(format!("{source} is a RAM disk already")));
        }
        self.claimable(ram, &name)?;
        if self.bdevs.info(ram_id).is_some_and(|i| i.read_only) {
            return Err(Error::state(format!("{ram} is locked")));
        }
        if let Some(what) = self.exported_as(ram_id) {
            return Err(Error::state(format!("{ram} is exported as {what}")));
        }
        let src = self
            .bdevs
            .claim(src_id, &name)
            .map_err(|e| Error::state(e.to_string()))?;
        let cache = match self.bdevs.claim(ram_id, &name) {
            Ok(h) => h,
            Err(e) => {
                let _ = self.bdevs.release(src_id, src);
                return Err(Error::state(e.to_string()));
            }
        };
        // What the RAM disk held before is not cache content.
        clear_ram_disk(&cache);
        let made = CacheBdev::new(&name, mode, src.clone(), src_id, cache.clone(), ram_id);
        let id = match made
            .map_err(|e| Error::state(format!("cannot create {name}: {e}")))
            .and_then(|c| {
                self.bdevs
                    .add(Box::new(c))
                    .map_err(|e| Error::params(e.to_string()))
            }) {
            Ok(id) => id,
            Err(e) => {
                let _ = self.bdevs.release(ram_id, cache);
                let _ = self.bdevs.release(src_id, src);
                return Err(e);
            }
        };
        drop((src, cache));
        if let (Some(nbd), Some(info)) = (self.nbd.as_deref_mut(), self.bdevs.info(id)) {
            nbd.list.retain(|e| e.bdev != src_id);
            if info.block_size.is_power_of_two() && !nbd.list.iter().any(|e| e.name == name) {
                nbd.list
                    .push(Export::new(&name, &info.product, id, info, false));
            }
        }
        Ok(name)
    }

    fn cache(&self, name: &str) -> Result<BdevId> {
        let id = self
            .bdevs
            .find(name)
            .ok_or_else(|| Error::params(format!("{name} does not exist")))?;
        if self
            .bdevs
            .info(id)
            .is_none_or(|i| i.product != ironbay_cache::PRODUCT)
        {
            return Err(Error::params(format!("{name} is not a RapidDisk cache")));
        }
        Ok(id)
    }

    fn clock(&self) -> fn() -> u64 {
        self.lvol
            .as_deref()
            .map_or(stepping_clock as fn() -> u64, |l| l.clock())
    }

    /// Writes a cache's dirty blocks back to its source.
    pub fn cache_write_back(&mut self, name: &str) -> Result<()> {
        let id = self.cache(name)?;
        let clock = self.clock();
        self.bdevs
            .with_device(id, |c: &mut CacheBdev| c.write_back_all(&mut || clock()))
            .ok_or_else(|| Error::state(format!("{name} is in use")))?
            .map_err(|e| Error::state(format!("{name}: writing back to the source failed: {e}")))
    }

    /// Removes a cache after writing its dirty blocks back; its RAM disk
    /// and source are free again (the RAM disk's pages go back).
    pub fn cache_remove(&mut self, name: &str) -> Result<()> {
        let id = self.cache(name)?;
        if let Some(by) = self.bdevs.claimed_by(id) {
            return Err(Error::state(format!("bdev {name} is claimed by {by}")));
        }
        if let Some(what) = self.exported_as(id).filter(|w| !w.starts_with("NBD")) {
            return Err(Error::state(format!("{name} is exported as {what}")));
        }
        // Dirty blocks count as work in flight until written back.
        self.cache_write_back(name)?;
        if self.bdevs.in_flight(id) > 0 {
            return Err(Error::state(format!("{name} has I/O in flight")));
        }
        let parts = self
            .bdevs
            .with_device(id, |c: &mut CacheBdev| {
                let (s, r) = c.handles();
                (c.source_id(), s, c.ram_id(), r)
            })
            .ok_or_else(|| Error::state(format!("{name} is in use")))?;
        let (src_id, src, ram_id, ram) = parts;
        self.bdevs
            .remove(id)
            .map_err(|e| Error::state(format!("{name}: {e}")))?;
        clear_ram_disk(&ram);
        self.bdevs
            .release(ram_id, ram)
            .map_err(|e| Error::state(e.to_string()))?;
        self.bdevs
            .release(src_id, src)
            .map_err(|e| Error::state(e.to_string()))?;
        self.prune_exports();
        // The source gets back the NBD export the cache took over.
        if let (Some(nbd), Some(info)) = (self.nbd.as_deref_mut(), self.bdevs.info(src_id))
            && info.block_size.is_power_of_two()
            && !nbd
                .list
                .iter()
                .any(|e| e.bdev == src_id || e.name == info.name)
        {
            let name = info.name.clone();
            nbd.list
                .push(Export::new(&name, &info.product, src_id, info, false));
        }
        Ok(())
    }

    /// A cache's mode and counters.
    pub fn cache_stats(&mut self, name: &str) -> Result<(Mode, Stats)> {
        let id = self.cache(name)?;
        self.bdevs
            .with_device(id, |c: &mut CacheBdev| (c.mode(), c.stats()))
            .ok_or_else(|| Error::state(format!("{name} is in use")))
    }

    /// Writes every write-back cache's dirty blocks to its source (orderly
    /// shutdown). Returns the caches that failed.
    pub fn write_back_caches(&mut self) -> Vec<String> {
        let names: Vec<String> = self
            .bdevs
            .ids()
            .filter_map(|id| self.bdevs.info(id))
            .filter(|i| i.product == ironbay_cache::PRODUCT)
            .map(|i| i.name.clone())
            .collect();
        names
            .into_iter()
            .filter(|n| self.cache_write_back(n).is_err())
            .collect()
    }

    /// Physical disks for `listAllResources`, from the caller's hardware.
    pub fn disks(&self) -> Vec<Disk> {
        self.devices
            .as_deref()
            .map(|d| d.disks(self.bdevs))
            .unwrap_or_default()
    }

    /// (total, free) bytes of memory, from the caller's hardware.
    pub fn memory(&self) -> (u64, u64) {
        self.devices.as_deref().map_or((0, 0), |d| d.memory())
    }
}

/// Drops a RAM disk's contents through a handle on it.
fn clear_ram_disk(h: &ironbay_bdev::SharedBdev) {
    if let Some(d) = h
        .borrow_mut()
        .as_any_mut()
        .and_then(|d| d.downcast_mut::<MallocBdev>())
    {
        d.store_mut().clear();
    }
}

/// Sort key putting `rd10` after `rd9`.
fn natural(name: &str) -> (usize, &str) {
    (name.len(), name)
}
