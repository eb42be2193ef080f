//! `bench cache`: RapidDisk RAM caches and RAM disks against what they
//! stand in for, fio in a Linux host guest (nvme-tcp) against one appliance
//! VM over the tap bridge, every pair in the same run, alternating:
//! - 4k random reads at QD32 through a warm write-through cache over a
//!   virtio-blk disk vs the bare virtio-blk disk (goal: 3x or more);
//! - 4k random writes at QD32 through a write-back cache over a virtio-blk
//!   disk vs the bare disk;
//! - a RAM disk (`rd2`) vs a malloc bdev of the same size, 4k random reads
//!   and writes at QD32.
//!
//! The three virtio-blk disks are filled files of the same size, warm in
//! the host's page cache, so the bare disk is as fast as virtio-blk gets
//! here; each is as large as the region the jobs run over, which the
//! caches hold whole. The same pairs then run inside the appliance with
//! `bdevperf_run` (no network), which shows what the NVMe/TCP path leaves
//! of the difference. Every figure is the median of the runs; nothing is
//! asserted.

use crate::build;
use ironbay_tests::READY;
use ironbay_tests::machine::{Boot, Disk, Machine, Nic, free_port};
use ironbay_tests::rig::netns::Netns;
use ironbay_tests::rig::vm::{self, GuestVm};
use ironbay_tests::serial::Running;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const USAGE: &str = "usage: cargo xtask bench cache [--seconds N] [--runs N]";
const APPLIANCE: &str = "10.55.0.10";
/// The stretch every job runs over, and the size of the RAM disk and the
/// malloc bdev; the caches' RAM disks are larger, so the region fits.
const REGION_MIB: u64 = 256;
const CACHE_MIB: u64 = 320;
/// Each virtio-blk disk: the region.
const DISK_MIB: u64 = REGION_MIB;
const MEMORY_MIB: u32 = 2048;

/// (label, bdev exported, NQN suffix)
const TARGETS: [(&str, &str, &str); 5] = [
    ("bare VirtioBlk0", "VirtioBlk0", "bare"),
    ("write-through cache", "rc-wt_VirtioBlk1", "wt"),
    ("write-back cache", "rc-wb_VirtioBlk2", "wb"),
    ("RAM disk rd2", "rd2", "rd"),
    ("Malloc0", "Malloc0", "malloc"),
];
const BARE: usize = 0;
const WT: usize = 1;
const WB: usize = 2;
const RD: usize = 3;
const MALLOC: usize = 4;

/// (label, fio options)
const WORKLOADS: [(&str, &str); 2] = [
    ("4k randread QD32", "--rw=randread --bs=4k --iodepth=32"),
    ("4k randwrite QD32", "--rw=randwrite --bs=4k --iodepth=32"),
];
const READ: usize = 0;
const WRITE: usize = 1;

/// (measured target, reference target, workload, goal for the ratio)
const PAIRS: [(usize, usize, usize, Option<f64>); 4] = [
    (WT, BARE, READ, Some(3.0)),
    (WB, BARE, WRITE, None),
    (RD, MALLOC, READ, None),
    (RD, MALLOC, WRITE, None),
];

fn nqn(t: usize) -> String {
    format!("nqn.2016-06.io.spdk:bench-{}", TARGETS[t].2)
}

