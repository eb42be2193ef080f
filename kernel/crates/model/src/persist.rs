//! The config store: which bdev holds the configuration area, and the
//! operations that choose it, save to it and give it up.
//!
//! The bdev is claimed while it holds the area, so no export, LUN or
//! namespace can write over it, and its NBD export (every bdev has one by
//! default) is dropped. The area itself (format, slots, power-cut safety) is
//! `ironbay-persist`'s; this module only ties it to the registry. Callers
//! hand in the configuration already serialized (the JSON-RPC front end
//! produces it with `framework_get_config`).

use crate::{Error, Model, Result};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use ironbay_bdev::{BdevId, Registry, SharedBdev};
use ironbay_persist::{Loaded, Saver, Store};

/// The largest configuration a store holds, in bytes.
pub const MAX_CONFIG_BYTES: usize = ironbay_persist::MAX_PAYLOAD;

/// The claim name other users of the bdev see.
pub const CLAIM: &str = "config store";

/// The config store: the chosen bdev (if any) and what was saved to it.
pub struct ConfigStore {
    clock: fn() -> u64,
    active: Option<Active>,
    /// Why the last save failed; cleared by the next one that works.
    pub last_error: Option<String>,
    /// What the boot found, for `config_store_get`.
    pub boot: Option<BootLoad>,
    /// The next [`save_if_changed`](ConfigStore::save_if_changed) takes
    /// the config as saved instead of writing it: set when the running
    /// config was just built from the area (it may differ in form, or lack
    /// what a missing disk held; only an operator's change rewrites it).
    pub adopt_next: bool,
}

/// The config a boot found in an area.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootLoad {
    pub bdev_name: String,
    pub generation: u64,
    /// Whether it was applied (rather than the boot module).
    pub applied: bool,
}

struct Active {
    id: BdevId,
    name: String,
    dev: SharedBdev,
    store: Store,
    saver: Saver,
}

/// `config_store_get`'s answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub bdev_name: Option<String>,
    /// Slot and generation of the newest config in the area.
    pub current: Option<(u8, u64)>,
    pub last_error: Option<String>,
    pub boot: Option<BootLoad>,
}

impl ConfigStore {
    /// A store with no bdev yet; `clock` (microseconds) times its I/O.
    pub fn new(clock: fn() -> u64) -> Self {
        ConfigStore {
            clock,
            active: None,
            last_error: None,
            boot: None,
            adopt_next: false,
        }
    }

    /// The bdev holding the area.
    pub fn bdev(&self) -> Option<BdevId> {
        self.active.as_ref().map(|a| a.id)
    }

    pub fn status(&self) -> Status {
        Status {
            bdev_name: self.active.as_ref().map(|a| a.name.clone()),
            current: self.active.as_ref().and_then(|a| a.store.current()),
            last_error: self.last_error.clone(),
            boot: self.boot.clone(),
        }
    }

    /// Every bdev (not claimed by anyone) whose area holds a valid header,
    /// with the highest generation found there, highest first. Each is
    /// claimed only while its headers are read.
    pub fn scan(&self, bdevs: &mut Registry) -> Vec<(String, u64)> {
        let clock = self.clock;
        let ids: Vec<BdevId> = bdevs.ids().collect();
        let mut found = Vec::new();
        for id in ids {
            let Some(info) = bdevs.info(id) else { continue };
            if bdevs.claimed_by(id).is_some() || ironbay_persist::check(info).is_err() {
                continue;
            }
            let name = info.name.clone();
            let Ok(dev) = bdevs.claim(id, CLAIM) else {
                continue;
            };
            let probed = {
                let mut d = dev.borrow_mut();
                ironbay_persist::probe(&mut **d, &mut || clock())
            };
            let _ = bdevs.release(id, dev);
            if let Ok(Some(generation)) = probed {
                found.push((name, generation));
            }
        }
        found.sort_by_key(|f| core::cmp::Reverse(f.1));
        found
    }

    /// Claims bdev `name` and reads its area: the config it holds, if any.
    /// Nothing changes on error. Any store held before is released first
    /// only by [`Model::config_store_set`]; here there must be none.
    pub fn open(&mut self, bdevs: &mut Registry, name: &str) -> Result<Option<Loaded>> {
        if self.active.is_some() {
            return Err(Error::state("a config store is already open"));
        }
        let (active, loaded) = open(bdevs, name, self.clock)?;
        self.active = Some(active);
        Ok(loaded)
    }

    /// Takes `bytes` as what the area holds, without writing them.
    pub fn adopt(&mut self, bytes: &[u8]) {
        if let Some(a) = &mut self.active {
            a.saver.adopt(bytes);
        }
    }

    /// Saves `config` if it differs from the last save: `Ok(Some(generation))`
    /// when written, `Ok(None)` when unchanged or no bdev is chosen.
    pub fn save_if_changed(&mut self, config: &[u8]) -> Result<Option<u64>> {
        let clock = self.clock;
        let Some(a) = &mut self.active else {
            return Ok(None);
        };
        if core::mem::take(&mut self.adopt_next) {
            a.saver.adopt(config);
            return Ok(None);
        }
        let mut dev = a.dev.borrow_mut();
        let r = a
            .saver
            .save_if_changed(&mut a.store, &mut **dev, config, &mut || clock());
        match r {
            Ok(g) => {
                if g.is_some() {
                    self.last_error = None;
                }
                Ok(g)
            }
            Err(e) => {
                let m = format!("saving the configuration to {} failed: {e}", a.name);
                self.last_error = Some(m.clone());
                Err(Error::state(m))
            }
        }
    }

