//! A fake virtio-blk device for host tests: a `Transport` whose notify walks
//! the split virtqueue in (host) memory and serves requests from a RAM disk.
#![allow(
    unsafe_code,
    reason = "the fake device reads and writes guest rings and buffers by address"
)]

use crate::wire::{self, Features, req, status};
use core::ptr::NonNull;
use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::cell::RefCell;
use std::rc::Rc;
use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::{BufferDirection, Hal, PhysAddr};
use zerocopy::{FromBytes, IntoBytes};

/// DMA straight from the host heap: "physical" addresses are pointers.
pub struct TestHal;

// SAFETY: allocations are zeroed, page-aligned and live until dma_dealloc;
// addresses given to the device are the host pointers themselves, which the
// fake device dereferences.
unsafe impl Hal for TestHal {
    fn dma_alloc(pages: usize, _dir: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let layout = Layout::from_size_align(pages * 4096, 4096).unwrap();
        // SAFETY: layout has non-zero size.
        let p = NonNull::new(unsafe { alloc_zeroed(layout) }).expect("test allocation");
        (p.as_ptr() as PhysAddr, p)
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
        // SAFETY: allocated by dma_alloc with this layout.
        unsafe {
            dealloc(
                vaddr.as_ptr(),
                Layout::from_size_align(pages * 4096, 4096).unwrap(),
            )
        };
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        NonNull::new(paddr as *mut u8).unwrap()
    }

    unsafe fn share(buffer: NonNull<[u8]>, _dir: BufferDirection) -> PhysAddr {
        buffer.as_ptr() as *mut u8 as PhysAddr
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _dir: BufferDirection) {}
}

pub struct Disk {
    pub offered: u64,
    pub config: [u8; 60],
    pub data: Vec<u8>,
    /// Requests are served on notify unless held.
    pub hold: bool,
    pub requests: Vec<(u32, u64)>,
    pub fail_next: Option<u8>,
    queue: Option<(u64, u64, u64, u16)>,
    last_avail: u16,
    status: u32,
    pub negotiated: u64,
}

impl Disk {
    pub fn new(sectors: u64, offered: Features) -> Self {
        let mut config = [0u8; 60];
        config[0..8].copy_from_slice(&sectors.to_le_bytes());
        config[12..16].copy_from_slice(&254u32.to_le_bytes());
        config[20..24].copy_from_slice(&512u32.to_le_bytes());
        for (off, v) in [(36, 1u32 << 20), (40, 1), (48, 1 << 20), (52, 1)] {
            config[off..off + 4].copy_from_slice(&v.to_le_bytes());
        }
        Disk {
            offered: offered.bits(),
            config,
            data: vec![0; (sectors * 512) as usize],
            hold: false,
            requests: Vec::new(),
            fail_next: None,
            queue: None,
            last_avail: 0,
            status: 0,
            negotiated: 0,
        }
    }

    /// Serves every available request (the device side of the split ring).
    pub fn serve(&mut self) {
        let Some((desc, avail, used, size)) = self.queue else {
            return;
        };
        // SAFETY: the three areas were allocated by TestHal for a queue of
        // `size` entries and stay alive while the driver exists; the driver
        // does not touch the device-owned parts concurrently (single thread).
        unsafe {
            let avail_idx = std::ptr::read_volatile((avail + 2) as *const u16);
            while self.last_avail != avail_idx {
                let head = std::ptr::read_volatile(
                    (avail + 4 + 2 * (self.last_avail % size) as u64) as *const u16,
                );
                self.last_avail = self.last_avail.wrapping_add(1);
                let mut bufs: Vec<(u64, u32, bool)> = Vec::new();
                let mut i = head;
                loop {
                    let d = desc + 16 * i as u64;
                    let addr = std::ptr::read_volatile(d as *const u64);
                    let len = std::ptr::read_volatile((d + 8) as *const u32);
                    let flags = std::ptr::read_volatile((d + 12) as *const u16);
                    bufs.push((addr, len, flags & 2 != 0));
                    if flags & 1 == 0 {
                        break;
                    }
                    i = std::ptr::read_volatile((d + 14) as *const u16);
                }
                let written = self.execute(&bufs);
                let used_idx = std::ptr::read_volatile((used + 2) as *const u16);
                let e = used + 4 + 8 * (used_idx % size) as u64;
                std::ptr::write_volatile(e as *mut u32, head as u32);
                std::ptr::write_volatile((e + 4) as *mut u32, written);
                std::ptr::write_volatile((used + 2) as *mut u16, used_idx.wrapping_add(1));
            }
        }
    }

