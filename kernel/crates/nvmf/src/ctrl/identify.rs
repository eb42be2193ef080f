//! Identify (CNS 00h-03h, the NVM command set structures 05h-08h and the
//! command set combination list 1Ch).

use super::{Controller, NsView, Outcome, put, put_ascii, put_nul, put16, put32, put64};
use crate::config::{DEFAULT_MODEL, DEFAULT_SERIAL, MAX_NAMESPACES, TransportOptions};
use crate::spec::{self, DISCOVERY_NQN, Sqe, Status};
use crate::target::Target;
use alloc::vec;
use alloc::vec::Vec;
use ironbay_bdev::{BdevInfo, IoType, Registry};

const PAGE: usize = 4096;
/// NVM command set identifier.
const CSI_NVM: u8 = 0;
/// Firmware revision in Identify and the firmware slot log.
pub(crate) const FIRMWARE: &str = env!("CARGO_PKG_VERSION");
const MODEL_DISCOVERY: &str = "ironbay Discovery Controller";

pub(super) fn identify(
    target: &Target,
    bdevs: &Registry,
    cntlid: u16,
    sqe: &Sqe,
    opts: &TransportOptions,
) -> Outcome {
    let Some(c) = target.ctrl(cntlid) else {
        return Outcome::err(Status::INTERNAL);
    };
    let cdw10 = sqe.cdw(10);
    let cns = cdw10 as u8;
    let csi = (sqe.cdw(11) >> 24) as u8;
    let nsid = sqe.nsid();
    if c.discovery {
        return match cns {
            spec::CNS_CONTROLLER => Outcome::data(controller(target, bdevs, c, opts)),
            // Older Linux hosts ask every controller for this and give up
            // on an error; nothing in it applies here.
            spec::CNS_CSI_CONTROLLER if csi == CSI_NVM => Outcome::data(zeroed()),
            _ => Outcome::err(Status::INVALID_FIELD),
        };
    }
    let nn = max_nsid(target, c);
    // A specific namespace: an allocated ID, active or not.
    let valid = nsid != 0 && nsid <= nn;
    let r = match cns {
        spec::CNS_NAMESPACE => {
            if !valid {
                return Outcome::err(Status::INVALID_NAMESPACE);
            }
            Ok(with_info(c, bdevs, nsid).map_or_else(zeroed, |(v, i)| namespace(v, i)))
        }
        spec::CNS_CONTROLLER => Ok(controller(target, bdevs, c, opts)),
        spec::CNS_ACTIVE_NS_LIST => active_list(c, nsid),
        spec::CNS_CSI_ACTIVE_NS_LIST if csi == CSI_NVM => active_list(c, nsid),
        spec::CNS_NS_DESCRIPTORS => match with_info(c, bdevs, nsid) {
            Some((v, i)) => Ok(descriptors(v, i)),
            None => Err(Status::INVALID_NAMESPACE),
        },
        // No protection information or extended formats: all zero.
        spec::CNS_CSI_NAMESPACE if csi == CSI_NVM => {
            if !valid {
                return Outcome::err(Status::INVALID_NAMESPACE);
            }
            Ok(zeroed())
        }
        spec::CNS_CSI_CONTROLLER if csi == CSI_NVM => Ok(nvm_controller(c, bdevs)),
        spec::CNS_CSI_INDEPENDENT_NAMESPACE => {
            if !valid {
                return Outcome::err(Status::INVALID_NAMESPACE);
            }
            Ok(with_info(c, bdevs, nsid).map_or_else(zeroed, |(v, i)| independent(v, i)))
        }
        spec::CNS_COMMAND_SET_LIST => {
            let mut b = zeroed();
            // Combination 0: the NVM command set alone.
            put64(&mut b, 0, 1);
            Ok(b)
        }
        _ => Err(Status::INVALID_FIELD),
    };
    match r {
        Ok(b) => Outcome::data(b),
        Err(s) => Outcome::err(s),
    }
}

fn zeroed() -> Vec<u8> {
    vec![0; PAGE]
}

/// Highest namespace ID of the controller's subsystem (NN).
fn max_nsid(target: &Target, c: &Controller) -> u32 {
    let configured = target
        .config
        .subsystem(&c.subnqn)
        .map_or(MAX_NAMESPACES, |s| s.max_nsid());
    let top = c.ns.last().map_or(0, |v| v.nsid);
    configured.max(top)
}

