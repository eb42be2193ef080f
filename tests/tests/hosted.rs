//! The hosted runner (the NBD and iSCSI engines as a Linux process) against
//! real clients: fast checks of the same protocol code the appliance runs.
//! Run by `cargo xtask test`, which builds the runner.

use ironbay_tests::images::target_dir;
use ironbay_tests::libiscsi;
use ironbay_tests::machine::free_port;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

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

/// Starts the runner serving `service` (`--listen` for NBD, `--iscsi`) on a free port.
fn start(service: &str, args: &[String]) -> Hosted {
    let bin = std::env::var("IRONBAY_HOSTED").unwrap_or_else(|_| {
        target_dir()
            .join("release/ironbay-hosted")
            .display()
            .to_string()
    });
    let port = free_port();
    let mut child = Command::new(&bin)
        .args([service, &format!("127.0.0.1:{port}")])
        .args(args)
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{bin}: {e} (run through cargo xtask test)"));
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Hosted { child, port };
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("hosted runner did not listen");
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
