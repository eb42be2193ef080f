//! Dirty bitmaps over QMP: `block-dirty-bitmap-*` on any node, persistent
//! ones kept by the volume store of an lvol.

use crate::block::Block;
use crate::transaction::{Durable, Spec};
use crate::{Args, QmpError};
use alloc::format;
use alloc::vec::Vec;
use ironbay_bdev::BdevId;
use ironbay_bdev::dirty::{self, DirtyBitmap};
use serde_json::{Value, json};

impl Block<'_, '_> {
    /// The node named `node`, for the bitmap commands.
    pub(crate) fn node(&self, node: &str) -> Result<BdevId, QmpError> {
        self.model
            .bdevs
            .find(node)
            .ok_or_else(|| QmpError::generic(format!("Node '{node}' not found")))
    }

    /// Index of bitmap `name` on `id`.
    pub(crate) fn bitmap(&self, id: BdevId, name: &str) -> Result<usize, QmpError> {
        self.model
            .bdevs
            .bitmaps(id)
            .iter()
            .position(|b| b.name == name)
            .ok_or_else(|| QmpError::generic(format!("Dirty bitmap '{name}' not found")))
    }

    /// Bitmap `name` on `id`, refused if its saved contents were lost
    /// (QEMU's wording).
    pub(crate) fn usable_bitmap(&self, id: BdevId, name: &str) -> Result<usize, QmpError> {
        let i = self.bitmap(id, name)?;
        if self.model.bdevs.bitmaps(id)[i].inconsistent {
            return Err(QmpError::generic(format!(
                "Bitmap '{name}' is inconsistent and cannot be used\n\
                 Try block-dirty-bitmap-remove to delete this bitmap from disk"
            )));
        }
        Ok(i)
    }

    /// Whether an NBD export shows bitmap `name` of `node`.
    pub(crate) fn bitmap_exported(&self, node: BdevId, name: &str) -> bool {
        self.model.nbd.as_deref().is_some_and(|n| {
            n.list
                .iter()
                .any(|e| e.bitmaps.iter().any(|(b, x)| *b == node && x == name))
        })
    }

    pub(crate) fn bitmap_add(&mut self, a: &mut Args<'_>) -> Result<Value, QmpError> {
        let node = a.req_str("node")?;
        let name = a.req_str("name")?;
        let granularity = a.opt_u32("granularity")?;
        let persistent = a.opt_bool("persistent")?.unwrap_or(false);
        let disabled = a.opt_bool("disabled")?.unwrap_or(false);
        a.done()?;
        let id = self.model.bdevs.find(node).ok_or_else(|| {
            QmpError::generic(format!(
                "Cannot find device='{node}' nor node-name='{node}'"
            ))
        })?;
        if name.is_empty() {
            return Err(QmpError::generic("Bitmap name cannot be empty"));
        }
        if let Some(by) = self.model.bdevs.claimed_by(id) {
            return Err(QmpError::generic(format!(
                "Node '{node}' is in use by {by}: a dirty bitmap sees only writes submitted \
                 to the node itself; track the node stacked on it instead"
            )));
        }
        if name.len() > dirty::MAX_NAME {
            return Err(QmpError::generic(format!("Bitmap name too long: {name}")));
        }
        let cluster = self.model.lvol_of(id).map(|(s, _)| s.cluster_size);
        let g = granularity.unwrap_or_else(|| dirty::default_granularity(cluster));
        if !g.is_power_of_two() || !(dirty::MIN_GRANULARITY..=dirty::MAX_GRANULARITY).contains(&g) {
            return Err(QmpError::generic(format!(
                "Granularity must be power of 2 between {} and {}",
                dirty::MIN_GRANULARITY,
                dirty::MAX_GRANULARITY
            )));
        }
        if persistent && self.model.lvol_of(id).is_none() {
            return Err(QmpError::generic(format!(
                "Cannot store dirty bitmaps on '{node}': only logical volumes keep bitmaps \
                 across reboots"
            )));
        }
        let size = self
            .model
            .bdevs
            .info(id)
            .map_or(0, ironbay_bdev::BdevInfo::size_bytes);
        let reg = &*self.model.bdevs;
        let held: u64 = reg
            .ids()
            .flat_map(|b| reg.bitmaps(b))
            .map(DirtyBitmap::bytes)
            .sum();
        if held + DirtyBitmap::heap_bytes(g, size) > dirty::MAX_TOTAL_BYTES {
            return Err(QmpError::generic(format!(
                "Cannot allocate the bitmap: dirty bitmaps may take {} MiB in all \
                 (use a coarser granularity)",
                dirty::MAX_TOTAL_BYTES >> 20
            )));
        }
        let list = self.model.bdevs.bitmaps(id);
        if list.iter().any(|b| b.name == name) {
            return Err(QmpError::generic(format!("Bitmap already exists: {name}")));
        }
        if list.len() >= dirty::MAX_PER_BDEV {
            return Err(QmpError::generic(format!(
                "Node '{node}' has {} bitmaps already",
                dirty::MAX_PER_BDEV
            )));
        }
        let mut b = DirtyBitmap::new(name, g, size)
            .ok_or_else(|| QmpError::generic("Cannot allocate memory for the bitmap"))?;
        b.enabled = !disabled;
        b.persistent = persistent;
        self.save(id)?;
        if persistent {
            // Recorded in the store's metadata before it records anything.
            self.durable(Durable::Add(Spec {
                node: id,
                name: name.into(),
                granularity: g,
                size,
                enabled: !disabled,
            }))?;
        }
        if let Some(list) = self.model.bdevs.bitmaps_mut(id) {
            list.push(b);
        }
        Ok(json!({}))
    }

