//! Power cuts on the booted appliance: QEMU killed with SIGKILL at random
//! moments while logical volume operations and verified writes run, then
//! booted again on the same disk images, N times over (20 here; more with
//! `cargo xtask soak-crash --kills N`).
//!
//! The machine has an NVMe namespace holding one volume store (1 MiB
//! clusters) and, when the appliance has a config store, a virtio-blk disk
//! holding it (`config.store=VirtioBlk0`). Each cycle:
//!
//! 1. Boot. One cycle in six is killed during the boot instead (the store
//!    is tasted and its next checkpoint written then), and the next boot
//!    must find the same state.
//! 2. Check: the one store (UUID, name, cluster size, clusters, and that its
//!    free clusters are what the volumes leave), every volume (UUID, alias,
//!    size, thin and snapshot flags, the snapshot it is a clone of) and
//!    nothing more; with a config store, the RAM bdevs, the NVMe-oF
//!    transport and subsystems. Then every volume is read whole through its
//!    NBD export (nbdcopy) and each 512-byte sector must be one pattern the
//!    model allows at that block: the pattern of the last write run that
//!    finished (acknowledged and flushed) there, or of a run started after
//!    it, or, where none finished, what was there before (zeroes, the
//!    snapshot's data). Patterns are unique per run, so data of another
//!    volume or another place can never pass.
//! 3. Run: an operations thread sends a seeded random mix of
//!    `bdev_lvol_create` (thick and thin), `bdev_lvol_snapshot`,
//!    `bdev_lvol_clone`, `bdev_lvol_resize`, `bdev_lvol_delete`,
//!    `bdev_lvol_rename` and `bdev_lvol_rename_lvstore` (and, with a config
//!    store, RAM bdevs and NVMe-oF subsystems created and deleted) as raw
//!    JSON-RPC, and after each reply compares the live listing with the
//!    model; a writer thread runs fio's nbd engine over random regions of
//!    random writable volumes (sequential 4 KiB writes of one pattern with
//!    a flush every 16 writes and at the end, then read back and verified
//!    by fio). A reply that arrived means the operation is done; a fio run
//!    that exited 0 means its region is acknowledged and flushed.
//! 4. SIGKILL QEMU after a random time. An operation whose reply had not
//!    arrived may be there or not (either whole); the writes of a run that
//!    had not finished may be old or new, sector by sector.
//!
//! The NVMe disk keeps QEMU's default `discard=ignore`: a Dataset
//! Management deallocate leaves the data in place, which the NVMe spec
//! allows (deallocation is advisory even where DLFEAT says deallocated
//! blocks read zeroes), so clusters the store "zeroes" by deallocating
//! would show another volume's old data, and this test says so.
//!
//! The seed is printed (`IRONBAY_POWERCUT_SEED` replays it); the number of
//! kills is `IRONBAY_POWERCUT_KILLS` (20). A failure names the seed, the
//! cycle and the step, and carries the console of the boot that failed and
//! of the one killed before it. Traffic goes to 127.0.0.1 only, through
//! QEMU's port forwards. Run by `cargo xtask test`.

use ironbay_tests::READY;
use ironbay_tests::images::{kernel, require};
use ironbay_tests::machine::{Boot, Disk, Machine, Nic, free_port, sparse_disk};
use ironbay_tests::serial::Running;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
/// The model's data granule: fio's block size.
const BLOCK: u64 = 4096;
const BLOCKS_PER_MIB: usize = (MIB / BLOCK) as usize;
/// The NVMe namespace's block: the unit a torn write may leave.
const SECTOR: usize = 512;
const DISK_MIB: u64 = 64;
const CLUSTER: u64 = MIB;
const MAX_VOLUMES: usize = 10;
const MAX_VOLUME_MIB: u64 = 6;
/// Largest region one fio run writes.
const MAX_RUN: u64 = 512 * 1024;
/// Every fio run's pattern carries this in its top byte; the rest is the
/// run's number, so no two runs (in any cycle) write the same bytes.
const RUN_TAG: u32 = 0xa500_0000;
/// How long a reply, a boot, a read may take under TCG before it is a failure.
const SLOW: Duration = Duration::from_secs(120);

/// splitmix64: small, seedable, the same sequence everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [lo, hi].
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> Option<T> {
        (!items.is_empty()).then(|| items[self.next() as usize % items.len()])
    }

    fn chance(&mut self, one_in: u64) -> bool {
        self.next().is_multiple_of(one_in)
    }
}

// ---------------------------------------------------------------- the model

/// One volume as the appliance must show it, with the patterns each of its
/// 4 KiB blocks may hold (0 is zeroes).
#[derive(Clone, Debug)]
struct Vol {
    /// Unknown only for a create, snapshot or clone whose reply never came.
    uuid: Option<String>,
    name: String,
    mib: u64,
    /// Unknown from a snapshot or clone until the running appliance shows it.
    thin: Option<bool>,
    snapshot: bool,
    /// Model id of the snapshot this volume is a clone of.
    parent: Option<u64>,
    blocks: Vec<Vec<u32>>,
}

#[derive(Clone, Debug, Default)]
struct Model {
    lvs_uuid: String,
    lvs_name: String,
    total_clusters: u64,
    vols: BTreeMap<u64, Vol>,
    next_id: u64,
    /// With a config store: RAM bdevs and NVMe-oF subsystems (names).
    mallocs: BTreeSet<String>,
    subsystems: BTreeSet<String>,
}

