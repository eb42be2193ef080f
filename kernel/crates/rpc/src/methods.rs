//! The method table: JSON parameters in, [`Model`] operations, JSON out.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use ironbay_bdev::IoType;
use ironbay_model::{Model, RamKind};
use serde_json::{Map, Value, json};

mod bdev_extra;
mod iscsi;
mod iscsi_acl;
mod lvol;
mod nbd;
mod nvmf;
mod params;
pub mod persist;
mod ram;
mod rapiddisk;
mod targetd;

/// JSON-RPC error codes as SPDK uses them.
pub mod code {
    pub const INVALID_STATE: i64 = -1;
    pub const PARSE_ERROR: i64 = -32700;
    pub const INVALID_REQUEST: i64 = -32600;
    pub const METHOD_NOT_FOUND: i64 = -32601;
    pub const INVALID_PARAMS: i64 = -32602;
    pub const INTERNAL_ERROR: i64 = -32603;
    /// From JSON-RPC's server-error range: a session limit (requests or
    /// reply bytes per batch, replies waiting to be read) was reached. The
    /// request did not run, unless the message says only its reply was
    /// dropped; sent again later, or alone, it works.
    pub const LIMIT: i64 = -32000;
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
}

impl RpcError {
    pub fn params(message: impl Into<String>) -> Self {
        RpcError {
            code: code::INVALID_PARAMS,
            message: message.into(),
        }
    }
}

impl From<ironbay_model::Error> for RpcError {
    fn from(e: ironbay_model::Error) -> Self {
        RpcError {
            code: match e.kind {
                ironbay_model::ErrorKind::InvalidParams => code::INVALID_PARAMS,
                ironbay_model::ErrorKind::InvalidState => code::INVALID_STATE,
                ironbay_model::ErrorKind::Code(c) => c,
            },
            message: e.message,
        }
    }
}

type Handler = fn(&mut Model<'_>, &Map<String, Value>) -> Result<Value, RpcError>;

pub struct Method {
    pub name: &'static str,
    pub aliases: &'static [&'static str],
    pub handler: Handler,
    pub startup: bool,
    pub runtime: bool,
}

const BOTH: (bool, bool) = (true, true);

macro_rules! table {
    ($( $name:literal [$($alias:literal),*] $when:expr => $h:expr ),* $(,)?) => {
        &[ $( Method { name: $name, aliases: &[$($alias),*], handler: $h, startup: $when.0, runtime: $when.1 } ),* ]
    };
}

