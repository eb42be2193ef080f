//! NVMe base specification layouts: controller registers, submission and
//! completion queue entries, identify data.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

pub mod reg {
    pub const CAP: usize = 0x00;
    pub const VS: usize = 0x08;
    pub const CC: usize = 0x14;
    pub const CSTS: usize = 0x1C;
    pub const AQA: usize = 0x24;
    pub const ASQ: usize = 0x28;
    pub const ACQ: usize = 0x30;
    pub const DOORBELLS: usize = 0x1000;

    pub const CC_EN: u32 = 1 << 0;
    pub const CSTS_RDY: u32 = 1 << 0;
    pub const CSTS_CFS: u32 = 1 << 1;
}

/// Controller Capabilities.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cap(pub u64);

impl Cap {
    /// Maximum queue entries supported (1-based).
    pub fn max_queue_entries(self) -> u32 {
        (self.0 & 0xFFFF) as u32 + 1
    }
    /// Worst-case time for CSTS.RDY to change, in microseconds.
    pub fn timeout_us(self) -> u64 {
        ((self.0 >> 24) & 0xFF).max(1) * 500_000
    }
    /// Bytes between doorbell registers.
    pub fn doorbell_stride(self) -> usize {
        4 << ((self.0 >> 32) & 0xF)
    }
    pub fn nvm_command_set(self) -> bool {
        (self.0 >> 37) & 1 != 0
    }
    pub fn min_page_shift(self) -> u32 {
        12 + ((self.0 >> 48) & 0xF) as u32
    }
    pub fn max_page_shift(self) -> u32 {
        12 + ((self.0 >> 52) & 0xF) as u32
    }
}

/// Offset of queue `qid`'s submission tail (`completion` false) or
/// completion head doorbell.
pub fn doorbell(cap: Cap, qid: u16, completion: bool) -> usize {
    reg::DOORBELLS + (2 * qid as usize + completion as usize) * cap.doorbell_stride()
}

/// Submission queue entry.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct Command {
    pub opcode: u8,
    pub flags: u8,
    pub cid: u16,
    pub nsid: u32,
    pub cdw2: u32,
    pub cdw3: u32,
    pub mptr: u64,
    pub prp1: u64,
    pub prp2: u64,
    pub cdw10: u32,
    pub cdw11: u32,
    pub cdw12: u32,
    pub cdw13: u32,
    pub cdw14: u32,
    pub cdw15: u32,
}

const _: () = assert!(core::mem::size_of::<Command>() == 64);

/// Completion queue entry.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct Completion {
    pub result: u32,
    pub dw1: u32,
    pub sq_head: u16,
    pub sq_id: u16,
    pub cid: u16,
    /// Bit 0 is the phase tag; bits 1.. the status field.
    pub status: u16,
}

const _: () = assert!(core::mem::size_of::<Completion>() == 16);

impl Completion {
    pub fn phase(&self) -> bool {
        self.status & 1 != 0
    }
    /// Status code type and status code as one value, `(SCT << 8) | SC`; 0 is success.
    pub fn status_code(&self) -> u16 {
        let sc = (self.status >> 1) & 0xFF;
        let sct = (self.status >> 9) & 0x7;
        (sct << 8) | sc
    }
}

pub mod admin {
    pub const DELETE_SQ: u8 = 0x00;
    pub const CREATE_SQ: u8 = 0x01;
    pub const DELETE_CQ: u8 = 0x04;
    pub const CREATE_CQ: u8 = 0x05;
    pub const IDENTIFY: u8 = 0x06;
    pub const SET_FEATURES: u8 = 0x09;

    pub const CNS_NAMESPACE: u32 = 0x00;
    pub const CNS_CONTROLLER: u32 = 0x01;
    pub const CNS_ACTIVE_NAMESPACES: u32 = 0x02;
    pub const CNS_NS_DESCRIPTORS: u32 = 0x03;

    pub const FEAT_NUM_QUEUES: u32 = 0x07;
}

pub mod io {
    pub const FLUSH: u8 = 0x00;
    pub const WRITE: u8 = 0x01;
    pub const READ: u8 = 0x02;
    pub const WRITE_ZEROES: u8 = 0x08;
    pub const DATASET_MANAGEMENT: u8 = 0x09;

    /// CDW12 Force Unit Access.
    pub const FUA: u32 = 1 << 30;
    /// DSM CDW11 attribute: deallocate.
    pub const DSM_DEALLOCATE: u32 = 1 << 2;
}

/// Optional NVM commands, from Identify Controller ONCS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Oncs(pub u16);

impl Oncs {
    pub fn dataset_management(self) -> bool {
        self.0 & (1 << 2) != 0
    }
    pub fn write_zeroes(self) -> bool {
        self.0 & (1 << 3) != 0
    }
}

fn text(b: &[u8]) -> alloc::string::String {
    alloc::string::String::from_utf8_lossy(b)
        .trim_end_matches([' ', '\0'])
        .into()
}

/// The parts of Identify Controller the driver uses.
#[derive(Clone, Debug, Default)]
pub struct ControllerIdentity {
    pub vendor: u16,
    pub serial: alloc::string::String,
    pub model: alloc::string::String,
    pub firmware: alloc::string::String,
    /// Maximum data transfer as a power of two of the minimum page size; 0 = no limit.
    pub mdts: u8,
    pub controller_id: u16,
    pub namespaces: u32,
    pub oncs: Oncs,
    pub volatile_write_cache: bool,
}

