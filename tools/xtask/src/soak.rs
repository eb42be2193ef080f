//! `soak --minutes N`: the appliance as `cargo xtask run` boots it, under
//! waves of hostile load for N minutes while verified real clients work on
//! NBD, iSCSI and NVMe-oF beside them.
//!
//! Each wave starts one attack mix from `ironbay_tests::attack` (floods of
//! unread large reads with trickled writes on one protocol or all, or idle
//! sockets beyond every port's limit) against the default exports, runs a
//! verified workload on each protocol's other export at the same time
//! (fio's nbd engine with crc32c verification; the raw iSCSI initiator and
//! NVMe-oF host writing and reading back every block), then sends the
//! attackers away and checks that fresh clients get through. The console is
//! watched for panics throughout. Everything talks to 127.0.0.1 only, and
//! every attacker stops by itself at the end of its wave.
//!
//! The kernel is built from the tree, or taken from `IRONBAY_KERNEL`.

use crate::{build, prereq, workspace_root};
use ironbay_tests::attack::{
    self, ATTACK_IQN, ATTACK_NBD, ATTACK_NQN, Appliance, Attack, CLIENT_IQN, CLIENT_NBD,
    CLIENT_NQN, HOSTNQN, MALLOC0_BLOCKS,
};
use std::time::{Duration, Instant};

const USAGE: &str = "usage: cargo xtask soak [--minutes N]";
/// Longest wave; the last one is cut to the time left.
const WAVE: Duration = Duration::from_secs(75);
/// When the flooding sessions send their bursts, after the wave starts.
const FIRE_AT: Duration = Duration::from_secs(4);
/// How long a fresh client may take to get through after a wave.
const RECOVERY: Duration = Duration::from_secs(40);

#[derive(Clone, Copy, Debug)]
enum Mix {
    Nbd,
    Iscsi,
    Nvmf,
    Idle,
    All,
}

impl Mix {
    const ROTATION: [Mix; 5] = [Mix::Nbd, Mix::Iscsi, Mix::Nvmf, Mix::Idle, Mix::All];

    fn name(self) -> &'static str {
        match self {
            Mix::Nbd => "NBD unread 32 MiB reads + trickled writes",
            Mix::Iscsi => "iSCSI unread 8 MiB READ(16)/READ(10)s + trickled WRITE(16)s",
            Mix::Nvmf => "NVMe-oF unread 128 KiB READs + trickled H2CData",
            Mix::Idle => "20 idle sockets on every data port",
            Mix::All => "floods on all three protocols at once",
        }
    }
}

