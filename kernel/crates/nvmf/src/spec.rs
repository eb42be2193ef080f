//! NVMe base specification 2.0 and Fabrics definitions the target needs:
//! the 64-byte submission queue entry, the 16-byte completion, opcodes and
//! status codes. Wire layouts only; no behaviour.

/// The discovery subsystem every NVMe-oF target serves.
pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";
/// Longest NQN (NVMe base 2.0, 4.5: 223 bytes, NUL-terminated in 256).
pub const MAX_NQN: usize = 223;
/// The well-known NVMe/TCP ports: I/O controllers and discovery.
pub const PORT_NVME: u16 = 4420;
pub const PORT_DISCOVERY: u16 = 8009;
/// NVMe 2.0 version (VS property, Identify VER).
pub const NVME_VERSION: u32 = 0x0002_0000;
/// Controller ID a host sends in an admin Connect to get any (dynamic model).
pub const CNTLID_DYNAMIC: u16 = 0xffff;

/// One submission queue entry, as the host sent it in a command capsule.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Sqe(pub [u8; 64]);

impl Sqe {
    fn dw(&self, i: usize) -> u32 {
        let o = i * 4;
        u32::from_le_bytes([self.0[o], self.0[o + 1], self.0[o + 2], self.0[o + 3]])
    }
    pub fn opcode(&self) -> u8 {
        self.0[0]
    }
    /// FUSE (bits 9:8 of CDW0).
    pub fn fuse(&self) -> u8 {
        self.0[1] & 0x3
    }
    /// PSDT (bits 15:14): 01b or 10b = SGLs (the only kind fabrics allow).
    pub fn psdt(&self) -> u8 {
        self.0[1] >> 6
    }
    pub fn cid(&self) -> u16 {
        u16::from_le_bytes([self.0[2], self.0[3]])
    }
    pub fn nsid(&self) -> u32 {
        self.dw(1)
    }
    /// Command dwords 10..=15 (`cdw(10)` .. `cdw(15)`); 2..=3 for fabrics.
    pub fn cdw(&self, i: usize) -> u32 {
        self.dw(i)
    }
    /// Fabrics command type (byte 4), for opcode [`OPC_FABRICS`].
    pub fn fctype(&self) -> u8 {
        self.0[4]
    }
    /// The first SGL descriptor (bytes 24..40).
    pub fn sgl(&self) -> SglDescriptor {
        let b = &self.0[24..40];
        SglDescriptor {
            address: u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
            length: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
            // Byte 15: type in bits 7:4, subtype in bits 3:0.
            kind: b[15] >> 4,
            subtype: b[15] & 0xf,
        }
    }
}

impl core::fmt::Debug for Sqe {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "Sqe(opc {:#04x} cid {} nsid {})",
            self.opcode(),
            self.cid(),
            self.nsid()
        )
    }
}

/// SGL descriptor types and subtypes NVMe/TCP uses (TCP transport 3.6.1).
pub const SGL_TYPE_DATA_BLOCK: u8 = 0x0;
pub const SGL_TYPE_TRANSPORT_DATA_BLOCK: u8 = 0x5;
/// Data block with subtype "offset": the data is in the capsule at `address`.
pub const SGL_SUBTYPE_OFFSET: u8 = 0x1;
/// Transport data block subtype 0xA: the transport moves the data (R2T / C2H).
pub const SGL_SUBTYPE_TRANSPORT: u8 = 0xa;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SglDescriptor {
    pub address: u64,
    pub length: u32,
    pub kind: u8,
    pub subtype: u8,
}

impl SglDescriptor {
    /// Data that travels inside the command capsule.
    pub fn in_capsule(&self) -> bool {
        self.kind == SGL_TYPE_DATA_BLOCK && self.subtype == SGL_SUBTYPE_OFFSET
    }
    /// Data that the transport moves with R2T/H2CData or C2HData PDUs.
    pub fn transport(&self) -> bool {
        self.kind == SGL_TYPE_TRANSPORT_DATA_BLOCK && self.subtype == SGL_SUBTYPE_TRANSPORT
    }
}

