//! The NVMe-oF methods through a session, with the requests today's SPDK
//! client sends (`spdk-rpc --dry-run`), the 2018 names and the seed's
//! examples.

use crate::Session;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use ironbay_bdev::Registry;
use ironbay_model::Model;
use ironbay_model::nvmf::{Config, Target};
use serde_json::{Value, json};

const NQN: &str = "nqn.2016-06.io.spdk:cnode1";
const DISCOVERY: &str = "nqn.2014-08.org.nvmexpress.discovery";

struct World {
    reg: Registry,
    iscsi: Option<ironbay_model::iscsi::Target>,
    target: Option<Target>,
    init: bool,
    down: bool,
}

impl World {
    fn new() -> Self {
        World {
            reg: Registry::new(),
            iscsi: None,
            target: Some(Target::new(Config::default())),
            init: true,
            down: false,
        }
    }

    /// Sends requests (one JSON value each) and returns their replies.
    fn send(&mut self, requests: &[String]) -> Vec<Value> {
        let mut s = Session::new();
        let mut m = Model {
            bdevs: &mut self.reg,
            devices: None,
            nbd: None,
            iscsi: self.iscsi.as_mut(),
            nvmf: self.target.as_mut(),
            memory_budget: 1 << 30,
            initialized: &mut self.init,
            shutdown: &mut self.down,
            bench: None,
            config_store: None,
            lvol: None,
            targetd: None,
        };
        for r in requests {
            s.handle_input(r.as_bytes(), &mut m);
        }
        serde_json::Deserializer::from_slice(s.poll_output())
            .into_iter::<Value>()
            .map(Result::unwrap)
            .collect()
    }

    /// One call's result; panics with the error if it failed.
    fn ok(&mut self, method: &str, params: Value) -> Value {
        let r = self.send(&[req(method, params)]).remove(0);
        assert!(r.get("error").is_none(), "{method}: {r}");
        r["result"].clone()
    }

    /// One call's error (code, message).
    fn err(&mut self, method: &str, params: Value) -> (i64, String) {
        let r = self.send(&[req(method, params)]).remove(0);
        let e = &r["error"];
        assert!(e.is_object(), "{method} succeeded: {r}");
        (
            e["code"].as_i64().unwrap(),
            e["message"].as_str().unwrap().into(),
        )
    }

    fn config(&self) -> &Config {
        &self.target.as_ref().unwrap().config
    }
}

fn req(method: &str, params: Value) -> String {
    let mut r = json!({ "jsonrpc": "2.0", "id": 1, "method": method });
    if !params.is_null() {
        r["params"] = params;
    }
    r.to_string()
}

fn bdevs(w: &mut World) {
    for (name, method) in [
        ("Malloc0", "bdev_malloc_create"),
        ("Malloc1", "bdev_malloc_create"),
        ("Malloc2", "bdev_malloc_create"),
        ("Null0", "bdev_null_create"),
    ] {
        w.ok(
            method,
            json!({ "name": name, "num_blocks": 128, "block_size": 512 }),
        );
    }
}

/// What `spdk-rpc` 26.x sends for a typical setup (from `--dry-run`).
const CLIENT: &[&str] = &[
    r#"{"jsonrpc": "2.0", "method": "nvmf_set_config", "id": 1, "params": {"discovery_filter": "match_any"}}"#,
    r#"{"jsonrpc": "2.0", "method": "nvmf_set_max_subsystems", "id": 1, "params": {"max_subsystems": 64}}"#,
    r#"{"jsonrpc": "2.0", "method": "nvmf_create_transport", "id": 1, "params": {"no_srq": false, "c2h_success": true, "trtype": "TCP", "max_queue_depth": 128, "max_io_qpairs_per_ctrlr": 7, "in_capsule_data_size": 8192, "max_io_size": 131072, "max_aq_depth": 32, "zcopy": false, "dif_insert_or_strip": false, "no_wr_batching": false, "disable_mappable_bar0": false, "disable_adaptive_irq": false, "disable_shadow_doorbells": false, "disable_command_passthru": false}}"#,
    r#"{"jsonrpc": "2.0", "method": "nvmf_create_subsystem", "id": 1, "params": {"nqn": "nqn.2016-06.io.spdk:cnode1", "serial_number": "SPDK00000000000001", "model_number": "SPDK_Controller1", "allow_any_host": true, "ana_reporting": false, "passthrough": false, "enable_nssr": false}}"#,
    r#"{"jsonrpc": "2.0", "method": "nvmf_create_subsystem", "id": 1, "params": {"nqn": "nqn.2016-06.io.spdk:cnode2", "allow_any_host": false, "ana_reporting": false, "passthrough": false, "enable_nssr": false}}"#,
    r#"{"jsonrpc": "2.0", "method": "nvmf_subsystem_add_listener", "id": 1, "params": {"nqn": "nqn.2016-06.io.spdk:cnode1", "secure_channel": false, "listen_address": {"trtype": "tcp", "traddr": "10.0.2.15", "adrfam": "ipv4", "trsvcid": "4420"}}}"#,
    r#"{"jsonrpc": "2.0", "method": "nvmf_subsystem_add_listener", "id": 1, "params": {"nqn": "nqn.2016-06.io.spdk:cnode2", "secure_channel": false, "listen_address": {"trtype": "tcp", "traddr": "0.0.0.0", "adrfam": "ipv4", "trsvcid": "4421"}}}"#,
    r#"{"jsonrpc": "2.0", "method": "nvmf_subsystem_add_listener", "id": 1, "params": {"nqn": "nqn.2014-08.org.nvmexpress.discovery", "secure_channel": false, "listen_address": {"trtype": "tcp", "traddr": "0.0.0.0", "trsvcid": "8010"}}}"#,
    r#"{"jsonrpc": "2.0", "method": "nvmf_subsystem_add_ns", "id": 1, "params": {"nqn": "nqn.2016-06.io.spdk:cnode1", "namespace": {"bdev_name": "Malloc0", "nsid": 2, "no_auto_visible": false}}}"#,
    r#"{"jsonrpc": "2.0", "method": "nvmf_subsystem_add_ns", "id": 1, "params": {"nqn": "nqn.2016-06.io.spdk:cnode1", "namespace": {"bdev_name": "Null0", "nguid": "ABCDEF0123456789ABCDEF0123456789", "eui64": "abcdef0123456789", "uuid": "ceccf520-691e-4b46-9546-34af789907c5", "no_auto_visible": false}}}"#,
    r#"{"jsonrpc": "2.0", "method": "nvmf_subsystem_add_ns", "id": 1, "params": {"nqn": "nqn.2016-06.io.spdk:cnode2", "namespace": {"bdev_name": "Malloc1", "no_auto_visible": false}}}"#,
    r#"{"jsonrpc": "2.0", "method": "nvmf_subsystem_add_host", "id": 1, "params": {"nqn": "nqn.2016-06.io.spdk:cnode2", "host": "nqn.2014-08.org.nvmexpress:uuid:8f1a2b3c-0000-4000-8000-000000000001"}}"#,
    r#"{"jsonrpc": "2.0", "method": "nvmf_subsystem_add_host", "id": 1, "params": {"nqn": "nqn.2016-06.io.spdk:cnode2", "host": "nqn.2016-06.io.spdk:host2"}}"#,
    r#"{"jsonrpc": "2.0", "method": "nvmf_subsystem_remove_host", "id": 1, "params": {"nqn": "nqn.2016-06.io.spdk:cnode2", "host": "nqn.2016-06.io.spdk:host2"}}"#,
    r#"{"jsonrpc": "2.0", "method": "nvmf_subsystem_allow_any_host", "id": 1, "params": {"nqn": "nqn.2016-06.io.spdk:cnode2", "allow_any_host": false}}"#,
];