    /// Erases the area's headers and releases the bdev. The claim is given
    /// up even when erasing fails (the error says so).
    fn close(&mut self, bdevs: &mut Registry, wipe: bool) -> Result<()> {
        let Some(mut a) = self.active.take() else {
            return Ok(());
        };
        let clock = self.clock;
        let wiped = if wipe {
            let mut dev = a.dev.borrow_mut();
            a.store.wipe(&mut **dev, &mut || clock())
        } else {
            Ok(())
        };
        let released = bdevs.release(a.id, a.dev);
        wiped.map_err(|e| Error::state(format!("erasing the config area on {}: {e}", a.name)))?;
        released.map_err(|e| Error::state(format!("releasing {}: {e}", a.name)))
    }
}

fn open(bdevs: &mut Registry, name: &str, clock: fn() -> u64) -> Result<(Active, Option<Loaded>)> {
    let id = bdevs
        .find(name)
        .ok_or_else(|| Error::params(format!("bdev {name} does not exist")))?;
    let info = bdevs.info(id).ok_or_else(|| Error::params("bdev gone"))?;
    ironbay_persist::check(info).map_err(|e| Error::params(format!("{name}: {e}")))?;
    let name = info.name.clone();
    let dev = bdevs
        .claim(id, CLAIM)
        .map_err(|e| Error::state(format!("{name}: {e}")))?;
    let opened = {
        let mut d = dev.borrow_mut();
        Store::open(&mut **d, &mut || clock())
    };
    match opened {
        Ok((store, loaded)) => Ok((
            Active {
                id,
                name,
                dev,
                store,
                saver: Saver::new(),
            },
            loaded,
        )),
        Err(e) => {
            let _ = bdevs.release(id, dev);
            Err(Error::state(format!(
                "{name}: reading the config area: {e}"
            )))
        }
    }
}

impl Model<'_> {
    fn config_store(&mut self) -> Result<&mut ConfigStore> {
        self.config_store
            .as_deref_mut()
            .ok_or_else(|| Error::state("no config store on this front end"))
    }

    /// Makes bdev `name` the config store and writes `config` to it now.
    /// The bdev must not serve a LUN or a namespace; its NBD export goes.
    /// The area on the previous store's bdev is erased and that bdev
    /// released. On error nothing changes.
    pub fn config_store_set(&mut self, name: &str, config: &[u8]) -> Result<u64> {
        let id = self.find(name)?;
        let same = self.config_store()?.bdev() == Some(id);
        if same {
            let cs = self.config_store()?;
            if let Some(a) = &mut cs.active {
                a.saver.reset();
            }
            return cs
                .save_if_changed(config)?
                .ok_or_else(|| Error::state("nothing saved"));
        }
        if let Some(t) = self.iscsi.as_deref()
            && t.config
                .nodes
                .iter()
                .flat_map(|n| &n.luns)
                .any(|l| l.bdev == id)
        {
            return Err(Error::state(format!("{name} is an iSCSI LUN")));
        }
        if let Some(t) = self.nvmf.as_deref()
            && t.config
                .subsystems
                .iter()
                .flat_map(|s| &s.namespaces)
                .any(|n| self.bdevs.find(&n.bdev_name) == Some(id))
        {
            return Err(Error::state(format!("{name} is an NVMe-oF namespace")));
        }
        let cs = self
            .config_store
            .as_deref_mut()
            .ok_or_else(|| Error::state("no config store on this front end"))?;
        let (mut fresh, _) = open(self.bdevs, name, cs.clock)?;
        let clock = cs.clock;
        let written = {
            let mut dev = fresh.dev.borrow_mut();
            fresh
                .saver
                .save_if_changed(&mut fresh.store, &mut **dev, config, &mut || clock())
        };
        let generation = match written {
            Ok(g) => g.unwrap_or_default(),
            Err(e) => {
                let _ = self.bdevs.release(fresh.id, fresh.dev);
                return Err(Error::state(format!(
                    "{name}: writing the config area: {e}"
                )));
            }
        };
        let old = cs.active.replace(fresh);
        cs.last_error = None;
        if let Some(old) = old {
            // Erase the old area, so a scan at boot finds only the new one.
            let mut previous = ConfigStore {
                clock,
                active: Some(old),
                last_error: None,
                boot: None,
                adopt_next: false,
            };
            if let Err(e) = previous.close(self.bdevs, true) {
                cs.last_error = Some(e.message);
            }
        }
        if let Some(nbd) = self.nbd.as_deref_mut() {
            nbd.list.retain(|e| e.bdev != id);
        }
        Ok(generation)
    }

    /// Stops saving: erases the area (unless `keep`) and releases its bdev.
    pub fn config_store_clear(&mut self, keep: bool) -> Result<()> {
        let bdevs = &mut *self.bdevs;
        let cs = self
            .config_store
            .as_deref_mut()
            .ok_or_else(|| Error::state("no config store on this front end"))?;
        if cs.active.is_none() {
            return Err(Error::state("no config store is set"));
        }
        cs.close(bdevs, !keep)
    }

    /// Saves `config` to the store if it changed (see
    /// [`ConfigStore::save_if_changed`]); no store: nothing happens.
    pub fn config_store_save_if_changed(&mut self, config: &[u8]) -> Result<Option<u64>> {
        match self.config_store.as_deref_mut() {
            Some(cs) => cs.save_if_changed(config),
            None => Ok(None),
        }
    }

    /// The store's status; `None` on a front end without one.
    pub fn config_store_status(&self) -> Option<Status> {
        self.config_store.as_deref().map(ConfigStore::status)
    }
}

impl core::fmt::Debug for ConfigStore {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ConfigStore")
            .field("bdev", &self.active.as_ref().map(|a| a.name.to_string()))
            .field("last_error", &self.last_error)
            .finish()
    }
}
