//! The hosted runner (the NBD engine as a Linux process) against real
//! clients: fast checks of the same protocol code the appliance runs.
//! Run by `cargo xtask test`, which builds the runner.

use ironbay_tests::images::target_dir;
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

fn start(args: &[String]) -> Hosted {
    let bin = std::env::var("IRONBAY_HOSTED").unwrap_or_else(|_| {
        target_dir()
            .join("release/ironbay-hosted")
            .display()
            .to_string()
    });
    let port = free_port();
    let mut child = Command::new(&bin)
        .args(["--listen", &format!("127.0.0.1:{port}")])
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
    let h = start(&[
        "--export".into(),
        format!("disk={}", disk.display()),
        "--malloc".into(),
        "ram=16".into(),
    ]);
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
