//! The iSCSI methods through a session, with the requests today's SPDK
//! client sends (`spdk-rpc --dry-run`) and the 2018 names.

use crate::Session;
use alloc::string::String;
use alloc::vec::Vec;
use ironbay_bdev::Registry;
use ironbay_model::Model;
use ironbay_model::iscsi::{ConnInfo, Target};

use serde_json::{Value, json};

struct World {
    reg: Registry,
    target: Option<Target>,
    init: bool,
    down: bool,
}

impl World {
    fn new() -> Self {
        World {
            reg: Registry::new(),
            target: Some(Target::default()),
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
            iscsi: self.target.as_mut(),
            nvmf: None,
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

    fn config(&self) -> &ironbay_model::iscsi::Config {
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
        ("Null0", "bdev_null_create"),
    ] {
        w.ok(
            method,
            json!({ "name": name, "num_blocks": 128, "block_size": 512 }),
        );
    }
}

/// What `spdk-rpc` sends for a typical setup (from `--dry-run`).
const CLIENT: &[&str] = &[
    r#"{"jsonrpc":"2.0","method":"iscsi_set_options","id":1,"params":{"node_base":"iqn.2024-01.com.example","nop_timeout":30,"disable_chap":false,"require_chap":false,"mutual_chap":false,"max_queue_depth":128,"immediate_data":false,"allow_duplicated_isid":false}}"#,
    r#"{"jsonrpc":"2.0","method":"iscsi_create_auth_group","id":2,"params":{"tag":1,"secrets":[{"user":"u1","secret":"s1","muser":"mu1","msecret":"ms1"},{"user":"u2","secret":"s2"}]}}"#,
    r#"{"jsonrpc":"2.0","method":"iscsi_auth_group_add_secret","id":3,"params":{"tag":1,"user":"u3","secret":"s3"}}"#,
    r#"{"jsonrpc":"2.0","method":"iscsi_auth_group_remove_secret","id":4,"params":{"tag":1,"user":"u3"}}"#,
    r#"{"jsonrpc":"2.0","method":"iscsi_set_discovery_auth","id":5,"params":{"disable_chap":false,"require_chap":true,"mutual_chap":true,"chap_group":1}}"#,
    r#"{"jsonrpc":"2.0","method":"iscsi_create_portal_group","id":6,"params":{"portals":[{"host":"127.0.0.1","port":"3260"}],"tag":1,"private":false,"wait":false}}"#,
    r#"{"jsonrpc":"2.0","method":"iscsi_create_initiator_group","id":7,"params":{"tag":2,"initiators":["ANY"],"netmasks":["127.0.0.1/32"]}}"#,
    r#"{"jsonrpc":"2.0","method":"iscsi_initiator_group_add_initiators","id":8,"params":{"tag":2,"initiators":["iqn.2000-01.x:a"],"netmasks":["10.0.0.0/8"]}}"#,
    r#"{"jsonrpc":"2.0","method":"iscsi_initiator_group_remove_initiators","id":9,"params":{"tag":2,"initiators":["iqn.2000-01.x:a"],"netmasks":[]}}"#,
    r#"{"jsonrpc":"2.0","method":"iscsi_create_target_node","id":10,"params":{"luns":[{"bdev_name":"Null0","lun_id":0},{"bdev_name":"Malloc0","lun_id":1}],"pg_ig_maps":[{"pg_tag":1,"ig_tag":2}],"name":"disk1","alias_name":"disk1_alias","queue_depth":256,"disable_chap":true,"require_chap":false,"mutual_chap":false,"header_digest":false,"data_digest":false}}"#,
    r#"{"jsonrpc":"2.0","method":"iscsi_target_node_add_lun","id":11,"params":{"name":"iqn.2024-01.com.example:disk1","bdev_name":"Malloc1"}}"#,
    r#"{"jsonrpc":"2.0","method":"iscsi_target_node_set_auth","id":12,"params":{"name":"iqn.2024-01.com.example:disk1","chap_group":1,"disable_chap":false,"require_chap":true,"mutual_chap":false}}"#,
    r#"{"jsonrpc":"2.0","method":"iscsi_create_initiator_group","id":13,"params":{"tag":3,"initiators":["iqn.2000-01.x:b"],"netmasks":["ANY"]}}"#,
    r#"{"jsonrpc":"2.0","method":"iscsi_target_node_add_pg_ig_maps","id":14,"params":{"pg_ig_maps":[{"pg_tag":1,"ig_tag":3}],"name":"iqn.2024-01.com.example:disk1"}}"#,
    r#"{"jsonrpc":"2.0","method":"iscsi_target_node_remove_pg_ig_maps","id":15,"params":{"pg_ig_maps":[{"pg_tag":1,"ig_tag":3}],"name":"disk1"}}"#,
];

fn client_setup(w: &mut World) {
    bdevs(w);
    let requests: Vec<String> = CLIENT.iter().map(|s| s.to_string()).collect();
    for r in w.send(&requests) {
        assert_eq!(r["result"], true, "{r}");
    }
}

#[test]
fn todays_client_builds_a_target() {
    let mut w = World::new();
    client_setup(&mut w);
    let o = w.ok("iscsi_get_options", Value::Null);
    assert_eq!(o["node_base"], "iqn.2024-01.com.example");
    assert_eq!(
        (o["max_queue_depth"].clone(), o["nop_timeout"].clone()),
        (json!(128), json!(30))
    );
    assert_eq!(o["immediate_data"], false);
    assert_eq!(
        (
            o["require_chap"].clone(),
            o["mutual_chap"].clone(),
            o["chap_group"].clone()
        ),
        (json!(true), json!(true), json!(1))
    );
    assert_eq!(o["max_sessions"], 128, "untouched keys keep their value");
    assert_eq!(
        w.ok("iscsi_get_auth_groups", Value::Null),
        json!([{ "tag": 1, "secrets": [
            { "user": "u1", "secret": "s1", "muser": "mu1", "msecret": "ms1" },
            { "user": "u2", "secret": "s2" }
        ]}])
    );
    assert_eq!(
        w.ok("iscsi_get_portal_groups", Value::Null),
        json!([{ "tag": 1, "private": false, "portals": [{ "host": "127.0.0.1", "port": "3260" }] }])
    );
    assert_eq!(
        w.ok("iscsi_get_initiator_groups", Value::Null),
        json!([
            { "tag": 2, "initiators": ["ANY"], "netmasks": ["127.0.0.1/32", "10.0.0.0/8"] },
            { "tag": 3, "initiators": ["iqn.2000-01.x:b"], "netmasks": ["ANY"] }
        ])
    );
    assert_eq!(
        w.ok("iscsi_get_target_nodes", Value::Null),
        json!([{
            "name": "iqn.2024-01.com.example:disk1", "alias_name": "disk1_alias",
            "pg_ig_maps": [{ "pg_tag": 1, "ig_tag": 2 }],
            "luns": [
                { "bdev_name": "Null0", "lun_id": 0 }, { "bdev_name": "Malloc0", "lun_id": 1 },
                { "bdev_name": "Malloc1", "lun_id": 2 }
            ],
            "queue_depth": 128, "disable_chap": false, "require_chap": true, "mutual_chap": false,
            "chap_group": 1, "header_digest": false, "data_digest": false
        }])
    );
    assert_eq!(w.ok("iscsi_get_connections", Value::Null), json!([]));
    // Taking things apart, as a client tears down.
    w.ok(
        "iscsi_delete_target_node",
        json!({ "name": "iqn.2024-01.com.example:disk1" }),
    );
    w.ok("iscsi_delete_initiator_group", json!({ "tag": 2 }));
    w.ok("iscsi_delete_portal_group", json!({ "tag": 1 }));
    w.ok("iscsi_delete_auth_group", json!({ "tag": 1 }));
    assert!(w.config().nodes.is_empty() && w.config().portal_groups.is_empty());
}

#[test]
fn the_2018_names_and_keys_work() {
    let mut w = World::new();
    w.init = false;
    w.ok(
        "set_iscsi_options",
        json!({ "node_base": "iqn.2016-06.io.spdk", "no_discovery_auth": true, "min_connections_per_core": 8,
                "auth_file": "/usr/local/etc/spdk/auth.conf", "default_time2retain": 60 }),
    );
    w.ok("start_subsystem_init", Value::Null);
    bdevs(&mut w);
    w.ok("add_iscsi_auth_group", json!({ "tag": 2, "secrets": [{ "user": "u1", "secret": "s1", "muser": "mu1", "msecret": "ms1" }] }));
    w.ok(
        "add_secret_to_iscsi_auth_group",
        json!({ "tag": 2, "user": "u3", "secret": "s3" }),
    );
    w.ok(
        "delete_secret_from_iscsi_auth_group",
        json!({ "tag": 2, "user": "u3" }),
    );
    w.ok(
        "set_iscsi_discovery_auth",
        json!({ "chap_group": 2, "require_chap": true }),
    );
    w.ok(
        "add_portal_group",
        json!({ "tag": 1, "portals": [{ "host": "*", "port": "3260" }] }),
    );
    w.ok("add_initiator_group", json!({ "tag": 1, "initiators": ["iqn.2016-06.io.spdk:host1"], "netmasks": ["192.168.1.0/24"] }));
    w.ok("add_initiators_to_initiator_group", json!({ "tag": 1, "initiators": ["iqn.2016-06.io.spdk:host3"], "netmasks": ["255.255.255.1"] }));
    w.ok(
        "delete_initiators_from_initiator_group",
        json!({ "tag": 1, "initiators": ["iqn.2016-06.io.spdk:host3"] }),
    );
    w.ok(
        "construct_target_node",
        json!({ "name": "target2", "alias_name": "iscsi-target2-alias", "luns": [{ "lun_id": 0, "bdev_name": "Malloc0" }],
                "pg_ig_maps": [{ "ig_tag": 1, "pg_tag": 1 }], "data_digest": true, "header_digest": true,
                "queue_depth": 24, "mutual_chap": true, "require_chap": true, "chap_group": 2 }),
    );
    w.ok(
        "target_node_add_lun",
        json!({ "lun_id": 2, "name": "iqn.2016-06.io.spdk:target2", "bdev_name": "Malloc1" }),
    );
    w.ok(
        "set_iscsi_target_node_auth",
        json!({ "name": "iqn.2016-06.io.spdk:target2", "disable_chap": true }),
    );
    w.ok(
        "add_pg_ig_maps",
        json!({ "name": "iqn.2016-06.io.spdk:target2", "pg_ig_maps": [] }),
    );
    w.ok("delete_pg_ig_maps", json!({ "name": "iqn.2016-06.io.spdk:target2", "pg_ig_maps": [{ "ig_tag": 1, "pg_tag": 1 }] }));
    let o = w.ok("get_iscsi_global_params", Value::Null);
    assert_eq!(
        (
            o["disable_chap"].clone(),
            o["require_chap"].clone(),
            o["chap_group"].clone()
        ),
        (json!(false), json!(true), json!(2))
    );
    assert_eq!(
        (
            o["min_connections_per_core"].clone(),
            o["default_time2retain"].clone()
        ),
        (json!(8), json!(60))
    );
    assert_eq!(o["auth_file"], "/usr/local/etc/spdk/auth.conf");
    let n = &w.ok("get_target_nodes", Value::Null)[0];
    assert_eq!(
        (
            n["queue_depth"].clone(),
            n["data_digest"].clone(),
            n["disable_chap"].clone(),
            n["chap_group"].clone()
        ),
        (json!(24), json!(true), json!(true), json!(0))
    );
    assert_eq!(n["luns"][1], json!({ "bdev_name": "Malloc1", "lun_id": 2 }));
    assert_eq!(
        w.ok("get_portal_groups", Value::Null)[0]["portals"][0]["host"],
        "0.0.0.0"
    );
    assert_eq!(
        w.ok("get_initiator_groups", Value::Null)[0]["netmasks"],
        json!(["192.168.1.0/24", "255.255.255.1"])
    );
    assert_eq!(
        w.ok("get_iscsi_auth_groups", Value::Null)[0]["secrets"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(w.ok("get_iscsi_connections", Value::Null), json!([]));
    w.ok(
        "delete_target_node",
        json!({ "name": "iqn.2016-06.io.spdk:target2" }),
    );
    w.ok("delete_portal_group", json!({ "tag": 1 }));
    w.ok("delete_initiator_group", json!({ "tag": 1 }));
    w.ok("delete_iscsi_auth_group", json!({ "tag": 2 }));
    let names = w.ok("rpc_get_methods", json!({ "include_aliases": true }));
    for n in [
        "iscsi_create_target_node",
        "construct_target_node",
        "get_iscsi_connections",
        "bdev_null_resize",
    ] {
        assert!(names.as_array().unwrap().iter().any(|m| m == n), "{n}");
    }
}

#[test]
fn saved_config_boots_back() {
    let mut w = World::new();
    client_setup(&mut w);
    w.ok(
        "iscsi_create_portal_group",
        json!({ "tag": 7, "private": true, "portals": [{ "host": "[::1]", "port": 3261 }] }),
    );
    let mut o = w.config().options.clone();
    o.max_burst_length = 512 * 1024;
    w.target.as_mut().unwrap().config.options = o;
    let saved = w.ok("framework_get_config", Value::Null);
    let subsystems: Vec<&str> = saved["subsystems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["subsystem"].as_str().unwrap())
        .collect();
    assert_eq!(subsystems, ["bdev", "nbd", "nvmf", "iscsi", "targetd"]);
    let iscsi = saved["subsystems"][3]["config"].as_array().unwrap();
    let methods: Vec<&str> = iscsi
        .iter()
        .map(|c| c["method"].as_str().unwrap())
        .collect();
    assert_eq!(
        methods,
        [
            "iscsi_set_options",
            "iscsi_create_auth_group",
            "iscsi_create_portal_group",
            "iscsi_create_portal_group",
            "iscsi_create_initiator_group",
            "iscsi_create_initiator_group",
            "iscsi_create_target_node"
        ]
    );
    let opts = &iscsi[0]["params"];
    assert_eq!(opts["max_burst_length"], 512 * 1024, "ours, not at default");
    assert!(
        opts.get("initial_r2t").is_none(),
        "ours at default: left out for SPDK"
    );
    assert_eq!(
        w.ok("framework_get_config", json!({ "name": "iscsi" }))
            .as_array()
            .unwrap(),
        iscsi
    );
    let subsystems = w.ok("framework_get_subsystems", Value::Null);
    assert_eq!(
        subsystems[3],
        json!({ "subsystem": "iscsi", "depends_on": ["bdev"] })
    );
    // Replay everything into a fresh appliance, as a boot config would.
    let mut fresh = World::new();
    fresh.init = false;
    let calls: Vec<(String, Value)> = saved["subsystems"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["config"].as_array().unwrap().iter())
        .map(|c| {
            (
                c["method"].as_str().unwrap().to_string(),
                c["params"].clone(),
            )
        })
        .collect();
    for (method, params) in calls.iter().filter(|(m, _)| m.ends_with("set_options")) {
        fresh.ok(method, params.clone());
    }
    fresh.ok("framework_start_init", Value::Null);
    for (method, params) in calls.iter().filter(|(m, _)| !m.ends_with("set_options")) {
        fresh.ok(method, params.clone());
    }
    for get in [
        "iscsi_get_options",
        "iscsi_get_auth_groups",
        "iscsi_get_portal_groups",
        "iscsi_get_initiator_groups",
        "iscsi_get_target_nodes",
    ] {
        assert_eq!(fresh.ok(get, Value::Null), w.ok(get, Value::Null), "{get}");
    }
}

#[test]
fn errors_name_the_parameter() {
    let mut w = World::new();
    client_setup(&mut w);
    let generation = w.config().generation;
    for (method, params, why) in [
        (
            "iscsi_create_portal_group",
            json!({ "portals": [] }),
            "missing `tag`",
        ),
        (
            "iscsi_create_portal_group",
            json!({ "tag": 0, "portals": [] }),
            "`tag` must be a positive",
        ),
        (
            "iscsi_create_portal_group",
            json!({ "tag": 5, "portals": [{ "host": "h", "port": "x" }] }),
            "port",
        ),
        (
            "iscsi_create_portal_group",
            json!({ "tag": 5, "portals": [{ "host": "h", "port": "3260" }] }),
            "not an IP",
        ),
        (
            "iscsi_create_portal_group",
            json!({ "tag": 5 }),
            "missing `portals`",
        ),
        (
            "iscsi_create_portal_group",
            json!({ "tag": 5, "portals": [{ "host": "::1", "port": 1, "x": 1 }] }),
            "unknown parameter `x`",
        ),
        (
            "iscsi_create_portal_group",
            json!({ "tag": 5, "portals": [{ "host": "::1", "port": 1 }], "private": 1 }),
            "`private` must be a boolean",
        ),
        (
            "iscsi_create_initiator_group",
            json!({ "tag": 5, "initiators": ["ANY"] }),
            "missing `netmasks`",
        ),
        (
            "iscsi_create_initiator_group",
            json!({ "tag": 5, "initiators": "ANY", "netmasks": ["ANY"] }),
            "`initiators` must be a list",
        ),
        (
            "iscsi_create_initiator_group",
            json!({ "tag": 5, "initiators": [1], "netmasks": ["ANY"] }),
            "must hold strings",
        ),
        (
            "iscsi_create_target_node",
            json!({ "name": "d", "luns": [], "pg_ig_maps": [] }),
            "missing `queue_depth`",
        ),
        (
            "iscsi_create_target_node",
            json!({ "name": "d", "luns": [], "pg_ig_maps": [], "queue_depth": -1 }),
            "`queue_depth`",
        ),
        (
            "iscsi_create_target_node",
            json!({ "name": "d", "luns": [{ "bdev_name": "X" }], "pg_ig_maps": [], "queue_depth": 1 }),
            "bdev X",
        ),
        (
            "iscsi_create_target_node",
            json!({ "name": "d", "luns": [{ "bdev_name": "Null0", "lun_id": -2 }], "pg_ig_maps": [], "queue_depth": 1 }),
            "`lun_id`",
        ),
        (
            "iscsi_create_target_node",
            json!({ "name": "d", "luns": [], "pg_ig_maps": [{ "pg_tag": 1 }], "queue_depth": 1 }),
            "missing `ig_tag`",
        ),
        (
            "iscsi_create_target_node",
            json!({ "name": "d", "luns": [], "pg_ig_maps": [], "queue_depth": 1, "disable_chap": true, "require_chap": true }),
            "mutually exclusive",
        ),
        (
            "iscsi_create_target_node",
            json!({ "luns": [], "pg_ig_maps": [], "queue_depth": 1 }),
            "missing `name`",
        ),
        (
            "iscsi_target_node_add_lun",
            json!({ "name": "disk1", "bdev_name": "Null0", "lun_id": 0 }),
            "LUN 0 already",
        ),
        (
            "iscsi_target_node_add_lun",
            json!({ "name": "nope", "bdev_name": "Null0" }),
            "no target node nope",
        ),
        (
            "iscsi_auth_group_add_secret",
            json!({ "tag": 1, "user": "u9" }),
            "missing `secret`",
        ),
        (
            "iscsi_auth_group_add_secret",
            json!({ "tag": 1, "user": "u9", "secret": 5 }),
            "`secret`",
        ),
        (
            "iscsi_create_auth_group",
            json!({ "tag": 1 }),
            "already exists",
        ),
        (
            "iscsi_set_options",
            json!({ "max_queue_depth": 0 }),
            "max_queue_depth",
        ),
        (
            "iscsi_set_options",
            json!({ "nop_timeout": -1 }),
            "`nop_timeout`",
        ),
        (
            "iscsi_set_options",
            json!({ "pdu_pool_size": 0 }),
            "`pdu_pool_size`",
        ),
        (
            "iscsi_set_options",
            json!({ "colour": 0 }),
            "unknown parameter `colour`",
        ),
        (
            "iscsi_set_discovery_auth",
            json!({ "disable_chap": true, "require_chap": true }),
            "mutually exclusive",
        ),
        (
            "iscsi_target_node_set_auth",
            json!({ "name": "disk1", "mutual_chap": true }),
            "needs `require_chap`",
        ),
        (
            "iscsi_get_target_nodes",
            json!({ "name": "disk1" }),
            "unknown parameter `name`",
        ),
        (
            "iscsi_start_portal_group",
            json!({ "tag": 9 }),
            "no portal group 9",
        ),
        (
            "iscsi_initiator_group_remove_initiators",
            json!({ "tag": 2, "netmasks": ["1.2.3.4"] }),
            "no netmask",
        ),
    ] {
        let (code, msg) = w.err(method, params.clone());
        assert_eq!(code, -32602, "{method} {params}: {msg}");
        assert!(msg.contains(why), "{method} {params}: {msg} lacks {why}");
    }
    let (code, msg) = w.err("iscsi_delete_portal_group", json!({ "tag": 1 }));
    assert_eq!(code, -1, "in use: {msg}");
    assert_eq!(w.config().generation, generation, "nothing changed");
    // Not running; before init.
    let mut off = World::new();
    off.target = None;
    assert_eq!(
        off.err("iscsi_create_auth_group", json!({ "tag": 1 })).0,
        -1
    );
    assert_eq!(off.err("iscsi_get_options", Value::Null).0, -1);
    assert_eq!(off.ok("iscsi_get_target_nodes", Value::Null), json!([]));
    assert_eq!(
        off.ok("framework_get_config", json!({ "name": "iscsi" })),
        json!([])
    );
    let mut early = World::new();
    early.init = false;
    let (code, msg) = early.err("iscsi_create_auth_group", json!({ "tag": 1 }));
    assert_eq!(code, -1, "{msg}");
}

#[test]
fn connections_are_listed_with_short_names() {
    let mut w = World::new();
    client_setup(&mut w);
    // Live connections come from the engine; the listing is checked on one.
    let conn = ConnInfo {
        id: 3,
        cid: 0,
        tsih: 7,
        isid: [0x80, 0, 0x02, 0x3d, 0, 0],
        initiator_name: "iqn.1994-05.com.redhat:host".into(),
        initiator_addr: "127.0.0.1".into(),
        target_name: "iqn.2024-01.com.example:disk1".into(),
        target_addr: "127.0.0.1".into(),
        portal_group_tag: 1,
        state: "full_feature",
    };
    let c = super::conn_json(w.config(), &conn);
    assert_eq!(c["target_node_name"], "disk1");
    assert_eq!(
        (&c["id"], &c["tsih"], &c["isid"], &c["portal_group_tag"]),
        (&json!(3), &json!(7), &json!("8000023d0000"), &json!(1))
    );
    let discovery = ConnInfo {
        target_name: String::new(),
        ..conn
    };
    assert_eq!(
        super::conn_json(w.config(), &discovery)["target_node_name"],
        ""
    );
}

#[test]
fn null_bdevs_resize_in_mib() {
    let mut w = World::new();
    bdevs(&mut w);
    w.ok(
        "bdev_null_resize",
        json!({ "name": "Null0", "new_size": 2 }),
    );
    let b = w.ok("bdev_get_bdevs", json!({ "name": "Null0" }));
    assert_eq!(b[0]["num_blocks"], 4096);
    for (params, why) in [
        (
            json!({ "name": "Malloc0", "new_size": 2 }),
            "not a Null disk",
        ),
        (json!({ "name": "Nope", "new_size": 2 }), "does not exist"),
        (json!({ "name": "Null0" }), "missing `new_size`"),
        (
            json!({ "name": "Null0", "new_size": 0 }),
            "at least one block",
        ),
        (
            json!({ "name": "Null0", "new_size": u64::MAX }),
            "too large",
        ),
    ] {
        let (code, msg) = w.err("bdev_null_resize", params);
        assert_eq!(code, -32602);
        assert!(msg.contains(why), "{msg} lacks {why}");
    }
}

/// A masked node's per-initiator maps, groups and CHAP come back from the
/// saved configuration; unmapping and removal work by name.
#[test]
fn masked_node_boots_back() {
    let mut w = World::new();
    bdevs(&mut w);
    w.ok(
        "iscsi_create_portal_group",
        json!({ "tag": 3, "portals": [{ "host": "0.0.0.0", "port": "3260" }] }),
    );
    w.ok(
        "iscsi_create_initiator_group",
        json!({ "tag": 3, "initiators": ["ANY"], "netmasks": ["ANY"] }),
    );
    w.ok(
        "iscsi_create_target_node",
        json!({ "name": "iqn.2003-01.org.example.mach1:1234", "luns": [],
                "pg_ig_maps": [{ "pg_tag": 3, "ig_tag": 3 }], "queue_depth": 32 }),
    );
    let node = "iqn.2003-01.org.example.mach1:1234";
    let (a, b) = ("iqn.1994-05.com.example:a", "iqn.1994-05.com.example:b");
    w.ok(
        "iscsi_target_node_set_masking",
        json!({ "name": node, "masked": true }),
    );
    let map = |w: &mut World, who: &str, bdev: &str| {
        w.ok(
            "iscsi_target_node_map_lun",
            json!({ "name": node, "initiator_name": who, "bdev_name": bdev }),
        )
    };
    assert_eq!(map(&mut w, a, "Malloc0"), 0);
    assert_eq!(map(&mut w, a, "Malloc1"), 1);
    assert_eq!(map(&mut w, b, "Malloc1"), 0);
    w.ok(
        "iscsi_target_node_set_initiator",
        json!({ "name": node, "initiator_name": b, "group": "g",
                "chap_user": "bu", "chap_secret": "b-secret-1234",
                "mutual_user": "tu", "mutual_secret": "t-secret-1234" }),
    );
    let saved = w.ok("framework_get_config", json!({ "name": "iscsi" }));
    let mut fresh = World::new();
    bdevs(&mut fresh);
    for c in saved.as_array().unwrap() {
        fresh.ok(c["method"].as_str().unwrap(), c["params"].clone());
    }
    let nodes = fresh.ok("iscsi_get_target_nodes", Value::Null);
    assert_eq!(nodes, w.ok("iscsi_get_target_nodes", Value::Null));
    let m = &nodes[0]["masking"];
    assert_eq!(m["masked"], true);
    assert_eq!(m["initiators"][1]["group"], "g");
    assert_eq!(m["initiators"][1]["mutual_chap"], true);
    assert_eq!(m["initiators"][0]["luns"].as_array().unwrap().len(), 2);
    assert!(!nodes.to_string().contains("b-secret"), "no secrets shown");
    let c = fresh.config();
    let acl = c.node(node).unwrap().acl(b).unwrap();
    assert_eq!(
        acl.chap.as_ref().unwrap().msecret.as_deref(),
        Some("t-secret-1234")
    );
    assert_eq!(
        fresh.ok(
            "iscsi_target_node_unmap_lun",
            json!({ "name": node, "initiator_name": a, "bdev_name": "Malloc1" })
        ),
        json!([1])
    );
    fresh.ok(
        "iscsi_target_node_remove_initiator",
        json!({ "name": node, "initiator_name": b }),
    );
    assert!(fresh.config().node(node).unwrap().acl(b).is_none());
}
