//! Configuration operations and the access rules the engine asks about.

use super::*;
use alloc::boxed::Box;
use alloc::vec;
use ironbay_bdev::{MallocBdev, NullBdev};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn portal(host: &str, port: u16) -> Portal {
    Portal {
        host: host.into(),
        port,
    }
}

fn secret(user: &str, secret: &str) -> Secret {
    Secret {
        user: user.into(),
        secret: secret.into(),
        muser: None,
        msecret: None,
    }
}

fn map(pg_tag: u32, ig_tag: u32) -> PgIgMap {
    PgIgMap { pg_tag, ig_tag }
}

fn lun(bdev: &str, id: Option<u64>) -> LunSpec {
    LunSpec {
        bdev_name: bdev.into(),
        id,
        read_only: false,
    }
}

fn spec(name: &str, luns: Vec<LunSpec>, maps: Vec<PgIgMap>) -> NodeSpec {
    NodeSpec {
        name: name.into(),
        alias: "an alias".into(),
        luns,
        pg_ig_maps: maps,
        queue_depth: 32,
        ..Default::default()
    }
}

fn registry() -> Registry {
    let mut reg = Registry::new();
    reg.add(Box::new(MallocBdev::new("Malloc0", 64, 512)))
        .unwrap();
    let mut ro = MallocBdev::new("Malloc1", 64, 512);
    ro.set_read_only(true);
    reg.add(Box::new(ro)).unwrap();
    reg.add(Box::new(NullBdev::new("Null0", 64, 4096))).unwrap();
    reg
}

/// Portal group 1 on 10.0.0.1:3260, initiator group 2 for one host on
/// 10.0.0.0/24, and node `disk1` with Malloc0 as LUN 0.
fn basic() -> (Config, Registry) {
    let reg = registry();
    let mut c = Config::default();
    c.create_portal_group(1, vec![portal("10.0.0.1", 3260)], false)
        .unwrap();
    c.create_initiator_group(
        2,
        strings(&["iqn.1994-05.com.redhat:host1"]),
        strings(&["10.0.0.0/24"]),
    )
    .unwrap();
    c.create_target_node(
        spec("disk1", vec![lun("Malloc0", Some(0))], vec![map(1, 2)]),
        &reg,
    )
    .unwrap();
    (c, reg)
}

/// The error message of a refused operation, after checking that it
/// changed nothing.
fn refused(c: &mut Config, op: impl FnOnce(&mut Config) -> Result<()>) -> ConfigError {
    let before = c.clone();
    let e = op(c).unwrap_err();
    assert_eq!(c.generation, before.generation, "{e}");
    assert_eq!(c.nodes, before.nodes);
    assert_eq!(c.portal_groups, before.portal_groups);
    assert_eq!(c.initiator_groups, before.initiator_groups);
    assert_eq!(c.auth_groups, before.auth_groups);
    assert_eq!(c.options, before.options);
    e
}

fn says(e: &ConfigError, what: &str) {
    assert!(e.message().contains(what), "{e:?} lacks {what}");
}

#[test]
fn nodes_get_full_names_sorted_luns_and_clamped_depth() {
    let (mut c, reg) = basic();
    let n = c.node("iqn.2016-06.io.spdk:disk1").unwrap();
    assert_eq!(n.luns[0].bdev_name, "Malloc0");
    assert_eq!(c.short_name(&n.name), "disk1");
    assert!(c.find_node("disk1").is_some());
    assert!(c.find_node("IQN.2016-06.IO.SPDK:DISK1").is_some());
    let mut s = spec(
        "iqn.2001-04.com.example:storage.disk2",
        vec![
            lun("Malloc1", None),
            lun("Null0", Some(0)),
            lun("Malloc0", None),
        ],
        vec![map(1, 2)],
    );
    s.queue_depth = 256;
    let name = c.create_target_node(s, &reg).unwrap();
    assert_eq!(name, "iqn.2001-04.com.example:storage.disk2");
    let n = c.node(&name).unwrap();
    let luns: Vec<(u64, &str, bool)> = n
        .luns
        .iter()
        .map(|l| (l.id, l.bdev_name.as_str(), l.read_only))
        .collect();
    assert_eq!(
        luns,
        [
            (0, "Null0", false),
            (1, "Malloc1", true),
            (2, "Malloc0", false)
        ]
    );
    assert_eq!(n.queue_depth, 64, "lowered to max_queue_depth");
    assert_eq!(c.short_name(&name), name, "not under node_base");
    let id = c.add_lun("disk1", "Null0", None, &reg).unwrap();
    assert_eq!(id, 1);
    assert_eq!(c.add_lun(&name, "Null0", Some(7), &reg).unwrap(), 7);
    let ids: Vec<u64> = c.node(&name).unwrap().luns.iter().map(|l| l.id).collect();
    assert_eq!(ids, [0, 1, 2, 7]);
    for eui in ["eui.02004567A425678D", "naa.52004567BA64678D"] {
        c.create_target_node(spec(eui, vec![], vec![]), &reg)
            .unwrap();
    }
}

