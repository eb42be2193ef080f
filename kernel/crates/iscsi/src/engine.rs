//! The connection as the endpoint drives it.

use crate::{Connection, Target};

impl Connection {
    /// Still logging in: may be evicted when every slot is taken.
    pub fn in_handshake(&self) -> bool {
        self.phase == crate::conn::Phase::Login
    }
}

ironbay_bdev::target_engine_from_inherent!(Connection, Target, "iSCSI initiator");
