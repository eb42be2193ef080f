//! The REST front end against a model with a page pool, a "physical" disk
//! and NBD exports: every call's answer shape, the Failed answers, and RAM
//! disks and caches doing what the calls say.

use ironbay_bdev::{BdevId, HeapPages, IoBuf, IoOp, IoRequest, IoStatus, MallocBdev, Registry};
use ironbay_http::{Request, Response};
use ironbay_model::rapiddisk::Disk;
use ironbay_model::{Devices, Model};
use ironbay_nbd::Exports;
use serde_json::{Value, json};

const MIB: u64 = 1 << 20;

struct Hw;

impl Devices for Hw {
    fn nvme_attach(&mut self, _: &mut Registry, _: &str, _: &str) -> Result<Vec<String>, String> {
        Err("none".into())
    }
    fn nvme_detach(&mut self, _: &mut Registry, _: &str) -> Result<(), String> {
        Err("none".into())
    }
    fn virtio_attach(&mut self, _: &mut Registry, _: &str, _: &str) -> Result<Vec<String>, String> {
        Err("none".into())
    }
    fn virtio_detach(&mut self, _: &mut Registry, _: &str) -> Result<(), String> {
        Err("none".into())
    }
    fn disks(&self, bdevs: &Registry) -> Vec<Disk> {
        let id = bdevs.find("Disk0").unwrap();
        vec![Disk {
            name: "Disk0".into(),
            size: bdevs.info(id).unwrap().size_bytes(),
            vendor: "Red Hat".into(),
            model: "Virtio Block Device".into(),
        }]
    }
    fn memory(&self) -> (u64, u64) {
        (512 * MIB, 300 * MIB)
    }
}

struct World {
    reg: Registry,
    nbd: Exports,
    hw: Hw,
}

impl World {
    fn new() -> Self {
        let mut reg = Registry::new();
        reg.set_page_pool(HeapPages::limited(64 * MIB / 4096));
        reg.add(Box::new(MallocBdev::new("Disk0", 32 * MIB / 512, 512)))
            .unwrap();
        World {
            reg,
            nbd: Exports::default(),
            hw: Hw,
        }
    }