pub static METHODS: &[Method] = table![
    "spdk_get_version" ["get_spdk_version"] BOTH => spdk_get_version,
    "rpc_get_methods" ["get_rpc_methods"] BOTH => rpc_get_methods,
    "framework_get_subsystems" ["get_subsystems"] (false, true) => framework_get_subsystems,
    "framework_get_config" ["get_subsystem_config", "save_config"] (false, true) => framework_get_config,
    "framework_start_init" ["start_subsystem_init"] (true, false) => framework_start_init,
    "framework_wait_init" ["wait_subsystem_init"] BOTH => |_, _| Ok(Value::Bool(true)),
    "bdev_get_bdevs" ["get_bdevs"] (false, true) => bdev_get_bdevs,
    "bdev_get_iostat" ["get_bdevs_iostat"] (false, true) => bdev_get_iostat,
    "bdev_malloc_create" ["construct_malloc_bdev"] (false, true) => |m, p| ram::create(m, p, RamKind::Malloc),
    "bdev_malloc_delete" ["delete_malloc_bdev"] (false, true) => |m, p| ram::delete(m, p, RamKind::Malloc),
    "bdev_null_create" ["construct_null_bdev"] (false, true) => |m, p| ram::create(m, p, RamKind::Null),
    "bdev_null_delete" ["delete_null_bdev"] (false, true) => |m, p| ram::delete(m, p, RamKind::Null),
    "bdev_null_resize" [] (false, true) => ram::null_resize,
    "bdev_set_options" ["set_bdev_options"] BOTH => bdev_set_options,
    "bdev_set_qos_limit" ["set_bdev_qos_limit"] (false, true) => ram::set_qos_limit,
    "bdev_nvme_attach_controller" ["construct_nvme_bdev"] (false, true) => bdev_nvme_attach_controller,
    "bdev_nvme_detach_controller" ["delete_nvme_controller"] (false, true) => bdev_nvme_detach_controller,
    "bdev_virtio_attach_controller" ["construct_virtio_dev"] (false, true) => bdev_virtio_attach_controller,
    "bdev_virtio_detach_controller" ["remove_virtio_bdev"] (false, true) => bdev_virtio_detach_controller,
    "bdev_passthru_create" ["construct_passthru_bdev"] (false, true) => bdev_extra::passthru_create,
    "bdev_passthru_delete" ["delete_passthru_bdev"] (false, true) => bdev_extra::passthru_delete,
    "bdev_error_create" ["construct_error_bdev"] (false, true) => bdev_extra::error_create,
    "bdev_error_delete" ["delete_error_bdev"] (false, true) => bdev_extra::error_delete,
    "bdev_error_inject_error" ["bdev_inject_error"] (false, true) => bdev_extra::error_inject,
    "bdev_error_resume_pending" [] (false, true) => bdev_extra::error_resume_pending,
    "delete_bdev" [] (false, true) => bdev_extra::delete_bdev,
    "bdev_rapiddisk_create" [] (false, true) => rapiddisk::create,
    "bdev_rapiddisk_delete" [] (false, true) => rapiddisk::delete,
    "bdev_rapiddisk_resize" [] (false, true) => rapiddisk::resize,
    "bdev_rapiddisk_flush" [] (false, true) => rapiddisk::flush,
    "bdev_rapiddisk_set_locked" [] (false, true) => rapiddisk::set_locked,
    "bdev_rapiddisk_get_disks" [] (false, true) => rapiddisk::get_disks,
    "bdev_rapiddisk_cache_create" [] (false, true) => rapiddisk::cache_create,
    "bdev_rapiddisk_cache_delete" [] (false, true) => rapiddisk::cache_delete,
    "bdev_rapiddisk_cache_get_stats" [] (false, true) => rapiddisk::cache_get_stats,
    "set_bdev_qos_limit_iops" [] (false, true) => bdev_extra::qos_limit_iops,
    "bdev_nvme_set_options" ["set_bdev_nvme_options"] BOTH => bdev_extra::nvme_set_options,
    "bdev_nvme_set_hotplug" ["set_bdev_nvme_hotplug"] BOTH => bdev_extra::nvme_set_hotplug,
    "bdev_aio_create" ["construct_aio_bdev"] BOTH => |_, _| bdev_extra::unsupported("bdev_aio_create", bdev_extra::AIO),
    "bdev_aio_delete" ["delete_aio_bdev"] BOTH => |_, _| bdev_extra::unsupported("bdev_aio_delete", bdev_extra::AIO),
    "bdev_pmem_create_pool" ["create_pmem_pool"] BOTH => |_, _| bdev_extra::unsupported("bdev_pmem_create_pool", bdev_extra::PMEM),
    "bdev_pmem_get_pool_info" ["pmem_pool_info"] BOTH => |_, _| bdev_extra::unsupported("bdev_pmem_get_pool_info", bdev_extra::PMEM),
    "bdev_pmem_delete_pool" ["delete_pmem_pool"] BOTH => |_, _| bdev_extra::unsupported("bdev_pmem_delete_pool", bdev_extra::PMEM),
    "bdev_pmem_create" ["construct_pmem_bdev"] BOTH => |_, _| bdev_extra::unsupported("bdev_pmem_create", bdev_extra::PMEM),
    "bdev_pmem_delete" ["delete_pmem_bdev"] BOTH => |_, _| bdev_extra::unsupported("bdev_pmem_delete", bdev_extra::PMEM),
    "bdev_rbd_create" ["construct_rbd_bdev"] BOTH => |_, _| bdev_extra::unsupported("bdev_rbd_create", bdev_extra::RBD),
    "bdev_rbd_delete" ["delete_rbd_bdev"] BOTH => |_, _| bdev_extra::unsupported("bdev_rbd_delete", bdev_extra::RBD),
    "vhost_controller_set_coalescing" ["set_vhost_controller_coalescing"] BOTH => |_, _| bdev_extra::unsupported("vhost_controller_set_coalescing", bdev_extra::VHOST),
    "vhost_create_scsi_controller" ["construct_vhost_scsi_controller"] BOTH => |_, _| bdev_extra::unsupported("vhost_create_scsi_controller", bdev_extra::VHOST),
    "vhost_scsi_controller_add_target" ["add_vhost_scsi_lun"] BOTH => |_, _| bdev_extra::unsupported("vhost_scsi_controller_add_target", bdev_extra::VHOST),
    "vhost_scsi_controller_remove_target" ["remove_vhost_scsi_target"] BOTH => |_, _| bdev_extra::unsupported("vhost_scsi_controller_remove_target", bdev_extra::VHOST),
    "vhost_create_nvme_controller" ["construct_vhost_nvme_controller"] BOTH => |_, _| bdev_extra::unsupported("vhost_create_nvme_controller", bdev_extra::VHOST),
    "vhost_nvme_controller_add_ns" ["add_vhost_nvme_ns"] BOTH => |_, _| bdev_extra::unsupported("vhost_nvme_controller_add_ns", bdev_extra::VHOST),
    "vhost_create_blk_controller" ["construct_vhost_blk_controller"] BOTH => |_, _| bdev_extra::unsupported("vhost_create_blk_controller", bdev_extra::VHOST),
    "vhost_get_controllers" ["get_vhost_controllers"] BOTH => |_, _| bdev_extra::unsupported("vhost_get_controllers", bdev_extra::VHOST),
    "vhost_delete_controller" ["remove_vhost_controller"] BOTH => |_, _| bdev_extra::unsupported("vhost_delete_controller", bdev_extra::VHOST),
    "construct_virtio_user_scsi_bdev" [] BOTH => |_, _| bdev_extra::unsupported("construct_virtio_user_scsi_bdev", bdev_extra::VIRTIO_USER),
    "construct_virtio_user_blk_bdev" [] BOTH => |_, _| bdev_extra::unsupported("construct_virtio_user_blk_bdev", bdev_extra::VIRTIO_USER),
    "framework_monitor_context_switch" ["context_switch_monitor"] BOTH => |_, _| bdev_extra::unsupported("framework_monitor_context_switch", bdev_extra::CONTEXT_SWITCH),
    "bdev_lvol_create_lvstore" ["construct_lvol_store"] (false, true) => lvol::create_lvstore,
    "bdev_lvol_delete_lvstore" ["destroy_lvol_store"] (false, true) => lvol::delete_lvstore,
    "bdev_lvol_get_lvstores" ["get_lvol_stores"] (false, true) => lvol::get_lvstores,
    "bdev_lvol_rename_lvstore" ["rename_lvol_store"] (false, true) => lvol::rename_lvstore,
    "bdev_lvol_grow_lvstore" [] (false, true) => lvol::grow_lvstore,
    "bdev_lvol_create" ["construct_lvol_bdev"] (false, true) => lvol::create,
    "bdev_lvol_delete" ["destroy_lvol_bdev"] (false, true) => lvol::delete,
    "bdev_lvol_snapshot" ["snapshot_lvol_bdev"] (false, true) => lvol::snapshot,
    "bdev_lvol_clone" ["clone_lvol_bdev"] (false, true) => lvol::clone,
    "bdev_lvol_rename" ["rename_lvol_bdev"] (false, true) => lvol::rename,
    "bdev_lvol_resize" ["resize_lvol_bdev"] (false, true) => lvol::resize,
    "bdev_lvol_inflate" ["inflate_lvol_bdev"] (false, true) => lvol::inflate,
    "bdev_lvol_decouple_parent" ["decouple_parent_lvol_bdev"] (false, true) => lvol::decouple_parent,
    "bdev_lvol_set_read_only" [] (false, true) => lvol::set_read_only,
    "bdev_lvol_get_lvols" [] (false, true) => lvol::get_lvols,
    "nbd_get_disks" ["get_nbd_disks"] (false, true) => nbd::get_disks,
    "nbd_start_disk" ["start_nbd_disk"] (false, true) => nbd::start_disk,
    "nbd_stop_disk" ["stop_nbd_disk"] (false, true) => nbd::stop_disk,
    "iscsi_set_options" ["set_iscsi_options"] BOTH => iscsi::set_options,
    "iscsi_target_node_set_masking" [] (false, true) => iscsi_acl::set_masking,
    "iscsi_target_node_set_initiator" [] (false, true) => iscsi_acl::set_initiator,
    "iscsi_target_node_map_lun" [] (false, true) => iscsi_acl::map_lun,
    "iscsi_target_node_unmap_lun" [] (false, true) => iscsi_acl::unmap_lun,
    "iscsi_target_node_remove_initiator" [] (false, true) => iscsi_acl::remove_initiator,
    "iscsi_get_options" ["get_iscsi_global_params"] (false, true) => iscsi::get_options,
    "iscsi_set_discovery_auth" ["set_iscsi_discovery_auth"] (false, true) => iscsi::set_discovery_auth,
    "iscsi_create_auth_group" ["add_iscsi_auth_group"] (false, true) => iscsi::create_auth_group,
    "iscsi_delete_auth_group" ["delete_iscsi_auth_group"] (false, true) => iscsi::delete_auth_group,
    "iscsi_auth_group_add_secret" ["add_secret_to_iscsi_auth_group"] (false, true) => iscsi::add_secret,
    "iscsi_auth_group_remove_secret" ["delete_secret_from_iscsi_auth_group"] (false, true) => iscsi::remove_secret,
    "iscsi_get_auth_groups" ["get_iscsi_auth_groups"] (false, true) => iscsi::get_auth_groups,
    "iscsi_create_portal_group" ["add_portal_group"] (false, true) => iscsi::create_portal_group,
    "iscsi_start_portal_group" [] (false, true) => iscsi::start_portal_group,
    "iscsi_delete_portal_group" ["delete_portal_group"] (false, true) => iscsi::delete_portal_group,
    "iscsi_get_portal_groups" ["get_portal_groups"] (false, true) => iscsi::get_portal_groups,
    "iscsi_create_initiator_group" ["add_initiator_group"] (false, true) => iscsi::create_initiator_group,
    "iscsi_delete_initiator_group" ["delete_initiator_group"] (false, true) => iscsi::delete_initiator_group,
    "iscsi_initiator_group_add_initiators" ["add_initiators_to_initiator_group"] (false, true) => iscsi::add_initiators,
    "iscsi_initiator_group_remove_initiators" ["delete_initiators_from_initiator_group"] (false, true) => iscsi::remove_initiators,
    "iscsi_get_initiator_groups" ["get_initiator_groups"] (false, true) => iscsi::get_initiator_groups,
    "iscsi_create_target_node" ["construct_target_node"] (false, true) => iscsi::create_target_node,
    "iscsi_delete_target_node" ["delete_target_node"] (false, true) => iscsi::delete_target_node,
    "iscsi_target_node_add_lun" ["target_node_add_lun"] (false, true) => iscsi::add_lun,
    "iscsi_target_node_add_pg_ig_maps" ["add_pg_ig_maps"] (false, true) => iscsi::add_pg_ig_maps,
    "iscsi_target_node_remove_pg_ig_maps" ["delete_pg_ig_maps"] (false, true) => iscsi::remove_pg_ig_maps,
    "iscsi_target_node_set_auth" ["set_iscsi_target_node_auth"] (false, true) => iscsi::set_node_auth,
    "iscsi_get_target_nodes" ["get_target_nodes"] (false, true) => iscsi::get_target_nodes,
    "iscsi_get_connections" ["get_iscsi_connections"] (false, true) => iscsi::get_connections,
    "nvmf_set_config" ["set_nvmf_target_config"] BOTH => nvmf::set_config,
    "nvmf_set_max_subsystems" [] BOTH => nvmf::set_max_subsystems,
    "set_nvmf_target_options" [] BOTH => nvmf::set_target_options,
    "nvmf_create_transport" [] BOTH => nvmf::create_transport,
    "nvmf_get_transports" [] (false, true) => nvmf::get_transports,
    "nvmf_create_subsystem" [] (false, true) => nvmf::create_subsystem,
    "construct_nvmf_subsystem" [] (false, true) => nvmf::construct_subsystem,
    "nvmf_delete_subsystem" ["delete_nvmf_subsystem"] (false, true) => nvmf::delete_subsystem,
    "nvmf_get_subsystems" ["get_nvmf_subsystems"] (false, true) => nvmf::get_subsystems,
    "nvmf_subsystem_add_listener" [] (false, true) => nvmf::add_listener,
    "nvmf_subsystem_remove_listener" [] (false, true) => nvmf::remove_listener,
    "nvmf_subsystem_add_ns" [] (false, true) => nvmf::add_ns,
    "nvmf_subsystem_remove_ns" [] (false, true) => nvmf::remove_ns,
    "nvmf_subsystem_add_host" [] (false, true) => nvmf::add_host,
    "nvmf_subsystem_remove_host" [] (false, true) => nvmf::remove_host,
    "nvmf_subsystem_allow_any_host" [] (false, true) => nvmf::allow_any_host,
    "nvmf_subsystem_get_controllers" [] (false, true) => nvmf::get_controllers,
    "nvmf_subsystem_get_qpairs" [] (false, true) => nvmf::get_qpairs,
    "nvmf_subsystem_get_listeners" [] (false, true) => nvmf::get_listeners,
    "nvmf_get_stats" [] (false, true) => nvmf::get_stats,
    "config_store_set" [] (false, true) => persist::set,
    "targetd_set_auth" [] (false, true) => targetd::set_auth,
    "targetd_set_options" [] (false, true) => targetd::set_options,
    "targetd_get_options" [] (false, true) => targetd::get_options,
    "config_store_get" [] (false, true) => persist::get,
    "config_store_clear" [] (false, true) => persist::clear,
    "spdk_kill_instance" ["kill_instance"] BOTH => spdk_kill_instance,
    "bdevperf_run" ["perform_tests"] (false, true) => bdevperf_run,
];

