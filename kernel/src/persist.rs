//! The config store on the appliance: at boot, find the config area and
//! decide whether what it holds or the boot module configures the
//! appliance; after JSON-RPC input, save the configuration when it changed.
//!
//! Finding the area: `config.store=BDEV` names the bdev (an area is made
//! there at the first save if it has none); `config.store=none` turns the
//! store off for this boot; otherwise every bdev is scanned for the area's
//! magic and the one with the highest generation is taken, so a PXE-booted
//! appliance with a fresh boot module still finds its configuration.
//!
//! Precedence: a valid stored config is applied *instead of* the boot
//! module (it already holds whatever the boot module made, plus every later
//! change), unless `config.prefer=boot`, which applies the boot module and
//! overwrites the stored config with the result. With no stored config the
//! boot module applies and, if the store's bdev is known, is saved at once.

use crate::storage::Storage;
use alloc::string::String;
use ironbay_config::{BootConfig, Cmdline};
use ironbay_model::persist::{BootLoad, ConfigStore};

/// Where the store is, from the command line.
pub enum Choice {
    /// Scan every bdev for an area.
    Scan,
    /// This bdev.
    Named(String),
    /// No store this boot.
    Off,
}

pub struct Options {
    pub choice: Choice,
    /// `config.prefer=boot`: the boot module wins over a stored config.
    pub prefer_boot: bool,
}

impl Options {
    pub fn from_cmdline(c: &Cmdline) -> Self {
        Options {
            choice: match c.get("config.store") {
                None => Choice::Scan,
                Some("none") => Choice::Off,
                Some(name) => Choice::Named(name.into()),
            },
            prefer_boot: c.get("config.prefer") == Some("boot"),
        }
    }
}

/// A new, empty store timed by the kernel clock.
pub fn new_store() -> ConfigStore {
    ConfigStore::new(crate::time::uptime_us)
}

/// Opens the config store and returns the config it holds, if any.
fn load(s: &mut Storage, o: &Options) -> Option<(BootConfig, u64, String)> {
    let candidates = match &o.choice {
        Choice::Off => {
            log::info!("config store: off (config.store=none)");
            return None;
        }
        Choice::Named(name) => alloc::vec![name.clone()],
        Choice::Scan => {
            let found = s.config_store.scan(&mut s.bdevs);
            for (name, generation) in found.iter().skip(1) {
                log::warn!("config store: older area on {name} (generation {generation}) ignored");
            }
            found.into_iter().map(|(n, _)| n).collect()
        }
    };
    for name in candidates {
        match s.config_store.open(&mut s.bdevs, &name) {
            Ok(Some(l)) => match BootConfig::parse(&l.payload) {
                Ok(cfg) => {
                    log::info!(
                        "config store: {name}, generation {} (slot {}, {} bytes)",
                        l.generation,
                        l.slot,
                        l.payload.len()
                    );
                    return Some((cfg, l.generation, name));
                }
                Err(e) => {
                    log::error!("config store: {name}: stored config unusable: {e}");
                    return None;
                }
            },
            Ok(None) => {
                log::info!("config store: {name}, empty; the running config will be saved there");
                return None;
            }
            Err(e) => log::error!("config store: {name}: {}", e.message),
        }
    }
    if matches!(o.choice, Choice::Scan) {
        log::info!("config store: no config area found (set one with config_store_set)");
    }
    None
}

/// Opens the store and picks the config this boot applies: the stored one
/// or the boot module, by the precedence above.
pub fn choose(s: &mut Storage, o: &Options, module: Option<&BootConfig>) -> Option<BootConfig> {
    let stored = load(s, o);
    match stored {
        Some((cfg, generation, bdev_name)) => {
            let applied = !o.prefer_boot || module.is_none();
            s.config_store.boot = Some(BootLoad {
                bdev_name,
                generation,
                applied,
            });
            if applied {
                if module.is_some() {
                    log::info!(
                        "config store: stored config generation {generation} applies; the boot module is ignored (config.prefer=boot to reverse)"
                    );
                }
                // What is built from the area is not written back unchanged.
                s.config_store.adopt_next = true;
                Some(cfg)
            } else {
                log::info!(
                    "config store: config.prefer=boot: the boot module applies and will replace the stored config"
                );
                module.cloned()
            }
        }
        None => module.cloned(),
    }
}

/// Saves the configuration when it changed (the first time after boot: takes
/// what the area held as saved, or writes a fresh area). Runs only once init
/// has: before it, the held-back boot config has not run.
pub fn save_if_changed(model: &mut ironbay_rpc::Model<'_>) {
    match ironbay_rpc::methods::persist::save_if_changed(model) {
        Ok(Some(generation)) => log::info!("config store: saved generation {generation}"),
        Ok(None) => {}
        Err(e) => log::error!("config store: {}", e.message),
    }
}

/// [`save_if_changed`] over the object model; `nbd`: the NBD target's
/// exports, once it runs (before, the saved configuration has no NBD part).
pub fn save_storage(s: &mut Storage, nbd: Option<&mut ironbay_nbd::Exports>, initialized: bool) {
    let (mut init, mut down) = (initialized, false);
    let mut model = s.model(nbd, &mut init, &mut down, None);
    save_if_changed(&mut model);
}
