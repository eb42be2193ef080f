//! Hostile load against a booted appliance configured like `cargo xtask
//! run` (512 MiB, one NVMe and one virtio-blk disk, the default boot
//! config): for NBD, iSCSI and NVMe-oF/TCP,
//!
//! - idle sockets beyond the connection limit must not lock a real client
//!   out: the appliance evicts connections still in their handshake;
//! - every other allowed connection pipelining large reads it never drains,
//!   plus large writes whose data trickles in, must not crash the appliance
//!   or fail a real client's verified I/O on another export, and the
//!   service must be back once the attackers leave.
//!
//! The attackers are in `ironbay_tests::attack`; they only talk to the
//! appliance's ports forwarded on 127.0.0.1 and stop by themselves. Latency
//! and the appliance's `io budget:` line are printed, never asserted. Run
//! by `cargo xtask test`.

use ironbay_tests::attack::{
    self, ATTACK_IQN, ATTACK_NBD, ATTACK_NQN, Appliance, Attack, CLIENT_IQN, CLIENT_NBD,
    CLIENT_NQN, HOSTNQN, MALLOC0_BLOCKS, Report,
};
use ironbay_tests::images::{kernel, require};
use ironbay_tests::scratch;
use std::process::Command;
use std::time::{Duration, Instant};

/// Connection slots per port in the default configuration.
const SLOTS: usize = 16;
/// Idle sockets per port: more than the slots.
const IDLE: usize = 20;
/// How long the real client keeps trying while idle sockets hold the port.
const GET_THROUGH: Duration = Duration::from_secs(40);
/// The real client's verified workload under attack.
const WORKLOAD: Duration = Duration::from_secs(30);
/// When the flooding sessions, all set up by then, send their bursts.
const FIRE_AT: Duration = Duration::from_secs(4);
/// Upper bound of every attack; the tests end them earlier.
const ATTACK_LIFE: Duration = Duration::from_secs(150);

fn boot(name: &str, client_exports: bool) -> Appliance {
    let a = Appliance::boot(&require(&kernel()), &scratch(name), "")
        .unwrap_or_else(|e| panic!("boot: {e}"));
    if client_exports {
        a.add_client_exports()
            .unwrap_or_else(|e| fail(&a, &format!("client exports: {e}")));
    }
    a
}

fn fail(a: &Appliance, what: &str) -> ! {
    let crash = a
        .crashed()
        .map(|c| format!("\n----- crash -----\n{c}"))
        .unwrap_or_default();
    panic!(
        "{what}{crash}\n----- console (last 80 lines) -----\n{}",
        a.console_tail(80)
    )
}

/// An `abort` callback for clients: stop once the console shows a crash.
fn crash_check(a: &Appliance) -> impl Fn() -> Option<String> + '_ {
    move || a.crashed().map(|c| format!("the appliance crashed:\n{c}"))
}

fn print_reports(reports: &[Report]) {
    for r in reports {
        println!("  attacker {r}");
    }
}

fn print_budget(a: &Appliance) {
    match attack::budget_line(&a.vm.output()) {
        Some(l) => println!("  appliance: {l}"),
        None => println!("  appliance: no `io budget:` line on the console"),
    }
}

/// Tries `client` until it succeeds or `GET_THROUGH` passes; returns the
/// attempts and the time to success, or every failure.
fn get_through(
    a: &Appliance,
    what: &str,
    client: &dyn Fn() -> Result<String, String>,
) -> Result<(u32, Duration, String), String> {
    let start = Instant::now();
    let mut errors = Vec::new();
    for attempt in 1.. {
        if let Some(c) = a.crashed() {
            return Err(format!("the appliance crashed:\n{c}"));
        }
        match client() {
            Ok(out) => return Ok((attempt, start.elapsed(), out)),
            Err(e) => {
                let first = e.lines().take(3).collect::<Vec<_>>().join(" | ");
                errors.push(format!(
                    "  attempt {attempt} at {:.1} s: {first}",
                    start.elapsed().as_secs_f64()
                ));
            }
        }
        if start.elapsed() >= GET_THROUGH {
            break;
        }
        std::thread::sleep(Duration::from_secs(3));
    }
    Err(format!(
        "{what}: no real client got through within {GET_THROUGH:?}:\n{}",
        errors.join("\n")
    ))
}

