//! The iSCSI part of the object model: global options, CHAP auth groups,
//! portal groups, initiator groups and target nodes with their LUNs.
//!
//! Management front ends change it through the operations in this module;
//! the protocol engine only reads it (access control, CHAP secrets, LUN
//! maps, SendTargets). Every operation checks everything before it changes
//! anything, so a failed one leaves the configuration as it was; every
//! change bumps [`Config::generation`] so running sessions can notice LUN
//! map changes and raise unit attentions.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use ironbay_bdev::{BdevId, Registry};

/// Longest iSCSI name (RFC 3720 3.2.6.1) and target alias.
pub const MAX_NAME: usize = 223;
/// Longest CHAP user name or secret.
pub const MAX_CHAP_FIELD: usize = 255;
/// Caps on what a management client can create, so the configuration stays
/// small whatever it is sent.
pub const MAX_AUTH_GROUPS: usize = 256;
pub const MAX_SECRETS: usize = 256;
pub const MAX_PORTAL_GROUPS: usize = 256;
pub const MAX_PORTALS: usize = 64;
pub const MAX_INITIATOR_GROUPS: usize = 256;
pub const MAX_INITIATORS: usize = 256;
pub const MAX_NETMASKS: usize = 256;
pub const MAX_NODES: usize = 1024;
pub const MAX_PG_IG_MAPS: usize = 256;
/// LUN ids are 0..MAX_LUNS (single-level peripheral addressing).
pub const MAX_LUNS: u64 = 256;
/// LUNs over all target nodes.
pub const MAX_TOTAL_LUNS: usize = 16384;
/// Initiators with an ACL on one masked node.
pub const MAX_ACLS: usize = 1024;
/// Largest `max_queue_depth`.
pub const MAX_QUEUE_DEPTH: u32 = 256;
const MAX_AUTH_FILE: usize = 4096;
const MAX_NETMASK: usize = 64;
const MAX_HOST: usize = 64;

/// Why an operation was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// The request is wrong: a bad value, an unknown tag or name.
    Invalid(String),
    /// The request is fine but cannot be done now: a limit is reached or the
    /// object is in use.
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

type Result<T> = core::result::Result<T, ConfigError>;

fn invalid<T>(message: impl Into<String>) -> Result<T> {
    Err(ConfigError::Invalid(message.into()))
}

fn busy<T>(message: impl Into<String>) -> Result<T> {
    Err(ConfigError::Busy(message.into()))
}

/// Who must authenticate with CHAP, and with which secrets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChapPolicy {
    /// CHAP is never offered (only AuthMethod=None).
    pub disable: bool,
    /// CHAP is required (AuthMethod=None refused).
    pub require: bool,
    /// The target authenticates itself back to the initiator.
    pub mutual: bool,
    /// Auth group with the secrets; 0 means none chosen. A group that does
    /// not exist (any more) holds no secrets: CHAP logins then fail.
    pub group: u32,
}

impl ChapPolicy {
    /// The combinations that mean something: auto, none, CHAP, mutual CHAP.
    pub fn check(&self) -> Result<()> {
        if self.disable && self.require {
            return invalid("`disable_chap` and `require_chap` are mutually exclusive");
        }
        if self.mutual && !self.require {
            return invalid("`mutual_chap` needs `require_chap`");
        }
        Ok(())
    }
}

/// One CHAP credential pair.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    /// Name and secret the initiator proves it knows.
    pub user: String,
    pub secret: String,
    /// Name and secret the target answers with in mutual CHAP.
    pub muser: Option<String>,
    pub msecret: Option<String>,
}

/// Secrets stay out of anything printed (a `{:?}` of the target or its
/// configuration in a log line).
impl core::fmt::Debug for Secret {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Secret")
            .field("user", &self.user)
            .field("muser", &self.muser)
            .finish_non_exhaustive()
    }
}

