//! A NIC under smoltcp: buffer pools and the `phy::Device` tokens.
//!
//! Receive buffers stay posted to the device; a filled one is handed to
//! smoltcp through an `RxToken` and re-posted on the next call. Transmit
//! buffers come from a free list; a `TxToken` fills one and starts it, and
//! finished ones return to the list when the device reports them. If every
//! transmit buffer is in flight, smoltcp is told to wait (no token), which
//! keeps its data queued in the socket rather than dropped.

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

/// What the device glue needs from a NIC driver (virtio-drivers'
/// `VirtIONetRaw` in the kernel, a fake in tests).
///
/// # Safety
/// Buffers passed to `rx_begin`/`tx_begin` are handed to the device: the
/// implementation may let the device access them until the matching
/// `rx_complete`/`tx_complete`. Callers keep them alive and untouched until then.
pub unsafe trait NetDriver {
    fn mac(&self) -> [u8; 6];
    /// Bytes of driver header in front of every frame.
    fn header_len(&self) -> usize;
    /// Posts a receive buffer; returns its token or `None` if the ring is full.
    ///
    /// # Safety
    /// `buf` must stay valid and unaccessed until `rx_complete` with the token.
    unsafe fn rx_begin(&mut self, buf: &mut [u8]) -> Option<u16>;
    /// The token of the next filled receive buffer, if any.
    fn rx_ready(&mut self) -> Option<u16>;
    /// Takes back a filled buffer; returns the frame length after the header.
    ///
    /// # Safety
    /// `buf` must be the buffer posted under `token`.
    unsafe fn rx_complete(&mut self, token: u16, buf: &mut [u8]) -> Option<usize>;
    /// Starts sending `buf` (header included); `None` if the ring is full.
    ///
    /// # Safety
    /// `buf` must stay valid and unmodified until `tx_complete` with the token.
    unsafe fn tx_begin(&mut self, buf: &[u8]) -> Option<u16>;
    fn tx_done(&mut self) -> Option<u16>;
    /// # Safety
    /// `buf` must be the buffer sent under `token`.
    unsafe fn tx_complete(&mut self, token: u16, buf: &[u8]);
}

/// Counters for the status page and tests.
#[derive(Clone, Copy, Debug, Default)]
pub struct RxStats {
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// Frames smoltcp built that the device could not take.
    pub tx_dropped: u64,
    pub rx_errors: u64,
}

pub struct NetDevice<D: NetDriver> {
    driver: D,
    mtu: usize,
    rx_bufs: Vec<Box<[u8]>>,
    /// Buffer index for each posted token.
    rx_posted: Vec<Option<usize>>,
    /// Filled buffers waiting for smoltcp: (index, frame length).
    rx_ready: VecDeque<(usize, usize)>,
    /// Buffers smoltcp has consumed, to post again.
    rx_spent: Vec<usize>,
    tx_bufs: Vec<Box<[u8]>>,
    tx_free: Vec<usize>,
    tx_posted: Vec<Option<usize>>,
    pub stats: RxStats,
}

const MAX_TOKENS: usize = 1024;

impl<D: NetDriver> NetDevice<D> {
    /// `rx` and `tx` buffers for frames of up to `mtu` bytes of IP payload.
    pub fn new(driver: D, mtu: usize, rx: usize, tx: usize) -> Self {
        let frame = driver.header_len() + mtu + 14;
        let mut d = NetDevice {
            mtu,
            rx_bufs: (0..rx)
                .map(|_| vec![0u8; frame.max(1526)].into_boxed_slice())
                .collect(),
            rx_posted: vec![None; MAX_TOKENS],
            rx_ready: VecDeque::with_capacity(rx),
            rx_spent: (0..rx).collect(),
            tx_bufs: (0..tx)
                .map(|_| vec![0u8; frame].into_boxed_slice())
                .collect(),
            tx_free: (0..tx).collect(),
            tx_posted: vec![None; MAX_TOKENS],
            stats: RxStats::default(),
            driver,
        };
        d.service();
        d
    }

    pub fn mac(&self) -> [u8; 6] {
        self.driver.mac()
    }

    pub fn driver_mut(&mut self) -> &mut D {
        &mut self.driver
    }

