//! `bench lvol`: logical volumes against the raw NVMe bdev under them, all
//! over JSON-RPC in one boot of the appliance with two QEMU NVMe disks:
//! - the raw disk (`REGION_MIB`, filled) and a thick volume as large on a
//!   store on the other disk (whose data area is filled the same way, the
//!   volume created with `clear_method: none` so its reads hit that data),
//!   4k random reads and writes at QD32 with `bdevperf_run`, raw and volume
//!   alternately (both files warm in the host's page cache), medians and
//!   the ratio volume/raw;
//! - first writes to a fresh thin volume (4k random writes at QD32) against
//!   the same volume once every cluster is allocated (`bdev_lvol_inflate`);
//! - the `bdev_lvol_snapshot` round trip for a 1 GiB and an 8 GiB thick
//!   volume, which should not grow with the size.
//!
//! Figures are reported, never asserted; the run fails only on errors.

use crate::build;
use ironbay_tests::READY;
use ironbay_tests::machine::{Boot, Disk, Machine, Nic, free_port};
use ironbay_tests::rig::fio::median;
use ironbay_tests::serial::Running;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

const USAGE: &str = "usage: cargo xtask bench lvol [--seconds N] [--runs N]";
const MIB: u64 = 1 << 20;
/// The region measured: the whole raw disk, and a thick volume as large.
const REGION_MIB: u64 = 4096;
/// The store's disk: sparse beyond its filled start.
const STORE_DISK: u64 = 16 << 30;
/// The filled start of the store's disk: the metadata area (a few MiB) and
/// the thick volume's clusters, which are the first allocated.
const STORE_FILLED: u64 = (REGION_MIB + 256) * MIB;
const STORE: &str = "bench";
/// Volumes whose `bdev_lvol_snapshot` is timed, in MiB.
const SNAP_SIZES: [u64; 2] = [1024, 8192];
/// Snapshots timed per size (each of a freshly created volume).
const SNAP_REPS: u32 = 9;
const THIN_RUNS: u32 = 3;
const WORKLOADS: [(&str, &str); 2] = [
    ("4k randread QD32", "randread"),
    ("4k randwrite QD32", "randwrite"),
];

pub fn bench(args: &[String]) -> Result<(), String> {
    // Many short pairs: the host's load (steal time on shared machines)
    // changes within seconds, and each pair's ratio cancels it.
    let (mut seconds, mut runs) = (2, 15);
    crate::number_flags(
        args,
        &mut [("--seconds", &mut seconds), ("--runs", &mut runs)],
        USAGE,
    )?;
    let (seconds, runs) = (seconds.max(1), runs.max(1));
    crate::prereq::ensure_host_packages()?;
    let images = build::build(true)?;
    let dir = crate::workspace_root().join("target/bench");
    let (raw, store) = (dir.join("lvol-raw.img"), dir.join("lvol-store.img"));
    crate::bench::filled_disk(&raw, REGION_MIB * MIB)?;
    store_disk(&store)?;
    // Both sides read from the page cache: a cold file would make
    // whichever runs first pay for the host's disk.
    crate::bench::warm_page_cache(&raw)?;
    crate::bench::warm_prefix(&store, STORE_FILLED)?;

    let port = free_port();
    let mut m = Machine::new(Boot::Kernel {
        image: images.kernel,
        append: "mgmt.ip=10.0.2.15/24 mgmt.gw=10.0.2.2".into(),
        config: None,
    });
    m.disks = vec![Disk::nvme(0, 1, raw), Disk::nvme(1, 1, store)];
    m.forwards = vec![(Nic::Mgmt, port, 5260)];
    println!(
        "booting the appliance (TCG, q35, {} MiB, {} vCPUs): raw NVMe disk {} MiB, store NVMe disk {} GiB",
        m.memory_mib,
        m.cpus,
        REGION_MIB,
        STORE_DISK >> 30
    );
    let steal_before = host_steal();
    let mut vm = Running::spawn(m.command()).map_err(|e| format!("qemu: {e}"))?;
    vm.wait_for(READY, Duration::from_secs(120))?;
    let mut rpc = Rpc::connect(port)?;
    let r = run(&mut rpc, seconds, runs);
    let r = r.map_err(|e| format!("{e}\n----- console -----\n{}", vm.output()));
    drop(vm);
    let report = r?;
    report.print(&m, seconds, runs);
    if let (Some(a), Some(b)) = (steal_before, host_steal()) {
        println!(
            "host CPU time stolen by the hypervisor during the run: {:.0}% (figures vary with it)",
            100.0 * (b.0 - a.0) as f64 / (b.1 - a.1).max(1) as f64
        );
    }
    Ok(())
}

