//! `ironbay-hosted`: the NBD and iSCSI engines and the block layer as an
//! ordinary Linux process, over std TCP sockets and file-backed or RAM bdevs.
//! The same protocol code and endpoint as the appliance; only the sockets
//! differ. It makes
//! real client tests fast and lets the engines be benchmarked without a VM.
//!
//! ironbay-hosted [--listen ADDR] [--iscsi ADDR] [--chap USER:SECRET[:MUSER:MSECRET]]
//!                [--nvmf ADDR] [--export NAME=FILE[:ro]]... [--malloc NAME=MIB[:ro]]...
//!
//! `--listen` serves NBD (default 127.0.0.1:10809 when no other target is
//! asked for); `--iscsi` serves one target node per bdev,
//! `iqn.2016-06.io.ironbay:NAME` with the bdev as LUN 0, to any initiator
//! (CHAP required with `--chap`); `--nvmf` serves NVMe-oF/TCP: subsystem
//! `nqn.2016-06.io.ironbay:hosted` with every bdev as a namespace (in
//! order, from nsid 1), to any host, and the discovery service, on ADDR.

mod file;

mod sockets;

use ironbay_bdev::engine::TargetEngine;
use ironbay_bdev::{BdevId, Budget, MallocBdev, Registry};
use ironbay_endpoint::{Endpoint, Limits, tag};
use ironbay_iscsi::config::{
    AuthGroup, ChapPolicy, InitiatorGroup, Lun, PgIgMap, Portal, PortalGroup, Secret, TargetNode,
};
use ironbay_iscsi::{Config, Target};
use ironbay_nbd::{Export, Exports};
use sockets::StdSockets;
use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

const MAX_CONNECTIONS: usize = 64;

/// Node names of the hosted iSCSI target.
const IQN_BASE: &str = "iqn.2016-06.io.ironbay";

fn usage() -> ! {
    eprintln!(
        "usage: ironbay-hosted [--listen ADDR] [--iscsi ADDR] [--chap USER:SECRET[:MUSER:MSECRET]] \
         [--nvmf ADDR] \
         [--export NAME=FILE[:ro]]... [--malloc NAME=MIB[:ro]]..."
    );
    std::process::exit(2)
}

fn fail(what: impl std::fmt::Display) -> ! {
    eprintln!("ironbay-hosted: {what}");
    std::process::exit(1)
}

fn bind(addr: &str) -> TcpListener {
    let l = TcpListener::bind(addr).unwrap_or_else(|e| fail(format!("{addr}: {e}")));
    l.set_nonblocking(true).unwrap_or_else(|e| fail(e));
    l
}

/// One node per bdev, every initiator allowed through one portal group.
fn iscsi_config(addr: SocketAddr, luns: &[(String, BdevId, bool)], chap: Option<Secret>) -> Config {
    let mut config = Config::default();
    config.portal_groups.push(PortalGroup {
        tag: 1,
        portals: vec![Portal {
            host: addr.ip().to_string(),
            port: addr.port(),
        }],
        private: false,
    });
    config.initiator_groups.push(InitiatorGroup {
        tag: 1,
        initiators: vec!["ANY".into()],
        netmasks: vec!["ANY".into()],
    });
    let policy = match chap {
        Some(secret) => {
            let mutual = secret.muser.is_some();
            config.auth_groups.push(AuthGroup {
                tag: 1,
                secrets: vec![secret],
            });
            ChapPolicy {
                disable: false,
                require: true,
                mutual,
                group: 1,
            }
        }
        None => ChapPolicy::default(),
    };
    for (name, bdev, read_only) in luns {
        config.nodes.push(TargetNode {
            name: format!("{IQN_BASE}:{}", name.to_ascii_lowercase()),
            alias: name.clone(),
            pg_ig_maps: vec![PgIgMap {
                pg_tag: 1,
                ig_tag: 1,
            }],
            luns: vec![Lun {
                id: 0,
                bdev_name: name.clone(),
                bdev: *bdev,
                read_only: *read_only,
            }],
            queue_depth: config.options.max_queue_depth,
            chap: policy.clone(),
            header_digest: false,
            data_digest: false,
            masked: false,
            acls: Vec::new(),
        });
    }
    config
}

