//! The NVMe-oF/TCP target against real hosts: Linux nvme-tcp and nvme-cli in
//! the rig's guest, SPDK's Python client for management, and a raw PDU host
//! for what no well-behaved host sends. Run by `cargo xtask test`.

use ironbay_tests::images::{kernel, require, target_dir};
use ironbay_tests::machine::{Boot, Machine, Nic, free_port};
use ironbay_tests::nvmf::{self, Host};
use ironbay_tests::rig::{guest, netns::Netns, vm};
use ironbay_tests::serial::Running;
use ironbay_tests::{READY, boot_config, malloc};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

const CNODE1: &str = "nqn.2016-06.io.spdk:cnode1";
const DISCOVERY: &str = "nqn.2014-08.org.nvmexpress.discovery";
const HOST_A: &str = "nqn.2014-08.org.ironbay:host-a";
const HOST_B: &str = "nqn.2014-08.org.ironbay:host-b";

/// Connect status "invalid host" (SCT 1, SC 84h) with DNR.
const CONNECT_INVALID_HOST: u16 = 0x4184;

struct Appliance {
    vm: Running,
    nvme: u16,
    discovery: u16,
    rpc: u16,
}

const TRANSPORT: &str = r#"{"method":"nvmf_create_transport","params":{"trtype":"TCP"}}"#;

/// A subsystem listening on 0.0.0.0:4420 with the given namespaces (bdev
/// names, nsid 1..) and hosts (empty: any host).
fn subsystem(nqn: &str, bdevs: &[&str], hosts: &[&str]) -> String {
    let mut calls = vec![
        format!(
            r#"{{"method":"nvmf_create_subsystem","params":{{"nqn":"{nqn}","serial_number":"IRONBAYTEST000000001","model_number":"ironbay test","allow_any_host":{}}}}}"#,
            hosts.is_empty()
        ),
        format!(
            r#"{{"method":"nvmf_subsystem_add_listener","params":{{"nqn":"{nqn}","listen_address":{{"trtype":"TCP","adrfam":"IPv4","traddr":"0.0.0.0","trsvcid":"4420"}}}}}}"#
        ),
    ];
    for (i, b) in bdevs.iter().enumerate() {
        calls.push(format!(
            r#"{{"method":"nvmf_subsystem_add_ns","params":{{"nqn":"{nqn}","namespace":{{"nsid":{},"bdev_name":"{b}"}}}}}}"#,
            i + 1
        ));
    }
    for h in hosts {
        calls.push(format!(
            r#"{{"method":"nvmf_subsystem_add_host","params":{{"nqn":"{nqn}","host":"{h}"}}}}"#
        ));
    }
    calls.join(",")
}

fn boot(config: PathBuf) -> Appliance {
    let (nvme, discovery, rpc) = (free_port(), free_port(), free_port());
    let mut m = Machine::new(Boot::Kernel {
        image: require(&kernel()),
        append: "mgmt.ip=10.0.2.15/24 mgmt.gw=10.0.2.2 data.ip=10.0.3.15/24".into(),
        config: Some(config),
    });
    m.forwards = vec![
        (Nic::Data, nvme, 4420),
        (Nic::Data, discovery, 8009),
        (Nic::Mgmt, rpc, 5260),
    ];
    let mut vm = Running::spawn(m.command()).expect("start qemu");
    vm.wait_for(READY, Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}"));
    Appliance {
        vm,
        nvme,
        discovery,
        rpc,
    }
}

impl Appliance {
    fn spdk(&self, args: &[&str]) -> String {
        ironbay_tests::spdk_rpc(self.rpc, args).unwrap_or_else(|text| {
            panic!(
                "spdk-rpc {args:?}\n{text}\n----- console -----\n{}",
                self.vm.output()
            )
        })
    }

    fn fail(&self, what: &str) -> ! {
        panic!("{what}\n----- console -----\n{}", self.vm.output())
    }

    fn ok<T>(&self, r: Result<T, String>, what: &str) -> T {
        r.unwrap_or_else(|e| self.fail(&format!("{what}: {e}")))
    }
}

/// Identify (CNS `cns`) returning 4 KiB.
fn identify(h: &mut Host, cns: u32, nsid: u32) -> Result<nvmf::Done, String> {
    let mut c = nvmf::sqe(0x06, nsid);
    nvmf::set_dw(&mut c, 10, cns);
    h.fetch(c, 4096)
}

