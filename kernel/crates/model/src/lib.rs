//! The appliance's object model: block devices, the hardware behind them and
//! the exports that serve them, with the operations the management front ends
//! share. JSON-RPC is the first front end; targetd, QMP and REST call the same
//! operations with their own parameter formats.
//!
//! Every operation validates fully before it changes anything, so a failed
//! call leaves nothing half made. Errors say what was wrong in words a client
//! can show; [`ErrorKind`] tells a front end which of its codes to use.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::boxed::Box;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use ironbay_bdev::bench::BenchSpec;
use ironbay_bdev::{
    BdevId, BdevOptions, IoStatus, MallocBdev, NullBdev, QosLimits, Registry, RegistryError, Uuid,
};
use ironbay_iscsi::config::{
    ChapPolicy, Config, ConfigError, NodeSpec, Options, PgIgMap, Portal, Secret,
};
use ironbay_iscsi::{ConnInfo, Target};
use ironbay_nbd::{Export, Exports};

/// The iSCSI engine's types, for front ends.
pub use ironbay_iscsi as iscsi;
/// The NVMe-oF engine's types, for front ends.
pub use ironbay_nvmf as nvmf;

pub mod lvol;
pub mod persist;
pub mod stacked;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request itself is wrong: a bad value, an unknown name.
    InvalidParams,
    /// The request is fine but the appliance cannot do it now or here.
    InvalidState,
    /// The code SPDK answers this failure with (negative errno values and
    /// JSON-RPC codes), for clients that match on it.
    Code(i64),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
}

impl Error {
    pub fn params(message: impl Into<String>) -> Self {
        Error {
            kind: ErrorKind::InvalidParams,
            message: message.into(),
        }
    }

    pub fn state(message: impl Into<String>) -> Self {
        Error {
            kind: ErrorKind::InvalidState,
            message: message.into(),
        }
    }
}

pub type Result<T> = core::result::Result<T, Error>;

impl From<ConfigError> for Error {
    fn from(e: ConfigError) -> Self {
        match e {
            ConfigError::Invalid(m) => Error::params(m),
            ConfigError::Busy(m) => Error::state(m),
        }
    }
}

impl From<ironbay_nvmf::config::ConfigError> for Error {
    fn from(e: ironbay_nvmf::config::ConfigError) -> Self {
        use ironbay_nvmf::config::ConfigError as E;
        match e {
            E::Invalid(m) => Error::params(m),
            E::Busy(m) => Error::state(m),
        }
    }
}

/// Hardware the model can attach and detach: the kernel's NVMe and
/// virtio-blk devices. Addresses are PCI `segment:bus:device.function`.
pub trait Devices {
    /// Exposes the namespaces of the NVMe controller at `traddr` as
    /// `{name}n{nsid}` bdevs; returns their names.
    fn nvme_attach(
        &mut self,
        bdevs: &mut Registry,
        name: &str,
        traddr: &str,
    ) -> core::result::Result<Vec<String>, String>;
    /// Removes the bdevs of controller `name` (refused while they have I/O).
    fn nvme_detach(&mut self, bdevs: &mut Registry, name: &str)
    -> core::result::Result<(), String>;
    /// (Re)starts the virtio-blk device at `traddr` as bdev `name`.
    fn virtio_attach(
        &mut self,
        bdevs: &mut Registry,
        name: &str,
        traddr: &str,
    ) -> core::result::Result<Vec<String>, String>;
    /// Stops virtio-blk bdev `name`.
    fn virtio_detach(
        &mut self,
        bdevs: &mut Registry,
        name: &str,
    ) -> core::result::Result<(), String>;
}

/// What the operations manage. The kernel owns these; tests make their own.
pub struct Model<'a> {
    pub bdevs: &'a mut Registry,
    /// NVMe and virtio controllers, where the caller has hardware.
    pub devices: Option<&'a mut dyn Devices>,
    /// NBD exports, when the NBD target runs.
    pub nbd: Option<&'a mut Exports>,
    /// The iSCSI target (its configuration and live connections), when it
    /// runs.
    pub iscsi: Option<&'a mut Target>,
    /// The NVMe-oF target (its configuration and live controllers), when it
    /// runs.
    pub nvmf: Option<&'a mut ironbay_nvmf::Target>,
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
}

/// The RAM-backed bdev kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RamKind {
    /// Stores data (`Malloc0`, ...).
    Malloc,
    /// Discards writes, reads zeroes: a target for protocol benchmarks.
    Null,
}

impl RamKind {
    /// The product name the bdev reports.
    pub fn product(self) -> &'static str {
        match self {
            RamKind::Malloc => "Malloc disk",
            RamKind::Null => "Null disk",
        }
    }
}

/// A RAM bdev to create.
#[derive(Clone, Debug)]
pub struct RamBdev {
    pub kind: RamKind,
    /// `None`: the first free `Malloc<N>` (malloc only; null needs a name).
    pub name: Option<String>,
    pub num_blocks: u64,
    pub block_size: u64,
    pub uuid: Option<Uuid>,
}

/// Bdev names in the registry and as export names.
pub const MAX_NAME: usize = 255;
/// Caps on objects a management client can create, so memory stays bounded
/// even for null bdevs, which cost no data memory.
pub const MAX_BDEVS: usize = 4096;
pub const MAX_EXPORTS: usize = 4096;

