//! The NVMe-oF target methods, with SPDK's parameter and result shapes (and
//! the 2018 names), and the `nvmf` subsystem's saved config.

use super::{RpcError, code, only, opt_str, str_param};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::net::SocketAddr;
use ironbay_bdev::Uuid;
use ironbay_model::Model;
use ironbay_model::nvmf::config::{
    Adrfam, Config, ConfigError, Listener, Namespace, Subsystem, TransportOptions, Trtype,
};
use ironbay_model::nvmf::spec::DISCOVERY_NQN;
use serde_json::{Value, json};

use super::params::{
    Params, object, objects, opt_bool, opt_u16, opt_u32, opt_u64, port, required, strings,
};

impl From<ConfigError> for RpcError {
    fn from(e: ConfigError) -> Self {
        ironbay_model::Error::from(e).into()
    }
}

/// The one poll group the engine reports (SPDK's name for the first).
const POLL_GROUP: &str = "nvmf_tgt_poll_group_000";

/// Keys the client sends at their defaults for features we do not have:
/// taken when off, refused when on.
fn must_be_off(p: &Params, keys: &[&str], why: &str) -> Result<(), RpcError> {
    for k in keys {
        match p.get(*k) {
            None | Some(Value::Null) | Some(Value::Bool(false)) => {}
            Some(Value::String(s)) if s.is_empty() => {}
            Some(Value::Array(a)) if a.is_empty() => {}
            Some(_) => return Err(RpcError::params(format!("`{k}`: {why}"))),
        }
    }
    Ok(())
}

/// There is one target; SPDK's `tgt_name` may name no other.
fn no_other_target(p: &Params) -> Result<(), RpcError> {
    match opt_str(p, "tgt_name")? {
        None => Ok(()),
        Some(n) => Err(RpcError::params(format!(
            "no NVMe-oF target named {n}: there is one, unnamed"
        ))),
    }
}

fn not_running() -> RpcError {
    RpcError {
        code: code::INVALID_STATE,
        message: "the NVMe-oF target is not running".into(),
    }
}

fn config_of<'m>(m: &'m Model<'_>) -> Result<&'m Config, RpcError> {
    m.nvmf_config().ok_or_else(not_running)
}

/// The NQN of an existing subsystem, the discovery one included.
fn known_nqn<'p>(m: &Model<'_>, p: &'p Params) -> Result<&'p str, RpcError> {
    let nqn = str_param(p, "nqn")?;
    let c = config_of(m)?;
    if nqn != DISCOVERY_NQN && c.subsystem(nqn).is_none() {
        return Err(RpcError::params(format!("no subsystem {nqn}")));
    }
    Ok(nqn)
}

/// A `listen_address` object: TCP only; `adrfam` defaults to the
/// address's family.
fn listen_address(a: &Params) -> Result<Listener, RpcError> {
    only(a, &["trtype", "adrfam", "traddr", "trsvcid", "transport"])?;
    let trtype = match opt_str(a, "trtype")? {
        Some(t) => t,
        None => str_param(a, "transport")?,
    };
    Trtype::parse(trtype)?;
    let adrfam = opt_str(a, "adrfam")?.map(Adrfam::parse).transpose()?;
    let traddr = str_param(a, "traddr")?;
    Ok(Listener::new(
        adrfam,
        traddr,
        port(required(a, "trsvcid")?, "`trsvcid`")?,
    )?)
}

fn address_json(l: &Listener) -> Value {
    json!({
        "trtype": l.trtype.name(), "adrfam": l.adrfam.name(),
        "traddr": l.traddr, "trsvcid": l.port.to_string()
    })
}

