//! The hosted runner (the NBD, iSCSI and NVMe-oF engines as a Linux process)
//! against real clients: fast checks of the same protocol code the appliance
//! runs.
//! Run by `cargo xtask test`, which builds the runner.

use ironbay_tests::images::target_dir;
use ironbay_tests::libiscsi;
use ironbay_tests::machine::free_port;
use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

struct Hosted {
    child: Child,
    port: u16,
}

impl Drop for Hosted {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How often `start` picks another port after the runner could not bind.
const START_ATTEMPTS: usize = 5;
/// How long a runner may take to say it listens (a cold start under load).
const LISTEN_TIMEOUT: Duration = Duration::from_secs(30);

/// Starts the runner serving `service` (`--listen` for NBD, `--iscsi`,
/// `--nvmf`) on a free port.
///
/// The runner is ready when *it* says it listens on the address we gave it:
/// a port from `free_port` is only free at the moment it is picked, and a
/// parallel test (or any other process) can bind it before our runner does.
/// Our runner then exits ("Address already in use") and a connect probe
/// would reach the other listener and call that "up"; the test then talks
/// to a foreign server, or to nothing once that one goes away. Here a runner
/// that exits before it listens costs one more attempt on another port.
fn start(service: &str, args: &[String]) -> Hosted {
    let bin = std::env::var("IRONBAY_HOSTED").unwrap_or_else(|_| {
        target_dir()
            .join("release/ironbay-hosted")
            .display()
            .to_string()
    });
    let mut said = String::new();
    for _ in 0..START_ATTEMPTS {
        let port = free_port();
        assert_ne!(port, 0, "no free TCP port on 127.0.0.1");
        let addr = format!("127.0.0.1:{port}");
        let mut child = Command::new(&bin)
            .args([service, &addr])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{bin}: {e} (run through cargo xtask test)"));
        let lines = forward_stderr(child.stderr.take().expect("piped stderr"));
        match wait_listening(&lines, &addr) {
            Ok(()) => return Hosted { child, port },
            Err(Some(text)) => {
                // Exited before listening: most likely lost the port.
                let _ = child.wait();
                said = text;
            }
            Err(None) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("hosted runner did not listen on {addr} within {LISTEN_TIMEOUT:?}");
            }
        }
    }
    panic!("hosted runner exited before listening, {START_ATTEMPTS} times; last:\n{said}");
}

/// Passes the runner's stderr through to the test's output, line by line,
/// and hands each line to the caller until it stops listening.
fn forward_stderr(err: ChildStderr) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines() {
            let Ok(line) = line else { break };
            eprintln!("{line}");
            let _ = tx.send(line);
        }
    });
    rx
}

/// `Ok` once a line announces a listener on exactly `addr` (the runner
/// prints "... on ADDR, ..." after binding); `Err(Some(output))` if the
/// runner closed stderr first (it exited); `Err(None)` on timeout.
fn wait_listening(lines: &Receiver<String>, addr: &str) -> Result<(), Option<String>> {
    let deadline = Instant::now() + LISTEN_TIMEOUT;
    let mut text = String::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if announces(&line, addr) => return Ok(()),
            Ok(line) => {
                text.push_str(&line);
                text.push('\n');
            }
            Err(RecvTimeoutError::Disconnected) => return Err(Some(text)),
            Err(RecvTimeoutError::Timeout) => return Err(None),
        }
    }
}

/// Whether `line` says the runner listens on `addr` (and not on a longer
/// port number that starts with the same digits).
fn announces(line: &str, addr: &str) -> bool {
    let needle = format!(" on {addr}");
    line.match_indices(&needle).any(|(at, _)| {
        !line[at + needle.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit())
    })
}

