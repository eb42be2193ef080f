//! The targetd API on the management NIC (port 18700, path `/targetrpc`):
//! JSON-RPC 2.0 in POST bodies, HTTP Basic auth on every request, over the
//! same object model as the other front ends. Pools are volume stores,
//! volumes are logical volumes.
//!
//! [`Targetd::handle`] takes a parsed HTTP request and the model and
//! returns the reply; the HTTP framing, limits and deadlines are
//! `ironbay-http`'s. Checks run in targetd's order: credentials (a wrong
//! guess is answered 401 after 2 s, and while one is pending further wrong
//! guesses from that address get 503 at once), then the path (404), then the
//! JSON-RPC request. Right credentials are served even from an address
//! with a guess pending: behind NAT, clients share one.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

mod exports;
mod methods;
mod rpc;

use alloc::vec::Vec;
use core::net::IpAddr;
use ironbay_http::{Reply, Request, Response};
use ironbay_model::Model;

pub const PORT: u16 = 18700;
pub const PATH: &str = "/targetrpc";
/// targetd's limit on request bodies.
pub const MAX_BODY: usize = 128 << 10;
/// How long a wrong password waits for its 401.
pub const TARPIT_MS: u64 = 2_000;
/// Addresses held in the tarpit at once; beyond, newcomers get 503 too.
const MAX_PITTED: usize = 1024;
/// Slow password checks (PBKDF2) per second, over all addresses: guesses
/// from many addresses must not take the appliance's CPU from its I/O.
const SLOW_CHECKS_PER_S: usize = 8;

/// The front end's own state: addresses whose wrong guess is pending.
#[derive(Default)]
pub struct Targetd {
    pit: Vec<(IpAddr, u64)>,
    /// When the slow checks of the last second ran.
    slow: Vec<u64>,
}

impl Targetd {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn handle(&mut self, req: &Request, m: &mut Model<'_>, now_ms: u64) -> Reply {
        self.pit.retain(|&(_, until)| until > now_ms);
        self.slow.retain(|&t| t + 1000 > now_ms);
        let Ok(settings) = m.targetd() else {
            return Reply::Now(Response::error(503, "the targetd API is not running"));
        };
        if !settings.has_password() {
            return Reply::Now(Response::error(
                503,
                "the targetd API is closed until a password is set \
                 (targetd.password= on the command line, or targetd_set_auth on port 5260)",
            ));
        }
        if req.method != "POST" {
            return Reply::Now(
                Response::error(405, "targetd takes POST").with_header("Allow", "POST"),
            );
        }
        let Some(cred) = req.basic_auth() else {
            return Reply::Now(
                Response::error(401, "send HTTP Basic credentials")
                    .with_header("WWW-Authenticate", "Basic realm=\"targetd\""),
            );
        };
        let ip = req.peer.map(|p| p.ip());
        let pitted = ip.is_some_and(|ip| self.pit.iter().any(|&(a, _)| a == ip));
        // While a wrong guess from an address is pending, further guesses
        // from it are refused at once, without the slow hash; clients
        // behind the same address with the right credentials go on.
        let good = if settings.verify_cached(&cred.user, &cred.password) {
            true
        } else if pitted {
            false
        } else if self.slow.len() >= SLOW_CHECKS_PER_S {
            return Reply::Now(Response::error(503, "too many authentication attempts"));
        } else {
            self.slow.push(now_ms);
            settings.verify(&cred.user, &cred.password)
        };
        if !good && pitted {
            return Reply::Now(Response::error(
                503,
                "another authentication attempt from this address is pending",
            ));
        }
        if !good {
            let until = now_ms + TARPIT_MS;
            if let Some(ip) = ip {
                if self.pit.len() >= MAX_PITTED {
                    return Reply::Now(Response::error(503, "too many authentication attempts"));
                }
                self.pit.push((ip, until));
            }
            log::warn!("targetd: wrong credentials from {ip:?}");
            return Reply::At(
                until,
                Response::error(401, "wrong user or password")
                    .with_header("WWW-Authenticate", "Basic realm=\"targetd\""),
            );
        }
        if req.target != PATH {
            return Reply::Now(Response::error(404, ""));
        }
        Reply::Now(Response::json(200, rpc::answer(&req.body, m)))
    }
}
