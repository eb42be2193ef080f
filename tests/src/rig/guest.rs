//! Builds the rig's Linux guest from Debian packages: the bookworm kernel and
//! its modules, busybox, nvme-cli, open-iscsi, fio, iperf3, e2fsprogs,
//! qemu-nbd and nbdkit with the libraries they load. Packages come from `apt-get download` and are
//! unpacked with `dpkg -x`; libraries are found with the unpacked system's own
//! loader; the initramfs is written here, so the host needs no cpio or kmod.
//! The result is cached under `target/rig/` and rebuilt only when the recipe
//! or the kernel package changes.

use super::cpio;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Bump when the recipe below changes, so caches are rebuilt.
const RECIPE: &str = "ironbay-rig-5";

const TOOLS: &[&str] = &[
    "busybox-static",
    "nvme-cli",
    "open-iscsi",
    "fio",
    "iperf3",
    "qemu-utils",
    "nbdkit",
    "e2fsprogs",
];

const MODULES: &[&str] = &[
    "configfs",
    "virtio_pci",
    "virtio_net",
    "virtio_blk",
    "nvme-core",
    "nvme-fabrics",
    "nvme-tcp",
    "nvmet",
    "nvmet-tcp",
    "iscsi_tcp",
    "libiscsi",
    "libiscsi_tcp",
    "scsi_transport_iscsi",
    "sd_mod",
    "target_core_mod",
    "target_core_iblock",
    "target_core_file",
    "iscsi_target_mod",
    "null_blk",
    "brd",
    "crc32c_generic",
    "qemu_fw_cfg",
    "ext4",
];

/// Binaries copied into the guest with the libraries they need.
const BINARIES: &[&str] = &[
    "bin/busybox",
    "usr/sbin/nvme",
    "sbin/iscsiadm",
    "sbin/iscsid",
    "usr/bin/fio",
    "usr/bin/iperf3",
    "usr/bin/qemu-nbd",
    "usr/bin/nbdkit",
    "sbin/mke2fs",
    "sbin/e2fsck",
    // Loaded by nbdkit at run time, so listed here for its libraries too.
    "usr/lib/x86_64-linux-gnu/nbdkit/plugins/nbdkit-file-plugin.so",
];

const INIT: &str = include_str!("init.sh");

pub struct GuestImage {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| format!("{shown}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{shown} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The versioned kernel package `linux-image-amd64` points at.
fn kernel_package() -> Result<String, String> {
    let deps = run(Command::new("apt-cache").args(["depends", "linux-image-amd64"]))?;
    deps.lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Depends: ")
                .filter(|p| p.starts_with("linux-image-"))
                .map(String::from)
        })
        .ok_or_else(|| "apt-cache knows no linux-image-amd64: run `apt-get update`".into())
}

/// Library packages the tools need, from apt's dependency closure.
fn library_packages() -> Result<Vec<String>, String> {
    let out = run(Command::new("apt-cache").args([
        "depends",
        "--recurse",
        "--no-recommends",
        "--no-suggests",
        "--no-conflicts",
        "--no-breaks",
        "--no-replaces",
        "--no-enhances",
        "nvme-cli",
        "open-iscsi",
        "fio",
        "iperf3",
        "qemu-utils",
        "nbdkit",
        "e2fsprogs",
    ]))?;
    let set: BTreeSet<String> = out
        .lines()
        .filter(|l| !l.starts_with(' ') && !l.starts_with('<'))
        .map(|l| l.trim().to_string())
        .filter(|p| {
            p.starts_with("lib")
                && !p.ends_with("-dev")
                && !p.contains("-bin")
                && !p.contains("l10n")
        })
        .collect();
    Ok(set.into_iter().collect())
}