fn client_setup(w: &mut World) {
    bdevs(w);
    let requests: Vec<String> = CLIENT.iter().map(|s| s.to_string()).collect();
    for (r, sent) in w.send(&requests).iter().zip(CLIENT) {
        assert!(r.get("error").is_none(), "{sent}: {r}");
    }
}

#[test]
fn todays_client_builds_a_target() {
    let mut w = World::new();
    client_setup(&mut w);
    let t = w.ok("nvmf_get_transports", Value::Null);
    assert_eq!(t.as_array().unwrap().len(), 1);
    let t = &t[0];
    assert_eq!(t["trtype"], "TCP");
    assert_eq!(
        (
            t["max_queue_depth"].clone(),
            t["max_io_qpairs_per_ctrlr"].clone(),
            t["in_capsule_data_size"].clone(),
            t["max_aq_depth"].clone(),
            t["io_unit_size"].clone(),
            t["header_digest"].clone(),
        ),
        (
            json!(128),
            json!(7),
            json!(8192),
            json!(32),
            json!(131072),
            json!(true)
        )
    );
    assert_eq!(
        w.ok("nvmf_get_transports", json!({ "trtype": "tcp" })),
        w.ok("nvmf_get_transports", Value::Null)
    );
    let subs = w.ok("nvmf_get_subsystems", Value::Null);
    assert_eq!(
        subs[0],
        json!({
            "nqn": DISCOVERY, "subtype": "Discovery",
            "listen_addresses": [{ "trtype": "TCP", "adrfam": "IPv4", "traddr": "0.0.0.0", "trsvcid": "8010" }],
            "hosts": [], "allow_any_host": true
        })
    );
    let (uuid0, nguid0) = {
        let id = w.reg.find("Malloc0").unwrap();
        let u = w.reg.info(id).unwrap().uuid;
        let hex: String = u.0.iter().map(|b| alloc::format!("{b:02X}")).collect();
        (u.to_string(), hex)
    };
    assert_eq!(
        subs[1],
        json!({
            "nqn": NQN, "subtype": "NVMe",
            "listen_addresses": [{ "trtype": "TCP", "adrfam": "IPv4", "traddr": "10.0.2.15", "trsvcid": "4420" }],
            "hosts": [], "allow_any_host": true,
            "serial_number": "SPDK00000000000001", "model_number": "SPDK_Controller1",
            "max_namespaces": 1024, "min_cntlid": 1, "max_cntlid": 65519, "ana_reporting": false,
            "namespaces": [
                { "nsid": 1, "bdev_name": "Null0", "name": "Null0",
                  "nguid": "ABCDEF0123456789ABCDEF0123456789", "eui64": "ABCDEF0123456789",
                  "uuid": "ceccf520-691e-4b46-9546-34af789907c5" },
                { "nsid": 2, "bdev_name": "Malloc0", "name": "Malloc0", "nguid": nguid0, "uuid": uuid0 }
            ]
        })
    );
    let two = &subs[2];
    assert_eq!(two["serial_number"], "00000000000000000000");
    assert_eq!(two["model_number"], "ironbay Controller");
    assert_eq!(two["allow_any_host"], false);
    assert_eq!(
        two["hosts"],
        json!([{ "nqn": "nqn.2014-08.org.nvmexpress:uuid:8f1a2b3c-0000-4000-8000-000000000001" }])
    );
    assert_eq!(two["namespaces"][0]["nsid"], 1);
    // One by NQN, by either name.
    let one = w.ok("nvmf_get_subsystems", json!({ "nqn": NQN }));
    assert_eq!(one, json!([subs[1].clone()]));
    assert_eq!(w.ok("get_nvmf_subsystems", Value::Null), subs);
    let (code, msg) = w.err(
        "nvmf_get_subsystems",
        json!({ "nqn": "nqn.2016-06.io.spdk:none" }),
    );
    assert_eq!((code, msg.contains("no subsystem")), (-32602, true));
    assert_eq!(w.config().max_subsystems, 64);
    assert_eq!(
        w.ok("nvmf_subsystem_get_listeners", json!({ "nqn": NQN })),
        json!([{
            "address": { "trtype": "TCP", "adrfam": "IPv4", "traddr": "10.0.2.15", "trsvcid": "4420" },
            "ana_state": "optimized", "ana_states": [{ "ana_group": 1, "ana_state": "optimized" }]
        }])
    );
    let d = w.ok("nvmf_subsystem_get_listeners", json!({ "nqn": DISCOVERY }));
    assert_eq!(d[0]["address"]["trsvcid"], "8010");
    // Nobody is connected.
    for m in [
        "nvmf_subsystem_get_controllers",
        "nvmf_subsystem_get_qpairs",
    ] {
        assert_eq!(w.ok(m, json!({ "nqn": NQN })), json!([]), "{m}");
    }
    let stats = w.ok("nvmf_get_stats", Value::Null);
    assert_eq!(stats["tick_rate"], 1_000_000);
    let g = &stats["poll_groups"][0];
    assert_eq!(g["name"], "nvmf_tgt_poll_group_000");
    assert_eq!(g["current_io_qpairs"], 0);
    assert_eq!(g["transports"], json!([{ "trtype": "TCP" }]));
}

