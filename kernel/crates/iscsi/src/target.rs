//! The target as a whole: the configuration plus what is live (sessions,
//! connections, per-LUN state shared by sessions). Connections take it by
//! `&mut` while they handle input, one at a time.

use crate::config::Config;
use alloc::string::String;
use alloc::vec::Vec;

/// One live connection, as `iscsi_get_connections` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnInfo {
    /// Engine-wide connection number.
    pub id: u32,
    pub cid: u16,
    pub tsih: u16,
    pub isid: [u8; 6],
    pub initiator_name: String,
    pub initiator_addr: String,
    /// Empty for discovery sessions.
    pub target_name: String,
    pub target_addr: String,
    pub portal_group_tag: u32,
    /// `login`, `full_feature`, `logged_out`.
    pub state: &'static str,
}

#[derive(Debug, Default)]
pub struct Target {
    pub config: Config,
    connections: Vec<ConnInfo>,
}

impl Target {
    pub fn new(config: Config) -> Self {
        Target {
            config,
            connections: Vec::new(),
        }
    }

    /// Live connections.
    pub fn connections(&self) -> &[ConnInfo] {
        &self.connections
    }
}
