//! Controller bring-up, admin commands and the I/O path.
//!
//! `Controller::init` runs the start-up sequence with every wait bounded by
//! CAP.TO or the admin timeout. After that the controller is driven by
//! [`Controller::submit`] and [`Controller::poll`]; completions are sorted into
//! per-owner event queues (one owner per namespace bdev) because namespaces
//! share I/O queues. A command that outlives the I/O timeout is reported as
//! timed out but its slot stays reserved until the device answers or the
//! controller is stopped. Controller Fatal Status stops the controller and
//! fails everything outstanding.

use crate::hal::{DmaRegion, NvmeHal};
use crate::prp::{self, Prp2};
use crate::queue::{PAGE, QueuePair, Slot};
use crate::spec::{
    self, Cap, Command, Completion, ControllerIdentity, NamespaceIdentity, admin, io, reg,
};
use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub io_queues: u16,
    pub io_depth: u16,
    pub admin_timeout_us: u64,
    pub io_timeout_us: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            io_queues: 2,
            io_depth: 256,
            admin_timeout_us: 10_000_000,
            io_timeout_us: 30_000_000,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NvmeError {
    /// The named step did not finish in time.
    Timeout(&'static str),
    /// Controller Fatal Status was set.
    Fatal,
    /// An admin command failed with this status.
    Command {
        what: &'static str,
        status: u16,
    },
    NoMemory,
    Unsupported(String),
}

impl fmt::Display for NvmeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NvmeError::Timeout(w) => write!(f, "timed out waiting for {w}"),
            NvmeError::Fatal => write!(f, "controller fatal status"),
            NvmeError::Command { what, status } => {
                write!(f, "{what} failed with status {status:#x}")
            }
            NvmeError::NoMemory => write!(f, "out of DMA memory"),
            NvmeError::Unsupported(w) => write!(f, "unsupported: {w}"),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Namespace {
    pub nsid: u32,
    pub identity: NamespaceIdentity,
    /// From the descriptor list, else NGUID, else EUI-64; all zero if none.
    pub uuid: [u8; 16],
}

/// Something that happened to an owner's command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// Finished with this status (0 = success).
    Done { tag: u64, status: u16 },
    /// Outlived the I/O timeout; the device may still use its buffer.
    TimedOut { tag: u64 },
    /// A timed-out command finally completed (or the controller stopped): its
    /// buffer is free again.
    Released { tag: u64 },
    /// The controller failed and was stopped before the command finished.
    Failed { tag: u64 },
}

/// One I/O command for [`Controller::submit`]. Buffers are given by bus address.
#[derive(Clone, Copy, Debug)]
pub enum IoCmd {
    Read {
        nsid: u32,
        lba: u64,
        blocks: u32,
        phys: u64,
        len: usize,
        fua: bool,
    },
    Write {
        nsid: u32,
        lba: u64,
        blocks: u32,
        phys: u64,
        len: usize,
        fua: bool,
    },
    Flush {
        nsid: u32,
    },
    WriteZeroes {
        nsid: u32,
        lba: u64,
        blocks: u32,
    },
    Deallocate {
        nsid: u32,
        lba: u64,
        blocks: u32,
    },
}

#[derive(Debug, PartialEq, Eq)]
pub struct QueueFull;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Running,
    Failed,
}

pub struct Controller<H: NvmeHal> {
    hal: H,
    cap: Cap,
    pub version: u32,
    pub identity: ControllerIdentity,
    pub namespaces: Vec<Namespace>,
    /// Things worth telling the operator (skipped namespaces, fallbacks).
    pub notes: Vec<String>,
    admin: QueuePair<H::Dma>,
    io: Vec<QueuePair<H::Dma>>,
    events: Vec<VecDeque<Event>>,
    state: State,
    opts: Options,
    next_check_us: u64,
    /// Reused between polls so the I/O path does not allocate.
    scratch: Vec<(u32, Event)>,
}

/// How often outstanding commands are checked against their deadlines.
const CHECK_INTERVAL_US: u64 = 100_000;
const ADMIN_DEPTH: u16 = 32;
const MAX_NAMESPACES: u32 = 1024;