/// Starts the attackers of `mix` for `life`: the readers and idle sockets,
/// or (`writers`) the trickling writers, which join once the readers'
/// bursts have landed. Each protocol leaves room for its real client: one
/// NBD connection, one iSCSI session, an NVMe-oF admin and I/O queue.
fn launch(a: &Appliance, mix: Mix, life: Duration, writers: bool) -> Vec<Attack> {
    let back = Some(Duration::from_secs(1));
    let malloc0 = || a.nvmf_ns(ATTACK_NQN, MALLOC0_BLOCKS);
    let lun = || a.iscsi_lun(ATTACK_IQN, "iqn.2024-01.org.ironbay:soak-attacker");
    let (nbd, iscsi, nvmf_queues) = match mix {
        Mix::All => (6, 6, 5),
        _ => (12, 12, 9),
    };
    // Reads at the largest payload the appliance advertises (they take
    // memory); writes larger than it (refused before taking any).
    let mut v = Vec::new();
    if matches!(mix, Mix::Nbd | Mix::All) {
        v.extend((!writers).then(|| {
            attack::nbd_read_flood(attack::NbdReadFlood {
                addr: a.addr(a.nbd),
                export: ATTACK_NBD.into(),
                connections: nbd,
                duration: life,
                reconnect: back,
                request_bytes: 4 << 20,
                burst: 32,
                fire_at: FIRE_AT,
                more_every: Some(Duration::from_secs(1)),
            })
        }));
        v.extend(writers.then(|| {
            attack::nbd_slow_write(attack::NbdSlowWrite {
                addr: a.addr(a.nbd),
                export: ATTACK_NBD.into(),
                connections: 2,
                duration: life,
                reconnect: back,
                request_bytes: 32 << 20,
                chunk: 64 << 10,
                interval: Duration::from_millis(100),
            })
        }));
    }
    if matches!(mix, Mix::Iscsi | Mix::All) {
        v.extend((!writers).then(|| {
            attack::iscsi_read_flood(attack::IscsiReadFlood {
                lun: lun(),
                connections: iscsi,
                duration: life,
                reconnect: back,
                request_bytes: 4 << 20,
                block_size: 512,
                lu_blocks: MALLOC0_BLOCKS,
                cdb: attack::ReadCdb::Both,
                burst: 32,
                fire_at: FIRE_AT,
                more_every: Some(Duration::from_secs(1)),
            })
        }));
        v.extend(writers.then(|| {
            attack::iscsi_slow_write(attack::IscsiSlowWrite {
                lun: lun(),
                connections: 2,
                duration: life,
                reconnect: back,
                request_bytes: 8 << 20,
                block_size: 512,
                lu_blocks: MALLOC0_BLOCKS,
                commands: 4,
                chunk: 16 << 10,
                interval: Duration::from_millis(100),
            })
        }));
    }
    if matches!(mix, Mix::Nvmf | Mix::All) {
        v.extend((!writers).then(|| {
            attack::nvmf_read_flood(attack::NvmfReadFlood {
                ns: malloc0(),
                controllers: 1,
                queues: nvmf_queues,
                duration: life,
                reconnect: back,
                request_bytes: 128 << 10,
                depth: 126,
                fire_at: FIRE_AT,
            })
        }));
        v.extend(writers.then(|| {
            attack::nvmf_slow_write(attack::NvmfSlowWrite {
                ns: malloc0(),
                controllers: 1,
                queues: 1,
                duration: life,
                reconnect: back,
                request_bytes: 128 << 10,
                depth: 16,
                chunk: 8 << 10,
                interval: Duration::from_millis(100),
            })
        }));
    }
    if matches!(mix, Mix::Idle) && !writers {
        for port in [a.nbd, a.iscsi, a.nvme, a.discovery] {
            v.push(attack::idle(attack::Idle {
                addr: a.addr(port),
                connections: 20,
                duration: life,
                reconnect: back,
            }));
        }
    }
    v
}

/// What the real clients did over the whole soak.
#[derive(Default)]
struct Tally {
    iscsi: attack::Latencies,
    nvmf: attack::Latencies,
    /// fio's (p50, p99) write completion latency per wave, µs.
    fio: Vec<(f64, f64)>,
    failures: Vec<String>,
}

/// Tries `f` until it succeeds or `within` passes.
fn until_ok<T>(
    a: &Appliance,
    within: Duration,
    f: &dyn Fn() -> Result<T, String>,
) -> Result<(T, u32), String> {
    let start = Instant::now();
    let mut attempt = 0;
    loop {
        attempt += 1;
        match f() {
            Ok(v) => return Ok((v, attempt)),
            Err(e) if start.elapsed() >= within || a.crashed().is_some() => {
                return Err(format!("after {attempt} attempts: {e}"));
            }
            Err(_) => std::thread::sleep(Duration::from_secs(3)),
        }
    }
}

fn crash_abort(a: &Appliance) -> Option<String> {
    a.crashed().map(|c| format!("the appliance crashed:\n{c}"))
}

