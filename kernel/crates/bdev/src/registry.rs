//! The named set of block devices, and the checks every request passes.

use crate::stats::IoStats;
use crate::types::{BdevInfo, BlockDevice, IoCompletion, IoOp, IoRequest, IoStatus, IoType};
use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::fmt;

/// A device shared between the registry (which still lists it) and the
/// stacked device that claimed it and drives it.
pub type SharedBdev = Rc<RefCell<Box<dyn BlockDevice>>>;

/// What the registry holds in place of a claimed device: its description,
/// kept current through resizes; I/O never reaches it (the registry refuses
/// requests to claimed devices before they get here).
struct ClaimedBdev {
    inner: Option<SharedBdev>,
    info: BdevInfo,
}

impl ClaimedBdev {
    fn placeholder() -> Self {
        ClaimedBdev {
            inner: None,
            info: BdevInfo::in_memory("", "", crate::Uuid::default(), 0, 512),
        }
    }
}

impl BlockDevice for ClaimedBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }
    fn submit(&mut self, req: IoRequest, _now_us: u64) -> Result<(), IoRequest> {
        Err(req)
    }
    fn poll(&mut self, _now_us: u64, _out: &mut Vec<IoCompletion>) -> usize {
        0
    }
    fn in_flight(&self) -> usize {
        0
    }
    fn allocation(&self, lba: u64, blocks: u64) -> Option<Vec<(u64, bool)>> {
        self.inner.as_ref()?.borrow().allocation(lba, blocks)
    }
    fn resize(&mut self, num_blocks: u64) -> Result<(), IoStatus> {
        let inner = self.inner.as_ref().ok_or(IoStatus::Unsupported)?;
        inner.borrow_mut().resize(num_blocks)?;
        self.info = inner.borrow().info().clone();
        Ok(())
    }
}

/// A registered device. Stale ids (of removed devices) find nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BdevId {
    index: u32,
    generation: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistryError {
    NameTaken(String),
    NotFound,
    /// The device still has I/O in flight.
    Busy,
    /// The device refused a new size (`Unsupported`: not that size,
    /// `NoMemory`: no memory for it).
    Resize(IoStatus),
    /// A stacked device (named) owns this one.
    Claimed(String),
    /// The device carries dirty bitmaps, which only see requests submitted
    /// through the registry: a stacked device's writes would go unseen.
    HasBitmaps,
}

impl fmt::Display for RegistryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegistryError::NameTaken(n) => write!(f, "a bdev named {n} already exists"),
            RegistryError::NotFound => write!(f, "no such bdev"),
            RegistryError::Busy => write!(f, "bdev has I/O in flight"),
            RegistryError::Resize(IoStatus::Unsupported) => {
                write!(f, "the bdev cannot take that size")
            }
            RegistryError::Resize(s) => write!(f, "cannot resize the bdev: {s}"),
            RegistryError::Claimed(by) => write!(f, "bdev is claimed by {by}"),
            RegistryError::HasBitmaps => write!(
                f,
                "bdev has dirty bitmaps, which would not see a stacked device's writes; \
                 remove them first"
            ),
        }
    }
}

struct InFlight {
    tag: u64,
    start_us: u64,
    io_type: IoType,
    bytes: u64,
}

/// Rate limits on one bdev, as SPDK's QoS sets them; 0 means unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QosLimits {
    pub ios_per_sec: u64,
    pub bytes_per_sec: u64,
    pub read_bytes_per_sec: u64,
    pub write_bytes_per_sec: u64,
}

impl QosLimits {
    pub fn is_unlimited(&self) -> bool {
        *self == QosLimits::default()
    }
}

/// Longest burst a limit allows: this much time's worth of allowance.
const QOS_BURST_US: u64 = 1000;
/// Requests waiting for allowance before submitters are pushed back.
const QOS_QUEUE: usize = 4096;
/// Allowance is kept in millionths so low rates accrue exactly.
const UNIT: i64 = 1_000_000;

struct Qos {
    limits: QosLimits,
    last_us: u64,
    /// Allowance in millionths: I/Os, bytes, read bytes, write bytes.
    left: [i64; 4],
    queue: VecDeque<(IoRequest, u64)>,
}

impl Qos {
    fn rates(&self) -> [u64; 4] {
        let l = self.limits;
        [
            l.ios_per_sec,
            l.bytes_per_sec,
            l.read_bytes_per_sec,
            l.write_bytes_per_sec,
        ]
    }

