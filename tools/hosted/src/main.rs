//! `ironbay-hosted`: the NBD and iSCSI engines and the block layer as an
//! ordinary Linux process, over std TCP sockets and file-backed or RAM bdevs.
//! The same protocol code as the appliance; only this glue differs. It makes
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

use ironbay_bdev::{BdevId, IoCompletion, IoOp, IoRequest, MallocBdev, Registry};
use ironbay_iscsi::config::{
    AuthGroup, ChapPolicy, InitiatorGroup, Lun, PgIgMap, Portal, PortalGroup, Secret, TargetNode,
};
use ironbay_iscsi::{Config, Target};
use ironbay_nbd::{Export, Exports};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

const MAX_CONNECTIONS: usize = 64;

/// Node names of the hosted iSCSI target.
const IQN_BASE: &str = "iqn.2016-06.io.ironbay";

enum Engine {
    Nbd(Box<ironbay_nbd::Connection>),
    Iscsi(Box<ironbay_iscsi::Connection>),
    Nvmf(Box<ironbay_nvmf::Connection>),
}

/// Which engine a listener feeds.
#[derive(Clone, Copy)]
enum Kind {
    Nbd,
    Iscsi,
    Nvmf,
}

/// What the engines serve, shared by all connections.
struct Served {
    reg: Registry,
    exports: Exports,
    target: Target,
    nvmf: ironbay_nvmf::Target,
}

impl Engine {
    fn wants_input(&self) -> bool {
        match self {
            Engine::Nbd(c) => c.wants_input(),
            Engine::Iscsi(c) => c.wants_input(),
            Engine::Nvmf(c) => c.wants_input(),
        }
    }

    fn handle_input(&mut self, b: &[u8], s: &mut Served, now_ms: u64) -> usize {
        match self {
            Engine::Nbd(c) => c.handle_input(b, &s.exports, &s.reg),
            Engine::Iscsi(c) => c.handle_input(b, &mut s.target, &s.reg, now_ms),
            Engine::Nvmf(c) => c.handle_input(b, &mut s.nvmf, &s.reg, now_ms),
        }
    }

    /// `wake`: the NVMe-oF target has events for its connections.
    fn handle_timeout(&mut self, s: &mut Served, now_ms: u64, wake: bool) {
        match self {
            Engine::Iscsi(c) if c.poll_timeout().is_some_and(|t| t <= now_ms) => {
                c.handle_timeout(&mut s.target, &s.reg, now_ms);
            }
            Engine::Nvmf(c) if wake || c.poll_timeout().is_some_and(|t| t <= now_ms) => {
                c.handle_timeout(&mut s.nvmf, &s.reg, now_ms);
            }
            _ => {}
        }
    }

    fn poll_io(&mut self) -> Option<(u64, BdevId, IoOp, bool)> {
        match self {
            Engine::Nbd(c) => c.poll_io().map(|io| (io.tag, io.bdev, io.op, io.fua)),
            Engine::Iscsi(c) => c.poll_io().map(|io| (io.tag, io.bdev, io.op, io.fua)),
            Engine::Nvmf(c) => c.poll_io().map(|io| (io.tag, io.bdev, io.op, io.fua)),
        }
    }

    fn retry_io(&mut self, tag: u64, bdev: BdevId, op: IoOp, fua: bool) {
        match self {
            Engine::Nbd(c) => c.retry_io(ironbay_nbd::BlockIo { tag, bdev, op, fua }),
            Engine::Iscsi(c) => c.retry_io(ironbay_iscsi::BlockIo { tag, bdev, op, fua }),
            Engine::Nvmf(c) => c.retry_io(ironbay_nvmf::BlockIo { tag, bdev, op, fua }),
        }
    }

    fn handle_completion(&mut self, tag: u64, comp: IoCompletion, s: &mut Served, now_ms: u64) {
        match self {
            Engine::Nbd(c) => c.handle_completion(tag, comp),
            Engine::Iscsi(c) => c.handle_completion(tag, comp, &mut s.target, &s.reg, now_ms),
            Engine::Nvmf(c) => c.handle_completion(tag, comp, &mut s.nvmf, &s.reg, now_ms),
        }
    }

    fn poll_output(&self) -> Option<&[u8]> {
        match self {
            Engine::Nbd(c) => c.poll_output(),
            Engine::Iscsi(c) => c.poll_output(),
            Engine::Nvmf(c) => c.poll_output(),
        }
    }

    fn consume_output(&mut self, n: usize) {
        match self {
            Engine::Nbd(c) => c.consume_output(n),
            Engine::Iscsi(c) => c.consume_output(n),
            Engine::Nvmf(c) => c.consume_output(n),
        }
    }

    fn finished(&self) -> bool {
        match self {
            Engine::Nbd(c) => c.finished(),
            Engine::Iscsi(c) => c.finished(),
            Engine::Nvmf(c) => c.finished(),
        }
    }