/// Finds a method by modern name or alias.
pub fn lookup(name: &str) -> Option<&'static Method> {
    METHODS
        .iter()
        .find(|m| m.name == name || m.aliases.contains(&name))
}

fn no_params(p: &Map<String, Value>) -> Result<(), RpcError> {
    match p.keys().next() {
        Some(k) => Err(RpcError::params(format!("unknown parameter `{k}`"))),
        None => Ok(()),
    }
}

fn only(p: &Map<String, Value>, allowed: &[&str]) -> Result<(), RpcError> {
    match p.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(RpcError::params(format!("unknown parameter `{k}`"))),
        None => Ok(()),
    }
}

fn opt_name(p: &Map<String, Value>) -> Result<Option<&str>, RpcError> {
    match p.get("name") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(RpcError::params("`name` must be a string")),
    }
}

fn spdk_get_version(_: &mut Model<'_>, p: &Map<String, Value>) -> Result<Value, RpcError> {
    no_params(p)?;
    let v = env!("CARGO_PKG_VERSION");
    Ok(
        json!({ "version": format!("ironbay {v}"), "fields": { "major": 0, "minor": 1, "patch": 0, "suffix": "" } }),
    )
}

fn rpc_get_methods(m: &mut Model<'_>, p: &Map<String, Value>) -> Result<Value, RpcError> {
    only(p, &["current", "include_aliases"])?;
    let current = p.get("current").and_then(Value::as_bool).unwrap_or(false);
    let aliases = p
        .get("include_aliases")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mut names = Vec::new();
    for meth in METHODS {
        if current
            && !(if *m.initialized {
                meth.runtime
            } else {
                meth.startup
            })
        {
            continue;
        }
        names.push(Value::String(meth.name.into()));
        if aliases {
            names.extend(meth.aliases.iter().map(|a| Value::String((*a).into())));
        }
    }
    Ok(Value::Array(names))
}

