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
pub struct CommandTable<T> {
    slots: Vec<(u8, Option<T>)>,
    free: Vec<u16>,
    live: usize,
}

impl<T> Default for CommandTable<T> {
    fn default() -> Self {
        CommandTable {
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
        }
    }
}

impl<T> CommandTable<T> {
    /// Slots a table may have (the tag's 16 slot bits).
    pub const MAX: usize = 1 << 16;

    /// Stores `cmd`; its slot, or `None` when every slot is taken.
    pub fn insert(&mut self, cmd: T) -> Option<u16> {
        let i = match self.free.pop() {
            Some(i) => i,
            None if self.slots.len() < Self::MAX => {
                self.slots.push((0, None));
                (self.slots.len() - 1) as u16
            }
            None => return None,
        };
        self.slots[i as usize].1 = Some(cmd);
        self.live += 1;
        Some(i)
    }

    /// The engine tag of sub-request `sub` of the command in `slot`.
    pub fn tag(&self, slot: u16, sub: u32) -> u64 {
        let generation = self.slots.get(slot as usize).map_or(0, |s| s.0);
        tag::pack(slot, generation, sub)
    }

    /// The command a tag names, if it is still the one that made the tag:
    /// (slot, sub-request, command).
    pub fn by_tag(&mut self, t: u64) -> Option<(u16, u32, &mut T)> {
        let (slot, generation, sub) = tag::unpack(t);
        let (g, cmd) = self.slots.get_mut(slot)?;
        if *g != generation {
            return None;
        }
        Some((slot as u16, sub, cmd.as_mut()?))
    }

    pub fn get_mut(&mut self, slot: u16) -> Option<&mut T> {
        self.slots.get_mut(slot as usize)?.1.as_mut()
    }

    /// Ends the command in `slot`; its old tags are stale from now on.
    pub fn remove(&mut self, slot: u16) -> Option<T> {
        let s = self.slots.get_mut(slot as usize)?;
        let cmd = s.1.take()?;
        s.0 = s.0.wrapping_add(1) & tag::GEN_MASK;
        self.free.push(slot);
        self.live -= 1;
        Some(cmd)
    }

    /// Commands stored.
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (u16, &mut T)> {
        self.slots
            .iter_mut()
            .enumerate()
            .filter_map(|(i, s)| Some((i as u16, s.1.as_mut()?)))
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
    use super::{IoBuf, OutQueue, tag};
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
}
