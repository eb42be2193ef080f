//! `bench peers`: the Linux peer targets (nvmet-tcp and LIO) on virtio-blk
//! and null_blk, measured from a Linux initiator guest over the tap bridge,
//! plus the bridge's own ceiling with iperf3. These are the reference figures
//! our targets are compared against.

use crate::rig;
use ironbay_tests::rig::fio::{self, median};
use ironbay_tests::rig::netns::Netns;
use ironbay_tests::rig::vm::{self, GuestVm};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

/// (label, how to attach, device in the initiator, how to detach)
const TARGETS: &[(&str, &str, &str, &str)] = &[
    (
        "nvmet-tcp virtio-blk",
        "nvme connect -t tcp -n nqn.2014-08.org.ironbay:peer-vda -a 10.55.0.3 -s 4420",
        "/dev/nvme0n1",
        "nvme disconnect-all",
    ),
    (
        "nvmet-tcp null_blk",
        "nvme connect -t tcp -n nqn.2014-08.org.ironbay:peer-null -a 10.55.0.3 -s 4420",
        "/dev/nvme0n1",
        "nvme disconnect-all",
    ),
    (
        "LIO iSCSI virtio-blk",
        "iscsiadm -m node -T iqn.2003-01.org.ironbay:peer-vdb -p 10.55.0.3:3260 --login",
        "/dev/sda",
        "iscsiadm -m node --logoutall=all",
    ),
    (
        "LIO iSCSI null_blk",
        "iscsiadm -m node -T iqn.2003-01.org.ironbay:peer-null -p 10.55.0.3:3260 --login",
        "/dev/sda",
        "iscsiadm -m node --logoutall=all",
    ),
];

/// fio job options for the two workloads every benchmark reports.
pub const WORKLOADS: &[(&str, &str)] = &[
    ("4k randread QD32", "--rw=randread --bs=4k --iodepth=32"),
    ("128k read QD8", "--rw=read --bs=128k --iodepth=8"),
];

pub fn fio_cmd(dev: &str, opts: &str, seconds: u32) -> String {
    format!(
        "fio --name=job --filename={dev} {opts} --ioengine=libaio --direct=1 --time_based \
         --runtime={seconds} --ramp_time=1 --output-format=terse --terse-version=3"
    )
}

fn initiator_script(seconds: u32, runs: u32) -> String {
    let mut s = String::from(
        "set -e\nmkdir -p /etc/nvme\nnvme gen-hostnqn > /etc/nvme/hostnqn\n\
         wait_dev() { for _ in $(seq 100); do [ -b \"$1\" ] && return 0; sleep 0.1; done; return 1; }\n\
         iscsid -f &\nsleep 1\niscsiadm -m discovery -t sendtargets -p 10.55.0.3:3260 >/dev/null\n\
         echo \"RESULT|net|iperf3|0|$(iperf3 -c 10.55.0.3 -t 5 -f m | grep receiver)\"\n",
    );
    for (t, (_, attach, dev, detach)) in TARGETS.iter().enumerate() {
        let _ = writeln!(s, "{attach}\nwait_dev {dev}");
        for (w, (_, opts)) in WORKLOADS.iter().enumerate() {
            for run in 0..runs {
                let _ = writeln!(
                    s,
                    "echo \"RESULT|{t}|{w}|{run}|$({})\"",
                    fio_cmd(dev, opts, seconds)
                );
            }
        }
        let _ = writeln!(s, "{detach}\nsleep 1");
    }
    s
}

