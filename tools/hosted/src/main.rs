//! `ironbay-hosted`: the NBD engine and the block layer as an ordinary Linux
//! process, over std TCP sockets and file-backed or RAM bdevs. The same
//! protocol code as the appliance; only this glue differs. It makes real
//! client tests fast and lets the engine be benchmarked without a VM.
//!
//! ironbay-hosted --listen 127.0.0.1:10809 [--export NAME=FILE[:ro]]... [--malloc NAME=MIB]...

mod file;

use ironbay_bdev::{IoRequest, MallocBdev, Registry};
use ironbay_nbd::{BlockIo, Connection, Export, Exports};
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

const MAX_CONNECTIONS: usize = 64;

struct Client {
    sock: TcpStream,
    conn: Connection,
    /// Received bytes the engine has not taken yet.
    pending: Vec<u8>,
    generation: u32,
}

fn usage() -> ! {
    eprintln!(
        "usage: ironbay-hosted --listen ADDR [--export NAME=FILE[:ro]]... [--malloc NAME=MIB]..."
    );
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut listen = "127.0.0.1:10809".to_string();
    let mut reg = Registry::new();
    let mut exports = Exports::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let v = it.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--listen" => listen = v.clone(),
            "--export" | "--malloc" => {
                let (name, what) = v.split_once('=').unwrap_or_else(|| usage());
                let (dev, ro): (Box<dyn ironbay_bdev::BlockDevice>, bool) = if a == "--export" {
                    let (path, ro) = match what.strip_suffix(":ro") {
                        Some(p) => (p, true),
                        None => (what, false),
                    };
                    let f = file::FileBdev::open(name, path, 512, ro).unwrap_or_else(|e| {
                        eprintln!("{path}: {e}");
                        std::process::exit(1)
                    });
                    (Box::new(f), ro)
                } else {
                    let mib: u64 = what.parse().unwrap_or_else(|_| usage());
                    (Box::new(MallocBdev::new(name, mib * 2048, 512)), false)
                };
                let id = reg.add(dev).unwrap_or_else(|e| {
                    eprintln!("{e}");
                    std::process::exit(1)
                });
                let info = reg.info(id).cloned().unwrap_or_else(|| usage());
                exports
                    .list
                    .push(Export::new(name, &info.product, id, &info, ro));
            }
            _ => usage(),
        }
    }
    let listener = TcpListener::bind(&listen).unwrap_or_else(|e| {
        eprintln!("{listen}: {e}");
        std::process::exit(1)
    });
    listener.set_nonblocking(true).unwrap_or_else(|_| usage());
    eprintln!(
        "ironbay-hosted: NBD on {listen}, {} exports",
        exports.list.len()
    );
    serve(listener, reg, exports)
}

fn serve(listener: TcpListener, mut reg: Registry, exports: Exports) -> ! {
    let mut clients: Vec<Option<Client>> = (0..MAX_CONNECTIONS).map(|_| None).collect();
    let mut generations = vec![0u32; MAX_CONNECTIONS];
    let mut done = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    let start = Instant::now();
    loop {
        let now = start.elapsed().as_micros() as u64;
        let mut busy = false;
        while let Ok((sock, _)) = listener.accept() {
            busy = true;
            let Some(i) = clients.iter().position(Option::is_none) else {
                continue;
            };
            let _ = sock.set_nonblocking(true);
            let _ = sock.set_nodelay(true);
            generations[i] = generations[i].wrapping_add(1);
            clients[i] = Some(Client {
                sock,
                conn: Connection::new(),
                pending: Vec::new(),
                generation: generations[i],
            });
        }
        for (i, slot) in clients.iter_mut().enumerate() {
            let Some(c) = slot else { continue };
            let mut closed = false;
            if c.conn.wants_input() {
                if c.pending.is_empty() {
                    match c.sock.read(&mut buf) {
                        Ok(0) => closed = true,
                        Ok(n) => c.pending.extend_from_slice(&buf[..n]),
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                        Err(_) => closed = true,
                    }
                }
                if !c.pending.is_empty() {
                    let n = c.conn.handle_input(&c.pending, &exports, &reg);
                    c.pending.drain(..n);
                    busy |= n > 0;
                }
            }
            while let Some(io) = c.conn.poll_io() {
                let BlockIo { tag, bdev, op, fua } = io;
                let t = (i as u64) << 56 | (c.generation as u64 & 0xffff) << 40 | tag;
                if let Err(back) = reg.submit(bdev, IoRequest { tag: t, op, fua }, now) {
                    c.conn.retry_io(BlockIo {
                        tag,
                        bdev,
                        op: back.op,
                        fua,
                    });
                    break;
                }
                busy = true;
            }
            while let Some(out) = c.conn.poll_output() {
                match c.sock.write(out) {
                    Ok(0) => break,
                    Ok(n) => {
                        c.conn.consume_output(n);
                        busy = true;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => {
                        closed = true;
                        break;
                    }
                }
            }
            if let Some(why) = c.conn.error.take() {
                eprintln!("ironbay-hosted: client {i}: {why}");
            }
            if closed || c.conn.finished() {
                *slot = None;
            }
        }
        done.clear();
        reg.poll(now, &mut done);
        for (_, comp) in done.drain(..) {
            busy = true;
            let i = (comp.tag >> 56) as usize;
            let generation = (comp.tag >> 40) as u32 & 0xffff;
            if let Some(Some(c)) = clients.get_mut(i)
                && c.generation & 0xffff == generation
            {
                c.conn.handle_completion(comp.tag & ((1 << 40) - 1), comp);
            }
        }
        if !busy {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}