impl Model {
    fn mib_used(&self) -> u64 {
        self.vols.values().map(|v| v.mib).sum()
    }

    fn clones_of(&self, id: u64) -> usize {
        self.vols.values().filter(|v| v.parent == Some(id)).count()
    }

    fn vol_ref(&self, id: u64) -> String {
        let v = &self.vols[&id];
        v.uuid
            .clone()
            .unwrap_or_else(|| format!("{}/{}", self.lvs_name, v.name))
    }

    fn alias(&self, id: u64) -> String {
        format!("{}/{}", self.lvs_name, self.vols[&id].name)
    }
}

#[derive(Clone, Debug)]
enum Op {
    Create { name: String, mib: u64, thin: bool },
    Snapshot { vol: u64, name: String },
    Clone { snap: u64, name: String },
    Resize { vol: u64, mib: u64 },
    Delete { vol: u64 },
    Rename { vol: u64, name: String },
    RenameStore { name: String },
    MallocCreate { name: String },
    MallocDelete { name: String },
    SubsystemCreate { nqn: String },
    SubsystemDelete { nqn: String },
}

impl Op {
    /// The JSON-RPC call, naming volumes by UUID or by alias.
    fn request(&self, m: &Model) -> (&'static str, Value) {
        match self {
            Op::Create { name, mib, thin } => (
                "bdev_lvol_create",
                json!({"lvol_name": name, "size_in_mib": mib, "thin_provision": thin,
                       "lvs_name": m.lvs_name}),
            ),
            Op::Snapshot { vol, name } => (
                "bdev_lvol_snapshot",
                json!({"lvol_name": m.alias(*vol), "snapshot_name": name}),
            ),
            Op::Clone { snap, name } => (
                "bdev_lvol_clone",
                json!({"snapshot_name": m.alias(*snap), "clone_name": name}),
            ),
            Op::Resize { vol, mib } => (
                "bdev_lvol_resize",
                json!({"name": m.vol_ref(*vol), "size_in_mib": mib}),
            ),
            Op::Delete { vol } => ("bdev_lvol_delete", json!({"name": m.vol_ref(*vol)})),
            Op::Rename { vol, name } => (
                "bdev_lvol_rename",
                json!({"old_name": m.alias(*vol), "new_name": name}),
            ),
            Op::RenameStore { name } => (
                "bdev_lvol_rename_lvstore",
                json!({"old_name": m.lvs_name, "new_name": name}),
            ),
            Op::MallocCreate { name } => (
                "bdev_malloc_create",
                json!({"name": name, "num_blocks": 2048, "block_size": 512}),
            ),
            Op::MallocDelete { name } => ("bdev_malloc_delete", json!({"name": name})),
            Op::SubsystemCreate { nqn } => (
                "nvmf_create_subsystem",
                json!({"nqn": nqn, "allow_any_host": true}),
            ),
            Op::SubsystemDelete { nqn } => ("nvmf_delete_subsystem", json!({"nqn": nqn})),
        }
    }

    /// The model after this operation: `uuid` from its reply (None when no
    /// reply came), `sent` the origin's blocks when a snapshot was sent.
    fn apply(&self, m: &Model, uuid: Option<String>, sent: Option<&[Vec<u32>]>) -> Model {
        let mut m = m.clone();
        let id = m.next_id;
        match self {
            Op::Create { name, mib, thin } => {
                m.next_id += 1;
                m.vols.insert(
                    id,
                    Vol {
                        uuid,
                        name: name.clone(),
                        mib: *mib,
                        thin: Some(*thin),
                        snapshot: false,
                        parent: None,
                        blocks: vec![vec![0]; *mib as usize * BLOCKS_PER_MIB],
                    },
                );
            }
            Op::Snapshot { vol, name } => {
                m.next_id += 1;
                let origin = m.vols.get_mut(vol).expect("origin");
                // What the snapshot froze: each block as it was when the
                // request left, or as any write begun before the reply
                // made it.
                let mut blocks = origin.blocks.clone();
                for (b, old) in blocks.iter_mut().zip(sent.unwrap_or(&[])) {
                    union(b, old);
                }
                let snap = Vol {
                    uuid,
                    name: name.clone(),
                    mib: origin.mib,
                    thin: None,
                    snapshot: true,
                    parent: origin.parent,
                    blocks,
                };
                origin.parent = Some(id);
                origin.thin = None;
                m.vols.insert(id, snap);
            }
            Op::Clone { snap, name } => {
                m.next_id += 1;
                let s = &m.vols[snap];
                let clone = Vol {
                    uuid,
                    name: name.clone(),
                    mib: s.mib,
                    thin: None,
                    snapshot: false,
                    parent: Some(*snap),
                    blocks: s.blocks.clone(),
                };
                m.vols.insert(id, clone);
            }
            Op::Resize { vol, mib } => {
                let parent_blocks = m.vols[vol]
                    .parent
                    .map(|p| m.vols[&p].blocks.clone())
                    .unwrap_or_default();
                let v = m.vols.get_mut(vol).expect("volume");
                let old = v.blocks.len();
                let new = *mib as usize * BLOCKS_PER_MIB;
                v.blocks.truncate(new);
                // Blocks that come back read zeroes; a clone's may read its
                // snapshot's again (not modelled more tightly than that).
                for i in old.min(new)..new {
                    let mut b = vec![0];
                    if let Some(p) = parent_blocks.get(i) {
                        union(&mut b, p);
                    }
                    v.blocks.push(b);
                }
                v.mib = *mib;
            }
            Op::Delete { vol } => {
                let gone = m.vols.remove(vol).expect("volume");
                for v in m.vols.values_mut() {
                    if v.parent == Some(*vol) {
                        v.parent = gone.parent;
                    }
                }
            }
            Op::Rename { vol, name } => m.vols.get_mut(vol).expect("volume").name = name.clone(),
            Op::RenameStore { name } => m.lvs_name = name.clone(),
            Op::MallocCreate { name } => {
                m.mallocs.insert(name.clone());
            }
            Op::MallocDelete { name } => {
                m.mallocs.remove(name);
            }
            Op::SubsystemCreate { nqn } => {
                m.subsystems.insert(nqn.clone());
            }
            Op::SubsystemDelete { nqn } => {
                m.subsystems.remove(nqn);
            }
        }
        m
    }