impl Secret {
    pub fn check(&self) -> Result<()> {
        for (what, v) in [
            ("user", Some(&self.user)),
            ("secret", Some(&self.secret)),
            ("muser", self.muser.as_ref()),
            ("msecret", self.msecret.as_ref()),
        ] {
            let Some(v) = v else { continue };
            if v.is_empty() || v.len() > MAX_CHAP_FIELD {
                return invalid(format!("`{what}` must be 1-{MAX_CHAP_FIELD} bytes"));
            }
            if v.chars().any(char::is_control) {
                return invalid(format!("`{what}` holds a control character"));
            }
        }
        if self.muser.is_some() != self.msecret.is_some() {
            return invalid("`muser` and `msecret` go together");
        }
        // RFC 7143 12.1.3: a secret must not authenticate both directions.
        if self.msecret.as_ref() == Some(&self.secret) {
            return invalid("`msecret` must differ from `secret`");
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthGroup {
    pub tag: u32,
    pub secrets: Vec<Secret>,
}

impl AuthGroup {
    /// The credentials for CHAP name `user` (`CHAP_N`).
    pub fn secret_for(&self, user: &str) -> Option<&Secret> {
        self.secrets.iter().find(|s| s.user == user)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Portal {
    /// An IPv4 address, or an IPv6 one in brackets; `0.0.0.0` and `[::]`
    /// match any local address.
    pub host: String,
    pub port: u16,
}

impl Portal {
    /// The address, or `None` for a wildcard.
    pub fn addr(&self) -> Option<IpAddr> {
        parse_host(&self.host).and_then(|(_, a)| a)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortalGroup {
    /// 1-65535: the Target Portal Group Tag is 16 bits on the wire.
    pub tag: u32,
    pub portals: Vec<Portal>,
    /// Not reported by SendTargets (SPDK's `private`).
    pub private: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitiatorGroup {
    pub tag: u32,
    /// Initiator names (`ANY` matches all, a leading `!` denies).
    pub initiators: Vec<String>,
    /// Address masks (`ANY`, `a.b.c.d/len`, `a.b.c.d`, `[v6]/len`, `[v6]`).
    pub netmasks: Vec<String>,
}

impl InitiatorGroup {
    /// `Some(true)` if the first entry naming `initiator` allows it,
    /// `Some(false)` if it denies it, `None` if no entry names it.
    fn name_verdict(&self, initiator: &str) -> Option<bool> {
        self.initiators.iter().find_map(|entry| {
            let (deny, name) = match entry.strip_prefix('!') {
                Some(n) => (true, n),
                None => (false, entry.as_str()),
            };
            (name.eq_ignore_ascii_case("ANY") || name.eq_ignore_ascii_case(initiator))
                .then_some(!deny)
        })
    }

    fn allows_addr(&self, addr: IpAddr) -> bool {
        self.netmasks
            .iter()
            .filter_map(|m| parse_netmask(m))
            .any(|m| m.matches(addr))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PgIgMap {
    pub pg_tag: u32,
    pub ig_tag: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lun {
    pub id: u64,
    pub bdev_name: String,
    pub bdev: BdevId,
    /// Refuses writes with DATA PROTECT / WRITE PROTECTED.
    pub read_only: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetNode {
    /// Full IQN (`node_base` + `:` + the name given, unless it was already
    /// a full name).
    pub name: String,
    pub alias: String,
    pub pg_ig_maps: Vec<PgIgMap>,
    pub luns: Vec<Lun>,
    /// Commands in flight per session (the CmdSN window).
    pub queue_depth: u32,
    pub chap: ChapPolicy,
    /// Require CRC32C header / data digests.
    pub header_digest: bool,
    pub data_digest: bool,
    /// LUN masking (targetd's model): each initiator sees only the LUNs of
    /// its own [`Acl`], an initiator without one may not log in, and one
    /// whose ACL has CHAP credentials must answer them; `luns` is unused.
    pub masked: bool,
    pub acls: Vec<Acl>,
}

/// One initiator's view of a masked node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acl {
    /// The initiator's iSCSI name (compared without case).
    pub initiator: String,
    pub luns: Vec<Lun>,
    /// CHAP the initiator must answer (and, with `muser`, the target's
    /// answer back); `None`: no authentication for it.
    pub chap: Option<Secret>,
    /// A group whose members share one LUN map (targetd's access groups).
    pub group: Option<String>,
}

impl Acl {
    /// An ACL with nothing left in it goes.
    fn is_empty(&self) -> bool {
        self.luns.is_empty() && self.chap.is_none() && self.group.is_none()
    }
}

impl Acl {
    pub fn lun(&self, id: u64) -> Option<&Lun> {
        self.luns.iter().find(|l| l.id == id)
    }
}

impl TargetNode {
    pub fn lun(&self, id: u64) -> Option<&Lun> {
        self.luns.iter().find(|l| l.id == id)
    }

    /// The ACL of `initiator` on a masked node.
    pub fn acl(&self, initiator: &str) -> Option<&Acl> {
        self.acls
            .iter()
            .find(|a| a.initiator.eq_ignore_ascii_case(initiator))
    }

    /// The LUNs `initiator` sees.
    pub fn luns_for(&self, initiator: &str) -> &[Lun] {
        if !self.masked {
            return &self.luns;
        }
        self.acl(initiator).map_or(&[], |a| a.luns.as_slice())
    }

    fn lowest_free_lun(&self) -> Option<u64> {
        (0..MAX_LUNS).find(|id| self.lun(*id).is_none())
    }
}

/// A LUN of a node to create: `id` `None` takes the lowest free id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LunSpec {
    pub bdev_name: String,
    pub id: Option<u64>,
    /// Write-protect the LUN even when its bdev is writable.
    pub read_only: bool,
}

/// A target node to create.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeSpec {
    /// A full iSCSI name, or a short one that gets `node_base:` in front.
    pub name: String,
    pub alias: String,
    pub luns: Vec<LunSpec>,
    pub pg_ig_maps: Vec<PgIgMap>,
    /// Above `max_queue_depth` it is lowered to it, as SPDK does.
    pub queue_depth: u32,
    pub chap: ChapPolicy,
    pub header_digest: bool,
    pub data_digest: bool,
}

/// Global options (`iscsi_set_options`), with SPDK's defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    pub node_base: String,
    /// Seconds an initiator may leave a NOP-In unanswered before the
    /// connection is dropped.
    pub nop_timeout: u32,
    /// Seconds of silence before the target pings with a NOP-In.
    pub nop_in_interval: u32,
    pub max_sessions: u32,
    pub max_connections_per_session: u32,
    pub max_queue_depth: u32,
    pub default_time2wait: u32,
    pub default_time2retain: u32,
    pub first_burst_length: u32,
    pub max_burst_length: u32,
    pub max_recv_data_segment_length: u32,
    pub immediate_data: bool,
    pub initial_r2t: bool,
    pub data_pdu_in_order: bool,
    pub data_sequence_in_order: bool,
    pub max_outstanding_r2t: u32,
    pub error_recovery_level: u32,
    pub allow_duplicated_isid: bool,
    pub auth_file: String,
    pub min_connections_per_core: u32,
    /// Split reads in flight per connection (SPDK's
    /// `max_large_datain_per_connection`).
    pub max_large_datain_per_connection: u32,
    /// R2Ts outstanding per connection, over all its commands.
    pub max_r2t_per_connection: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            node_base: "iqn.2016-06.io.spdk".into(),
            nop_timeout: 60,
            nop_in_interval: 30,
            max_sessions: 128,
            max_connections_per_session: 2,
            max_queue_depth: 64,
            default_time2wait: 2,
            default_time2retain: 20,
            first_burst_length: 8192,
            max_burst_length: 1024 * 1024,
            max_recv_data_segment_length: 64 * 1024,
            immediate_data: true,
            initial_r2t: true,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            max_outstanding_r2t: 1,
            error_recovery_level: 0,
            allow_duplicated_isid: false,
            auth_file: String::new(),
            min_connections_per_core: 4,
            max_large_datain_per_connection: 64,
            max_r2t_per_connection: 4,
        }
    }
}

impl Options {
    /// The ranges RFC 7143 (section 13) and SPDK allow.
    pub fn check(&self) -> Result<()> {
        // The base needs room for `:` and a short name.
        if self.node_base.len() > MAX_NAME - 2 {
            return invalid(format!(
                "`node_base` must be at most {} bytes",
                MAX_NAME - 2
            ));
        }
        check_iscsi_name(&self.node_base).map_err(|e| {
            ConfigError::Invalid(format!("`node_base` {}: {}", self.node_base, e.message()))
        })?;
        if self.auth_file.len() > MAX_AUTH_FILE {
            return invalid(format!("`auth_file` must be at most {MAX_AUTH_FILE} bytes"));
        }
        const SEGMENT: core::ops::RangeInclusive<u32> = 512..=(1 << 24) - 1;
        let ranges: [(&str, u32, core::ops::RangeInclusive<u32>); 13] = [
            ("max_sessions", self.max_sessions, 1..=65535),
            (
                "max_connections_per_session",
                self.max_connections_per_session,
                1..=65535,
            ),
            ("max_queue_depth", self.max_queue_depth, 1..=MAX_QUEUE_DEPTH),
            ("default_time2wait", self.default_time2wait, 0..=3600),
            ("default_time2retain", self.default_time2retain, 0..=3600),
            ("max_burst_length", self.max_burst_length, SEGMENT),
            (
                "first_burst_length",
                self.first_burst_length,
                512..=self.max_burst_length,
            ),
            (
                "max_recv_data_segment_length",
                self.max_recv_data_segment_length,
                SEGMENT,
            ),
            ("max_outstanding_r2t", self.max_outstanding_r2t, 1..=65535),
            ("error_recovery_level", self.error_recovery_level, 0..=2),
            ("nop_in_interval", self.nop_in_interval, 0..=60),
            (
                "max_large_datain_per_connection",
                self.max_large_datain_per_connection,
                1..=65535,
            ),
            (
                "max_r2t_per_connection",
                self.max_r2t_per_connection,
                1..=65535,
            ),
        ];
        for (key, v, range) in ranges {
            if !range.contains(&v) {
                return invalid(format!(
                    "`{key}` {v} must be from {} to {}",
                    range.start(),
                    range.end()
                ));
            }
        }
        if self.nop_timeout > 3600 {
            return invalid("`nop_timeout` must be at most 3600");
        }
        if self.min_connections_per_core == 0 {
            return invalid("`min_connections_per_core` must be positive");
        }
        Ok(())
    }
}

/// Everything the iSCSI target serves.
#[derive(Clone, Debug, Default)]
pub struct Config {
    pub options: Options,
    pub discovery_auth: ChapPolicy,
    pub auth_groups: Vec<AuthGroup>,
    pub portal_groups: Vec<PortalGroup>,
    pub initiator_groups: Vec<InitiatorGroup>,
    pub nodes: Vec<TargetNode>,
    /// Bumped on every change.
    pub generation: u64,
}

impl Config {
    pub fn node(&self, name: &str) -> Option<&TargetNode> {
        self.nodes
            .iter()
            .find(|n| n.name.eq_ignore_ascii_case(name))
    }

    pub fn auth_group(&self, tag: u32) -> Option<&AuthGroup> {
        self.auth_groups.iter().find(|g| g.tag == tag)
    }

    pub fn portal_group(&self, tag: u32) -> Option<&PortalGroup> {
        self.portal_groups.iter().find(|g| g.tag == tag)
    }

    pub fn initiator_group(&self, tag: u32) -> Option<&InitiatorGroup> {
        self.initiator_groups.iter().find(|g| g.tag == tag)
    }

    /// The full name a node created as `name` gets: names without an
    /// `iqn.`, `eui.` or `naa.` type get `node_base:` in front.
    pub fn full_name(&self, name: &str) -> String {
        if has_name_type(name) {
            name.to_string()
        } else {
            format!("{}:{name}", self.options.node_base)
        }
    }

    /// A node's name without `node_base:` (SPDK's `target_node_name`).
    pub fn short_name<'n>(&self, name: &'n str) -> &'n str {
        let base = &self.options.node_base;
        match name.get(..base.len()) {
            Some(head) if head.eq_ignore_ascii_case(base) => name
                .get(base.len()..)
                .and_then(|rest| rest.strip_prefix(':'))
                .filter(|rest| !rest.is_empty())
                .unwrap_or(name),
            _ => name,
        }
    }

    /// A node by its full name, or by the short name it was created with.
    pub fn find_node(&self, name: &str) -> Option<&TargetNode> {
        self.node(name).or_else(|| self.node(&self.full_name(name)))
    }

    fn node_index(&self, name: &str) -> Result<usize> {
        let full = self.full_name(name);
        self.nodes
            .iter()
            .position(|n| n.name.eq_ignore_ascii_case(name) || n.name.eq_ignore_ascii_case(&full))
            .ok_or_else(|| ConfigError::Invalid(format!("no target node {name}")))
    }

    fn changed(&mut self) {
        self.generation = self.generation.wrapping_add(1);
    }
}

/// Operations. Each checks fully, then applies and bumps the generation.
impl Config {
    /// Replaces the global options. Sessions already running keep what they
    /// negotiated; `max_queue_depth` may not fall below a node's depth.
    pub fn set_options(&mut self, options: Options) -> Result<()> {
        options.check()?;
        if let Some(n) = self
            .nodes
            .iter()
            .find(|n| n.queue_depth > options.max_queue_depth)
        {
            return invalid(format!(
                "`max_queue_depth` {} is below the queue depth {} of {}",
                options.max_queue_depth, n.queue_depth, n.name
            ));
        }
        self.options = options;
        self.changed();
        Ok(())
    }

    /// CHAP for discovery sessions.
    pub fn set_discovery_auth(&mut self, chap: ChapPolicy) -> Result<()> {
        chap.check()?;
        self.discovery_auth = chap;
        self.changed();
        Ok(())
    }

    pub fn create_auth_group(&mut self, tag: u32, secrets: Vec<Secret>) -> Result<()> {
        check_tag(tag)?;
        if self.auth_group(tag).is_some() {
            return invalid(format!("auth group {tag} already exists"));
        }
        if self.auth_groups.len() >= MAX_AUTH_GROUPS {
            return busy(format!("{MAX_AUTH_GROUPS} auth groups exist already"));
        }
        if secrets.len() > MAX_SECRETS {
            return invalid(format!("at most {MAX_SECRETS} secrets per auth group"));
        }
        for (i, s) in secrets.iter().enumerate() {
            s.check()?;
            if secrets[..i].iter().any(|o| o.user == s.user) {
                return invalid(format!("user {} is given twice", s.user));
            }
        }
        self.auth_groups.push(AuthGroup { tag, secrets });
        self.changed();
        Ok(())
    }

    /// Deletes an auth group; policies naming it then hold no secrets.
    pub fn delete_auth_group(&mut self, tag: u32) -> Result<()> {
        let i = self.auth_group_index(tag)?;
        self.auth_groups.remove(i);
        self.changed();
        Ok(())
    }

    fn auth_group_index(&self, tag: u32) -> Result<usize> {
        self.auth_groups
            .iter()
            .position(|g| g.tag == tag)
            .ok_or_else(|| ConfigError::Invalid(format!("no auth group {tag}")))
    }

    pub fn add_secret(&mut self, tag: u32, secret: Secret) -> Result<()> {
        let i = self.auth_group_index(tag)?;
        secret.check()?;
        let group = &mut self.auth_groups[i];
        if group.secret_for(&secret.user).is_some() {
            return invalid(format!(
                "auth group {tag} has a secret for {} already",
                secret.user
            ));
        }
        if group.secrets.len() >= MAX_SECRETS {
            return busy(format!("auth group {tag} holds {MAX_SECRETS} secrets"));
        }
        group.secrets.push(secret);
        self.changed();
        Ok(())
    }

    pub fn remove_secret(&mut self, tag: u32, user: &str) -> Result<()> {
        let i = self.auth_group_index(tag)?;
        let group = &mut self.auth_groups[i];
        let Some(s) = group.secrets.iter().position(|s| s.user == user) else {
            return invalid(format!("auth group {tag} has no secret for {user}"));
        };
        group.secrets.remove(s);
        self.changed();
        Ok(())
    }

    /// Hosts are numeric: `*` and `[*]` become `0.0.0.0` and `[::]`, a bare
    /// IPv6 address gets brackets. A host:port pair belongs to one group.
    pub fn create_portal_group(
        &mut self,
        tag: u32,
        portals: Vec<Portal>,
        private: bool,
    ) -> Result<()> {
        check_tag(tag)?;
        if tag > u16::MAX as u32 {
            return invalid(format!("portal group tag {tag} must be at most 65535"));
        }
        if self.portal_group(tag).is_some() {
            return invalid(format!("portal group {tag} already exists"));
        }
        if self.portal_groups.len() >= MAX_PORTAL_GROUPS {
            return busy(format!("{MAX_PORTAL_GROUPS} portal groups exist already"));
        }
        if portals.is_empty() || portals.len() > MAX_PORTALS {
            return invalid(format!("a portal group needs 1-{MAX_PORTALS} portals"));
        }
        let mut normalized: Vec<Portal> = Vec::with_capacity(portals.len());
        for p in portals {
            let Some((host, _)) = parse_host(&p.host) else {
                return invalid(format!("portal host {} is not an IP address", p.host));
            };
            if p.port == 0 {
                return invalid("portal port must be 1-65535");
            }
            let p = Portal { host, port: p.port };
            let taken = normalized.contains(&p)
                || self.portal_groups.iter().any(|g| g.portals.contains(&p));
            if taken {
                return invalid(format!("portal {}:{} already exists", p.host, p.port));
            }
            normalized.push(p);
        }
        self.portal_groups.push(PortalGroup {
            tag,
            portals: normalized,
            private,
        });
        self.changed();
        Ok(())
    }

    /// Refused while a target node maps the group.
    pub fn delete_portal_group(&mut self, tag: u32) -> Result<()> {
        let Some(i) = self.portal_groups.iter().position(|g| g.tag == tag) else {
            return invalid(format!("no portal group {tag}"));
        };
        if let Some(n) = self
            .nodes
            .iter()
            .find(|n| n.pg_ig_maps.iter().any(|m| m.pg_tag == tag))
        {
            return busy(format!("target node {} maps portal group {tag}", n.name));
        }
        self.portal_groups.remove(i);
        self.changed();
        Ok(())
    }

    /// `ALL` is taken as `ANY`, as SPDK does.
    pub fn create_initiator_group(
        &mut self,
        tag: u32,
        initiators: Vec<String>,
        netmasks: Vec<String>,
    ) -> Result<()> {
        check_tag(tag)?;
        if self.initiator_group(tag).is_some() {
            return invalid(format!("initiator group {tag} already exists"));
        }
        if self.initiator_groups.len() >= MAX_INITIATOR_GROUPS {
            return busy(format!(
                "{MAX_INITIATOR_GROUPS} initiator groups exist already"
            ));
        }
        if initiators.is_empty() || netmasks.is_empty() {
            return invalid("an initiator group needs initiators and netmasks");
        }
        let mut g = InitiatorGroup {
            tag,
            initiators: Vec::new(),
            netmasks: Vec::new(),
        };
        add_entries(&mut g, initiators, netmasks)?;
        self.initiator_groups.push(g);
        self.changed();
        Ok(())
    }

    /// Refused while a target node maps the group.
    pub fn delete_initiator_group(&mut self, tag: u32) -> Result<()> {
        let i = self.initiator_group_index(tag)?;
        if let Some(n) = self
            .nodes
            .iter()
            .find(|n| n.pg_ig_maps.iter().any(|m| m.ig_tag == tag))
        {
            return busy(format!("target node {} maps initiator group {tag}", n.name));
        }
        self.initiator_groups.remove(i);
        self.changed();
        Ok(())
    }

    fn initiator_group_index(&self, tag: u32) -> Result<usize> {
        self.initiator_groups
            .iter()
            .position(|g| g.tag == tag)
            .ok_or_else(|| ConfigError::Invalid(format!("no initiator group {tag}")))
    }

    pub fn add_initiators(
        &mut self,
        tag: u32,
        initiators: Vec<String>,
        netmasks: Vec<String>,
    ) -> Result<()> {
        let i = self.initiator_group_index(tag)?;
        let mut g = self.initiator_groups[i].clone();
        add_entries(&mut g, initiators, netmasks)?;
        self.initiator_groups[i] = g;
        self.changed();
        Ok(())
    }

    /// Every name and mask given must be in the group.
    pub fn remove_initiators(
        &mut self,
        tag: u32,
        initiators: &[String],
        netmasks: &[String],
    ) -> Result<()> {
        let i = self.initiator_group_index(tag)?;
        let mut g = self.initiator_groups[i].clone();
        for name in initiators {
            let name = any_for_all(name);
            let Some(at) = g.initiators.iter().position(|n| *n == name) else {
                return invalid(format!("initiator group {tag} has no initiator {name}"));
            };
            g.initiators.remove(at);
        }
        for mask in netmasks {
            let mask = any_for_all(mask);
            let Some(at) = g.netmasks.iter().position(|m| *m == mask) else {
                return invalid(format!("initiator group {tag} has no netmask {mask}"));
            };
            g.netmasks.remove(at);
        }
        self.initiator_groups[i] = g;
        self.changed();
        Ok(())
    }

    /// Creates a target node; returns its full name. The bdevs come from
    /// `bdevs`, which must hold them.
    pub fn create_target_node(&mut self, spec: NodeSpec, bdevs: &Registry) -> Result<String> {
        let name = self.full_name(&spec.name);
        check_iscsi_name(&name)
            .map_err(|e| ConfigError::Invalid(format!("target name {name}: {}", e.message())))?;
        if self.node(&name).is_some() {
            return invalid(format!("target node {name} already exists"));
        }
        if self.nodes.len() >= MAX_NODES {
            return busy(format!("{MAX_NODES} target nodes exist already"));
        }
        check_alias(&spec.alias)?;
        spec.chap.check()?;
        if spec.queue_depth == 0 {
            return invalid("`queue_depth` must be positive");
        }
        let mut node = TargetNode {
            name: name.clone(),
            alias: spec.alias,
            pg_ig_maps: Vec::new(),
            luns: Vec::new(),
            queue_depth: spec.queue_depth.min(self.options.max_queue_depth),
            chap: spec.chap,
            header_digest: spec.header_digest,
            data_digest: spec.data_digest,
            masked: false,
            acls: Vec::new(),
        };
        if spec.luns.len() as u64 > MAX_LUNS {
            return invalid(format!("at most {MAX_LUNS} LUNs per target node"));
        }
        self.check_lun_total(spec.luns.len())?;
        // Explicit ids first, so a default id never takes one named later.
        let (given, default): (Vec<_>, Vec<_>) =
            spec.luns.into_iter().partition(|l| l.id.is_some());
        for l in given.into_iter().chain(default) {
            let mut lun = make_lun(&node, bdevs, &l.bdev_name, l.id)?;
            lun.read_only |= l.read_only;
            node.luns.push(lun);
        }
        node.luns.sort_by_key(|l| l.id);
        self.add_maps(&mut node, &spec.pg_ig_maps)?;
        self.nodes.push(node);
        self.changed();
        Ok(name)
    }

    /// Sessions of a deleted node learn of it through the generation.
    pub fn delete_target_node(&mut self, name: &str) -> Result<()> {
        let i = self.node_index(name)?;
        self.nodes.remove(i);
        self.changed();
        Ok(())
    }

    /// Adds a LUN (`id` `None`: the lowest free one); returns its id.
    pub fn add_lun(
        &mut self,
        node: &str,
        bdev_name: &str,
        id: Option<u64>,
        bdevs: &Registry,
    ) -> Result<u64> {
        let i = self.node_index(node)?;
        self.check_lun_total(1)?;
        let lun = make_lun(&self.nodes[i], bdevs, bdev_name, id)?;
        let id = lun.id;
        let n = &mut self.nodes[i];
        let at = n.luns.partition_point(|l| l.id < id);
        n.luns.insert(at, lun);
        self.changed();
        Ok(id)
    }

    /// Turns LUN masking on or off for a node.
    pub fn set_masked(&mut self, node: &str, masked: bool) -> Result<()> {
        let i = self.node_index(node)?;
        if self.nodes[i].masked != masked {
            self.nodes[i].masked = masked;
            self.changed();
        }
        Ok(())
    }

    fn acl_index(&mut self, node: usize, initiator: &str) -> Result<usize> {
        check_iscsi_name(initiator)
            .map_err(|e| ConfigError::Invalid(format!("initiator {initiator}: {}", e.message())))?;
        let n = &mut self.nodes[node];
        if let Some(i) = n
            .acls
            .iter()
            .position(|a| a.initiator.eq_ignore_ascii_case(initiator))
        {
            return Ok(i);
        }
        if n.acls.len() >= MAX_ACLS {
            return busy(format!(
                "{MAX_ACLS} initiators have ACLs on {} already",
                n.name
            ));
        }
        n.acls.push(Acl {
            initiator: initiator.to_string(),
            luns: Vec::new(),
            chap: None,
            group: None,
        });
        Ok(n.acls.len() - 1)
    }

    /// Shows `bdev_name` to `initiator` as LUN `id` (`None`: its lowest
    /// free one) on a masked node; returns the id. The same bdev at the
    /// same id again is no change.
    pub fn map_lun(
        &mut self,
        node: &str,
        initiator: &str,
        bdev_name: &str,
        id: Option<u64>,
        bdevs: &Registry,
    ) -> Result<u64> {
        let i = self.node_index(node)?;
        let bdev = bdevs
            .find(bdev_name)
            .ok_or_else(|| ConfigError::Invalid(format!("bdev {bdev_name} does not exist")))?;
        let a = self.acl_index(i, initiator)?;
        let acl = &self.nodes[i].acls[a];
        if let Some(id) = id
            && let Some(l) = acl.lun(id)
        {
            if l.bdev == bdev {
                return Ok(id);
            }
            return invalid(format!(
                "{initiator} sees another volume as LUN {id} already"
            ));
        }
        let id = match id {
            Some(id) if id >= MAX_LUNS => {
                return invalid(format!("LUN id {id} must be below {MAX_LUNS}"));
            }
            Some(id) => id,
            None => (0..MAX_LUNS)
                .find(|k| acl.lun(*k).is_none())
                .ok_or_else(|| ConfigError::Invalid(format!("{initiator} has no free LUN id")))?,
        };
        self.check_lun_total(1)?;
        let read_only = bdevs.info(bdev).is_some_and(|b| b.read_only);
        let luns = &mut self.nodes[i].acls[a].luns;
        let at = luns.partition_point(|l| l.id < id);
        luns.insert(
            at,
            Lun {
                id,
                bdev_name: bdev_name.to_string(),
                bdev,
                read_only,
            },
        );
        self.changed();
        Ok(id)
    }

    /// Hides `bdev` from `initiator`; returns the LUN ids it had (none: not
    /// mapped). An ACL left with no LUNs and no CHAP goes.
    pub fn unmap_lun(&mut self, node: &str, initiator: &str, bdev: BdevId) -> Result<Vec<u64>> {
        let i = self.node_index(node)?;
        let n = &mut self.nodes[i];
        let Some(a) = n
            .acls
            .iter()
            .position(|a| a.initiator.eq_ignore_ascii_case(initiator))
        else {
            return Ok(Vec::new());
        };
        let ids: Vec<u64> = n.acls[a]
            .luns
            .iter()
            .filter(|l| l.bdev == bdev)
            .map(|l| l.id)
            .collect();
        n.acls[a].luns.retain(|l| l.bdev != bdev);
        if n.acls[a].is_empty() {
            n.acls.remove(a);
        }
        if !ids.is_empty() {
            self.changed();
        }
        Ok(ids)
    }

    /// Sets (or with `None` clears) the CHAP credentials `initiator` must
    /// answer on a node; `muser`/`msecret` make it mutual.
    pub fn set_acl_chap(
        &mut self,
        node: &str,
        initiator: &str,
        chap: Option<Secret>,
    ) -> Result<()> {
        if let Some(c) = &chap {
            c.check()?;
        }
        let i = self.node_index(node)?;
        let a = self.acl_index(i, initiator)?;
        self.nodes[i].acls[a].chap = chap;
        if self.nodes[i].acls[a].is_empty() {
            self.nodes[i].acls.remove(a);
        }
        self.changed();
        Ok(())
    }

    /// Puts `initiator` in access group `group` (or, with `None`, out of
    /// any), making its ACL if needed.
    pub fn set_acl_group(
        &mut self,
        node: &str,
        initiator: &str,
        group: Option<&str>,
    ) -> Result<()> {
        if let Some(g) = group
            && (g.is_empty() || g.len() > 255)
        {
            return invalid("a group name must be 1-255 characters");
        }
        let i = self.node_index(node)?;
        let a = self.acl_index(i, initiator)?;
        self.nodes[i].acls[a].group = group.map(String::from);
        if self.nodes[i].acls[a].is_empty() {
            self.nodes[i].acls.remove(a);
        }
        self.changed();
        Ok(())
    }

    /// Drops an initiator's ACL (its LUNs and CHAP) from a node.
    pub fn remove_acl(&mut self, node: &str, initiator: &str) -> Result<()> {
        let i = self.node_index(node)?;
        let n = &mut self.nodes[i];
        let before = n.acls.len();
        n.acls
            .retain(|a| !a.initiator.eq_ignore_ascii_case(initiator));
        if n.acls.len() != before {
            self.changed();
        }
        Ok(())
    }

    fn check_lun_total(&self, adding: usize) -> Result<()> {
        let total: usize = self
            .nodes
            .iter()
            .map(|n| n.luns.len() + n.acls.iter().map(|a| a.luns.len()).sum::<usize>())
            .sum();
        if total + adding > MAX_TOTAL_LUNS {
            return busy(format!("{MAX_TOTAL_LUNS} LUNs exist already"));
        }
        Ok(())
    }

    /// Hot removal: drops every LUN on `bdev`; returns how many went.
    pub fn remove_bdev(&mut self, bdev: BdevId) -> usize {
        let mut dropped = 0;
        for n in &mut self.nodes {
            let before = n.luns.len();
            n.luns.retain(|l| l.bdev != bdev);
            dropped += before - n.luns.len();
            for a in &mut n.acls {
                let before = a.luns.len();
                a.luns.retain(|l| l.bdev != bdev);
                dropped += before - a.luns.len();
            }
        }
        if dropped > 0 {
            self.changed();
        }
        dropped
    }

    pub fn add_pg_ig_maps(&mut self, node: &str, maps: &[PgIgMap]) -> Result<()> {
        let i = self.node_index(node)?;
        let mut n = self.nodes[i].clone();
        self.add_maps(&mut n, maps)?;
        self.nodes[i] = n;
        self.changed();
        Ok(())
    }

    fn add_maps(&self, node: &mut TargetNode, maps: &[PgIgMap]) -> Result<()> {
        for m in maps {
            if self.portal_group(m.pg_tag).is_none() {
                return invalid(format!("no portal group {}", m.pg_tag));
            }
            if self.initiator_group(m.ig_tag).is_none() {
                return invalid(format!("no initiator group {}", m.ig_tag));
            }
            if node.pg_ig_maps.contains(m) {
                return invalid(format!(
                    "{} already maps portal group {} to initiator group {}",
                    node.name, m.pg_tag, m.ig_tag
                ));
            }
            if node.pg_ig_maps.len() >= MAX_PG_IG_MAPS {
                return invalid(format!("at most {MAX_PG_IG_MAPS} maps per target node"));
            }
            node.pg_ig_maps.push(*m);
        }
        Ok(())
    }

    /// Every map given must be on the node.
    pub fn remove_pg_ig_maps(&mut self, node: &str, maps: &[PgIgMap]) -> Result<()> {
        let i = self.node_index(node)?;
        let mut n = self.nodes[i].clone();
        for m in maps {
            let Some(at) = n.pg_ig_maps.iter().position(|x| x == m) else {
                return invalid(format!(
                    "{} does not map portal group {} to initiator group {}",
                    n.name, m.pg_tag, m.ig_tag
                ));
            };
            n.pg_ig_maps.remove(at);
        }
        self.nodes[i] = n;
        self.changed();
        Ok(())
    }

    pub fn set_node_auth(&mut self, node: &str, chap: ChapPolicy) -> Result<()> {
        let i = self.node_index(node)?;
        chap.check()?;
        self.nodes[i].chap = chap;
        self.changed();
        Ok(())
    }
}

/// What the protocol engine asks.
impl Config {
    /// The portal group whose portal matches the local address and port a
    /// connection arrived on; a portal naming the address wins over a
    /// wildcard one.
    pub fn portal_group_of(&self, local: IpAddr, port: u16) -> Option<u32> {
        let local = local.to_canonical();
        let portals = || {
            self.portal_groups
                .iter()
                .flat_map(|g| g.portals.iter().map(move |p| (g.tag, p)))
                .filter(|(_, p)| p.port == port)
        };
        portals()
            .find(|(_, p)| p.addr().map(|a| a.to_canonical()) == Some(local))
            .or_else(|| portals().find(|(_, p)| p.addr().is_none()))
            .map(|(tag, _)| tag)
    }

    /// Whether `initiator` connecting from `addr` through portal group `pg`
    /// may see and log in to `node`. SPDK's rule: the maps of `pg` are tried
    /// in order; in each initiator group the first entry naming the
    /// initiator decides: a `!` entry denies outright, an allowing one
    /// admits if a netmask matches the address, else the next map is tried.
    pub fn allows(&self, node: &TargetNode, initiator: &str, addr: IpAddr, pg: u32) -> bool {
        let addr = addr.to_canonical();
        for m in node.pg_ig_maps.iter().filter(|m| m.pg_tag == pg) {
            let Some(ig) = self.initiator_group(m.ig_tag) else {
                continue;
            };
            match ig.name_verdict(initiator) {
                Some(false) => return false,
                Some(true) if ig.allows_addr(addr) => return true,
                _ => {}
            }
        }
        false
    }

    /// The nodes a SendTargets from this initiator lists.
    pub fn visible_nodes(
        &self,
        initiator: &str,
        addr: IpAddr,
        pg: u32,
    ) -> impl Iterator<Item = &TargetNode> {
        self.nodes
            .iter()
            .filter(move |n| self.allows(n, initiator, addr, pg))
    }

    /// `TargetAddress` values for a node: the portals of the public portal
    /// groups it maps, wildcards replaced by `local` (the address the
    /// asking connection reached).
    pub fn target_addresses(&self, node: &TargetNode, local: IpAddr) -> Vec<String> {
        let mut tags: Vec<u32> = Vec::new();
        for m in &node.pg_ig_maps {
            if !tags.contains(&m.pg_tag) {
                tags.push(m.pg_tag);
            }
        }
        let mut out = Vec::new();
        for g in tags.iter().filter_map(|t| self.portal_group(*t)) {
            if g.private {
                continue;
            }
            for p in &g.portals {
                let host = match p.addr() {
                    Some(_) => p.host.clone(),
                    None => match local.to_canonical() {
                        IpAddr::V4(a) => a.to_string(),
                        IpAddr::V6(a) => format!("[{a}]"),
                    },
                };
                out.push(format!("{host}:{},{}", p.port, g.tag));
            }
        }
        out
    }
}

fn check_tag(tag: u32) -> Result<()> {
    if tag == 0 || tag > i32::MAX as u32 {
        return invalid(format!("tag {tag} must be from 1 to {}", i32::MAX));
    }
    Ok(())
}

fn check_alias(alias: &str) -> Result<()> {
    if alias.len() > MAX_NAME {
        return invalid(format!("`alias_name` must be at most {MAX_NAME} bytes"));
    }
    if alias.chars().any(char::is_control) {
        return invalid("`alias_name` holds a control character");
    }
    Ok(())
}

fn make_lun(node: &TargetNode, bdevs: &Registry, bdev_name: &str, id: Option<u64>) -> Result<Lun> {
    let id = match id {
        Some(id) if id >= MAX_LUNS => {
            return invalid(format!("LUN id {id} must be below {MAX_LUNS}"));
        }
        Some(id) if node.lun(id).is_some() => {
            return invalid(format!("{} has a LUN {id} already", node.name));
        }
        Some(id) => id,
        None => node
            .lowest_free_lun()
            .ok_or_else(|| ConfigError::Invalid(format!("{} has no free LUN id", node.name)))?,
    };
    let Some(bdev) = bdevs.find(bdev_name) else {
        return invalid(format!("bdev {bdev_name} does not exist"));
    };
    let read_only = bdevs.info(bdev).is_some_and(|i| i.read_only);
    Ok(Lun {
        id,
        bdev_name: bdev_name.to_string(),
        bdev,
        read_only,
    })
}

fn any_for_all(entry: &str) -> String {
    match entry.strip_prefix('!') {
        Some(n) if n.eq_ignore_ascii_case("ALL") => "!ANY".into(),
        None if entry.eq_ignore_ascii_case("ALL") => "ANY".into(),
        _ => entry.to_string(),
    }
}

/// Checks and appends entries to a (scratch copy of a) group.
fn add_entries(
    g: &mut InitiatorGroup,
    initiators: Vec<String>,
    netmasks: Vec<String>,
) -> Result<()> {
    for name in initiators {
        let name = any_for_all(&name);
        let bare = name.strip_prefix('!').unwrap_or(&name);
        if bare.is_empty() || bare.len() > MAX_NAME {
            return invalid(format!("initiator names must be 1-{MAX_NAME} bytes"));
        }
        if bare.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return invalid(format!(
                "initiator name {name} holds a space or control character"
            ));
        }
        if g.initiators.contains(&name) {
            return invalid(format!("initiator group {} has {name} already", g.tag));
        }
        if g.initiators.len() >= MAX_INITIATORS {
            return invalid(format!("at most {MAX_INITIATORS} initiators per group"));
        }
        g.initiators.push(name);
    }
    for mask in netmasks {
        let mask = any_for_all(&mask);
        if mask.len() > MAX_NETMASK || parse_netmask(&mask).is_none() {
            return invalid(format!(
                "netmask {mask} is not ANY, a.b.c.d[/1-32] or [v6][/1-128]"
            ));
        }
        if g.netmasks.contains(&mask) {
            return invalid(format!("initiator group {} has {mask} already", g.tag));
        }
        if g.netmasks.len() >= MAX_NETMASKS {
            return invalid(format!("at most {MAX_NETMASKS} netmasks per group"));
        }
        g.netmasks.push(mask);
    }
    Ok(())
}

enum Netmask {
    Any,
    V4(u32, u32),
    V6(u128, u32),
}

impl Netmask {
    fn matches(&self, addr: IpAddr) -> bool {
        // The top `bits` of a `width`-bit address.
        let prefix = |bits: u32, width: u32| {
            let all = u128::MAX >> (128 - width);
            all & !all.checked_shr(bits).unwrap_or(0)
        };
        match (self, addr) {
            (Netmask::Any, _) => true,
            (Netmask::V4(net, bits), IpAddr::V4(a)) => {
                let m = prefix(*bits, 32) as u32;
                u32::from(a) & m == net & m
            }
            (Netmask::V6(net, bits), IpAddr::V6(a)) => {
                let m = prefix(*bits, 128);
                u128::from(a) & m == net & m
            }
            _ => false,
        }
    }
}

/// `ANY`, `a.b.c.d`, `a.b.c.d/1-32`, `[v6]`, `[v6]/1-128`.
fn parse_netmask(s: &str) -> Option<Netmask> {
    if s.eq_ignore_ascii_case("ANY") {
        return Some(Netmask::Any);
    }
    let (addr, bits) = match s.rsplit_once('/') {
        Some((a, b)) if !b.is_empty() && b.bytes().all(|c| c.is_ascii_digit()) => {
            (a, Some(b.parse::<u32>().ok()?))
        }
        Some(_) => return None,
        None => (s, None),
    };
    if let Some(v6) = addr.strip_prefix('[').and_then(|a| a.strip_suffix(']')) {
        let a: Ipv6Addr = v6.parse().ok()?;
        let bits = bits.unwrap_or(128);
        return (1..=128)
            .contains(&bits)
            .then_some(Netmask::V6(a.into(), bits));
    }
    let a: Ipv4Addr = addr.parse().ok()?;
    let bits = bits.unwrap_or(32);
    (1..=32)
        .contains(&bits)
        .then_some(Netmask::V4(a.into(), bits))
}

/// A portal host in stored form and its address (`None`: wildcard).
fn parse_host(s: &str) -> Option<(String, Option<IpAddr>)> {
    if s.len() > MAX_HOST {
        return None;
    }
    match s {
        "*" | "0.0.0.0" => return Some(("0.0.0.0".into(), None)),
        "[*]" | "[::]" | "::" => return Some(("[::]".into(), None)),
        _ => {}
    }
    if let Ok(a) = s.parse::<Ipv4Addr>() {
        return Some((a.to_string(), Some(IpAddr::V4(a))));
    }
    let v6 = s
        .strip_prefix('[')
        .and_then(|a| a.strip_suffix(']'))
        .unwrap_or(s);
    let a: Ipv6Addr = v6.parse().ok()?;
    if a.is_unspecified() {
        return Some(("[::]".into(), None));
    }
    Some((format!("[{a}]"), Some(IpAddr::V6(a))))
}

fn has_name_type(name: &str) -> bool {
    name.get(..4).is_some_and(|t| {
        ["iqn.", "eui.", "naa."]
            .iter()
            .any(|p| t.eq_ignore_ascii_case(p))
    })
}

/// An iSCSI name (RFC 3720 3.2.6): at most 223 bytes of letters, digits,
/// `-`, `.`, `:` (and non-ASCII), in the `iqn.yyyy-mm.domain[:...]`,
/// `eui.` + 16 hex digits or `naa.` + 16 or 32 hex digits form.
pub fn check_iscsi_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_NAME {
        return invalid(format!("iSCSI names are 1-{MAX_NAME} bytes"));
    }
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':') || !c.is_ascii();
    if let Some(c) = name
        .chars()
        .find(|c| !ok(*c) || c.is_control() || c.is_whitespace())
    {
        return invalid(format!(
            "`{}` is not allowed in an iSCSI name",
            c.escape_default()
        ));
    }
    let b = name.as_bytes();
    let rest = name.get(4..).unwrap_or("");
    let hex = |s: &str| s.bytes().all(|c| c.is_ascii_hexdigit());
    let prefix = name.get(..4).unwrap_or("").to_ascii_lowercase();
    match prefix.as_str() {
        "iqn." => {
            let digit = |i: usize| b.get(i).is_some_and(u8::is_ascii_digit);
            let date = (4..8).all(digit)
                && b.get(8) == Some(&b'-')
                && (9..11).all(digit)
                && b.get(11) == Some(&b'.');
            if !date || b.len() < 13 {
                return invalid("expected iqn.yyyy-mm.reversed.domain");
            }
        }
        "eui." if rest.len() == 16 && hex(rest) => {}
        "eui." => return invalid("expected eui. and 16 hex digits"),
        "naa." if (rest.len() == 16 || rest.len() == 32) && hex(rest) => {}
        "naa." => return invalid("expected naa. and 16 or 32 hex digits"),
        _ => return invalid("iSCSI names start with iqn., eui. or naa."),
    }
    Ok(())
}

#[cfg(test)]
mod tests;
