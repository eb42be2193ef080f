//! Host prerequisites: the Rust target and Debian packages.

use crate::{sh, workspace_root};
use std::path::Path;
use std::process::Command;

/// The pinned toolchain from rust-toolchain.toml.
fn pinned_toolchain() -> Result<String, String> {
    let text = std::fs::read_to_string(workspace_root().join("rust-toolchain.toml"))
        .map_err(|e| format!("rust-toolchain.toml: {e}"))?;
    text.lines()
        .find_map(|l| {
            l.trim().strip_prefix("channel").map(|v| {
                v.trim_start_matches([' ', '='])
                    .trim_matches('"')
                    .to_string()
            })
        })
        .ok_or_else(|| "rust-toolchain.toml has no channel".into())
}

/// rustup does not add a missing target to an installed toolchain by itself.
pub fn ensure_rust_target() -> Result<(), String> {
    let toolchain = pinned_toolchain()?;
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed", "--toolchain", &toolchain])
        .output()
        .map_err(|e| {
            format!(
                "rustup not found ({e}); install rustup, then run `rustup toolchain install` here"
            )
        })?;
    if String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|l| l.trim() == crate::build::TARGET)
    {
        return Ok(());
    }
    if !installed.status.success() {
        // The toolchain itself is missing: this reads rust-toolchain.toml.
        sh(Command::new("rustup")
            .args(["toolchain", "install"])
            .current_dir(workspace_root()))?;
    }
    sh(Command::new("rustup").args([
        "target",
        "add",
        crate::build::TARGET,
        "--toolchain",
        &toolchain,
    ]))
}

struct Need {
    /// A program on PATH or an absolute file path that shows the package is there.
    probe: &'static str,
    package: &'static str,
}

const NEEDS: &[Need] = &[
    Need {
        probe: "qemu-system-x86_64",
        package: "qemu-system-x86",
    },
    Need {
        probe: "/usr/lib/ipxe/qemu/efi-virtio.rom",
        package: "ipxe-qemu",
    },
    Need {
        probe: "qemu-img",
        package: "qemu-utils",
    },
    Need {
        probe: "objcopy",
        package: "binutils",
    },
    Need {
        probe: "ip",
        package: "iproute2",
    },
    Need {
        probe: "iperf3",
        package: "iperf3",
    },
    Need {
        probe: "nbdinfo",
        package: "libnbd-bin",
    },
    Need {
        probe: "fio",
        package: "fio",
    },
    Need {
        probe: "nbdkit",
        package: "nbdkit",
    },
    Need {
        probe: "iscsi-test-cu",
        package: "libiscsi-bin",
    },
    Need {
        // qemu-io's iSCSI driver: a real client in the hostile-load tests.
        probe: "/usr/lib/x86_64-linux-gnu/qemu/block-iscsi.so",
        package: "qemu-block-extra",
    },
    Need {
        probe: "tgtd",
        package: "tgt",
    },
    Need {
        // The REST API's tests are curl + jq scripts.
        probe: "curl",
        package: "curl",
    },
    Need {
        probe: "jq",
        package: "jq",
    },
];

fn present(probe: &str) -> bool {
    if probe.starts_with('/') {
        return Path::new(probe).exists();
    }
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(probe).is_file()))
        .unwrap_or(false)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

