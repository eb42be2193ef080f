//! `bdev_lvol_*` and their seed names: volume stores and logical volumes.
//! Parameters are typed, one struct per method, refusing unknown fields;
//! where the seed and today's SPDK name a parameter differently, both are
//! taken.

use super::RpcError;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use ironbay_lvol::{StoreInfo, VolumeInfo};
use ironbay_model::Model;
use ironbay_model::lvol::{StoreRef, parse_clear};
use serde::Deserialize;
use serde_json::{Value, json};

use super::params::{Params, parse};

const MIB: u64 = 1 << 20;

/// `uuid` or `lvs_name`: exactly one when `required`, at most one else.
fn store_ref<'a>(
    uuid: &'a Option<String>,
    name: &'a Option<String>,
    required: bool,
) -> Result<Option<StoreRef<'a>>, RpcError> {
    match (uuid, name) {
        (Some(_), Some(_)) => Err(RpcError::params(
            "give either `uuid` or `lvs_name`, not both",
        )),
        (Some(u), None) => Ok(Some(StoreRef::Uuid(u))),
        (None, Some(n)) => Ok(Some(StoreRef::Name(n))),
        (None, None) if required => {
            Err(RpcError::params("either `uuid` or `lvs_name` is required"))
        }
        (None, None) => Ok(None),
    }
}

/// A size given in bytes (seed) or MiB (today's SPDK).
fn size(bytes: Option<u64>, mib: Option<u64>) -> Result<u64, RpcError> {
    match (bytes, mib) {
        (Some(_), Some(_)) => Err(RpcError::params("give either `size` or `size_in_mib`")),
        (Some(b), None) => Ok(b),
        (None, Some(m)) => m
            .checked_mul(MIB)
            .ok_or_else(|| RpcError::params("`size_in_mib` is too large")),
        (None, None) => Err(RpcError::params("missing `size_in_mib`")),
    }
}

