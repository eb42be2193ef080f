//! The targetd API on the booted appliance (TCP 18700), driven by Python
//! `requests` as targetd's own client drives it (tests/scripts/
//! targetd-api.py): authentication and its tarpit, HTTP answers, stalled
//! and oversized requests, the JSON-RPC envelope, pools and volumes with
//! targetd's error codes. And the password set over JSON-RPC: stored only
//! as a hash, it opens the API again after QEMU is killed and the
//! appliance boots with no boot module. Run by `cargo xtask test`.

use ironbay_tests::READY;
use ironbay_tests::images::{kernel, require};
use ironbay_tests::machine::{Boot, Disk, Machine, Nic, free_port, sparse_disk};
use ironbay_tests::serial::Running;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

struct Appliance {
    vm: Running,
    rpc: u16,
    targetd: u16,
    iscsi: u16,
}

fn boot(disks: Vec<Disk>, append: &str) -> Appliance {
    let (rpc, targetd, iscsi) = (free_port(), free_port(), free_port());
    let mut m = Machine::new(Boot::Kernel {
        image: require(&kernel()),
        append: format!("mgmt.ip=10.0.2.15/24 mgmt.gw=10.0.2.2 {append}"),
        config: None,
    });
    m.disks = disks;
    m.forwards = vec![
        (Nic::Mgmt, rpc, 5260),
        (Nic::Mgmt, targetd, 18700),
        (Nic::Data, iscsi, 3260),
    ];
    let mut vm = Running::spawn(m.command()).expect("start qemu");
    vm.wait_for(READY, Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}"));
    Appliance {
        vm,
        rpc,
        targetd,
        iscsi,
    }
}

impl Appliance {
    /// A JSON-RPC call on port 5260; its result.
    fn call(&self, method: &str, params: Value) -> Value {
        let req = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
        let mut s = TcpStream::connect(("127.0.0.1", self.rpc)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        s.write_all(req.to_string().as_bytes()).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "{method}: connection closed");
            got.extend_from_slice(&buf[..n]);
            if let Ok(v) = serde_json::from_slice::<Value>(&got) {
                assert!(
                    v.get("error").is_none(),
                    "{method}: {v}\n{}",
                    self.vm.output()
                );
                return v["result"].clone();
            }
        }
    }

    /// tests/scripts/targetd-api.py against this appliance.
    fn api_script(&self, password: &str, pool: &str) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/targetd-api.py");
        let out = Command::new("python3")
            .arg(&script)
            .env(
                "TARGETD_URL",
                format!("http://127.0.0.1:{}/targetrpc", self.targetd),
            )
            .env("TARGETD_USER", "admin")
            .env("TARGETD_PASSWORD", password)
            .env("TARGETD_POOL", pool)
            .output()
            .expect("python3");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        println!("{text}");
        assert!(
            out.status.success(),
            "targetd-api.py failed:\n{text}\n----- console -----\n{}",
            self.vm.output()
        );
    }

    /// A targetd call with `admin:PASSWORD` (curl): result or error code.
    fn td(&self, password: &str, method: &str, params: Value) -> Result<Value, i64> {
        self.td_as("admin", password, method, params)
    }

    fn td_as(&self, user: &str, password: &str, method: &str, params: Value) -> Result<Value, i64> {
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
        let out = Command::new("curl")
            .args([
                "-s",
                "-u",
                &format!("{user}:{password}"),
                "-d",
                &body.to_string(),
                &format!("http://127.0.0.1:{}/targetrpc", self.targetd),
            ])
            .output()
            .expect("curl");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{method}: {e}: {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                self.vm.output()
            )
        });
        match v.get("error") {
            Some(e) => Err(e["code"].as_i64().unwrap()),
            None => Ok(v["result"].clone()),
        }
    }

    /// The size of LUN 0 of targetd's node as initiator `iqn` sees it
    /// (`iscsi-readcapacity16 -s`, CHAP credentials in the URL when given).
    fn lun0_size(&self, iqn: &str, chap: Option<(&str, &str)>) -> Result<u64, String> {
        self.lun0_or(iqn, 0, chap)
    }

    /// The size of LUN `lun` as initiator `iqn` sees it.
    fn lun0_or(&self, iqn: &str, lun: u64, chap: Option<(&str, &str)>) -> Result<u64, String> {
        let auth = chap.map_or(String::new(), |(u, p)| format!("{u}%{p}@"));
        let target = self
            .call("targetd_get_options", Value::Null)
            .get("target_name")
            .and_then(Value::as_str)
            .map(String::from)
            .unwrap_or_default();
        let url = format!("iscsi://{auth}127.0.0.1:{}/{target}/{lun}", self.iscsi);
        let out = Command::new("iscsi-readcapacity16")
            .args(["-i", iqn, "-s", &url])
            .output()
            .expect("iscsi-readcapacity16");
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        match (out.status.success(), text.parse()) {
            (true, Ok(n)) => Ok(n),
            _ => Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr))),
        }
    }

    /// The targets discovery shows initiator `iqn` (`iscsi-ls`).
    fn discovered(&self, iqn: &str) -> String {
        let out = Command::new("iscsi-ls")
            .args(["-i", iqn, &format!("iscsi://127.0.0.1:{}", self.iscsi)])
            .output()
            .expect("iscsi-ls");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The HTTP status of a pool_list with these credentials.
    fn status(&self, user: &str, password: &str) -> u16 {
        let out = Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-u",
                &format!("{user}:{password}"),
                "-d",
                r#"{"jsonrpc":"2.0","id":1,"method":"pool_list"}"#,
                &format!("http://127.0.0.1:{}/targetrpc", self.targetd),
            ])
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    }
}

