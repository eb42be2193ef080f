//! Configuration operations: every check, and that a refused operation
//! changes nothing.

use super::*;
use alloc::boxed::Box;
use alloc::vec;
use ironbay_bdev::{MallocBdev, NullBdev};

const NQN: &str = "nqn.2016-06.io.spdk:cnode1";
const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:8f1a2b3c-0000-4000-8000-000000000001";

fn registry() -> Registry {
    let mut reg = Registry::new();
    reg.add(Box::new(MallocBdev::new("Malloc0", 64, 512)))
        .unwrap();
    reg.add(Box::new(MallocBdev::new("Malloc1", 64, 512)))
        .unwrap();
    reg.add(Box::new(NullBdev::new("Null0", 64, 4096))).unwrap();
    reg
}

fn ns(bdev: &str, nsid: u32) -> Namespace {
    Namespace {
        nsid,
        bdev_name: bdev.into(),
        nguid: None,
        eui64: None,
        uuid: None,
    }
}

fn tcp(addr: &str, port: u16) -> Listener {
    Listener::new(None, addr, port).unwrap()
}

/// A TCP transport and subsystem `NQN` with Malloc0 as namespace 1.
fn basic() -> (Config, Registry) {
    let reg = registry();
    let mut c = Config::default();
    c.create_transport(TransportOptions::default()).unwrap();
    let mut s = Subsystem::new(NQN);
    s.namespaces.push(ns("Malloc0", 1));
    s.listeners.push(tcp("10.0.0.1", 4420));
    c.create_subsystem(s, &reg).unwrap();
    (c, reg)
}

fn invalid_says(r: Result<impl core::fmt::Debug>, why: &str) {
    match r {
        Err(ConfigError::Invalid(m)) => assert!(m.contains(why), "{m:?} lacks {why:?}"),
        other => panic!("expected Invalid({why}), got {other:?}"),
    }
}

fn busy_says(r: Result<impl core::fmt::Debug>, why: &str) {
    match r {
        Err(ConfigError::Busy(m)) => assert!(m.contains(why), "{m:?} lacks {why:?}"),
        other => panic!("expected Busy({why}), got {other:?}"),
    }
}

#[test]
fn nqns_are_checked() {
    for good in [
        NQN,
        "nqn.2014-08.org.nvmexpress:uuid:ceccf520-691e-4b46-9546-34af789907c5",
        "nqn.2024-12.com.example",
        "nqn.1999-01.a-b.c9:x y:z",
        crate::spec::DISCOVERY_NQN,
    ] {
        check_nqn(good).unwrap_or_else(|e| panic!("{good}: {e}"));
    }
    let long = format!("nqn.2016-06.io.spdk:{}", "x".repeat(204));
    assert_eq!(long.len(), 224);
    for (bad, why) in [
        ("", "nqn.yyyy-mm"),
        ("iqn.2016-06.io.spdk:a", "nqn.yyyy-mm"),
        ("nqn.2016-13.io.spdk:a", "nqn.yyyy-mm"),
        ("nqn.16-06.io.spdk:a", "nqn.yyyy-mm"),
        ("nqn.2016-06.", "domain"),
        ("nqn.2016-06.:a", "domain"),
        ("nqn.2016-06.-io.spdk:a", "domain"),
        ("nqn.2016-06.io..spdk:a", "domain"),
        ("nqn.2016-06.io.spdk:a\u{1}", "control"),
        ("nqn.2014-08.org.nvmexpress:uuid:nope", "UUID"),
        (long.as_str(), "223"),
    ] {
        invalid_says(check_nqn(bad), why);
    }
}