/// The three real clients' verified workloads, side by side, for `run`.
fn real_clients(a: &Appliance, run: Duration, wave: usize, tally: &mut Tally) -> Vec<String> {
    let abort = || crash_abort(a);
    let seed = 0x50a4_0000 + wave as u64;
    let (nbd, iscsi, nvmf) = std::thread::scope(|sc| {
        let nbd = sc.spawn(|| {
            until_ok(a, Duration::from_secs(30), &|| {
                attack::fio_nbd_verify(&a.nbd_uri(CLIENT_NBD), run, "64k", 4, "64m", &abort)
            })
            .and_then(|(f, tries)| {
                if f.errors != 0 {
                    return Err(format!("fio error {}: {}", f.errors, f.output));
                }
                Ok((f, tries))
            })
        });
        let iscsi = sc.spawn(|| {
            let lun = a.iscsi_lun(CLIENT_IQN, "iqn.2024-01.org.ironbay:soak-client");
            let (mut i, tries) = until_ok(a, Duration::from_secs(30), &|| {
                let mut i = attack::Initiator::login(&lun, Duration::from_secs(30))?;
                i.read_capacity()?;
                Ok(i)
            })?;
            let w = attack::Workload {
                duration: run,
                io_bytes: 64 << 10,
                slots: 1024,
                // fio works on the first 64 MiB of the same disk (VirtioBlk0).
                base: 1 << 20,
                seed,
            };
            let lat = attack::verified_workload(&mut i, &w, &abort)?;
            i.logout();
            Ok::<_, String>((lat, tries))
        });
        let nvmf = sc.spawn(|| {
            let (mut c, tries) = until_ok(a, Duration::from_secs(30), &|| {
                attack::NvmfClient::connect(a.nvme, CLIENT_NQN, HOSTNQN, 1)
            })?;
            let w = attack::Workload {
                duration: run,
                io_bytes: 64 << 10,
                slots: 1024,
                base: 0,
                seed: seed ^ 0xffff,
            };
            let lat = attack::verified_workload(&mut c, &w, &abort)?;
            Ok::<_, String>((lat, tries))
        });
        (
            joined("NBD", nbd.join()),
            joined("iSCSI", iscsi.join()),
            joined("NVMe-oF", nvmf.join()),
        )
    });
    let mut lines = Vec::new();
    match nbd {
        Ok((f, tries)) => {
            let clat = f.write_clat_us.map_or("-".into(), |(p50, p99)| {
                tally.fio.push((p50, p99));
                format!("p50 {:.2} ms p99 {:.2} ms", p50 / 1000.0, p99 / 1000.0)
            });
            lines.push(format!(
                "NBD fio verify ok ({tries} tries): {:.0} write IOPS, write clat {clat}",
                f.write_iops
            ));
        }
        Err(e) => tally
            .failures
            .push(format!("wave {wave}: NBD real client: {e}")),
    }
    for (what, r, store) in [
        ("iSCSI", iscsi, &mut tally.iscsi),
        ("NVMe-oF", nvmf, &mut tally.nvmf),
    ] {
        match r {
            Ok((lat, tries)) => {
                lines.push(format!(
                    "{what} verified ok ({tries} tries): write {}; read {}",
                    attack::percentiles(&lat.write),
                    attack::percentiles(&lat.read)
                ));
                store.write.extend(lat.write);
                store.read.extend(lat.read);
            }
            Err(e) => tally
                .failures
                .push(format!("wave {wave}: {what} real client: {e}")),
        }
    }
    lines
}

fn joined<T>(what: &str, r: std::thread::Result<Result<T, String>>) -> Result<T, String> {
    r.unwrap_or_else(|_| Err(format!("{what} client thread panicked")))
}

/// Fresh clients on every protocol get through after a wave.
fn service_back(a: &Appliance) -> Result<Duration, String> {
    let start = Instant::now();
    let iscsi = a.iscsi_lun(CLIENT_IQN, "iqn.2024-01.org.ironbay:soak-fresh");
    until_ok(a, RECOVERY, &|| {
        attack::nbd_client_check(&a.nbd_uri(CLIENT_NBD))
    })
    .map_err(|e| format!("NBD: {e}"))?;
    until_ok(a, RECOVERY, &|| attack::iscsi_client_check(&iscsi))
        .map_err(|e| format!("iSCSI: {e}"))?;
    until_ok(a, RECOVERY, &|| {
        attack::nvmf_client_check(a.nvme, CLIENT_NQN, HOSTNQN)?;
        let log = attack::nvmf_discovery(a.discovery, HOSTNQN)?;
        if log.iter().any(|n| n == CLIENT_NQN) {
            Ok(())
        } else {
            Err(format!("discovery log lacks {CLIENT_NQN}: {log:?}"))
        }
    })
    .map_err(|e| format!("NVMe-oF: {e}"))?;
    Ok(start.elapsed())
}