    /// # Safety
    /// Every buffer address must be a live host allocation of its length.
    unsafe fn execute(&mut self, bufs: &[(u64, u32, bool)]) -> u32 {
        // SAFETY: guaranteed by the caller.
        let slice = |(addr, len, _): (u64, u32, bool)| unsafe {
            std::slice::from_raw_parts_mut(addr as *mut u8, len as usize)
        };
        let hdr_kind = u32::from_le_bytes(slice(bufs[0])[..4].try_into().unwrap());
        let sector = u64::from_le_bytes(slice(bufs[0])[8..16].try_into().unwrap());
        self.requests.push((hdr_kind, sector));
        let status_buf = slice(*bufs.last().unwrap());
        let mut result = status::OK;
        let mut written = 1;
        let range = |s: u64, bytes: usize| (s * 512) as usize..(s * 512) as usize + bytes;
        match hdr_kind {
            req::IN => {
                let out = slice(bufs[1]);
                out.copy_from_slice(&self.data[range(sector, out.len())]);
                written += out.len() as u32;
            }
            req::OUT => {
                let src = slice(bufs[1]);
                let r = range(sector, src.len());
                self.data[r].copy_from_slice(src);
            }
            req::FLUSH => {}
            req::DISCARD | req::WRITE_ZEROES => {
                let seg = slice(bufs[1]);
                let s = u64::from_le_bytes(seg[0..8].try_into().unwrap());
                let n = u32::from_le_bytes(seg[8..12].try_into().unwrap());
                let r = range(s, n as usize * 512);
                self.data[r].fill(0);
            }
            _ => result = status::UNSUPP,
        }
        if let Some(code) = self.fail_next.take() {
            result = code;
        }
        status_buf[0] = result;
        written
    }
}

/// The transport side, sharing the disk with the test.
pub struct FakeTransport(pub Rc<RefCell<Disk>>);

impl Transport for FakeTransport {
    fn device_type(&self) -> DeviceType {
        DeviceType::Block
    }
    fn read_device_features(&mut self) -> u64 {
        self.0.borrow().offered
    }
    fn write_driver_features(&mut self, f: u64) {
        self.0.borrow_mut().negotiated = f;
    }
    fn max_queue_size(&mut self, _queue: u16) -> u32 {
        256
    }
    fn notify(&mut self, _queue: u16) {
        let mut d = self.0.borrow_mut();
        if !d.hold {
            d.serve();
        }
    }
    fn get_status(&self) -> DeviceStatus {
        DeviceStatus::from_bits_truncate(self.0.borrow().status)
    }
    fn set_status(&mut self, s: DeviceStatus) {
        self.0.borrow_mut().status = s.bits();
    }
    fn set_guest_page_size(&mut self, _size: u32) {}
    fn requires_legacy_layout(&self) -> bool {
        false
    }
    fn queue_set(
        &mut self,
        _queue: u16,
        size: u32,
        desc: PhysAddr,
        driver: PhysAddr,
        device: PhysAddr,
    ) {
        self.0.borrow_mut().queue = Some((desc, driver, device, size as u16));
    }
    fn queue_unset(&mut self, _queue: u16) {
        self.0.borrow_mut().queue = None;
    }
    fn queue_used(&mut self, _queue: u16) -> bool {
        self.0.borrow().queue.is_some()
    }
    fn ack_interrupt(&mut self) -> InterruptStatus {
        InterruptStatus::empty()
    }
    fn read_config_generation(&self) -> u32 {
        0
    }
    fn read_config_space<T: FromBytes + IntoBytes>(
        &self,
        offset: usize,
    ) -> virtio_drivers::Result<T> {
        let d = self.0.borrow();
        let bytes = d
            .config
            .get(offset..offset + size_of::<T>())
            .ok_or(virtio_drivers::Error::ConfigSpaceTooSmall)?;
        T::read_from_bytes(bytes).map_err(|_| virtio_drivers::Error::ConfigSpaceTooSmall)
    }
    fn write_config_space<T: IntoBytes + zerocopy::Immutable>(
        &mut self,
        _offset: usize,
        _value: T,
    ) -> virtio_drivers::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::VirtioBlk;
    use ironbay_bdev::{IoBuf, IoCompletion, IoOp, IoRequest, IoStatus, Registry, pattern};

    /// Everything we want except read-only, as QEMU offers for a writable disk.
    fn offered() -> Features {
        wire::WANTED - Features::RO
    }

    fn device(features: Features) -> (Rc<RefCell<Disk>>, Registry, ironbay_bdev::BdevId) {
        let disk = Rc::new(RefCell::new(Disk::new(8192, features)));
        let blk =
            VirtioBlk::<TestHal, _>::new(FakeTransport(Rc::clone(&disk)), "VirtioBlk0").unwrap();
        let mut reg = Registry::new();
        let id = reg.add(Box::new(blk)).unwrap();
        (disk, reg, id)
    }

