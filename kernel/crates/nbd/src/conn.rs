//! One NBD connection as a state machine.
//!
//! Driving order: feed received bytes to [`Connection::handle_input`] (it
//! takes only what it can hold, so unconsumed bytes stay in the socket),
//! start every [`Connection::poll_io`] request on the bdev layer, feed each
//! completion to [`Connection::handle_completion`], and send what
//! [`Connection::poll_output`] offers, calling
//! [`Connection::consume_output`] for what was sent. Close the socket when
//! [`Connection::finished`] says so.
//!
//! Memory is bounded: handshake data by the option length limit; every
//! request buffer (read data, write payload) comes from the connection's
//! budget [`Account`], and a request that does not fit yet waits, with no
//! more input read, until [`Connection::handle_memory`] finds room. Write
//! payloads go straight into their I/O buffers.

use crate::export::{Export, Exports, MAX_REQUEST};
use crate::wire::{self, Reader, Request, chunk, cmd, errno, info, opt, rep};
use alloc::collections::VecDeque;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;
use ironbay_bdev::engine::{CommandTable, OutQueue};
use ironbay_bdev::{Account, BdevId, IoBuf, IoCompletion, IoOp, IoStatus, IoType, Registry, Short};

/// Where BLOCK_STATUS learns which blocks hold data.
pub trait AllocationMap {
    /// Runs of (blocks, allocated) for the range; `None` when unknown.
    fn allocation(&self, bdev: BdevId, lba: u64, blocks: u64) -> Option<Vec<(u64, bool)>>;

    /// Runs of (blocks, depth) for `qemu:allocation-depth`: 0 unallocated,
    /// 1 in the device itself, 2 and up in the layers below.
    fn depth(&self, bdev: BdevId, lba: u64, blocks: u64) -> Option<Vec<(u64, u32)>> {
        let runs = self.allocation(bdev, lba, blocks)?;
        Some(runs.into_iter().map(|(n, a)| (n, a as u32)).collect())
    }

    /// Runs of (bytes, dirty) of bitmap `name` on `bdev`.
    fn dirty(&self, _bdev: BdevId, _name: &str, _off: u64, _len: u64) -> Option<Vec<(u64, bool)>> {
        None
    }
}

impl AllocationMap for Registry {
    fn allocation(&self, bdev: BdevId, lba: u64, blocks: u64) -> Option<Vec<(u64, bool)>> {
        Registry::allocation(self, bdev, lba, blocks)
    }

    fn depth(&self, bdev: BdevId, lba: u64, blocks: u64) -> Option<Vec<(u64, u32)>> {
        Registry::allocation_depth(self, bdev, lba, blocks).or_else(|| {
            let runs = Registry::allocation(self, bdev, lba, blocks)?;
            Some(runs.into_iter().map(|(n, a)| (n, a as u32)).collect())
        })
    }

    fn dirty(&self, bdev: BdevId, name: &str, off: u64, len: u64) -> Option<Vec<(u64, bool)>> {
        let b = self.bitmaps(bdev).iter().find(|b| b.name == name)?;
        Some(
            b.extents(off, len, MAX_EXTENTS)
                .into_iter()
                .map(|(_, n, d)| (n, d))
                .collect(),
        )
    }
}

/// A metadata context a connection selected.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Ctx {
    Base,
    Depth,
    Bitmap(BdevId, String),
}

impl Ctx {
    fn name(&self) -> String {
        match self {
            Ctx::Base => BASE_ALLOCATION.into(),
            Ctx::Depth => "qemu:allocation-depth".into(),
            Ctx::Bitmap(_, b) => alloc::format!("qemu:dirty-bitmap:{b}"),
        }
    }

    /// Whether a query names this context; namespace wildcards only for LIST.
    fn matches(&self, q: &[u8], list: bool) -> bool {
        if q == self.name().as_bytes() {
            return true;
        }
        list && match self {
            Ctx::Base => q == b"base:",
            Ctx::Depth => q == b"qemu:",
            Ctx::Bitmap(..) => q == b"qemu:" || q == b"qemu:dirty-bitmap:",
        }
    }
}

/// Every context `e` offers.
fn contexts(e: &Export) -> Vec<Ctx> {
    let mut v = alloc::vec![Ctx::Base];
    if e.allocation_depth {
        v.push(Ctx::Depth);
    }
    v.extend(e.bitmaps.iter().map(|(b, n)| Ctx::Bitmap(*b, n.clone())));
    v
}

/// Nothing is known: every block is data.
pub struct NoAllocationMap;

