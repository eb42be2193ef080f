//! The iSCSI target methods, with SPDK's parameter and result shapes (and
//! the 2018 names' legacy keys), and the `iscsi` subsystem's saved config.

use super::{RpcError, no_params, only, opt_str, str_param};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use ironbay_model::Model;
use ironbay_model::iscsi::ConnInfo;
use ironbay_model::iscsi::config::{
    ChapPolicy, Config, LunSpec, NodeSpec, Options, PgIgMap, Portal, Secret, TargetNode,
};
use serde_json::{Value, json};

use super::params::{Params, objects, opt_bool, opt_u32, port, required, strings};

/// A required tag: SPDK's positive int32.
fn tag_param(p: &Params, key: &str) -> Result<u32, RpcError> {
    required(p, key)?
        .as_u64()
        .filter(|t| (1..=i32::MAX as u64).contains(t))
        .map(|t| t as u32)
        .ok_or_else(|| RpcError::params(format!("`{key}` must be a positive integer")))
}

fn pg_ig_maps(p: &Params) -> Result<Vec<PgIgMap>, RpcError> {
    objects(p, "pg_ig_maps")?
        .into_iter()
        .map(|m| {
            only(m, &["pg_tag", "ig_tag"])?;
            Ok(PgIgMap {
                pg_tag: tag_param(m, "pg_tag")?,
                ig_tag: tag_param(m, "ig_tag")?,
            })
        })
        .collect()
}

/// `lun_id`: absent or -1 takes the lowest free id.
fn lun_id(p: &Params) -> Result<Option<u64>, RpcError> {
    match p.get("lun_id") {
        None | Some(Value::Null) => Ok(None),
        Some(v) if v.as_i64() == Some(-1) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| RpcError::params("`lun_id` must be a non-negative integer or -1")),
    }
}

const CHAP_KEYS: [&str; 4] = ["disable_chap", "require_chap", "mutual_chap", "chap_group"];
/// The 2018 discovery keys, in [`CHAP_KEYS`] order.
const LEGACY_CHAP_KEYS: [&str; 4] = [
    "no_discovery_auth",
    "req_discovery_auth",
    "req_discovery_auth_mutual",
    "discovery_auth_group",
];

/// CHAP keys over `base`; the legacy discovery keys count too when
/// `legacy`. `None` if no key is given.
fn chap(p: &Params, base: &ChapPolicy, legacy: bool) -> Result<Option<ChapPolicy>, RpcError> {
    let flag = |i: usize| -> Result<Option<bool>, RpcError> {
        match opt_bool(p, CHAP_KEYS[i])? {
            None if legacy => opt_bool(p, LEGACY_CHAP_KEYS[i]),
            v => Ok(v),
        }
    };
    let (disable, require, mutual) = (flag(0)?, flag(1)?, flag(2)?);
    let group = match opt_u32(p, CHAP_KEYS[3])? {
        None if legacy => opt_u32(p, LEGACY_CHAP_KEYS[3])?,
        g => g,
    };
    if disable.is_none() && require.is_none() && mutual.is_none() && group.is_none() {
        return Ok(None);
    }
    Ok(Some(ChapPolicy {
        disable: disable.unwrap_or(base.disable),
        require: require.unwrap_or(base.require),
        mutual: mutual.unwrap_or(base.mutual),
        group: group.unwrap_or(base.group),
    }))
}

fn chap_json(c: &ChapPolicy, out: &mut Params) {
    out.insert("disable_chap".into(), c.disable.into());
    out.insert("require_chap".into(), c.require.into());
    out.insert("mutual_chap".into(), c.mutual.into());
    out.insert("chap_group".into(), c.group.into());
}

