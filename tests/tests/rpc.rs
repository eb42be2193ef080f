//! The SPDK JSON-RPC API with SPDK's own Python client (`spdk-rpc` from
//! PyPI), raw JSON error cases, and where management calls are refused.
//! Run by `cargo xtask test`.

use ironbay_tests::READY;
use ironbay_tests::images::{kernel, require, target_dir};
use ironbay_tests::machine::{Boot, Machine, Nic, free_port};
use ironbay_tests::serial::Running;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

struct Appliance {
    vm: Running,
    rpc: u16,
    nbd: u16,
    rpc_on_data: u16,
}

fn boot(extra: &str, config: Option<PathBuf>) -> Appliance {
    let (rpc, nbd, rpc_on_data) = (free_port(), free_port(), free_port());
    let mut m = Machine::new(Boot::Kernel {
        image: require(&kernel()),
        append: format!("mgmt.ip=10.0.2.15/24 mgmt.gw=10.0.2.2 data.ip=10.0.3.15/24 {extra}"),
        config,
    });
    m.forwards = vec![
        (Nic::Mgmt, rpc, 5260),
        (Nic::Data, nbd, 10809),
        (Nic::Data, rpc_on_data, 5260),
    ];
    let mut vm = Running::spawn(m.command()).expect("start qemu");
    vm.wait_for(READY, Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}"));
    Appliance {
        vm,
        rpc,
        nbd,
        rpc_on_data,
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
}

fn scratch(name: &str) -> PathBuf {
    let d = target_dir().join("test-scratch").join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A boot config whose bdev subsystem holds `calls` (JSON objects, comma-separated).
fn bdev_config(name: &str, calls: &str) -> PathBuf {
    let cfg = scratch(name).join("config.json");
    let json = format!(r#"{{"subsystems":[{{"subsystem":"bdev","config":[{calls}]}}]}}"#);
    std::fs::write(&cfg, json).unwrap();
    cfg
}

#[test]
#[ignore = "boots QEMU; run through cargo xtask test"]
fn spdk_client_manages_bdevs_and_saved_config_boots_back() {
    let dir = scratch("rpc-spdk");
    let a = boot("", None);
    assert!(a.spdk(&["spdk_get_version"]).contains("ironbay"));
    assert_eq!(
        a.spdk(&["bdev_malloc_create", "-b", "Malloc1", "32", "512"])
            .trim(),
        "Malloc1"
    );
    assert_eq!(
        a.spdk(&["bdev_null_create", "Null1", "64", "4096"]).trim(),
        "Null1"
    );
    let list = a.spdk(&["bdev_get_bdevs"]);
    assert!(
        list.contains("\"name\": \"Malloc1\"") && list.contains("\"num_blocks\": 65536"),
        "{list}"
    );
    assert!(
        a.spdk(&["bdev_get_bdevs", "-b", "Null1"])
            .contains("\"block_size\": 4096")
    );
    // I/O over NBD shows up in iostat.
    let src = dir.join("src.img");
    std::fs::write(&src, vec![0x77u8; 4 << 20]).unwrap();
    let out = Command::new("nbdcopy")
        .arg(&src)
        .arg(format!("nbd://127.0.0.1:{}/Malloc1", a.nbd))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stat = a.spdk(&["bdev_get_iostat", "--names", "Malloc1"]);
    assert!(stat.contains("\"bytes_written\": 4194304"), "{stat}");
    assert!(
        a.spdk(&["nbd_get_disks"])
            .contains("\"nbd_device\": \"Malloc1\"")
    );
    // Save, then delete; rebooting with the saved config restores it.
    let saved = dir.join("saved.json");
    std::fs::write(&saved, a.spdk(&["save_config"])).unwrap();
    let uuid_line = list
        .lines()
        .find(|l| l.contains("\"uuid\""))
        .unwrap()
        .trim()
        .to_string();
    a.spdk(&["bdev_malloc_delete", "Malloc1"]);
    a.spdk(&["bdev_null_delete", "Null1"]);
    assert_eq!(a.spdk(&["bdev_get_bdevs"]).trim(), "[]");
    drop(a);
    let b = boot("", Some(saved));
    let list = b.spdk(&["bdev_get_bdevs"]);
    assert!(
        list.contains("\"name\": \"Malloc1\"") && list.contains("\"name\": \"Null1\""),
        "{list}"
    );
    assert!(
        list.contains(&uuid_line),
        "same UUIDs after the reboot\n{list}"
    );
}

fn raw(port: u16, send: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(send).unwrap();
    let mut buf = vec![0u8; 65536];
    let mut got = Vec::new();
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if got.ends_with(b"\n") {
            break;
        }
    }
    String::from_utf8_lossy(&got).to_string()
}

#[test]
#[ignore = "boots QEMU; run through cargo xtask test"]
fn raw_json_errors_stalls_and_refusals() {
    let a = boot("", None);
    // A client that sends half a request and stalls keeps its connection...
    let mut stalled = TcpStream::connect(("127.0.0.1", a.rpc)).unwrap();
    stalled
        .write_all(br#"{"jsonrpc":"2.0","id":1,"met"#)
        .unwrap();
    // ...while others are served, error by error.
    for (req, code) in [
        (&br#"{"jsonrpc":"2.0","id":1,"method":"nonesuch"}"#[..], "-32601"),
        (br#"{"jsonrpc":"2.0","id":2,"method":"bdev_malloc_create","params":{"num_blocks":"many","block_size":512}}"#, "-32602"),
        (br#"{"jsonrpc":"2.0","id":3,"method":"bdev_malloc_create","params":{"block_size":512}}"#, "-32602"),
        (br#"{"jsonrpc":"2.0","id":4,"method":"bdev_get_bdevs","params":{"bogus":1}}"#, "-32602"),
        (br#"{"id":5,"method":"spdk_get_version"}"#, "-32600"),
        (br#"{"jsonrpc":"2.0","id":6,"method":"framework_start_init"}"#, "\"code\":-1,"),
        (br#"{"jsonrpc":"2.0","id":7,"method":]"#, "-32700"),
    ] {
        let reply = raw(a.rpc, req);
        assert!(reply.contains(code), "{} -> {reply}", String::from_utf8_lossy(req));
    }
    let big = format!(
        r#"{{"jsonrpc":"2.0","id":8,"method":"{}"}}"#,
        "x".repeat(1 << 21)
    );
    assert!(raw(a.rpc, big.as_bytes()).contains("-32700"));
    let batch = raw(a.rpc, br#"[{"jsonrpc":"2.0","id":1,"method":"spdk_get_version"},{"jsonrpc":"2.0","method":"spdk_get_version"}]"#);
    assert!(
        batch.starts_with('[') && batch.matches("\"id\"").count() == 1,
        "{batch}"
    );
    assert!(
        a.spdk(&["spdk_get_version"]).contains("ironbay"),
        "served while another client stalls"
    );
    // The management port does not exist on the data NIC.
    assert_eq!(
        raw(
            a.rpc_on_data,
            br#"{"jsonrpc":"2.0","id":1,"method":"spdk_get_version"}"#
        ),
        ""
    );
    drop(stalled);
}

#[test]
#[ignore = "boots QEMU; run through cargo xtask test"]
fn clients_outside_the_allow_list_are_refused() {
    let a = boot("mgmt.allow=192.0.2.0/24", None);
    assert_eq!(
        raw(
            a.rpc,
            br#"{"jsonrpc":"2.0","id":1,"method":"spdk_get_version"}"#
        ),
        ""
    );
    let mut vm = a.vm;
    vm.wait_for("refused (not in the allow-list)", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
#[ignore = "boots QEMU; run through cargo xtask test"]
fn nbd_start_stop_disk_and_kill_instance() {
    let a = boot(
        "",
        Some(bdev_config(
            "rpc-nbd",
            r#"{"method":"bdev_malloc_create","params":{"name":"Malloc0","num_blocks":2048,"block_size":512}}"#,
        )),
    );
    assert_eq!(
        a.spdk(&["nbd_start_disk", "Malloc0", "scratch"]).trim(),
        "scratch"
    );
    let disks = a.spdk(&["nbd_get_disks"]);
    assert!(
        disks.contains("\"nbd_device\": \"scratch\"")
            && disks.contains("\"bdev_name\": \"Malloc0\""),
        "{disks}"
    );
    let info = Command::new("nbdinfo")
        .arg(format!("nbd://127.0.0.1:{}/scratch", a.nbd))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&info.stdout).contains("export-size: 1048576"));
    a.spdk(&["nbd_stop_disk", "scratch"]);
    assert!(!a.spdk(&["nbd_get_disks"]).contains("scratch"));
    a.spdk(&["spdk_kill_instance", "SIGTERM"]);
    let mut vm = a.vm;
    assert_eq!(
        vm.wait_exit(Duration::from_secs(60)).unwrap(),
        0,
        "orderly power-off\n{}",
        vm.output()
    );
    assert!(vm.output().contains("powering off"));
}

#[test]
#[ignore = "boots QEMU; run through cargo xtask test"]
fn qos_limit_caps_iops_seen_by_an_nbd_client() {
    let a = boot(
        "",
        Some(bdev_config(
            "rpc-qos",
            r#"{"method":"bdev_malloc_create","params":{"name":"Malloc0","num_blocks":65536,"block_size":512}}"#,
        )),
    );
    a.spdk(&["bdev_set_qos_limit", "Malloc0", "--rw-ios-per-sec", "200"]);
    assert!(
        a.spdk(&["bdev_get_bdevs", "-b", "Malloc0"])
            .contains("\"rw_ios_per_sec\": 200")
    );
    let fio = |secs: &str| -> f64 {
        let out = Command::new("fio")
            .args([
                "--name=q",
                "--ioengine=nbd",
                &format!("--uri=nbd://127.0.0.1:{}/Malloc0", a.nbd),
            ])
            .args([
                "--rw=randread",
                "--bs=4k",
                "--iodepth=16",
                "--time_based",
                &format!("--runtime={secs}"),
                "--size=16m",
            ])
            .args(["--output-format=terse", "--terse-version=3"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        ironbay_tests::rig::fio::parse_terse(&text)
            .unwrap_or_else(|| panic!("fio: {text}"))
            .read_iops
    };
    let limited = fio("3");
    assert!(
        limited > 50.0 && limited < 260.0,
        "{limited} IOPS under a 200 IOPS limit"
    );
    a.spdk(&["bdev_set_qos_limit", "Malloc0", "--rw-ios-per-sec", "0"]);
    let free = fio("2");
    assert!(
        free > limited * 2.0,
        "lifting the limit: {free} vs {limited} IOPS"
    );
}

#[test]
#[ignore = "boots QEMU; run through cargo xtask test"]
fn nvme_and_virtio_controllers_detach_and_attach_by_pci_address() {
    let dir = scratch("rpc-attach");
    let (n, v) = (dir.join("n.img"), dir.join("v.img"));
    std::fs::write(&n, vec![0x4eu8; 8 << 20]).unwrap();
    std::fs::write(&v, vec![0x56u8; 8 << 20]).unwrap();
    let (rpc, nbd) = (free_port(), free_port());
    let mut m = Machine::new(Boot::Kernel {
        image: require(&kernel()),
        append: "mgmt.ip=10.0.2.15/24 mgmt.gw=10.0.2.2 data.ip=10.0.3.15/24".into(),
        config: None,
    });
    m.disks = vec![
        ironbay_tests::machine::Disk::nvme(0, 1, n),
        ironbay_tests::machine::Disk::virtio(v),
    ];
    m.forwards = vec![(Nic::Mgmt, rpc, 5260), (Nic::Data, nbd, 10809)];
    let mut vm = Running::spawn(m.command()).expect("start qemu");
    vm.wait_for(READY, Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}"));
    let out = vm.output();
    let addr = |what: &str| -> String {
        let line = out
            .lines()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no {what}\n{out}"));
        line.split(" at ")
            .nth(1)
            .unwrap()
            .split(':')
            .take(3)
            .collect::<Vec<_>>()
            .join(":")
    };
    let (nvme_addr, virtio_addr) = (addr("Nvme0 at"), addr("VirtioBlk0 at"));
    let a = Appliance {
        vm,
        rpc,
        nbd,
        rpc_on_data: 0,
    };
    a.spdk(&["bdev_nvme_detach_controller", "Nvme0"]);
    a.spdk(&["bdev_virtio_detach_controller", "VirtioBlk0"]);
    assert_eq!(a.spdk(&["bdev_get_bdevs"]).trim(), "[]");
    assert!(
        a.spdk(&[
            "bdev_nvme_attach_controller",
            "-b",
            "Fast",
            "-t",
            "PCIe",
            "-a",
            &nvme_addr
        ])
        .contains("Fastn1")
    );
    assert!(
        a.spdk(&[
            "bdev_virtio_attach_controller",
            "-t",
            "pci",
            "-a",
            &virtio_addr,
            "-d",
            "blk",
            "Virt"
        ])
        .contains("Virt")
    );
    // The data is still there, through the re-attached bdevs.
    for (export, byte) in [("Fastn1", 0x4eu8), ("Virt", 0x56)] {
        a.spdk(&["nbd_start_disk", export]);
        let back = dir.join(format!("{export}.img"));
        let out = Command::new("nbdcopy")
            .arg(format!("nbd://127.0.0.1:{}/{export}", a.nbd))
            .arg(&back)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            std::fs::read(&back).unwrap().iter().all(|&b| b == byte),
            "{export}"
        );
    }
}

#[test]
#[ignore = "boots QEMU; run through cargo xtask test"]
fn bdevperf_run_answers_when_the_benchmark_ends() {
    let a = boot(
        "",
        Some(bdev_config(
            "rpc-bench",
            r#"{"method":"bdev_malloc_create","params":{"name":"Malloc0","num_blocks":8192,"block_size":512}}"#,
        )),
    );
    // SPDK's own client library, called the way bdevperf.py calls it.
    let script = format!(
        r#"
import json
from spdk.rpc.client import JSONRPCClient
c = JSONRPCClient("127.0.0.1", {port}, timeout=60.0)
r = c.call("perform_tests", {{"bdev_name": "Malloc0", "workload": "randwrite", "io_size": 4096,
                             "queue_depth": 8, "time_in_sec": 1}})
print(json.dumps(r))
try:
    c.call("bdevperf_run", {{"bdev_name": "Nope", "workload": "read", "io_size": 4096,
                            "queue_depth": 1, "time_in_sec": 1}})
except Exception as e:
    print("refused:", " ".join(str(e).split()))
print(json.dumps(c.call("spdk_get_version")))
"#,
        port = a.rpc
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("python3 with the spdk package");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}\n----- console -----\n{}",
        String::from_utf8_lossy(&out.stderr),
        a.vm.output()
    );
    let mut lines = text.lines();
    let result: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(result["bdev_name"], "Malloc0", "{text}");
    assert_eq!(result["workload"], "randwrite");
    assert!(result["ops"].as_u64().unwrap() > 0, "{text}");
    assert!(result["iops"].as_f64().unwrap() > 0.0, "{text}");
    assert_eq!(result["errors"], 0);
    assert_eq!(result["miscompares"], 0);
    let refused = lines.next().unwrap();
    assert!(
        refused.starts_with("refused:") && refused.contains("Nope"),
        "{text}"
    );
    assert!(
        lines.next().unwrap().contains("version"),
        "the session goes on: {text}"
    );
}

#[test]
#[ignore = "boots QEMU; run through cargo xtask test"]
fn wait_for_init_holds_the_config_until_framework_start_init() {
    let a = boot(
        "mgmt.wait_for_init=1",
        Some(bdev_config(
            "rpc-wait",
            r#"{"method":"bdev_set_options","params":{"bdev_io_pool_size":4096}},
            {"method":"bdev_malloc_create","params":{"name":"Malloc0","num_blocks":2048,"block_size":512}}"#,
        )),
    );
    let early = Command::new("spdk-rpc")
        .args([
            "-s",
            "127.0.0.1",
            "-p",
            &a.rpc.to_string(),
            "bdev_get_bdevs",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&early.stderr).to_string()
        + &String::from_utf8_lossy(&early.stdout);
    assert!(
        !early.status.success() && text.contains("framework_start_init"),
        "runtime methods wait for init: {text}"
    );
    // A second client waits for init while the first starts it.
    let mut waiter = Command::new("spdk-rpc")
        .args([
            "-s",
            "127.0.0.1",
            "-p",
            &a.rpc.to_string(),
            "-t",
            "60",
            "framework_wait_init",
        ])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        waiter.try_wait().unwrap().is_none(),
        "framework_wait_init answered before init started"
    );
    a.spdk(&["framework_start_init"]);
    assert!(waiter.wait().unwrap().success(), "{}", a.vm.output());
    let list = a.spdk(&["bdev_get_bdevs"]);
    assert!(list.contains("\"name\": \"Malloc0\""), "{list}");
    let cfg = a.spdk(&["framework_get_config", "bdev"]);
    assert!(cfg.contains("\"bdev_io_pool_size\": 4096"), "{cfg}");
    let again = Command::new("spdk-rpc")
        .args(["-s", "127.0.0.1", "-p", &a.rpc.to_string()])
        .arg("framework_start_init")
        .output()
        .unwrap();
    assert!(!again.status.success(), "init starts once");
}