/// The boot config: Malloc0, the RAM disks and caches, and one NVMe-oF
/// subsystem per target, open to any host.
fn appliance_config(path: &Path) -> Result<(), String> {
    let call =
        |method: &str, params: String| format!(r#"{{"method":"{method}","params":{params}}}"#);
    let bdev = [call(
        "bdev_malloc_create",
        format!(
            r#"{{"name":"Malloc0","num_blocks":{},"block_size":512}}"#,
            REGION_MIB * 2048
        ),
    )];
    let rapiddisk = [
        call(
            "bdev_rapiddisk_create",
            format!(r#"{{"name":"rd0","size_mb":{CACHE_MIB}}}"#),
        ),
        call(
            "bdev_rapiddisk_create",
            format!(r#"{{"name":"rd1","size_mb":{CACHE_MIB}}}"#),
        ),
        call(
            "bdev_rapiddisk_create",
            format!(r#"{{"name":"rd2","size_mb":{REGION_MIB}}}"#),
        ),
        call(
            "bdev_rapiddisk_cache_create",
            r#"{"cache":"rd0","source":"VirtioBlk1","mode":"write-through"}"#.into(),
        ),
        call(
            "bdev_rapiddisk_cache_create",
            r#"{"cache":"rd1","source":"VirtioBlk2","mode":"write-back"}"#.into(),
        ),
    ];
    let mut nvmf = vec![call("nvmf_create_transport", r#"{"trtype":"TCP"}"#.into())];
    for (t, (_, bdev, _)) in TARGETS.iter().enumerate() {
        let nqn = nqn(t);
        nvmf.push(call(
            "nvmf_create_subsystem",
            format!(
                r#"{{"nqn":"{nqn}","allow_any_host":true,"serial_number":"IRONBAY-CACHE-{t}"}}"#
            ),
        ));
        nvmf.push(call(
            "nvmf_subsystem_add_listener",
            format!(
                r#"{{"nqn":"{nqn}","listen_address":{{"trtype":"TCP","adrfam":"IPv4","traddr":"0.0.0.0","trsvcid":"4420"}}}}"#
            ),
        ));
        nvmf.push(call(
            "nvmf_subsystem_add_ns",
            format!(r#"{{"nqn":"{nqn}","namespace":{{"nsid":1,"bdev_name":"{bdev}"}}}}"#),
        ));
    }
    // RAM disks and caches are bdevs: save_config lists them under "bdev".
    let json = format!(
        r#"{{"subsystems":[{{"subsystem":"bdev","config":[{},
{}]}},
{{"subsystem":"nvmf","config":[{}]}}]}}"#,
        bdev.join(","),
        rapiddisk.join(",\n"),
        nvmf.join(",\n")
    );
    std::fs::write(path, json).map_err(|e| e.to_string())
}

/// The host guest's script: connect every target (noting which device
/// each became), warm the write-through cache and fill the RAM disk and
/// the malloc bdev, then the pairs, run by run, which side goes first
/// alternating. `RESULT|target|workload|run|` + fio's terse line.
fn host_script(seconds: u32, runs: u32) -> String {
    let region = format!("--size={REGION_MIB}M");
    let mut s = String::from(
        "set -e\nmkdir -p /etc/nvme\nnvme gen-hostnqn > /etc/nvme/hostnqn\n\
         newdev() {\n  for _ in $(seq 300); do\n    for d in /dev/nvme*n1; do\n      [ -b \"$d\" ] || continue\n      \
         case \" $1 \" in *\" $d \"*) ;; *) echo \"$d\"; return 0 ;; esac\n    done\n    sleep 0.2\n  done\n  \
         echo \"no new namespace\" >&2; return 1\n}\n",
    );
    for t in 0..TARGETS.len() {
        let _ = writeln!(
            s,
            "before=$(ls /dev/nvme*n1 2>/dev/null | tr '\\n' ' ' || true)\n\
             nvme connect -t tcp -a {APPLIANCE} -s 4420 -n {}\nD{t}=$(newdev \"$before\")\necho \"DEV {t} $D{t}\"",
            nqn(t)
        );
    }
    let pass = |dev: &str, rw: &str, bs: &str| {
        format!(
            "fio --name=prep --filename={dev} --rw={rw} --bs={bs} --iodepth=8 --ioengine=libaio --direct=1 {region} > /dev/null"
        )
    };
    // Reads through the write-through cache fill it; the bare disk gets the
    // same pass. The RAM disk and malloc bdev get real pages to read.
    for (t, rw) in [
        (WT, "read"),
        (BARE, "read"),
        (RD, "write"),
        (MALLOC, "write"),
    ] {
        let _ = writeln!(s, "{}", pass(&format!("$D{t}"), rw, "128k"));
    }
    let _ = writeln!(s, "echo PREPARED");
    for run in 0..runs {
        for &(a, b, w, _) in &PAIRS {
            let order = if run % 2 == 0 { [a, b] } else { [b, a] };
            for t in order {
                let opts = format!("{} {region}", WORKLOADS[w].1);
                let _ = writeln!(
                    s,
                    "echo \"RESULT|{t}|{w}|{run}|$({})\"",
                    crate::peers::fio_cmd(&format!("$D{t}"), &opts, seconds)
                );
            }
        }
    }
    let _ = writeln!(s, "nvme disconnect-all");
    s
}

pub fn bench(args: &[String]) -> Result<(), String> {
    let (mut seconds, mut runs) = (10, 3);
    crate::number_flags(
        args,
        &mut [("--seconds", &mut seconds), ("--runs", &mut runs)],
        USAGE,
    )?;
    let (seconds, runs) = (seconds.max(1), runs.max(1));
    crate::prereq::ensure_host_packages()?;
    let images = build::build(true)?;
    let dir = crate::workspace_root().join("target/bench");
    let disks: Vec<_> = ["bare", "wt", "wb"]
        .iter()
        .map(|n| dir.join(format!("cache-{n}.img")))
        .collect();
    for d in &disks {
        crate::bench::filled_disk(d, DISK_MIB << 20)?;
        crate::bench::warm_page_cache(d)?;
    }
    let guest = crate::rig::build()?;
    let mut ns = Netns::create("cachebench")?;

    let cfg = dir.join("cache-appliance.json");
    appliance_config(&cfg)?;
    let rest = free_port();
    let mut m = Machine::new(Boot::Kernel {
        image: images.kernel,
        append: format!("data.ip={APPLIANCE}/24"),
        config: Some(cfg),
    });
    m.memory_mib = MEMORY_MIB;
    m.cpus = 1;
    m.disks = disks.iter().map(|d| Disk::virtio(d.clone())).collect();
    m.data_tap = Some(ns.add_tap()?);
    let rpc = free_port();
    m.forwards = vec![(Nic::Mgmt, rest, 9118), (Nic::Mgmt, rpc, 5260)];
    println!(
        "booting the appliance (TCG, q35, {} MiB, {} vCPU): 3 virtio-blk disks of {DISK_MIB} MiB",
        m.memory_mib, m.cpus
    );
    let mut appliance = Running::spawn(ns.wrap(&m.command())).map_err(|e| e.to_string())?;
    appliance.wait_for(READY, Duration::from_secs(120))?;
    let fail = |what: String, appliance: &Running| {
        format!("{what}\n----- appliance -----\n{}", appliance.output())
    };

    let script = dir.join("cache-host.sh");
    std::fs::write(&script, host_script(seconds, runs)).map_err(|e| e.to_string())?;
    let mut host = GuestVm::new(&script);
    host.ip = Some("10.55.0.2/24".into());
    host.mac = "52:54:00:1b:10:02".into();
    host.tap = Some(ns.add_tap()?);
    let mut host_vm = host.start(&guest, Some(&ns))?;
    let budget = 900 + (seconds as u64 + 3) * runs as u64 * 2 * PAIRS.len() as u64;
    let (rc, out) =
        vm::finish(&mut host_vm, Duration::from_secs(budget)).map_err(|e| fail(e, &appliance))?;
    drop(host_vm);
    if rc != 0 {
        return Err(fail(format!("host script exited {rc}\n{out}"), &appliance));
    }
    let stats: Vec<String> = ["rc-wt_VirtioBlk1", "rc-wb_VirtioBlk2"]
        .iter()
        .map(|c| {
            let mut curl = Command::new("curl");
            curl.args(["-s", "-m", "60"]).arg(format!(
                "http://127.0.0.1:{rest}/v1/showRapidDiskCacheStats/{c}"
            ));
            ns.wrap(&curl)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_else(|e| format!("curl: {e}"))
        })
        .collect();
    // The same pairs inside the appliance, the caches as warm as fio left
    // them.
    let mut inside = vec![[Vec::new(), Vec::new()]; TARGETS.len()];
    for run in 0..runs {
        for &(a, b, w, _) in &PAIRS {
            let order = if run % 2 == 0 { [a, b] } else { [b, a] };
            for t in order {
                let iops = bdevperf(&ns, rpc, TARGETS[t].1, w, seconds)
                    .map_err(|e| fail(e, &appliance))?;
                inside[t][w].push(iops);
            }
        }
    }
    drop(appliance);
    drop(ns);

    let median = |t: usize, w: usize| crate::peers::fio_medians(&out, t, w);
    println!(
        "\nRapidDisk in the appliance, fio (libaio, direct) in a Linux host guest over NVMe-oF/TCP \
         on the tap bridge, median of {runs} runs of {seconds} s, pairs alternating"
    );
    println!(
        " (TCG; appliance 1 vCPU and {MEMORY_MIB} MiB, host guest 1 vCPU; {REGION_MIB} MiB region; \
         virtio-blk files filled and warm in the host's page cache):"
    );
    for &(a, b, w, goal) in &PAIRS {
        let ((ai, am), (bi, bm)) = (median(a, w)?, median(b, w)?);
        let goal = goal.map_or(String::new(), |g| {
            let verdict = if ai / bi.max(1.0) >= g {
                "met"
            } else {
                "NOT met"
            };
            format!(" (goal >= {g:.0}x: {verdict})")
        });
        println!(
            "  {:<17} {:<20} {ai:>7.0} IOPS {am:>6.1} MiB/s | {:<16} {bi:>7.0} IOPS {bm:>6.1} MiB/s | {:.2}x{goal}",
            WORKLOADS[w].0,
            TARGETS[a].0,
            TARGETS[b].0,
            ai / bi.max(1.0)
        );
    }
    println!(
        "the same pairs inside the appliance (bdevperf_run, no network), median of {runs} runs of {seconds} s:"
    );
    for &(a, b, w, goal) in &PAIRS {
        let (ai, bi) = (
            ironbay_tests::rig::fio::median(&mut inside[a][w]),
            ironbay_tests::rig::fio::median(&mut inside[b][w]),
        );
        let goal = goal.map_or(String::new(), |g| {
            let verdict = if ai / bi.max(1.0) >= g {
                "met"
            } else {
                "NOT met"
            };
            format!(" (goal >= {g:.0}x: {verdict})")
        });
        println!(
            "  {:<17} {:<20} {ai:>7.0} IOPS | {:<16} {bi:>7.0} IOPS | {:.2}x{goal}",
            WORKLOADS[w].0,
            TARGETS[a].0,
            TARGETS[b].0,
            ai / bi.max(1.0)
        );
    }
    for (c, s) in ["write-through", "write-back"].iter().zip(&stats) {
        println!("  {c} cache counters at the end: {s}");
    }
    Ok(())
}

/// One 4k QD32 `bdevperf_run` of workload `w` on `bdev` over JSON-RPC from
/// inside the namespace (where the port is forwarded): its IOPS.
fn bdevperf(ns: &Netns, rpc: u16, bdev: &str, w: usize, seconds: u32) -> Result<f64, String> {
    const PY: &str = "import json,socket,sys
s=socket.create_connection(('127.0.0.1',int(sys.argv[1])),timeout=float(sys.argv[3]))
s.sendall(sys.argv[2].encode())
b=b''
while True:
    c=s.recv(65536)
    if not c: sys.exit('connection closed: %r' % b)
    b+=c
    try:
        v=json.loads(b); break
    except ValueError: pass
r=v.get('result')
if not isinstance(r,dict) or r.get('errors') or r.get('miscompares'): sys.exit(json.dumps(v))
print(r['iops'])";
    let workload = ["randread", "randwrite"][w];
    let req = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"bdevperf_run","params":{{"bdev_name":"{bdev}","workload":"{workload}","io_size":4096,"queue_depth":32,"time_in_sec":{seconds}}}}}"#
    );
    let mut c = Command::new("python3");
    c.args(["-c", PY, &rpc.to_string(), &req])
        .arg((120 + 3 * seconds).to_string());
    let out = ns.wrap(&c).output().map_err(|e| format!("python3: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim().parse().map_err(|_| {
        format!(
            "bdevperf_run {bdev} {workload}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}
