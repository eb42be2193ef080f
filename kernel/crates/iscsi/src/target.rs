//! The target as a whole: the configuration plus what is live (sessions,
//! connections, per-LUN state shared by sessions). Connections take it by
//! `&mut` while they handle input, one at a time.

use crate::chap::Entropy;
use crate::config::Config;
use crate::scsi::{LunState, NexusState, UnitAttention, initiator_port};
use alloc::string::String;
use alloc::vec::Vec;
use ironbay_bdev::BdevId;

/// One live connection, as `iscsi_get_connections` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnInfo {
    /// Engine-wide connection number.
    pub id: u32,
    pub cid: u16,
    pub tsih: u16,
    pub isid: [u8; 6],
    pub initiator_name: String,
    pub initiator_addr: String,
    /// Empty for discovery sessions.
    pub target_name: String,
    pub target_addr: String,
    pub portal_group_tag: u32,
    /// `login`, `full_feature`, `logged_out`.
    pub state: &'static str,
}

/// A session in full feature phase.
#[derive(Debug)]
struct SessionRec {
    id: u64,
    tsih: u16,
    isid: [u8; 6],
    initiator: String,
    /// The SCSI initiator port name (initiator name and ISID).
    port: String,
    /// Empty for discovery sessions.
    target: String,
    conns: Vec<u32>,
}

/// A logical unit's shared state: keyed by node and bdev, so initiators of a
/// masked node that see different volumes under one LUN number do not
/// share reservations, unit attentions or resets.
#[derive(Debug)]
struct LunRec {
    node: String,
    bdev: BdevId,
    state: LunState,
    /// Bumped by LUN and target resets: tasks started before are aborted.
    epoch: u64,
}

#[derive(Debug)]
struct NexusRec {
    session: u64,
    lun: u64,
    state: NexusState,
}

#[derive(Debug)]
pub struct Target {
    pub config: Config,
    connections: Vec<ConnInfo>,
    next_conn: u32,
    sessions: Vec<SessionRec>,
    next_session: u64,
    next_tsih: u16,
    luns: Vec<LunRec>,
    nexus: Vec<NexusRec>,
    /// Connections told to end (session reinstatement, target cold reset).
    ended: Vec<u32>,
    entropy: Entropy,
}

impl Default for Target {
    fn default() -> Self {
        Target::new(Config::default())
    }
}

impl Target {
    pub fn new(config: Config) -> Self {
        Target {
            config,
            connections: Vec::new(),
            next_conn: 1,
            sessions: Vec::new(),
            next_session: 1,
            next_tsih: 1,
            luns: Vec::new(),
            nexus: Vec::new(),
            ended: Vec::new(),
            entropy: Entropy::new(0x1b0b_a1ce_5eed_0001),
        }
    }

    /// Live connections.
    pub fn connections(&self) -> &[ConnInfo] {
        &self.connections
    }

    /// Mixes unpredictability into the CHAP challenge generator. The
    /// generator is not a CSPRNG: challenges are only as good as the seeds
    /// (RDRAND or TSC jitter in the kernel, OS randomness when hosted).
    pub fn seed_entropy(&mut self, seed: u64) {
        self.entropy.mix(seed);
    }

    pub(crate) fn entropy(&mut self) -> &mut Entropy {
        &mut self.entropy
    }

    pub(crate) fn register(&mut self, mut info: ConnInfo) -> u32 {
        let id = self.next_conn;
        self.next_conn = self.next_conn.wrapping_add(1).max(1);
        info.id = id;
        self.connections.push(info);
        id
    }

    pub(crate) fn update_conn(&mut self, id: u32, f: impl FnOnce(&mut ConnInfo)) {
        if let Some(c) = self.connections.iter_mut().find(|c| c.id == id) {
            f(c);
        }
    }

    /// The connection is gone: forget it, and its session if it was the last.
    pub(crate) fn unregister(&mut self, id: u32) {
        self.connections.retain(|c| c.id != id);
        self.ended.retain(|&e| e != id);
        let mut gone = Vec::new();
        for s in &mut self.sessions {
            s.conns.retain(|&c| c != id);
            if s.conns.is_empty() {
                gone.push(s.id);
            }
        }
        for s in gone {
            self.drop_session(s);
        }
    }

    /// The session's I_T nexuses end: their SPC-2 reservations go with
    /// them (persistent reservations stay).
    fn drop_session(&mut self, id: u64) {
        self.sessions.retain(|s| s.id != id);
        self.nexus.retain(|n| n.session != id);
        for l in &mut self.luns {
            l.state.nexus_lost(id);
        }
    }

    /// Whether a session with this TSIH exists for this initiator and ISID.
    pub(crate) fn session_exists(&self, tsih: u16, initiator: &str, isid: [u8; 6]) -> bool {
        self.sessions.iter().any(|s| {
            s.tsih == tsih && s.isid == isid && s.initiator.eq_ignore_ascii_case(initiator)
        })
    }

