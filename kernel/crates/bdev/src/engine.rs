//! What every target engine (NBD, iSCSI, NVMe-oF) shares between its
//! protocol and the block layer.

use crate::{Account, BdevId, IoBuf, IoCompletion, IoOp, Registry};
use alloc::collections::VecDeque;
use alloc::rc::Rc;
use alloc::vec::Vec;
use core::net::SocketAddr;

/// A block I/O a target engine wants started; `tag` comes back in the
/// completion.
#[derive(Debug)]
pub struct BlockIo {
    pub tag: u64,
    pub bdev: BdevId,
    pub op: IoOp,
    pub fua: bool,
}

/// One connection of a sans-IO target engine, as the endpoint drives it.
///
/// Driving order, each poll-loop turn: [`handle_input`](Self::handle_input)
/// with received bytes while [`wants_input`](Self::wants_input) (unconsumed
/// bytes stay in the socket), [`handle_memory`](Self::handle_memory) while
/// [`waits_for_memory`](Self::waits_for_memory),
/// [`handle_timeout`](Self::handle_timeout) once
/// [`poll_timeout`](Self::poll_timeout) has passed, start every
/// [`poll_io`](Self::poll_io) on the block layer (giving back with
/// [`retry_io`](Self::retry_io) what the layer cannot take yet), send what
/// [`poll_output`](Self::poll_output) offers and report it with
/// [`consume_output`](Self::consume_output). Completions go to
/// [`handle_completion`](Self::handle_completion) whenever they arrive.
/// When [`finished`](Self::finished), the endpoint closes the socket; when
/// the socket is gone, [`closed`](Self::closed) is the last call.
///
/// Every buffer a peer makes the engine hold is taken from the connection's
/// [`Account`]; when it says wait, the engine stops taking input until
/// `handle_memory` lets it go on.
pub trait TargetEngine {
    /// What the engine's connections share (exports, target nodes,
    /// subsystems).
    type Target;
    /// Who is on the other end, for the log.
    const PEER: &'static str;
    fn open(
        local: SocketAddr,
        peer: SocketAddr,
        now_ms: u64,
        account: Account,
        target: &mut Self::Target,
    ) -> Self;
    fn wants_input(&self) -> bool;
    /// Takes bytes from the peer; returns how many were used.
    fn handle_input(
        &mut self,
        data: &[u8],
        target: &mut Self::Target,
        bdevs: &Registry,
        now_ms: u64,
    ) -> usize;
    fn waits_for_memory(&self) -> bool {
        false
    }
    /// Memory may have come back: retry what waited for it.
    fn handle_memory(&mut self, _target: &mut Self::Target, _bdevs: &Registry, _now_ms: u64) {}
    /// When [`handle_timeout`](Self::handle_timeout) is next due (ms).
    fn poll_timeout(&self) -> Option<u64>;
    fn handle_timeout(&mut self, target: &mut Self::Target, bdevs: &Registry, now_ms: u64);
    fn poll_io(&mut self) -> Option<BlockIo>;
    fn retry_io(&mut self, io: BlockIo);
    fn handle_completion(
        &mut self,
        tag: u64,
        c: IoCompletion,
        target: &mut Self::Target,
        bdevs: &Registry,
        now_ms: u64,
    );
    fn poll_output(&self) -> Option<&[u8]>;
    fn consume_output(&mut self, n: usize);
    /// Nothing more will happen: close the socket once output is sent.
    fn finished(&self) -> bool;
    /// Why the connection ended early, once, for the log.
    fn take_error(&mut self) -> Option<&'static str>;
    /// Still logging in (handshake, login, ICReq/Connect): such a connection
    /// may be evicted when every slot is taken.
    fn in_handshake(&self) -> bool;
    /// The socket is gone; release what the target keeps for it.
    fn closed(&mut self, target: &mut Self::Target);
}

