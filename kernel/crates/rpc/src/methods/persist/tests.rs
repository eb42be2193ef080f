//! The config store through the method table: choose a bdev, save on
//! change, "reboot" onto a fresh object model, replay, and compare.

use super::save_if_changed;
use crate::methods::call;
use alloc::string::String;
use alloc::vec::Vec;
use ironbay_bdev::{BlockDevice, MallocBdev, Registry};
use ironbay_model::Model;
use ironbay_model::persist::ConfigStore;
use ironbay_nbd::{Export, Exports};
use serde_json::{Map, Value, json};

fn clock() -> u64 {
    0
}

/// A disk that keeps data but is not a RAM bdev the config recreates
/// (as NVMe and virtio disks are not).
struct TestDisk {
    ram: MallocBdev,
    info: ironbay_bdev::BdevInfo,
}

fn test_disk(name: &str, blocks: u64, block_size: u32) -> Box<dyn BlockDevice> {
    let ram = MallocBdev::new(name, blocks, block_size);
    let mut info = ram.info().clone();
    info.product = "Test disk".into();
    Box::new(TestDisk { ram, info })
}

impl BlockDevice for TestDisk {
    fn info(&self) -> &ironbay_bdev::BdevInfo {
        &self.info
    }
    fn submit(
        &mut self,
        req: ironbay_bdev::IoRequest,
        now_us: u64,
    ) -> Result<(), ironbay_bdev::IoRequest> {
        self.ram.submit(req, now_us)
    }
    fn poll(&mut self, now_us: u64, out: &mut Vec<ironbay_bdev::IoCompletion>) -> usize {
        self.ram.poll(now_us, out)
    }
    fn in_flight(&self) -> usize {
        self.ram.in_flight()
    }
}

/// One appliance's state.
struct World {
    reg: Registry,
    nbd: Exports,
    iscsi: ironbay_model::iscsi::Target,
    nvmf: ironbay_model::nvmf::Target,
    store: ConfigStore,
    init: bool,
    down: bool,
}

impl World {
    /// An appliance with `disk` (the config disk) attached and exported
    /// over NBD, as the kernel does with every bdev.
    fn boot(disk: Box<dyn BlockDevice>) -> Self {
        let mut reg = Registry::new();
        let id = reg.add(disk).unwrap();
        let info = reg.info(id).unwrap().clone();
        let mut nbd = Exports::default();
        nbd.list
            .push(Export::new(&info.name, &info.product, id, &info, false));
        World {
            reg,
            nbd,
            iscsi: Default::default(),
            nvmf: Default::default(),
            store: ConfigStore::new(clock),
            init: true,
            down: false,
        }
    }

    fn model(&mut self) -> Model<'_> {
        Model {
            bdevs: &mut self.reg,
            devices: None,
            nbd: Some(&mut self.nbd),
            iscsi: Some(&mut self.iscsi),
            nvmf: Some(&mut self.nvmf),
            memory_budget: 1 << 30,
            initialized: &mut self.init,
            shutdown: &mut self.down,
            bench: None,
            config_store: Some(&mut self.store),
            lvol: None,
            targetd: None,
        }
    }

    fn call(&mut self, method: &str, params: Value) -> Result<Value, String> {
        let p: Map<String, Value> = match params {
            Value::Object(o) => o,
            _ => Map::new(),
        };
        call(&mut self.model(), method, &p).map_err(|e| e.message)
    }

    fn ok(&mut self, method: &str, params: Value) -> Value {
        self.call(method, params)
            .unwrap_or_else(|e| panic!("{method}: {e}"))
    }

    fn saved(&mut self) -> Option<u64> {
        save_if_changed(&mut self.model()).unwrap()
    }
}

fn configure(w: &mut World) {
    w.ok(
        "bdev_malloc_create",
        json!({"name": "Malloc1", "num_blocks": 2048, "block_size": 512}),
    );
    w.ok(
        "iscsi_create_portal_group",
        json!({"tag": 1, "portals": [{"host": "10.0.3.15", "port": "3260"}]}),
    );
    w.ok(
        "iscsi_create_initiator_group",
        json!({"tag": 1, "initiators": ["ANY"], "netmasks": ["ANY"]}),
    );
    w.ok(
        "iscsi_create_auth_group",
        json!({"tag": 1, "secrets": [{"user": "alice", "secret": "s3cret-chap-12"}]}),
    );
    w.ok(
        "iscsi_create_target_node",
        json!({"name": "disk1", "alias_name": "d", "luns": [{"bdev_name": "Malloc1", "lun_id": 0}],
               "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 1}], "queue_depth": 64,
               "require_chap": true, "chap_group": 1}),
    );
    w.ok("nvmf_create_transport", json!({"trtype": "TCP"}));
    w.ok(
        "nvmf_create_subsystem",
        json!({"nqn": "nqn.2016-06.io.spdk:cnode1", "allow_any_host": true}),
    );
    w.ok(
        "nvmf_subsystem_add_ns",
        json!({"nqn": "nqn.2016-06.io.spdk:cnode1", "namespace": {"bdev_name": "Malloc1"}}),
    );
    w.ok(
        "bdev_set_qos_limit",
        json!({"name": "Malloc1", "rw_ios_per_sec": 10000}),
    );
}

