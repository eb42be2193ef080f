//! The target as a whole: the configuration plus what is live. Controllers
//! span TCP connections (an admin queue and its I/O queues), so their state
//! lives here; connections take the target by `&mut` one at a time.

use crate::config::Config;
use alloc::string::String;
use alloc::vec::Vec;
use ironbay_bdev::Registry;

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

#[derive(Debug)]
pub struct Target {
    pub config: Config,
}

impl Target {
    pub fn new(config: Config) -> Self {
        let _ = config;
        todo!()
    }

    /// Bumped whenever a controller gets an event to deliver or fails, so
    /// the driver knows to run every connection's `handle_timeout`.
    pub fn events_seq(&self) -> u64 {
        todo!()
    }

    /// Applies configuration changes to live controllers.
    pub fn refresh(&mut self, bdevs: &Registry) {
        let _ = bdevs;
        todo!()
    }

    pub fn qpairs(&self) -> &[QpairInfo] {
        todo!()
    }
}