fn framework_get_subsystems(_: &mut Model<'_>, p: &Map<String, Value>) -> Result<Value, RpcError> {
    no_params(p)?;
    Ok(json!([
        { "subsystem": "bdev", "depends_on": [] },
        { "subsystem": "nbd", "depends_on": ["bdev"] },
        { "subsystem": "nvmf", "depends_on": ["bdev"] },
        { "subsystem": "iscsi", "depends_on": ["bdev"] },
        { "subsystem": "targetd", "depends_on": ["bdev", "iscsi"] },
    ]))
}

/// The bdev subsystem's state as method calls (what `save_config` stores).
fn bdev_config(m: &mut Model<'_>) -> Vec<Value> {
    let o = m.bdevs.options;
    let mut calls = alloc::vec![json!({
        "method": "bdev_set_options",
        "params": {
            "bdev_io_pool_size": o.bdev_io_pool_size,
            "bdev_io_cache_size": o.bdev_io_cache_size,
            "bdev_auto_examine": o.bdev_auto_examine
        }
    })];
    calls.push(bdev_extra::nvme_options_config(m));
    for id in m.bdevs.ids() {
        let Some(b) = m.bdevs.info(id) else { continue };
        let method = match b.product.as_str() {
            "Malloc disk" => "bdev_malloc_create",
            "Null disk" => "bdev_null_create",
            _ => continue, // hardware bdevs come back by themselves
        };
        calls.push(json!({
            "method": method,
            "params": {
                "name": b.name, "num_blocks": b.num_blocks, "block_size": b.block_size, "uuid": b.uuid.to_string()
            }
        }));
    }
    calls.extend(bdev_extra::stacked_config(m));
    // RAM disks may cache stacked bdevs; nothing stacks on a cache.
    calls.extend(rapiddisk::config(m));
    calls.push(bdev_extra::nvme_hotplug_config(m));
    // QoS limits, on RAM and hardware bdevs alike (after the creates).
    for id in m.bdevs.ids() {
        let (Some(b), q) = (m.bdevs.info(id), m.bdevs.qos(id)) else {
            continue;
        };
        if !q.is_unlimited() {
            calls.push(json!({
                "method": "bdev_set_qos_limit",
                "params": {
                    "name": b.name,
                    "rw_ios_per_sec": q.ios_per_sec,
                    "rw_mbytes_per_sec": q.bytes_per_sec / 1_000_000,
                    "r_mbytes_per_sec": q.read_bytes_per_sec / 1_000_000,
                    "w_mbytes_per_sec": q.write_bytes_per_sec / 1_000_000
                }
            }));
        }
    }
    calls
}

