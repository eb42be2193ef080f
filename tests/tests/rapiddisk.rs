//! RapidDisk on the booted appliance: RAM disks (`rd0`, `rd1`, ...) and RAM
//! caches (`rc-wt_SRC`, `rc-wa_SRC`, `rc-wb_SRC`) through the REST API on
//! TCP 9118 and the `bdev_rapiddisk_*` JSON-RPC methods, driven by real
//! clients (curl + jq, qemu-io over NBD).
//!
//! - `rest_api_with_curl_and_jq`: tests/scripts/rapiddisk-api.sh, every
//!   endpoint, its shapes and its 400 answers.
//! - `json_rpc_methods_and_write_back_on_removal`: the JSON-RPC view of the
//!   same objects; a write-back cache's dirty data lands in the backing file
//!   when the cache is removed.
//! - `ram_disk_fills_to_enospc_and_keeps_serving`: a 448 MiB RAM disk on a
//!   512 MiB appliance takes writes until memory runs out; that write fails
//!   with ENOSPC, everything else goes on; a flush gives the memory back.
//! - `lock_while_a_client_writes`: a qemu-io client writing in a loop gets
//!   EPERM once the disk is locked, reads go on, unlock lets it write again.
//! - `dirty_write_back_survives_export_changes`: with the source holding
//!   every write (an error bdev's `pending` injection), a write-back cache
//!   keeps its dirty data through NBD and NVMe-oF export changes, refuses
//!   removal while it cannot write back, and lands everything in the
//!   backing file once the source answers again.
//! - `definitions_survive_a_kill`: RAM disks (one locked) and a cache come
//!   back after QEMU is killed, empty.
//!
//! Run by `cargo xtask test`.

use ironbay_tests::READY;
use ironbay_tests::images::{kernel, require};
use ironbay_tests::machine::{Boot, Disk, Machine, Nic, free_port, sparse_disk};
use ironbay_tests::serial::Running;
use serde_json::{Value, json};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const DISK: u64 = 1 << 30;

struct Appliance {
    vm: Running,
    rpc: u16,
    rest: u16,
    nbd: u16,
}

/// Boots the appliance with `disks` (512 MiB unless `memory_mib` says
/// otherwise) and waits until REST answers.
fn boot(disks: Vec<Disk>, append: &str, memory_mib: Option<u32>) -> Appliance {
    let (rpc, rest, nbd) = (free_port(), free_port(), free_port());
    let mut m = Machine::new(Boot::Kernel {
        image: require(&kernel()),
        append: format!(
            "mgmt.ip=10.0.2.15/24 mgmt.gw=10.0.2.2 data.ip=10.0.3.15/24 data.gw=10.0.3.2 {append}"
        ),
        config: None,
    });
    if let Some(mib) = memory_mib {
        m.memory_mib = mib;
    }
    m.disks = disks;
    m.forwards = vec![
        (Nic::Mgmt, rpc, 5260),
        (Nic::Mgmt, rest, 9118),
        (Nic::Data, nbd, 10809),
    ];
    let mut vm = Running::spawn(m.command()).expect("start qemu");
    vm.wait_for(READY, Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}"));
    let a = Appliance { vm, rpc, rest, nbd };
    // QEMU accepts forwarded connections before the guest does.
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, body) = a.rest("GET", "checkServiceStatus");
        if code == 200 && body["status"] == "OK" {
            break;
        }
        if Instant::now() > until {
            a.fail(&format!(
                "GET /v1/checkServiceStatus: HTTP {code} {body} after 60 s"
            ));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    a
}

/// NVMe 0 and virtio-blk 0 as the default VM has them, sparse files in `dir`.
fn default_disks(dir: &Path) -> (Vec<Disk>, PathBuf) {
    let (nvme, vblk) = (dir.join("nvme0.img"), dir.join("vblk0.img"));
    sparse_disk(&nvme, DISK).unwrap();
    sparse_disk(&vblk, DISK).unwrap();
    (
        vec![Disk::nvme(0, 1, nvme), Disk::virtio(vblk.clone())],
        vblk,
    )
}

impl Appliance {
    fn fail(&self, what: &str) -> ! {
        let out = self.vm.output();
        let tail: String = out
            .lines()
            .rev()
            .take(80)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        panic!("{what}\n----- console (tail) -----\n{tail}")
    }

    /// One REST request with curl: (HTTP status, JSON body or Null). A
    /// POST carries an empty body (tests/scripts/rapiddisk-api.sh checks
    /// the bare `curl -X POST` RapidDisk's documentation shows).
    fn rest(&self, method: &str, path: &str) -> (u16, Value) {
        let mut c = Command::new("curl");
        c.args(["-s", "-m", "300", "-X", method, "-w", "\n%{http_code}"]);
        if method != "GET" {
            c.args(["--data", ""]);
        }
        let out = c
            .arg(format!("http://127.0.0.1:{}/v1/{path}", self.rest))
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (
            code.trim().parse().unwrap_or(0),
            serde_json::from_str(body).unwrap_or(Value::Null),
        )
    }

    /// A POST that must answer 200 {"status":"Success"}.
    fn post_ok(&self, path: &str) {
        let (code, body) = self.rest("POST", path);
        if code != 200 || body["status"] != "Success" {
            self.fail(&format!("POST /v1/{path}: HTTP {code} {body}"));
        }
    }

