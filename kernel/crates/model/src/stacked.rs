//! Stacked bdevs (pass-through, error injection), deleting any deletable
//! bdev by name, the seed-era IOPS limit, and the NVMe module's settings.
//!
//! A stacked bdev claims its base through the registry: the base stays
//! listed (claimed), refuses everyone else's I/O and cannot be deleted until
//! the stacked bdev is. Bases serving iSCSI LUNs or NVMe-oF namespaces are
//! refused (their hosts would start seeing errors); NBD exports of the base
//! go, as they could no longer do I/O, and the stacked bdev is exported over
//! NBD under its own name as RAM bdevs are.

use crate::{Error, Model, RamKind, Result};
use alloc::format;
use alloc::string::{String, ToString};
use ironbay_bdev::error::{ERROR_PRODUCT, ErrorBdev, Injection, error_bdev_name};
use ironbay_bdev::passthru::PASSTHRU_PRODUCT;
use ironbay_bdev::{
    BdevId, BlockDevice, IoType, NvmeHotplug, NvmeOptions, PassthruBdev, QosLimits, Uuid,
};
use ironbay_nbd::Export;

/// What a stacked bdev is, for listings and saved configurations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stacked {
    Passthru { base: String },
    Error { base: String },
}

impl Model<'_> {
    /// Checks that `base` may be claimed by a new bdev `name`.
    pub(crate) fn claimable(&self, base: &str, name: &str) -> Result<BdevId> {
        let id = self.find(base)?;
        if let Some(by) = self.bdevs.claimed_by(id) {
            return Err(Error::state(format!(
                "bdev {base} is already claimed by {by}"
            )));
        }
        self.check_new_name(name)?;
        if self.bdevs.ids().count() >= crate::MAX_BDEVS {
            return Err(Error::state(format!(
                "{} bdevs exist already",
                crate::MAX_BDEVS
            )));
        }
        if let Some(t) = self.iscsi.as_deref()
            && let Some(n) = t
                .config
                .nodes
                .iter()
                .find(|n| n.luns.iter().any(|l| l.bdev == id))
        {
            return Err(Error::state(format!(
                "bdev {base} is a LUN of iSCSI target {}",
                n.name
            )));
        }
        if let Some(t) = self.nvmf.as_deref()
            && let Some(s) = t
                .config
                .subsystems
                .iter()
                .find(|s| s.namespaces.iter().any(|ns| ns.bdev_name == base))
        {
            return Err(Error::state(format!(
                "bdev {base} is a namespace of NVMe-oF subsystem {}",
                s.nqn
            )));
        }
        if self.bdevs.in_flight(id) > 0 {
            return Err(Error::state(format!("bdev {base} has I/O in flight")));
        }
        Ok(id)
    }

    /// Claims `base` for `name`, registers what `make` builds on it and
    /// moves NBD exports of the base to it.
    fn stack(
        &mut self,
        base: BdevId,
        name: &str,
        make: impl FnOnce(ironbay_bdev::SharedBdev) -> alloc::boxed::Box<dyn BlockDevice>,
    ) -> Result<()> {
        let handle = self
            .bdevs
            .claim(base, name)
            .map_err(|e| Error::state(e.to_string()))?;
        let dev = make(handle.clone());
        let id = match self.bdevs.add(dev) {
            Ok(id) => id,
            Err(e) => {
                // The device and its handle are gone with `dev`.
                let _ = self.bdevs.release(base, handle);
                return Err(Error::params(e.to_string()));
            }
        };
        drop(handle);
        if let (Some(nbd), Some(info)) = (self.nbd.as_deref_mut(), self.bdevs.info(id)) {
            nbd.list.retain(|e| e.bdev != base);
            if info.block_size.is_power_of_two() && !nbd.list.iter().any(|e| e.name == name) {
                nbd.list
                    .push(Export::new(name, &info.product, id, info, false));
            }
        }
        Ok(())
    }

    /// SPDK's `bdev_passthru_create`: `name` over `base`, which it claims.
    pub fn create_passthru(
        &mut self,
        base: &str,
        name: &str,
        uuid: Option<Uuid>,
    ) -> Result<String> {
        let base_id = self.claimable(base, name)?;
        self.stack(base_id, name, |h| {
            alloc::boxed::Box::new(PassthruBdev::new(name, uuid, h, base_id))
        })?;
        Ok(name.to_string())
    }

    /// SPDK's `bdev_error_create`: `EE_<base>` over `base`, which it
    /// claims. Returns the new name.
    pub fn create_error_bdev(&mut self, base: &str, uuid: Option<Uuid>) -> Result<String> {
        let name = error_bdev_name(base);
        let base_id = self.claimable(base, &name)?;
        self.stack(base_id, &name, |h| {
            alloc::boxed::Box::new(ErrorBdev::new(base, uuid, h, base_id))
        })?;
        Ok(name)
    }

    /// What a stacked bdev sits on, or `None` for other bdevs: its
    /// product says which kind it is, and its base is the bdev it claimed.
    pub fn stacked(&self, id: BdevId) -> Option<Stacked> {
        let info = self.bdevs.info(id)?;
        let kind = match info.product.as_str() {
            PASSTHRU_PRODUCT => true,
            ERROR_PRODUCT => false,
            _ => return None,
        };
        let base = self
            .bdevs
            .ids()
            .find(|&b| self.bdevs.claimed_by(b) == Some(info.name.as_str()))?;
        let base = self.bdevs.info(base)?.name.clone();
        Some(if kind {
            Stacked::Passthru { base }
        } else {
            Stacked::Error { base }
        })
    }

    /// Deletes a stacked bdev of the given product and gives its base back.
    fn unstack(&mut self, name: &str, product: &str) -> Result<()> {
        let id = self.find(name)?;
        if self.bdevs.info(id).is_none_or(|i| i.product != product) {
            return Err(Error::params(format!("{name} is not a {product} bdev")));
        }
        if let Some(by) = self.bdevs.claimed_by(id) {
            return Err(Error::state(format!("bdev {name} is claimed by {by}")));
        }
        let parts = self
            .bdevs
            .with_device(id, |p: &mut PassthruBdev| {
                (p.forward().base_id(), p.forward().base_handle())
            })
            .or_else(|| {
                self.bdevs.with_device(id, |e: &mut ErrorBdev| {
                    (e.forward().base_id(), e.forward().base_handle())
                })
            });
        let Some((base, handle)) = parts else {
            return Err(Error::params(format!("{name} is not a {product} bdev")));
        };
        match self.bdevs.remove(id) {
            Ok(dev) => drop(dev),
            Err(e) => return Err(Error::state(format!("{name}: {e}"))),
        }
        self.bdevs
            .release(base, handle)
            .map_err(|e| Error::state(e.to_string()))?;
        self.prune_exports();
        Ok(())
    }

    pub fn delete_passthru(&mut self, name: &str) -> Result<()> {
        self.unstack(name, PASSTHRU_PRODUCT)
    }

    pub fn delete_error_bdev(&mut self, name: &str) -> Result<()> {
        self.unstack(name, ERROR_PRODUCT)
    }

    /// Runs `f` on error bdev `name`.
    fn error_bdev<R>(&mut self, name: &str, f: impl FnOnce(&mut ErrorBdev) -> R) -> Result<R> {
        let id = self.find(name)?;
        self.bdevs
            .with_device(id, f)
            .ok_or_else(|| Error::params(format!("{name} is not an error bdev")))
    }

    /// Sets an injection on error bdev `name` for one I/O type (`None`:
    /// all of them).
    pub fn error_inject(
        &mut self,
        name: &str,
        io_type: Option<IoType>,
        injection: Injection,
    ) -> Result<()> {
        self.error_bdev(name, |e| e.inject(io_type, injection))
    }

    /// Stops every injection on error bdev `name`.
    pub fn error_clear(&mut self, name: &str) -> Result<()> {
        self.error_bdev(name, ErrorBdev::clear)
    }

    /// Has error bdev `name` submit the requests it holds again.
    pub fn error_resume_pending(&mut self, name: &str) -> Result<()> {
        self.error_bdev(name, ErrorBdev::resume_pending)
    }

    /// SPDK's seed-era `delete_bdev`: deletes a RAM, pass-through or error
    /// bdev by name. Claimed bdevs are refused, naming who claimed them;
    /// hardware bdevs go with their controller.
    pub fn delete_any_bdev(&mut self, name: &str) -> Result<()> {
        let id = self.find(name)?;
        if let Some(by) = self.bdevs.claimed_by(id) {
            return Err(Error::state(format!("bdev {name} is claimed by {by}")));
        }
        let product = self
            .bdevs
            .info(id)
            .map(|i| i.product.clone())
            .unwrap_or_default();
        match product.as_str() {
            p if p == RamKind::Malloc.product() => self.delete_bdev(name, RamKind::Malloc),
            p if p == RamKind::Null.product() => self.delete_bdev(name, RamKind::Null),
            PASSTHRU_PRODUCT => self.delete_passthru(name),
            ERROR_PRODUCT => self.delete_error_bdev(name),
            other => Err(Error::params(format!(
                "bdev {name} ({other}) cannot be deleted by name: detach its controller \
                 (bdev_nvme_detach_controller, bdev_virtio_detach_controller)"
            ))),
        }
    }

    /// The seed's `set_bdev_qos_limit_iops`: the IOPS limit alone, the
    /// bandwidth limits as they were.
    pub fn set_qos_iops(&mut self, name: &str, ios_per_sec: u64) -> Result<()> {
        let id = self.find(name)?;
        let limits = QosLimits {
            ios_per_sec,
            ..self.bdevs.qos(id)
        };
        self.set_qos(name, limits)
    }

    /// Validates and keeps the NVMe module's options. The NVMe driver does
    /// not act on them (see [`ironbay_bdev::NvmeSettings`]); they are kept
    /// for the saved configuration.
    pub fn nvme_set_options(&mut self, o: NvmeOptions) -> Result<()> {
        const MAX_POLL_US: u64 = 10_000_000;
        for (key, v) in [
            ("nvme_adminq_poll_period_us", o.nvme_adminq_poll_period_us),
            ("nvme_ioq_poll_period_us", o.nvme_ioq_poll_period_us),
        ] {
            if v > MAX_POLL_US {
                return Err(Error::params(format!(
                    "`{key}` {v} must be at most {MAX_POLL_US}"
                )));
            }
        }
        if o.nvme_adminq_poll_period_us == 0 {
            return Err(Error::params(
                "`nvme_adminq_poll_period_us` must be positive",
            ));
        }
        if o.transport_retry_count > 255 {
            return Err(Error::params("`transport_retry_count` must be at most 255"));
        }
        if o.bdev_retry_count < -1 {
            return Err(Error::params(
                "`bdev_retry_count` must be -1 (for ever) or more",
            ));
        }
        if o.timeout_admin_us != 0 && o.timeout_us == 0 {
            return Err(Error::params(
                "`timeout_admin_us` needs `timeout_us` set as well",
            ));
        }
        self.bdevs.nvme.options = o;
        Ok(())
    }

    /// SPDK's hot-plug switch; `period_us` 0 or absent: the default.
    /// Kept for the configuration only: PCIe devices are found at boot.
    pub fn nvme_set_hotplug(&mut self, enabled: bool, period_us: Option<u64>) -> Result<()> {
        let period = match period_us {
            None | Some(0) => NvmeHotplug::DEFAULT_PERIOD_US,
            Some(p) if p > NvmeHotplug::MAX_PERIOD_US => {
                return Err(Error::params(format!(
                    "`period_us` {p} must be at most {}",
                    NvmeHotplug::MAX_PERIOD_US
                )));
            }
            Some(p) => p,
        };
        self.bdevs.nvme.hotplug = NvmeHotplug {
            enabled,
            period_us: period,
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::{ErrorKind, Model, RamBdev, RamKind};
    use alloc::vec::Vec;
    use ironbay_bdev::error::{Injected, Injection};
    use ironbay_bdev::{IoType, Registry};
    use ironbay_nbd::Exports;

    fn with_model(f: impl FnOnce(&mut Model<'_>)) -> (Registry, Exports) {
        let mut reg = Registry::new();
        let mut exports = Exports::default();
        let (mut init, mut down) = (true, false);
        let mut m = Model {
            bdevs: &mut reg,
            devices: None,
            nbd: Some(&mut exports),
            iscsi: None,
            nvmf: None,
            memory_budget: 1 << 20,
            initialized: &mut init,
            shutdown: &mut down,
            bench: None,
            config_store: None,
            lvol: None,
            targetd: None,
        };
        f(&mut m);
        (reg, exports)
    }

    fn malloc(m: &mut Model<'_>, name: &str) {
        m.create_ram_bdev(RamBdev {
            kind: RamKind::Malloc,
            name: Some(name.into()),
            num_blocks: 64,
            block_size: 512,
            uuid: None,
        })
        .unwrap();
    }

    #[test]
    fn passthru_and_error_bdevs_claim_and_give_back_their_bases() {
        let (reg, exports) = with_model(|m| {
            malloc(m, "M0");
            assert_eq!(m.create_passthru("M0", "PT0", None).unwrap(), "PT0");
            let base = m.find("M0").unwrap();
            assert_eq!(m.bdevs.claimed_by(base), Some("PT0"));
            let e = m.create_error_bdev("M0", None).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidState);
            assert!(e.message.contains("claimed by PT0"), "{e:?}");
            // Stacks stack: an error bdev over the pass-through.
            assert_eq!(m.create_error_bdev("PT0", None).unwrap(), "EE_PT0");
            let pt = m.find("PT0").unwrap();
            assert_eq!(
                m.stacked(pt),
                Some(super::Stacked::Passthru { base: "M0".into() })
            );
            let e = m.delete_any_bdev("PT0").unwrap_err();
            assert!(e.message.contains("claimed by EE_PT0"), "{e:?}");
            let e = m.delete_any_bdev("M0").unwrap_err();
            assert!(e.message.contains("claimed by PT0"), "{e:?}");
            let e = m.delete_passthru("EE_PT0").unwrap_err();
            assert!(e.message.contains("not a passthru"), "{e:?}");
            let inj = Injection {
                error: Injected::Failure,
                num: 1,
                queue_depth: 0,
            };
            m.error_inject("EE_PT0", Some(IoType::Read), inj).unwrap();
            let e = m.error_inject("PT0", None, inj).unwrap_err();
            assert!(e.message.contains("not an error bdev"), "{e:?}");
            m.error_clear("EE_PT0").unwrap();
            m.delete_any_bdev("EE_PT0").unwrap();
            m.delete_passthru("PT0").unwrap();
            assert_eq!(m.bdevs.claimed_by(base), None);
            m.create_error_bdev("M0", None).unwrap();
            m.delete_error_bdev("EE_M0").unwrap();
            m.delete_any_bdev("M0").unwrap();
        });
        assert_eq!(reg.ids().count(), 0);
        assert!(exports.list.is_empty());
    }

    #[test]
    fn nbd_exports_move_to_the_stacked_bdev() {
        let (_, exports) = with_model(|m| {
            malloc(m, "M0");
            m.create_passthru("M0", "PT0", None).unwrap();
        });
        let names: Vec<&str> = exports.list.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["PT0"]);
    }

    #[test]
    fn bad_requests_change_nothing() {
        let (reg, _) = with_model(|m| {
            malloc(m, "M0");
            for (base, name, why) in [
                ("X", "P", "does not exist"),
                ("M0", "M0", "already exists"),
                ("M0", "", "1-255"),
            ] {
                let e = m.create_passthru(base, name, None).unwrap_err();
                assert!(e.message.contains(why), "{e:?} lacks {why}");
            }
            assert!(m.delete_passthru("M0").is_err());
            assert!(m.delete_error_bdev("nope").is_err());
            assert_eq!(m.bdevs.claimed_by(m.find("M0").unwrap()), None);
        });
        assert_eq!(reg.ids().count(), 1);
    }

    #[test]
    fn iops_limit_keeps_the_bandwidth_limits() {
        with_model(|m| {
            malloc(m, "M0");
            let id = m.find("M0").unwrap();
            let mut l = m.bdevs.qos(id);
            l.bytes_per_sec = 5_000_000;
            m.set_qos("M0", l).unwrap();
            m.set_qos_iops("M0", 2000).unwrap();
            let l = m.bdevs.qos(id);
            assert_eq!((l.ios_per_sec, l.bytes_per_sec), (2000, 5_000_000));
            assert!(m.set_qos_iops("X", 1).is_err());
        });
    }

    #[test]
    fn nvme_settings_are_checked_and_kept() {
        let (reg, _) = with_model(|m| {
            let mut o = m.bdevs.nvme.options;
            o.timeout_us = 10_000_000;
            o.transport_retry_count = 5;
            m.nvme_set_options(o).unwrap();
            for (change, why) in [
                (
                    (|o: &mut ironbay_bdev::NvmeOptions| o.transport_retry_count = 256)
                        as fn(&mut _),
                    "at most 255",
                ),
                (|o| o.nvme_adminq_poll_period_us = 0, "positive"),
                (|o| o.nvme_ioq_poll_period_us = 10_000_001, "at most"),
                (|o| o.bdev_retry_count = -2, "-1"),
                (
                    |o| {
                        o.timeout_us = 0;
                        o.timeout_admin_us = 5
                    },
                    "needs `timeout_us`",
                ),
            ] {
                let mut bad = o;
                change(&mut bad);
                let e = m.nvme_set_options(bad).unwrap_err();
                assert!(e.message.contains(why), "{e:?} lacks {why}");
            }
            m.nvme_set_hotplug(true, Some(0)).unwrap();
            let e = m.nvme_set_hotplug(false, Some(10_000_001)).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidParams);
        });
        assert_eq!(reg.nvme.options.transport_retry_count, 5);
        assert!(reg.nvme.hotplug.enabled);
        assert_eq!(reg.nvme.hotplug.period_us, 100_000);
    }
}