impl AllocationMap for NoAllocationMap {
    fn allocation(&self, _: BdevId, _: u64, _: u64) -> Option<Vec<(u64, bool)>> {
        None
    }
}

/// Extents per BLOCK_STATUS reply.
const MAX_EXTENTS: usize = 1024;
/// Most bytes one block status reply describes.
const MAX_STATUS_SPAN: u64 = 1 << 30;

/// Largest option payload read; longer ones are skipped with ERR_TOO_BIG.
const MAX_OPTION: usize = 64 * 1024;
/// Options before the client must have picked an export.
const MAX_OPTIONS: u32 = 512;
/// Request payload bytes in flight or queued for sending before reading
/// pauses (the budget account usually says wait first).
const MAX_BUFFERED: usize = 64 << 20;
/// Requests in flight per connection.
const MAX_REQUESTS: usize = 256;

pub use ironbay_bdev::BlockIo;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    ClientFlags,
    Options,
    Transmission,
    /// No more input; finish what is in flight, flush, then close.
    Draining,
}

enum Pending {
    None,
    /// A write whose payload is arriving, into one buffer per bdev-sized
    /// piece.
    Payload {
        req: Request,
        bufs: Vec<IoBuf>,
        /// Piece being filled, and bytes in it.
        piece: usize,
        filled: usize,
    },
    /// Bytes to throw away (an oversized option or refused write payload).
    Skip {
        left: usize,
    },
}

struct Command {
    cookie: u64,
    kind: u16,
    offset: u64,
    length: u32,
    parts_left: u32,
    error: u32,
    /// Read data per part, in order.
    data: Vec<Option<IoBuf>>,
}

pub struct Connection {
    phase: Phase,
    head: Vec<u8>,
    pending: Pending,
    out: OutQueue,
    no_zeroes: bool,
    structured: bool,
    /// Contexts of the last NBD_OPT_SET_META_CONTEXT (id = index + 1), for
    /// `meta_export`; transmission on another export has none.
    meta: Vec<Ctx>,
    meta_export: Option<String>,
    options: u32,
    export: Option<Export>,
    ios: VecDeque<BlockIo>,
    commands: CommandTable<Command>,
    in_flight_bytes: usize,
    account: Account,
    /// A request waiting for memory; no input is read meanwhile.
    stalled: Option<Request>,
    /// Why the connection ended early, for the log.
    pub error: Option<&'static str>,
}

/// Reply to an unknown export, or any option error, carries no data.
const BASE_ALLOCATION: &str = "base:allocation";

fn errno_of(s: IoStatus) -> u32 {
    match s {
        IoStatus::Success => 0,
        IoStatus::OutOfRange | IoStatus::NoSpace => errno::ENOSPC,
        IoStatus::Misaligned | IoStatus::TooLarge => errno::EINVAL,
        IoStatus::Unsupported => errno::ENOTSUP,
        IoStatus::ReadOnly => errno::EPERM,
        IoStatus::NoMemory => errno::ENOMEM,
        IoStatus::DeviceError(_)
        | IoStatus::Timeout
        | IoStatus::DeviceFailed
        | IoStatus::Claimed => errno::EIO,
    }
}

impl Connection {
    /// A new connection with memory from an unlimited budget.
    pub fn new() -> Self {
        Self::with_account(Account::default())
    }

    /// A new connection charging its buffers to `account`; the greeting is
    /// queued for output.
    pub fn with_account(account: Account) -> Self {
        let mut c = Connection {
            phase: Phase::ClientFlags,
            head: Vec::new(),
            pending: Pending::None,
            out: OutQueue::default(),
            no_zeroes: false,
            structured: false,
            meta: Vec::new(),
            meta_export: None,
            options: 0,
            export: None,
            ios: VecDeque::new(),
            commands: CommandTable::default(),
            in_flight_bytes: 0,
            account,
            stalled: None,
            error: None,
        };
        let mut g = Vec::with_capacity(18);
        g.extend(wire::NBDMAGIC.to_be_bytes());
        g.extend(wire::IHAVEOPT.to_be_bytes());
        g.extend((wire::FLAG_FIXED_NEWSTYLE | wire::FLAG_NO_ZEROES).to_be_bytes());
        c.send(g);
        c
    }

    fn send(&mut self, v: Vec<u8>) {
        self.out.push_bytes(v);
    }

    /// Largest request payload served: what one connection's share of the
    /// budget can hold, as a power of two (clients split larger I/O).
    pub fn max_payload(&self) -> u32 {
        let hold = self.account.budget().max_hold().min(MAX_REQUEST as usize);
        let p = 1u32 << (usize::BITS - 1 - hold.max(1).leading_zeros());
        p.max(4096)
    }

