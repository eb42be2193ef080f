//! The data path: volume requests mapped onto the base device.
//!
//! Requests whose clusters are all in place go to the base device without
//! waiting: one request when the range is contiguous on the base (the
//! caller's buffer moves through untouched), else one per extent with its
//! own buffer. Writes that need a cluster allocated (thin volumes, clones)
//! and unmaps that free clusters change metadata; they run to completion
//! before `submit` returns, so no two allocations race and no freed cluster
//! can still be read or written by a request in flight.

use crate::Error;
use crate::store::Core;
use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;
use ironbay_bdev::sync;
use ironbay_bdev::{IoBuf, IoCompletion, IoOp, IoRequest, IoStatus, IoType};

/// A volume request being served.
pub(crate) struct Parent {
    vol: u32,
    tag: u64,
    /// The caller's buffer while children use their own.
    buf: Option<IoBuf>,
    left: u32,
    status: IoStatus,
    /// Whether the caller gets a buffer back (not for write zeroes, whose
    /// zero buffer is ours).
    give_back: bool,
}

/// A base request serving (part of) a volume request.
pub(crate) struct Child {
    /// The volume request it serves, or [`DIRECT`]: the whole request,
    /// completed straight to the caller (`vol`, `tag`) without a parent.
    parent: u32,
    vol: u32,
    tag: u64,
    /// Where its data sits in the parent's buffer.
    offset: usize,
    /// Carries its own buffer (else the parent's, moved through).
    own: bool,
    read: bool,
}

#[derive(Default)]
pub(crate) struct Router {
    parents: Vec<Option<Parent>>,
    free: Vec<u32>,
    /// Base requests in flight, by slot; a tag is the slot and its
    /// generation, so a stale completion finds nothing.
    children: Vec<(u32, Option<Child>)>,
    free_children: Vec<u32>,
    live_children: usize,
    /// Scratch for base completions.
    pub(crate) scratch: Vec<IoCompletion>,
    /// Base requests refused for a full queue, retried at the next poll.
    pending: VecDeque<IoRequest>,
    /// Per volume with requests: (volume, requests not yet complete,
    /// completions not yet collected). A few volumes are busy at a time; a
    /// short vector beats a map on the per-I/O path.
    vols: Vec<(u32, usize, VecDeque<IoCompletion>)>,
}

/// A child that is its request's only one (the common case, one extent on
/// the base): it completes the request itself.
const DIRECT: u32 = u32::MAX;

/// A piece of a volume range within one cluster.
struct Piece {
    /// Byte offset in the request's buffer.
    offset: usize,
    bytes: usize,
    /// Volume cluster and the block within it.
    idx: u64,
    block_in: u64,
}

impl Router {
    pub(crate) fn in_flight(&self, vol: u32) -> usize {
        self.vols
            .iter()
            .find(|v| v.0 == vol)
            .map_or(0, |v| v.1 + v.2.len())
    }

    fn vol(&mut self, vol: u32) -> &mut (u32, usize, VecDeque<IoCompletion>) {
        let i = match self.vols.iter().position(|v| v.0 == vol) {
            Some(i) => i,
            None => {
                self.vols.push((vol, 0, VecDeque::new()));
                self.vols.len() - 1
            }
        };
        &mut self.vols[i]
    }

    /// Hands a volume's finished requests to `out`.
    pub(crate) fn collect(&mut self, vol: u32, out: &mut Vec<IoCompletion>) -> usize {
        let Some(i) = self.vols.iter().position(|v| v.0 == vol) else {
            return 0;
        };
        let n = self.vols[i].2.len();
        out.extend(self.vols[i].2.drain(..));
        if self.vols[i].1 == 0 {
            // Idle: forget it, so deleted volumes leave nothing behind.
            self.vols.swap_remove(i);
        }
        n
    }

    pub(crate) fn busy(&self) -> bool {
        self.live_children > 0 || !self.pending.is_empty()
    }

    /// A slot for a child; its tag never equals [`sync::SYNC_TAG`] (the
    /// generation stays below `u32::MAX`).
    fn add_child(&mut self, c: Child) -> u64 {
        self.live_children += 1;
        let i = match self.free_children.pop() {
            Some(i) => i,
            None => {
                self.children.push((0, None));
                (self.children.len() - 1) as u32
            }
        };
        let slot = &mut self.children[i as usize];
        slot.0 = (slot.0 + 1) % (u32::MAX - 1);
        slot.1 = Some(c);
        (slot.0 as u64) << 32 | i as u64
    }