impl Model<'_> {
    pub fn find(&self, name: &str) -> Result<BdevId> {
        self.bdevs
            .find(name)
            .ok_or_else(|| Error::params(format!("bdev {name} does not exist")))
    }

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

    /// Creates a malloc or null bdev, checked the way SPDK checks it, and
    /// exports it over NBD under its own name when the NBD target runs.
    pub fn create_ram_bdev(&mut self, spec: RamBdev) -> Result<String> {
        let bs = spec.block_size;
        if !((512..=65536).contains(&bs) && bs.is_multiple_of(512)) {
            return Err(Error::params(format!(
                "`block_size` {bs} must be a multiple of 512 from 512 to 65536"
            )));
        }
        if spec.num_blocks == 0 {
            return Err(Error::params("`num_blocks` must be at least 1"));
        }
        let name = match (spec.name, spec.kind) {
            (Some(n), _) => n,
            (None, RamKind::Malloc) => (0..)
                .map(|i| format!("Malloc{i}"))
                .find(|n| self.bdevs.find(n).is_none())
                .unwrap_or_default(),
            (None, RamKind::Null) => return Err(Error::params("missing `name`")),
        };
        self.check_new_name(&name)?;
        if self.bdevs.ids().count() >= MAX_BDEVS {
            return Err(Error::state(format!("{MAX_BDEVS} bdevs exist already")));
        }
        let bytes = spec
            .num_blocks
            .checked_mul(bs)
            .ok_or_else(|| Error::params("size overflows"))?;
        let bdev: Box<dyn ironbay_bdev::BlockDevice> = match spec.kind {
            RamKind::Malloc => {
                if bytes > self.memory_budget {
                    return Err(Error::params(format!(
                        "{bytes} bytes requested, {} available for RAM bdevs",
                        self.memory_budget
                    )));
                }
                let mut m = MallocBdev::new(&name, spec.num_blocks, bs as u32);
                if let Some(u) = spec.uuid {
                    m.set_uuid(u);
                }
                Box::new(m)
            }
            RamKind::Null => {
                let mut n = NullBdev::new(&name, spec.num_blocks, bs as u32);
                if let Some(u) = spec.uuid {
                    n.set_uuid(u);
                }
                Box::new(n)
            }
        };
        let id = self
            .bdevs
            .add(bdev)
            .map_err(|e| Error::params(e.to_string()))?;
        // NBD can only advertise a power-of-two minimum block size.
        if let (Some(nbd), Some(info)) = (self.nbd.as_deref_mut(), self.bdevs.info(id))
            && info.block_size.is_power_of_two()
        {
            nbd.list
                .push(Export::new(&name, &info.product, id, info, false));
        }
        Ok(name)
    }

    /// Deletes a bdev of the given product (refused while it has I/O) and
    /// its exports.
    pub fn delete_bdev(&mut self, name: &str, kind: RamKind) -> Result<()> {
        let id = self.find(name)?;
        if self
            .bdevs
            .info(id)
            .is_some_and(|b| b.product != kind.product())
        {
            return Err(Error::params(format!("{name} is not a {}", kind.product())));
        }
        self.bdevs
            .remove(id)
            .map_err(|e| Error::state(e.to_string()))?;
        self.prune_exports();
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
            for l in t.config.nodes.iter().flat_map(|n| &n.luns) {
                if self.bdevs.info(l.bdev).is_none() && !gone.contains(&l.bdev) {
                    gone.push(l.bdev);
                }
            }
            for id in gone {
                t.config.remove_bdev(id);
            }
        }
    }

    /// Changes the size of a RAM bdev: malloc bdevs only grow (within the
    /// memory budget), null bdevs take any size. NBD exports of it offer the
    /// new size to new clients; iSCSI sessions see it on their next command.
    pub fn resize_bdev(&mut self, name: &str, kind: RamKind, num_blocks: u64) -> Result<()> {
        let id = self.find(name)?;
        let info = self
            .bdevs
            .info(id)
            .cloned()
            .ok_or_else(|| Error::params("bdev vanished"))?;
        if info.product != kind.product() {
            return Err(Error::params(format!("{name} is not a {}", kind.product())));
        }
        if num_blocks == 0 {
            return Err(Error::params("the new size must be at least one block"));
        }
        if kind == RamKind::Malloc {
            if num_blocks < info.num_blocks {
                return Err(Error::params(format!(
                    "{name} has {} blocks; malloc bdevs only grow",
                    info.num_blocks
                )));
            }
            let extra = (num_blocks - info.num_blocks).saturating_mul(info.block_size as u64);
            if extra > self.memory_budget {
                return Err(Error::params(format!(
                    "{extra} more bytes requested, {} available for RAM bdevs",
                    self.memory_budget
                )));
            }
        }
        self.bdevs.resize(id, num_blocks).map_err(|e| match e {
            RegistryError::Resize(IoStatus::NoMemory) => Error::state(e.to_string()),
            e => Error::params(e.to_string()),
        })?;
        let size = num_blocks * info.block_size as u64;
        if let Some(nbd) = self.nbd.as_deref_mut() {
            for e in nbd.list.iter_mut().filter(|e| e.bdev == id) {
                e.size = size;
            }
        }
        Ok(())
    }

    /// Block layer options; the cache can not exceed the pool.
    pub fn set_options(&mut self, o: BdevOptions) -> Result<()> {
        if o.bdev_io_pool_size == 0 || o.bdev_io_cache_size == 0 {
            return Err(Error::params("pool and cache sizes must be positive"));
        }
        if o.bdev_io_cache_size > o.bdev_io_pool_size {
            return Err(Error::params(
                "`bdev_io_cache_size` cannot exceed `bdev_io_pool_size`",
            ));
        }
        self.bdevs.options = o;
        Ok(())
    }

    /// Replaces a bdev's QoS limits (0 = none); enforced in the bdev layer.
    pub fn set_qos(&mut self, name: &str, limits: QosLimits) -> Result<()> {
        let id = self.find(name)?;
        self.bdevs
            .set_qos(id, limits)
            .map_err(|e| Error::params(e.to_string()))
    }

    fn devices(&mut self) -> Result<(&mut dyn Devices, &mut Registry)> {
        let d = self
            .devices
            .as_deref_mut()
            .ok_or_else(|| Error::state("no hardware here"))?;
        Ok((d, &mut *self.bdevs))
    }

    /// Attaches the NVMe controller at PCI address `traddr` as `name`.
    pub fn attach_nvme(&mut self, name: &str, traddr: &str) -> Result<Vec<String>> {
        let (d, bdevs) = self.devices()?;
        d.nvme_attach(bdevs, name, traddr).map_err(Error::params)
    }

    pub fn detach_nvme(&mut self, name: &str) -> Result<()> {
        let (d, bdevs) = self.devices()?;
        d.nvme_detach(bdevs, name).map_err(Error::params)?;
        self.prune_exports();
        Ok(())
    }

    /// Attaches the virtio-blk device at PCI address `traddr` as `name`.
    pub fn attach_virtio(&mut self, name: &str, traddr: &str) -> Result<Vec<String>> {
        let (d, bdevs) = self.devices()?;
        d.virtio_attach(bdevs, name, traddr).map_err(Error::params)
    }

    pub fn detach_virtio(&mut self, name: &str) -> Result<()> {
        let (d, bdevs) = self.devices()?;
        d.virtio_detach(bdevs, name).map_err(Error::params)?;
        self.prune_exports();
        Ok(())
    }

    fn nbd_exports(&mut self) -> Result<&mut Exports> {
        self.nbd
            .as_deref_mut()
            .ok_or_else(|| Error::state("the NBD target is not running"))
    }

    /// Exports `bdev` over NBD under `export` (default: the bdev's name).
    pub fn export_nbd(&mut self, bdev: &str, export: Option<&str>) -> Result<String> {
        let export = export.unwrap_or(bdev);
        if export.is_empty() || export.len() > 4096 {
            return Err(Error::params("export names are 1-4096 bytes"));
        }
        let id = self.find(bdev)?;
        let info = self
            .bdevs
            .info(id)
            .cloned()
            .ok_or_else(|| Error::params("bdev vanished"))?;
        if !info.block_size.is_power_of_two() {
            return Err(Error::params(format!(
                "{bdev}: NBD needs a power-of-two block size, not {}",
                info.block_size
            )));
        }
        let exports = self.nbd_exports()?;
        if exports.list.len() >= MAX_EXPORTS {
            return Err(Error::state(format!(
                "{MAX_EXPORTS} NBD exports exist already"
            )));
        }
        if exports.list.iter().any(|e| e.name == export) {
            return Err(Error::params(format!("NBD export {export} already exists")));
        }
        exports
            .list
            .push(Export::new(export, &info.product, id, &info, false));
        Ok(export.to_string())
    }

    pub fn unexport_nbd(&mut self, export: &str) -> Result<()> {
        let exports = self.nbd_exports()?;
        let before = exports.list.len();
        exports.list.retain(|e| e.name != export);
        if exports.list.len() == before {
            return Err(Error::params(format!("no NBD export {export}")));
        }
        Ok(())
    }

    /// (export name, bdev name) of every NBD export.
    pub fn nbd_exports_list(&self) -> Vec<(String, String)> {
        let Some(nbd) = self.nbd.as_deref() else {
            return Vec::new();
        };
        nbd.list
            .iter()
            .map(|e| {
                let bdev = self
                    .bdevs
                    .info(e.bdev)
                    .map_or_else(|| e.name.clone(), |b| b.name.clone());
                (e.name.clone(), bdev)
            })
            .collect()
    }

    fn target(&mut self) -> Result<&mut Target> {
        self.iscsi
            .as_deref_mut()
            .ok_or_else(|| Error::state("the iSCSI target is not running"))
    }

    fn iscsi_mut(&mut self) -> Result<&mut Config> {
        Ok(&mut self.target()?.config)
    }

    /// The iSCSI configuration, when the target runs.
    pub fn iscsi_config(&self) -> Option<&Config> {
        self.iscsi.as_deref().map(|t| &t.config)
    }

    /// Live iSCSI connections (none when the target does not run).
    pub fn iscsi_connections(&self) -> &[ConnInfo] {
        self.iscsi.as_deref().map_or(&[], |t| t.connections())
    }

    /// Global iSCSI options, and the discovery CHAP policy if given. SPDK
    /// takes them only before init; here sessions read them at login, so
    /// like the bdev layer options they may change at any time.
    pub fn iscsi_set_options(
        &mut self,
        options: Options,
        discovery: Option<ChapPolicy>,
    ) -> Result<()> {
        let c = self.iscsi_mut()?;
        if let Some(d) = &discovery {
            d.check()?;
        }
        c.set_options(options)?;
        if let Some(d) = discovery {
            c.set_discovery_auth(d)?;
        }
        Ok(())
    }

    pub fn iscsi_set_discovery_auth(&mut self, chap: ChapPolicy) -> Result<()> {
        Ok(self.iscsi_mut()?.set_discovery_auth(chap)?)
    }

    pub fn iscsi_create_auth_group(&mut self, tag: u32, secrets: Vec<Secret>) -> Result<()> {
        Ok(self.iscsi_mut()?.create_auth_group(tag, secrets)?)
    }

    pub fn iscsi_delete_auth_group(&mut self, tag: u32) -> Result<()> {
        Ok(self.iscsi_mut()?.delete_auth_group(tag)?)
    }

    pub fn iscsi_add_secret(&mut self, tag: u32, secret: Secret) -> Result<()> {
        Ok(self.iscsi_mut()?.add_secret(tag, secret)?)
    }

    pub fn iscsi_remove_secret(&mut self, tag: u32, user: &str) -> Result<()> {
        Ok(self.iscsi_mut()?.remove_secret(tag, user)?)
    }

    pub fn iscsi_create_portal_group(
        &mut self,
        tag: u32,
        portals: Vec<Portal>,
        private: bool,
    ) -> Result<()> {
        Ok(self
            .iscsi_mut()?
            .create_portal_group(tag, portals, private)?)
    }

    pub fn iscsi_delete_portal_group(&mut self, tag: u32) -> Result<()> {
        Ok(self.iscsi_mut()?.delete_portal_group(tag)?)
    }

    pub fn iscsi_create_initiator_group(
        &mut self,
        tag: u32,
        initiators: Vec<String>,
        netmasks: Vec<String>,
    ) -> Result<()> {
        Ok(self
            .iscsi_mut()?
            .create_initiator_group(tag, initiators, netmasks)?)
    }

    pub fn iscsi_delete_initiator_group(&mut self, tag: u32) -> Result<()> {
        Ok(self.iscsi_mut()?.delete_initiator_group(tag)?)
    }

    pub fn iscsi_add_initiators(
        &mut self,
        tag: u32,
        initiators: Vec<String>,
        netmasks: Vec<String>,
    ) -> Result<()> {
        Ok(self
            .iscsi_mut()?
            .add_initiators(tag, initiators, netmasks)?)
    }

    pub fn iscsi_remove_initiators(
        &mut self,
        tag: u32,
        initiators: &[String],
        netmasks: &[String],
    ) -> Result<()> {
        Ok(self
            .iscsi_mut()?
            .remove_initiators(tag, initiators, netmasks)?)
    }

    /// Creates a target node on existing bdevs; returns its full name.
    pub fn iscsi_create_target_node(&mut self, spec: NodeSpec) -> Result<String> {
        let t = self
            .iscsi
            .as_deref_mut()
            .ok_or_else(|| Error::state("the iSCSI target is not running"))?;
        Ok(t.config.create_target_node(spec, self.bdevs)?)
    }

    pub fn iscsi_delete_target_node(&mut self, name: &str) -> Result<()> {
        Ok(self.iscsi_mut()?.delete_target_node(name)?)
    }

    /// Adds a LUN (`id` `None`: the lowest free one); returns its id.
    pub fn iscsi_add_lun(&mut self, node: &str, bdev: &str, id: Option<u64>) -> Result<u64> {
        let t = self
            .iscsi
            .as_deref_mut()
            .ok_or_else(|| Error::state("the iSCSI target is not running"))?;
        Ok(t.config.add_lun(node, bdev, id, self.bdevs)?)
    }

    pub fn iscsi_add_pg_ig_maps(&mut self, node: &str, maps: &[PgIgMap]) -> Result<()> {
        Ok(self.iscsi_mut()?.add_pg_ig_maps(node, maps)?)
    }

    pub fn iscsi_remove_pg_ig_maps(&mut self, node: &str, maps: &[PgIgMap]) -> Result<()> {
        Ok(self.iscsi_mut()?.remove_pg_ig_maps(node, maps)?)
    }

    pub fn iscsi_set_node_auth(&mut self, node: &str, chap: ChapPolicy) -> Result<()> {
        Ok(self.iscsi_mut()?.set_node_auth(node, chap)?)
    }

    /// The NVMe-oF target, when it runs.
    pub fn nvmf_target(&self) -> Option<&ironbay_nvmf::Target> {
        self.nvmf.as_deref()
    }

    /// The NVMe-oF configuration, when the target runs.
    pub fn nvmf_config(&self) -> Option<&ironbay_nvmf::Config> {
        self.nvmf.as_deref().map(|t| &t.config)
    }

    /// Runs a configuration operation, then lets live controllers see the
    /// change (namespace events, controllers of removed hosts or deleted
    /// subsystems failing).
    fn nvmf_change<T>(
        &mut self,
        op: impl FnOnce(
            &mut ironbay_nvmf::Config,
            &Registry,
        ) -> core::result::Result<T, ironbay_nvmf::config::ConfigError>,
    ) -> Result<T> {
        let t = self
            .nvmf
            .as_deref_mut()
            .ok_or_else(|| Error::state("the NVMe-oF target is not running"))?;
        let r = op(&mut t.config, self.bdevs)?;
        t.refresh(self.bdevs);
        Ok(r)
    }

    /// Creates the TCP transport (there is one at most).
    pub fn nvmf_create_transport(
        &mut self,
        o: ironbay_nvmf::config::TransportOptions,
    ) -> Result<()> {
        self.nvmf_change(|c, _| c.create_transport(o))
    }

    /// Creates or replaces the TCP transport's options.
    pub fn nvmf_set_transport(&mut self, o: ironbay_nvmf::config::TransportOptions) -> Result<()> {
        self.nvmf_change(|c, _| c.set_transport(o))
    }

    pub fn nvmf_set_max_subsystems(&mut self, max: u32) -> Result<()> {
        self.nvmf_change(|c, _| c.set_max_subsystems(max))
    }

    pub fn nvmf_set_acceptor_poll_rate(&mut self, us: u32) -> Result<()> {
        self.nvmf_change(|c, _| {
            c.set_acceptor_poll_rate(us);
            Ok(())
        })
    }

    /// Creates a subsystem with its hosts, listeners and namespaces, all or
    /// nothing.
    pub fn nvmf_create_subsystem(&mut self, s: ironbay_nvmf::config::Subsystem) -> Result<()> {
        self.nvmf_change(|c, b| c.create_subsystem(s, b))
    }

    /// The 2018 one-shot form: creates the TCP transport too if the
    /// subsystem listens and there is none.
    pub fn nvmf_construct_subsystem(&mut self, s: ironbay_nvmf::config::Subsystem) -> Result<()> {
        self.nvmf_change(|c, b| c.construct_subsystem(s, b))
    }

    pub fn nvmf_delete_subsystem(&mut self, nqn: &str) -> Result<()> {
        self.nvmf_change(|c, _| c.delete_subsystem(nqn))
    }

    pub fn nvmf_add_listener(
        &mut self,
        nqn: &str,
        l: ironbay_nvmf::config::Listener,
    ) -> Result<()> {
        self.nvmf_change(|c, _| c.add_listener(nqn, l))
    }

    pub fn nvmf_remove_listener(&mut self, nqn: &str, traddr: &str, port: u16) -> Result<()> {
        self.nvmf_change(|c, _| c.remove_listener(nqn, traddr, port))
    }

    /// Adds a namespace (nsid 0: the lowest free one); returns its nsid.
    pub fn nvmf_add_namespace(
        &mut self,
        nqn: &str,
        ns: ironbay_nvmf::config::Namespace,
    ) -> Result<u32> {
        self.nvmf_change(|c, b| c.add_namespace(nqn, ns, b))
    }

    pub fn nvmf_remove_namespace(&mut self, nqn: &str, nsid: u32) -> Result<()> {
        self.nvmf_change(|c, _| c.remove_namespace(nqn, nsid))
    }

    pub fn nvmf_add_host(&mut self, nqn: &str, host: &str) -> Result<()> {
        self.nvmf_change(|c, _| c.add_host(nqn, host))
    }

    pub fn nvmf_remove_host(&mut self, nqn: &str, host: &str) -> Result<()> {
        self.nvmf_change(|c, _| c.remove_host(nqn, host))
    }

    pub fn nvmf_allow_any_host(&mut self, nqn: &str, allow: bool) -> Result<()> {
        self.nvmf_change(|c, _| c.set_allow_any_host(nqn, allow))
    }

    /// Ends the deferred start: the caller applies what waited for it.
    pub fn start_init(&mut self) -> Result<()> {
        if *self.initialized {
            return Err(Error::state("init already ran"));
        }
        *self.initialized = true;
        Ok(())
    }

    pub fn request_shutdown(&mut self) {
        *self.shutdown = true;
    }

    /// Asks the caller to run a benchmark on an existing bdev.
    pub fn request_bench(&mut self, spec: BenchSpec) -> Result<()> {
        self.find(&spec.bdev)?;
        // One buffer per queue slot: refuse what the heap cannot hold rather
        // than fail an allocation mid-run.
        let bytes = spec.block_size as u64 * spec.queue_depth as u64;
        if bytes > self.memory_budget {
            return Err(Error::params(format!(
                "io_size x queue_depth is {bytes} bytes, {} available",
                self.memory_budget
            )));
        }
        let slot = self
            .bench
            .as_deref_mut()
            .ok_or_else(|| Error::state("benchmarks are not offered here"))?;
        if slot.is_some() {
            return Err(Error::state("a benchmark is already running"));
        }
        *slot = Some(spec);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ram(kind: RamKind, name: Option<&str>, num_blocks: u64, block_size: u64) -> RamBdev {
        RamBdev {
            kind,
            name: name.map(String::from),
            num_blocks,
            block_size,
            uuid: None,
        }
    }

    fn with_model(budget: u64, f: impl FnOnce(&mut Model<'_>)) -> (Registry, Exports) {
        let mut reg = Registry::new();
        let mut exports = Exports::default();
        let (mut init, mut down) = (true, false);
        let mut m = Model {
            bdevs: &mut reg,
            devices: None,
            nbd: Some(&mut exports),
            iscsi: None,
            nvmf: None,
            memory_budget: budget,
            initialized: &mut init,
            shutdown: &mut down,
            bench: None,
            config_store: None,
            lvol: None,
        };
        f(&mut m);
        (reg, exports)
    }

    #[test]
    fn ram_bdevs_are_named_checked_and_exported() {
        let (reg, exports) = with_model(1 << 20, |m| {
            let malloc = ram(RamKind::Malloc, None, 128, 512);
            assert_eq!(m.create_ram_bdev(malloc.clone()).unwrap(), "Malloc0");
            assert_eq!(m.create_ram_bdev(malloc).unwrap(), "Malloc1");
            let mut null = ram(RamKind::Null, Some("Null0"), 1_000_000, 4096);
            null.uuid = Uuid::parse("8f1a2b3c-0000-4000-8000-000000000001");
            assert_eq!(m.create_ram_bdev(null).unwrap(), "Null0");
            let e = m.delete_bdev("Null0", RamKind::Malloc).unwrap_err();
            assert!(e.message.contains("not a Malloc disk"), "{e:?}");
            m.delete_bdev("Malloc1", RamKind::Malloc).unwrap();
        });
        let id = reg.find("Null0").unwrap();
        assert_eq!(
            reg.info(id).unwrap().uuid.to_string(),
            "8f1a2b3c-0000-4000-8000-000000000001"
        );
        let names: Vec<&str> = exports.list.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            ["Malloc0", "Null0"],
            "the deleted bdev's export went"
        );
    }

    #[test]
    fn bad_requests_say_why_and_change_nothing() {
        let (reg, exports) = with_model(1 << 20, |m| {
            for (spec, why) in [
                (ram(RamKind::Malloc, None, 8, 1000), "multiple of 512"),
                (ram(RamKind::Malloc, None, 0, 512), "at least 1"),
                (
                    ram(RamKind::Malloc, None, 9_007_199_254_740_993, 65536),
                    "overflows",
                ),
                (ram(RamKind::Malloc, None, 4096, 512), "available"),
                (ram(RamKind::Null, None, 8, 512), "missing `name`"),
                (ram(RamKind::Null, Some(""), 8, 512), "1-255"),
            ] {
                let e = m.create_ram_bdev(spec).unwrap_err();
                assert!(e.message.contains(why), "{e:?} lacks {why}");
                assert_eq!(e.kind, ErrorKind::InvalidParams);
            }
            m.create_ram_bdev(ram(RamKind::Null, Some("A"), 8, 512))
                .unwrap();
            let e = m
                .create_ram_bdev(ram(RamKind::Malloc, Some("A"), 8, 512))
                .unwrap_err();
            assert!(e.message.contains("already exists"));
            assert!(m.export_nbd("A", None).is_err(), "already exported");
            assert!(m.export_nbd("B", Some("b")).is_err(), "no bdev B");
            assert!(m.unexport_nbd("b").is_err());
            let e = m.attach_nvme("Nvme0", "0000:00:04.0").unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidState, "no hardware here");
            let o = m.bdevs.options;
            let mut bad = o;
            bad.bdev_io_cache_size = bad.bdev_io_pool_size + 1;
            assert!(m.set_options(bad).is_err());
            assert_eq!(m.bdevs.options, o);
            assert_eq!(m.start_init().unwrap_err().kind, ErrorKind::InvalidState);
        });
        assert_eq!(reg.ids().count(), 1);
        assert_eq!(exports.list.len(), 1);
    }

    #[test]
    fn only_power_of_two_block_sizes_are_exported_over_nbd() {
        let (_, exports) = with_model(1 << 20, |m| {
            m.create_ram_bdev(ram(RamKind::Null, Some("odd"), 8, 1536))
                .unwrap();
            let e = m.export_nbd("odd", Some("odd2")).unwrap_err();
            assert!(e.message.contains("power-of-two"), "{e:?}");
            m.create_ram_bdev(ram(RamKind::Null, Some("even"), 8, 2048))
                .unwrap();
        });
        let names: Vec<&str> = exports.list.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["even"]);
        assert!(
            exports
                .list
                .iter()
                .all(|e| e.block_sizes().0.is_power_of_two())
        );
    }

    #[test]
    fn object_counts_are_capped() {
        let (reg, exports) = with_model(0, |m| {
            for i in 0..MAX_BDEVS {
                let name = format!("N{i}");
                m.create_ram_bdev(ram(RamKind::Null, Some(&name), 1, 512))
                    .unwrap();
            }
            let e = m
                .create_ram_bdev(ram(RamKind::Null, Some("one-more"), 1, 512))
                .unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidState);
            let e = m.export_nbd("N0", Some("one-more")).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidState);
        });
        assert_eq!(reg.ids().count(), MAX_BDEVS);
        assert_eq!(exports.list.len(), MAX_EXPORTS);
    }

    #[test]
    fn exports_and_requests() {
        let mut slot = None;
        let mut reg = Registry::new();
        let mut exports = Exports::default();
        let (mut init, mut down) = (false, false);
        let mut m = Model {
            bdevs: &mut reg,
            devices: None,
            nbd: Some(&mut exports),
            iscsi: None,
            nvmf: None,
            memory_budget: 1 << 20,
            initialized: &mut init,
            shutdown: &mut down,
            bench: Some(&mut slot),
            config_store: None,
            lvol: None,
        };
        m.create_ram_bdev(ram(RamKind::Malloc, Some("M"), 64, 4096))
            .unwrap();
        assert_eq!(m.export_nbd("M", Some("scratch")).unwrap(), "scratch");
        assert_eq!(
            m.nbd_exports_list(),
            [
                ("M".to_string(), "M".to_string()),
                ("scratch".to_string(), "M".to_string())
            ]
        );
        m.unexport_nbd("scratch").unwrap();
        let huge: BenchSpec = "M:randread:32M:4096:1".parse().unwrap();
        assert!(
            m.request_bench(huge)
                .unwrap_err()
                .message
                .contains("available")
        );
        let spec: BenchSpec = "M:randread:4096:4:1".parse().unwrap();
        m.request_bench(spec.clone()).unwrap();
        assert_eq!(
            m.request_bench(spec).unwrap_err().kind,
            ErrorKind::InvalidState
        );
        m.start_init().unwrap();
        m.request_shutdown();
        assert!(init && down && slot.is_some());
    }

    fn with_iscsi(f: impl FnOnce(&mut Model<'_>)) -> (Registry, Exports, Target) {
        let mut reg = Registry::new();
        let mut exports = Exports::default();
        let mut target = Target::default();
        let (mut init, mut down) = (true, false);
        let mut m = Model {
            bdevs: &mut reg,
            devices: None,
            nbd: Some(&mut exports),
            iscsi: Some(&mut target),
            nvmf: None,
            memory_budget: 1 << 20,
            initialized: &mut init,
            shutdown: &mut down,
            bench: None,
            config_store: None,
            lvol: None,
        };
        f(&mut m);
        (reg, exports, target)
    }

    fn node(name: &str, luns: &[(&str, Option<u64>)]) -> NodeSpec {
        NodeSpec {
            name: name.into(),
            luns: luns
                .iter()
                .map(|(b, id)| ironbay_iscsi::config::LunSpec {
                    bdev_name: b.to_string(),
                    id: *id,
                    read_only: false,
                })
                .collect(),
            pg_ig_maps: alloc::vec![PgIgMap {
                pg_tag: 1,
                ig_tag: 1
            }],
            queue_depth: 16,
            ..Default::default()
        }
    }

    #[test]
    fn iscsi_nodes_follow_their_bdevs() {
        let (reg, exports, target) = with_iscsi(|m| {
            m.create_ram_bdev(ram(RamKind::Malloc, Some("M"), 64, 512))
                .unwrap();
            m.create_ram_bdev(ram(RamKind::Null, Some("N"), 64, 512))
                .unwrap();
            m.iscsi_create_portal_group(
                1,
                alloc::vec![Portal {
                    host: "127.0.0.1".into(),
                    port: 3260
                }],
                false,
            )
            .unwrap();
            m.iscsi_create_initiator_group(1, alloc::vec!["ANY".into()], alloc::vec!["ANY".into()])
                .unwrap();
            let name = m
                .iscsi_create_target_node(node("disk1", &[("M", Some(0)), ("N", None)]))
                .unwrap();
            assert_eq!(name, "iqn.2016-06.io.spdk:disk1");
            assert_eq!(m.iscsi_add_lun("disk1", "N", None).unwrap(), 2);
            let e = m
                .iscsi_create_target_node(node("disk2", &[("X", None)]))
                .unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidParams);
            assert!(e.message.contains("bdev X"), "{e:?}");
            let e = m.iscsi_delete_portal_group(1).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidState, "mapped");
            let generation = m.iscsi_config().unwrap().generation;
            m.delete_bdev("N", RamKind::Null).unwrap();
            let c = m.iscsi_config().unwrap();
            assert!(c.generation > generation);
            let luns: Vec<&str> = c.nodes[0]
                .luns
                .iter()
                .map(|l| l.bdev_name.as_str())
                .collect();
            assert_eq!(luns, ["M"], "LUNs on the deleted bdev went");
            assert!(m.iscsi_connections().is_empty());
            let mut o = c.options.clone();
            o.max_queue_depth = 8;
            let e = m
                .iscsi_set_options(o.clone(), Some(ChapPolicy::default()))
                .unwrap_err();
            assert!(e.message.contains("below the queue depth"), "{e:?}");
            o.max_queue_depth = 16;
            let bad = ChapPolicy {
                mutual: true,
                ..Default::default()
            };
            assert!(m.iscsi_set_options(o.clone(), Some(bad)).is_err());
            assert_eq!(
                m.iscsi_config().unwrap().options.max_queue_depth,
                64,
                "untouched"
            );
            let chap = ChapPolicy {
                require: true,
                group: 3,
                ..Default::default()
            };
            m.iscsi_set_options(o, Some(chap.clone())).unwrap();
            assert_eq!(m.iscsi_config().unwrap().discovery_auth, chap);
        });
        assert_eq!(reg.ids().count(), 1);
        assert_eq!(exports.list.len(), 1);
        assert_eq!(target.config.nodes.len(), 1);
        assert_eq!(target.config.options.max_queue_depth, 16);
    }

    #[test]
    fn iscsi_needs_a_running_target() {
        with_model(1 << 20, |m| {
            assert!(m.iscsi_config().is_none());
            assert!(m.iscsi_connections().is_empty());
            let e = m.iscsi_create_auth_group(1, Vec::new()).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidState);
            let e = m.iscsi_create_target_node(node("d", &[])).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidState);
        });
    }

    #[test]
    fn nvmf_namespaces_follow_their_bdevs() {
        use ironbay_nvmf::config::{Listener, Namespace, Subsystem, TransportOptions};
        let mut reg = Registry::new();
        let mut target = ironbay_nvmf::Target::new(ironbay_nvmf::Config::default());
        let (mut init, mut down) = (true, false);
        let mut m = Model {
            bdevs: &mut reg,
            devices: None,
            nbd: None,
            iscsi: None,
            nvmf: Some(&mut target),
            memory_budget: 1 << 20,
            initialized: &mut init,
            shutdown: &mut down,
            bench: None,
            config_store: None,
            lvol: None,
        };
        m.create_ram_bdev(ram(RamKind::Malloc, Some("M"), 64, 512))
            .unwrap();
        m.create_ram_bdev(ram(RamKind::Null, Some("N"), 64, 512))
            .unwrap();
        let nqn = "nqn.2016-06.io.spdk:cnode1";
        let l = Listener::new(None, "0.0.0.0", 4420).unwrap();
        let e = m.nvmf_add_listener(nqn, l.clone()).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidParams);
        m.nvmf_create_transport(TransportOptions::default())
            .unwrap();
        let e = m
            .nvmf_create_transport(TransportOptions::default())
            .unwrap_err();
        assert!(e.message.contains("already exists"), "{e:?}");
        m.nvmf_create_subsystem(Subsystem::new(nqn)).unwrap();
        m.nvmf_add_listener(nqn, l).unwrap();
        let ns = |bdev: &str| Namespace {
            nsid: 0,
            bdev_name: bdev.into(),
            nguid: None,
            eui64: None,
            uuid: None,
        };
        assert_eq!(m.nvmf_add_namespace(nqn, ns("M")).unwrap(), 1);
        assert_eq!(m.nvmf_add_namespace(nqn, ns("N")).unwrap(), 2);
        m.nvmf_set_max_subsystems(1).unwrap();
        let e = m
            .nvmf_create_subsystem(Subsystem::new("nqn.2016-06.io.spdk:cnode2"))
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidState, "limit");
        let generation = m.nvmf_config().unwrap().generation;
        m.delete_bdev("N", RamKind::Null).unwrap();
        let c = m.nvmf_config().unwrap();
        assert!(c.generation > generation);
        let left: Vec<&str> = c.subsystems[0]
            .namespaces
            .iter()
            .map(|n| n.bdev_name.as_str())
            .collect();
        assert_eq!(left, ["M"], "the namespace on the deleted bdev went");
        m.nvmf_remove_namespace(nqn, 1).unwrap();
        m.nvmf_add_host(nqn, "nqn.2016-06.io.spdk:host1").unwrap();
        m.nvmf_remove_host(nqn, "nqn.2016-06.io.spdk:host1")
            .unwrap();
        m.nvmf_allow_any_host(nqn, true).unwrap();
        m.nvmf_remove_listener(nqn, "0.0.0.0", 4420).unwrap();
        m.nvmf_set_acceptor_poll_rate(10_000).unwrap();
        m.nvmf_delete_subsystem(nqn).unwrap();
        assert!(m.nvmf_target().unwrap().config.subsystems.is_empty());
    }

    #[test]
    fn nvmf_needs_a_running_target() {
        with_model(1 << 20, |m| {
            assert!(m.nvmf_config().is_none());
            let e = m
                .nvmf_create_subsystem(ironbay_nvmf::config::Subsystem::new(
                    "nqn.2016-06.io.spdk:cnode1",
                ))
                .unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidState);
            assert!(e.message.contains("NVMe-oF target is not running"));
        });
    }

    #[test]
    fn ram_bdevs_resize() {
        let (reg, exports, _) = with_iscsi(|m| {
            m.create_ram_bdev(ram(RamKind::Malloc, Some("M"), 64, 512))
                .unwrap();
            m.create_ram_bdev(ram(RamKind::Null, Some("N"), 64, 4096))
                .unwrap();
            m.resize_bdev("M", RamKind::Malloc, 128).unwrap();
            m.resize_bdev("N", RamKind::Null, 1 << 30).unwrap();
            m.resize_bdev("N", RamKind::Null, 8).unwrap();
            for (name, kind, blocks, why) in [
                ("M", RamKind::Malloc, 64, "only grow"),
                ("M", RamKind::Malloc, 1 << 20, "available"),
                ("M", RamKind::Null, 256, "not a Null disk"),
                ("N", RamKind::Null, 0, "at least one block"),
                ("N", RamKind::Null, u64::MAX, "cannot take that size"),
                ("X", RamKind::Null, 8, "does not exist"),
            ] {
                let e = m.resize_bdev(name, kind, blocks).unwrap_err();
                assert!(e.message.contains(why), "{e:?} lacks {why}");
            }
        });
        let size = |n: &str| reg.info(reg.find(n).unwrap()).unwrap().size_bytes();
        assert_eq!((size("M"), size("N")), (128 * 512, 8 * 4096));
        let sizes: Vec<u64> = exports.list.iter().map(|e| e.size).collect();
        assert_eq!(sizes, [128 * 512, 8 * 4096], "exports offer the new size");
    }
}