/// The u32 options by key: SPDK's, the 2018 name's
/// `min_connections_per_core`, then ours.
const NUMBER_KEYS: [&str; 15] = [
    "nop_timeout",
    "nop_in_interval",
    "max_sessions",
    "max_queue_depth",
    "max_connections_per_session",
    "default_time2wait",
    "default_time2retain",
    "first_burst_length",
    "error_recovery_level",
    "max_large_datain_per_connection",
    "max_r2t_per_connection",
    "min_connections_per_core",
    "max_burst_length",
    "max_recv_data_segment_length",
    "max_outstanding_r2t",
];

fn numbers(o: &mut Options) -> [&mut u32; 15] {
    [
        &mut o.nop_timeout,
        &mut o.nop_in_interval,
        &mut o.max_sessions,
        &mut o.max_queue_depth,
        &mut o.max_connections_per_session,
        &mut o.default_time2wait,
        &mut o.default_time2retain,
        &mut o.first_burst_length,
        &mut o.error_recovery_level,
        &mut o.max_large_datain_per_connection,
        &mut o.max_r2t_per_connection,
        &mut o.min_connections_per_core,
        &mut o.max_burst_length,
        &mut o.max_recv_data_segment_length,
        &mut o.max_outstanding_r2t,
    ]
}

const FLAG_KEYS: [&str; 5] = [
    "immediate_data",
    "allow_duplicated_isid",
    "initial_r2t",
    "data_pdu_in_order",
    "data_sequence_in_order",
];

fn flags(o: &mut Options) -> [&mut bool; 5] {
    [
        &mut o.immediate_data,
        &mut o.allow_duplicated_isid,
        &mut o.initial_r2t,
        &mut o.data_pdu_in_order,
        &mut o.data_sequence_in_order,
    ]
}

/// Keys of ours that SPDK does not know: saved only when not at default, so
/// a saved config stays loadable by SPDK itself.
const OWN_KEYS: [&str; 7] = [
    "min_connections_per_core",
    "max_burst_length",
    "max_recv_data_segment_length",
    "max_outstanding_r2t",
    "initial_r2t",
    "data_pdu_in_order",
    "data_sequence_in_order",
];

/// SPDK's pool sizes: no pools here, so positive values are taken and
/// dropped.
const POOLS: [&str; 3] = [
    "pdu_pool_size",
    "immediate_data_pool_size",
    "data_out_pool_size",
];

fn config_of<'m>(m: &'m Model<'_>) -> Result<&'m Config, RpcError> {
    m.iscsi_config().ok_or_else(|| RpcError {
        code: super::code::INVALID_STATE,
        message: "the iSCSI target is not running".into(),
    })
}

/// Options start from the current ones: only the keys given change.
pub(super) fn set_options(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    let c = config_of(m)?;
    let mut o = c.options.clone();
    let mut known: Vec<&str> = alloc::vec!["auth_file", "node_base"];
    known.extend(CHAP_KEYS);
    known.extend(LEGACY_CHAP_KEYS);
    known.extend(POOLS);
    known.extend(NUMBER_KEYS);
    known.extend(FLAG_KEYS);
    only(p, &known)?;
    let discovery = chap(p, &c.discovery_auth, true)?;
    for (key, slot) in NUMBER_KEYS.into_iter().zip(numbers(&mut o)) {
        if let Some(v) = opt_u32(p, key)? {
            *slot = v;
        }
    }
    for (key, slot) in FLAG_KEYS.into_iter().zip(flags(&mut o)) {
        if let Some(v) = opt_bool(p, key)? {
            *slot = v;
        }
    }
    for key in POOLS {
        if opt_u32(p, key)? == Some(0) {
            return Err(RpcError::params(format!("`{key}` must be positive")));
        }
    }
    if let Some(s) = opt_str(p, "node_base")? {
        o.node_base = s.into();
    }
    if let Some(s) = opt_str(p, "auth_file")? {
        o.auth_file = s.into();
    }
    m.iscsi_set_options(o, discovery)?;
    Ok(Value::Bool(true))
}

