//! QEMU tests of the network path with user networking: a byte-exact TCP
//! echo through hostfwd, DHCP from QEMU's server, static addresses, and role
//! isolation. Run by `cargo xtask test`.

use ironbay_tests::READY;
use ironbay_tests::images::{kernel, require};
use ironbay_tests::machine::{Boot, Machine, Nic, free_port};
use ironbay_tests::serial::Running;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(120);

fn appliance(append: &str, forwards: Vec<(Nic, u16, u16)>) -> Running {
    let mut m = Machine::new(Boot::Kernel {
        image: require(&kernel()),
        append: append.into(),
        config: None,
    });
    m.forwards = forwards;
    let mut vm = Running::spawn(m.command()).expect("start qemu");
    vm.wait_for(READY, BOOT).unwrap_or_else(|e| panic!("{e}"));
    vm
}

fn stream(seed: u64) -> impl FnMut() -> u8 {
    let mut x = seed;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x as u8
    }
}

#[test]
#[ignore = "boots QEMU; run through cargo xtask test"]
fn tcp_echo_of_64_mib_through_hostfwd_is_byte_exact() {
    let port = free_port();
    let vm = appliance(
        "data.ip=10.0.3.15/24 data.gw=10.0.3.2 diag=echo:7777",
        vec![(Nic::Data, port, 7777)],
    );
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    const TOTAL: usize = 64 << 20;
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let mut next = stream(0x1234_5678);
        let mut buf = vec![0u8; 1 << 16];
        let mut sent = 0;
        while sent < TOTAL {
            buf.iter_mut().for_each(|b| *b = next());
            w.write_all(&buf).unwrap();
            sent += buf.len();
        }
    });
    let mut expect = stream(0x1234_5678);
    let mut buf = vec![0u8; 1 << 16];
    let mut got = 0;
    while got < TOTAL {
        let n = s
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("after {got} bytes: {e}\n{}", vm.output()));
        assert!(
            n > 0,
            "connection closed after {got} bytes\n{}",
            vm.output()
        );
        for (i, &b) in buf[..n].iter().enumerate() {
            assert_eq!(b, expect(), "byte {} differs", got + i);
        }
        got += n;
    }
    writer.join().unwrap();
    assert_eq!(got, TOTAL);
}

#[test]
#[ignore = "boots QEMU; run through cargo xtask test"]
fn dhcp_from_qemu_gives_each_nic_its_address() {
    let mut vm = appliance("", vec![]);
    vm.wait_for("mgmt: DHCP lease 10.0.2.15/24 via Some(10.0.2.2)", BOOT)
        .unwrap_or_else(|e| panic!("{e}"));
    vm.wait_for("data0: DHCP lease 10.0.3.15/24 via Some(10.0.3.2)", BOOT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(vm.output().contains("mgmt: virtio-net at"));
}

/// True if the appliance refused the forwarded connection (slirp accepts on
/// the host side, then closes once the guest answers with a reset).
fn refused(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return true;
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(b"ping");
    let mut b = [0u8; 4];
    matches!(s.read(&mut b), Ok(0) | Err(_))
}

#[test]
#[ignore = "boots QEMU; run through cargo xtask test"]
fn services_answer_only_on_their_role_and_static_addresses_hold() {
    let (echo, mgmt_on_data, diag_on_mgmt) = (free_port(), free_port(), free_port());
    let vm = appliance(
        "mgmt.ip=10.0.2.15/24 mgmt.gw=10.0.2.2 data.ip=10.0.3.15/24 data.gw=10.0.3.2 diag=echo:7777",
        vec![
            (Nic::Data, echo, 7777),
            (Nic::Data, mgmt_on_data, 5260),
            (Nic::Mgmt, diag_on_mgmt, 7777),
        ],
    );
    let out = vm.output();
    assert!(
        out.contains("mgmt: virtio-net at") && out.contains("IPv4 10.0.2.15/24 via 10.0.2.2"),
        "{out}"
    );
    assert!(out.contains("IPv4 10.0.3.15/24 via 10.0.3.2"), "{out}");
    let mut s = TcpStream::connect(("127.0.0.1", echo)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"ping").unwrap();
    let mut b = [0u8; 4];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"ping", "the data NIC serves its diag port");
    assert!(
        refused(mgmt_on_data),
        "management port answered on the data NIC"
    );
    assert!(
        refused(diag_on_mgmt),
        "data service answered on the management NIC"
    );
}