#[test]
fn bad_nodes_are_refused_whole() {
    let (mut c, reg) = basic();
    let generation = c.generation;
    for (s, why) in [
        (spec("disk1", vec![], vec![]), "already exists"),
        (spec("DISK1", vec![], vec![]), "already exists"),
        (spec("a b", vec![], vec![]), "not allowed"),
        (spec("a_b", vec![], vec![]), "not allowed"),
        (spec("iqn.16-06.x", vec![], vec![]), "iqn.yyyy-mm"),
        (spec("eui.0123", vec![], vec![]), "16 hex"),
        (spec("naa.01234567890123456", vec![], vec![]), "16 or 32"),
        (spec(&"x".repeat(220), vec![], vec![]), "1-223"),
        (
            spec("d", vec![lun("Nope", Some(0))], vec![]),
            "does not exist",
        ),
        (
            spec(
                "d",
                vec![lun("Malloc0", Some(0)), lun("Null0", Some(0))],
                vec![],
            ),
            "LUN 0 already",
        ),
        (
            spec("d", vec![lun("Malloc0", Some(256))], vec![]),
            "below 256",
        ),
        (spec("d", vec![], vec![map(9, 2)]), "no portal group 9"),
        (spec("d", vec![], vec![map(1, 9)]), "no initiator group 9"),
        (
            spec("d", vec![], vec![map(1, 2), map(1, 2)]),
            "already maps",
        ),
    ] {
        let e = refused(&mut c, |c| c.create_target_node(s, &reg).map(|_| ()));
        says(&e, why);
    }
    let mut s = spec("d", vec![], vec![]);
    s.chap = ChapPolicy {
        disable: true,
        require: true,
        ..Default::default()
    };
    says(
        &refused(&mut c, |c| c.create_target_node(s, &reg).map(|_| ())),
        "mutually exclusive",
    );
    let mut s = spec("d", vec![], vec![]);
    s.chap.mutual = true;
    says(
        &refused(&mut c, |c| c.create_target_node(s, &reg).map(|_| ())),
        "needs `require_chap`",
    );
    let mut s = spec("d", vec![], vec![]);
    s.queue_depth = 0;
    says(
        &refused(&mut c, |c| c.create_target_node(s, &reg).map(|_| ())),
        "positive",
    );
    let mut s = spec("d", vec![], vec![]);
    s.alias = "a\nb".into();
    says(
        &refused(&mut c, |c| c.create_target_node(s, &reg).map(|_| ())),
        "control",
    );
    assert_eq!(c.generation, generation);
    says(
        &refused(&mut c, |c| {
            c.add_lun("disk1", "Null0", Some(0), &reg).map(|_| ())
        }),
        "LUN 0 already",
    );
    says(
        &refused(&mut c, |c| {
            c.add_lun("nope", "Null0", None, &reg).map(|_| ())
        }),
        "no target node",
    );
}

