//! The block commands through a negotiated session over a model with two
//! bdevs: nodes, the NBD server, exports by QMP and by name, safe and hard
//! removal with clients attached, and the event.

use ironbay_bdev::{MallocBdev, Registry};
use ironbay_model::Model;
use ironbay_model::lvol::Lvols;
use ironbay_nbd::Exports;
use ironbay_qmp::block::{Block, BlockState, NBD_PORT};
use ironbay_qmp::{Greeting, Session, Version};
use serde_json::{Value, json};
use std::cell::RefCell;
use std::net::IpAddr;

struct World {
    reg: Registry,
    nbd: Exports,
    state: BlockState,
    /// (export name, clients)
    attached: RefCell<Vec<(String, usize)>>,
    session: Session,
    lvols: Lvols,
}

impl World {
    fn new() -> Self {
        Self::with_disk(None)
    }

    /// With `disk` as a third bdev, its volume stores tasted.
    fn with_disk(disk: Option<MallocBdev>) -> Self {
        let mut reg = Registry::new();
        reg.add(Box::new(MallocBdev::new("Malloc0", 2048, 512)))
            .unwrap();
        reg.add(Box::new(MallocBdev::new("Malloc1", 4096, 4096)))
            .unwrap();
        let mut lvols = Lvols::new(|| 0, 9);
        if let Some(d) = disk {
            reg.add(Box::new(d)).unwrap();
            lvols.taste(&mut reg);
        }
        let greeting = Greeting {
            version: Version {
                major: 9,
                minor: 2,
                micro: 0,
                package: "ironbay".into(),
            },
        };
        let mut w = World {
            reg,
            nbd: Exports::default(),
            state: BlockState::default(),
            attached: RefCell::new(Vec::new()),
            session: Session::new(&greeting),
            lvols,
        };
        w.take();
        assert_eq!(w.exec("qmp_capabilities", json!({})), json!({"return": {}}));
        w
    }