#[test]
fn namespaces_hosts_and_listeners_go_away() {
    let mut w = World::new();
    client_setup(&mut w);
    let nsid = w.ok(
        "nvmf_subsystem_add_ns",
        json!({ "nqn": NQN, "namespace": { "bdev_name": "Malloc2" } }),
    );
    assert_eq!(nsid, 3, "lowest free");
    w.ok("nvmf_subsystem_remove_ns", json!({ "nqn": NQN, "nsid": 3 }));
    let (code, msg) = w.err("nvmf_subsystem_remove_ns", json!({ "nqn": NQN, "nsid": 3 }));
    assert_eq!(
        (code, msg.as_str()),
        (-32602, "nqn.2016-06.io.spdk:cnode1 has no namespace 3")
    );
    let listener = json!({ "nqn": NQN, "listen_address": { "trtype": "tcp", "traddr": "10.0.2.15", "trsvcid": "4420" } });
    w.ok("nvmf_subsystem_remove_listener", listener.clone());
    assert!(
        w.err("nvmf_subsystem_remove_listener", listener)
            .1
            .contains("no listener")
    );
    w.ok(
        "nvmf_subsystem_remove_listener",
        json!({ "nqn": DISCOVERY, "listen_address": { "trtype": "TCP", "adrfam": "IPv4", "traddr": "0.0.0.0", "trsvcid": "8010" } }),
    );
    assert!(w.config().discovery_listeners.is_empty());
    w.ok(
        "nvmf_subsystem_allow_any_host",
        json!({ "nqn": NQN, "allow_any_host": false }),
    );
    assert!(!w.config().subsystem(NQN).unwrap().allow_any_host);
    w.ok("nvmf_delete_subsystem", json!({ "nqn": NQN }));
    w.ok(
        "delete_nvmf_subsystem",
        json!({ "nqn": "nqn.2016-06.io.spdk:cnode2" }),
    );
    let subs = w.ok("nvmf_get_subsystems", Value::Null);
    assert_eq!(subs.as_array().unwrap().len(), 1, "discovery only");
    // The bdevs are free for new namespaces.
    w.ok(
        "nvmf_create_subsystem",
        json!({ "nqn": NQN, "allow_any_host": true }),
    );
    assert_eq!(
        w.ok(
            "nvmf_subsystem_add_ns",
            json!({ "nqn": NQN, "namespace": { "bdev_name": "Malloc0", "nsid": 9 } })
        ),
        9
    );
}

#[test]
fn deleting_a_bdev_hot_removes_its_namespace() {
    let mut w = World::new();
    client_setup(&mut w);
    let generation = w.config().generation;
    w.ok("bdev_malloc_delete", json!({ "name": "Malloc0" }));
    assert!(w.config().generation > generation);
    let subs = w.ok("nvmf_get_subsystems", json!({ "nqn": NQN }));
    let left: Vec<&str> = subs[0]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["bdev_name"].as_str().unwrap())
        .collect();
    assert_eq!(left, ["Null0"]);
    // A new bdev of the same name is not attached by itself.
    w.ok(
        "bdev_malloc_create",
        json!({ "name": "Malloc0", "num_blocks": 8, "block_size": 512 }),
    );
    let subs = w.ok("nvmf_get_subsystems", json!({ "nqn": NQN }));
    assert_eq!(subs[0]["namespaces"].as_array().unwrap().len(), 1);
}