#[test]
fn object_counts_are_capped() {
    let reg = registry();
    let mut c = Config::default();
    for tag in 1..=MAX_AUTH_GROUPS as u32 {
        c.create_auth_group(tag, vec![]).unwrap();
    }
    let e = refused(&mut c, |c| c.create_auth_group(9999, vec![]));
    assert!(matches!(e, ConfigError::Busy(_)), "{e:?}");
    for tag in 1..=MAX_PORTAL_GROUPS as u32 {
        c.create_portal_group(tag, vec![portal("127.0.0.1", tag as u16)], false)
            .unwrap();
    }
    let e = refused(&mut c, |c| {
        c.create_portal_group(9999, vec![portal("127.0.0.1", 9999)], false)
    });
    assert!(matches!(e, ConfigError::Busy(_)));
    c.create_initiator_group(1, strings(&["ANY"]), strings(&["ANY"]))
        .unwrap();
    let many: Vec<String> = (0..=MAX_INITIATORS)
        .map(|i| format!("iqn.2000-01.x:{i}"))
        .collect();
    says(
        &refused(&mut c, |c| c.add_initiators(1, many, vec![])),
        "at most",
    );
    for i in 0..MAX_NODES {
        c.create_target_node(spec(&format!("n{i}"), vec![], vec![]), &reg)
            .unwrap();
    }
    let e = refused(&mut c, |c| {
        c.create_target_node(spec("one-more", vec![], vec![]), &reg)
            .map(|_| ())
    });
    assert!(matches!(e, ConfigError::Busy(_)));
    for i in 0..MAX_LUNS {
        c.add_lun("n0", "Null0", Some(i), &reg).unwrap();
    }
    says(
        &refused(&mut c, |c| c.add_lun("n0", "Null0", None, &reg).map(|_| ())),
        "no free LUN",
    );
    c.create_initiator_group(2, strings(&["ANY"]), strings(&["ANY"]))
        .unwrap();
    let maps: Vec<PgIgMap> = (1..=MAX_PG_IG_MAPS as u32)
        .map(|pg| map(pg, 1))
        .chain([map(1, 2)])
        .collect();
    says(
        &refused(&mut c, |c| c.add_pg_ig_maps("n0", &maps)),
        "at most",
    );
}

#[test]
fn auth_groups_and_secrets() {
    let mut c = Config::default();
    let mut mutual = secret("u1", "s1-is-a-long-one");
    mutual.muser = Some("mu1".into());
    mutual.msecret = Some("ms1-is-another".into());
    c.create_auth_group(1, vec![mutual.clone(), secret("u2", "s2")])
        .unwrap();
    assert_eq!(c.auth_group(1).unwrap().secret_for("u1"), Some(&mutual));
    c.add_secret(1, secret("u3", "s3")).unwrap();
    c.remove_secret(1, "u2").unwrap();
    let users: Vec<&str> = c
        .auth_group(1)
        .unwrap()
        .secrets
        .iter()
        .map(|s| s.user.as_str())
        .collect();
    assert_eq!(users, ["u1", "u3"]);
    let mut same = secret("u4", "same");
    same.muser = Some("m".into());
    same.msecret = Some("same".into());
    let mut half = secret("u5", "s");
    half.muser = Some("m".into());
    for (s, why) in [
        (same, "must differ"),
        (half, "go together"),
        (secret("", "s"), "1-255"),
        (secret("u", &"s".repeat(256)), "1-255"),
        (secret("u\u{7}", "s"), "control"),
        (secret("u1", "again"), "already"),
    ] {
        says(&refused(&mut c, |c| c.add_secret(1, s)), why);
    }
    says(
        &refused(&mut c, |c| c.add_secret(2, secret("a", "b"))),
        "no auth group 2",
    );
    says(
        &refused(&mut c, |c| c.remove_secret(1, "u2")),
        "no secret for u2",
    );
    says(
        &refused(&mut c, |c| c.create_auth_group(1, vec![])),
        "already exists",
    );
    says(
        &refused(&mut c, |c| c.create_auth_group(0, vec![])),
        "tag 0",
    );
    says(
        &refused(&mut c, |c| {
            c.create_auth_group(2, vec![secret("a", "b"), secret("a", "c")])
        }),
        "twice",
    );
    c.set_discovery_auth(ChapPolicy {
        require: true,
        mutual: true,
        group: 1,
        ..Default::default()
    })
    .unwrap();
    says(
        &refused(&mut c, |c| {
            c.set_discovery_auth(ChapPolicy {
                disable: true,
                require: true,
                ..Default::default()
            })
        }),
        "mutually exclusive",
    );
    c.delete_auth_group(1).unwrap();
    assert!(c.auth_group(1).is_none());
    says(
        &refused(&mut c, |c| c.delete_auth_group(1)),
        "no auth group 1",
    );
}