fn framework_get_config(m: &mut Model<'_>, p: &Map<String, Value>) -> Result<Value, RpcError> {
    only(p, &["name", "with_batches"])?;
    match opt_name(p)? {
        Some("bdev") => Ok(Value::Array(bdev_config(m))),
        Some("nbd") => Ok(Value::Array(nbd::config(m))),
        Some("nvmf") => Ok(Value::Array(nvmf::config(m))),
        Some("iscsi") => Ok(Value::Array(iscsi::config(m))),
        Some("targetd") => Ok(Value::Array(targetd::config(m))),
        Some(other) => Err(RpcError::params(format!("no subsystem named {other}"))),
        None => Ok(json!({ "subsystems": [
            { "subsystem": "bdev", "config": bdev_config(m) },
            { "subsystem": "nbd", "config": nbd::config(m) },
            { "subsystem": "nvmf", "config": nvmf::config(m) },
            { "subsystem": "iscsi", "config": iscsi::config(m) },
            { "subsystem": "targetd", "config": targetd::config(m) },
        ]})),
    }
}

fn framework_start_init(m: &mut Model<'_>, p: &Map<String, Value>) -> Result<Value, RpcError> {
    no_params(p)?;
    m.start_init()?;
    Ok(Value::Bool(true))
}

fn bdev_json(m: &Model<'_>, id: ironbay_bdev::BdevId) -> Option<Value> {
    let b = m.bdevs.info(id)?;
    // A read-only bdev (a snapshot) takes no writes, as SPDK reports it.
    let writes = |t| t == IoType::Read || t == IoType::Flush || !b.read_only;
    let io = |t| Value::Bool(b.io_types.contains(t) && writes(t));
    let driver_specific = match m.lvol_of(id) {
        Some((s, v)) => lvol::driver_specific(&s, &v),
        None => bdev_extra::driver_specific(m, id),
    };
    Some(json!({
        "name": b.name,
        "aliases": m.bdevs.aliases(id),
        "product_name": b.product,
        "block_size": b.block_size,
        "num_blocks": b.num_blocks,
        "uuid": b.uuid.to_string(),
        "claimed": m.bdevs.claimed_by(id).is_some(),
        "zoned": false,
        "supported_io_types": {
            "read": io(IoType::Read), "write": io(IoType::Write), "unmap": io(IoType::Unmap),
            "write_zeroes": io(IoType::WriteZeroes), "flush": io(IoType::Flush), "reset": false,
            "nvme_admin": false, "nvme_io": false
        },
        "assigned_rate_limits": {
            "rw_ios_per_sec": m.bdevs.qos(id).ios_per_sec,
            "rw_mbytes_per_sec": m.bdevs.qos(id).bytes_per_sec / 1_000_000,
            "r_mbytes_per_sec": m.bdevs.qos(id).read_bytes_per_sec / 1_000_000,
            "w_mbytes_per_sec": m.bdevs.qos(id).write_bytes_per_sec / 1_000_000
        },
        "driver_specific": driver_specific
    }))
}

