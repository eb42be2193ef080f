//! The target as a whole: the configuration plus what is live. Controllers
//! span TCP connections (an admin queue and its I/O queues), so their state
//! lives here; connections take the target by `&mut` one at a time.

use crate::config::Config;
use crate::ctrl::{self, Controller, ErrorEntry};
use crate::spec::Status;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use ironbay_bdev::{Registry, Uuid};

/// One live queue pair, as `nvmf_subsystem_get_qpairs` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QpairInfo {
    /// Engine-wide queue pair number.
    pub id: u32,
    pub cntlid: u16,
    pub qid: u16,
    pub subnqn: String,
    pub hostnqn: String,
    /// `ip:port` of the host and of our end.
    pub peer: String,
    pub local: String,
}

/// One live controller, as `nvmf_subsystem_get_controllers` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CtrlInfo {
    pub cntlid: u16,
    pub subnqn: String,
    pub hostnqn: String,
    /// The 128-bit host identifier in UUID form.
    pub hostid: String,
    pub num_io_qpairs: u32,
    /// A discovery controller (no I/O queues).
    pub discovery: bool,
    /// Still usable (not failed by keep-alive expiry or a config change).
    pub alive: bool,
    pub read_cmds: u64,
    pub write_cmds: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
}

/// Counters for `nvmf_get_stats`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Queue pairs ever connected.
    pub admin_qpairs: u64,
    pub io_qpairs: u64,
    pub current_admin_qpairs: u64,
    pub current_io_qpairs: u64,
    /// Block I/O at the devices; the target does not see it, so the caller
    /// fills it in (from the registry) if it wants it.
    pub pending_bdev_io: u64,
    pub controllers: u64,
    /// Successful I/O of all controllers, past and present.
    pub read_cmds: u64,
    pub write_cmds: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
}

/// Successful I/O of one controller.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct IoCounters {
    pub read_cmds: u64,
    pub write_cmds: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
}

impl IoCounters {
    fn add(&mut self, o: &IoCounters) {
        self.read_cmds = self.read_cmds.saturating_add(o.read_cmds);
        self.write_cmds = self.write_cmds.saturating_add(o.write_cmds);
        self.bytes_read = self.bytes_read.saturating_add(o.bytes_read);
        self.bytes_written = self.bytes_written.saturating_add(o.bytes_written);
    }
}

#[derive(Debug)]
pub struct Target {
    pub config: Config,
    pub(crate) ctrls: Vec<Controller>,
    qpairs: Vec<QpairInfo>,
    next_qpair: u32,
    /// Where the search for a free controller ID starts, so IDs are not
    /// reused right away.
    pub(crate) next_cntlid: u16,
    events_seq: u64,
    admin_qpairs: u64,
    io_qpairs: u64,
    /// I/O of controllers that are gone.
    retired: IoCounters,
}

impl Default for Target {
    fn default() -> Self {
        Target::new(Config::default())
    }
}

impl Target {
    pub fn new(config: Config) -> Self {
        Target {
            config,
            ctrls: Vec::new(),
            qpairs: Vec::new(),
            next_qpair: 1,
            next_cntlid: 1,
            events_seq: 0,
            admin_qpairs: 0,
            io_qpairs: 0,
            retired: IoCounters::default(),
        }
    }

    /// Bumped whenever a controller gets an event to deliver or fails, so
    /// the driver knows to run every connection's `handle_timeout`.
    pub fn events_seq(&self) -> u64 {
        self.events_seq
    }

    pub(crate) fn bump(&mut self) {
        self.events_seq = self.events_seq.wrapping_add(1);
    }

    /// Applies configuration changes to live controllers: namespace
    /// changes become changed-namespace log entries and events, discovery
    /// log changes become events, and controllers whose subsystem is gone
    /// (or which may no longer reach it) fail.
    pub fn refresh(&mut self, bdevs: &Registry) {
        if ctrl::refresh(self, bdevs) {
            self.bump();
        }
    }