/// Implements [`TargetEngine`] for a connection whose inherent methods
/// already carry the trait's names and signatures (`new(local, peer,
/// now_ms)`, `handle_input(data, target, bdevs, now_ms)`, ...), an
/// `account` field and a public `error`, as the iSCSI and NVMe-oF
/// connections do.
#[macro_export]
macro_rules! target_engine_from_inherent {
    ($conn:ty, $target:ty, $peer:expr) => {
        impl $crate::engine::TargetEngine for $conn {
            type Target = $target;
            const PEER: &'static str = $peer;
            fn open(
                local: core::net::SocketAddr,
                peer: core::net::SocketAddr,
                now_ms: u64,
                account: $crate::Account,
                _: &mut $target,
            ) -> Self {
                let mut c = <$conn>::new(local, peer, now_ms);
                c.account = account;
                c
            }
            fn wants_input(&self) -> bool {
                <$conn>::wants_input(self)
            }
            fn handle_input(
                &mut self,
                data: &[u8],
                t: &mut $target,
                bdevs: &$crate::Registry,
                now_ms: u64,
            ) -> usize {
                <$conn>::handle_input(self, data, t, bdevs, now_ms)
            }
            fn waits_for_memory(&self) -> bool {
                <$conn>::waits_for_memory(self)
            }
            fn handle_memory(&mut self, t: &mut $target, bdevs: &$crate::Registry, now_ms: u64) {
                <$conn>::handle_memory(self, t, bdevs, now_ms)
            }
            fn poll_timeout(&self) -> Option<u64> {
                <$conn>::poll_timeout(self)
            }
            fn handle_timeout(&mut self, t: &mut $target, bdevs: &$crate::Registry, now_ms: u64) {
                <$conn>::handle_timeout(self, t, bdevs, now_ms)
            }
            fn poll_io(&mut self) -> Option<$crate::BlockIo> {
                <$conn>::poll_io(self)
            }
            fn retry_io(&mut self, io: $crate::BlockIo) {
                <$conn>::retry_io(self, io)
            }
            fn handle_completion(
                &mut self,
                tag: u64,
                c: $crate::IoCompletion,
                t: &mut $target,
                bdevs: &$crate::Registry,
                now_ms: u64,
            ) {
                <$conn>::handle_completion(self, tag, c, t, bdevs, now_ms)
            }
            fn poll_output(&self) -> Option<&[u8]> {
                <$conn>::poll_output(self)
            }
            fn consume_output(&mut self, n: usize) {
                <$conn>::consume_output(self, n)
            }
            fn finished(&self) -> bool {
                <$conn>::finished(self)
            }
            fn take_error(&mut self) -> Option<&'static str> {
                self.error.take()
            }
            fn in_handshake(&self) -> bool {
                <$conn>::in_handshake(self)
            }
            fn closed(&mut self, t: &mut $target) {
                <$conn>::closed(self, t)
            }
        }
    };
}

/// Engine tags below 2^39 (the glue owns the bits above): the command's
/// slot, a generation that changes whenever the slot is reused (so a late
/// completion for an earlier command is recognised), and the sub-request.
pub mod tag {
    const SUB_BITS: u32 = 16;
    const GEN_BITS: u32 = 7;
    pub const GEN_MASK: u8 = (1 << GEN_BITS) - 1;

    pub fn pack(slot: u16, generation: u8, sub: u32) -> u64 {
        (slot as u64) << (SUB_BITS + GEN_BITS)
            | ((generation & GEN_MASK) as u64) << SUB_BITS
            | (sub & 0xffff) as u64
    }

    /// (slot, generation, sub-request).
    pub fn unpack(tag: u64) -> (usize, u8, u32) {
        (
            (tag >> (SUB_BITS + GEN_BITS)) as usize & 0xffff,
            (tag >> SUB_BITS) as u8 & GEN_MASK,
            tag as u32 & 0xffff,
        )
    }

    const _: () = assert!(SUB_BITS + GEN_BITS + 16 == 39);
}

/// Commands in flight, each in a slot whose generation changes when the
/// slot is reused, so a completion's tag ([`tag::pack`]) finds its own
/// command and never a successor.
///
/// A command may be retired: it is over for the protocol, but block I/O it
/// started is still at the device, so its slot (and its tags) stay taken
/// until the engine removes it.
pub struct CommandTable<T> {
    slots: Vec<(u8, Entry<T>)>,
    free: Vec<u16>,
    live: usize,
    retired: usize,
    limit: usize,
}

enum Entry<T> {
    Free,
    Live(T),
    Retired(T),
}

/// What a tag still names: the command's slot, the sub-request, and
/// whether the command is retired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Found {
    pub slot: u16,
    pub sub: u32,
    pub retired: bool,
}

impl<T> Default for CommandTable<T> {
    fn default() -> Self {
        Self::with_limit(Self::MAX)
    }
}

impl<T> CommandTable<T> {
    /// Slots a table may have (the tag's 16 slot bits).
    pub const MAX: usize = 1 << 16;

