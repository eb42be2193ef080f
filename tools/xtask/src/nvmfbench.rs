//! `bench nvmf`: fio in a Linux host guest (nvme-tcp) against the appliance
//! VM and against Linux nvmet-tcp in a guest of the same size (1 vCPU,
//! 1 GiB), each serving the same file as its virtio-blk disk and a null
//! device, over the tap bridge, in the same run. The two target VMs run one
//! after the other: they share the backing file.
//!
//! Every figure is the median of the runs; ratios are ironbay / nvmet.

use crate::build;
use ironbay_tests::rig::guest::GuestImage;
use ironbay_tests::rig::netns::Netns;
use ironbay_tests::rig::vm::{self, GuestVm};
use ironbay_tests::serial::Running;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

/// (label, fio options).
const WORKLOADS: &[(&str, &str)] = &[
    ("4k randread QD32", "--rw=randread --bs=4k --iodepth=32"),
    ("128k read QD8", "--rw=read --bs=128k --iodepth=8"),
    ("4k randwrite QD32", "--rw=randwrite --bs=4k --iodepth=32"),
];

const APPLIANCE: &str = "10.55.0.10";
const NVMET: &str = "10.55.0.3";

/// The appliance's boot config: the virtio-blk disk and a null bdev, each
/// the namespace of a subsystem open to any host.
fn appliance_config(path: &Path) -> Result<(), String> {
    let subsystem = |name: &str, bdev: &str| {
        let nqn = format!("nqn.2016-06.io.spdk:{name}");
        format!(
            r#"{{"method":"nvmf_create_subsystem","params":{{"nqn":"{nqn}","allow_any_host":true,"serial_number":"IRONBAY-BENCH-{name}"}}}},
{{"method":"nvmf_subsystem_add_listener","params":{{"nqn":"{nqn}","listen_address":{{"trtype":"TCP","adrfam":"IPv4","traddr":"0.0.0.0","trsvcid":"4420"}}}}}},
{{"method":"nvmf_subsystem_add_ns","params":{{"nqn":"{nqn}","namespace":{{"nsid":1,"bdev_name":"{bdev}"}}}}}}"#,
        )
    };
    let json = format!(
        r#"{{"subsystems":[{{"subsystem":"bdev","config":[{{"method":"bdev_null_create","params":{{"name":"Null0","num_blocks":8388608,"block_size":512}}}}]}},
{{"subsystem":"nvmf","config":[{{"method":"nvmf_create_transport","params":{{"trtype":"TCP"}}}},{},{}]}}]}}"#,
        subsystem("vblk", "VirtioBlk0"),
        subsystem("null", "Null0")
    );
    std::fs::write(path, json).map_err(|e| e.to_string())
}

fn host_script(targets: &[(&str, String)], seconds: u32, runs: u32) -> String {
    let mut s = String::from(
        "set -e\nmkdir -p /etc/nvme\nnvme gen-hostnqn > /etc/nvme/hostnqn\n\
         wait_dev() { for _ in $(seq 100); do [ -b \"$1\" ] && return 0; sleep 0.1; done; return 1; }\n",
    );
    for (t, (addr, nqn)) in targets.iter().enumerate() {
        let _ = writeln!(
            s,
            "nvme connect -t tcp -a {addr} -s 4420 -n {nqn}\nwait_dev /dev/nvme0n1"
        );
        for (w, (_, opts)) in WORKLOADS.iter().enumerate() {
            for run in 0..runs {
                let _ = writeln!(
                    s,
                    "echo \"RESULT|{t}|{w}|{run}|$({})\"",
                    crate::peers::fio_cmd("/dev/nvme0n1", opts, seconds)
                );
            }
        }
        let _ = writeln!(s, "nvme disconnect-all\nsleep 1");
    }
    s
}

