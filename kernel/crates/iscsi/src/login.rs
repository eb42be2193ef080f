//! The login phase (RFC 7143 §6.3, §11.12-13): stages, transit, session
//! identity and access checks, CHAP, operational negotiation, and the move
//! to full feature phase.

use crate::chap::{self, Algorithm};
use crate::config::{ChapPolicy, Secret};
use crate::conn::{Connection, MAX_TASKS, Phase, SessionInfo};
use crate::pdu::{Bhs, Pdu, op};
use crate::target::Target;
use crate::text::{self, Answer, Limits, NOT_UNDERSTOOD, Params};
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use ironbay_bdev::Registry;

/// Login PDUs one login may take.
pub const MAX_LOGIN_PDUS: u32 = 32;

/// Login status class and detail (§11.13.5).
pub mod status {
    pub const SUCCESS: u16 = 0x0000;
    pub const INITIATOR_ERROR: u16 = 0x0200;
    pub const AUTH_FAILED: u16 = 0x0201;
    pub const FORBIDDEN: u16 = 0x0202;
    pub const NOT_FOUND: u16 = 0x0203;
    pub const UNSUPPORTED_VERSION: u16 = 0x0205;
    pub const TOO_MANY_CONNECTIONS: u16 = 0x0206;
    pub const MISSING_PARAMETER: u16 = 0x0207;
    pub const SESSION_TYPE: u16 = 0x0209;
    pub const NO_SESSION: u16 = 0x020a;
    pub const OUT_OF_RESOURCES: u16 = 0x0302;
}

const SECURITY: u8 = 0;
const OPERATIONAL: u8 = 1;
const FULL_FEATURE: u8 = 3;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
enum Auth {
    /// AuthMethod not negotiated yet.
    #[default]
    Start,
    /// AuthMethod=None agreed.
    NoneAgreed,
    /// AuthMethod=CHAP agreed; waiting for CHAP_A.
    ChapAlgorithm,
    /// Challenge sent; waiting for CHAP_N / CHAP_R.
    ChapResponse {
        alg: Algorithm,
        id: u8,
        challenge: Vec<u8>,
    },
    Done,
}

/// Login progress of one connection.
#[derive(Default)]
pub struct Login {
    pdus: u32,
    started: bool,
    isid: [u8; 6],
    tsih: u16,
    cid: u16,
    stage: u8,
    text: Vec<u8>,
    initiator: String,
    target: Option<String>,
    discovery: bool,
    pg_tag: u32,
    policy: ChapPolicy,
    /// The initiator's own CHAP credentials on a masked node (they take
    /// the place of the policy's auth group).
    acl_secret: Option<Secret>,
    auth: Auth,
    params: Params,
    limits: Option<Limits>,
    declared: bool,
    sent_first: bool,
}

type Pairs = Vec<(String, String)>;