    fn fail(&mut self, why: &'static str) {
        self.error.get_or_insert(why);
        self.phase = Phase::Draining;
        self.pending = Pending::None;
        self.stalled = None;
    }

    /// The export in use once transmission started.
    pub fn export(&self) -> Option<&Export> {
        self.export.as_ref()
    }

    /// Closes a connection before its handshake (the server is full).
    pub fn turn_away(&mut self, why: &'static str) {
        self.out = OutQueue::default();
        self.fail(why);
    }

    /// Ends the connection if its export was removed.
    pub fn check_export(&mut self, exports: &Exports) {
        if self.export.as_ref().is_some_and(|e| !exports.still_has(e)) {
            self.fail("export removed");
        }
    }

    fn busy(&self) -> bool {
        self.in_flight_bytes + self.out.bytes() > MAX_BUFFERED
            || self.commands.len() >= MAX_REQUESTS
    }

    /// Takes bytes from the peer; returns how many were used. Fewer than
    /// offered means "later": the rest must be offered again.
    pub fn handle_input(
        &mut self,
        mut data: &[u8],
        exports: &Exports,
        map: &dyn AllocationMap,
    ) -> usize {
        let total = data.len();
        while !data.is_empty() && self.phase != Phase::Draining {
            match &mut self.pending {
                Pending::Payload {
                    bufs,
                    piece,
                    filled,
                    ..
                } => {
                    let buf = &mut bufs[*piece];
                    let n = (buf.len() - *filled).min(data.len());
                    buf.as_mut_slice()[*filled..*filled + n].copy_from_slice(&data[..n]);
                    *filled += n;
                    data = &data[n..];
                    if *filled == buf.len() {
                        *piece += 1;
                        *filled = 0;
                    }
                    if *piece == bufs.len()
                        && let Pending::Payload { req, bufs, .. } =
                            core::mem::replace(&mut self.pending, Pending::None)
                    {
                        self.start_write(req, bufs);
                    }
                    continue;
                }
                Pending::Skip { left } => {
                    let n = (*left).min(data.len());
                    *left -= n;
                    data = &data[n..];
                    if *left == 0 {
                        self.pending = Pending::None;
                    }
                    continue;
                }
                Pending::None => {}
            }
            if self.stalled.is_some()
                || (self.phase == Phase::Transmission && self.head.is_empty() && self.busy())
            {
                break;
            }
            let need = match self.phase {
                Phase::ClientFlags => 4,
                Phase::Options if self.head.len() < 16 => 16,
                Phase::Options => {
                    16 + u32::from_be_bytes([
                        self.head[12],
                        self.head[13],
                        self.head[14],
                        self.head[15],
                    ]) as usize
                }
                Phase::Transmission => wire::REQUEST_LEN,
                Phase::Draining => break,
            };
            let n = need.saturating_sub(self.head.len()).min(data.len());
            self.head.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.head.len() < need {
                continue;
            }
            match self.phase {
                Phase::ClientFlags => self.client_flags(),
                Phase::Options if need == 16 => self.option_header(exports),
                Phase::Options => self.option(exports),
                Phase::Transmission => self.request(map),
                Phase::Draining => {}
            }
        }
        total - data.len()
    }

    fn client_flags(&mut self) {
        let f = u32::from_be_bytes([self.head[0], self.head[1], self.head[2], self.head[3]]);
        self.head.clear();
        if f & !(wire::FLAG_C_FIXED_NEWSTYLE | wire::FLAG_C_NO_ZEROES) != 0 {
            return self.fail("unknown client flags");
        }
        // Without C_FIXED_NEWSTYLE the client speaks plain newstyle: it can
        // only send EXPORT_NAME, which is answered the same way.
        self.no_zeroes = f & wire::FLAG_C_NO_ZEROES != 0;
        self.phase = Phase::Options;
    }

    /// A complete 16-byte option header is in `head`: check it, and if the
    /// payload is too large, refuse and skip it.
    fn option_header(&mut self, exports: &Exports) {
        let magic = u64::from_be_bytes(self.head[0..8].try_into().unwrap_or_default());
        if magic != wire::IHAVEOPT {
            return self.fail("bad option magic");
        }
        self.options += 1;
        if self.options > MAX_OPTIONS {
            return self.fail("too many options");
        }
        let option = u32::from_be_bytes([self.head[8], self.head[9], self.head[10], self.head[11]]);
        let len = u32::from_be_bytes([self.head[12], self.head[13], self.head[14], self.head[15]])
            as usize;
        if len > MAX_OPTION {
            self.head.clear();
            match option {
                // No error reply exists for EXPORT_NAME (and no name is this long).
                opt::EXPORT_NAME => return self.fail("export name too long"),
                // ABORT is acknowledged whatever data came with it.
                opt::ABORT => return self.abort(),
                _ => {}
            }
            self.pending = Pending::Skip { left: len };
            self.send(wire::option_reply(option, rep::ERR_TOO_BIG, b""));
        } else if len == 0 {
            // Zero-length options are complete as they stand.
            self.option(exports);
        }
    }