/// The discovery log page (first 4 KiB: header and three entries) and its
/// subsystem NQNs.
fn discovery_log(port: u16, hostnqn: &str) -> Result<Vec<String>, String> {
    let mut h = Host::open(port).map_err(|e| e.to_string())?;
    h.icreq(false, false)?;
    let c = h.connect(DISCOVERY, hostnqn, 0, 0xffff)?;
    if c.status != 0 {
        return Err(format!("discovery connect status {:#x}", c.status));
    }
    h.property_set(0x14, 1)?;
    let mut cmd = nvmf::sqe(0x02, 0);
    // Log page 70h, 4 KiB (NUMDL = 1023).
    nvmf::set_dw(&mut cmd, 10, 0x70 | 1023 << 16);
    let d = h.fetch(cmd, 4096)?;
    if d.status != 0 || d.data.len() != 4096 {
        return Err(format!("get log page: {d:?}"));
    }
    let numrec = u64::from_le_bytes(d.data[8..16].try_into().unwrap()) as usize;
    let mut nqns = Vec::new();
    for i in 0..numrec.min(3) {
        let e = &d.data[1024 * (i + 1)..1024 * (i + 2)];
        if e[0] != 3 {
            return Err(format!("entry {i}: trtype {} is not TCP", e[0]));
        }
        let nqn = &e[256..512];
        let end = nqn.iter().position(|&b| b == 0).unwrap_or(256);
        nqns.push(String::from_utf8_lossy(&nqn[..end]).trim().to_string());
    }
    Ok(nqns)
}

