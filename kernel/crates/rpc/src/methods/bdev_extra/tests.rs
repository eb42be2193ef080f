//! The extra bdev methods through a session, with the seed's names and
//! examples and today's SPDK names.

use crate::Session;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use ironbay_bdev::Registry;
use ironbay_model::Model;
use serde_json::{Value, json};

struct World {
    reg: Registry,
    exports: ironbay_nbd::Exports,
    init: bool,
    down: bool,
}

impl World {
    fn new() -> Self {
        World {
            reg: Registry::new(),
            exports: ironbay_nbd::Exports::default(),
            init: true,
            down: false,
        }
    }

    fn call(&mut self, method: &str, params: Value) -> Value {
        let mut s = Session::new();
        let mut m = Model {
            bdevs: &mut self.reg,
            devices: None,
            nbd: Some(&mut self.exports),
            iscsi: None,
            nvmf: None,
            memory_budget: 1 << 30,
            initialized: &mut self.init,
            shutdown: &mut self.down,
            bench: None,
            config_store: None,
            lvol: None,
            targetd: None,
        };
        let mut r = json!({ "jsonrpc": "2.0", "id": 1, "method": method });
        if !params.is_null() {
            r["params"] = params;
        }
        s.handle_input(r.to_string().as_bytes(), &mut m);
        serde_json::from_slice(s.poll_output()).unwrap()
    }

    fn ok(&mut self, method: &str, params: Value) -> Value {
        let r = self.call(method, params);
        assert!(r.get("error").is_none(), "{method}: {r}");
        r["result"].clone()
    }

    fn err(&mut self, method: &str, params: Value) -> (i64, String) {
        let r = self.call(method, params);
        let e = &r["error"];
        assert!(e.is_object(), "{method} succeeded: {r}");
        (
            e["code"].as_i64().unwrap(),
            e["message"].as_str().unwrap().into(),
        )
    }

    fn bdev(&mut self, name: &str) -> Value {
        self.ok("bdev_get_bdevs", json!({ "name": name }))[0].clone()
    }

    fn malloc(&mut self, name: &str) {
        self.ok(
            "bdev_malloc_create",
            json!({ "name": name, "num_blocks": 64, "block_size": 512 }),
        );
    }
}

const INVALID_STATE: i64 = -1;
const INVALID_PARAMS: i64 = -32602;

#[test]
fn passthru_with_seed_and_modern_names() {
    let mut w = World::new();
    w.malloc("Malloc0");
    w.malloc("Malloc1");
    // The seed's example.
    let r = w.ok(
        "construct_passthru_bdev",
        json!({ "base_bdev_name": "Malloc0", "passthru_bdev_name": "Passsthru0" }),
    );
    assert_eq!(r, "Passsthru0");
    let r = w.ok(
        "bdev_passthru_create",
        json!({ "base_bdev_name": "Malloc1", "name": "PT1" }),
    );
    assert_eq!(r, "PT1");
    let b = w.bdev("Passsthru0");
    assert_eq!(b["product_name"], "passthru");
    assert_eq!(
        (b["num_blocks"].as_u64(), b["claimed"].as_bool()),
        (Some(64), Some(false))
    );
    assert_eq!(
        b["driver_specific"],
        json!({ "passthru": { "name": "Passsthru0", "base_bdev_name": "Malloc0" } })
    );
    assert_eq!(w.bdev("Malloc0")["claimed"], true);
    let (code, msg) = w.err("delete_malloc_bdev", json!({ "name": "Malloc0" }));
    assert_eq!(code, INVALID_STATE);
    assert!(msg.contains("claimed by Passsthru0"), "{msg}");
    for (params, why) in [
        (
            json!({ "base_bdev_name": "Malloc0", "name": "X" }),
            "claimed by Passsthru0",
        ),
        (
            json!({ "base_bdev_name": "Nope", "name": "X" }),
            "does not exist",
        ),
        (json!({ "base_bdev_name": "Malloc0" }), "missing `name`"),
        (json!({ "name": "X" }), "base_bdev_name"),
        (
            json!({ "base_bdev_name": "Malloc0", "name": "X", "extra": 1 }),
            "unknown parameter `extra`",
        ),
        (
            json!({ "base_bdev_name": "Malloc0", "name": "X", "passthru_bdev_name": "Y" }),
            "give one",
        ),
        (json!({ "base_bdev_name": 7, "name": "X" }), "invalid type"),
    ] {
        let (code, msg) = w.err("bdev_passthru_create", params.clone());
        let want = if why.contains("claimed") {
            INVALID_STATE
        } else {
            INVALID_PARAMS
        };
        assert_eq!(code, want, "{params}: {msg}");
        assert!(msg.contains(why), "{params}: {msg} lacks {why}");
    }
    let (code, msg) = w.err("bdev_passthru_delete", json!({ "name": "Malloc0" }));
    assert_eq!(code, INVALID_PARAMS);
    assert!(msg.contains("not a passthru"), "{msg}");
    w.ok("delete_passthru_bdev", json!({ "name": "Passsthru0" }));
    w.ok("bdev_passthru_delete", json!({ "name": "PT1" }));
    assert_eq!(w.bdev("Malloc0")["claimed"], false);
    w.ok("delete_malloc_bdev", json!({ "name": "Malloc0" }));
}