    /// Token buckets: allowance accrues with time, up to a short burst (and
    /// at least one whole unit, so slow rates still admit something).
    fn refill(&mut self, now_us: u64) {
        let elapsed = now_us.saturating_sub(self.last_us).min(QOS_BURST_US * 1000) as i64;
        self.last_us = now_us;
        let rates = self.rates();
        for (left, rate) in self.left.iter_mut().zip(rates) {
            let rate = rate.min(i64::MAX as u64 / (QOS_BURST_US * 1000)) as i64;
            let cap = (rate * QOS_BURST_US as i64).max(UNIT);
            *left = (*left + rate * elapsed).min(cap);
        }
    }

    /// Takes allowance for `op` if every limit has some left; one request
    /// may overdraw, and later ones wait until the debt is paid.
    fn admit(&mut self, op: &IoOp) -> bool {
        let bytes = op.data_bytes() as i64;
        let t = op.io_type();
        let costs = [
            1,
            bytes,
            if t == IoType::Read { bytes } else { 0 },
            if t == IoType::Write { bytes } else { 0 },
        ];
        let rates = self.rates();
        if (0..4).any(|i| rates[i] > 0 && costs[i] > 0 && self.left[i] <= 0) {
            return false;
        }
        for i in 0..4 {
            if rates[i] > 0 {
                self.left[i] -= costs[i].saturating_mul(UNIT);
            }
        }
        true
    }
}

struct Slot {
    dev: Box<dyn BlockDevice>,
    /// Set while a stacked device owns this one: `dev` is then a
    /// [`ClaimedBdev`] and the owner drives the device through the handle.
    claim: Option<(String, SharedBdev)>,
    qos: Option<Qos>,
    aliases: Vec<String>,
    stats: IoStats,
    in_flight: Vec<Option<InFlight>>,
    free: Vec<u32>,
    /// Marked by every write-like request submitted here.
    bitmaps: Vec<crate::dirty::DirtyBitmap>,
}

impl Slot {
    /// Bitmaps follow the device's size after it changed (one that cannot
    /// grow for want of memory shows as inconsistent).
    fn fit_bitmaps(&mut self) {
        let size = self.dev.info().size_bytes();
        for b in &mut self.bitmaps {
            b.resize(size);
        }
    }

    /// Hands a validated request to the device under an internal tag;
    /// latency counts from `start_us`, when the caller submitted it.
    fn dispatch(
        &mut self,
        mut req: IoRequest,
        start_us: u64,
        now_us: u64,
    ) -> Result<(), IoRequest> {
        let entry = InFlight {
            tag: req.tag,
            start_us,
            io_type: req.op.io_type(),
            bytes: req.op.data_bytes() as u64,
        };
        let internal = match self.free.pop() {
            Some(i) => {
                self.in_flight[i as usize] = Some(entry);
                i
            }
            None => {
                self.in_flight.push(Some(entry));
                (self.in_flight.len() - 1) as u32
            }
        };
        req.tag = internal as u64;
        match self.dev.submit(req, now_us) {
            Ok(()) => Ok(()),
            Err(mut req) => {
                let entry = self.in_flight[internal as usize].take();
                self.free.push(internal);
                req.tag = entry.map_or(0, |e| e.tag);
                Err(req)
            }
        }
    }

    /// Starts queued requests as far as the rate limits allow.
    fn release_queued(&mut self, now_us: u64) {
        let Some(mut q) = self.qos.take() else { return };
        q.refill(now_us);
        while let Some((req, start)) = q.queue.pop_front() {
            if !q.admit(&req.op) {
                q.queue.push_front((req, start));
                break;
            }
            if let Err(req) = self.dispatch(req, start, now_us) {
                q.queue.push_front((req, start));
                break;
            }
        }
        if !(q.limits.is_unlimited() && q.queue.is_empty()) {
            self.qos = Some(q);
        }
    }
}

/// Layer-wide options (SPDK's `bdev_set_options`). The pools they size in
/// SPDK do not exist here, as every request owns its buffer; they are kept so
/// a saved configuration round-trips.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BdevOptions {
    pub bdev_io_pool_size: u64,
    pub bdev_io_cache_size: u64,
    pub bdev_auto_examine: bool,
}

impl Default for BdevOptions {
    fn default() -> Self {
        BdevOptions {
            bdev_io_pool_size: 65535,
            bdev_io_cache_size: 256,
            bdev_auto_examine: true,
        }
    }
}

#[derive(Default)]
pub struct Registry {
    pub options: BdevOptions,
    /// The NVMe module's settings, kept so a saved configuration
    /// round-trips (see [`NvmeSettings`](crate::NvmeSettings)).
    pub nvme: crate::nvme_options::NvmeSettings,
    slots: Vec<Option<Slot>>,
    generations: Vec<u32>,
    /// Requests refused by validation, delivered at the next poll.
    rejected: VecDeque<(BdevId, IoCompletion, IoType)>,
    scratch: Vec<IoCompletion>,
    /// Where RAM bdevs take data pages; the heap when the owner set none.
    pages: Option<crate::ram::SharedPool>,
}