pub fn soak(rest: &[String]) -> Result<(), String> {
    let mut minutes = 10;
    crate::number_flags(rest, &mut [("--minutes", &mut minutes)], USAGE)?;
    if minutes == 0 {
        return Err(USAGE.into());
    }
    prereq::ensure_host_packages()?;
    prereq::ensure_spdk_client()?;
    // A given kernel (as the QEMU tests take it), or today's tree built.
    let kernel = match std::env::var_os("IRONBAY_KERNEL") {
        Some(k) => std::path::PathBuf::from(k),
        None => build::build(true)?.kernel,
    };
    let dir = workspace_root().join("target/soak");
    let _ = std::fs::remove_dir_all(&dir);
    println!("soak: booting the appliance (512 MiB, default boot config) for {minutes} min");
    println!("  kernel {}", kernel.display());
    let a = Appliance::boot(&kernel, &dir, "")?;
    a.add_client_exports()?;
    let total = Duration::from_secs(u64::from(minutes) * 60);
    let start = Instant::now();
    let mut tally = Tally::default();
    let mut waves = 0;
    while waves == 0 || start.elapsed() + Duration::from_secs(30) < total {
        let left = total.saturating_sub(start.elapsed());
        let life = WAVE.min(left).max(Duration::from_secs(30));
        let mix = Mix::ROTATION[waves % Mix::ROTATION.len()];
        waves += 1;
        println!(
            "wave {waves} ({}, {:.0} s) at {:.0} s",
            mix.name(),
            life.as_secs_f64(),
            start.elapsed().as_secs_f64()
        );
        // The readers' bursts land together, then the writers join, and
        // the real clients start once the unread replies have piled up.
        let mut attacks = launch(&a, mix, life, false);
        let settle = FIRE_AT + Duration::from_secs(3);
        std::thread::sleep(settle);
        attacks.extend(launch(&a, mix, life.saturating_sub(settle), true));
        std::thread::sleep(Duration::from_secs(3));
        let run = life.saturating_sub(settle + Duration::from_secs(13));
        for line in real_clients(&a, run.max(Duration::from_secs(5)), waves, &mut tally) {
            println!("  {line}");
        }
        for x in attacks {
            let r = x.leave();
            println!("  attacker {r}");
        }
        if let Some(c) = a.crashed() {
            tally
                .failures
                .push(format!("wave {waves}: the appliance crashed:\n{c}"));
            break;
        }
        match service_back(&a) {
            Ok(took) => println!(
                "  service back: fresh NBD, iSCSI and NVMe-oF clients in {:.1} s",
                took.as_secs_f64()
            ),
            Err(e) => {
                tally
                    .failures
                    .push(format!("wave {waves}: service not back: {e}"));
                break;
            }
        }
        if let Some(l) = attack::budget_line(&a.vm.output()) {
            println!("  appliance: {l}");
        }
    }
    let console = a.vm.output();
    if let Some(c) = attack::crash_report(&console)
        && !tally.failures.iter().any(|f| f.contains("crashed"))
    {
        tally.failures.push(format!("the appliance crashed:\n{c}"));
    }
    println!(
        "\nsoak summary: {waves} waves in {:.1} min",
        start.elapsed().as_secs_f64() / 60.0
    );
    println!(
        "  iSCSI real client:   write {}; read {}",
        attack::percentiles(&tally.iscsi.write),
        attack::percentiles(&tally.iscsi.read)
    );
    println!(
        "  NVMe-oF real client: write {}; read {}",
        attack::percentiles(&tally.nvmf.write),
        attack::percentiles(&tally.nvmf.read)
    );
    let fio: Vec<String> = tally
        .fio
        .iter()
        .map(|(p50, p99)| format!("{:.1}/{:.1}", p50 / 1000.0, p99 / 1000.0))
        .collect();
    println!(
        "  NBD real client (fio write clat p50/p99 ms per wave): {}",
        fio.join(" ")
    );
    println!(
        "  appliance: {}",
        attack::budget_line(&console).unwrap_or_else(|| "no `io budget:` line".into())
    );
    println!(
        "  console: {}",
        if attack::crash_report(&console).is_some() {
            "PANIC"
        } else {
            "no panic"
        }
    );
    if tally.failures.is_empty() {
        println!("soak: passed");
        Ok(())
    } else {
        let tail: Vec<&str> = console.lines().rev().take(60).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        Err(format!(
            "soak failed:\n{}\n----- console (last 60 lines) -----\n{}",
            tally.failures.join("\n"),
            tail.join("\n")
        ))
    }
}