/// A completion: what goes back in a CapsuleResp (SQ head and SQ id are
/// filled in by the queue pair).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cqe {
    pub dw0: u32,
    pub dw1: u32,
    pub sqhd: u16,
    pub sqid: u16,
    pub cid: u16,
    /// Status field without the phase bit: SC in bits 7:0, SCT in bits
    /// 10:8, CRD 12:11, More 13, DNR 14 (i.e. CQE DW3 bits 31:17).
    pub status: u16,
}

impl Cqe {
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..4].copy_from_slice(&self.dw0.to_le_bytes());
        b[4..8].copy_from_slice(&self.dw1.to_le_bytes());
        b[8..10].copy_from_slice(&self.sqhd.to_le_bytes());
        b[10..12].copy_from_slice(&self.sqid.to_le_bytes());
        b[12..14].copy_from_slice(&self.cid.to_le_bytes());
        // Phase tag (bit 0) is meaningless on fabrics and stays 0.
        b[14..16].copy_from_slice(&(self.status << 1).to_le_bytes());
        b
    }
}

/// A status: SCT (status code type) and SC, plus Do Not Retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    pub sct: u8,
    pub sc: u8,
    pub dnr: bool,
}

impl Status {
    pub const SUCCESS: Status = Status::generic(0x00);
    pub const INVALID_OPCODE: Status = Status::generic(0x01).no_retry();
    pub const INVALID_FIELD: Status = Status::generic(0x02).no_retry();
    pub const CID_CONFLICT: Status = Status::generic(0x03).no_retry();
    pub const DATA_TRANSFER_ERROR: Status = Status::generic(0x04);
    pub const INTERNAL: Status = Status::generic(0x06);
    pub const ABORTED_BY_REQUEST: Status = Status::generic(0x07);
    pub const ABORTED_SQ_DELETION: Status = Status::generic(0x08);
    pub const INVALID_NAMESPACE: Status = Status::generic(0x0b).no_retry();
    pub const COMMAND_SEQUENCE_ERROR: Status = Status::generic(0x0c).no_retry();
    pub const INVALID_SGL_DESCRIPTOR: Status = Status::generic(0x0d).no_retry();
    pub const DATA_SGL_LENGTH_INVALID: Status = Status::generic(0x0f).no_retry();
    pub const SGL_TYPE_INVALID: Status = Status::generic(0x11).no_retry();
    pub const SGL_OFFSET_INVALID: Status = Status::generic(0x16).no_retry();
    pub const HOST_ID_INCONSISTENT: Status = Status::generic(0x18).no_retry();
    pub const KEEP_ALIVE_EXPIRED: Status = Status::generic(0x19);
    pub const KEEP_ALIVE_INVALID: Status = Status::generic(0x1a).no_retry();
    pub const LBA_OUT_OF_RANGE: Status = Status::generic(0x80).no_retry();
    pub const CAPACITY_EXCEEDED: Status = Status::generic(0x81).no_retry();
    pub const NAMESPACE_NOT_READY: Status = Status::generic(0x82);

    // Command specific (SCT 1).
    pub const INVALID_QUEUE_ID: Status = Status::specific(0x01);
    pub const INVALID_QUEUE_SIZE: Status = Status::specific(0x02);
    pub const ABORT_LIMIT_EXCEEDED: Status = Status::specific(0x03);
    pub const ASYNC_EVENT_LIMIT_EXCEEDED: Status = Status::specific(0x05);
    pub const INVALID_LOG_PAGE: Status = Status::specific(0x09);
    pub const FEATURE_NOT_SAVEABLE: Status = Status::specific(0x0d);
    pub const FEATURE_NOT_CHANGEABLE: Status = Status::specific(0x0e);
    /// Fabrics Connect (SCT 1): incompatible format, controller busy,
    /// invalid parameters, restart discovery, invalid host.
    pub const CONNECT_INCOMPATIBLE_FORMAT: Status = Status::specific(0x80);
    pub const CONNECT_CONTROLLER_BUSY: Status = Status::specific(0x81);
    pub const CONNECT_INVALID_PARAMETERS: Status = Status::specific(0x82);
    pub const CONNECT_INVALID_HOST: Status = Status::specific(0x84);
    /// Property Set/Get on an unknown or read-only offset.
    pub const INVALID_PARAMETER: Status = Status::specific(0x82);
    /// NVM command set (SCT 1): conflicting attributes, invalid protection
    /// info, write to read-only range.
    pub const CONFLICTING_ATTRIBUTES: Status = Status::specific(0x80);
    pub const WRITE_TO_READ_ONLY: Status = Status::specific(0x82);

