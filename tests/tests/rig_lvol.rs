//! Logical volumes under a real Linux host: the rig's guest against the
//! appliance on a bridge in our own network namespace, the test playing the
//! operator over JSON-RPC (SPDK's `spdk-rpc`) between the guest's steps.
//!
//! 1. A store (4 MiB clusters) on an NVMe disk, a thin 512 MiB volume
//!    exported over NVMe-oF/TCP; the guest makes ext4 on it and writes files.
//! 2. The guest freezes the mounted file system (`fsfreeze`); the test takes
//!    a snapshot: it holds every cluster the origin had, the origin none.
//!    Frozen, the snapshot is a clean file system rather than a merely
//!    crash-consistent one, so what the guest checks next is the snapshot
//!    itself, not ext4's journal replay.
//! 3. The test clones the snapshot and exports the clone over iSCSI; the
//!    guest mounts it read-write (it is to be written, and `-o noload`
//!    would hide a journal the snapshot should not have): ext4 reports no
//!    recovery, the same files, none written after the snapshot. Writes to
//!    the clone leave the origin's files (read back uncached over NVMe-oF)
//!    and the snapshot's clusters untouched; in a new iSCSI session the
//!    clone passes `e2fsck -fn` and holds its own writes.
//! 4. 96 MiB of new files on the origin take clusters from the store;
//!    deleted and `fstrim`med (NVMe Dataset Management, deallocate), they go
//!    back: `bdev_lvol_get_lvstores` free_clusters and the origin's
//!    `num_allocated_clusters` return to where they were.
//!
//! The guest waits at each step (`WAIT-<step>`, listening on port 7000)
//! until the test connects to it. Needs root for the namespace. Run by
//! `cargo xtask test`.

use ironbay_tests::images::target_dir;
use ironbay_tests::machine::Disk;
use ironbay_tests::rig::stepped::{GUEST_IP, Stepped};
use ironbay_tests::rig::{guest, netns::Netns, vm};
use serde_json::Value;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const CLUSTER: u64 = 4 * MIB;
const DISK: u64 = 1024 * MIB;
const ORIGIN_MIB: u64 = 512;
/// What the guest writes on the origin after the clone checks, then
/// deletes and trims (3 files of `B_MIB` in lvol-guest.sh).
const B_BYTES: u64 = 3 * 32 * MIB;
const B_CLUSTERS: u64 = B_BYTES / CLUSTER;
/// Clusters ext4 may touch besides file data between two counts (bitmaps,
/// group descriptors, inode table blocks), and the partial clusters at the
/// ends of the files.
const SLACK: u64 = 2;

const NQN: &str = "nqn.2016-06.io.spdk:origin";
const HOST_NQN: &str = "nqn.2014-08.org.ironbay:rig-host";
const STEP_TIMEOUT: Duration = Duration::from_secs(900);

struct Rig {
    s: Stepped,
}

ironbay_tests::stepped_rig!(Rig);

impl Rig {
    fn lvstore(&self) -> Value {
        self.spdk(&["bdev_lvol_get_lvstores", "-l", "lvs0"])[0].clone()
    }

    fn free_clusters(&self) -> u64 {
        self.lvstore()["free_clusters"].as_u64().unwrap()
    }

    /// `num_allocated_clusters` of volume `name` in lvs0.
    fn allocated(&self, name: &str) -> u64 {
        let lvols = self.spdk(&["bdev_lvol_get_lvols", "-l", "lvs0"]);
        lvols
            .as_array()
            .and_then(|a| a.iter().find(|v| v["name"] == name))
            .and_then(|v| v["num_allocated_clusters"].as_u64())
            .unwrap_or_else(|| self.fail(&format!("no volume {name}: {lvols}")))
    }
}

fn timed<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let r = f();
    println!("{what}: {} ms", t.elapsed().as_millis());
    r
}

