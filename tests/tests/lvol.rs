//! Logical volumes on the booted appliance, driven by SPDK's own Python
//! client (`spdk-rpc`) and checked with real NBD clients (qemu-io,
//! qemu-img). Each test reproduces scenarios of SPDK's `test/lvol/` suite
//! (spdk/spdk, `test/lvol/*.sh`, sizes from `test/lvol/common.sh`: 128 MiB
//! malloc bdevs of 512-byte blocks, 4 MiB clusters, one cluster kept for
//! metadata, so 124 MiB of capacity):
//!
//! - `lvstores_create_list_delete_and_refusals` — basic.sh:
//!   test_construct_lvs, test_construct_lvs_nonexistent_bdev,
//!   test_construct_two_lvs_on_the_same_bdev, test_construct_lvs_conflict_alias,
//!   test_construct_lvs_different_cluster_size, test_construct_lvs_clear_methods,
//!   the name bounds of vbdev_lvs_create_ext, deleting a store that still
//!   holds lvols (as test_construct_lvol_full_lvs cleans up), and the seed
//!   aliases construct_lvol_store / get_lvol_stores / destroy_lvol_store.
//! - `lvols_create_list_and_refusals` — basic.sh: test_construct_lvol,
//!   test_construct_multi_lvols, test_construct_lvols_conflict_alias,
//!   test_construct_lvol_inexistent_lvs, test_construct_lvol_full_lvs,
//!   test_construct_lvol_alias_conflict, test_construct_nested_lvol,
//!   test_lvol_list; sizes rounded up to whole clusters (spdk_lvol_create).
//! - `thin_lvols_allocate_on_write_and_read_zeroes` — thin_provisioning.sh:
//!   test_thin_lvol_check_space, test_thin_lvol_check_zeroes,
//!   test_thin_lvol_check_integrity.
//! - `thin_lvols_resize_and_overprovision` — thin_provisioning.sh:
//!   test_thin_lvol_resize, test_thin_overprovisioning.
//! - `lvols_resize_like_spdk` — resize.sh: test_resize_lvol,
//!   test_resize_lvol_negative, test_resize_lvol_with_io_traffic,
//!   test_destroy_after_bdev_lvol_resize_positive; rounding up to clusters
//!   (vbdev_lvol_resize) and free_clusters of a thick lvol.
//! - `snapshots_and_clones` — snapshot_clone.sh:
//!   test_snapshot_compare_with_lvol_bdev, test_create_snapshot_of_snapshot,
//!   test_clone_snapshot_relations, test_delete_snapshot_with_clone,
//!   test_bdev_lvol_delete_ordering; seed aliases snapshot_lvol_bdev /
//!   clone_lvol_bdev / destroy_lvol_bdev.
//! - `inflate_decouple_read_only_and_snapshot_chains` — snapshot_clone.sh:
//!   test_clone_inflate, test_clone_decouple_parent, test_lvol_bdev_readonly,
//!   test_delete_snapshot_with_snapshot.
//! - `lvols_and_lvstores_rename` — rename.sh: test_rename_positive,
//!   test_rename_lvs_negative, test_lvol_rename_negative; a renamed snapshot
//!   is what its clones name; seed alias rename_lvol_store.
//! - `lvstores_are_tasted_again_after_a_reboot` — tasting.sh: test_tasting
//!   (an NVMe namespace of 4096-byte blocks with 1 MiB clusters and a
//!   virtio-blk disk with 32 MiB clusters; the restart of spdk_tgt is a
//!   killed QEMU booted again on the same image files),
//!   test_delete_lvol_store_persistent_positive; snapshot, clone and thin
//!   volume relations and data survive too.
//! - `lvstore_grows_with_its_disk` — test/nvmf/target/nvmf_lvs_grow.sh
//!   (lvs_grow dirty): a 200 MiB disk grown to 400 MiB between boots,
//!   bdev_lvol_grow_lvstore, then QEMU killed right after the grow.
//!
//! Run by `cargo xtask test`.

use ironbay_tests::READY;
use ironbay_tests::images::{kernel, require};
use ironbay_tests::machine::{Boot, Disk, Machine, Nic, free_port};
use ironbay_tests::serial::Running;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
/// SPDK's LVS_DEFAULT_CLUSTER_SIZE.
const CLUSTER: u64 = 4 * MIB;
const CLUSTER_MB: u64 = 4;
/// SPDK's MALLOC_SIZE_MB and MALLOC_BS.
const MALLOC_MB: u64 = 128;
const BS: u64 = 512;
/// SPDK's LVS_DEFAULT_CAPACITY_MB: the malloc less one cluster of metadata.
const CAPACITY_MB: u64 = MALLOC_MB - CLUSTER_MB;
const CAPACITY: u64 = CAPACITY_MB * MIB;
const ZERO_UUID: &str = "00000000-0000-0000-0000-000000000000";

/// SPDK's round_down: to whole clusters of `cluster_mb`.
fn round_down(mb: u64, cluster_mb: u64) -> u64 {
    mb / cluster_mb * cluster_mb
}

/// An error reply as SPDK's client prints it.
#[derive(Debug)]
struct RpcErr {
    code: i64,
    message: String,
    text: String,
}

struct Appliance {
    vm: Running,
    rpc: u16,
    nbd: u16,
}

fn boot(disks: &[Disk]) -> Appliance {
    boot_with(disks, &[])
}

/// Boots with `more` data-NIC ports forwarded too: (host port, guest port).
fn boot_with(disks: &[Disk], more: &[(u16, u16)]) -> Appliance {
    let (rpc, nbd) = (free_port(), free_port());
    let mut m = Machine::new(Boot::Kernel {
        image: require(&kernel()),
        append: "mgmt.ip=10.0.2.15/24 mgmt.gw=10.0.2.2 data.ip=10.0.3.15/24".into(),
        config: None,
    });
    // Two or three 128 MiB RAM bdevs at once, as SPDK's scripts make them.
    m.memory_mib = 1024;
    m.disks = disks.to_vec();
    m.forwards = vec![(Nic::Mgmt, rpc, 5260), (Nic::Data, nbd, 10809)];
    m.forwards
        .extend(more.iter().map(|&(host, guest)| (Nic::Data, host, guest)));
    let mut vm = Running::spawn(m.command()).expect("start qemu");
    vm.wait_for(READY, Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}"));
    Appliance { vm, rpc, nbd }
}

fn scratch(name: &str) -> PathBuf {
    ironbay_tests::scratch(name)
}

/// What `spdk-rpc` printed for a result: JSON, or a bare string (UUIDs).
fn parse_result(out: &str) -> Value {
    let t = out.trim();
    if t.is_empty() {
        return Value::Null;
    }
    serde_json::from_str(t).unwrap_or_else(|_| Value::String(t.to_string()))
}

/// The `response:` object `spdk-rpc` prints for a JSON-RPC error.
fn parse_error(text: String) -> RpcErr {
    let body = text.rsplit_once("response:").map_or("", |(_, b)| b.trim());
    let v = serde_json::Deserializer::from_str(body)
        .into_iter::<Value>()
        .next()
        .and_then(Result::ok)
        .unwrap_or(Value::Null);
    RpcErr {
        code: v["code"].as_i64().unwrap_or(0),
        message: v["message"].as_str().unwrap_or("").to_string(),
        text,
    }
}