/// Bad PDUs, lengths and digests each get a C2HTermReq on their own
/// connection, while an established host keeps being served.
#[test]
#[ignore = "boots QEMU; run through cargo xtask test"]
fn bad_pdus_get_termination_requests_and_others_keep_being_served() {
    let bdevs = malloc("Malloc0", 16);
    let nvmf = [TRANSPORT.to_string(), subsystem(CNODE1, &["Malloc0"], &[])].join(",");
    let a = boot(boot_config(
        "nvmf-raw",
        &[("bdev", &bdevs), ("nvmf", &nvmf)],
    ));

    // A well-behaved host: admin queue, then an I/O queue with digests.
    let (mut admin, cntlid) = a.ok(Host::admin_queue(a.nvme, CNODE1, HOST_A), "admin queue");
    let vs = a.ok(admin.property_get(0x08), "property get VS");
    assert_eq!((vs.status, vs.dw0), (0, 0x0002_0000), "VS");
    let id = a.ok(identify(&mut admin, 1, 0), "identify controller");
    assert_eq!(id.status, 0);
    assert_eq!(&id.data[4..24], b"IRONBAYTEST000000001", "serial number");
    assert!(id.data[24..64].starts_with(b"ironbay test"), "model number");
    assert!(
        id.data[768..768 + CNODE1.len()] == *CNODE1.as_bytes(),
        "SUBNQN"
    );
    let mut io = Host::open(a.nvme).unwrap();
    let icresp = a.ok(io.icreq(true, true), "ICReq with digests");
    assert_eq!(icresp.kind, nvmf::ICRESP);
    assert!(io.hdgst && io.ddgst, "digests granted: {icresp:?}");
    let c = a.ok(io.connect(CNODE1, HOST_A, 1, cntlid), "I/O connect");
    assert_eq!(c.status, 0, "I/O queue connect");
    let pattern: Vec<u8> = (0..16384u32).map(|i| (i * 7 + i / 512) as u8).collect();
    let rw = |io: &mut Host, lba: u32| -> Result<(), String> {
        // 16 KiB is past the in-capsule size: the write goes through R2T.
        let mut w = nvmf::sqe(0x01, 1);
        nvmf::set_dw(&mut w, 10, lba);
        nvmf::set_dw(&mut w, 12, 31);
        let d = io.run(w, &[], &pattern)?;
        if d.status != 0 {
            return Err(format!("write status {:#x}", d.status));
        }
        let mut r = nvmf::sqe(0x02, 1);
        nvmf::set_dw(&mut r, 10, lba);
        nvmf::set_dw(&mut r, 12, 31);
        let d = io.fetch(r, 16384)?;
        if d.status != 0 || d.data != pattern {
            return Err(format!(
                "read back status {:#x}, {} bytes",
                d.status,
                d.data.len()
            ));
        }
        Ok(())
    };
    a.ok(rw(&mut io, 64), "write and read back");

    let mut term = |name: &str, icreq: Option<(bool, bool)>, bytes: Vec<u8>, fes: &[u16]| {
        let mut h = Host::open(a.nvme).unwrap();
        if let Some((hd, dd)) = icreq {
            let r = a.ok(h.icreq(hd, dd), name);
            assert_eq!(r.kind, nvmf::ICRESP, "{name}: ICResp");
        }
        h.send(&bytes).unwrap();
        let p = h
            .recv()
            .unwrap_or_else(|e| a.fail(&format!("{name}: no termination request: {e}")));
        assert_eq!(p.kind, nvmf::C2H_TERM_REQ, "{name}: {p:?}");
        let got = p.u16_at(8);
        assert!(
            fes.contains(&got),
            "{name}: FES {got}, expected one of {fes:?}"
        );
        // Then the target closes the connection.
        let mut rest = [0u8; 64];
        let n = std::io::Read::read(&mut h.sock, &mut rest).unwrap_or(0);
        assert_eq!(
            n, 0,
            "{name}: connection still open after the termination request"
        );
        // And the established host is still served.
        a.ok(rw(&mut io, 128), &format!("{name}: I/O afterwards"));
        let vs = a.ok(admin.property_get(0x08), name);
        assert_eq!(vs.dw0, 0x0002_0000);
    };

    let mut icreq = vec![0u8; 128];
    icreq[2] = 128;
    icreq[4..8].copy_from_slice(&128u32.to_le_bytes());
    let mut bad_pfv = icreq.clone();
    bad_pfv[8] = 1;
    term("ICReq PFV 1", None, bad_pfv, &[1, 6]);
    let mut bad_plen = icreq.clone();
    bad_plen[4..8].copy_from_slice(&100_000u32.to_le_bytes());
    term("ICReq plen 100000", None, bad_plen, &[1]);
    let mut capsule_first = vec![0u8; 72];
    capsule_first[0] = nvmf::CAPSULE_CMD;
    capsule_first[2] = 72;
    capsule_first[4..8].copy_from_slice(&72u32.to_le_bytes());
    term("capsule before ICReq", None, capsule_first, &[2]);
    let mut unknown = vec![0u8; 24];
    unknown[0] = 0x42;
    unknown[2] = 24;
    unknown[4..8].copy_from_slice(&24u32.to_le_bytes());
    term("PDU type 42h", Some((false, false)), unknown, &[1]);
    let mut short = vec![0u8; 64];
    short[0] = nvmf::CAPSULE_CMD;
    short[2] = 64;
    short[4..8].copy_from_slice(&64u32.to_le_bytes());
    term("capsule hlen 64", Some((false, false)), short, &[1]);
    // A capsule whose header digest is wrong.
    let mut digest_host = Host::open(a.nvme).unwrap();
    digest_host.hdgst = true;
    let mut h = vec![0u8; 72];
    h[0] = nvmf::CAPSULE_CMD;
    h[8] = 0x7f;
    let mut pdu = digest_host.pdu(h, &[]);
    pdu[72] ^= 0xff;
    drop(digest_host);
    term("bad header digest", Some((true, false)), pdu, &[3]);
    // H2CData nobody asked for.
    let mut stray = vec![0u8; 24 + 512];
    stray[0] = nvmf::H2C_DATA;
    stray[1] = 0x04;
    stray[2] = 24;
    stray[3] = 24;
    stray[4..8].copy_from_slice(&(24u32 + 512).to_le_bytes());
    stray[16..20].copy_from_slice(&512u32.to_le_bytes());
    term("stray H2CData", Some((false, false)), stray, &[1, 2]);

    // A bad data digest on in-capsule data fails that command only.
    let mut h = Host::open(a.nvme).unwrap();
    a.ok(h.icreq(false, true), "ICReq data digest");
    a.ok(h.connect(CNODE1, HOST_A, 2, cntlid), "I/O connect qid 2");
    let mut w = nvmf::sqe(0x01, 1);
    nvmf::set_dw(&mut w, 10, 8);
    w[1] = 0x40;
    w[2..4].copy_from_slice(&77u16.to_le_bytes());
    w[32..36].copy_from_slice(&512u32.to_le_bytes());
    w[39] = 0x01;
    let mut hdr = vec![0u8; 72];
    hdr[0] = nvmf::CAPSULE_CMD;
    hdr[8..72].copy_from_slice(&w);
    let mut pdu = h.pdu(hdr, &[0x5au8; 512]);
    let last = pdu.len() - 1;
    pdu[last] ^= 0xff;
    h.send(&pdu).unwrap();
    let p = a.ok(h.recv(), "answer to a bad data digest");
    match p.kind {
        nvmf::CAPSULE_RESP => {
            assert_eq!(p.cid(), 77);
            assert_eq!(
                p.status() & 0x7ff,
                0x022,
                "transient transport error: {p:?}"
            );
        }
        nvmf::C2H_TERM_REQ => assert_eq!(p.u16_at(8), 3, "FES data digest"),
        k => a.fail(&format!("bad data digest answered with PDU type {k:#x}")),
    }
    a.ok(rw(&mut io, 192), "I/O after the bad data digest");

    // Garbage and a peer that vanishes mid-PDU leave the target serving.
    for junk in [vec![0xffu8; 4096], b"GET / HTTP/1.0\r\n\r\n".to_vec()] {
        let mut h = Host::open(a.nvme).unwrap();
        let _ = h.send(&junk);
    }
    let mut h = Host::open(a.nvme).unwrap();
    let _ = h.send(&[0u8; 70]);
    drop(h);
    a.ok(rw(&mut io, 256), "I/O after garbage");
    let (mut again, _) = a.ok(
        Host::admin_queue(a.nvme, CNODE1, HOST_B),
        "new host after it all",
    );
    assert_eq!(a.ok(again.property_get(0x08), "VS").dw0, 0x0002_0000);
}

