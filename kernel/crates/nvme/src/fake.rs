//! A fake NVMe controller for host tests: registers, admin commands, queues
//! with phase tags, and I/O that is logged (with its PRP list) and completed,
//! held back, or failed on demand. Data is not moved.

use crate::hal::{DmaRegion, NvmeHal};
use crate::prp;
use crate::spec::{Command, Completion, admin, reg};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use zerocopy::{FromBytes, IntoBytes};

pub struct FakeDma {
    phys: u64,
    mem: Rc<RefCell<Vec<u8>>>,
}

impl DmaRegion for FakeDma {
    fn phys(&self) -> u64 {
        self.phys
    }
    fn len(&self) -> usize {
        self.mem.borrow().len()
    }
    fn read(&self, off: usize, out: &mut [u8]) {
        out.copy_from_slice(&self.mem.borrow()[off..off + out.len()]);
    }
    fn write(&mut self, off: usize, data: &[u8]) {
        self.mem.borrow_mut()[off..off + data.len()].copy_from_slice(data);
    }
}

#[derive(Clone, Copy, Debug)]
pub struct FakeNs {
    pub nsid: u32,
    pub blocks: u64,
    pub lbads: u8,
    pub metadata: u16,
}

pub struct Queue {
    sq: u64,
    cq: u64,
    depth: u16,
    head: u16,
    cq_tail: u16,
    phase: bool,
}

#[derive(Clone, Debug)]
pub struct Logged {
    pub qid: u16,
    pub cmd: Command,
    pub prp_list: Vec<u64>,
    pub dsm_range: Option<(u32, u64)>,
}

pub struct Device {
    pub regions: BTreeMap<u64, Rc<RefCell<Vec<u8>>>>,
    pub next_phys: u64,
    pub cap: u64,
    pub cc: u32,
    pub csts: u32,
    pub aqa: u32,
    pub asq: u64,
    pub acq: u64,
    pub queues: BTreeMap<u16, Queue>,
    pub cqs: BTreeMap<u16, (u64, u16)>,
    pub namespaces: Vec<FakeNs>,
    pub mdts: u8,
    pub oncs: u16,
    pub active_list: bool,
    pub ready_on_enable: bool,
    pub granted_queues: u16,
    pub hold_io: bool,
    pub held: Vec<(u16, Command)>,
    pub io_status: u16,
    pub log: Vec<Logged>,
    pub now: u64,
    /// Each clock read advances time by this much (so bounded waits end).
    pub clock_step: u64,
}

impl Default for Device {
    fn default() -> Self {
        Device {
            regions: BTreeMap::new(),
            next_phys: 0x10_0000,
            // MQES 63, CQR, TO 2 (1 s), DSTRD 0, NVM command set.
            cap: 63 | 1 << 16 | 2 << 24 | 1 << 37,
            cc: 0,
            csts: 0,
            aqa: 0,
            asq: 0,
            acq: 0,
            queues: BTreeMap::new(),
            cqs: BTreeMap::new(),
            namespaces: vec![FakeNs {
                nsid: 1,
                blocks: 1 << 20,
                lbads: 9,
                metadata: 0,
            }],
            mdts: 5,
            oncs: 0b1100,
            active_list: true,
            ready_on_enable: true,
            granted_queues: 2,
            hold_io: false,
            held: Vec::new(),
            io_status: 0,
            log: Vec::new(),
            now: 0,
            clock_step: 1,
        }
    }
}

impl Device {
    fn region(&self, phys: u64) -> Option<(u64, Rc<RefCell<Vec<u8>>>)> {
        let (&base, mem) = self.regions.range(..=phys).next_back()?;
        (phys < base + mem.borrow().len() as u64).then(|| (base, Rc::clone(mem)))
    }

    fn read_mem(&self, phys: u64, out: &mut [u8]) {
        let (base, mem) = self.region(phys).expect("device read outside DMA memory");
        let off = (phys - base) as usize;
        out.copy_from_slice(&mem.borrow()[off..off + out.len()]);
    }

    fn write_mem(&self, phys: u64, data: &[u8]) {
        let (base, mem) = self.region(phys).expect("device write outside DMA memory");
        let off = (phys - base) as usize;
        mem.borrow_mut()[off..off + data.len()].copy_from_slice(data);
    }