fn store_json(s: &StoreInfo) -> Value {
    json!({
        "uuid": s.uuid.to_string(),
        "name": s.name,
        "base_bdev": s.base_bdev,
        "total_data_clusters": s.total_data_clusters,
        "free_clusters": s.free_clusters,
        "block_size": s.block_size,
        "cluster_size": s.cluster_size,
        "max_growable_size": s.max_clusters * s.cluster_size,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateStore {
    bdev_name: String,
    lvs_name: String,
    cluster_sz: Option<u64>,
    clear_method: Option<String>,
    /// Accepted for SPDK's clients; the metadata area here is sized for
    /// four times the store's clusters (at least 16384).
    #[allow(dead_code, reason = "accepted, not used: see above")]
    num_md_pages_per_cluster_ratio: Option<u64>,
    #[allow(
        dead_code,
        reason = "metadata is written in 4 KiB units or the block size"
    )]
    md_page_size: Option<u64>,
}

pub(super) fn create_lvstore(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    let p: CreateStore = parse(p)?;
    let clear = parse_clear(p.clear_method.as_deref())?;
    Ok(Value::String(m.lvs_create(
        &p.bdev_name,
        &p.lvs_name,
        p.cluster_sz,
        clear,
    )?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WhichStore {
    uuid: Option<String>,
    lvs_name: Option<String>,
}

pub(super) fn delete_lvstore(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    let p: WhichStore = parse(p)?;
    let r = store_ref(&p.uuid, &p.lvs_name, true)?.ok_or_else(|| RpcError::params("no store"))?;
    m.lvs_delete(r)?;
    Ok(Value::Bool(true))
}

pub(super) fn get_lvstores(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    let p: WhichStore = parse(p)?;
    let r = store_ref(&p.uuid, &p.lvs_name, false)?;
    Ok(Value::Array(
        m.lvs_list(r)?.iter().map(store_json).collect(),
    ))
}

pub(super) fn grow_lvstore(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    let p: WhichStore = parse(p)?;
    let r = store_ref(&p.uuid, &p.lvs_name, true)?.ok_or_else(|| RpcError::params("no store"))?;
    m.lvs_grow(r)?;
    Ok(Value::Bool(true))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rename {
    old_name: String,
    new_name: String,
}

pub(super) fn rename_lvstore(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    let p: Rename = parse(p)?;
    m.lvs_rename(&p.old_name, &p.new_name)?;
    Ok(Value::Bool(true))
}

pub(super) fn rename(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    let p: Rename = parse(p)?;
    m.lvol_rename(&p.old_name, &p.new_name)?;
    Ok(Value::Bool(true))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Create {
    lvol_name: String,
    size: Option<u64>,
    size_in_mib: Option<u64>,
    #[serde(default)]
    thin_provision: bool,
    uuid: Option<String>,
    lvs_name: Option<String>,
    clear_method: Option<String>,
}

pub(super) fn create(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    let p: Create = parse(p)?;
    let r = store_ref(&p.uuid, &p.lvs_name, true)?.ok_or_else(|| RpcError::params("no store"))?;
    let bytes = size(p.size, p.size_in_mib)?;
    let clear = parse_clear(p.clear_method.as_deref())?;
    Ok(Value::String(m.lvol_create(
        r,
        &p.lvol_name,
        bytes,
        p.thin_provision,
        clear,
    )?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Named {
    name: String,
}

pub(super) fn delete(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    let p: Named = parse(p)?;
    m.lvol_delete(&p.name)?;
    Ok(Value::Bool(true))
}

pub(super) fn inflate(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    let p: Named = parse(p)?;
    m.lvol_inflate(&p.name)?;
    Ok(Value::Bool(true))
}

pub(super) fn decouple_parent(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    let p: Named = parse(p)?;
    m.lvol_decouple_parent(&p.name)?;
    Ok(Value::Bool(true))
}

pub(super) fn set_read_only(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    let p: Named = parse(p)?;
    m.lvol_set_read_only(&p.name)?;
    Ok(Value::Bool(true))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Resize {
    name: String,
    size: Option<u64>,
    size_in_mib: Option<u64>,
}

pub(super) fn resize(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    let p: Resize = parse(p)?;
    m.lvol_resize(&p.name, size(p.size, p.size_in_mib)?)?;
    Ok(Value::Bool(true))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Snapshot {
    lvol_name: String,
    snapshot_name: String,
}

pub(super) fn snapshot(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    let p: Snapshot = parse(p)?;
    Ok(Value::String(
        m.lvol_snapshot(&p.lvol_name, &p.snapshot_name)?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Clone {
    snapshot_name: String,
    clone_name: String,
}

pub(super) fn clone(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    let p: Clone = parse(p)?;
    Ok(Value::String(
        m.lvol_clone(&p.snapshot_name, &p.clone_name)?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct List {
    lvs_uuid: Option<String>,
    lvs_name: Option<String>,
}

pub(super) fn get_lvols(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    let p: List = parse(p)?;
    let r = store_ref(&p.lvs_uuid, &p.lvs_name, false)?;
    let list: Vec<Value> = m
        .lvol_list(r)?
        .iter()
        .map(|(s, v)| {
            json!({
                "alias": alloc::format!("{}/{}", s.name, v.name),
                "uuid": v.uuid.to_string(),
                "name": v.name,
                "is_thin_provisioned": v.thin,
                "is_snapshot": v.is_snapshot,
                "is_clone": v.is_clone,
                "is_esnap_clone": false,
                "is_degraded": false,
                "num_allocated_clusters": v.allocated_clusters,
                "lvs": { "name": s.name, "uuid": s.uuid.to_string() },
            })
        })
        .collect();
    Ok(Value::Array(list))
}

/// The `lvol` part of a volume bdev's `driver_specific`, as SPDK shows it.
pub(super) fn driver_specific(s: &StoreInfo, v: &VolumeInfo) -> Value {
    let mut o = json!({
        "lvol_store_uuid": s.uuid.to_string(),
        "base_bdev": s.base_bdev,
        "thin_provision": v.thin,
        "num_allocated_clusters": v.allocated_clusters,
        "snapshot": v.is_snapshot,
        "clone": v.is_clone,
        "esnap_clone": false,
    });
    if let (Some(parent), Some(map)) = (&v.parent, o.as_object_mut()) {
        map.insert("base_snapshot".into(), Value::String(parent.clone()));
    }
    if let (false, Some(map)) = (v.clones.is_empty(), o.as_object_mut()) {
        map.insert("clones".into(), json!(v.clones));
    }
    json!({ "lvol": o })
}