/// Layer options. SPDK allows them only before init; here the layer has no
/// pools to resize, so they may change at any time.
fn bdev_set_options(m: &mut Model<'_>, p: &Map<String, Value>) -> Result<Value, RpcError> {
    const IGNORED: &[&str] = &[
        "small_buf_pool_size",
        "large_buf_pool_size",
        "iobuf_small_cache_size",
        "iobuf_large_cache_size",
    ];
    let mut known = alloc::vec![
        "bdev_io_pool_size",
        "bdev_io_cache_size",
        "bdev_auto_examine"
    ];
    known.extend(IGNORED);
    only(p, &known)?;
    let mut o = m.bdevs.options;
    for (key, slot) in [
        ("bdev_io_pool_size", &mut o.bdev_io_pool_size),
        ("bdev_io_cache_size", &mut o.bdev_io_cache_size),
    ] {
        if let Some(v) = p.get(key) {
            *slot = v
                .as_u64()
                .filter(|n| *n > 0)
                .ok_or_else(|| RpcError::params(format!("`{key}` must be a positive integer")))?;
        }
    }
    if let Some(v) = p.get("bdev_auto_examine") {
        o.bdev_auto_examine = v
            .as_bool()
            .ok_or_else(|| RpcError::params("`bdev_auto_examine` must be a boolean"))?;
    }
    m.set_options(o)?;
    Ok(Value::Bool(true))
}

fn find(m: &Model<'_>, name: &str) -> Result<ironbay_bdev::BdevId, RpcError> {
    Ok(m.find(name)?)
}