    /// Output so far, one JSON value per line.
    fn take(&mut self) -> Vec<Value> {
        let out = self.session.poll_output().to_vec();
        self.session.consume_output(out.len());
        String::from_utf8(out)
            .unwrap()
            .split("\r\n")
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn exec(&mut self, cmd: &str, args: Value) -> Value {
        let req = json!({"execute": cmd, "arguments": args}).to_string();
        let (mut init, mut down) = (true, false);
        let mut model = Model {
            bdevs: &mut self.reg,
            devices: None,
            nbd: Some(&mut self.nbd),
            iscsi: None,
            nvmf: None,
            memory_budget: 1 << 30,
            initialized: &mut init,
            shutdown: &mut down,
            bench: None,
            config_store: None,
            lvol: Some(&mut self.lvols),
            targetd: None,
        };
        let attached = &self.attached;
        let clients = |name: &str| {
            attached
                .borrow()
                .iter()
                .find(|(n, _)| n == name)
                .map_or(0, |(_, c)| *c)
        };
        let addrs = ["10.0.3.15".parse::<IpAddr>().unwrap()];
        let mut block = Block {
            model: &mut model,
            state: &mut self.state,
            clients: &clients,
            data_addrs: &addrs,
        };
        assert_eq!(
            self.session.handle_input(req.as_bytes(), &mut block),
            req.len()
        );
        let mut out = self.take();
        assert_eq!(out.len(), 1, "{out:?}");
        out.remove(0)
    }

    fn ok(&mut self, cmd: &str, args: Value) -> Value {
        let r = self.exec(cmd, args.clone());
        r.get("return")
            .cloned()
            .unwrap_or_else(|| panic!("{cmd} {args}: {r}"))
    }

    fn err(&mut self, cmd: &str, args: Value) -> (String, String) {
        let r = self.exec(cmd, args.clone());
        let e = r
            .get("error")
            .unwrap_or_else(|| panic!("{cmd} {args} should fail: {r}"));
        (
            e["class"].as_str().unwrap().into(),
            e["desc"].as_str().unwrap().into(),
        )
    }

    fn events(&mut self) -> Vec<Value> {
        for (name, data) in self.state.events.drain(..) {
            self.session.push_event(name, Some(data), 1_500_000);
        }
        self.take()
    }
}

#[test]
fn block_nodes_are_the_bdevs() {
    let mut w = World::new();
    let nodes = w.ok("query-named-block-nodes", json!({}));
    let names: Vec<&str> = nodes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node-name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Malloc0", "Malloc1"]);
    assert_eq!(nodes[1]["image"]["virtual-size"], 4096 * 4096);
    assert_eq!(nodes[0]["ro"], false);
    assert!(
        nodes[0].get("dirty-bitmaps").is_none(),
        "listed only where there are bitmaps, as QEMU"
    );
    let block = w.ok("query-block", json!({}));
    assert_eq!(block[0]["inserted"]["node-name"], "Malloc0");
    assert_eq!(
        w.err("query-block", json!({"x": 1})).1,
        "Parameter 'x' is unexpected"
    );
}

#[test]
fn the_nbd_server_is_started_once_on_a_data_nic() {
    let mut w = World::new();
    let add = json!({"type": "nbd", "id": "e0", "node-name": "Malloc0"});
    assert_eq!(
        w.err("block-export-add", add.clone()).1,
        "NBD server not running"
    );
    for (addr, why) in [
        (json!({"type": "unix", "path": "/tmp/s"}), "not supported"),
        (
            json!({"type": "inet", "host": "192.0.2.1", "port": "10809"}),
            "Cannot assign",
        ),
        (
            json!({"type": "inet", "host": "0.0.0.0", "port": "x"}),
            "Invalid port",
        ),
        (
            json!({"type": "inet", "host": "0.0.0.0"}),
            "Parameter 'addr.port' is missing",
        ),
    ] {
        let (class, desc) = w.err("nbd-server-start", json!({"addr": addr}));
        assert_eq!(class, "GenericError");
        assert!(desc.contains(why), "{addr}: {desc}");
    }
    let tls = json!({"addr": {"type": "inet", "host": "0.0.0.0", "port": "10809"},
                     "tls-creds": "tls0"});
    assert!(w.err("nbd-server-start", tls).1.contains("TLS"));
    // The legacy shape, with `data`, and max-connections.
    w.ok(
        "nbd-server-start",
        json!({"addr": {"type": "inet", "data": {"host": "10.0.3.15", "port": "10810"}},
               "max-connections": 4}),
    );
    let s = w.state.server.clone().unwrap();
    assert_eq!((s.port, s.max_connections), (10810, 4));
    let again = json!({"addr": {"type": "inet", "host": "::", "port": "10809"}});
    assert_eq!(
        w.err("nbd-server-start", again.clone()).1,
        "NBD server already running"
    );
    w.ok("nbd-server-stop", json!({}));
    assert_eq!(
        w.err("nbd-server-stop", json!({})).1,
        "NBD server not running"
    );
    w.ok("nbd-server-start", again);
    assert_eq!(w.state.server.clone().unwrap().port, NBD_PORT);
}

#[test]
fn exports_made_deleted_safe_and_hard_with_the_event() {
    let mut w = World::new();
    w.ok(
        "nbd-server-start",
        json!({"addr": {"type": "inet", "host": "0.0.0.0", "port": "10809"}}),
    );
    w.ok(
        "block-export-add",
        json!({"type": "nbd", "id": "e0", "node-name": "Malloc0", "name": "disk",
               "description": "boot disk", "writable": true, "writethrough": true}),
    );
    let e = w.nbd.find("disk").unwrap();
    assert_eq!((e.id.as_str(), e.description.as_str()), ("e0", "boot disk"));
    assert!(!e.read_only && e.writethrough);
    w.ok(
        "block-export-add",
        json!({"type": "nbd", "id": "e1", "node-name": "Malloc1"}),
    );
    assert!(
        w.nbd.find("Malloc1").unwrap().read_only,
        "read-only unless writable"
    );
    for (args, want) in [
        (
            json!({"type": "nbd", "id": "e0", "node-name": "Malloc1", "name": "x"}),
            "Block export id 'e0' is already in use",
        ),
        (
            json!({"type": "nbd", "id": "e2", "node-name": "Malloc1", "name": "disk"}),
            "NBD server already has export named 'disk'",
        ),
        (
            json!({"type": "nbd", "id": "e2", "node-name": "Nope"}),
            "Cannot find device='' nor node-name='Nope'",
        ),
        (
            json!({"type": "fuse", "id": "e2", "node-name": "Malloc0", "mountpoint": "/m"}),
            "Export type 'fuse' is not supported: the appliance exports over NBD",
        ),
        (
            json!({"type": "nbd", "id": "e2", "node-name": "Malloc0", "bitmaps": ["b0"]}),
            "Bitmap 'b0' is not found",
        ),
        (
            json!({"type": "nbd", "node-name": "Malloc0"}),
            "Parameter 'id' is missing",
        ),
        (
            json!({"type": "nbd", "id": "e2", "node-name": "Malloc0", "writable": "yes"}),
            "Invalid parameter type for 'writable', expected: boolean",
        ),
    ] {
        assert_eq!(w.err("block-export-add", args.clone()).1, want, "{args}");
    }
    let list = w.ok("query-block-exports", json!({}));
    assert_eq!(
        list,
        json!([
            {"id": "e0", "type": "nbd", "node-name": "Malloc0", "shutting-down": false},
            {"id": "e1", "type": "nbd", "node-name": "Malloc1", "shutting-down": false},
        ])
    );

    // Safe removal with a client attached fails; hard removal drops it
    // and the export shuts down until the client is gone.
    w.attached.borrow_mut().push(("disk".into(), 1));
    assert_eq!(
        w.err("block-export-del", json!({"id": "e0"})).1,
        "export 'e0' still in use"
    );
    assert_eq!(
        w.err("block-export-del", json!({"id": "e0", "mode": "gentle"}))
            .1,
        "Parameter 'mode' does not accept value 'gentle'"
    );
    w.ok("block-export-del", json!({"id": "e0", "mode": "hard"}));
    assert!(w.nbd.find("disk").is_none(), "new clients cannot find it");
    let list = w.ok("query-block-exports", json!({}));
    assert_eq!(list[1]["shutting-down"], true, "{list}");
    assert_eq!(
        w.err("block-export-del", json!({"id": "e0", "mode": "hard"}))
            .1,
        "Export 'e0' is already shutting down"
    );
    assert!(w.events().is_empty());
    w.attached.borrow_mut().clear();
    let clients = |_: &str| 0;
    w.state.reap(&clients);
    let ev = w.events();
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0]["event"], "BLOCK_EXPORT_DELETED");
    assert_eq!(ev[0]["data"], json!({"id": "e0"}));
    assert_eq!(
        ev[0]["timestamp"],
        json!({"seconds": 1, "microseconds": 500_000})
    );

    // Safe removal without clients: gone at once, with the event.
    w.ok("block-export-del", json!({"id": "e1"}));
    assert_eq!(w.events()[0]["data"]["id"], "e1");
    assert_eq!(w.ok("query-block-exports", json!({})), json!([]));
    assert_eq!(
        w.err("block-export-del", json!({"id": "e1"})).1,
        "Export 'e1' is not found"
    );

    // The deprecated pair: id = name.
    assert_eq!(
        w.err("nbd-server-add", json!({"device": "Nope"})),
        ("DeviceNotFound".into(), "Device 'Nope' not found".into())
    );
    w.ok(
        "nbd-server-add",
        json!({"device": "Malloc1", "name": "old", "writable": true}),
    );
    assert!(!w.nbd.find("old").unwrap().read_only);
    w.ok("nbd-server-remove", json!({"name": "old"}));
    assert!(w.nbd.find("old").is_none());

    // nbd-server-stop closes every NBD export.
    w.ok(
        "block-export-add",
        json!({"type": "nbd", "id": "e3", "node-name": "Malloc0"}),
    );
    w.ok("nbd-server-stop", json!({}));
    assert!(w.nbd.list.is_empty());
    let ev = w.events();
    assert!(ev.iter().any(|e| e["data"]["id"] == "e3"), "{ev:?}");
}