/// The options as `iscsi_get_options` shows them (`all`) or as a saved
/// config sets them (our own keys only where they differ from default).
fn options_json(c: &Config, all: bool) -> Value {
    let mut o = c.options.clone();
    let mut d = Options::default();
    let mut out = Params::new();
    if !o.auth_file.is_empty() {
        out.insert("auth_file".into(), o.auth_file.clone().into());
    }
    out.insert("node_base".into(), o.node_base.clone().into());
    let shown = |key: &str, same: bool| all || !(same && OWN_KEYS.contains(&key));
    for ((key, v), dv) in NUMBER_KEYS
        .into_iter()
        .zip(numbers(&mut o))
        .zip(numbers(&mut d))
    {
        if shown(key, v == dv) {
            out.insert(key.into(), (*v).into());
        }
    }
    for ((key, v), dv) in FLAG_KEYS.into_iter().zip(flags(&mut o)).zip(flags(&mut d)) {
        if shown(key, v == dv) {
            out.insert(key.into(), (*v).into());
        }
    }
    chap_json(&c.discovery_auth, &mut out);
    Value::Object(out)
}

pub(super) fn get_options(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    no_params(p)?;
    Ok(options_json(config_of(m)?, true))
}

/// Replaces the discovery policy: keys not given are off (SPDK's way).
pub(super) fn set_discovery_auth(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    let mut known = CHAP_KEYS.to_vec();
    known.extend(LEGACY_CHAP_KEYS);
    only(p, &known)?;
    let c = chap(p, &ChapPolicy::default(), true)?.unwrap_or_default();
    m.iscsi_configure(|cfg, _| cfg.set_discovery_auth(c))?;
    Ok(Value::Bool(true))
}

fn secret(p: &Params) -> Result<Secret, RpcError> {
    Ok(Secret {
        user: str_param(p, "user")?.into(),
        secret: str_param(p, "secret")?.into(),
        muser: opt_str(p, "muser")?.map(String::from),
        msecret: opt_str(p, "msecret")?.map(String::from),
    })
}

const SECRET_KEYS: [&str; 4] = ["user", "secret", "muser", "msecret"];

pub(super) fn create_auth_group(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    only(p, &["tag", "secrets"])?;
    let tag = tag_param(p, "tag")?;
    let secrets = objects(p, "secrets")?
        .into_iter()
        .map(|s| {
            only(s, &SECRET_KEYS)?;
            secret(s)
        })
        .collect::<Result<Vec<_>, _>>()?;
    m.iscsi_configure(|c, _| c.create_auth_group(tag, secrets))?;
    Ok(Value::Bool(true))
}

pub(super) fn delete_auth_group(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    only(p, &["tag"])?;
    let tag = tag_param(p, "tag")?;
    m.iscsi_configure(|c, _| c.delete_auth_group(tag))?;
    Ok(Value::Bool(true))
}

pub(super) fn add_secret(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    only(p, &["tag", "user", "secret", "muser", "msecret"])?;
    let tag = tag_param(p, "tag")?;
    let secret = secret(p)?;
    m.iscsi_configure(|c, _| c.add_secret(tag, secret))?;
    Ok(Value::Bool(true))
}

pub(super) fn remove_secret(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    only(p, &["tag", "user"])?;
    let tag = tag_param(p, "tag")?;
    let user = str_param(p, "user")?;
    m.iscsi_configure(|c, _| c.remove_secret(tag, user))?;
    Ok(Value::Bool(true))
}

fn auth_groups_json(c: &Config) -> Vec<Value> {
    c.auth_groups
        .iter()
        .map(|g| {
            let secrets: Vec<Value> = g
                .secrets
                .iter()
                .map(|s| {
                    let mut v = json!({ "user": s.user, "secret": s.secret });
                    if let (Some(mu), Some(ms)) = (&s.muser, &s.msecret) {
                        v["muser"] = mu.clone().into();
                        v["msecret"] = ms.clone().into();
                    }
                    v
                })
                .collect();
            json!({ "tag": g.tag, "secrets": secrets })
        })
        .collect()
}

