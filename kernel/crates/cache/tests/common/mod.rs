//! The rig the cache tests share: a source device that delays, reorders,
//! refuses and fails requests; a registry holding source, RAM disk and
//! cache; random requests; the expected data.

#![allow(dead_code, reason = "each test file uses part of the rig")]

pub mod refcache;

use ironbay_bdev::{
    BdevId, BdevInfo, BlockDevice, HeapPages, IoBuf, IoCompletion, IoOp, IoRequest, IoStatus,
    MallocBdev, Registry, Rng, SharedBdev, Uuid,
};
use ironbay_cache::{CacheBdev, Mode, Stats};

/// What a failed source read leaves in the buffer: data the cache must
/// never serve. Test data never contains it.
pub const GARBAGE: u8 = 0xee;

type FailFn = Box<dyn FnMut(&IoOp) -> bool>;

/// A source over a RAM disk that runs each request only when it hands the
/// completion back: after `hold` polls, last-in first-out when `reverse`,
/// never while `gate_writes` holds writes. It refuses requests beyond
/// `depth` and fails those `fail` picks (a failed request changes nothing;
/// a failed read returns garbage).
pub struct TestDev {
    inner: MallocBdev,
    info: BdevInfo,
    queue: Vec<(u64, IoRequest)>,
    pub hold: u64,
    pub reverse: bool,
    pub depth: usize,
    pub gate_writes: bool,
    pub fail: Option<FailFn>,
    pub reads: u64,
    pub writes: u64,
    pub flushes: u64,
    pub refused: u64,
}

impl TestDev {
    pub fn new(name: &str, blocks: u64, bs: u32) -> Self {
        let inner = MallocBdev::new(name, blocks, bs);
        let mut info = inner.info().clone();
        // A volatile cache of its own, so flushes reach it.
        info.write_cache = true;
        TestDev {
            inner,
            info,
            queue: Vec::new(),
            hold: 0,
            reverse: false,
            depth: usize::MAX,
            gate_writes: false,
            fail: None,
            reads: 0,
            writes: 0,
            flushes: 0,
            refused: 0,
        }
    }

    /// The source's bytes now.
    pub fn peek(&self, off: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.inner.store().read(off, &mut v);
        v
    }

    /// Writes straight into the source's data (setting the scene).
    pub fn fill(&mut self, off: u64, data: &[u8]) {
        self.inner.store_mut().write(off, data).unwrap();
    }

    fn execute(&mut self, req: IoRequest, now: u64) -> IoCompletion {
        match req.op {
            IoOp::Read { .. } => self.reads += 1,
            IoOp::Write { .. } => self.writes += 1,
            IoOp::Flush => self.flushes += 1,
            _ => {}
        }
        if self.fail.as_mut().is_some_and(|f| f(&req.op)) {
            let read = matches!(req.op, IoOp::Read { .. });
            let mut buf = req.op.into_buf();
            if let Some(b) = buf.as_mut().filter(|_| read) {
                b.as_mut_slice().fill(GARBAGE);
            }
            return IoCompletion {
                tag: req.tag,
                status: IoStatus::DeviceError(1),
                buf,
            };
        }
        self.inner
            .submit(req, now)
            .expect("malloc takes everything");
        let mut out = Vec::new();
        self.inner.poll(now, &mut out);
        out.pop().expect("malloc completes at once")
    }
}

impl BlockDevice for TestDev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    fn submit(&mut self, req: IoRequest, _now_us: u64) -> Result<(), IoRequest> {
        if self.queue.len() >= self.depth {
            self.refused += 1;
            return Err(req);
        }
        self.queue.push((0, req));
        Ok(())
    }

    fn poll(&mut self, now_us: u64, out: &mut Vec<IoCompletion>) -> usize {
        let mut ready = Vec::new();
        let mut keep = Vec::new();
        for (age, req) in self.queue.drain(..) {
            let gated = self.gate_writes && matches!(req.op, IoOp::Write { .. });
            if age >= self.hold && !gated {
                ready.push(req);
            } else {
                keep.push((age + 1, req));
            }
        }
        self.queue = keep;
        if self.reverse {
            ready.reverse();
        }
        let n = ready.len();
        for req in ready {
            let c = self.execute(req, now_us);
            out.push(c);
        }
        n
    }

    fn in_flight(&self) -> usize {
        self.queue.len()
    }

    fn as_any_mut(&mut self) -> Option<&mut dyn std::any::Any> {
        Some(self)
    }
}

