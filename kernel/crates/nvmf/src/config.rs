//! The NVMe-oF part of the object model: the TCP transport's options and
//! the subsystems with their namespaces, allowed hosts and listeners.
//!
//! Management front ends change it through the operations in this module
//! (each checks everything before it changes anything, and bumps
//! [`Config::generation`]); the engine only reads it. After a change the
//! caller runs [`crate::Target::refresh`] so live controllers see it
//! (namespace-changed events, hosts no longer allowed, deleted subsystems).

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use ironbay_bdev::Uuid;

use crate::spec::DISCOVERY_NQN;

/// Why an operation was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// The request is wrong: a bad value, an unknown NQN or namespace.
    Invalid(String),
    /// The request is fine but cannot be done now: a limit is reached, the
    /// object exists already or is in use.
    Busy(String),
}

impl ConfigError {
    pub fn message(&self) -> &str {
        match self {
            ConfigError::Invalid(m) | ConfigError::Busy(m) => m,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

/// Options of the TCP transport (`nvmf_create_transport -t TCP`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransportOptions {
    /// Largest I/O queue (CAP.MQES + 1).
    pub max_queue_depth: u16,
    /// Largest admin queue.
    pub max_aq_depth: u16,
    /// I/O queue pairs one controller may have.
    pub max_io_qpairs_per_ctrlr: u16,
    /// In-capsule data on I/O queues, bytes (IOCCSZ = 4 + this / 16). The
    /// admin queue always takes 8 KiB.
    pub in_capsule_data_size: u32,
    /// Largest data transfer of one command, bytes (sets MDTS).
    pub max_io_size: u32,
    /// Largest H2CData PDU payload we accept (MAXH2CDATA), bytes.
    pub io_unit_size: u32,
    /// Send C2HData with the SUCCESS flag and no response capsule, where
    /// the host disabled SQ flow control.
    pub c2h_success: bool,
    /// Whether header / data digests are granted when a host asks.
    pub header_digest: bool,
    pub data_digest: bool,
    /// Seconds a command may wait for its data before the queue is failed.
    pub abort_timeout_sec: u32,
}

impl Default for TransportOptions {
    fn default() -> Self {
        TransportOptions {
            max_queue_depth: 128,
            max_aq_depth: 128,
            max_io_qpairs_per_ctrlr: 127,
            in_capsule_data_size: 4096,
            max_io_size: 131072,
            io_unit_size: 131072,
            c2h_success: true,
            header_digest: true,
            data_digest: true,
            abort_timeout_sec: 1,
        }
    }
}

/// Transport types a listener can name; only TCP is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trtype {
    Tcp,
}

impl Trtype {
    pub fn name(self) -> &'static str {
        match self {
            Trtype::Tcp => "TCP",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Adrfam {
    Ipv4,
    Ipv6,
}

impl Adrfam {
    pub fn name(self) -> &'static str {
        match self {
            Adrfam::Ipv4 => "IPv4",
            Adrfam::Ipv6 => "IPv6",
        }
    }
}

/// A listen address. `traddr` may be the wildcard `0.0.0.0` / `::`: the
/// discovery log then reports the address the host reached us on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    pub trtype: Trtype,
    pub adrfam: Adrfam,
    pub traddr: String,
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    pub nsid: u32,
    pub bdev_name: String,
    /// Identifiers; absent ones are derived from the bdev's UUID.
    pub nguid: Option<[u8; 16]>,
    pub eui64: Option<[u8; 8]>,
    pub uuid: Option<Uuid>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subsystem {
    pub nqn: String,
    /// Identify Controller SN (20 ASCII) and MN (40 ASCII).
    pub serial_number: String,
    pub model_number: String,
    pub allow_any_host: bool,
    pub hosts: Vec<String>,
    /// Sorted by nsid.
    pub namespaces: Vec<Namespace>,
    pub listeners: Vec<Listener>,
    /// 0 = unlimited (up to [`MAX_NAMESPACES`]).
    pub max_namespaces: u32,
    /// Controller IDs handed out, inclusive.
    pub min_cntlid: u16,
    pub max_cntlid: u16,
}

impl Subsystem {
    pub fn host_allowed(&self, hostnqn: &str) -> bool {
        self.allow_any_host || self.hosts.iter().any(|h| h == hostnqn)
    }

    pub fn namespace(&self, nsid: u32) -> Option<&Namespace> {
        self.namespaces.iter().find(|n| n.nsid == nsid)
    }

    /// Whether a connection that arrived on local `port` may reach this
    /// subsystem (it has a listener there).
    pub fn listens_on(&self, port: u16) -> bool {
        self.listeners.iter().any(|l| l.port == port)
    }
}

/// Caps on what management can create.
pub const MAX_SUBSYSTEMS: usize = 1024;
pub const MAX_NAMESPACES: u32 = 1024;
pub const MAX_HOSTS: usize = 1024;
pub const MAX_LISTENERS: usize = 64;

#[derive(Clone, Debug, Default)]
pub struct Config {
    /// `None` until a TCP transport is created; connections are refused
    /// without one.
    pub transport: Option<TransportOptions>,
    pub subsystems: Vec<Subsystem>,
    /// `nvmf_set_config` / `set_nvmf_target_options`: subsystem limit (0 =
    /// [`MAX_SUBSYSTEMS`]) and how often the acceptor polls (reported only).
    pub max_subsystems: u32,
    pub acceptor_poll_rate: u32,
    /// Bumped by every change.
    pub generation: u64,
}

impl Config {
    pub fn subsystem(&self, nqn: &str) -> Option<&Subsystem> {
        self.subsystems.iter().find(|s| s.nqn == nqn)
    }

    pub fn is_discovery(nqn: &str) -> bool {
        nqn == DISCOVERY_NQN
    }

    /// Every TCP port some subsystem listens on, plus 4420 and 8009 (the
    /// discovery service answers on both), sorted, without repeats.
    pub fn ports(&self) -> Vec<u16> {
        let mut v: Vec<u16> = self
            .subsystems
            .iter()
            .flat_map(|s| s.listeners.iter().map(|l| l.port))
            .chain([crate::spec::PORT_NVME, crate::spec::PORT_DISCOVERY])
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}
