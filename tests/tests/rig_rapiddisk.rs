//! RapidDisk caches under a real Linux host: the rig's guest (nvme-cli,
//! fio) against the appliance on a bridge in our own network namespace; the
//! test plays the operator over REST (curl, port 9118) and JSON-RPC
//! (`spdk-rpc`) between the guest's steps (tests/scripts/rapiddisk-guest.sh).
//!
//! For each mode (write-through, write-around, write-back) a 128 MiB RAM
//! disk caches the virtio-blk disk, exported over NVMe-oF/TCP. The guest
//! writes a 64 MiB region with fio (random 4k-64k, crc32c verify) and a
//! 16 MiB blob after it, reads the region back twice with fio's verify
//! (the second pass from the cache) and prints the SHA-256 of both as read
//! through the cache. The test removes the cache with
//! `removeRapidDiskCache` and compares those SHA-256 with the virtio-blk
//! backing file; the write-through and write-around caches must have put
//! everything there already, and their counters show hits. Write-back
//! changes the export straight after the writes, while the cache may still
//! hold data the file lacks (the cache writes back in the background; the
//! test says how many blocks were dirty): the subsystem is deleted and
//! made again, the guest reads and checks everything through it, and only
//! then is the cache removed, writing anything left back.
//!
//! Needs root for the namespace. Run by `cargo xtask test`.

use ironbay_tests::images::target_dir;
use ironbay_tests::machine::{Disk, free_port, sparse_disk};
use ironbay_tests::rig::stepped::{GUEST_IP, Stepped};
use ironbay_tests::rig::{guest, netns::Netns, vm};
use ironbay_tests::serial::Running;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const VBLK: u64 = 512 * MIB;
const CACHE_MIB: u64 = 128;
/// What rapiddisk-guest.sh writes per mode: fio's region, then the blob.
const REGION_MIB: u64 = 64;
const BLOB_MIB: u64 = 16;
const STEP_TIMEOUT: Duration = Duration::from_secs(1200);

/// (guest tag, policy, cache name, NQN, where its region starts in MiB)
const MODES: [(&str, &str, &str, &str, u64); 3] = [
    (
        "wt",
        "write-through",
        "rc-wt_VirtioBlk0",
        "nqn.2016-06.io.spdk:rc-wt",
        0,
    ),
    (
        "wa",
        "write-around",
        "rc-wa_VirtioBlk0",
        "nqn.2016-06.io.spdk:rc-wa",
        128,
    ),
    (
        "wb",
        "write-back",
        "rc-wb_VirtioBlk0",
        "nqn.2016-06.io.spdk:rc-wb",
        256,
    ),
];

struct Rig {
    s: Stepped,
    rest: u16,
    vblk: PathBuf,
}

ironbay_tests::stepped_rig!(Rig);

impl Rig {
    /// A REST request with curl inside the namespace: (status, JSON body).
    fn rest(&self, method: &str, path: &str) -> (u16, Value) {
        let mut c = Command::new("curl");
        c.args(["-s", "-m", "600", "-X", method, "-w", "\n%{http_code}"]);
        if method != "GET" {
            c.args(["--data", ""]);
        }
        c.arg(format!("http://127.0.0.1:{}/v1/{path}", self.rest));
        let out = self.ns.wrap(&c).output().expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (
            code.trim().parse().unwrap_or(0),
            serde_json::from_str(body).unwrap_or(Value::Null),
        )
    }

    fn post_ok(&self, path: &str) {
        let (code, body) = self.rest("POST", path);
        if code != 200 || body["status"] != "Success" {
            self.fail(&format!("POST /v1/{path}: HTTP {code} {body}"));
        }
    }

    /// The cache's counters (showRapidDiskCacheStats).
    fn stats(&self, cache: &str) -> Value {
        let (code, body) = self.rest("GET", &format!("showRapidDiskCacheStats/{cache}"));
        let s = &body["statistics"][0]["cache_stats"][0];
        if code != 200 || s["device"] != cache {
            self.fail(&format!(
                "showRapidDiskCacheStats/{cache}: HTTP {code} {body}"
            ));
        }
        s.clone()
    }

    /// The subsystem `nqn` serving `bdev` on 4420, open to any host.
    fn export(&self, nqn: &str, bdev: &str) {
        self.spdk_text(&[
            "nvmf_create_subsystem",
            nqn,
            "-a",
            "-s",
            "IRONBAYRAPIDDISK01",
        ]);
        self.spdk_text(&["nvmf_subsystem_add_ns", nqn, bdev]);
        self.spdk_text(&[
            "nvmf_subsystem_add_listener",
            nqn,
            "-t",
            "tcp",
            "-a",
            "0.0.0.0",
            "-s",
            "4420",
        ]);
    }

