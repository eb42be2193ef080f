//! The NVMe-oF part of the object model: the TCP transport's options and
//! the subsystems with their namespaces, allowed hosts and listeners.
//!
//! Management front ends change it through the operations in this module
//! (each checks everything before it changes anything, and bumps
//! [`Config::generation`]); the engine only reads it. After a change the
//! caller runs [`crate::Target::refresh`] so live controllers see it
//! (namespace-changed events, hosts no longer allowed, deleted subsystems).

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use core::net::IpAddr;
use ironbay_bdev::{Registry, Uuid};

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
    /// Seconds a command may wait for its data before the queue is failed
    /// (at least 10, whatever is set).
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
    /// Listeners given to the discovery subsystem: ports it answers on
    /// besides 4420 and 8009.
    pub discovery_listeners: Vec<Listener>,
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
            .chain(self.discovery_listeners.iter().map(|l| l.port))
            .chain([crate::spec::PORT_NVME, crate::spec::PORT_DISCOVERY])
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

type Result<T> = core::result::Result<T, ConfigError>;

fn invalid<T>(message: impl Into<String>) -> Result<T> {
    Err(ConfigError::Invalid(message.into()))
}

fn busy<T>(message: impl Into<String>) -> Result<T> {
    Err(ConfigError::Busy(message.into()))
}

/// Serial number a subsystem gets when none is given (SPDK's).
pub const DEFAULT_SERIAL: &str = "00000000000000000000";
pub const DEFAULT_MODEL: &str = "ironbay Controller";
/// Controller IDs above 0xffef are reserved (NVMe base 2.0, 5.15.2.1).
pub const MAX_CNTLID: u16 = 0xffef;
/// Ranges of the transport options. Queues and transfers are bounded so a
/// connection's memory stays bounded whatever the options say.
pub const MAX_QUEUE_DEPTH: u16 = 1024;
pub const MAX_IO_QPAIRS: u16 = 1024;
pub const MAX_IN_CAPSULE: u32 = 128 * 1024;
pub const MAX_IO_SIZE: u32 = 8 << 20;
pub const MIN_IO_SIZE: u32 = 4096;
/// Smallest `max_io_size`: MDTS counts 4 KiB pages as a power of two and 0
/// means "no limit", so one page cannot be expressed.
pub const MIN_MAX_IO_SIZE: u32 = 8192;
pub const MAX_ABORT_TIMEOUT: u32 = 3600;
const UUID_NQN_PREFIX: &str = "nqn.2014-08.org.nvmexpress:uuid:";
const MAX_SERIAL: usize = 20;
const MAX_MODEL: usize = 40;

impl TransportOptions {
    /// The ranges the engine can serve.
    pub fn check(&self) -> Result<()> {
        for (key, v, min, max) in [
            ("max_queue_depth", self.max_queue_depth, 2, MAX_QUEUE_DEPTH),
            ("max_aq_depth", self.max_aq_depth, 2, MAX_QUEUE_DEPTH),
            (
                "max_io_qpairs_per_ctrlr",
                self.max_io_qpairs_per_ctrlr,
                1,
                MAX_IO_QPAIRS,
            ),
        ] {
            if !(min..=max).contains(&v) {
                return invalid(format!("`{key}` {v} must be from {min} to {max}"));
            }
        }
        let icd = self.in_capsule_data_size;
        if icd > MAX_IN_CAPSULE || !icd.is_multiple_of(16) {
            return invalid(format!(
                "`in_capsule_data_size` {icd} must be a multiple of 16 up to {MAX_IN_CAPSULE}"
            ));
        }
        let io = self.max_io_size;
        if !(MIN_MAX_IO_SIZE..=MAX_IO_SIZE).contains(&io) || !io.is_power_of_two() {
            return invalid(format!(
                "`max_io_size` {io} must be a power of two from {MIN_MAX_IO_SIZE} to {MAX_IO_SIZE}"
            ));
        }
        let unit = self.io_unit_size;
        if !(MIN_IO_SIZE..=MAX_IO_SIZE).contains(&unit) || !unit.is_multiple_of(4) {
            return invalid(format!(
                "`io_unit_size` {unit} must be a multiple of 4 from {MIN_IO_SIZE} to {MAX_IO_SIZE}"
            ));
        }
        if self.abort_timeout_sec > MAX_ABORT_TIMEOUT {
            return invalid(format!(
                "`abort_timeout_sec` must be at most {MAX_ABORT_TIMEOUT}"
            ));
        }
        Ok(())
    }
}