#[test]
fn transport_options_are_checked() {
    let mut c = Config::default();
    let d = TransportOptions::default;
    for (o, why) in [
        (
            TransportOptions {
                max_queue_depth: 1,
                ..d()
            },
            "`max_queue_depth` 1",
        ),
        (
            TransportOptions {
                max_queue_depth: 1025,
                ..d()
            },
            "from 2 to 1024",
        ),
        (
            TransportOptions {
                max_aq_depth: 0,
                ..d()
            },
            "`max_aq_depth`",
        ),
        (
            TransportOptions {
                max_io_qpairs_per_ctrlr: 0,
                ..d()
            },
            "`max_io_qpairs_per_ctrlr`",
        ),
        (
            TransportOptions {
                in_capsule_data_size: 4100,
                ..d()
            },
            "multiple of 16",
        ),
        (
            TransportOptions {
                in_capsule_data_size: 1 << 20,
                ..d()
            },
            "`in_capsule_data_size`",
        ),
        (
            TransportOptions {
                max_io_size: 3 * 4096,
                ..d()
            },
            "power of two",
        ),
        (
            TransportOptions {
                max_io_size: 2048,
                ..d()
            },
            "`max_io_size`",
        ),
        (
            TransportOptions {
                max_io_size: 16 << 20,
                ..d()
            },
            "`max_io_size`",
        ),
        (
            TransportOptions {
                io_unit_size: 1024,
                ..d()
            },
            "`io_unit_size`",
        ),
        (
            TransportOptions {
                io_unit_size: 4098,
                ..d()
            },
            "multiple of 4",
        ),
        (
            TransportOptions {
                abort_timeout_sec: 3601,
                ..d()
            },
            "`abort_timeout_sec`",
        ),
    ] {
        invalid_says(c.create_transport(o.clone()), why);
        invalid_says(c.set_transport(o), why);
    }
    assert_eq!(c.transport, None);
    assert_eq!(c.generation, 0, "nothing changed");
    let small = TransportOptions {
        in_capsule_data_size: 0,
        io_unit_size: 8192,
        max_queue_depth: 2,
        ..d()
    };
    c.create_transport(small.clone()).unwrap();
    invalid_says(c.create_transport(d()), "already exists");
    assert_eq!(c.transport.as_ref(), Some(&small));
    c.set_transport(d()).unwrap();
    assert_eq!(c.transport, Some(d()));
    assert_eq!(c.generation, 2);
}

#[test]
fn transport_and_address_names() {
    assert_eq!(Trtype::parse("tcp").unwrap(), Trtype::Tcp);
    assert_eq!(Trtype::parse("TCP").unwrap(), Trtype::Tcp);
    invalid_says(Trtype::parse("RDMA"), "not supported");
    invalid_says(Trtype::parse("PCIe"), "not supported");
    invalid_says(Trtype::parse("carrier-pigeon"), "unknown transport");
    assert_eq!(Adrfam::parse("ipv4").unwrap(), Adrfam::Ipv4);
    assert_eq!(Adrfam::parse("IPv6").unwrap(), Adrfam::Ipv6);
    invalid_says(Adrfam::parse("IB"), "not supported");
    invalid_says(Adrfam::parse("x"), "unknown address family");
    let l = Listener::new(None, "[fe80::0001]", 4420).unwrap();
    assert_eq!((l.adrfam, l.traddr.as_str()), (Adrfam::Ipv6, "fe80::1"));
    assert_eq!(tcp("0.0.0.0", 4420).addr(), None, "wildcard");
    assert_eq!(
        tcp("10.0.0.1", 4420).addr(),
        Some("10.0.0.1".parse().unwrap())
    );
    invalid_says(Listener::new(None, "host.example", 4420), "not an IP");
    invalid_says(
        Listener::new(Some(Adrfam::Ipv4), "::1", 4420),
        "not an IPv4",
    );
    invalid_says(Listener::new(None, "10.0.0.1", 0), "1-65535");
}

