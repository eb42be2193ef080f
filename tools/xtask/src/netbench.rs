//! `bench net`: TCP throughput host-to-appliance and appliance-to-host on the
//! rig's tap bridge, side by side with iperf3 against a Linux guest on the
//! same bridge, and the host CPU an idle appliance VM uses.

use crate::{build, rig};
use ironbay_tests::READY;
use ironbay_tests::machine::{Boot, Machine};
use ironbay_tests::rig::netns::Netns;
use ironbay_tests::rig::vm::GuestVm;
use ironbay_tests::serial::Running;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

const APPLIANCE: &str = "10.55.0.10";
const LINUX: &str = "10.55.0.20";

/// Hidden subcommand run inside the namespace: `__net-client send|recv ADDR SECONDS`.
/// Prints Mbit/s of TCP payload moved.
pub fn client(args: &[String]) -> Result<(), String> {
    let [dir, addr, secs] = args else {
        return Err("__net-client send|recv ADDR SECONDS".into());
    };
    let secs: u64 = secs.parse().map_err(|_| "seconds")?;
    let mut s = TcpStream::connect(addr.as_str()).map_err(|e| format!("{addr}: {e}"))?;
    let mut buf = vec![0x5au8; 1 << 20];
    let start = Instant::now();
    let mut bytes = 0u64;
    while start.elapsed() < Duration::from_secs(secs) {
        let n = if dir == "send" {
            s.write_all(&buf).map(|_| buf.len())
        } else {
            s.read(&mut buf)
        }
        .map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        bytes += n as u64;
    }
    println!(
        "{:.1}",
        bytes as f64 * 8.0 / start.elapsed().as_secs_f64() / 1e6
    );
    Ok(())
}

fn run_in(ns: &Netns, cmd: &mut Command) -> Result<String, String> {
    let out = ns.wrap(cmd).output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "{:?}: {}",
            cmd,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ours(ns: &Netns, dir: &str, port: u16, secs: u64) -> Result<f64, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = run_in(
        ns,
        Command::new(exe).args([
            "__net-client",
            dir,
            &format!("{APPLIANCE}:{port}"),
            &secs.to_string(),
        ]),
    )?;
    out.trim().parse().map_err(|_| format!("client said {out}"))
}

fn iperf(ns: &Netns, reverse: bool, secs: u64) -> Result<f64, String> {
    let mut c = Command::new("iperf3");
    c.args(["-c", LINUX, "-t", &secs.to_string(), "-f", "m"]);
    if reverse {
        c.arg("-R");
    }
    // The guest's iperf3 daemon may not listen yet, or still be closing the
    // previous test: a few tries, a second apart.
    let mut tries = 0;
    let out = loop {
        match run_in(ns, &mut c) {
            Err(e) if tries < 10 && (e.contains("Connection refused") || e.contains("busy")) => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
            r => break r?,
        }
    };
    let line = out
        .lines()
        .find(|l| l.contains("receiver"))
        .ok_or_else(|| format!("iperf3: {out}"))?;
    let w: Vec<&str> = line.split_whitespace().collect();
    let i = w
        .iter()
        .position(|x| *x == "Mbits/sec")
        .ok_or("iperf3 units")?;
    w[i - 1].parse().map_err(|_| "iperf3 number".into())
}

fn appliance(
    ns: &Netns,
    tap: &str,
    kernel: &std::path::Path,
    append: &str,
) -> Result<Running, String> {
    let mut m = Machine::new(Boot::Kernel {
        image: kernel.to_path_buf(),
        append: append.into(),
        config: None,
    });
    m.data_tap = Some(tap.into());
    let mut vm = Running::spawn(ns.wrap(&m.command())).map_err(|e| e.to_string())?;
    vm.wait_for(READY, Duration::from_secs(120))?;
    // ARP and the first SYN get through during this pause, not the measurement.
    std::thread::sleep(Duration::from_secs(1));
    Ok(vm)
}

fn idle_cpu(kernel: &std::path::Path) -> Result<f64, String> {
    let m = Machine::new(Boot::Kernel {
        image: kernel.to_path_buf(),
        append: String::new(),
        config: None,
    });
    let mut vm = Running::spawn(m.command()).map_err(|e| e.to_string())?;
    vm.wait_for(READY, Duration::from_secs(120))?;
    std::thread::sleep(Duration::from_secs(3));
    let ticks = |pid: u32| -> Result<u64, String> {
        let stat =
            std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| e.to_string())?;
        let after = stat.rsplit(')').next().unwrap_or("");
        let f: Vec<&str> = after.split_whitespace().collect();
        Ok(f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0))
    };
    let a = ticks(vm.pid())?;
    std::thread::sleep(Duration::from_secs(10));
    let b = ticks(vm.pid())?;
    // USER_HZ is 100 on Linux: ticks over 10 s, as percent of one CPU.
    Ok((b - a) as f64 / 10.0)
}

pub fn bench(args: &[String]) -> Result<(), String> {
    let mut secs = 10;
    crate::number_flags(
        args,
        &mut [("--seconds", &mut secs)],
        "usage: cargo xtask bench net [--seconds N]",
    )?;
    let secs = u64::from(secs);
    crate::prereq::ensure_host_packages()?;
    let images = build::build(true)?;
    let guest = rig::build()?;
    let mut ns = Netns::create("netbench")?;
    let tap_a = ns.add_tap()?;
    let tap_l = ns.add_tap()?;

    let base = format!("data.ip={APPLIANCE}/24");
    let vm = appliance(
        &ns,
        &tap_a,
        &images.kernel,
        &format!("{base} diag=discard:5001"),
    )?;
    let to_appliance = ours(&ns, "send", 5001, secs)?;
    drop(vm);
    let vm = appliance(
        &ns,
        &tap_a,
        &images.kernel,
        &format!("{base} diag=source:5002"),
    )?;
    let from_appliance = ours(&ns, "recv", 5002, secs)?;
    drop(vm);

    let script = crate::workspace_root().join("target/bench/iperf-server.sh");
    std::fs::create_dir_all(script.parent().unwrap()).map_err(|e| e.to_string())?;
    std::fs::write(
        &script,
        "iperf3 -s -D\necho IPERF-READY\nwhile true; do sleep 3600; done\n",
    )
    .map_err(|e| e.to_string())?;
    let mut g = GuestVm::new(&script);
    g.memory_mib = 512;
    g.cpus = 2;
    g.ip = Some(format!("{LINUX}/24"));
    g.tap = Some(tap_l);
    let mut linux = g.start(&guest, Some(&ns))?;
    linux.wait_for("IPERF-READY", Duration::from_secs(300))?;
    std::thread::sleep(Duration::from_secs(1));
    let to_linux = iperf(&ns, false, secs)?;
    let from_linux = iperf(&ns, true, secs)?;
    drop(linux);
    drop(ns);

    let idle = idle_cpu(&images.kernel)?;
    println!("\nTCP throughput on the tap bridge, {secs} s each (TCG, 512 MiB, 2 vCPUs per VM):");
    println!(
        "  {:<22} {:>12} {:>16} {:>7}",
        "direction", "ironbay", "Linux (iperf3)", "ratio"
    );
    for (what, a, l) in [
        ("host -> VM", to_appliance, to_linux),
        ("VM -> host", from_appliance, from_linux),
    ] {
        println!(
            "  {what:<22} {a:>7.0} Mbit/s {l:>9.0} Mbit/s {:>6.2}x",
            a / l.max(1.0)
        );
    }
    println!("idle appliance VM: {idle:.1}% of one host CPU over 10 s");
    Ok(())
}