    fn get_ok(&self, path: &str) -> Value {
        let (code, body) = self.rest("GET", path);
        if code != 200 {
            self.fail(&format!("GET /v1/{path}: HTTP {code} {body}"));
        }
        body
    }

    /// listRapidDiskVolumes: (RAM disks, caches).
    fn volumes(&self) -> (Vec<Value>, Vec<Value>) {
        let v = self.get_ok("listRapidDiskVolumes");
        let list = |i: usize, key: &str| {
            v["volumes"][i][key]
                .as_array()
                .cloned()
                .unwrap_or_else(|| self.fail(&format!("listRapidDiskVolumes: {v}")))
        };
        (list(0, "rapiddisk"), list(1, "rapiddisk_cache"))
    }

    fn ram_disk(&self, name: &str) -> Value {
        let (disks, _) = self.volumes();
        disks
            .into_iter()
            .find(|d| d["device"] == name)
            .unwrap_or_else(|| self.fail(&format!("{name} not in listRapidDiskVolumes")))
    }

    fn usage(&self, name: &str) -> u64 {
        self.ram_disk(name)["usage"].as_u64().unwrap()
    }

    /// A raw JSON-RPC call: the result, or the error object.
    fn call(&self, method: &str, params: Option<Value>) -> Result<Value, Value> {
        let mut req = json!({"jsonrpc": "2.0", "id": 1, "method": method});
        if let Some(p) = params {
            req["params"] = p;
        }
        let mut s = TcpStream::connect(("127.0.0.1", self.rpc)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        s.write_all(req.to_string().as_bytes()).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                self.fail(&format!("{method}: connection closed"));
            }
            got.extend_from_slice(&buf[..n]);
            if let Ok(v) = serde_json::from_slice::<Value>(&got) {
                return match v.get("error") {
                    Some(e) => Err(e.clone()),
                    None => Ok(v["result"].clone()),
                };
            }
        }
    }

    fn rpc(&self, method: &str, params: Value) -> Value {
        self.call(method, Some(params))
            .unwrap_or_else(|e| self.fail(&format!("{method}: {e}")))
    }

    fn rpc_fails(&self, method: &str, params: Value) {
        if let Ok(v) = self.call(method, Some(params.clone())) {
            self.fail(&format!("{method} {params} should fail but answered {v}"));
        }
    }

    /// The NBD URI of `bdev`, exporting it under its own name if it is not
    /// exported yet.
    fn nbd_uri(&self, bdev: &str) -> String {
        let list = self.rpc("nbd_get_disks", json!({}));
        let found = list
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["bdev_name"] == bdev)
            .and_then(|e| e["nbd_device"].as_str().map(String::from));
        let export = found.unwrap_or_else(|| {
            self.rpc("nbd_start_disk", json!({"bdev_name": bdev}))
                .as_str()
                .unwrap()
                .to_string()
        });
        format!("nbd://127.0.0.1:{}/{export}", self.nbd)
    }

    /// qemu-io with commands `cmds` on `uri`: the output, `Err` if any
    /// command failed.
    fn qemu_io(&self, uri: &str, read_only: bool, cmds: &[&str]) -> Result<String, String> {
        let mut c = Command::new("qemu-io");
        c.args(["-f", "raw"]);
        if read_only {
            c.arg("-r");
        }
        for cmd in cmds {
            c.args(["-c", cmd]);
        }
        c.arg(uri);
        let out = c.output().expect("qemu-io (qemu-utils)");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() && !failed(&text) {
            Ok(text)
        } else {
            Err(text)
        }
    }

    fn write(&self, uri: &str, pattern: u8, off: u64, len: u64) {
        let cmd = format!("write -P {pattern:#04x} {off} {len}");
        if let Err(e) = self.qemu_io(uri, false, &[&cmd]) {
            self.fail(&format!("qemu-io {uri} `{cmd}`: {e}"));
        }
    }

    /// Writes `data` at offset 0 with nbdcopy, which sends no flush (as
    /// qemu-io does on close, even in cache mode `unsafe`): a write-back
    /// cache may keep it all dirty.
    fn copy_unflushed(&self, uri: &str, data: &[u8], scratch: &Path) {
        let file = scratch.join("copy-in.bin");
        std::fs::write(&file, data).unwrap();
        let out = Command::new("nbdcopy")
            .arg(&file)
            .arg(uri)
            .output()
            .expect("nbdcopy (libnbd-bin)");
        if !out.status.success() {
            self.fail(&format!(
                "nbdcopy {} {uri}: {}",
                file.display(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }

    fn verify(&self, uri: &str, pattern: u8, off: u64, len: u64) {
        let cmd = format!("read -P {pattern:#04x} {off} {len}");
        if let Err(e) = self.qemu_io(uri, true, &[&cmd]) {
            self.fail(&format!("qemu-io {uri} `{cmd}`: {e}"));
        }
    }
}

/// Whether qemu-io's output reports a failed command or a miscompare.
fn failed(text: &str) -> bool {
    text.contains("failed") || text.contains("error") || text.contains("Error")
}

/// Whether [off, off + len) of `file` holds only `pattern`.
fn file_holds(file: &Path, pattern: u8, off: u64, len: u64) -> bool {
    let mut f = std::fs::File::open(file).unwrap();
    f.seek(SeekFrom::Start(off)).unwrap();
    let mut buf = vec![0u8; len as usize];
    f.read_exact(&mut buf).unwrap();
    buf.iter().all(|&b| b == pattern)
}

#[test]
#[ignore = "boots QEMU; run through cargo xtask test"]
fn rest_api_with_curl_and_jq() {
    let dir = ironbay_tests::scratch("rapiddisk-api");
    let (disks, _) = default_disks(&dir);
    let a = boot(disks, "", None);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/rapiddisk-api.sh");
    let out = Command::new("bash")
        .arg(&script)
        .args([a.rest, a.rpc, a.nbd].map(|p| p.to_string()))
        .env("EXPECT_NVME_SIZE", DISK.to_string())
        .env("EXPECT_VBLK_SIZE", DISK.to_string())
        .output()
        .expect("bash");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    if !out.status.success() || !text.contains("RAPIDDISK-API-OK") {
        a.fail(&format!("rapiddisk-api.sh failed:\n{text}"));
    }
}

#[test]
#[ignore = "boots QEMU; run through cargo xtask test"]
fn json_rpc_methods_and_write_back_on_removal() {
    let dir = ironbay_tests::scratch("rapiddisk-rpc");
    let (disks, vblk) = default_disks(&dir);
    let a = boot(disks, "", None);
    let empty = json!({"rapiddisk": [], "rapiddisk_cache": []});
    assert_eq!(a.call("bdev_rapiddisk_get_disks", None), Ok(empty.clone()));
    assert_eq!(
        a.call("bdev_rapiddisk_get_disks", Some(json!({}))),
        Ok(empty),
        "SPDK clients may send empty params"
    );

    assert_eq!(
        a.rpc("bdev_rapiddisk_create", json!({"size_mb": 32})),
        "rd0"
    );
    assert_eq!(
        a.rpc(
            "bdev_rapiddisk_create",
            json!({"size_mb": 16, "name": "fast0"})
        ),
        "fast0"
    );
    assert_eq!(a.rpc("bdev_rapiddisk_create", json!({"size_mb": 8})), "rd1");
    for bad in [
        json!({"size_mb": 0}),
        json!({}),
        json!({"size_mb": -1}),
        json!({"size_mb": "8"}),
        json!({"size_mb": 8, "bogus": 1}),
        json!({"size_mb": 8, "name": "rd0"}),
        json!({"size_mb": 8, "name": "Nvme0n1"}),
        json!({"size_mb": 1 << 20}),
    ] {
        a.rpc_fails("bdev_rapiddisk_create", bad);
    }
    let bdevs = a.rpc("bdev_get_bdevs", json!({"name": "rd0"}));
    assert_eq!(bdevs[0]["product_name"], "RapidDisk", "{bdevs}");
    assert_eq!(
        bdevs[0]["num_blocks"].as_u64().unwrap() * bdevs[0]["block_size"].as_u64().unwrap(),
        32 * MIB,
        "{bdevs}"
    );

    a.rpc(
        "bdev_rapiddisk_resize",
        json!({"name": "rd0", "size_mb": 48}),
    );
    a.rpc_fails(
        "bdev_rapiddisk_resize",
        json!({"name": "rd0", "size_mb": 16}),
    );
    a.rpc_fails(
        "bdev_rapiddisk_resize",
        json!({"name": "rd9", "size_mb": 64}),
    );
    a.rpc(
        "bdev_rapiddisk_set_locked",
        json!({"name": "rd1", "locked": true}),
    );
    a.rpc_fails(
        "bdev_rapiddisk_set_locked",
        json!({"name": "Nvme0n1", "locked": true}),
    );
    // One object model: what JSON-RPC made, REST lists, and back.
    assert_eq!(a.ram_disk("rd1")["status"], "locked");
    assert_eq!(a.ram_disk("rd0")["size"], 48 * MIB);
    a.post_ok("createRapidDisk/4");
    let disks = a.rpc("bdev_rapiddisk_get_disks", json!({}));
    let find = |name: &str| {
        disks["rapiddisk"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == name)
            .cloned()
            .unwrap_or_else(|| a.fail(&format!("{name} not in {disks}")))
    };
    assert_eq!(
        find("rd0"),
        json!({"name": "rd0", "size": 48 * MIB, "usage": 0, "locked": false})
    );
    assert_eq!(find("rd1")["locked"], true, "{disks}");
    assert_eq!(find("fast0")["size"], 16 * MIB, "{disks}");
    assert_eq!(find("rd2")["size"], 4 * MIB, "made over REST: {disks}");
    a.rpc(
        "bdev_rapiddisk_set_locked",
        json!({"name": "rd1", "locked": false}),
    );
    assert_eq!(a.ram_disk("rd1")["status"], "unlocked");

    // A write-back cache over the virtio-blk disk.
    for bad in [
        json!({"cache": "rd0", "source": "VirtioBlk0", "mode": "bogus"}),
        json!({"cache": "rd9", "source": "VirtioBlk0", "mode": "write-back"}),
        json!({"cache": "rd0", "source": "Nothing", "mode": "write-back"}),
        json!({"cache": "rd0", "source": "VirtioBlk0"}),
        json!({"cache": "rd0", "source": "VirtioBlk0", "mode": "write-back", "x": 1}),
    ] {
        a.rpc_fails("bdev_rapiddisk_cache_create", bad);
    }
    let rc = a.rpc(
        "bdev_rapiddisk_cache_create",
        json!({"cache": "rd0", "source": "VirtioBlk0", "mode": "write-back"}),
    );
    assert_eq!(rc, "rc-wb_VirtioBlk0");
    let b = a.rpc("bdev_get_bdevs", json!({"name": "rc-wb_VirtioBlk0"}));
    assert_eq!(b[0]["product_name"], "RapidDisk cache", "{b}");
    assert_eq!(
        b[0]["num_blocks"].as_u64().unwrap() * b[0]["block_size"].as_u64().unwrap(),
        DISK,
        "a cache is as large as its source: {b}"
    );
    let src = a.rpc("bdev_get_bdevs", json!({"name": "VirtioBlk0"}));
    assert_eq!(src[0]["claimed"], true, "{src}");
    let disks = a.rpc("bdev_rapiddisk_get_disks", Value::Null);
    assert_eq!(
        disks["rapiddisk_cache"],
        json!([{"name": "rc-wb_VirtioBlk0", "cache": "rd0", "source": "VirtioBlk0",
                "mode": "write-back"}]),
        "{disks}"
    );
    let (_, caches) = a.volumes();
    assert_eq!(
        caches,
        vec![
            json!({"device": "rc-wb_VirtioBlk0", "cache": "rd0", "source": "VirtioBlk0",
                    "mode": "write-back"})
        ]
    );
    a.rpc_fails("bdev_rapiddisk_delete", json!({"name": "rd0"}));
    a.rpc_fails("bdev_rapiddisk_cache_get_stats", json!({"name": "rd0"}));
    a.rpc_fails("bdev_rapiddisk_cache_delete", json!({"name": "rd0"}));

    // Data written through the cache is in the backing file once the
    // cache is removed, whatever the cache had written back by then.
    let uri = a.nbd_uri("rc-wb_VirtioBlk0");
    a.write(&uri, 0x5e, 0, MIB);
    a.write(&uri, 0x5f, 3 * MIB + 4096, 64 * 1024);
    a.verify(&uri, 0x5e, 0, MIB);
    let stats = a.rpc(
        "bdev_rapiddisk_cache_get_stats",
        json!({"name": "rc-wb_VirtioBlk0"}),
    );
    println!("write-back cache after 1 MiB + 64 KiB written: {stats}");
    assert_eq!(stats["mode"], "write-back", "{stats}");
    for k in ["errors", "num_blocks", "num_free_blocks", "num_wb_blocks"] {
        assert!(stats[k].is_u64(), "{k}: {stats}");
    }
    assert!(stats["num_blocks"].as_u64() > Some(0), "{stats}");
    assert_eq!(stats["errors"], 0, "{stats}");
    let rest_stats = a.get_ok("showRapidDiskCacheStats/rc-wb_VirtioBlk0");
    let s = &rest_stats["statistics"][0]["cache_stats"][0];
    assert_eq!(s["device"], "rc-wb_VirtioBlk0", "{rest_stats}");
    assert_eq!(s["num_blocks"], stats["num_blocks"], "{rest_stats}");
    let clean_before = file_holds(&vblk, 0x5e, 0, MIB);
    println!(
        "backing file before removal: {}",
        if clean_before {
            "already written back"
        } else {
            "still dirty in the cache"
        }
    );
    a.rpc(
        "bdev_rapiddisk_cache_delete",
        json!({"name": "rc-wb_VirtioBlk0"}),
    );
    assert!(
        file_holds(&vblk, 0x5e, 0, MIB),
        "the first MiB is not in the backing file after bdev_rapiddisk_cache_delete"
    );
    assert!(
        file_holds(&vblk, 0x5f, 3 * MIB + 4096, 64 * 1024),
        "the 64 KiB at 3 MiB + 4 KiB are not in the backing file"
    );
    assert!(file_holds(&vblk, 0, MIB, 2 * MIB), "nothing else written");
    let src = a.rpc("bdev_get_bdevs", json!({"name": "VirtioBlk0"}));
    assert_eq!(src[0]["claimed"], false, "released: {src}");
    assert_eq!(a.usage("rd0"), 0, "the cache's pages went back");
    a.rpc_fails(
        "bdev_rapiddisk_cache_delete",
        json!({"name": "rc-wb_VirtioBlk0"}),
    );

    // What the saved config would recreate (in whichever subsystem).
    let cfg = a.rpc("framework_get_config", json!({}));
    let made: Vec<&str> = cfg["subsystems"]
        .as_array()
        .unwrap_or_else(|| a.fail(&format!("framework_get_config: {cfg}")))
        .iter()
        .filter_map(|s| s["config"].as_array())
        .flatten()
        .filter(|c| c["method"] == "bdev_rapiddisk_create")
        .filter_map(|c| c["params"]["name"].as_str())
        .collect();
    for n in ["rd0", "rd1", "rd2", "fast0"] {
        assert!(made.contains(&n), "{n} not in {cfg}");
    }

    a.rpc("bdev_rapiddisk_flush", json!({"name": "rd1"}));
    a.rpc_fails("bdev_rapiddisk_flush", json!({"name": "VirtioBlk0"}));
    for n in ["fast0", "rd2", "rd1", "rd0"] {
        // An NBD export made above goes first.
        if let Ok(list) = a.call("nbd_get_disks", Some(json!({}))) {
            for e in list
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["bdev_name"] == n)
            {
                a.rpc("nbd_stop_disk", json!({"nbd_device": e["nbd_device"]}));
            }
        }
        a.rpc("bdev_rapiddisk_delete", json!({"name": n}));
    }
    a.rpc_fails("bdev_rapiddisk_delete", json!({"name": "rd0"}));
    assert_eq!(
        a.rpc("bdev_rapiddisk_get_disks", json!({})),
        json!({"rapiddisk": [], "rapiddisk_cache": []})
    );
}

#[test]
#[ignore = "boots QEMU; run through cargo xtask test"]
fn dirty_write_back_survives_export_changes() {
    let dir = ironbay_tests::scratch("rapiddisk-dirty");
    let (disks, vblk) = default_disks(&dir);
    let a = boot(disks, "", None);
    // The source answers no write until told to: everything stays dirty.
    a.rpc("bdev_error_create", json!({"base_name": "VirtioBlk0"}));
    a.rpc(
        "bdev_error_inject_error",
        json!({"name": "EE_VirtioBlk0", "io_type": "write", "error_type": "pending",
               "num": 1_000_000}),
    );
    assert_eq!(
        a.rpc("bdev_rapiddisk_create", json!({"size_mb": 32})),
        "rd0"
    );
    let rc = a.rpc(
        "bdev_rapiddisk_cache_create",
        json!({"cache": "rd0", "source": "EE_VirtioBlk0", "mode": "write-back"}),
    );
    assert_eq!(rc, "rc-wb_EE_VirtioBlk0");
    let first = a.rpc(
        "nbd_start_disk",
        json!({"bdev_name": "rc-wb_EE_VirtioBlk0", "nbd_device": "wb-first"}),
    );
    assert_eq!(first, "wb-first");
    let uri = format!("nbd://127.0.0.1:{}/wb-first", a.nbd);
    // 2 MiB of 0x3c, then 256 KiB of 0x3d.
    let mut data = vec![0x3c; 2 * MIB as usize];
    data.resize((2 * MIB + 256 * 1024) as usize, 0x3d);
    a.copy_unflushed(&uri, &data, &dir);
    let stats = a.rpc(
        "bdev_rapiddisk_cache_get_stats",
        json!({"name": "rc-wb_EE_VirtioBlk0"}),
    );
    println!("write-back cache with the source holding writes: {stats}");
    // 2.25 MiB dirty of 32 MiB: 576 of 8192 blocks are not free.
    assert_eq!(stats["num_free_blocks"], 8192 - 576, "{stats}");
    assert!(
        stats["num_wb_blocks"].as_u64() > Some(0),
        "write-backs should be waiting on the source: {stats}"
    );
    assert!(
        !file_holds(&vblk, 0x3c, 0, 2 * MIB),
        "the source took writes it should have held"
    );

    // Export changes: NBD under a new name, NVMe-oF in and out.
    a.rpc("nbd_stop_disk", json!({"nbd_device": "wb-first"}));
    a.rpc(
        "nvmf_create_subsystem",
        json!({"nqn": "nqn.2016-06.io.spdk:dirty", "allow_any_host": true}),
    );
    a.rpc(
        "nvmf_subsystem_add_ns",
        json!({"nqn": "nqn.2016-06.io.spdk:dirty",
               "namespace": {"bdev_name": "rc-wb_EE_VirtioBlk0"}}),
    );
    a.rpc_fails(
        "bdev_rapiddisk_cache_delete",
        json!({"name": "rc-wb_EE_VirtioBlk0"}),
    );
    a.rpc(
        "nvmf_delete_subsystem",
        json!({"nqn": "nqn.2016-06.io.spdk:dirty"}),
    );
    a.rpc(
        "nbd_start_disk",
        json!({"bdev_name": "rc-wb_EE_VirtioBlk0", "nbd_device": "wb-second"}),
    );
    let uri = format!("nbd://127.0.0.1:{}/wb-second", a.nbd);
    a.verify(&uri, 0x3c, 0, 2 * MIB);
    a.verify(&uri, 0x3d, 2 * MIB, 256 * 1024);
    data[MIB as usize..(MIB + 4096) as usize].fill(0x3e);
    a.copy_unflushed(&uri, &data, &dir);

    // Removal cannot write back while the source holds writes: refused,
    // the data stays in the cache and readable.
    let refused = a.call(
        "bdev_rapiddisk_cache_delete",
        Some(json!({"name": "rc-wb_EE_VirtioBlk0"})),
    );
    let Err(e) = refused else {
        a.fail(&format!(
            "removal with a stalled source answered {refused:?}"
        ));
    };
    println!("removal with the source holding writes: {e}");
    a.verify(&uri, 0x3e, MIB, 4096);
    assert!(!file_holds(&vblk, 0x3c, 0, MIB));

    // The source answers again: removal writes everything back.
    a.rpc(
        "bdev_error_inject_error",
        json!({"name": "EE_VirtioBlk0", "io_type": "clear", "error_type": "failure"}),
    );
    a.rpc(
        "bdev_error_resume_pending",
        json!({"name": "EE_VirtioBlk0"}),
    );
    a.rpc(
        "bdev_rapiddisk_cache_delete",
        json!({"name": "rc-wb_EE_VirtioBlk0"}),
    );
    assert!(
        file_holds(&vblk, 0x3c, 0, MIB),
        "first MiB not written back"
    );
    assert!(
        file_holds(&vblk, 0x3e, MIB, 4096),
        "the later write is lost"
    );
    assert!(file_holds(&vblk, 0x3c, MIB + 4096, MIB - 4096));
    assert!(file_holds(&vblk, 0x3d, 2 * MIB, 256 * 1024));
    assert!(
        file_holds(&vblk, 0, 2 * MIB + 256 * 1024, 3 * MIB),
        "nothing else written"
    );
    assert_eq!(a.usage("rd0"), 0, "the cache's pages went back");
    let rest = a.get_ok("listRapidDiskVolumes");
    println!("after removal: {rest}");
}

#[test]
#[ignore = "boots QEMU; run through cargo xtask test"]
fn ram_disk_fills_to_enospc_and_keeps_serving() {
    const SIZE_MIB: u64 = 448;
    const BULK_MIB: u64 = 384;
    const BULK_CHUNK: u64 = 64;
    const STEP_MIB: u64 = 4;
    let dir = ironbay_tests::scratch("rapiddisk-mem");
    let (disks, _) = default_disks(&dir);
    let a = boot(disks, "", Some(512));
    a.post_ok(&format!("createRapidDisk/{SIZE_MIB}"));
    let rd = a.ram_disk("rd0");
    assert_eq!(rd["size"], SIZE_MIB * MIB, "{rd}");
    assert_eq!(rd["usage"], 0, "{rd}");
    let uri = a.nbd_uri("rd0");
    let pattern = |mib: u64| 0x40 + (mib / BULK_CHUNK) as u8;

    let t = Instant::now();
    for off in (0..BULK_MIB).step_by(BULK_CHUNK as usize) {
        a.write(&uri, pattern(off), off * MIB, BULK_CHUNK * MIB);
    }
    let usage = a.usage("rd0");
    println!(
        "{BULK_MIB} MiB written in {:.1} s; usage {} MiB",
        t.elapsed().as_secs_f64(),
        usage / MIB
    );
    assert!(
        usage >= BULK_MIB * MIB,
        "usage {usage} after {BULK_MIB} MiB"
    );
    assert!(usage <= SIZE_MIB * MIB, "usage {usage}");

    // On until memory runs out.
    let mut written = BULK_MIB;
    let mut enospc = None;
    while written < SIZE_MIB {
        let cmd = format!("write -P 0x7e {} {}", written * MIB, STEP_MIB * MIB);
        match a.qemu_io(&uri, false, &[&cmd]) {
            Ok(_) => written += STEP_MIB,
            Err(text) => {
                enospc = Some(text);
                break;
            }
        }
    }
    println!("RAM disk bytes written: {written} MiB");
    let usage = a.usage("rd0");
    println!(
        "usage when the write failed: {} MiB of {SIZE_MIB}",
        usage / MIB
    );
    let Some(text) = enospc else {
        a.fail(&format!(
            "all {SIZE_MIB} MiB written on a 512 MiB appliance without ENOSPC (usage {usage})"
        ));
    };
    if !text.contains("No space left on device") {
        a.fail(&format!(
            "the write at {written} MiB failed, but not with ENOSPC:\n{text}"
        ));
    }

    // Everything else still works.
    let status = a.get_ok("checkServiceStatus");
    assert_eq!(status["status"], "OK");
    a.rpc("spdk_get_version", json!({}));
    for off in (0..BULK_MIB).step_by(BULK_CHUNK as usize) {
        a.verify(&uri, pattern(off), off * MIB, BULK_CHUNK * MIB);
    }
    if written > BULK_MIB {
        a.verify(&uri, 0x7e, BULK_MIB * MIB, (written - BULK_MIB) * MIB);
    }
    // Pages already held take rewrites.
    a.write(&uri, pattern(0), 0, BULK_CHUNK * MIB);

    a.post_ok("flushRapidDisk/rd0");
    assert_eq!(a.usage("rd0"), 0, "flushed");
    a.verify(&uri, 0, 0, 4 * MIB);
    // The memory came back: the same writes fit again.
    a.write(&uri, 0x33, 0, BULK_CHUNK * MIB);
    a.write(&uri, 0x34, (SIZE_MIB - BULK_CHUNK) * MIB, BULK_CHUNK * MIB);
    a.verify(&uri, 0x33, 0, BULK_CHUNK * MIB);
    a.verify(&uri, 0x34, (SIZE_MIB - BULK_CHUNK) * MIB, BULK_CHUNK * MIB);
    assert_eq!(a.usage("rd0"), 2 * BULK_CHUNK * MIB);
}

/// An interactive qemu-io session (commands on stdin, one prompt per
/// answer), so one client stays connected across a change.
struct QemuIo {
    child: Child,
    stdin: ChildStdin,
    out: Receiver<Vec<u8>>,
    buf: String,
}

const PROMPT: &str = "qemu-io> ";

impl QemuIo {
    fn open(uri: &str) -> Result<Self, String> {
        let (reader, writer) = std::io::pipe().map_err(|e| e.to_string())?;
        let mut c = Command::new("qemu-io");
        c.args(["-f", "raw", uri])
            .stdin(Stdio::piped())
            .stdout(writer.try_clone().map_err(|e| e.to_string())?)
            .stderr(writer);
        let mut child = c.spawn().map_err(|e| format!("qemu-io: {e}"))?;
        // The Command holds the pipe's write ends until dropped.
        drop(c);
        let stdin = child.stdin.take().unwrap();
        let (tx, out) = channel();
        std::thread::spawn(move || {
            let mut reader = reader;
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        let mut q = QemuIo {
            child,
            stdin,
            out,
            buf: String::new(),
        };
        q.answer(Duration::from_secs(60))
            .map_err(|e| format!("qemu-io {uri} did not open: {e}"))?;
        Ok(q)
    }

    /// The text up to the next prompt.
    fn answer(&mut self, timeout: Duration) -> Result<String, String> {
        let until = Instant::now() + timeout;
        loop {
            if let Some(i) = self.buf.find(PROMPT) {
                let text = self.buf[..i].to_string();
                self.buf.drain(..i + PROMPT.len());
                return Ok(text);
            }
            let left = until.saturating_duration_since(Instant::now());
            match self.out.recv_timeout(left) {
                Ok(b) => self.buf.push_str(&String::from_utf8_lossy(&b)),
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!("no answer in {timeout:?}: {}", self.buf));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(format!("qemu-io exited: {}", self.buf));
                }
            }
        }
    }

    fn cmd(&mut self, line: &str) -> Result<String, String> {
        writeln!(self.stdin, "{line}").map_err(|e| format!("qemu-io stdin: {e}"))?;
        self.answer(Duration::from_secs(120))
    }
}

impl Drop for QemuIo {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        for _ in 0..50 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One write of the looping client: when it was sent, when it was
/// answered, and what qemu-io said.
struct Attempt {
    started: Instant,
    finished: Instant,
    answer: String,
}

impl Attempt {
    fn ok(&self) -> bool {
        self.answer.contains("wrote ") && !failed(&self.answer)
    }

    fn eperm(&self) -> bool {
        self.answer
            .contains("write failed: Operation not permitted")
    }
}

#[test]
#[ignore = "boots QEMU; run through cargo xtask test"]
fn lock_while_a_client_writes() {
    let dir = ironbay_tests::scratch("rapiddisk-lock");
    let (disks, _) = default_disks(&dir);
    let a = boot(disks, "", None);
    a.post_ok("createRapidDisk/64");
    let uri = a.nbd_uri("rd0");
    a.write(&uri, 0x33, 0, 64 * MIB);
    let mut reader = QemuIo::open(&uri).unwrap_or_else(|e| a.fail(&e));

    // The client: 1 MiB writes round the disk until told to stop.
    let mut writer = QemuIo::open(&uri).unwrap_or_else(|e| a.fail(&e));
    let log: Arc<Mutex<Vec<Attempt>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let (log, stop) = (Arc::clone(&log), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let answer = writer
                    .cmd(&format!("write -P 0x33 {} 1M", (i % 64) * MIB))
                    .unwrap_or_else(|e| format!("SESSION LOST: {e}"));
                let lost = answer.starts_with("SESSION LOST");
                log.lock().unwrap().push(Attempt {
                    started,
                    finished: Instant::now(),
                    answer,
                });
                if lost {
                    break;
                }
                i += 1;
            }
        })
    };
    // Waits until `n` writes that started after `since` have answered.
    let wait_writes = |since: Instant, n: usize, what: &str| {
        let until = Instant::now() + Duration::from_secs(180);
        loop {
            let count = log
                .lock()
                .unwrap()
                .iter()
                .filter(|w| w.started >= since)
                .count();
            if count >= n {
                return;
            }
            if Instant::now() > until {
                stop.store(true, Ordering::Relaxed);
                a.fail(&format!("only {count} writes {what} in 180 s"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let start = Instant::now();
    wait_writes(start, 5, "before the lock");

    a.post_ok("lockRapidDisk/rd0");
    let locked = Instant::now();
    assert_eq!(a.ram_disk("rd0")["status"], "locked");
    wait_writes(locked, 5, "while locked");
    // Reads go on, on a connection made before the lock and on a new one.
    match reader.cmd("read -P 0x33 0 1M") {
        Ok(t) if !failed(&t) && t.contains("read ") => {}
        other => a.fail(&format!("read while locked: {other:?}")),
    }
    if let Err(e) = a.qemu_io(&uri, true, &["read -P 0x33 8M 4M"]) {
        a.fail(&format!("a new read-only client while locked: {e}"));
    }
    // A write from the reader's session fails too.
    match reader.cmd("write -P 0x44 0 4k") {
        Ok(t) if t.contains("Operation not permitted") => {}
        other => a.fail(&format!("write while locked: {other:?}")),
    }
    let unlocking = Instant::now();
    a.post_ok("unlockRapidDisk/rd0");
    let unlocked = Instant::now();
    assert_eq!(a.ram_disk("rd0")["status"], "unlocked");
    wait_writes(unlocked, 5, "after the unlock");
    stop.store(true, Ordering::Relaxed);
    client.join().unwrap();

    let log = log.lock().unwrap();
    let before = log.iter().filter(|w| w.started < locked).count();
    // Sent after the lock was answered and answered before the unlock was
    // sent: the disk was locked all along.
    let during: Vec<&Attempt> = log
        .iter()
        .filter(|w| w.started >= locked && w.finished < unlocking)
        .collect();
    let after: Vec<&Attempt> = log.iter().filter(|w| w.started >= unlocked).collect();
    println!(
        "writes: {before} before the lock, {} while locked ({} EPERM), {} after the unlock ({} ok)",
        during.len(),
        during.iter().filter(|w| w.eperm()).count(),
        after.len(),
        after.iter().filter(|w| w.ok()).count()
    );
    for w in &*log {
        if !w.ok() && !w.eperm() {
            a.fail(&format!(
                "a write answered neither ok nor EPERM: {}",
                w.answer
            ));
        }
    }
    if let Some(w) = during.iter().find(|w| !w.eperm()) {
        a.fail(&format!("a write while locked: {}", w.answer));
    }
    if let Some(w) = after.iter().find(|w| !w.ok()) {
        a.fail(&format!("a write after the unlock: {}", w.answer));
    }
    match reader.cmd("write -P 0x44 0 4k") {
        Ok(t) if t.contains("wrote ") && !failed(&t) => {}
        other => a.fail(&format!("write after unlock on the reader: {other:?}")),
    }
    a.verify(&uri, 0x44, 0, 4096);
    a.verify(&uri, 0x33, 4096, 64 * MIB - 4096);
}

#[test]
#[ignore = "boots QEMU; run through cargo xtask test"]
fn definitions_survive_a_kill() {
    let dir = ironbay_tests::scratch("rapiddisk-persist");
    let (mut disks, vblk) = default_disks(&dir);
    let cfg = dir.join("config.img");
    sparse_disk(&cfg, 16 << 20).unwrap();
    disks.push(Disk::nvme(1, 1, cfg));
    let append = "config.store=Nvme1n1";
    let mut a = boot(disks.clone(), append, None);
    let gen0 = a
        .call("config_store_get", None)
        .unwrap_or_else(|e| a.fail(&format!("config_store_get: {e}")))["generation"]
        .as_u64()
        .unwrap_or(0);
    a.post_ok("createRapidDisk/64");
    a.post_ok("createRapidDisk/32");
    a.post_ok("createRapidDisk/16");
    a.post_ok("lockRapidDisk/rd2");
    a.post_ok("createRapidDiskCache/rd1/VirtioBlk0/write-through");
    // Contents that must not come back.
    let rd0 = a.nbd_uri("rd0");
    a.write(&rd0, 0x77, 0, 4 * MIB);
    assert_eq!(a.usage("rd0"), 4 * MIB);
    // Written through to the source, which keeps it.
    let rc = a.nbd_uri("rc-wt_VirtioBlk0");
    a.write(&rc, 0x66, 0, MIB);
    assert!(
        file_holds(&vblk, 0x66, 0, MIB),
        "write-through: in the file"
    );
    let st = a
        .call("config_store_get", None)
        .unwrap_or_else(|e| a.fail(&format!("config_store_get: {e}")));
    assert_eq!(st["bdev_name"], "Nvme1n1", "{st}");
    assert!(
        st["generation"].as_u64().unwrap_or(0) > gen0,
        "saved after REST changes: {st} (generation before: {gen0})"
    );
    let (disks_before, caches_before) = a.volumes();
    a.vm.kill();
    drop(a);

    let a = boot(disks, append, None);
    let (disks_after, caches_after) = a.volumes();
    let strip = |v: &[Value]| -> Vec<Value> {
        let mut v: Vec<Value> = v
            .iter()
            .map(|d| {
                let mut d = d.clone();
                d.as_object_mut().unwrap().remove("usage");
                d
            })
            .collect();
        v.sort_by_key(|d| d["device"].as_str().unwrap_or("").to_string());
        v
    };
    assert_eq!(
        strip(&disks_after),
        strip(&disks_before),
        "{}",
        a.vm.output()
    );
    assert_eq!(caches_after, caches_before);
    assert_eq!(
        caches_after,
        vec![
            json!({"device": "rc-wt_VirtioBlk0", "cache": "rd1", "source": "VirtioBlk0",
                    "mode": "write-through"})
        ]
    );
    assert_eq!(a.ram_disk("rd2")["status"], "locked");
    assert_eq!(a.usage("rd0"), 0, "contents do not survive");
    let rd0 = a.nbd_uri("rd0");
    a.verify(&rd0, 0, 0, 4 * MIB);
    let rc = a.nbd_uri("rc-wt_VirtioBlk0");
    a.verify(&rc, 0x66, 0, MIB);
    // And it serves writes again.
    a.write(&rc, 0x67, MIB, MIB);
    assert!(file_holds(&vblk, 0x67, MIB, MIB));
}