    fn option(&mut self, exports: &Exports) {
        let head = core::mem::take(&mut self.head);
        let option = u32::from_be_bytes([head[8], head[9], head[10], head[11]]);
        let data = &head[16..];
        let reply = |kind| wire::option_reply(option, kind, b"");
        match option {
            opt::EXPORT_NAME => {
                let name = String::from_utf8_lossy(data);
                match exports.find(&name) {
                    Some(e) => {
                        let mut v = Vec::with_capacity(134);
                        v.extend(e.size.to_be_bytes());
                        v.extend(self.transmission_flags(e).to_be_bytes());
                        if !self.no_zeroes {
                            v.extend([0u8; 124]);
                        }
                        self.send(v);
                        self.enter_transmission(e.clone());
                    }
                    // No error reply exists for EXPORT_NAME: the only answer is to close.
                    None => self.fail("unknown export"),
                }
            }
            opt::ABORT => self.abort(),
            opt::LIST => {
                if !data.is_empty() {
                    return self.send(reply(rep::ERR_INVALID));
                }
                for e in &exports.list {
                    let mut d = Vec::new();
                    d.extend((e.name.len() as u32).to_be_bytes());
                    d.extend(e.name.as_bytes());
                    d.extend(e.description.as_bytes());
                    self.send(wire::option_reply(option, rep::SERVER, &d));
                }
                self.send(reply(rep::ACK));
            }
            opt::STARTTLS => self.send(reply(rep::ERR_POLICY)),
            opt::STRUCTURED_REPLY => {
                if !data.is_empty() {
                    return self.send(reply(rep::ERR_INVALID));
                }
                self.structured = true;
                self.send(reply(rep::ACK));
            }
            opt::INFO | opt::GO => self.info_or_go(option, data, exports),
            opt::LIST_META_CONTEXT | opt::SET_META_CONTEXT => {
                self.meta_context(option, data, exports)
            }
            _ => self.send(reply(rep::ERR_UNSUP)),
        }
    }

    fn abort(&mut self) {
        self.send(wire::option_reply(opt::ABORT, rep::ACK, b""));
        self.fail("client aborted");
        self.error = None;
    }

    /// Transmission flags for `e` on this connection: DF only with
    /// structured replies.
    fn transmission_flags(&self, e: &Export) -> u16 {
        let f = e.flags();
        if self.structured {
            f
        } else {
            f & !wire::tflag::SEND_DF
        }
    }

    /// Entering transmission on `e`: contexts count only if selected for it.
    fn enter_transmission(&mut self, e: Export) {
        if self.meta_export.as_deref() != Some(e.name.as_str()) {
            self.meta.clear();
        }
        self.export = Some(e);
        self.phase = Phase::Transmission;
    }

    fn info_or_go(&mut self, option: u32, data: &[u8], exports: &Exports) {
        let mut r = Reader::new(data);
        let parsed = (|| {
            let len = r.u32()? as usize;
            let name = r.bytes(len)?;
            let n = r.u16()? as usize;
            let mut wanted = Vec::new();
            for _ in 0..n {
                wanted.push(r.u16()?);
            }
            r.done()
                .then_some((String::from_utf8_lossy(name).into_owned(), wanted))
        })();
        let Some((name, wanted)) = parsed else {
            return self.send(wire::option_reply(option, rep::ERR_INVALID, b""));
        };
        let Some(e) = exports.find(&name).cloned() else {
            return self.send(wire::option_reply(option, rep::ERR_UNKNOWN, b""));
        };
        let mut export = Vec::new();
        export.extend(info::EXPORT.to_be_bytes());
        export.extend(e.size.to_be_bytes());
        export.extend(self.transmission_flags(&e).to_be_bytes());
        self.send(wire::option_reply(option, rep::INFO, &export));
        if wanted.contains(&info::NAME) {
            let mut d = info::NAME.to_be_bytes().to_vec();
            d.extend(e.name.as_bytes());
            self.send(wire::option_reply(option, rep::INFO, &d));
        }
        if wanted.contains(&info::DESCRIPTION) && !e.description.is_empty() {
            let mut d = info::DESCRIPTION.to_be_bytes().to_vec();
            d.extend(e.description.as_bytes());
            self.send(wire::option_reply(option, rep::INFO, &d));
        }
        // Always sent: clients must not go below the bdev's block size.
        let (min, pref, max) = e.block_sizes();
        let max = max.min(self.max_payload()).max(min);
        let mut d = info::BLOCK_SIZE.to_be_bytes().to_vec();
        d.extend(min.to_be_bytes());
        d.extend(pref.to_be_bytes());
        d.extend(max.to_be_bytes());
        self.send(wire::option_reply(option, rep::INFO, &d));
        self.send(wire::option_reply(option, rep::ACK, b""));
        if option == opt::GO {
            self.enter_transmission(e);
        }
    }