/// Returns the cached guest, building it first if needed.
pub fn build(cache: &Path) -> Result<GuestImage, String> {
    let kpkg = kernel_package()?;
    let stamp = format!("{RECIPE} {kpkg}\n");
    let image = GuestImage {
        kernel: cache.join("vmlinuz"),
        initrd: cache.join("initrd.cpio"),
    };
    if std::fs::read_to_string(cache.join("stamp")).ok().as_deref() == Some(stamp.as_str())
        && image.kernel.exists()
        && image.initrd.exists()
    {
        return Ok(image);
    }
    let debs = cache.join("debs");
    let root = cache.join("root");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&debs).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&root).map_err(|e| e.to_string())?;

    let mut pkgs: Vec<String> = vec![kpkg.clone()];
    pkgs.extend(TOOLS.iter().map(|s| s.to_string()));
    pkgs.extend(library_packages()?);
    run(Command::new("apt-get")
        .arg("download")
        .args(&pkgs)
        .current_dir(&debs))
    .map_err(|e| format!("{e}\n(apt-get update may be needed)"))?;
    for entry in std::fs::read_dir(&debs).map_err(|e| e.to_string())? {
        let p = entry.map_err(|e| e.to_string())?.path();
        if p.extension().is_some_and(|x| x == "deb") {
            run(Command::new("dpkg").arg("-x").arg(&p).arg(&root))?;
        }
    }

    let version = kpkg.trim_start_matches("linux-image-").to_string();
    std::fs::copy(root.join(format!("boot/vmlinuz-{version}")), &image.kernel)
        .map_err(|e| format!("kernel: {e}"))?;
    let busybox = root.join("bin/busybox");
    run(Command::new(&busybox)
        .args(["depmod", "-b"])
        .arg(&root)
        .arg(&version))?;
    let modules = module_closure(&root.join("lib/modules").join(&version))?;
    let libs = libraries(&root)?;

    let mut w = cpio::Writer::new(std::io::BufWriter::new(
        std::fs::File::create(&image.initrd).map_err(|e| e.to_string())?,
    ));
    let io = |e: std::io::Error| e.to_string();
    for d in [
        "bin",
        "sbin",
        "usr",
        "usr/bin",
        "usr/sbin",
        "lib",
        "lib/modules",
        "lib64",
        "lib/x86_64-linux-gnu",
        "usr/lib",
        "usr/lib/x86_64-linux-gnu",
        "usr/lib/x86_64-linux-gnu/nbdkit",
        "usr/lib/x86_64-linux-gnu/nbdkit/plugins",
        "etc",
        "etc/iscsi",
        "proc",
        "sys",
        "dev",
        "tmp",
        "run",
        "var",
        "var/lib",
        "var/lib/iscsi",
        "var/lock",
        "root",
        "mnt",
    ] {
        w.dir(d).map_err(io)?;
    }
    w.file("init", INIT.as_bytes(), true).map_err(io)?;
    w.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", false)
        .map_err(io)?;
    w.file("etc/group", b"root:x:0:\n", false).map_err(io)?;
    if let Ok(conf) = std::fs::read(root.join("etc/iscsi/iscsid.conf")) {
        w.file("etc/iscsi/iscsid.conf", &conf, false).map_err(io)?;
    }
    for b in BINARIES {
        let data = std::fs::read(root.join(b)).map_err(|e| format!("{b}: {e}"))?;
        w.file(b, &data, true).map_err(io)?;
    }
    for (dest, src) in &libs {
        let data = std::fs::read(src).map_err(|e| format!("{}: {e}", src.display()))?;
        w.file(dest, &data, true).map_err(io)?;
    }
    w.symlink(
        "lib64/ld-linux-x86-64.so.2",
        "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
    )
    .map_err(io)?;
    let mut order = String::new();
    for (name, path) in &modules {
        let data = std::fs::read(path).map_err(|e| format!("{name}: {e}"))?;
        w.file(&format!("lib/modules/{name}"), &data, false)
            .map_err(io)?;
        order.push_str(name);
        order.push('\n');
    }
    w.file("lib/modules/load.order", order.as_bytes(), false)
        .map_err(io)?;
    w.finish().map_err(io)?;
    std::fs::write(cache.join("stamp"), stamp).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_dir_all(&root);
    Ok(image)
}

