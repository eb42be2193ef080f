//! `bench iscsi`: 4k random reads at queue depth 32 and 128k sequential
//! reads at queue depth 8, against
//! - the hosted runner and Linux's userspace target tgt, natively on the host
//!   over loopback, serving the same file, with libiscsi's `iscsi-perf`;
//! - the appliance VM and LIO in a Linux guest of the same size (1 vCPU,
//!   1 GiB), each with the file as its virtio-blk disk and with a null device,
//!   from fio in a Linux initiator guest over the tap bridge and from
//!   `iscsi-perf` in the bridge's namespace, all in the same run. The two
//!   target VMs run one after the other: they share the backing file.
//!
//! Every figure is the median of the runs; ratios are ironbay / peer.

use crate::bench::{Server, spawn_server as spawn};
use crate::{build, build_hosted};
use ironbay_tests::machine::free_port;
use ironbay_tests::rig::fio::median;
use ironbay_tests::rig::netns::Netns;
use ironbay_tests::rig::vm::{self, GuestVm};
use ironbay_tests::serial::Running;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// (label, iscsi-perf options): blocks of 512 bytes per request, requests in flight.
const PERF: &[(&str, &[&str])] = &[
    ("4k randread QD32", &["-b", "8", "-m", "32", "-r"]),
    ("128k read QD8", &["-b", "256", "-m", "8"]),
];

const APPLIANCE: &str = "10.55.0.10";
const LIO: &str = "10.55.0.3";
const APPLIANCE_IQN: &str = "iqn.2016-06.io.spdk";
const LIO_IQN: &str = "iqn.2003-01.org.ironbay";

/// IOPS from iscsi-perf's closing "iops average N (M MB/s)".
fn perf_iops(text: &str) -> Option<f64> {
    let at = text.rfind("iops average ")?;
    text[at + 13..].split_whitespace().next()?.parse().ok()
}

/// Median IOPS per `PERF` workload against one LUN.
fn perf(
    wrap: &dyn Fn(Command) -> Command,
    url: &str,
    seconds: u32,
    runs: u32,
) -> Result<Vec<f64>, String> {
    let mut rows = Vec::new();
    for (_, opts) in PERF {
        let mut iops = Vec::new();
        for _ in 0..runs {
            let mut c = Command::new("iscsi-perf");
            c.args(["-t", &seconds.to_string()]).args(*opts).arg(url);
            let out = wrap(c).output().map_err(|e| format!("iscsi-perf: {e}"))?;
            let text = String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr);
            iops.push(perf_iops(&text).ok_or_else(|| format!("iscsi-perf {url}: {text}"))?);
        }
        rows.push(median(&mut iops));
    }
    Ok(rows)
}

fn print_perf(label: &str, rows: &[f64], ours: Option<&[f64]>) {
    for (i, ((w, _), iops)) in PERF.iter().zip(rows).enumerate() {
        let ratio = ours.map_or(String::new(), |o| {
            format!("  ironbay/this {:.2}x", o[i] / iops.max(1.0))
        });
        println!("  {label:<30} {w:<17} {iops:>9.0} IOPS{ratio}");
    }
}

/// tgtd on a loopback portal with `file` as LUN 1 of one target.
fn tgt(file: &Path, port: u16) -> Result<(Server, String), String> {
    // tgtd's control "port" names its management socket; it takes small numbers.
    let control = format!("{}", port % 1000 + 1);
    let server = spawn(
        Command::new("tgtd").args([
            "-f",
            "-C",
            &control,
            "--iscsi",
            &format!("portal=127.0.0.1:{port}"),
        ]),
        port,
    )?;
    let iqn = "iqn.2001-04.org.ironbay:tgt-bench";
    let adm = |args: &[&str]| {
        crate::sh(
            Command::new("tgtadm")
                .args(["-C", &control, "--lld", "iscsi"])
                .args(args),
        )
    };
    adm(&["--op", "new", "--mode", "target", "--tid", "1", "-T", iqn])?;
    adm(&[
        "--op",
        "new",
        "--mode",
        "logicalunit",
        "--tid",
        "1",
        "--lun",
        "1",
        "-b",
        &file.display().to_string(),
    ])?;
    adm(&[
        "--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL",
    ])?;
    Ok((server, format!("iscsi://127.0.0.1:{port}/{iqn}/1")))
}