    // Media and data integrity errors (SCT 2).
    pub const WRITE_FAULT: Status = Status::media(0x80);
    pub const UNRECOVERED_READ: Status = Status::media(0x81);
    pub const COMPARE_FAILURE: Status = Status::media(0x85).no_retry();
    pub const DEALLOCATED_OR_UNWRITTEN: Status = Status::media(0x87);

    pub const fn generic(sc: u8) -> Status {
        Status {
            sct: 0,
            sc,
            dnr: false,
        }
    }
    pub const fn specific(sc: u8) -> Status {
        Status {
            sct: 1,
            sc,
            dnr: true,
        }
    }
    pub const fn media(sc: u8) -> Status {
        Status {
            sct: 2,
            sc,
            dnr: false,
        }
    }
    pub const fn no_retry(self) -> Status {
        Status { dnr: true, ..self }
    }
    pub fn is_success(&self) -> bool {
        self.sct == 0 && self.sc == 0
    }
    /// The CQE status field (see [`Cqe::status`]).
    pub fn field(&self) -> u16 {
        self.sc as u16 | ((self.sct as u16 & 0x7) << 8) | if self.dnr { 1 << 14 } else { 0 }
    }
}

// Admin opcodes.
pub const ADM_DELETE_SQ: u8 = 0x00;
pub const ADM_CREATE_SQ: u8 = 0x01;
pub const ADM_GET_LOG_PAGE: u8 = 0x02;
pub const ADM_DELETE_CQ: u8 = 0x04;
pub const ADM_CREATE_CQ: u8 = 0x05;
pub const ADM_IDENTIFY: u8 = 0x06;
pub const ADM_ABORT: u8 = 0x08;
pub const ADM_SET_FEATURES: u8 = 0x09;
pub const ADM_GET_FEATURES: u8 = 0x0a;
pub const ADM_ASYNC_EVENT_REQUEST: u8 = 0x0c;
pub const ADM_KEEP_ALIVE: u8 = 0x18;

// Fabrics (opcode 0x7f, command type in byte 4).
pub const OPC_FABRICS: u8 = 0x7f;
pub const FCTYPE_PROPERTY_SET: u8 = 0x00;
pub const FCTYPE_CONNECT: u8 = 0x01;
pub const FCTYPE_PROPERTY_GET: u8 = 0x04;
pub const FCTYPE_AUTH_SEND: u8 = 0x05;
pub const FCTYPE_AUTH_RECV: u8 = 0x06;
pub const FCTYPE_DISCONNECT: u8 = 0x08;

// NVM command set opcodes.
pub const NVM_FLUSH: u8 = 0x00;
pub const NVM_WRITE: u8 = 0x01;
pub const NVM_READ: u8 = 0x02;
pub const NVM_WRITE_UNCORRECTABLE: u8 = 0x04;
pub const NVM_COMPARE: u8 = 0x05;
pub const NVM_WRITE_ZEROES: u8 = 0x08;
pub const NVM_DATASET_MANAGEMENT: u8 = 0x09;

// Controller properties (Fabrics Property Get/Set offsets).
pub const PROP_CAP: u32 = 0x00;
pub const PROP_VS: u32 = 0x08;
pub const PROP_CC: u32 = 0x14;
pub const PROP_CSTS: u32 = 0x1c;
pub const PROP_NSSR: u32 = 0x20;

