//! The rest of the seed's bdev methods that make sense on an appliance:
//! pass-through and error bdevs, `delete_bdev`, the IOPS-only QoS call and
//! the NVMe module's settings; and a clear refusal, naming what to use
//! instead, for those that need a host OS (AIO files, pmem pools, Ceph RBD,
//! vhost, virtio-user sockets, context-switch counters).
//!
//! Parameters are typed structs that refuse unknown fields, one per method;
//! both the seed's and today's SPDK names for a parameter are taken where
//! they differ.

use super::{RpcError, code};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use ironbay_bdev::error::{Injected, Injection};
use ironbay_bdev::{BdevId, IoType, NvmeOptions, TimeoutAction};
use ironbay_model::Model;
use ironbay_model::stacked::Stacked;
use serde::Deserialize;
use serde_json::{Value, json};

use super::params::{Params, parse, uuid};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PassthruCreate {
    base_bdev_name: String,
    /// Today's name for it; the seed says `passthru_bdev_name`.
    name: Option<String>,
    passthru_bdev_name: Option<String>,
    uuid: Option<String>,
}

/// `bdev_passthru_create` / `construct_passthru_bdev`: the new bdev's name.
pub(super) fn passthru_create(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    let p: PassthruCreate = parse(p)?;
    let name = match (&p.name, &p.passthru_bdev_name) {
        (Some(a), Some(b)) if a != b => {
            return Err(RpcError::params(
                "`name` and `passthru_bdev_name` name the same thing: give one",
            ));
        }
        (Some(n), _) | (None, Some(n)) => n,
        (None, None) => return Err(RpcError::params("missing `name`")),
    };
    let uuid = uuid(p.uuid.as_deref())?;
    Ok(Value::String(m.create_passthru(
        &p.base_bdev_name,
        name,
        uuid,
    )?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ByName {
    name: String,
}

pub(super) fn passthru_delete(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    let p: ByName = parse(p)?;
    m.delete_passthru(&p.name)?;
    Ok(Value::Bool(true))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ErrorCreate {
    base_name: String,
    uuid: Option<String>,
}

/// `bdev_error_create` / `construct_error_bdev`: `EE_<base_name>`; the
/// result is `true`, as in SPDK.
pub(super) fn error_create(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    let p: ErrorCreate = parse(p)?;
    let uuid = uuid(p.uuid.as_deref())?;
    m.create_error_bdev(&p.base_name, uuid)?;
    Ok(Value::Bool(true))
}

pub(super) fn error_delete(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    let p: ByName = parse(p)?;
    m.delete_error_bdev(&p.name)?;
    Ok(Value::Bool(true))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InjectError {
    name: String,
    io_type: String,
    error_type: String,
    /// How many requests to hit; SPDK's default is 1.
    num: Option<u32>,
    queue_depth: Option<u64>,
    corrupt_offset: Option<u64>,
    corrupt_value: Option<u8>,
    nvme_sct: Option<u8>,
    nvme_sc: Option<u8>,
}

/// `bdev_error_inject_error` (seed: `bdev_inject_error`). `io_type`: one
/// of `read`, `write`, `flush`, `unmap`, `write_zeroes`, or `all`, or
/// `clear` to stop every injection; `error_type`: `failure`, `pending`,
/// `nomem`, `corrupt_data` (with a non-zero `corrupt_value`) or
/// `nvme_failure` (with `nvme_sct` / `nvme_sc`).
pub(super) fn error_inject(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    let p: InjectError = parse(p)?;
    let io_type = match p.io_type.as_str() {
        "all" => None,
        "clear" => {
            m.error_clear(&p.name)?;
            return Ok(Value::Bool(true));
        }
        t => Some(
            IoType::ALL
                .into_iter()
                .find(|k| k.name() == t)
                .ok_or_else(|| {
                    RpcError::params(format!(
                        "`io_type` {t}: not one of all, clear, read, write, flush, unmap, write_zeroes"
                    ))
                })?,
        ),
    };
    let nvme = p.nvme_sct.is_some() || p.nvme_sc.is_some();
    if nvme != (p.error_type == "nvme_failure") {
        return Err(RpcError::params(
            "`nvme_sct` and `nvme_sc` go with error_type nvme_failure, and only with it",
        ));
    }
    let corrupt = p.corrupt_offset.is_some() || p.corrupt_value.is_some();
    if corrupt && p.error_type != "corrupt_data" {
        return Err(RpcError::params(
            "`corrupt_offset` and `corrupt_value` go with error_type corrupt_data",
        ));
    }
    let error = match p.error_type.as_str() {
        "failure" => Injected::Failure,
        "pending" => Injected::Pending,
        "nomem" => Injected::NoMemory,
        "corrupt_data" => match p.corrupt_value {
            Some(value) if value != 0 => Injected::CorruptData {
                offset: p.corrupt_offset.unwrap_or(0),
                value,
            },
            _ => {
                return Err(RpcError::params(
                    "`corrupt_value` must be non-zero (it is XORed into the data)",
                ));
            }
        },
        "nvme_failure" => Injected::Nvme {
            sct: p.nvme_sct.unwrap_or(0),
            sc: p.nvme_sc.unwrap_or(0),
        },
        other => {
            return Err(RpcError::params(format!(
                "`error_type` {other}: not one of failure, pending, nomem, corrupt_data, nvme_failure"
            )));
        }
    };
    let injection = Injection {
        error,
        num: p.num.unwrap_or(1),
        queue_depth: p.queue_depth.unwrap_or(0),
    };
    m.error_inject(&p.name, io_type, injection)?;
    Ok(Value::Bool(true))
}

/// `bdev_error_resume_pending`: the requests a `pending` injection holds
/// are submitted again.
pub(super) fn error_resume_pending(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    let p: ByName = parse(p)?;
    m.error_resume_pending(&p.name)?;
    Ok(Value::Bool(true))
}

/// The seed's `delete_bdev`: any RAM, pass-through or error bdev by name.
pub(super) fn delete_bdev(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    let p: ByName = parse(p)?;
    m.delete_any_bdev(&p.name)?;
    Ok(Value::Bool(true))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QosIops {
    name: String,
    ios_per_sec: u64,
}

/// The seed's `set_bdev_qos_limit_iops`: the IOPS limit of
/// `bdev_set_qos_limit` alone (0 lifts it).
pub(super) fn qos_limit_iops(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    let p: QosIops = parse(p)?;
    m.set_qos_iops(&p.name, p.ios_per_sec)?;
    Ok(Value::Bool(true))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NvmeSetOptions {
    action_on_timeout: Option<String>,
    timeout_us: Option<u64>,
    timeout_admin_us: Option<u64>,
    keep_alive_timeout_ms: Option<u32>,
    /// The seed's name for `transport_retry_count`.
    retry_count: Option<u32>,
    transport_retry_count: Option<u32>,
    bdev_retry_count: Option<i32>,
    nvme_adminq_poll_period_us: Option<u64>,
    nvme_ioq_poll_period_us: Option<u64>,
    io_queue_requests: Option<u32>,
    delay_cmd_submit: Option<bool>,
}

/// `bdev_nvme_set_options` / `set_bdev_nvme_options`: options not given
/// keep their value. Kept for the configuration; the NVMe driver does not
/// act on them (see [`ironbay_bdev::NvmeSettings`]).
pub(super) fn nvme_set_options(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    let p: NvmeSetOptions = parse(p)?;
    let mut o = m.bdevs.nvme.options;
    if let Some(a) = &p.action_on_timeout {
        o.action_on_timeout = TimeoutAction::parse(a).ok_or_else(|| {
            RpcError::params(format!(
                "`action_on_timeout` {a}: not one of none, reset, abort"
            ))
        })?;
    }
    if p.retry_count.is_some() && p.transport_retry_count.is_some() {
        return Err(RpcError::params(
            "`retry_count` is the old name of `transport_retry_count`: give one",
        ));
    }
    let set = |slot: &mut u64, v: Option<u64>| {
        if let Some(v) = v {
            *slot = v;
        }
    };
    set(&mut o.timeout_us, p.timeout_us);
    set(&mut o.timeout_admin_us, p.timeout_admin_us);
    set(
        &mut o.nvme_adminq_poll_period_us,
        p.nvme_adminq_poll_period_us,
    );
    set(&mut o.nvme_ioq_poll_period_us, p.nvme_ioq_poll_period_us);
    if let Some(v) = p.keep_alive_timeout_ms {
        o.keep_alive_timeout_ms = v;
    }
    if let Some(v) = p.retry_count.or(p.transport_retry_count) {
        o.transport_retry_count = v;
    }
    if let Some(v) = p.bdev_retry_count {
        o.bdev_retry_count = v;
    }
    if let Some(v) = p.io_queue_requests {
        o.io_queue_requests = v;
    }
    if let Some(v) = p.delay_cmd_submit {
        o.delay_cmd_submit = v;
    }
    m.nvme_set_options(o)?;
    Ok(Value::Bool(true))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NvmeSetHotplug {
    enabled: bool,
    period_us: Option<u64>,
}

/// `bdev_nvme_set_hotplug` / `set_bdev_nvme_hotplug`. Kept for the
/// configuration: the appliance finds PCIe devices at boot only.
pub(super) fn nvme_set_hotplug(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    let p: NvmeSetHotplug = parse(p)?;
    m.nvme_set_hotplug(p.enabled, p.period_us)?;
    Ok(Value::Bool(true))
}

/// The refusal for a method that needs a host OS: code -1 (the method
/// exists, the appliance cannot run it), the reason and what to use.
pub(super) fn unsupported(method: &str, (why, instead): (&str, &str)) -> Result<Value, RpcError> {
    Err(RpcError {
        code: code::INVALID_STATE,
        message: format!("{method} is not supported on the appliance ({why}): {instead}"),
    })
}

pub(super) const AIO: (&str, &str) = (
    "AIO bdevs need files on a host OS",
    "attach the disk as a controller (bdev_nvme_attach_controller, bdev_virtio_attach_controller) or use a RAM bdev (bdev_malloc_create)",
);
pub(super) const PMEM: (&str, &str) = (
    "pmem bdevs need a PMDK pool file on a host OS",
    "use a RAM bdev (bdev_malloc_create) or an NVMe namespace (bdev_nvme_attach_controller)",
);
pub(super) const RBD: (&str, &str) = (
    "Ceph RBD bdevs need librados on a host OS",
    "serve the disk to the appliance over NVMe or virtio-blk (bdev_nvme_attach_controller, bdev_virtio_attach_controller)",
);
pub(super) const VHOST: (&str, &str) = (
    "vhost controllers need a host OS sharing memory with its VMs",
    "export the bdev over the network instead (nvmf_subsystem_add_ns, iscsi_create_target_node, nbd_start_disk)",
);
pub(super) const VIRTIO_USER: (&str, &str) = (
    "virtio-user devices need a vhost-user socket on a host OS",
    "attach virtio-blk PCI devices (bdev_virtio_attach_controller with trtype pci, dev_type blk)",
);
pub(super) const CONTEXT_SWITCH: (&str, &str) = (
    "context switch monitoring counts host OS thread switches",
    "the appliance runs one thread per core and has none; see bdev_get_iostat and nvmf_get_stats for load",
);

/// `driver_specific` for `bdev_get_bdevs`, as SPDK shows it.
pub(super) fn driver_specific(m: &Model<'_>, id: BdevId) -> Value {
    let name = m.bdevs.info(id).map(|b| b.name.clone()).unwrap_or_default();
    match m.stacked(id) {
        Some(Stacked::Passthru { base }) => {
            json!({ "passthru": { "name": name, "base_bdev_name": base } })
        }
        Some(Stacked::Error { base }) => json!({ "error_disk": { "base_bdev": base } }),
        None => json!({}),
    }
}

/// The NVMe module's options as the call that sets them.
pub(super) fn nvme_options_config(m: &Model<'_>) -> Value {
    let o: NvmeOptions = m.bdevs.nvme.options;
    json!({
        "method": "bdev_nvme_set_options",
        "params": {
            "action_on_timeout": o.action_on_timeout.name(),
            "timeout_us": o.timeout_us,
            "timeout_admin_us": o.timeout_admin_us,
            "keep_alive_timeout_ms": o.keep_alive_timeout_ms,
            "transport_retry_count": o.transport_retry_count,
            "bdev_retry_count": o.bdev_retry_count,
            "nvme_adminq_poll_period_us": o.nvme_adminq_poll_period_us,
            "nvme_ioq_poll_period_us": o.nvme_ioq_poll_period_us,
            "io_queue_requests": o.io_queue_requests,
            "delay_cmd_submit": o.delay_cmd_submit
        }
    })
}

/// Hot-plug last, as SPDK writes it: after every bdev exists.
pub(super) fn nvme_hotplug_config(m: &Model<'_>) -> Value {
    let h = m.bdevs.nvme.hotplug;
    json!({
        "method": "bdev_nvme_set_hotplug",
        "params": { "enabled": h.enabled, "period_us": h.period_us }
    })
}

/// The calls that recreate the stacked bdevs, each after its base (which
/// may itself be stacked).
pub(super) fn stacked_config(m: &Model<'_>) -> Vec<Value> {
    let mut left: Vec<(String, String, Value)> = Vec::new();
    for id in m.bdevs.ids() {
        let (Some(b), Some(s)) = (m.bdevs.info(id), m.stacked(id)) else {
            continue;
        };
        let uuid = b.uuid.to_string();
        let (base, call) = match s {
            Stacked::Passthru { base } => {
                let call = json!({ "method": "bdev_passthru_create", "params": {
                    "base_bdev_name": base, "name": b.name, "uuid": uuid } });
                (base, call)
            }
            Stacked::Error { base } => {
                let call = json!({ "method": "bdev_error_create", "params": {
                    "base_name": base, "uuid": uuid } });
                (base, call)
            }
        };
        left.push((b.name.clone(), base, call));
    }
    let mut calls = Vec::new();
    while !left.is_empty() {
        let before = left.len();
        let mut i = 0;
        while i < left.len() {
            // Ready once no stacked bdev still to be written is its base.
            if left.iter().any(|(name, _, _)| *name == left[i].1) {
                i += 1;
            } else {
                calls.push(left.remove(i).2);
            }
        }
        if left.len() == before {
            break; // a cycle cannot happen; never loop for ever
        }
    }
    calls
}

#[cfg(test)]
mod tests;