    fn take_error(&mut self) -> Option<&'static str> {
        match self {
            Engine::Nbd(c) => c.error.take(),
            Engine::Iscsi(c) => c.error.take(),
            Engine::Nvmf(c) => c.error.take(),
        }
    }

    fn closed(&mut self, s: &mut Served) {
        match self {
            Engine::Iscsi(c) => c.closed(&mut s.target),
            Engine::Nvmf(c) => c.closed(&mut s.nvmf),
            Engine::Nbd(_) => {}
        }
    }
}

struct Client {
    sock: TcpStream,
    engine: Engine,
    /// Received bytes the engine has not taken yet.
    pending: Vec<u8>,
    generation: u32,
}

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
    if let Some(a) = &nbd_addr {
        eprintln!("ironbay-hosted: NBD on {a}, {} exports", exports.list.len());
    }
    let served = Served {
        reg,
        exports,
        target,
        nvmf,
    };
    serve(
        [
            (nbd, Kind::Nbd),
            (iscsi, Kind::Iscsi),
            (nvmf_listener, Kind::Nvmf),
        ],
        served,
    )
}

fn accept(
    listener: Option<&TcpListener>,
    clients: &mut [Option<Client>],
    generations: &mut [u32],
    now_ms: u64,
    kind: Kind,
) -> bool {
    let mut busy = false;
    while let Some(Ok((sock, peer))) = listener.map(|l| l.accept()) {
        busy = true;
        let Some(i) = clients.iter().position(Option::is_none) else {
            continue;
        };
        let _ = sock.set_nonblocking(true);
        let _ = sock.set_nodelay(true);
        let Ok(local) = sock.local_addr() else {
            continue;
        };
        let engine = match kind {
            Kind::Nbd => Engine::Nbd(Box::new(ironbay_nbd::Connection::new())),
            Kind::Iscsi => Engine::Iscsi(Box::new(ironbay_iscsi::Connection::new(
                local, peer, now_ms,
            ))),
            Kind::Nvmf => {
                Engine::Nvmf(Box::new(ironbay_nvmf::Connection::new(local, peer, now_ms)))
            }
        };
        generations[i] = generations[i].wrapping_add(1);
        clients[i] = Some(Client {
            sock,
            engine,
            pending: Vec::new(),
            generation: generations[i],
        });
    }
    busy
}

fn serve(listeners: [(Option<TcpListener>, Kind); 3], mut s: Served) -> ! {
    let mut clients: Vec<Option<Client>> = (0..MAX_CONNECTIONS).map(|_| None).collect();
    let mut generations = vec![0u32; MAX_CONNECTIONS];
    let mut done = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    let start = Instant::now();
    let mut seen_events = 0;
    loop {
        let now = start.elapsed().as_micros() as u64;
        let now_ms = now / 1000;
        let mut busy = false;
        for (l, kind) in &listeners {
            busy |= accept(l.as_ref(), &mut clients, &mut generations, now_ms, *kind);
        }
        let events = s.nvmf.events_seq();
        let wake = events != seen_events;
        seen_events = events;
        for (i, slot) in clients.iter_mut().enumerate() {
            let Some(c) = slot else { continue };
            let mut closed = false;
            if c.engine.wants_input() {
                if c.pending.is_empty() {
                    match c.sock.read(&mut buf) {
                        Ok(0) => closed = true,
                        Ok(n) => c.pending.extend_from_slice(&buf[..n]),
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                        Err(_) => closed = true,
                    }
                }
                if !c.pending.is_empty() {
                    let n = c.engine.handle_input(&c.pending, &mut s, now_ms);
                    c.pending.drain(..n);
                    busy |= n > 0;
                }
            }
            c.engine.handle_timeout(&mut s, now_ms, wake);
            while let Some((tag, bdev, op, fua)) = c.engine.poll_io() {
                let t = (i as u64) << 56 | (c.generation as u64 & 0xffff) << 40 | tag;
                if let Err(back) = s.reg.submit(bdev, IoRequest { tag: t, op, fua }, now) {
                    c.engine.retry_io(tag, bdev, back.op, fua);
                    break;
                }
                busy = true;
            }
            while let Some(out) = c.engine.poll_output() {
                match c.sock.write(out) {
                    Ok(0) => break,
                    Ok(n) => {
                        c.engine.consume_output(n);
                        busy = true;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => {
                        closed = true;
                        break;
                    }
                }
            }
            if let Some(why) = c.engine.take_error() {
                eprintln!("ironbay-hosted: client {i}: {why}");
            }
            if closed || (c.engine.finished() && c.engine.poll_output().is_none()) {
                c.engine.closed(&mut s);
                *slot = None;
            }
        }
        done.clear();
        s.reg.poll(now, &mut done);
        for (_, comp) in done.drain(..) {
            busy = true;
            let i = (comp.tag >> 56) as usize;
            let generation = (comp.tag >> 40) as u32 & 0xffff;
            if let Some(Some(c)) = clients.get_mut(i)
                && c.generation & 0xffff == generation
            {
                let tag = comp.tag & ((1 << 40) - 1);
                c.engine.handle_completion(tag, comp, &mut s, now_ms);
            }
        }
        if !busy {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}