// Log page identifiers.
pub const LOG_ERROR: u8 = 0x01;
pub const LOG_SMART: u8 = 0x02;
pub const LOG_FIRMWARE_SLOT: u8 = 0x03;
pub const LOG_CHANGED_NS: u8 = 0x04;
pub const LOG_COMMANDS_EFFECTS: u8 = 0x05;
pub const LOG_DISCOVERY: u8 = 0x70;

// Feature identifiers.
pub const FEAT_ARBITRATION: u8 = 0x01;
pub const FEAT_POWER_MANAGEMENT: u8 = 0x02;
pub const FEAT_TEMPERATURE_THRESHOLD: u8 = 0x04;
pub const FEAT_ERROR_RECOVERY: u8 = 0x05;
pub const FEAT_VOLATILE_WRITE_CACHE: u8 = 0x06;
pub const FEAT_NUMBER_OF_QUEUES: u8 = 0x07;
pub const FEAT_WRITE_ATOMICITY: u8 = 0x0a;
pub const FEAT_ASYNC_EVENT_CONFIG: u8 = 0x0b;
pub const FEAT_KEEP_ALIVE_TIMER: u8 = 0x0f;
pub const FEAT_HOST_IDENTIFIER: u8 = 0x81;

// Identify CNS values.
pub const CNS_NAMESPACE: u8 = 0x00;
pub const CNS_CONTROLLER: u8 = 0x01;
pub const CNS_ACTIVE_NS_LIST: u8 = 0x02;
pub const CNS_NS_DESCRIPTORS: u8 = 0x03;
pub const CNS_CSI_NAMESPACE: u8 = 0x05;
pub const CNS_CSI_CONTROLLER: u8 = 0x06;
pub const CNS_CSI_ACTIVE_NS_LIST: u8 = 0x07;
pub const CNS_CSI_INDEPENDENT_NAMESPACE: u8 = 0x08;
pub const CNS_COMMAND_SET_LIST: u8 = 0x1c;

/// Asynchronous event: type Notice, information "namespace attribute
/// changed", log page 04h (CQE DW0 layout).
pub const AEN_NS_ATTR_CHANGED: u32 = 0x02 | ((LOG_CHANGED_NS as u32) << 16);
/// Notice "discovery log page change", log page 70h.
pub const AEN_DISCOVERY_CHANGED: u32 = 0x02 | (0xf0 << 8) | ((LOG_DISCOVERY as u32) << 16);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_field_layout() {
        assert_eq!(Status::SUCCESS.field(), 0);
        assert_eq!(Status::INVALID_FIELD.field(), 0x4002);
        assert_eq!(Status::CONNECT_INVALID_HOST.field(), 0x4184);
        let cqe = Cqe {
            cid: 7,
            status: Status::INVALID_FIELD.field(),
            ..Cqe::default()
        };
        let b = cqe.to_bytes();
        assert_eq!(u16::from_le_bytes([b[12], b[13]]), 7);
        assert_eq!(u16::from_le_bytes([b[14], b[15]]) >> 1, 0x4002);
    }

    #[test]
    fn sqe_fields() {
        let mut raw = [0u8; 64];
        raw[0] = NVM_READ;
        raw[1] = 0x40;
        raw[2..4].copy_from_slice(&0x1234u16.to_le_bytes());
        raw[4..8].copy_from_slice(&1u32.to_le_bytes());
        raw[32..36].copy_from_slice(&4096u32.to_le_bytes());
        raw[39] = 0x5a;
        raw[40..44].copy_from_slice(&9u32.to_le_bytes());
        let s = Sqe(raw);
        assert_eq!(s.cid(), 0x1234);
        assert_eq!(s.nsid(), 1);
        assert_eq!(s.psdt(), 1);
        assert_eq!(s.cdw(10), 9);
        assert!(s.sgl().transport());
        assert_eq!(s.sgl().length, 4096);
    }
}