fn socket_json(addr: &str) -> Value {
    match addr.parse::<SocketAddr>() {
        Ok(a) => {
            let family = if a.is_ipv4() {
                Adrfam::Ipv4
            } else {
                Adrfam::Ipv6
            };
            json!({
                "trtype": Trtype::Tcp.name(), "adrfam": family.name(),
                "traddr": a.ip().to_string(), "trsvcid": a.port().to_string()
            })
        }
        Err(_) => json!({ "trtype": Trtype::Tcp.name(), "traddr": addr }),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// `n` bytes of hex; `-` separators are skipped, as SPDK's parser does.
fn parse_hex<const N: usize>(key: &str, s: &str) -> Result<[u8; N], RpcError> {
    let digits: Vec<u8> = s.bytes().filter(|b| *b != b'-').collect();
    let bad = || RpcError::params(format!("`{key}` must be {} hex digits", N * 2));
    if digits.len() != N * 2 {
        return Err(bad());
    }
    let mut out = [0u8; N];
    for (o, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let s = core::str::from_utf8(pair).map_err(|_| bad())?;
        *o = u8::from_str_radix(s, 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// A `namespace` object; nsid absent or 0 takes the lowest free one.
fn namespace(n: &Params) -> Result<Namespace, RpcError> {
    only(
        n,
        &[
            "nsid",
            "bdev_name",
            "nguid",
            "eui64",
            "uuid",
            "ptpl_file",
            "anagrpid",
            "no_auto_visible",
            "hide_metadata",
        ],
    )?;
    must_be_off(
        n,
        &["ptpl_file", "no_auto_visible", "hide_metadata"],
        "not supported",
    )?;
    if opt_u32(n, "anagrpid")?.is_some_and(|g| g > 1) {
        return Err(RpcError::params(
            "`anagrpid`: ANA groups are not supported (one group, 1)",
        ));
    }
    let nsid = opt_u32(n, "nsid")?.unwrap_or(0);
    if nsid == u32::MAX {
        return Err(RpcError::params("`nsid` must be from 1 to 4294967294"));
    }
    Ok(Namespace {
        nsid,
        bdev_name: str_param(n, "bdev_name")?.into(),
        nguid: opt_str(n, "nguid")?
            .map(|s| parse_hex::<16>("nguid", s))
            .transpose()?,
        eui64: opt_str(n, "eui64")?
            .map(|s| parse_hex::<8>("eui64", s))
            .transpose()?,
        uuid: opt_str(n, "uuid")?
            .map(|s| {
                Uuid::parse(s).ok_or_else(|| RpcError::params(format!("`uuid` {s} is not a UUID")))
            })
            .transpose()?,
    })
}

/// The namespace as `nvmf_get_subsystems` shows it: identifiers not given
/// are the ones hosts see, from the bdev's UUID (NGUID and UUID; no
/// EUI-64). `saved`: only what was given.
fn namespace_json(m: &Model<'_>, n: &Namespace, saved: bool) -> Value {
    let mut out = Params::new();
    out.insert("nsid".into(), n.nsid.into());
    out.insert("bdev_name".into(), n.bdev_name.clone().into());
    if !saved {
        out.insert("name".into(), n.bdev_name.clone().into());
    }
    let derived = (!saved)
        .then(|| m.bdevs.find(&n.bdev_name).and_then(|id| m.bdevs.info(id)))
        .flatten()
        .map(|b| b.uuid);
    if let Some(g) = n.nguid.or(derived.map(|u| u.0)) {
        out.insert("nguid".into(), hex(&g).into());
    }
    if let Some(e) = n.eui64 {
        out.insert("eui64".into(), hex(&e).into());
    }
    if let Some(u) = n.uuid.or(derived) {
        out.insert("uuid".into(), u.to_string().into());
    }
    Value::Object(out)
}

// ---- transport --------------------------------------------------------

/// Options of other transports, or of features with nothing to tune
/// here (buffer pools, socket priority, keep-alive granularity): taken and
/// dropped.
const IGNORED_TRANSPORT_KEYS: &[&str] = &[
    "num_shared_buffers",
    "buf_cache_size",
    "sock_priority",
    "zcopy",
    "no_srq",
    "num_cqe",
    "max_srq_depth",
    "acceptor_backlog",
    "no_wr_batching",
    "disable_mappable_bar0",
    "disable_adaptive_irq",
    "disable_shadow_doorbells",
    "control_msg_num",
    "ack_timeout",
    "data_wr_pool_size",
    "disable_command_passthru",
    "iobuf_small_cache_size",
    "iobuf_large_cache_size",
    "kas",
    "min_kato",
];
const OFF_TRANSPORT_KEYS: &[&str] = &["dif_insert_or_strip", "masked_oncs", "masked_fuses"];

/// The option keys `options` reads and the seed's `set_nvmf_target_options`.
const OPTION_KEYS: &[&str] = &[
    "max_queue_depth",
    "max_qpairs_per_ctrlr",
    "max_io_qpairs_per_ctrlr",
    "in_capsule_data_size",
    "max_io_size",
    "io_unit_size",
    "max_aq_depth",
    "c2h_success",
    "abort_timeout_sec",
    "header_digest",
    "data_digest",
];

/// Transport options over `base`: only the keys given change.
fn options(p: &Params, base: &TransportOptions) -> Result<TransportOptions, RpcError> {
    let mut o = base.clone();
    if let Some(v) = opt_u16(p, "max_queue_depth")? {
        o.max_queue_depth = v;
    }
    if let Some(v) = opt_u16(p, "max_aq_depth")? {
        o.max_aq_depth = v;
    }
    // SPDK's older count includes the admin queue.
    if let Some(v) = opt_u16(p, "max_qpairs_per_ctrlr")? {
        if v < 2 {
            return Err(RpcError::params(
                "`max_qpairs_per_ctrlr` counts the admin queue: at least 2",
            ));
        }
        o.max_io_qpairs_per_ctrlr = v - 1;
    }
    if let Some(v) = opt_u16(p, "max_io_qpairs_per_ctrlr")? {
        o.max_io_qpairs_per_ctrlr = v;
    }
    for (key, slot) in [
        ("in_capsule_data_size", &mut o.in_capsule_data_size),
        ("max_io_size", &mut o.max_io_size),
        ("io_unit_size", &mut o.io_unit_size),
        ("abort_timeout_sec", &mut o.abort_timeout_sec),
    ] {
        if let Some(v) = opt_u32(p, key)? {
            *slot = v;
        }
    }
    for (key, slot) in [
        ("c2h_success", &mut o.c2h_success),
        ("header_digest", &mut o.header_digest),
        ("data_digest", &mut o.data_digest),
    ] {
        if let Some(v) = opt_bool(p, key)? {
            *slot = v;
        }
    }
    o.check()?;
    Ok(o)
}

pub(super) fn create_transport(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    let mut known: Vec<&str> = alloc::vec!["trtype", "tgt_name", "acceptor_poll_rate"];
    known.extend(OPTION_KEYS);
    known.extend(IGNORED_TRANSPORT_KEYS);
    known.extend(OFF_TRANSPORT_KEYS);
    only(p, &known)?;
    no_other_target(p)?;
    Trtype::parse(str_param(p, "trtype")?)?;
    must_be_off(p, OFF_TRANSPORT_KEYS, "not supported")?;
    for key in IGNORED_TRANSPORT_KEYS {
        if let Some(v) = p.get(*key)
            && !matches!(v, Value::Null | Value::Bool(_) | Value::Number(_))
        {
            return Err(RpcError::params(format!(
                "`{key}` must be a number or a boolean"
            )));
        }
    }
    let poll = opt_u32(p, "acceptor_poll_rate")?;
    let o = options(p, &TransportOptions::default())?;
    m.nvmf_configure(|c, _| c.create_transport(o))?;
    if let Some(us) = poll {
        set_acceptor_poll_rate(m, us)?;
    }
    Ok(Value::Bool(true))
}

/// How often the acceptor polls: kept and reported only.
fn set_acceptor_poll_rate(m: &mut Model<'_>, us: u32) -> Result<(), RpcError> {
    m.nvmf_configure(|c, _| {
        c.set_acceptor_poll_rate(us);
        Ok(())
    })?;
    Ok(())
}

/// The transport as `nvmf_get_transports` shows it (`all`) or as a saved
/// config creates it (our own keys only where they differ from default, so
/// SPDK can load it).
fn transport_json(c: &Config, o: &TransportOptions, all: bool) -> Value {
    let d = TransportOptions::default();
    let mut v = json!({
        "trtype": Trtype::Tcp.name(),
        "max_queue_depth": o.max_queue_depth,
        "max_io_qpairs_per_ctrlr": o.max_io_qpairs_per_ctrlr,
        "in_capsule_data_size": o.in_capsule_data_size,
        "max_io_size": o.max_io_size,
        "io_unit_size": o.io_unit_size,
        "max_aq_depth": o.max_aq_depth,
        "dif_insert_or_strip": false,
        "c2h_success": o.c2h_success,
        "abort_timeout_sec": o.abort_timeout_sec,
    });
    if all || o.header_digest != d.header_digest {
        v["header_digest"] = o.header_digest.into();
    }
    if all || o.data_digest != d.data_digest {
        v["data_digest"] = o.data_digest.into();
    }
    if all {
        v["zcopy"] = false.into();
        v["sock_priority"] = 0.into();
    }
    if c.acceptor_poll_rate != 0 {
        v["acceptor_poll_rate"] = c.acceptor_poll_rate.into();
    }
    v
}

pub(super) fn get_transports(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    only(p, &["trtype", "tgt_name"])?;
    no_other_target(p)?;
    if let Some(t) = opt_str(p, "trtype")? {
        Trtype::parse(t)?;
    }
    let Some(c) = m.nvmf_config() else {
        return Ok(Value::Array(Vec::new()));
    };
    Ok(Value::Array(
        c.transport
            .iter()
            .map(|o| transport_json(c, o, true))
            .collect(),
    ))
}

// ---- subsystems -------------------------------------------------------

/// The `nvmf_create_subsystem` keys common to the seed's one-shot form.
fn subsystem_spec(p: &Params) -> Result<Subsystem, RpcError> {
    let mut s = Subsystem::new(str_param(p, "nqn")?);
    if let Some(sn) = opt_str(p, "serial_number")? {
        s.serial_number = sn.into();
    }
    if let Some(mn) = opt_str(p, "model_number")? {
        s.model_number = mn.into();
    }
    s.allow_any_host = opt_bool(p, "allow_any_host")?.unwrap_or(false);
    if let Some(n) = opt_u32(p, "max_namespaces")? {
        s.max_namespaces = n;
    }
    if let Some(c) = opt_u16(p, "min_cntlid")? {
        s.min_cntlid = c;
    }
    if let Some(c) = opt_u16(p, "max_cntlid")? {
        s.max_cntlid = c;
    }
    Ok(s)
}

pub(super) fn create_subsystem(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    only(
        p,
        &[
            "nqn",
            "tgt_name",
            "serial_number",
            "model_number",
            "allow_any_host",
            "max_namespaces",
            "ana_reporting",
            "min_cntlid",
            "max_cntlid",
            "passthrough",
            "enable_nssr",
            "dmrsl",
            "wzsl",
            "admin_label",
        ],
    )?;
    no_other_target(p)?;
    must_be_off(
        p,
        &["ana_reporting", "passthrough", "enable_nssr", "admin_label"],
        "not supported",
    )?;
    // Size limits the host is told; ours come from the bdevs.
    opt_u32(p, "dmrsl")?;
    opt_u32(p, "wzsl")?;
    let s = subsystem_spec(p)?;
    m.nvmf_configure(|c, bdevs| c.create_subsystem(s, bdevs))?;
    Ok(Value::Bool(true))
}

/// The 2018 one-shot form: listeners, hosts and namespaces at once, all or
/// nothing; listeners bring a TCP transport with default options if there
/// is none.
pub(super) fn construct_subsystem(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    only(
        p,
        &[
            "nqn",
            "listen_addresses",
            "hosts",
            "allow_any_host",
            "serial_number",
            "model_number",
            "namespaces",
            "max_namespaces",
            "core",
            "mode",
        ],
    )?;
    if let Some(mode) = opt_str(p, "mode")?
        && !mode.eq_ignore_ascii_case("virtual")
    {
        return Err(RpcError::params(format!(
            "`mode` {mode}: only virtual subsystems"
        )));
    }
    opt_u64(p, "core")?;
    str_param(p, "serial_number")?;
    let mut s = subsystem_spec(p)?;
    s.listeners = objects(p, "listen_addresses")?
        .into_iter()
        .map(listen_address)
        .collect::<Result<_, _>>()?;
    s.hosts = strings(p, "hosts")?;
    s.namespaces = objects(p, "namespaces")?
        .into_iter()
        .map(namespace)
        .collect::<Result<_, _>>()?;
    m.nvmf_configure(|c, bdevs| c.construct_subsystem(s, bdevs))?;
    Ok(Value::Bool(true))
}

pub(super) fn delete_subsystem(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    only(p, &["nqn", "tgt_name"])?;
    no_other_target(p)?;
    let nqn = str_param(p, "nqn")?;
    m.nvmf_configure(|c, _| c.delete_subsystem(nqn))?;
    Ok(Value::Bool(true))
}

fn discovery_json(c: &Config) -> Value {
    let listeners: Vec<Value> = c.discovery_listeners.iter().map(address_json).collect();
    json!({
        "nqn": DISCOVERY_NQN, "subtype": "Discovery", "listen_addresses": listeners,
        "hosts": [], "allow_any_host": true
    })
}

fn subsystem_json(m: &Model<'_>, s: &Subsystem) -> Value {
    let listeners: Vec<Value> = s.listeners.iter().map(address_json).collect();
    let hosts: Vec<Value> = s.hosts.iter().map(|h| json!({ "nqn": h })).collect();
    let namespaces: Vec<Value> = s
        .namespaces
        .iter()
        .map(|n| namespace_json(m, n, false))
        .collect();
    json!({
        "nqn": s.nqn, "subtype": "NVMe", "listen_addresses": listeners, "hosts": hosts,
        "allow_any_host": s.allow_any_host, "serial_number": s.serial_number,
        "model_number": s.model_number, "max_namespaces": s.max_nsid(),
        "min_cntlid": s.min_cntlid, "max_cntlid": s.max_cntlid, "ana_reporting": false,
        "namespaces": namespaces
    })
}

/// The discovery subsystem first, as SPDK lists it; `nqn` picks one.
pub(super) fn get_subsystems(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    only(p, &["nqn", "tgt_name"])?;
    no_other_target(p)?;
    let wanted = opt_str(p, "nqn")?;
    let Some(c) = m.nvmf_config() else {
        return match wanted {
            Some(n) => Err(RpcError::params(format!("no subsystem {n}"))),
            None => Ok(Value::Array(Vec::new())),
        };
    };
    let mut list = Vec::new();
    if wanted.is_none_or(|n| n == DISCOVERY_NQN) {
        list.push(discovery_json(c));
    }
    for s in c
        .subsystems
        .iter()
        .filter(|s| wanted.is_none_or(|n| n == s.nqn))
    {
        list.push(subsystem_json(m, s));
    }
    if let Some(n) = wanted
        && list.is_empty()
    {
        return Err(RpcError::params(format!("no subsystem {n}")));
    }
    Ok(Value::Array(list))
}

const LISTENER_KEYS: &[&str] = &[
    "nqn",
    "tgt_name",
    "listen_address",
    "secure_channel",
    "ana_state",
    "sock_impl",
    "numa_id",
];

pub(super) fn add_listener(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    only(p, LISTENER_KEYS)?;
    no_other_target(p)?;
    must_be_off(p, &["secure_channel"], "TLS is not supported")?;
    if let Some(s) = opt_str(p, "ana_state")?
        && s != "optimized"
    {
        return Err(RpcError::params(format!(
            "`ana_state` {s}: ANA is not supported (all paths are optimized)"
        )));
    }
    opt_str(p, "sock_impl")?;
    let l = listen_address(object(p, "listen_address")?)?;
    let nqn = str_param(p, "nqn")?;
    m.nvmf_configure(|c, _| c.add_listener(nqn, l))?;
    Ok(Value::Bool(true))
}

pub(super) fn remove_listener(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    only(p, &["nqn", "tgt_name", "listen_address"])?;
    no_other_target(p)?;
    let l = listen_address(object(p, "listen_address")?)?;
    let nqn = str_param(p, "nqn")?;
    m.nvmf_configure(|c, _| c.remove_listener(nqn, &l.traddr, l.port))?;
    Ok(Value::Bool(true))
}

/// Returns the namespace ID.
pub(super) fn add_ns(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    only(p, &["nqn", "tgt_name", "namespace"])?;
    no_other_target(p)?;
    let ns = namespace(object(p, "namespace")?)?;
    let nqn = str_param(p, "nqn")?;
    Ok(
        m.nvmf_configure(|c, bdevs| c.add_namespace(nqn, ns, bdevs))?
            .into(),
    )
}

pub(super) fn remove_ns(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    only(p, &["nqn", "tgt_name", "nsid"])?;
    no_other_target(p)?;
    let nsid = opt_u32(p, "nsid")?.ok_or_else(|| RpcError::params("missing `nsid`"))?;
    let nqn = str_param(p, "nqn")?;
    m.nvmf_configure(|c, _| c.remove_namespace(nqn, nsid))?;
    Ok(Value::Bool(true))
}

pub(super) fn add_host(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    only(
        p,
        &[
            "nqn",
            "tgt_name",
            "host",
            "psk",
            "dhchap_key",
            "dhchap_ctrlr_key",
        ],
    )?;
    no_other_target(p)?;
    must_be_off(
        p,
        &["psk", "dhchap_key", "dhchap_ctrlr_key"],
        "TLS and DH-HMAC-CHAP are not supported",
    )?;
    let (nqn, host) = (str_param(p, "nqn")?, str_param(p, "host")?);
    m.nvmf_configure(|c, _| c.add_host(nqn, host))?;
    Ok(Value::Bool(true))
}

/// Controllers of the host are failed at once (no wait for I/O).
pub(super) fn remove_host(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    only(p, &["nqn", "tgt_name", "host", "timeout_ms"])?;
    no_other_target(p)?;
    opt_u64(p, "timeout_ms")?;
    let (nqn, host) = (str_param(p, "nqn")?, str_param(p, "host")?);
    m.nvmf_configure(|c, _| c.remove_host(nqn, host))?;
    Ok(Value::Bool(true))
}

pub(super) fn allow_any_host(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    only(p, &["nqn", "tgt_name", "allow_any_host"])?;
    no_other_target(p)?;
    let allow = opt_bool(p, "allow_any_host")?
        .ok_or_else(|| RpcError::params("missing `allow_any_host`"))?;
    let nqn = str_param(p, "nqn")?;
    m.nvmf_configure(|c, _| c.set_allow_any_host(nqn, allow))?;
    Ok(Value::Bool(true))
}

pub(super) fn get_controllers(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    only(p, &["nqn", "tgt_name"])?;
    no_other_target(p)?;
    let nqn = known_nqn(m, p)?;
    let t = m.nvmf_target().ok_or_else(not_running)?;
    let list = t
        .controllers()
        .iter()
        .filter(|c| c.subnqn == nqn)
        .map(|c| {
            json!({
                "cntlid": c.cntlid, "hostnqn": c.hostnqn, "hostid": c.hostid,
                "num_io_qpairs": c.num_io_qpairs
            })
        })
        .collect();
    Ok(Value::Array(list))
}

pub(super) fn get_qpairs(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    only(p, &["nqn", "tgt_name"])?;
    no_other_target(p)?;
    let nqn = known_nqn(m, p)?;
    let t = m.nvmf_target().ok_or_else(not_running)?;
    let list = t
        .qpairs()
        .iter()
        .filter(|q| q.subnqn == nqn)
        .map(|q| {
            json!({
                "cntlid": q.cntlid, "qid": q.qid, "state": "active", "thread": POLL_GROUP,
                "hostnqn": q.hostnqn, "listen_address": socket_json(&q.local),
                "peer_address": socket_json(&q.peer)
            })
        })
        .collect();
    Ok(Value::Array(list))
}

pub(super) fn get_listeners(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    only(p, &["nqn", "tgt_name"])?;
    no_other_target(p)?;
    let nqn = known_nqn(m, p)?;
    let c = config_of(m)?;
    let listeners = match c.subsystem(nqn) {
        Some(s) => &s.listeners,
        None => &c.discovery_listeners,
    };
    Ok(Value::Array(
        listeners
            .iter()
            .map(|l| {
                json!({
                    "address": address_json(l), "ana_state": "optimized",
                    "ana_states": [{ "ana_group": 1, "ana_state": "optimized" }]
                })
            })
            .collect(),
    ))
}

/// One poll group, as SPDK shapes it; ticks are microseconds. Pending
/// I/O is what the namespaces' bdevs have in flight.
pub(super) fn get_stats(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    only(p, &["tgt_name"])?;
    no_other_target(p)?;
    let t = m.nvmf_target().ok_or_else(not_running)?;
    let s = t.stats();
    let pending: usize = t
        .config
        .subsystems
        .iter()
        .flat_map(|s| &s.namespaces)
        .filter_map(|n| m.bdevs.find(&n.bdev_name))
        .map(|id| m.bdevs.in_flight(id))
        .sum();
    let transports: Vec<Value> = t
        .config
        .transport
        .iter()
        .map(|_| json!({ "trtype": Trtype::Tcp.name() }))
        .collect();
    Ok(json!({
        "tick_rate": 1_000_000,
        "poll_groups": [{
            "name": POLL_GROUP,
            "admin_qpairs": s.admin_qpairs, "io_qpairs": s.io_qpairs,
            "current_admin_qpairs": s.current_admin_qpairs,
            "current_io_qpairs": s.current_io_qpairs,
            "pending_bdev_io": pending,
            "completed_nvme_io": s.read_cmds.saturating_add(s.write_cmds),
            "transports": transports
        }]
    }))
}

// ---- target options ---------------------------------------------------

const ADMIN_PASSTHRU: &[&str] = &[
    "identify_ctrlr",
    "identify_uuid_list",
    "get_log_page",
    "get_set_features",
    "sanitize",
    "security_send_recv",
    "fw_update",
    "nvme_mi",
    "vendor_specific",
];

/// Target-wide settings. Only the acceptor poll rate means anything here;
/// the rest is taken at the values that describe what the target does.
pub(super) fn set_config(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    only(
        p,
        &[
            "acceptor_poll_rate",
            "admin_cmd_passthru",
            "poll_groups_mask",
            "discovery_filter",
            "discovery_filters",
            "dhchap_digests",
            "dhchap_dhgroups",
            "dup_host_policy",
            "conn_sched",
        ],
    )?;
    if let Some(Value::Object(pass)) = p.get("admin_cmd_passthru") {
        only(pass, ADMIN_PASSTHRU)?;
        must_be_off(
            pass,
            ADMIN_PASSTHRU,
            "admin command passthrough is not supported",
        )?;
    } else if p.get("admin_cmd_passthru").is_some_and(|v| !v.is_null()) {
        return Err(RpcError::params("`admin_cmd_passthru` must be an object"));
    }
    let mut filters = strings(p, "discovery_filters")?;
    if let Some(f) = opt_str(p, "discovery_filter")? {
        filters.extend(f.split(',').map(String::from));
    }
    // Every subsystem is listed to every host that may connect to it.
    if let Some(f) = filters.iter().find(|f| f.as_str() != "match_any") {
        return Err(RpcError::params(format!(
            "discovery filter {f}: only match_any is supported"
        )));
    }
    if let Some(d) = opt_str(p, "dup_host_policy")?
        && d != "allow"
    {
        return Err(RpcError::params(format!(
            "`dup_host_policy` {d}: only allow is supported"
        )));
    }
    opt_str(p, "poll_groups_mask")?;
    opt_str(p, "conn_sched")?;
    strings(p, "dhchap_digests")?;
    strings(p, "dhchap_dhgroups")?;
    let poll = opt_u32(p, "acceptor_poll_rate")?;
    config_of(m)?;
    if let Some(us) = poll {
        set_acceptor_poll_rate(m, us)?;
    }
    Ok(Value::Bool(true))
}

pub(super) fn set_max_subsystems(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    only(p, &["max_subsystems"])?;
    let max = opt_u32(p, "max_subsystems")?
        .ok_or_else(|| RpcError::params("missing `max_subsystems`"))?;
    m.nvmf_configure(|c, _| c.set_max_subsystems(max))?;
    Ok(Value::Bool(true))
}

/// The 2018 target options: they set the TCP transport's options (creating
/// it) and the subsystem limit.
pub(super) fn set_target_options(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    only(
        p,
        &[
            "max_queue_depth",
            "max_qpairs_per_ctrlr",
            "in_capsule_data_size",
            "max_io_size",
            "max_subsystems",
            "io_unit_size",
        ],
    )?;
    let c = config_of(m)?;
    let base = c.transport.clone().unwrap_or_default();
    let o = options(p, &base)?;
    let max = opt_u32(p, "max_subsystems")?;
    if let Some(max) = max {
        m.nvmf_configure(|c, _| c.set_max_subsystems(max))?;
    }
    m.nvmf_configure(|c, _| c.set_transport(o))?;
    Ok(Value::Bool(true))
}

// ---- saved config -----------------------------------------------------

/// The `nvmf` subsystem as calls that rebuild it, in SPDK's order: target
/// settings, the transport, then each subsystem with its hosts and
/// namespaces before its listeners (so no host connects to a subsystem
/// still filling), and last the discovery listeners.
pub(super) fn config(m: &Model<'_>) -> Vec<Value> {
    let Some(c) = m.nvmf_config() else {
        return Vec::new();
    };
    let call = |method: &str, params: Value| json!({ "method": method, "params": params });
    let mut calls = alloc::vec![
        call(
            "nvmf_set_config",
            json!({ "discovery_filter": "match_any", "admin_cmd_passthru": { "identify_ctrlr": false } })
        ),
        call(
            "nvmf_set_max_subsystems",
            json!({ "max_subsystems": c.subsystem_limit() })
        ),
    ];
    if let Some(o) = &c.transport {
        calls.push(call("nvmf_create_transport", transport_json(c, o, false)));
    }
    for s in &c.subsystems {
        calls.push(call(
            "nvmf_create_subsystem",
            json!({
                "nqn": s.nqn, "allow_any_host": s.allow_any_host,
                "serial_number": s.serial_number, "model_number": s.model_number,
                "max_namespaces": s.max_namespaces, "min_cntlid": s.min_cntlid,
                "max_cntlid": s.max_cntlid, "ana_reporting": false
            }),
        ));
        for h in &s.hosts {
            calls.push(call(
                "nvmf_subsystem_add_host",
                json!({ "nqn": s.nqn, "host": h }),
            ));
        }
        for n in &s.namespaces {
            calls.push(call(
                "nvmf_subsystem_add_ns",
                json!({ "nqn": s.nqn, "namespace": namespace_json(m, n, true) }),
            ));
        }
        for l in &s.listeners {
            calls.push(call(
                "nvmf_subsystem_add_listener",
                json!({ "nqn": s.nqn, "listen_address": address_json(l) }),
            ));
        }
    }
    for l in &c.discovery_listeners {
        calls.push(call(
            "nvmf_subsystem_add_listener",
            json!({ "nqn": DISCOVERY_NQN, "listen_address": address_json(l) }),
        ));
    }
    calls
}

#[cfg(test)]
mod tests;