#[test]
fn portal_groups_normalize_and_stay_while_mapped() {
    let (mut c, _) = basic();
    c.create_portal_group(
        2,
        vec![
            portal("*", 3260),
            portal("[*]", 3260),
            portal("fe80::1", 3261),
        ],
        true,
    )
    .unwrap();
    let hosts: Vec<&str> = c
        .portal_group(2)
        .unwrap()
        .portals
        .iter()
        .map(|p| p.host.as_str())
        .collect();
    assert_eq!(hosts, ["0.0.0.0", "[::]", "[fe80::1]"]);
    for (tag, portals, why) in [
        (3, vec![portal("10.0.0.1", 3260)], "already exists"),
        (3, vec![portal("[fe80::1]", 3261)], "already exists"),
        (3, vec![portal("a", 1), portal("a", 1)], "not an IP"),
        (3, vec![portal("host.example", 3260)], "not an IP"),
        (3, vec![portal("10.0.0.2", 0)], "1-65535"),
        (3, vec![], "1-64"),
        (1, vec![portal("10.0.0.2", 3260)], "already exists"),
        (70000, vec![portal("10.0.0.2", 3260)], "65535"),
    ] {
        says(
            &refused(&mut c, |c| c.create_portal_group(tag, portals, false)),
            why,
        );
    }
    let e = refused(&mut c, |c| c.delete_portal_group(1));
    assert!(matches!(e, ConfigError::Busy(_)));
    says(&e, "maps portal group 1");
    says(
        &refused(&mut c, |c| c.delete_initiator_group(2)),
        "maps initiator group 2",
    );
    c.remove_pg_ig_maps("disk1", &[map(1, 2)]).unwrap();
    says(
        &refused(&mut c, |c| c.remove_pg_ig_maps("disk1", &[map(1, 2)])),
        "does not map",
    );
    c.delete_portal_group(1).unwrap();
    c.delete_initiator_group(2).unwrap();
    says(
        &refused(&mut c, |c| c.delete_portal_group(1)),
        "no portal group",
    );
}

#[test]
fn initiator_groups_check_entries() {
    let mut c = Config::default();
    c.create_initiator_group(
        1,
        strings(&["ALL", "!iqn.2000-01.x:bad"]),
        strings(&["ALL", "[fd00::]/8", "192.168.1.7"]),
    )
    .unwrap();
    assert_eq!(c.initiator_group(1).unwrap().initiators[0], "ANY");
    assert_eq!(c.initiator_group(1).unwrap().netmasks[0], "ANY");
    for (names, masks, why) in [
        (vec!["ANY"], vec![], "needs initiators and netmasks"),
        (vec![], vec!["ANY"], "needs initiators and netmasks"),
        (vec!["a b"], vec!["ANY"], "space"),
        (vec!["!"], vec!["ANY"], "1-223"),
        (vec!["ANY", "ANY"], vec!["ANY"], "already"),
        (vec!["ANY"], vec!["10.0.0.0/0"], "netmask"),
        (vec!["ANY"], vec!["10.0.0.0/33"], "netmask"),
        (vec!["ANY"], vec!["10.0.0/8"], "netmask"),
        (vec!["ANY"], vec!["fd00::/8"], "netmask"),
        (vec!["ANY"], vec!["[fd00::]/129"], "netmask"),
        (vec!["ANY"], vec!["[fd00::]/"], "netmask"),
    ] {
        says(
            &refused(&mut c, |c| {
                c.create_initiator_group(2, strings(&names), strings(&masks))
            }),
            why,
        );
    }
    c.add_initiators(
        1,
        strings(&["iqn.2000-01.x:good"]),
        strings(&["10.1.0.0/16"]),
    )
    .unwrap();
    says(
        &refused(&mut c, |c| {
            c.add_initiators(
                1,
                strings(&["iqn.2000-01.x:new"]),
                strings(&["10.1.0.0/16"]),
            )
        }),
        "already",
    );
    says(
        &refused(&mut c, |c| {
            c.remove_initiators(1, &strings(&["iqn.2000-01.x:good"]), &strings(&["nope"]))
        }),
        "no netmask nope",
    );
    c.remove_initiators(1, &strings(&["ALL"]), &strings(&["10.1.0.0/16"]))
        .unwrap();
    let g = c.initiator_group(1).unwrap();
    assert_eq!(
        g.initiators,
        strings(&["!iqn.2000-01.x:bad", "iqn.2000-01.x:good"])
    );
    assert_eq!(g.netmasks, strings(&["ANY", "[fd00::]/8", "192.168.1.7"]));
}

