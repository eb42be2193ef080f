//! The model's side of the iSCSI target: its configuration and its live
//! connections.
//!
//! Changes go through [`Model::iscsi_configure`] to the engine's
//! [`Config`] operations, which check fully before they apply and bump
//! [`Config::generation`], through which running sessions notice. The
//! model adds only what the engine cannot know: whether the target runs,
//! and the bdevs LUNs are made from. (A module of its own name would clash
//! with the [`crate::iscsi`] re-export of the engine.)

use crate::{Error, Model, Result};
use ironbay_bdev::Registry;
use ironbay_iscsi::ConnInfo;
use ironbay_iscsi::config::{ChapPolicy, Config, ConfigError, Options};

impl Model<'_> {
    /// The iSCSI configuration, when the target runs.
    pub fn iscsi_config(&self) -> Option<&Config> {
        self.iscsi.as_deref().map(|t| &t.config)
    }

    /// Live iSCSI connections (none when the target does not run).
    pub fn iscsi_connections(&self) -> &[ConnInfo] {
        self.iscsi.as_deref().map_or(&[], |t| t.connections())
    }

    /// Runs one operation on the iSCSI configuration, with the bdevs to
    /// look LUNs up in: `m.iscsi_configure(|c, _| c.delete_auth_group(1))`.
    /// Fails with an invalid-state error when the target does not run.
    pub fn iscsi_configure<T>(
        &mut self,
        op: impl FnOnce(&mut Config, &Registry) -> core::result::Result<T, ConfigError>,
    ) -> Result<T> {
        let t = self
            .iscsi
            .as_deref_mut()
            .ok_or_else(|| Error::state("the iSCSI target is not running"))?;
        Ok(op(&mut t.config, self.bdevs)?)
    }

    /// Global iSCSI options, and the discovery CHAP policy if given, both
    /// or neither. SPDK takes them only before init; here sessions read
    /// them at login, so like the bdev layer options they may change at any
    /// time.
    pub fn iscsi_set_options(
        &mut self,
        options: Options,
        discovery: Option<ChapPolicy>,
    ) -> Result<()> {
        self.iscsi_configure(|c, _| {
            if let Some(d) = &discovery {
                d.check()?;
            }
            c.set_options(options)?;
            if let Some(d) = discovery {
                c.set_discovery_auth(d)?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::testutil::{ram, with_iscsi, with_model};
    use crate::{ErrorKind, RamKind};
    use alloc::string::ToString;
    use alloc::vec::Vec;
    use ironbay_iscsi::config::{ChapPolicy, NodeSpec, PgIgMap, Portal};

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
            let portal = Portal {
                host: "127.0.0.1".into(),
                port: 3260,
            };
            m.iscsi_configure(|c, _| c.create_portal_group(1, alloc::vec![portal], false))
                .unwrap();
            let any = || alloc::vec!["ANY".into()];
            m.iscsi_configure(|c, _| c.create_initiator_group(1, any(), any()))
                .unwrap();
            let spec = node("disk1", &[("M", Some(0)), ("N", None)]);
            let name = m
                .iscsi_configure(|c, b| c.create_target_node(spec, b))
                .unwrap();
            assert_eq!(name, "iqn.2016-06.io.spdk:disk1");
            let lun = m.iscsi_configure(|c, b| c.add_lun("disk1", "N", None, b));
            assert_eq!(lun.unwrap(), 2);
            let spec = node("disk2", &[("X", None)]);
            let e = m
                .iscsi_configure(|c, b| c.create_target_node(spec, b))
                .unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidParams);
            assert!(e.message.contains("bdev X"), "{e:?}");
            let e = m
                .iscsi_configure(|c, _| c.delete_portal_group(1))
                .unwrap_err();
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
            let e = m
                .iscsi_configure(|c, _| c.create_auth_group(1, Vec::new()))
                .unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidState);
            assert_eq!(e.message, "the iSCSI target is not running");
            let spec = node("d", &[]);
            let e = m
                .iscsi_configure(|c, b| c.create_target_node(spec, b))
                .unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidState);
        });
    }
}