    fn take_child(&mut self, tag: u64) -> Option<Child> {
        let i = (tag & 0xffff_ffff) as usize;
        let slot = self.children.get_mut(i)?;
        if slot.0 as u64 != tag >> 32 {
            return None;
        }
        let c = slot.1.take()?;
        self.free_children.push(i as u32);
        self.live_children -= 1;
        Some(c)
    }

    fn open_parent(&mut self, vol: u32, tag: u64, buf: Option<IoBuf>) -> u32 {
        let p = Parent {
            vol,
            tag,
            buf,
            left: 0,
            status: IoStatus::Success,
            give_back: true,
        };
        self.vol(vol).1 += 1;
        match self.free.pop() {
            Some(i) => {
                self.parents[i as usize] = Some(p);
                i
            }
            None => {
                self.parents.push(Some(p));
                (self.parents.len() - 1) as u32
            }
        }
    }

    /// Completes a parent whose children are all back (or that had none).
    fn finish(&mut self, i: u32) {
        let Some(p) = self.parents.get_mut(i as usize).and_then(Option::take) else {
            return;
        };
        self.free.push(i);
        let v = self.vol(p.vol);
        v.1 = v.1.saturating_sub(1);
        v.2.push_back(IoCompletion {
            tag: p.tag,
            status: p.status,
            buf: if p.give_back { p.buf } else { None },
        });
    }

    /// Completes a volume request at once.
    pub(crate) fn complete(&mut self, vol: u32, tag: u64, status: IoStatus, buf: Option<IoBuf>) {
        let i = self.open_parent(vol, tag, buf);
        if let Some(Some(p)) = self.parents.get_mut(i as usize) {
            p.status = status;
        }
        self.finish(i);
    }

    /// The caller of the newest request of `vol` gets no buffer back.
    fn keep_buffer(&mut self, vol: u32, tag: u64) {
        for p in self.parents.iter_mut().flatten() {
            if p.vol == vol && p.tag == tag {
                p.give_back = false;
            }
        }
        for (_, c) in &mut self.children {
            if let Some(c) = c
                && c.parent == DIRECT
                && c.vol == vol
                && c.tag == tag
            {
                c.own = true;
            }
        }
        if let Some(c) = self.vol(vol).2.back_mut()
            && c.tag == tag
        {
            c.buf = None;
        }
    }

    /// A request served by one base request on the caller's buffer.
    fn direct(&mut self, vol: u32, tag: u64, op: IoOp) {
        self.vol(vol).1 += 1;
        let child = self.add_child(Child {
            parent: DIRECT,
            vol,
            tag,
            offset: 0,
            own: false,
            read: false,
        });
        self.pending.push_back(IoRequest {
            tag: child,
            op,
            fua: false,
        });
    }

    fn child(&mut self, parent: u32, offset: usize, own: bool, read: bool, op: IoOp) {
        let tag = self.add_child(Child {
            parent,
            vol: 0,
            tag: 0,
            offset,
            own,
            read,
        });
        if let Some(Some(p)) = self.parents.get_mut(parent as usize) {
            p.left += 1;
        }
        self.pending.push_back(IoRequest {
            tag,
            op,
            fua: false,
        });
    }

    /// Takes a base completion.
    pub(crate) fn route(&mut self, c: IoCompletion) {
        let Some(ch) = self.take_child(c.tag) else {
            return;
        };
        if ch.parent == DIRECT {
            let v = self.vol(ch.vol);
            v.1 = v.1.saturating_sub(1);
            v.2.push_back(IoCompletion {
                tag: ch.tag,
                status: c.status,
                // `own` on a direct child: the buffer is ours (write zeroes).
                buf: if ch.own { None } else { c.buf },
            });
            return;
        }
        let Some(Some(p)) = self.parents.get_mut(ch.parent as usize) else {
            return;
        };
        if !c.status.is_ok() && p.status.is_ok() {
            p.status = c.status;
        }
        match (ch.own, c.buf) {
            (true, Some(b)) if ch.read => {
                if let Some(dst) = p.buf.as_mut() {
                    let d = dst.as_mut_slice();
                    let end = (ch.offset + b.len()).min(d.len());
                    d[ch.offset..end].copy_from_slice(&b.as_slice()[..end - ch.offset]);
                }
            }
            (false, Some(b)) => p.buf = Some(b),
            _ => {}
        }
        p.left -= 1;
        if p.left == 0 {
            self.finish(ch.parent);
        }
    }
}

