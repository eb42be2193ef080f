//! What the model's unit tests share: a model over fresh parts.

use crate::{Model, RamBdev, RamKind};
use alloc::string::String;
use ironbay_bdev::{HeapPages, Registry};
use ironbay_iscsi::Target;
use ironbay_nbd::Exports;

pub(crate) fn ram(kind: RamKind, name: Option<&str>, num_blocks: u64, block_size: u64) -> RamBdev {
    RamBdev {
        kind,
        name: name.map(String::from),
        num_blocks,
        block_size,
        uuid: None,
    }
}

pub(crate) fn with_model(budget: u64, f: impl FnOnce(&mut Model<'_>)) -> (Registry, Exports) {
    let mut reg = Registry::new();
    reg.set_page_pool(HeapPages::limited(budget / 4096));
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
        targetd: None,
    };
    f(&mut m);
    (reg, exports)
}

pub(crate) fn with_iscsi(f: impl FnOnce(&mut Model<'_>)) -> (Registry, Exports, Target) {
    let mut reg = Registry::new();
    reg.set_page_pool(HeapPages::limited(256));
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
        targetd: None,
    };
    f(&mut m);
    (reg, exports, target)
}