#[test]
#[ignore = "boots QEMU; run through cargo xtask test"]
fn targetd_api_with_requests() {
    let dir = ironbay_tests::scratch("targetd-api");
    let disk = dir.join("pool.img");
    sparse_disk(&disk, 1 << 30).unwrap();
    let a = boot(vec![Disk::nvme(0, 1, disk)], "targetd.password=td-s3cret");
    assert!(
        !a.vm.output().contains("td-s3cret"),
        "the password is not shown on the console"
    );
    a.call(
        "bdev_lvol_create_lvstore",
        json!({"bdev_name": "Nvme0n1", "lvs_name": "pool0"}),
    );
    a.api_script("td-s3cret", "pool0");
    // A volume made by targetd is a logical volume to SPDK's methods, and
    // one SPDK's methods make is a targetd volume.
    let lvols = a.call("bdev_lvol_get_lvols", json!({"lvs_name": "pool0"}));
    assert!(
        lvols
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["name"] == "vol1"),
        "{lvols}"
    );
    a.call(
        "nvmf_create_subsystem",
        json!({"nqn": "nqn.2016-06.io.spdk:td", "allow_any_host": true}),
    );
    a.call(
        "nvmf_subsystem_add_ns",
        json!({"nqn": "nqn.2016-06.io.spdk:td", "namespace": {"bdev_name": "pool0/vol1"}}),
    );
    assert_eq!(
        a.td(
            "td-s3cret",
            "vol_destroy",
            json!({"pool": "pool0", "name": "vol1"})
        ),
        Err(-303),
        "served over NVMe-oF: exported"
    );
    a.call(
        "bdev_lvol_create",
        json!({"lvs_name": "pool0", "lvol_name": "from-spdk", "size_in_mib": 8}),
    );
    let vols = a
        .td("td-s3cret", "vol_list", json!({"pool": "pool0"}))
        .unwrap();
    assert!(
        vols.as_array()
            .unwrap()
            .iter()
            .any(|v| v["name"] == "from-spdk" && v["size"] == 8 << 20),
        "{vols}"
    );
    // The command line's password cannot be replaced over JSON-RPC.
    let mut s = TcpStream::connect(("127.0.0.1", a.rpc)).unwrap();
    s.write_all(
        br#"{"jsonrpc":"2.0","id":1,"method":"targetd_set_auth","params":{"password":"other"}}"#,
    )
    .unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("command line"));
}

#[test]
#[ignore = "boots QEMU; run through cargo xtask test"]
fn password_set_over_json_rpc_is_stored_hashed_and_survives_a_kill() {
    let dir = ironbay_tests::scratch("targetd-persist");
    let (pool, cfg) = (dir.join("pool.img"), dir.join("config.img"));
    sparse_disk(&pool, 256 << 20).unwrap();
    sparse_disk(&cfg, 16 << 20).unwrap();
    let disks = vec![Disk::nvme(0, 1, pool), Disk::nvme(1, 1, cfg.clone())];
    let mut a = boot(disks.clone(), "data.ip=10.0.3.15/24 config.store=Nvme1n1");
    // Closed until a password is set, and it says so.
    assert_eq!(a.status("admin", "anything"), 503);
    assert!(a.vm.output().contains("closed until a password is set"));
    a.call(
        "targetd_set_auth",
        json!({"user": "storage", "password": "Pers1st-pw"}),
    );
    a.call(
        "targetd_set_options",
        json!({"target_name": "iqn.2003-01.org.example.mach1:1234", "thin_provision": false,
               "pool_thin_provision": {"pool0": true}}),
    );
    a.call(
        "bdev_lvol_create_lvstore",
        json!({"bdev_name": "Nvme0n1", "lvs_name": "pool0"}),
    );
    assert_eq!(a.status("storage", "Pers1st-pw"), 200);
    assert_eq!(a.status("admin", "Pers1st-pw"), 401);
    // An export and initiator CHAP made through targetd persist too.
    let iqn = "iqn.1994-05.com.domain:01.persist";
    a.td_as(
        "storage",
        "Pers1st-pw",
        "vol_create",
        json!({"pool": "pool0", "name": "pv", "size": 8 << 20}),
    )
    .unwrap();
    a.td_as(
        "storage",
        "Pers1st-pw",
        "export_create",
        json!({"pool": "pool0", "vol": "pv", "initiator_wwn": iqn, "lun": 3}),
    )
    .unwrap();
    a.td_as("storage", "Pers1st-pw", "initiator_set_auth", json!({"initiator_wwn": iqn, "in_user": "pu", "in_pass": "pu-secret-1234", "out_user": null, "out_pass": null}))
        .unwrap();
    let exports = a
        .td_as("storage", "Pers1st-pw", "export_list", Value::Null)
        .unwrap();
    let opts = a.call("targetd_get_options", Value::Null);
    assert_eq!(opts["user"], "storage");
    assert_eq!(opts["password_set"], true);
    assert_eq!(opts["thin_provision"], false);
    a.vm.kill();
    drop(a);

    // The config area holds the hash, never the password.
    let bytes = std::fs::read(&cfg).unwrap();
    let has = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    assert!(has(b"pbkdf2-sha256$"), "the hash is saved");
    assert!(!has(b"Pers1st-pw"), "the password is not");

    let a = boot(disks, "data.ip=10.0.3.15/24 config.store=Nvme1n1");
    assert_eq!(a.status("storage", "Pers1st-pw"), 200, "{}", a.vm.output());
    assert_eq!(
        a.td_as("storage", "Pers1st-pw", "export_list", Value::Null)
            .unwrap(),
        exports,
        "{}",
        a.vm.output()
    );
    assert_eq!(exports[0]["lun"], 3);
    assert_eq!(
        a.lun0_or(iqn, 3, Some(("pu", "pu-secret-1234"))),
        Ok(8 << 20)
    );
    assert!(a.lun0_or(iqn, 3, None).is_err(), "CHAP still required");
    let opts = a.call("targetd_get_options", Value::Null);
    assert_eq!(opts["target_name"], "iqn.2003-01.org.example.mach1:1234");
    assert_eq!(opts["thin_provision"], false);
    assert_eq!(opts["pool_thin_provision"], json!({"pool0": true}));
}

