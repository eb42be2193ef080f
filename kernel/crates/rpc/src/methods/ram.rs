//! RAM bdevs (`bdev_malloc_*`, `bdev_null_*`) and per-bdev QoS limits.
//! Parameters are typed, one struct per method, refusing unknown fields.

use super::RpcError;
use super::params::{Params, count, name, opt_count, opt_string, parse, uuid};
use alloc::string::String;
use ironbay_model::{Model, RamBdev, RamKind};
use serde::de::{self, IgnoredAny};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// `bdev_malloc_create` and `bdev_null_create`. Today's SPDK client sends
/// the metadata and protection keys at their defaults, which are taken;
/// anything else is refused. Its layout hints are taken and ignored.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[expect(dead_code, reason = "the metadata and hint fields are only checked")]
struct Create {
    #[serde(default, deserialize_with = "opt_string")]
    name: Option<String>,
    // In this order, so a request without either is told of `block_size`.
    #[serde(deserialize_with = "count")]
    block_size: u64,
    #[serde(deserialize_with = "count")]
    num_blocks: u64,
    #[serde(default, deserialize_with = "opt_string")]
    uuid: Option<String>,
    #[serde(default)]
    md_size: NoMetadata,
    #[serde(default)]
    md_interleave: NoMetadata,
    #[serde(default)]
    dif_type: NoMetadata,
    #[serde(default)]
    dif_is_head_of_md: NoMetadata,
    #[serde(default)]
    dif_pi_format: NoMetadata,
    #[serde(default)]
    dif_check_flags: NoMetadata,
    #[serde(default)]
    optimal_io_boundary: IgnoredAny,
    #[serde(default)]
    physical_block_size: IgnoredAny,
    #[serde(default)]
    numa_id: IgnoredAny,
}

/// A metadata or protection-information setting, which must be off:
/// `null`, `false` or 0.
#[derive(Default)]
struct NoMetadata;

impl<'de> Deserialize<'de> for NoMetadata {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        if matches!(v, Value::Null | Value::Bool(false)) || v.as_u64() == Some(0) {
            Ok(NoMetadata)
        } else {
            Err(de::Error::custom(
                ": metadata and protection information are not supported",
            ))
        }
    }
}

