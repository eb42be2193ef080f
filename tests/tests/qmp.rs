//! QMP on the booted appliance (TCP 4444), driven by QEMU's own Python
//! library, `qemu.qmp`, and its `qmp-shell` (tests/scripts/qmp-client.py):
//! greeting and negotiation, the block commands and their errors, events on
//! every monitor, and exports made over QMP used by nbdinfo, qemu-img,
//! qemu-io and nbdcopy. Also: a monitor that never negotiates is dropped, so
//! it cannot hold a socket. Run by `cargo xtask test`.

use ironbay_tests::READY;
use ironbay_tests::images::{kernel, require};
use ironbay_tests::machine::{Boot, Disk, Machine, Nic, free_port, sparse_disk};
use ironbay_tests::serial::Running;
use std::io::Read;
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

#[test]
#[ignore = "boots QEMU; run through cargo xtask test"]
fn qemu_qmp_library_drives_exports() {
    let dir = ironbay_tests::scratch("qmp");
    let (nvme, vblk) = (dir.join("nvme0.img"), dir.join("vblk0.img"));
    sparse_disk(&nvme, 64 * MIB).unwrap();
    sparse_disk(&vblk, 64 * MIB).unwrap();
    let (mut vm, ports) = boot_on(vec![Disk::nvme(0, 1, nvme), Disk::virtio(vblk)]);
    let qmp = ports.0;

    // A monitor that connects and never negotiates is dropped.
    let mut idle = TcpStream::connect(("127.0.0.1", qmp)).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match idle.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("a monitor that never negotiates is still open: {e}"),
        }
    }
    let greeting = String::from_utf8_lossy(&got);
    assert!(greeting.contains("\"QMP\""), "no greeting: {greeting}");
    println!(
        "a monitor that never negotiated was dropped after {:.1} s",
        started.elapsed().as_secs_f64()
    );

    run_script(&mut vm, "qmp-client.py", &[], ports, &dir);
}

/// Boots the appliance on `disks` with QMP, JSON-RPC and NBD forwarded:
/// returns the machine and the (qmp, nbd, rpc) host ports.
fn boot_on(disks: Vec<Disk>) -> (Running, (u16, u16, u16)) {
    let (qmp, nbd, rpc) = (free_port(), free_port(), free_port());
    let mut m = Machine::new(Boot::Kernel {
        image: require(&kernel()),
        append: "mgmt.ip=10.0.2.15/24 mgmt.gw=10.0.2.2 data.ip=10.0.3.15/24 data.gw=10.0.3.2"
            .into(),
        config: None,
    });
    m.disks = disks;
    m.forwards = vec![
        (Nic::Mgmt, qmp, 4444),
        (Nic::Mgmt, rpc, 5260),
        (Nic::Data, nbd, 10809),
    ];
    let mut vm = Running::spawn(m.command()).expect("start qemu");
    vm.wait_for(READY, Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}"));
    (vm, (qmp, nbd, rpc))
}

/// Runs `tests/scripts/NAME` with `args` against the appliance's ports
/// (and SCRATCH = `dir`); fails the test, with the console, if it fails.
fn run_script(vm: &mut Running, name: &str, args: &[&str], ports: (u16, u16, u16), dir: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name);
    let (qmp, nbd, rpc) = ports;
    let out = Command::new("python3")
        .arg(&script)
        .args(args)
        .env("QMP_PORT", qmp.to_string())
        .env("NBD_PORT", nbd.to_string())
        .env("RPC_PORT", rpc.to_string())
        .env("SCRATCH", dir)
        .output()
        .expect("python3");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(
        out.status.success(),
        "{name} {args:?} failed:\n{text}\n----- console -----\n{}",
        vm.output()
    );
}

/// Persistent dirty bitmaps on a logical volume across four boots of the
/// same disks (tests/scripts/qmp-persist.py runs each phase): kept with
/// their bits through an orderly shutdown, reported inconsistent after a
/// power cut (QEMU kills the machine), removal and a new bitmap durable.
#[test]
#[ignore = "boots QEMU; run through cargo xtask test"]
fn persistent_bitmaps_survive_orderly_shutdowns_not_power_cuts() {
    let dir = ironbay_tests::scratch("qmp-persist");
    let (nvme, vblk) = (dir.join("nvme0.img"), dir.join("vblk0.img"));
    sparse_disk(&nvme, 64 * MIB).unwrap();
    sparse_disk(&vblk, 16 * MIB).unwrap();
    // Each phase, and whether the appliance then stops in order (the
    // script asks it to) or loses power.
    for (phase, orderly) in [
        ("setup", true),
        ("orderly", false),
        ("cut", true),
        ("final", false),
    ] {
        let (mut vm, ports) = boot_on(vec![
            Disk::nvme(0, 1, nvme.clone()),
            Disk::virtio(vblk.clone()),
        ]);
        run_script(&mut vm, "qmp-persist.py", &[phase], ports, &dir);
        if orderly {
            assert_eq!(
                vm.wait_exit(Duration::from_secs(120)).unwrap(),
                0,
                "orderly power-off after {phase}\n{}",
                vm.output()
            );
        } else {
            vm.kill();
            let _ = vm.wait_exit(Duration::from_secs(30));
        }
        if phase == "cut" {
            assert!(
                vm.output().contains("inconsistent"),
                "the console names the lost bitmaps:\n{}",
                vm.output()
            );
        }
    }
}