#[test]
fn commands_are_listed() {
    let mut w = World::new();
    let cmds = w.ok("query-commands", json!({}));
    for c in [
        "block-export-add",
        "nbd-server-start",
        "query-named-block-nodes",
        "qmp_capabilities",
    ] {
        assert!(
            cmds.as_array().unwrap().iter().any(|x| x["name"] == c),
            "{c} not in {cmds}"
        );
    }
}

#[test]
fn dirty_bitmaps_track_writes_and_export_with_the_node() {
    use ironbay_bdev::{IoBuf, IoOp, IoRequest};
    let mut w = World::new();
    w.ok(
        "block-dirty-bitmap-add",
        json!({"node": "Malloc0", "name": "b0", "granularity": 4096}),
    );
    w.ok(
        "block-dirty-bitmap-add",
        json!({"node": "Malloc0", "name": "off", "disabled": true}),
    );
    for (args, want) in [
        (
            json!({"node": "Malloc0", "name": "b0"}),
            "Bitmap already exists: b0",
        ),
        (
            json!({"node": "Nope", "name": "b0"}),
            "Cannot find device='Nope' nor node-name='Nope'",
        ),
        (
            json!({"node": "Malloc0", "name": "g", "granularity": 3000}),
            "Granularity must be power of 2 between 512 and 2147483648",
        ),
        (
            json!({"node": "Malloc0", "name": ""}),
            "Bitmap name cannot be empty",
        ),
    ] {
        assert_eq!(
            w.err("block-dirty-bitmap-add", args.clone()).1,
            want,
            "{args}"
        );
    }
    // A write through the registry marks what it touched.
    let id = w.reg.find("Malloc0").unwrap();
    let req = IoRequest {
        tag: 1,
        op: IoOp::Write {
            lba: 7,
            buf: IoBuf::new(1024),
        },
        fua: false,
    };
    w.reg.submit(id, req, 0).unwrap();
    let nodes = w.ok("query-named-block-nodes", json!({}));
    let bitmaps = &nodes[0]["dirty-bitmaps"];
    assert_eq!(
        bitmaps[0]["count"], 8192,
        "bytes 3584..4608 span two 4 KiB chunks: {bitmaps}"
    );
    assert_eq!(bitmaps[1]["count"], 0, "disabled bitmaps do not record");
    assert_eq!(
        bitmaps[1]["granularity"], 65536,
        "default for a node without clusters"
    );
    w.ok(
        "block-dirty-bitmap-merge",
        json!({"node": "Malloc0", "target": "off", "bitmaps": ["b0"]}),
    );
    let nodes = w.ok("query-named-block-nodes", json!({}));
    assert_eq!(nodes[0]["dirty-bitmaps"][1]["count"], 65536);
    // Exported: busy, cannot be removed or cleared.
    w.ok(
        "nbd-server-start",
        json!({"addr": {"type": "inet", "host": "0.0.0.0", "port": "10809"}}),
    );
    w.ok(
        "block-export-add",
        json!({"type": "nbd", "id": "e", "node-name": "Malloc1",
               "bitmaps": [{"node": "Malloc0", "name": "b0"}], "allocation-depth": true}),
    );
    let e = w.nbd.find("Malloc1").unwrap();
    assert_eq!(e.bitmaps, vec![(id, "b0".to_string())]);
    assert!(e.allocation_depth);
    let nodes = w.ok("query-named-block-nodes", json!({}));
    assert_eq!(nodes[0]["dirty-bitmaps"][0]["busy"], true);
    for cmd in ["block-dirty-bitmap-remove", "block-dirty-bitmap-clear"] {
        assert!(
            w.err(cmd, json!({"node": "Malloc0", "name": "b0"}))
                .1
                .contains("in use"),
            "{cmd}"
        );
    }
    w.ok("block-export-del", json!({"id": "e"}));
    w.ok(
        "block-dirty-bitmap-clear",
        json!({"node": "Malloc0", "name": "b0"}),
    );
    w.ok(
        "block-dirty-bitmap-remove",
        json!({"node": "Malloc0", "name": "b0"}),
    );
    assert_eq!(
        w.err(
            "block-dirty-bitmap-enable",
            json!({"node": "Malloc0", "name": "b0"})
        )
        .1,
        "Dirty bitmap 'b0' not found"
    );
    assert_eq!(
        w.err(
            "block-dirty-bitmap-add",
            json!({"node": "Malloc0", "name": "p", "persistent": true})
        )
        .0,
        "GenericError"
    );
}