#[test]
fn error_bdevs_inject_failures_and_delete_bdev_deletes_by_name() {
    let mut w = World::new();
    w.malloc("Malloc0");
    // The seed's examples: the result is true, the bdev EE_<base>.
    assert_eq!(
        w.ok("construct_error_bdev", json!({ "base_name": "Malloc0" })),
        true
    );
    let b = w.bdev("EE_Malloc0");
    assert_eq!(b["product_name"], "Error Injection Disk");
    assert_eq!(
        b["driver_specific"],
        json!({ "error_disk": { "base_bdev": "Malloc0" } })
    );
    let (code, msg) = w.err("delete_bdev", json!({ "name": "Malloc0" }));
    assert_eq!(code, INVALID_STATE);
    assert!(msg.contains("claimed by EE_Malloc0"), "{msg}");
    w.ok(
        "bdev_inject_error",
        json!({ "name": "EE_Malloc0", "io_type": "read", "error_type": "failure", "num": 2 }),
    );
    for (params, why) in [
        (
            json!({ "name": "EE_Malloc0", "io_type": "reset", "error_type": "failure" }),
            "io_type",
        ),
        (
            json!({ "name": "EE_Malloc0", "io_type": "all", "error_type": "boom" }),
            "error_type",
        ),
        (
            json!({ "name": "EE_Malloc0", "io_type": "all", "error_type": "corrupt_data", "corrupt_value": 0 }),
            "non-zero",
        ),
        (
            json!({ "name": "EE_Malloc0", "io_type": "all", "error_type": "failure", "nvme_sc": 1 }),
            "nvme_failure",
        ),
        (
            json!({ "name": "Malloc0", "io_type": "all", "error_type": "failure" }),
            "not an error bdev",
        ),
        (
            json!({ "name": "EE_Malloc0", "io_type": "all" }),
            "error_type",
        ),
    ] {
        let (code, msg) = w.err("bdev_error_inject_error", params.clone());
        assert_eq!(code, INVALID_PARAMS, "{params}: {msg}");
        assert!(msg.contains(why), "{params}: {msg} lacks {why}");
    }
    w.ok(
        "bdev_error_inject_error",
        json!({ "name": "EE_Malloc0", "io_type": "all", "error_type": "nvme_failure", "nvme_sct": 2, "nvme_sc": 129 }),
    );
    w.ok(
        "bdev_error_inject_error",
        json!({ "name": "EE_Malloc0", "io_type": "clear", "error_type": "failure" }),
    );
    w.ok("bdev_error_resume_pending", json!({ "name": "EE_Malloc0" }));
    w.ok("delete_bdev", json!({ "name": "EE_Malloc0" }));
    w.ok("bdev_error_create", json!({ "base_name": "Malloc0" }));
    w.ok("delete_error_bdev", json!({ "name": "EE_Malloc0" }));
    w.ok("delete_bdev", json!({ "name": "Malloc0" }));
    let (code, _) = w.err("delete_bdev", json!({ "name": "Malloc0" }));
    assert_eq!(code, INVALID_PARAMS);
    assert_eq!(w.ok("bdev_get_bdevs", Value::Null), json!([]));
}