pub(super) fn get_auth_groups(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    no_params(p)?;
    Ok(Value::Array(
        m.iscsi_config().map(auth_groups_json).unwrap_or_default(),
    ))
}

/// `wait` (listen only once started) is taken but has no effect: portals
/// are served as soon as they exist.
pub(super) fn create_portal_group(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    only(p, &["tag", "portals", "private", "wait"])?;
    let tag = tag_param(p, "tag")?;
    required(p, "portals")?;
    let portals = objects(p, "portals")?
        .into_iter()
        .map(|o| {
            // `cpumask` is from SPDK 18's saved configs.
            only(o, &["host", "port", "cpumask"])?;
            Ok(Portal {
                host: str_param(o, "host")?.into(),
                port: port(required(o, "port")?, "portal `port`")?,
            })
        })
        .collect::<Result<Vec<_>, RpcError>>()?;
    let private = opt_bool(p, "private")?.unwrap_or(false);
    opt_bool(p, "wait")?;
    m.iscsi_configure(|c, _| c.create_portal_group(tag, portals, private))?;
    Ok(Value::Bool(true))
}

/// Portals are always served, so starting one is a check that it exists.
pub(super) fn start_portal_group(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    only(p, &["tag"])?;
    let tag = tag_param(p, "tag")?;
    if config_of(m)?.portal_group(tag).is_none() {
        return Err(RpcError::params(format!("no portal group {tag}")));
    }
    Ok(Value::Bool(true))
}

pub(super) fn delete_portal_group(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    only(p, &["tag"])?;
    let tag = tag_param(p, "tag")?;
    m.iscsi_configure(|c, _| c.delete_portal_group(tag))?;
    Ok(Value::Bool(true))
}

fn portal_groups_json(c: &Config) -> Vec<Value> {
    c.portal_groups
        .iter()
        .map(|g| {
            let portals: Vec<Value> = g
                .portals
                .iter()
                .map(|p| json!({ "host": p.host, "port": p.port.to_string() }))
                .collect();
            json!({ "tag": g.tag, "portals": portals, "private": g.private })
        })
        .collect()
}

pub(super) fn get_portal_groups(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    no_params(p)?;
    Ok(Value::Array(
        m.iscsi_config().map(portal_groups_json).unwrap_or_default(),
    ))
}

pub(super) fn create_initiator_group(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    only(p, &["tag", "initiators", "netmasks"])?;
    let tag = tag_param(p, "tag")?;
    required(p, "initiators")?;
    required(p, "netmasks")?;
    let (initiators, netmasks) = (strings(p, "initiators")?, strings(p, "netmasks")?);
    m.iscsi_configure(|c, _| c.create_initiator_group(tag, initiators, netmasks))?;
    Ok(Value::Bool(true))
}

pub(super) fn delete_initiator_group(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    only(p, &["tag"])?;
    let tag = tag_param(p, "tag")?;
    m.iscsi_configure(|c, _| c.delete_initiator_group(tag))?;
    Ok(Value::Bool(true))
}

pub(super) fn add_initiators(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    only(p, &["tag", "initiators", "netmasks"])?;
    let tag = tag_param(p, "tag")?;
    let (initiators, netmasks) = (strings(p, "initiators")?, strings(p, "netmasks")?);
    m.iscsi_configure(|c, _| c.add_initiators(tag, initiators, netmasks))?;
    Ok(Value::Bool(true))
}

pub(super) fn remove_initiators(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    only(p, &["tag", "initiators", "netmasks"])?;
    let tag = tag_param(p, "tag")?;
    let (initiators, netmasks) = (strings(p, "initiators")?, strings(p, "netmasks")?);
    m.iscsi_configure(|c, _| c.remove_initiators(tag, &initiators, &netmasks))?;
    Ok(Value::Bool(true))
}

