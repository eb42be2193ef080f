//! A management API over HTTP on the management NIC (targetd on 18700, the
//! RapidDisk REST API on 9118): the shared HTTP server over a listener's
//! sockets, `mgmt.allow` checked per request, each request answered by the
//! front end over the object model, the configuration saved after.

use super::allow::Allow;
use crate::net::Network;
use crate::storage::Storage;
use ironbay_http::{Handler, Limits, Reply, Request, Response, Server};
use ironbay_model::Model;
use ironbay_nbd::Exports;
use ironbay_net::{Listener, Role, SetSockets, TcpTuning};

/// A front end the service drives.
pub trait Api {
    fn handle(&mut self, req: &Request, model: &mut Model<'_>, now_ms: u64) -> Reply;
    /// The answer to a client outside `mgmt.allow`.
    fn forbidden(&self) -> Response {
        Response::error(403, "not allowed by mgmt.allow")
    }
}

pub struct HttpService<A> {
    stack: usize,
    listener: Listener,
    server: Server,
    allow: Allow,
    api: A,
}

impl<A: Api> HttpService<A> {
    /// Listens on `port` of the management NIC with `connections` sockets.
    pub fn new(
        network: &mut Network,
        cmdline: &ironbay_config::Cmdline,
        name: &'static str,
        port: u16,
        connections: usize,
        limits: Limits,
        api: A,
    ) -> Option<Self> {
        let stack = network.stacks.iter().position(|s| s.role == Role::Mgmt)?;
        let listener = Listener::new(
            &mut network.stacks[stack].sockets,
            port,
            connections,
            TcpTuning::MANAGEMENT,
        );
        Some(HttpService {
            stack,
            listener,
            server: Server::new(name, limits),
            allow: Allow::from_cmdline(cmdline),
            api,
        })
    }

    /// Who may connect, for the console.
    pub fn clients(&self) -> alloc::string::String {
        self.allow.describe()
    }

    pub fn poll(
        &mut self,
        network: &mut Network,
        storage: &mut Storage,
        mut nbd: Option<&mut Exports>,
        initialized: bool,
    ) -> bool {
        let now_ms = crate::time::uptime_us() / 1000;
        let own = Allow::own_subnet(network, self.stack);
        let set = &mut network.stacks[self.stack].sockets;
        let mut sockets = SetSockets {
            set,
            handles: self.listener.sockets(),
        };
        let mut call = Call {
            api: &mut self.api,
            allow: &self.allow,
            own,
            storage,
            nbd: nbd.as_deref_mut(),
            initialized,
            handled: false,
        };
        let busy = self.server.poll(&mut sockets, &mut call, now_ms);
        let handled = call.handled;
        self.listener.relisten(sockets.set);
        if handled && initialized {
            crate::persist::save_storage(storage, nbd, initialized);
        }
        busy
    }
}

/// One poll's view of the model for the requests that arrive.
struct Call<'a, A> {
    api: &'a mut A,
    allow: &'a Allow,
    own: Option<ironbay_config::net::Ipv4Cidr>,
    storage: &'a mut Storage,
    nbd: Option<&'a mut Exports>,
    initialized: bool,
    handled: bool,
}

impl<A: Api> Handler for Call<'_, A> {
    fn handle(&mut self, req: Request, now_ms: u64) -> Reply {
        if !req
            .peer
            .is_some_and(|p| self.allow.permits(self.own, p.ip()))
        {
            log::warn!(
                "mgmt: HTTP request from {:?} refused (not in mgmt.allow)",
                req.peer
            );
            return Reply::Now(self.api.forbidden());
        }
        self.handled = true;
        let (mut init, mut down) = (self.initialized, false);
        let mut model = self
            .storage
            .model(self.nbd.as_deref_mut(), &mut init, &mut down, None);
        self.api.handle(&req, &mut model, now_ms)
    }
}