pub(super) fn create(m: &mut Model<'_>, p: &Params, kind: RamKind) -> Result<Value, RpcError> {
    let p: Create = parse(p)?;
    let spec = RamBdev {
        kind,
        block_size: p.block_size,
        num_blocks: p.num_blocks,
        name: p.name,
        uuid: uuid(p.uuid.as_deref())?,
    };
    let name = m.create_ram_bdev(spec)?;
    if kind == RamKind::Malloc {
        // The budget is what was free when the caller made the model; calls
        // sharing it (a batch, pipelined requests, the boot config) must not
        // each spend it whole.
        let bytes = p.num_blocks.saturating_mul(p.block_size);
        m.memory_budget = m.memory_budget.saturating_sub(bytes);
    }
    Ok(Value::String(name))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Delete {
    #[serde(default, deserialize_with = "opt_string")]
    name: Option<String>,
}

pub(super) fn delete(m: &mut Model<'_>, p: &Params, kind: RamKind) -> Result<Value, RpcError> {
    let p: Delete = parse(p)?;
    let name = p.name.ok_or_else(|| RpcError::params("missing `name`"))?;
    m.delete_bdev(&name, kind)?;
    Ok(Value::Bool(true))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NullResize {
    #[serde(deserialize_with = "name")]
    name: String,
    /// MiB.
    #[serde(deserialize_with = "count")]
    new_size: u64,
}

/// SPDK's null bdev resize: `new_size` in MiB (whole blocks of it). Here
/// a null bdev may shrink as well as grow.
pub(super) fn null_resize(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    let p: NullResize = parse(p)?;
    let info = m.bdevs.info(m.find(&p.name)?).cloned();
    let block_size = info.map_or(512, |i| i.block_size as u64);
    let blocks = p
        .new_size
        .checked_mul(1 << 20)
        .map(|b| b / block_size)
        .ok_or_else(|| RpcError::params("`new_size` too large"))?;
    m.resize_bdev(&p.name, RamKind::Null, blocks)?;
    Ok(Value::Bool(true))
}

/// `bdev_set_qos_limit`: limits not given keep their value.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QosLimit {
    #[serde(default, deserialize_with = "opt_string")]
    name: Option<String>,
    #[serde(default, deserialize_with = "opt_count")]
    rw_ios_per_sec: Option<u64>,
    #[serde(default, deserialize_with = "opt_count")]
    rw_mbytes_per_sec: Option<u64>,
    #[serde(default, deserialize_with = "opt_count")]
    r_mbytes_per_sec: Option<u64>,
    #[serde(default, deserialize_with = "opt_count")]
    w_mbytes_per_sec: Option<u64>,
}

/// SPDK's QoS: IOPS and MB/s limits (MB = 10^6 bytes), 0 lifts a limit;
/// limits not named keep their value. Enforced in the bdev layer.
pub(super) fn set_qos_limit(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    let p: QosLimit = parse(p)?;
    let name = p
        .name
        .as_deref()
        .ok_or_else(|| RpcError::params("missing `name`"))?;
    let mut limits = m.bdevs.qos(m.find(name)?);
    let mb = |v: u64| {
        v.checked_mul(1_000_000)
            .ok_or_else(|| RpcError::params("limit too large"))
    };
    let bytes = [p.rw_mbytes_per_sec, p.r_mbytes_per_sec, p.w_mbytes_per_sec];
    if p.rw_ios_per_sec.is_none() && bytes.iter().all(Option::is_none) {
        return Err(RpcError::params("no limit given"));
    }
    if let Some(v) = p.rw_ios_per_sec {
        limits.ios_per_sec = v;
    }
    let slots = [
        &mut limits.bytes_per_sec,
        &mut limits.read_bytes_per_sec,
        &mut limits.write_bytes_per_sec,
    ];
    for (slot, v) in slots.into_iter().zip(bytes) {
        if let Some(v) = v {
            *slot = mb(v)?;
        }
    }
    m.set_qos(name, limits)?;
    Ok(Value::Bool(true))
}

#[cfg(test)]
mod tests {
    use super::super::call;
    use ironbay_bdev::Registry;
    use ironbay_model::Model;
    use ironbay_nbd::Exports;
    use serde_json::{Value, json};

    /// The messages the hand-read versions of these methods gave, word for
    /// word: clients and scripts match on them.
    #[test]
    fn messages_name_the_parameter() {
        let mut reg = Registry::new();
        let mut exports = Exports::default();
        let (mut init, mut down) = (true, false);
        let mut m = Model {
            bdevs: &mut reg,
            devices: None,
            nbd: Some(&mut exports),
            iscsi: None,
            nvmf: None,
            memory_budget: 1 << 20,
            initialized: &mut init,
            shutdown: &mut down,
            bench: None,
            config_store: None,
            lvol: None,
            targetd: None,
        };
        let ok = json!({ "name": "M", "num_blocks": 8, "block_size": 512, "md_size": 0, "dif_type": false, "numa_id": 3 });
        let mut run = |method: &str, p: Value| call(&mut m, method, p.as_object().unwrap());
        assert_eq!(run("bdev_malloc_create", ok).unwrap(), "M");
        for (method, p, want) in [
            ("bdev_malloc_create", json!({}), "missing `block_size`"),
            (
                "bdev_malloc_create",
                json!({ "num_blocks": "x", "block_size": 512 }),
                "`num_blocks` must be a non-negative integer",
            ),
            (
                "bdev_malloc_create",
                json!({ "num_blocks": 8, "block_size": 512, "colour": 1 }),
                "unknown parameter `colour`",
            ),
            (
                "bdev_null_create",
                json!({ "name": 7, "num_blocks": 8, "block_size": 512 }),
                "`name` must be a string",
            ),
            (
                "bdev_malloc_create",
                json!({ "num_blocks": 8, "block_size": 512, "uuid": "x" }),
                "`uuid` x is not a UUID",
            ),
            (
                "bdev_malloc_create",
                json!({ "num_blocks": 8, "block_size": 512, "dif_type": 1 }),
                "`dif_type`: metadata and protection information are not supported",
            ),
            (
                "bdev_malloc_delete",
                json!({ "name": null }),
                "missing `name`",
            ),
            (
                "bdev_null_resize",
                json!({ "name": "" , "new_size": 1 }),
                "`name` must be a non-empty string",
            ),
            (
                "bdev_set_qos_limit",
                json!({ "rw_ios_per_sec": 1 }),
                "missing `name`",
            ),
            (
                "bdev_set_qos_limit",
                json!({ "name": "M" }),
                "no limit given",
            ),
            (
                "bdev_set_qos_limit",
                json!({ "name": "M", "r_mbytes_per_sec": -1 }),
                "`r_mbytes_per_sec` must be a non-negative integer",
            ),
            (
                "bdev_set_qos_limit",
                json!({ "name": "M", "w_mbytes_per_sec": u64::MAX }),
                "limit too large",
            ),
            (
                "nbd_start_disk",
                json!({ "nbd_device": "x" }),
                "missing `bdev_name`",
            ),
            (
                "nbd_start_disk",
                json!({ "bdev_name": "M", "nbd_device": 1 }),
                "`nbd_device` must be a string",
            ),
            (
                "nbd_stop_disk",
                json!({ "nbd_device": 1 }),
                "`nbd_device` must be a non-empty string",
            ),
            ("nbd_get_disks", json!({ "x": 1 }), "unknown parameter `x`"),
        ] {
            let e = run(method, p.clone()).unwrap_err();
            assert_eq!((e.code, e.message.as_str()), (-32602, want), "{method} {p}");
        }
        let limits = json!({ "name": "M", "rw_ios_per_sec": 100, "w_mbytes_per_sec": 2 });
        assert_eq!(run("bdev_set_qos_limit", limits).unwrap(), true);
        assert_eq!(
            run(
                "nbd_start_disk",
                json!({ "bdev_name": "M", "nbd_device": "m2" })
            )
            .unwrap(),
            "m2"
        );
        let disks = run("nbd_get_disks", json!({ "nbd_device": "m2" })).unwrap();
        assert_eq!(disks, json!([{ "bdev_name": "M", "nbd_device": "m2" }]));
        assert_eq!(
            run("nbd_stop_disk", json!({ "nbd_device": "m2" })).unwrap(),
            true
        );
        assert_eq!(
            run("bdev_malloc_delete", json!({ "name": "M" })).unwrap(),
            true
        );
        assert_eq!(reg.ids().count(), 0);
    }
}