fn bdev_get_bdevs(m: &mut Model<'_>, p: &Map<String, Value>) -> Result<Value, RpcError> {
    only(p, &["name", "timeout"])?;
    let ids: Vec<_> = match opt_name(p)? {
        // SPDK's answer, which scripts polling for a bdev to go match on.
        Some(n) => alloc::vec![m.bdevs.find(n).ok_or_else(|| RpcError {
            code: -19,
            message: "No such device".into(),
        })?],
        None => m.bdevs.ids().collect(),
    };
    Ok(Value::Array(
        ids.into_iter().filter_map(|id| bdev_json(m, id)).collect(),
    ))
}

fn bdev_get_iostat(m: &mut Model<'_>, p: &Map<String, Value>) -> Result<Value, RpcError> {
    only(p, &["name", "names", "per_channel", "reset_mode"])?;
    // Seed clients send `name`; today's send `names`, a list or a comma-separated string.
    let mut wanted: Vec<String> = opt_name(p)?.map(String::from).into_iter().collect();
    match p.get("names") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => wanted.extend(s.split(',').map(|n| n.trim().to_string())),
        Some(Value::Array(a)) => {
            for n in a {
                wanted.push(
                    n.as_str()
                        .ok_or_else(|| RpcError::params("`names` must hold strings"))?
                        .to_string(),
                );
            }
        }
        Some(_) => return Err(RpcError::params("`names` must be a string or a list")),
    }
    let ids: Vec<_> = if wanted.is_empty() {
        m.bdevs.ids().collect()
    } else {
        wanted
            .iter()
            .map(|n| find(m, n))
            .collect::<Result<_, _>>()?
    };
    let mut list = Vec::new();
    for id in ids {
        let (Some(b), Some(s)) = (m.bdevs.info(id), m.bdevs.stats(id)) else {
            continue;
        };
        let t = |k| s.get(k);
        list.push(json!({
            "name": b.name,
            "bytes_read": t(IoType::Read).bytes, "num_read_ops": t(IoType::Read).ops,
            "bytes_written": t(IoType::Write).bytes, "num_write_ops": t(IoType::Write).ops,
            "bytes_unmapped": 0, "num_unmap_ops": t(IoType::Unmap).ops,
            "read_latency_ticks": t(IoType::Read).latency_sum_us,
            "write_latency_ticks": t(IoType::Write).latency_sum_us,
            "unmap_latency_ticks": t(IoType::Unmap).latency_sum_us,
        }));
    }
    Ok(json!({ "tick_rate": 1_000_000, "ticks": 0, "bdevs": list }))
}

fn off(v: &Value) -> bool {
    matches!(v, Value::Null | Value::Bool(false)) || v.as_u64() == Some(0)
}

fn opt_str<'p>(p: &'p Map<String, Value>, key: &str) -> Result<Option<&'p str>, RpcError> {
    match p.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(RpcError::params(format!("`{key}` must be a string"))),
    }
}

fn str_param<'p>(p: &'p Map<String, Value>, key: &str) -> Result<&'p str, RpcError> {
    match p.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(_) => Err(RpcError::params(format!(
            "`{key}` must be a non-empty string"
        ))),
        None => Err(RpcError::params(format!("missing `{key}`"))),
    }
}

/// PCIe only: fabrics controllers are the targets' business, not bdevs here.
fn bdev_nvme_attach_controller(
    m: &mut Model<'_>,
    p: &Map<String, Value>,
) -> Result<Value, RpcError> {
    // The client sends these at their defaults; digests and protection info
    // mean nothing for PCIe, so anything but the default is refused.
    const OFF: &[&str] = &[
        "prchk_reftag",
        "prchk_guard",
        "hdgst",
        "ddgst",
        "allow_unrecognized_csi",
        "disable_sq_flow_control",
    ];
    let mut known = alloc::vec![
        "name",
        "trtype",
        "traddr",
        "adrfam",
        "trsvcid",
        "subnqn",
        "hostnqn",
        "multipath"
    ];
    known.extend(OFF);
    only(p, &known)?;
    if let Some(k) = OFF.iter().find(|k| p.get(**k).is_some_and(|v| !off(v))) {
        return Err(RpcError::params(format!(
            "`{k}` is not supported for PCIe controllers"
        )));
    }
    let name = str_param(p, "name")?;
    let trtype = str_param(p, "trtype")?;
    if !trtype.eq_ignore_ascii_case("pcie") {
        return Err(RpcError::params(format!(
            "trtype {trtype}: only PCIe controllers can be attached"
        )));
    }
    let names = m.attach_nvme(name, str_param(p, "traddr")?)?;
    Ok(Value::Array(names.into_iter().map(Value::String).collect()))
}