#[test]
fn bitmaps_together_stay_within_their_memory() {
    let mut w = World::new();
    // 1 TiB at 512-byte granularity would be 256 MiB of bitmap.
    w.reg
        .add(Box::new(ironbay_bdev::NullBdev::new("Big", 1 << 31, 512)))
        .unwrap();
    let (class, desc) = w.err(
        "block-dirty-bitmap-add",
        json!({"node": "Big", "name": "fine", "granularity": 512}),
    );
    assert_eq!(class, "GenericError");
    assert!(desc.contains("in all"), "{desc}");
    // The default granularity fits.
    w.ok(
        "block-dirty-bitmap-add",
        json!({"node": "Big", "name": "b0"}),
    );
}

impl World {
    /// With Malloc2 holding store `lvs` and a thin 8 MiB volume `vol`.
    fn with_volume() -> Self {
        let mut w = World::with_disk(Some(MallocBdev::new("Malloc2", 32 << 11, 512)));
        let (mut init, mut down) = (true, false);
        let mut m = Model {
            bdevs: &mut w.reg,
            devices: None,
            nbd: None,
            iscsi: None,
            nvmf: None,
            memory_budget: 1 << 30,
            initialized: &mut init,
            shutdown: &mut down,
            bench: None,
            config_store: None,
            lvol: Some(&mut w.lvols),
            targetd: None,
        };
        m.lvs_create("Malloc2", "lvs", Some(1 << 20), ironbay_lvol::Clear::Zero)
            .unwrap();
        m.lvol_create(
            ironbay_model::lvol::StoreRef::Name("lvs"),
            "vol",
            8 << 20,
            true,
            ironbay_lvol::Clear::Zero,
        )
        .unwrap();
        w
    }
}