impl Trtype {
    /// `TCP` in any case; other NVMe-oF transports are named but refused.
    pub fn parse(s: &str) -> Result<Trtype> {
        if s.eq_ignore_ascii_case("tcp") {
            return Ok(Trtype::Tcp);
        }
        let known = ["rdma", "pcie", "fc", "vfiouser", "custom"];
        if known.iter().any(|k| s.eq_ignore_ascii_case(k)) {
            return invalid(format!(
                "transport type {s} not supported: only TCP is served"
            ));
        }
        invalid(format!("unknown transport type {s}"))
    }
}

impl Adrfam {
    /// `IPv4` / `IPv6` in any case; the others exist only for other
    /// transports.
    pub fn parse(s: &str) -> Result<Adrfam> {
        if s.eq_ignore_ascii_case("ipv4") {
            Ok(Adrfam::Ipv4)
        } else if s.eq_ignore_ascii_case("ipv6") {
            Ok(Adrfam::Ipv6)
        } else if ["ib", "fc", "intra_host"]
            .iter()
            .any(|k| s.eq_ignore_ascii_case(k))
        {
            invalid(format!(
                "address family {s} not supported: TCP takes IPv4 or IPv6"
            ))
        } else {
            invalid(format!("unknown address family {s}"))
        }
    }
}

impl Listener {
    /// A TCP listener on `traddr:port`, the address in canonical form
    /// (IPv6 without brackets). `adrfam` `None` follows the address; a
    /// given one must match it.
    pub fn new(adrfam: Option<Adrfam>, traddr: &str, port: u16) -> Result<Listener> {
        let bare = traddr
            .strip_prefix('[')
            .and_then(|a| a.strip_suffix(']'))
            .unwrap_or(traddr);
        let Ok(addr) = bare.parse::<IpAddr>() else {
            return invalid(format!("`traddr` {traddr} is not an IP address"));
        };
        let family = match addr {
            IpAddr::V4(_) => Adrfam::Ipv4,
            IpAddr::V6(_) => Adrfam::Ipv6,
        };
        if adrfam.is_some_and(|a| a != family) {
            return invalid(format!(
                "`traddr` {traddr} is not an {} address",
                adrfam.map_or("", Adrfam::name)
            ));
        }
        if port == 0 {
            return invalid("`trsvcid` must be a port number, 1-65535");
        }
        Ok(Listener {
            trtype: Trtype::Tcp,
            adrfam: family,
            traddr: addr.to_string(),
            port,
        })
    }

    /// The address, `None` for a wildcard.
    pub fn addr(&self) -> Option<IpAddr> {
        self.traddr
            .parse::<IpAddr>()
            .ok()
            .filter(|a| !a.is_unspecified())
    }

    fn same_endpoint(&self, other: &Listener) -> bool {
        self.port == other.port
            && self.traddr.parse::<IpAddr>().ok() == other.traddr.parse::<IpAddr>().ok()
    }
}

