//! Sense data (SPC-4 4.5): keys, additional sense codes and the fixed
//! format the target returns.

use alloc::vec::Vec;

/// Sense keys.
pub mod key {
    pub const NO_SENSE: u8 = 0x00;
    pub const NOT_READY: u8 = 0x02;
    pub const MEDIUM_ERROR: u8 = 0x03;
    pub const HARDWARE_ERROR: u8 = 0x04;
    pub const ILLEGAL_REQUEST: u8 = 0x05;
    pub const UNIT_ATTENTION: u8 = 0x06;
    pub const DATA_PROTECT: u8 = 0x07;
    pub const ABORTED_COMMAND: u8 = 0x0b;
    pub const MISCOMPARE: u8 = 0x0e;
}

/// Additional sense code and qualifier pairs.
pub mod asc {
    pub const NONE: (u8, u8) = (0x00, 0x00);
    pub const LU_COMMUNICATION_TIMEOUT: (u8, u8) = (0x08, 0x01);
    pub const WRITE_ERROR: (u8, u8) = (0x0c, 0x00);
    pub const INVALID_FIELD_IN_IU: (u8, u8) = (0x0e, 0x03);
    pub const UNRECOVERED_READ_ERROR: (u8, u8) = (0x11, 0x00);
    pub const PARAMETER_LIST_LENGTH_ERROR: (u8, u8) = (0x1a, 0x00);
    pub const MISCOMPARE_DURING_VERIFY: (u8, u8) = (0x1d, 0x00);
    pub const INVALID_OPCODE: (u8, u8) = (0x20, 0x00);
    pub const LBA_OUT_OF_RANGE: (u8, u8) = (0x21, 0x00);
    pub const INVALID_FIELD_IN_CDB: (u8, u8) = (0x24, 0x00);
    pub const LU_NOT_SUPPORTED: (u8, u8) = (0x25, 0x00);
    pub const INVALID_FIELD_IN_PARAMETER_LIST: (u8, u8) = (0x26, 0x00);
    pub const INVALID_RELEASE_OF_PERSISTENT_RESERVATION: (u8, u8) = (0x26, 0x04);
    pub const WRITE_PROTECTED: (u8, u8) = (0x27, 0x00);
    pub const SPACE_ALLOCATION_FAILED: (u8, u8) = (0x27, 0x07);
    pub const POWER_ON_RESET: (u8, u8) = (0x29, 0x00);
    pub const BUS_DEVICE_RESET: (u8, u8) = (0x29, 0x03);
    pub const MODE_PARAMETERS_CHANGED: (u8, u8) = (0x2a, 0x01);
    pub const RESERVATIONS_PREEMPTED: (u8, u8) = (0x2a, 0x03);
    pub const RESERVATIONS_RELEASED: (u8, u8) = (0x2a, 0x04);
    pub const REGISTRATIONS_PREEMPTED: (u8, u8) = (0x2a, 0x05);
    pub const CAPACITY_DATA_CHANGED: (u8, u8) = (0x2a, 0x09);
    pub const SAVING_PARAMETERS_NOT_SUPPORTED: (u8, u8) = (0x39, 0x00);
    pub const REPORTED_LUNS_CHANGED: (u8, u8) = (0x3f, 0x0e);
    pub const INTERNAL_TARGET_FAILURE: (u8, u8) = (0x44, 0x00);
    pub const DATA_PHASE_ERROR: (u8, u8) = (0x4b, 0x00);
    pub const INSUFFICIENT_REGISTRATION_RESOURCES: (u8, u8) = (0x55, 0x04);
}

/// Length of fixed format sense data as this target builds it.
pub const FIXED_LEN: usize = 18;

/// Where in the CDB or parameter list a bad field is (sense key specific
/// field pointer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldPointer {
    /// In the CDB (true) or in the parameter data (false).
    pub in_cdb: bool,
    pub byte: u16,
    /// Bit of the field's most significant bit, when known.
    pub bit: Option<u8>,
}

/// One sense condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sense {
    pub key: u8,
    pub asc: u8,
    pub ascq: u8,
    /// INFORMATION field (VALID bit set when present).
    pub info: Option<u32>,
    pub field: Option<FieldPointer>,
}

impl Sense {
    pub const fn new(key: u8, code: (u8, u8)) -> Sense {
        Sense {
            key,
            asc: code.0,
            ascq: code.1,
            info: None,
            field: None,
        }
    }

    /// ILLEGAL REQUEST with `code` pointing at a CDB field.
    pub const fn cdb_field(code: (u8, u8), byte: u16, bit: Option<u8>) -> Sense {
        Sense {
            field: Some(FieldPointer {
                in_cdb: true,
                byte,
                bit,
            }),
            ..Sense::new(key::ILLEGAL_REQUEST, code)
        }
    }

    /// INVALID FIELD IN CDB at `byte` (and `bit`).
    pub const fn invalid_cdb(byte: u16, bit: Option<u8>) -> Sense {
        Sense::cdb_field(asc::INVALID_FIELD_IN_CDB, byte, bit)
    }

    /// INVALID FIELD IN PARAMETER LIST at `byte` (and `bit`).
    pub const fn invalid_param(byte: u16, bit: Option<u8>) -> Sense {
        Sense {
            field: Some(FieldPointer {
                in_cdb: false,
                byte,
                bit,
            }),
            ..Sense::new(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_PARAMETER_LIST)
        }
    }

    pub const fn illegal(code: (u8, u8)) -> Sense {
        Sense::new(key::ILLEGAL_REQUEST, code)
    }

    pub const fn lba_out_of_range() -> Sense {
        Sense::illegal(asc::LBA_OUT_OF_RANGE)
    }

    pub const fn write_protected() -> Sense {
        Sense::new(key::DATA_PROTECT, asc::WRITE_PROTECTED)
    }

    /// MISCOMPARE DURING VERIFY OPERATION with the offset of the first
    /// differing byte in INFORMATION.
    pub const fn miscompare(offset: u32) -> Sense {
        Sense {
            info: Some(offset),
            ..Sense::new(key::MISCOMPARE, asc::MISCOMPARE_DURING_VERIFY)
        }
    }

    /// Fixed format sense data (response code 70h, current error).
    pub fn to_fixed(&self) -> Vec<u8> {
        let mut s = alloc::vec![0u8; FIXED_LEN];
        s[0] = 0x70 | if self.info.is_some() { 0x80 } else { 0 };
        s[2] = self.key & 0x0f;
        s[3..7].copy_from_slice(&self.info.unwrap_or(0).to_be_bytes());
        s[7] = (FIXED_LEN - 8) as u8;
        s[12] = self.asc;
        s[13] = self.ascq;
        if let Some(f) = self.field {
            s[15] = 0x80 | if f.in_cdb { 0x40 } else { 0 } | f.bit.map_or(0, |b| 0x08 | (b & 7));
            s[16..18].copy_from_slice(&f.byte.to_be_bytes());
        }
        s
    }
}

/// Fixed format sense data for `key` / `asc` / `ascq`.
pub fn fixed(key: u8, asc: u8, ascq: u8) -> Vec<u8> {
    Sense::new(key, (asc, ascq)).to_fixed()
}
