//! The block commands over the object model, as qemu-storage-daemon
//! serves them: block nodes are the bdevs (node name = bdev name), NBD
//! exports are the model's exports (the ones `nbd_start_disk` makes), and
//! `nbd-server-start` reconfigures the appliance's one NBD listener.

use crate::bitmaps::bitmap_info;
use crate::{Args, Dispatch, QmpError};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::net::IpAddr;
use ironbay_bdev::BdevId;
use ironbay_model::Model;
use serde_json::{Map, Value, json};

/// The NBD listener as `nbd-server-start` set it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NbdServer {
    pub port: u16,
    /// 0: as many as the appliance has sockets for.
    pub max_connections: u32,
}

/// An export removed while clients were still attached: listed as
/// shutting down until they are gone, then `BLOCK_EXPORT_DELETED`.
#[derive(Clone, Debug)]
pub struct Dying {
    pub id: String,
    pub name: String,
    pub node: String,
}

/// What the QMP front end keeps between commands.
#[derive(Debug, Default)]
pub struct BlockState {
    /// Set by `nbd-server-start`, cleared by `nbd-server-stop`.
    pub server: Option<NbdServer>,
    pub dying: Vec<Dying>,
    /// Events for every monitor: (name, data).
    pub events: Vec<(&'static str, Value)>,
    /// Set while a `transaction` runs its actions.
    pub(crate) txn: Option<crate::transaction::Txn>,
}

impl BlockState {
    /// Exports whose clients are gone are deleted now: the event goes out.
    pub fn reap(&mut self, clients: &dyn Fn(&str) -> usize) {
        let mut i = 0;
        while i < self.dying.len() {
            if clients(&self.dying[i].name) == 0 {
                let d = self.dying.remove(i);
                self.events
                    .push(("BLOCK_EXPORT_DELETED", json!({ "id": d.id })));
            } else {
                i += 1;
            }
        }
    }
}

/// The commands this module serves.
pub const COMMANDS: &[&str] = &[
    "query-named-block-nodes",
    "query-block",
    "nbd-server-start",
    "nbd-server-stop",
    "nbd-server-add",
    "nbd-server-remove",
    "block-export-add",
    "block-export-del",
    "query-block-exports",
    "block-dirty-bitmap-add",
    "block-dirty-bitmap-remove",
    "block-dirty-bitmap-clear",
    "block-dirty-bitmap-enable",
    "block-dirty-bitmap-disable",
    "block-dirty-bitmap-merge",
    "transaction",
];

/// The default NBD port, where `nbd-server-stop` puts the listener back.
pub const NBD_PORT: u16 = 10809;
/// Longest NBD export name (the protocol's limit).
const MAX_NAME: usize = 4096;

/// What an export is made with.
struct NewExport<'a> {
    id: &'a str,
    node: &'a str,
    name: &'a str,
    description: Option<&'a str>,
    writable: bool,
    writethrough: bool,
    bitmaps: Vec<(BdevId, String)>,
    allocation_depth: bool,
}

/// One command's view of the appliance.
pub struct Block<'a, 'm> {
    pub model: &'a mut Model<'m>,
    pub state: &'a mut BlockState,
    /// Clients attached to the NBD export of this name.
    pub clients: &'a dyn Fn(&str) -> usize,
    /// Addresses of the data NICs, where NBD may listen.
    pub data_addrs: &'a [IpAddr],
}

impl Dispatch for Block<'_, '_> {
    fn commands(&self) -> &[&str] {
        COMMANDS
    }

    fn call(&mut self, name: &str, args: &Map<String, Value>) -> Result<Value, QmpError> {
        let mut a = Args::new(args);
        let v = match name {
            "query-named-block-nodes" => {
                a.opt_bool("flat")?;
                Value::Array(self.nodes())
            }
            "query-block" => Value::Array(
                self.nodes()
                    .into_iter()
                    .map(|n| {
                        json!({
                            "device": "",
                            "qdev": n["node-name"],
                            "locked": false,
                            "removable": false,
                            "inserted": n,
                        })
                    })
                    .collect(),
            ),
            "nbd-server-start" => self.server_start(&mut a)?,
            "nbd-server-stop" => self.server_stop()?,
            "nbd-server-add" => self.server_add(&mut a)?,
            "nbd-server-remove" => {
                let id = a.req_str("name")?;
                let hard = mode(&mut a)?;
                a.finish()?;
                self.export_del(id, hard)?;
                return Ok(json!({}));
            }
            "block-export-add" => self.export_add(&mut a)?,
            "block-export-del" => {
                let id = a.req_str("id")?;
                let hard = mode(&mut a)?;
                a.finish()?;
                self.export_del(id, hard)?;
                return Ok(json!({}));
            }
            "query-block-exports" => self.exports(),
            "block-dirty-bitmap-add" => self.bitmap_add(&mut a)?,
            "block-dirty-bitmap-remove"
            | "block-dirty-bitmap-clear"
            | "block-dirty-bitmap-enable"
            | "block-dirty-bitmap-disable" => {
                let node = a.req_str("node")?;
                let bitmap = a.req_str("name")?;
                a.finish()?;
                self.bitmap_op(name, node, bitmap)?;
                return Ok(json!({}));
            }
            "block-dirty-bitmap-merge" => self.bitmap_merge(&mut a)?,
            "transaction" => self.transaction(&mut a)?,
            _ => {
                return Err(QmpError::command_not_found(format!(
                    "The command {name} has not been found"
                )));
            }
        };
        a.finish()?;
        Ok(v)
    }
}

