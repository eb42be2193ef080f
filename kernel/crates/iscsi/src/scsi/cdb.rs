//! Operation codes, CDB field access and the table of supported commands
//! (REPORT SUPPORTED OPERATION CODES).

/// Operation codes this target knows.
pub mod op {
    pub const TEST_UNIT_READY: u8 = 0x00;
    pub const REQUEST_SENSE: u8 = 0x03;
    pub const READ_6: u8 = 0x08;
    pub const WRITE_6: u8 = 0x0a;
    pub const INQUIRY: u8 = 0x12;
    pub const MODE_SELECT_6: u8 = 0x15;
    pub const RESERVE_6: u8 = 0x16;
    pub const RELEASE_6: u8 = 0x17;
    pub const MODE_SENSE_6: u8 = 0x1a;
    pub const START_STOP_UNIT: u8 = 0x1b;
    pub const READ_CAPACITY_10: u8 = 0x25;
    pub const READ_10: u8 = 0x28;
    pub const WRITE_10: u8 = 0x2a;
    pub const WRITE_VERIFY_10: u8 = 0x2e;
    pub const VERIFY_10: u8 = 0x2f;
    pub const PRE_FETCH_10: u8 = 0x34;
    pub const SYNCHRONIZE_CACHE_10: u8 = 0x35;
    pub const READ_DEFECT_DATA_10: u8 = 0x37;
    pub const WRITE_SAME_10: u8 = 0x41;
    pub const UNMAP: u8 = 0x42;
    pub const MODE_SELECT_10: u8 = 0x55;
    pub const RESERVE_10: u8 = 0x56;
    pub const RELEASE_10: u8 = 0x57;
    pub const MODE_SENSE_10: u8 = 0x5a;
    pub const PERSISTENT_RESERVE_IN: u8 = 0x5e;
    pub const PERSISTENT_RESERVE_OUT: u8 = 0x5f;
    pub const READ_16: u8 = 0x88;
    pub const COMPARE_AND_WRITE: u8 = 0x89;
    pub const WRITE_16: u8 = 0x8a;
    pub const ORWRITE_16: u8 = 0x8b;
    pub const WRITE_VERIFY_16: u8 = 0x8e;
    pub const VERIFY_16: u8 = 0x8f;
    pub const PRE_FETCH_16: u8 = 0x90;
    pub const SYNCHRONIZE_CACHE_16: u8 = 0x91;
    pub const WRITE_SAME_16: u8 = 0x93;
    pub const WRITE_ATOMIC_16: u8 = 0x9c;
    pub const SERVICE_ACTION_IN_16: u8 = 0x9e;
    pub const REPORT_LUNS: u8 = 0xa0;
    pub const MAINTENANCE_IN: u8 = 0xa3;
    pub const READ_12: u8 = 0xa8;
    pub const WRITE_12: u8 = 0xaa;
    pub const WRITE_VERIFY_12: u8 = 0xae;
    pub const VERIFY_12: u8 = 0xaf;
    pub const READ_DEFECT_DATA_12: u8 = 0xb7;

    /// SERVICE ACTION IN (16) service actions.
    pub const SA_READ_CAPACITY_16: u16 = 0x10;
    pub const SA_GET_LBA_STATUS: u16 = 0x12;
    /// MAINTENANCE IN service action.
    pub const SA_REPORT_SUPPORTED_OPCODES: u16 = 0x0c;
    /// PERSISTENT RESERVE IN service actions.
    pub const PRIN_READ_KEYS: u16 = 0x00;
    pub const PRIN_READ_RESERVATION: u16 = 0x01;
    pub const PRIN_REPORT_CAPABILITIES: u16 = 0x02;
    pub const PRIN_READ_FULL_STATUS: u16 = 0x03;
    /// PERSISTENT RESERVE OUT service actions.
    pub const PROUT_REGISTER: u16 = 0x00;
    pub const PROUT_RESERVE: u16 = 0x01;
    pub const PROUT_RELEASE: u16 = 0x02;
    pub const PROUT_CLEAR: u16 = 0x03;
    pub const PROUT_PREEMPT: u16 = 0x04;
    pub const PROUT_PREEMPT_AND_ABORT: u16 = 0x05;
    pub const PROUT_REGISTER_AND_IGNORE: u16 = 0x06;
}

/// Read-only view of a CDB; bytes past its end read as zero, so a short
/// CDB cannot make parsing fail.
#[derive(Clone, Copy)]
pub struct Cdb<'a>(pub &'a [u8]);

impl Cdb<'_> {
    pub fn b(&self, i: usize) -> u8 {
        self.0.get(i).copied().unwrap_or(0)
    }

    /// `n` (at most 8) big-endian bytes at `at`.
    pub fn be(&self, at: usize, n: usize) -> u64 {
        (0..n).fold(0, |v, k| v << 8 | self.b(at + k) as u64)
    }

    pub fn opcode(&self) -> u8 {
        self.b(0)
    }

    /// Service action (low five bits of byte 1).
    pub fn sa(&self) -> u16 {
        (self.b(1) & 0x1f) as u16
    }
}

