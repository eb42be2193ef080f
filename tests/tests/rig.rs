//! The rig proves itself: a Linux initiator guest against Linux peer targets
//! (nvmet-tcp and LIO) in another guest, on a bridge inside a private network
//! namespace. Needs root for the namespace. Run by `cargo xtask test`.

use ironbay_tests::images::target_dir;
use ironbay_tests::rig::{guest, netns::Netns, vm};
use std::path::PathBuf;
use std::time::Duration;

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}

fn disk(path: &PathBuf, bytes: u64) {
    std::fs::File::create(path).unwrap().set_len(bytes).unwrap();
}

#[test]
#[ignore = "boots Linux guests in a network namespace; run through cargo xtask test"]
fn linux_initiator_discovers_connects_and_verifies_against_linux_peer_targets() {
    let image =
        guest::build(&target_dir().join("rig")).unwrap_or_else(|e| panic!("rig guest: {e}"));
    let dir = target_dir().join("test-scratch/rig");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (vda, vdb) = (dir.join("vda.img"), dir.join("vdb.img"));
    disk(&vda, 256 << 20);
    disk(&vdb, 256 << 20);

    let mut ns = Netns::create("rig").unwrap_or_else(|e| panic!("{e}"));
    let mut peer = vm::GuestVm::new(&script("peer-targets.sh"));
    peer.ip = Some("10.55.0.3/24".into());
    peer.mac = "52:54:00:1b:10:03".into();
    peer.tap = Some(ns.add_tap().unwrap());
    peer.disks = vec![vda, vdb];
    let mut peer_vm = peer.start(&image, Some(&ns)).unwrap();
    peer_vm
        .wait_for("PEER-READY", Duration::from_secs(300))
        .unwrap_or_else(|e| panic!("peer: {e}"));

    let mut init = vm::GuestVm::new(&script("initiator-smoke.sh"));
    init.ip = Some("10.55.0.2/24".into());
    init.mac = "52:54:00:1b:10:02".into();
    init.iqn = "iqn.2004-10.org.ironbay:rig-initiator".into();
    init.tap = Some(ns.add_tap().unwrap());
    let mut init_vm = init.start(&image, Some(&ns)).unwrap();
    let (rc, out) = vm::finish(&mut init_vm, Duration::from_secs(600))
        .unwrap_or_else(|e| panic!("initiator: {e}"));
    assert_eq!(
        rc,
        0,
        "initiator script failed\n{out}\n----- peer -----\n{}",
        peer_vm.output()
    );
    for needle in [
        "subnqn:  nqn.2014-08.org.ironbay:peer-vda",
        "subnqn:  nqn.2014-08.org.ironbay:peer-null",
        "10.55.0.3:3260,1 iqn.2003-01.org.ironbay:peer-vdb",
        "Login to [iface: default, target: iqn.2003-01.org.ironbay:peer-vdb",
        "INITIATOR-OK",
    ] {
        assert!(
            out.contains(needle),
            "initiator output lacks `{needle}`\n{out}"
        );
    }
    assert_eq!(
        out.matches("err= 0").count(),
        2,
        "two fio verify runs without errors\n{out}"
    );
    drop(init_vm);
    drop(peer_vm);
    drop(ns);
}