/// `mode`: false for `safe` (the default), true for `hard`.
fn mode(a: &mut Args<'_>) -> Result<bool, QmpError> {
    match a.opt_str("mode")? {
        None | Some("safe") => Ok(false),
        Some("hard") => Ok(true),
        Some(other) => Err(crate::args::bad_enum("mode", other)),
    }
}

impl Block<'_, '_> {
    fn nodes(&self) -> Vec<Value> {
        let reg = &*self.model.bdevs;
        reg.ids()
            .filter_map(|id| Some((id, reg.info(id)?)))
            .map(|(id, i)| {
                let size = i.size_bytes();
                let mut node = json!({
                    "node-name": i.name,
                    "file": i.name,
                    "drv": driver(&i.product),
                    "ro": i.read_only,
                    "encrypted": false,
                    "detect_zeroes": "off",
                    "backing_file_depth": 0,
                    "bps": 0, "bps_rd": 0, "bps_wr": 0,
                    "iops": 0, "iops_rd": 0, "iops_wr": 0,
                    "write_threshold": 0,
                    "cache": { "writeback": true, "direct": true, "no-flush": false },
                    "image": {
                        "filename": i.name,
                        "format": driver(&i.product),
                        "virtual-size": size,
                        "cluster-size": i.block_size,
                    },
                });
                // QEMU lists the field only on nodes that have bitmaps.
                let bitmaps = reg.bitmaps(id);
                if !bitmaps.is_empty()
                    && let Value::Object(o) = &mut node
                {
                    let list = bitmaps
                        .iter()
                        .map(|b| bitmap_info(b, self.bitmap_exported(id, &b.name)))
                        .collect();
                    o.insert("dirty-bitmaps".into(), Value::Array(list));
                }
                node
            })
            .collect()
    }

    fn running(&self) -> Result<(), QmpError> {
        if self.state.server.is_none() {
            return Err(QmpError::generic("NBD server not running"));
        }
        Ok(())
    }

    fn server_start(&mut self, a: &mut Args<'_>) -> Result<Value, QmpError> {
        let addr = a.req_nested("addr")?;
        let port = self.listen_port(addr)?;
        if a.opt_str("tls-creds")?.is_some() || a.opt_str("tls-authz")?.is_some() {
            return Err(QmpError::generic(
                "TLS is not supported by this NBD server: serve it on a trusted data network",
            ));
        }
        let max_connections = a.opt_u32("max-connections")?.unwrap_or(0);
        a.done()?;
        if self.state.server.is_some() {
            return Err(QmpError::generic("NBD server already running"));
        }
        self.state.server = Some(NbdServer {
            port,
            max_connections,
        });
        if let Some(n) = self.model.nbd.as_deref_mut() {
            n.max_connections = max_connections as usize;
        }
        Ok(json!({}))
    }

