//! The NBD target against real clients (libnbd's nbdinfo and nbdcopy,
//! qemu-img, qemu-io, fio's nbd engine) over QEMU user networking, plus
//! hostile input that must not disturb other clients. Run by `cargo xtask test`.

use ironbay_tests::READY;
use ironbay_tests::images::{kernel, require, target_dir};
use ironbay_tests::machine::{Boot, Disk, Machine, Nic, free_port};
use ironbay_tests::serial::Running;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const DISK: u64 = 288 << 20;

struct Appliance {
    vm: Running,
    port: u16,
    disk: PathBuf,
    dir: PathBuf,
}

fn boot(name: &str) -> Appliance {
    boot_with(name, "")
}

fn boot_with(name: &str, extra: &str) -> Appliance {
    let dir = target_dir().join("test-scratch").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let disk = dir.join("vblk0.img");
    std::fs::File::create(&disk).unwrap().set_len(DISK).unwrap();
    let cfg = dir.join("config.json");
    std::fs::write(
        &cfg,
        r#"{"subsystems":[{"subsystem":"bdev","config":[
            {"method":"bdev_malloc_create","params":{"name":"Malloc0","num_blocks":131072,"block_size":512}}]}]}"#,
    )
    .unwrap();
    let port = free_port();
    let mut m = Machine::new(Boot::Kernel {
        image: require(&kernel()),
        append: format!("data.ip=10.0.3.15/24 data.gw=10.0.3.2 {extra}"),
        config: Some(cfg),
    });
    m.disks = vec![Disk::virtio(disk.clone())];
    m.forwards = vec![(Nic::Data, port, 10809)];
    let mut vm = Running::spawn(m.command()).expect("start qemu");
    vm.wait_for(READY, Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}"));
    Appliance {
        vm,
        port,
        disk,
        dir,
    }
}

impl Appliance {
    fn uri(&self, export: &str) -> String {
        format!("nbd://127.0.0.1:{}/{export}", self.port)
    }
}

fn run(cmd: &mut Command, vm: &Running) -> String {
    let shown = format!("{cmd:?}");
    let out = cmd.output().unwrap_or_else(|e| panic!("{shown}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{shown} failed:\n{text}\n----- console -----\n{}",
        vm.output()
    );
    text
}

fn random_file(path: &Path, bytes: u64) {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for _ in 0..bytes / 8 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        f.write_all(&x.to_le_bytes()).unwrap();
    }
}

fn same(a: &Path, b: &Path, len: u64) -> bool {
    let (mut x, mut y) = (
        std::fs::File::open(a).unwrap(),
        std::fs::File::open(b).unwrap(),
    );
    let (mut p, mut q) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut left = len;
    while left > 0 {
        let n = left.min(1 << 20) as usize;
        x.read_exact(&mut p[..n]).unwrap();
        y.read_exact(&mut q[..n]).unwrap();
        if p[..n] != q[..n] {
            return false;
        }
        left -= n as u64;
    }
    true
}

#[test]
#[ignore = "boots QEMU; run through cargo xtask test"]
fn nbdinfo_lists_every_export_with_size_and_flags() {
    let a = boot("nbd-info");
    let list = run(
        Command::new("nbdinfo").args(["--list", &format!("nbd://127.0.0.1:{}", a.port)]),
        &a.vm,
    );
    for (name, size) in [("VirtioBlk0", DISK), ("Malloc0", 64 << 20)] {
        assert!(list.contains(&format!("export=\"{name}\"")), "{list}");
        assert!(list.contains(&format!("export-size: {size}")), "{list}");
    }
    let one = run(Command::new("nbdinfo").arg(a.uri("Malloc0")), &a.vm);
    for flag in [
        "can_multi_conn: true",
        "can_trim: true",
        "can_zero: true",
        "can_flush: true",
        "can_fua: true",
        "is_read_only: false",
        "base:allocation",
        "block_size_minimum: 512",
    ] {
        assert!(one.contains(flag), "missing {flag}\n{one}");
    }
}

#[test]
#[ignore = "boots QEMU; run through cargo xtask test"]
fn nbdcopy_256_mib_in_and_out_over_four_connections_is_byte_exact() {
    let a = boot("nbd-copy");
    let (src, back) = (a.dir.join("random.img"), a.dir.join("back.img"));
    random_file(&src, 256 << 20);
    let uri = a.uri("VirtioBlk0");
    run(
        Command::new("nbdcopy")
            .args(["--connections=4", "--flush"])
            .arg(&src)
            .arg(&uri),
        &a.vm,
    );
    run(
        Command::new("nbdcopy")
            .args(["--connections=4"])
            .arg(&uri)
            .arg(&back),
        &a.vm,
    );
    assert!(same(&src, &back, 256 << 20), "read back differs");
    assert!(same(&src, &a.disk, 256 << 20), "backing file differs");
}

