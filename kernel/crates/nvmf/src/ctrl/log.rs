//! Get Log Page: error information, SMART / health, firmware slots,
//! changed namespaces, commands supported and effects, and the discovery
//! log.

use super::{
    Controller, FNV_SEED, Outcome, TEMPERATURE, fnv, put, put_ascii, put_nul, put16, put32, put64,
};
use crate::config::{Config, Listener, Subsystem, Trtype};
use crate::spec::{self, Sqe, Status};
use crate::target::Target;
use alloc::format;
use alloc::vec;
use alloc::vec::Vec;
use core::net::{IpAddr, SocketAddr};

/// Zeroes we add past the end of a log page when the host asks for more.
const MAX_PAD: usize = 64 << 10;
const ERROR_ENTRY: usize = 64;
/// Supported Log Pages (NVMe 2.0).
const LOG_SUPPORTED: u8 = 0x00;
const DISC_ENTRY: usize = 1024;

pub(super) fn get_log_page(
    target: &mut Target,
    cntlid: u16,
    sqe: &Sqe,
    local: SocketAddr,
    now_ms: u64,
) -> Outcome {
    let cdw10 = sqe.cdw(10);
    let lid = cdw10 as u8;
    let rae = cdw10 & 1 << 15 != 0;
    let numd = ((sqe.cdw(11) as u64 & 0xffff) << 16 | (cdw10 >> 16) as u64) + 1;
    let len = numd.saturating_mul(4);
    let offset = sqe.cdw(12) as u64 | (sqe.cdw(13) as u64) << 32;
    let csi = (sqe.cdw(14) >> 24) as u8;
    // Offsets are in bytes and must be dword aligned (no index offsets).
    if offset & 3 != 0 || sqe.cdw(14) & 1 << 23 != 0 {
        return Outcome::err(Status::INVALID_FIELD);
    }
    let Some(c) = target.ctrl(cntlid) else {
        return Outcome::err(Status::INTERNAL);
    };
    let page = match (lid, c.discovery) {
        (LOG_SUPPORTED, d) => supported(d),
        (spec::LOG_ERROR, _) => error_log(c),
        (spec::LOG_DISCOVERY, true) => {
            let out = discovery(&target.config, c, local, offset, len);
            let ok = matches!(&out, Outcome::Done { status, .. } if status.is_success());
            if ok
                && !rae
                && let Some(c) = target.ctrl_mut(cntlid)
            {
                c.disc_masked = false;
            }
            return out;
        }
        (spec::LOG_SMART, false) => smart(c, now_ms),
        (spec::LOG_FIRMWARE_SLOT, false) => firmware_slots(),
        (spec::LOG_CHANGED_NS, false) => changed_ns(c),
        (spec::LOG_COMMANDS_EFFECTS, false) if csi == 0 => effects(),
        (spec::LOG_COMMANDS_EFFECTS, false) => return Outcome::err(Status::INVALID_FIELD),
        _ => return Outcome::err(Status::INVALID_LOG_PAGE),
    };
    let out = match window(&page, offset, len) {
        Ok(v) => v,
        Err(s) => return Outcome::err(s),
    };
    if let Some(c) = target.ctrl_mut(cntlid) {
        // Reading a log clears it (the changed namespace list) and, unless
        // the host retains it, unmasks its event type.
        if lid == spec::LOG_CHANGED_NS {
            c.changed_ns.clear();
            c.changed_overflow = false;
            if !rae {
                c.ns_masked = false;
            }
        }
    }
    Outcome::data(out)
}

/// Bytes `offset..offset + len` of a page: an offset past the end is
/// invalid, a length past it reads zeroes.
fn window(page: &[u8], offset: u64, len: u64) -> Result<Vec<u8>, Status> {
    let total = page.len() as u64;
    if offset > total {
        return Err(Status::INVALID_FIELD);
    }
    let avail = total - offset;
    let n = len.min(avail.saturating_add(MAX_PAD as u64)) as usize;
    let mut out = vec![0u8; n];
    let take = (avail.min(len)) as usize;
    let start = offset as usize;
    if let (Some(d), Some(s)) = (out.get_mut(..take), page.get(start..start + take)) {
        d.copy_from_slice(s);
    }
    Ok(out)
}