impl ControllerIdentity {
    pub fn parse(d: &[u8; 4096]) -> Self {
        let u16_at = |o: usize| u16::from_le_bytes([d[o], d[o + 1]]);
        ControllerIdentity {
            vendor: u16_at(0),
            serial: text(&d[4..24]),
            model: text(&d[24..64]),
            firmware: text(&d[64..72]),
            mdts: d[77],
            controller_id: u16_at(78),
            namespaces: u32::from_le_bytes([d[516], d[517], d[518], d[519]]),
            oncs: Oncs(u16_at(520)),
            volatile_write_cache: d[525] & 1 != 0,
        }
    }
}

/// The parts of Identify Namespace the driver uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamespaceIdentity {
    pub size_blocks: u64,
    pub block_size: u32,
    /// Metadata bytes per block in the active format (unsupported when non-zero).
    pub metadata: u16,
    pub thin: bool,
    /// Deallocated blocks read as zeroes (DLFEAT bits 2:0 = 001b).
    pub dealloc_zeroes: bool,
    pub nguid: [u8; 16],
    pub eui64: [u8; 8],
}

impl NamespaceIdentity {
    pub fn parse(d: &[u8; 4096]) -> Self {
        let flbas = d[26];
        let nlbaf = d[25] as usize;
        let mut index = (flbas & 0xF) as usize;
        if nlbaf >= 16 {
            index |= (((flbas >> 5) & 0x3) as usize) << 4;
        }
        let f = 128 + 4 * index.min(63);
        let lbads = d[f + 2];
        NamespaceIdentity {
            size_blocks: u64::from_le_bytes(d[0..8].try_into().unwrap_or_default()),
            // LBADS below 9 is reserved; treat as unusable (size 0).
            block_size: if (9..=16).contains(&lbads) {
                1 << lbads
            } else {
                0
            },
            metadata: u16::from_le_bytes([d[f], d[f + 1]]),
            thin: d[24] & 1 != 0,
            dealloc_zeroes: d[33] & 0x7 == 1,
            nguid: d[104..120].try_into().unwrap_or_default(),
            eui64: d[120..128].try_into().unwrap_or_default(),
        }
    }
}

/// The namespace UUID from a Namespace Identification Descriptor list (CNS 3).
pub fn descriptor_uuid(d: &[u8; 4096]) -> Option<[u8; 16]> {
    let mut off = 0;
    while off + 4 <= d.len() {
        let (kind, len) = (d[off], d[off + 1] as usize);
        if kind == 0 || len == 0 {
            return None;
        }
        let body = d.get(off + 4..off + 4 + len)?;
        if kind == 3 && len == 16 {
            return body.try_into().ok();
        }
        off += 4 + len;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_fields() {
        // MQES 2047, TO 15 (7.5 s), DSTRD 0, CSS NVM, MPSMIN 0, MPSMAX 4.
        let cap = Cap(0x0040_2020_0f00_07ff);
        assert_eq!(cap.max_queue_entries(), 2048);
        assert_eq!(cap.timeout_us(), 7_500_000);
        assert_eq!(cap.doorbell_stride(), 4);
        assert!(cap.nvm_command_set());
        assert_eq!((cap.min_page_shift(), cap.max_page_shift()), (12, 16));
        assert_eq!(doorbell(cap, 0, false), 0x1000);
        assert_eq!(doorbell(cap, 0, true), 0x1004);
        assert_eq!(doorbell(cap, 3, true), 0x101C);
        let wide = Cap(2u64 << 32);
        assert_eq!(doorbell(wide, 1, false), 0x1000 + 2 * 16);
    }

    #[test]
    fn completion_status() {
        let c = Completion {
            status: (0x2 << 9) | (0x81 << 1) | 1,
            ..Default::default()
        };
        assert!(c.phase());
        assert_eq!(c.status_code(), 0x281);
    }

    #[test]
    fn identify_parsing() {
        let mut d = [0u8; 4096];
        d[4..12].copy_from_slice(b"SER12345");
        d[12..24].fill(b' ');
        d[24..34].copy_from_slice(b"QEMU NVMe ");
        d[34..64].fill(b' ');
        d[77] = 7;
        d[516] = 2;
        d[520] = 0b1100;
        d[525] = 1;
        let c = ControllerIdentity::parse(&d);
        assert_eq!(
            (c.serial.as_str(), c.model.as_str()),
            ("SER12345", "QEMU NVMe")
        );
        assert_eq!((c.mdts, c.namespaces), (7, 2));
        assert!(c.oncs.dataset_management() && c.oncs.write_zeroes() && c.volatile_write_cache);

        let mut n = [0u8; 4096];
        n[0..8].copy_from_slice(&8192u64.to_le_bytes());
        n[25] = 1;
        n[26] = 1; // format 1
        n[128 + 4 + 2] = 12;
        n[104] = 0xAB;
        let ns = NamespaceIdentity::parse(&n);
        assert_eq!(
            (ns.size_blocks, ns.block_size, ns.metadata),
            (8192, 4096, 0)
        );
        assert_eq!(ns.nguid[0], 0xAB);
        n[128 + 4 + 2] = 3;
        assert_eq!(NamespaceIdentity::parse(&n).block_size, 0);
    }

    #[test]
    fn descriptors() {
        let mut d = [0u8; 4096];
        d[0] = 1;
        d[1] = 8; // EUI64
        d[12] = 3;
        d[13] = 16;
        d[16..32].copy_from_slice(&[7; 16]);
        assert_eq!(descriptor_uuid(&d), Some([7; 16]));
        let mut bad = [0u8; 4096];
        bad[0] = 1;
        bad[1] = 255;
        bad[4092] = 0;
        assert_eq!(descriptor_uuid(&bad), None);
        d[1] = 250; // runs off the end
        d[255] = 0;
        let _ = descriptor_uuid(&d);
    }
}