    /// A `KEY TAG VALUE` line the guest printed.
    fn guest_says(&self, key: &str, tag: &str) -> String {
        let out = self.guest.as_ref().map(Running::output).unwrap_or_default();
        let prefix = format!("{key} {tag} ");
        out.lines()
            .rev()
            .find_map(|l| l.trim().strip_prefix(&prefix).map(str::to_string))
            .unwrap_or_else(|| self.fail(&format!("the guest printed no `{prefix}...` line")))
    }

    /// SHA-256 of `len_mib` MiB of the backing file from `off_mib` MiB.
    fn file_sha(&self, off_mib: u64, len_mib: u64) -> String {
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "dd if='{}' bs=1M skip={off_mib} count={len_mib} status=none | sha256sum",
                self.vblk.display()
            ))
            .output()
            .expect("dd | sha256sum");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string()
    }

    /// Whether the backing file holds what the guest read through the cache
    /// for `tag`: (fio region, blob).
    fn file_matches(&self, tag: &str, off: u64) -> (bool, bool) {
        (
            self.file_sha(off, REGION_MIB) == self.guest_says("SHA-REGION", tag),
            self.file_sha(off + REGION_MIB, BLOB_MIB) == self.guest_says("SHA-BLOB-WRITTEN", tag),
        )
    }

    /// Removes mode `m`'s export and its cache, then checks the file.
    fn remove_and_compare(&self, m: usize) {
        let (tag, _, cache, nqn, off) = MODES[m];
        self.spdk_text(&["nvmf_delete_subsystem", nqn]);
        let t = Instant::now();
        self.post_ok(&format!("removeRapidDiskCache/{cache}"));
        self.log(&format!(
            "removeRapidDiskCache/{cache}: {} ms",
            t.elapsed().as_millis()
        ));
        let (_, body) = self.rest("GET", "listRapidDiskVolumes");
        if body["volumes"][1]["rapiddisk_cache"] != serde_json::json!([]) {
            self.fail(&format!("{cache} still listed: {body}"));
        }
        let (region, blob) = self.file_matches(tag, off);
        if !region {
            self.fail(&format!(
                "{cache}: the backing file's {REGION_MIB} MiB at {off} MiB differ from what fio \
                 wrote and read through the cache"
            ));
        }
        if !blob {
            self.fail(&format!(
                "{cache}: the backing file's blob at {} MiB differs from the one written",
                off + REGION_MIB
            ));
        }
        self.log(&format!(
            "{cache}: backing file matches the fio region and the blob"
        ));
    }
}

fn vblk_disk(dir: &Path) -> PathBuf {
    let vblk = dir.join("vblk0.img");
    sparse_disk(&vblk, VBLK).unwrap();
    vblk
}