/// Supported Log Pages (LID 00h): LSUPP for each log we serve.
fn supported(discovery: bool) -> Vec<u8> {
    let mut b = vec![0u8; 1024];
    let lids: &[u8] = if discovery {
        &[LOG_SUPPORTED, spec::LOG_ERROR, spec::LOG_DISCOVERY]
    } else {
        &[
            LOG_SUPPORTED,
            spec::LOG_ERROR,
            spec::LOG_SMART,
            spec::LOG_FIRMWARE_SLOT,
            spec::LOG_CHANGED_NS,
            spec::LOG_COMMANDS_EFFECTS,
        ]
    };
    for &lid in lids {
        put32(&mut b, lid as usize * 4, 1);
    }
    b
}

/// Error information (LID 01h): newest first.
fn error_log(c: &Controller) -> Vec<u8> {
    let mut b = vec![0u8; super::ERROR_LOG_ENTRIES * ERROR_ENTRY];
    for (k, e) in c.errors.iter().enumerate() {
        let o = k * ERROR_ENTRY;
        put64(&mut b, o, e.count);
        put16(&mut b, o + 8, e.sqid);
        put16(&mut b, o + 10, e.cid);
        // Status field with the phase bit (0) below it.
        put16(&mut b, o + 12, e.status.field() << 1);
        put16(&mut b, o + 14, 0xffff); // parameter error location unknown
        put64(&mut b, o + 16, e.lba);
        put32(&mut b, o + 24, e.nsid);
        b[o + 29] = 3; // TRTYPE: TCP
    }
    b
}

/// SMART / Health Information (LID 02h), controller-wide.
fn smart(c: &Controller, now_ms: u64) -> Vec<u8> {
    let mut b = vec![0u8; 512];
    put16(&mut b, 1, TEMPERATURE);
    b[3] = 100; // available spare
    b[4] = 10; // available spare threshold
    // Data units are thousands of 512-byte units, rounded up.
    let units = |bytes: u64| (bytes / 512).div_ceil(1000) as u128;
    put(&mut b, 32, &units(c.io.bytes_read).to_le_bytes());
    put(&mut b, 48, &units(c.io.bytes_written).to_le_bytes());
    put(&mut b, 64, &(c.io.read_cmds as u128).to_le_bytes());
    put(&mut b, 80, &(c.io.write_cmds as u128).to_le_bytes());
    put(&mut b, 112, &1u128.to_le_bytes()); // power cycles
    put(&mut b, 128, &((now_ms / 3_600_000) as u128).to_le_bytes());
    put(&mut b, 176, &(c.error_count as u128).to_le_bytes());
    b
}

/// Firmware Slot Information (LID 03h): slot 1 active.
fn firmware_slots() -> Vec<u8> {
    let mut b = vec![0u8; 512];
    b[0] = 1; // AFI
    put_ascii(&mut b, 8, 8, super::identify::FIRMWARE);
    b
}

/// Changed Namespace List (LID 04h).
fn changed_ns(c: &Controller) -> Vec<u8> {
    let mut b = vec![0u8; 4096];
    if c.changed_overflow {
        put32(&mut b, 0, 0xffff_ffff);
    } else {
        for (k, &n) in c.changed_ns.iter().take(super::CHANGED_NS_MAX).enumerate() {
            put32(&mut b, k * 4, n);
        }
    }
    b
}

/// Commands Supported and Effects (LID 05h), NVM command set.
fn effects() -> Vec<u8> {
    const CSUPP: u32 = 1;
    const LBCC: u32 = 1 << 1;
    let mut b = vec![0u8; 4096];
    for op in [
        spec::ADM_GET_LOG_PAGE,
        spec::ADM_IDENTIFY,
        spec::ADM_ABORT,
        spec::ADM_SET_FEATURES,
        spec::ADM_GET_FEATURES,
        spec::ADM_ASYNC_EVENT_REQUEST,
        spec::ADM_KEEP_ALIVE,
    ] {
        put32(&mut b, op as usize * 4, CSUPP);
    }
    for (op, e) in [
        (spec::NVM_FLUSH, CSUPP),
        (spec::NVM_WRITE, CSUPP | LBCC),
        (spec::NVM_READ, CSUPP),
        (spec::NVM_COMPARE, CSUPP),
        (spec::NVM_WRITE_ZEROES, CSUPP | LBCC),
        (spec::NVM_DATASET_MANAGEMENT, CSUPP | LBCC),
    ] {
        put32(&mut b, 1024 + op as usize * 4, e);
    }
    b
}