impl<H: NvmeHal> Controller<H> {
    pub fn init(hal: H, opts: Options) -> Result<Self, NvmeError> {
        let cap = Cap(hal.read64(reg::CAP));
        let version = hal.read32(reg::VS);
        if !cap.nvm_command_set() {
            return Err(NvmeError::Unsupported(
                "controller without the NVM command set".into(),
            ));
        }
        if cap.min_page_shift() > 12 || cap.max_page_shift() < 12 {
            return Err(NvmeError::Unsupported("4 KiB memory pages".into()));
        }
        Self::disable(&hal, cap)?;

        let admin_depth = ADMIN_DEPTH.min(cap.max_queue_entries() as u16);
        let admin = QueuePair::new(&hal, 0, admin_depth).ok_or(NvmeError::NoMemory)?;
        let a = admin_depth as u32 - 1;
        hal.write32(reg::AQA, a << 16 | a);
        hal.write64(reg::ASQ, admin.sq_phys());
        hal.write64(reg::ACQ, admin.cq_phys());
        // NVM command set, 4 KiB pages, round robin, 64-byte SQ and 16-byte CQ entries.
        hal.write32(reg::CC, reg::CC_EN | 6 << 16 | 4 << 20);
        Self::wait_ready(&hal, cap, true)?;

        let mut c = Controller {
            hal,
            cap,
            version,
            identity: ControllerIdentity::default(),
            namespaces: Vec::new(),
            notes: Vec::new(),
            admin,
            io: Vec::new(),
            events: Vec::new(),
            state: State::Running,
            opts,
            next_check_us: 0,
            scratch: Vec::new(),
        };
        let mut page = c.hal.dma_alloc(PAGE).ok_or(NvmeError::NoMemory)?;
        let mut data = [0u8; PAGE];

        c.identify(&mut page, admin::CNS_CONTROLLER, 0, "identify controller")?;
        page.read(0, &mut data);
        c.identity = ControllerIdentity::parse(&data);

        let want = opts.io_queues.max(1);
        let cmd = Command {
            opcode: admin::SET_FEATURES,
            cdw10: admin::FEAT_NUM_QUEUES,
            cdw11: (want as u32 - 1) | (want as u32 - 1) << 16,
            ..Default::default()
        };
        let granted = match c.admin_sync(cmd, "set number of queues") {
            Ok(cqe) => ((cqe.result & 0xFFFF) + 1)
                .min((cqe.result >> 16) + 1)
                .min(want as u32) as u16,
            Err(NvmeError::Command { .. }) => 1,
            Err(e) => return Err(e),
        };
        let depth = opts
            .io_depth
            .clamp(2, cap.max_queue_entries().min(4096) as u16);
        for qid in 1..=granted {
            c.create_io_queue(qid, depth)?;
        }

        c.discover_namespaces(&mut page, &mut data)?;
        Ok(c)
    }

    fn disable(hal: &H, cap: Cap) -> Result<(), NvmeError> {
        let cc = hal.read32(reg::CC);
        if cc & reg::CC_EN != 0 {
            hal.write32(reg::CC, cc & !reg::CC_EN);
        }
        Self::wait_ready(hal, cap, false)
    }

    fn wait_ready(hal: &H, cap: Cap, ready: bool) -> Result<(), NvmeError> {
        let deadline = hal.now_us() + cap.timeout_us();
        loop {
            let csts = hal.read32(reg::CSTS);
            if ready && csts & reg::CSTS_CFS != 0 {
                return Err(NvmeError::Fatal);
            }
            // All ones: the device is gone (surprise removal, bad BAR).
            if csts != u32::MAX && (csts & reg::CSTS_RDY != 0) == ready {
                return Ok(());
            }
            if hal.now_us() > deadline {
                return Err(NvmeError::Timeout(if ready {
                    "controller ready"
                } else {
                    "controller disable"
                }));
            }
            core::hint::spin_loop();
        }
    }