/// An active namespace with its bdev (gone bdevs make it inactive).
fn with_info<'a>(
    c: &'a Controller,
    bdevs: &'a Registry,
    nsid: u32,
) -> Option<(&'a NsView, &'a BdevInfo)> {
    let v = c.ns(nsid)?;
    Some((v, bdevs.info(v.bdev)?))
}

fn active_list(c: &Controller, nsid: u32) -> Result<Vec<u8>, Status> {
    if nsid >= 0xffff_fffe {
        return Err(Status::INVALID_NAMESPACE);
    }
    let mut b = zeroed();
    for (k, v) in
        c.ns.iter()
            .filter(|v| v.nsid > nsid)
            .take(PAGE / 4)
            .enumerate()
    {
        put32(&mut b, k * 4, v.nsid);
    }
    Ok(b)
}

fn nguid(v: &NsView, i: &BdevInfo) -> [u8; 16] {
    v.nguid.unwrap_or(i.uuid.0)
}

fn uuid(v: &NsView, i: &BdevInfo) -> [u8; 16] {
    v.uuid.unwrap_or(i.uuid).0
}

/// log2 of the block size (LBADS).
fn lbads(block_size: u32) -> u8 {
    block_size.max(1).trailing_zeros() as u8
}

/// Identify Controller (CNS 01h).
fn controller(
    target: &Target,
    bdevs: &Registry,
    c: &Controller,
    opts: &TransportOptions,
) -> Vec<u8> {
    let mut b = zeroed();
    let sub = target.config.subsystem(&c.subnqn);
    let (sn, mn) = match sub {
        Some(s) if !c.discovery => (s.serial_number.as_str(), s.model_number.as_str()),
        _ => (DEFAULT_SERIAL, MODEL_DISCOVERY),
    };
    let mn = if mn.is_empty() { DEFAULT_MODEL } else { mn };
    // VID, SSVID 0 (no PCI vendor).
    put_ascii(&mut b, 4, 20, sn);
    put_ascii(&mut b, 24, 40, mn);
    put_ascii(&mut b, 64, 8, FIRMWARE);
    b[72] = 6; // RAB
    // CMIC bit 1: the subsystem may have several controllers.
    b[76] = if c.discovery { 0 } else { 1 << 1 };
    // MDTS in units of the 4 KiB minimum page size.
    let pages = (opts.max_io_size / 4096).max(1);
    b[77] = pages.trailing_zeros() as u8;
    put16(&mut b, 78, c.cntlid);
    put32(&mut b, 80, spec::NVME_VERSION);
    // OAES: namespace attribute notices, or discovery log changes.
    put32(&mut b, 92, if c.discovery { 1 << 31 } else { 1 << 8 });
    // CTRATT bit 0: 128-bit host identifier.
    put32(&mut b, 96, 1);
    // CNTRLTYPE: 1 I/O controller, 2 discovery controller.
    b[111] = if c.discovery { 2 } else { 1 };
    // OACS 0: no optional admin commands.
    b[258] = 3; // ACL (0-based)
    b[259] = super::MAX_AERS - 1; // AERL (0-based)
    // FRMW: one slot, read-only.
    b[260] = if c.discovery { 0 } else { 1 << 1 | 1 };
    // LPA: commands supported and effects (I/O controllers), extended data.
    b[261] = if c.discovery { 1 << 2 } else { 1 << 1 | 1 << 2 };
    b[262] = (super::ERROR_LOG_ENTRIES - 1) as u8; // ELPE
    // NPSS 0: one power state.
    b[264] = 1; // AVSCC
    put16(&mut b, 320, 1); // KAS: 100 ms granularity
    b[512] = 0x66; // SQES: 64 bytes
    b[513] = 0x44; // CQES: 16 bytes
    let maxcmd = if c.discovery {
        opts.max_aq_depth
    } else {
        opts.max_queue_depth
    };
    put16(&mut b, 514, maxcmd);
    if !c.discovery {
        put32(&mut b, 516, max_nsid(target, c));
        // ONCS: Compare, Dataset Management, Write Zeroes.
        put16(&mut b, 520, 1 | 1 << 2 | 1 << 3);
        let cache =
            c.ns.iter()
                .any(|v| bdevs.info(v.bdev).is_some_and(|i| i.write_cache));
        // VWC present; Flush to all namespaces (NSID FFFFFFFFh) unsupported.
        b[525] = if cache { 1 | 2 << 1 } else { 0 };
    }
    // SGLS: SGLs without alignment needs, address as offset.
    put32(&mut b, 536, 1 | 1 << 20);
    put_nul(
        &mut b,
        768,
        256,
        if c.discovery {
            DISCOVERY_NQN
        } else {
            &c.subnqn
        },
    );
    // Fabrics: IOCCSZ and IORCSZ in 16-byte units, no ICDOFF, dynamic
    // controller model, one SGL descriptor.
    put32(
        &mut b,
        1792,
        opts.in_capsule_data_size.saturating_add(64) / 16,
    );
    put32(&mut b, 1796, 1);
    b[1803] = 1;
    // Power state 0: 0 W max power (not reported), latencies 0.
    b
}

