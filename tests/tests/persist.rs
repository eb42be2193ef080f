//! Configuration that survives reboot: configure over JSON-RPC with a
//! config store on a virtio disk, kill QEMU, boot again without a boot
//! module (and then with a fresh one, as a PXE boot brings), and the same
//! configuration serves again. Run by `cargo xtask test`.

use ironbay_tests::READY;
use ironbay_tests::images::{kernel, require};
use ironbay_tests::machine::{Boot, Disk, Machine, Nic, free_port, sparse_disk};
use ironbay_tests::serial::Running;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const CNODE: &str = "nqn.2016-06.io.spdk:persist";

struct Appliance {
    vm: Running,
    rpc: u16,
    nbd: u16,
    iscsi: u16,
}

fn boot(disk: &Path, append: &str, config: Option<PathBuf>) -> Appliance {
    let (rpc, nbd, iscsi) = (free_port(), free_port(), free_port());
    let mut m = Machine::new(Boot::Kernel {
        image: require(&kernel()),
        append: format!("mgmt.ip=10.0.2.15/24 mgmt.gw=10.0.2.2 data.ip=10.0.3.15/24 {append}"),
        config,
    });
    m.disks = vec![Disk::virtio(disk.to_path_buf())];
    m.forwards = vec![
        (Nic::Mgmt, rpc, 5260),
        (Nic::Data, nbd, 10809),
        (Nic::Data, iscsi, 3260),
    ];
    let mut vm = Running::spawn(m.command()).expect("start qemu");
    vm.wait_for(READY, Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}"));
    Appliance {
        vm,
        rpc,
        nbd,
        iscsi,
    }
}

impl Appliance {
    fn spdk(&self, args: &[&str]) -> String {
        ironbay_tests::spdk_rpc(self.rpc, args).unwrap_or_else(|text| {
            panic!(
                "spdk-rpc {args:?}\n{text}\n----- console -----\n{}",
                self.vm.output()
            )
        })
    }