/// The hosted NVMe-oF subsystem.
const NVMF_NQN: &str = "nqn.2016-06.io.ironbay:hosted";

fn nvmf_config(addr: SocketAddr, luns: &[(String, BdevId, bool)]) -> ironbay_nvmf::Config {
    use ironbay_nvmf::config::{Adrfam, Listener, Namespace, Subsystem, TransportOptions, Trtype};
    let namespaces = luns
        .iter()
        .zip(1..)
        .map(|((name, _, _), nsid)| Namespace {
            nsid,
            bdev_name: name.clone(),
            nguid: None,
            eui64: None,
            uuid: None,
        })
        .collect();
    ironbay_nvmf::Config {
        transport: Some(TransportOptions::default()),
        subsystems: vec![Subsystem {
            nqn: NVMF_NQN.into(),
            serial_number: "IRONBAYHOSTED0000001".into(),
            model_number: "ironbay hosted".into(),
            allow_any_host: true,
            hosts: Vec::new(),
            namespaces,
            listeners: vec![Listener {
                trtype: Trtype::Tcp,
                adrfam: if addr.is_ipv4() {
                    Adrfam::Ipv4
                } else {
                    Adrfam::Ipv6
                },
                traddr: addr.ip().to_string(),
                port: addr.port(),
            }],
            max_namespaces: 0,
            min_cntlid: 1,
            max_cntlid: 0xffef,
        }],
        ..Default::default()
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mut nbd_addr, mut iscsi_addr, mut nvmf_addr, mut chap) = (None, None, None, None);
    let mut reg = Registry::new();
    let mut exports = Exports::default();
    let mut luns = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let v = it.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--listen" => nbd_addr = Some(v.clone()),
            "--iscsi" => iscsi_addr = Some(v.clone()),
            "--nvmf" => nvmf_addr = Some(v.clone()),
            "--chap" => {
                let p: Vec<&str> = v.split(':').collect();
                chap = Some(match p.as_slice() {
                    [u, s] => Secret {
                        user: u.to_string(),
                        secret: s.to_string(),
                        muser: None,
                        msecret: None,
                    },
                    [u, s, mu, ms] => Secret {
                        user: u.to_string(),
                        secret: s.to_string(),
                        muser: Some(mu.to_string()),
                        msecret: Some(ms.to_string()),
                    },
                    _ => usage(),
                });
            }
            "--export" | "--malloc" => {
                let (name, what) = v.split_once('=').unwrap_or_else(|| usage());
                // `:ro` exports read-only (NBD) and write-protects the LUN (iSCSI).
                let (what, ro) = match what.strip_suffix(":ro") {
                    Some(w) => (w, true),
                    None => (what, false),
                };
                let dev: Box<dyn ironbay_bdev::BlockDevice> = if a == "--export" {
                    let f = file::FileBdev::open(name, what, 512, ro)
                        .unwrap_or_else(|e| fail(format!("{what}: {e}")));
                    Box::new(f)
                } else {
                    let mib: u64 = what.parse().unwrap_or_else(|_| usage());
                    Box::new(MallocBdev::new(name, mib * 2048, 512))
                };
                let id = reg.add(dev).unwrap_or_else(|e| fail(e));
                let info = reg.info(id).cloned().unwrap_or_else(|| usage());
                exports
                    .list
                    .push(Export::new(name, &info.product, id, &info, ro));
                luns.push((name.to_string(), id, ro));
            }
            _ => usage(),
        }
    }
    if nbd_addr.is_none() && iscsi_addr.is_none() && nvmf_addr.is_none() {
        nbd_addr = Some("127.0.0.1:10809".into());
    }
    let nbd = nbd_addr.as_deref().map(bind);
    let iscsi = iscsi_addr.as_deref().map(bind);
    let mut target = Target::default();
    if let Some(l) = &iscsi {
        let addr = l.local_addr().unwrap_or_else(|e| fail(e));
        target = Target::new(iscsi_config(addr, &luns, chap));
        // CHAP challenges come from the engine's generator: seed it from the OS.
        let mut seed = [0u8; 8];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut seed))
            .unwrap_or_else(|e| fail(format!("/dev/urandom: {e}")));
        target.seed_entropy(u64::from_le_bytes(seed));
        eprintln!(
            "ironbay-hosted: iSCSI on {addr}, {} target nodes",
            luns.len()
        );
    }
    let nvmf_listener = nvmf_addr.as_deref().map(bind);
    let mut nvmf = ironbay_nvmf::Target::new(ironbay_nvmf::Config::default());
    if let Some(l) = &nvmf_listener {
        let addr = l.local_addr().unwrap_or_else(|e| fail(e));
        nvmf = ironbay_nvmf::Target::new(nvmf_config(addr, &luns));
        eprintln!(
            "ironbay-hosted: NVMe-oF/TCP on {addr}, subsystem {NVMF_NQN} with {} namespaces",
            luns.len()
        );
    }
    if let Some(a) = nbd.as_ref().and_then(|l| l.local_addr().ok()) {
        eprintln!("ironbay-hosted: NBD on {a}, {} exports", exports.list.len());
    }
    let served = Served {
        reg,
        exports,
        target,
        nvmf,
    };
    serve(nbd, iscsi, nvmf_listener, served)
}