#[test]
#[ignore = "boots the appliance and a Linux guest in a network namespace; run through cargo xtask test"]
fn linux_ext4_on_thin_lvol_snapshot_clone_over_iscsi_and_fstrim() {
    let image =
        guest::build(&target_dir().join("rig")).unwrap_or_else(|e| panic!("rig guest: {e}"));
    let dir = ironbay_tests::scratch("rig-lvol");
    let disk = dir.join("nvme.img");
    std::fs::File::create(&disk).unwrap().set_len(DISK).unwrap();

    let ns = Netns::create("lvolrig").unwrap_or_else(|e| panic!("{e}"));
    let mut rig = Rig {
        s: Stepped::boot(ns, vec![Disk::nvme(0, 1, disk)], "", &[], STEP_TIMEOUT),
    };

    // The operator's part before the host connects.
    rig.spdk(&["bdev_lvol_create_lvstore", "Nvme0n1", "lvs0"]);
    let lvs = rig.lvstore();
    assert_eq!(lvs["cluster_size"], CLUSTER, "{lvs}");
    let total = lvs["total_data_clusters"].as_u64().unwrap();
    let free_empty = rig.free_clusters();
    assert_eq!(free_empty, total, "{lvs}");
    rig.spdk(&[
        "bdev_lvol_create",
        "-l",
        "lvs0",
        "-t",
        "origin",
        &ORIGIN_MIB.to_string(),
    ]);
    assert_eq!(rig.allocated("origin"), 0, "a new thin volume owns nothing");
    rig.spdk(&["nvmf_create_transport", "-t", "TCP"]);
    rig.spdk(&["nvmf_create_subsystem", NQN, "-s", "IRONBAYLVOL0001"]);
    rig.spdk(&["nvmf_subsystem_add_host", NQN, HOST_NQN]);
    rig.spdk(&["nvmf_subsystem_add_ns", NQN, "lvs0/origin"]);
    rig.spdk(&[
        "nvmf_subsystem_add_listener",
        NQN,
        "-t",
        "tcp",
        "-a",
        "0.0.0.0",
        "-s",
        "4420",
    ]);

    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/lvol-guest.sh");
    let mut host = vm::GuestVm::new(&script);
    host.ip = Some(format!("{GUEST_IP}/24"));
    host.mac = "52:54:00:1b:30:02".into();
    host.iqn = "iqn.2004-10.org.ironbay:rig-lvol".into();
    host.tap = Some(rig.ns.add_tap().unwrap());
    rig.guest = Some(host.start(&image, Some(&rig.ns)).unwrap());

    // 2. Snapshot of the mounted, frozen origin.
    rig.reach("snapshot");
    let written = rig.allocated("origin");
    let free_written = rig.free_clusters();
    println!(
        "before the snapshot: origin owns {written} clusters, store {free_written}/{total} free"
    );
    assert_eq!(
        free_empty - free_written,
        written,
        "only the origin took clusters"
    );
    assert!(
        written * CLUSTER >= 64 * MIB,
        "64 MiB of files but the origin owns {written} clusters"
    );
    timed("bdev_lvol_snapshot", || {
        rig.spdk(&["bdev_lvol_snapshot", "lvs0/origin", "snap0"])
    });
    let snap_owns = rig.allocated("snap0");
    assert_eq!(
        snap_owns, written,
        "the snapshot takes the origin's clusters"
    );
    assert_eq!(rig.allocated("origin"), 0, "the origin owns none after it");
    assert_eq!(
        rig.free_clusters(),
        free_written,
        "a snapshot copies nothing"
    );
    rig.release("snapshot");

    // 3. Its clone over iSCSI.
    rig.reach("clone");
    timed("bdev_lvol_clone", || {
        rig.spdk(&["bdev_lvol_clone", "lvs0/snap0", "clone0"])
    });
    rig.spdk(&["iscsi_create_portal_group", "1", "0.0.0.0:3260"]);
    rig.spdk(&["iscsi_create_initiator_group", "2", "ANY", "ANY"]);
    rig.spdk(&[
        "iscsi_create_target_node",
        "clone0",
        "clone0",
        "lvs0/clone0:0",
        "1:2",
        "64",
        "-d",
    ]);
    rig.release("clone");

    // 4. Thin provisioning and fstrim on the origin.
    rig.reach("before-b");
    assert_eq!(
        rig.allocated("snap0"),
        snap_owns,
        "writes to the origin and the clone left the snapshot alone"
    );
    let clone_owns = rig.allocated("clone0");
    assert!(clone_owns > 0, "the clone's writes took clusters");
    let (origin_0, free_0) = (rig.allocated("origin"), rig.free_clusters());
    rig.release("before-b");

    rig.reach("written-b");
    let (origin_1, free_1) = (rig.allocated("origin"), rig.free_clusters());
    rig.release("written-b");

    rig.reach("trimmed");
    let (origin_2, free_2) = (rig.allocated("origin"), rig.free_clusters());
    println!(
        "origin owns {origin_0} clusters before the {} MiB of new files, {origin_1} with them, \
         {origin_2} after rm + fstrim; store free {free_0} -> {free_1} -> {free_2} of {total} \
         (snapshot {snap_owns}, clone {clone_owns})",
        B_BYTES / MIB
    );
    println!(
        "fstrim returned {} clusters ({} MiB) to the store",
        free_2.saturating_sub(free_1),
        free_2.saturating_sub(free_1) * CLUSTER / MIB
    );
    assert!(
        origin_1 >= origin_0 + B_CLUSTERS - SLACK,
        "{B_CLUSTERS} clusters of new files but the origin went {origin_0} -> {origin_1}"
    );
    assert_eq!(
        free_0 - free_1,
        origin_1 - origin_0,
        "the new files took clusters for the origin only"
    );
    assert!(
        free_2 >= free_1 + B_CLUSTERS - SLACK,
        "fstrim freed {} clusters of the {B_CLUSTERS} the deleted files held \
         (free {free_1} -> {free_2})\n{}",
        free_2 as i64 - free_1 as i64,
        rig.output()
    );
    assert_eq!(
        free_2 - free_1,
        origin_1 - origin_2,
        "the clusters freed are the origin's"
    );
    assert!(
        origin_2 <= origin_0 + SLACK,
        "after rm + fstrim the origin owns {origin_2} clusters, {origin_0} before the files"
    );
    assert_eq!(rig.allocated("snap0"), snap_owns, "fstrim on the origin");
    assert_eq!(rig.allocated("clone0"), clone_owns, "fstrim on the origin");
    rig.release("trimmed");

    let guest = rig.guest.as_mut().unwrap();
    let (rc, out) = vm::finish(guest, STEP_TIMEOUT).unwrap_or_else(|e| panic!("guest: {e}"));
    println!("{out}");
    println!("[{:6.1} s] guest done", rig.started.elapsed().as_secs_f64());
    if rc != 0 {
        rig.fail(&format!("guest script failed (rc {rc})"));
    }
    for needle in [
        "FILES-WRITTEN",
        "THAWED",
        "CLONE-MOUNTED-CLEAN",
        "CLONE-SAME-FILES",
        "ORIGIN-UNCHANGED",
        "CLONE-FSCK-CLEAN",
        "CLONE-WRITES-KEPT",
        "TRIMMED",
        "ORIGIN-FILES-AFTER-TRIM",
        "ORIGIN-FSCK-CLEAN",
        "LVOL-GUEST-OK",
    ] {
        if !out.contains(needle) {
            rig.fail(&format!("guest output lacks `{needle}`"));
        }
    }
    // ext4 on both sides agreed with md5sum -c on every file checked.
    assert!(!out.contains("FAILED"), "{out}");
    let sectors = (ORIGIN_MIB * MIB / 512).to_string();
    assert!(
        out.contains(&format!("sectors={sectors} discard")),
        "origin size\n{out}"
    );
    assert!(
        out.contains(&format!("sectors={sectors}\n")),
        "clone size\n{out}"
    );
    drop(rig);
}