/// targetd's default target name (the node exports live in).
fn ironbay_model_target() -> &'static str {
    "iqn.2003-01.org.linux-iscsi.ironbay:targetd"
}

#[test]
#[ignore = "boots QEMU; run through cargo xtask test"]
fn exports_are_masked_per_initiator_and_chap_is_required() {
    let dir = ironbay_tests::scratch("targetd-exports");
    let disk = dir.join("pool.img");
    sparse_disk(&disk, 512 << 20).unwrap();
    let pw = "exp0rt-pw";
    let a = boot(
        vec![Disk::nvme(0, 1, disk)],
        &format!("data.ip=10.0.3.15/24 targetd.password={pw}"),
    );
    a.call(
        "bdev_lvol_create_lvstore",
        json!({"bdev_name": "Nvme0n1", "lvs_name": "pool0", "cluster_sz": 1048576}),
    );
    const A: &str = "iqn.1994-05.com.domain:01.alpha";
    const B: &str = "iqn.1994-05.com.domain:01.bravo";
    const STRANGER: &str = "iqn.1994-05.com.domain:01.nobody";
    for (v, mib) in [("va", 16), ("vb", 48)] {
        a.td(
            pw,
            "vol_create",
            json!({"pool": "pool0", "name": v, "size": mib << 20}),
        )
        .unwrap();
    }
    for (v, who) in [("va", A), ("vb", B)] {
        a.td(
            pw,
            "export_create",
            json!({"pool": "pool0", "vol": v, "initiator_wwn": who, "lun": 0}),
        )
        .unwrap();
    }
    // Each initiator sees its own LUN 0: 16 MiB for A, 48 MiB for B.
    let size = |iqn: &str, chap| {
        a.lun0_size(iqn, chap)
            .unwrap_or_else(|e| panic!("{iqn}: {e}\n{}", a.vm.output()))
    };
    assert_eq!(size(A, None), 16 << 20);
    assert_eq!(size(B, None), 48 << 20);
    assert!(a.discovered(A).contains(ironbay_model_target()));
    assert!(
        !a.discovered(STRANGER).contains(ironbay_model_target()),
        "an initiator without exports does not find the target"
    );
    assert!(a.lun0_size(STRANGER, None).is_err(), "nor log in");
    // CHAP set for A is required, with its secret.
    a.td(
        pw,
        "initiator_set_auth",
        json!({"initiator_wwn": A, "in_user": "alpha", "in_pass": "alpha-secret-12",
               "out_user": null, "out_pass": null}),
    )
    .unwrap();
    assert!(a.lun0_size(A, None).is_err(), "no CHAP: refused");
    assert!(
        a.lun0_size(A, Some(("alpha", "wrong-secret-12"))).is_err(),
        "wrong secret: refused"
    );
    assert_eq!(size(A, Some(("alpha", "alpha-secret-12"))), 16 << 20);
    assert_eq!(size(B, None), 48 << 20, "B needs no CHAP");
    // The export listing and -303 for an exported volume.
    let list = a.td(pw, "export_list", Value::Null).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    assert_eq!(
        a.td(pw, "vol_destroy", json!({"pool": "pool0", "name": "va"})),
        Err(-303)
    );
    a.td(
        pw,
        "export_destroy",
        json!({"pool": "pool0", "vol": "vb", "initiator_wwn": B}),
    )
    .unwrap();
    assert!(a.lun0_size(B, None).is_err(), "B has no exports left");
}