/// The image of the disk under the first volume store (what survives a
/// reboot).
fn disk_image(w: &World) -> MallocBdev {
    let base = w.lvols.stores[0].store.base();
    let mut b = base.borrow_mut();
    let info = b.info().clone();
    let bytes = (info.num_blocks * info.block_size as u64) as usize;
    let (mut o, mut t) = (Vec::new(), || 0u64);
    let data = ironbay_bdev::sync::read(&mut **b, 0, bytes, &mut t, &mut o).unwrap();
    let mut img = MallocBdev::new("Malloc2", info.num_blocks, info.block_size);
    ironbay_bdev::sync::write(&mut img, 0, data.as_slice(), &mut t, &mut o).unwrap();
    img
}

fn bitmap_of(w: &mut World, node: &str) -> Value {
    let nodes = w.ok("query-named-block-nodes", json!({}));
    let n = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node-name"] == node)
        .cloned()
        .unwrap();
    n["dirty-bitmaps"][0].clone()
}

#[test]
fn persistent_bitmaps_live_in_the_volume_store_across_reboots() {
    let mut w = World::with_volume();
    // Only volumes keep bitmaps.
    let (_, desc) = w.err(
        "block-dirty-bitmap-add",
        json!({"node": "Malloc0", "name": "p", "persistent": true}),
    );
    assert!(desc.contains("only logical volumes"), "{desc}");
    w.ok(
        "block-dirty-bitmap-add",
        json!({"node": "lvs/vol", "name": "b0", "persistent": true, "granularity": 65536}),
    );
    let vol = w.reg.find("lvs/vol").unwrap();
    w.reg.bitmaps_mut(vol).unwrap()[0].mark(3 << 20, 100_000);
    // Node names are the bdev names: a volume's is its UUID.
    let node = w.reg.info(vol).unwrap().name.clone();
    let before = bitmap_of(&mut w, &node);
    // Writes from a stacked device would bypass the bitmap: no claim of a
    // tracked node, and no bitmap on a claimed one.
    let (_, desc) = w.err(
        "block-dirty-bitmap-add",
        json!({"node": "Malloc2", "name": "x"}),
    );
    assert!(desc.contains("in use by lvol store"), "{desc}");
    let claim = w.reg.claim(vol, "a cache").map(|_| ());
    assert_eq!(claim, Err(ironbay_bdev::RegistryError::HasBitmaps));
    assert_eq!(before["count"], 2 * 65536);
    assert_eq!(before["persistent"], true);

    // Orderly shutdown, then boot: the bitmap is back with its bits.
    assert!(w.lvols.close_all(&w.reg).is_empty());
    let mut w = World::with_disk(Some(disk_image(&w)));
    assert_eq!(bitmap_of(&mut w, &node), before);

    // Power lost: the bitmap comes back inconsistent and only removal works.
    let mut w = World::with_disk(Some(disk_image(&w)));
    let b = bitmap_of(&mut w, &node);
    assert_eq!(b["inconsistent"], true, "{b}");
    assert_eq!(b["recording"], false);
    let (class, desc) = w.err(
        "block-dirty-bitmap-enable",
        json!({"node": "lvs/vol", "name": "b0"}),
    );
    assert_eq!(class, "GenericError");
    assert!(desc.starts_with("Bitmap 'b0' is inconsistent"), "{desc}");
    w.ok(
        "nbd-server-start",
        json!({"addr": {"type": "inet", "host": "10.0.3.15", "port": "10809"}}),
    );
    let (_, desc) = w.err(
        "block-export-add",
        json!({"type": "nbd", "id": "e", "node-name": "lvs/vol", "bitmaps": ["b0"]}),
    );
    assert!(desc.contains("inconsistent"), "{desc}");
    w.ok(
        "block-dirty-bitmap-remove",
        json!({"node": "lvs/vol", "name": "b0"}),
    );
    assert!(w.lvols.stores[0].store.bitmaps().is_empty());
    let w = World::with_disk(Some(disk_image(&w)));
    assert!(
        w.lvols.stores[0].store.bitmaps().is_empty(),
        "removal is durable"
    );
}

