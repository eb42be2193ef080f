//! QEMU tests of the block layer: every namespace and virtio disk becomes a
//! bdev with the right size, and what the appliance writes through them is
//! byte-exact in the backing files. Run by `cargo xtask test`.

use ironbay_bdev::pattern::{self, Fill};
use ironbay_tests::images::{kernel, require};
use ironbay_tests::machine::{Boot, Disk, Machine};
use ironbay_tests::serial::Running;
use ironbay_tests::{EXIT_SUCCESS, READY, scratch};
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(300);

struct Backing {
    bdev: &'static str,
    file: PathBuf,
    bytes: u64,
    block_size: u32,
}

fn fresh(path: &PathBuf, bytes: u64) {
    // Non-zero filler, so a block the appliance never wrote cannot pass as zeroed.
    let chunk = vec![0x5Au8; 1 << 20];
    let mut f = std::fs::File::create(path).unwrap();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        std::io::Write::write_all(&mut f, &chunk[..n]).unwrap();
        left -= n as u64;
    }
}

fn boot(m: Machine) -> String {
    let mut vm = Running::spawn(m.command()).expect("start qemu");
    let code = vm.wait_exit(TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let out = vm.output();
    assert_eq!(
        code, EXIT_SUCCESS,
        "exit status\n----- console -----\n{out}"
    );
    out
}

fn check_file(b: &Backing) {
    let mut f = std::fs::File::open(&b.file).unwrap();
    let bs = b.block_size as u64;
    let extents = pattern::extents(b.bdev, b.bytes / bs, b.block_size);
    assert!(extents.len() > 4);
    for e in extents {
        let mut buf = vec![0u8; (e.blocks * bs) as usize];
        f.seek(SeekFrom::Start(e.lba * bs)).unwrap();
        f.read_exact(&mut buf).unwrap();
        match e.fill {
            Fill::Pattern => {
                if let Err(off) = pattern::check(&buf, b.bdev, e.lba, b.block_size) {
                    panic!(
                        "{}: {} byte {off} of extent {e:?} differs",
                        b.bdev,
                        b.file.display()
                    );
                }
            }
            Fill::Zeroes => assert!(
                buf.iter().all(|&x| x == 0),
                "{}: extent {e:?} not zeroed",
                b.bdev
            ),
        }
    }
}

#[test]
#[ignore = "boots QEMU; run through cargo xtask test"]
fn every_namespace_and_virtio_disk_is_a_bdev_and_data_reaches_the_backing_files() {
    let dir = scratch("blk");
    let backing = [
        Backing {
            bdev: "Nvme0n1",
            file: dir.join("nvme0n1.img"),
            bytes: 32 << 20,
            block_size: 512,
        },
        Backing {
            bdev: "Nvme0n2",
            file: dir.join("nvme0n2.img"),
            bytes: 16 << 20,
            block_size: 4096,
        },
        Backing {
            bdev: "Nvme1n1",
            file: dir.join("nvme1n1.img"),
            bytes: 8 << 20,
            block_size: 512,
        },
        Backing {
            bdev: "VirtioBlk0",
            file: dir.join("vblk0.img"),
            bytes: 24 << 20,
            block_size: 512,
        },
        Backing {
            bdev: "VirtioBlk1",
            file: dir.join("vblk1.img"),
            bytes: 12 << 20,
            block_size: 4096,
        },
    ];
    for b in &backing {
        fresh(&b.file, b.bytes);
    }
    let cfg = dir.join("config.json");
    std::fs::write(
        &cfg,
        r#"{"subsystems":[{"subsystem":"bdev","config":[
            {"method":"bdev_malloc_create","params":{"name":"Malloc0","num_blocks":8192,"block_size":4096}},
            {"method":"bdev_null_create","params":{"name":"Null0","num_blocks":1024,"block_size":512}}]}]}"#,
    )
    .unwrap();
    let mut m = Machine::new(Boot::Kernel {
        image: require(&kernel()),
        append: "test=blk".into(),
        config: Some(cfg),
    });
    m.disks = vec![
        Disk::nvme(0, 1, backing[0].file.clone()),
        Disk::nvme(0, 2, backing[1].file.clone()).with_block_size(4096),
        Disk::nvme(1, 1, backing[2].file.clone()),
        Disk::virtio(backing[3].file.clone()),
        Disk::virtio(backing[4].file.clone()).with_block_size(4096),
    ];
    let out = boot(m);
    assert!(out.contains(READY));
    for b in &backing {
        let line = format!(
            "bdev {}: {} bytes ({} x {} B",
            b.bdev,
            b.bytes,
            b.bytes / b.block_size as u64,
            b.block_size
        );
        assert!(out.contains(&line), "missing `{line}`\n{out}");
        assert!(
            out.contains(&format!("blk self-test {}: ", b.bdev)),
            "{} not verified\n{out}",
            b.bdev
        );
    }
    assert!(
        out.contains("bdev Malloc0: 33554432 bytes (8192 x 4096 B"),
        "{out}"
    );
    assert!(
        out.contains("bdev Null0: 524288 bytes (1024 x 512 B"),
        "{out}"
    );
    assert!(
        out.contains("self-test blk: PASS (6 bdevs verified"),
        "{out}"
    );
    for b in &backing {
        check_file(b);
    }
}

#[test]
#[ignore = "boots QEMU; run through cargo xtask test"]
fn benchmark_jobs_run_and_verify_on_every_kind_of_bdev() {
    let dir = scratch("blk-bench");
    let (n, v) = (dir.join("nvme.img"), dir.join("vblk.img"));
    fresh(&n, 64 << 20);
    fresh(&v, 64 << 20);
    let cfg = dir.join("config.json");
    std::fs::write(
        &cfg,
        r#"{"subsystems":[{"subsystem":"bdev","config":[
            {"method":"bdev_malloc_create","params":{"name":"Malloc0","num_blocks":16384,"block_size":512}}]}]}"#,
    )
    .unwrap();
    let jobs = "Nvme0n1:verify:4k:8:1,VirtioBlk0:verify:16k:8:1,Malloc0:randread:4k:16:1,Nvme0n1:read:128k:4:1";
    let mut m = Machine::new(Boot::Kernel {
        image: require(&kernel()),
        append: format!("test=bench bench={jobs}"),
        config: Some(cfg),
    });
    m.disks = vec![Disk::nvme(0, 1, n), Disk::virtio(v)];
    let out = boot(m);
    for job in [
        "bench Nvme0n1 verify bs=4096 qd=8",
        "bench VirtioBlk0 verify bs=16384 qd=8",
        "bench Malloc0 randread",
        "bench Nvme0n1 read bs=131072 qd=4",
    ] {
        let line = out
            .lines()
            .find(|l| l.contains(job))
            .unwrap_or_else(|| panic!("no `{job}`\n{out}"));
        assert!(line.contains("errors 0, miscompares 0"), "{line}");
        assert!(line.contains(" IOPS"), "{line}");
    }
    assert!(out.contains("self-test bench: PASS"), "{out}");
}