    /// Runs one admin command to completion.
    fn admin_sync(
        &mut self,
        mut cmd: Command,
        what: &'static str,
    ) -> Result<Completion, NvmeError> {
        let cid = self.admin.alloc().ok_or(NvmeError::Timeout(what))?;
        let deadline = self.hal.now_us() + self.opts.admin_timeout_us;
        cmd.cid = cid;
        self.admin.set_slot(
            cid,
            Slot::Busy {
                owner: u32::MAX,
                tag: cid as u64,
                deadline_us: deadline,
            },
        );
        self.admin.push(&self.hal, self.cap, &cmd);
        loop {
            let mut done = None;
            self.admin.reap(&self.hal, self.cap, |slot, cqe| {
                if let Slot::Busy { tag, .. } = slot
                    && tag == cid as u64
                {
                    done = Some(*cqe);
                }
            });
            if let Some(cqe) = done {
                return match cqe.status_code() {
                    0 => Ok(cqe),
                    status => Err(NvmeError::Command { what, status }),
                };
            }
            if self.hal.read32(reg::CSTS) & reg::CSTS_CFS != 0 {
                return Err(NvmeError::Fatal);
            }
            if self.hal.now_us() > deadline {
                self.admin.set_slot(
                    cid,
                    Slot::Abandoned {
                        owner: u32::MAX,
                        tag: cid as u64,
                    },
                );
                return Err(NvmeError::Timeout(what));
            }
            core::hint::spin_loop();
        }
    }

    fn identify(
        &mut self,
        page: &mut H::Dma,
        cns: u32,
        nsid: u32,
        what: &'static str,
    ) -> Result<(), NvmeError> {
        page.write(0, &[0u8; PAGE]);
        let cmd = Command {
            opcode: admin::IDENTIFY,
            nsid,
            prp1: page.phys(),
            cdw10: cns,
            ..Default::default()
        };
        self.admin_sync(cmd, what).map(drop)
    }

    fn create_io_queue(&mut self, qid: u16, depth: u16) -> Result<(), NvmeError> {
        let q = QueuePair::new(&self.hal, qid, depth).ok_or(NvmeError::NoMemory)?;
        let size = (depth as u32 - 1) << 16 | qid as u32;
        let cq = Command {
            opcode: admin::CREATE_CQ,
            prp1: q.cq_phys(),
            cdw10: size,
            cdw11: 1,
            ..Default::default()
        };
        self.admin_sync(cq, "create I/O completion queue")?;
        // Completion queue qid, physically contiguous.
        let sq = Command {
            opcode: admin::CREATE_SQ,
            prp1: q.sq_phys(),
            cdw10: size,
            cdw11: (qid as u32) << 16 | 1,
            ..Default::default()
        };
        self.admin_sync(sq, "create I/O submission queue")?;
        self.io.push(q);
        Ok(())
    }

    fn discover_namespaces(
        &mut self,
        page: &mut H::Dma,
        data: &mut [u8; PAGE],
    ) -> Result<(), NvmeError> {
        let mut nsids = Vec::new();
        match self.identify(
            page,
            admin::CNS_ACTIVE_NAMESPACES,
            0,
            "active namespace list",
        ) {
            Ok(()) => {
                page.read(0, data);
                for c in data.chunks_exact(4) {
                    match u32::from_le_bytes([c[0], c[1], c[2], c[3]]) {
                        0 => break,
                        id => nsids.push(id),
                    }
                }
            }
            Err(NvmeError::Command { .. }) => {
                self.notes
                    .push("no active namespace list (NVMe < 1.1): probing every namespace".into());
                nsids.extend(1..=self.identity.namespaces.min(MAX_NAMESPACES));
            }
            Err(e) => return Err(e),
        }
        for nsid in nsids {
            self.identify(page, admin::CNS_NAMESPACE, nsid, "identify namespace")?;
            page.read(0, data);
            let identity = NamespaceIdentity::parse(data);
            if identity.size_blocks == 0 {
                continue; // inactive
            }
            if identity.block_size == 0 || identity.metadata != 0 {
                self.notes.push(format!(
                    "namespace {nsid} skipped: format with {} metadata bytes or bad block size",
                    identity.metadata
                ));
                continue;
            }
            let mut uuid = [0u8; 16];
            if self
                .identify(
                    page,
                    admin::CNS_NS_DESCRIPTORS,
                    nsid,
                    "namespace descriptors",
                )
                .is_ok()
            {
                page.read(0, data);
                uuid = spec::descriptor_uuid(data).unwrap_or_default();
            }
            if uuid == [0; 16] {
                uuid = identity.nguid;
            }
            if uuid == [0; 16] && identity.eui64 != [0; 8] {
                uuid[..8].copy_from_slice(&identity.eui64);
            }
            self.namespaces.push(Namespace {
                nsid,
                identity,
                uuid,
            });
        }
        Ok(())
    }