/// SPDK's client builds a subsystem with a host allow list; hosts outside
/// it are refused and do not see it in the discovery log on 4420 or 8009.
#[test]
#[ignore = "boots QEMU; run through cargo xtask test"]
fn spdk_client_manages_subsystems_and_host_lists() {
    let bdevs = [
        malloc("Malloc0", 16),
        malloc("Malloc1", 8),
        malloc("Malloc2", 8),
    ]
    .join(",");
    let cfg = boot_config("nvmf-spdk", &[("bdev", &bdevs)]);
    let a = boot(cfg);
    a.spdk(&[
        "nvmf_create_transport",
        "-t",
        "TCP",
        "-c",
        "8192",
        "-q",
        "64",
    ]);
    let transports: serde_json::Value =
        serde_json::from_str(&a.spdk(&["nvmf_get_transports"])).unwrap();
    assert_eq!(transports[0]["trtype"], "TCP", "{transports}");
    assert_eq!(transports[0]["in_capsule_data_size"], 8192, "{transports}");
    a.spdk(&[
        "nvmf_create_subsystem",
        CNODE1,
        "-s",
        "IRONBAY0000000000042",
        "-d",
        "ironbay spdk-rpc",
    ]);
    a.spdk(&[
        "nvmf_subsystem_add_listener",
        CNODE1,
        "-t",
        "tcp",
        "-a",
        "0.0.0.0",
        "-s",
        "4420",
        "-f",
        "ipv4",
    ]);
    a.spdk(&["nvmf_subsystem_add_ns", CNODE1, "Malloc0"]);
    a.spdk(&["nvmf_subsystem_add_host", CNODE1, HOST_A]);
    let subs: serde_json::Value = serde_json::from_str(&a.spdk(&["nvmf_get_subsystems"])).unwrap();
    assert_eq!(subs[0]["nqn"], DISCOVERY, "{subs}");
    assert_eq!(subs[0]["subtype"], "Discovery", "{subs}");
    let s = &subs[1];
    assert_eq!(s["nqn"], CNODE1, "{subs}");
    assert_eq!(s["subtype"], "NVMe");
    assert_eq!(s["serial_number"], "IRONBAY0000000000042");
    assert_eq!(s["model_number"], "ironbay spdk-rpc");
    assert_eq!(s["allow_any_host"], false);
    assert_eq!(s["hosts"][0]["nqn"], HOST_A);
    assert_eq!(s["listen_addresses"][0]["trsvcid"], "4420");
    assert_eq!(s["listen_addresses"][0]["trtype"], "TCP");
    assert_eq!(s["namespaces"][0]["nsid"], 1);
    assert_eq!(s["namespaces"][0]["bdev_name"], "Malloc0");

    // Host A is on the list, host B is not.
    let (mut admin, _) = a.ok(Host::admin_queue(a.nvme, CNODE1, HOST_A), "host A");
    let id = a.ok(identify(&mut admin, 1, 0), "identify");
    assert_eq!(&id.data[4..24], b"IRONBAY0000000000042");
    let mut b = Host::open(a.nvme).unwrap();
    a.ok(b.icreq(false, false), "ICReq");
    let refused = a.ok(b.connect(CNODE1, HOST_B, 0, 0xffff), "host B connect");
    assert_eq!(refused.status, CONNECT_INVALID_HOST, "host B: {refused:?}");
    for port in [a.nvme, a.discovery] {
        assert_eq!(
            a.ok(discovery_log(port, HOST_A), "discovery A"),
            [CNODE1],
            "port {port}"
        );
        assert!(
            a.ok(discovery_log(port, HOST_B), "discovery B").is_empty(),
            "host B sees a subsystem it may not use (port {port})"
        );
    }
    a.spdk(&["nvmf_subsystem_allow_any_host", "--allow-any-host", CNODE1]);
    assert_eq!(
        a.ok(discovery_log(a.discovery, HOST_B), "discovery B"),
        [CNODE1]
    );
    let (mut b_admin, _) = a.ok(Host::admin_queue(a.nvme, CNODE1, HOST_B), "host B allowed");
    assert_eq!(a.ok(b_admin.property_get(0x08), "VS").dw0, 0x0002_0000);

    // A namespace added while connected: listed by Identify, and announced.
    a.spdk(&["nvmf_subsystem_add_ns", CNODE1, "Malloc1", "-n", "5"]);
    let list = a.ok(identify(&mut admin, 2, 0), "active namespace list");
    let ids: Vec<u32> = list
        .data
        .chunks(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .take_while(|&n| n != 0)
        .collect();
    assert_eq!(ids, [1, 5]);

    // The seed's 2018 names, through SPDK's client library.
    let script = format!(
        r#"
import json
from spdk.rpc.client import JSONRPCClient
c = JSONRPCClient("127.0.0.1", {port}, timeout=60.0)
print(json.dumps(c.call("construct_nvmf_subsystem", {{
    "nqn": "nqn.2016-06.io.spdk:cnode2",
    "listen_addresses": [{{"trtype": "TCP", "adrfam": "IPv4", "traddr": "0.0.0.0", "trsvcid": "4420"}}],
    "hosts": ["{host}"], "allow_any_host": False, "serial_number": "abcdef",
    "namespaces": [{{"nsid": 1, "bdev_name": "Malloc2"}}]}})))
try:
    c.call("construct_nvmf_subsystem", {{"nqn": "nqn.2016-06.io.spdk:cnode3", "serial_number": "x",
        "listen_addresses": [{{"trtype": "RDMA", "adrfam": "IPv4", "traddr": "0.0.0.0", "trsvcid": "4420"}}]}})
    print("RDMA accepted")
except Exception as e:
    print("refused:", " ".join(str(e).split()))
print(json.dumps(c.call("get_nvmf_subsystems")))
print(json.dumps(c.call("nvmf_get_stats")))
print(json.dumps(c.call("delete_nvmf_subsystem", {{"nqn": "nqn.2016-06.io.spdk:cnode2"}})))
print(json.dumps(c.call("save_config")))
"#,
        port = a.rpc,
        host = HOST_A
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("python3 with the spdk package");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}\n----- console -----\n{}",
        String::from_utf8_lossy(&out.stderr),
        a.vm.output()
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "true", "{text}");
    assert!(lines[1].starts_with("refused:"), "{text}");
    let subs: serde_json::Value = serde_json::from_str(lines[2]).unwrap();
    let cnode2 = subs
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["nqn"] == "nqn.2016-06.io.spdk:cnode2")
        .unwrap_or_else(|| panic!("{subs}"));
    assert_eq!(
        cnode2["namespaces"][0]["name"], "Malloc2",
        "seed shape: {cnode2}"
    );
    assert_eq!(cnode2["hosts"][0]["nqn"], HOST_A);
    let stats: serde_json::Value = serde_json::from_str(lines[3]).unwrap();
    assert!(
        stats["poll_groups"][0]["current_admin_qpairs"]
            .as_u64()
            .unwrap()
            >= 2,
        "{stats}"
    );
    assert_eq!(lines[4], "true");
    let saved: serde_json::Value = serde_json::from_str(lines[5]).unwrap();
    let nvmf = saved["subsystems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["subsystem"] == "nvmf")
        .unwrap_or_else(|| panic!("save_config has no nvmf: {saved}"));
    let methods: Vec<&str> = nvmf["config"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["method"].as_str().unwrap())
        .collect();
    for m in [
        "nvmf_create_transport",
        "nvmf_create_subsystem",
        "nvmf_subsystem_add_listener",
        "nvmf_subsystem_add_host",
        "nvmf_subsystem_add_ns",
    ] {
        assert!(methods.contains(&m), "{m} missing from {methods:?}");
    }

    // Deleting the subsystem ends its controllers.
    a.spdk(&["nvmf_delete_subsystem", CNODE1]);
    assert!(
        admin.property_get(0x08).is_err(),
        "admin queue of a deleted subsystem still served"
    );
}