#[test]
fn qos_iops_and_nvme_settings() {
    let mut w = World::new();
    w.malloc("Malloc0");
    w.ok(
        "bdev_set_qos_limit",
        json!({ "name": "Malloc0", "rw_mbytes_per_sec": 10 }),
    );
    w.ok(
        "set_bdev_qos_limit_iops",
        json!({ "name": "Malloc0", "ios_per_sec": 20000 }),
    );
    let l = &w.bdev("Malloc0")["assigned_rate_limits"];
    assert_eq!(
        (
            l["rw_ios_per_sec"].as_u64(),
            l["rw_mbytes_per_sec"].as_u64()
        ),
        (Some(20000), Some(10))
    );
    let (code, _) = w.err("set_bdev_qos_limit_iops", json!({ "name": "Malloc0" }));
    assert_eq!(code, INVALID_PARAMS);
    // The seed's examples.
    w.ok(
        "set_bdev_nvme_options",
        json!({ "retry_count": 5, "nvme_adminq_poll_period_us": 2000, "timeout_us": 10000000, "action_on_timeout": "reset" }),
    );
    w.ok(
        "set_bdev_nvme_hotplug",
        json!({ "enabled": true, "period_us": 2000 }),
    );
    let o = w.reg.nvme.options;
    assert_eq!(
        (
            o.transport_retry_count,
            o.nvme_adminq_poll_period_us,
            o.timeout_us
        ),
        (5, 2000, 10_000_000)
    );
    assert_eq!(o.action_on_timeout, ironbay_bdev::TimeoutAction::Reset);
    for (method, params, why) in [
        (
            "bdev_nvme_set_options",
            json!({ "action_on_timeout": "panic" }),
            "none, reset, abort",
        ),
        (
            "bdev_nvme_set_options",
            json!({ "transport_retry_count": 300 }),
            "at most 255",
        ),
        (
            "bdev_nvme_set_options",
            json!({ "retry_count": 1, "transport_retry_count": 1 }),
            "give one",
        ),
        (
            "bdev_nvme_set_options",
            json!({ "multipath": true }),
            "unknown parameter `multipath`",
        ),
        (
            "bdev_nvme_set_hotplug",
            json!({ "period_us": 5 }),
            "enabled",
        ),
        (
            "bdev_nvme_set_hotplug",
            json!({ "enabled": true, "period_us": 20000000 }),
            "at most",
        ),
    ] {
        let (code, msg) = w.err(method, params.clone());
        assert_eq!(code, INVALID_PARAMS, "{params}: {msg}");
        assert!(msg.contains(why), "{params}: {msg} lacks {why}");
    }
    assert_eq!(w.reg.nvme.options, o, "failed calls change nothing");
}

#[test]
fn host_os_methods_are_refused_with_what_to_use() {
    let mut w = World::new();
    for method in [
        "construct_aio_bdev",
        "delete_aio_bdev",
        "bdev_aio_create",
        "bdev_aio_delete",
        "create_pmem_pool",
        "pmem_pool_info",
        "delete_pmem_pool",
        "construct_pmem_bdev",
        "delete_pmem_bdev",
        "bdev_pmem_create_pool",
        "bdev_pmem_get_pool_info",
        "bdev_pmem_delete_pool",
        "bdev_pmem_create",
        "bdev_pmem_delete",
        "construct_rbd_bdev",
        "delete_rbd_bdev",
        "bdev_rbd_create",
        "bdev_rbd_delete",
        "set_vhost_controller_coalescing",
        "construct_vhost_scsi_controller",
        "add_vhost_scsi_lun",
        "remove_vhost_scsi_target",
        "construct_vhost_nvme_controller",
        "add_vhost_nvme_ns",
        "construct_vhost_blk_controller",
        "get_vhost_controllers",
        "remove_vhost_controller",
        "vhost_create_blk_controller",
        "construct_virtio_user_scsi_bdev",
        "construct_virtio_user_blk_bdev",
        "context_switch_monitor",
        "framework_monitor_context_switch",
    ] {
        for init in [false, true] {
            w.init = init;
            let (code, msg) = w.err(method, json!({ "name": "x" }));
            assert_eq!(code, INVALID_STATE, "{method}: {msg}");
            assert!(
                msg.contains("not supported on the appliance"),
                "{method}: {msg}"
            );
            assert!(msg.contains('_'), "{method}: names what to use: {msg}");
        }
    }
}