impl Core {
    /// Splits a volume range into per-cluster pieces.
    fn pieces(&self, lba: u64, blocks: u64) -> Vec<Piece> {
        let bs = self.meta.layout.block_size as u64;
        let cb = self.cluster_blocks();
        let mut out = Vec::new();
        let (mut at, end) = (lba, lba + blocks);
        while at < end {
            let idx = at / cb;
            let block_in = at % cb;
            let n = (cb - block_in).min(end - at);
            out.push(Piece {
                offset: ((at - lba) * bs) as usize,
                bytes: (n * bs) as usize,
                idx,
                block_in,
            });
            at += n;
        }
        out
    }

    /// Base LBA of block `block_in` of store cluster `c`.
    pub(crate) fn base_lba(&self, c: u64, block_in: u64) -> u64 {
        let l = &self.meta.layout;
        l.data / l.block_size as u64 + c * self.cluster_blocks() + block_in
    }

    pub(crate) fn submit(&mut self, vol: u32, req: IoRequest) {
        let tag = req.tag;
        match req.op {
            IoOp::Flush => {
                self.router.direct(vol, tag, IoOp::Flush);
            }
            IoOp::Read { lba, buf } => self.read(vol, tag, lba, buf),
            IoOp::Write { lba, buf } => self.write(vol, tag, lba, buf),
            IoOp::WriteZeroes { lba, blocks } => {
                let bytes = blocks as usize * self.meta.layout.block_size as usize;
                match IoBuf::try_new(bytes) {
                    Some(buf) => {
                        self.write(vol, tag, lba, buf);
                        self.router.keep_buffer(vol, tag);
                    }
                    None => self.router.complete(vol, tag, IoStatus::NoMemory, None),
                }
            }
            IoOp::Unmap { lba, blocks } => {
                let status = match self.unmap(vol, lba, blocks as u64) {
                    Ok(()) => IoStatus::Success,
                    Err(e) => e.io_status(),
                };
                self.router.complete(vol, tag, status, None);
            }
        }
        self.kick();
    }

    /// The base LBA of a range that lies within one cluster the volume
    /// reads from (its own or a parent's); `None` if it spans clusters or
    /// is a hole. `own`: only the volume's own clusters count.
    fn within_one(&self, vol: u32, lba: u64, blocks: u64, own: bool) -> Option<u64> {
        let cb = self.cluster_blocks();
        if blocks == 0 || lba / cb != (lba + blocks - 1) / cb {
            return None;
        }
        let c = if own {
            self.meta.state.volumes.get(&vol)?.map.get(lba / cb)?
        } else {
            self.meta.state.resolve(vol, lba / cb)?
        };
        Some(self.base_lba(c, lba % cb))
    }

    fn read(&mut self, vol: u32, tag: u64, lba: u64, mut buf: IoBuf) {
        let bs = self.meta.layout.block_size as u64;
        if let Some(at) = self.within_one(vol, lba, buf.len() as u64 / bs, false) {
            self.router.direct(vol, tag, IoOp::Read { lba: at, buf });
            return;
        }
        let pieces = self.pieces(lba, buf.len() as u64 / bs);
        // Extents on the base: (buffer offset, bytes, base lba).
        let mut extents: Vec<(usize, usize, u64)> = Vec::new();
        for pc in &pieces {
            match self.meta.state.resolve(vol, pc.idx) {
                Some(c) => {
                    let at = self.base_lba(c, pc.block_in);
                    match extents.last_mut() {
                        Some((o, n, b)) if *o + *n == pc.offset && *b + (*n as u64 / bs) == at => {
                            *n += pc.bytes
                        }
                        _ => extents.push((pc.offset, pc.bytes, at)),
                    }
                }
                None => buf.as_mut_slice()[pc.offset..pc.offset + pc.bytes].fill(0),
            }
        }
        if extents.len() == 1 && extents[0].1 == buf.len() {
            let lba = extents[0].2;
            self.router.direct(vol, tag, IoOp::Read { lba, buf });
            return;
        }
        let Some(p) = self.split(vol, tag, buf, extents, true) else {
            return;
        };
        if self.router.parents[p as usize]
            .as_ref()
            .is_some_and(|x| x.left == 0)
        {
            self.router.finish(p);
        }
    }

