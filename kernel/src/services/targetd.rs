//! The targetd API on the management NIC (TCP 18700): `ironbay-targetd`
//! behind the shared HTTP service.

use super::http::{Api, HttpService};
use crate::net::Network;
use crate::storage::Storage;
use ironbay_http::{Limits, Reply, Request};
use ironbay_model::Model;
use ironbay_targetd::Targetd;

pub const TARGETD_CONNECTIONS: usize = 8;

pub type TargetdService = HttpService<Targetd>;

impl Api for Targetd {
    fn handle(&mut self, req: &Request, model: &mut Model<'_>, now_ms: u64) -> Reply {
        Targetd::handle(self, req, model, now_ms)
    }
}

/// Listens on 18700 of the management NIC; takes `targetd.user=` and
/// `targetd.password=` from the command line (they win over a stored
/// password and are not saved).
pub fn init(
    network: &mut Network,
    storage: &mut Storage,
    cmdline: &ironbay_config::Cmdline,
) -> Option<TargetdService> {
    if let Some(pw) = cmdline.get("targetd.password") {
        let user = cmdline
            .get("targetd.user")
            .unwrap_or(ironbay_model::targetd::DEFAULT_USER);
        match storage.targetd.set_password(user, pw) {
            Ok(()) => storage.targetd.pinned = true,
            Err(e) => log::error!("targetd.password: {}", e.message),
        }
    }
    let service = HttpService::new(
        network,
        cmdline,
        "targetd",
        ironbay_targetd::PORT,
        TARGETD_CONNECTIONS,
        Limits {
            max_body: ironbay_targetd::MAX_BODY,
            ..Limits::default()
        },
        Targetd::new(),
    )?;
    if storage.targetd.has_password() {
        log::info!(
            "mgmt: targetd API on TCP port {} (user {}), clients from {}",
            ironbay_targetd::PORT,
            storage.targetd.user,
            service.clients()
        );
    } else {
        log::warn!(
            "mgmt: targetd API on TCP port {} is closed until a password is set \
             (targetd.password= on the command line, or targetd_set_auth over JSON-RPC)",
            ironbay_targetd::PORT
        );
    }
    Some(service)
}
