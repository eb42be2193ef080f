//! Host-side harness shared by `cargo xtask` and the QEMU tests in `tests/`.
//!
//! - [`images`]: where the built kernel images live and how to make the
//!   PVH-only variant.
//! - [`machine`]: the QEMU command line for an appliance (disks, NICs,
//!   port forwards, boot protocol) as one description, used by `xtask run`
//!   and by every test.
//! - [`pxe`]: a TFTP folder with an iPXE script, the kernel and its config.
//! - [`serial`]: a running machine whose console we read and wait on.
//! - [`rig`]: the Linux guest rig (initiator and peer target) and its
//!   private network.
//! - [`libiscsi`]: iscsi-test-cu runs and their summaries.
//! - [`attack`]: hostile clients (idle sockets, floods of unread reads,
//!   trickled writes) and verified real clients for load tests.

#![forbid(unsafe_code)]

pub mod attack;
pub mod images;
pub mod libiscsi;
pub mod machine;
pub mod nvmf;
pub mod pxe;
pub mod rig;
pub mod serial;

/// QEMU's isa-debug-exit status for `ExitCode::Success` in the kernel.
pub const EXIT_SUCCESS: i32 = 33;
/// QEMU's isa-debug-exit status for `ExitCode::Failure` in the kernel.
pub const EXIT_FAILURE: i32 = 35;

/// The line the kernel prints once it serves.
pub const READY: &str = "ironbay ready:";

/// A fresh, empty `target/test-scratch/NAME`.
pub fn scratch(name: &str) -> std::path::PathBuf {
    let d = images::target_dir().join("test-scratch").join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A boot config call creating a `mib` MiB RAM bdev of 512-byte blocks.
pub fn malloc(name: &str, mib: u64) -> String {
    format!(
        r#"{{"method":"bdev_malloc_create","params":{{"name":"{name}","num_blocks":{},"block_size":512}}}}"#,
        mib * 2048
    )
}

/// Writes `target/test-scratch/NAME/config.json` with one entry per
/// (subsystem, comma-separated JSON calls) and returns its path.
pub fn boot_config(name: &str, subsystems: &[(&str, &str)]) -> std::path::PathBuf {
    let list: Vec<String> = subsystems
        .iter()
        .map(|(s, calls)| format!(r#"{{"subsystem":"{s}","config":[{calls}]}}"#))
        .collect();
    let cfg = scratch(name).join("config.json");
    std::fs::write(&cfg, format!(r#"{{"subsystems":[{}]}}"#, list.join(","))).unwrap();
    cfg
}

/// Runs SPDK's `spdk-rpc` CLI (pip package `spdk`) against the JSON-RPC
/// port forwarded to `port`; the combined output, `Err` on failure.
pub fn spdk_rpc(port: u16, args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new("spdk-rpc")
        .args(["-s", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .map_err(|e| format!("spdk-rpc (pip install spdk): {e}"))?;
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}