    fn meta_context(&mut self, option: u32, data: &[u8], exports: &Exports) {
        // SET replaces the selection, also when it fails.
        if option == opt::SET_META_CONTEXT {
            self.meta_export = None;
            self.meta.clear();
            if !self.structured {
                return self.send(wire::option_reply(option, rep::ERR_INVALID, b""));
            }
        }
        let mut r = Reader::new(data);
        let parsed = (|| {
            let len = r.u32()? as usize;
            let name = r.bytes(len)?;
            let n = r.u32()?;
            let mut queries = Vec::new();
            // Every query is parsed (each takes at least 4 of the option's
            // bounded bytes); the first 256 are kept.
            for i in 0..n {
                let l = r.u32()? as usize;
                let q = r.bytes(l)?;
                if i < 256 {
                    queries.push(q);
                }
            }
            r.done()
                .then_some((String::from_utf8_lossy(name).into_owned(), queries, n))
        })();
        let Some((name, queries, n)) = parsed else {
            return self.send(wire::option_reply(option, rep::ERR_INVALID, b""));
        };
        if n > 256 {
            return self.send(wire::option_reply(option, rep::ERR_TOO_BIG, b""));
        }
        let Some(export) = exports.find(&name) else {
            return self.send(wire::option_reply(option, rep::ERR_UNKNOWN, b""));
        };
        // LIST with no queries lists all; namespaces are wildcards for LIST
        // only. Replies come in the export's context order.
        let list = option == opt::LIST_META_CONTEXT;
        let chosen: Vec<Ctx> = contexts(export)
            .into_iter()
            .filter(|c| (list && queries.is_empty()) || queries.iter().any(|q| c.matches(q, list)))
            .collect();
        if !list {
            self.meta_export = Some(export.name.clone());
        }
        for (i, c) in chosen.iter().enumerate() {
            // Context IDs in LIST replies are reserved: zero.
            let id = if list { 0 } else { i as u32 + 1 };
            let mut d = id.to_be_bytes().to_vec();
            d.extend(c.name().as_bytes());
            self.send(wire::option_reply(option, rep::META_CONTEXT, &d));
        }
        if !list {
            self.meta = chosen;
        }
        self.send(wire::option_reply(option, rep::ACK, b""));
    }

    fn request(&mut self, map: &dyn AllocationMap) {
        let mut raw = [0u8; wire::REQUEST_LEN];
        raw.copy_from_slice(&self.head);
        self.head.clear();
        let Some(req) = Request::parse(&raw) else {
            return self.fail("bad request magic");
        };
        self.process(req, map);
    }

    /// Buffers for a `len`-byte request cut into bdev-sized pieces, from
    /// the account. `Ok(None)`: the request was answered with an error or
    /// waits for memory (then it is `stalled`).
    fn buffers(&mut self, req: Request, e: &Export) -> Option<Vec<IoBuf>> {
        let chunk = piece_len(e);
        let total = req.length as u64;
        let mut bufs = Vec::new();
        let mut off = 0;
        while off < total {
            let n = chunk.min(total - off) as usize;
            match self.account.try_buf(n) {
                Ok(b) => bufs.push(b),
                Err(Short::Wait) => {
                    self.stalled = Some(req);
                    return None;
                }
                Err(Short::Never) => {
                    self.refuse(req, errno::ENOMEM);
                    return None;
                }
            }
            off += n as u64;
        }
        Some(bufs)
    }

    /// Answers a request with an error, skipping a write's payload.
    fn refuse(&mut self, req: Request, err: u32) {
        if req.kind == cmd::WRITE {
            self.pending = Pending::Skip {
                left: req.length as usize,
            };
        }
        self.reply_error(req.cookie, req.kind, err);
    }