/// An NQN (NVMe base 2.0, 4.5): at most 223 bytes of UTF-8, either
/// `nqn.2014-08.org.nvmexpress:uuid:` and a UUID, or `nqn.yyyy-mm.` and a
/// reversed domain name, optionally `:` and anything.
pub fn check_nqn(nqn: &str) -> Result<()> {
    if nqn.len() > crate::spec::MAX_NQN {
        return invalid(format!(
            "NQN {nqn} is longer than {} bytes",
            crate::spec::MAX_NQN
        ));
    }
    if nqn.chars().any(char::is_control) {
        return invalid("NQNs may not hold control characters");
    }
    if let Some(uuid) = nqn.strip_prefix(UUID_NQN_PREFIX) {
        if uuid.len() != 36 || Uuid::parse(uuid).is_none() {
            return invalid(format!("NQN {nqn}: expected a UUID after `uuid:`"));
        }
        return Ok(());
    }
    let b = nqn.as_bytes();
    let digit = |i: usize| b.get(i).is_some_and(u8::is_ascii_digit);
    let date = nqn.starts_with("nqn.")
        && (4..8).all(digit)
        && b.get(8) == Some(&b'-')
        && (9..11).all(digit)
        && b.get(11) == Some(&b'.')
        && matches!(
            nqn.get(9..11),
            Some("01" | "02" | "03" | "04" | "05" | "06" | "07" | "08" | "09" | "10" | "11" | "12")
        );
    if !date {
        return invalid(format!(
            "NQN {nqn}: expected nqn.yyyy-mm.reversed.domain[:name]"
        ));
    }
    let domain = nqn.get(12..).unwrap_or("").split(':').next().unwrap_or("");
    let label_ok = |l: &str| {
        l.bytes().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
    };
    if domain.is_empty() || !domain.split('.').all(label_ok) {
        return invalid(format!("NQN {nqn}: the domain part is not a domain name"));
    }
    Ok(())
}

/// Identify Controller SN / MN: printable ASCII, padded with spaces.
fn check_ascii(what: &str, v: &str, max: usize) -> Result<()> {
    if v.is_empty() || v.len() > max {
        return invalid(format!("`{what}` must be 1-{max} characters"));
    }
    if !v.bytes().all(|c| (0x20..0x7f).contains(&c)) {
        return invalid(format!("`{what}` must be printable ASCII"));
    }
    Ok(())
}

impl Subsystem {
    /// A subsystem with SPDK's defaults and nothing in it.
    pub fn new(nqn: &str) -> Subsystem {
        Subsystem {
            nqn: nqn.into(),
            serial_number: DEFAULT_SERIAL.into(),
            model_number: DEFAULT_MODEL.into(),
            allow_any_host: false,
            hosts: Vec::new(),
            namespaces: Vec::new(),
            listeners: Vec::new(),
            max_namespaces: 0,
            min_cntlid: 1,
            max_cntlid: MAX_CNTLID,
        }
    }

    /// Highest namespace ID allowed (and so most namespaces).
    pub fn max_nsid(&self) -> u32 {
        match self.max_namespaces {
            0 => MAX_NAMESPACES,
            n => n.min(MAX_NAMESPACES),
        }
    }

    fn check_host(&self, host: &str) -> Result<()> {
        check_nqn(host).map_err(|e| ConfigError::Invalid(format!("host {}", e.message())))?;
        if self.hosts.iter().any(|h| h == host) {
            return invalid(format!("{} allows host {host} already", self.nqn));
        }
        if self.hosts.len() >= MAX_HOSTS {
            return busy(format!("{} allows {MAX_HOSTS} hosts already", self.nqn));
        }
        Ok(())
    }

    fn check_listener(&self, l: &Listener) -> Result<()> {
        if self.listeners.iter().any(|o| o.same_endpoint(l)) {
            return invalid(format!(
                "{} listens on {}:{} already",
                self.nqn, l.traddr, l.port
            ));
        }
        if self.listeners.len() >= MAX_LISTENERS {
            return busy(format!("{} has {MAX_LISTENERS} listeners", self.nqn));
        }
        Ok(())
    }
}

/// Operations. Each checks fully, then applies and bumps the generation.
impl Config {
    fn changed(&mut self) {
        self.generation = self.generation.wrapping_add(1);
    }