/// Big-endian integer of `n` bytes at `at` in `d`, if present.
pub fn be_at(d: &[u8], at: usize, n: usize) -> Option<u64> {
    let s = d.get(at..at.checked_add(n)?)?;
    Some(s.iter().fold(0, |v, &b| v << 8 | b as u64))
}

/// A supported command: opcode, service action (if the opcode has
/// service actions) and the CDB usage bitmap SPC-4 6.35 reports.
pub struct OpInfo {
    pub op: u8,
    pub sa: Option<u16>,
    pub usage: &'static [u8],
    /// Only offered when the bdev can unmap.
    pub needs_unmap: bool,
}

const fn o(op: u8, usage: &'static [u8]) -> OpInfo {
    OpInfo {
        op,
        sa: None,
        usage,
        needs_unmap: false,
    }
}

const fn s(op: u8, sa: u16, usage: &'static [u8]) -> OpInfo {
    OpInfo {
        op,
        sa: Some(sa),
        usage,
        needs_unmap: false,
    }
}

/// Every supported command in opcode order. Usage bits mark the fields
/// the device server looks at; for service-action commands byte 1 holds
/// the service action itself.
pub static OPS: &[OpInfo] = &[
    o(op::TEST_UNIT_READY, &[0x00, 0, 0, 0, 0, 0]),
    o(op::REQUEST_SENSE, &[0x03, 0x01, 0, 0, 0xff, 0]),
    o(op::READ_6, &[0x08, 0x1f, 0xff, 0xff, 0xff, 0]),
    o(op::WRITE_6, &[0x0a, 0x1f, 0xff, 0xff, 0xff, 0]),
    o(op::INQUIRY, &[0x12, 0x01, 0xff, 0xff, 0xff, 0]),
    o(op::MODE_SELECT_6, &[0x15, 0x11, 0, 0, 0xff, 0]),
    o(op::RESERVE_6, &[0x16, 0, 0, 0, 0, 0]),
    o(op::RELEASE_6, &[0x17, 0, 0, 0, 0, 0]),
    o(op::MODE_SENSE_6, &[0x1a, 0x08, 0xff, 0xff, 0xff, 0]),
    o(op::START_STOP_UNIT, &[0x1b, 0x01, 0, 0x0f, 0xf7, 0]),
    o(
        op::READ_CAPACITY_10,
        &[0x25, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0x01, 0],
    ),
    o(
        op::READ_10,
        &[0x28, 0xf8, 0xff, 0xff, 0xff, 0xff, 0, 0xff, 0xff, 0],
    ),
    o(
        op::WRITE_10,
        &[0x2a, 0xfa, 0xff, 0xff, 0xff, 0xff, 0, 0xff, 0xff, 0],
    ),
    o(
        op::WRITE_VERIFY_10,
        &[0x2e, 0xf6, 0xff, 0xff, 0xff, 0xff, 0, 0xff, 0xff, 0],
    ),
    o(
        op::VERIFY_10,
        &[0x2f, 0xf6, 0xff, 0xff, 0xff, 0xff, 0, 0xff, 0xff, 0],
    ),
    o(
        op::PRE_FETCH_10,
        &[0x34, 0x02, 0xff, 0xff, 0xff, 0xff, 0, 0xff, 0xff, 0],
    ),
    o(
        op::SYNCHRONIZE_CACHE_10,
        &[0x35, 0x02, 0xff, 0xff, 0xff, 0xff, 0, 0xff, 0xff, 0],
    ),
    o(
        op::READ_DEFECT_DATA_10,
        &[0x37, 0, 0x1f, 0, 0, 0, 0, 0xff, 0xff, 0],
    ),
    o(
        op::WRITE_SAME_10,
        &[0x41, 0xfe, 0xff, 0xff, 0xff, 0xff, 0, 0xff, 0xff, 0],
    ),
    OpInfo {
        needs_unmap: true,
        ..o(op::UNMAP, &[0x42, 0x01, 0, 0, 0, 0, 0, 0xff, 0xff, 0])
    },
    o(
        op::MODE_SELECT_10,
        &[0x55, 0x11, 0, 0, 0, 0, 0, 0xff, 0xff, 0],
    ),
    o(op::RESERVE_10, &[0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
    o(op::RELEASE_10, &[0x57, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
    o(
        op::MODE_SENSE_10,
        &[0x5a, 0x18, 0xff, 0xff, 0, 0, 0, 0xff, 0xff, 0],
    ),
    s(op::PERSISTENT_RESERVE_IN, op::PRIN_READ_KEYS, PRIN_USAGE[0]),
    s(
        op::PERSISTENT_RESERVE_IN,
        op::PRIN_READ_RESERVATION,
        PRIN_USAGE[1],
    ),
    s(
        op::PERSISTENT_RESERVE_IN,
        op::PRIN_REPORT_CAPABILITIES,
        PRIN_USAGE[2],
    ),
    s(
        op::PERSISTENT_RESERVE_IN,
        op::PRIN_READ_FULL_STATUS,
        PRIN_USAGE[3],
    ),
    s(
        op::PERSISTENT_RESERVE_OUT,
        op::PROUT_REGISTER,
        PROUT_USAGE[0],
    ),
    s(
        op::PERSISTENT_RESERVE_OUT,
        op::PROUT_RESERVE,
        PROUT_USAGE[1],
    ),
    s(
        op::PERSISTENT_RESERVE_OUT,
        op::PROUT_RELEASE,
        PROUT_USAGE[2],
    ),
    s(op::PERSISTENT_RESERVE_OUT, op::PROUT_CLEAR, PROUT_USAGE[3]),
    s(
        op::PERSISTENT_RESERVE_OUT,
        op::PROUT_PREEMPT,
        PROUT_USAGE[4],
    ),
    s(
        op::PERSISTENT_RESERVE_OUT,
        op::PROUT_PREEMPT_AND_ABORT,
        PROUT_USAGE[5],
    ),
    s(
        op::PERSISTENT_RESERVE_OUT,
        op::PROUT_REGISTER_AND_IGNORE,
        PROUT_USAGE[6],
    ),
    o(
        op::READ_16,
        &[
            0x88, 0xf8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0,
            0,
        ],
    ),
    o(
        op::COMPARE_AND_WRITE,
        &[
            0x89, 0xfa, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0xff, 0, 0,
        ],
    ),
    o(
        op::WRITE_16,
        &[
            0x8a, 0xfa, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0,
            0,
        ],
    ),
    o(
        op::ORWRITE_16,
        &[
            0x8b, 0xf8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0,
            0,
        ],
    ),
    o(
        op::WRITE_VERIFY_16,
        &[
            0x8e, 0xf6, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0,
            0,
        ],
    ),
    o(
        op::VERIFY_16,
        &[
            0x8f, 0xf6, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0,
            0,
        ],
    ),
    o(
        op::PRE_FETCH_16,
        &[
            0x90, 0x02, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0,
            0,
        ],
    ),
    o(
        op::SYNCHRONIZE_CACHE_16,
        &[
            0x91, 0x02, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0,
            0,
        ],
    ),
    o(
        op::WRITE_SAME_16,
        &[
            0x93, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0,
            0,
        ],
    ),
    o(
        op::WRITE_ATOMIC_16,
        &[
            0x9c, 0xf8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0xff, 0xff, 0, 0,
        ],
    ),
    s(
        op::SERVICE_ACTION_IN_16,
        op::SA_READ_CAPACITY_16,
        &[
            0x9e, 0x10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0x01, 0,
        ],
    ),
    s(
        op::SERVICE_ACTION_IN_16,
        op::SA_GET_LBA_STATUS,
        &[
            0x9e, 0x12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0,
            0,
        ],
    ),
    o(
        op::REPORT_LUNS,
        &[0xa0, 0, 0xff, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0],
    ),
    s(
        op::MAINTENANCE_IN,
        op::SA_REPORT_SUPPORTED_OPCODES,
        &[
            0xa3, 0x0c, 0x87, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0,
        ],
    ),
    o(
        op::READ_12,
        &[
            0xa8, 0xf8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0,
        ],
    ),
    o(
        op::WRITE_12,
        &[
            0xaa, 0xfa, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0,
        ],
    ),
    o(
        op::WRITE_VERIFY_12,
        &[
            0xae, 0xf6, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0,
        ],
    ),
    o(
        op::VERIFY_12,
        &[
            0xaf, 0xf6, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0,
        ],
    ),
    o(
        op::READ_DEFECT_DATA_12,
        &[
            0xb7, 0x1f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0,
        ],
    ),
];

/// PERSISTENT RESERVE IN usage by service action: the allocation length.
const PRIN_USAGE: [&[u8]; 4] = [
    &[0x5e, 0x00, 0, 0, 0, 0, 0, 0xff, 0xff, 0],
    &[0x5e, 0x01, 0, 0, 0, 0, 0, 0xff, 0xff, 0],
    &[0x5e, 0x02, 0, 0, 0, 0, 0, 0xff, 0xff, 0],
    &[0x5e, 0x03, 0, 0, 0, 0, 0, 0xff, 0xff, 0],
];

/// PERSISTENT RESERVE OUT usage by service action: scope and type (where
/// the service action takes them) and the parameter list length.
const PROUT_USAGE: [&[u8]; 7] = [
    &[0x5f, 0x00, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0],
    &[0x5f, 0x01, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0],
    &[0x5f, 0x02, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0],
    &[0x5f, 0x03, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0],
    &[0x5f, 0x04, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0],
    &[0x5f, 0x05, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0],
    &[0x5f, 0x06, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0],
];

/// Whether `op` has service actions among the supported commands.
pub fn has_service_actions(opcode: u8) -> bool {
    OPS.iter().any(|i| i.op == opcode && i.sa.is_some())
}
