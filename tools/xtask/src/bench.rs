//! `bench boot`: how long the appliance takes to be ready.

use crate::build;
use ironbay_tests::machine::{Boot, Disk, Machine};
use ironbay_tests::serial::Running;
use ironbay_tests::{EXIT_SUCCESS, READY};
use std::time::Duration;

const USAGE: &str = "usage: cargo xtask bench boot [--runs N] | blk [--seconds N] | net [--seconds N] | nbd [--seconds N] [--runs N] | iscsi [--seconds N] [--runs N] | nvmf [--seconds N] [--runs N] | peers [--seconds N] [--runs N] | lvol [--seconds N] [--runs N] | cache [--seconds N] [--runs N]";

pub fn bench(args: &[String]) -> Result<(), String> {
    match args.first().map(String::as_str) {
        Some("boot") => boot(&args[1..]),
        Some("blk") => blk(&args[1..]),
        Some("peers") => crate::peers::peers(&args[1..]),
        Some("net") => crate::netbench::bench(&args[1..]),
        Some("nbd") => crate::nbdbench::bench(&args[1..]),
        Some("iscsi") => crate::iscsibench::bench(&args[1..]),
        Some("nvmf") => crate::nvmfbench::bench(&args[1..]),
        Some("lvol") => crate::lvolbench::bench(&args[1..]),
        Some("cache") => crate::cachebench::bench(&args[1..]),
        _ => Err(USAGE.into()),
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn boot(args: &[String]) -> Result<(), String> {
    let mut runs = 5;
    crate::number_flags(args, &mut [("--runs", &mut runs)], USAGE)?;
    let runs = runs.max(1) as usize;
    crate::prereq::ensure_host_packages()?;
    let images = build::build(true)?;
    let (mut host, mut entry, mut reset) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        let m = Machine::new(Boot::Kernel {
            image: images.kernel.clone(),
            append: "test=boot".into(),
            config: None,
        });
        let mut vm = Running::spawn(m.command()).map_err(|e| format!("qemu: {e}"))?;
        let t = vm.wait_for(READY, Duration::from_secs(120))?;
        let code = vm.wait_exit(Duration::from_secs(60))?;
        if code != EXIT_SUCCESS {
            return Err(format!("boot {i} exited with {code}"));
        }
        let out = vm.output();
        let line = out.lines().find(|l| l.contains(READY)).unwrap_or_default();
        let ms = |tag: &str| -> Option<f64> {
            let before = line.split(tag).next()?;
            before.split_whitespace().last()?.parse().ok()
        };
        host.push(t.as_secs_f64() * 1000.0);
        entry.push(ms(" ms from kernel entry").unwrap_or(f64::NAN));
        reset.push(ms(" ms from machine reset").unwrap_or(f64::NAN));
        println!(
            "run {}: {:.0} ms from QEMU start to ready line; kernel says {:.1} ms from entry, {:.1} ms from reset",
            i + 1,
            host[i],
            entry[i],
            reset[i]
        );
    }
    println!(
        "boot-to-ready, median of {runs} (TCG, q35, 512 MiB, 2 vCPUs): {:.0} ms from QEMU start, {:.1} ms from kernel entry, {:.1} ms from machine reset",
        median(&mut host),
        median(&mut entry),
        median(&mut reset)
    );
    Ok(())
}

/// Writes `bytes` of non-zero data, so reads hit real blocks, not holes.
pub fn filled_disk(path: &std::path::Path, bytes: u64) -> Result<(), String> {
    if std::fs::metadata(path).is_ok_and(|m| m.len() == bytes) {
        return Ok(());
    }
    std::fs::create_dir_all(path.parent().unwrap()).map_err(|e| e.to_string())?;
    let mut f = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let chunk: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8 | 1)
        .collect();
    for _ in 0..bytes / chunk.len() as u64 {
        std::io::Write::write_all(&mut f, &chunk).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Reads the whole file once so native servers measured one after another
/// all find it in the page cache; the first would otherwise pay for the disk.
pub fn warm_page_cache(path: &std::path::Path) -> Result<(), String> {
    warm_prefix(path, u64::MAX)
}

/// Reads the first `bytes` of the file (the part a benchmark touches).
pub fn warm_prefix(path: &std::path::Path, bytes: u64) -> Result<(), String> {
    let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    std::io::copy(&mut std::io::Read::take(f, bytes), &mut std::io::sink())
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// The appliance's own block benchmark on a QEMU NVMe disk and a virtio-blk
/// disk: 4k random reads at queue depth 32 and 128k sequential reads at 8.
fn blk(args: &[String]) -> Result<(), String> {
    let mut seconds = 10;
    crate::number_flags(args, &mut [("--seconds", &mut seconds)], USAGE)?;
    let seconds = seconds.max(1);
    crate::prereq::ensure_host_packages()?;
    let images = build::build(true)?;
    let dir = crate::workspace_root().join("target/bench");
    let (nvme, vblk) = (dir.join("nvme.img"), dir.join("vblk.img"));
    filled_disk(&nvme, 1 << 30)?;
    filled_disk(&vblk, 1 << 30)?;
    let workloads = [("randread", "4k", 32), ("read", "128k", 8)];
    let mut jobs = Vec::new();
    for bdev in ["Nvme0n1", "VirtioBlk0"] {
        for (rw, bs, qd) in workloads {
            jobs.push(format!("{bdev}:{rw}:{bs}:{qd}:{seconds}"));
        }
    }
    let append = format!("test=bench bench={}", jobs.join(","));
    let mut m = Machine::new(Boot::Kernel {
        image: images.kernel,
        append,
        config: None,
    });
    m.disks = vec![Disk::nvme(0, 1, nvme), Disk::virtio(vblk)];
    m.nics = false;
    println!(
        "booting the appliance (TCG, q35, {} MiB, {} vCPUs) for {} jobs of {seconds} s",
        m.memory_mib,
        m.cpus,
        jobs.len()
    );
    let mut vm = Running::spawn(m.command()).map_err(|e| format!("qemu: {e}"))?;
    let code = vm.wait_exit(Duration::from_secs(
        120 + 2 * seconds as u64 * jobs.len() as u64,
    ))?;
    let out = vm.output();
    let lines: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split_once("bench ").map(|(_, r)| r))
        .filter(|l| l.contains("IOPS"))
        .collect();
    if code != EXIT_SUCCESS || lines.len() != jobs.len() {
        return Err(format!("benchmark run failed (exit {code})\n{out}"));
    }
    println!("\nironbay in-kernel block benchmark (bdevperf-style), TCG:");
    for l in &lines {
        println!("  {l}");
    }

    // The peer: fio in a Linux guest of the same size on the same virtio-blk
    // disk file. (QEMU's NVMe timed out inside that guest under TCG, so the
    // comparison is on virtio-blk.)
    let image = crate::rig::build()?;
    let mut script = String::from("set -e\n");
    for (w, (_, opts)) in crate::peers::WORKLOADS.iter().enumerate() {
        script.push_str(&format!(
            "echo \"RESULT|{w}|$({})\"\n",
            crate::peers::fio_cmd("/dev/vda", opts, seconds)
        ));
    }
    let script_path = dir.join("blk-peer.sh");
    std::fs::write(&script_path, script).map_err(|e| e.to_string())?;
    let mut g = ironbay_tests::rig::vm::GuestVm::new(&script_path);
    g.memory_mib = m.memory_mib;
    g.cpus = m.cpus;
    g.disks = vec![dir.join("vblk.img")];
    let mut guest = g.start(&image, None)?;
    let (rc, peer_out) =
        ironbay_tests::rig::vm::finish(&mut guest, Duration::from_secs(600 + 4 * seconds as u64))?;
    if rc != 0 {
        return Err(format!("peer fio run failed ({rc})\n{peer_out}"));
    }
    println!(
        "\nvirtio-blk side by side, {seconds} s each (TCG, {} MiB, {} vCPUs, same disk file):",
        m.memory_mib, m.cpus
    );
    println!(
        "  {:<17} {:>12} {:>12} {:>7}",
        "workload", "ironbay", "Linux+fio", "ratio"
    );
    for (w, (wname, _)) in crate::peers::WORKLOADS.iter().enumerate() {
        let terse = peer_out
            .lines()
            .find_map(|l| l.strip_prefix(&format!("RESULT|{w}|")))
            .and_then(ironbay_tests::rig::fio::parse_terse)
            .ok_or_else(|| format!("no fio result for {wname}\n{peer_out}"))?;
        let ours = lines.iter().find(|l| {
            l.starts_with("VirtioBlk0") && l.contains(if w == 0 { "randread" } else { " read " })
        });
        let iops: f64 = ours
            .and_then(|l| l.split(": ").nth(1))
            .and_then(|r| r.split(" IOPS").next())
            .and_then(|v| v.trim().parse().ok())
            .ok_or("unreadable ironbay result")?;
        println!(
            "  {wname:<17} {:>7.0} IOPS {:>7.0} IOPS {:>6.2}x",
            iops,
            terse.read_iops,
            iops / terse.read_iops.max(1.0)
        );
    }
    Ok(())
}

/// A server process for a benchmark; killed when dropped.
pub struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cmd` and waits until it accepts TCP connections on loopback `port`.
pub fn spawn_server(cmd: &mut std::process::Command, port: u16) -> Result<Server, String> {
    let child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    let s = Server(child);
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(s);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Err(format!("{cmd:?} did not listen"))
}

/// The appliance as a target VM on the namespace's bridge at `ip`, the
/// size of the rig's peer guest (so the two compare), with `disk` as its
/// virtio-blk disk and `config` as its boot config; returns once it serves.
pub fn appliance_vm(
    ns: &mut ironbay_tests::rig::netns::Netns,
    kernel: &std::path::Path,
    config: std::path::PathBuf,
    ip: &str,
    disk: &std::path::Path,
) -> Result<Running, String> {
    let mut m = Machine::new(Boot::Kernel {
        image: kernel.to_path_buf(),
        append: format!("data.ip={ip}/24"),
        config: Some(config),
    });
    let peer = peer_guest(ip, Vec::new());
    m.memory_mib = peer.memory_mib;
    m.cpus = peer.cpus;
    m.disks = vec![Disk::virtio(disk.to_path_buf())];
    m.data_tap = Some(ns.add_tap()?);
    let mut vm = Running::spawn(ns.wrap(&m.command())).map_err(|e| e.to_string())?;
    vm.wait_for(READY, Duration::from_secs(120))?;
    Ok(vm)
}

/// The rig's peer target guest (Linux nvmet-tcp on vda, LIO on vdb, null
/// devices) at `ip`.
pub fn peer_guest(ip: &str, disks: Vec<std::path::PathBuf>) -> ironbay_tests::rig::vm::GuestVm {
    let script = crate::workspace_root().join("tests/scripts/peer-targets.sh");
    let mut peer = ironbay_tests::rig::vm::GuestVm::new(&script);
    peer.ip = Some(format!("{ip}/24"));
    peer.mac = "52:54:00:1b:10:03".into();
    peer.disks = disks;
    peer
}

/// Starts the peer guest on the namespace's bridge; returns once it serves.
pub fn peer_vm(
    ns: &mut ironbay_tests::rig::netns::Netns,
    guest: &ironbay_tests::rig::guest::GuestImage,
    ip: &str,
    disks: Vec<std::path::PathBuf>,
) -> Result<Running, String> {
    let mut peer = peer_guest(ip, disks);
    peer.tap = Some(ns.add_tap()?);
    let mut vm = peer.start(guest, Some(ns))?;
    vm.wait_for("PEER-READY", Duration::from_secs(300))?;
    Ok(vm)
}