/// Median IOPS and MiB/s (reads plus writes: a job does one or the other)
/// of the initiator script's `RESULT|t|w|run|` lines (fio terse output) for
/// target `t` and workload `w`.
pub fn fio_medians(out: &str, t: usize, w: usize) -> Result<(f64, f64), String> {
    let prefix = format!("RESULT|{t}|{w}|");
    let (mut iops, mut mibs) = (Vec::new(), Vec::new());
    for line in out.lines().filter(|l| l.starts_with(&prefix)) {
        let terse = line.splitn(5, '|').nth(4).unwrap_or("");
        let r = fio::parse_terse(terse).ok_or_else(|| format!("unreadable fio result: {line}"))?;
        iops.push(r.read_iops + r.write_iops);
        mibs.push((r.read_kib_s + r.write_kib_s) / 1024.0);
    }
    Ok((median(&mut iops), median(&mut mibs)))
}

/// Bits per second from iperf3's receiver line ("... 1.23 Gbits/sec ... receiver").
fn iperf_mbits(line: &str) -> Option<f64> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let i = words.iter().position(|w| w.ends_with("bits/sec"))?;
    let v: f64 = words.get(i.checked_sub(1)?)?.parse().ok()?;
    Some(match words[i] {
        "Gbits/sec" => v * 1000.0,
        "Kbits/sec" => v / 1000.0,
        _ => v,
    })
}

pub fn peers(args: &[String]) -> Result<(), String> {
    let (mut seconds, mut runs) = (10, 3);
    crate::number_flags(
        args,
        &mut [("--seconds", &mut seconds), ("--runs", &mut runs)],
        "usage: cargo xtask bench peers [--seconds N] [--runs N]",
    )?;
    crate::prereq::ensure_host_packages()?;
    let image = rig::build()?;
    let dir = crate::workspace_root().join("target/bench");
    let (vda, vdb) = (dir.join("peer-vda.img"), dir.join("peer-vdb.img"));
    crate::bench::filled_disk(&vda, 1 << 30)?;
    crate::bench::filled_disk(&vdb, 1 << 30)?;
    let script = dir.join("peer-initiator.sh");
    std::fs::write(&script, initiator_script(seconds, runs)).map_err(|e| e.to_string())?;

    let mut ns = Netns::create("bench")?;
    let peer_script = crate::workspace_root().join("tests/scripts/peer-targets.sh");
    let mut peer = GuestVm::new(&peer_script);
    peer.ip = Some("10.55.0.3/24".into());
    peer.mac = "52:54:00:1b:10:03".into();
    peer.tap = Some(ns.add_tap()?);
    peer.disks = vec![vda, vdb];
    let mut peer_vm = peer.start(&image, Some(&ns))?;
    peer_vm.wait_for("PEER-READY", Duration::from_secs(300))?;

    let mut init = GuestVm::new(&PathBuf::from(&script));
    init.ip = Some("10.55.0.2/24".into());
    init.mac = "52:54:00:1b:10:02".into();
    init.tap = Some(ns.add_tap()?);
    let mut init_vm = init.start(&image, Some(&ns))?;
    let budget = 600 + (seconds as u64 + 3) * runs as u64 * 8;
    let (rc, out) = vm::finish(&mut init_vm, Duration::from_secs(budget))?;
    if rc != 0 {
        return Err(format!("initiator script exited {rc}\n{out}"));
    }

    println!(
        "\nLinux peer targets from a Linux initiator over the tap bridge (TCG, 1 vCPU and 1 GiB each),"
    );
    println!("median of {runs} runs of {seconds} s:");
    for line in out.lines().filter(|l| l.starts_with("RESULT|net|")) {
        let mbits = iperf_mbits(line).ok_or_else(|| format!("unreadable iperf3 line: {line}"))?;
        println!(
            "  network ceiling (iperf3, tap bridge): {:.2} Gbit/s",
            mbits / 1000.0
        );
    }
    for (t, (label, ..)) in TARGETS.iter().enumerate() {
        for (w, (wname, _)) in WORKLOADS.iter().enumerate() {
            let (iops, mibs) = fio_medians(&out, t, w)?;
            println!("  {label:<22} {wname:<17} {iops:>9.0} IOPS {mibs:>8.1} MiB/s");
        }
    }
    drop(init_vm);
    drop(peer_vm);
    drop(ns);
    Ok(())
}
