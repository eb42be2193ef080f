//! NBD exports: a bdev served under an export name. RAM bdevs are
//! exported under their own name when made; others are exported by name.

use crate::{Error, MAX_EXPORTS, Model, Result};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use ironbay_nbd::{Export, Exports};

impl Model<'_> {
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
}

#[cfg(test)]
mod tests {
    use crate::testutil::{ram, with_model};
    use crate::{ErrorKind, Model, RamKind};
    use alloc::string::ToString;
    use alloc::vec::Vec;
    use ironbay_bdev::Registry;
    use ironbay_bdev::bench::BenchSpec;
    use ironbay_nbd::Exports;

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
            targetd: None,
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
}