    /// Memory may have been released: retry the request that waited.
    pub fn handle_memory(&mut self, map: &dyn AllocationMap) {
        if let Some(req) = self.stalled.take() {
            self.process(req, map);
        }
    }

    /// Whether a request waits for memory.
    pub fn waits_for_memory(&self) -> bool {
        self.stalled.is_some()
    }

    fn process(&mut self, req: Request, map: &dyn AllocationMap) {
        let Some(e) = self.export.clone() else {
            return self.fail("no export");
        };
        let write_like = matches!(req.kind, cmd::WRITE | cmd::TRIM | cmd::WRITE_ZEROES);
        let end = req.offset.checked_add(req.length as u64);
        let bs = e.block_size as u64;
        let max_payload = self.max_payload();
        let check = || -> Result<(), u32> {
            if req.kind == cmd::DISC || req.kind == cmd::FLUSH {
                return Ok(());
            }
            if write_like && e.read_only {
                return Err(errno::EPERM);
            }
            if req.length > max_payload && matches!(req.kind, cmd::READ | cmd::WRITE) {
                return Err(errno::EOVERFLOW);
            }
            match end {
                Some(end) if end <= e.size => {}
                _ => {
                    return Err(if write_like {
                        errno::ENOSPC
                    } else {
                        errno::EINVAL
                    });
                }
            }
            if !req.offset.is_multiple_of(bs) || !(req.length as u64).is_multiple_of(bs) {
                return Err(errno::EINVAL);
            }
            if req.kind == cmd::BLOCK_STATUS && (self.meta.is_empty() || req.length == 0) {
                return Err(errno::EINVAL);
            }
            // FUA is valid on every command; CACHE knows no other flag.
            if req.kind == cmd::CACHE && req.flags & !cmd::FLAG_FUA != 0 {
                return Err(errno::EINVAL);
            }
            Ok(())
        };
        let verdict = check();
        if req.kind == cmd::WRITE {
            if let Err(err) = verdict {
                // Refuse, but still read past the payload to stay in sync.
                if req.length > MAX_REQUEST {
                    self.reply_error(req.cookie, req.kind, err);
                    return self.fail("write payload too large");
                }
                return self.refuse(req, err);
            }
            if req.length == 0 {
                return self.reply_done(req.cookie);
            }
            let Some(bufs) = self.buffers(req, &e) else {
                return;
            };
            self.in_flight_bytes += req.length as usize;
            self.pending = Pending::Payload {
                req,
                bufs,
                piece: 0,
                filled: 0,
            };
            return;
        }
        if let Err(err) = verdict {
            return self.reply_error(req.cookie, req.kind, err);
        }
        match req.kind {
            cmd::DISC => self.phase = Phase::Draining,
            cmd::READ if req.length == 0 => self.reply_none(req.cookie),
            cmd::READ => {
                let Some(bufs) = self.buffers(req, &e) else {
                    return;
                };
                self.in_flight_bytes += req.length as usize;
                let mut bufs = bufs.into_iter();
                self.split(&e, req, |lba, _| IoOp::Read {
                    lba,
                    buf: bufs.next().unwrap_or_else(|| IoBuf::new(0)),
                });
            }
            cmd::FLUSH => self.split(&e, req, |_, _| IoOp::Flush),
            cmd::CACHE => self.reply_done(req.cookie),
            cmd::TRIM if !e.io_types.contains(IoType::Unmap) => self.reply_done(req.cookie),
            cmd::TRIM | cmd::WRITE_ZEROES if req.length == 0 => self.reply_done(req.cookie),
            cmd::TRIM => self.split(&e, req, |lba, bytes| IoOp::Unmap {
                lba,
                blocks: (bytes / bs) as u32,
            }),
            cmd::WRITE_ZEROES => {
                if e.io_types.contains(IoType::WriteZeroes) {
                    self.split(&e, req, |lba, bytes| IoOp::WriteZeroes {
                        lba,
                        blocks: (bytes / bs) as u32,
                    });
                } else if req.flags & cmd::FLAG_FAST_ZERO != 0 {
                    self.reply_error(req.cookie, req.kind, errno::ENOTSUP);
                } else {
                    // Zeroes written as data: buffers from the budget too.
                    let Some(bufs) = self.buffers(req, &e) else {
                        return;
                    };
                    let mut bufs = bufs.into_iter();
                    self.split(&e, req, |lba, _| IoOp::Write {
                        lba,
                        buf: bufs.next().unwrap_or_else(|| IoBuf::new(0)),
                    });
                }
            }
            cmd::BLOCK_STATUS => self.block_status(req, &e, map),
            _ => self.reply_error(req.cookie, req.kind, errno::EINVAL),
        }
    }