    pub fn io_queues(&self) -> usize {
        self.io.len()
    }

    pub fn io_depth(&self) -> u16 {
        self.io.first().map_or(0, |q| q.depth())
    }

    /// Largest transfer one command moves: MDTS, capped to what one PRP list
    /// page describes.
    pub fn max_transfer(&self) -> u32 {
        let list_limit = 1u64 << 20;
        let mdts = match self.identity.mdts {
            0 => u64::MAX,
            m => (PAGE as u64) << m.min(40),
        };
        mdts.min(list_limit) as u32
    }

    pub fn is_failed(&self) -> bool {
        self.state == State::Failed
    }

    /// A new owner id for routing completions (one per namespace bdev).
    pub fn add_owner(&mut self) -> u32 {
        self.events.push(VecDeque::new());
        (self.events.len() - 1) as u32
    }

    fn event(&mut self, owner: u32, e: Event) {
        if let Some(q) = self.events.get_mut(owner as usize) {
            q.push_back(e);
        }
    }

    /// Queues one I/O command on I/O queue `queue`.
    pub fn submit(
        &mut self,
        queue: usize,
        owner: u32,
        tag: u64,
        cmd: IoCmd,
    ) -> Result<(), QueueFull> {
        if self.state == State::Failed {
            self.event(owner, Event::Failed { tag });
            return Ok(());
        }
        let deadline_us = self.hal.now_us() + self.opts.io_timeout_us;
        let n = self.io.len();
        let q = &mut self.io[queue % n];
        let cid = q.alloc().ok_or(QueueFull)?;
        let mut c = Command {
            cid,
            ..Default::default()
        };
        match cmd {
            IoCmd::Read {
                nsid,
                lba,
                blocks,
                phys,
                len,
                fua,
            }
            | IoCmd::Write {
                nsid,
                lba,
                blocks,
                phys,
                len,
                fua,
            } => {
                c.opcode = if matches!(cmd, IoCmd::Read { .. }) {
                    io::READ
                } else {
                    io::WRITE
                };
                c.nsid = nsid;
                c.prp1 = phys;
                c.prp2 = match prp::plan(phys, len, PAGE as u64) {
                    Prp2::None => 0,
                    Prp2::Page(p) => p,
                    Prp2::List(_) => {
                        let mut chunk = [0u8; 512];
                        let mut off = 0;
                        let mut fill = 0;
                        for entry in prp::entries(phys, len, PAGE as u64) {
                            chunk[fill..fill + 8].copy_from_slice(&entry.to_le_bytes());
                            fill += 8;
                            if fill == chunk.len() {
                                q.write_page(cid, off, &chunk);
                                off += fill;
                                fill = 0;
                            }
                        }
                        q.write_page(cid, off, &chunk[..fill]);
                        q.page_phys(cid)
                    }
                };
                c.cdw10 = lba as u32;
                c.cdw11 = (lba >> 32) as u32;
                c.cdw12 = (blocks - 1) | if fua { io::FUA } else { 0 };
            }
            IoCmd::Flush { nsid } => {
                c.opcode = io::FLUSH;
                c.nsid = nsid;
            }
            IoCmd::WriteZeroes { nsid, lba, blocks } => {
                c.opcode = io::WRITE_ZEROES;
                c.nsid = nsid;
                c.cdw10 = lba as u32;
                c.cdw11 = (lba >> 32) as u32;
                c.cdw12 = blocks - 1;
            }
            IoCmd::Deallocate { nsid, lba, blocks } => {
                // One range: context attributes, length in blocks, starting LBA.
                let mut range = [0u8; 16];
                range[4..8].copy_from_slice(&blocks.to_le_bytes());
                range[8..16].copy_from_slice(&lba.to_le_bytes());
                q.write_page(cid, 0, &range);
                c.opcode = io::DATASET_MANAGEMENT;
                c.nsid = nsid;
                c.prp1 = q.page_phys(cid);
                c.cdw10 = 0;
                c.cdw11 = io::DSM_DEALLOCATE;
            }
        }
        q.set_slot(
            cid,
            Slot::Busy {
                owner,
                tag,
                deadline_us,
            },
        );
        q.push(&self.hal, self.cap, &c);
        Ok(())
    }