/// The store's disk: `STORE_FILLED` bytes of the same non-zero data as
/// `filled_disk`, then a hole up to `STORE_DISK`. Rewritten when the start
/// no longer reads as filled (an earlier run zeroed it).
fn store_disk(path: &Path) -> Result<(), String> {
    if std::fs::metadata(path).is_ok_and(|m| m.len() == STORE_DISK) && prefix_filled(path)? {
        return Ok(());
    }
    let tmp = path.with_extension("part");
    crate::bench::filled_disk(&tmp, STORE_FILLED)?;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&tmp)
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    f.set_len(STORE_DISK).map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, path).map_err(|e| e.to_string())
}

/// Whether 64 blocks spread over the filled start (past the metadata area)
/// hold data. Random writes of earlier runs leave a few zero blocks (as on
/// the raw disk); a zeroed volume would leave most.
fn prefix_filled(path: &Path) -> Result<bool, String> {
    let mut f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let (from, to) = (32 * MIB, STORE_FILLED - 4096);
    let mut block = [0u8; 4096];
    let mut zero = 0;
    for k in 0..64 {
        let at = (from + k * (to - from) / 63) & !4095;
        f.seek(SeekFrom::Start(at)).map_err(|e| e.to_string())?;
        f.read_exact(&mut block).map_err(|e| e.to_string())?;
        if block.iter().all(|&b| b == 0) {
            zero += 1;
        }
    }
    Ok(zero < 16)
}

#[derive(Default)]
struct Report {
    raw_bdev: String,
    /// Per workload: raw and volume IOPS, one per run.
    raw: [Vec<f64>; 2],
    lvol: [Vec<f64>; 2],
    cluster_mib: u64,
    /// Per fresh thin volume: IOPS of first writes, clusters they allocated,
    /// writes done, IOPS once all were allocated.
    thin_first: Vec<f64>,
    thin_clusters: Vec<f64>,
    thin_ops: Vec<f64>,
    thin_full: Vec<f64>,
    /// Per size: snapshot round trips and thick creation times, in ms.
    snap: [Vec<f64>; 2],
    create: [Vec<f64>; 2],
    /// `spdk_get_version` round trips in ms: the floor under the above.
    floor: Vec<f64>,
}