/// How to build a rig.
#[derive(Clone, Copy, Debug)]
pub struct Setup {
    pub mode: Mode,
    pub src_blocks: u64,
    pub bs: u32,
    /// RAM disk size in 4 KiB cache blocks.
    pub ram_blocks: u64,
    /// Pages the RAM disk's pool may hand out (`None`: unlimited).
    pub pool_pages: Option<u64>,
    pub assoc: u32,
}

impl Setup {
    pub fn new(mode: Mode) -> Self {
        Setup {
            mode,
            src_blocks: 512,
            bs: 512,
            ram_blocks: 12,
            pool_pages: None,
            assoc: 4,
        }
    }

    pub fn size(&self) -> u64 {
        self.src_blocks * self.bs as u64
    }
}

pub const MODES: [Mode; 3] = [Mode::WriteThrough, Mode::WriteAround, Mode::WriteBack];

/// Source, RAM disk and cache in a registry; requests go through the
/// registry as the appliance's would.
pub struct Rig {
    pub reg: Registry,
    pub id: BdevId,
    pub src: SharedBdev,
    pub now: u64,
    pub bs: u64,
    pub size: u64,
    tag: u64,
    backlog: Vec<IoCompletion>,
}

impl Rig {
    pub fn new(s: &Setup, configure: impl FnOnce(&mut TestDev)) -> Rig {
        let mut reg = Registry::new();
        let mut dev = TestDev::new("Src0", s.src_blocks, s.bs);
        configure(&mut dev);
        let src_id = reg.add(Box::new(dev)).unwrap();
        let pool = match s.pool_pages {
            Some(n) => HeapPages::limited(n),
            None => HeapPages::unlimited(),
        };
        let uuid = Uuid::from_name(&[b"ram0"]);
        let ram = MallocBdev::with_pool("Ram0", "Malloc disk", uuid, s.ram_blocks * 8, 512, pool)
            .unwrap();
        let ram_id = reg.add(Box::new(ram)).unwrap();
        let name = format!("{}Src0", s.mode.prefix());
        let sh = reg.claim(src_id, &name).unwrap();
        let rh = reg.claim(ram_id, &name).unwrap();
        let cache =
            CacheBdev::with_associativity(&name, s.mode, sh.clone(), src_id, rh, ram_id, s.assoc)
                .unwrap();
        let id = reg.add(Box::new(cache)).unwrap();
        Rig {
            reg,
            id,
            src: sh,
            now: 1,
            bs: s.bs as u64,
            size: s.size(),
            tag: 0,
            backlog: Vec::new(),
        }
    }

    /// Submits, polling meanwhile while the cache refuses (its completions
    /// are kept for the next [`poll`](Self::poll)).
    pub fn submit(&mut self, op: IoOp, fua: bool) -> u64 {
        self.tag += 1;
        let mut req = IoRequest {
            tag: self.tag,
            op,
            fua,
        };
        for _ in 0..100_000 {
            match self.reg.submit(self.id, req, self.now) {
                Ok(()) => return self.tag,
                Err(back) => {
                    req = back;
                    let got = self.poll_raw();
                    self.backlog.extend(got);
                }
            }
        }
        panic!("the cache never took the request");
    }

    fn poll_raw(&mut self) -> Vec<IoCompletion> {
        self.now += 100;
        let mut out = Vec::new();
        self.reg.poll(self.now, &mut out);
        out.into_iter().map(|(_, c)| c).collect()
    }

    pub fn poll(&mut self) -> Vec<IoCompletion> {
        let mut v = std::mem::take(&mut self.backlog);
        v.extend(self.poll_raw());
        v
    }

    /// Runs one request to its completion.
    pub fn run(&mut self, op: IoOp, fua: bool) -> IoCompletion {
        let tag = self.submit(op, fua);
        let mut others = Vec::new();
        for _ in 0..100_000 {
            for c in self.poll() {
                if c.tag == tag {
                    self.backlog.extend(others);
                    return c;
                }
                others.push(c);
            }
        }
        panic!("request {tag} never completed");
    }

    pub fn read(&mut self, off: u64, len: usize) -> Result<Vec<u8>, IoStatus> {
        let c = self.run(
            IoOp::Read {
                lba: off / self.bs,
                buf: IoBuf::new(len),
            },
            false,
        );
        match c.status {
            IoStatus::Success => Ok(c.buf.expect("read buffer").as_slice().to_vec()),
            s => Err(s),
        }
    }

