//! `bench boot`: how long the appliance takes to be ready.

use crate::build;
use ironbay_tests::machine::{Boot, Machine};
use ironbay_tests::serial::Running;
use ironbay_tests::{EXIT_SUCCESS, READY};
use std::time::Duration;

pub fn bench(args: &[String]) -> Result<(), String> {
    match args.first().map(String::as_str) {
        Some("boot") => boot(&args[1..]),
        _ => Err("usage: cargo xtask bench boot [--runs N]".into()),
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn boot(args: &[String]) -> Result<(), String> {
    let runs = match args {
        [flag, n] if flag == "--runs" => n
            .parse::<usize>()
            .map_err(|_| "--runs needs a number")?
            .max(1),
        [] => 5,
        _ => return Err("usage: cargo xtask bench boot [--runs N]".into()),
    };
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