/// The appliance's boot config: the virtio-blk disk and a null bdev, each a
/// target node open to any initiator.
fn appliance_config(path: &Path) -> Result<(), String> {
    let node = |name: &str, bdev: &str| {
        format!(
            r#"{{"method":"iscsi_create_target_node","params":{{"name":"{name}","alias_name":"{name}","luns":[{{"bdev_name":"{bdev}","lun_id":0}}],"pg_ig_maps":[{{"pg_tag":1,"ig_tag":1}}],"queue_depth":128}}}}"#
        )
    };
    let json = format!(
        r#"{{"subsystems":[{{"subsystem":"bdev","config":[{{"method":"bdev_null_create","params":{{"name":"Null0","num_blocks":8388608,"block_size":512}}}}]}},
{{"subsystem":"iscsi","config":[{{"method":"iscsi_create_portal_group","params":{{"tag":1,"portals":[{{"host":"0.0.0.0","port":"3260"}}]}}}},
{{"method":"iscsi_create_initiator_group","params":{{"tag":1,"initiators":["ANY"],"netmasks":["ANY"]}}}},{},{}]}}]}}"#,
        node("vblk", "VirtioBlk0"),
        node("null", "Null0")
    );
    std::fs::write(path, json).map_err(|e| e.to_string())
}

/// One iSCSI LUN measured from the VMs' side: its target and portal.
struct VmTarget {
    iqn: String,
    portal: &'static str,
}

impl VmTarget {
    fn new(iqn: String, portal: &'static str) -> Self {
        VmTarget { iqn, portal }
    }

    fn url(&self) -> String {
        format!("iscsi://{}:3260/{}/0", self.portal, self.iqn)
    }
}

fn initiator_script(targets: &[VmTarget], seconds: u32, runs: u32) -> String {
    let mut s = String::from(
        "set -e\n\
         wait_dev() { for _ in $(seq 100); do [ -b \"$1\" ] && return 0; sleep 0.1; done; return 1; }\n\
         iscsid -f &\nsleep 1\n",
    );
    let _ = writeln!(
        s,
        "iscsiadm -m discovery -t sendtargets -p {}:3260 >/dev/null",
        targets.first().map_or(APPLIANCE, |t| t.portal)
    );
    for (t, target) in targets.iter().enumerate() {
        let _ = writeln!(
            s,
            "iscsiadm -m node -T {} -p {}:3260 --login\nwait_dev /dev/sda",
            target.iqn, target.portal
        );
        for (w, (_, opts)) in crate::peers::WORKLOADS.iter().enumerate() {
            for run in 0..runs {
                let _ = writeln!(
                    s,
                    "echo \"RESULT|{t}|{w}|{run}|$({})\"",
                    crate::peers::fio_cmd("/dev/sda", opts, seconds)
                );
            }
        }
        let _ = writeln!(s, "iscsiadm -m node --logoutall=all\nsleep 1");
    }
    s
}

/// Per target: fio (IOPS, MiB/s) per workload, then iscsi-perf IOPS per workload.
type VmRows = Vec<(Vec<(f64, f64)>, Vec<f64>)>;

/// Runs the initiator guest against `targets` (whose server is up), then
/// iscsi-perf from the namespace.
fn measure_vms(
    ns: &mut Netns,
    guest: &ironbay_tests::rig::guest::GuestImage,
    targets: &[VmTarget],
    seconds: u32,
    runs: u32,
    server: &Running,
) -> Result<VmRows, String> {
    let dir = crate::workspace_root().join("target/bench");
    let script = dir.join("iscsi-initiator.sh");
    std::fs::write(&script, initiator_script(targets, seconds, runs)).map_err(|e| e.to_string())?;
    let mut init = GuestVm::new(&script);
    init.ip = Some("10.55.0.2/24".into());
    init.mac = "52:54:00:1b:10:02".into();
    init.tap = Some(ns.add_tap()?);
    let mut init_vm = init.start(guest, Some(ns))?;
    let budget = 600 + (seconds as u64 + 3) * runs as u64 * 4 * targets.len() as u64;
    let (rc, out) = vm::finish(&mut init_vm, Duration::from_secs(budget))?;
    drop(init_vm);
    if rc != 0 {
        return Err(format!(
            "initiator script exited {rc}\n{out}\n----- target -----\n{}",
            server.output()
        ));
    }
    let wrap = |c: Command| ns.wrap(&c);
    let mut rows = Vec::new();
    for (t, target) in targets.iter().enumerate() {
        let mut fio_rows = Vec::new();
        for (w, _) in crate::peers::WORKLOADS.iter().enumerate() {
            fio_rows.push(crate::peers::fio_medians(&out, t, w)?);
        }
        rows.push((fio_rows, perf(&wrap, &target.url(), seconds, runs)?));
    }
    Ok(rows)
}

