//! `transaction`: dirty bitmap actions applied all together or not at all,
//! as libvirt and backup tools use it (e.g. disable the last checkpoint's
//! bitmap and add the next one at the same instant). The actions run one
//! by one; the bitmap lists they touch are copied first and put back if
//! one fails. Changes to volume stores (persistent bitmaps added or
//! removed) wait until every action succeeded, and are undone in reverse
//! if one of them fails.

use crate::block::Block;
use crate::{Args, Dispatch, QmpError};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use ironbay_bdev::BdevId;
use ironbay_bdev::dirty::DirtyBitmap;
use serde_json::{Value, json};

/// Actions a transaction takes.
const ACTIONS: &[&str] = &[
    "abort",
    "block-dirty-bitmap-add",
    "block-dirty-bitmap-remove",
    "block-dirty-bitmap-clear",
    "block-dirty-bitmap-enable",
    "block-dirty-bitmap-disable",
    "block-dirty-bitmap-merge",
];

/// QEMU's other actions: they need block jobs or image formats.
const NOT_HERE: &[&str] = &[
    "blockdev-backup",
    "blockdev-snapshot",
    "blockdev-snapshot-internal-sync",
    "blockdev-snapshot-sync",
    "drive-backup",
];

/// A persistent bitmap as its volume store records it.
#[derive(Clone, Debug)]
pub struct Spec {
    pub node: BdevId,
    pub name: String,
    pub granularity: u32,
    pub size: u64,
    pub enabled: bool,
}

/// A change to a volume store's persistent bitmaps.
#[derive(Clone, Debug)]
pub enum Durable {
    Add(Spec),
    Remove(Spec),
}

impl Durable {
    fn undo(&self) -> Durable {
        match self {
            Durable::Add(s) => Durable::Remove(s.clone()),
            Durable::Remove(s) => Durable::Add(s.clone()),
        }
    }
}

/// What a running transaction keeps to put things back.
#[derive(Debug, Default)]
pub struct Txn {
    /// Bitmap lists as they were before an action first changed them.
    saved: Vec<(BdevId, Vec<DirtyBitmap>)>,
    /// Store changes to make once every action succeeded.
    durable: Vec<Durable>,
}

impl Block<'_, '_> {
    /// Before an action changes the bitmaps of `node`: inside a
    /// transaction, keeps a copy to put back.
    pub(crate) fn save(&mut self, node: BdevId) -> Result<(), QmpError> {
        let Some(txn) = self.state.txn.as_mut() else {
            return Ok(());
        };
        if txn.saved.iter().any(|(id, _)| *id == node) {
            return Ok(());
        }
        let list = self.model.bdevs.bitmaps(node);
        let mut copy = Vec::new();
        copy.try_reserve_exact(list.len())
            .map_err(|_| no_memory())?;
        for b in list {
            copy.push(b.try_clone().ok_or_else(no_memory)?);
        }
        txn.saved.push((node, copy));
        Ok(())
    }

    /// A store change: made now, or inside a transaction once every
    /// action succeeded.
    pub(crate) fn durable(&mut self, d: Durable) -> Result<(), QmpError> {
        match self.state.txn.as_mut() {
            Some(txn) => {
                txn.durable.push(d);
                Ok(())
            }
            None => self.apply(&d),
        }
    }

    fn apply(&mut self, d: &Durable) -> Result<(), QmpError> {
        let (Durable::Add(spec) | Durable::Remove(spec)) = d;
        let lv = self.model.lvol.as_deref();
        let Some((store, vol)) = lv.and_then(|l| l.store_of(self.model.bdevs, spec.node)) else {
            return Ok(());
        };
        let name = &spec.name;
        let r = match d {
            Durable::Add(_) => {
                store.add_bitmap(vol, name, spec.granularity, spec.size, spec.enabled)
            }
            Durable::Remove(_) => store.remove_bitmap(vol, name),
        };
        r.map_err(|e| {
            let node = self
                .model
                .bdevs
                .info(spec.node)
                .map(|i| i.name.clone())
                .unwrap_or_default();
            QmpError::generic(match d {
                Durable::Add(_) => format!("Cannot store dirty bitmap '{name}' on '{node}': {e}"),
                Durable::Remove(_) => format!("Cannot remove dirty bitmap '{name}': {e}"),
            })
        })
    }

    pub(crate) fn transaction(&mut self, a: &mut Args<'_>) -> Result<Value, QmpError> {
        let actions = a.req_array("actions")?;
        if let Some(mut p) = a.opt_nested("properties")? {
            match p.opt_str("completion-mode")? {
                None | Some("individual") => {}
                Some("grouped") => {
                    return Err(QmpError::generic(
                        "Action 'block-dirty-bitmap-add' does not support Transaction \
                         property completion-mode = grouped",
                    ));
                }
                Some(o) => return Err(crate::args::bad_enum("properties.completion-mode", o)),
            }
            p.finish()?;
        }
        a.done()?;
        // Every action is read before any runs.
        let mut steps = Vec::new();
        for (k, act) in actions.iter().enumerate() {
            let Value::Object(o) = act else {
                return Err(crate::args::invalid_type(
                    &format!("actions[{k}]"),
                    "object",
                ));
            };
            let mut aa = Args::new(o);
            let kind = aa.req_str("type")?;
            let data = aa.opt_obj("data")?;
            aa.finish()?;
            if NOT_HERE.contains(&kind) {
                return Err(QmpError::generic(format!(
                    "Transaction action '{kind}' is not supported: the appliance runs no \
                     block jobs"
                )));
            }
            if !ACTIONS.contains(&kind) {
                return Err(crate::args::bad_enum(&format!("actions[{k}].type"), kind));
            }
            steps.push((kind, data));
        }
        if self.state.txn.is_some() {
            return Err(QmpError::generic(
                "A transaction cannot contain a transaction",
            ));
        }
        self.state.txn = Some(Txn::default());
        let empty = serde_json::Map::new();
        let mut result = Ok(());
        for (kind, data) in steps {
            if kind == "abort" {
                result = Err(QmpError::generic("Transaction aborted using Abort action"));
                break;
            }
            if let Err(e) = self.call(kind, data.unwrap_or(&empty)) {
                result = Err(e);
                break;
            }
        }
        let txn = self.state.txn.take().unwrap_or_default();
        if result.is_ok() {
            result = self.commit(&txn.durable);
        }
        if let Err(e) = result {
            for (node, list) in txn.saved {
                if let Some(l) = self.model.bdevs.bitmaps_mut(node) {
                    *l = list;
                }
            }
            return Err(e);
        }
        Ok(json!({}))
    }

    /// Makes the store changes in order; if one fails, undoes those made.
    fn commit(&mut self, changes: &[Durable]) -> Result<(), QmpError> {
        for (k, d) in changes.iter().enumerate() {
            if let Err(e) = self.apply(d) {
                for done in changes[..k].iter().rev() {
                    let _ = self.apply(&done.undo());
                }
                return Err(e);
            }
        }
        Ok(())
    }
}

fn no_memory() -> QmpError {
    QmpError::generic("Cannot allocate memory to keep the bitmaps for the transaction")
}