/// Identify Namespace (CNS 00h) of an active namespace.
fn namespace(v: &NsView, i: &BdevInfo) -> Vec<u8> {
    let mut b = zeroed();
    put64(&mut b, 0, i.num_blocks); // NSZE
    put64(&mut b, 8, i.num_blocks); // NCAP
    put64(&mut b, 16, i.num_blocks); // NUSE
    // NSFEAT 0, NLBAF 0 (one format), FLBAS 0.
    b[30] = 1; // NMIC: may be attached to several controllers
    b[33] = dlfeat(i);
    let bytes = (i.num_blocks as u128).saturating_mul(i.block_size as u128);
    put(&mut b, 48, &bytes.to_le_bytes()); // NVMCAP
    b[99] = i.read_only as u8; // NSATTR: write protected
    put(&mut b, 104, &nguid(v, i));
    if let Some(e) = v.eui64 {
        put(&mut b, 120, &e);
    }
    // LBA format 0: no metadata.
    b[128 + 2] = lbads(i.block_size);
    b
}

/// DLFEAT: deallocated blocks read as zeroes (001b) when unmapped blocks
/// do; the Deallocate bit of Write Zeroes is honoured when we can unmap.
fn dlfeat(i: &BdevInfo) -> u8 {
    let unmap = i.io_types.contains(IoType::Unmap);
    let zeroes = if unmap && i.unmap_zeroes { 1 } else { 0 };
    zeroes | if unmap { 1 << 3 } else { 0 }
}

/// Namespace identification descriptors (CNS 03h). EUI64 only when
/// configured: a made-up one would need an IEEE OUI we do not have.
fn descriptors(v: &NsView, i: &BdevInfo) -> Vec<u8> {
    let mut b = zeroed();
    let mut at = 0;
    let mut add = |b: &mut Vec<u8>, nidt: u8, id: &[u8]| {
        put(b, at, &[nidt, id.len() as u8, 0, 0]);
        put(b, at + 4, id);
        at += 4 + id.len();
    };
    if let Some(e) = v.eui64 {
        add(&mut b, 1, &e);
    }
    add(&mut b, 2, &nguid(v, i));
    add(&mut b, 3, &uuid(v, i));
    add(&mut b, 4, &[CSI_NVM]);
    b
}

/// I/O command set independent Identify Namespace (CNS 08h).
fn independent(_v: &NsView, i: &BdevInfo) -> Vec<u8> {
    let mut b = zeroed();
    // NSFEAT 0.
    b[1] = 1; // NMIC
    b[8] = i.read_only as u8; // NSATTR
    b[14] = 1; // NSTAT: namespace ready
    b
}

/// NVM command set Identify Controller (CNS 06h, CSI 0): no limits beyond
/// MDTS and the command formats, except the smallest unmap limit of the
/// namespaces for Dataset Management ranges.
fn nvm_controller(c: &Controller, bdevs: &Registry) -> Vec<u8> {
    let mut b = zeroed();
    let dmrsl =
        c.ns.iter()
            .filter_map(|v| bdevs.info(v.bdev))
            .filter(|i| i.io_types.contains(IoType::Unmap))
            .map(|i| i.max_unmap_blocks)
            .min()
            .unwrap_or(0);
    // VSL, WZSL, WUSL 0 (MDTS / none), DMRL 0 (256 ranges).
    put32(&mut b, 4, dmrsl);
    b
}