/// A saved configuration recreates the stacked bdevs after their bases,
/// even when a base sits in a later registry slot, and the NVMe settings.
#[test]
fn saved_config_recreates_stacks_in_order() {
    let mut w = World::new();
    w.malloc("Old");
    w.malloc("Base");
    w.ok("bdev_malloc_delete", json!({ "name": "Old" }));
    // PT takes the slot Old left, ahead of its base.
    w.ok(
        "bdev_passthru_create",
        json!({ "base_bdev_name": "Base", "name": "PT" }),
    );
    w.ok("bdev_error_create", json!({ "base_name": "PT" }));
    w.ok(
        "bdev_nvme_set_options",
        json!({ "timeout_us": 5000, "action_on_timeout": "abort" }),
    );
    w.ok("bdev_nvme_set_hotplug", json!({ "enabled": true }));
    let saved = w.ok("framework_get_config", json!({ "name": "bdev" }));
    let calls: Vec<(String, Value)> = saved
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["method"].as_str().unwrap().to_string(),
                c["params"].clone(),
            )
        })
        .collect();
    let methods: Vec<&str> = calls.iter().map(|c| c.0.as_str()).collect();
    assert_eq!(
        methods,
        [
            "bdev_set_options",
            "bdev_nvme_set_options",
            "bdev_malloc_create",
            "bdev_passthru_create",
            "bdev_error_create",
            "bdev_nvme_set_hotplug",
        ]
    );
    let mut fresh = World::new();
    for (method, params) in &calls {
        fresh.ok(method, params.clone());
    }
    let all = |w: &mut World| w.ok("bdev_get_bdevs", Value::Null);
    let mut want: Vec<Value> = all(&mut w).as_array().unwrap().clone();
    let mut got: Vec<Value> = all(&mut fresh).as_array().unwrap().clone();
    let key = |v: &Value| v["name"].as_str().unwrap().to_string();
    want.sort_by_key(key);
    got.sort_by_key(key);
    assert_eq!(got, want);
    assert_eq!(fresh.reg.nvme, w.reg.nvme);
    assert_eq!(
        fresh.ok("framework_get_config", json!({ "name": "bdev" })),
        saved
    );
}

#[test]
fn saved_config_recreates_ram_disks_and_caches() {
    let mut w = World::new();
    w.malloc("Src");
    assert_eq!(
        w.ok("bdev_rapiddisk_create", json!({ "size_mb": 8 })),
        "rd0"
    );
    assert_eq!(
        w.ok("bdev_rapiddisk_create", json!({ "size_mb": 4 })),
        "rd1"
    );
    w.ok(
        "bdev_rapiddisk_set_locked",
        json!({ "name": "rd1", "locked": true }),
    );
    let (code, msg) = w.err(
        "bdev_rapiddisk_cache_create",
        json!({ "cache": "rd1", "source": "Src", "mode": "write-back" }),
    );
    assert_eq!(code, INVALID_STATE, "{msg}");
    assert_eq!(
        w.ok(
            "bdev_rapiddisk_cache_create",
            json!({ "cache": "rd0", "source": "Src", "mode": "write-around" }),
        ),
        "rc-wa_Src"
    );
    assert_eq!(w.bdev("rc-wa_Src")["product_name"], "RapidDisk cache");
    assert_eq!(w.bdev("rd1")["product_name"], "RapidDisk");
    let saved = w.ok("framework_get_config", json!({ "name": "bdev" }));
    let methods: Vec<&str> = saved
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["method"].as_str().unwrap())
        .collect();
    assert_eq!(
        methods,
        [
            "bdev_set_options",
            "bdev_nvme_set_options",
            "bdev_malloc_create",
            "bdev_rapiddisk_create",
            "bdev_rapiddisk_create",
            "bdev_rapiddisk_set_locked",
            "bdev_rapiddisk_cache_create",
            "bdev_nvme_set_hotplug",
        ]
    );
    let mut fresh = World::new();
    for c in saved.as_array().unwrap() {
        fresh.ok(c["method"].as_str().unwrap(), c["params"].clone());
    }
    let disks = |w: &mut World| w.ok("bdev_rapiddisk_get_disks", Value::Null);
    assert_eq!(disks(&mut fresh), disks(&mut w));
    assert_eq!(
        fresh.ok("framework_get_config", json!({ "name": "bdev" })),
        saved
    );
    // The cache goes, its RAM disk and source are free again.
    w.ok(
        "bdev_rapiddisk_cache_delete",
        json!({ "name": "rc-wa_Src" }),
    );
    w.ok("bdev_rapiddisk_delete", json!({ "name": "rd0" }));
    w.ok(
        "bdev_passthru_create",
        json!({ "base_bdev_name": "Src", "name": "PT" }),
    );
}