fn bdev_nvme_detach_controller(
    m: &mut Model<'_>,
    p: &Map<String, Value>,
) -> Result<Value, RpcError> {
    only(
        p,
        &[
            "name",
            "trtype",
            "traddr",
            "adrfam",
            "trsvcid",
            "subnqn",
            "hostaddr",
            "hostsvcid",
        ],
    )?;
    m.detach_nvme(str_param(p, "name")?)?;
    Ok(Value::Bool(true))
}

fn bdev_virtio_attach_controller(
    m: &mut Model<'_>,
    p: &Map<String, Value>,
) -> Result<Value, RpcError> {
    only(
        p,
        &[
            "name", "trtype", "traddr", "dev_type", "vq_count", "vq_size",
        ],
    )?;
    let name = str_param(p, "name")?;
    if !str_param(p, "trtype")?.eq_ignore_ascii_case("pci") {
        return Err(RpcError::params(
            "trtype: only pci virtio devices can be attached",
        ));
    }
    if str_param(p, "dev_type")? != "blk" {
        return Err(RpcError::params("dev_type: only blk"));
    }
    let names = m.attach_virtio(name, str_param(p, "traddr")?)?;
    Ok(Value::Array(names.into_iter().map(Value::String).collect()))
}

fn bdev_virtio_detach_controller(
    m: &mut Model<'_>,
    p: &Map<String, Value>,
) -> Result<Value, RpcError> {
    only(p, &["name"])?;
    m.detach_virtio(str_param(p, "name")?)?;
    Ok(Value::Bool(true))
}

fn spdk_kill_instance(m: &mut Model<'_>, p: &Map<String, Value>) -> Result<Value, RpcError> {
    only(p, &["sig_name"])?;
    match p.get("sig_name").and_then(Value::as_str) {
        Some(
            "SIGINT" | "SIGTERM" | "SIGQUIT" | "SIGHUP" | "SIGKILL" | "INT" | "TERM" | "QUIT"
            | "HUP" | "KILL",
        ) => {
            m.request_shutdown();
            Ok(Value::Bool(true))
        }
        Some(other) => Err(RpcError::params(format!("unknown signal {other}"))),
        None => Err(RpcError::params("missing `sig_name`")),
    }
}

/// The built-in benchmark, bdevperf-style: the reply comes when it ends.
fn bdevperf_run(m: &mut Model<'_>, p: &Map<String, Value>) -> Result<Value, RpcError> {
    only(
        p,
        &[
            "bdev_name",
            "workload",
            "io_size",
            "queue_depth",
            "time_in_sec",
        ],
    )?;
    let bdev = str_param(p, "bdev_name")?;
    let workload = str_param(p, "workload")?;
    let num = |k: &str| {
        p.get(k)
            .and_then(Value::as_u64)
            .ok_or_else(|| RpcError::params(format!("`{k}` must be a positive integer")))
    };
    let spec = format!(
        "{bdev}:{workload}:{}:{}:{}",
        num("io_size")?,
        num("queue_depth")?,
        num("time_in_sec")?
    );
    let spec: ironbay_bdev::bench::BenchSpec = spec.parse().map_err(RpcError::params)?;
    m.request_bench(spec)?;
    Ok(Value::Null)
}

/// The reply for a finished benchmark.
pub fn bench_result(r: &ironbay_bdev::bench::BenchReport) -> Value {
    json!({
        "bdev_name": r.spec.bdev, "workload": r.spec.workload.name(), "io_size": r.spec.block_size,
        "queue_depth": r.spec.queue_depth, "runtime_sec": r.seconds, "ops": r.ops, "iops": r.iops,
        "mibps": r.mb_per_s * 1e6 / 1048576.0, "avg_latency_us": r.avg_us, "p50_latency_us": r.p50_us,
        "p99_latency_us": r.p99_us, "p999_latency_us": r.p999_us, "errors": r.errors, "miscompares": r.miscompares
    })
}

/// Runs one call (boot config or RPC) through the table.
pub fn call(m: &mut Model<'_>, name: &str, params: &Map<String, Value>) -> Result<Value, RpcError> {
    let meth = lookup(name).ok_or_else(|| RpcError {
        code: code::METHOD_NOT_FOUND,
        message: "Method not found".into(),
    })?;
    let allowed = if *m.initialized {
        meth.runtime
    } else {
        meth.startup
    };
    if !allowed {
        let when = if *m.initialized { "after" } else { "before" };
        return Err(RpcError {
            code: code::INVALID_STATE,
            message: format!("method {name} cannot run {when} framework_start_init"),
        });
    }
    (meth.handler)(m, params)
}