/// Idle sockets take every slot (and reopen the ones the appliance closes)
/// on `ports` while `client` tries to get through.
fn idle_sockets_beyond_the_limit(
    a: &Appliance,
    what: &str,
    ports: &[u16],
    client: &dyn Fn() -> Result<String, String>,
) {
    let attacks: Vec<Attack> = ports
        .iter()
        .map(|&p| {
            attack::idle(attack::Idle {
                addr: a.addr(p),
                connections: IDLE,
                duration: ATTACK_LIFE,
                reconnect: Some(Duration::from_secs(1)),
            })
        })
        .collect();
    // Every socket connected (the extra ones may already be refused).
    std::thread::sleep(Duration::from_secs(3));
    let outcome = get_through(a, what, client);
    let during: Vec<Report> = attacks.iter().map(|x| x.report()).collect();
    let reports: Vec<Report> = attacks.into_iter().map(|x| x.leave()).collect();
    println!("{what}: {IDLE} idle sockets per port on {ports:?} ({SLOTS} slots)");
    print_reports(&reports);
    if let Some(c) = a.crashed() {
        fail(a, &format!("{what}: the appliance crashed:\n{c}"));
    }
    match outcome {
        Ok((attempts, took, out)) => {
            println!(
                "  real client through on attempt {attempts} after {:.1} s: {}",
                took.as_secs_f64(),
                out.lines().next().unwrap_or("")
            );
            for r in &during {
                assert!(
                    r.connects >= IDLE as u64,
                    "{what}: the idle attacker did not connect all its sockets: {r}"
                );
            }
        }
        Err(e) => fail(a, &e),
    }
    // And once they are gone.
    match get_through(a, what, client) {
        Ok((attempts, took, _)) => println!(
            "  real client after the idle sockets left: attempt {attempts}, {:.1} s",
            took.as_secs_f64()
        ),
        Err(e) => fail(a, &format!("{what}: after the idle sockets left: {e}")),
    }
}

fn nbd_client(a: &Appliance, export: &str) -> Result<String, String> {
    attack::nbd_client_check(&a.nbd_uri(export))
}

fn iscsi_tools(a: &Appliance, iqn: &str) -> Result<String, String> {
    let url = a.iscsi_url(iqn, 0);
    let inq = attack::run_bounded(
        Command::new("iscsi-inq").arg(&url),
        Duration::from_secs(30),
        &|| None,
    )?;
    let cap = attack::run_bounded(
        Command::new("iscsi-readcapacity16").arg(&url),
        Duration::from_secs(30),
        &|| None,
    )?;
    if !inq.contains("IRONBAY") {
        return Err(format!("iscsi-inq: {inq}"));
    }
    Ok(format!(
        "iscsi-inq and iscsi-readcapacity16 on {iqn}: {}",
        cap.split_whitespace().collect::<Vec<_>>().join(" ")
    ))
}

fn iscsi_client(a: &Appliance, iqn: &str) -> Result<String, String> {
    let tools = iscsi_tools(a, iqn)?;
    let io =
        attack::iscsi_client_check(&a.iscsi_lun(iqn, "iqn.2024-01.org.ironbay:hostile-client"))?;
    Ok(format!("{tools}; {io}"))
}

fn nvmf_client(a: &Appliance) -> Result<String, String> {
    let io = attack::nvmf_client_check(a.nvme, ATTACK_NQN, HOSTNQN)?;
    let log = attack::nvmf_discovery(a.discovery, HOSTNQN)?;
    if !log.iter().any(|n| n == ATTACK_NQN) {
        return Err(format!("discovery log on 8009 lacks {ATTACK_NQN}: {log:?}"));
    }
    Ok(format!("{io}; discovery on 8009 lists {log:?}"))
}

#[test]
#[ignore = "boots QEMU; run through cargo xtask test"]
fn nbd_idle_sockets_beyond_the_limit_do_not_lock_out_a_real_client() {
    let start = Instant::now();
    let a = boot("hostile-nbd-idle", false);
    idle_sockets_beyond_the_limit(&a, "NBD", &[a.nbd], &|| nbd_client(&a, ATTACK_NBD));
    println!("  took {:.0} s", start.elapsed().as_secs_f64());
}

#[test]
#[ignore = "boots QEMU; run through cargo xtask test"]
fn iscsi_idle_sockets_beyond_the_limit_do_not_lock_out_a_real_client() {
    let start = Instant::now();
    let a = boot("hostile-iscsi-idle", false);
    idle_sockets_beyond_the_limit(&a, "iSCSI", &[a.iscsi], &|| iscsi_client(&a, ATTACK_IQN));
    println!("  took {:.0} s", start.elapsed().as_secs_f64());
}

