//! `run` and `pxe`: boot the appliance by hand.

use crate::{build, prereq, workspace_root};
use ironbay_tests::machine::{Accel, Boot, DATA_PORTS, Disk, MGMT_PORTS, Machine, sparse_disk};

#[derive(Clone, Copy)]
enum Kind {
    Nvme,
    Virtio,
}
use ironbay_tests::pxe;
use std::path::PathBuf;

/// Kernel arguments for the user-networking NICs `run` attaches.
const DEFAULT_ARGS: &str = "mgmt.ip=10.0.2.15/24 mgmt.gw=10.0.2.2 data.ip=10.0.3.15/24";

struct Options {
    memory: u32,
    cpus: u32,
    nvme: usize,
    virtio_blk: usize,
    disk_size: u64,
    disks: Vec<PathBuf>,
    accel: Accel,
    machine: String,
    append: String,
    config: PathBuf,
    pvh: bool,
    pxe: bool,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let (num, mul) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 1 << 30),
        Some('T' | 't') => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mul))
        .ok_or_else(|| format!("bad size `{s}`"))
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        memory: 512,
        cpus: 2,
        nvme: 1,
        virtio_blk: 1,
        disk_size: 1 << 30,
        disks: Vec::new(),
        accel: Accel::Tcg,
        machine: "q35".into(),
        append: String::new(),
        config: workspace_root().join("boot/default-config.json"),
        pvh: false,
        pxe: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{a} needs a value"))
        };
        let num = |v: String| {
            v.parse::<u32>()
                .map_err(|_| format!("{a}: `{v}` is not a number"))
        };
        match a.as_str() {
            "--memory" => o.memory = num(val()?)?,
            "--cpus" => o.cpus = num(val()?)?,
            "--nvme" => o.nvme = num(val()?)? as usize,
            "--virtio-blk" => o.virtio_blk = num(val()?)? as usize,
            "--disk-size" => o.disk_size = parse_size(&val()?)?,
            "--disk" => o.disks.push(PathBuf::from(val()?)),
            "--accel" => {
                o.accel = match val()?.as_str() {
                    "tcg" => Accel::Tcg,
                    "kvm" => Accel::Kvm,
                    v => return Err(format!("--accel: `{v}` is neither tcg nor kvm")),
                }
            }
            "--machine" => o.machine = val()?,
            "--append" => o.append = val()?,
            "--config" => o.config = PathBuf::from(val()?),
            "--pvh" => o.pvh = true,
            "--pxe" => o.pxe = true,
            other => return Err(format!("unknown option `{other}` (see `cargo xtask help`)")),
        }
    }
    Ok(o)
}

fn kernel_args(o: &Options) -> String {
    format!("{DEFAULT_ARGS} {}", o.append).trim().to_string()
}

pub fn run(args: &[String]) -> Result<(), String> {
    let o = parse(args)?;
    prereq::ensure_host_packages()?;
    let images = build::build(true)?;
    let target = workspace_root().join("target");

    let mut explicit = o.disks.iter();
    let mut disks = Vec::new();
    for (kind, count, prefix) in [
        (Kind::Nvme, o.nvme, "nvme"),
        (Kind::Virtio, o.virtio_blk, "vblk"),
    ] {
        for i in 0..count {
            let path = match explicit.next() {
                Some(p) => p.clone(),
                None => {
                    let p = target.join("disks").join(format!("{prefix}{i}.img"));
                    sparse_disk(&p, o.disk_size).map_err(|e| format!("{}: {e}", p.display()))?;
                    p
                }
            };
            // Each NVMe disk is namespace 1 of its own controller.
            disks.push(match kind {
                Kind::Nvme => Disk::nvme(i as u8, 1, path),
                Kind::Virtio => Disk::virtio(path),
            });
        }
    }

    let boot = if o.pxe {
        let dir = target.join("pxe");
        pxe::write_folder(&dir, &images.kernel, Some(&o.config), &kernel_args(&o))
            .map_err(|e| e.to_string())?;
        Boot::Pxe { tftp_dir: dir }
    } else {
        let image = if o.pvh { images.pvh } else { images.kernel };
        Boot::Kernel {
            image,
            append: kernel_args(&o),
            config: Some(o.config.clone()),
        }
    };
    let mut m = Machine::new(boot);
    m.machine_type = o.machine.clone();
    m.memory_mib = o.memory;
    m.cpus = o.cpus;
    m.accel = o.accel;
    m.disks = disks;
    m.forward_ports = true;
    m.no_reboot = false;
    m.interactive = true;

    println!(
        "ironbay in QEMU ({} MiB, {} vCPUs, {:?}); Ctrl-A X quits.",
        o.memory, o.cpus, o.accel
    );
    println!("  management NIC 10.0.2.15:");
    for (port, what) in MGMT_PORTS {
        println!("    127.0.0.1:{port:<5} -> {what}");
    }
    println!("  data NIC 10.0.3.15:");
    for (port, what) in DATA_PORTS {
        println!("    127.0.0.1:{port:<5} -> {what}");
    }
    for d in &m.disks {
        println!("  {:?} disk: {}", d.kind, d.path.display());
    }
    crate::sh(&mut m.command())
}

pub fn pxe(args: &[String]) -> Result<(), String> {
    let (dir, rest) = args
        .split_first()
        .ok_or("pxe needs a folder: cargo xtask pxe DIR")?;
    let o = parse(rest)?;
    let images = build::build(true)?;
    let dir = PathBuf::from(dir);
    pxe::write_folder(&dir, &images.kernel, Some(&o.config), &kernel_args(&o))
        .map_err(|e| e.to_string())?;
    println!("TFTP folder ready: {}", dir.display());
    println!(
        "  serve it over TFTP and point DHCP's boot file at `{}`",
        pxe::SCRIPT
    );
    Ok(())
}