    fn write(&mut self, vol: u32, tag: u64, lba: u64, buf: IoBuf) {
        let bs = self.meta.layout.block_size as u64;
        if let Some(at) = self.within_one(vol, lba, buf.len() as u64 / bs, true) {
            self.router.direct(vol, tag, IoOp::Write { lba: at, buf });
            return;
        }
        let pieces = self.pieces(lba, buf.len() as u64 / bs);
        let Some(v) = self.meta.state.volumes.get(&vol) else {
            return self
                .router
                .complete(vol, tag, IoStatus::DeviceFailed, Some(buf));
        };
        if pieces.iter().any(|pc| !v.map.contains_key(&pc.idx)) {
            let status = match self.write_allocating(vol, &pieces, buf.as_slice()) {
                Ok(()) => IoStatus::Success,
                Err(e) => e.io_status(),
            };
            return self.router.complete(vol, tag, status, Some(buf));
        }
        let mut extents: Vec<(usize, usize, u64)> = Vec::new();
        for pc in &pieces {
            let Some(c) = v.map.get(pc.idx) else {
                continue;
            };
            let at = self.base_lba(c, pc.block_in);
            match extents.last_mut() {
                Some((o, n, b)) if *o + *n == pc.offset && *b + (*n as u64 / bs) == at => {
                    *n += pc.bytes
                }
                _ => extents.push((pc.offset, pc.bytes, at)),
            }
        }
        if extents.len() == 1 {
            let lba = extents[0].2;
            self.router.direct(vol, tag, IoOp::Write { lba, buf });
            return;
        }
        self.split(vol, tag, buf, extents, false);
    }

    /// Serves a request as one base request per extent (buffer offset,
    /// bytes, base LBA), each with a buffer of its own (a copy of its part
    /// for writes). `None` if the buffers could not be had: the request
    /// then completed with `NoMemory`.
    fn split(
        &mut self,
        vol: u32,
        tag: u64,
        buf: IoBuf,
        extents: Vec<(usize, usize, u64)>,
        read: bool,
    ) -> Option<u32> {
        let mut bufs = Vec::new();
        for &(o, n, _) in &extents {
            match IoBuf::try_new(n) {
                Some(mut b) => {
                    if !read {
                        b.as_mut_slice().copy_from_slice(&buf.as_slice()[o..o + n]);
                    }
                    bufs.push(b);
                }
                None => {
                    self.router
                        .complete(vol, tag, IoStatus::NoMemory, Some(buf));
                    return None;
                }
            }
        }
        let p = self.router.open_parent(vol, tag, Some(buf));
        for ((o, _, lba), b) in extents.into_iter().zip(bufs) {
            let op = if read {
                IoOp::Read { lba, buf: b }
            } else {
                IoOp::Write { lba, buf: b }
            };
            self.router.child(p, o, true, read, op);
        }
        Some(p)
    }

    /// A write that needs clusters: each new cluster is written whole (the
    /// volume's current view of it, merged with the new data), made
    /// durable, and only then mapped by a journal record.
    fn write_allocating(&mut self, vol: u32, pieces: &[Piece], data: &[u8]) -> Result<(), Error> {
        let bs = self.meta.layout.block_size as usize;
        let csize = self.meta.layout.cluster_size as usize;
        let mut fresh: Vec<(u64, u64)> = Vec::new();
        let result = (|| {
            for pc in pieces {
                let owned = self.meta.state.volumes[&vol].map.get(pc.idx);
                match owned {
                    Some(c) => {
                        let at = self.base_lba(c, pc.block_in);
                        self.with_base(|dev, clock, others| {
                            sync::write(
                                dev,
                                at,
                                &data[pc.offset..pc.offset + pc.bytes],
                                clock,
                                others,
                            )
                        })?;
                    }
                    None => {
                        let c = self
                            .meta
                            .clusters
                            .take(1)
                            .and_then(|v| v.first().copied())
                            .ok_or(Error::NoSpace)?;
                        fresh.push((pc.idx, c));
                        let src = self.meta.state.resolve(vol, pc.idx);
                        if src.is_none() && pc.bytes < csize {
                            // Nothing to copy: the new data, and zeroes
                            // (the base's cheapest way) around it.
                            let at = self.base_lba(c, pc.block_in);
                            let n = (pc.bytes / bs) as u64;
                            self.with_base(|dev, clock, others| {
                                sync::write(
                                    dev,
                                    at,
                                    &data[pc.offset..pc.offset + pc.bytes],
                                    clock,
                                    others,
                                )
                            })?;
                            let start = self.base_lba(c, 0);
                            self.zero(start, pc.block_in)?;
                            let cb = self.cluster_blocks();
                            self.zero(at + n, cb - pc.block_in - n)?;
                            continue;
                        }
                        let mut whole = Vec::new();
                        whole
                            .try_reserve_exact(csize)
                            .map_err(|_| Error::Io(IoStatus::NoMemory))?;
                        whole.resize(csize, 0);
                        if pc.bytes < csize
                            && let Some(src) = src
                        {
                            let at = self.base_lba(src, 0);
                            self.with_base(|dev, clock, others| {
                                sync::read_into(dev, at, &mut whole, clock, others)
                            })?;
                        }
                        let off = pc.block_in as usize * bs;
                        whole[off..off + pc.bytes]
                            .copy_from_slice(&data[pc.offset..pc.offset + pc.bytes]);
                        let at = self.base_lba(c, 0);
                        self.with_base(|dev, clock, others| {
                            sync::write(dev, at, &whole, clock, others)
                        })?;
                    }
                }
            }
            // New clusters hold their data before anything points at them.
            self.with_base(sync::flush)?;
            self.commit(alloc::vec![crate::format::Change::Map(vol, fresh.clone())])
        })();
        if result.is_err() {
            for &(_, c) in &fresh {
                self.meta.clusters.release(c);
            }
        }
        result
    }

