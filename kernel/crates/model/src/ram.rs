//! RAM-backed bdevs (malloc and null): create, delete, resize, and the
//! block layer's options and per-bdev QoS limits.

use crate::{Error, MAX_BDEVS, Model, Result};
use alloc::boxed::Box;
use alloc::format;
use alloc::string::{String, ToString};
use ironbay_bdev::{
    BdevOptions, IoStatus, MallocBdev, NullBdev, QosLimits, RamStore, RegistryError, Uuid,
};
use ironbay_nbd::Export;

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

impl Model<'_> {
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
        spec.num_blocks
            .checked_mul(bs)
            .ok_or_else(|| Error::params("size overflows"))?;
        let bdev: Box<dyn ironbay_bdev::BlockDevice> = match spec.kind {
            RamKind::Malloc => {
                let uuid = spec
                    .uuid
                    .unwrap_or_else(|| Uuid::from_name(&[b"malloc", name.as_bytes()]));
                Box::new(self.new_ram_disk(
                    &name,
                    RamKind::Malloc.product(),
                    uuid,
                    spec.num_blocks,
                    bs,
                )?)
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

    /// A RAM disk whose pages come from the data pool on first write. Disks
    /// may together be larger than the pool (as RapidDisk's are): a write
    /// that finds no free page fails with "no space". Only its page tables
    /// must fit the heap budget.
    pub(crate) fn new_ram_disk(
        &mut self,
        name: &str,
        product: &str,
        uuid: Uuid,
        num_blocks: u64,
        block_size: u64,
    ) -> Result<MallocBdev> {
        let bytes = num_blocks
            .checked_mul(block_size)
            .ok_or_else(|| Error::params("size overflows"))?;
        self.check_ram_tables(bytes, block_size)?;
        let pool = self.bdevs.page_pool();
        MallocBdev::with_pool(name, product, uuid, num_blocks, block_size as u32, pool)
            .map_err(|e| Error::state(format!("cannot create {name}: {e}")))
    }

    /// Refuses sizes whose page tables the heap cannot hold.
    pub(crate) fn check_ram_tables(&self, bytes: u64, block_size: u64) -> Result<()> {
        let tables = RamStore::table_bytes(bytes, block_size as u32);
        if tables > self.memory_budget {
            return Err(Error::params(format!(
                "{bytes} bytes need {tables} bytes of page tables, {} available",
                self.memory_budget
            )));
        }
        Ok(())
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
            self.check_ram_tables(extra, info.block_size as u64)?;
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
}

#[cfg(test)]
mod tests {
    use crate::testutil::{ram, with_iscsi, with_model};
    use crate::{ErrorKind, MAX_BDEVS, MAX_EXPORTS, RamKind};
    use alloc::format;
    use alloc::string::ToString;
    use alloc::vec::Vec;
    use ironbay_bdev::Uuid;

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
                (ram(RamKind::Malloc, None, 1 << 21, 512), "page tables"),
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
                ("M", RamKind::Malloc, 1 << 22, "page tables"),
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
