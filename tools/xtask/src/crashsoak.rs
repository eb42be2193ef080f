//! `powercut [--kills N] [--seed S]`: the power-cut test
//! (`tests/tests/powercut.rs`) with N kills instead of CI's 20.
//!
//! QEMU is killed with SIGKILL at random moments while logical volume
//! operations (and, with a config store, configuration changes) and fio's
//! verified writes run; each reboot must find the store, the volumes, the
//! configuration and every acknowledged, flushed write. The test is the one
//! implementation; this command only sets its kill count and seed
//! (`IRONBAY_POWERCUT_KILLS`, `IRONBAY_POWERCUT_SEED`) and runs it with the
//! kernel built from the tree (or `IRONBAY_KERNEL`). A failure names the
//! seed that replays it.

use crate::{build, cargo, prereq, sh};

const USAGE: &str = "usage: cargo xtask powercut [--kills N] [--seed S]";

pub fn powercut(rest: &[String]) -> Result<(), String> {
    let (mut kills, mut seed) = (200u64, None);
    let mut it = rest.iter();
    while let Some(a) = it.next() {
        let value = it
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| format!("{a} needs a number\n{USAGE}"));
        match a.as_str() {
            "--kills" => kills = value?,
            "--seed" => seed = Some(value?),
            _ => return Err(USAGE.into()),
        }
    }
    prereq::ensure_host_packages()?;
    let kernel = match std::env::var_os("IRONBAY_KERNEL") {
        Some(k) => k.into(),
        None => build::build(true)?.kernel,
    };
    let mut c = cargo();
    c.args([
        "test",
        "-p",
        "ironbay-tests",
        "--test",
        "powercut",
        "--",
        "--ignored",
        "--nocapture",
    ]);
    c.env("IRONBAY_KERNEL", &kernel)
        .env("IRONBAY_POWERCUT_KILLS", kills.to_string());
    if let Some(s) = seed {
        c.env("IRONBAY_POWERCUT_SEED", s.to_string());
    }
    sh(&mut c)
}