    pub fn write(&mut self, off: u64, data: &[u8], fua: bool) -> IoStatus {
        let mut buf = IoBuf::new(data.len());
        buf.as_mut_slice().copy_from_slice(data);
        let lba = off / self.bs;
        self.run(IoOp::Write { lba, buf }, fua).status
    }

    pub fn flush(&mut self) -> IoStatus {
        self.run(IoOp::Flush, false).status
    }

    pub fn cache<R>(&mut self, f: impl FnOnce(&mut CacheBdev) -> R) -> R {
        self.reg.with_device(self.id, f).expect("the cache")
    }

    pub fn stats(&mut self) -> Stats {
        self.cache(|c| c.stats())
    }

    pub fn dirty(&mut self) -> u64 {
        self.cache(|c| c.dirty_blocks())
    }

    pub fn src<R>(&self, f: impl FnOnce(&mut TestDev) -> R) -> R {
        let mut b = self.src.borrow_mut();
        let d = b.as_any_mut().unwrap().downcast_mut::<TestDev>().unwrap();
        f(d)
    }

    pub fn peek(&self, off: u64, len: usize) -> Vec<u8> {
        self.src(|d| d.peek(off, len))
    }

    pub fn write_back_all(&mut self) -> Result<(), IoStatus> {
        let mut t = self.now;
        let mut clock = || {
            t += 10;
            t
        };
        let id = self.id;
        let r = self
            .reg
            .with_device(id, |c: &mut CacheBdev| c.write_back_all(&mut clock))
            .expect("the cache");
        self.now = t;
        r
    }

    /// Polls until nothing is in flight on the cache.
    pub fn settle(&mut self) -> Vec<IoCompletion> {
        let mut all = Vec::new();
        for _ in 0..200_000 {
            all.extend(self.poll());
            if self.reg.in_flight(self.id) == 0 {
                return all;
            }
        }
        panic!("the cache never went idle");
    }
}

/// Random bytes without [`GARBAGE`].
pub fn data(rng: &mut Rng, len: usize) -> Vec<u8> {
    (0..len)
        .map(|_| match rng.next_u64() as u8 {
            GARBAGE => 0,
            b => b,
        })
        .collect()
}

/// A random range `(offset, bytes)` of up to `max` bytes: half the time
/// 4 KiB aligned, else aligned to the block size only.
pub fn range(rng: &mut Rng, size: u64, bs: u64, max: u64) -> (u64, u64) {
    let blocks = size / bs;
    if rng.below(2) == 0 && bs < 4096 && size >= 4096 {
        let per = 4096 / bs;
        let n = 1 + rng.below((max / 4096).clamp(1, blocks / per));
        let at = rng.below(blocks / per - n + 1);
        return (at * 4096, n * 4096);
    }
    let n = 1 + rng.below((max / bs).clamp(1, blocks));
    let at = rng.below(blocks - n + 1);
    (at * bs, n * bs)
}

/// The expected contents. A byte a failed request may or may not have
/// changed is unknown until a read shows it (then it must stay so).
pub struct Expect {
    pub data: Vec<u8>,
    pub known: Vec<bool>,
}

impl Expect {
    pub fn new(size: u64) -> Self {
        Expect {
            data: vec![0; size as usize],
            known: vec![true; size as usize],
        }
    }

    pub fn write(&mut self, off: u64, bytes: &[u8]) {
        let o = off as usize;
        self.data[o..o + bytes.len()].copy_from_slice(bytes);
        self.known[o..o + bytes.len()].fill(true);
    }

    pub fn zero(&mut self, off: u64, len: u64) {
        let (o, n) = (off as usize, len as usize);
        self.data[o..o + n].fill(0);
        self.known[o..o + n].fill(true);
    }

    pub fn forget(&mut self, off: u64, len: u64) {
        let (o, n) = (off as usize, len as usize);
        self.known[o..o + n].fill(false);
    }

    /// Checks a read: known bytes must match, unknown ones be no garbage
    /// (and are known from now on).
    pub fn check(&mut self, off: u64, got: &[u8], what: &str) {
        let o = off as usize;
        for (i, &b) in got.iter().enumerate() {
            let at = o + i;
            if self.known[at] {
                assert_eq!(
                    b,
                    self.data[at],
                    "{what}: byte {at} (block {}) is {b:#x}, expected {:#x}",
                    at / 4096,
                    self.data[at]
                );
            } else {
                assert_ne!(b, GARBAGE, "{what}: byte {at} is a failed read's garbage");
                self.data[at] = b;
                self.known[at] = true;
            }
        }
    }
}
