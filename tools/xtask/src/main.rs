//! `cargo xtask`: the dev loop for ironbay.
//!
//!   build                 kernel to target/ironbay.elf (release; --debug for a debug build)
//!   run [options]         build and boot the appliance in QEMU, serial on this terminal
//!   pxe DIR [options]     write a TFTP folder (iPXE script, kernel, config)
//!   test                  lint, host unit tests, kernel build, QEMU tests
//!   lint                  rustfmt --check and clippy -D warnings (host and kernel target)
//!   bench boot|blk|...    benchmarks (see USAGE)
//!   rig build|shell       the Linux guest rig
//!   fuzz [--seconds N]    every cargo-fuzz target
//!   soak [--minutes N]    verified real-client I/O beside hostile clients
//!   powercut [--kills N]  QEMU killed at random under lvol operations and writes
//!
//! Host packages it needs are installed with apt-get when running as root;
//! otherwise the exact command is printed.

#![forbid(unsafe_code)]

mod bench;
mod build;
mod cachebench;
mod crashsoak;
mod iscsibench;
mod lvolbench;
mod nbdbench;
mod netbench;
mod nvmfbench;
mod peers;
mod prereq;
mod rig;
mod run;
mod soak;

use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = args.split_first() else {
        eprintln!("{}", USAGE);
        return ExitCode::FAILURE;
    };
    let result = match cmd.as_str() {
        "build" => build::build(!rest.iter().any(|a| a == "--debug")).map(|_| ()),
        "run" => run::run(rest),
        "pxe" => run::pxe(rest),
        "test" => test(rest),
        "lint" => lint(),
        "bench" => bench::bench(rest),
        "rig" => rig::rig(rest),
        "hosted" => hosted(rest),
        "fuzz" => fuzz(rest),
        "soak" => soak::soak(rest),
        "powercut" => crashsoak::powercut(rest),
        "__net-client" => netbench::client(rest),
        "help" | "--help" | "-h" => {
            println!("{USAGE}");
            Ok(())
        }
        other => Err(format!("unknown command `{other}`\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

const USAGE: &str = "usage: cargo xtask <command>

  build [--debug]          build the kernel to target/ironbay.elf
  run [options]            boot the appliance in QEMU (serial here; Ctrl-A X quits)
      --memory MIB         guest memory (512)
      --cpus N             vCPUs (2)
      --nvme N             QEMU NVMe disks (1)
      --virtio-blk N       virtio-blk disks (1)
      --disk-size SIZE     size of each new sparse disk, e.g. 1G (1G)
      --disk FILE          backing file for the next disk (repeatable; NVMe first)
      --accel tcg|kvm      accelerator (tcg)
      --machine q35|pc     machine type (q35)
      --append ARGS        extra kernel command-line arguments
      --config FILE        SPDK-format JSON boot config (boot/default-config.json)
      --pvh                boot through the PVH entry instead of Multiboot
      --pxe                boot over the network through QEMU's iPXE
  pxe DIR [--append ARGS] [--config FILE]
                           write a TFTP folder for iPXE
  test [FILTER]            lint, host tests, kernel build, QEMU tests
  lint                     rustfmt --check and clippy -D warnings
  bench boot [--runs N]    boot-to-ready time, median of N boots (5)
  bench blk [--seconds N]  in-kernel block benchmark on NVMe and virtio-blk,
                           side by side with fio in a Linux guest on virtio-blk
  bench net [--seconds N]  TCP throughput both ways against Linux, idle CPU
  bench nbd [--seconds N] [--runs N]
                           NBD with fio: hosted runner vs qemu-nbd and nbdkit, and the VM
  bench iscsi [--seconds N] [--runs N]
                           iSCSI: hosted runner vs tgt (iscsi-perf), appliance VM vs LIO
                           (fio in a Linux guest and iscsi-perf), same run
  bench nvmf [--seconds N] [--runs N]
                           NVMe-oF/TCP: appliance VM vs Linux nvmet-tcp, fio in a Linux
                           host guest (4k randread, 128k read, 4k randwrite), same run
  bench peers [--seconds N] [--runs N]
                           Linux nvmet-tcp and LIO figures and the bridge ceiling
  bench cache [--seconds N] [--runs N]
                           RapidDisk over NVMe-oF/TCP, fio in a Linux host guest: warm
                           write-through cache vs bare virtio-blk (4k randread), write-back
                           vs bare (4k randwrite), RAM disk vs malloc, same run
  hosted ARGS              the NBD, iSCSI and NVMe-oF engines as a Linux process: --listen ADDR
                           --iscsi ADDR --chap USER:SECRET[:MUSER:MSECRET] --nvmf ADDR
                           --export NAME=FILE[:ro] --malloc NAME=MIB
  fuzz [--seconds N]       run every fuzz target: NBD, iSCSI and NVMe-oF engines, JSON-RPC
                           session, boot config, command line (nightly + cargo-fuzz), N s each (20)
  soak [--minutes N]       the appliance under waves of hostile load beside verified
                           NBD, iSCSI and NVMe-oF clients for N minutes (10)
  powercut [--kills N] [--seed S]
                           SIGKILL QEMU at random moments under lvol operations, config
                           changes and fio writes, N times (200); each reboot must find
                           the store, the config and every flushed write (CI runs 20)
  rig build                build the Linux guest (cached under target/rig)
  rig shell SCRIPT         boot the guest, run SCRIPT in it, print its output";

/// Runs a command, echoing it; fails on a non-zero exit.
pub fn sh(cmd: &mut Command) -> Result<(), String> {
    let shown = format!("{cmd:?}").replace('"', "");
    eprintln!("+ {shown}");
    let status = cmd
        .status()
        .map_err(|e| format!("cannot start {shown}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{shown}` failed ({status})"))
    }
}

/// Parses `--flag N` pairs into `flags`, which hold their defaults;
/// anything else is an error carrying `usage`.
pub fn number_flags(
    args: &[String],
    flags: &mut [(&str, &mut u32)],
    usage: &str,
) -> Result<(), String> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let Some((_, slot)) = flags.iter_mut().find(|(f, _)| f == a) else {
            return Err(usage.into());
        };
        **slot = it
            .next()
            .and_then(|v| v.parse().ok())
            .ok_or(format!("{a} needs a number"))?;
    }
    Ok(())
}

pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(workspace_root());
    c
}

pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

fn hosted(rest: &[String]) -> Result<(), String> {
    sh(cargo()
        .args(["run", "--release", "-q", "-p", "ironbay-hosted", "--"])
        .args(rest))
}

/// Builds the hosted runner and returns its path.
pub fn build_hosted() -> Result<std::path::PathBuf, String> {
    sh(cargo().args(["build", "--release", "-q", "-p", "ironbay-hosted"]))?;
    Ok(workspace_root().join("target/release/ironbay-hosted"))
}

/// The cargo-fuzz targets need a nightly toolchain (libFuzzer, sanitizers);
/// the rest of the project stays on the pinned release.
fn fuzz(rest: &[String]) -> Result<(), String> {
    let mut seconds = 20;
    number_flags(
        rest,
        &mut [("--seconds", &mut seconds)],
        "usage: cargo xtask fuzz [--seconds N]",
    )?;
    let nightly = |args: &[&str]| {
        let mut c = Command::new("cargo");
        c.arg("+nightly")
            .args(args)
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("CARGO");
        c
    };
    let has_nightly = Command::new("rustup")
        .args(["toolchain", "list"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("nightly"))
        .unwrap_or(false);
    if !has_nightly {
        return Err("fuzzing needs a nightly toolchain (rustup toolchain install nightly)".into());
    }
    if !nightly(&["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        sh(Command::new("cargo")
            .args(["install", "cargo-fuzz", "--locked"])
            .env_remove("RUSTUP_TOOLCHAIN"))?;
    }
    // Every target of the engines and the parsers, each seeded with its
    // crate's captured traffic (fixtures/) and its checked-in seeds.
    for krate in ["nbd", "iscsi", "nvmf", "rpc", "config"] {
        let dir = workspace_root().join(format!("kernel/crates/{krate}/fuzz"));
        for target in fuzz_targets(&dir)? {
            let corpus = dir.join("corpus").join(&target);
            std::fs::create_dir_all(&corpus).map_err(|e| e.to_string())?;
            let mut c = nightly(&["fuzz", "run", &target]);
            c.arg(&corpus);
            for seeds in [dir.join("../fixtures"), dir.join("seeds").join(&target)] {
                if seeds.is_dir() {
                    c.arg(seeds);
                }
            }
            c.args(["--", &format!("-max_total_time={seconds}")])
                .current_dir(&dir);
            sh(&mut c)?;
        }
    }
    Ok(())
}

/// The targets of a cargo-fuzz crate: its `fuzz_targets/*.rs`, by name.
fn fuzz_targets(dir: &std::path::Path) -> Result<Vec<String>, String> {
    let listing = dir.join("fuzz_targets");
    let mut targets: Vec<String> = std::fs::read_dir(&listing)
        .map_err(|e| format!("{}: {e}", listing.display()))?
        .filter_map(|e| {
            let path = e.ok()?.path();
            if path.extension()? != "rs" {
                return None;
            }
            path.file_stem()?.to_str().map(String::from)
        })
        .collect();
    targets.sort();
    Ok(targets)
}

fn lint() -> Result<(), String> {
    prereq::ensure_rust_target()?;
    sh(cargo().args(["fmt", "--all", "--check"]))?;
    sh(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    sh(cargo().args([
        "clippy",
        "-p",
        "ironbay-kernel",
        "--target",
        build::TARGET,
        "--release",
        "--",
        "-D",
        "warnings",
    ]))
}

fn test(rest: &[String]) -> Result<(), String> {
    prereq::ensure_host_packages()?;
    prereq::ensure_spdk_client()?;
    lint()?;
    let mut totals = Totals::default();
    totals.run(cargo().args(["test", "--workspace"]))?;
    // A short run of every fuzz target (engines through the endpoint,
    // JSON-RPC, boot config, command line), as every parser gets.
    fuzz(&["--seconds".into(), "10".into()])?;
    let images = build::build(true)?;
    rig::build()?;
    let hosted = build_hosted()?;
    let mut c = cargo();
    c.env("IRONBAY_HOSTED", &hosted);
    c.args(["test", "-p", "ironbay-tests", "--tests", "--", "--ignored"]);
    c.args(rest);
    c.env("IRONBAY_KERNEL", &images.kernel);
    let result = totals.run(&mut c);
    println!(
        "summary: {} passed, {} failed",
        totals.passed, totals.failed
    );
    result
}

/// Adds up the `test result:` lines of cargo test runs while passing the
/// output through, so `test` can end on one summary line.
#[derive(Default)]
struct Totals {
    passed: u64,
    failed: u64,
}

impl Totals {
    fn run(&mut self, cmd: &mut Command) -> Result<(), String> {
        use std::io::{BufRead, BufReader};
        let shown = format!("{cmd:?}").replace('"', "");
        eprintln!("+ {shown}");
        let mut child = cmd
            .stdout(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {shown}: {e}"))?;
        let out = child.stdout.take().expect("piped stdout");
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            println!("{line}");
            if let Some(rest) = line.strip_prefix("test result: ") {
                let count = |word: &str| -> u64 {
                    rest.split(';')
                        .find_map(|part| {
                            part.trim()
                                .strip_suffix(word)?
                                .trim()
                                .rsplit(' ')
                                .next()?
                                .parse()
                                .ok()
                        })
                        .unwrap_or(0)
                };
                self.passed += count(" passed");
                self.failed += count(" failed");
            }
        }
        let status = child.wait().map_err(|e| e.to_string())?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("`{shown}` failed ({status})"))
        }
    }
}
