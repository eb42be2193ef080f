//! The targetd front end against a model with a volume store on a RAM
//! bdev: authentication and its tarpit, HTTP answers, the JSON-RPC
//! envelope and the pool and volume methods with targetd's error codes.

use ironbay_bdev::{BdevId, IoBuf, IoOp, IoRequest, MallocBdev, Registry};
use ironbay_http::{Reply, Request, Response};
use ironbay_model::lvol::Lvols;
use ironbay_model::targetd::Settings;
use ironbay_model::{Model, iscsi};
use ironbay_targetd::Targetd;
use serde_json::{Value, json};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

const MIB: u64 = 1 << 20;

struct World {
    reg: Registry,
    lvols: Lvols,
    settings: Settings,
    iscsi: iscsi::Target,
    t: Targetd,
    now: u64,
}

fn basic(user: &str, pw: &str) -> String {
    // Basic credentials, encoded here with the standard alphabet.
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = format!("{user}:{pw}").into_bytes();
    let mut s = String::new();
    for c in b.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for k in 0..4 {
            if k <= c.len() {
                s.push(A[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    format!("Basic {s}")
}

impl World {
    fn new() -> Self {
        let mut reg = Registry::new();
        reg.add(Box::new(MallocBdev::new("Malloc0", 64 * MIB / 512, 512)))
            .unwrap();
        let mut w = World {
            reg,
            lvols: Lvols::new(|| 0, 5),
            settings: Settings::new(9),
            iscsi: iscsi::Target::default(),
            t: Targetd::new(),
            now: 1_000,
        };
        w.model(|m| {
            m.lvs_create("Malloc0", "pool0", Some(MIB), ironbay_lvol::Clear::None)
                .unwrap();
        });
        w.settings.set_password("admin", "targetd").unwrap();
        w
    }

    fn model<T>(&mut self, f: impl FnOnce(&mut Model<'_>) -> T) -> T {
        let (mut init, mut down) = (true, false);
        let mut m = Model {
            bdevs: &mut self.reg,
            devices: None,
            nbd: None,
            iscsi: Some(&mut self.iscsi),
            nvmf: None,
            memory_budget: 0,
            initialized: &mut init,
            shutdown: &mut down,
            bench: None,
            config_store: None,
            lvol: Some(&mut self.lvols),
            targetd: Some(&mut self.settings),
        };
        f(&mut m)
    }

    fn http(
        &mut self,
        method: &str,
        path: &str,
        auth: Option<&str>,
        body: &[u8],
        peer: u8,
    ) -> Reply {
        let mut headers = vec![("Content-Type".to_string(), b"application/json".to_vec())];
        if let Some(a) = auth {
            headers.push(("Authorization".into(), a.as_bytes().to_vec()));
        }
        let req = Request {
            method: method.into(),
            target: path.into(),
            minor: 1,
            headers,
            body: body.to_vec(),
            peer: Some(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::new(10, 0, 0, peer)),
                4000,
            )),
        };
        let now = self.now;
        let (t, reg, lvols, settings, iscsi) = (
            &mut self.t,
            &mut self.reg,
            &mut self.lvols,
            &mut self.settings,
            &mut self.iscsi,
        );
        let (mut init, mut down) = (true, false);
        let mut m = Model {
            bdevs: reg,
            devices: None,
            nbd: None,
            iscsi: Some(iscsi),
            nvmf: None,
            memory_budget: 0,
            initialized: &mut init,
            shutdown: &mut down,
            bench: None,
            config_store: None,
            lvol: Some(lvols),
            targetd: Some(settings),
        };
        t.handle(&req, &mut m, now)
    }

    /// A call with good credentials: `Ok(result)` or `Err(code)`.
    fn call(&mut self, method: &str, params: Value) -> Result<Value, i64> {
        let body = json!({"jsonrpc": "2.0", "id": 7, "method": method, "params": params});
        let r = now(self.http(
            "POST",
            "/targetrpc",
            Some(&basic("admin", "targetd")),
            body.to_string().as_bytes(),
            1,
        ));
        assert_eq!(r.status, 200);
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["jsonrpc"], "2.0");
        assert_eq!(v["id"], 7);
        match v.get("error") {
            Some(e) => Err(e["code"].as_i64().unwrap()),
            None => Ok(v["result"].clone()),
        }
    }
}

/// One 4 KiB write (`data`) or read at `lba`, run to completion.
fn io(reg: &mut Registry, id: BdevId, lba: u64, data: Option<&[u8]>) -> Vec<u8> {
    let mut buf = IoBuf::new(4096);
    let op = match data {
        Some(d) => {
            buf.as_mut_slice().copy_from_slice(d);
            IoOp::Write { lba, buf }
        }
        None => IoOp::Read { lba, buf },
    };
    reg.submit(
        id,
        IoRequest {
            tag: 1,
            op,
            fua: false,
        },
        0,
    )
    .ok()
    .unwrap();
    let mut out = Vec::new();
    let mut t = 0;
    reg.drain(
        id,
        &mut || {
            t += 1;
            t
        },
        1_000_000,
        &mut out,
    );
    let c = out.pop().expect("completed").1;
    assert!(c.status.is_ok());
    c.buf.map(|b| b.as_slice().to_vec()).unwrap_or_default()
}

fn now(r: Reply) -> Response {
    match r {
        Reply::Now(r) => r,
        Reply::At(..) => panic!("held back"),
    }
}

#[test]
fn authentication_tarpit_and_http_answers() {
    let mut w = World::new();
    let good = basic("admin", "targetd");
    // A client already in: during a pending guess from its address it is
    // recognised without the slow hash.
    assert_eq!(
        now(w.http("POST", "/targetrpc", Some(&good), b"{}", 2)).status,
        200
    );
    // Wrong password or user: 401, held back 2 s.
    for bad in [basic("admin", "nope"), basic("root", "targetd")] {
        match w.http("POST", "/targetrpc", Some(&bad), b"{}", 2) {
            Reply::At(at, r) => {
                assert_eq!(at, w.now + 2000);
                assert_eq!(r.status, 401);
            }
            Reply::Now(r) => panic!("answered at once: {}", r.status),
        }
        // While it is pending, another wrong guess from that address gets
        // 503 at once; right credentials are served from any address.
        assert_eq!(
            now(w.http("POST", "/targetrpc", Some(&bad), b"{}", 2)).status,
            503
        );
        assert_eq!(
            now(w.http("POST", "/targetrpc", Some(&good), b"{}", 2)).status,
            200
        );
        assert_eq!(
            now(w.http("POST", "/targetrpc", Some(&good), b"{}", 3)).status,
            200
        );
        w.now += 2001;
        assert_eq!(
            now(w.http("POST", "/targetrpc", Some(&good), b"{}", 2)).status,
            200
        );
    }
    // No credentials: 401 at once, with a challenge.
    let r = now(w.http("POST", "/targetrpc", None, b"{}", 4));
    assert_eq!(r.status, 401);
    assert!(r.headers.iter().any(|(n, _)| *n == "WWW-Authenticate"));
    assert_eq!(
        now(w.http("POST", "/other", Some(&good), b"{}", 4)).status,
        404
    );
    assert_eq!(
        now(w.http("POST", "/targetrpc?x=1", Some(&good), b"{}", 4)).status,
        404
    );
    assert_eq!(
        now(w.http("GET", "/targetrpc", Some(&good), b"", 4)).status,
        405
    );
    // No password set: closed, and it says so.
    w.settings.clear_password();
    let r = now(w.http("POST", "/targetrpc", Some(&good), b"{}", 4));
    assert_eq!(r.status, 503);
    assert!(String::from_utf8_lossy(&r.body).contains("targetd.password="));
}

#[test]
fn json_rpc_envelope() {
    let mut w = World::new();
    let good = basic("admin", "targetd");
    let raw = |w: &mut World, body: &str| -> Value {
        let r = now(w.http("POST", "/targetrpc", Some(&good), body.as_bytes(), 1));
        assert_eq!(r.status, 200);
        serde_json::from_slice(&r.body).unwrap()
    };
    let v = raw(&mut w, r#"{"jsonrpc":"2.0","id":1,"method":"pool_list""#);
    assert_eq!(
        (v["error"]["code"].as_i64(), v["id"].as_i64()),
        (Some(-32700), Some(0))
    );
    let v = raw(&mut w, r#"{"jsonrpc":"1.0","id":1,"method":"pool_list"}"#);
    assert_eq!(v["error"]["code"], -32600);
    let v = raw(&mut w, r#"{"jsonrpc":"2.0","method":"pool_list"}"#);
    assert_eq!(v["error"]["code"], -32600, "no notifications");
    let v = raw(&mut w, r#"[{"jsonrpc":"2.0","id":1,"method":"pool_list"}]"#);
    assert_eq!(v["error"]["code"], -1, "no batches");
    let v = raw(&mut w, r#"{"jsonrpc":"2.0","id":"8","method":"pool_list"}"#);
    assert_eq!(v["id"], 8);
    assert!(v["result"].is_array());
    let v = raw(
        &mut w,
        r#"{"jsonrpc":"2.0","id":1,"method":"pool_listing"}"#,
    );
    assert_eq!(v["error"]["code"], -32601);
    let v = raw(
        &mut w,
        r#"{"jsonrpc":"2.0","id":1,"method":"pool_list","params":{"foo":"bar"}}"#,
    );
    assert_eq!(v["error"]["code"], -32602);
    let v = raw(
        &mut w,
        r#"{"jsonrpc":"2.0","id":1,"method":"vol_list","params":["pool0"]}"#,
    );
    assert_eq!(v["error"]["code"], -32602);
    for m in [
        "fs_list",
        "ss_list",
        "nfs_export_list",
        "nfs_export_add",
        "fs_create",
    ] {
        assert_eq!(w.call(m, Value::Null), Err(-153), "{m}");
    }
}

#[test]
fn pools_and_volumes() {
    let mut w = World::new();
    let pools = w.call("pool_list", Value::Null).unwrap();
    let p = &pools[0];
    assert_eq!(
        (p["name"].as_str(), p["type"].as_str()),
        (Some("pool0"), Some("block"))
    );
    let (size, free) = (
        p["size"].as_u64().unwrap(),
        p["free_size"].as_u64().unwrap(),
    );
    assert!(size > 50 * MIB && free == size, "{p}");
    assert!(p["uuid"].as_str().is_some_and(|u| u.len() == 36));

    let create = |w: &mut World, name: &str, size: u64| {
        w.call(
            "vol_create",
            json!({"pool": "pool0", "name": name, "size": size}),
        )
    };
    assert_eq!(create(&mut w, "v1", 4 * MIB), Ok(Value::Null));
    assert_eq!(create(&mut w, "v1", 4 * MIB), Err(-50));
    assert_eq!(
        w.call(
            "vol_create",
            json!({"pool": "nope", "name": "x", "size": 1})
        ),
        Err(-110)
    );
    assert_eq!(
        w.call("vol_create", json!({"pool": "pool0", "name": "x"})),
        Err(-32602)
    );
    let list = w.call("vol_list", json!({"pool": "pool0"})).unwrap();
    assert_eq!(list[0]["name"], "v1");
    assert_eq!(list[0]["size"], 4 * MIB);
    assert_eq!(w.call("vol_list", json!({"pool": "nope"})), Err(-110));

    // Data written to v1 is in its copy; the copy is independent.
    let id = w.reg.find("pool0/v1").unwrap();
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    io(&mut w.reg, id, 8, Some(&pattern));
    assert_eq!(
        w.call(
            "vol_copy",
            json!({"pool": "pool0", "vol_orig": "v1", "vol_new": "c1", "size": null})
        ),
        Ok(Value::Null)
    );
    let c = w.reg.find("pool0/c1").unwrap();
    assert_eq!(io(&mut w.reg, c, 8, None), pattern);
    assert_eq!(
        w.call(
            "vol_copy",
            json!({"pool": "pool0", "vol_orig": "nope", "vol_new": "c2"})
        ),
        Err(-103)
    );
    assert_eq!(
        w.call(
            "vol_copy",
            json!({"pool": "pool0", "vol_orig": "v1", "vol_new": "c2", "size": 4 * MIB})
        ),
        Err(-32602)
    );
    assert_eq!(
        w.call(
            "vol_copy",
            json!({"pool": "pool0", "vol_orig": "v1", "vol_new": "c2", "size": 1.5 * MIB as f64})
        ),
        Err(-32602)
    );
    assert_eq!(
        w.call(
            "vol_copy",
            json!({"pool": "pool0", "vol_orig": "v1", "vol_new": "c1"})
        ),
        Err(-50)
    );
    assert_eq!(
        w.call(
            "vol_copy",
            json!({"pool": "pool0", "vol_orig": "v1", "vol_new": "c3", "size": 8 * MIB})
        ),
        Ok(Value::Null)
    );
    let names: Vec<(String, u64)> = w
        .call("vol_list", json!({"pool": "pool0"}))
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap().to_string(),
                v["size"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(names.contains(&("c3".into(), 8 * MIB)), "{names:?}");
    assert_eq!(names.len(), 3, "no passing snapshot left: {names:?}");

    assert_eq!(
        w.call(
            "vol_resize",
            json!({"pool": "pool0", "name": "v1", "size": 6 * MIB})
        ),
        Ok(Value::Null)
    );
    assert_eq!(
        w.call(
            "vol_resize",
            json!({"pool": "pool0", "name": "v1", "size": 6 * MIB})
        ),
        Err(-32602)
    );
    assert_eq!(
        w.call(
            "vol_resize",
            json!({"pool": "pool0", "name": "v1", "size": 3 * MIB})
        ),
        Err(-32602)
    );
    assert_eq!(
        w.call(
            "vol_resize",
            json!({"pool": "pool0", "name": "nope", "size": 9 * MIB})
        ),
        Err(-103)
    );

    // An exported volume is not destroyed.
    w.model(|m| {
        m.iscsi_configure(|c, b| {
            c.create_target_node(
                iscsi::config::NodeSpec {
                    name: "disk1".into(),
                    luns: vec![iscsi::config::LunSpec {
                        bdev_name: "pool0/v1".into(),
                        id: Some(0),
                        read_only: false,
                    }],
                    queue_depth: 32,
                    ..Default::default()
                },
                b,
            )
        })
        .unwrap();
    });
    assert_eq!(
        w.call("vol_destroy", json!({"pool": "pool0", "name": "v1"})),
        Err(-303)
    );
    assert_eq!(
        w.call("vol_destroy", json!({"pool": "pool0", "name": "nope"})),
        Err(-103)
    );
    assert_eq!(
        w.call(
            "vol_destroy",
            json!({"pool": "no_such_pool_", "name": "v1"})
        ),
        Err(-110)
    );
    assert_eq!(
        w.call("vol_destroy", json!({"pool": "pool0", "name": "c1"})),
        Ok(Value::Null)
    );

    // Pools targetd may not use are not there.
    w.settings
        .set_options(None, Some(vec!["other".into()]), None)
        .unwrap();
    assert_eq!(w.call("pool_list", Value::Null), Ok(json!([])));
    assert_eq!(w.call("vol_list", json!({"pool": "pool0"})), Err(-110));
}

#[test]
fn exports_initiators_and_access_groups() {
    let mut w = World::new();
    let (a, b) = (
        "iqn.1994-05.com.domain:01.aaaaaa",
        "iqn.1994-05.com.domain:01.bbbbbb",
    );
    for v in ["x", "y", "z"] {
        assert_eq!(
            w.call(
                "vol_create",
                json!({"pool": "pool0", "name": v, "size": 2 * MIB})
            ),
            Ok(Value::Null)
        );
    }
    assert_eq!(w.call("export_list", Value::Null), Ok(json!([])));
    let export = |w: &mut World, vol: &str, who: &str, lun: u64| {
        w.call(
            "export_create",
            json!({"pool": "pool0", "vol": vol, "initiator_wwn": who, "lun": lun}),
        )
    };
    assert_eq!(export(&mut w, "x", a, 0), Ok(Value::Null));
    assert_eq!(export(&mut w, "x", a, 0), Ok(Value::Null), "idempotent");
    assert_eq!(
        export(&mut w, "y", b, 0),
        Ok(Value::Null),
        "another LUN 0 for b"
    );
    assert_eq!(export(&mut w, "y", a, 0), Err(-1), "a's LUN 0 is x");
    assert_eq!(export(&mut w, "y", "not an iqn", 1), Err(-1));
    assert_eq!(export(&mut w, "nope", a, 1), Err(-103));
    assert_eq!(
        w.call(
            "export_create",
            json!({"pool": "zz", "vol": "x", "initiator_wwn": a, "lun": 1})
        ),
        Err(-110)
    );
    let list = w.call("export_list", Value::Null).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    let e = list
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["initiator_wwn"] == a)
        .unwrap();
    assert_eq!(
        (
            e["lun"].as_u64(),
            e["vol_name"].as_str(),
            e["pool"].as_str()
        ),
        (Some(0), Some("x"), Some("pool0"))
    );
    assert_eq!(e["vol_size"], 2 * MIB);
    assert_eq!(e["vol_uuid"].as_str().unwrap().len(), 36);
    // The iSCSI node: masked, each initiator its own LUN 0.
    let node = w
        .iscsi
        .config
        .node(ironbay_model::targetd::DEFAULT_TARGET)
        .unwrap()
        .clone();
    assert!(node.masked);
    assert_ne!(
        node.acl(a).unwrap().luns[0].bdev,
        node.acl(b).unwrap().luns[0].bdev
    );
    assert_eq!(
        w.call("vol_destroy", json!({"pool": "pool0", "name": "x"})),
        Err(-303)
    );
    let mut inits: Vec<String> = w
        .call("initiator_list", json!({"standalone_only": "False"}))
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["init_id"].as_str().unwrap().to_string())
        .collect();
    inits.sort();
    assert_eq!(inits, [a, b]);
    // CHAP per initiator; out without in is refused; all keys are needed.
    assert_eq!(
        w.call("initiator_set_auth", json!({"initiator_wwn": a, "in_user": "u", "in_pass": "p-secret-123", "out_user": "t", "out_pass": "t-secret-123"})),
        Ok(Value::Null)
    );
    let acl = w
        .iscsi
        .config
        .node(ironbay_model::targetd::DEFAULT_TARGET)
        .unwrap()
        .acl(a)
        .unwrap()
        .clone();
    assert_eq!(acl.chap.as_ref().unwrap().muser.as_deref(), Some("t"));
    assert_eq!(
        w.call("initiator_set_auth", json!({"initiator_wwn": a, "in_user": null, "in_pass": null, "out_user": "t", "out_pass": "x"})),
        Err(-32602)
    );
    assert_eq!(
        w.call(
            "initiator_set_auth",
            json!({"initiator_wwn": a, "in_user": "u"})
        ),
        Err(-32602)
    );
    assert_eq!(
        w.call("initiator_set_auth", json!({"initiator_wwn": a, "in_user": null, "in_pass": null, "out_user": null, "out_pass": null})),
        Ok(Value::Null)
    );
    // export_destroy: gone, and the initiator with it.
    let destroy = |w: &mut World, vol: &str, who: &str| {
        w.call(
            "export_destroy",
            json!({"pool": "pool0", "vol": vol, "initiator_wwn": who}),
        )
    };
    assert_eq!(destroy(&mut w, "x", a), Ok(Value::Null));
    assert_eq!(destroy(&mut w, "x", a), Err(-151));
    assert_eq!(destroy(&mut w, "z", b), Err(-151));
    let inits = w.call("initiator_list", Value::Null).unwrap();
    assert_eq!(inits, json!([{"init_id": b, "init_type": "iscsi"}]));
    assert_eq!(
        w.call("vol_destroy", json!({"pool": "pool0", "name": "x"})),
        Ok(Value::Null)
    );

    // Access groups share one map.
    let (g1, g2) = (
        "iqn.1994-05.com.domain:01.g1",
        "iqn.1994-05.com.domain:01.g2",
    );
    assert_eq!(
        w.call(
            "access_group_create",
            json!({"ag_name": "grp", "init_id": g1, "init_type": "iscsi"})
        ),
        Ok(Value::Null)
    );
    assert_eq!(
        w.call(
            "access_group_create",
            json!({"ag_name": "grp", "init_id": g2, "init_type": "iscsi"})
        ),
        Err(-50)
    );
    assert_eq!(
        w.call(
            "access_group_create",
            json!({"ag_name": "grp2", "init_id": b, "init_type": "iscsi"})
        ),
        Err(-52)
    );
    assert_eq!(
        w.call(
            "access_group_create",
            json!({"ag_name": "bad.name", "init_id": g2, "init_type": "iscsi"})
        ),
        Err(-32602)
    );
    assert_eq!(
        w.call(
            "access_group_create",
            json!({"ag_name": "g", "init_id": g2, "init_type": "fc"})
        ),
        Err(-153)
    );
    assert_eq!(
        w.call(
            "access_group_map_create",
            json!({"pool_name": "pool0", "vol_name": "z", "ag_name": "grp"})
        ),
        Ok(Value::Null)
    );
    assert_eq!(
        w.call(
            "access_group_map_create",
            json!({"pool_name": "pool0", "vol_name": "y", "ag_name": "nope"})
        ),
        Err(-200)
    );
    // A member added later sees the group's map.
    assert_eq!(
        w.call(
            "access_group_init_add",
            json!({"ag_name": "grp", "init_id": g2, "init_type": "iscsi"})
        ),
        Ok(Value::Null)
    );
    assert_eq!(
        w.call(
            "access_group_init_add",
            json!({"ag_name": "grp", "init_id": b, "init_type": "iscsi"})
        ),
        Err(-52)
    );
    let groups = w.call("access_group_list", Value::Null).unwrap();
    assert_eq!(
        groups,
        json!([{"name": "grp", "init_ids": [g1, g2], "init_type": "iscsi"}])
    );
    assert_eq!(
        w.call("access_group_map_list", Value::Null),
        Ok(json!([{"ag_name": "grp", "h_lun_id": 0, "pool_name": "pool0", "vol_name": "z"}]))
    );
    let node = w
        .iscsi
        .config
        .node(ironbay_model::targetd::DEFAULT_TARGET)
        .unwrap()
        .clone();
    assert_eq!(node.acl(g2).unwrap().luns.len(), 1);
    let standalone = w
        .call("initiator_list", json!({"standalone_only": true}))
        .unwrap();
    assert_eq!(standalone, json!([{"init_id": b, "init_type": "iscsi"}]));
    assert_eq!(
        w.call("vol_destroy", json!({"pool": "pool0", "name": "z"})),
        Err(-303)
    );
    assert_eq!(
        w.call(
            "access_group_map_destroy",
            json!({"pool_name": "pool0", "vol_name": "z", "ag_name": "grp"})
        ),
        Ok(Value::Null)
    );
    assert_eq!(w.call("access_group_map_list", Value::Null), Ok(json!([])));
    assert_eq!(
        w.call(
            "access_group_init_del",
            json!({"ag_name": "grp", "init_id": g1, "init_type": "iscsi"})
        ),
        Ok(Value::Null)
    );
    assert_eq!(
        w.call("access_group_destroy", json!({"ag_name": "grp"})),
        Ok(Value::Null)
    );
    assert_eq!(w.call("access_group_list", Value::Null), Ok(json!([])));
    assert_eq!(
        w.call("vol_destroy", json!({"pool": "pool0", "name": "z"})),
        Ok(Value::Null)
    );
}

#[test]
fn no_free_host_lun_is_minus_1000() {
    let mut w = World::new();
    let g = "iqn.1994-05.com.domain:01.full";
    assert_eq!(
        w.call(
            "access_group_create",
            json!({"ag_name": "full", "init_id": g, "init_type": "iscsi"})
        ),
        Ok(Value::Null)
    );
    for k in 0..=256u64 {
        let name = format!("t{k}");
        assert_eq!(
            w.call(
                "vol_create",
                json!({"pool": "pool0", "name": name, "size": MIB})
            ),
            Ok(Value::Null)
        );
        let mut p = json!({"pool_name": "pool0", "vol_name": name, "ag_name": "full"});
        if k < 256 {
            p["h_lun_id"] = k.into();
        }
        let want = if k < 256 { Ok(Value::Null) } else { Err(-1000) };
        assert_eq!(w.call("access_group_map_create", p), want, "{k}");
    }
}

#[test]
fn thin_or_thick_per_pool() {
    let mut w = World::new();
    let thin = |w: &mut World, name: &str| {
        w.model(|m| {
            m.lvol_list(None)
                .unwrap()
                .into_iter()
                .find(|(_, v)| v.name == name)
                .map(|(_, v)| v.thin)
                .unwrap()
        })
    };
    let create = |w: &mut World, name: &str| {
        w.call(
            "vol_create",
            json!({"pool": "pool0", "name": name, "size": 2 * MIB}),
        )
    };
    assert_eq!(create(&mut w, "a"), Ok(Value::Null));
    assert!(thin(&mut w, "a"), "thin by default");
    w.settings
        .set_pool_thin(vec![("pool0".into(), false)])
        .unwrap();
    assert_eq!(create(&mut w, "b"), Ok(Value::Null));
    assert!(!thin(&mut w, "b"), "thick in this pool");
    assert!(w.settings.thin_for("other"), "other pools keep the default");
}

/// Guesses from many addresses get at most a few slow password checks a
/// second; the rest 503 at once. A client already in is not held up.
#[test]
fn slow_checks_are_rate_limited() {
    let mut w = World::new();
    let good = basic("admin", "targetd");
    assert_eq!(
        now(w.http("POST", "/targetrpc", Some(&good), b"{}", 1)).status,
        200
    );
    // That first login took a slow check of its own.
    w.now += 1001;
    let bad = basic("admin", "guess");
    let mut codes = Vec::new();
    for peer in 10..30 {
        codes.push(
            match w.http("POST", "/targetrpc", Some(&bad), b"{}", peer) {
                Reply::At(_, r) | Reply::Now(r) => r.status,
            },
        );
    }
    assert_eq!(codes.iter().filter(|&&c| c == 401).count(), 8, "{codes:?}");
    assert_eq!(codes.iter().filter(|&&c| c == 503).count(), 12, "{codes:?}");
    assert_eq!(
        now(w.http("POST", "/targetrpc", Some(&good), b"{}", 2)).status,
        200
    );
    w.now += 1001;
    assert!(matches!(
        w.http("POST", "/targetrpc", Some(&bad), b"{}", 40),
        Reply::At(..)
    ));
}