    fn post(&mut self, qid: u16, cid: u16, status: u16, result: u32) {
        let q = self.queues.get_mut(&qid).expect("queue");
        let cqe = Completion {
            result,
            dw1: 0,
            sq_head: q.head,
            sq_id: qid,
            cid,
            status: status << 1 | q.phase as u16,
        };
        let at = q.cq + q.cq_tail as u64 * 16;
        q.cq_tail += 1;
        if q.cq_tail == q.depth {
            q.cq_tail = 0;
            q.phase = !q.phase;
        }
        self.write_mem(at, cqe.as_bytes());
    }

    fn ring(&mut self, qid: u16, tail: u16) {
        loop {
            let Some(q) = self.queues.get_mut(&qid) else {
                return;
            };
            if q.head == tail {
                return;
            }
            let at = q.sq + q.head as u64 * 64;
            q.head = (q.head + 1) % q.depth;
            let mut raw = [0u8; 64];
            self.read_mem(at, &mut raw);
            let cmd = Command::read_from_bytes(&raw).expect("64 bytes");
            if qid == 0 {
                self.admin(cmd);
            } else {
                self.io(qid, cmd);
            }
        }
    }

    fn admin(&mut self, c: Command) {
        let (status, result) = match c.opcode {
            admin::IDENTIFY => {
                let mut d = [0u8; 4096];
                let mut status = 0;
                match c.cdw10 & 0xFF {
                    admin::CNS_CONTROLLER => {
                        d[4..14].copy_from_slice(b"FAKESERIAL");
                        d[24..33].copy_from_slice(b"Fake NVMe");
                        d[77] = self.mdts;
                        let nn = self.namespaces.iter().map(|n| n.nsid).max().unwrap_or(0);
                        d[516..520].copy_from_slice(&nn.to_le_bytes());
                        d[520..522].copy_from_slice(&self.oncs.to_le_bytes());
                        d[525] = 1;
                    }
                    admin::CNS_NAMESPACE => {
                        if let Some(n) = self.namespaces.iter().find(|n| n.nsid == c.nsid) {
                            d[0..8].copy_from_slice(&n.blocks.to_le_bytes());
                            d[128..130].copy_from_slice(&n.metadata.to_le_bytes());
                            d[130] = n.lbads;
                            d[104..120].fill(n.nsid as u8);
                        }
                    }
                    admin::CNS_ACTIVE_NAMESPACES if self.active_list => {
                        for (i, n) in self.namespaces.iter().enumerate() {
                            d[i * 4..i * 4 + 4].copy_from_slice(&n.nsid.to_le_bytes());
                        }
                    }
                    admin::CNS_NS_DESCRIPTORS if c.nsid == 1 => {
                        d[0] = 3;
                        d[1] = 16;
                        d[4..20].copy_from_slice(&[0x11; 16]);
                    }
                    _ => status = 0x02, // invalid field
                }
                if status == 0 {
                    self.write_mem(c.prp1, &d);
                }
                (status, 0)
            }
            admin::SET_FEATURES => {
                let g = self.granted_queues as u32 - 1;
                (0, g | g << 16)
            }
            admin::CREATE_CQ => {
                self.cqs
                    .insert(c.cdw10 as u16, (c.prp1, (c.cdw10 >> 16) as u16 + 1));
                (0, 0)
            }
            admin::CREATE_SQ => {
                let qid = c.cdw10 as u16;
                let (cq, depth) = self.cqs[&((c.cdw11 >> 16) as u16)];
                self.queues.insert(
                    qid,
                    Queue {
                        sq: c.prp1,
                        cq,
                        depth,
                        head: 0,
                        cq_tail: 0,
                        phase: true,
                    },
                );
                (0, 0)
            }
            _ => (0x01, 0), // invalid opcode
        };
        self.post(0, c.cid, status, result);
    }