fn run(rpc: &mut Rpc, seconds: u32, runs: u32) -> Result<Report, String> {
    let mut rep = Report::default();
    let bdevs = rpc.call("bdev_get_bdevs", "{}", Duration::from_secs(30))?;
    let size_of =
        |b: &Json| b.num("num_blocks").unwrap_or(0.0) * b.num("block_size").unwrap_or(0.0);
    let by_size = |bytes: u64| {
        bdevs
            .items()
            .iter()
            .find(|b| size_of(b) == bytes as f64)
            .and_then(|b| b.get("name")?.as_str())
            .map(String::from)
            .ok_or_else(|| format!("no bdev of {bytes} bytes in {}", bdevs.show()))
    };
    rep.raw_bdev = by_size(REGION_MIB * MIB)?;
    let base = by_size(STORE_DISK)?;

    // A store left by an earlier run is tasted at boot: start afresh.
    let stores = rpc.call("bdev_lvol_get_lvstores", "{}", Duration::from_secs(30))?;
    for s in stores.items() {
        if let Some(name) = s.get("name").and_then(Json::as_str) {
            println!("deleting the store {name} an earlier run left");
            rpc.call(
                "bdev_lvol_delete_lvstore",
                &format!(r#"{{"lvs_name":"{name}"}}"#),
                Duration::from_secs(300),
            )?;
        }
    }
    rpc.call(
        "bdev_lvol_create_lvstore",
        &format!(r#"{{"bdev_name":"{base}","lvs_name":"{STORE}"}}"#),
        Duration::from_secs(300),
    )?;
    let stores = rpc.call(
        "bdev_lvol_get_lvstores",
        &format!(r#"{{"lvs_name":"{STORE}"}}"#),
        Duration::from_secs(30),
    )?;
    let store = stores.items().first().cloned().unwrap_or(Json::Null);
    rep.cluster_mib = store.num("cluster_size").unwrap_or(0.0) as u64 / MIB;
    println!(
        "store {STORE} on {base}: {} data clusters of {} MiB",
        store.num("total_data_clusters").unwrap_or(0.0),
        rep.cluster_mib
    );
    // Thick, not zeroed: its clusters are the filled start of the disk.
    let thick = create(rpc, "thick", REGION_MIB, false, Some("none"))?.0;

    // One unreported second each first, so neither side pays for a cold
    // start (page cache, first I/O).
    for bdev in [&rep.raw_bdev, &thick] {
        perf(rpc, bdev, "randread", 1)?;
    }
    println!("\nraw {} vs thick volume, {seconds} s each:", rep.raw_bdev);
    for r in 0..runs {
        for (w, (label, workload)) in WORKLOADS.iter().enumerate() {
            // Which side goes first alternates, so a trend on the host
            // within a pair does not favour one.
            let (a, b) = if r % 2 == 0 {
                let a = perf(rpc, &rep.raw_bdev, workload, seconds)?;
                (a, perf(rpc, &thick, workload, seconds)?)
            } else {
                let b = perf(rpc, &thick, workload, seconds)?;
                (perf(rpc, &rep.raw_bdev, workload, seconds)?, b)
            };
            println!(
                "  run {}: {label:<17} raw {:>8.0} IOPS  lvol {:>8.0} IOPS  {:.3}x",
                r + 1,
                a.iops,
                b.iops,
                b.iops / a.iops.max(1.0)
            );
            rep.raw[w].push(a.iops);
            rep.lvol[w].push(b.iops);
        }
    }

    // Each thin run inflates a whole volume: a few are enough.
    let thin_runs = runs.min(THIN_RUNS);
    let thin_seconds = seconds.max(5);
    println!("\nthin volumes of {REGION_MIB} MiB, 4k randwrite QD32, {thin_seconds} s each:");
    for r in 0..thin_runs {
        let name = format!("thin{r}");
        let (uuid, _) = create(rpc, &name, REGION_MIB, true, None)?;
        let first = perf(rpc, &uuid, "randwrite", thin_seconds)?;
        let clusters = allocated(rpc, &name)?;
        rpc.call(
            "bdev_lvol_inflate",
            &format!(r#"{{"name":"{uuid}"}}"#),
            Duration::from_secs(600),
        )?;
        let all = allocated(rpc, &name)?;
        let full = perf(rpc, &uuid, "randwrite", thin_seconds)?;
        println!(
            "  run {}: fresh {:>8.0} IOPS ({clusters} clusters allocated by {} writes); \
             inflated ({all} clusters) {:>8.0} IOPS  {:.3}x",
            r + 1,
            first.iops,
            first.ops,
            full.iops,
            first.iops / full.iops.max(1.0)
        );
        rep.thin_first.push(first.iops);
        rep.thin_clusters.push(clusters as f64);
        rep.thin_ops.push(first.ops);
        rep.thin_full.push(full.iops);
        delete(rpc, &uuid)?;
    }

    println!("\nbdev_lvol_snapshot of a thick volume (JSON-RPC round trip):");
    for _ in 0..SNAP_REPS {
        let t = Instant::now();
        rpc.call("spdk_get_version", "{}", Duration::from_secs(30))?;
        rep.floor.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    // The sizes alternate, so drift on the host touches both alike.
    for r in 0..SNAP_REPS {
        for (i, mib) in SNAP_SIZES.iter().enumerate() {
            let (uuid, made) = create(rpc, "origin", *mib, false, None)?;
            let t = Instant::now();
            let snap = rpc.call(
                "bdev_lvol_snapshot",
                &format!(r#"{{"lvol_name":"{STORE}/origin","snapshot_name":"origin-snap"}}"#),
                Duration::from_secs(300),
            )?;
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            println!(
                "  {mib:>5} MiB run {}: snapshot {ms:.2} ms (thick create {:.1} ms)",
                r + 1,
                made * 1000.0
            );
            rep.snap[i].push(ms);
            rep.create[i].push(made * 1000.0);
            let snap = snap
                .as_str()
                .ok_or_else(|| format!("bdev_lvol_snapshot answered {}", snap.show()))?
                .to_string();
            delete(rpc, &uuid)?;
            delete(rpc, &snap)?;
        }
    }
    delete(rpc, &thick)?;
    rpc.call(
        "bdev_lvol_delete_lvstore",
        &format!(r#"{{"lvs_name":"{STORE}"}}"#),
        Duration::from_secs(300),
    )?;
    Ok(rep)
}

impl Report {
    fn print(mut self, m: &Machine, seconds: u32, runs: u32) {
        println!(
            "\nlogical volumes vs raw NVMe (bdevperf_run over JSON-RPC, TCG, {} MiB, {} vCPUs), \
             median of {runs} alternating runs of {seconds} s, {REGION_MIB} MiB region:",
            m.memory_mib, m.cpus
        );
        println!(
            "  {:<19} {:>14} {:>14} {:>9} {:>14}",
            "workload",
            format!("raw {}", self.raw_bdev),
            "thick lvol",
            "lvol/raw",
            "run by run"
        );
        for (w, (label, _)) in WORKLOADS.iter().enumerate() {
            // Also the median of each run's own ratio: the pairs ran back
            // to back, so drift on the host between runs cancels out.
            let mut pairs: Vec<f64> = self.lvol[w]
                .iter()
                .zip(&self.raw[w])
                .map(|(l, r)| l / r.max(1.0))
                .collect();
            let (a, b) = (median(&mut self.raw[w]), median(&mut self.lvol[w]));
            println!(
                "  {label:<19} {a:>9.0} IOPS {b:>9.0} IOPS {:>8.3}x {:>13.3}x",
                b / a.max(1.0),
                median(&mut pairs)
            );
        }
        let (first, full) = (median(&mut self.thin_first), median(&mut self.thin_full));
        println!(
            "thin lvol, 4k randwrite QD32, median of {} fresh volumes ({} MiB clusters):",
            self.thin_first.len(),
            self.cluster_mib
        );
        println!(
            "  first writes (fresh volume)       {first:>9.0} IOPS  ({:.0} clusters allocated in {:.0} writes)",
            median(&mut self.thin_clusters),
            median(&mut self.thin_ops)
        );
        println!("  all clusters allocated (inflated) {full:>9.0} IOPS");
        println!(
            "  fresh/allocated                   {:>9.3}x",
            first / full.max(1.0)
        );
        println!("bdev_lvol_snapshot round trip, median of {SNAP_REPS}, sizes alternating:");
        let mut meds = Vec::new();
        for (i, mib) in SNAP_SIZES.iter().enumerate() {
            let ms = median(&mut self.snap[i]);
            println!(
                "  {:>2} GiB thick volume {ms:>8.2} ms  (creating it, zeroed: {:.1} ms)",
                mib / 1024,
                median(&mut self.create[i])
            );
            meds.push(ms);
        }
        println!(
            "  8 GiB / 1 GiB                 {:>7.2}x",
            meds[1] / meds[0].max(1e-9)
        );
        println!(
            "  (one JSON-RPC round trip, spdk_get_version: {:.2} ms)",
            median(&mut self.floor)
        );
    }
}

/// (steal, total) jiffies of all CPUs from /proc/stat.
fn host_steal() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    Some((*v.get(7)?, v.iter().sum()))
}

/// `bdev_lvol_create` in the bench store; the new bdev's name (its UUID)
/// and the round trip in seconds.
fn create(
    rpc: &mut Rpc,
    name: &str,
    mib: u64,
    thin: bool,
    clear: Option<&str>,
) -> Result<(String, f64), String> {
    let clear = clear.map_or(String::new(), |c| format!(r#","clear_method":"{c}""#));
    let t = Instant::now();
    let v = rpc.call(
        "bdev_lvol_create",
        &format!(
            r#"{{"lvs_name":"{STORE}","lvol_name":"{name}","size_in_mib":{mib},"thin_provision":{thin}{clear}}}"#
        ),
        Duration::from_secs(600),
    )?;
    let took = t.elapsed().as_secs_f64();
    let uuid = v
        .as_str()
        .ok_or_else(|| format!("bdev_lvol_create answered {}", v.show()))?;
    Ok((uuid.to_string(), took))
}

fn delete(rpc: &mut Rpc, name: &str) -> Result<(), String> {
    rpc.call(
        "bdev_lvol_delete",
        &format!(r#"{{"name":"{name}"}}"#),
        Duration::from_secs(300),
    )
    .map(|_| ())
}

/// `num_allocated_clusters` of the bench store's volume `name`.
fn allocated(rpc: &mut Rpc, name: &str) -> Result<u64, String> {
    let list = rpc.call(
        "bdev_lvol_get_lvols",
        &format!(r#"{{"lvs_name":"{STORE}"}}"#),
        Duration::from_secs(30),
    )?;
    list.items()
        .iter()
        .find(|v| v.get("name").and_then(Json::as_str) == Some(name))
        .and_then(|v| v.num("num_allocated_clusters"))
        .map(|n| n as u64)
        .ok_or_else(|| format!("{name} not in bdev_lvol_get_lvols: {}", list.show()))
}

struct Perf {
    iops: f64,
    ops: f64,
}

/// One 4k QD32 `bdevperf_run`; errors and miscompares fail the bench.
fn perf(rpc: &mut Rpc, bdev: &str, workload: &str, seconds: u32) -> Result<Perf, String> {
    let params = format!(
        r#"{{"bdev_name":"{bdev}","workload":"{workload}","io_size":4096,"queue_depth":32,"time_in_sec":{seconds}}}"#
    );
    let r = rpc.call(
        "bdevperf_run",
        &params,
        Duration::from_secs(120 + 3 * seconds as u64),
    )?;
    let num = |k: &str| {
        r.num(k)
            .ok_or_else(|| format!("bdevperf_run {params}: no `{k}` in {}", r.show()))
    };
    if num("errors")? != 0.0 || num("miscompares")? != 0.0 {
        return Err(format!("bdevperf_run {params} answered {}", r.show()));
    }
    Ok(Perf {
        iops: num("iops")?,
        ops: num("ops")?,
    })
}

/// A JSON-RPC 2.0 connection to the appliance: one request at a time.
struct Rpc {
    s: TcpStream,
    buf: Vec<u8>,
    id: u64,
}

impl Rpc {
    fn connect(port: u16) -> Result<Self, String> {
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            match TcpStream::connect(("127.0.0.1", port)) {
                Ok(s) => {
                    let mut rpc = Rpc {
                        s,
                        buf: Vec::new(),
                        id: 0,
                    };
                    // QEMU accepts forwarded connections before the guest
                    // does; a call proves the service answers.
                    if rpc
                        .call("spdk_get_version", "{}", Duration::from_secs(5))
                        .is_ok()
                    {
                        return Ok(rpc);
                    }
                }
                Err(e) if Instant::now() > until => return Err(format!("JSON-RPC: {e}")),
                Err(_) => {}
            }
            if Instant::now() > until {
                return Err("JSON-RPC: no answer to spdk_get_version".into());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The `result` of `method`; an `error` reply is an `Err` naming the
    /// request and the response.
    fn call(&mut self, method: &str, params: &str, timeout: Duration) -> Result<Json, String> {
        self.id += 1;
        let req = format!(
            r#"{{"jsonrpc":"2.0","id":{},"method":"{method}","params":{params}}}"#,
            self.id
        );
        self.s
            .write_all(req.as_bytes())
            .map_err(|e| format!("request {req}: {e}"))?;
        let until = Instant::now() + timeout;
        let mut chunk = [0u8; 16384];
        loop {
            if let Some((v, used)) = Json::parse(&self.buf) {
                let text = String::from_utf8_lossy(&self.buf[..used])
                    .trim()
                    .to_string();
                self.buf.drain(..used);
                if let Some(e) = v.get("error") {
                    return Err(format!("request {req}\nresponse {text} ({})", e.show()));
                }
                if v.num("id") != Some(self.id as f64) {
                    return Err(format!("request {req}\nresponse for another id: {text}"));
                }
                return v
                    .get("result")
                    .cloned()
                    .ok_or_else(|| format!("request {req}\nresponse without result: {text}"));
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "request {req}\nno response in {timeout:?} (received so far: {:?})",
                    String::from_utf8_lossy(&self.buf)
                ));
            }
            self.s
                .set_read_timeout(Some(left.min(Duration::from_secs(1))))
                .map_err(|e| e.to_string())?;
            match self.s.read(&mut chunk) {
                Ok(0) => return Err(format!("request {req}\nconnection closed")),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(format!("request {req}: {e}")),
            }
        }
    }
}

/// Just enough JSON for the replies (xtask has no JSON dependency).
#[derive(Clone, Debug, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Obj(m) => m.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn num(&self, key: &str) -> Option<f64> {
        match self.get(key)? {
            Json::Num(n) => Some(*n),
            _ => None,
        }
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }

    fn items(&self) -> &[Json] {
        match self {
            Json::Arr(a) => a,
            _ => &[],
        }
    }

    fn show(&self) -> String {
        match self {
            Json::Null => "null".into(),
            Json::Bool(b) => b.to_string(),
            Json::Num(n) => n.to_string(),
            Json::Str(s) => format!("{s:?}"),
            Json::Arr(a) => format!(
                "[{}]",
                a.iter().map(Json::show).collect::<Vec<_>>().join(",")
            ),
            Json::Obj(m) => format!(
                "{{{}}}",
                m.iter()
                    .map(|(k, v)| format!("{k:?}:{}", v.show()))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        }
    }

    /// The first whole value in `b` and the bytes it took; `None` while it
    /// is incomplete (or not JSON).
    fn parse(b: &[u8]) -> Option<(Json, usize)> {
        let mut p = Parser { b, i: 0 };
        let v = p.value()?;
        Some((v, p.i))
    }
}

struct Parser<'a> {
    b: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.b.get(self.i).is_some_and(u8::is_ascii_whitespace) {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        self.ws();
        let hit = self.b.get(self.i) == Some(&c);
        if hit {
            self.i += 1;
        }
        hit
    }

    fn value(&mut self) -> Option<Json> {
        self.ws();
        match *self.b.get(self.i)? {
            b'{' => {
                self.i += 1;
                let mut m = Vec::new();
                if self.eat(b'}') {
                    return Some(Json::Obj(m));
                }
                loop {
                    self.ws();
                    let Json::Str(k) = self.value()? else {
                        return None;
                    };
                    if !self.eat(b':') {
                        return None;
                    }
                    m.push((k, self.value()?));
                    if self.eat(b'}') {
                        return Some(Json::Obj(m));
                    }
                    if !self.eat(b',') {
                        return None;
                    }
                }
            }
            b'[' => {
                self.i += 1;
                let mut a = Vec::new();
                if self.eat(b']') {
                    return Some(Json::Arr(a));
                }
                loop {
                    a.push(self.value()?);
                    if self.eat(b']') {
                        return Some(Json::Arr(a));
                    }
                    if !self.eat(b',') {
                        return None;
                    }
                }
            }
            b'"' => {
                self.i += 1;
                let mut s = Vec::new();
                loop {
                    let c = *self.b.get(self.i)?;
                    self.i += 1;
                    match c {
                        b'"' => return String::from_utf8(s).ok().map(Json::Str),
                        b'\\' => {
                            let e = *self.b.get(self.i)?;
                            self.i += 1;
                            let ch = match e {
                                b'n' => '\n',
                                b't' => '\t',
                                b'r' => '\r',
                                b'b' => '\u{8}',
                                b'f' => '\u{c}',
                                b'u' => {
                                    let hex = std::str::from_utf8(self.b.get(self.i..self.i + 4)?);
                                    self.i += 4;
                                    u32::from_str_radix(hex.ok()?, 16)
                                        .ok()
                                        .and_then(char::from_u32)
                                        .unwrap_or('\u{fffd}')
                                }
                                other => other as char,
                            };
                            s.extend_from_slice(ch.to_string().as_bytes());
                        }
                        _ => s.push(c),
                    }
                }
            }
            b't' | b'f' | b'n' => {
                for (word, v) in [
                    (&b"true"[..], Json::Bool(true)),
                    (b"false", Json::Bool(false)),
                    (b"null", Json::Null),
                ] {
                    if self.b.get(self.i..self.i + word.len()) == Some(word) {
                        self.i += word.len();
                        return Some(v);
                    }
                }
                None
            }
            _ => {
                let start = self.i;
                while self
                    .b
                    .get(self.i)
                    .is_some_and(|c| c.is_ascii_digit() || b"+-.eE".contains(c))
                {
                    self.i += 1;
                }
                // A number at the very end may still be arriving.
                if self.i == self.b.len() {
                    return None;
                }
                std::str::from_utf8(&self.b[start..self.i])
                    .ok()?
                    .parse()
                    .ok()
                    .map(Json::Num)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Json;

    #[test]
    fn parses_replies_and_waits_for_whole_values() {
        let r = br#"{"jsonrpc":"2.0","id":3,"result":[{"name":"a\"b","n":-1.5e3,"t":true,"x":null}]} {"#;
        let (v, used) = Json::parse(r).unwrap();
        assert_eq!(r[used..].trim_ascii(), b"{");
        assert_eq!(v.num("id"), Some(3.0));
        let item = &v.get("result").unwrap().items()[0];
        assert_eq!(item.get("name").unwrap().as_str(), Some("a\"b"));
        assert_eq!(item.num("n"), Some(-1500.0));
        assert_eq!(item.get("t"), Some(&Json::Bool(true)));
        assert!(Json::parse(br#"{"id":1,"result":"#).is_none());
        assert!(Json::parse(br#"{"id":12"#).is_none());
    }
}
