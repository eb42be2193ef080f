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
}

fn boot(disks: Vec<Disk>, append: &str) -> Appliance {
    let (rpc, targetd) = (free_port(), free_port());
    let mut m = Machine::new(Boot::Kernel {
        image: require(&kernel()),
        append: format!("mgmt.ip=10.0.2.15/24 mgmt.gw=10.0.2.2 {append}"),
        config: None,
    });
    m.disks = disks;
    m.forwards = vec![(Nic::Mgmt, rpc, 5260), (Nic::Mgmt, targetd, 18700)];
    let mut vm = Running::spawn(m.command()).expect("start qemu");
    vm.wait_for(READY, Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}"));
    Appliance { vm, rpc, targetd }
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
    // A volume made by targetd is a logical volume to SPDK's methods.
    let lvols = a.call("bdev_lvol_get_lvols", json!({"lvs_name": "pool0"}));
    assert!(
        lvols
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["name"] == "vol1"),
        "{lvols}"
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
    let mut a = boot(disks.clone(), "config.store=Nvme1n1");
    // Closed until a password is set, and it says so.
    assert_eq!(a.status("admin", "anything"), 503);
    assert!(a.vm.output().contains("closed until a password is set"));
    a.call(
        "targetd_set_auth",
        json!({"user": "storage", "password": "Pers1st-pw"}),
    );
    a.call(
        "targetd_set_options",
        json!({"target_name": "iqn.2003-01.org.example.mach1:1234", "thin_provision": false}),
    );
    a.call(
        "bdev_lvol_create_lvstore",
        json!({"bdev_name": "Nvme0n1", "lvs_name": "pool0"}),
    );
    assert_eq!(a.status("storage", "Pers1st-pw"), 200);
    assert_eq!(a.status("admin", "Pers1st-pw"), 401);
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

    let a = boot(disks, "config.store=Nvme1n1");
    assert_eq!(a.status("storage", "Pers1st-pw"), 200, "{}", a.vm.output());
    let opts = a.call("targetd_get_options", Value::Null);
    assert_eq!(opts["target_name"], "iqn.2003-01.org.example.mach1:1234");
    assert_eq!(opts["thin_provision"], false);
}