    fn poll(reg: &mut Registry) -> Vec<IoCompletion> {
        let mut out = Vec::new();
        reg.poll(0, &mut out);
        out.into_iter().map(|(_, c)| c).collect()
    }

    #[test]
    fn negotiates_and_describes_the_disk() {
        let (disk, reg, id) = device(offered());
        let info = reg.info(id).unwrap();
        assert_eq!((info.block_size, info.num_blocks), (512, 8192));
        assert_eq!(
            info.io_types.to_string(),
            "read,write,flush,unmap,write_zeroes"
        );
        assert_eq!(info.queue_depth, 42);
        assert_eq!(disk.borrow().negotiated, offered().bits());
        let (_, reg, id) = device(Features::VERSION_1);
        assert_eq!(
            reg.info(id).unwrap().io_types.to_string(),
            "read,write,flush"
        );
    }

    #[test]
    fn many_requests_in_flight_complete_with_their_data() {
        let (disk, mut reg, id) = device(offered());
        disk.borrow_mut().hold = true;
        for i in 0..42u64 {
            let mut b = IoBuf::new(4096);
            pattern::fill(b.as_mut_slice(), "VirtioBlk0", i * 8, 512);
            reg.submit(
                id,
                IoRequest {
                    tag: i,
                    op: IoOp::Write { lba: i * 8, buf: b },
                    fua: false,
                },
                0,
            )
            .unwrap();
        }
        let full = reg.submit(
            id,
            IoRequest {
                tag: 99,
                op: IoOp::Flush,
                fua: false,
            },
            0,
        );
        assert!(full.is_err(), "43rd request must wait");
        assert_eq!(reg.in_flight(id), 42);
        assert!(poll(&mut reg).is_empty());
        disk.borrow_mut().serve();
        let done = poll(&mut reg);
        assert_eq!(done.len(), 42);
        assert!(done.iter().all(|c| c.status == IoStatus::Success));
        disk.borrow_mut().hold = false;
        for round in 0..3 {
            for i in 0..42u64 {
                let op = IoOp::Read {
                    lba: i * 8,
                    buf: IoBuf::new(4096),
                };
                reg.submit(
                    id,
                    IoRequest {
                        tag: round * 100 + i,
                        op,
                        fua: false,
                    },
                    0,
                )
                .unwrap();
            }
            for c in poll(&mut reg) {
                let lba = (c.tag % 100) * 8;
                assert_eq!(
                    pattern::check(c.buf.unwrap().as_slice(), "VirtioBlk0", lba, 512),
                    Ok(())
                );
            }
        }
    }

    #[test]
    fn flush_zeroes_discard_and_errors() {
        let (disk, mut reg, id) = device(offered());
        disk.borrow_mut().data[512 * 10] = 0xAA;
        for (tag, op) in [
            (1, IoOp::Flush),
            (2, IoOp::WriteZeroes { lba: 10, blocks: 2 }),
            (
                3,
                IoOp::Unmap {
                    lba: 100,
                    blocks: 8,
                },
            ),
        ] {
            reg.submit(
                id,
                IoRequest {
                    tag,
                    op,
                    fua: false,
                },
                0,
            )
            .unwrap();
        }
        assert!(poll(&mut reg).iter().all(|c| c.status.is_ok()));
        assert_eq!(disk.borrow().data[512 * 10], 0);
        let kinds: Vec<(u32, u64)> = disk.borrow().requests.clone();
        assert_eq!(
            kinds,
            vec![(req::FLUSH, 0), (req::WRITE_ZEROES, 0), (req::DISCARD, 0)]
        );
        disk.borrow_mut().fail_next = Some(status::IOERR);
        reg.submit(
            id,
            IoRequest {
                tag: 4,
                op: IoOp::Read {
                    lba: 0,
                    buf: IoBuf::new(512),
                },
                fua: false,
            },
            0,
        )
        .unwrap();
        let c = poll(&mut reg).pop().unwrap();
        assert_eq!(c.status, IoStatus::DeviceError(1));
        assert!(c.buf.is_some());
    }

    #[test]
    fn flush_without_a_write_cache_completes_at_once() {
        let (disk, mut reg, id) = device(Features::VERSION_1);
        reg.submit(
            id,
            IoRequest {
                tag: 1,
                op: IoOp::Flush,
                fua: false,
            },
            0,
        )
        .unwrap();
        assert_eq!(poll(&mut reg).pop().unwrap().status, IoStatus::Success);
        assert!(disk.borrow().requests.is_empty());
    }
}