    fn model<R>(&mut self, f: impl FnOnce(&mut Model<'_>) -> R) -> R {
        let (mut init, mut down) = (true, false);
        let mut m = Model {
            bdevs: &mut self.reg,
            devices: Some(&mut self.hw),
            nbd: Some(&mut self.nbd),
            iscsi: None,
            nvmf: None,
            memory_budget: 64 * MIB,
            initialized: &mut init,
            shutdown: &mut down,
            bench: None,
            config_store: None,
            lvol: None,
            targetd: None,
        };
        f(&mut m)
    }

    fn call(&mut self, method: &str, path: &str) -> (u16, Value) {
        let req = Request {
            method: method.into(),
            target: path.into(),
            minor: 1,
            headers: Vec::new(),
            body: Vec::new(),
            peer: None,
        };
        let r: Response = self.model(|m| ironbay_rapiddisk::handle(&req, m));
        let v = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        (r.status, v)
    }

    fn get(&mut self, path: &str) -> Value {
        let (s, v) = self.call("GET", path);
        assert_eq!(s, 200, "GET {path}: {v}");
        v
    }

    fn post(&mut self, path: &str) {
        let (s, v) = self.call("POST", path);
        assert_eq!((s, v), (200, json!({"status": "Success"})), "POST {path}");
    }

    fn fails(&mut self, method: &str, path: &str, why: &str) {
        let (s, v) = self.call(method, path);
        assert_eq!(s, 400, "{method} {path}: {v}");
        assert_eq!(v["status"], "Failed", "{method} {path}: {v}");
        let msg = v["message"].as_str().unwrap_or_default();
        assert!(msg.contains(why), "{method} {path}: `{msg}` lacks `{why}`");
    }

    fn id(&self, name: &str) -> BdevId {
        self.reg.find(name).unwrap()
    }

    /// One request through the registry, polled to completion.
    fn io(&mut self, name: &str, op: IoOp) -> (IoStatus, Option<IoBuf>) {
        let id = self.id(name);
        self.reg
            .submit(
                id,
                IoRequest {
                    tag: 7,
                    op,
                    fua: false,
                },
                0,
            )
            .unwrap();
        let mut out = Vec::new();
        for t in 0..10_000u64 {
            self.reg.poll(t, &mut out);
            if let Some((_, c)) = out.pop() {
                return (c.status, c.buf);
            }
        }
        panic!("no completion");
    }

    /// Writes `len` bytes of `byte` in requests of up to 8 MiB; the first
    /// failure's status.
    fn write(&mut self, name: &str, lba: u64, byte: u8, len: usize) -> IoStatus {
        let mut done = 0;
        while done < len {
            let n = (len - done).min(8 << 20);
            let mut buf = IoBuf::new(n);
            buf.as_mut_slice().fill(byte);
            let lba = lba + done as u64 / 512;
            let s = self.io(name, IoOp::Write { lba, buf }).0;
            if s != IoStatus::Success {
                return s;
            }
            done += n;
        }
        IoStatus::Success
    }

    fn read(&mut self, name: &str, lba: u64, len: usize) -> Vec<u8> {
        let (s, b) = self.io(
            name,
            IoOp::Read {
                lba,
                buf: IoBuf::new(len),
            },
        );
        assert_eq!(s, IoStatus::Success);
        b.unwrap().as_slice().to_vec()
    }
}

#[test]
fn status_and_resources() {
    let mut w = World::new();
    let v = w.get("/v1/checkServiceStatus");
    assert_eq!(v["status"], "OK");
    assert!(v["version"].is_string());
    let v = w.get("/v1/listAllResources");
    assert_eq!(
        v,
        json!({"resources": [
            {"memory": [{"mem_total": 512 * MIB, "mem_free": 300 * MIB}]},
            {"volumes": [{"device": "Disk0", "size": 32 * MIB, "vendor": "Red Hat", "model": "Virtio Block Device"}]},
        ]})
    );
}

#[test]
fn ram_disks_are_created_listed_resized_flushed_locked_and_removed() {
    let mut w = World::new();
    w.post("/v1/createRapidDisk/8");
    w.post("/v1/createRapidDisk/16");
    let v = w.get("/v1/listRapidDiskVolumes");
    assert_eq!(
        v,
        json!({"volumes": [
            {"rapiddisk": [
                {"device": "rd1", "size": 16 * MIB, "usage": 0, "status": "unlocked"},
                {"device": "rd0", "size": 8 * MIB, "usage": 0, "status": "unlocked"},
            ]},
            {"rapiddisk_cache": []},
        ]})
    );
    // Pages are taken by writes, given back by unmap and flush.
    assert_eq!(w.write("rd0", 0, 0xab, 64 << 10), IoStatus::Success);
    let usage = |w: &mut World| {
        w.get("/v1/listRapidDiskVolumes")["volumes"][0]["rapiddisk"][1]["usage"].clone()
    };
    assert_eq!(usage(&mut w), 64 << 10);
    w.io("rd0", IoOp::Unmap { lba: 0, blocks: 64 });
    assert_eq!(usage(&mut w), 32 << 10);
    w.post("/v1/flushRapidDisk/rd0");
    assert_eq!(usage(&mut w), 0);
    assert!(w.read("rd0", 0, 4096).iter().all(|&b| b == 0));

    w.post("/v1/resizeRapidDisk/rd0/12");
    w.fails("POST", "/v1/resizeRapidDisk/rd0/4", "must be larger");
    w.fails("POST", "/v1/resizeRapidDisk/rd0/12", "must be larger");
    assert_eq!(w.reg.info(w.id("rd0")).unwrap().size_bytes(), 12 * MIB);

    // Locked: writes are refused as read-only, reads go on.
    w.write("rd1", 0, 1, 4096);
    w.post("/v1/lockRapidDisk/rd1");
    assert_eq!(
        w.get("/v1/listRapidDiskVolumes")["volumes"][0]["rapiddisk"][0]["status"],
        "locked"
    );
    assert_eq!(w.write("rd1", 0, 2, 4096), IoStatus::ReadOnly);
    assert!(w.read("rd1", 0, 4096).iter().all(|&b| b == 1));
    w.post("/v1/unlockRapidDisk/rd1");
    assert_eq!(w.write("rd1", 0, 2, 4096), IoStatus::Success);

    // Exported: removal refused until the export goes.
    w.model(|m| m.export_nbd("rd1", None)).unwrap();
    w.fails("POST", "/v1/removeRapidDisk/rd1", "exported");
    w.model(|m| m.unexport_nbd("rd1")).unwrap();
    w.post("/v1/removeRapidDisk/rd1");
    w.post("/v1/createRapidDisk/4");
    assert!(w.reg.find("rd1").is_some(), "the lowest free name again");
}

#[test]
fn running_out_of_pages_fails_the_write_only() {
    let mut w = World::new();
    w.post("/v1/createRapidDisk/48");
    w.post("/v1/createRapidDisk/48");
    assert_eq!(w.write("rd0", 0, 1, 40 << 20), IoStatus::Success);
    assert_eq!(w.write("rd1", 0, 1, 32 << 20), IoStatus::NoSpace);
    assert_eq!(w.write("rd1", 0, 1, 16 << 20), IoStatus::Success);
    assert!(w.read("rd0", 0, 1 << 20).iter().all(|&b| b == 1));
    w.post("/v1/flushRapidDisk/rd0");
    assert_eq!(w.write("rd1", 0, 1, 32 << 20), IoStatus::Success);
    // Larger than memory is allowed (writes fail when pages run out), page
    // tables beyond the heap budget are not.
    w.post("/v1/createRapidDisk/100");
    w.fails("POST", "/v1/createRapidDisk/60000", "page tables");
}

#[test]
fn caches_in_every_policy() {
    let mut w = World::new();
    w.post("/v1/createRapidDisk/4");
    for (policy, prefix) in [
        ("write-through", "rc-wt_"),
        ("write-around", "rc-wa_"),
        ("write-back", "rc-wb_"),
    ] {
        w.post(&format!("/v1/createRapidDiskCache/rd0/Disk0/{policy}"));
        let name = format!("{prefix}Disk0");
        let v = w.get("/v1/listRapidDiskVolumes");
        assert_eq!(
            v["volumes"][1],
            json!({"rapiddisk_cache": [{"device": name, "cache": "rd0", "source": "Disk0", "mode": policy}]})
        );
        w.fails("POST", "/v1/removeRapidDisk/rd0", "cache");
        w.fails("POST", "/v1/flushRapidDisk/rd0", "used by");
        w.fails(
            "POST",
            "/v1/createRapidDiskCache/rd0/Disk0/write-through",
            "",
        );
        assert_eq!(w.write(&name, 8, 0x5a, 8192), IoStatus::Success);
        assert!(w.read(&name, 8, 8192).iter().all(|&b| b == 0x5a));
        let s = w.get(&format!("/v1/showRapidDiskCacheStats/{name}"));
        let stats = &s["statistics"][0]["cache_stats"][0];
        assert_eq!(stats["device"], name.as_str());
        if policy == "write-back" {
            for k in ["errors", "num_blocks", "num_free_blocks", "num_wb_blocks"] {
                assert!(stats[k].is_u64(), "{k} in {stats}");
            }
            assert_eq!(stats["num_blocks"], 1024);
            // Written back in the background while the read was polled.
            assert_eq!(stats["num_wb_blocks"], 0, "{stats}");
        } else {
            for k in [
                "reads",
                "writes",
                "cache_hits",
                "replacement",
                "write_replacement",
                "read_invalidates",
                "write_invalidates",
                "uncached_reads",
                "uncached_writes",
                "disk_reads",
                "disk_writes",
                "cache_reads",
                "cache_writes",
            ] {
                assert!(stats[k].is_u64(), "{k} in {stats}");
            }
            // Counted per 4 KiB cache block, as RapidDisk's cache counts.
            assert_eq!(stats["writes"], 2, "{stats}");
        }
        w.post(&format!("/v1/removeRapidDiskCache/{name}"));
        // Whatever the policy, the source has the data once the cache is gone.
        assert!(
            w.read("Disk0", 8, 8192).iter().all(|&b| b == 0x5a),
            "{policy}"
        );
        w.write("Disk0", 8, 0, 8192);
    }
    w.post("/v1/removeRapidDisk/rd0");
}

#[test]
fn failures_are_400_with_the_failed_shape() {
    let mut w = World::new();
    w.post("/v1/createRapidDisk/4");
    w.fails("POST", "/v1/checkServiceStatus", "takes GET");
    w.fails("GET", "/v1/createRapidDisk/4", "takes POST");
    w.fails("DELETE", "/v1/removeRapidDisk/rd0", "takes POST");
    w.fails("GET", "/v1/nothing", "unknown call");
    w.fails("GET", "/v2/checkServiceStatus", "unknown path");
    w.fails("GET", "/", "unknown path");
    w.fails("GET", "/v1/", "unknown call");
    w.fails("GET", "/v1/listAllResources/extra", "path arguments");
    w.fails("POST", "/v1/createRapidDisk", "path arguments");
    for bad in [
        "0",
        "-1",
        "abc",
        "1.5",
        "99999999999999999999",
        "",
        "0x10",
        "+4",
    ] {
        w.fails(
            "POST",
            &format!("/v1/createRapidDisk/{bad}"),
            "invalid size",
        );
    }
    w.fails("POST", "/v1/resizeRapidDisk/rd0/x", "invalid size");
    w.fails("POST", "/v1/removeRapidDisk/rd9", "does not exist");
    w.fails("POST", "/v1/removeRapidDisk/Disk0", "not a RapidDisk");
    w.fails("POST", "/v1/lockRapidDisk/Disk0", "not a RapidDisk");
    w.fails(
        "GET",
        "/v1/showRapidDiskCacheStats/rd0",
        "not a RapidDisk cache",
    );
    w.fails(
        "POST",
        "/v1/createRapidDiskCache/rd0/Disk0/write-sideways",
        "unknown cache policy",
    );
    w.fails("POST", "/v1/createRapidDiskCache/rd0/rd0/write-through", "");
    w.fails(
        "POST",
        "/v1/createRapidDiskCache/Disk0/rd0/write-through",
        "not a RapidDisk",
    );
    w.fails(
        "POST",
        "/v1/createRapidDiskCache/rd0/Nope/write-through",
        "does not exist",
    );
    w.fails(
        "POST",
        "/v1/removeRapidDiskCache/rd0",
        "not a RapidDisk cache",
    );
    w.fails("POST", "/v1/removeRapidDisk/rd%00", "invalid volume name");
    // Nothing changed.
    assert_eq!(
        w.get("/v1/listRapidDiskVolumes")["volumes"][0]["rapiddisk"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}