#[test]
#[ignore = "boots QEMU; run through cargo xtask test"]
fn nvmf_idle_sockets_beyond_the_limit_do_not_lock_out_a_real_host() {
    let start = Instant::now();
    let a = boot("hostile-nvmf-idle", false);
    idle_sockets_beyond_the_limit(&a, "NVMe-oF", &[a.nvme, a.discovery], &|| nvmf_client(&a));
    println!("  took {:.0} s", start.elapsed().as_secs_f64());
}

/// Runs `f`; a failure `again` accepts is retried twice, 3 s apart,
/// unless the appliance crashed.
fn retried<T>(
    a: &Appliance,
    f: &dyn Fn() -> Result<T, String>,
    again: &dyn Fn(&str) -> bool,
) -> Result<T, String> {
    let mut last = String::new();
    for attempt in 1..=3 {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if again(&e) && a.crashed().is_none() && attempt < 3 => {
                println!("  real client: attempt {attempt} failed, retrying: {e}");
                last = e;
                std::thread::sleep(Duration::from_secs(3));
            }
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// Waits until `attack` has `want` sessions open (a crash or 40 s ends
/// the wait).
fn wait_open(a: &Appliance, attack: &Attack, want: i64) {
    let until = Instant::now() + Duration::from_secs(40);
    while Instant::now() < until && a.crashed().is_none() && attack.open() < want {
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The readers first: all their sessions set up, then their bursts land
/// together at `FIRE_AT`. The trickling writers join a little later, and
/// the unread replies get a few seconds to pile up.
fn ramp_up(
    a: &Appliance,
    readers: Attack,
    want_readers: i64,
    writers: impl FnOnce() -> Attack,
    want_writers: i64,
) -> (Attack, Attack) {
    let start = Instant::now();
    wait_open(a, &readers, want_readers);
    println!("  readers set up: {}", readers.report());
    let fired = FIRE_AT + Duration::from_secs(3);
    std::thread::sleep(fired.saturating_sub(start.elapsed()));
    let writers = writers();
    wait_open(a, &writers, want_writers);
    std::thread::sleep(Duration::from_secs(3));
    println!("  ramped up: {}", readers.report());
    println!("  ramped up: {}", writers.report());
    (readers, writers)
}

/// After the attack: the console shows no crash, and a fresh client gets
/// through (retried while the appliance closes the attackers' sockets).
fn after_the_attack(
    a: &Appliance,
    what: &str,
    reports: &[Report],
    workload: Result<(), String>,
    fresh: &dyn Fn() -> Result<String, String>,
) {
    print_reports(reports);
    if let Some(c) = a.crashed() {
        fail(
            a,
            &format!("{what}: the appliance crashed under attack:\n{c}"),
        );
    }
    if let Err(e) = workload {
        fail(
            a,
            &format!("{what}: the real client's verified I/O failed: {e}"),
        );
    }
    match get_through(a, what, fresh) {
        Ok((attempts, took, out)) => println!(
            "  fresh client after the attackers left (attempt {attempts}, {:.1} s): {out}",
            took.as_secs_f64()
        ),
        Err(e) => fail(a, &format!("{what}: after the attackers left: {e}")),
    }
    print_budget(a);
    if let Some(c) = a.crashed() {
        fail(a, &format!("{what}: the appliance crashed:\n{c}"));
    }
}

#[test]
#[ignore = "boots QEMU; run through cargo xtask test"]
fn nbd_unread_large_reads_and_trickled_writes_leave_a_real_client_served() {
    let start = Instant::now();
    let a = boot("hostile-nbd-flood", false);
    // Fifteen of the sixteen slots; the real client takes the last.
    let readers = attack::nbd_read_flood(attack::NbdReadFlood {
        addr: a.addr(a.nbd),
        export: ATTACK_NBD.into(),
        connections: 12,
        duration: ATTACK_LIFE,
        reconnect: Some(Duration::from_secs(1)),
        request_bytes: 4 << 20,
        burst: 32,
        fire_at: FIRE_AT,
        more_every: Some(Duration::from_secs(1)),
    });
    let writers = || {
        attack::nbd_slow_write(attack::NbdSlowWrite {
            addr: a.addr(a.nbd),
            export: ATTACK_NBD.into(),
            connections: 3,
            duration: ATTACK_LIFE,
            reconnect: Some(Duration::from_secs(1)),
            request_bytes: 4 << 20,
            chunk: 64 << 10,
            interval: Duration::from_millis(100),
        })
    };
    // At the largest payload the appliance advertises (4 MiB under the
    // default budget): larger ones are refused before any memory is taken.
    println!("NBD: 12 connections pipelining 4 MiB reads unread, 3 trickling 4 MiB writes");
    let (readers, writers) = ramp_up(&a, readers, 12, writers, 3);
    let abort = crash_check(&a);
    // A connection refused while an attacker's closed socket still holds
    // its slot is retried; anything later in the run is a failure.
    let fio = retried(
        &a,
        &|| attack::fio_nbd_verify(&a.nbd_uri(CLIENT_NBD), WORKLOAD, "64k", 4, "64m", &abort),
        &|e| e.contains("nbd_connect_uri"),
    );
    let workload = fio.and_then(|f| {
        let us = |p: Option<(f64, f64)>| {
            p.map_or("-".into(), |(p50, p99)| {
                format!("p50 {:.2} ms p99 {:.2} ms", p50 / 1000.0, p99 / 1000.0)
            })
        };
        println!(
            "  real client (fio nbd, randwrite with crc32c verify-backlog reads, 64k QD4 on \
             {CLIENT_NBD}): {:.0} write IOPS, errors {}; write clat {}, verify-read clat {}",
            f.write_iops,
            f.errors,
            us(f.write_clat_us),
            us(f.read_clat_us)
        );
        if f.errors == 0 {
            Ok(())
        } else {
            Err(format!("fio reported error {}: {}", f.errors, f.output))
        }
    });
    let reports = [readers.leave(), writers.leave()];
    after_the_attack(&a, "NBD", &reports, workload, &|| {
        nbd_client(&a, CLIENT_NBD)
    });
    println!("  took {:.0} s", start.elapsed().as_secs_f64());
}

#[test]
#[ignore = "boots QEMU; run through cargo xtask test"]
fn iscsi_unread_large_reads_and_trickled_writes_leave_a_real_client_served() {
    let start = Instant::now();
    let a = boot("hostile-iscsi-flood", true);
    let lun = a.iscsi_lun(ATTACK_IQN, "iqn.2024-01.org.ironbay:attacker");
    // Fifteen of the sixteen sockets on 3260; the real client takes the last.
    let readers = attack::iscsi_read_flood(attack::IscsiReadFlood {
        lun: lun.clone(),
        connections: 12,
        duration: ATTACK_LIFE,
        reconnect: Some(Duration::from_secs(1)),
        request_bytes: 4 << 20,
        block_size: 512,
        lu_blocks: MALLOC0_BLOCKS,
        cdb: attack::ReadCdb::Both,
        burst: 32,
        fire_at: FIRE_AT,
        more_every: Some(Duration::from_secs(1)),
    });
    let writers = || {
        attack::iscsi_slow_write(attack::IscsiSlowWrite {
            lun,
            connections: 3,
            duration: ATTACK_LIFE,
            reconnect: Some(Duration::from_secs(1)),
            request_bytes: 4 << 20,
            block_size: 512,
            lu_blocks: MALLOC0_BLOCKS,
            commands: 4,
            chunk: 16 << 10,
            interval: Duration::from_millis(100),
        })
    };
    println!(
        "iSCSI: 12 sessions pipelining 4 MiB READ(16)/READ(10)s unread, 3 trickling 4 MiB WRITE(16)s"
    );
    let (readers, writers) = ramp_up(&a, readers, 12, writers, 3);
    let abort = crash_check(&a);
    let workload = (|| -> Result<(), String> {
        let lun = a.iscsi_lun(CLIENT_IQN, "iqn.2024-01.org.ironbay:hostile-client");
        let mut i = retried(
            &a,
            &|| {
                let mut i = attack::Initiator::login(&lun, Duration::from_secs(30))?;
                i.read_capacity()?;
                Ok(i)
            },
            &|_| true,
        )?;
        let w = attack::Workload {
            duration: WORKLOAD,
            io_bytes: 64 << 10,
            slots: 1024,
            base: 0,
            seed: 0x15c5_1001,
        };
        let lat = attack::verified_workload(&mut i, &w, &abort)?;
        println!(
            "  real client (raw initiator, 64k write + read-back verify on {CLIENT_IQN}): \
             write {}; read {}",
            attack::percentiles(&lat.write),
            attack::percentiles(&lat.read)
        );
        i.logout();
        // A client nobody here wrote, while the attack goes on: QEMU's
        // iSCSI driver writes patterns and reads them back verified.
        let mut args = vec!["-f".to_string(), "raw".into(), a.iscsi_url(CLIENT_IQN, 0)];
        for k in 0..16u64 {
            let (off, pattern) = ((64 + k) << 20, 0x40 + k);
            args.extend(["-c".into(), format!("write -P {pattern} {off} 64k")]);
            args.extend(["-c".into(), format!("read -P {pattern} {off} 64k")]);
        }
        let started = Instant::now();
        let out = retried(
            &a,
            &|| {
                let mut cmd = Command::new("qemu-io");
                cmd.args(&args);
                attack::run_bounded(&mut cmd, Duration::from_secs(120), &abort)
            },
            &|_| true,
        )?;
        if out.contains("failed") || out.matches("read 65536/65536").count() != 16 {
            return Err(format!("qemu-io over iSCSI:\n{out}"));
        }
        println!(
            "  real client (qemu-io, QEMU's iSCSI driver: 16 x 64k pattern write + verified \
             read on {CLIENT_IQN}): ok in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        Ok(())
    })();
    let reports = [readers.leave(), writers.leave()];
    after_the_attack(&a, "iSCSI", &reports, workload, &|| {
        iscsi_client(&a, CLIENT_IQN)
    });
    println!("  took {:.0} s", start.elapsed().as_secs_f64());
}

#[test]
#[ignore = "boots QEMU; run through cargo xtask test"]
fn nvmf_unread_large_reads_and_trickled_writes_leave_a_real_host_served() {
    let start = Instant::now();
    let a = boot("hostile-nvmf-flood", true);
    // Fourteen of the sixteen sockets on 4420 (two admin queues, twelve I/O
    // queues); the real host's admin and I/O queue take the rest.
    let readers = attack::nvmf_read_flood(attack::NvmfReadFlood {
        ns: a.nvmf_ns(ATTACK_NQN, MALLOC0_BLOCKS),
        controllers: 1,
        queues: 10,
        duration: ATTACK_LIFE,
        reconnect: Some(Duration::from_secs(1)),
        request_bytes: 128 << 10,
        depth: 126,
        fire_at: FIRE_AT,
    });
    let writers = || {
        attack::nvmf_slow_write(attack::NvmfSlowWrite {
            ns: a.nvmf_ns(ATTACK_NQN, MALLOC0_BLOCKS),
            controllers: 1,
            queues: 2,
            duration: ATTACK_LIFE,
            reconnect: Some(Duration::from_secs(1)),
            request_bytes: 128 << 10,
            depth: 32,
            chunk: 8 << 10,
            interval: Duration::from_millis(100),
        })
    };
    println!(
        "NVMe-oF: 10 I/O queues with 126 unread 128 KiB READs each, 2 trickling 128 KiB WRITEs"
    );
    let (readers, writers) = ramp_up(&a, readers, 11, writers, 3);
    let abort = crash_check(&a);
    let workload = (|| -> Result<(), String> {
        let mut c = retried(
            &a,
            &|| attack::NvmfClient::connect(a.nvme, CLIENT_NQN, HOSTNQN, 1),
            &|_| true,
        )?;
        let w = attack::Workload {
            duration: WORKLOAD,
            io_bytes: 64 << 10,
            slots: 1024,
            base: 0,
            seed: 0x4e56_4d45,
        };
        let lat = attack::verified_workload(&mut c, &w, &abort)?;
        println!(
            "  real host (raw host, 64k write + read-back verify on {CLIENT_NQN} ns 1 = Nvme0n1 \
             of {} blocks): write {}; read {}",
            c.blocks,
            attack::percentiles(&lat.write),
            attack::percentiles(&lat.read)
        );
        Ok(())
    })();
    let reports = [readers.leave(), writers.leave()];
    after_the_attack(&a, "NVMe-oF", &reports, workload, &|| {
        let io = attack::nvmf_client_check(a.nvme, CLIENT_NQN, HOSTNQN)?;
        let log = attack::nvmf_discovery(a.discovery, HOSTNQN)?;
        Ok(format!("{io}; discovery lists {log:?}"))
    });
    println!("  took {:.0} s", start.elapsed().as_secs_f64());
}