impl Connection {
    /// One Login Request.
    pub(crate) fn login_pdu(&mut self, p: Pdu, target: &mut Target, bdevs: &Registry) {
        let Some(mut l) = self.login.take() else {
            return self.fail("login state lost");
        };
        let b = p.bhs;
        match self.login_step(&mut l, &b, &p.data, target) {
            Ok(Step::Respond {
                transit,
                nsg,
                pairs,
            }) => {
                let csg = l.stage;
                let data = text::encode(&pairs);
                if transit && nsg == FULL_FEATURE {
                    self.login_done(&mut l, &b, csg, &data, target, bdevs);
                    return;
                }
                self.login_response(&l, &b, transit, csg, nsg, status::SUCCESS, &data);
                if transit {
                    l.stage = nsg;
                }
                self.login = Some(l);
            }
            Ok(Step::More) => {
                self.login_response(&l, &b, false, l.stage, 0, status::SUCCESS, &[]);
                self.login = Some(l);
            }
            Err(st) => {
                self.login_response(&l, &b, false, l.stage, 0, st, &[]);
                self.fail(match st {
                    status::AUTH_FAILED => "login: authentication failed",
                    status::FORBIDDEN => "login: initiator not allowed",
                    status::NOT_FOUND => "login: target not found",
                    _ => "login refused",
                });
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn login_response(
        &mut self,
        l: &Login,
        req: &Bhs,
        transit: bool,
        csg: u8,
        nsg: u8,
        st: u16,
        data: &[u8],
    ) {
        let mut b = Bhs::new(op::LOGIN_RSP);
        let mut f = (csg & 3) << 2;
        if transit {
            f |= 0x80 | (nsg & 3);
        }
        b.set_flags(f).set_itt(req.itt());
        b.0[8..14].copy_from_slice(&l.isid);
        b.set_u16(14, if st == status::SUCCESS { l.tsih } else { 0 });
        let s = self.next_stat_sn();
        b.set_sns(s, self.exp_cmd_sn, self.exp_cmd_sn);
        b.set_byte(36, (st >> 8) as u8).set_byte(37, st as u8);
        self.send_pdu(&b, data);
    }

    fn login_step(
        &mut self,
        l: &mut Login,
        b: &Bhs,
        data: &[u8],
        target: &mut Target,
    ) -> Result<Step, u16> {
        l.pdus += 1;
        if l.pdus > MAX_LOGIN_PDUS {
            return Err(status::INITIATOR_ERROR);
        }
        let f = b.flags();
        let (transit, cont) = (f & 0x80 != 0, f & 0x40 != 0);
        let (csg, nsg) = ((f >> 2) & 3, f & 3);
        let mut isid = [0u8; 6];
        isid.copy_from_slice(&b.0[8..14]);
        let (tsih, cid) = (b.u16_at(14), b.u16_at(20));
        if !l.started {
            l.started = true;
            l.isid = isid;
            l.tsih = tsih;
            l.cid = cid;
            self.stat_sn = b.u32_at(28);
            if b.byte(3) > 0 {
                return Err(status::UNSUPPORTED_VERSION);
            }
            if csg > OPERATIONAL {
                return Err(status::INITIATOR_ERROR);
            }
            l.stage = csg;
        } else if isid != l.isid || tsih != l.tsih || cid != l.cid {
            return Err(status::INITIATOR_ERROR);
        }
        self.exp_cmd_sn = b.cmd_sn();
        if csg != l.stage || (transit && cont) || (transit && (nsg <= csg || nsg == 2)) {
            return Err(status::INITIATOR_ERROR);
        }
        if l.text.len() + data.len() > text::MAX_TEXT {
            return Err(status::OUT_OF_RESOURCES);
        }
        l.text.extend_from_slice(data);
        if cont {
            return Ok(Step::More);
        }
        let raw = core::mem::take(&mut l.text);
        let pairs = text::parse(&raw).map_err(|_| status::INITIATOR_ERROR)?;
        if text::has_duplicate_keys(&pairs) {
            return Err(status::INITIATOR_ERROR);
        }
        if l.limits.is_none() {
            self.identify(l, &pairs, target)?;
        }
        let mut out: Pairs = Vec::new();
        if !l.sent_first {
            l.sent_first = true;
            if !l.discovery {
                out.push(("TargetPortalGroupTag".into(), l.pg_tag.to_string()));
                let alias = l
                    .target
                    .as_deref()
                    .and_then(|n| target.config.node(n))
                    .map(|n| n.alias.clone())
                    .unwrap_or_default();
                if !alias.is_empty() {
                    out.push(("TargetAlias".into(), alias));
                }
            }
        }
        let limits = l.limits.clone().ok_or(status::INITIATOR_ERROR)?;
        let mut chap_in = ChapIn::default();
        for (k, v) in &pairs {
            match k.as_str() {
                "InitiatorName" | "TargetName" | "SessionType" | "InitiatorAlias" => {}
                "AuthMethod" => {
                    if l.stage != SECURITY {
                        return Err(status::INITIATOR_ERROR);
                    }
                    let m = choose_auth(v, &l.policy).ok_or(status::AUTH_FAILED)?;
                    l.auth = if m == "CHAP" {
                        Auth::ChapAlgorithm
                    } else {
                        Auth::NoneAgreed
                    };
                    out.push((k.clone(), m.into()));
                }
                "CHAP_A" => {
                    if l.auth != Auth::ChapAlgorithm {
                        return Err(status::INITIATOR_ERROR);
                    }
                    let alg = chap::choose(v).ok_or(status::AUTH_FAILED)?;
                    let e = target.entropy();
                    let id = e.next_u64() as u8;
                    let mut challenge = alloc::vec![0u8; chap::CHALLENGE_LEN];
                    e.fill(&mut challenge);
                    out.push((k.clone(), alg.number().to_string()));
                    out.push(("CHAP_I".into(), id.to_string()));
                    out.push(("CHAP_C".into(), chap::encode_hex(&challenge)));
                    l.auth = Auth::ChapResponse { alg, id, challenge };
                }
                "CHAP_N" => chap_in.n = Some(v.clone()),
                "CHAP_R" => chap_in.r = Some(v.clone()),
                "CHAP_I" => chap_in.i = Some(v.clone()),
                "CHAP_C" => chap_in.c = Some(v.clone()),
                _ => match text::negotiate(k, v, &mut l.params, &limits, l.discovery) {
                    Answer::Value(a) => out.push((k.clone(), a)),
                    Answer::Silent => {}
                    Answer::Unknown => out.push((k.clone(), NOT_UNDERSTOOD.into())),
                },
            }
        }
        if chap_in.any() {
            let Auth::ChapResponse { alg, id, challenge } = &l.auth else {
                return Err(status::INITIATOR_ERROR);
            };
            let acl = l.acl_secret.as_ref();
            out.extend(chap_in.verify(*alg, *id, challenge, &l.policy, acl, target)?);
            l.auth = Auth::Done;
        }
        if l.stage == OPERATIONAL && !l.declared {
            l.declared = true;
            l.params.target_mrdsl = limits.mrdsl;
            out.push(("MaxRecvDataSegmentLength".into(), limits.mrdsl.to_string()));
        }
        let mut agree = transit;
        if transit && l.stage == SECURITY {
            match l.auth {
                Auth::Done | Auth::NoneAgreed => {}
                Auth::Start if !l.policy.require => {}
                Auth::ChapAlgorithm | Auth::ChapResponse { .. } => agree = false,
                Auth::Start => return Err(status::AUTH_FAILED),
            }
        }
        if agree
            && (l.limits.as_ref()).is_some_and(|lim| {
                (lim.require_header_digest && !l.params.header_digest)
                    || (lim.require_data_digest && !l.params.data_digest)
            })
            && nsg == FULL_FEATURE
        {
            return Err(status::INITIATOR_ERROR);
        }
        Ok(Step::Respond {
            transit: agree,
            nsg,
            pairs: out,
        })
    }

    /// The leading keys of the first request: who logs in to what.
    fn identify(&mut self, l: &mut Login, pairs: &Pairs, target: &mut Target) -> Result<(), u16> {
        let get = |k: &str| pairs.iter().find(|(k2, _)| k2 == k).map(|p| p.1.as_str());
        let initiator = get("InitiatorName")
            .filter(|n| !n.is_empty())
            .ok_or(status::MISSING_PARAMETER)?;
        if initiator.len() > 223 {
            return Err(status::INITIATOR_ERROR);
        }
        l.initiator = initiator.into();
        l.discovery = match get("SessionType") {
            None | Some("Normal") => false,
            Some("Discovery") => true,
            Some(_) => return Err(status::SESSION_TYPE),
        };
        let cfg = &target.config;
        let pg = cfg.portal_group_of(self.local.ip(), self.local.port());
        if l.discovery {
            l.policy = cfg.discovery_auth.clone();
            l.pg_tag = pg.unwrap_or(0);
        } else {
            let name = get("TargetName")
                .filter(|n| !n.is_empty())
                .ok_or(status::MISSING_PARAMETER)?;
            let node = cfg.node(name).ok_or(status::NOT_FOUND)?;
            let pg = pg.ok_or(status::NOT_FOUND)?;
            if !cfg.allows(node, initiator, self.peer.ip(), pg) {
                return Err(status::FORBIDDEN);
            }
            l.target = Some(node.name.clone());
            l.policy = node.chap.clone();
            l.acl_secret = None;
            if node.masked {
                // Only initiators the node has an ACL for log in; one with
                // CHAP credentials must use them.
                let acl = node.acl(initiator).ok_or(status::FORBIDDEN)?;
                if let Some(sec) = &acl.chap {
                    l.policy = ChapPolicy {
                        disable: false,
                        require: true,
                        mutual: sec.muser.is_some(),
                        group: 0,
                    };
                    l.acl_secret = Some(sec.clone());
                }
            }
            l.pg_tag = pg;
        }
        if l.tsih != 0 {
            // Adding a connection needs MC/S, which we don't offer.
            return Err(if target.session_exists(l.tsih, initiator, l.isid) {
                status::TOO_MANY_CONNECTIONS
            } else {
                status::NO_SESSION
            });
        }
        if session_limit_reached(target, l) {
            return Err(status::TOO_MANY_CONNECTIONS);
        }
        let cfg = &target.config;
        if l.stage == OPERATIONAL && l.policy.require && !l.policy.disable {
            return Err(status::AUTH_FAILED);
        }
        let mut limits = Limits::from_options(&cfg.options);
        if let Some(n) = l.target.as_deref().and_then(|n| cfg.node(n)) {
            limits.require_header_digest = n.header_digest;
            limits.require_data_digest = n.data_digest;
        }
        l.limits = Some(limits);
        Ok(())
    }

    /// Login succeeded: the session exists from here on.
    fn login_done(
        &mut self,
        l: &mut Login,
        req: &Bhs,
        csg: u8,
        data: &[u8],
        target: &mut Target,
        bdevs: &Registry,
    ) {
        let node_name = l.target.clone().unwrap_or_default();
        // Checked again: other logins may have finished since the first PDU.
        if session_limit_reached(target, l) {
            self.login_response(l, req, false, csg, 0, status::TOO_MANY_CONNECTIONS, &[]);
            return self.fail("login refused: too many sessions");
        }
        target.reinstate(&l.initiator, l.isid, &node_name);
        let Some((id, tsih)) = target.new_session(self.id, l.isid, &l.initiator, &node_name) else {
            self.login_response(l, req, false, csg, 0, status::OUT_OF_RESOURCES, &[]);
            return self.fail("login refused: no free TSIH");
        };
        l.tsih = tsih;
        let cfg = &target.config;
        self.depth = match l.target.as_deref().and_then(|n| cfg.node(n)) {
            Some(n) => {
                let mut d = n.queue_depth.max(1);
                if cfg.options.max_queue_depth > 0 {
                    d = d.min(cfg.options.max_queue_depth);
                }
                d.min(MAX_TASKS as u32)
            }
            None => 8,
        };
        self.login_response(l, req, true, csg, FULL_FEATURE, status::SUCCESS, data);
        let mut params = l.params.clone();
        if !l.declared {
            params.target_mrdsl = 8192;
        }
        self.params = params;
        self.hd = self.params.header_digest;
        self.dd = self.params.data_digest;
        self.sess = Some(SessionInfo {
            id,
            tsih,
            isid: l.isid,
            cid: l.cid,
            initiator: l.initiator.clone(),
            target: l.target.clone(),
            pg_tag: l.pg_tag,
        });
        self.phase = Phase::FullFeature;
        self.seen_generation = target.config.generation;
        self.seen_luns = match l.target.as_deref().and_then(|n| target.config.node(n)) {
            Some(n) => n
                .luns
                .iter()
                .map(|x| (x.id, bdevs.info(x.bdev).map(|i| i.num_blocks)))
                .collect(),
            None => Vec::new(),
        };
        self.publish(target, "full_feature");
    }
}

/// Whether a new session for this login would pass `max_sessions` (the
/// session it reinstates does not count).
fn session_limit_reached(target: &Target, l: &Login) -> bool {
    let max = target.config.options.max_sessions as usize;
    let node = l.target.as_deref().unwrap_or_default();
    max > 0 && target.sessions_besides(&l.initiator, l.isid, node) >= max
}

enum Step {
    /// Continued text: answer empty and wait for the rest.
    More,
    Respond {
        transit: bool,
        nsg: u8,
        pairs: Pairs,
    },
}

/// The first method of the initiator's list the policy allows. CHAP needs
/// an auth group with secrets unless it is required.
fn choose_auth(list: &str, p: &ChapPolicy) -> Option<&'static str> {
    list.split(',').find_map(|m| match m {
        "CHAP" if !p.disable && (p.require || p.group != 0) => Some("CHAP"),
        "None" if !p.require || p.disable => Some("None"),
        _ => None,
    })
}

#[derive(Default)]
struct ChapIn {
    n: Option<String>,
    r: Option<String>,
    i: Option<String>,
    c: Option<String>,
}

impl ChapIn {
    fn any(&self) -> bool {
        self.n.is_some() || self.r.is_some() || self.i.is_some() || self.c.is_some()
    }

    /// Checks the initiator's answer; for mutual CHAP, answers its challenge.
    fn verify(
        &self,
        alg: Algorithm,
        id: u8,
        challenge: &[u8],
        policy: &ChapPolicy,
        acl: Option<&Secret>,
        target: &Target,
    ) -> Result<Pairs, u16> {
        const FAIL: u16 = status::AUTH_FAILED;
        let name = self.n.as_deref().ok_or(FAIL)?;
        let resp = chap::decode(self.r.as_deref().ok_or(FAIL)?).ok_or(FAIL)?;
        let secret = match acl {
            Some(s) if s.user == name => s,
            Some(_) => return Err(FAIL),
            None => {
                let group = target.config.auth_group(policy.group).ok_or(FAIL)?;
                group.secrets.iter().find(|s| s.user == name).ok_or(FAIL)?
            }
        };
        if !chap::same(
            &alg.response(id, secret.secret.as_bytes(), challenge),
            &resp,
        ) {
            return Err(FAIL);
        }
        let mut out = Vec::new();
        match (&self.i, &self.c) {
            (Some(i), Some(c)) => {
                let their_id = text::number(i).filter(|&n| n <= 255).ok_or(FAIL)? as u8;
                let their_c = chap::decode(c).ok_or(FAIL)?;
                // A reflected challenge would let the initiator use us as
                // an oracle for its own answer.
                if chap::same(&their_c, challenge) {
                    return Err(FAIL);
                }
                let (Some(muser), Some(msecret)) = (&secret.muser, &secret.msecret) else {
                    return Err(FAIL);
                };
                let r = alg.response(their_id, msecret.as_bytes(), &their_c);
                out.push(("CHAP_N".into(), muser.clone()));
                out.push(("CHAP_R".into(), chap::encode_hex(&r)));
            }
            (None, None) if !policy.mutual => {}
            _ => return Err(FAIL),
        }
        Ok(out)
    }
}