#[test]
fn a_command_refused_for_an_unexpected_argument_changes_nothing() {
    let mut w = World::new();
    let (_, desc) = w.err(
        "block-dirty-bitmap-add",
        json!({"node": "Malloc0", "name": "b0", "bogus": 1}),
    );
    assert_eq!(desc, "Parameter 'bogus' is unexpected");
    assert!(w.reg.bitmaps(w.reg.find("Malloc0").unwrap()).is_empty());
    let (_, desc) = w.err(
        "nbd-server-start",
        json!({"addr": {"type": "inet", "data": {"host": "0.0.0.0", "port": "10809"}}, "x": true}),
    );
    assert_eq!(desc, "Parameter 'x' is unexpected");
    assert!(w.state.server.is_none());
    w.ok(
        "nbd-server-start",
        json!({"addr": {"type": "inet", "data": {"host": "0.0.0.0", "port": "10809"}}}),
    );
    let before = w.ok("query-block-exports", json!({}));
    let (_, desc) = w.err(
        "block-export-add",
        json!({"type": "nbd", "id": "e", "node-name": "Malloc0", "y": 0}),
    );
    assert_eq!(desc, "Parameter 'y' is unexpected");
    assert_eq!(w.ok("query-block-exports", json!({})), before);
    let (_, desc) = w.err("nbd-server-add", json!({"device": "Malloc0", "z": 0}));
    assert_eq!(desc, "Parameter 'z' is unexpected");
    assert_eq!(w.ok("query-block-exports", json!({})), before);
}

fn bitmap_names(w: &mut World, node: &str) -> Vec<(String, u64, bool)> {
    let id = w.reg.find(node).unwrap();
    w.reg
        .bitmaps(id)
        .iter()
        .map(|b| (b.name.clone(), b.dirty_bytes(), b.enabled))
        .collect()
}

