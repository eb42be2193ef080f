//! The RapidDisk-style REST API on the management NIC (TCP 9118):
//! `ironbay-rapiddisk` behind the shared HTTP service.

use super::http::{Api, HttpService};
use crate::net::Network;
use ironbay_http::{Limits, Reply, Request, Response};
use ironbay_model::Model;

pub const REST_CONNECTIONS: usize = 8;

pub struct Rest;

pub type RestService = HttpService<Rest>;

impl Api for Rest {
    fn handle(&mut self, req: &Request, model: &mut Model<'_>, _now_ms: u64) -> Reply {
        Reply::Now(ironbay_rapiddisk::handle(req, model))
    }

    fn forbidden(&self) -> Response {
        let mut r = ironbay_rapiddisk::failed("not allowed by mgmt.allow");
        r.status = 403;
        r
    }
}

pub fn init(network: &mut Network, cmdline: &ironbay_config::Cmdline) -> Option<RestService> {
    let service = HttpService::new(
        network,
        cmdline,
        "rest",
        ironbay_rapiddisk::PORT,
        REST_CONNECTIONS,
        Limits {
            max_body: ironbay_rapiddisk::MAX_BODY,
            // `curl -X POST` sends no Content-Length.
            require_length: false,
            ..Limits::default()
        },
        Rest,
    )?;
    log::info!(
        "mgmt: RapidDisk REST API on TCP port {}, clients from {}",
        ironbay_rapiddisk::PORT,
        service.clients()
    );
    Some(service)
}