fn initiator_groups_json(c: &Config) -> Vec<Value> {
    c.initiator_groups
        .iter()
        .map(|g| json!({ "tag": g.tag, "initiators": g.initiators, "netmasks": g.netmasks }))
        .collect()
}

pub(super) fn get_initiator_groups(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    no_params(p)?;
    Ok(Value::Array(
        m.iscsi_config()
            .map(initiator_groups_json)
            .unwrap_or_default(),
    ))
}

pub(super) fn create_target_node(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    let mut known = alloc::vec![
        "name",
        "alias_name",
        "pg_ig_maps",
        "luns",
        "queue_depth",
        "header_digest",
        "data_digest"
    ];
    known.extend(CHAP_KEYS);
    only(p, &known)?;
    required(p, "pg_ig_maps")?;
    required(p, "luns")?;
    let luns = objects(p, "luns")?
        .into_iter()
        .map(|l| {
            // `read_only` is ours: SPDK has no write-protected LUNs.
            only(l, &["bdev_name", "lun_id", "read_only"])?;
            Ok(LunSpec {
                bdev_name: str_param(l, "bdev_name")?.into(),
                id: lun_id(l)?,
                read_only: opt_bool(l, "read_only")?.unwrap_or(false),
            })
        })
        .collect::<Result<Vec<_>, RpcError>>()?;
    let queue_depth = required(p, "queue_depth")?
        .as_u64()
        .filter(|d| *d > 0)
        .ok_or_else(|| RpcError::params("`queue_depth` must be a positive integer"))?;
    let spec = NodeSpec {
        name: str_param(p, "name")?.into(),
        alias: opt_str(p, "alias_name")?.unwrap_or_default().into(),
        luns,
        pg_ig_maps: pg_ig_maps(p)?,
        queue_depth: u32::try_from(queue_depth).unwrap_or(u32::MAX),
        chap: chap(p, &ChapPolicy::default(), false)?.unwrap_or_default(),
        header_digest: opt_bool(p, "header_digest")?.unwrap_or(false),
        data_digest: opt_bool(p, "data_digest")?.unwrap_or(false),
    };
    m.iscsi_configure(|c, bdevs| c.create_target_node(spec, bdevs))?;
    Ok(Value::Bool(true))
}

pub(super) fn delete_target_node(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    only(p, &["name"])?;
    let name = str_param(p, "name")?;
    m.iscsi_configure(|c, _| c.delete_target_node(name))?;
    Ok(Value::Bool(true))
}

pub(super) fn add_lun(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    only(p, &["name", "bdev_name", "lun_id"])?;
    let node = str_param(p, "name")?;
    let bdev = str_param(p, "bdev_name")?;
    let id = lun_id(p)?;
    m.iscsi_configure(|c, bdevs| c.add_lun(node, bdev, id, bdevs))?;
    Ok(Value::Bool(true))
}

pub(super) fn add_pg_ig_maps(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    only(p, &["name", "pg_ig_maps"])?;
    required(p, "pg_ig_maps")?;
    let maps = pg_ig_maps(p)?;
    let name = str_param(p, "name")?;
    m.iscsi_configure(|c, _| c.add_pg_ig_maps(name, &maps))?;
    Ok(Value::Bool(true))
}

pub(super) fn remove_pg_ig_maps(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    only(p, &["name", "pg_ig_maps"])?;
    required(p, "pg_ig_maps")?;
    let maps = pg_ig_maps(p)?;
    let name = str_param(p, "name")?;
    m.iscsi_configure(|c, _| c.remove_pg_ig_maps(name, &maps))?;
    Ok(Value::Bool(true))
}

/// Replaces the node's policy: keys not given are off (SPDK's way).
pub(super) fn set_node_auth(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    let mut known = alloc::vec!["name"];
    known.extend(CHAP_KEYS);
    only(p, &known)?;
    let c = chap(p, &ChapPolicy::default(), false)?.unwrap_or_default();
    let name = str_param(p, "name")?;
    m.iscsi_configure(|cfg, _| cfg.set_node_auth(name, c))?;
    Ok(Value::Bool(true))
}