#[test]
fn access_follows_spdk_rules() {
    let (mut c, reg) = basic();
    let host1 = "iqn.1994-05.com.redhat:host1";
    let node = |c: &Config| c.node("iqn.2016-06.io.spdk:disk1").unwrap().clone();
    let n = node(&c);
    assert!(c.allows(&n, host1, ip("10.0.0.9"), 1));
    assert!(c.allows(&n, "IQN.1994-05.COM.REDHAT:HOST1", ip("10.0.0.9"), 1));
    assert!(c.allows(&n, host1, ip("::ffff:10.0.0.9"), 1), "v4-mapped");
    assert!(!c.allows(&n, host1, ip("10.0.1.9"), 1), "netmask");
    assert!(!c.allows(&n, "iqn.1994-05.com.redhat:host2", ip("10.0.0.9"), 1));
    assert!(
        !c.allows(&n, host1, ip("10.0.0.9"), 2),
        "other portal group"
    );
    // A group that denies host1 outright, tried before one that allows all.
    c.create_initiator_group(3, strings(&["ANY"]), strings(&["ANY"]))
        .unwrap();
    c.create_initiator_group(
        4,
        strings(&[&format!("!{host1}"), "ANY"]),
        strings(&["ANY"]),
    )
    .unwrap();
    c.create_initiator_group(5, strings(&["ANY"]), strings(&["[fd00::]/8"]))
        .unwrap();
    c.create_portal_group(
        6,
        vec![portal("0.0.0.0", 3260), portal("[::]", 3261)],
        false,
    )
    .unwrap();
    c.add_pg_ig_maps("disk1", &[map(6, 4), map(6, 3)]).unwrap();
    let n = node(&c);
    assert!(
        !c.allows(&n, host1, ip("10.0.0.9"), 6),
        "denied before allowed"
    );
    assert!(c.allows(&n, "iqn.2000-01.x:other", ip("192.0.2.1"), 6));
    c.remove_pg_ig_maps("disk1", &[map(6, 4)]).unwrap();
    c.add_pg_ig_maps("disk1", &[map(6, 5)]).unwrap();
    let n = node(&c);
    assert!(c.allows(&n, host1, ip("10.0.0.9"), 6));
    // Name allowed by group 5 but not its netmask: the next map decides.
    c.remove_pg_ig_maps("disk1", &[map(6, 3)]).unwrap();
    let n = node(&c);
    assert!(c.allows(&n, host1, ip("fd12::1"), 6));
    assert!(!c.allows(&n, host1, ip("fe80::1"), 6));
    let visible: Vec<&str> = c
        .visible_nodes(host1, ip("fd00::5"), 6)
        .map(|n| n.name.as_str())
        .collect();
    assert_eq!(visible, ["iqn.2016-06.io.spdk:disk1"]);
    c.create_target_node(
        spec("hidden", vec![lun("Null0", None)], vec![map(1, 2)]),
        &reg,
    )
    .unwrap();
    assert_eq!(c.visible_nodes(host1, ip("10.0.0.3"), 1).count(), 2);
    assert_eq!(c.visible_nodes(host1, ip("10.0.0.3"), 6).count(), 0);
}

#[test]
fn portals_resolve_and_send_targets_addresses() {
    let (mut c, _) = basic();
    c.create_portal_group(
        2,
        vec![portal("0.0.0.0", 3260), portal("[::]", 3260)],
        false,
    )
    .unwrap();
    c.create_portal_group(3, vec![portal("10.0.0.2", 3260)], true)
        .unwrap();
    c.create_portal_group(4, vec![portal("[fd00::1]", 3262)], false)
        .unwrap();
    assert_eq!(
        c.portal_group_of(ip("10.0.0.1"), 3260),
        Some(1),
        "exact wins"
    );
    assert_eq!(c.portal_group_of(ip("::ffff:10.0.0.1"), 3260), Some(1));
    assert_eq!(c.portal_group_of(ip("10.0.0.2"), 3260), Some(3));
    assert_eq!(
        c.portal_group_of(ip("192.0.2.7"), 3260),
        Some(2),
        "wildcard"
    );
    assert_eq!(c.portal_group_of(ip("fd00::1"), 3262), Some(4));
    assert_eq!(c.portal_group_of(ip("fd00::2"), 3262), None);
    assert_eq!(c.portal_group_of(ip("10.0.0.1"), 3261), None);
    c.add_pg_ig_maps("disk1", &[map(2, 2), map(3, 2), map(4, 2)])
        .unwrap();
    let n = c.node("iqn.2016-06.io.spdk:disk1").unwrap();
    assert_eq!(
        c.target_addresses(n, ip("192.0.2.7")),
        [
            "10.0.0.1:3260,1",
            "192.0.2.7:3260,2",
            "192.0.2.7:3260,2",
            "[fd00::1]:3262,4"
        ],
        "private group 3 left out"
    );
    assert_eq!(c.target_addresses(n, ip("fd00::9"))[1], "[fd00::9]:3260,2");
}