/// Checks a request against what the device says about itself.
fn validate(info: &BdevInfo, op: &IoOp) -> Result<(), IoStatus> {
    let t = op.io_type();
    if !info.io_types.contains(t) {
        return Err(IoStatus::Unsupported);
    }
    if info.read_only && matches!(t, IoType::Write | IoType::Unmap | IoType::WriteZeroes) {
        return Err(IoStatus::ReadOnly);
    }
    let bs = info.block_size as u64;
    let (lba, blocks) = match op {
        IoOp::Read { lba, buf } | IoOp::Write { lba, buf } => {
            let len = buf.len() as u64;
            if len == 0 || !len.is_multiple_of(bs) {
                return Err(IoStatus::Misaligned);
            }
            if len > info.max_transfer as u64 {
                return Err(IoStatus::TooLarge);
            }
            (*lba, len / bs)
        }
        IoOp::Unmap { lba, blocks } | IoOp::WriteZeroes { lba, blocks } => {
            if *blocks == 0 {
                return Err(IoStatus::Misaligned);
            }
            let max = if t == IoType::Unmap {
                info.max_unmap_blocks
            } else {
                info.max_write_zeroes_blocks
            };
            if *blocks > max {
                return Err(IoStatus::TooLarge);
            }
            (*lba, *blocks as u64)
        }
        IoOp::Flush => return Ok(()),
    };
    match lba.checked_add(blocks) {
        Some(end) if end <= info.num_blocks => Ok(()),
        _ => Err(IoStatus::OutOfRange),
    }
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes RAM bdevs created from now on take their pages from `pool`.
    pub fn set_page_pool(&mut self, pool: crate::ram::SharedPool) {
        self.pages = Some(pool);
    }

    /// The pool RAM bdevs take pages from.
    pub fn page_pool(&mut self) -> crate::ram::SharedPool {
        self.pages
            .get_or_insert_with(crate::ram::HeapPages::unlimited)
            .clone()
    }

    fn slot(&self, id: BdevId) -> Option<&Slot> {
        let live = self.generations.get(id.index as usize) == Some(&id.generation);
        self.slots.get(id.index as usize)?.as_ref().filter(|_| live)
    }

    fn slot_mut(&mut self, id: BdevId) -> Option<&mut Slot> {
        let live = self.generations.get(id.index as usize) == Some(&id.generation);
        self.slots
            .get_mut(id.index as usize)?
            .as_mut()
            .filter(|_| live)
    }

    /// Registers a device under its own name.
    pub fn add(&mut self, dev: Box<dyn BlockDevice>) -> Result<BdevId, RegistryError> {
        let name = dev.info().name.clone();
        if self.find(&name).is_some() {
            return Err(RegistryError::NameTaken(name));
        }
        let slot = Slot {
            dev,
            claim: None,
            qos: None,
            aliases: Vec::new(),
            stats: IoStats::default(),
            in_flight: Vec::new(),
            free: Vec::new(),
            bitmaps: Vec::new(),
        };
        let index = match self.slots.iter().position(Option::is_none) {
            Some(i) => {
                self.slots[i] = Some(slot);
                i
            }
            None => {
                self.slots.push(Some(slot));
                self.generations.push(0);
                self.slots.len() - 1
            }
        };
        Ok(BdevId {
            index: index as u32,
            generation: self.generations[index],
        })
    }

    /// Unregisters a device with nothing in flight and hands it back.
    pub fn remove(&mut self, id: BdevId) -> Result<Box<dyn BlockDevice>, RegistryError> {
        let slot = self.slot(id).ok_or(RegistryError::NotFound)?;
        if let Some((by, _)) = &slot.claim {
            return Err(RegistryError::Claimed(by.clone()));
        }
        if !slot.bitmaps.is_empty() {
            return Err(RegistryError::HasBitmaps);
        }
        let queued = slot.qos.as_ref().is_some_and(|q| !q.queue.is_empty());
        if queued || slot.dev.in_flight() > 0 || slot.in_flight.iter().any(Option::is_some) {
            return Err(RegistryError::Busy);
        }
        let slot = self.slots[id.index as usize]
            .take()
            .ok_or(RegistryError::NotFound)?;
        self.generations[id.index as usize] += 1;
        Ok(slot.dev)
    }

    /// Hands a device to a stacked device (`by`: the owner's name, for
    /// messages). The device keeps its name and shows as claimed; requests
    /// from anyone else fail, and removal is refused until [`release`].
    /// The owner submits and polls through the returned handle.
    ///
    /// [`release`]: Registry::release
    pub fn claim(&mut self, id: BdevId, by: &str) -> Result<SharedBdev, RegistryError> {
        let slot = self.slot(id).ok_or(RegistryError::NotFound)?;
        if let Some((by, _)) = &slot.claim {
            return Err(RegistryError::Claimed(by.clone()));
        }
        if !slot.bitmaps.is_empty() {
            return Err(RegistryError::HasBitmaps);
        }
        let queued = slot.qos.as_ref().is_some_and(|q| !q.queue.is_empty());
        if queued || slot.dev.in_flight() > 0 || slot.in_flight.iter().any(Option::is_some) {
            return Err(RegistryError::Busy);
        }
        let slot = self.slot_mut(id).ok_or(RegistryError::NotFound)?;
        let info = slot.dev.info().clone();
        let dev = core::mem::replace(&mut slot.dev, Box::new(ClaimedBdev::placeholder()));
        let shared: SharedBdev = Rc::new(RefCell::new(dev));
        slot.dev = Box::new(ClaimedBdev {
            inner: Some(shared.clone()),
            info,
        });
        slot.claim = Some((by.into(), shared.clone()));
        Ok(shared)
    }

    /// Ends a claim: the device serves requests through the registry again.
    /// The owner must have dropped every handle but the one it passes back.
    pub fn release(&mut self, id: BdevId, handle: SharedBdev) -> Result<(), RegistryError> {
        let slot = self.slot_mut(id).ok_or(RegistryError::NotFound)?;
        let Some((by, own)) = slot.claim.take() else {
            return Ok(());
        };
        drop(own);
        slot.dev = Box::new(ClaimedBdev::placeholder());
        match Rc::try_unwrap(handle) {
            Ok(cell) => {
                slot.dev = cell.into_inner();
                Ok(())
            }
            Err(handle) => {
                let info = handle.borrow().info().clone();
                slot.dev = Box::new(ClaimedBdev {
                    inner: Some(handle.clone()),
                    info,
                });
                slot.claim = Some((by.clone(), handle));
                Err(RegistryError::Claimed(by))
            }
        }
    }

    /// Runs `f` on the device as its own type, for the module that made it
    /// (its settings, the claim handle it gives back when deleted), claimed
    /// or not; `None` if `id` is stale or the device is not a `T` (see
    /// [`BlockDevice::as_any_mut`]). I/O still goes through [`submit`].
    ///
    /// [`submit`]: Registry::submit
    pub fn with_device<T: 'static, R>(
        &mut self,
        id: BdevId,
        f: impl FnOnce(&mut T) -> R,
    ) -> Option<R> {
        let slot = self.slot_mut(id)?;
        match &slot.claim {
            Some((_, h)) => {
                let mut dev = h.borrow_mut();
                dev.as_any_mut()?.downcast_mut::<T>().map(f)
            }
            None => slot.dev.as_any_mut()?.downcast_mut::<T>().map(f),
        }
    }

    /// Who owns the device, if a stacked device claimed it.
    pub fn claimed_by(&self, id: BdevId) -> Option<&str> {
        self.slot(id)?.claim.as_ref().map(|(by, _)| by.as_str())
    }

    pub fn add_alias(&mut self, id: BdevId, alias: &str) -> Result<(), RegistryError> {
        if self.find(alias).is_some() {
            return Err(RegistryError::NameTaken(alias.into()));
        }
        self.slot_mut(id)
            .ok_or(RegistryError::NotFound)?
            .aliases
            .push(alias.into());
        Ok(())
    }

    /// Looks a device up by name or alias.
    pub fn find(&self, name: &str) -> Option<BdevId> {
        self.ids().find(|&id| {
            self.slot(id)
                .is_some_and(|s| s.dev.info().name == name || s.aliases.iter().any(|a| a == name))
        })
    }

    pub fn ids(&self) -> impl Iterator<Item = BdevId> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_some())
            .map(|(i, _)| BdevId {
                index: i as u32,
                generation: self.generations[i],
            })
    }

    pub fn info(&self, id: BdevId) -> Option<&BdevInfo> {
        self.slot(id).map(|s| s.dev.info())
    }

    /// Drops an alias; false if the device had no such alias.
    pub fn remove_alias(&mut self, id: BdevId, alias: &str) -> bool {
        let Some(slot) = self.slot_mut(id) else {
            return false;
        };
        let before = slot.aliases.len();
        slot.aliases.retain(|a| a != alias);
        slot.aliases.len() != before
    }

    pub fn aliases(&self, id: BdevId) -> &[String] {
        self.slot(id).map_or(&[], |s| s.aliases.as_slice())
    }

    pub fn stats(&self, id: BdevId) -> Option<&IoStats> {
        self.slot(id).map(|s| &s.stats)
    }

    /// Allocation runs of a range, if the device tracks them (see
    /// [`BlockDevice::allocation`]).
    pub fn allocation(&self, id: BdevId, lba: u64, blocks: u64) -> Option<Vec<(u64, bool)>> {
        self.slot(id)?.dev.allocation(lba, blocks)
    }

    pub fn allocation_depth(&self, id: BdevId, lba: u64, blocks: u64) -> Option<Vec<(u64, u32)>> {
        self.slot(id)?.dev.allocation_depth(lba, blocks)
    }

    pub fn in_flight(&self, id: BdevId) -> usize {
        self.slot(id).map_or(0, |s| {
            s.dev.in_flight() + s.qos.as_ref().map_or(0, |q| q.queue.len())
        })
    }

    /// Changes a device's capacity to `num_blocks`. Requests already
    /// accepted finish as they were checked; new ones are checked against
    /// the new size. Users notice through [`BdevInfo::num_blocks`].
    pub fn resize(&mut self, id: BdevId, num_blocks: u64) -> Result<(), RegistryError> {
        let slot = self.slot_mut(id).ok_or(RegistryError::NotFound)?;
        let info = slot.dev.info();
        // The size in bytes must stay a u64.
        if num_blocks == 0 || num_blocks.checked_mul(info.block_size as u64).is_none() {
            return Err(RegistryError::Resize(IoStatus::Unsupported));
        }
        if num_blocks == info.num_blocks {
            return Ok(());
        }
        slot.dev.resize(num_blocks).map_err(RegistryError::Resize)?;
        slot.fit_bitmaps();
        Ok(())
    }

    /// Has a device re-read its description (see [`BlockDevice::refresh`]).
    pub fn refresh(&mut self, id: BdevId) {
        if let Some(slot) = self.slot_mut(id) {
            slot.dev.refresh();
            slot.fit_bitmaps();
        }
    }

    /// Re-reads the size of a claimed device after its owner or the
    /// hardware changed it.
    pub fn refresh_claimed(&mut self, id: BdevId) {
        if let Some(slot) = self.slot_mut(id)
            && let Some((_, h)) = &slot.claim
        {
            let info = h.borrow().info().clone();
            slot.dev = Box::new(ClaimedBdev {
                inner: Some(h.clone()),
                info,
            });
            slot.fit_bitmaps();
        }
    }

    /// Sets (or with all zeroes, lifts) the rate limits of a bdev.
    pub fn set_qos(&mut self, id: BdevId, limits: QosLimits) -> Result<(), RegistryError> {
        let slot = self.slot_mut(id).ok_or(RegistryError::NotFound)?;
        match &mut slot.qos {
            Some(q) => q.limits = limits,
            None if limits.is_unlimited() => {}
            None => {
                slot.qos = Some(Qos {
                    limits,
                    last_us: 0,
                    left: [UNIT; 4],
                    queue: VecDeque::new(),
                })
            }
        }
        Ok(())
    }

    pub fn qos(&self, id: BdevId) -> QosLimits {
        self.slot(id)
            .and_then(|s| s.qos.as_ref())
            .map_or(QosLimits::default(), |q| q.limits)
    }

    /// Starts a request. Invalid requests are accepted and complete with an
    /// error at the next poll; `Err` gives the request back only when the
    /// device queue is full.
    pub fn submit(&mut self, id: BdevId, req: IoRequest, now_us: u64) -> Result<(), IoRequest> {
        let io_type = req.op.io_type();
        let Some(slot) = self.slot_mut(id) else {
            let c = IoCompletion {
                tag: req.tag,
                status: IoStatus::DeviceFailed,
                buf: req.op.into_buf(),
            };
            self.rejected.push_back((id, c, io_type));
            return Ok(());
        };
        let checked = match slot.claim {
            Some(_) => Err(IoStatus::Claimed),
            None => validate(slot.dev.info(), &req.op),
        };
        if let Err(status) = checked {
            let c = IoCompletion {
                tag: req.tag,
                status,
                buf: req.op.into_buf(),
            };
            self.rejected.push_back((id, c, io_type));
            return Ok(());
        }
        if !slot.bitmaps.is_empty() {
            let bs = slot.dev.info().block_size as u64;
            let range = match &req.op {
                IoOp::Write { lba, buf } => Some((lba * bs, buf.len() as u64)),
                IoOp::Unmap { lba, blocks } | IoOp::WriteZeroes { lba, blocks } => {
                    Some((lba * bs, *blocks as u64 * bs))
                }
                _ => None,
            };
            if let Some((off, len)) = range {
                slot.bitmaps.iter_mut().for_each(|b| b.mark(off, len));
            }
        }
        if let Some(q) = &mut slot.qos {
            q.refill(now_us);
            if !q.queue.is_empty() || !q.admit(&req.op) {
                if q.queue.len() >= QOS_QUEUE {
                    return Err(req);
                }
                q.queue.push_back((req, now_us));
                return Ok(());
            }
        }
        slot.dispatch(req, now_us, now_us)
    }

    /// The dirty bitmaps of `id`.
    pub fn bitmaps(&self, id: BdevId) -> &[crate::dirty::DirtyBitmap] {
        self.slot(id).map_or(&[], |s| &s.bitmaps)
    }

    /// The dirty bitmaps of `id`, to add, change or remove.
    pub fn bitmaps_mut(&mut self, id: BdevId) -> Option<&mut Vec<crate::dirty::DirtyBitmap>> {
        self.slot_mut(id).map(|s| &mut s.bitmaps)
    }

    /// Collects finished requests from every device into `out`.
    pub fn poll(&mut self, now_us: u64, out: &mut Vec<(BdevId, IoCompletion)>) -> usize {
        let before = out.len();
        while let Some((id, c, t)) = self.rejected.pop_front() {
            if let Some(slot) = self.slot_mut(id) {
                slot.stats.record(t, 0, 0, false);
            }
            out.push((id, c));
        }
        let ids: Vec<BdevId> = self.ids().collect();
        let mut scratch = core::mem::take(&mut self.scratch);
        for id in ids {
            let Some(slot) = self.slot_mut(id) else {
                continue;
            };
            if slot.qos.is_some() {
                slot.release_queued(now_us);
            }
            if slot.dev.in_flight() == 0 {
                continue;
            }
            scratch.clear();
            slot.dev.poll(now_us, &mut scratch);
            for mut c in scratch.drain(..) {
                let internal = c.tag as usize;
                let Some(entry) = slot.in_flight.get_mut(internal).and_then(Option::take) else {
                    // A driver returning a tag we never gave it is a driver bug.
                    continue;
                };
                slot.free.push(internal as u32);
                let latency = now_us.saturating_sub(entry.start_us);
                slot.stats
                    .record(entry.io_type, entry.bytes, latency, c.status.is_ok());
                c.tag = entry.tag;
                out.push((id, c));
            }
        }
        self.scratch = scratch;
        out.len() - before
    }

    /// Polls until nothing is in flight on `id` or `max_polls` passes; for
    /// start-up and self-tests. `now` supplies the clock.
    pub fn drain(
        &mut self,
        id: BdevId,
        now: &mut dyn FnMut() -> u64,
        max_polls: u64,
        out: &mut Vec<(BdevId, IoCompletion)>,
    ) {
        for _ in 0..max_polls {
            if self.in_flight(id) == 0 && self.rejected.is_empty() {
                break;
            }
            self.poll(now(), out);
        }
        self.poll(now(), out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{IoBuf, MallocBdev, NullBdev};

    fn req(tag: u64, op: IoOp) -> IoRequest {
        IoRequest {
            tag,
            op,
            fua: false,
        }
    }

    fn run(reg: &mut Registry, id: BdevId, r: IoRequest) -> IoCompletion {
        reg.submit(id, r, 10).unwrap();
        let mut out = Vec::new();
        reg.poll(15, &mut out);
        assert_eq!(out.len(), 1);
        out.pop().unwrap().1
    }

    #[test]
    fn names_aliases_and_removal() {
        let mut reg = Registry::new();
        let a = reg
            .add(Box::new(MallocBdev::new("Malloc0", 64, 512)))
            .unwrap();
        assert_eq!(
            reg.add(Box::new(NullBdev::new("Malloc0", 64, 512)))
                .unwrap_err(),
            RegistryError::NameTaken("Malloc0".into())
        );
        reg.add_alias(a, "boot").unwrap();
        assert_eq!(reg.find("boot"), Some(a));
        assert!(reg.add_alias(a, "Malloc0").is_err());
        reg.remove(a).unwrap();
        assert_eq!(reg.find("Malloc0"), None);
        assert!(
            reg.info(a).is_none(),
            "stale id must not find the slot's next tenant"
        );
        let b = reg.add(Box::new(NullBdev::new("Null0", 64, 512))).unwrap();
        assert!(reg.info(a).is_none());
        assert_eq!(reg.info(b).unwrap().name, "Null0");
    }

    #[test]
    fn bad_requests_complete_with_errors_and_keep_their_buffers() {
        let mut reg = Registry::new();
        let id = reg
            .add(Box::new(MallocBdev::new("Malloc0", 64, 512)))
            .unwrap();
        let cases = [
            (
                IoOp::Read {
                    lba: 64,
                    buf: IoBuf::new(512),
                },
                IoStatus::OutOfRange,
            ),
            (
                IoOp::Read {
                    lba: u64::MAX,
                    buf: IoBuf::new(512),
                },
                IoStatus::OutOfRange,
            ),
            (
                IoOp::Write {
                    lba: 63,
                    buf: IoBuf::new(1024),
                },
                IoStatus::OutOfRange,
            ),
            (
                IoOp::Read {
                    lba: 0,
                    buf: IoBuf::new(100),
                },
                IoStatus::Misaligned,
            ),
            (
                IoOp::Read {
                    lba: 0,
                    buf: IoBuf::new(0),
                },
                IoStatus::Misaligned,
            ),
            (IoOp::Unmap { lba: 0, blocks: 0 }, IoStatus::Misaligned),
            (
                IoOp::WriteZeroes { lba: 60, blocks: 5 },
                IoStatus::OutOfRange,
            ),
            (
                IoOp::Read {
                    lba: 0,
                    buf: IoBuf::new(33 << 20),
                },
                IoStatus::TooLarge,
            ),
        ];
        for (i, (op, want)) in cases.into_iter().enumerate() {
            let had_buf = op.data_bytes() > 0 || matches!(op, IoOp::Read { .. });
            let c = run(&mut reg, id, req(i as u64, op));
            assert_eq!((c.tag, c.status), (i as u64, want), "case {i}");
            assert_eq!(c.buf.is_some(), had_buf);
        }
        assert_eq!(reg.stats(id).unwrap().get(IoType::Read).errors, 5);
        let null = reg.add(Box::new(NullBdev::new("Null0", 8, 4096))).unwrap();
        let c = run(&mut reg, null, req(1, IoOp::Flush));
        assert_eq!(c.status, IoStatus::Success);
    }

    #[test]
    fn unsupported_and_read_only() {
        let mut reg = Registry::new();
        let mut m = MallocBdev::new("Malloc0", 64, 512);
        m.set_read_only(true);
        let id = reg.add(Box::new(m)).unwrap();
        let c = run(
            &mut reg,
            id,
            req(
                1,
                IoOp::Write {
                    lba: 0,
                    buf: IoBuf::new(512),
                },
            ),
        );
        assert_eq!(c.status, IoStatus::ReadOnly);
        let c = run(
            &mut reg,
            id,
            req(
                2,
                IoOp::Read {
                    lba: 0,
                    buf: IoBuf::new(512),
                },
            ),
        );
        assert_eq!(c.status, IoStatus::Success);
        let stale = id;
        reg.remove(id).unwrap();
        let c = run(&mut reg, stale, req(3, IoOp::Flush));
        assert_eq!(c.status, IoStatus::DeviceFailed);
    }

    #[test]
    fn qos_meters_ios_and_bytes_per_slice() {
        let mut reg = Registry::new();
        let id = reg
            .add(Box::new(MallocBdev::new("Malloc0", 2048, 512)))
            .unwrap();
        // 200 IOPS: one every 5 ms.
        reg.set_qos(
            id,
            QosLimits {
                ios_per_sec: 200,
                ..Default::default()
            },
        )
        .unwrap();
        for t in 0..10 {
            reg.submit(
                id,
                req(
                    t,
                    IoOp::Read {
                        lba: 0,
                        buf: IoBuf::new(512),
                    },
                ),
                0,
            )
            .unwrap();
        }
        let mut out = Vec::new();
        let mut done = 0;
        for ms in 0..25u64 {
            out.clear();
            reg.poll(ms * 1000, &mut out);
            done += out.len();
        }
        assert!((5..=7).contains(&done), "{done} I/Os in 25 ms at 200 IOPS");
        for ms in 25..60u64 {
            out.clear();
            reg.poll(ms * 1000, &mut out);
        }
        assert_eq!(reg.in_flight(id), 0);
        // 1 MB/s of writes: a 4 KiB write every ~4 ms.
        reg.set_qos(
            id,
            QosLimits {
                write_bytes_per_sec: 1_000_000,
                ..Default::default()
            },
        )
        .unwrap();
        for t in 0..4 {
            reg.submit(
                id,
                req(
                    t,
                    IoOp::Write {
                        lba: 0,
                        buf: IoBuf::new(4096),
                    },
                ),
                60_000,
            )
            .unwrap();
        }
        out.clear();
        reg.poll(60_000, &mut out);
        assert_eq!(out.len(), 1);
        reg.set_qos(id, QosLimits::default()).unwrap();
        out.clear();
        reg.poll(61_000, &mut out);
        assert_eq!(out.len(), 3, "lifting the limit releases the queue");
        assert_eq!(reg.qos(id), QosLimits::default());
    }

    #[test]
    fn ram_bdevs_resize() {
        let mut reg = Registry::new();
        let m = reg
            .add(Box::new(MallocBdev::new("Malloc0", 64, 512)))
            .unwrap();
        let mut w = IoBuf::new(512);
        w.as_mut_slice().fill(0xa5);
        let write = |lba, buf| req(1, IoOp::Write { lba, buf });
        let read = |lba| {
            req(
                2,
                IoOp::Read {
                    lba,
                    buf: IoBuf::new(512),
                },
            )
        };
        assert!(run(&mut reg, m, write(63, w)).status.is_ok());
        assert_eq!(run(&mut reg, m, read(64)).status, IoStatus::OutOfRange);
        reg.resize(m, 200).unwrap();
        assert_eq!(reg.info(m).unwrap().num_blocks, 200);
        let c = run(&mut reg, m, read(63));
        assert!(
            c.buf.unwrap().as_slice().iter().all(|&b| b == 0xa5),
            "data kept"
        );
        let c = run(&mut reg, m, read(199));
        assert!(
            c.buf.unwrap().as_slice().iter().all(|&b| b == 0),
            "new blocks are zero"
        );
        assert_eq!(
            reg.allocation(m, 60, 140).unwrap(),
            [(3, false), (1, true), (136, false)]
        );
        assert_eq!(
            reg.resize(m, 100),
            Err(RegistryError::Resize(IoStatus::Unsupported))
        );
        assert_eq!(
            reg.resize(m, 0),
            Err(RegistryError::Resize(IoStatus::Unsupported))
        );
        assert_eq!(
            reg.resize(m, 1 << 50),
            Err(RegistryError::Resize(IoStatus::NoMemory))
        );
        assert_eq!(
            reg.info(m).unwrap().num_blocks,
            200,
            "failed resizes change nothing"
        );
        reg.resize(m, 200).unwrap();
        let n = reg.add(Box::new(NullBdev::new("Null0", 64, 4096))).unwrap();
        reg.resize(n, 8).unwrap();
        assert_eq!(
            run(&mut reg, n, req(3, IoOp::Unmap { lba: 8, blocks: 1 })).status,
            IoStatus::OutOfRange
        );
        reg.resize(n, 1 << 40).unwrap();
        assert_eq!(reg.info(n).unwrap().num_blocks, 1 << 40);
        assert_eq!(
            reg.resize(n, u64::MAX / 4096 + 1),
            Err(RegistryError::Resize(IoStatus::Unsupported)),
            "bytes overflow"
        );
        let stale = n;
        reg.remove(n).unwrap();
        assert_eq!(reg.resize(stale, 8), Err(RegistryError::NotFound));
    }

    #[test]
    fn data_round_trip_and_statistics() {
        let mut reg = Registry::new();
        let id = reg
            .add(Box::new(MallocBdev::new("Malloc0", 128, 512)))
            .unwrap();
        let mut w = IoBuf::new(2048);
        w.as_mut_slice()
            .iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = i as u8);
        assert!(
            run(&mut reg, id, req(7, IoOp::Write { lba: 10, buf: w }))
                .status
                .is_ok()
        );
        let c = run(
            &mut reg,
            id,
            req(
                8,
                IoOp::Read {
                    lba: 10,
                    buf: IoBuf::new(2048),
                },
            ),
        );
        let r = c.buf.unwrap();
        assert!(r.as_slice().iter().enumerate().all(|(i, &b)| b == i as u8));
        assert!(
            run(
                &mut reg,
                id,
                req(9, IoOp::WriteZeroes { lba: 11, blocks: 1 })
            )
            .status
            .is_ok()
        );
        let c = run(
            &mut reg,
            id,
            req(
                10,
                IoOp::Read {
                    lba: 10,
                    buf: IoBuf::new(1536),
                },
            ),
        );
        let r = c.buf.unwrap();
        assert!(r.as_slice()[512..1024].iter().all(|&b| b == 0));
        assert_eq!(r.as_slice()[1024], 0);
        assert_eq!(r.as_slice()[1025], 1);
        let s = reg.stats(id).unwrap();
        assert_eq!(s.get(IoType::Write).ops, 1);
        assert_eq!(s.get(IoType::Read).bytes, 2048 + 1536);
        assert_eq!(s.get(IoType::Read).latency_sum_us, 10);
    }
}