#[test]
fn chosen_store_saves_changes_and_boots_back_the_same_config() {
    let mut w = World::boot(test_disk("Disk", 8192, 512));
    assert_eq!(
        w.ok("config_store_get", Value::Null)["bdev_name"],
        Value::Null
    );
    assert_eq!(w.saved(), None, "no store yet");
    w.ok("config_store_set", json!({"bdev_name": "Disk"}));
    let st = w.ok("config_store_get", Value::Null);
    assert_eq!(st["bdev_name"], "Disk");
    assert_eq!(st["generation"], 1);
    assert_eq!(st["max_bytes"], 1_044_480);
    // The disk is claimed and no longer exported.
    let disk = w.reg.find("Disk").unwrap();
    assert_eq!(w.reg.claimed_by(disk), Some("config store"));
    assert!(w.nbd.list.is_empty());
    assert!(
        w.call("config_store_set", json!({"bdev_name": "Nope"}))
            .is_err()
    );
    assert!(
        w.call("config_store_set", json!({"bdev_name": "Disk", "x": 1}))
            .is_err()
    );

    configure(&mut w);
    assert!(w.saved().is_some());
    assert_eq!(w.saved(), None, "unchanged config is not rewritten");
    w.ok(
        "bdev_malloc_create",
        json!({"name": "Malloc2", "num_blocks": 64, "block_size": 4096}),
    );
    let generation = w.saved().unwrap();
    let before = w.ok("framework_get_config", Value::Null);
    assert!(
        before.to_string().contains("bdev_set_qos_limit"),
        "{before}"
    );
    // The store refuses a bdev that serves a LUN or a namespace.
    let e = w
        .call("config_store_set", json!({"bdev_name": "Malloc1"}))
        .unwrap_err();
    assert!(e.contains("LUN"), "{e}");

    // Power off: keep only the disk's image.
    w.ok("config_store_clear", json!({"keep_area": true}));
    let image = w.reg.remove(disk).unwrap();

    // Boot: find the area, replay it through the method table.
    let mut w = World::boot(image);
    assert_eq!(w.store.scan(&mut w.reg), [("Disk".into(), generation)]);
    assert_eq!(
        w.reg.claimed_by(disk_id(&w)),
        None,
        "scanning leaves no claim"
    );
    let loaded = w.store.open(&mut w.reg, "Disk").unwrap().unwrap();
    assert_eq!(loaded.generation, generation);
    let stored: Value = serde_json::from_slice(&loaded.payload).unwrap();
    assert_eq!(stored, before);
    // CHAP secrets are stored as CHAP needs them: in the clear.
    let text = core::str::from_utf8(&loaded.payload).unwrap();
    assert!(text.contains("s3cret-chap-12"));
    let cfg = ironbay_config::BootConfig::parse(&loaded.payload).unwrap();
    let calls: Vec<_> = cfg
        .calls()
        .map(|(_, c)| (c.method.clone(), c.params.clone()))
        .collect();
    for (method, params) in calls {
        call(&mut w.model(), &method, &params).unwrap_or_else(|e| panic!("{method}: {e:?}"));
    }
    let after = w.ok("framework_get_config", Value::Null);
    assert_eq!(after, before);
    // What was built from the area is taken as saved, not written again.
    w.store.adopt_next = true;
    assert_eq!(w.saved(), None);
    assert_eq!(
        w.saved(),
        None,
        "the replayed config matches what is stored"
    );
    w.ok("bdev_malloc_delete", json!({"name": "Malloc2"}));
    assert_eq!(w.saved(), Some(generation + 1));

    // Clearing erases the area: the next boot finds nothing.
    w.ok("config_store_clear", Value::Null);
    assert_eq!(w.reg.claimed_by(disk_id(&w)), None);
    assert!(w.store.open(&mut w.reg, "Disk").unwrap().is_none());
    w.ok("config_store_clear", Value::Null);
    let e = w.call("config_store_clear", Value::Null).unwrap_err();
    assert!(e.contains("no config store is set"), "{e}");
}

fn disk_id(w: &World) -> ironbay_bdev::BdevId {
    w.reg.find("Disk").unwrap()
}

#[test]
fn moving_the_store_erases_the_old_area() {
    let mut w = World::boot(test_disk("A", 8192, 512));
    w.reg.add(test_disk("B", 1024, 4096)).unwrap();
    w.reg
        .add(Box::new(MallocBdev::new("Tiny", 64, 512)))
        .unwrap();
    let e = w
        .call("config_store_set", json!({"bdev_name": "Tiny"}))
        .unwrap_err();
    assert!(e.contains("needs 2097152"), "{e}");
    w.ok("config_store_set", json!({"bdev_name": "A"}));
    w.ok("config_store_set", json!({"bdev_name": "B"}));
    let a = w.reg.find("A").unwrap();
    assert_eq!(w.reg.claimed_by(a), None, "A released");
    assert_eq!(w.ok("config_store_get", Value::Null)["bdev_name"], "B");
    let mut dev = w.reg.remove(a).unwrap();
    let mut t = 0;
    let found = ironbay_persist::probe(&mut *dev, &mut || {
        t += 1;
        t
    })
    .unwrap();
    assert_eq!(found, None, "A's area was erased");
}