fn node_json(n: &TargetNode) -> Value {
    let mut out = Params::new();
    out.insert("name".into(), n.name.clone().into());
    if !n.alias.is_empty() {
        out.insert("alias_name".into(), n.alias.clone().into());
    }
    let maps: Vec<Value> = n
        .pg_ig_maps
        .iter()
        .map(|m| json!({ "pg_tag": m.pg_tag, "ig_tag": m.ig_tag }))
        .collect();
    out.insert("pg_ig_maps".into(), maps.into());
    let luns: Vec<Value> = n
        .luns
        .iter()
        .map(|l| {
            let mut lun = json!({ "bdev_name": l.bdev_name, "lun_id": l.id });
            if l.read_only {
                lun["read_only"] = true.into();
            }
            lun
        })
        .collect();
    out.insert("luns".into(), luns.into());
    out.insert("queue_depth".into(), n.queue_depth.into());
    chap_json(&n.chap, &mut out);
    out.insert("header_digest".into(), n.header_digest.into());
    out.insert("data_digest".into(), n.data_digest.into());
    Value::Object(out)
}

pub(super) fn get_target_nodes(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    no_params(p)?;
    let nodes = m.iscsi_config().map_or_else(Vec::new, |c| {
        c.nodes
            .iter()
            .map(|n| {
                let mut v = node_json(n);
                if n.masked {
                    // Ours: the per-initiator maps (secrets left out).
                    v["masking"] = super::iscsi_acl::view(n);
                }
                v
            })
            .collect()
    });
    Ok(Value::Array(nodes))
}

pub(super) fn get_connections(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    no_params(p)?;
    let Some(c) = m.iscsi_config() else {
        return Ok(Value::Array(Vec::new()));
    };
    let list = m
        .iscsi_connections()
        .iter()
        .map(|conn| conn_json(c, conn))
        .collect();
    Ok(Value::Array(list))
}

/// SPDK's keys, with the node's short name, plus the initiator's name, the
/// ISID and the portal group.
fn conn_json(c: &Config, conn: &ConnInfo) -> Value {
    let isid: String = conn.isid.iter().map(|b| format!("{b:02x}")).collect();
    json!({
        "id": conn.id, "cid": conn.cid, "tsih": conn.tsih, "isid": isid,
        "state": conn.state, "initiator_name": conn.initiator_name,
        "initiator_addr": conn.initiator_addr, "target_addr": conn.target_addr,
        "target_node_name": c.short_name(&conn.target_name),
        "portal_group_tag": conn.portal_group_tag, "lcore_id": 0
    })
}

/// The `iscsi` subsystem as calls that rebuild it: options, auth groups,
/// portal groups, initiator groups, target nodes, in that order.
pub(super) fn config(m: &Model<'_>) -> Vec<Value> {
    let Some(c) = m.iscsi_config() else {
        return Vec::new();
    };
    let call = |method: &str, params: Value| json!({ "method": method, "params": params });
    let mut calls = alloc::vec![call("iscsi_set_options", options_json(c, false))];
    calls.extend(
        auth_groups_json(c)
            .into_iter()
            .map(|g| call("iscsi_create_auth_group", g)),
    );
    calls.extend(
        portal_groups_json(c)
            .into_iter()
            .map(|g| call("iscsi_create_portal_group", g)),
    );
    calls.extend(
        initiator_groups_json(c)
            .into_iter()
            .map(|g| call("iscsi_create_initiator_group", g)),
    );
    for n in &c.nodes {
        calls.push(call("iscsi_create_target_node", node_json(n)));
        calls.extend(super::iscsi_acl::config(n));
    }
    calls
}

#[cfg(test)]
mod tests;