    fn describe(&self, m: &Model) -> String {
        let (method, params) = self.request(m);
        format!("{method} {params}")
    }
}

fn union(into: &mut Vec<u32>, from: &[u32]) {
    for p in from {
        if !into.contains(p) {
            into.push(*p);
        }
    }
}

// ------------------------------------------------------------- the machine

/// A JSON-RPC call: `Err` if no reply came (the machine died), else the
/// reply's result or its error object.
fn rpc(port: u16, method: &str, params: Value) -> Result<Result<Value, Value>, String> {
    let req = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(1)))
        .map_err(|e| e.to_string())?;
    s.write_all(req.to_string().as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let deadline = Instant::now() + SLOW;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Err(format!("{method}: closed before a reply")),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(format!("{method}: {e}")),
        }
        if let Ok(v) = serde_json::from_slice::<Value>(&got) {
            return Ok(match v.get("error") {
                Some(e) => Err(e.clone()),
                None => Ok(v["result"].clone()),
            });
        }
        if Instant::now() > deadline {
            return Err(format!("{method}: no reply within {SLOW:?}"));
        }
    }
}

/// A logical volume bdev as `bdev_get_bdevs` shows it.
#[derive(Debug)]
struct SeenVol {
    uuid: String,
    alias: String,
    bytes: u64,
    thin: bool,
    snapshot: bool,
    base_snapshot: Option<String>,
    allocated_clusters: u64,
}

/// What the appliance shows, in the model's terms.
#[derive(Debug, Default)]
struct Seen {
    stores: Vec<Value>,
    vols: Vec<SeenVol>,
    mallocs: BTreeSet<String>,
    subsystems: BTreeSet<String>,
    transports: Vec<String>,
}

fn call_ok(port: u16, method: &str, params: Value) -> Result<Value, String> {
    rpc(port, method, params)?.map_err(|e| format!("{method}: error {e}"))
}

fn observe(rpc_port: u16, config: bool) -> Result<Seen, String> {
    let mut seen = Seen {
        stores: call_ok(rpc_port, "bdev_lvol_get_lvstores", json!({}))?
            .as_array()
            .cloned()
            .unwrap_or_default(),
        ..Seen::default()
    };
    let bdevs = call_ok(rpc_port, "bdev_get_bdevs", json!({}))?;
    for b in bdevs.as_array().into_iter().flatten() {
        let name = b["name"].as_str().unwrap_or("").to_string();
        if b["product_name"] == "Malloc disk" {
            seen.mallocs.insert(name);
        } else if b["product_name"] == "Logical Volume" {
            let l = &b["driver_specific"]["lvol"];
            seen.vols.push(SeenVol {
                uuid: name,
                alias: b["aliases"][0].as_str().unwrap_or("").to_string(),
                bytes: b["num_blocks"].as_u64().unwrap_or(0)
                    * b["block_size"].as_u64().unwrap_or(0),
                thin: l["thin_provision"].as_bool().unwrap_or(false),
                snapshot: l["snapshot"].as_bool().unwrap_or(false),
                base_snapshot: l["base_snapshot"].as_str().map(String::from),
                allocated_clusters: l["num_allocated_clusters"].as_u64().unwrap_or(0),
            });
        }
    }
    if config {
        let subs = call_ok(rpc_port, "nvmf_get_subsystems", json!({}))?;
        for s in subs.as_array().into_iter().flatten() {
            if s["subtype"] != "Discovery" {
                seen.subsystems
                    .insert(s["nqn"].as_str().unwrap_or("").to_string());
            }
        }
        let t = call_ok(rpc_port, "nvmf_get_transports", json!({}))?;
        for t in t.as_array().into_iter().flatten() {
            seen.transports
                .push(t["trtype"].as_str().unwrap_or("").to_string());
        }
    }
    Ok(seen)
}