pub fn bench(args: &[String]) -> Result<(), String> {
    let (mut seconds, mut runs) = (10, 3);
    crate::number_flags(
        args,
        &mut [("--seconds", &mut seconds), ("--runs", &mut runs)],
        "usage: cargo xtask bench iscsi [--seconds N] [--runs N]",
    )?;
    crate::prereq::ensure_host_packages()?;
    let images = build::build(true)?;
    let hosted = build_hosted()?;
    let dir = crate::workspace_root().join("target/bench");
    let file = dir.join("iscsi.img");
    crate::bench::filled_disk(&file, 1 << 30)?;
    crate::bench::warm_page_cache(&file)?;
    let local = |c: Command| c;

    // Natively on the host: the hosted runner, then tgt, on the same file.
    let port = free_port();
    let ours = {
        let _server = spawn(
            Command::new(&hosted).args([
                "--iscsi",
                &format!("127.0.0.1:{port}"),
                "--export",
                &format!("disk={}", file.display()),
            ]),
            port,
        )?;
        let url = format!("iscsi://127.0.0.1:{port}/iqn.2016-06.io.ironbay:disk/0");
        perf(&local, &url, seconds, runs)?
    };
    let tgt_rows = {
        let port = free_port();
        let (_server, url) = tgt(&file, port)?;
        perf(&local, &url, seconds, runs)?
    };

    // VMs on the bridge, one target VM at a time (they share the file):
    // the appliance, then LIO, each measured from the initiator guest and
    // from the namespace.
    let guest = crate::rig::build()?;
    let mut ns = Netns::create("iscsibench")?;
    let cfg = dir.join("iscsi-appliance.json");
    appliance_config(&cfg)?;
    let appliance = crate::bench::appliance_vm(&mut ns, &images.kernel, cfg, APPLIANCE, &file)?;
    let ours_vm = measure_vms(
        &mut ns,
        &guest,
        &[
            VmTarget::new(format!("{APPLIANCE_IQN}:vblk"), APPLIANCE),
            VmTarget::new(format!("{APPLIANCE_IQN}:null"), APPLIANCE),
        ],
        seconds,
        runs,
        &appliance,
    )?;
    drop(appliance);

    let spare = dir.join("iscsi-peer-vda.img");
    crate::bench::filled_disk(&spare, 64 << 20)?;
    let peer_vm = crate::bench::peer_vm(&mut ns, &guest, LIO, vec![spare, file.clone()])?;
    let lio_vm = measure_vms(
        &mut ns,
        &guest,
        &[
            VmTarget::new(format!("{LIO_IQN}:peer-vdb"), LIO),
            VmTarget::new(format!("{LIO_IQN}:peer-null"), LIO),
        ],
        seconds,
        runs,
        &peer_vm,
    )?;
    drop(peer_vm);
    drop(ns);

    println!("\niSCSI, median of {runs} runs of {seconds} s:");
    println!(" natively on the host over loopback, iscsi-perf, same 1 GiB file:");
    print_perf("ironbay hosted runner", &ours, None);
    print_perf("tgt (tgtd)", &tgt_rows, Some(&ours));
    println!(
        " VMs over the tap bridge (TCG, 1 vCPU and 1 GiB each, one at a time; the file as virtio-blk, and null devices):"
    );
    let devices = ["virtio-blk", "null"];
    println!("  fio (libaio, direct) in a Linux initiator guest:");
    for (d, device) in devices.iter().enumerate() {
        for (w, (wname, _)) in crate::peers::WORKLOADS.iter().enumerate() {
            let (oi, om) = ours_vm[d].0[w];
            let (li, lm) = lio_vm[d].0[w];
            println!(
                "    {device:<10} {wname:<17} ironbay {oi:>7.0} IOPS {om:>7.1} MiB/s | LIO {li:>7.0} IOPS {lm:>7.1} MiB/s | ironbay/LIO {:.2}x",
                oi / li.max(1.0)
            );
        }
    }
    println!("  iscsi-perf from the bridge's namespace:");
    for (d, device) in devices.iter().enumerate() {
        for (w, (wname, _)) in PERF.iter().enumerate() {
            let (o, l) = (ours_vm[d].1[w], lio_vm[d].1[w]);
            println!(
                "    {device:<10} {wname:<17} ironbay {o:>7.0} IOPS | LIO {l:>7.0} IOPS | ironbay/LIO {:.2}x",
                o / l.max(1.0)
            );
        }
    }
    Ok(())
}
