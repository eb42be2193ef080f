//! The connection as the endpoint drives it.

use crate::{Connection, Target};

impl Connection {
    /// Still logging in: may be evicted when every slot is taken.
    pub fn in_handshake(&self) -> bool {
        matches!(
            self.phase,
            crate::conn::Phase::Init | crate::conn::Phase::Connect
        )
    }
}

ironbay_bdev::target_engine_from_inherent!(Connection, Target, "NVMe-oF host");