#[test]
fn subsystems_are_created_checked() {
    let (mut c, reg) = basic();
    let s = c.subsystem(NQN).unwrap();
    assert_eq!(s.serial_number, DEFAULT_SERIAL);
    assert_eq!(s.model_number, DEFAULT_MODEL);
    assert_eq!((s.min_cntlid, s.max_cntlid), (1, MAX_CNTLID));
    assert_eq!(s.max_nsid(), MAX_NAMESPACES);
    let generation = c.generation;
    let other = "nqn.2016-06.io.spdk:cnode2";
    let with = |f: &dyn Fn(&mut Subsystem)| {
        let mut s = Subsystem::new(other);
        f(&mut s);
        s
    };
    for (spec, why) in [
        (Subsystem::new(NQN), "already exists"),
        (Subsystem::new(crate::spec::DISCOVERY_NQN), "exists always"),
        (Subsystem::new("nqn.bad"), "expected nqn"),
        (
            with(&|s| s.serial_number = String::new()),
            "`serial_number`",
        ),
        (
            with(&|s| s.serial_number = "x".repeat(21)),
            "`serial_number` must be 1-20",
        ),
        (
            with(&|s| s.serial_number = "s\u{e9}rie".into()),
            "printable ASCII",
        ),
        (
            with(&|s| s.model_number = "m".repeat(41)),
            "`model_number` must be 1-40",
        ),
        (with(&|s| s.min_cntlid = 0), "controller IDs"),
        (
            with(&|s| {
                s.min_cntlid = 10;
                s.max_cntlid = 9
            }),
            "controller IDs",
        ),
        (with(&|s| s.max_cntlid = 0xfff0), "controller IDs"),
        (
            with(&|s| s.max_namespaces = MAX_NAMESPACES + 1),
            "`max_namespaces`",
        ),
        (
            with(&|s| s.hosts = vec![HOST.into(), HOST.into()]),
            "already",
        ),
        (with(&|s| s.hosts = vec!["me".into()]), "host NQN me"),
        (
            with(&|s| s.listeners = vec![tcp("10.0.0.1", 4420), tcp("10.0.0.1", 4420)]),
            "listens on 10.0.0.1:4420 already",
        ),
        (
            with(&|s| s.namespaces = vec![ns("Malloc1", 1), ns("Null0", 1)]),
            "namespace 1 already",
        ),
        (
            with(&|s| s.namespaces = vec![ns("Malloc0", 0)]),
            "namespace 1 of nqn.2016-06.io.spdk:cnode1",
        ),
        (
            with(&|s| s.namespaces = vec![ns("Malloc1", 1), ns("Malloc1", 2)]),
            "namespace 1 of nqn.2016-06.io.spdk:cnode2",
        ),
        (
            with(&|s| s.namespaces = vec![ns("Nope", 0)]),
            "bdev Nope does not exist",
        ),
        (
            with(&|s| {
                s.max_namespaces = 2;
                s.namespaces = vec![ns("Malloc1", 3)]
            }),
            "from 1 to 2",
        ),
    ] {
        invalid_says(c.create_subsystem(spec, &reg), why);
    }
    busy_says(
        c.create_subsystem(
            with(&|s| {
                s.max_namespaces = 1;
                s.namespaces = vec![ns("Malloc1", 0), ns("Null0", 0)]
            }),
            &reg,
        ),
        "has 1 namespaces",
    );
    assert_eq!(c.generation, generation, "nothing changed");
    assert_eq!(c.subsystems.len(), 1);
    // Explicit nsids are placed before automatic ones take theirs.
    c.create_subsystem(
        with(&|s| s.namespaces = vec![ns("Malloc1", 0), ns("Null0", 1)]),
        &reg,
    )
    .unwrap();
    let ids: Vec<(u32, &str)> = c.subsystems[1]
        .namespaces
        .iter()
        .map(|n| (n.nsid, n.bdev_name.as_str()))
        .collect();
    assert_eq!(ids, [(1, "Null0"), (2, "Malloc1")]);
}

#[test]
fn listeners_need_the_transport() {
    let reg = registry();
    let mut c = Config::default();
    let mut s = Subsystem::new(NQN);
    s.listeners.push(tcp("10.0.0.1", 4420));
    invalid_says(c.create_subsystem(s, &reg), "no TCP transport");
    c.create_subsystem(Subsystem::new(NQN), &reg).unwrap();
    invalid_says(
        c.add_listener(NQN, tcp("10.0.0.1", 4420)),
        "no TCP transport",
    );
    c.create_transport(TransportOptions::default()).unwrap();
    c.add_listener(NQN, tcp("10.0.0.1", 4420)).unwrap();
}