    /// A table of at most `limit` slots (and never more than [`Self::MAX`]).
    pub fn with_limit(limit: usize) -> Self {
        CommandTable {
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            retired: 0,
            limit: limit.min(Self::MAX),
        }
    }

    /// Stores `cmd`; its slot, or `None` when every slot is taken.
    pub fn insert(&mut self, cmd: T) -> Option<u16> {
        let i = match self.free.pop() {
            Some(i) => i,
            None if self.slots.len() < self.limit => {
                self.slots.push((0, Entry::Free));
                (self.slots.len() - 1) as u16
            }
            None => return None,
        };
        self.slots[i as usize].1 = Entry::Live(cmd);
        self.live += 1;
        Some(i)
    }

    /// The generation of `slot`: what its current command's tags carry.
    pub fn generation(&self, slot: u16) -> u8 {
        self.slots.get(slot as usize).map_or(0, |s| s.0)
    }

    /// The engine tag of sub-request `sub` of the command in `slot`.
    pub fn tag(&self, slot: u16, sub: u32) -> u64 {
        tag::pack(slot, self.generation(slot), sub)
    }

    /// The live or retired command a tag names, if it is still the one
    /// that made the tag.
    pub fn find(&self, t: u64) -> Option<Found> {
        let (slot, generation, sub) = tag::unpack(t);
        let (g, e) = self.slots.get(slot)?;
        let retired = match e {
            _ if *g != generation => return None,
            Entry::Free => return None,
            Entry::Live(_) => false,
            Entry::Retired(_) => true,
        };
        Some(Found {
            slot: slot as u16,
            sub,
            retired,
        })
    }

    /// The live command a tag names, if it is still the one that made the
    /// tag: (slot, sub-request, command).
    pub fn by_tag(&mut self, t: u64) -> Option<(u16, u32, &mut T)> {
        let f = self.find(t).filter(|f| !f.retired)?;
        Some((f.slot, f.sub, self.get_mut(f.slot)?))
    }

    /// Whether `slot` holds a live command of `generation`.
    pub fn is_current(&self, slot: u16, generation: u8) -> bool {
        self.get(slot).is_some() && self.generation(slot) == generation
    }

    /// The live command in `slot`.
    pub fn get(&self, slot: u16) -> Option<&T> {
        match self.slots.get(slot as usize)? {
            (_, Entry::Live(c)) => Some(c),
            _ => None,
        }
    }

    /// The live command in `slot`.
    pub fn get_mut(&mut self, slot: u16) -> Option<&mut T> {
        match self.slots.get_mut(slot as usize)? {
            (_, Entry::Live(c)) => Some(c),
            _ => None,
        }
    }

    /// The retired command in `slot`.
    pub fn retired_mut(&mut self, slot: u16) -> Option<&mut T> {
        match self.slots.get_mut(slot as usize)? {
            (_, Entry::Retired(c)) => Some(c),
            _ => None,
        }
    }

    pub fn is_retired(&self, slot: u16) -> bool {
        matches!(self.slots.get(slot as usize), Some((_, Entry::Retired(_))))
    }

    /// Retires the live command in `slot`: its slot and tags stay taken
    /// until [`remove`](Self::remove).
    pub fn retire(&mut self, slot: u16) -> bool {
        let Some(s) = self.slots.get_mut(slot as usize) else {
            return false;
        };
        match core::mem::replace(&mut s.1, Entry::Free) {
            Entry::Live(c) => {
                s.1 = Entry::Retired(c);
                self.live -= 1;
                self.retired += 1;
                true
            }
            e => {
                s.1 = e;
                false
            }
        }
    }

    /// Ends the command (live or retired) in `slot`; its old tags are
    /// stale from now on.
    pub fn remove(&mut self, slot: u16) -> Option<T> {
        let s = self.slots.get_mut(slot as usize)?;
        let cmd = match core::mem::replace(&mut s.1, Entry::Free) {
            Entry::Free => return None,
            Entry::Live(c) => {
                self.live -= 1;
                c
            }
            Entry::Retired(c) => {
                self.retired -= 1;
                c
            }
        };
        s.0 = s.0.wrapping_add(1) & tag::GEN_MASK;
        self.free.push(slot);
        Some(cmd)
    }

    /// Live commands.
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Retired commands still waiting for the device.
    pub fn retired(&self) -> usize {
        self.retired
    }