    fn io(&mut self, qid: u16, c: Command) {
        let mut prp_list = Vec::new();
        let mut dsm_range = None;
        match c.opcode {
            0x01 | 0x02 => {
                let ns = self
                    .namespaces
                    .iter()
                    .find(|n| n.nsid == c.nsid)
                    .expect("namespace");
                let len = ((c.cdw12 & 0xFFFF) as usize + 1) << ns.lbads;
                if let prp::Prp2::List(n) = prp::plan(c.prp1, len, 4096) {
                    let mut raw = vec![0u8; n as usize * 8];
                    self.read_mem(c.prp2, &mut raw);
                    prp_list = raw
                        .chunks(8)
                        .map(|e| u64::from_le_bytes(e.try_into().unwrap()))
                        .collect();
                }
            }
            0x09 => {
                let mut r = [0u8; 16];
                self.read_mem(c.prp1, &mut r);
                dsm_range = Some((
                    u32::from_le_bytes(r[4..8].try_into().unwrap()),
                    u64::from_le_bytes(r[8..16].try_into().unwrap()),
                ));
            }
            _ => {}
        }
        self.log.push(Logged {
            qid,
            cmd: c,
            prp_list,
            dsm_range,
        });
        if self.hold_io {
            self.held.push((qid, c));
        } else {
            self.post(qid, c.cid, self.io_status, 0);
        }
    }

    /// Completes every held command with `status`.
    pub fn release_held(&mut self, status: u16) {
        for (qid, c) in std::mem::take(&mut self.held) {
            self.post(qid, c.cid, status, 0);
        }
    }

    fn set_cc(&mut self, v: u32) {
        self.cc = v;
        if v & reg::CC_EN != 0 {
            if self.ready_on_enable {
                self.csts |= reg::CSTS_RDY;
                let depth = (self.aqa & 0xFFF) as u16 + 1;
                self.queues.insert(
                    0,
                    Queue {
                        sq: self.asq,
                        cq: self.acq,
                        depth,
                        head: 0,
                        cq_tail: 0,
                        phase: true,
                    },
                );
            }
        } else {
            self.csts &= !reg::CSTS_RDY;
            self.queues.clear();
        }
    }
}

#[derive(Clone)]
pub struct FakeHal(pub Rc<RefCell<Device>>);

impl FakeHal {
    pub fn new(d: Device) -> Self {
        FakeHal(Rc::new(RefCell::new(d)))
    }
}

impl NvmeHal for FakeHal {
    type Dma = FakeDma;

    fn read32(&self, off: usize) -> u32 {
        let d = self.0.borrow();
        match off {
            reg::CAP => d.cap as u32,
            0x04 => (d.cap >> 32) as u32,
            reg::VS => 0x0001_0400,
            reg::CC => d.cc,
            reg::CSTS => d.csts,
            _ => 0,
        }
    }

    fn write32(&self, off: usize, v: u32) {
        let mut d = self.0.borrow_mut();
        match off {
            reg::CC => d.set_cc(v),
            reg::AQA => d.aqa = v,
            reg::ASQ => d.asq = (d.asq & !0xFFFF_FFFF) | v as u64,
            0x2C => d.asq = (d.asq & 0xFFFF_FFFF) | (v as u64) << 32,
            reg::ACQ => d.acq = (d.acq & !0xFFFF_FFFF) | v as u64,
            0x34 => d.acq = (d.acq & 0xFFFF_FFFF) | (v as u64) << 32,
            o if o >= reg::DOORBELLS => {
                let stride = 4usize << ((d.cap >> 32) & 0xF);
                let idx = (o - reg::DOORBELLS) / stride;
                if idx.is_multiple_of(2) {
                    d.ring((idx / 2) as u16, v as u16);
                }
            }
            _ => {}
        }
    }

    fn dma_alloc(&self, bytes: usize) -> Option<FakeDma> {
        let mut d = self.0.borrow_mut();
        let phys = d.next_phys;
        d.next_phys += (bytes as u64).next_multiple_of(4096) + 4096;
        let mem = Rc::new(RefCell::new(vec![0u8; bytes]));
        d.regions.insert(phys, Rc::clone(&mem));
        Some(FakeDma { phys, mem })
    }

    fn buffer_phys(&self, addr: usize) -> u64 {
        addr as u64
    }

    fn now_us(&self) -> u64 {
        let mut d = self.0.borrow_mut();
        d.now += d.clock_step;
        d.now
    }
}