/// Linux nvme-tcp and nvme-cli in the rig's guest against the appliance on a
/// bridge in our own namespace.
#[test]
#[ignore = "boots the appliance and a Linux guest in a network namespace; run through cargo xtask test"]
fn linux_nvme_tcp_discover_connect_ext4_digests_and_hot_add() {
    let image =
        guest::build(&target_dir().join("rig")).unwrap_or_else(|e| panic!("rig guest: {e}"));
    let bdevs = [
        malloc("Malloc0", 96),
        malloc("Malloc1", 64),
        malloc("Malloc2", 16),
        malloc("Malloc3", 8),
    ]
    .join(",");
    let nvmf = [
        TRANSPORT.to_string(),
        subsystem(
            CNODE1,
            &["Malloc0", "Malloc1"],
            &["nqn.2014-08.org.ironbay:rig-host"],
        ),
        subsystem("nqn.2016-06.io.spdk:open", &["Malloc3"], &[]),
    ]
    .join(",");
    let cfg = boot_config("nvmf-rig", &[("bdev", &bdevs), ("nvmf", &nvmf)]);
    let mut ns = Netns::create("nvmfrig").unwrap_or_else(|e| panic!("{e}"));
    let rpc = free_port();
    let mut m = Machine::new(Boot::Kernel {
        image: require(&kernel()),
        append: "mgmt.ip=10.0.2.15/24 mgmt.gw=10.0.2.2 data.ip=10.55.0.10/24".into(),
        config: Some(cfg),
    });
    // 184 MiB of RAM bdevs on top of the socket pools and the I/O reserve.
    m.memory_mib = 1024;
    m.data_tap = Some(ns.add_tap().unwrap());
    m.forwards = vec![(Nic::Mgmt, rpc, 5260)];
    let mut appliance = Running::spawn(ns.wrap(&m.command())).expect("start qemu");
    appliance
        .wait_for(READY, Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}"));
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/nvmf-host.sh");
    let mut host = vm::GuestVm::new(&script);
    host.ip = Some("10.55.0.2/24".into());
    host.mac = "52:54:00:1b:20:02".into();
    host.tap = Some(ns.add_tap().unwrap());
    let mut guest_vm = host.start(&image, Some(&ns)).unwrap();
    if let Err(e) = guest_vm.wait_for("WAITING-FOR-NS3", Duration::from_secs(900)) {
        panic!(
            "{e}\n{}\n----- appliance -----\n{}",
            guest_vm.output(),
            appliance.output()
        );
    }
    // The RPC port is forwarded inside the namespace.
    let mut rpc_cmd = Command::new("spdk-rpc");
    rpc_cmd.args([
        "-s",
        "127.0.0.1",
        "-p",
        &rpc.to_string(),
        "nvmf_subsystem_add_ns",
        CNODE1,
        "Malloc2",
        "-n",
        "3",
    ]);
    let out = ns.wrap(&rpc_cmd).output().expect("spdk-rpc");
    assert!(
        out.status.success(),
        "nvmf_subsystem_add_ns: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let (rc, out) =
        vm::finish(&mut guest_vm, Duration::from_secs(900)).unwrap_or_else(|e| panic!("host: {e}"));
    // Shown with --nocapture: what nvme-cli reported.
    println!("{out}");
    assert_eq!(
        rc,
        0,
        "host script failed\n{out}\n----- appliance -----\n{}",
        appliance.output()
    );
    for needle in [
        "DISCOVERY-4420-OK",
        "DISCOVERY-8009-OK",
        "DISCOVERY-FILTERED",
        "STRANGER-REFUSED",
        "ID-CTRL-OK",
        "ID-NS-OK",
        "SIZES 196608 131072",
        "FSCK-CLEAN",
        "FILES-INTACT",
        "NS3-APPEARED 32768",
        "DIGESTS-CONNECTED",
        "NVMF-HOST-OK",
    ] {
        assert!(
            out.contains(needle),
            "host output lacks `{needle}`\n{out}\n----- appliance -----\n{}",
            appliance.output()
        );
    }
    assert_eq!(out.matches("err= 0").count(), 3, "fio verify\n{out}");
    drop(guest_vm);
    drop(appliance);
    drop(ns);
}