    /// Live queue pairs.
    pub fn qpairs(&self) -> &[QpairInfo] {
        &self.qpairs
    }

    pub fn controllers(&self) -> Vec<CtrlInfo> {
        self.ctrls
            .iter()
            .map(|c| CtrlInfo {
                cntlid: c.cntlid,
                subnqn: c.subnqn.clone(),
                hostnqn: c.hostnqn.clone(),
                hostid: Uuid(c.hostid).to_string(),
                num_io_qpairs: c.io_queues.len() as u32,
                discovery: c.discovery,
                alive: !c.failed,
                read_cmds: c.io.read_cmds,
                write_cmds: c.io.write_cmds,
                bytes_read: c.io.bytes_read,
                bytes_written: c.io.bytes_written,
            })
            .collect()
    }

    pub fn stats(&self) -> Stats {
        let mut io = self.retired;
        for c in &self.ctrls {
            io.add(&c.io);
        }
        let admin = self.qpairs.iter().filter(|q| q.qid == 0).count() as u64;
        Stats {
            admin_qpairs: self.admin_qpairs,
            io_qpairs: self.io_qpairs,
            current_admin_qpairs: admin,
            current_io_qpairs: self.qpairs.len() as u64 - admin,
            pending_bdev_io: 0,
            controllers: self.ctrls.len() as u64,
            read_cmds: io.read_cmds,
            write_cmds: io.write_cmds,
            bytes_read: io.bytes_read,
            bytes_written: io.bytes_written,
        }
    }

    /// A successful I/O command (SMART data units and command counts).
    pub fn note_io(&mut self, cntlid: u16, write: bool, bytes: u64) {
        let Some(c) = self.ctrl_mut(cntlid) else {
            return;
        };
        if write {
            c.io.write_cmds = c.io.write_cmds.saturating_add(1);
            c.io.bytes_written = c.io.bytes_written.saturating_add(bytes);
        } else {
            c.io.read_cmds = c.io.read_cmds.saturating_add(1);
            c.io.bytes_read = c.io.bytes_read.saturating_add(bytes);
        }
    }

    /// Records a failed command in the controller's error log.
    pub fn log_error(
        &mut self,
        cntlid: u16,
        sqid: u16,
        cid: u16,
        status: Status,
        nsid: u32,
        lba: u64,
    ) {
        if let Some(c) = self.ctrl_mut(cntlid) {
            c.log_error(ErrorEntry {
                count: 0,
                sqid,
                cid,
                status,
                nsid,
                lba,
            });
        }
    }

    pub(crate) fn ctrl(&self, cntlid: u16) -> Option<&Controller> {
        self.ctrls.iter().find(|c| c.cntlid == cntlid)
    }

    pub(crate) fn ctrl_mut(&mut self, cntlid: u16) -> Option<&mut Controller> {
        self.ctrls.iter_mut().find(|c| c.cntlid == cntlid)
    }

    /// Registers a queue pair and gives it its number.
    pub(crate) fn add_qpair(&mut self, mut info: QpairInfo) -> u32 {
        let mut id = self.next_qpair;
        while id == 0 || self.qpairs.iter().any(|q| q.id == id) {
            id = id.wrapping_add(1);
        }
        self.next_qpair = id.wrapping_add(1);
        info.id = id;
        if info.qid == 0 {
            self.admin_qpairs = self.admin_qpairs.saturating_add(1);
        } else {
            self.io_qpairs = self.io_qpairs.saturating_add(1);
        }
        self.qpairs.push(info);
        id
    }

    pub(crate) fn remove_qpair(&mut self, id: u32) {
        self.qpairs.retain(|q| q.id != id);
    }

    /// Drops a controller (its admin queue is gone).
    pub(crate) fn remove_ctrl(&mut self, cntlid: u16) {
        if let Some(i) = self.ctrls.iter().position(|c| c.cntlid == cntlid) {
            let c = self.ctrls.swap_remove(i);
            self.retired.add(&c.io);
            self.bump();
        }
    }
}