    /// Reclaims sent buffers, collects received frames and re-posts spent
    /// buffers. Returns true if anything happened.
    pub fn service(&mut self) -> bool {
        let mut busy = false;
        while let Some(token) = self.driver.tx_done() {
            let Some(i) = self
                .tx_posted
                .get_mut(token as usize)
                .and_then(Option::take)
            else {
                break;
            };
            // SAFETY: `i` is the buffer sent under `token` (recorded in tx_begin).
            unsafe { self.driver.tx_complete(token, &self.tx_bufs[i]) };
            self.tx_free.push(i);
            busy = true;
        }
        while let Some(token) = self.driver.rx_ready() {
            let Some(i) = self
                .rx_posted
                .get_mut(token as usize)
                .and_then(Option::take)
            else {
                break;
            };
            // SAFETY: `i` is the buffer posted under `token`.
            match unsafe { self.driver.rx_complete(token, &mut self.rx_bufs[i]) } {
                Some(len) if len > 0 => self.rx_ready.push_back((i, len)),
                _ => {
                    self.stats.rx_errors += 1;
                    self.rx_spent.push(i);
                }
            }
            busy = true;
        }
        while let Some(i) = self.rx_spent.pop() {
            // SAFETY: the buffer is owned by the pool, boxed (never moves) and
            // untouched until the device returns it under this token.
            match unsafe { self.driver.rx_begin(&mut self.rx_bufs[i]) } {
                Some(token) if (token as usize) < MAX_TOKENS => {
                    self.rx_posted[token as usize] = Some(i)
                }
                _ => {
                    self.rx_spent.push(i);
                    break;
                }
            }
        }
        busy
    }

    pub fn has_rx(&self) -> bool {
        !self.rx_ready.is_empty()
    }
}

pub struct RxToken<'a> {
    frame: &'a [u8],
    spent: &'a mut Vec<usize>,
    index: usize,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let r = f(self.frame);
        self.spent.push(self.index);
        r
    }
}

pub struct TxToken<'a, D: NetDriver> {
    driver: &'a mut D,
    bufs: &'a mut [Box<[u8]>],
    free: &'a mut Vec<usize>,
    posted: &'a mut [Option<usize>],
    stats: &'a mut RxStats,
}

impl<D: NetDriver> phy::TxToken for TxToken<'_, D> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let hdr = self.driver.header_len();
        let Some(i) = self.free.pop() else {
            // transmit() only hands out tokens when a buffer is free.
            let mut scratch = vec![0u8; len];
            self.stats.tx_dropped += 1;
            return f(&mut scratch);
        };
        let buf = &mut self.bufs[i];
        let len = len.min(buf.len() - hdr);
        buf[..hdr].fill(0);
        let r = f(&mut buf[hdr..hdr + len]);
        // SAFETY: the buffer stays in the pool (boxed, not moved) and is not
        // touched again until `service` reclaims it under this token.
        match unsafe { self.driver.tx_begin(&buf[..hdr + len]) } {
            Some(token) if (token as usize) < self.posted.len() => {
                self.posted[token as usize] = Some(i);
                self.stats.tx_frames += 1;
                self.stats.tx_bytes += len as u64;
            }
            _ => {
                self.free.push(i);
                self.stats.tx_dropped += 1;
            }
        }
        r
    }
}

impl<D: NetDriver> phy::Device for NetDevice<D> {
    type RxToken<'a>
        = RxToken<'a>
    where
        Self: 'a;
    type TxToken<'a>
        = TxToken<'a, D>
    where
        Self: 'a;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken<'_>, TxToken<'_, D>)> {
        if self.rx_ready.is_empty() {
            self.service();
        }
        if self.tx_free.is_empty() {
            self.service();
            if self.tx_free.is_empty() {
                return None;
            }
        }
        let (index, len) = self.rx_ready.pop_front()?;
        let hdr = self.driver.header_len();
        self.stats.rx_frames += 1;
        self.stats.rx_bytes += len as u64;
        let frame = &self.rx_bufs[index][hdr..(hdr + len).min(self.rx_bufs[index].len())];
        let rx = RxToken {
            frame,
            spent: &mut self.rx_spent,
            index,
        };
        let tx = TxToken {
            driver: &mut self.driver,
            bufs: &mut self.tx_bufs,
            free: &mut self.tx_free,
            posted: &mut self.tx_posted,
            stats: &mut self.stats,
        };
        Some((rx, tx))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_, D>> {
        if self.tx_free.is_empty() {
            self.service();
            if self.tx_free.is_empty() {
                return None;
            }
        }
        Some(TxToken {
            driver: &mut self.driver,
            bufs: &mut self.tx_bufs,
            free: &mut self.tx_free,
            posted: &mut self.tx_posted,
            stats: &mut self.stats,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.mtu + 14;
        caps.max_burst_size = Some(self.tx_bufs.len());
        caps
    }
}