#[test]
#[ignore = "boots QEMU; run through cargo xtask test"]
fn qemu_img_convert_compare_and_qemu_io_patterns() {
    let a = boot("nbd-qemu");
    let (src, out) = (a.dir.join("src.img"), a.dir.join("out.qcow2"));
    random_file(&src, 32 << 20);
    let uri = a.uri("Malloc0");
    run(
        Command::new("qemu-img")
            .args(["convert", "-n", "-f", "raw", "-O", "raw"])
            .arg(&src)
            .arg(&uri),
        &a.vm,
    );
    let cmp = run(
        Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "raw"])
            .arg(&src)
            .arg(&uri),
        &a.vm,
    );
    assert!(cmp.contains("Images are identical"), "{cmp}");
    run(
        Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "qcow2"])
            .arg(&uri)
            .arg(&out),
        &a.vm,
    );
    let cmp = run(
        Command::new("qemu-img")
            .args(["compare", "-f", "qcow2", "-F", "raw"])
            .arg(&out)
            .arg(&uri),
        &a.vm,
    );
    assert!(cmp.contains("Images are identical"), "{cmp}");
    let io = run(
        Command::new("qemu-io")
            .args(["-f", "raw"])
            .args([
                "-c",
                "write -P 0xa5 0 1M",
                "-c",
                "read -P 0xa5 0 1M",
                "-c",
                "write -P 0x5a 1M 64k",
                "-c",
                "read -P 0x5a 1M 64k",
                "-c",
                "discard 2M 1M",
                "-c",
                "write -z 3M 1M",
                "-c",
                "read -P 0 3M 1M",
                "-c",
                "aio_write -P 0x11 8M 4k",
                "-c",
                "aio_write -P 0x22 9M 4k",
                "-c",
                "aio_flush",
                "-c",
                "read -P 0x11 8M 4k",
                "-c",
                "read -P 0x22 9M 4k",
            ])
            .arg(&uri),
        &a.vm,
    );
    assert!(
        !io.contains("Pattern verification failed") && !io.contains("failed:"),
        "{io}"
    );
}

#[test]
#[ignore = "boots QEMU; run through cargo xtask test"]
fn fio_nbd_engine_verifies_with_four_jobs() {
    let a = boot("nbd-fio");
    let out = run(
        Command::new("fio").args([
            "--name=verify",
            "--ioengine=nbd",
            &format!("--uri={}", a.uri("Malloc0")),
            "--rw=randwrite",
            "--bs=4k",
            "--size=16m",
            "--offset_increment=16m",
            "--numjobs=4",
            "--iodepth=8",
            "--verify=crc32c",
            "--verify_fatal=1",
            "--time_based",
            "--runtime=20",
            "--verify_backlog=256",
            // The state file would land in the source tree; nothing resumes from it.
            "--verify_state_save=0",
        ]),
        &a.vm,
    );
    assert_eq!(out.matches("err= 0").count(), 4, "{out}");
}

#[test]
#[ignore = "boots QEMU; run through cargo xtask test"]
fn hostile_clients_do_not_disturb_others() {
    let a = boot("nbd-hostile");
    let garbage: [&[u8]; 4] = [
        b"GET / HTTP/1.1\r\n\r\n",
        &[0xff; 4096],
        // Fixed newstyle, then an option claiming 4 GiB of data.
        &[
            0, 0, 0, 3, 0x49, 0x48, 0x41, 0x56, 0x45, 0x4f, 0x50, 0x54, 0, 0, 0, 7, 0xff, 0xff,
            0xff, 0xff,
        ],
        // Old-style client flags (not fixed newstyle).
        &[0, 0, 0, 0],
    ];
    let mut held = Vec::new();
    for g in garbage {
        let mut s = TcpStream::connect(("127.0.0.1", a.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut greeting = [0u8; 18];
        s.read_exact(&mut greeting).unwrap();
        assert_eq!(&greeting[..8], b"NBDMAGIC");
        let _ = s.write_all(g);
        held.push(s);
    }
    // Half-open: a client that says nothing at all keeps its slot, others go on.
    let _silent = TcpStream::connect(("127.0.0.1", a.port)).unwrap();
    let info = run(Command::new("nbdinfo").arg(a.uri("Malloc0")), &a.vm);
    assert!(info.contains("export-size: 67108864"), "{info}");
    let (src, back) = (a.dir.join("src.img"), a.dir.join("back.img"));
    random_file(&src, 8 << 20);
    run(
        Command::new("nbdcopy").arg(&src).arg(a.uri("Malloc0")),
        &a.vm,
    );
    run(
        Command::new("nbdcopy")
            .args(["--connections=1", "--requests=1"])
            .arg(a.uri("Malloc0"))
            .arg(&back),
        &a.vm,
    );
    assert!(same(&src, &back, 8 << 20));
    assert!(
        a.vm.output().contains("NBD client"),
        "the bad clients were logged\n{}",
        a.vm.output()
    );
}

#[test]
#[ignore = "boots QEMU; run through cargo xtask test"]
fn exports_read_only_and_single_connection_limits() {
    let a = boot_with("nbd-limits", "nbd.exports=Malloc0:ro nbd.max_connections=1");
    let list = run(
        Command::new("nbdinfo").args(["--list", &format!("nbd://127.0.0.1:{}", a.port)]),
        &a.vm,
    );
    assert!(
        list.contains("export=\"Malloc0\"") && !list.contains("VirtioBlk0"),
        "{list}"
    );
    assert!(
        list.contains("is_read_only: true") && list.contains("can_multi_conn: false"),
        "{list}"
    );
    let out = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write 0 4k"])
        .arg(a.uri("Malloc0"))
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("Operation not permitted")
            || text.contains("read-only")
            || !out.status.success(),
        "{text}"
    );
    run(
        Command::new("qemu-io")
            .args(["-f", "raw", "-r", "-c", "read 0 4k"])
            .arg(a.uri("Malloc0")),
        &a.vm,
    );
}