    fn new_command(&mut self, req: Request, parts: u32) -> Option<u16> {
        let c = Command {
            cookie: req.cookie,
            kind: req.kind,
            offset: req.offset,
            length: req.length,
            parts_left: parts,
            error: 0,
            data: Vec::new(),
        };
        self.commands.insert(c)
    }

    /// Splits a request into bdev-sized pieces made by `op(lba, bytes)`.
    fn split(&mut self, e: &Export, req: Request, mut op: impl FnMut(u64, u64) -> IoOp) {
        let bs = e.block_size as u64;
        let limit = match req.kind {
            cmd::TRIM => e.max_unmap_blocks as u64 * bs,
            cmd::WRITE_ZEROES if e.io_types.contains(IoType::WriteZeroes) => {
                e.max_write_zeroes_blocks as u64 * bs
            }
            _ => e.max_transfer as u64,
        };
        let chunk = (limit / bs).max(1) * bs;
        let total = req.length as u64;
        let parts = if req.kind == cmd::FLUSH {
            1
        } else {
            total.div_ceil(chunk)
        };
        if parts > u16::MAX as u64 {
            return self.reply_error(req.cookie, req.kind, errno::EOVERFLOW);
        }
        // MAX_REQUESTS keeps the table far below its 65536 slots.
        let Some(id) = self.new_command(req, parts as u32) else {
            return self.reply_error(req.cookie, req.kind, errno::ENOMEM);
        };
        if req.kind == cmd::READ
            && let Some(c) = self.commands.get_mut(id)
        {
            c.data = (0..parts).map(|_| None).collect();
        }
        let fua = req.flags & cmd::FLAG_FUA != 0
            || (e.writethrough && matches!(req.kind, cmd::WRITE | cmd::WRITE_ZEROES | cmd::TRIM));
        for p in 0..parts {
            let off = p * chunk;
            let bytes = chunk.min(total - off);
            let tag = self.commands.tag(id, p as u32);
            self.ios.push_back(BlockIo {
                tag,
                bdev: e.bdev,
                op: op((req.offset + off) / bs, bytes),
                fua,
            });
        }
    }

    /// The payload is in: one bdev write per piece it arrived in.
    fn start_write(&mut self, req: Request, bufs: Vec<IoBuf>) {
        let Some(e) = self.export.clone() else { return };
        let mut bufs = bufs.into_iter();
        self.split(&e, req, |lba, _| IoOp::Write {
            lba,
            buf: bufs.next().unwrap_or_else(|| IoBuf::new(0)),
        });
    }

    /// base:allocation for the range, from the device's map where it keeps one.
    fn block_status(&mut self, req: Request, e: &Export, map: &dyn AllocationMap) {
        const HOLE_ZERO: u32 = 3;
        let bs = e.block_size as u64;
        // A reply may cover less than was asked (the client asks again
        // from where it ends): a maps walk stays short however large the
        // request.
        let span = (req.length as u64).min(MAX_STATUS_SPAN);
        let blocks = span / bs;
        let limit = if req.flags & cmd::FLAG_REQ_ONE != 0 {
            1
        } else {
            MAX_EXTENTS
        };
        let last = self.meta.len();
        // Taken for the loop (sending needs `self`), put back after.
        let meta = core::mem::take(&mut self.meta);
        for (i, c) in meta.iter().enumerate() {
            // (bytes, flags) runs for this context.
            let runs: Vec<(u64, u32)> = match c {
                Ctx::Base => map
                    .allocation(e.bdev, req.offset / bs, blocks)
                    .unwrap_or_else(|| alloc::vec![(blocks, true)])
                    .into_iter()
                    .map(|(n, a)| (n * bs, if a { 0 } else { HOLE_ZERO }))
                    .collect(),
                Ctx::Depth => map
                    .depth(e.bdev, req.offset / bs, blocks)
                    .unwrap_or_else(|| alloc::vec![(blocks, 1)])
                    .into_iter()
                    .map(|(n, d)| (n * bs, d))
                    .collect(),
                Ctx::Bitmap(b, name) => map
                    .dirty(*b, name, req.offset, span)
                    .unwrap_or_else(|| alloc::vec![(span, true)])
                    .into_iter()
                    .map(|(n, d)| (n, d as u32))
                    .collect(),
            };
            let mut payload = (i as u32 + 1).to_be_bytes().to_vec();
            for (n, flags) in runs.into_iter().filter(|r| r.0 > 0).take(limit) {
                payload.extend((n as u32).to_be_bytes());
                payload.extend(flags.to_be_bytes());
            }
            let flags = if i + 1 == last { chunk::FLAG_DONE } else { 0 };
            let mut v =
                wire::chunk_header(flags, chunk::BLOCK_STATUS, req.cookie, payload.len() as u32)
                    .to_vec();
            v.extend(payload);
            self.send(v);
        }
        self.meta = meta;
    }