#[test]
fn subsystem_limits() {
    let reg = registry();
    let mut c = Config::default();
    assert_eq!(c.subsystem_limit(), MAX_SUBSYSTEMS);
    invalid_says(c.set_max_subsystems(0), "from 1 to 1024");
    invalid_says(c.set_max_subsystems(1025), "from 1 to 1024");
    c.set_max_subsystems(2).unwrap();
    for i in 0..2 {
        c.create_subsystem(Subsystem::new(&format!("{NQN}{i}")), &reg)
            .unwrap();
    }
    busy_says(
        c.create_subsystem(Subsystem::new("nqn.2016-06.io.spdk:x"), &reg),
        "`max_subsystems`",
    );
    busy_says(c.set_max_subsystems(1), "2 subsystems exist");
    c.delete_subsystem(&format!("{NQN}0")).unwrap();
    c.set_max_subsystems(1).unwrap();
    invalid_says(c.delete_subsystem(NQN), "no subsystem");
    invalid_says(
        c.delete_subsystem(crate::spec::DISCOVERY_NQN),
        "cannot be deleted",
    );
    let g = c.generation;
    c.set_acceptor_poll_rate(10_000);
    assert_eq!((c.acceptor_poll_rate, c.generation), (10_000, g + 1));
}

#[test]
fn listeners_come_and_go() {
    let (mut c, _) = basic();
    invalid_says(c.add_listener(NQN, tcp("10.0.0.1", 4420)), "already");
    invalid_says(
        c.add_listener("nqn.2016-06.io.spdk:x", tcp("10.0.0.1", 4421)),
        "no subsystem",
    );
    c.add_listener(NQN, tcp("::", 4421)).unwrap();
    c.add_listener(NQN, tcp("0.0.0.0", 4420)).unwrap();
    for i in 3..MAX_LISTENERS {
        c.add_listener(NQN, tcp("10.0.1.1", 5000 + i as u16))
            .unwrap();
    }
    busy_says(c.add_listener(NQN, tcp("10.0.2.1", 4420)), "64 listeners");
    // The discovery service answers on extra ports.
    c.add_listener(crate::spec::DISCOVERY_NQN, tcp("0.0.0.0", 8010))
        .unwrap();
    invalid_says(
        c.add_listener(crate::spec::DISCOVERY_NQN, tcp("0.0.0.0", 8010)),
        "already",
    );
    let ports = c.ports();
    for p in [4420, 4421, 8009, 8010, 5063] {
        assert!(ports.contains(&p), "{p} in {ports:?}");
    }
    invalid_says(c.remove_listener(NQN, "10.0.0.9", 4420), "no listener");
    invalid_says(c.remove_listener(NQN, "nope", 4420), "not an IP");
    c.remove_listener(NQN, "[::]", 4421).unwrap();
    c.remove_listener(NQN, "10.0.0.1", 4420).unwrap();
    c.remove_listener(crate::spec::DISCOVERY_NQN, "0.0.0.0", 8010)
        .unwrap();
    let s = c.subsystem(NQN).unwrap();
    assert!(s.listens_on(4420), "the wildcard one stays");
    assert!(!s.listens_on(4421));
    assert!(c.discovery_listeners.is_empty());
}