    /// The subsystem limit in force.
    pub fn subsystem_limit(&self) -> usize {
        match self.max_subsystems {
            0 => MAX_SUBSYSTEMS,
            n => (n as usize).min(MAX_SUBSYSTEMS),
        }
    }

    fn index(&self, nqn: &str) -> Result<usize> {
        self.subsystems
            .iter()
            .position(|s| s.nqn == nqn)
            .ok_or_else(|| ConfigError::Invalid(format!("no subsystem {nqn}")))
    }

    /// Which namespace (subsystem, nsid) serves `bdev_name`, if any.
    pub fn namespace_on(&self, bdev_name: &str) -> Option<(&str, u32)> {
        self.subsystems.iter().find_map(|s| {
            s.namespaces
                .iter()
                .find(|n| n.bdev_name == bdev_name)
                .map(|n| (s.nqn.as_str(), n.nsid))
        })
    }

    /// Creates the TCP transport; there is only one.
    pub fn create_transport(&mut self, options: TransportOptions) -> Result<()> {
        if self.transport.is_some() {
            return invalid("transport type TCP already exists");
        }
        options.check()?;
        self.transport = Some(options);
        self.changed();
        Ok(())
    }

    /// Creates or replaces the TCP transport's options (the 2018
    /// `set_nvmf_target_options`). Live queues keep what they negotiated.
    pub fn set_transport(&mut self, options: TransportOptions) -> Result<()> {
        options.check()?;
        self.transport = Some(options);
        self.changed();
        Ok(())
    }

    /// Not below the number of subsystems that exist.
    pub fn set_max_subsystems(&mut self, max: u32) -> Result<()> {
        if max == 0 || max as usize > MAX_SUBSYSTEMS {
            return invalid(format!(
                "`max_subsystems` {max} must be from 1 to {MAX_SUBSYSTEMS}"
            ));
        }
        if (max as usize) < self.subsystems.len() {
            return busy(format!("{} subsystems exist", self.subsystems.len()));
        }
        self.max_subsystems = max;
        self.changed();
        Ok(())
    }

    pub fn set_acceptor_poll_rate(&mut self, us: u32) {
        self.acceptor_poll_rate = us;
        self.changed();
    }

    /// Creates a subsystem with what it holds already (hosts, listeners,
    /// namespaces; nsid 0 takes the lowest free ID), all or nothing.
    pub fn create_subsystem(&mut self, mut spec: Subsystem, bdevs: &Registry) -> Result<()> {
        check_nqn(&spec.nqn)?;
        if Config::is_discovery(&spec.nqn) {
            return invalid("the discovery subsystem exists always");
        }
        if self.subsystem(&spec.nqn).is_some() {
            return invalid(format!("subsystem {} already exists", spec.nqn));
        }
        if self.subsystems.len() >= self.subsystem_limit() {
            return busy(format!(
                "{} subsystems exist already (`max_subsystems`)",
                self.subsystems.len()
            ));
        }
        check_ascii("serial_number", &spec.serial_number, MAX_SERIAL)?;
        check_ascii("model_number", &spec.model_number, MAX_MODEL)?;
        if spec.min_cntlid == 0 || spec.min_cntlid > spec.max_cntlid || spec.max_cntlid > MAX_CNTLID
        {
            return invalid(format!(
                "controller IDs {}-{} must lie in 1-{MAX_CNTLID}, `min_cntlid` first",
                spec.min_cntlid, spec.max_cntlid
            ));
        }
        if spec.max_namespaces > MAX_NAMESPACES {
            return invalid(format!(
                "`max_namespaces` {} must be at most {MAX_NAMESPACES}",
                spec.max_namespaces
            ));
        }
        if !spec.listeners.is_empty() && self.transport.is_none() {
            return invalid("no TCP transport: create it first (nvmf_create_transport)");
        }
        let hosts = core::mem::take(&mut spec.hosts);
        let listeners = core::mem::take(&mut spec.listeners);
        let namespaces = core::mem::take(&mut spec.namespaces);
        let mut sub = spec;
        for h in hosts {
            sub.check_host(&h)?;
            sub.hosts.push(h);
        }
        for l in listeners {
            let l = Listener::new(Some(l.adrfam), &l.traddr, l.port)?;
            sub.check_listener(&l)?;
            sub.listeners.push(l);
        }
        // Explicit IDs first, so an automatic one never takes one named later.
        let (given, auto): (Vec<_>, Vec<_>) = namespaces.into_iter().partition(|n| n.nsid != 0);
        for ns in given.into_iter().chain(auto) {
            self.check_namespace(&mut sub, ns, bdevs)?;
        }
        self.subsystems.push(sub);
        self.changed();
        Ok(())
    }