#[test]
fn listening_lines_name_the_exact_address() {
    let nvmf = "ironbay-hosted: NVMe-oF/TCP on 127.0.0.1:4042, subsystem x with 2 namespaces";
    assert!(announces(nvmf, "127.0.0.1:4042"));
    assert!(!announces(nvmf, "127.0.0.1:404"));
    assert!(announces(
        "ironbay-hosted: NBD on 127.0.0.1:10809",
        "127.0.0.1:10809"
    ));
    assert!(!announces(
        "ironbay-hosted: 127.0.0.1:4042: Address already in use (os error 98)",
        "127.0.0.1:4042"
    ));
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?}\n{text}");
    text
}

#[test]
#[ignore = "needs the hosted runner and NBD clients; run through cargo xtask test"]
fn hosted_runner_serves_files_to_real_clients() {
    let dir = target_dir().join("test-scratch/hosted");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (disk, src, back) = (
        dir.join("disk.img"),
        dir.join("src.img"),
        dir.join("back.img"),
    );
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let data: Vec<u8> = (0..32u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&src, &data).unwrap();
    let h = start(
        "--listen",
        &[
            "--export".into(),
            format!("disk={}", disk.display()),
            "--malloc".into(),
            "ram=16".into(),
        ],
    );
    let uri = format!("nbd://127.0.0.1:{}/disk", h.port);
    let list =
        run(Command::new("nbdinfo").args(["--list", &format!("nbd://127.0.0.1:{}", h.port)]));
    assert!(
        list.contains("export=\"disk\"") && list.contains("export=\"ram\""),
        "{list}"
    );
    run(Command::new("nbdcopy")
        .args(["--connections=4"])
        .arg(&src)
        .arg(&uri));
    run(Command::new("nbdcopy").arg(&uri).arg(&back));
    assert_eq!(std::fs::read(&back).unwrap()[..data.len()], data[..]);
    assert_eq!(
        std::fs::read(&disk).unwrap()[..data.len()],
        data[..],
        "in the backing file"
    );
    let cmp = run(Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(&back)
        .arg(&uri));
    assert!(cmp.contains("identical"), "{cmp}");
}

/// The whole libiscsi conformance suite against the iSCSI engine, plus
/// mutual CHAP: quick here, where a TCG appliance would take long.
#[test]
#[ignore = "needs the hosted runner and libiscsi; run through cargo xtask test"]
fn hosted_iscsi_passes_iscsi_test_cu_all_and_mutual_chap() {
    let dir = target_dir().join("test-scratch/hosted-iscsi");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let h = start(
        "--iscsi",
        &[
            "--malloc".into(),
            "disk=64".into(),
            "--malloc".into(),
            "ro=16:ro".into(),
        ],
    );
    let url = |node: &str| {
        format!(
            "iscsi://127.0.0.1:{}/iqn.2016-06.io.ironbay:{node}/0",
            h.port
        )
    };
    // The same URL twice: two sessions, so the multipath tests run too.
    let (text, s) = libiscsi::test_cu(&[&url("disk"), &url("disk")], "ALL");
    let s = s.unwrap_or_else(|| panic!("no CUnit summary\n{text}"));
    eprintln!(
        "iscsi-test-cu --dataloss -t ALL: {} tests, {} ran, {} passed, {} failed, {} skipped",
        s.total, s.ran, s.passed, s.failed, s.skipped
    );
    assert!(s.failed == 0 && s.ran == s.total, "{text}");
    let (text, s) = libiscsi::test_cu(&[&url("ro")], "SCSI.ReadOnly");
    assert!(s.is_some_and(|s| s.failed == 0 && s.ran == 1), "{text}");

    let chap = start(
        "--iscsi",
        &[
            "--malloc".into(),
            "disk=8".into(),
            "--chap".into(),
            "user1:secret-one-1:target1:secret-two-2".into(),
        ],
    );
    // Mutual CHAP through libiscsi's environment settings: the initiator
    // proves itself, then checks the target's answer.
    let url = format!(
        "iscsi://127.0.0.1:{}/iqn.2016-06.io.ironbay:disk/0",
        chap.port
    );
    let inq = |user: &str, secret: &str, tuser: &str, tsecret: &str| {
        Command::new("iscsi-inq")
            .arg(&url)
            .env("LIBISCSI_CHAP_USERNAME", user)
            .env("LIBISCSI_CHAP_PASSWORD", secret)
            .env("LIBISCSI_CHAP_TARGET_USERNAME", tuser)
            .env("LIBISCSI_CHAP_TARGET_PASSWORD", tsecret)
            .output()
            .unwrap()
    };
    let ok = inq("user1", "secret-one-1", "target1", "secret-two-2");
    assert!(
        ok.status.success(),
        "mutual CHAP login: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(
        !inq("user1", "secret-one-x", "target1", "secret-two-2")
            .status
            .success(),
        "a wrong initiator secret was accepted"
    );
    assert!(
        !inq("user1", "secret-one-1", "target1", "secret-two-x")
            .status
            .success(),
        "the initiator accepted a target answer for another secret"
    );
}

