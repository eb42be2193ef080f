//! One NVMe/TCP connection (= one queue pair) as a state machine.

use ironbay_bdev::{BdevId, IoOp};

/// A block I/O the connection wants started. `tag` stays below 2^39.
#[derive(Debug)]
pub struct BlockIo {
    pub tag: u64,
    pub bdev: BdevId,
    pub op: IoOp,
    pub fua: bool,
}

pub struct Connection {}