    /// The 2018 one-shot `construct_nvmf_subsystem`: the transport was
    /// implicit then, so a subsystem with listeners gets a default one if
    /// there is none (and not if the subsystem is refused).
    pub fn construct_subsystem(&mut self, spec: Subsystem, bdevs: &Registry) -> Result<()> {
        let implicit = self.transport.is_none() && !spec.listeners.is_empty();
        if implicit {
            self.transport = Some(TransportOptions::default());
        }
        let r = self.create_subsystem(spec, bdevs);
        if implicit && r.is_err() {
            self.transport = None;
        }
        r
    }

    /// Live controllers of a deleted subsystem fail on the next refresh.
    pub fn delete_subsystem(&mut self, nqn: &str) -> Result<()> {
        if Config::is_discovery(nqn) {
            return invalid("the discovery subsystem cannot be deleted");
        }
        let i = self.index(nqn)?;
        self.subsystems.remove(i);
        self.changed();
        Ok(())
    }

    /// A listener for the discovery NQN makes the discovery service answer
    /// on its port too.
    pub fn add_listener(&mut self, nqn: &str, listener: Listener) -> Result<()> {
        let l = Listener::new(Some(listener.adrfam), &listener.traddr, listener.port)?;
        if self.transport.is_none() {
            return invalid("no TCP transport: create it first (nvmf_create_transport)");
        }
        if Config::is_discovery(nqn) {
            if self.discovery_listeners.iter().any(|o| o.same_endpoint(&l)) {
                return invalid(format!(
                    "the discovery subsystem listens on {}:{} already",
                    l.traddr, l.port
                ));
            }
            if self.discovery_listeners.len() >= MAX_LISTENERS {
                return busy(format!(
                    "the discovery subsystem has {MAX_LISTENERS} listeners"
                ));
            }
            self.discovery_listeners.push(l);
        } else {
            let i = self.index(nqn)?;
            self.subsystems[i].check_listener(&l)?;
            self.subsystems[i].listeners.push(l);
        }
        self.changed();
        Ok(())
    }

    /// Removes the listener on `traddr:port`; queues connected through it
    /// stay until they disconnect (as SPDK's do).
    pub fn remove_listener(&mut self, nqn: &str, traddr: &str, port: u16) -> Result<()> {
        let want = Listener::new(None, traddr, port)?;
        let list = if Config::is_discovery(nqn) {
            &mut self.discovery_listeners
        } else {
            let i = self.index(nqn)?;
            &mut self.subsystems[i].listeners
        };
        let Some(at) = list.iter().position(|l| l.same_endpoint(&want)) else {
            return invalid(format!("{nqn} has no listener on {traddr}:{port}"));
        };
        list.remove(at);
        self.changed();
        Ok(())
    }

    /// Adds a namespace (nsid 0: the lowest free one); returns its nsid.
    pub fn add_namespace(&mut self, nqn: &str, ns: Namespace, bdevs: &Registry) -> Result<u32> {
        if Config::is_discovery(nqn) {
            return invalid("the discovery subsystem has no namespaces");
        }
        let i = self.index(nqn)?;
        let mut sub = self.subsystems[i].clone();
        let nsid = self.check_namespace(&mut sub, ns, bdevs)?;
        self.subsystems[i] = sub;
        self.changed();
        Ok(nsid)
    }