    /// One past the highest slot ever used: live slots are below it.
    pub fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// Live commands.
    pub fn iter(&self) -> impl Iterator<Item = (u16, &T)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match &s.1 {
                Entry::Live(c) => Some((i as u16, c)),
                _ => None,
            })
    }

    /// Live commands.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (u16, &mut T)> {
        self.slots
            .iter_mut()
            .enumerate()
            .filter_map(|(i, s)| match &mut s.1 {
                Entry::Live(c) => Some((i as u16, c)),
                _ => None,
            })
    }

    /// Live and retired commands.
    pub fn iter_all(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().filter_map(|s| match &s.1 {
            Entry::Live(c) | Entry::Retired(c) => Some(c),
            Entry::Free => None,
        })
    }
}

/// Commands waiting for memory (or a grant), oldest first, as (slot,
/// generation): an entry whose command has ended or moved on is skipped.
#[derive(Default)]
pub struct WaitQueue {
    q: VecDeque<(u16, u8)>,
}

impl WaitQueue {
    /// Queues the live command in `slot` last.
    pub fn push<T>(&mut self, table: &CommandTable<T>, slot: u16) {
        self.q.push_back((slot, table.generation(slot)));
    }

    pub fn len(&self) -> usize {
        self.q.len()
    }

    pub fn is_empty(&self) -> bool {
        self.q.is_empty()
    }

    pub fn clear(&mut self) {
        self.q.clear();
    }

    /// The waiting command at position `k`: entries there whose command is
    /// gone or for which `waits` is false are dropped first.
    pub fn at<T>(
        &mut self,
        k: usize,
        table: &CommandTable<T>,
        waits: impl Fn(&T) -> bool,
    ) -> Option<u16> {
        while let Some(&(s, g)) = self.q.get(k) {
            match table.get(s) {
                Some(c) if table.generation(s) == g && waits(c) => return Some(s),
                _ => {
                    self.q.remove(k);
                }
            }
        }
        None
    }

    /// Takes the entry at position `k` off, if it is still that of `slot`
    /// and `generation`.
    pub fn remove_at(&mut self, k: usize, slot: u16, generation: u8) {
        if self.q.get(k) == Some(&(slot, generation)) {
            self.q.remove(k);
        }
    }

    /// Takes the command of `slot` and `generation` off the queue.
    pub fn forget(&mut self, slot: u16, generation: u8) {
        self.q.retain(|&e| e != (slot, generation));
    }

    /// Whether a command still queued satisfies `f`.
    pub fn any<T>(&self, table: &CommandTable<T>, f: impl Fn(&T) -> bool) -> bool {
        self.q.iter().any(|&(s, g)| {
            table
                .get(s)
                .is_some_and(|c| table.generation(s) == g && f(c))
        })
    }
}

/// One piece of queued output: bytes built for it, or a range of a data
/// buffer shared with the command that read it (sent without a copy).
pub enum Out {
    Bytes(Vec<u8>),
    Data {
        buf: Rc<IoBuf>,
        start: usize,
        end: usize,
    },
}

impl Out {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Out::Bytes(v) => v,
            Out::Data { buf, start, end } => buf.as_slice().get(*start..*end).unwrap_or(&[]),
        }
    }
}

/// Output waiting for the socket: pieces in order, how much of the first
/// is sent, and how many bytes are still to go.
#[derive(Default)]
pub struct OutQueue {
    pieces: VecDeque<Out>,
    pos: usize,
    bytes: usize,
}

impl OutQueue {
    pub fn push_bytes(&mut self, v: Vec<u8>) {
        self.bytes += v.len();
        self.pieces.push_back(Out::Bytes(v));
    }

    /// Queues `buf[start..end]` without copying it.
    pub fn push_data(&mut self, buf: Rc<IoBuf>, start: usize, end: usize) {
        self.bytes += end.saturating_sub(start);
        self.pieces.push_back(Out::Data { buf, start, end });
    }