/// Compares what is seen with a model: the UUIDs and thin flags learned
/// (by model id), or what differs. `quiet`: no writes run, so the store's
/// free clusters must be exactly what the volumes leave.
fn compare(
    m: &Model,
    s: &Seen,
    config: bool,
    quiet: bool,
) -> Result<Vec<(u64, String, bool)>, String> {
    let mut diff = Vec::new();
    match s.stores.as_slice() {
        [l] => {
            for (k, want) in [
                ("uuid", json!(m.lvs_uuid)),
                ("name", json!(m.lvs_name)),
                ("cluster_size", json!(CLUSTER)),
                ("total_data_clusters", json!(m.total_clusters)),
            ] {
                if l[k] != want {
                    diff.push(format!("store {k}: {} (want {want})", l[k]));
                }
            }
            let allocated: u64 = s.vols.iter().map(|v| v.allocated_clusters).sum();
            let free = l["free_clusters"].as_u64().unwrap_or(u64::MAX);
            if quiet && allocated + free != m.total_clusters {
                diff.push(format!(
                    "store: {free} free clusters + {allocated} allocated to volumes != {} total",
                    m.total_clusters
                ));
            }
        }
        other => diff.push(format!(
            "want exactly one store, found {}: {other:?}",
            other.len()
        )),
    }
    let mut learned = Vec::new();
    let mut matched = BTreeSet::new();
    for (&id, v) in &m.vols {
        let alias = format!("{}/{}", m.lvs_name, v.name);
        let hit = s.vols.iter().position(|x| match &v.uuid {
            Some(u) => &x.uuid == u,
            None => x.alias == alias,
        });
        let Some(i) = hit else {
            diff.push(format!("volume {alias} ({:?}) is missing", v.uuid));
            continue;
        };
        matched.insert(i);
        let SeenVol {
            uuid,
            alias: got_alias,
            bytes,
            thin,
            snapshot,
            base_snapshot: base,
            ..
        } = &s.vols[i];
        if *got_alias != alias {
            diff.push(format!("volume {uuid}: alias {got_alias}, want {alias}"));
        }
        if *bytes != v.mib * MIB {
            diff.push(format!(
                "volume {alias}: {bytes} bytes, want {}",
                v.mib * MIB
            ));
        }
        if v.thin.is_some_and(|t| t != *thin) {
            diff.push(format!("volume {alias}: thin {thin}, want {:?}", v.thin));
        }
        if *snapshot != v.snapshot {
            diff.push(format!(
                "volume {alias}: snapshot {snapshot}, want {}",
                v.snapshot
            ));
        }
        let want_base = v
            .parent
            .and_then(|p| m.vols.get(&p))
            .map(|p| p.name.clone());
        if *base != want_base {
            diff.push(format!(
                "volume {alias}: base_snapshot {base:?}, want {want_base:?}"
            ));
        }
        learned.push((id, uuid.clone(), *thin));
    }
    for (i, x) in s.vols.iter().enumerate() {
        if !matched.contains(&i) {
            diff.push(format!("unexpected volume {} ({})", x.alias, x.uuid));
        }
    }
    if config {
        if s.mallocs != m.mallocs {
            diff.push(format!("RAM bdevs {:?}, want {:?}", s.mallocs, m.mallocs));
        }
        if s.subsystems != m.subsystems {
            diff.push(format!(
                "NVMe-oF subsystems {:?}, want {:?}",
                s.subsystems, m.subsystems
            ));
        }
        if s.transports != ["TCP"] {
            diff.push(format!("NVMe-oF transports {:?}, want [TCP]", s.transports));
        }
    }
    if diff.is_empty() {
        Ok(learned)
    } else {
        Err(diff.join("\n"))
    }
}

fn learn(m: &mut Model, learned: &[(u64, String, bool)]) {
    for (id, uuid, thin) in learned {
        if let Some(v) = m.vols.get_mut(id) {
            v.uuid = Some(uuid.clone());
            v.thin = Some(*thin);
        }
    }
}

struct Vm {
    vm: Running,
    rpc: u16,
    nbd: u16,
}

fn start(nvme: &Path, cfg: &Path, config: bool) -> Vm {
    let (rpc, nbd) = (free_port(), free_port());
    let store = if config {
        " config.store=VirtioBlk0"
    } else {
        ""
    };
    let mut m = Machine::new(Boot::Kernel {
        image: require(&kernel()),
        append: format!("mgmt.ip=10.0.2.15/24 mgmt.gw=10.0.2.2 data.ip=10.0.3.15/24{store}"),
        config: None,
    });
    m.disks = vec![
        Disk::nvme(0, 1, nvme.to_path_buf()),
        Disk::virtio(cfg.to_path_buf()),
    ];
    m.forwards = vec![(Nic::Mgmt, rpc, 5260), (Nic::Data, nbd, 10809)];
    let vm = Running::spawn(m.command()).expect("start qemu");
    Vm { vm, rpc, nbd }
}

fn tail(text: &str, bytes: usize) -> &str {
    let mut start = text.len().saturating_sub(bytes);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// Reads a whole export through nbdcopy.
fn read_export(nbd: u16, name: &str) -> Result<Vec<u8>, String> {
    let out = Command::new("nbdcopy")
        .args([&format!("nbd://127.0.0.1:{nbd}/{name}"), "-"])
        .output()
        .map_err(|e| format!("nbdcopy (libnbd-bin): {e}"))?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(format!(
            "nbdcopy of export {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

// ---------------------------------------------------------------- the run

/// A fio run: its volume and region, for reports.
#[derive(Clone)]
struct RunInfo {
    vol: String,
    offset: u64,
    len: u64,
    cycle: u32,
    done: bool,
}

impl std::fmt::Display for RunInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "fio run of cycle {} on {} [{}, +{}){}",
            self.cycle,
            self.vol,
            self.offset,
            self.len,
            if self.done {
                ", finished"
            } else {
                ", not finished"
            }
        )
    }
}

#[derive(Default)]
struct Shared {
    model: Model,
    /// The operation sent whose reply has not come, with the origin's
    /// blocks when it was sent (snapshots).
    pending: Option<(Op, Option<Vec<Vec<u32>>>)>,
    /// Volume fio is writing; volume an operation may shrink or delete.
    writing: Option<u64>,
    op_target: Option<u64>,
    runs: BTreeMap<u32, RunInfo>,
    next_run: u32,
    next_name: u64,
    failures: Vec<String>,
    /// What happened, in order, for failure reports.
    events: Vec<String>,
    acked: u32,
    runs_done: u32,
}

struct Cycle<'a> {
    shared: &'a Mutex<Shared>,
    killed: &'a AtomicBool,
    rpc: u16,
    nbd: u16,
    config: bool,
    cycle: u32,
}

