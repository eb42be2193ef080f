//! The iSCSI part of the object model: global options, CHAP auth groups,
//! portal groups, initiator groups and target nodes with their LUNs.
//!
//! Management front ends change it through the operations in this module;
//! the protocol engine only reads it (access control, CHAP secrets, LUN
//! maps, SendTargets). Every change bumps [`Config::generation`] so running
//! sessions can notice LUN map changes and raise unit attentions.

use alloc::string::String;
use alloc::vec::Vec;
use ironbay_bdev::BdevId;

/// Who must authenticate with CHAP, and with which secrets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChapPolicy {
    /// CHAP is never offered (only AuthMethod=None).
    pub disable: bool,
    /// CHAP is required (AuthMethod=None refused).
    pub require: bool,
    /// The target authenticates itself back to the initiator.
    pub mutual: bool,
    /// Auth group with the secrets; 0 means none chosen.
    pub group: u32,
}

/// One CHAP credential pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Secret {
    /// Name and secret the initiator proves it knows.
    pub user: String,
    pub secret: String,
    /// Name and secret the target answers with in mutual CHAP.
    pub muser: Option<String>,
    pub msecret: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthGroup {
    pub tag: u32,
    pub secrets: Vec<Secret>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Portal {
    /// An IPv4/IPv6 address; `0.0.0.0`, `[::]` or `*` match any local address.
    pub host: String,
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortalGroup {
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
    /// Address masks (`ANY`, `a.b.c.d/len`, `a.b.c.d`).
    pub netmasks: Vec<String>,
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
        }
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
        self.nodes.iter().find(|n| n.name.eq_ignore_ascii_case(name))
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
}

impl Config {
    /// The portal group whose portal matches the local address and port a
    /// connection arrived on.
    pub fn portal_group_of(&self, local: core::net::IpAddr, port: u16) -> Option<u32> {
        let _ = (local, port);
        None
    }

    /// Whether `initiator` connecting from `addr` through portal group `pg`
    /// may see and log in to `node`.
    pub fn allows(&self, node: &TargetNode, initiator: &str, addr: core::net::IpAddr, pg: u32) -> bool {
        let _ = (node, initiator, addr, pg);
        false
    }
}