    /// The port of a SocketAddress (flat) or SocketAddressLegacy (`data`).
    fn listen_port(&self, mut addr: Args<'_>) -> Result<u16, QmpError> {
        let kind = addr.req_str("type")?;
        let legacy = addr.opt_nested("data")?;
        let mut inet = match legacy {
            Some(d) => {
                addr.finish()?;
                d
            }
            None => addr,
        };
        if kind != "inet" {
            // Consume the rest so the error below is the one given.
            return Err(QmpError::generic(format!(
                "Socket address type '{kind}' is not supported: NBD listens on TCP of a data NIC"
            )));
        }
        let host = inet.req_str("host")?;
        let port = inet.req_str("port")?;
        for opt in ["numeric", "ipv4", "ipv6", "keep-alive", "mptcp"] {
            inet.opt_bool(opt)?;
        }
        if inet.opt_u16("to")?.is_some() {
            return Err(QmpError::generic("a port range ('to') is not supported"));
        }
        inet.finish()?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| QmpError::generic(format!("Invalid port '{port}'")))?;
        let any = matches!(host, "" | "0.0.0.0" | "::");
        let ours = host
            .parse::<IpAddr>()
            .is_ok_and(|ip| self.data_addrs.contains(&ip));
        if !any && !ours {
            return Err(QmpError::generic(format!(
                "Failed to bind socket: Cannot assign requested address ('{host}' is not a data NIC address)"
            )));
        }
        Ok(port)
    }

    fn server_stop(&mut self) -> Result<Value, QmpError> {
        self.running()?;
        let ids: Vec<String> = self
            .model
            .nbd
            .as_deref()
            .map(|n| n.list.iter().map(|e| e.id.clone()).collect())
            .unwrap_or_default();
        for id in ids {
            self.export_del(&id, true)?;
        }
        self.state.server = None;
        if let Some(n) = self.model.nbd.as_deref_mut() {
            n.max_connections = 0;
        }
        Ok(json!({}))
    }

    fn server_add(&mut self, a: &mut Args<'_>) -> Result<Value, QmpError> {
        let device = a.req_str("device")?;
        let name = a.opt_str("name")?.unwrap_or(device);
        let description = a.opt_str("description")?;
        let writable = a.opt_bool("writable")?.unwrap_or(false);
        let bitmap = a.opt_str("bitmap")?;
        a.done()?;
        self.running()?;
        // The old command's own answer for an unknown device.
        if self.model.bdevs.find(device).is_none() {
            return Err(QmpError::device_not_found(format!(
                "Device '{device}' not found"
            )));
        }
        let bitmaps = match bitmap {
            Some(b) => alloc::vec![self.export_bitmap(device, 0, &Value::String(b.into()))?],
            None => Vec::new(),
        };
        self.add(NewExport {
            id: name,
            node: device,
            name,
            description,
            writable,
            writethrough: false,
            bitmaps,
            allocation_depth: false,
        })?;
        Ok(json!({}))
    }

    fn export_add(&mut self, a: &mut Args<'_>) -> Result<Value, QmpError> {
        let kind = a.req_str("type")?;
        let id = a.req_str("id")?;
        let node = a.req_str("node-name")?;
        let writable = a.opt_bool("writable")?.unwrap_or(false);
        let writethrough = a.opt_bool("writethrough")?.unwrap_or(false);
        a.opt_bool("fixed-iothread")?;
        if let Some(t) = a.opt_str("iothread")? {
            return Err(QmpError::generic(format!("Cannot find iothread {t}")));
        }
        match kind {
            "nbd" => {}
            "vhost-user-blk" | "fuse" | "vduse-blk" => {
                return Err(QmpError::generic(format!(
                    "Export type '{kind}' is not supported: the appliance exports over NBD"
                )));
            }
            other => return Err(crate::args::bad_enum("type", other)),
        }
        let name = a.opt_str("name")?.unwrap_or(node);
        let description = a.opt_str("description")?;
        let mut bitmaps: Vec<(BdevId, String)> = Vec::new();
        if let Some(list) = a.opt_array("bitmaps")? {
            for (k, b) in list.iter().enumerate() {
                bitmaps.push(self.export_bitmap(node, k, b)?);
            }
        }
        let depth = a.opt_bool("allocation-depth")?.unwrap_or(false);
        a.done()?;
        if id.is_empty() || id.len() > 255 {
            return Err(QmpError::generic("Invalid block export id"));
        }
        self.running()?;
        self.add(NewExport {
            id,
            node,
            name,
            description,
            writable,
            writethrough,
            bitmaps,
            allocation_depth: depth,
        })?;
        Ok(json!({}))
    }

    /// A `bitmaps` entry of block-export-add: a name on the exported node
    /// (else the one bitmap of that name on any node), or `{node, name}`.
    fn export_bitmap(&self, node: &str, k: usize, b: &Value) -> Result<(BdevId, String), QmpError> {
        let (on, name) = match b {
            Value::String(s) => (None, s.as_str()),
            Value::Object(o) => {
                let mut ba = Args::new(o);
                let n = ba.req_str("node")?;
                let b = ba.req_str("name")?;
                ba.finish()?;
                (Some(n), b)
            }
            _ => {
                return Err(crate::args::invalid_type(
                    &format!("bitmaps[{k}]"),
                    "string or object",
                ));
            }
        };
        let reg = &*self.model.bdevs;
        let has = |id: BdevId| reg.bitmaps(id).iter().any(|x| x.name == name);
        let found = match on {
            Some(n) => reg.find(n).filter(|&id| has(id)),
            None => reg.find(node).filter(|&id| has(id)).or_else(|| {
                let mut all = reg.ids().filter(|&id| has(id));
                match (all.next(), all.next()) {
                    (Some(id), None) => Some(id),
                    _ => None,
                }
            }),
        };
        let id = found.ok_or_else(|| QmpError::generic(format!("Bitmap '{name}' is not found")))?;
        self.usable_bitmap(id, name)?;
        Ok((id, name.into()))
    }

    fn find_id(&self, id: &str) -> bool {
        self.model
            .nbd
            .as_deref()
            .is_some_and(|n| n.list.iter().any(|e| e.id == id))
            || self.state.dying.iter().any(|d| d.id == id)
    }

    fn add(&mut self, x: NewExport<'_>) -> Result<(), QmpError> {
        let NewExport { id, node, name, .. } = x;
        if self.find_id(id) {
            return Err(QmpError::generic(format!(
                "Block export id '{id}' is already in use"
            )));
        }
        if self.model.bdevs.find(node).is_none() {
            return Err(QmpError::generic(format!(
                "Cannot find device='' nor node-name='{node}'"
            )));
        }
        if name.len() > MAX_NAME {
            return Err(QmpError::generic(format!(
                "export name '{}...' too long",
                &name[..name.floor_char_boundary(20)]
            )));
        }
        let taken = self
            .model
            .nbd
            .as_deref()
            .is_some_and(|n| n.list.iter().any(|e| e.name == name))
            || self.state.dying.iter().any(|d| d.name == name);
        if taken {
            return Err(QmpError::generic(format!(
                "NBD server already has export named '{name}'"
            )));
        }
        self.model
            .export_nbd(node, Some(name))
            .map_err(|e| QmpError::generic(e.message))?;
        if let Some(e) = self
            .model
            .nbd
            .as_deref_mut()
            .and_then(|n| n.list.iter_mut().find(|e| e.name == name))
        {
            e.id = id.into();
            e.read_only = e.read_only || !x.writable;
            e.writethrough = x.writethrough;
            if let Some(d) = x.description {
                e.description = d.into();
            }
            e.bitmaps = x.bitmaps;
            e.allocation_depth = x.allocation_depth;
        }
        Ok(())
    }

    fn export_del(&mut self, id: &str, hard: bool) -> Result<(), QmpError> {
        if self.state.dying.iter().any(|d| d.id == id) {
            return Err(QmpError::generic(format!(
                "Export '{id}' is already shutting down"
            )));
        }
        let found = self
            .model
            .nbd
            .as_deref()
            .and_then(|n| n.list.iter().find(|e| e.id == id))
            .map(|e| (e.name.clone(), e.bdev));
        let Some((name, bdev)) = found else {
            return Err(QmpError::generic(format!("Export '{id}' is not found")));
        };
        if !hard && (self.clients)(&name) > 0 {
            return Err(QmpError::generic(format!("export '{id}' still in use")));
        }
        self.model
            .unexport_nbd(&name)
            .map_err(|e| QmpError::generic(e.message))?;
        let node = self.node_name(bdev);
        self.state.dying.push(Dying {
            id: id.into(),
            name,
            node,
        });
        self.state.reap(self.clients);
        Ok(())
    }

    fn node_name(&self, id: BdevId) -> String {
        self.model
            .bdevs
            .info(id)
            .map(|i| i.name.clone())
            .unwrap_or_default()
    }

    fn exports(&self) -> Value {
        let mut out: Vec<Value> = Vec::new();
        if let Some(n) = self.model.nbd.as_deref() {
            for e in &n.list {
                out.push(json!({
                    "id": e.id,
                    "type": "nbd",
                    "node-name": self.node_name(e.bdev),
                    "shutting-down": false,
                }));
            }
        }
        for d in &self.state.dying {
            out.push(json!({
                "id": d.id,
                "type": "nbd",
                "node-name": d.node,
                "shutting-down": true,
            }));
        }
        Value::Array(out)
    }
}

/// QEMU-style driver names for the bdev products.
fn driver(product: &str) -> &'static str {
    match product {
        "NVMe disk" => "nvme",
        "VirtioBlk Disk" => "virtio-blk",
        "Logical Volume" => "lvol",
        "RapidDisk" | "Malloc disk" => "malloc",
        "RapidDisk cache" => "rapiddisk-cache",
        _ => "raw",
    }
}