    /// Reaps every I/O queue, enforces timeouts and watches for controller
    /// failure. Events wait in each owner's queue for [`take_events`](Self::take_events).
    pub fn poll(&mut self) -> usize {
        if self.state == State::Failed {
            return 0;
        }
        let mut reaped = 0;
        let mut found = core::mem::take(&mut self.scratch);
        for q in &mut self.io {
            reaped += q.reap(&self.hal, self.cap, |slot, cqe| match slot {
                Slot::Busy { owner, tag, .. } => found.push((
                    owner,
                    Event::Done {
                        tag,
                        status: cqe.status_code(),
                    },
                )),
                Slot::Abandoned { owner, tag } => found.push((owner, Event::Released { tag })),
                Slot::Free => {}
            });
        }
        for (owner, e) in found.drain(..) {
            self.event(owner, e);
        }
        self.scratch = found;
        let now = self.hal.now_us();
        if now >= self.next_check_us {
            self.next_check_us = now + CHECK_INTERVAL_US;
            self.check_deadlines(now);
        }
        reaped
    }

    fn check_deadlines(&mut self, now: u64) {
        let mut expired: Vec<(u32, u64)> = Vec::new();
        let mut outstanding = 0;
        for q in &mut self.io {
            outstanding += q.outstanding();
            let late: Vec<(u16, u32, u64)> = q
                .slots()
                .filter_map(|(cid, s)| match s {
                    Slot::Busy {
                        owner,
                        tag,
                        deadline_us,
                    } if deadline_us <= now => Some((cid, owner, tag)),
                    _ => None,
                })
                .collect();
            for (cid, owner, tag) in late {
                q.set_slot(cid, Slot::Abandoned { owner, tag });
                expired.push((owner, tag));
            }
        }
        if !expired.is_empty() {
            log::warn!(
                "NVMe {}: {} command(s) got no answer in {} ms; their buffers stay reserved",
                self.identity.serial,
                expired.len(),
                self.opts.io_timeout_us / 1000
            );
        }
        for (owner, tag) in &expired {
            self.event(*owner, Event::TimedOut { tag: *tag });
        }
        if outstanding > 0 && self.hal.read32(reg::CSTS) & reg::CSTS_CFS != 0 {
            self.fail();
        }
    }

    /// Stops a failed controller and fails everything outstanding. Once the
    /// controller is disabled it no longer touches host memory, so buffers of
    /// timed-out commands are released too.
    fn fail(&mut self) {
        log::error!(
            "NVMe {}: controller fatal status; stopping it and failing its I/O",
            self.identity.serial
        );
        self.state = State::Failed;
        let _ = Self::disable(&self.hal, self.cap);
        let mut found: Vec<(u32, Event)> = Vec::new();
        for q in &mut self.io {
            let slots: Vec<(u16, Slot)> = q.slots().collect();
            for (cid, s) in slots {
                match s {
                    Slot::Busy { owner, tag, .. } => found.push((owner, Event::Failed { tag })),
                    Slot::Abandoned { owner, tag } => found.push((owner, Event::Released { tag })),
                    Slot::Free => continue,
                }
                q.release(cid);
            }
        }
        for (owner, e) in found {
            self.event(owner, e);
        }
    }

    pub fn take_events(&mut self, owner: u32, out: &mut Vec<Event>) {
        if let Some(q) = self.events.get_mut(owner as usize) {
            out.extend(q.drain(..));
        }
    }

    pub fn hal(&self) -> &H {
        &self.hal
    }
}