fn sorted(v: &Value) -> Vec<String> {
    let mut names: Vec<String> = v
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| x.as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn strs(names: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

impl Appliance {
    fn console_tail(&self) -> String {
        let out = self.vm.output();
        let start = out.len().saturating_sub(6000);
        let start = (start..out.len())
            .find(|&i| out.is_char_boundary(i))
            .unwrap_or(out.len());
        out[start..].to_string()
    }

    fn call(&self, args: &[&str]) -> Result<Value, RpcErr> {
        match ironbay_tests::spdk_rpc(self.rpc, args) {
            Ok(out) => Ok(parse_result(&out)),
            Err(text) => Err(parse_error(text)),
        }
    }

    /// A call that must succeed.
    fn ok(&self, args: &[&str]) -> Value {
        self.call(args).unwrap_or_else(|e| {
            panic!(
                "request: spdk-rpc {args:?}\nexpected: success\ngot: {}\n----- console (tail) -----\n{}",
                e.text,
                self.console_tail()
            )
        })
    }

    /// A call that returns a UUID (or another string).
    fn ok_str(&self, args: &[&str]) -> String {
        match self.ok(args) {
            Value::String(s) => s,
            other => panic!("request: spdk-rpc {args:?}\nexpected: a string\ngot: {other}"),
        }
    }

    /// A call that must fail.
    fn fails(&self, args: &[&str]) -> RpcErr {
        match self.call(args) {
            Ok(v) => panic!(
                "request: spdk-rpc {args:?}\nexpected: an error\ngot: success {v}\n----- console (tail) -----\n{}",
                self.console_tail()
            ),
            Err(e) => e,
        }
    }

    /// A call that must fail with SPDK's code and message.
    fn fails_with(&self, args: &[&str], code: i64, message: &str) {
        let e = self.fails(args);
        assert!(
            e.code == code && e.message == message,
            "request: spdk-rpc {args:?}\nexpected: error {code} {message:?} (as SPDK)\ngot: error {} {:?}\n{}",
            e.code,
            e.message,
            e.text
        );
    }

    /// One raw JSON-RPC request (for the seed aliases and values the CLI
    /// refuses before sending); the whole reply object.
    fn raw(&self, method: &str, params: Value) -> Value {
        let req = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
        let mut s = TcpStream::connect(("127.0.0.1", self.rpc)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(req.to_string().as_bytes()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65536];
        while Instant::now() < deadline {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
            if let Ok(v) = serde_json::from_slice::<Value>(&got) {
                return v;
            }
        }
        panic!(
            "request: {req}\nexpected: a JSON reply\ngot: {:?}",
            String::from_utf8_lossy(&got)
        )
    }

    fn malloc(&self, name: &str, mb: u64) {
        let size = mb.to_string();
        assert_eq!(
            self.ok_str(&["bdev_malloc_create", "-b", name, &size, "512"]),
            name
        );
    }

    fn create_lvs(&self, bdev: &str, name: &str, extra: &[&str]) -> String {
        let mut args = vec!["bdev_lvol_create_lvstore", bdev, name];
        args.extend_from_slice(extra);
        self.ok_str(&args)
    }

    fn create_lvol(&self, lvs_uuid: &str, name: &str, mb: u64, thin: bool) -> String {
        let size = mb.to_string();
        let mut args = vec!["bdev_lvol_create", "-u", lvs_uuid, name, &size];
        if thin {
            args.push("-t");
        }
        self.ok_str(&args)
    }

    fn lvstores(&self) -> Vec<Value> {
        self.ok(&["bdev_lvol_get_lvstores"])
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    fn lvs(&self, uuid: &str) -> Value {
        let v = self.ok(&["bdev_lvol_get_lvstores", "-u", uuid]);
        assert_eq!(v.as_array().map(Vec::len), Some(1), "{v}");
        v[0].clone()
    }

    fn free(&self, lvs_uuid: &str) -> u64 {
        let l = self.lvs(lvs_uuid);
        l["free_clusters"]
            .as_u64()
            .unwrap_or_else(|| panic!("free_clusters: {l}"))
    }

    fn bdev(&self, name: &str) -> Value {
        let v = self.ok(&["bdev_get_bdevs", "-b", name]);
        assert_eq!(v.as_array().map(Vec::len), Some(1), "{v}");
        v[0].clone()
    }

    /// `driver_specific.lvol` of a bdev.
    fn lvol(&self, name: &str) -> Value {
        let b = self.bdev(name);
        let l = b["driver_specific"]["lvol"].clone();
        assert!(l.is_object(), "no driver_specific.lvol: {b}");
        l
    }

    fn num_blocks(&self, name: &str) -> u64 {
        self.bdev(name)["num_blocks"].as_u64().unwrap()
    }

    fn allocated(&self, name: &str) -> u64 {
        let l = self.lvol(name);
        l["num_allocated_clusters"]
            .as_u64()
            .unwrap_or_else(|| panic!("num_allocated_clusters: {l}"))
    }

    /// bdev_get_bdevs entries with product_name "Logical Volume".
    fn lvol_bdevs(&self) -> Vec<Value> {
        self.ok(&["bdev_get_bdevs"])
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["product_name"] == "Logical Volume")
            .cloned()
            .collect()
    }

    /// check_leftover_devices: no bdevs, no stores.
    fn check_leftovers(&self) {
        let b = self.ok(&["bdev_get_bdevs"]);
        assert_eq!(b.as_array().map(Vec::len), Some(0), "leftover bdevs: {b}");
        assert!(self.lvstores().is_empty(), "leftover stores");
    }

    /// nbd_start_disk BDEV EXPORT; the URI of the export.
    fn export(&self, bdev: &str, export: &str) -> String {
        assert_eq!(self.ok_str(&["nbd_start_disk", bdev, export]), export);
        format!("nbd://127.0.0.1:{}/{export}", self.nbd)
    }

    fn unexport(&self, export: &str) {
        self.ok(&["nbd_stop_disk", export]);
    }

    /// qemu-io commands on an NBD URI: the output, `Err` if a command failed.
    fn qemu_io(&self, uri: &str, read_only: bool, cmds: &[String]) -> Result<String, String> {
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
        if out.status.success() && !text.contains("failed") && !text.contains("error") {
            Ok(text)
        } else {
            Err(text)
        }
    }

    /// Writes `pattern` over [off, off + len) (run_fio_test ... write PATTERN).
    fn write(&self, uri: &str, pattern: u8, off: u64, len: u64) {
        let cmd = format!("write -P {pattern:#04x} {off} {len}");
        if let Err(text) = self.qemu_io(uri, false, std::slice::from_ref(&cmd)) {
            panic!(
                "qemu-io {uri} `{cmd}`\nexpected: success\ngot: {text}\n----- console (tail) -----\n{}",
                self.console_tail()
            );
        }
    }

    /// A write that must fail (read-only, past the end, out of space).
    fn write_fails(&self, uri: &str, pattern: u8, off: u64, len: u64, why: &str) {
        let cmd = format!("write -P {pattern:#04x} {off} {len}");
        if let Ok(text) = self.qemu_io(uri, false, std::slice::from_ref(&cmd)) {
            panic!("qemu-io {uri} `{cmd}`\nexpected: failure ({why})\ngot: {text}");
        }
    }

    /// Reads [off, off + len) and checks every byte is `pattern`.
    fn verify(&self, uri: &str, pattern: u8, off: u64, len: u64) {
        let cmd = format!("read -P {pattern:#04x} {off} {len}");
        if let Err(text) = self.qemu_io(uri, true, std::slice::from_ref(&cmd)) {
            panic!(
                "qemu-io {uri} `{cmd}`\nexpected: every byte {pattern:#04x}\ngot: {text}\n----- console (tail) -----\n{}",
                self.console_tail()
            );
        }
    }

    /// `qemu-img compare` of two exports: true if identical.
    fn identical(&self, a: &str, b: &str) -> bool {
        let out = Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "raw", a, b])
            .output()
            .expect("qemu-img");
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        match out.status.code() {
            Some(0) => true,
            Some(1) => false,
            _ => panic!("qemu-img compare {a} {b}: {text}"),
        }
    }

    /// Waits until the store (tasted at boot) is listed.
    fn wait_lvstores(&self, count: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let l = self.lvstores();
            if l.len() >= count || Instant::now() > deadline {
                return l;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    k.sort();
    k
}

/// The fields of one bdev_lvol_get_lvstores entry, as SPDK prints them.
fn check_lvs_fields(l: &Value) {
    assert_eq!(
        keys(l),
        strs(&[
            "uuid",
            "name",
            "base_bdev",
            "total_data_clusters",
            "free_clusters",
            "block_size",
            "cluster_size",
            "max_growable_size"
        ]),
        "bdev_lvol_get_lvstores entry: {l}"
    );
}

/// The checks basic.sh makes on a new lvol bdev.
fn check_lvol_bdev(a: &Appliance, uuid: &str, alias: &str, lvs_uuid: &str, bytes: u64, bs: u64) {
    let b = a.bdev(uuid);
    assert_eq!(b["name"], uuid, "{b}");
    assert_eq!(b["uuid"], uuid, "{b}");
    assert_eq!(b["aliases"], json!([alias]), "{b}");
    assert_eq!(b["product_name"], "Logical Volume", "{b}");
    assert_eq!(b["block_size"], bs, "{b}");
    assert_eq!(b["num_blocks"], bytes / bs, "{b}");
    assert_eq!(
        b["driver_specific"]["lvol"]["lvol_store_uuid"], lvs_uuid,
        "{b}"
    );
}

fn expect_clones(a: &Appliance, snapshot: &str, clones: &[&str]) {
    let l = a.lvol(snapshot);
    assert_eq!(l["snapshot"], true, "{l}");
    assert_eq!(
        sorted(&l["clones"]),
        strs(clones),
        "clones of {snapshot}: {l}"
    );
}

#[test]
#[ignore = "boots QEMU; run through cargo xtask test"]
fn lvstores_create_list_delete_and_refusals() {
    let a = boot(&[]);
    // test_construct_lvs
    a.malloc("Malloc0", MALLOC_MB);
    let lvs = a.create_lvs("Malloc0", "lvs_test", &[]);
    a.fails_with(
        &["bdev_lvol_delete_lvstore", "-u", ZERO_UUID],
        -19,
        "No such device",
    );
    let l = a.lvs(&lvs);
    check_lvs_fields(&l);
    assert_eq!(l["uuid"], lvs.as_str(), "{l}");
    assert_eq!(l["name"], "lvs_test", "{l}");
    assert_eq!(l["base_bdev"], "Malloc0", "{l}");
    assert_eq!(l["cluster_size"], CLUSTER, "default cluster size: {l}");
    assert_eq!(l["block_size"], BS, "{l}");
    assert_eq!(l["free_clusters"], l["total_data_clusters"], "{l}");
    assert_eq!(
        l["total_data_clusters"].as_u64().unwrap() * CLUSTER,
        CAPACITY,
        "a 128 MiB bdev holds 124 MiB of data clusters (metadata fits one cluster): {l}"
    );
    assert!(l["max_growable_size"].as_u64().is_some(), "{l}");
    assert_eq!(
        a.bdev("Malloc0")["claimed"],
        true,
        "the store claims its bdev"
    );
    let by_name = a.ok(&["bdev_lvol_get_lvstores", "-l", "lvs_test"]);
    assert_eq!(by_name[0]["uuid"], lvs.as_str(), "{by_name}");
    a.ok(&["bdev_lvol_delete_lvstore", "-u", &lvs]);
    a.fails_with(
        &["bdev_lvol_get_lvstores", "-u", &lvs],
        -19,
        "No such device",
    );
    a.fails(&["bdev_lvol_delete_lvstore", "-u", &lvs]);
    assert_eq!(a.bdev("Malloc0")["claimed"], false);

    // test_construct_lvs_nonexistent_bdev
    a.fails_with(
        &["bdev_lvol_create_lvstore", "NotMalloc", "lvs_test"],
        -19,
        "No such device",
    );

    // test_construct_two_lvs_on_the_same_bdev
    let lvs = a.create_lvs("Malloc0", "lvs_test", &[]);
    a.fails(&["bdev_lvol_create_lvstore", "Malloc0", "lvs_test2"]);
    assert_eq!(a.lvstores().len(), 1);

    // test_construct_lvs_conflict_alias
    a.malloc("Malloc1", MALLOC_MB);
    a.fails_with(
        &["bdev_lvol_create_lvstore", "Malloc1", "lvs_test"],
        -17,
        "File exists",
    );
    assert_eq!(a.lvstores().len(), 1);

    // test_construct_lvs_different_cluster_size
    let malloc_size = MALLOC_MB * MIB;
    for c in [malloc_size + 1, malloc_size, malloc_size - 1, 8191] {
        let c = c.to_string();
        a.fails(&["bdev_lvol_create_lvstore", "Malloc1", "lvs2_test", "-c", &c]);
    }
    assert_eq!(a.lvstores().len(), 1, "no store from refused cluster sizes");
    let lvs2 = a.create_lvs("Malloc1", "lvs2_test", &["-c", "8192"]);
    assert_eq!(a.lvstores().len(), 2);
    assert_eq!(a.lvs(&lvs2)["cluster_size"], 8192);
    a.ok(&["bdev_lvol_delete_lvstore", "-u", &lvs]);
    a.fails(&["bdev_lvol_get_lvstores", "-u", &lvs]);
    a.ok(&["bdev_lvol_delete_lvstore", "-l", "lvs2_test"]);
    a.fails(&["bdev_lvol_get_lvstores", "-l", "lvs2_test"]);
    a.fails(&["bdev_lvol_get_lvstores", "-u", &lvs2]);

    // Name bounds (vbdev_lvs_create_ext: 1..=63 characters).
    a.fails_with(
        &["bdev_lvol_create_lvstore", "Malloc0", ""],
        -22,
        "Invalid argument",
    );
    let long = "n".repeat(64);
    a.fails_with(
        &["bdev_lvol_create_lvstore", "Malloc0", &long],
        -22,
        "Invalid argument",
    );
    let longest = "n".repeat(63);
    let u = a.create_lvs("Malloc0", &longest, &[]);
    assert_eq!(a.lvs(&u)["name"], longest.as_str());
    a.ok(&["bdev_lvol_delete_lvstore", "-u", &u]);

    // test_construct_lvs_clear_methods (the CLI refuses `invalid123` itself,
    // so it goes raw).
    let r = a.raw(
        "bdev_lvol_create_lvstore",
        json!({"bdev_name": "Malloc0", "lvs_name": "lvs_test", "clear_method": "invalid123"}),
    );
    assert!(r["error"]["code"].is_i64(), "invalid clear_method: {r}");
    assert!(a.lvstores().is_empty(), "no store from a bad clear_method");
    for method in ["none", "unmap", "write_zeroes"] {
        let lvs = a.create_lvs("Malloc0", "lvs_test", &["--clear-method", method]);
        let lvol = a.create_lvol(&lvs, "lvol_test", CAPACITY_MB, false);
        check_lvol_bdev(&a, &lvol, "lvs_test/lvol_test", &lvs, CAPACITY, BS);
        a.ok(&["bdev_lvol_delete", &lvol]);
        a.fails(&["bdev_get_bdevs", "-b", &lvol]);
        a.ok(&["bdev_lvol_delete_lvstore", "-u", &lvs]);
        a.fails(&["bdev_lvol_get_lvstores", "-u", &lvs]);
    }

    // Deleting a store deletes the lvols it still holds, clones first
    // (vbdev_lvs_destruct), and frees its bdev.
    let lvs = a.create_lvs("Malloc0", "lvs_test", &[]);
    let l1 = a.create_lvol(&lvs, "lvol_test1", 8, false);
    let l2 = a.create_lvol(&lvs, "lvol_test2", 8, true);
    let snap = a.ok_str(&["bdev_lvol_snapshot", "lvs_test/lvol_test1", "snap"]);
    let clone = a.ok_str(&["bdev_lvol_clone", "lvs_test/snap", "clone"]);
    assert_eq!(a.lvol_bdevs().len(), 4);
    a.ok(&["bdev_lvol_delete_lvstore", "-u", &lvs]);
    for gone in [&l1, &l2, &snap, &clone] {
        a.fails(&["bdev_get_bdevs", "-b", gone]);
    }
    assert!(a.lvol_bdevs().is_empty());
    assert_eq!(a.bdev("Malloc0")["claimed"], false);

    // The seed aliases, with the same parameters.
    let r = a.raw(
        "construct_lvol_store",
        json!({"bdev_name": "Malloc0", "lvs_name": "lvs_old"}),
    );
    let old = r["result"]
        .as_str()
        .unwrap_or_else(|| panic!("construct_lvol_store: {r}"))
        .to_string();
    let r = a.raw("get_lvol_stores", json!({"lvs_name": "lvs_old"}));
    assert_eq!(r["result"][0]["uuid"], old.as_str(), "get_lvol_stores: {r}");
    let r = a.raw("destroy_lvol_store", json!({"uuid": old}));
    assert_eq!(r["result"], true, "destroy_lvol_store: {r}");
    assert!(a.lvstores().is_empty());

    a.ok(&["bdev_malloc_delete", "Malloc0"]);
    a.ok(&["bdev_malloc_delete", "Malloc1"]);
    a.check_leftovers();
}

#[test]
#[ignore = "boots QEMU; run through cargo xtask test"]
fn lvols_create_list_and_refusals() {
    let a = boot(&[]);
    a.malloc("Malloc0", MALLOC_MB);
    let lvs = a.create_lvs("Malloc0", "lvs_test", &[]);

    // test_lvol_list: an empty store lists no lvols.
    assert_eq!(a.ok(&["bdev_lvol_get_lvols"]), json!([]));

    // test_construct_lvol, by store UUID then by store name.
    let lvol = a.create_lvol(&lvs, "lvol_test", CAPACITY_MB, false);
    check_lvol_bdev(&a, &lvol, "lvs_test/lvol_test", &lvs, CAPACITY, BS);
    let b = a.bdev("lvs_test/lvol_test");
    assert_eq!(b["name"], lvol.as_str(), "found by alias: {b}");
    let l = &b["driver_specific"]["lvol"];
    assert_eq!(l["base_bdev"], "Malloc0", "{b}");
    assert_eq!(l["thin_provision"], false, "{b}");
    assert_eq!(l["snapshot"], false, "{b}");
    assert_eq!(l["clone"], false, "{b}");
    assert_eq!(l["esnap_clone"], false, "{b}");
    assert_eq!(
        l["num_allocated_clusters"],
        CAPACITY / CLUSTER,
        "thick: {b}"
    );
    assert!(
        l.get("base_snapshot").is_none() && l.get("clones").is_none(),
        "no relations: {b}"
    );
    assert_eq!(a.free(&lvs), 0, "a thick lvol takes its clusters");
    // test_lvol_list: the lvol appears, with SPDK's fields.
    let list = a.ok(&["bdev_lvol_get_lvols"]);
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    let e = &list[0];
    assert_eq!(
        keys(e),
        strs(&[
            "alias",
            "uuid",
            "name",
            "is_thin_provisioned",
            "is_snapshot",
            "is_clone",
            "is_esnap_clone",
            "is_degraded",
            "num_allocated_clusters",
            "lvs"
        ]),
        "{e}"
    );
    assert_eq!(e["uuid"], lvol.as_str(), "{e}");
    assert_eq!(e["name"], "lvol_test", "{e}");
    assert_eq!(e["alias"], "lvs_test/lvol_test", "{e}");
    assert_eq!(e["lvs"], json!({"name": "lvs_test", "uuid": lvs}), "{e}");
    assert_eq!(e["is_thin_provisioned"], false, "{e}");
    assert_eq!(e["is_degraded"], false, "{e}");
    assert_eq!(e["num_allocated_clusters"], CAPACITY / CLUSTER, "{e}");
    assert_eq!(a.ok(&["bdev_lvol_get_lvols", "-l", "lvs_test"]), list);
    a.fails_with(
        &["bdev_lvol_get_lvols", "-u", ZERO_UUID],
        -19,
        "No such device",
    );
    a.ok(&["bdev_lvol_delete", &lvol]);
    a.fails_with(&["bdev_get_bdevs", "-b", &lvol], -19, "No such device");
    assert_eq!(a.free(&lvs), CAPACITY / CLUSTER);
    let size = CAPACITY_MB.to_string();
    let lvol = a.ok_str(&["bdev_lvol_create", "-l", "lvs_test", "lvol_test", &size]);
    check_lvol_bdev(&a, &lvol, "lvs_test/lvol_test", &lvs, CAPACITY, BS);
    a.ok(&["bdev_lvol_delete", &lvol]);

    // test_construct_multi_lvols
    let each_mb = round_down(CAPACITY_MB / 4, CLUSTER_MB);
    for round in 0..2 {
        for i in 1..=4 {
            let name = format!("lvol_test{i}");
            let u = a.create_lvol(&lvs, &name, each_mb, false);
            check_lvol_bdev(&a, &u, &format!("lvs_test/{name}"), &lvs, each_mb * MIB, BS);
        }
        let lvols = a.lvol_bdevs();
        assert_eq!(lvols.len(), 4, "round {round}");
        for l in &lvols {
            a.ok(&["bdev_lvol_delete", l["name"].as_str().unwrap()]);
        }
        assert!(a.lvol_bdevs().is_empty());
    }

    // test_construct_lvol_inexistent_lvs
    a.fails_with(
        &["bdev_lvol_create", "-u", ZERO_UUID, "lvol_test", &size],
        -19,
        "No such device",
    );
    assert!(a.lvol_bdevs().is_empty());

    // test_construct_lvol_full_lvs
    let full = a.create_lvol(&lvs, "lvol_test1", CAPACITY_MB, false);
    a.fails_with(
        &["bdev_lvol_create", "-l", "lvs_test", "lvol_test2", "1"],
        -32602,
        "No space left on device",
    );
    a.ok(&["bdev_lvol_delete", &full]);

    // test_construct_lvol_alias_conflict
    let half = round_down(CAPACITY_MB / 2, CLUSTER_MB);
    let first = a.create_lvol(&lvs, "lvol_test", half, false);
    let half_s = half.to_string();
    a.fails_with(
        &["bdev_lvol_create", "-l", "lvs_test", "lvol_test", &half_s],
        -17,
        "File exists",
    );
    assert_eq!(a.lvol_bdevs().len(), 1);
    a.ok(&["bdev_lvol_delete", &first]);
    // Name bounds (lvs_verify_lvol_name).
    a.fails(&["bdev_lvol_create", "-l", "lvs_test", "", "4"]);
    a.fails(&["bdev_lvol_create", "-l", "lvs_test", &"n".repeat(64), "4"]);
    assert!(a.lvol_bdevs().is_empty());

    // Sizes are rounded up to whole clusters (spdk_lvol_create).
    let odd = a.create_lvol(&lvs, "odd", 5, false);
    assert_eq!(a.num_blocks(&odd), 8 * MIB / BS, "5 MiB -> 2 clusters");
    assert_eq!(a.allocated(&odd), 2);
    let tiny = a.create_lvol(&lvs, "tiny", 1, true);
    assert_eq!(a.num_blocks(&tiny), CLUSTER / BS, "1 MiB -> 1 cluster");
    assert_eq!(a.allocated(&tiny), 0, "thin");
    assert_eq!(a.free(&lvs), CAPACITY / CLUSTER - 2);
    a.ok(&["bdev_lvol_delete", &odd]);
    a.ok(&["bdev_lvol_delete", &tiny]);

    // test_construct_lvols_conflict_alias: one lvol name in two stores.
    let lvol1 = a.create_lvol(&lvs, "lvol_test", CAPACITY_MB, false);
    a.malloc("Malloc1", MALLOC_MB / 2);
    let lvs2 = a.create_lvs("Malloc1", "lvs_test2", &[]);
    let lvol2 = a.create_lvol(&lvs2, "lvol_test", half, false);
    check_lvol_bdev(&a, &lvol1, "lvs_test/lvol_test", &lvs, CAPACITY, BS);
    check_lvol_bdev(&a, &lvol2, "lvs_test2/lvol_test", &lvs2, half * MIB, BS);
    a.ok(&["bdev_lvol_delete_lvstore", "-u", &lvs2]);
    a.fails(&["bdev_lvol_get_lvstores", "-u", &lvs2]);
    a.ok(&["bdev_malloc_delete", "Malloc1"]);
    a.fails(&["bdev_get_bdevs", "-b", "Malloc1"]);

    // test_construct_nested_lvol: a store on lvol_test, an lvol in it.
    let nested_lvs = a.create_lvs(&lvol1, "nested_lvs", &[]);
    assert_eq!(a.lvs(&nested_lvs)["base_bdev"], lvol1.as_str());
    let nested_mb = CAPACITY_MB - CLUSTER_MB;
    let nested = a.create_lvol(&nested_lvs, "nested_lvol1", nested_mb, false);
    check_lvol_bdev(
        &a,
        &nested,
        "nested_lvs/nested_lvol1",
        &nested_lvs,
        nested_mb * MIB,
        BS,
    );
    assert_eq!(a.lvol(&nested)["base_bdev"], lvol1.as_str());
    let nested_s = nested_mb.to_string();
    a.fails(&[
        "bdev_lvol_create",
        "-u",
        &nested_lvs,
        "nested_lvol2",
        &nested_s,
    ]);
    a.ok(&["bdev_lvol_delete", &nested]);
    a.fails(&["bdev_get_bdevs", "-b", &nested]);
    a.ok(&["bdev_lvol_delete_lvstore", "-u", &nested_lvs]);
    a.fails(&["bdev_lvol_get_lvstores", "-u", &nested_lvs]);
    a.ok(&["bdev_lvol_delete", &lvol1]);
    a.fails(&["bdev_get_bdevs", "-b", &lvol1]);
    a.ok(&["bdev_lvol_delete_lvstore", "-u", &lvs]);
    a.ok(&["bdev_malloc_delete", "Malloc0"]);
    a.check_leftovers();
}

#[test]
#[ignore = "boots QEMU; run through cargo xtask test"]
fn thin_lvols_allocate_on_write_and_read_zeroes() {
    let a = boot(&[]);
    a.malloc("Malloc0", MALLOC_MB);
    let lvs = a.create_lvs("Malloc0", "lvs_test", &[]);
    let start = a.free(&lvs);

    // test_thin_lvol_check_space
    let size_mb = round_down(CAPACITY_MB, CLUSTER_MB);
    let size = size_mb * MIB;
    let lvol = a.create_lvol(&lvs, "lvol_test", size_mb, true);
    assert_eq!(a.free(&lvs), start, "a thin lvol takes nothing up front");
    let l = a.lvol(&lvol);
    assert_eq!(l["thin_provision"], true, "{l}");
    assert_eq!(l["num_allocated_clusters"], 0, "{l}");
    let uri = a.export(&lvol, "thin");
    a.write(&uri, 0xcc, 0, CLUSTER);
    let first = a.free(&lvs);
    assert_eq!(first + 1, start, "one cluster written");
    assert_eq!(a.allocated(&lvol), 1);
    let listed = a.ok(&["bdev_lvol_get_lvols", "-u", &lvs]);
    assert_eq!(listed[0]["num_allocated_clusters"], 1, "{listed}");
    assert_eq!(listed[0]["is_thin_provisioned"], true, "{listed}");
    a.write(&uri, 0xcc, CLUSTER * 3 / 2, CLUSTER);
    assert_eq!(a.free(&lvs) + 3, start, "a straddling write takes two more");
    assert_eq!(a.allocated(&lvol), 3);
    a.write(&uri, 0xcc, 3 * CLUSTER, size - 3 * CLUSTER);
    assert_eq!(a.free(&lvs), 0, "written to the end");
    assert_eq!(a.allocated(&lvol), size / CLUSTER);

    // test_thin_lvol_check_integrity: what was written reads back; the
    // gap [4 MiB, 6 MiB) was allocated but never written and reads zero.
    a.verify(&uri, 0xcc, 0, CLUSTER);
    a.verify(&uri, 0x00, CLUSTER, CLUSTER / 2);
    a.verify(&uri, 0xcc, CLUSTER * 3 / 2, CLUSTER);
    a.verify(&uri, 0x00, CLUSTER * 5 / 2, CLUSTER / 2);
    a.verify(&uri, 0xcc, 3 * CLUSTER, size - 3 * CLUSTER);
    a.unexport("thin");
    a.ok(&["bdev_lvol_delete", &lvol]);
    a.fails(&["bdev_get_bdevs", "-b", &lvol]);
    assert_eq!(a.free(&lvs), start, "deleting frees every cluster");

    // test_thin_lvol_check_zeroes
    let thick = a.create_lvol(&lvs, "lvol_test0", size_mb, false);
    let thin = a.create_lvol(&lvs, "lvol_test1", size_mb, true);
    assert_eq!(a.free(&lvs), 0);
    let u0 = a.export(&thick, "thick");
    let u1 = a.export(&thin, "thin");
    a.write(&u0, 0xcc, 0, size);
    a.verify(&u1, 0x00, 0, size);
    a.verify(&u0, 0xcc, 0, size);
    assert_eq!(a.allocated(&thin), 0, "reads allocate nothing");
    a.unexport("thin");
    a.unexport("thick");
    a.ok(&["bdev_lvol_delete", &thin]);
    a.ok(&["bdev_lvol_delete", &thick]);
    a.ok(&["bdev_lvol_delete_lvstore", "-u", &lvs]);
    a.ok(&["bdev_malloc_delete", "Malloc0"]);
    a.check_leftovers();
}

#[test]
#[ignore = "boots QEMU; run through cargo xtask test"]
fn thin_lvols_resize_and_overprovision() {
    let a = boot(&[]);
    a.malloc("Malloc0", MALLOC_MB);
    let lvs = a.create_lvs("Malloc0", "lvs_test", &[]);

    // test_thin_lvol_resize
    let half_mb = round_down(CAPACITY_MB / 2, CLUSTER_MB);
    let lvol = a.create_lvol(&lvs, "lvol_test", half_mb, true);
    let uri = a.export(&lvol, "thin");
    a.write(&uri, 0xcc, 0, half_mb * MIB);
    a.unexport("thin");
    let start = a.free(&lvs);
    assert_eq!(start, (CAPACITY_MB - half_mb) / CLUSTER_MB);
    let full_mb = round_down(CAPACITY_MB, CLUSTER_MB);
    a.ok(&["bdev_lvol_resize", &lvol, &full_mb.to_string()]);
    let b = a.bdev(&lvol);
    assert_eq!(b["block_size"], BS, "{b}");
    assert_eq!(b["num_blocks"], full_mb * MIB / BS, "{b}");
    assert_eq!(a.free(&lvs), start, "growing a thin lvol takes nothing");
    let uri = a.export(&lvol, "thin");
    a.write(&uri, 0xcc, 0, full_mb * MIB);
    a.unexport("thin");
    assert_eq!(a.free(&lvs), 0);
    let quarter_mb = round_down(CAPACITY_MB / 4, CLUSTER_MB);
    a.ok(&["bdev_lvol_resize", &lvol, &quarter_mb.to_string()]);
    assert_eq!(
        a.free(&lvs),
        (full_mb - quarter_mb) / CLUSTER_MB,
        "shrinking frees the clusters past the end"
    );
    assert_eq!(a.allocated(&lvol), quarter_mb / CLUSTER_MB);
    a.ok(&["bdev_lvol_delete", &lvol]);

    // test_thin_overprovisioning
    let size_mb = round_down(CAPACITY_MB, CLUSTER_MB);
    let size = size_mb * MIB;
    let l1 = a.create_lvol(&lvs, "lvol_test1", size_mb, true);
    let l2 = a.create_lvol(&lvs, "lvol_test2", size_mb, true);
    let u1 = a.export(&l1, "thin1");
    let u2 = a.export(&l2, "thin2");
    let fill = round_down(size_mb * 5 / 10, CLUSTER_MB) * MIB;
    a.write(&u1, 0xcc, 0, fill);
    a.write(&u2, 0xcc, 0, fill);
    a.write_fails(&u2, 0xcc, fill, size - fill, "the store is out of clusters");
    a.verify(&u1, 0xcc, 0, fill);
    a.verify(&u1, 0x00, fill, size - fill);
    a.unexport("thin1");
    a.unexport("thin2");
    a.ok(&["bdev_lvol_delete", &l2]);
    a.ok(&["bdev_lvol_delete", &l1]);
    assert_eq!(a.free(&lvs), CAPACITY / CLUSTER);
    a.ok(&["bdev_lvol_delete_lvstore", "-u", &lvs]);
    a.ok(&["bdev_malloc_delete", "Malloc0"]);
    a.check_leftovers();
}

#[test]
#[ignore = "boots QEMU; run through cargo xtask test"]
fn lvols_resize_like_spdk() {
    let a = boot(&[]);
    a.malloc("Malloc0", MALLOC_MB);
    let lvs = a.create_lvs("Malloc0", "lvs_test", &[]);
    let total = CAPACITY / CLUSTER;

    // test_resize_lvol
    let mut mb = round_down(CAPACITY_MB / 4, CLUSTER_MB);
    let lvol = a.create_lvol(&lvs, "lvol_test", mb, false);
    check_lvol_bdev(&a, &lvol, "lvs_test/lvol_test", &lvs, mb * MIB, BS);
    assert_eq!(a.free(&lvs), total - mb / CLUSTER_MB);
    mb *= 2;
    a.ok(&["bdev_lvol_resize", &lvol, &mb.to_string()]);
    assert_eq!(a.num_blocks(&lvol), mb * MIB / BS);
    assert_eq!(
        a.free(&lvs),
        total - mb / CLUSTER_MB,
        "a thick lvol grows by whole clusters"
    );
    mb *= 2;
    a.ok(&["bdev_lvol_resize", "lvs_test/lvol_test", &mb.to_string()]);
    assert_eq!(a.num_blocks(&lvol), mb * MIB / BS);
    a.ok(&["bdev_lvol_resize", "lvs_test/lvol_test", "0"]);
    assert_eq!(a.num_blocks(&lvol), 0);
    assert_eq!(a.free(&lvs), total);
    // Sizes round up to whole clusters (vbdev_lvol_resize).
    a.ok(&["bdev_lvol_resize", &lvol, "5"]);
    assert_eq!(a.num_blocks(&lvol), 8 * MIB / BS, "5 MiB -> 2 clusters");
    a.ok(&["bdev_lvol_resize", &lvol, "1"]);
    assert_eq!(a.num_blocks(&lvol), CLUSTER / BS, "1 MiB -> 1 cluster");
    assert_eq!(a.free(&lvs), total - 1);
    a.ok(&["bdev_lvol_delete", &lvol]);
    a.fails(&["bdev_get_bdevs", "-b", &lvol]);

    // test_resize_lvol_negative
    let lvol = a.create_lvol(&lvs, "lvol_test", CAPACITY_MB, false);
    a.fails_with(&["bdev_lvol_resize", ZERO_UUID, "0"], -19, "No such device");
    assert_eq!(a.num_blocks(&lvol), CAPACITY / BS);
    a.fails_with(
        &["bdev_lvol_resize", &lvol, &MALLOC_MB.to_string()],
        -32602,
        "No space left on device",
    );
    assert_eq!(
        a.num_blocks(&lvol),
        CAPACITY / BS,
        "unchanged after a refusal"
    );
    a.ok(&["bdev_lvol_delete", &lvol]);

    // test_resize_lvol_with_io_traffic
    let mb = round_down(CAPACITY_MB / 2, CLUSTER_MB);
    let lvol = a.create_lvol(&lvs, "lvol_test", mb, false);
    let uri = a.export(&lvol, "lv");
    a.write(&uri, 0x5a, 0, mb * MIB);
    let beyond = (mb * MIB / CLUSTER + 1) * CLUSTER;
    a.write_fails(&uri, 0x5b, beyond, CLUSTER, "past the end of the lvol");
    a.ok(&["bdev_lvol_resize", &lvol, &(mb * 2).to_string()]);
    assert_eq!(a.num_blocks(&lvol), mb * 2 * MIB / BS);
    // The export may keep its old size: start it again.
    a.unexport("lv");
    let uri = a.export(&lvol, "lv");
    a.write(&uri, 0x5b, beyond, CLUSTER);
    a.verify(&uri, 0x5a, 0, mb * MIB);
    a.verify(&uri, 0x5b, beyond, CLUSTER);
    a.unexport("lv");
    a.ok(&["bdev_lvol_resize", &lvol, &CLUSTER_MB.to_string()]);
    assert_eq!(a.num_blocks(&lvol), CLUSTER / BS);
    let uri = a.export(&lvol, "lv");
    a.write_fails(&uri, 0x5c, CLUSTER, CLUSTER, "past one cluster");
    a.verify(&uri, 0x5a, 0, CLUSTER);
    a.unexport("lv");
    a.ok(&["bdev_lvol_delete", &lvol]);

    // test_destroy_after_bdev_lvol_resize_positive
    let first = round_down(CAPACITY_MB / 4, CLUSTER_MB);
    let lvol = a.create_lvol(&lvs, "lbd_test", first, false);
    for step in [first, first + 4, first * 2, first * 3, first * 4 - 4, 0] {
        let resize = round_down(step / 4, CLUSTER_MB);
        a.ok(&["bdev_lvol_resize", &lvol, &resize.to_string()]);
        let b = a.bdev(&lvol);
        assert_eq!(b["name"], b["uuid"], "{b}");
        assert_eq!(b["block_size"], BS, "{b}");
        assert_eq!(
            b["num_blocks"].as_u64().unwrap() * BS,
            resize * MIB,
            "resize to {resize} MiB: {b}"
        );
    }
    a.ok(&["bdev_lvol_delete", &lvol]);
    a.ok(&["bdev_lvol_delete_lvstore", "-u", &lvs]);
    a.fails(&["bdev_get_bdevs", "-b", &lvol]);
    a.fails(&["bdev_lvol_get_lvstores", "-u", &lvs]);
    a.ok(&["bdev_malloc_delete", "Malloc0"]);
    a.check_leftovers();
}

#[test]
#[ignore = "boots QEMU; run through cargo xtask test"]
fn snapshots_and_clones() {
    let a = boot(&[]);
    a.malloc("Malloc0", MALLOC_MB);
    let lvs = a.create_lvs("Malloc0", "lvs_test", &[]);

    // test_snapshot_compare_with_lvol_bdev
    let mb = round_down(CAPACITY_MB / 6, CLUSTER_MB);
    let size = mb * MIB;
    let l1 = a.create_lvol(&lvs, "lvol_test1", mb, true);
    let l2 = a.create_lvol(&lvs, "lvol_test2", mb, false);
    let u1 = a.export(&l1, "l1");
    a.write(&u1, 0x11, 0, size / 2);
    a.unexport("l1");
    let u2 = a.export(&l2, "l2");
    a.write(&u2, 0x22, 0, size);
    a.unexport("l2");
    let free = a.free(&lvs);
    let s1 = a.ok_str(&[
        "bdev_lvol_snapshot",
        "lvs_test/lvol_test1",
        "lvol_snapshot1",
    ]);
    let s2 = a.ok_str(&[
        "bdev_lvol_snapshot",
        "lvs_test/lvol_test2",
        "lvol_snapshot2",
    ]);
    assert_eq!(
        a.free(&lvs),
        free,
        "a snapshot takes over clusters, copies none"
    );
    assert_eq!(a.allocated(&s1), (size / 2).div_ceil(CLUSTER));
    assert_eq!(a.allocated(&s2), size / CLUSTER);
    assert_eq!(a.allocated(&l1), 0);
    assert_eq!(a.allocated(&l2), 0);
    assert_eq!(
        a.lvol(&l2)["thin_provision"],
        true,
        "the origin becomes a thin clone"
    );
    let sb = a.bdev(&s1);
    assert_eq!(sb["aliases"], json!(["lvs_test/lvol_snapshot1"]), "{sb}");
    assert_eq!(sb["product_name"], "Logical Volume", "{sb}");
    assert_eq!(
        sb["supported_io_types"]["write"], false,
        "a snapshot is read-only: {sb}"
    );
    let us1 = a.export(&s1, "s1");
    a.write_fails(&us1, 0x99, 0, size, "a snapshot is read-only");
    let u1 = a.export(&l1, "l1");
    let u2 = a.export(&l2, "l2");
    let us2 = a.export(&s2, "s2");
    assert!(a.identical(&u1, &us1), "lvol_test1 == its snapshot");
    assert!(a.identical(&u2, &us2), "lvol_test2 == its snapshot");
    a.write(&u1, 0x33, size / 2, size / 2);
    assert!(
        !a.identical(&u1, &us1),
        "lvol_test1 differs from its snapshot after a write"
    );
    a.verify(&us1, 0x11, 0, size / 2);
    a.verify(&us1, 0x00, size / 2, size / 2);
    for e in ["l1", "l2", "s1", "s2"] {
        a.unexport(e);
    }
    for d in [&l1, &s1, &l2, &s2] {
        a.ok(&["bdev_lvol_delete", d]);
        a.fails(&["bdev_get_bdevs", "-b", d]);
    }
    assert_eq!(a.free(&lvs), CAPACITY / CLUSTER);

    // test_create_snapshot_of_snapshot
    let mb3 = round_down(CAPACITY_MB / 3, CLUSTER_MB);
    let lvol = a.create_lvol(&lvs, "lvol_test", mb3, false);
    let snap = a.ok_str(&["bdev_lvol_snapshot", "lvs_test/lvol_test", "lvol_snapshot"]);
    a.fails_with(
        &[
            "bdev_lvol_snapshot",
            "lvs_test/lvol_snapshot",
            "lvol_snapshot2",
        ],
        -32602,
        "Invalid argument",
    );
    a.ok(&["bdev_lvol_delete", &lvol]);
    a.ok(&["bdev_lvol_delete", &snap]);
    assert!(a.lvol_bdevs().is_empty());

    // test_clone_snapshot_relations
    let lvol = a.create_lvol(&lvs, "lvol_test", mb, false);
    let uri = a.export(&lvol, "lv");
    a.write(&uri, 0xcc, 0, size);
    a.unexport("lv");
    a.fails_with(
        &["bdev_lvol_clone", "lvs_test/lvol_test", "clone_test"],
        -32602,
        "Invalid argument",
    );
    let snap = a.ok_str(&["bdev_lvol_snapshot", "lvs_test/lvol_test", "lvol_snapshot"]);
    a.fails(&["bdev_lvol_clone", "lvs_test/lvol_test", "clone_test"]);
    let c1 = a.ok_str(&["bdev_lvol_clone", "lvs_test/lvol_snapshot", "clone_test1"]);
    let c2 = a.ok_str(&["bdev_lvol_clone", &snap, "clone_test2"]);
    check_lvol_bdev(&a, &c2, "lvs_test/clone_test2", &lvs, size, BS);
    assert_eq!(a.lvol(&c1)["thin_provision"], true);
    assert_eq!(a.allocated(&c1), 0, "a new clone owns nothing");
    let uc1 = a.export(&c1, "c1");
    a.write(&uc1, 0xaa, 0, size / 2);
    let us = a.export(&snap, "snap");
    let uc2 = a.export(&c2, "c2");
    assert!(a.identical(&us, &uc2), "snapshot == untouched clone");
    assert!(!a.identical(&uc1, &us), "written clone differs");
    a.verify(&uc1, 0xaa, 0, size / 2);
    a.verify(&uc1, 0xcc, size / 2, size / 2);
    let s = a.lvol("lvs_test/lvol_snapshot");
    assert_eq!(s["snapshot"], true, "{s}");
    assert_eq!(s["clone"], false, "{s}");
    expect_clones(
        &a,
        "lvs_test/lvol_snapshot",
        &["lvol_test", "clone_test1", "clone_test2"],
    );
    for c in ["lvs_test/clone_test1", "lvs_test/lvol_test"] {
        let l = a.lvol(c);
        assert_eq!(l["snapshot"], false, "{c}: {l}");
        assert_eq!(l["clone"], true, "{c}: {l}");
        assert_eq!(l["base_snapshot"], "lvol_snapshot", "{c}: {l}");
    }
    a.unexport("c1");
    a.ok(&["bdev_lvol_delete", &c1]);
    expect_clones(&a, "lvs_test/lvol_snapshot", &["lvol_test", "clone_test2"]);
    // test_bdev_lvol_delete_ordering: a snapshot with two clones stays.
    a.unexport("snap");
    a.unexport("c2");
    a.fails_with(
        &["bdev_lvol_delete", &snap],
        -32603,
        "Device or resource busy",
    );
    a.bdev(&snap);
    a.ok(&["bdev_lvol_delete", &lvol]);
    a.ok(&["bdev_lvol_delete", &c2]);
    let s = a.lvol(&snap);
    assert!(
        s.get("clones")
            .is_none_or(|c| c.as_array().is_some_and(Vec::is_empty)),
        "no clones left: {s}"
    );
    a.ok(&["bdev_lvol_delete", &snap]);
    assert_eq!(a.free(&lvs), CAPACITY / CLUSTER);

    // test_delete_snapshot_with_clone: one clone inherits the snapshot.
    let mb2 = round_down(CAPACITY_MB / 2, CLUSTER_MB);
    let size2 = mb2 * MIB;
    let lvol = a.create_lvol(&lvs, "lvol_test", mb2, false);
    let uri = a.export(&lvol, "lv");
    a.write(&uri, 0xcc, 0, size2);
    let snap = a.ok_str(&["bdev_lvol_snapshot", "lvs_test/lvol_test", "lvol_snapshot"]);
    let free = a.free(&lvs);
    let half = round_down(mb2 / 2, CLUSTER_MB) * MIB;
    a.write(&uri, 0xee, 0, half);
    assert_eq!(
        a.free(&lvs),
        free - half / CLUSTER,
        "copy-on-write takes one cluster per cluster written"
    );
    let us = a.export(&snap, "snap");
    a.verify(&us, 0xcc, 0, size2);
    a.verify(&uri, 0xee, 0, half);
    assert_eq!(a.lvol(&lvol)["clone"], true);
    a.unexport("snap");
    a.ok(&["bdev_lvol_delete", &snap]);
    let l = a.lvol(&lvol);
    assert_eq!(l["clone"], false, "{l}");
    assert!(l.get("base_snapshot").is_none(), "{l}");
    assert_eq!(l["num_allocated_clusters"], size2 / CLUSTER, "{l}");
    assert_eq!(
        a.free(&lvs),
        free,
        "the snapshot's other clusters moved over"
    );
    a.verify(&uri, 0xee, 0, half);
    a.verify(&uri, 0xcc, half, size2 - half);
    a.unexport("lv");
    a.ok(&["bdev_lvol_delete", &lvol]);

    // The seed aliases.
    let lvol = a.create_lvol(&lvs, "lbd_test", 8, true);
    let r = a.raw(
        "snapshot_lvol_bdev",
        json!({"lvol_name": "lvs_test/lbd_test", "snapshot_name": "snapshot"}),
    );
    let snap = r["result"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_string();
    let r = a.raw(
        "clone_lvol_bdev",
        json!({"snapshot_name": "lvs_test/snapshot", "clone_name": "clone"}),
    );
    let clone = r["result"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_string();
    assert_eq!(a.bdev("lvs_test/clone")["name"], clone.as_str());
    for d in [&lvol, &clone, &snap] {
        let r = a.raw("destroy_lvol_bdev", json!({ "name": d }));
        assert_eq!(r["result"], true, "destroy_lvol_bdev {d}: {r}");
    }
    assert!(a.lvol_bdevs().is_empty());
    a.ok(&["bdev_lvol_delete_lvstore", "-u", &lvs]);
    a.ok(&["bdev_malloc_delete", "Malloc0"]);
    a.check_leftovers();
}

#[test]
#[ignore = "boots QEMU; run through cargo xtask test"]
fn inflate_decouple_read_only_and_snapshot_chains() {
    let a = boot(&[]);
    a.malloc("Malloc0", MALLOC_MB);
    let lvs = a.create_lvs("Malloc0", "lvs_test", &[]);
    let total = CAPACITY / CLUSTER;

    // test_clone_inflate
    let mb = round_down(CAPACITY_MB / 4, CLUSTER_MB);
    let size = mb * MIB;
    let clusters = size / CLUSTER;
    let lvol = a.create_lvol(&lvs, "lvol_test", mb, false);
    let uri = a.export(&lvol, "lv");
    a.write(&uri, 0xcc, 0, size);
    a.unexport("lv");
    let snap = a.ok_str(&["bdev_lvol_snapshot", "lvs_test/lvol_test", "lvol_snapshot"]);
    assert_eq!(a.lvol(&lvol)["thin_provision"], true);
    assert_eq!(a.free(&lvs), total - clusters);
    let uri = a.export(&lvol, "lv");
    let second = size * 3 / 4;
    a.write(&uri, 0xdd, 0, MIB);
    a.write(&uri, 0xdd, second, MIB);
    a.unexport("lv");
    assert_eq!(a.allocated(&lvol), 2);
    assert_eq!(a.free(&lvs), total - clusters - 2);
    a.ok(&["bdev_lvol_inflate", "lvs_test/lvol_test"]);
    let l = a.lvol(&lvol);
    assert_eq!(l["thin_provision"], false, "{l}");
    assert_eq!(l["clone"], false, "inflated: no parent left: {l}");
    assert_eq!(l["num_allocated_clusters"], clusters, "{l}");
    assert_eq!(a.free(&lvs), total - 2 * clusters);
    a.ok(&["bdev_lvol_delete", &snap]);
    assert_eq!(a.free(&lvs), total - clusters);
    let uri = a.export(&lvol, "lv");
    a.verify(&uri, 0xdd, 0, MIB);
    a.verify(&uri, 0xcc, MIB, second - MIB);
    a.verify(&uri, 0xdd, second, MIB);
    a.verify(&uri, 0xcc, second + MIB, size - second - MIB);
    a.unexport("lv");
    a.ok(&["bdev_lvol_delete", &lvol]);

    // test_clone_decouple_parent
    let mb = 5 * CLUSTER_MB;
    let fifth = mb * MIB / 5;
    let lvol = a.create_lvol(&lvs, "lvol_test", mb, true);
    a.fails_with(
        &["bdev_lvol_decouple_parent", "lvs_test/lvol_test"],
        -32602,
        "Invalid argument",
    );
    let uri = a.export(&lvol, "lv");
    a.write(&uri, 0xdd, 0, 4 * fifth);
    let snap1 = a.ok_str(&["bdev_lvol_snapshot", "lvs_test/lvol_test", "lvol_snapshot"]);
    a.write(&uri, 0xcc, fifth, fifth);
    a.write(&uri, 0xcc, 3 * fifth, fifth);
    let snap2 = a.ok_str(&["bdev_lvol_snapshot", "lvs_test/lvol_test", "lvol_snapshot2"]);
    a.write(&uri, 0xee, fifth, fifth);
    let patterns = [0xdd, 0xee, 0xdd, 0xcc, 0x00];
    // Cluster by cluster: 0xdd, 0xee, 0xdd, 0xcc, never written.
    let check = || {
        for (i, p) in patterns.iter().enumerate() {
            a.verify(&uri, *p, i as u64 * fifth, fifth);
        }
    };
    check();
    a.ok(&["bdev_lvol_decouple_parent", "lvs_test/lvol_test"]);
    let l = a.lvol(&lvol);
    assert_eq!(l["thin_provision"], true, "{l}");
    assert_eq!(l["clone"], true, "{l}");
    assert_eq!(l["snapshot"], false, "{l}");
    assert_eq!(
        l["base_snapshot"], "lvol_snapshot",
        "now a clone of the first: {l}"
    );
    assert_eq!(a.lvol(&snap1)["clone"], false);
    let s2 = a.lvol(&snap2);
    assert_eq!(s2["clone"], true, "{s2}");
    assert_eq!(s2["snapshot"], true, "{s2}");
    expect_clones(&a, &snap1, &["lvol_test", "lvol_snapshot2"]);
    a.ok(&["bdev_lvol_delete", &snap2]);
    check();
    a.ok(&["bdev_lvol_decouple_parent", "lvs_test/lvol_test"]);
    let l = a.lvol(&lvol);
    assert_eq!(l["thin_provision"], true, "{l}");
    assert_eq!(l["clone"], false, "{l}");
    assert_eq!(l["snapshot"], false, "{l}");
    assert_eq!(a.lvol(&snap1)["clone"], false);
    a.ok(&["bdev_lvol_delete", &snap1]);
    check();
    a.unexport("lv");
    a.ok(&["bdev_lvol_delete", &lvol]);
    assert_eq!(a.free(&lvs), total);

    // test_lvol_bdev_readonly
    let mb = round_down(CAPACITY_MB / 2, CLUSTER_MB);
    let size = mb * MIB;
    let lvol = a.create_lvol(&lvs, "lvol_test", mb, false);
    a.ok(&["bdev_lvol_set_read_only", "lvs_test/lvol_test"]);
    let uri = a.export(&lvol, "lv");
    a.write_fails(&uri, 0xcc, 0, size, "the lvol is read-only");
    a.unexport("lv");
    let clone = a.ok_str(&["bdev_lvol_clone", "lvs_test/lvol_test", "clone_test"]);
    let uc = a.export(&clone, "clone");
    a.write(&uc, 0xcc, 0, size);
    a.verify(&uc, 0xcc, 0, size);
    a.unexport("clone");
    a.ok(&["bdev_lvol_delete", &clone]);
    a.ok(&["bdev_lvol_delete", &lvol]);

    // test_delete_snapshot_with_snapshot
    let mb = round_down(CAPACITY_MB / 5, CLUSTER_MB);
    let size = mb * MIB;
    let (p1, p2) = (size / 3, size * 2 / 3);
    let lvol = a.create_lvol(&lvs, "lvol_test", mb, false);
    let uri = a.export(&lvol, "lv");
    a.write(&uri, 0xcc, 0, size);
    let snap = a.ok_str(&["bdev_lvol_snapshot", "lvs_test/lvol_test", "lvol_snapshot"]);
    assert_eq!(a.lvol(&lvol)["base_snapshot"], "lvol_snapshot");
    a.write(&uri, 0xee, p1, p2 - p1);
    let us = a.export(&snap, "snap");
    a.verify(&us, 0xcc, 0, size);
    let snap2 = a.ok_str(&["bdev_lvol_snapshot", "lvs_test/lvol_test", "lvol_snapshot2"]);
    let s2 = a.lvol(&snap2);
    assert_eq!(s2["base_snapshot"], "lvol_snapshot", "{s2}");
    assert_eq!(s2["clone"], true, "{s2}");
    assert_eq!(s2["snapshot"], true, "{s2}");
    expect_clones(&a, &snap2, &["lvol_test"]);
    expect_clones(&a, &snap, &["lvol_snapshot2"]);
    let l = a.lvol(&lvol);
    assert_eq!(l["clone"], true, "{l}");
    assert_eq!(l["base_snapshot"], "lvol_snapshot2", "{l}");
    let us2 = a.export(&snap2, "snap2");
    a.verify(&us2, 0xcc, 0, p1);
    a.verify(&us2, 0xee, p1, p2 - p1);
    a.verify(&us2, 0xcc, p2, size - p2);
    a.write(&uri, 0xdd, p2, size - p2);
    a.verify(&us, 0xcc, 0, size);
    a.verify(&us2, 0xcc, p2, size - p2);
    a.unexport("snap2");
    a.unexport("snap");
    a.ok(&["bdev_lvol_delete", &snap2]);
    let l = a.lvol(&lvol);
    assert_eq!(l["clone"], true, "{l}");
    assert_eq!(l["base_snapshot"], "lvol_snapshot", "{l}");
    expect_clones(&a, &snap, &["lvol_test"]);
    a.verify(&uri, 0xcc, 0, p1);
    a.verify(&uri, 0xee, p1, p2 - p1);
    a.verify(&uri, 0xdd, p2, size - p2);
    a.unexport("lv");
    a.ok(&["bdev_lvol_delete", &snap]);
    a.ok(&["bdev_lvol_delete", &lvol]);
    assert_eq!(a.free(&lvs), total);
    a.ok(&["bdev_lvol_delete_lvstore", "-u", &lvs]);
    a.ok(&["bdev_malloc_delete", "Malloc0"]);
    a.check_leftovers();
}

#[test]
#[ignore = "boots QEMU; run through cargo xtask test"]
fn lvols_and_lvstores_rename() {
    let a = boot(&[]);
    // test_rename_positive
    a.malloc("Malloc0", MALLOC_MB);
    let lvs = a.create_lvs("Malloc0", "lvs_test", &[]);
    let mb = round_down(CAPACITY_MB / 4, CLUSTER_MB);
    let uuids: Vec<String> = (0..4)
        .map(|i| {
            let u = a.create_lvol(&lvs, &format!("lvol_test{i}"), mb, false);
            check_lvol_bdev(
                &a,
                &u,
                &format!("lvs_test/lvol_test{i}"),
                &lvs,
                mb * MIB,
                BS,
            );
            u
        })
        .collect();
    a.ok(&["bdev_lvol_rename_lvstore", "lvs_test", "lvs_new"]);
    let l = a.lvs(&lvs);
    assert_eq!(l["name"], "lvs_new", "{l}");
    assert_eq!(l["base_bdev"], "Malloc0", "{l}");
    assert_eq!(l["cluster_size"], CLUSTER, "{l}");
    assert_eq!(
        l["total_data_clusters"].as_u64().unwrap() * CLUSTER,
        CAPACITY,
        "{l}"
    );
    for (i, u) in uuids.iter().enumerate() {
        check_lvol_bdev(&a, u, &format!("lvs_new/lvol_test{i}"), &lvs, mb * MIB, BS);
    }
    a.fails(&["bdev_get_bdevs", "-b", "lvs_test/lvol_test0"]);
    assert_eq!(
        a.ok(&["bdev_lvol_get_lvols", "-l", "lvs_new"])[0]["lvs"]["name"],
        "lvs_new"
    );
    for (i, u) in uuids.iter().enumerate() {
        a.ok(&[
            "bdev_lvol_rename",
            &format!("lvs_new/lvol_test{i}"),
            &format!("lbd_new{i}"),
        ]);
        check_lvol_bdev(&a, u, &format!("lvs_new/lbd_new{i}"), &lvs, mb * MIB, BS);
    }
    a.fails(&["bdev_get_bdevs", "-b", "lvs_new/lvol_test0"]);
    // Renaming by UUID, and to the current name, succeed.
    a.ok(&["bdev_lvol_rename", &uuids[0], "lbd_new0"]);
    check_lvol_bdev(&a, &uuids[0], "lvs_new/lbd_new0", &lvs, mb * MIB, BS);
    // A renamed snapshot is what its clones name.
    let snap = a.ok_str(&["bdev_lvol_snapshot", "lvs_new/lbd_new1", "snap"]);
    a.ok(&["bdev_lvol_rename", "lvs_new/snap", "snap_renamed"]);
    assert_eq!(a.lvol(&uuids[1])["base_snapshot"], "snap_renamed");
    assert_eq!(a.bdev(&snap)["aliases"], json!(["lvs_new/snap_renamed"]));
    for i in [0usize, 2, 3] {
        a.ok(&["bdev_lvol_delete", &format!("lvs_new/lbd_new{i}")]);
    }
    a.ok(&["bdev_lvol_delete", "lvs_new/lbd_new1"]);
    a.ok(&["bdev_lvol_delete", &snap]);
    a.ok(&["bdev_lvol_delete_lvstore", "-u", &lvs]);

    // test_rename_lvs_negative
    a.fails_with(
        &["bdev_lvol_rename_lvstore", "NOTEXIST", "WHATEVER"],
        -2,
        "Lvol store NOTEXIST not found",
    );
    a.malloc("Malloc1", MALLOC_MB);
    let lvs1 = a.create_lvs("Malloc0", "lvs_test1", &[]);
    let lvs2 = a.create_lvs("Malloc1", "lvs_test2", &[]);
    let mut made = Vec::new();
    for i in 0..4 {
        for (n, u) in [(1, &lvs1), (2, &lvs2)] {
            let name = format!("lvol_test_{n}_{i}");
            let id = a.create_lvol(u, &name, mb, false);
            made.push((id, format!("lvs_test{n}/{name}"), u.clone()));
        }
    }
    a.fails_with(
        &["bdev_lvol_rename_lvstore", "lvs_test1", "lvs_test2"],
        -32602,
        "File exists",
    );
    for (u, name, bdev) in [
        (&lvs1, "lvs_test1", "Malloc0"),
        (&lvs2, "lvs_test2", "Malloc1"),
    ] {
        let l = a.lvs(u);
        assert_eq!(l["uuid"], u.as_str(), "{l}");
        assert_eq!(l["name"], name, "{l}");
        assert_eq!(l["base_bdev"], bdev, "{l}");
        assert_eq!(l["cluster_size"], CLUSTER, "{l}");
    }
    for (id, alias, store) in &made {
        check_lvol_bdev(&a, id, alias, store, mb * MIB, BS);
    }
    // The seed alias.
    let r = a.raw(
        "rename_lvol_store",
        json!({"old_name": "lvs_test2", "new_name": "lvs_test3"}),
    );
    assert_eq!(r["result"], true, "rename_lvol_store: {r}");
    assert_eq!(a.lvs(&lvs2)["name"], "lvs_test3");
    for (_, alias, _) in &made {
        let alias = alias.replace("lvs_test2/", "lvs_test3/");
        a.ok(&["bdev_lvol_delete", &alias]);
    }
    a.ok(&["bdev_lvol_delete_lvstore", "-u", &lvs1]);
    a.ok(&["bdev_lvol_delete_lvstore", "-u", &lvs2]);
    a.ok(&["bdev_malloc_delete", "Malloc1"]);

    // test_lvol_rename_negative
    a.fails_with(
        &["bdev_lvol_rename", "NOTEXIST", "WHATEVER"],
        -19,
        "No such device",
    );
    let lvs = a.create_lvs("Malloc0", "lvs_test", &[]);
    let half = round_down(CAPACITY_MB / 2, CLUSTER_MB);
    let l1 = a.create_lvol(&lvs, "lvol_test1", half, false);
    let l2 = a.create_lvol(&lvs, "lvol_test2", half, false);
    a.fails(&["bdev_lvol_rename", "lvol_test1", "lvol_test2"]);
    a.fails_with(
        &["bdev_lvol_rename", "lvs_test/lvol_test1", "lvol_test2"],
        -32602,
        "File exists",
    );
    check_lvol_bdev(&a, &l1, "lvs_test/lvol_test1", &lvs, half * MIB, BS);
    check_lvol_bdev(&a, &l2, "lvs_test/lvol_test2", &lvs, half * MIB, BS);
    a.ok(&["bdev_lvol_delete", "lvs_test/lvol_test1"]);
    a.ok(&["bdev_lvol_delete", "lvs_test/lvol_test2"]);
    a.ok(&["bdev_lvol_delete_lvstore", "-u", &lvs]);
    a.ok(&["bdev_malloc_delete", "Malloc0"]);
    a.check_leftovers();
}

/// Sorted by a key, for comparing listings across boots.
fn sorted_by(mut v: Vec<Value>, key: &str) -> Vec<Value> {
    v.sort_by(|x, y| x[key].as_str().cmp(&y[key].as_str()));
    v
}

fn sparse(path: &Path, bytes: u64) {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .unwrap()
        .set_len(bytes)
        .unwrap();
}

#[test]
#[ignore = "boots QEMU; run through cargo xtask test"]
fn lvstores_are_tasted_again_after_a_reboot() {
    // tasting.sh's AIO_SIZE_MB and AIO_BS: an NVMe namespace of 4096-byte
    // blocks and a virtio-blk disk.
    const DISK_MB: u64 = 400;
    const NVME_BS: u64 = 4096;
    let dir = scratch("lvol-taste");
    let (nvme, vblk) = (dir.join("nvme.img"), dir.join("vblk.img"));
    sparse(&nvme, DISK_MB * MIB);
    sparse(&vblk, DISK_MB * MIB);
    let disks = [
        Disk::nvme(0, 1, nvme).with_block_size(NVME_BS as u32),
        Disk::virtio(vblk),
    ];
    let vblk_bs = {
        let a = boot(&disks);
        let bs = a.bdev("VirtioBlk0")["block_size"].as_u64().unwrap();
        assert_eq!(a.bdev("Nvme0n1")["block_size"], NVME_BS);
        // A deleted store is not found again (test_tasting's first part,
        // test_delete_lvol_store_persistent_positive).
        let gone = a.create_lvs("Nvme0n1", "lvstore_test", &[]);
        let l = a.lvs(&gone);
        assert_eq!(l["base_bdev"], "Nvme0n1", "{l}");
        assert_eq!(l["block_size"], NVME_BS, "{l}");
        a.ok(&["bdev_lvol_delete_lvstore", "-u", &gone]);

        let lvs1 = a.create_lvs("Nvme0n1", "lvs_test1", &["-c", &MIB.to_string()]);
        let lvs2 = a.create_lvs("VirtioBlk0", "lvs_test2", &["-c", &(32 * MIB).to_string()]);
        let mb1 = round_down(CAPACITY_MB / 10, CLUSTER_MB);
        for i in 1..=5 {
            let u = a.create_lvol(&lvs1, &format!("lvol_test{i}"), mb1, false);
            check_lvol_bdev(
                &a,
                &u,
                &format!("lvs_test1/lvol_test{i}"),
                &lvs1,
                mb1 * MIB,
                NVME_BS,
            );
        }
        let mb2 = round_down((DISK_MB - 16) / 5, 32);
        for i in 1..=5 {
            let u = a.create_lvol(&lvs2, &format!("lvol_test{i}"), mb2, false);
            check_lvol_bdev(
                &a,
                &u,
                &format!("lvs_test2/lvol_test{i}"),
                &lvs2,
                mb2 * MIB,
                bs,
            );
        }
        assert_eq!(a.lvol_bdevs().len(), 10);
        // Relations and data that must come back too.
        let uri = a.export("lvs_test1/lvol_test1", "l1");
        a.write(&uri, 0x5a, 0, mb1 * MIB);
        a.unexport("l1");
        a.ok(&["bdev_lvol_snapshot", "lvs_test1/lvol_test1", "snap"]);
        a.ok(&["bdev_lvol_clone", "lvs_test1/snap", "clone"]);
        a.create_lvol(&lvs1, "thin", mb1, true);
        let uri = a.export("lvs_test1/clone", "clone");
        a.write(&uri, 0x3c, 0, MIB);
        a.unexport("clone");
        let uri = a.export("lvs_test1/thin", "thin");
        a.write(&uri, 0x77, 2 * MIB, MIB);
        a.unexport("thin");
        a.ok(&["bdev_lvol_set_read_only", "lvs_test2/lvol_test5"]);
        let old_lvs = sorted_by(a.lvstores(), "uuid");
        let old_lvols = sorted_by(a.lvol_bdevs(), "name");
        assert_eq!(old_lvols.len(), 13);
        let old_list = sorted_by(
            a.ok(&["bdev_lvol_get_lvols"]).as_array().unwrap().clone(),
            "uuid",
        );
        std::fs::write(
            dir.join("before.json"),
            serde_json::to_string_pretty(&json!([old_lvs, old_lvols, old_list, gone])).unwrap(),
        )
        .unwrap();
        bs
        // Dropping `a` kills QEMU.
    };
    let before: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("before.json")).unwrap()).unwrap();

    let a = boot(&disks);
    let new_lvs = sorted_by(a.wait_lvstores(2), "uuid");
    assert_eq!(
        Value::Array(new_lvs),
        before[0],
        "the stores tasted after the reboot"
    );
    let new_lvols = sorted_by(a.lvol_bdevs(), "name");
    assert_eq!(
        Value::Array(new_lvols),
        before[1],
        "the lvol bdevs after the reboot"
    );
    let new_list = sorted_by(
        a.ok(&["bdev_lvol_get_lvols"]).as_array().unwrap().clone(),
        "uuid",
    );
    assert_eq!(Value::Array(new_list), before[2], "bdev_lvol_get_lvols");
    a.fails(&["bdev_lvol_get_lvstores", "-u", before[3].as_str().unwrap()]);
    expect_clones(&a, "lvs_test1/snap", &["lvol_test1", "clone"]);
    assert_eq!(a.lvol("lvs_test1/clone")["base_snapshot"], "snap");
    assert_eq!(a.lvol("lvs_test1/thin")["num_allocated_clusters"], 1);
    let mb1 = round_down(CAPACITY_MB / 10, CLUSTER_MB);
    let uri = a.export("lvs_test1/lvol_test1", "l1");
    a.verify(&uri, 0x5a, 0, mb1 * MIB);
    let uri = a.export("lvs_test1/clone", "clone");
    a.verify(&uri, 0x3c, 0, MIB);
    a.verify(&uri, 0x5a, MIB, mb1 * MIB - MIB);
    let uri = a.export("lvs_test1/thin", "thin");
    a.verify(&uri, 0x00, 0, 2 * MIB);
    a.verify(&uri, 0x77, 2 * MIB, MIB);
    a.verify(&uri, 0x00, 3 * MIB, mb1 * MIB - 3 * MIB);
    let uri = a.export("lvs_test2/lvol_test5", "ro");
    a.write_fails(&uri, 0x01, 0, MIB, "read-only survives the reboot");
    for e in ["l1", "clone", "thin", "ro"] {
        a.unexport(e);
    }

    // Creating and deleting lvols works on the tasted stores.
    let lvs1 = before[0]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "lvs_test1")
        .unwrap()["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let lvs2 = before[0]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "lvs_test2")
        .unwrap()["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    for i in 6..=10 {
        let u = a.create_lvol(&lvs1, &format!("lvol_test{i}"), mb1, false);
        check_lvol_bdev(
            &a,
            &u,
            &format!("lvs_test1/lvol_test{i}"),
            &lvs1,
            mb1 * MIB,
            NVME_BS,
        );
    }
    for i in 1..=10 {
        a.ok(&["bdev_lvol_delete", &format!("lvs_test1/lvol_test{i}")]);
    }
    a.ok(&["bdev_lvol_delete_lvstore", "-u", &lvs1]);
    let lvs1 = a.create_lvs("Nvme0n1", "lvs_test1", &[]);
    for i in 1..=10 {
        a.create_lvol(&lvs1, &format!("lvol_test{i}"), mb1, false);
    }
    a.ok(&["bdev_lvol_delete_lvstore", "-u", &lvs1]);
    a.fails(&["bdev_lvol_get_lvstores", "-u", &lvs1]);
    a.ok(&["bdev_lvol_delete_lvstore", "-u", &lvs2]);
    a.fails(&["bdev_lvol_get_lvstores", "-u", &lvs2]);
    assert!(a.lvol_bdevs().is_empty());
    drop(a);

    // Deleted stores stay deleted.
    let a = boot(&disks);
    std::thread::sleep(Duration::from_secs(2));
    assert!(a.lvstores().is_empty(), "no store is tasted after deletion");
    let bdevs = a.ok(&["bdev_get_bdevs"]);
    let mut names: Vec<&str> = bdevs
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|b| b["name"].as_str())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["Nvme0n1", "VirtioBlk0"], "{bdevs}");
    assert_eq!(a.bdev("VirtioBlk0")["block_size"], vblk_bs);
}

#[test]
#[ignore = "boots QEMU; run through cargo xtask test"]
fn lvstore_grows_with_its_disk() {
    let dir = scratch("lvol-grow");
    let img = dir.join("vblk.img");
    sparse(&img, 200 * MIB);
    let disks = [Disk::virtio(img.clone())];
    let lvol_mb = 150;
    let lvol_clusters = (lvol_mb * MIB).div_ceil(CLUSTER);
    let (lvs, lvol) = {
        let a = boot(&disks);
        let lvs = a.create_lvs(
            "VirtioBlk0",
            "lvs",
            &[
                "--cluster-sz",
                "4194304",
                "--md-pages-per-cluster-ratio",
                "300",
            ],
        );
        let l = a.lvs(&lvs);
        assert_eq!(l["total_data_clusters"], 49, "{l}");
        let lvol = a.create_lvol(&lvs, "lvol", lvol_mb, false);
        assert_eq!(a.free(&lvs), 49 - lvol_clusters);
        let uri = a.export(&lvol, "lv");
        a.write(&uri, 0xab, 0, CLUSTER);
        a.write(&uri, 0xba, lvol_mb * MIB - CLUSTER, CLUSTER);
        a.unexport("lv");
        (lvs, lvol)
    };
    // The disk grows while the appliance is off.
    sparse(&img, 400 * MIB);
    let free_after_grow = {
        let a = boot(&disks);
        let stores = a.wait_lvstores(1);
        assert_eq!(stores.len(), 1, "tasted");
        assert_eq!(
            a.num_blocks("VirtioBlk0") * a.bdev("VirtioBlk0")["block_size"].as_u64().unwrap(),
            400 * MIB
        );
        let l = a.lvs(&lvs);
        assert_eq!(
            l["total_data_clusters"], 49,
            "the store keeps its size until grown: {l}"
        );
        a.ok(&["bdev_lvol_grow_lvstore", "-u", &lvs]);
        let l = a.lvs(&lvs);
        assert_eq!(l["total_data_clusters"], 99, "{l}");
        assert_eq!(l["free_clusters"], 99 - lvol_clusters, "{l}");
        assert!(
            l["max_growable_size"].as_u64().unwrap_or(0) >= 400 * MIB,
            "{l}"
        );
        l["free_clusters"].as_u64().unwrap()
        // Killed right after the grow (lvs_grow dirty).
    };
    let a = boot(&disks);
    a.wait_lvstores(1);
    let l = a.lvs(&lvs);
    assert_eq!(l["total_data_clusters"], 99, "the grow persisted: {l}");
    assert_eq!(l["free_clusters"], free_after_grow, "{l}");
    let uri = a.export(&lvol, "lv");
    a.verify(&uri, 0xab, 0, CLUSTER);
    a.verify(&uri, 0xba, lvol_mb * MIB - CLUSTER, CLUSTER);
    a.unexport("lv");
    let more = a.create_lvol(&lvs, "more", free_after_grow * CLUSTER_MB, false);
    assert_eq!(a.free(&lvs), 0, "the new clusters are usable");
    a.ok(&["bdev_lvol_delete", &more]);
    a.ok(&["bdev_lvol_delete", &lvol]);
    a.ok(&["bdev_lvol_delete_lvstore", "-u", &lvs]);
    assert!(a.lvstores().is_empty());
}

/// The issue's reboot check: stores, volumes, an iSCSI node, an NVMe-oF
/// subsystem and an NBD export made over JSON-RPC, with the configuration
/// kept on a disk chosen over JSON-RPC; QEMU is killed and boots again with
/// no boot module: all of it serves again with its data.
#[test]
#[ignore = "boots QEMU; run through cargo xtask test"]
fn volumes_exports_and_config_serve_again_after_a_kill() {
    let dir = scratch("lvol-config");
    let (nvme, cfg) = (dir.join("nvme.img"), dir.join("config.img"));
    sparse(&nvme, 256 * MIB);
    sparse(&cfg, 16 * MIB);
    let disks = [Disk::nvme(0, 1, nvme), Disk::virtio(cfg)];
    let iscsi = free_port();
    const IQN: &str = "iqn.2016-06.io.spdk:vol";
    let iscsi_uri = |port: u16| format!("iscsi://127.0.0.1:{port}/{IQN}/0");
    let nqn = "nqn.2016-06.io.ironbay:vol";
    let before = {
        let a = boot_with(&disks, &[(iscsi, 3260)]);
        assert_eq!(
            a.raw("config_store_set", json!({"bdev_name": "VirtioBlk0"}))["result"],
            true
        );
        let lvs = a.create_lvs("Nvme0n1", "lvs0", &["-c", &MIB.to_string()]);
        let v_nbd = a.create_lvol(&lvs, "for_nbd", 8, false);
        a.create_lvol(&lvs, "for_iscsi", 8, true);
        a.create_lvol(&lvs, "for_nvmf", 8, true);
        // An export under a name of the operator's choosing.
        let uri = a.export("lvs0/for_nbd", "named");
        a.write(&uri, 0x11, 0, 3 * MIB);
        a.ok(&["iscsi_create_portal_group", "1", "0.0.0.0:3260"]);
        a.ok(&["iscsi_create_initiator_group", "2", "ANY", "ANY"]);
        a.ok(&[
            "iscsi_create_target_node",
            "vol",
            "vol",
            "lvs0/for_iscsi:0",
            "1:2",
            "64",
            "-d",
        ]);
        a.write(&iscsi_uri(iscsi), 0x22, MIB, 2 * MIB);
        a.ok(&["nvmf_create_transport", "-t", "TCP"]);
        a.ok(&["nvmf_create_subsystem", nqn, "-a", "-s", "IRONBAYVOL0001"]);
        a.ok(&["nvmf_subsystem_add_ns", nqn, "lvs0/for_nvmf"]);
        a.ok(&[
            "nvmf_subsystem_add_listener",
            nqn,
            "-t",
            "tcp",
            "-a",
            "0.0.0.0",
            "-s",
            "4420",
        ]);
        let config = a.ok(&["save_config"]);
        let subsystems = a.ok(&["nvmf_get_subsystems"]);
        let nodes = a.ok(&["iscsi_get_target_nodes"]);
        let lvols = sorted_by(
            a.ok(&["bdev_lvol_get_lvols"]).as_array().unwrap().clone(),
            "uuid",
        );
        assert!(
            config.to_string().contains("\"nbd_device\":\"named\""),
            "the named NBD export is in the saved configuration: {config}"
        );
        let _ = v_nbd;
        // Dropping `a` kills QEMU (SIGKILL): no clean shutdown.
        (config, subsystems, nodes, lvols)
    };
    let iscsi = free_port();
    let a = boot_with(&disks, &[(iscsi, 3260)]);
    a.wait_lvstores(1);
    assert_eq!(a.ok(&["save_config"]), before.0, "save_config");
    assert_eq!(
        a.ok(&["nvmf_get_subsystems"]),
        before.1,
        "nvmf_get_subsystems"
    );
    assert_eq!(
        a.ok(&["iscsi_get_target_nodes"]),
        before.2,
        "iscsi_get_target_nodes"
    );
    let lvols = sorted_by(
        a.ok(&["bdev_lvol_get_lvols"]).as_array().unwrap().clone(),
        "uuid",
    );
    assert_eq!(Value::Array(lvols), Value::Array(before.3), "volumes");
    // Every export serves the data written before the kill.
    let uri = format!("nbd://127.0.0.1:{}/named", a.nbd);
    a.verify(&uri, 0x11, 0, 3 * MIB);
    a.verify(&uri, 0x00, 3 * MIB, 5 * MIB);
    a.verify(&iscsi_uri(iscsi), 0x00, 0, MIB);
    a.verify(&iscsi_uri(iscsi), 0x22, MIB, 2 * MIB);
    a.verify(&iscsi_uri(iscsi), 0x00, 3 * MIB, 5 * MIB);
}