    /// Checks `ns` and inserts it into `sub` (a scratch copy) in nsid order.
    fn check_namespace(
        &self,
        sub: &mut Subsystem,
        mut ns: Namespace,
        bdevs: &Registry,
    ) -> Result<u32> {
        let max = sub.max_nsid();
        if ns.nsid == 0 {
            ns.nsid = (1..=max)
                .find(|id| sub.namespace(*id).is_none())
                .ok_or_else(|| ConfigError::Busy(format!("{} has {max} namespaces", sub.nqn)))?;
        } else if ns.nsid > max {
            return invalid(format!(
                "nsid {} must be from 1 to {max} (`max_namespaces`)",
                ns.nsid
            ));
        } else if sub.namespace(ns.nsid).is_some() {
            return invalid(format!("{} has a namespace {} already", sub.nqn, ns.nsid));
        }
        if bdevs.find(&ns.bdev_name).is_none() {
            return invalid(format!("bdev {} does not exist", ns.bdev_name));
        }
        // A bdev backs one namespace at most (SPDK claims it).
        let user = sub
            .namespaces
            .iter()
            .find(|n| n.bdev_name == ns.bdev_name)
            .map(|n| (sub.nqn.as_str(), n.nsid))
            .or_else(|| self.namespace_on(&ns.bdev_name));
        if let Some((nqn, nsid)) = user {
            return invalid(format!(
                "bdev {} is namespace {nsid} of {nqn} already",
                ns.bdev_name
            ));
        }
        let nsid = ns.nsid;
        let at = sub.namespaces.partition_point(|n| n.nsid < nsid);
        sub.namespaces.insert(at, ns);
        Ok(nsid)
    }

    pub fn remove_namespace(&mut self, nqn: &str, nsid: u32) -> Result<()> {
        let i = self.index(nqn)?;
        let sub = &mut self.subsystems[i];
        let Some(at) = sub.namespaces.iter().position(|n| n.nsid == nsid) else {
            return invalid(format!("{nqn} has no namespace {nsid}"));
        };
        sub.namespaces.remove(at);
        self.changed();
        Ok(())
    }

    pub fn add_host(&mut self, nqn: &str, host: &str) -> Result<()> {
        if Config::is_discovery(nqn) {
            return invalid("any host may use the discovery subsystem");
        }
        let i = self.index(nqn)?;
        self.subsystems[i].check_host(host)?;
        self.subsystems[i].hosts.push(host.into());
        self.changed();
        Ok(())
    }

    /// Controllers of the host fail on the next refresh unless any host is
    /// allowed.
    pub fn remove_host(&mut self, nqn: &str, host: &str) -> Result<()> {
        let i = self.index(nqn)?;
        let sub = &mut self.subsystems[i];
        let Some(at) = sub.hosts.iter().position(|h| h == host) else {
            return invalid(format!("{nqn} does not list host {host}"));
        };
        sub.hosts.remove(at);
        self.changed();
        Ok(())
    }

    pub fn set_allow_any_host(&mut self, nqn: &str, allow: bool) -> Result<()> {
        if Config::is_discovery(nqn) {
            return invalid("any host may use the discovery subsystem");
        }
        let i = self.index(nqn)?;
        self.subsystems[i].allow_any_host = allow;
        self.changed();
        Ok(())
    }

    /// Hot removal: drops every namespace whose bdev `bdevs` no longer
    /// holds; returns how many went.
    pub fn prune_namespaces(&mut self, bdevs: &Registry) -> usize {
        let mut dropped = 0;
        for s in &mut self.subsystems {
            let before = s.namespaces.len();
            s.namespaces.retain(|n| bdevs.find(&n.bdev_name).is_some());
            dropped += before - s.namespaces.len();
        }
        if dropped > 0 {
            self.changed();
        }
        dropped
    }
}

#[cfg(test)]
mod tests;
