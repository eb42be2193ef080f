//! The appliance's object model: block devices, the hardware behind them and
//! the exports that serve them, with the operations the management front ends
//! share. JSON-RPC is the first front end; targetd, QMP and REST call the same
//! operations with their own parameter formats.
//!
//! Every operation validates fully before it changes anything, so a failed
//! call leaves nothing half made. Errors say what was wrong in words a client
//! can show; [`ErrorKind`] tells a front end which of its codes to use.
//!
//! One module per concern, each adding its operations to [`Model`]:
//!
//! - [`error`]: [`Error`] and [`ErrorKind`], and the engines' configuration
//!   errors turned into them.
//! - `ram`: malloc and null bdevs ([`RamBdev`]), block layer options, QoS.
//! - `hardware`: the [`Devices`] the caller attaches and detaches.
//! - `nbd`: NBD exports.
//! - `iscsi_target`, `nvmf_target`: the targets' configurations, changed
//!   through [`Model::iscsi_configure`] and [`Model::nvmf_configure`], and
//!   their live sessions.
//! - [`stacked`]: passthru and error bdevs on other bdevs.
//! - [`lvol`]: logical volume stores and volumes.
//! - [`persist`]: the config store the configuration is saved to.
//! - `runtime`: init, shutdown and the benchmark.
//! - [`targetd`]: the targetd API's credentials and options.
//! - [`rapiddisk`]: RapidDisk's RAM disks and RAM caches.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::format;
use alloc::vec::Vec;
use ironbay_bdev::bench::BenchSpec;
use ironbay_bdev::{BdevId, Registry};
use ironbay_nbd::Exports;

/// The iSCSI engine's types, for front ends.
pub use ironbay_iscsi as iscsi;
/// The NVMe-oF engine's types, for front ends.
pub use ironbay_nvmf as nvmf;

pub mod error;
mod hardware;
mod iscsi_target;
pub mod lvol;
mod nbd;
mod nvmf_target;
pub mod persist;
mod ram;
pub mod rapiddisk;
mod runtime;
pub mod stacked;
pub mod targetd;
#[cfg(test)]
mod testutil;

pub use error::{Error, ErrorKind, Result};
pub use hardware::Devices;
pub use ram::{RamBdev, RamKind};

/// What the operations manage. The kernel owns these; tests make their own.
pub struct Model<'a> {
    pub bdevs: &'a mut Registry,
    /// NVMe and virtio controllers, where the caller has hardware.
    pub devices: Option<&'a mut dyn Devices>,
    /// NBD exports, when the NBD target runs.
    pub nbd: Option<&'a mut Exports>,
    /// The iSCSI target (its configuration and live connections), when it
    /// runs.
    pub iscsi: Option<&'a mut iscsi::Target>,
    /// The NVMe-oF target (its configuration and live controllers), when it
    /// runs.
    pub nvmf: Option<&'a mut nvmf::Target>,
    /// Bytes a new RAM bdev may take.
    pub memory_budget: u64,
    /// Set once init ran (always, unless started with init deferred).
    pub initialized: &'a mut bool,
    /// Set by an orderly shutdown request: the caller stops once replies are out.
    pub shutdown: &'a mut bool,
    /// Where a benchmark request is left; the caller runs it and reports when
    /// it ends. `None`: not offered.
    pub bench: Option<&'a mut Option<BenchSpec>>,
    /// The config store (the bdev the configuration is saved to), where
    /// the caller keeps one.
    pub config_store: Option<&'a mut persist::ConfigStore>,
    /// Logical volume stores, where the caller has them.
    pub lvol: Option<&'a mut lvol::Lvols>,
    /// The targetd front end's settings, where it runs.
    pub targetd: Option<&'a mut targetd::Settings>,
}

/// Bdev names in the registry and as export names.
pub const MAX_NAME: usize = 255;
/// Caps on objects a management client can create, so memory stays bounded
/// even for null bdevs, which cost no data memory.
pub const MAX_BDEVS: usize = 4096;
pub const MAX_EXPORTS: usize = 4096;

impl Model<'_> {
    /// The bdev named `name` (or aliased so).
    pub fn find(&self, name: &str) -> Result<BdevId> {
        self.bdevs
            .find(name)
            .ok_or_else(|| Error::params(format!("bdev {name} does not exist")))
    }

    /// Checks a name for a new bdev: its length, and that it is free.
    fn check_new_name(&self, name: &str) -> Result<()> {
        if name.is_empty() || name.len() > MAX_NAME {
            return Err(Error::params(format!(
                "`name` must be 1-{MAX_NAME} characters"
            )));
        }
        if self.bdevs.find(name).is_some() {
            return Err(Error::params(format!("a bdev named {name} already exists")));
        }
        Ok(())
    }

    /// Drops NBD exports, iSCSI LUNs and NVMe-oF namespaces whose bdev is
    /// gone (hot removal); hosts of the namespaces get a namespace-changed
    /// event.
    fn prune_exports(&mut self) {
        if let Some(t) = self.nvmf.as_deref_mut()
            && t.config.prune_namespaces(self.bdevs) > 0
        {
            t.refresh(self.bdevs);
        }
        if let Some(nbd) = self.nbd.as_deref_mut() {
            nbd.list.retain(|e| self.bdevs.info(e.bdev).is_some());
        }
        if let Some(t) = self.iscsi.as_deref_mut() {
            let mut gone: Vec<BdevId> = Vec::new();
            let acl_luns = t
                .config
                .nodes
                .iter()
                .flat_map(|n| &n.acls)
                .flat_map(|a| &a.luns);
            for l in t.config.nodes.iter().flat_map(|n| &n.luns).chain(acl_luns) {
                if self.bdevs.info(l.bdev).is_none() && !gone.contains(&l.bdev) {
                    gone.push(l.bdev);
                }
            }
            for id in gone {
                t.config.remove_bdev(id);
            }
        }
    }
}
