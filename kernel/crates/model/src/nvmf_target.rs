//! The model's side of the NVMe-oF target: its configuration and its live
//! controllers.
//!
//! Changes go through [`Model::nvmf_configure`] to the engine's
//! [`Config`] operations, which check fully before they apply; the target
//! then refreshes its live controllers. (A module of its own name would
//! clash with the [`crate::nvmf`] re-export of the engine.)

use crate::{Error, Model, Result};
use ironbay_bdev::Registry;
use ironbay_nvmf::config::ConfigError;
use ironbay_nvmf::{Config, Target};

impl Model<'_> {
    /// The NVMe-oF target, when it runs.
    pub fn nvmf_target(&self) -> Option<&Target> {
        self.nvmf.as_deref()
    }

    /// The NVMe-oF configuration, when the target runs.
    pub fn nvmf_config(&self) -> Option<&Config> {
        self.nvmf.as_deref().map(|t| &t.config)
    }

    /// Runs one operation on the NVMe-oF configuration, with the bdevs to
    /// look namespaces up in, then lets live controllers see the change
    /// (namespace events, controllers of removed hosts or deleted
    /// subsystems failing): `m.nvmf_configure(|c, _| c.add_host(nqn, host))`.
    /// Fails with an invalid-state error when the target does not run.
    pub fn nvmf_configure<T>(
        &mut self,
        op: impl FnOnce(&mut Config, &Registry) -> core::result::Result<T, ConfigError>,
    ) -> Result<T> {
        let t = self
            .nvmf
            .as_deref_mut()
            .ok_or_else(|| Error::state("the NVMe-oF target is not running"))?;
        let r = op(&mut t.config, self.bdevs)?;
        t.refresh(self.bdevs);
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use crate::testutil::{ram, with_model};
    use crate::{ErrorKind, Model, RamKind};
    use ironbay_bdev::Registry;

    #[test]
    fn nvmf_namespaces_follow_their_bdevs() {
        use ironbay_nvmf::Config;
        use ironbay_nvmf::config::{Listener, Namespace, Subsystem};
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
            targetd: None,
        };
        m.create_ram_bdev(ram(RamKind::Malloc, Some("M"), 64, 512))
            .unwrap();
        m.create_ram_bdev(ram(RamKind::Null, Some("N"), 64, 512))
            .unwrap();
        let nqn = "nqn.2016-06.io.spdk:cnode1";
        let l = Listener::new(None, "0.0.0.0", 4420).unwrap();
        let e = m
            .nvmf_configure(|c, _| c.add_listener(nqn, l.clone()))
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidParams);
        let transport = |c: &mut Config, _: &Registry| c.create_transport(Default::default());
        m.nvmf_configure(transport).unwrap();
        let e = m.nvmf_configure(transport).unwrap_err();
        assert!(e.message.contains("already exists"), "{e:?}");
        m.nvmf_configure(|c, b| c.create_subsystem(Subsystem::new(nqn), b))
            .unwrap();
        m.nvmf_configure(|c, _| c.add_listener(nqn, l)).unwrap();
        let ns = |bdev: &str| Namespace {
            nsid: 0,
            bdev_name: bdev.into(),
            nguid: None,
            eui64: None,
            uuid: None,
        };
        let add =
            |m: &mut Model<'_>, bdev| m.nvmf_configure(|c, b| c.add_namespace(nqn, ns(bdev), b));
        assert_eq!(add(&mut m, "M").unwrap(), 1);
        assert_eq!(add(&mut m, "N").unwrap(), 2);
        m.nvmf_configure(|c, _| c.set_max_subsystems(1)).unwrap();
        let other = Subsystem::new("nqn.2016-06.io.spdk:cnode2");
        let e = m
            .nvmf_configure(|c, b| c.create_subsystem(other, b))
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
        let host = "nqn.2016-06.io.spdk:host1";
        m.nvmf_configure(|c, _| c.remove_namespace(nqn, 1)).unwrap();
        m.nvmf_configure(|c, _| c.add_host(nqn, host)).unwrap();
        m.nvmf_configure(|c, _| c.remove_host(nqn, host)).unwrap();
        m.nvmf_configure(|c, _| c.set_allow_any_host(nqn, true))
            .unwrap();
        m.nvmf_configure(|c, _| c.remove_listener(nqn, "0.0.0.0", 4420))
            .unwrap();
        m.nvmf_configure(|c, _| {
            c.set_acceptor_poll_rate(10_000);
            Ok(())
        })
        .unwrap();
        m.nvmf_configure(|c, _| c.delete_subsystem(nqn)).unwrap();
        assert!(m.nvmf_target().unwrap().config.subsystems.is_empty());
    }

    #[test]
    fn nvmf_needs_a_running_target() {
        with_model(1 << 20, |m| {
            assert!(m.nvmf_config().is_none());
            let s = ironbay_nvmf::config::Subsystem::new("nqn.2016-06.io.spdk:cnode1");
            let e = m
                .nvmf_configure(|c, b| c.create_subsystem(s, b))
                .unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidState);
            assert!(e.message.contains("NVMe-oF target is not running"));
        });
    }
}