    /// A raw JSON-RPC call (for methods spdk-rpc does not know).
    fn call(&self, method: &str, params: &str) -> Value {
        let mut req = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"{method}""#);
        if !params.is_empty() {
            req.push_str(&format!(r#","params":{params}"#));
        }
        req.push('}');
        let mut s = TcpStream::connect(("127.0.0.1", self.rpc)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "{method}: connection closed");
            got.extend_from_slice(&buf[..n]);
            if let Ok(v) = serde_json::from_slice::<Value>(&got) {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    fn config(&self) -> Value {
        serde_json::from_str(&self.spdk(&["save_config"])).unwrap()
    }

    /// nbdinfo's size of export `name`.
    fn nbd_size(&self, name: &str) -> u64 {
        let out = Command::new("nbdinfo")
            .args(["--size", &format!("nbd://127.0.0.1:{}/{name}", self.nbd)])
            .output()
            .expect("nbdinfo");
        assert!(
            out.status.success(),
            "nbdinfo {name}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.vm.output()
        );
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    }

    /// iscsi-inq against LUN 0 of `node`, when libiscsi's tools are here.
    fn iscsi_inq(&self, node: &str) -> Option<String> {
        let url = format!(
            "iscsi://127.0.0.1:{}/iqn.2016-06.io.spdk:{node}/0",
            self.iscsi
        );
        let out = Command::new("iscsi-inq").arg(&url).output().ok()?;
        assert!(
            out.status.success(),
            "iscsi-inq {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

fn has_method(config: &Value, method: &str, name: &str) -> bool {
    config["subsystems"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["config"].as_array().cloned().unwrap_or_default())
        .any(|c| {
            c["method"] == method
                && (c["params"]["name"] == name
                    || c["params"]["nqn"] == name
                    || c["params"]["bdev_name"] == name)
        })
}

#[test]
#[ignore = "boots QEMU; run through cargo xtask test"]
fn configuration_survives_a_kill_and_a_fresh_boot_module() {
    let dir = ironbay_tests::scratch("persist");
    let disk = dir.join("config.img");
    sparse_disk(&disk, 64 << 20).unwrap();

    // First boot: no boot module, the store named on the command line.
    let a = boot(&disk, "config.store=VirtioBlk0", None);
    a.spdk(&["bdev_malloc_create", "-b", "Malloc1", "16", "512"]);
    a.spdk(&["bdev_malloc_create", "-b", "Malloc2", "8", "4096"]);
    a.spdk(&["bdev_set_qos_limit", "Malloc1", "--rw-ios-per-sec", "20000"]);
    a.spdk(&["iscsi_create_portal_group", "1", "0.0.0.0:3260"]);
    a.spdk(&["iscsi_create_initiator_group", "2", "ANY", "ANY"]);
    a.spdk(&[
        "iscsi_create_target_node",
        "persist0",
        "persist0-alias",
        "Malloc1:0",
        "1:2",
        "32",
        "-d",
    ]);
    a.spdk(&["nvmf_create_transport", "-t", "TCP"]);
    a.spdk(&[
        "nvmf_create_subsystem",
        CNODE,
        "-a",
        "-s",
        "IRONBAY00000000PERS",
    ]);
    a.spdk(&["nvmf_subsystem_add_ns", CNODE, "Malloc2"]);
    let before = a.config();
    let st = a.call("config_store_get", "");
    assert_eq!(st["bdev_name"], "VirtioBlk0", "{st}");
    let generation = st["generation"].as_u64().unwrap();
    assert!(generation >= 2, "saved after the changes: {st}");
    assert_eq!(a.nbd_size("Malloc1"), 16 << 20);
    let bdevs = a.spdk(&["bdev_get_bdevs", "-b", "VirtioBlk0"]);
    assert!(bdevs.contains("\"claimed\": true"), "{bdevs}");
    // Power gone, no orderly shutdown.
    let mut a = a;
    a.vm.kill();

    // Second boot: no boot module, no config.store: found by its magic.
    let b = boot(&disk, "", None);
    assert_eq!(b.config(), before, "{}", b.vm.output());
    let st = b.call("config_store_get", "");
    assert_eq!(st["bdev_name"], "VirtioBlk0", "{st}");
    assert_eq!(
        st["generation"].as_u64(),
        Some(generation),
        "nothing rewritten: {st}"
    );
    assert_eq!(st["loaded_at_boot"]["applied"], true, "{st}");
    assert_eq!(
        b.nbd_size("Malloc1"),
        16 << 20,
        "the real client sees the export"
    );
    if let Some(inq) = b.iscsi_inq("persist0") {
        assert!(!inq.is_empty(), "iscsi-inq said nothing");
    }
    // A change after the reboot is saved too.
    b.spdk(&["bdev_malloc_delete", "Malloc2"]);
    let after_delete = b.config();
    assert!(!has_method(&after_delete, "bdev_malloc_create", "Malloc2"));
    let mut b = b;
    b.vm.kill();

    // Third boot: a PXE-style fresh boot module; the stored config wins.
    let module = ironbay_tests::boot_config(
        "persist-module",
        &[("bdev", &ironbay_tests::malloc("Fresh0", 4))],
    );
    let c = boot(&disk, "", Some(module.clone()));
    let cfg = c.config();
    assert_eq!(cfg, after_delete, "{}", c.vm.output());
    assert!(!has_method(&cfg, "bdev_malloc_create", "Fresh0"));
    assert!(c.vm.output().contains("the boot module is ignored"));
    let mut c = c;
    c.vm.kill();

    // config.prefer=boot: the boot module applies and replaces what is stored.
    let d = boot(&disk, "config.prefer=boot", Some(module.clone()));
    let cfg = d.config();
    assert!(has_method(&cfg, "bdev_malloc_create", "Fresh0"), "{cfg}");
    assert!(!has_method(&cfg, "bdev_malloc_create", "Malloc1"), "{cfg}");
    let mut d = d;
    d.vm.kill();
    // ...so the next plain boot has it.
    let e = boot(&disk, "", None);
    assert!(has_method(&e.config(), "bdev_malloc_create", "Fresh0"));
    let mut e = e;
    e.vm.kill();

    // config.store=none: the store is left alone, the boot module alone applies.
    let f = boot(&disk, "config.store=none", None);
    let cfg = f.config();
    assert!(!has_method(&cfg, "bdev_malloc_create", "Fresh0"), "{cfg}");
    assert_eq!(f.call("config_store_get", "")["bdev_name"], Value::Null);
}