    /// Unmap: whole clusters of a thin volume are released; other ranges the
    /// volume owns are zeroed on the base; ranges it does not own already
    /// read as zeroes (or as its parent, which unmap leaves alone).
    fn unmap(&mut self, vol: u32, lba: u64, blocks: u64) -> Result<(), Error> {
        let cb = self.cluster_blocks();
        let pieces = self.pieces(lba, blocks);
        let v = &self.meta.state.volumes[&vol];
        let thin = v.thin;
        let mut release = Vec::new();
        let mut zero = Vec::new();
        for pc in &pieces {
            if let Some(c) = v.map.get(pc.idx) {
                let n = pc.bytes as u64 / self.meta.layout.block_size as u64;
                if thin && n == cb {
                    release.push((pc.idx, c));
                } else {
                    zero.push((self.base_lba(c, pc.block_in), n));
                }
            }
        }
        for (at, n) in zero {
            self.zero(at, n)?;
        }
        if !release.is_empty() {
            // Nothing in flight may still touch a cluster about to be freed.
            self.drain()?;
            let idx: Vec<u64> = release.iter().map(|r| r.0).collect();
            self.commit(alloc::vec![crate::format::Change::Unmap(vol, idx)])?;
            for (_, c) in release {
                self.meta.clusters.release(c);
            }
        }
        Ok(())
    }

    /// Makes `n` base blocks at `at` read as zeroes: write zeroes where the
    /// base has it, else zero-filled writes.
    pub(crate) fn zero(&mut self, at: u64, n: u64) -> Result<(), Error> {
        if n == 0 {
            return Ok(());
        }
        let info = self.base.borrow().info().clone();
        let bs = info.block_size as u64;
        // Write zeroes, never unmap: an unmap (NVMe deallocate, SCSI UNMAP)
        // is a hint the device may ignore and keep the old data, even when
        // it says unmapped blocks read zeroes.
        let wz = info.io_types.contains(IoType::WriteZeroes);
        let max = if wz {
            info.max_write_zeroes_blocks as u64
        } else {
            (info.max_transfer as u64 / bs).max(1)
        };
        let max = max.clamp(1, u32::MAX as u64);
        let mut done = 0;
        while done < n {
            let k = (n - done).min(max);
            let lba = at + done;
            if wz {
                let op = IoOp::WriteZeroes {
                    lba,
                    blocks: k as u32,
                };
                self.with_base(|dev, clock, others| {
                    sync::run(dev, op, false, clock, others).map(|_| ())
                })?;
            } else {
                let z = vec![0u8; (k * bs) as usize];
                self.with_base(|dev, clock, others| sync::write(dev, lba, &z, clock, others))?;
            }
            done += k;
        }
        Ok(())
    }

    /// Hands queued base requests to the base device.
    pub(crate) fn kick(&mut self) {
        let mut base = self.base.borrow_mut();
        let now = (self.clock)();
        while let Some(req) = self.router.pending.pop_front() {
            if let Err(back) = base.submit(req, now) {
                self.router.pending.push_front(back);
                break;
            }
        }
    }

    /// Collects base completions and retries queued requests.
    pub(crate) fn pump(&mut self) {
        let now = (self.clock)();
        let mut got = core::mem::take(&mut self.router.scratch);
        got.clear();
        self.base.borrow_mut().poll(now, &mut got);
        for c in got.drain(..) {
            self.router.route(c);
        }
        self.router.scratch = got;
        self.kick();
    }

    /// Waits until no base request is in flight.
    pub(crate) fn drain(&mut self) -> Result<(), Error> {
        let start = (self.clock)();
        while self.router.busy() {
            self.pump();
            if (self.clock)().saturating_sub(start) > 60_000_000 {
                return Err(Error::Io(IoStatus::Timeout));
            }
        }
        Ok(())
    }
}
