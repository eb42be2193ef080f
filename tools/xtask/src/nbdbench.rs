//! `bench nbd`: fio's nbd engine, 4k random reads at queue depth 32 and 128k
//! sequential reads at queue depth 8, against
//! - the hosted runner, qemu-nbd and nbdkit, natively on the host over
//!   loopback, serving the same file (ratios to both);
//! - the appliance VM over the rig's tap bridge, the file as its virtio-blk
//!   disk.

use crate::bench::spawn_server as spawn;
use crate::{build, build_hosted};
use ironbay_tests::READY;
use ironbay_tests::machine::{Boot, Disk, Machine, free_port};
use ironbay_tests::rig::fio::{self, median};
use ironbay_tests::rig::netns::Netns;
use ironbay_tests::rig::vm::GuestVm;
use ironbay_tests::serial::Running;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const WORKLOADS: &[(&str, &str)] = &[
    ("4k randread QD32", "--rw=randread --bs=4k --iodepth=32"),
    ("128k read QD8", "--rw=read --bs=128k --iodepth=8"),
];

fn fio_run(
    wrap: &dyn Fn(Command) -> Command,
    uri: &str,
    opts: &str,
    seconds: u32,
) -> Result<fio::Result, String> {
    let mut c = Command::new("fio");
    c.args([
        "--name=job",
        "--ioengine=nbd",
        &format!("--uri={uri}"),
        "--time_based",
        &format!("--runtime={seconds}"),
    ]);
    c.args([
        "--ramp_time=1",
        "--size=512m",
        "--output-format=terse",
        "--terse-version=3",
    ]);
    c.args(opts.split_whitespace());
    let out = wrap(c).output().map_err(|e| format!("fio: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    fio::parse_terse(&text).ok_or_else(|| {
        format!(
            "fio against {uri}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn measure(
    wrap: &dyn Fn(Command) -> Command,
    uri: &str,
    seconds: u32,
    runs: u32,
) -> Result<Vec<(f64, f64)>, String> {
    let mut rows = Vec::new();
    for (_, opts) in WORKLOADS {
        let (mut iops, mut mib) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let r = fio_run(wrap, uri, opts, seconds)?;
            iops.push(r.read_iops);
            mib.push(r.read_kib_s / 1024.0);
        }
        rows.push((median(&mut iops), median(&mut mib)));
    }
    Ok(rows)
}

fn print(label: &str, rows: &[(f64, f64)], base: Option<&[(f64, f64)]>) {
    for ((w, _), (iops, mib)) in WORKLOADS.iter().zip(rows) {
        let ratio = base.map_or(String::new(), |b| {
            let i = WORKLOADS.iter().position(|x| x.0 == *w).unwrap_or(0);
            format!("  ironbay/this {:.2}x", b[i].0 / iops.max(1.0))
        });
        println!("  {label:<24} {w:<17} {iops:>9.0} IOPS {mib:>8.1} MiB/s{ratio}");
    }
}

pub fn bench(args: &[String]) -> Result<(), String> {
    let (mut seconds, mut runs) = (10, 3);
    crate::number_flags(
        args,
        &mut [("--seconds", &mut seconds), ("--runs", &mut runs)],
        "usage: cargo xtask bench nbd [--seconds N] [--runs N]",
    )?;
    crate::prereq::ensure_host_packages()?;
    let images = build::build(true)?;
    let hosted = build_hosted()?;
    let file = crate::workspace_root().join("target/bench/nbd.img");
    crate::bench::filled_disk(&file, 1 << 30)?;
    crate::bench::warm_page_cache(&file)?;
    let f = file.display().to_string();
    let local = |c: Command| c;

    // The same file behind each native server, one at a time.
    let servers: [(&str, Vec<String>); 3] = [
        (
            hosted.to_str().unwrap_or_default(),
            vec![
                "--listen".into(),
                "127.0.0.1:{port}".into(),
                "--export".into(),
                format!("disk={f}"),
            ],
        ),
        (
            "qemu-nbd",
            [
                "-f",
                "raw",
                "-x",
                "disk",
                "-b",
                "127.0.0.1",
                "-p",
                "{port}",
                "-t",
                "-e",
                "8",
                &f,
            ]
            .map(String::from)
            .to_vec(),
        ),
        (
            "nbdkit",
            [
                "-f",
                "-i",
                "127.0.0.1",
                "-p",
                "{port}",
                "file",
                &format!("file={f}"),
            ]
            .map(String::from)
            .to_vec(),
        ),
    ];
    let mut native = Vec::new();
    for (program, args) in servers {
        let port = free_port();
        let args: Vec<String> = args
            .iter()
            .map(|a| a.replace("{port}", &port.to_string()))
            .collect();
        let _server = spawn(Command::new(program).args(&args), port)?;
        native.push(measure(
            &local,
            &format!("nbd://127.0.0.1:{port}/disk"),
            seconds,
            runs,
        )?);
    }
    let [ours, qemu, nbdkit] = <[Rows; 3]>::try_from(native).map_err(|_| "three servers")?;
    let guest = crate::rig::build()?;
    let (appliance, guest_qemu, guest_nbdkit) =
        over_tap(&images.kernel, &guest, &file, seconds, runs)?;

    println!("\nNBD with fio's nbd engine, median of {runs} runs of {seconds} s, same 1 GiB file:");
    println!(" natively on the host over loopback:");
    print("ironbay hosted runner", &ours, None);
    print("qemu-nbd", &qemu, Some(&ours));
    print("nbdkit file plugin", &nbdkit, Some(&ours));
    println!(
        " VMs over the tap bridge (TCG, 512 MiB, 2 vCPUs, the file as their virtio-blk disk):"
    );
    print("ironbay appliance", &appliance, None);
    print("qemu-nbd in Linux guest", &guest_qemu, Some(&appliance));
    print("nbdkit in Linux guest", &guest_nbdkit, Some(&appliance));
    Ok(())
}

type Rows = Vec<(f64, f64)>;

/// The appliance, then qemu-nbd and nbdkit in a Linux guest of the same size,
/// each with the file as its virtio-blk disk, measured from the host side of
/// the bridge.
fn over_tap(
    kernel: &Path,
    guest: &ironbay_tests::rig::guest::GuestImage,
    file: &Path,
    seconds: u32,
    runs: u32,
) -> Result<(Rows, Rows, Rows), String> {
    let mut ns = Netns::create("nbdbench")?;
    let tap = ns.add_tap()?;
    let guest_tap = ns.add_tap()?;
    let mut m = Machine::new(Boot::Kernel {
        image: kernel.to_path_buf(),
        append: "data.ip=10.55.0.10/24".into(),
        config: None,
    });
    m.disks = vec![Disk::virtio(file.to_path_buf())];
    m.data_tap = Some(tap.clone());
    let mut vm = Running::spawn(ns.wrap(&m.command())).map_err(|e| e.to_string())?;
    vm.wait_for(READY, Duration::from_secs(120))?;
    std::thread::sleep(Duration::from_secs(1));
    let wrap = |c: Command| ns.wrap(&c);
    let appliance = measure(&wrap, "nbd://10.55.0.10:10809/VirtioBlk0", seconds, runs)?;
    drop(vm);

    let script = crate::workspace_root().join("target/bench/nbd-peers.sh");
    std::fs::write(
        &script,
        "qemu-nbd -f raw -x disk -p 10809 -t -e 8 /dev/vda &\n\
         nbdkit -p 10810 file file=/dev/vda\n\
         sleep 2\necho NBD-PEERS-READY\nwhile true; do sleep 3600; done\n",
    )
    .map_err(|e| e.to_string())?;
    let mut g = GuestVm::new(&script);
    g.memory_mib = m.memory_mib;
    g.cpus = m.cpus;
    g.ip = Some("10.55.0.20/24".into());
    g.tap = Some(guest_tap);
    g.disks = vec![file.to_path_buf()];
    let mut linux = g.start(guest, Some(&ns))?;
    linux.wait_for("NBD-PEERS-READY", Duration::from_secs(300))?;
    let qemu = measure(&wrap, "nbd://10.55.0.20:10809/disk", seconds, runs)?;
    let nbdkit = measure(&wrap, "nbd://10.55.0.20:10810/", seconds, runs)?;
    drop(linux);
    Ok((appliance, qemu, nbdkit))
}