#[test]
fn options_are_range_checked() {
    let (mut c, _) = basic();
    let good = Options {
        node_base: "iqn.2024-01.com.example".into(),
        max_queue_depth: 128,
        first_burst_length: 65536,
        ..Default::default()
    };
    c.set_options(good.clone()).unwrap();
    assert_eq!(c.options, good);
    type Spoil = fn(&mut Options);
    let cases: [(Spoil, &str); 9] = [
        (|o| o.max_sessions = 0, "max_sessions"),
        (|o| o.max_queue_depth = 257, "max_queue_depth"),
        (|o| o.max_queue_depth = 16, "below the queue depth 32"),
        (
            |o| o.first_burst_length = o.max_burst_length + 1,
            "first_burst_length",
        ),
        (|o| o.max_burst_length = 1 << 24, "max_burst_length"),
        (|o| o.error_recovery_level = 3, "error_recovery_level"),
        (|o| o.nop_in_interval = 61, "nop_in_interval"),
        (|o| o.node_base = "no-type".into(), "node_base"),
        (
            |o| o.node_base = format!("iqn.2000-01.{}", "x".repeat(210)),
            "node_base",
        ),
    ];
    for (bad, why) in cases {
        let mut o = good.clone();
        bad(&mut o);
        says(&refused(&mut c, |c| c.set_options(o)), why);
    }
}

#[test]
fn hot_removal_drops_luns_and_bumps_generation() {
    let (mut c, mut reg) = basic();
    c.add_lun("disk1", "Null0", None, &reg).unwrap();
    let id = reg.find("Malloc0").unwrap();
    let generation = c.generation;
    reg.remove(id).unwrap();
    assert_eq!(c.remove_bdev(id), 1);
    assert!(c.generation > generation);
    let n = c.find_node("disk1").unwrap();
    assert_eq!(n.luns.len(), 1);
    assert_eq!(n.luns[0].bdev_name, "Null0");
    let generation = c.generation;
    assert_eq!(c.remove_bdev(id), 0);
    assert_eq!(c.generation, generation, "nothing changed");
    c.delete_target_node("disk1").unwrap();
    says(
        &refused(&mut c, |c| c.delete_target_node("disk1")),
        "no target node",
    );
}

#[test]
fn names_are_checked() {
    for good in [
        "iqn.2016-06.io.spdk:disk1",
        "iqn.2001-04.com.example",
        "IQN.2001-04.COM.EXAMPLE:ünïcode",
        "eui.02004567A425678D",
        "naa.52004567BA64678D52004567BA64678D",
    ] {
        check_iscsi_name(good).unwrap();
    }
    for bad in [
        "",
        "iqn.",
        "iqn.2001-04.",
        "iqn.2001-4.com.example",
        "iqn.2001-04.com.ex ample",
        "iqn.2001-04.com/example",
        "iqn.2001-04.com\u{0}example",
        "eui.02004567A425678",
        "eui.02004567A425678G",
        "naa.52004567BA64678D5",
        "foo.bar",
    ] {
        assert!(check_iscsi_name(bad).is_err(), "{bad:?}");
    }
    let long = format!("iqn.2001-04.com.example:{}", "a".repeat(200));
    assert!(check_iscsi_name(&long).is_err());
}

#[test]
fn secrets_are_not_printed() {
    let mut s = secret("user", "pass-word-1234");
    s.muser = Some("muser".into());
    s.msecret = Some("other-pass-5678".into());
    let g = AuthGroup {
        tag: 1,
        secrets: vec![s],
    };
    let shown = alloc::format!("{g:?}");
    assert!(shown.contains("user") && shown.contains("muser"));
    assert!(!shown.contains("pass-word") && !shown.contains("other-pass"));
}