/// The seed document's requests, verbatim where they make sense.
#[test]
fn the_2018_names_and_the_seed_examples() {
    let mut w = World::new();
    bdevs(&mut w);
    w.ok(
        "set_nvmf_target_options",
        json!({
            "in_capsule_data_size": 4096, "io_unit_size": 131072, "max_qpairs_per_ctrlr": 64,
            "max_queue_depth": 128, "max_io_size": 131072, "max_subsystems": 1024
        }),
    );
    let o = w.config().transport.clone().unwrap();
    assert_eq!((o.max_io_qpairs_per_ctrlr, o.max_queue_depth), (63, 128));
    assert_eq!(w.config().max_subsystems, 1024);
    w.ok(
        "set_nvmf_target_config",
        json!({ "acceptor_poll_rate": 10000 }),
    );
    assert_eq!(w.config().acceptor_poll_rate, 10000);
    // The seed's example listens on RDMA: refused, and nothing is made.
    let seed = json!({
        "nqn": NQN,
        "listen_addresses": [{ "trtype": "RDMA", "adrfam": "IPv4", "traddr": "192.168.0.123", "trsvcid": "4420" }],
        "hosts": ["nqn.2016-06.io.spdk:host1", "nqn.2016-06.io.spdk:host2"],
        "allow_any_host": false,
        "serial_number": "abcdef",
        "namespaces": [{ "nsid": 1, "bdev_name": "Malloc2" }, { "nsid": 2, "bdev_name": "Nvme0n1" }]
    });
    let (code, msg) = w.err("construct_nvmf_subsystem", seed.clone());
    assert_eq!(code, -32602);
    assert!(msg.contains("RDMA not supported"), "{msg}");
    // Over TCP it still names a bdev that is not here: all or nothing.
    let mut tcp = seed.clone();
    tcp["listen_addresses"][0]["trtype"] = "TCP".into();
    let (_, msg) = w.err("construct_nvmf_subsystem", tcp.clone());
    assert!(msg.contains("bdev Nvme0n1 does not exist"), "{msg}");
    assert!(w.config().subsystems.is_empty());
    tcp["namespaces"][1]["bdev_name"] = "Malloc1".into();
    w.ok("construct_nvmf_subsystem", tcp);
    let subs = w.ok("get_nvmf_subsystems", Value::Null);
    assert_eq!(subs[0]["subtype"], "Discovery");
    let s = &subs[1];
    assert_eq!(s["serial_number"], "abcdef");
    assert_eq!(
        s["listen_addresses"],
        json!([{ "trtype": "TCP", "adrfam": "IPv4", "traddr": "192.168.0.123", "trsvcid": "4420" }])
    );
    assert_eq!(
        s["hosts"],
        json!([{ "nqn": "nqn.2016-06.io.spdk:host1" }, { "nqn": "nqn.2016-06.io.spdk:host2" }])
    );
    let names: Vec<(u64, &str)> = s["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["nsid"].as_u64().unwrap(), n["name"].as_str().unwrap()))
        .collect();
    assert_eq!(names, [(1, "Malloc2"), (2, "Malloc1")]);
    // The per-call examples.
    let (_, msg) = w.err(
        "nvmf_subsystem_add_listener",
        json!({ "nqn": NQN, "listen_address": { "trtype": "RDMA", "adrfam": "IPv4", "traddr": "192.168.0.123", "trsvcid": "4420" } }),
    );
    assert!(msg.contains("RDMA not supported"), "{msg}");
    w.ok(
        "nvmf_subsystem_add_listener",
        json!({ "nqn": NQN, "listen_address": { "trtype": "TCP", "adrfam": "IPv4", "traddr": "192.168.0.123", "trsvcid": "4421" } }),
    );
    assert_eq!(
        w.ok(
            "nvmf_subsystem_add_ns",
            json!({ "nqn": NQN, "namespace": { "nsid": 3, "bdev_name": "Malloc0" } })
        ),
        3
    );
    w.ok("nvmf_subsystem_remove_ns", json!({ "nqn": NQN, "nsid": 1 }));
    w.ok(
        "nvmf_subsystem_add_host",
        json!({ "nqn": NQN, "host": "nqn.2016-06.io.spdk:host3" }),
    );
    w.ok(
        "nvmf_subsystem_remove_host",
        json!({ "nqn": NQN, "host": "nqn.2016-06.io.spdk:host1" }),
    );
    w.ok(
        "nvmf_subsystem_allow_any_host",
        json!({ "nqn": NQN, "allow_any_host": true }),
    );
    w.ok("delete_nvmf_subsystem", json!({ "nqn": NQN }));
    assert!(w.config().subsystems.is_empty());
    let names = w.ok("rpc_get_methods", json!({ "include_aliases": true }));
    for n in [
        "get_nvmf_subsystems",
        "construct_nvmf_subsystem",
        "delete_nvmf_subsystem",
        "set_nvmf_target_options",
        "set_nvmf_target_config",
        "nvmf_subsystem_get_qpairs",
    ] {
        assert!(names.as_array().unwrap().iter().any(|m| m == n), "{n}");
    }
}

#[test]
fn saved_config_boots_back() {
    let mut w = World::new();
    client_setup(&mut w);
    w.ok(
        "nvmf_subsystem_add_listener",
        json!({ "nqn": NQN, "listen_address": { "trtype": "TCP", "traddr": "::1", "trsvcid": "4420" } }),
    );
    let saved = w.ok("framework_get_config", Value::Null);
    // SPDK's client builds this itself; a bare `save_config` call gets it whole.
    assert_eq!(w.ok("save_config", Value::Null), saved);
    let subsystems: Vec<&str> = saved["subsystems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["subsystem"].as_str().unwrap())
        .collect();
    assert_eq!(subsystems, ["bdev", "nbd", "nvmf", "iscsi", "targetd"]);
    let nvmf = saved["subsystems"][2]["config"].as_array().unwrap();
    let methods: Vec<&str> = nvmf.iter().map(|c| c["method"].as_str().unwrap()).collect();
    assert_eq!(
        methods,
        [
            "nvmf_set_config",
            "nvmf_set_max_subsystems",
            "nvmf_create_transport",
            "nvmf_create_subsystem",
            "nvmf_subsystem_add_ns",
            "nvmf_subsystem_add_ns",
            "nvmf_subsystem_add_listener",
            "nvmf_subsystem_add_listener",
            "nvmf_create_subsystem",
            "nvmf_subsystem_add_host",
            "nvmf_subsystem_add_ns",
            "nvmf_subsystem_add_listener",
            "nvmf_subsystem_add_listener",
        ]
    );
    let transport = &nvmf[2]["params"];
    assert!(
        transport.get("header_digest").is_none(),
        "ours at default: left out for SPDK"
    );
    assert_eq!(
        w.ok("framework_get_config", json!({ "name": "nvmf" }))
            .as_array()
            .unwrap(),
        nvmf
    );
    let subsystems = w.ok("framework_get_subsystems", Value::Null);
    assert_eq!(
        subsystems[2],
        json!({ "subsystem": "nvmf", "depends_on": ["bdev"] })
    );
    // Boot a fresh appliance from it, both ways the kernel does.
    let bytes = saved.to_string().into_bytes();
    for wait_for_init in [false, true] {
        let mut fresh = World::new();
        boot(&mut fresh, &bytes, wait_for_init);
        for get in ["nvmf_get_subsystems", "nvmf_get_transports"] {
            assert_eq!(fresh.ok(get, Value::Null), w.ok(get, Value::Null), "{get}");
        }
        assert_eq!(fresh.config().max_subsystems, 64);
        assert_eq!(fresh.config().discovery_listeners.len(), 1);
    }
}

/// Applies a boot config as the kernel does: every call in file order, or
/// with `wait_for_init` the startup methods, then `framework_start_init`,
/// then the rest. Every call must succeed.
fn boot(w: &mut World, bytes: &[u8], wait_for_init: bool) {
    let cfg = ironbay_config::bootconfig::BootConfig::parse(bytes).unwrap();
    let (now, later): (Vec<_>, Vec<_>) = cfg.calls().partition(|(_, c)| {
        !wait_for_init || crate::methods::lookup(&c.method).is_some_and(|m| m.startup)
    });
    w.init = !wait_for_init;
    for (sub, c) in now {
        let r = w.ok(&c.method, Value::Object(c.params.clone()));
        assert!(!r.is_null(), "{sub}: {}", c.method);
    }
    if wait_for_init {
        w.ok("framework_start_init", Value::Null);
    }
    for (sub, c) in later {
        let r = w.ok(&c.method, Value::Object(c.params.clone()));
        assert!(!r.is_null(), "{sub}: {}", c.method);
    }
}

/// The appliance's own default boot config serves Malloc0 over NVMe/TCP.
#[test]
fn the_default_boot_config_applies() {
    let bytes = include_bytes!("../../../../../../boot/default-config.json");
    for wait_for_init in [false, true] {
        let mut w = World::new();
        w.iscsi = Some(ironbay_model::iscsi::Target::default());
        boot(&mut w, bytes, wait_for_init);
        let s = &w.ok("nvmf_get_subsystems", Value::Null)[1];
        assert_eq!(s["namespaces"][0]["bdev_name"], "Malloc0");
        assert_eq!(s["listen_addresses"][0]["trsvcid"], "4420");
        assert!(w.config().transport.is_some());
    }
}

#[test]
fn errors_name_the_parameter() {
    let mut w = World::new();
    client_setup(&mut w);
    let generation = w.config().generation;
    let listen = |a: Value| json!({ "nqn": NQN, "listen_address": a });
    for (method, params, code, why) in [
        (
            "nvmf_create_transport",
            json!({}),
            -32602,
            "missing `trtype`",
        ),
        (
            "nvmf_create_transport",
            json!({ "trtype": "TCP" }),
            -32602,
            "already exists",
        ),
        (
            "nvmf_create_transport",
            json!({ "trtype": "RDMA" }),
            -32602,
            "transport type RDMA not supported",
        ),
        (
            "nvmf_create_transport",
            json!({ "trtype": "tcp", "dif_insert_or_strip": true }),
            -32602,
            "`dif_insert_or_strip`",
        ),
        (
            "nvmf_create_transport",
            json!({ "trtype": "tcp", "bogus": 1 }),
            -32602,
            "unknown parameter `bogus`",
        ),
        (
            "nvmf_create_transport",
            json!({ "trtype": "tcp", "tgt_name": "other" }),
            -32602,
            "no NVMe-oF target named other",
        ),
        (
            "nvmf_create_transport",
            json!({ "trtype": "tcp", "max_queue_depth": 70000 }),
            -32602,
            "at most 65535",
        ),
        (
            "nvmf_get_transports",
            json!({ "trtype": "rdma" }),
            -32602,
            "not supported",
        ),
        ("nvmf_create_subsystem", json!({}), -32602, "missing `nqn`"),
        (
            "nvmf_create_subsystem",
            json!({ "nqn": NQN }),
            -32602,
            "already exists",
        ),
        (
            "nvmf_create_subsystem",
            json!({ "nqn": DISCOVERY }),
            -32602,
            "exists always",
        ),
        (
            "nvmf_create_subsystem",
            json!({ "nqn": "cnode3" }),
            -32602,
            "expected nqn.yyyy-mm",
        ),
        (
            "nvmf_create_subsystem",
            json!({ "nqn": "nqn.2016-06.io.spdk:c3", "ana_reporting": true }),
            -32602,
            "`ana_reporting`: not supported",
        ),
        (
            "nvmf_create_subsystem",
            json!({ "nqn": "nqn.2016-06.io.spdk:c3", "serial_number": "123456789012345678901" }),
            -32602,
            "`serial_number` must be 1-20",
        ),
        (
            "nvmf_create_subsystem",
            json!({ "nqn": "nqn.2016-06.io.spdk:c3", "min_cntlid": 5, "max_cntlid": 4 }),
            -32602,
            "controller IDs",
        ),
        (
            "nvmf_create_subsystem",
            json!({ "nqn": "nqn.2016-06.io.spdk:c3", "allow_any_host": "yes" }),
            -32602,
            "`allow_any_host` must be a boolean",
        ),
        (
            "construct_nvmf_subsystem",
            json!({ "nqn": "nqn.2016-06.io.spdk:c3" }),
            -32602,
            "missing `serial_number`",
        ),
        (
            "nvmf_delete_subsystem",
            json!({ "nqn": "nqn.2016-06.io.spdk:c3" }),
            -32602,
            "no subsystem",
        ),
        (
            "nvmf_delete_subsystem",
            json!({ "nqn": DISCOVERY }),
            -32602,
            "cannot be deleted",
        ),
        (
            "nvmf_subsystem_add_listener",
            json!({ "nqn": NQN }),
            -32602,
            "missing `listen_address`",
        ),
        (
            "nvmf_subsystem_add_listener",
            listen(json!({ "trtype": "tcp", "traddr": "10.0.2.15", "trsvcid": "4420" })),
            -32602,
            "already",
        ),
        (
            "nvmf_subsystem_add_listener",
            listen(json!({ "trtype": "tcp", "traddr": "example.com", "trsvcid": "4420" })),
            -32602,
            "not an IP address",
        ),
        (
            "nvmf_subsystem_add_listener",
            listen(
                json!({ "trtype": "tcp", "traddr": "::1", "adrfam": "ipv4", "trsvcid": "4420" }),
            ),
            -32602,
            "not an IPv4 address",
        ),
        (
            "nvmf_subsystem_add_listener",
            listen(
                json!({ "trtype": "tcp", "traddr": "1.2.3.4", "adrfam": "ib", "trsvcid": "4420" }),
            ),
            -32602,
            "address family ib not supported",
        ),
        (
            "nvmf_subsystem_add_listener",
            listen(json!({ "trtype": "tcp", "traddr": "1.2.3.4", "trsvcid": "0" })),
            -32602,
            "1-65535",
        ),
        (
            "nvmf_subsystem_add_listener",
            listen(json!({ "trtype": "tcp", "traddr": "1.2.3.4", "trsvcid": "x" })),
            -32602,
            "1-65535",
        ),
        (
            "nvmf_subsystem_add_listener",
            listen(json!({ "trtype": "tcp", "traddr": "1.2.3.4" })),
            -32602,
            "missing `trsvcid`",
        ),
        (
            "nvmf_subsystem_add_listener",
            json!({ "nqn": NQN, "secure_channel": true, "listen_address": { "trtype": "tcp", "traddr": "1.2.3.4", "trsvcid": "4420" } }),
            -32602,
            "TLS",
        ),
        (
            "nvmf_subsystem_add_ns",
            json!({ "nqn": NQN }),
            -32602,
            "missing `namespace`",
        ),
        (
            "nvmf_subsystem_add_ns",
            json!({ "nqn": NQN, "namespace": {} }),
            -32602,
            "missing `bdev_name`",
        ),
        (
            "nvmf_subsystem_add_ns",
            json!({ "nqn": NQN, "namespace": { "bdev_name": "Nope" } }),
            -32602,
            "bdev Nope does not exist",
        ),
        (
            "nvmf_subsystem_add_ns",
            json!({ "nqn": NQN, "namespace": { "bdev_name": "Malloc2", "nsid": 2 } }),
            -32602,
            "has a namespace 2 already",
        ),
        (
            "nvmf_subsystem_add_ns",
            json!({ "nqn": NQN, "namespace": { "bdev_name": "Malloc1" } }),
            -32602,
            "namespace 1 of nqn.2016-06.io.spdk:cnode2",
        ),
        (
            "nvmf_subsystem_add_ns",
            json!({ "nqn": NQN, "namespace": { "bdev_name": "Malloc2", "nsid": 4294967295u64 } }),
            -32602,
            "from 1 to 4294967294",
        ),
        (
            "nvmf_subsystem_add_ns",
            json!({ "nqn": NQN, "namespace": { "bdev_name": "Malloc2", "nsid": 5000 } }),
            -32602,
            "from 1 to 1024",
        ),
        (
            "nvmf_subsystem_add_ns",
            json!({ "nqn": NQN, "namespace": { "bdev_name": "Malloc2", "nguid": "12" } }),
            -32602,
            "`nguid` must be 32 hex digits",
        ),
        (
            "nvmf_subsystem_add_ns",
            json!({ "nqn": NQN, "namespace": { "bdev_name": "Malloc2", "eui64": "zz23456789abcdef" } }),
            -32602,
            "`eui64` must be 16 hex digits",
        ),
        (
            "nvmf_subsystem_add_ns",
            json!({ "nqn": NQN, "namespace": { "bdev_name": "Malloc2", "uuid": "x" } }),
            -32602,
            "not a UUID",
        ),
        (
            "nvmf_subsystem_add_ns",
            json!({ "nqn": NQN, "namespace": { "bdev_name": "Malloc2", "ptpl_file": "/x" } }),
            -32602,
            "`ptpl_file`: not supported",
        ),
        (
            "nvmf_subsystem_add_ns",
            json!({ "nqn": DISCOVERY, "namespace": { "bdev_name": "Malloc2" } }),
            -32602,
            "no namespaces",
        ),
        (
            "nvmf_subsystem_remove_ns",
            json!({ "nqn": NQN }),
            -32602,
            "missing `nsid`",
        ),
        (
            "nvmf_subsystem_add_host",
            json!({ "nqn": NQN, "host": "bob" }),
            -32602,
            "host NQN bob",
        ),
        (
            "nvmf_subsystem_add_host",
            json!({ "nqn": NQN, "host": "nqn.2016-06.io.spdk:h", "psk": "key0" }),
            -32602,
            "`psk`",
        ),
        (
            "nvmf_subsystem_add_host",
            json!({ "nqn": NQN }),
            -32602,
            "missing `host`",
        ),
        (
            "nvmf_subsystem_remove_host",
            json!({ "nqn": NQN, "host": "nqn.2016-06.io.spdk:h" }),
            -32602,
            "does not list",
        ),
        (
            "nvmf_subsystem_allow_any_host",
            json!({ "nqn": NQN }),
            -32602,
            "missing `allow_any_host`",
        ),
        (
            "nvmf_subsystem_allow_any_host",
            json!({ "nqn": "nqn.2016-06.io.spdk:c3", "allow_any_host": true }),
            -32602,
            "no subsystem",
        ),
        (
            "nvmf_subsystem_get_controllers",
            json!({ "nqn": "nqn.2016-06.io.spdk:c3" }),
            -32602,
            "no subsystem",
        ),
        (
            "nvmf_subsystem_get_qpairs",
            json!({}),
            -32602,
            "missing `nqn`",
        ),
        (
            "nvmf_subsystem_get_listeners",
            json!({ "nqn": "nqn.2016-06.io.spdk:c3" }),
            -32602,
            "no subsystem",
        ),
        (
            "nvmf_get_stats",
            json!({ "x": 1 }),
            -32602,
            "unknown parameter `x`",
        ),
        (
            "nvmf_set_config",
            json!({ "discovery_filter": "transport" }),
            -32602,
            "only match_any",
        ),
        (
            "nvmf_set_config",
            json!({ "admin_cmd_passthru": { "identify_ctrlr": true } }),
            -32602,
            "passthrough is not supported",
        ),
        (
            "nvmf_set_max_subsystems",
            json!({ "max_subsystems": 0 }),
            -32602,
            "from 1 to 1024",
        ),
        (
            "nvmf_set_max_subsystems",
            json!({ "max_subsystems": 1 }),
            -1,
            "2 subsystems exist",
        ),
        (
            "nvmf_set_max_subsystems",
            json!({}),
            -32602,
            "missing `max_subsystems`",
        ),
        (
            "set_nvmf_target_options",
            json!({ "max_io_size": 1000 }),
            -32602,
            "power of two",
        ),
        (
            "set_nvmf_target_options",
            json!({ "max_qpairs_per_ctrlr": 1 }),
            -32602,
            "at least 2",
        ),
    ] {
        let (c, msg) = w.err(method, params.clone());
        assert!(
            msg.contains(why),
            "{method} {params}: {msg:?} lacks {why:?}"
        );
        assert_eq!(c, code, "{method} {params}: {msg}");
    }
    assert_eq!(w.config().generation, generation, "nothing changed");
}

#[test]
fn without_a_running_target() {
    let mut w = World::new();
    w.target = None;
    assert_eq!(w.ok("nvmf_get_subsystems", Value::Null), json!([]));
    assert_eq!(w.ok("nvmf_get_transports", Value::Null), json!([]));
    assert_eq!(
        w.ok("framework_get_config", json!({ "name": "nvmf" })),
        json!([])
    );
    for (method, params) in [
        ("nvmf_create_transport", json!({ "trtype": "TCP" })),
        ("nvmf_create_subsystem", json!({ "nqn": NQN })),
        ("nvmf_get_stats", Value::Null),
        ("nvmf_subsystem_get_qpairs", json!({ "nqn": NQN })),
    ] {
        let (code, msg) = w.err(method, params);
        assert_eq!(code, -1, "{method}");
        assert!(msg.contains("not running"), "{method}: {msg}");
    }
}

/// A Fabrics Connect for queue `qid` of the host below to `subnqn`; an
/// admin queue's controller is then enabled (CC.EN), as hosts do before
/// they add I/O queues. Returns the controller ID.
fn connect(w: &mut World, subnqn: &str, qid: u16, cntlid: u16, local: &str) -> u16 {
    use ironbay_model::nvmf::{ctrl, spec};
    let mut sqe = [0u8; 64];
    sqe[0] = spec::OPC_FABRICS;
    sqe[4] = spec::FCTYPE_CONNECT;
    sqe[42..44].copy_from_slice(&qid.to_le_bytes());
    sqe[44..46].copy_from_slice(&31u16.to_le_bytes());
    let mut data = [0u8; 1024];
    data[..16].copy_from_slice(&HOST_ID);
    data[16..18].copy_from_slice(&cntlid.to_le_bytes());
    data[256..256 + subnqn.len()].copy_from_slice(subnqn.as_bytes());
    data[512..512 + HOST.len()].copy_from_slice(HOST.as_bytes());
    let t = w.target.as_mut().unwrap();
    let (q, dw0) = ctrl::connect(
        t,
        &w.reg,
        &spec::Sqe(sqe),
        &data,
        local.parse().unwrap(),
        "10.0.2.2:51000".parse().unwrap(),
        0,
    )
    .unwrap_or_else(|e| panic!("connect {subnqn} qid {qid}: {e:?}"));
    assert_eq!(q.qid, qid);
    if qid == 0 {
        let mut set = [0u8; 64];
        set[0] = spec::OPC_FABRICS;
        set[4] = spec::FCTYPE_PROPERTY_SET;
        set[44..48].copy_from_slice(&spec::PROP_CC.to_le_bytes());
        // EN, with 64-byte SQ and 16-byte CQ entries.
        set[48..52].copy_from_slice(&(1u32 | 6 << 16 | 4 << 20).to_le_bytes());
        let local = local.parse().unwrap();
        match ctrl::admin(t, &w.reg, &q, &spec::Sqe(set), &[], local, 0) {
            ctrl::Outcome::Done { status, .. } => assert_eq!(status, spec::Status::SUCCESS),
            ctrl::Outcome::Parked => panic!("property set parked"),
        }
    }
    dw0 as u16
}

const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:8f1a2b3c-0000-4000-8000-000000000001";
const HOST_ID: [u8; 16] = [
    0x8f, 0x1a, 0x2b, 0x3c, 0, 0, 0x40, 0, 0x80, 0, 0, 0, 0, 0, 0, 1,
];

#[test]
fn live_controllers_are_listed_and_fail_when_their_host_goes() {
    use ironbay_model::nvmf::ctrl;
    let mut w = World::new();
    client_setup(&mut w);
    let cnode2 = "nqn.2016-06.io.spdk:cnode2";
    let cntlid = connect(&mut w, cnode2, 0, 0xffff, "10.0.2.15:4421");
    connect(&mut w, cnode2, 1, cntlid, "10.0.2.15:4421");
    assert_eq!(
        w.ok("nvmf_subsystem_get_controllers", json!({ "nqn": cnode2 })),
        json!([{
            "cntlid": cntlid, "hostnqn": HOST,
            "hostid": "8f1a2b3c-0000-4000-8000-000000000001", "num_io_qpairs": 1
        }])
    );
    assert_eq!(
        w.ok("nvmf_subsystem_get_controllers", json!({ "nqn": NQN })),
        json!([])
    );
    let qpairs = w.ok("nvmf_subsystem_get_qpairs", json!({ "nqn": cnode2 }));
    assert_eq!(qpairs.as_array().unwrap().len(), 2);
    assert_eq!(
        qpairs[1],
        json!({
            "cntlid": cntlid, "qid": 1, "state": "active", "thread": "nvmf_tgt_poll_group_000",
            "hostnqn": HOST,
            "listen_address": { "trtype": "TCP", "adrfam": "IPv4", "traddr": "10.0.2.15", "trsvcid": "4421" },
            "peer_address": { "trtype": "TCP", "adrfam": "IPv4", "traddr": "10.0.2.2", "trsvcid": "51000" }
        })
    );
    let g = &w.ok("nvmf_get_stats", Value::Null)["poll_groups"][0];
    assert_eq!(
        (
            g["admin_qpairs"].clone(),
            g["io_qpairs"].clone(),
            g["current_admin_qpairs"].clone(),
            g["current_io_qpairs"].clone(),
            g["pending_bdev_io"].clone(),
        ),
        (json!(1), json!(1), json!(1), json!(1), json!(0))
    );
    assert!(ctrl::alive(w.target.as_ref().unwrap(), cntlid));
    // Removing the host from the allow list fails its controller.
    w.ok(
        "nvmf_subsystem_remove_host",
        json!({ "nqn": cnode2, "host": HOST }),
    );
    assert!(!ctrl::alive(w.target.as_ref().unwrap(), cntlid));
}

#[test]
fn deleting_a_subsystem_fails_its_controllers() {
    use ironbay_model::nvmf::ctrl;
    let mut w = World::new();
    client_setup(&mut w);
    let cntlid = connect(&mut w, NQN, 0, 0xffff, "10.0.2.15:4420");
    let seq = w.target.as_ref().unwrap().events_seq();
    w.ok("nvmf_delete_subsystem", json!({ "nqn": NQN }));
    let t = w.target.as_ref().unwrap();
    assert!(!ctrl::alive(t, cntlid));
    assert!(t.events_seq() > seq, "connections are told to look");
}
