//! The targetd API on the management NIC (TCP 18700): the shared HTTP
//! server over a listener's sockets, each request answered by
//! `ironbay-targetd` over the object model, the configuration saved after.

use crate::net::Network;
use crate::storage::Storage;
use ironbay_http::{Handler, Limits, Reply, Request, Server};
use ironbay_nbd::Exports;
use ironbay_net::{Listener, Role, SetSockets, TcpTuning};
use ironbay_targetd::Targetd;

pub const TARGETD_CONNECTIONS: usize = 8;

pub struct TargetdService {
    stack: usize,
    listener: Listener,
    server: Server,
    api: Targetd,
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
    let stack = network.stacks.iter().position(|s| s.role == Role::Mgmt)?;
    let listener = Listener::new(
        &mut network.stacks[stack].sockets,
        ironbay_targetd::PORT,
        TARGETD_CONNECTIONS,
        TcpTuning::MANAGEMENT,
    );
    if storage.targetd.has_password() {
        log::info!(
            "mgmt: targetd API on TCP port {} (user {})",
            ironbay_targetd::PORT,
            storage.targetd.user
        );
    } else {
        log::warn!(
            "mgmt: targetd API on TCP port {} is closed until a password is set \
             (targetd.password= on the command line, or targetd_set_auth over JSON-RPC)",
            ironbay_targetd::PORT
        );
    }
    let limits = Limits {
        max_body: ironbay_targetd::MAX_BODY,
        ..Limits::default()
    };
    Some(TargetdService {
        stack,
        listener,
        server: Server::new("targetd", limits),
        api: Targetd::new(),
    })
}

/// One poll's view of the model for the requests that arrive.
struct Call<'a> {
    api: &'a mut Targetd,
    storage: &'a mut Storage,
    nbd: Option<&'a mut Exports>,
    initialized: bool,
    handled: bool,
}

impl Handler for Call<'_> {
    fn handle(&mut self, req: Request, now_ms: u64) -> Reply {
        self.handled = true;
        let s = &mut *self.storage;
        let heap = crate::mem::heap_stats();
        let (mut init, mut down) = (self.initialized, false);
        let mut model = ironbay_rpc::Model {
            bdevs: &mut s.bdevs,
            devices: Some(&mut s.hw),
            nbd: self.nbd.as_deref_mut(),
            iscsi: Some(&mut s.iscsi),
            nvmf: Some(&mut s.nvmf),
            memory_budget: heap.ram_bdev_budget(),
            initialized: &mut init,
            shutdown: &mut down,
            bench: None,
            config_store: Some(&mut s.config_store),
            lvol: Some(&mut s.lvol),
            targetd: Some(&mut s.targetd),
        };
        self.api.handle(&req, &mut model, now_ms)
    }
}

impl TargetdService {
    pub fn poll(
        &mut self,
        network: &mut Network,
        storage: &mut Storage,
        mut nbd: Option<&mut Exports>,
        initialized: bool,
    ) -> bool {
        let now_ms = crate::time::uptime_us() / 1000;
        let set = &mut network.stacks[self.stack].sockets;
        let mut sockets = SetSockets {
            set,
            handles: self.listener.sockets(),
        };
        let mut call = Call {
            api: &mut self.api,
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