    /// Ends every session with the same initiator, ISID and target
    /// (session reinstatement): their connections are told to end.
    pub(crate) fn reinstate(&mut self, initiator: &str, isid: [u8; 6], target: &str) {
        let old: Vec<u64> = self
            .sessions
            .iter()
            .filter(|s| {
                s.isid == isid
                    && s.initiator.eq_ignore_ascii_case(initiator)
                    && s.target.eq_ignore_ascii_case(target)
            })
            .map(|s| s.id)
            .collect();
        for id in old {
            if let Some(s) = self.sessions.iter().find(|s| s.id == id) {
                self.ended.extend(s.conns.iter().copied());
            }
            self.drop_session(id);
        }
    }

    /// Sessions left once a login as (`initiator`, `isid`, `target`) has
    /// reinstated its namesake: what counts against `max_sessions`.
    pub(crate) fn sessions_besides(&self, initiator: &str, isid: [u8; 6], target: &str) -> usize {
        self.sessions
            .iter()
            .filter(|s| {
                !(s.isid == isid
                    && s.initiator.eq_ignore_ascii_case(initiator)
                    && s.target.eq_ignore_ascii_case(target))
            })
            .count()
    }

    /// A new session for `conn`; returns (session id, TSIH), or `None` when
    /// every TSIH is taken.
    pub(crate) fn new_session(
        &mut self,
        conn: u32,
        isid: [u8; 6],
        initiator: &str,
        target: &str,
    ) -> Option<(u64, u16)> {
        // A bitmap of the TSIHs in use: one pass, however many there are.
        let mut used = alloc::vec![0u64; 1 << 10];
        for s in &self.sessions {
            if let Some(w) = used.get_mut(s.tsih as usize / 64) {
                *w |= 1 << (s.tsih % 64);
            }
        }
        let free = |t: u16| {
            t != 0
                && used
                    .get(t as usize / 64)
                    .is_some_and(|w| w & 1 << (t % 64) == 0)
        };
        let tsih = (0..=u16::MAX)
            .map(|k| self.next_tsih.wrapping_add(k))
            .find(|&t| free(t))?;
        self.next_tsih = tsih.wrapping_add(1);
        let id = self.next_session;
        self.next_session += 1;
        self.sessions.push(SessionRec {
            id,
            tsih,
            isid,
            initiator: initiator.into(),
            port: initiator_port(initiator, isid),
            target: target.into(),
            conns: alloc::vec![conn],
        });
        Some((id, tsih))
    }

    /// Whether `conn` was told to end.
    pub(crate) fn should_end(&self, conn: u32) -> bool {
        self.ended.contains(&conn)
    }

    /// Tells every connection of every normal session to `node` to end.
    pub(crate) fn end_node_sessions(&mut self, node: &str, except: u32) {
        for s in &self.sessions {
            if s.target.eq_ignore_ascii_case(node) {
                self.ended
                    .extend(s.conns.iter().copied().filter(|&c| c != except));
            }
        }
    }

    fn lun_index(&mut self, node: &str, bdev: BdevId) -> usize {
        match self
            .luns
            .iter()
            .position(|l| l.bdev == bdev && l.node.eq_ignore_ascii_case(node))
        {
            Some(i) => i,
            None => {
                self.luns.push(LunRec {
                    node: node.into(),
                    bdev,
                    state: LunState::default(),
                    epoch: 0,
                });
                self.luns.len() - 1
            }
        }
    }

    fn nexus_index(&mut self, session: u64, lun: u64) -> usize {
        match self
            .nexus
            .iter()
            .position(|n| n.session == session && n.lun == lun)
        {
            Some(i) => i,
            None => {
                self.nexus.push(NexusRec {
                    session,
                    lun,
                    state: NexusState::default(),
                });
                self.nexus.len() - 1
            }
        }
    }

    /// The shared LU state (of `bdev` on `node`), this session's nexus state
    /// for `lun` and its initiator port name, for a task.
    pub(crate) fn lun_states(
        &mut self,
        node: &str,
        bdev: BdevId,
        lun: u64,
        session: u64,
    ) -> (&mut LunState, &mut NexusState, &str) {
        let l = self.lun_index(node, bdev);
        let n = self.nexus_index(session, lun);
        let port = self
            .sessions
            .iter()
            .find(|s| s.id == session)
            .map_or("", |s| s.port.as_str());
        (&mut self.luns[l].state, &mut self.nexus[n].state, port)
    }

    pub(crate) fn lun_epoch(&self, node: &str, bdev: BdevId) -> u64 {
        self.luns
            .iter()
            .find(|l| l.bdev == bdev && l.node.eq_ignore_ascii_case(node))
            .map_or(0, |l| l.epoch)
    }