/// fio (IOPS, MiB/s) per target and workload, from the host guest.
fn measure(
    ns: &mut Netns,
    guest: &GuestImage,
    targets: &[(&str, String)],
    seconds: u32,
    runs: u32,
    server: &Running,
) -> Result<Vec<Vec<(f64, f64)>>, String> {
    let dir = crate::workspace_root().join("target/bench");
    let script = dir.join("nvmf-host.sh");
    std::fs::write(&script, host_script(targets, seconds, runs)).map_err(|e| e.to_string())?;
    let mut host = GuestVm::new(&script);
    host.ip = Some("10.55.0.2/24".into());
    host.mac = "52:54:00:1b:10:02".into();
    host.tap = Some(ns.add_tap()?);
    let mut host_vm = host.start(guest, Some(ns))?;
    let budget = 600 + (seconds as u64 + 3) * runs as u64 * 4 * targets.len() as u64;
    let (rc, out) = vm::finish(&mut host_vm, Duration::from_secs(budget))?;
    drop(host_vm);
    if rc != 0 {
        return Err(format!(
            "host script exited {rc}\n{out}\n----- target -----\n{}",
            server.output()
        ));
    }
    (0..targets.len())
        .map(|t| {
            (0..WORKLOADS.len())
                .map(|w| crate::peers::fio_medians(&out, t, w))
                .collect()
        })
        .collect()
}

pub fn bench(args: &[String]) -> Result<(), String> {
    let (mut seconds, mut runs) = (10, 3);
    crate::number_flags(
        args,
        &mut [("--seconds", &mut seconds), ("--runs", &mut runs)],
        "usage: cargo xtask bench nvmf [--seconds N] [--runs N]",
    )?;
    crate::prereq::ensure_host_packages()?;
    let images = build::build(true)?;
    let dir = crate::workspace_root().join("target/bench");
    let file = dir.join("nvmf.img");
    crate::bench::filled_disk(&file, 1 << 30)?;
    crate::bench::warm_page_cache(&file)?;
    let guest = crate::rig::build()?;
    let mut ns = Netns::create("nvmfbench")?;

    let cfg = dir.join("nvmf-appliance.json");
    appliance_config(&cfg)?;
    let appliance = crate::bench::appliance_vm(&mut ns, &images.kernel, cfg, APPLIANCE, &file)?;
    let ours = measure(
        &mut ns,
        &guest,
        &[
            (APPLIANCE, "nqn.2016-06.io.spdk:vblk".into()),
            (APPLIANCE, "nqn.2016-06.io.spdk:null".into()),
        ],
        seconds,
        runs,
        &appliance,
    )?;
    drop(appliance);

    // The peer script exports vda over nvmet (and vdb over LIO, unused here).
    let spare = dir.join("nvmf-peer-vdb.img");
    crate::bench::filled_disk(&spare, 64 << 20)?;
    let peer_vm = crate::bench::peer_vm(&mut ns, &guest, NVMET, vec![file.clone(), spare])?;
    let theirs = measure(
        &mut ns,
        &guest,
        &[
            (NVMET, "nqn.2014-08.org.ironbay:peer-vda".into()),
            (NVMET, "nqn.2014-08.org.ironbay:peer-null".into()),
        ],
        seconds,
        runs,
        &peer_vm,
    )?;
    drop(peer_vm);
    drop(ns);

    println!(
        "\nNVMe-oF/TCP, fio (libaio, direct) in a Linux host guest over the tap bridge, median of {runs} runs of {seconds} s"
    );
    println!(
        " (TCG; target VMs 1 vCPU and 1 GiB each, one at a time; the same file as virtio-blk, and null devices):"
    );
    for (d, device) in ["virtio-blk", "null"].iter().enumerate() {
        for (w, (wname, _)) in WORKLOADS.iter().enumerate() {
            let (oi, om) = ours[d][w];
            let (ni, nm) = theirs[d][w];
            println!(
                "  {device:<10} {wname:<18} ironbay {oi:>7.0} IOPS {om:>7.1} MiB/s | nvmet {ni:>7.0} IOPS {nm:>7.1} MiB/s | ironbay/nvmet {:.2}x",
                oi / ni.max(1.0)
            );
        }
    }
    Ok(())
}
