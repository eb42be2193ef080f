//! The configuration area: the appliance's configuration (the JSON that
//! `framework_get_config` returns) kept on a bdev the operator chose, so it
//! survives a reboot, and survives a power cut during a save.
//!
//! The area is two slots at fixed offsets from the start of the device
//! ([`format`]); each is a checksummed header block and a payload. A save
//! ([`Store::save`]) writes the slot that does not hold the newest valid
//! config, payload first and header last with a flush after each, so at
//! every instant a load ([`Store::open`]) finds either the previous config or
//! the new one, whole. [`Saver`] decides when to save: whenever the
//! serialized config differs from what was last saved.
//!
//! The crate owns no device and no clock: callers hand it a
//! [`BlockDevice`] they own outright (a claimed bdev) and their clock, and it
//! drives blocking I/O through [`ironbay_bdev::sync`]. The same code runs on
//! the host against RAM disks that lose power at every write
//! ([`ironbay_bdev::powercut`]).

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod format;
mod store;

#[cfg(test)]
mod tests;

use alloc::vec::Vec;
pub use format::{AREA_BYTES, MAX_PAYLOAD};
use ironbay_bdev::BlockDevice;
use ironbay_bdev::sync::Clock;
pub use store::{Error, Loaded, Store, check, probe};

/// Saves the config when it changed since the last save.
///
/// Order of use: [`Saver::adopt`] what the area already holds (or what was
/// applied from it at boot), then after every change the caller may have
/// made, [`Saver::save_if_changed`] with the config serialized afresh.
#[derive(Clone, Debug, Default)]
pub struct Saver {
    /// The bytes last saved or adopted; `None`: nothing yet, the first
    /// call saves.
    last: Option<Vec<u8>>,
}

impl Saver {
    pub fn new() -> Self {
        Saver::default()
    }

    /// Takes `bytes` as saved without writing them (the area holds them, or
    /// the running config was just built from it).
    pub fn adopt(&mut self, bytes: &[u8]) {
        self.last = Some(bytes.to_vec());
    }

    /// Forgets what was saved: the next call writes.
    pub fn reset(&mut self) {
        self.last = None;
    }

    /// Whether `bytes` is what was last saved.
    pub fn is_saved(&self, bytes: &[u8]) -> bool {
        self.last.as_deref() == Some(bytes)
    }

    /// Writes `bytes` as the next generation if they differ from the last
    /// saved; `Ok(Some(generation))` when it wrote, `Ok(None)` when nothing
    /// changed. After an error the next call tries again.
    pub fn save_if_changed(
        &mut self,
        store: &mut Store,
        dev: &mut dyn BlockDevice,
        bytes: &[u8],
        clock: Clock<'_>,
    ) -> Result<Option<u64>, Error> {
        if self.is_saved(bytes) {
            return Ok(None);
        }
        let generation = store.save(dev, bytes, clock)?;
        self.adopt(bytes);
        Ok(Some(generation))
    }
}