/// The NVMe-oF engine in the hosted runner, driven by the raw NVMe/TCP test
/// host: discovery, digests, R2T writes, pipelined reads, write zeroes,
/// deallocate and compare.
#[test]
#[ignore = "needs the hosted runner; run through cargo xtask test"]
fn hosted_nvmf_serves_discovery_digests_and_the_nvm_command_set() {
    use ironbay_tests::nvmf::{self, Host};
    let h = start(
        "--nvmf",
        &[
            "--malloc".into(),
            "ram=16".into(),
            "--malloc".into(),
            "two=4".into(),
        ],
    );
    let nqn = "nqn.2016-06.io.ironbay:hosted";
    let hostnqn = "nqn.2014-08.org.ironbay:hosted-test";

    // Discovery on the same port lists the subsystem.
    let mut d = Host::open(h.port).unwrap();
    assert_eq!(d.icreq(false, false).unwrap().kind, nvmf::ICRESP);
    let c = d
        .connect("nqn.2014-08.org.nvmexpress.discovery", hostnqn, 0, 0xffff)
        .unwrap();
    assert_eq!(c.status, 0);
    let mut cmd = nvmf::sqe(0x02, 0);
    nvmf::set_dw(&mut cmd, 10, 0x70 | 1023 << 16);
    let log = d.fetch(cmd, 4096).unwrap();
    assert_eq!(log.status, 0);
    assert_eq!(u64::from_le_bytes(log.data[8..16].try_into().unwrap()), 1);
    assert!(log.data[1024 + 256..].starts_with(nqn.as_bytes()));
    drop(d);

    let (mut admin, cntlid) = Host::admin_queue(h.port, nqn, hostnqn).unwrap();
    let mut list = nvmf::sqe(0x06, 0);
    nvmf::set_dw(&mut list, 10, 2);
    let ids = admin.fetch(list, 4096).unwrap();
    assert_eq!(&ids.data[..12], &[1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]);
    let mut io = Host::open(h.port).unwrap();
    io.icreq(true, true).unwrap();
    assert!(io.hdgst && io.ddgst);
    assert_eq!(io.connect(nqn, hostnqn, 1, cntlid).unwrap().status, 0);

    // Past MDTS (128 KiB) is refused before any data moves.
    let data: Vec<u8> = (0..256u32 << 10)
        .map(|i| (i * 31 + (i >> 9)) as u8)
        .collect();
    let mut w = nvmf::sqe(0x01, 1);
    nvmf::set_dw(&mut w, 10, 100);
    nvmf::set_dw(&mut w, 12, 511);
    assert_eq!(io.run(w, &[], &data).unwrap().status, 0x4002);
    // 128 KiB through R2T, read back.
    let data = &data[..128 << 10];
    nvmf::set_dw(&mut w, 12, 255);
    assert_eq!(io.run(w, &[], data).unwrap().status, 0);
    let mut r = nvmf::sqe(0x02, 1);
    nvmf::set_dw(&mut r, 10, 100);
    nvmf::set_dw(&mut r, 12, 255);
    let back = io.fetch(r, 128 << 10).unwrap();
    assert_eq!(back.status, 0);
    assert!(back.data == data, "read back differs");

    // Eight reads in flight at once, answered per command.
    let mut want = std::collections::HashMap::new();
    for k in 0..8u32 {
        let mut r = nvmf::sqe(0x02, 1);
        nvmf::set_dw(&mut r, 10, 100 + k * 8);
        nvmf::set_dw(&mut r, 12, 7);
        r[32..36].copy_from_slice(&4096u32.to_le_bytes());
        r[39] = 0x5a;
        let cid = io.capsule(r, &[]);
        let at = (k * 8 * 512) as usize;
        want.insert(cid, (data[at..at + 4096].to_vec(), Vec::new()));
    }
    let mut done = 0;
    while done < 8 {
        let p = io.recv().unwrap();
        match p.kind {
            nvmf::C2H_DATA => {
                let cid = p.u16_at(8);
                want.get_mut(&cid).unwrap().1.extend_from_slice(&p.data);
                if p.flags & 0x08 != 0 {
                    done += 1;
                }
            }
            nvmf::CAPSULE_RESP => {
                assert_eq!(p.status(), 0);
                done += 1;
            }
            k => panic!("PDU type {k:#x}"),
        }
    }
    for (cid, (expect, got)) in &want {
        assert!(expect == got, "command {cid}: wrong data");
    }

    // Compare: equal, then different.
    let mut cmp = nvmf::sqe(0x05, 1);
    nvmf::set_dw(&mut cmp, 10, 100);
    assert_eq!(io.run(cmp, &data[..512], &[]).unwrap().status, 0);
    let mut other = data[..512].to_vec();
    other[17] ^= 1;
    let st = io.run(cmp, &other, &[]).unwrap().status;
    assert_eq!(st & 0x7ff, 0x285, "compare failure status {st:#x}");

    // Write zeroes and deallocate read back as zeroes (RAM bdev).
    let mut wz = nvmf::sqe(0x08, 1);
    nvmf::set_dw(&mut wz, 10, 100);
    nvmf::set_dw(&mut wz, 12, 7);
    assert_eq!(io.run(wz, &[], &[]).unwrap().status, 0);
    let mut r = nvmf::sqe(0x02, 1);
    nvmf::set_dw(&mut r, 10, 100);
    nvmf::set_dw(&mut r, 12, 15);
    let z = io.fetch(r, 8192).unwrap();
    assert!(z.data[..4096].iter().all(|&b| b == 0));
    assert!(z.data[4096..] == data[4096..8192]);
    let mut dsm = nvmf::sqe(0x09, 1);
    nvmf::set_dw(&mut dsm, 11, 4); // attribute: deallocate
    let mut range = vec![0u8; 16];
    range[4..8].copy_from_slice(&8u32.to_le_bytes());
    range[8..16].copy_from_slice(&108u64.to_le_bytes());
    assert_eq!(io.run(dsm, &range, &[]).unwrap().status, 0);
    let z = io.fetch(r, 8192).unwrap();
    assert!(z.data.iter().all(|&b| b == 0));

    // Out of range and a namespace that does not exist.
    let mut r = nvmf::sqe(0x02, 2);
    nvmf::set_dw(&mut r, 10, 8191);
    nvmf::set_dw(&mut r, 12, 1);
    assert_eq!(io.fetch(r, 1024).unwrap().status & 0xff, 0x80);
    let mut r = nvmf::sqe(0x02, 9);
    nvmf::set_dw(&mut r, 12, 0);
    assert_eq!(io.fetch(r, 512).unwrap().status & 0xff, 0x0b);
    let mut flush = nvmf::sqe(0x00, 1);
    flush[39] = 0;
    assert_eq!(io.run(flush, &[], &[]).unwrap().status, 0);
}