/// The discovery log entries a host may see: TCP listeners of subsystems
/// that allow it.
fn entries<'a>(
    config: &'a Config,
    hostnqn: &'a str,
) -> impl Iterator<Item = (&'a Subsystem, &'a Listener)> + 'a {
    config
        .subsystems
        .iter()
        .filter(move |s| s.host_allowed(hostnqn))
        .flat_map(|s| {
            s.listeners
                .iter()
                .filter(|l| l.trtype == Trtype::Tcp)
                .map(move |l| (s, l))
        })
}

/// The address an entry reports: the listener's, or for a wildcard
/// listener the one the host reached us on.
fn entry_addr(l: &Listener, local: SocketAddr) -> IpAddr {
    l.addr().unwrap_or(local.ip())
}

/// Changes whenever the discovery log this host sees changes.
pub(super) fn discovery_digest(config: &Config, hostnqn: &str, local: SocketAddr) -> u64 {
    entries(config, hostnqn).fold(FNV_SEED, |h, (s, l)| {
        let h = fnv(h, s.nqn.as_bytes());
        let h = fnv(
            h,
            format!("|{}|{}|", entry_addr(l, local), l.port).as_bytes(),
        );
        fnv(h, &[0xff])
    })
}

/// Port ID of a listener: its place among the target's ports.
fn port_id(ports: &[u16], port: u16) -> u16 {
    ports.binary_search(&port).map_or(0, |i| i as u16)
}

fn discovery_entry(
    ports: &[u16],
    s: &Subsystem,
    l: &Listener,
    local: SocketAddr,
    asqsz: u16,
) -> [u8; DISC_ENTRY] {
    let mut e = [0u8; DISC_ENTRY];
    let addr = entry_addr(l, local);
    e[0] = 3; // TRTYPE: TCP
    e[1] = match addr {
        IpAddr::V4(_) => 1,
        IpAddr::V6(_) => 2,
    };
    e[2] = 2; // SUBTYPE: NVM subsystem
    // TREQ: secure channel not required; SQ flow control may be disabled.
    e[3] = 0b10 | 1 << 2;
    put16(&mut e, 4, port_id(ports, l.port));
    put16(&mut e, 6, spec::CNTLID_DYNAMIC);
    put16(&mut e, 8, asqsz);
    put_ascii(&mut e, 32, 32, &format!("{}", l.port));
    put_nul(&mut e, 256, 256, &s.nqn);
    put_ascii(&mut e, 512, 256, &format!("{addr}"));
    // TSAS for TCP: SECTYPE 0, no security.
    e
}

/// The discovery log (LID 70h), built only where the host reads it.
fn discovery(config: &Config, c: &Controller, local: SocketAddr, offset: u64, len: u64) -> Outcome {
    let numrec = entries(config, &c.hostnqn).count() as u64;
    let total = (numrec + 1) * DISC_ENTRY as u64;
    if offset > total {
        return Outcome::err(Status::INVALID_FIELD);
    }
    let avail = total - offset;
    let n = len.min(avail.saturating_add(MAX_PAD as u64)) as usize;
    let mut out = vec![0u8; n];
    let asqsz = config.transport.as_ref().map_or(32, |o| o.max_aq_depth);
    let end = offset.saturating_add(n as u64).min(total);
    let first = (offset / DISC_ENTRY as u64) as usize;
    let last = end.div_ceil(DISC_ENTRY as u64) as usize;
    let mut header = [0u8; DISC_ENTRY];
    put64(&mut header, 0, config.generation);
    put64(&mut header, 8, numrec);
    // RECFMT 0.
    let ports = config.ports();
    let mut list = entries(config, &c.hostnqn).skip(first.saturating_sub(1));
    for k in first..last {
        let block = if k == 0 {
            header
        } else {
            match list.next() {
                Some((s, l)) => discovery_entry(&ports, s, l, local, asqsz),
                None => break,
            }
        };
        // The part of this block inside the window.
        let bstart = (k * DISC_ENTRY) as u64;
        let from = offset.max(bstart);
        let to = end.min(bstart + DISC_ENTRY as u64);
        if from >= to {
            continue;
        }
        let (src_a, src_b) = ((from - bstart) as usize, (to - bstart) as usize);
        let (dst_a, dst_b) = ((from - offset) as usize, (to - offset) as usize);
        if let (Some(d), Some(s)) = (out.get_mut(dst_a..dst_b), block.get(src_a..src_b)) {
            d.copy_from_slice(s);
        }
    }
    Outcome::data(out)
}