impl Cycle<'_> {
    fn fail(&self, what: String) {
        if !self.killed.load(Ordering::SeqCst) {
            self.shared.lock().unwrap().failures.push(what);
        }
    }

    fn choose(&self, sh: &mut Shared, rng: &mut Rng) -> Option<Op> {
        let m = &sh.model;
        let mut name = |prefix: &str| {
            sh.next_name += 1;
            format!("{prefix}{}", sh.next_name)
        };
        let room = (m.total_clusters - 2).saturating_sub(m.mib_used());
        let ids: Vec<u64> = m.vols.keys().copied().collect();
        let plain: Vec<u64> = ids
            .iter()
            .copied()
            .filter(|i| !m.vols[i].snapshot)
            .collect();
        let snaps: Vec<u64> = ids.iter().copied().filter(|i| m.vols[i].snapshot).collect();
        let free: Vec<u64> = ids
            .iter()
            .copied()
            .filter(|i| Some(*i) != sh.writing && (!m.vols[i].snapshot || m.clones_of(*i) <= 1))
            .collect();
        let full = m.vols.len() >= MAX_VOLUMES;
        let op = match rng.range(0, 16) {
            0..=2 if !full && room >= 1 => Op::Create {
                name: name("v"),
                mib: rng.range(1, MAX_VOLUME_MIB.min(room)),
                thin: rng.chance(2),
            },
            3..=4 if !full => {
                let vol = rng.pick(&plain)?;
                (m.vols[&vol].mib <= room).then_some(())?;
                Op::Snapshot {
                    vol,
                    name: name("s"),
                }
            }
            5..=6 if !full => {
                let snap = rng.pick(&snaps)?;
                (m.vols[&snap].mib <= room).then_some(())?;
                Op::Clone {
                    snap,
                    name: name("c"),
                }
            }
            7..=9 => {
                let vol = rng.pick(&plain)?;
                let old = m.vols[&vol].mib;
                let hi = MAX_VOLUME_MIB.min(old + room);
                let mib = rng.range(1, hi);
                (mib != old && (mib > old || Some(vol) != sh.writing)).then_some(())?;
                Op::Resize { vol, mib }
            }
            10..=11 => Op::Delete {
                vol: rng.pick(&free)?,
            },
            12..=13 => {
                let vol = rng.pick(&ids)?;
                Op::Rename {
                    vol,
                    name: name("r"),
                }
            }
            14 if rng.chance(3) => Op::RenameStore { name: name("lvs") },
            15 | 16 if self.config => {
                let mallocs: Vec<&String> = m.mallocs.iter().collect();
                let subs: Vec<&String> = m.subsystems.iter().collect();
                match rng.range(0, 3) {
                    0 if mallocs.len() < 4 => Op::MallocCreate { name: name("cfg") },
                    1 => Op::MallocDelete {
                        name: rng.pick(&mallocs)?.clone(),
                    },
                    2 if subs.len() < 4 => Op::SubsystemCreate {
                        nqn: format!("nqn.2016-06.io.spdk:{}", name("pc")),
                    },
                    _ => Op::SubsystemDelete {
                        nqn: rng.pick(&subs)?.clone(),
                    },
                }
            }
            _ => return None,
        };
        Some(op)
    }

    /// The operations thread: one request at a time until the machine dies.
    fn operations(&self, mut rng: Rng) {
        while !self.killed.load(Ordering::SeqCst) {
            let (op, method, params) = {
                let mut sh = self.shared.lock().unwrap();
                let Some(op) = self.choose(&mut sh, &mut rng) else {
                    drop(sh);
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let (method, params) = op.request(&sh.model);
                let sent = match &op {
                    Op::Snapshot { vol, .. } => Some(sh.model.vols[vol].blocks.clone()),
                    _ => None,
                };
                sh.op_target = match &op {
                    Op::Delete { vol } | Op::Resize { vol, .. } => Some(*vol),
                    _ => None,
                };
                sh.pending = Some((op.clone(), sent));
                (op, method, params)
            };
            let reply = match rpc(self.rpc, method, params.clone()) {
                Ok(r) => r,
                Err(e) => {
                    // Pending stays: it may be done or not.
                    self.fail(format!("{method} {params}: {e} while the machine ran"));
                    return;
                }
            };
            {
                let mut sh = self.shared.lock().unwrap();
                let (_, sent) = sh.pending.take().expect("pending");
                sh.op_target = None;
                match reply {
                    Ok(result) => {
                        let line = format!(
                            "cycle {}: {} -> {result}",
                            self.cycle,
                            op.describe(&sh.model)
                        );
                        sh.events.push(line);
                        let uuid = result.as_str().map(String::from);
                        sh.model = op.apply(&sh.model, uuid, sent.as_deref());
                        sh.acked += 1;
                    }
                    Err(e) => {
                        drop(sh);
                        self.fail(format!("{method} {params} refused: {e}"));
                        return;
                    }
                }
            }
            // The running appliance shows what the model says.
            let seen = match observe(self.rpc, self.config) {
                Ok(s) => s,
                Err(e) => {
                    self.fail(format!("listing after {method}: {e}"));
                    return;
                }
            };
            let mut sh = self.shared.lock().unwrap();
            match compare(&sh.model, &seen, self.config, false) {
                Ok(learned) => learn(&mut sh.model, &learned),
                Err(diff) => {
                    drop(sh);
                    self.fail(format!(
                        "cycle {}: after {method} {params} the live listing differs from the model:\n{diff}",
                        self.cycle
                    ));
                    return;
                }
            }
            drop(sh);
            std::thread::sleep(Duration::from_millis(rng.range(0, 150)));
        }
    }

    /// The writer thread: fio runs over random regions until the machine dies.
    fn writer(&self, mut rng: Rng) {
        while !self.killed.load(Ordering::SeqCst) {
            let (id, uuid, offset, len, run) = {
                let mut sh = self.shared.lock().unwrap();
                let m = &sh.model;
                let ids: Vec<u64> = m
                    .vols
                    .iter()
                    .filter(|(i, v)| !v.snapshot && v.uuid.is_some() && Some(**i) != sh.op_target)
                    .map(|(i, _)| *i)
                    .collect();
                let Some(id) = rng.pick(&ids) else {
                    drop(sh);
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                };
                let v = &m.vols[&id];
                let size = v.mib * MIB;
                let offset = rng.range(0, size / BLOCK - 1) * BLOCK;
                let len = rng.range(1, MAX_RUN.min(size - offset) / BLOCK) * BLOCK;
                let uuid = v.uuid.clone().expect("uuid");
                let name = v.name.clone();
                sh.next_run += 1;
                let run = sh.next_run;
                let p = RUN_TAG | run;
                let blocks = &mut sh.model.vols.get_mut(&id).expect("volume").blocks;
                for b in &mut blocks[(offset / BLOCK) as usize..((offset + len) / BLOCK) as usize] {
                    union(b, &[p]);
                }
                sh.runs.insert(
                    p,
                    RunInfo {
                        vol: name,
                        offset,
                        len,
                        cycle: self.cycle,
                        done: false,
                    },
                );
                sh.writing = Some(id);
                let line = format!(
                    "cycle {}: fio {:#010x} on {uuid} [{offset}, +{len}) starts",
                    self.cycle,
                    RUN_TAG | run
                );
                sh.events.push(line);
                (id, uuid, offset, len, run)
            };
            let p = RUN_TAG | run;
            let result = fio(self.nbd, &uuid, offset, len, p);
            let mut sh = self.shared.lock().unwrap();
            sh.writing = None;
            match result {
                Ok(()) => {
                    if let Some(v) = sh.model.vols.get_mut(&id) {
                        let end = ((offset + len) / BLOCK) as usize;
                        for b in &mut v.blocks[(offset / BLOCK) as usize..end] {
                            *b = vec![p];
                        }
                    }
                    if let Some(r) = sh.runs.get_mut(&p) {
                        r.done = true;
                    }
                    sh.runs_done += 1;
                    let line = format!("cycle {}: fio {p:#010x} finished", self.cycle);
                    sh.events.push(line);
                }
                Err(e) => {
                    drop(sh);
                    self.fail(format!(
                        "cycle {}: fio run {p:#010x} on {uuid} [{offset}, +{len}): {e}",
                        self.cycle
                    ));
                    return;
                }
            }
        }
    }
}