/// Installs missing host packages (root) or prints the command (others).
pub fn ensure_host_packages() -> Result<(), String> {
    let missing: Vec<&str> = NEEDS
        .iter()
        .filter(|n| !present(n.probe))
        .map(|n| n.package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    // Installing qemu-system-x86 alone would replace a newer qemu-utils (the
    // machine's qemu-img/qemu-nbd) with Debian's older one, or refuse to; name
    // qemu-utils in the same command so apt resolves them together.
    let mut pkgs: Vec<&str> = missing.clone();
    if !pkgs.contains(&"qemu-utils") {
        pkgs.push("qemu-utils");
    }
    let cmd = format!(
        "apt-get install -y --no-install-recommends {}",
        pkgs.join(" ")
    );
    if !is_root() {
        return Err(format!(
            "missing host packages: {}\nrun as root:\n  apt-get update && {cmd}\n\
             (on Debian 12 with qemu-utils from bookworm-backports, add `-t bookworm-backports`)",
            missing.join(", ")
        ));
    }
    eprintln!("xtask: installing {}", missing.join(", "));
    let apt = |extra: &[&str]| {
        let mut c = Command::new("apt-get");
        c.args(["install", "-y", "--no-install-recommends"])
            .args(extra)
            .args(&pkgs);
        c.env("DEBIAN_FRONTEND", "noninteractive");
        sh(&mut c)
    };
    sh(Command::new("apt-get").args(["update", "-qq"]))?;
    if apt(&[]).is_ok() {
        return Ok(());
    }
    // The installed qemu-utils came from bookworm-backports: take QEMU from
    // there too, so the two stay one version.
    if installed_version("qemu-utils").is_some_and(|v| v.contains("bpo12")) {
        enable_backports()?;
        sh(Command::new("apt-get").args(["update", "-qq"]))?;
        return apt(&["-t", "bookworm-backports"]);
    }
    Err(format!("`{cmd}` failed"))
}

fn installed_version(pkg: &str) -> Option<String> {
    let o = Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", pkg])
        .output()
        .ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Adds bookworm-backports from the same mirror the system's bookworm entry uses.
fn enable_backports() -> Result<(), String> {
    let path = Path::new("/etc/apt/sources.list.d/ironbay-backports.sources");
    if path.exists() {
        return Ok(());
    }
    let uri =
        bookworm_mirror().ok_or("no bookworm entry in the apt sources to take a mirror from")?;
    eprintln!(
        "xtask: enabling bookworm-backports ({uri}) in {}",
        path.display()
    );
    std::fs::write(
        path,
        format!(
            "Types: deb\nURIs: {uri}\nSuites: bookworm-backports\nComponents: main\n\
             Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        ),
    )
    .map_err(|e| format!("{}: {e}", path.display()))
}

/// The archive URI of the system's `bookworm` suite, from deb822 or one-line sources.
fn bookworm_mirror() -> Option<String> {
    let mut files = vec![std::path::PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        files.extend(dir.flatten().map(|e| e.path()));
    }
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        // deb822 stanzas
        for stanza in text.split("\n\n") {
            let field = |name: &str| {
                stanza
                    .lines()
                    .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
            };
            if let (Some(uris), Some(suites)) = (field("URIs:"), field("Suites:"))
                && suites.split_whitespace().any(|s| s == "bookworm")
            {
                return uris.split_whitespace().next().map(String::from);
            }
        }
        // one-line format: deb URI SUITE COMPONENTS
        for l in text.lines() {
            let w: Vec<&str> = l
                .split_whitespace()
                .filter(|w| !w.starts_with('['))
                .collect();
            if w.len() >= 3 && w[0] == "deb" && w[2] == "bookworm" {
                return Some(w[1].to_string());
            }
        }
    }
    None
}

/// The rig downloads Debian packages: make sure apt knows the kernel package.
pub fn ensure_apt_lists() -> Result<(), String> {
    let known = Command::new("apt-cache")
        .args(["depends", "linux-image-amd64"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("Depends: linux-image-"))
        .unwrap_or(false);
    if known {
        return Ok(());
    }
    if !is_root() {
        return Err(
            "apt has no package lists for the rig guest: run `apt-get update` as root".into(),
        );
    }
    sh(Command::new("apt-get").args(["update", "-qq"]))
}

/// SPDK's own Python client, for the JSON-RPC tests; Python `requests`,
/// the HTTP client targetd's own client and tests use; and QEMU's own QMP
/// library (`qemu.qmp`, with `qmp-shell`).
pub fn ensure_spdk_client() -> Result<(), String> {
    if !present("spdk-rpc") {
        sh(Command::new("python3").args(["-m", "pip", "install", "--quiet", "spdk"]))?;
    }
    for (module, package) in [("requests", "requests"), ("qemu.qmp", "qemu.qmp")] {
        let has = Command::new("python3")
            .args(["-c", &format!("import {module}")])
            .status()
            .is_ok_and(|s| s.success());
        if !has {
            sh(Command::new("python3").args(["-m", "pip", "install", "--quiet", package]))?;
        }
    }
    Ok(())
}