    pub(crate) fn bitmap_op(&mut self, cmd: &str, node: &str, name: &str) -> Result<(), QmpError> {
        let id = self.node(node)?;
        let i = self.bitmap(id, name)?;
        if self.bitmap_exported(id, name) {
            return Err(QmpError::generic(format!(
                "Bitmap '{name}' is currently in use by another operation and cannot be used"
            )));
        }
        if cmd != "block-dirty-bitmap-remove" {
            self.usable_bitmap(id, name)?;
        }
        self.save(id)?;
        let b = &self.model.bdevs.bitmaps(id)[i];
        if b.persistent && cmd == "block-dirty-bitmap-remove" {
            let spec = Spec {
                node: id,
                name: name.into(),
                granularity: b.granularity,
                size: b.size(),
                enabled: b.enabled,
            };
            self.durable(Durable::Remove(spec))?;
        }
        let Some(list) = self.model.bdevs.bitmaps_mut(id) else {
            return Err(QmpError::generic(format!("Node '{node}' not found")));
        };
        match cmd {
            "block-dirty-bitmap-remove" => {
                list.remove(i);
            }
            "block-dirty-bitmap-clear" => list[i].clear(),
            "block-dirty-bitmap-enable" => list[i].enabled = true,
            _ => list[i].enabled = false,
        }
        Ok(())
    }

    pub(crate) fn bitmap_merge(&mut self, a: &mut Args<'_>) -> Result<Value, QmpError> {
        let node = a.req_str("node")?;
        let target = a.req_str("target")?;
        let sources = a.req_array("bitmaps")?;
        a.done()?;
        let id = self.node(node)?;
        let t = self.usable_bitmap(id, target)?;
        let mut merged: Vec<DirtyBitmap> = Vec::new();
        for (k, src) in sources.iter().enumerate() {
            let (n, b) = match src {
                Value::String(b) => (node, b.as_str()),
                Value::Object(o) => {
                    let mut sa = Args::new(o);
                    let n = sa.req_str("node")?;
                    let b = sa.req_str("name")?;
                    sa.finish()?;
                    (n, b)
                }
                _ => {
                    return Err(crate::args::invalid_type(
                        &format!("bitmaps[{k}]"),
                        "string or object",
                    ));
                }
            };
            let sid = self.node(n)?;
            let si = self.usable_bitmap(sid, b)?;
            let copy = self.model.bdevs.bitmaps(sid)[si]
                .try_clone()
                .ok_or_else(|| QmpError::generic("Cannot allocate memory for the merge"))?;
            merged.push(copy);
        }
        self.save(id)?;
        if let Some(list) = self.model.bdevs.bitmaps_mut(id) {
            for m in &merged {
                list[t].merge_from(m);
            }
        }
        Ok(json!({}))
    }
}

/// A bitmap as `query-named-block-nodes` shows it (BlockDirtyInfo).
pub(crate) fn bitmap_info(b: &DirtyBitmap, busy: bool) -> Value {
    let mut v = json!({
        "name": b.name,
        "granularity": b.granularity,
        "count": b.dirty_bytes(),
        "recording": b.enabled,
        "busy": busy,
        "persistent": b.persistent,
    });
    // QEMU shows the flag only when it is set.
    if b.inconsistent
        && let Value::Object(o) = &mut v
    {
        o.insert("inconsistent".into(), Value::Bool(true));
    }
    v
}