#[test]
#[ignore = "boots the appliance and a Linux guest in a network namespace; run through cargo xtask test"]
fn linux_fio_verify_through_each_cache_mode_lands_in_the_backing_file() {
    let image =
        guest::build(&target_dir().join("rig")).unwrap_or_else(|e| panic!("rig guest: {e}"));
    let dir = ironbay_tests::scratch("rig-rapiddisk");
    let nvme = dir.join("nvme0.img");
    sparse_disk(&nvme, 256 * MIB).unwrap();
    let vblk = vblk_disk(&dir);

    let ns = Netns::create("rdrig").unwrap_or_else(|e| panic!("{e}"));
    let rest = free_port();
    let mut rig = Rig {
        s: Stepped::boot(
            ns,
            vec![Disk::nvme(0, 1, nvme), Disk::virtio(vblk.clone())],
            "",
            &[(rest, 9118)],
            STEP_TIMEOUT,
        ),
        rest,
        vblk,
    };
    let until = Instant::now() + Duration::from_secs(60);
    while rig.rest("GET", "checkServiceStatus").0 != 200 {
        if Instant::now() > until {
            rig.fail("REST does not answer on 9118");
        }
        std::thread::sleep(Duration::from_millis(250));
    }

    rig.post_ok(&format!("createRapidDisk/{CACHE_MIB}"));
    rig.spdk_text(&["nvmf_create_transport", "-t", "TCP"]);
    let setup = |rig: &Rig, m: usize| {
        let (_, policy, cache, nqn, _) = MODES[m];
        rig.post_ok(&format!("createRapidDiskCache/rd0/VirtioBlk0/{policy}"));
        rig.export(nqn, cache);
        rig.log(&format!("{cache} exported as {nqn}"));
    };
    setup(&rig, 0);

    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/rapiddisk-guest.sh");
    let mut host = vm::GuestVm::new(&script);
    host.ip = Some(format!("{GUEST_IP}/24"));
    host.mac = "52:54:00:1b:30:04".into();
    host.iqn = "iqn.2004-10.org.ironbay:rig-rapiddisk".into();
    host.tap = Some(rig.ns.add_tap().unwrap());
    rig.guest = Some(host.start(&image, Some(&rig.ns)).unwrap());

    rig.reach("wt");
    rig.release("wt");
    // Write-through and write-around: done with a mode when the guest is
    // at the next one.
    for (m, next) in [(0, "wa"), (1, "wb")] {
        rig.reach(next);
        let (tag, _, cache, _, off) = MODES[m];
        let s = rig.stats(cache);
        println!("{cache}: {s}");
        for k in ["reads", "writes", "cache_hits"] {
            if s[k].as_u64().unwrap_or(0) == 0 {
                rig.fail(&format!(
                    "{cache}: `{k}` is 0 after two read passes over the region: {s}"
                ));
            }
        }
        // Not write-back: the data is in the file already.
        let (region, blob) = rig.file_matches(tag, off);
        if !(region && blob) {
            rig.fail(&format!(
                "{cache}: the backing file lacks writes before the cache is removed \
                 (region {region}, blob {blob})"
            ));
        }
        rig.remove_and_compare(m);
        setup(&rig, m + 1);
        rig.release(next);
    }

    // Write-back: the export changes right after the writes, while the
    // cache may still hold data the file lacks.
    rig.reach("wb-reexport");
    let (tag, _, cache, nqn, off) = MODES[2];
    let s = rig.stats(cache);
    println!("{cache} after the guest's writes: {s}");
    // dm-writecache's counters: blocks holding data the source lacks are
    // neither free nor (yet) under write-back.
    let (blocks, free) = (
        s["num_blocks"].as_u64().unwrap_or(0),
        s["num_free_blocks"].as_u64().unwrap_or(0),
    );
    let dirty = blocks.saturating_sub(free);
    let blob_in_file =
        rig.file_sha(off + REGION_MIB, BLOB_MIB) == rig.guest_says("SHA-BLOB-WRITTEN", tag);
    rig.log(&format!(
        "{cache}: {dirty} of {blocks} blocks hold data the source lacks ({} under write-back); \
         blob already in the backing file: {blob_in_file}",
        s["num_wb_blocks"]
    ));
    if dirty == 0 {
        println!(
            "note: the cache had written everything back already; the export change ran on a clean cache"
        );
    }
    if s["errors"] != 0 {
        rig.fail(&format!("{cache}: errors {s}"));
    }
    rig.spdk_text(&["nvmf_delete_subsystem", nqn]);
    rig.export(nqn, cache);
    rig.log(&format!("{nqn} deleted and made again"));
    rig.release("wb-reexport");

    let guest = rig.guest.as_mut().unwrap();
    let (rc, out) = vm::finish(guest, STEP_TIMEOUT).unwrap_or_else(|e| panic!("guest: {e}"));
    println!("{out}");
    if rc != 0 {
        rig.fail(&format!("guest script failed (rc {rc})"));
    }
    for tag in ["wt", "wa", "wb"] {
        for what in ["FIO-WRITE-OK", "FIO-READ-VERIFY-OK", "MODE-DONE"] {
            let needle = format!("{what} {tag}");
            if !out.contains(&needle) {
                rig.fail(&format!("guest output lacks `{needle}`"));
            }
        }
    }
    if !out.contains("RAPIDDISK-GUEST-OK") {
        rig.fail("guest output lacks `RAPIDDISK-GUEST-OK`");
    }
    let sectors = format!("sectors={}", VBLK / 512);
    assert!(
        out.contains(&sectors),
        "a cache is as large as its source\n{out}"
    );
    let s = rig.stats(cache);
    println!("{cache} before removal: {s}");
    rig.remove_and_compare(2);
    // Every mode's region is still what it was.
    for (tag, _, _, _, off) in MODES {
        let (region, blob) = rig.file_matches(tag, off);
        if !(region && blob) {
            rig.fail(&format!(
                "{tag}'s data in the backing file changed later (region {region}, blob {blob})"
            ));
        }
    }
    rig.post_ok("removeRapidDisk/rd0");
    drop(rig);
}