    /// A reset of the LU of `bdev` on `node`: tasks of other sessions on it
    /// are aborted (they watch the epoch) and every session that sees it
    /// gets `ua` on the LUN it sees it as.
    pub(crate) fn reset_lun(&mut self, node: &str, bdev: BdevId, ua: Option<UnitAttention>) {
        let l = self.lun_index(node, bdev);
        self.luns[l].epoch += 1;
        let Some(ua) = ua else { return };
        // Every I_T nexus gets the unit attention (SAM-5), the one that
        // asked for the reset included.
        let Some(n) = self.config.node(node) else {
            return;
        };
        let mut hits: Vec<(u64, u64)> = Vec::new();
        for s in self
            .sessions
            .iter()
            .filter(|s| s.target.eq_ignore_ascii_case(node))
        {
            for lun in n.luns_for(&s.initiator).iter().filter(|x| x.bdev == bdev) {
                hits.push((s.id, lun.id));
            }
        }
        for (s, lun) in hits {
            let i = self.nexus_index(s, lun);
            self.nexus[i].state.raise(ua);
        }
    }

    /// LOGICAL UNIT RESET or target reset of the LU of `bdev` on `node`:
    /// its SPC-2 reservation ends (persistent reservations stay).
    pub(crate) fn lu_reset(&mut self, node: &str, bdev: BdevId) {
        let l = self.lun_index(node, bdev);
        self.luns[l].state.reset();
    }

    /// Raises `ua` on this session's nexus to `lun`.
    pub(crate) fn raise(&mut self, session: u64, lun: u64, ua: UnitAttention) {
        let n = self.nexus_index(session, lun);
        self.nexus[n].state.raise(ua);
    }

    /// Forgets LU state for LUs no longer configured.
    pub(crate) fn prune_luns(&mut self) {
        let cfg = &self.config;
        self.luns.retain(|l| {
            cfg.node(&l.node).is_some_and(|n| {
                n.luns.iter().any(|x| x.bdev == l.bdev)
                    || n.acls
                        .iter()
                        .flat_map(|a| &a.luns)
                        .any(|x| x.bdev == l.bdev)
            })
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_tsih_and_reinstatement() {
        let mut t = Target::default();
        let c1 = t.register(info());
        let c2 = t.register(info());
        assert_ne!(c1, c2);
        let (s1, tsih1) = t.new_session(c1, [1; 6], "iqn.i", "iqn.t").unwrap();
        let (_, tsih2) = t.new_session(c2, [2; 6], "iqn.i", "iqn.t").unwrap();
        assert_ne!(tsih1, 0);
        assert_ne!(tsih1, tsih2);
        assert!(t.session_exists(tsih1, "IQN.I", [1; 6]));
        t.raise(s1, 0, UnitAttention::PowerOnReset);
        t.reinstate("iqn.i", [1; 6], "iqn.t");
        assert!(t.should_end(c1) && !t.should_end(c2));
        assert_eq!(t.sessions.len(), 1);
        t.unregister(c1);
        assert!(!t.should_end(c1));
        assert_eq!(t.connections().len(), 1);
        t.unregister(c2);
        assert_eq!(t.sessions.len(), 0);
    }

    /// Every TSIH taken: the next session is refused, not searched for
    /// forever.
    #[test]
    fn tsih_exhaustion_is_refused() {
        let mut t = Target::default();
        for tsih in 1..=u16::MAX {
            t.sessions.push(SessionRec {
                id: tsih as u64,
                tsih,
                isid: [0; 6],
                initiator: String::new(),
                port: String::new(),
                target: String::new(),
                conns: alloc::vec![1],
            });
        }
        assert_eq!(t.new_session(2, [1; 6], "iqn.i", "iqn.t"), None);
        t.sessions.retain(|s| s.tsih != 77);
        assert_eq!(
            t.new_session(2, [1; 6], "iqn.i", "iqn.t").map(|x| x.1),
            Some(77)
        );
        assert_eq!(t.sessions_besides("IQN.I", [1; 6], "iqn.t"), 65534);
    }

    #[test]
    fn lun_reset_bumps_the_epoch() {
        let mut t = Target::default();
        let mut reg = ironbay_bdev::Registry::new();
        let a = reg
            .add(alloc::boxed::Box::new(ironbay_bdev::NullBdev::new(
                "a", 8, 512,
            )))
            .unwrap();
        let b = reg
            .add(alloc::boxed::Box::new(ironbay_bdev::NullBdev::new(
                "b", 8, 512,
            )))
            .unwrap();
        assert_eq!(t.lun_epoch("n", a), 0);
        t.reset_lun("n", a, Some(UnitAttention::LunReset));
        assert_eq!(t.lun_epoch("N", a), 1);
        assert_eq!(t.lun_epoch("n", b), 0);
    }

    fn info() -> ConnInfo {
        ConnInfo {
            id: 0,
            cid: 0,
            tsih: 0,
            isid: [0; 6],
            initiator_name: String::new(),
            initiator_addr: String::new(),
            target_name: String::new(),
            target_addr: String::new(),
            portal_group_tag: 0,
            state: "login",
        }
    }
}