#[test]
fn transactions_apply_every_action_or_none() {
    let mut w = World::new();
    w.ok(
        "block-dirty-bitmap-add",
        json!({"node": "Malloc0", "name": "b0", "granularity": 512}),
    );
    let id = w.reg.find("Malloc0").unwrap();
    w.reg.bitmaps_mut(id).unwrap()[0].mark(0, 4096);
    let act = |t: &str, d: Value| json!({"type": t, "data": d});
    // A checkpoint as libvirt takes one: the old bitmap stops, a new starts.
    w.ok(
        "transaction",
        json!({"actions": [
            act("block-dirty-bitmap-disable", json!({"node": "Malloc0", "name": "b0"})),
            act("block-dirty-bitmap-add", json!({"node": "Malloc0", "name": "b1", "granularity": 512})),
        ]}),
    );
    let both = vec![("b0".into(), 4096, false), ("b1".into(), 0, true)];
    assert_eq!(bitmap_names(&mut w, "Malloc0"), both);

    // A failing action puts every earlier one back.
    for (last, class, desc) in [
        (
            act("abort", json!({})),
            "GenericError",
            "Transaction aborted using Abort action",
        ),
        (
            act(
                "block-dirty-bitmap-add",
                json!({"node": "Malloc0", "name": "b0"}),
            ),
            "GenericError",
            "Bitmap already exists: b0",
        ),
        (
            act(
                "block-dirty-bitmap-clear",
                json!({"node": "Malloc0", "name": "nope"}),
            ),
            "GenericError",
            "Dirty bitmap 'nope' not found",
        ),
    ] {
        let r = w.err(
            "transaction",
            json!({"actions": [
                act("block-dirty-bitmap-clear", json!({"node": "Malloc0", "name": "b0"})),
                act("block-dirty-bitmap-remove", json!({"node": "Malloc0", "name": "b1"})),
                act("block-dirty-bitmap-add", json!({"node": "Malloc1", "name": "n"})),
                act("block-dirty-bitmap-merge", json!({"node": "Malloc0", "target": "b0", "bitmaps": ["b0"]})),
                last,
            ]}),
        );
        assert_eq!(r, (class.into(), desc.into()));
        assert_eq!(bitmap_names(&mut w, "Malloc0"), both, "after {desc}");
        assert!(bitmap_names(&mut w, "Malloc1").is_empty());
    }

    // Actions that need block jobs, unknown ones, grouped completion.
    let (_, desc) = w.err(
        "transaction",
        json!({"actions": [
            act("block-dirty-bitmap-clear", json!({"node": "Malloc0", "name": "b0"})),
            act("drive-backup", json!({})),
        ]}),
    );
    assert!(desc.contains("'drive-backup' is not supported"), "{desc}");
    let (_, desc) = w.err(
        "transaction",
        json!({"actions": [act("no-such", json!({}))]}),
    );
    assert_eq!(
        desc,
        "Parameter 'actions[0].type' does not accept value 'no-such'"
    );
    let (_, desc) = w.err(
        "transaction",
        json!({"actions": [], "properties": {"completion-mode": "grouped"}}),
    );
    assert!(desc.contains("completion-mode = grouped"), "{desc}");
    assert_eq!(bitmap_names(&mut w, "Malloc0"), both);
    w.ok("transaction", json!({"actions": []}));
}

#[test]
fn a_failed_transaction_leaves_the_volume_store_as_it_was() {
    let mut w = World::with_volume();
    w.ok(
        "block-dirty-bitmap-add",
        json!({"node": "lvs/vol", "name": "old", "persistent": true}),
    );
    let act = |t: &str, d: Value| json!({"type": t, "data": d});
    let (_, desc) = w.err(
        "transaction",
        json!({"actions": [
            act("block-dirty-bitmap-remove", json!({"node": "lvs/vol", "name": "old"})),
            act("block-dirty-bitmap-add", json!({"node": "lvs/vol", "name": "new", "persistent": true})),
            act("abort", json!({})),
        ]}),
    );
    assert_eq!(desc, "Transaction aborted using Abort action");
    let names = |w: &World| -> Vec<String> {
        w.lvols.stores[0]
            .store
            .bitmaps()
            .into_iter()
            .map(|b| b.name)
            .collect()
    };
    assert_eq!(names(&w), ["old"]);
    w.ok(
        "transaction",
        json!({"actions": [
            act("block-dirty-bitmap-remove", json!({"node": "lvs/vol", "name": "old"})),
            act("block-dirty-bitmap-add", json!({"node": "lvs/vol", "name": "new", "persistent": true})),
        ]}),
    );
    assert_eq!(names(&w), ["new"]);
    assert_eq!(bitmap_names(&mut w, "lvs/vol"), [("new".into(), 0, true)]);
}