/// The modules we want plus everything they depend on, in load order
/// (dependencies first), as (file name, path).
fn module_closure(moddir: &Path) -> Result<Vec<(String, PathBuf)>, String> {
    let dep = std::fs::read_to_string(moddir.join("modules.dep"))
        .map_err(|e| format!("modules.dep: {e}"))?;
    let builtin = std::fs::read_to_string(moddir.join("modules.builtin")).unwrap_or_default();
    let norm = |s: &str| s.replace('-', "_");
    let stem = |p: &str| norm(p.rsplit('/').next().unwrap_or(p).trim_end_matches(".ko"));
    let mut deps: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    for line in dep.lines() {
        let Some((m, rest)) = line.split_once(':') else {
            continue;
        };
        deps.insert(
            stem(m),
            (m.to_string(), rest.split_whitespace().map(stem).collect()),
        );
    }
    let builtin: BTreeSet<String> = builtin.lines().map(stem).collect();
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    fn visit(
        m: &str,
        deps: &BTreeMap<String, (String, Vec<String>)>,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<String>,
    ) {
        if !seen.insert(m.to_string()) {
            return;
        }
        if let Some((_, ds)) = deps.get(m) {
            for d in ds {
                visit(d, deps, seen, order);
            }
            order.push(m.to_string());
        }
    }
    for m in MODULES {
        let m = norm(m);
        if builtin.contains(&m) {
            continue;
        }
        if !deps.contains_key(&m) {
            return Err(format!("module {m} is neither built in nor in modules.dep"));
        }
        visit(&m, &deps, &mut seen, &mut order);
    }
    Ok(order
        .into_iter()
        .map(|m| {
            let rel = &deps[&m].0;
            (
                rel.rsplit('/').next().unwrap_or(rel).to_string(),
                moddir.join(rel),
            )
        })
        .collect())
}

/// Every shared library the binaries load, as (path in the guest, file on
/// the host), found by the unpacked system's own dynamic loader.
fn libraries(root: &Path) -> Result<Vec<(String, PathBuf)>, String> {
    let mut libdirs = vec![
        root.join("lib/x86_64-linux-gnu"),
        root.join("usr/lib/x86_64-linux-gnu"),
    ];
    let loader = libdirs[0].join("ld-linux-x86-64.so.2");
    // Private library directories (ceph's, for one) that packages reach by RUNPATH.
    for base in libdirs.clone() {
        if let Ok(dir) = std::fs::read_dir(&base) {
            libdirs.extend(dir.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
        }
    }
    let search = libdirs
        .iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let mut out: BTreeMap<String, PathBuf> = BTreeMap::new();
    out.insert(
        "lib/x86_64-linux-gnu/ld-linux-x86-64.so.2".into(),
        loader.clone(),
    );
    for b in BINARIES.iter().filter(|b| **b != "bin/busybox") {
        let list = run(Command::new(&loader)
            .arg("--list")
            .arg("--library-path")
            .arg(&search)
            .arg(root.join(b)))?;
        for line in list.lines() {
            let line = line.trim();
            if line.contains("not found") {
                return Err(format!("{b}: {line}"));
            }
            let Some((name, rest)) = line.split_once(" => ") else {
                continue;
            };
            let path = rest.split(" (").next().unwrap_or("").trim();
            if path.is_empty() {
                continue;
            }
            // Keep the library under its soname in the guest's library dir.
            let real = std::fs::canonicalize(path).map_err(|e| format!("{path}: {e}"))?;
            out.insert(format!("lib/x86_64-linux-gnu/{}", name.trim()), real);
        }
    }
    Ok(out.into_iter().collect())
}