    /// Success without data: NBD_REPLY_TYPE_NONE once structured replies
    /// are on (a READ must never get a simple reply then).
    fn reply_none(&mut self, cookie: u64) {
        if self.structured {
            self.send(wire::chunk_header(chunk::FLAG_DONE, chunk::NONE, cookie, 0).to_vec());
        } else {
            self.reply_done(cookie);
        }
    }

    fn reply_done(&mut self, cookie: u64) {
        self.send(wire::simple_reply(0, cookie).to_vec());
    }

    fn reply_error(&mut self, cookie: u64, kind: u16, err: u32) {
        if self.structured && (kind == cmd::READ || kind == cmd::BLOCK_STATUS) {
            let mut v = wire::chunk_header(chunk::FLAG_DONE, chunk::ERROR, cookie, 6).to_vec();
            v.extend(err.to_be_bytes());
            v.extend(0u16.to_be_bytes());
            self.send(v);
        } else {
            self.send(wire::simple_reply(err, cookie).to_vec());
        }
    }

    /// The next block I/O to start.
    pub fn poll_io(&mut self) -> Option<BlockIo> {
        self.ios.pop_front()
    }

    /// Gives back an I/O that could not be started yet (queue full).
    pub fn retry_io(&mut self, io: BlockIo) {
        self.ios.push_front(io);
    }

    pub fn handle_completion(&mut self, tag: u64, c: IoCompletion) {
        let Some((id, part, cmd)) = self.commands.by_tag(tag) else {
            return;
        };
        let part = part as usize;
        cmd.parts_left -= 1;
        if cmd.error == 0 {
            cmd.error = errno_of(c.status);
        }
        if cmd.kind == cmd::READ
            && let Some(slot) = cmd.data.get_mut(part)
        {
            *slot = c.buf;
        }
        if cmd.parts_left > 0 {
            return;
        }
        let Some(cmd) = self.commands.remove(id) else {
            return;
        };
        if matches!(cmd.kind, cmd::READ | cmd::WRITE) {
            self.in_flight_bytes = self.in_flight_bytes.saturating_sub(cmd.length as usize);
        }
        if cmd.error != 0 {
            return self.reply_error(cmd.cookie, cmd.kind, cmd.error);
        }
        if cmd.kind != cmd::READ {
            return self.reply_done(cmd.cookie);
        }
        if self.structured {
            let mut h = wire::chunk_header(
                chunk::FLAG_DONE,
                chunk::OFFSET_DATA,
                cmd.cookie,
                8 + cmd.length,
            )
            .to_vec();
            h.extend(cmd.offset.to_be_bytes());
            self.send(h);
        } else {
            self.send(wire::simple_reply(0, cmd.cookie).to_vec());
        }
        for b in cmd.data.into_iter().flatten() {
            let len = b.len();
            self.out.push_data(Rc::new(b), 0, len);
        }
    }

    /// Bytes waiting to be sent (a prefix of them, at least one if any).
    pub fn poll_output(&self) -> Option<&[u8]> {
        self.out.front()
    }

    pub fn consume_output(&mut self, n: usize) {
        self.out.consume(n);
    }

    /// Whether more input would be taken now.
    pub fn wants_input(&self) -> bool {
        self.phase != Phase::Draining
            && self.stalled.is_none()
            && !(self.phase == Phase::Transmission && self.busy())
    }

    /// Still in the handshake: no export chosen yet.
    pub fn in_handshake(&self) -> bool {
        matches!(self.phase, Phase::ClientFlags | Phase::Options)
    }

    /// Nothing in flight, nothing to send, and the client is done or dropped.
    pub fn finished(&self) -> bool {
        self.phase == Phase::Draining
            && self.out.is_empty()
            && self.commands.is_empty()
            && self.ios.is_empty()
    }

    pub fn in_transmission(&self) -> bool {
        self.phase == Phase::Transmission
    }
}

impl Default for Connection {
    fn default() -> Self {
        Self::new()
    }
}

/// Bytes per bdev request for reads and writes.
fn piece_len(e: &Export) -> u64 {
    let bs = e.block_size as u64;
    (e.max_transfer as u64 / bs).max(1) * bs
}