/// One fio run: sequential 4 KiB writes of pattern `p` over the region, a
/// flush every 16 writes and at the end, then read back and verified.
fn fio(nbd: u16, export: &str, offset: u64, len: u64, p: u32) -> Result<(), String> {
    let mut child = Command::new("fio")
        .args([
            "--name=powercut",
            "--ioengine=nbd",
            &format!("--uri=nbd://127.0.0.1:{nbd}/{export}"),
            "--rw=write",
            "--bs=4k",
            "--iodepth=8",
            &format!("--offset={offset}"),
            &format!("--size={len}"),
            "--verify=pattern",
            &format!("--verify_pattern={p:#010x}"),
            "--do_verify=1",
            "--verify_fatal=1",
            "--fsync=16",
            "--end_fsync=1",
            "--output-format=terse",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("fio: {e}"))?;
    let deadline = Instant::now() + SLOW;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                break;
            }
        }
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "fio {}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Reads every volume and checks each sector against the model; narrows
/// each block to what was found (it is on the disk now). The bytes checked.
fn check_data(sh: &mut Shared, nbd: u16) -> Result<u64, String> {
    let mut bytes = 0;
    let ids: Vec<u64> = sh.model.vols.keys().copied().collect();
    for id in ids {
        let v = &sh.model.vols[&id];
        let uuid = v.uuid.clone().expect("uuid learned");
        let data = read_export(nbd, &uuid)?;
        if data.len() as u64 != v.mib * MIB {
            return Err(format!(
                "volume {} ({uuid}): read {} bytes, want {}",
                v.name,
                data.len(),
                v.mib * MIB
            ));
        }
        let mut found = Vec::with_capacity(v.blocks.len());
        for (i, allowed) in v.blocks.iter().enumerate() {
            let mut here = Vec::new();
            for (j, sector) in data[i * BLOCK as usize..(i + 1) * BLOCK as usize]
                .chunks(SECTOR)
                .enumerate()
            {
                let word = u32::from_be_bytes(sector[..4].try_into().unwrap());
                let uniform = sector.chunks(4).all(|w| w == word.to_be_bytes());
                if !uniform || !allowed.contains(&word) {
                    let off = i as u64 * BLOCK + (j * SECTOR) as u64;
                    let whose = sh
                        .runs
                        .get(&word)
                        .map_or("no run of this test".to_string(), |r| r.to_string());
                    let want: Vec<String> = allowed
                        .iter()
                        .map(|p| match sh.runs.get(p) {
                            Some(r) => format!("{p:#010x} ({r})"),
                            None => format!("{p:#010x}"),
                        })
                        .collect();
                    return Err(format!(
                        "volume {} ({uuid}) byte {off}: found {:02x?}{} (written by: {whose}); allowed here: {}",
                        v.name,
                        &sector[..16],
                        if uniform { "" } else { " (sector not uniform)" },
                        want.join(", ")
                    ));
                }
                union(&mut here, &[word]);
            }
            found.push(here);
        }
        bytes += data.len() as u64;
        sh.model.vols.get_mut(&id).expect("volume").blocks = found;
    }
    Ok(bytes)
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[test]
#[ignore = "boots QEMU; run through cargo xtask test"]
fn stores_config_and_flushed_writes_survive_sigkill() {
    let kills = env_u64("IRONBAY_POWERCUT_KILLS").unwrap_or(20) as u32;
    let seed = env_u64("IRONBAY_POWERCUT_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    println!("powercut: seed {seed} (IRONBAY_POWERCUT_SEED={seed} replays it), {kills} kills");
    let mut rng = Rng(seed);
    // One folder per seed, so a soak and a test can run side by side.
    let dir = ironbay_tests::scratch(&format!("powercut-{seed}"));
    let (nvme, cfg) = (dir.join("nvme.img"), dir.join("config.img"));
    sparse_disk(&nvme, DISK_MIB * MIB).unwrap();
    sparse_disk(&cfg, 8 * MIB).unwrap();
    let run = PowerCut {
        seed,
        dir: dir.clone(),
        nvme,
        cfg,
        started: Instant::now(),
    };
    run.cycles(&mut rng, kills);
}

struct PowerCut {
    seed: u64,
    dir: PathBuf,
    nvme: PathBuf,
    cfg: PathBuf,
    started: Instant,
}

impl PowerCut {
    fn cycles(&self, rng: &mut Rng, kills: u32) {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let mut config = true;
        let mut last_console = String::new();
        let mut stats = (0u32, 0u32, 0u64, 0u32);
        for cycle in 1..=kills {
            let mut vm = start(&self.nvme, &self.cfg, config);
            let report = |vm: &Vm, step: &str, what: String, last: &str| {
                let console = vm.vm.output();
                let events = shared
                    .try_lock()
                    .map(|sh| sh.events.join("\n"))
                    .unwrap_or_default();
                let _ = std::fs::write(self.dir.join("console-failed.log"), &console);
                let _ = std::fs::write(self.dir.join("console-killed-before.log"), last);
                let _ = std::fs::write(self.dir.join("events.log"), &events);
                format!(
                    "powercut seed {} cycle {cycle}/{kills}, {step}:\n{what}\n\
                     ----- the last events (all in {}) -----\n{}\n\
                     ----- console of this boot -----\n{}\n\
                     ----- console of the boot killed before (tail) -----\n{}",
                    self.seed,
                    self.dir.join("events.log").display(),
                    tail(&events, 8000),
                    tail(&console, 12000),
                    tail(last, 6000)
                )
            };
            // Sometimes the cut comes while the appliance boots and tastes.
            if cycle > 1 && rng.chance(6) {
                std::thread::sleep(Duration::from_millis(rng.range(0, 1500)));
                vm.vm.kill();
                println!(
                    "cycle {cycle}/{kills} [{:>4}s]: killed while booting (ready: {})",
                    self.started.elapsed().as_secs(),
                    vm.vm.output().contains(READY)
                );
                last_console = vm.vm.output();
                continue;
            }
            if let Err(e) = vm.vm.wait_for(READY, SLOW) {
                panic!("{}", report(&vm, "boot", e, &last_console));
            }
            let checked = if cycle == 1 {
                config = self.setup(&vm, &shared);
                None
            } else {
                match self.check(&vm, &shared, config) {
                    Ok(c) => Some(c),
                    Err(e) => panic!("{}", report(&vm, "check after reboot", e, &last_console)),
                }
            };
            // Run until the cut.
            let killed = Arc::new(AtomicBool::new(false));
            let (ops_rng, writer_rng) = (Rng(rng.next()), Rng(rng.next()));
            let run_for = Duration::from_millis(rng.range(300, 6000));
            let before = {
                let sh = shared.lock().unwrap();
                (sh.acked, sh.runs_done)
            };
            let c = Cycle {
                shared: &shared,
                killed: &killed,
                rpc: vm.rpc,
                nbd: vm.nbd,
                config,
                cycle,
            };
            std::thread::scope(|s| {
                let c = &c;
                s.spawn(move || c.operations(ops_rng));
                s.spawn(move || c.writer(writer_rng));
                std::thread::sleep(run_for);
                killed.store(true, Ordering::SeqCst);
                vm.vm.kill();
            });
            last_console = vm.vm.output();
            let mut sh = shared.lock().unwrap();
            if !sh.failures.is_empty() {
                let f = sh.failures.join("\n");
                drop(sh);
                panic!("{}", report(&vm, "while running (before the kill)", f, ""));
            }
            let pending = sh
                .pending
                .as_ref()
                .map_or("nothing".into(), |(op, _)| op.describe(&sh.model));
            // A run the kill cut short stays "may be old or new" in the model.
            let in_run = sh.runs.values().any(|r| r.cycle == cycle && !r.done);
            sh.writing = None;
            sh.op_target = None;
            println!(
                "cycle {cycle}/{kills} [{:>4}s]: {}killed after {run_for:?}: {} operations and {} fio runs acknowledged, in flight: {pending}{}",
                self.started.elapsed().as_secs(),
                checked.map_or(String::new(), |(v, b)| format!(
                    "checked {v} volumes, {} KiB; ",
                    b / 1024
                )),
                sh.acked - before.0,
                sh.runs_done - before.1,
                if in_run { " and a fio run" } else { "" },
            );
            stats.0 += sh.acked - before.0;
            stats.1 += sh.runs_done - before.1;
            if let Some((v, b)) = checked {
                stats.2 += b;
                stats.3 += v as u32;
            }
        }
        // The last cut is checked too.
        let vm = start(&self.nvme, &self.cfg, config);
        let mut vm = vm;
        if let Err(e) = vm.vm.wait_for(READY, SLOW) {
            panic!("powercut seed {}: final boot: {e}", self.seed);
        }
        match self.check(&vm, &shared, config) {
            Ok((v, b)) => {
                stats.2 += b;
                stats.3 += v as u32;
            }
            Err(e) => panic!(
                "powercut seed {}, final check:\n{e}\n----- console -----\n{}\n----- killed before -----\n{}",
                self.seed,
                tail(&vm.vm.output(), 12000),
                tail(&last_console, 6000)
            ),
        }
        println!(
            "powercut seed {}: {kills} kills in {:?}; {} operations and {} fio runs acknowledged; {} volume checks, {} MiB verified; config store {}",
            self.seed,
            self.started.elapsed(),
            stats.0,
            stats.1,
            stats.3,
            stats.2 / MIB,
            if config {
                "checked"
            } else {
                "absent (not checked)"
            }
        );
    }

    /// First boot: the store, and the config store if the appliance has one.
    fn setup(&self, vm: &Vm, shared: &Mutex<Shared>) -> bool {
        let uuid = call_ok(
            vm.rpc,
            "bdev_lvol_create_lvstore",
            json!({"bdev_name": "Nvme0n1", "lvs_name": "lvs0", "cluster_sz": CLUSTER}),
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", vm.vm.output()));
        let stores = call_ok(vm.rpc, "bdev_lvol_get_lvstores", json!({})).unwrap();
        let total = stores[0]["total_data_clusters"].as_u64().unwrap();
        let config = match rpc(vm.rpc, "config_store_get", json!({})) {
            Ok(Ok(st)) if st["bdev_name"] == "VirtioBlk0" => {
                call_ok(vm.rpc, "nvmf_create_transport", json!({"trtype": "TCP"})).unwrap();
                true
            }
            other => {
                println!("powercut: no config store ({other:?}); stores, volumes and data only");
                false
            }
        };
        let mut sh = shared.lock().unwrap();
        sh.model.lvs_uuid = uuid.as_str().unwrap().to_string();
        sh.model.lvs_name = "lvs0".into();
        sh.model.total_clusters = total;
        println!("powercut: store {uuid} with {total} clusters of 1 MiB");
        config
    }

    /// After a reboot: the state is the model, or (an operation in flight)
    /// the model with it done; then the data.
    fn check(&self, vm: &Vm, shared: &Mutex<Shared>, config: bool) -> Result<(usize, u64), String> {
        // The store is tasted at boot; give it time.
        let deadline = Instant::now() + SLOW;
        let seen = loop {
            let s = observe(vm.rpc, config)?;
            if !s.stores.is_empty() || Instant::now() > deadline {
                break s;
            }
            std::thread::sleep(Duration::from_millis(300));
        };
        let mut sh = shared.lock().unwrap();
        let mut candidates = vec![("as acknowledged", sh.model.clone())];
        if let Some((op, sent)) = &sh.pending {
            candidates.push((
                "with the operation in flight done",
                op.apply(&sh.model, None, sent.as_deref()),
            ));
        }
        let mut diffs = Vec::new();
        let mut adopted = None;
        for (what, m) in candidates {
            match compare(&m, &seen, config, true) {
                Ok(learned) => {
                    let mut m = m;
                    learn(&mut m, &learned);
                    adopted = Some(m);
                    break;
                }
                Err(d) => diffs.push(format!("-- {what}:\n{d}")),
            }
        }
        let Some(m) = adopted else {
            let pending = sh
                .pending
                .as_ref()
                .map_or("nothing".into(), |(op, _)| op.describe(&sh.model));
            return Err(format!(
                "the state after the reboot is not what was acknowledged (in flight at the kill: {pending}):\n{}\nseen: {seen:#?}",
                diffs.join("\n")
            ));
        };
        sh.model = m;
        sh.pending = None;
        let bytes = check_data(&mut sh, vm.nbd)?;
        Ok((sh.model.vols.len(), bytes))
    }
}