#[test]
fn namespaces_come_and_go() {
    let (mut c, reg) = basic();
    assert_eq!(c.add_namespace(NQN, ns("Null0", 0), &reg).unwrap(), 2);
    assert_eq!(c.add_namespace(NQN, ns("Malloc1", 7), &reg).unwrap(), 7);
    let g = c.generation;
    invalid_says(
        c.add_namespace(NQN, ns("Malloc1", 0), &reg),
        "namespace 7 of",
    );
    invalid_says(c.add_namespace(NQN, ns("X", 0), &reg), "does not exist");
    invalid_says(
        c.add_namespace(NQN, ns("X", MAX_NAMESPACES + 1), &reg),
        "from 1 to 1024",
    );
    invalid_says(
        c.add_namespace("nqn.2016-06.io.spdk:x", ns("X", 0), &reg),
        "no subsystem",
    );
    invalid_says(
        c.add_namespace(crate::spec::DISCOVERY_NQN, ns("X", 0), &reg),
        "no namespaces",
    );
    invalid_says(c.remove_namespace(NQN, 3), "no namespace 3");
    assert_eq!(c.generation, g);
    let ids = |c: &Config| -> Vec<u32> {
        c.subsystem(NQN)
            .unwrap()
            .namespaces
            .iter()
            .map(|n| n.nsid)
            .collect()
    };
    assert_eq!(ids(&c), [1, 2, 7], "sorted");
    c.remove_namespace(NQN, 2).unwrap();
    assert_eq!(ids(&c), [1, 7]);
    assert_eq!(c.namespace_on("Malloc1"), Some((NQN, 7)));
    assert_eq!(c.namespace_on("Null0"), None);
}

#[test]
fn bdevs_gone_take_their_namespaces() {
    let (mut c, mut reg) = basic();
    c.add_namespace(NQN, ns("Null0", 0), &reg).unwrap();
    assert_eq!(c.prune_namespaces(&reg), 0);
    let g = c.generation;
    let id = reg.find("Malloc0").unwrap();
    reg.remove(id).unwrap();
    assert_eq!(c.prune_namespaces(&reg), 1);
    assert!(c.generation > g);
    let left: Vec<&str> = c.subsystems[0]
        .namespaces
        .iter()
        .map(|n| n.bdev_name.as_str())
        .collect();
    assert_eq!(left, ["Null0"]);
}

#[test]
fn hosts_come_and_go() {
    let (mut c, _) = basic();
    assert!(!c.subsystem(NQN).unwrap().host_allowed(HOST));
    c.add_host(NQN, HOST).unwrap();
    assert!(c.subsystem(NQN).unwrap().host_allowed(HOST));
    invalid_says(c.add_host(NQN, HOST), "already");
    invalid_says(c.add_host(NQN, "host1"), "host NQN host1");
    invalid_says(
        c.add_host(crate::spec::DISCOVERY_NQN, HOST),
        "any host may use",
    );
    invalid_says(c.add_host("nqn.2016-06.io.spdk:x", HOST), "no subsystem");
    for i in 1..MAX_HOSTS {
        c.add_host(NQN, &format!("nqn.2016-06.io.spdk:host{i}"))
            .unwrap();
    }
    busy_says(
        c.add_host(NQN, "nqn.2016-06.io.spdk:one-more"),
        "1024 hosts",
    );
    c.remove_host(NQN, HOST).unwrap();
    invalid_says(c.remove_host(NQN, HOST), "does not list");
    assert!(!c.subsystem(NQN).unwrap().host_allowed(HOST));
    c.set_allow_any_host(NQN, true).unwrap();
    assert!(c.subsystem(NQN).unwrap().host_allowed(HOST));
    invalid_says(
        c.set_allow_any_host(crate::spec::DISCOVERY_NQN, false),
        "any host may use",
    );
    invalid_says(
        c.set_allow_any_host("nqn.2016-06.io.spdk:x", true),
        "no subsystem",
    );
}

#[test]
fn the_one_shot_form_brings_a_transport() {
    let reg = registry();
    let mut c = Config::default();
    let mut s = Subsystem::new(NQN);
    s.listeners.push(tcp("10.0.0.1", 4420));
    s.namespaces.push(ns("Nope", 0));
    invalid_says(c.construct_subsystem(s.clone(), &reg), "Nope");
    assert_eq!(c.transport, None, "rolled back");
    s.namespaces[0].bdev_name = "Malloc0".into();
    c.construct_subsystem(s, &reg).unwrap();
    assert_eq!(c.transport, Some(TransportOptions::default()));
    c.construct_subsystem(Subsystem::new("nqn.2016-06.io.spdk:b"), &reg)
        .unwrap();
    assert_eq!(c.subsystems.len(), 2);
}