    /// Bytes queued and not yet sent.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Out> {
        self.pieces.iter()
    }

    /// The unsent part of the first piece.
    pub fn front(&self) -> Option<&[u8]> {
        self.pieces
            .front()
            .map(|o| o.bytes().get(self.pos..).unwrap_or(&[]))
    }

    /// `n` bytes went out.
    pub fn consume(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.pieces.front() else {
                return;
            };
            let len = front.bytes().len();
            let k = n.min(len.saturating_sub(self.pos));
            self.pos += k;
            self.bytes = self.bytes.saturating_sub(k);
            n -= k;
            if self.pos >= len {
                self.pieces.pop_front();
                self.pos = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{CommandTable, Found, IoBuf, OutQueue, WaitQueue, tag};
    use alloc::rc::Rc;
    use alloc::vec;

    #[test]
    fn out_queue_sends_pieces_in_order() {
        let mut q = OutQueue::default();
        q.push_bytes(vec![1, 2, 3]);
        let mut buf = IoBuf::new(512);
        buf.as_mut_slice()[10..14].copy_from_slice(&[7, 8, 9, 10]);
        q.push_data(Rc::new(buf), 10, 14);
        assert_eq!(q.bytes(), 7);
        assert_eq!(q.front(), Some(&[1u8, 2, 3][..]));
        q.consume(2);
        assert_eq!(q.front(), Some(&[3u8][..]));
        q.consume(2);
        assert_eq!(q.front(), Some(&[8u8, 9, 10][..]));
        q.consume(3);
        assert!(q.is_empty() && q.bytes() == 0 && q.front().is_none());
        q.consume(5);
    }

    #[test]
    fn command_tables_reject_stale_tags() {
        let mut t = super::CommandTable::default();
        let a = t.insert("a").unwrap();
        let old = t.tag(a, 3);
        assert_eq!(
            t.by_tag(old).map(|(s, sub, c)| (s, sub, *c)),
            Some((a, 3, "a"))
        );
        assert_eq!(t.remove(a), Some("a"));
        let b = t.insert("b").unwrap();
        assert_eq!(a, b);
        assert!(t.by_tag(old).is_none());
        assert_eq!(t.by_tag(t.tag(b, 0)).map(|(_, _, c)| *c), Some("b"));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn tags_round_trip() {
        let t = tag::pack(0xffff, 0x7f, 0xffff);
        assert!(t < 1 << 39);
        assert_eq!(tag::unpack(t), (0xffff, 0x7f, 0xffff));
        assert_eq!(tag::unpack(tag::pack(3, 0x80 | 5, 9)), (3, 5, 9));
    }

    #[test]
    fn retired_commands_keep_their_tags_until_removed() {
        let mut t = CommandTable::with_limit(2);
        let a = t.insert("a").unwrap();
        let b = t.insert("b").unwrap();
        assert!(t.insert("c").is_none(), "the limit holds");
        let old = t.tag(a, 1);
        assert!(t.retire(a) && !t.retire(a));
        assert_eq!((t.len(), t.retired()), (1, 1));
        assert!(t.get_mut(a).is_none() && t.by_tag(old).is_none());
        assert_eq!(
            t.find(old),
            Some(Found {
                slot: a,
                sub: 1,
                retired: true
            })
        );
        assert!(t.insert("c").is_none(), "a retired slot stays taken");
        assert_eq!(t.retired_mut(a).map(|c| *c), Some("a"));
        assert_eq!(t.iter_all().count(), 2);
        assert_eq!(t.remove(a), Some("a"));
        assert_eq!(t.retired(), 0);
        assert!(t.find(old).is_none());
        assert_eq!(t.insert("c"), Some(a));
        assert!(
            t.find(old).is_none(),
            "the successor does not take old tags"
        );
        assert_eq!(t.find(t.tag(b, 0)).map(|f| f.retired), Some(false));
    }

    #[test]
    fn wait_queues_skip_what_no_longer_waits() {
        let mut t = CommandTable::default();
        let mut q = WaitQueue::default();
        let a = t.insert(1).unwrap();
        let b = t.insert(2).unwrap();
        let c = t.insert(3).unwrap();
        for s in [a, b, c] {
            q.push(&t, s);
        }
        assert!(q.any(&t, |&v| v == 2));
        t.remove(a);
        let a2 = t.insert(4).unwrap();
        assert_eq!(a2, a);
        // The ended command's entry is dropped, not taken for its successor.
        assert_eq!(q.at(0, &t, |_| true), Some(b));
        assert_eq!(q.len(), 2);
        // Entries whose command no longer waits are dropped too.
        assert_eq!(q.at(0, &t, |&v| v != 2), Some(c));
        q.remove_at(0, c, t.generation(c).wrapping_add(1));
        assert_eq!(q.len(), 1, "not the entry of another generation");
        q.remove_at(0, c, t.generation(c));
        assert!(q.is_empty() && q.at(0, &t, |_| true).is_none());
        q.push(&t, b);
        q.push(&t, c);
        q.forget(b, t.generation(b));
        assert_eq!(q.at(0, &t, |_| true), Some(c));
        assert!(!q.any(&t, |&v| v == 2));
    }
}
