//! Hardware behind bdevs: the caller's NVMe and virtio-blk devices,
//! attached and detached by PCI address.

use crate::{Error, Model, Result};
use alloc::string::String;
use alloc::vec::Vec;
use ironbay_bdev::Registry;

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
    /// The physical disks (NVMe namespaces, virtio-blk) with what the
    /// devices say of themselves.
    fn disks(&self, _bdevs: &Registry) -> Vec<crate::rapiddisk::Disk> {
        Vec::new()
    }
    /// (total, free) bytes of RAM.
    fn memory(&self) -> (u64, u64) {
        (0, 0)
    }
}

impl Model<'_> {
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
        let names = d.nvme_attach(bdevs, name, traddr).map_err(Error::params)?;
        self.taste_new();
        Ok(names)
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
        let names = d
            .virtio_attach(bdevs, name, traddr)
            .map_err(Error::params)?;
        self.taste_new();
        Ok(names)
    }

    /// Volume stores on newly attached disks come back by themselves, as
    /// at boot (SPDK's examine).
    fn taste_new(&mut self) {
        if let Some(lv) = self.lvol.as_deref_mut() {
            let _ = lv.taste(self.bdevs);
        }
    }

    pub fn detach_virtio(&mut self, name: &str) -> Result<()> {
        let (d, bdevs) = self.devices()?;
        d.virtio_detach(bdevs, name).map_err(Error::params)?;
        self.prune_exports();
        Ok(())
    }
}