/// What the engines serve, shared by all connections.
struct Served {
    reg: Registry,
    exports: Exports,
    target: Target,
    nvmf: ironbay_nvmf::Target,
}

/// Budget for the engines' buffers, like the appliance's.
const IO_BUDGET: usize = 512 << 20;

/// One engine kind's endpoint and sockets.
struct Service<E: TargetEngine> {
    endpoint: Endpoint<E>,
    sockets: StdSockets,
}

impl<E: TargetEngine> Service<E> {
    fn new(service: u8, listener: TcpListener, budget: &Budget, handshake_ms: u64) -> Self {
        let limits = Limits {
            handshake_ms,
            ..Limits::default()
        };
        Service {
            endpoint: Endpoint::new(service, MAX_CONNECTIONS, limits, budget.clone()),
            sockets: StdSockets::new(listener, MAX_CONNECTIONS),
        }
    }

    fn poll(
        &mut self,
        target: &mut E::Target,
        reg: &mut Registry,
        now_us: u64,
        wake: bool,
    ) -> bool {
        let busy = self.sockets.refresh();
        busy | self
            .endpoint
            .poll(&mut self.sockets, target, reg, now_us, wake)
    }
}

fn serve(
    nbd: Option<TcpListener>,
    iscsi: Option<TcpListener>,
    nvmf: Option<TcpListener>,
    mut s: Served,
) -> ! {
    let budget = Budget::new(IO_BUDGET, 3 * MAX_CONNECTIONS);
    let mut nbd = nbd.map(|l| Service::<ironbay_nbd::Connection>::new(0, l, &budget, 10_000));
    let mut iscsi = iscsi.map(|l| Service::<ironbay_iscsi::Connection>::new(1, l, &budget, 60_000));
    let mut nvmf = nvmf.map(|l| Service::<ironbay_nvmf::Connection>::new(2, l, &budget, 60_000));
    let mut done = Vec::new();
    let start = Instant::now();
    let mut seen_events = 0;
    loop {
        let now = start.elapsed().as_micros() as u64;
        let mut busy = false;
        if let Some(n) = &mut nbd {
            busy |= n.poll(&mut s.exports, &mut s.reg, now, false);
        }
        if let Some(i) = &mut iscsi {
            busy |= i.poll(&mut s.target, &mut s.reg, now, false);
        }
        if let Some(n) = &mut nvmf {
            let events = s.nvmf.events_seq();
            let wake = events != seen_events;
            seen_events = events;
            busy |= n.poll(&mut s.nvmf, &mut s.reg, now, wake);
        }
        done.clear();
        s.reg.poll(now, &mut done);
        for (_, c) in done.drain(..) {
            busy = true;
            match tag::service(c.tag) {
                Some(0) => {
                    if let Some(n) = &mut nbd {
                        n.endpoint.complete(c, &mut s.exports, &s.reg, now);
                    }
                }
                Some(1) => {
                    if let Some(i) = &mut iscsi {
                        i.endpoint.complete(c, &mut s.target, &s.reg, now);
                    }
                }
                Some(2) => {
                    if let Some(n) = &mut nvmf {
                        n.endpoint.complete(c, &mut s.nvmf, &s.reg, now);
                    }
                }
                _ => {}
            }
        }
        if !busy {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}
