//! targetd's methods over the object model: pools are volume stores,
//! volumes are logical volumes. Checks and error codes follow targetd
//! (`targetd/block.py`): pool first (-110), then the volume (-103), then
//! sizes (-32602), then names (-50).

use crate::exports;
use crate::rpc::{Error, code};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use ironbay_lvol::{StoreInfo, VolumeInfo};
use ironbay_model::lvol::StoreRef;
use ironbay_model::{ErrorKind, Model};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

pub(crate) type Params = Map<String, Value>;
type Method = fn(&mut Model<'_>, &Params) -> Result<Value, Error>;

/// The method named `name`.
pub fn find(name: &str) -> Option<Method> {
    Some(match name {
        "pool_list" => pool_list,
        "vol_list" => vol_list,
        "vol_create" => vol_create,
        "vol_destroy" => vol_destroy,
        "vol_copy" => vol_copy,
        "vol_resize" => vol_resize,
        "export_list" => exports::export_list,
        "export_create" => exports::export_create,
        "export_destroy" => exports::export_destroy,
        "initiator_set_auth" => exports::initiator_set_auth,
        "initiator_list" => exports::initiator_list,
        "access_group_list" => exports::access_group_list,
        "access_group_create" => exports::access_group_create,
        "access_group_destroy" => exports::access_group_destroy,
        "access_group_init_add" => exports::access_group_init_add,
        "access_group_init_del" => exports::access_group_init_del,
        "access_group_map_list" => exports::access_group_map_list,
        "access_group_map_create" => exports::access_group_map_create,
        "access_group_map_destroy" => exports::access_group_map_destroy,
        "fs_list"
        | "fs_create"
        | "fs_destroy"
        | "fs_clone"
        | "fs_snapshot"
        | "fs_snapshot_delete"
        | "ss_list"
        | "nfs_export_auth_list"
        | "nfs_export_list"
        | "nfs_export_add"
        | "nfs_export_remove" => block_only,
        _ => return None,
    })
}

pub(crate) fn parse<T: DeserializeOwned>(p: &Params) -> Result<T, Error> {
    serde_json::from_value(Value::Object(p.clone())).map_err(|e| {
        Error::new(
            code::INVALID_PARAMS,
            format!("invalid method arguments: {e}"),
        )
    })
}

/// A size in bytes: a JSON number (targetd's clients may send floats).
fn bytes(v: &serde_json::Number) -> Result<u64, Error> {
    let f = v.as_f64().unwrap_or(-1.0);
    match v.as_u64() {
        Some(n) => Ok(n),
        None if (0.0..1.8e19).contains(&f) => Ok(f as u64),
        None => Err(Error::new(
            code::INVALID_PARAMS,
            "a size must be a non-negative number of bytes",
        )),
    }
}

/// A backend step failed: a refusal of the request's values is invalid
/// arguments, anything else targetd's "unexpected exit code".
pub(crate) fn backend(e: ironbay_model::Error) -> Error {
    let c = match e.kind {
        ErrorKind::InvalidParams => code::INVALID_PARAMS,
        _ => code::UNEXPECTED_EXIT_CODE,
    };
    Error::new(c, e.message)
}

fn no_support(what: &str) -> Error {
    Error::new(code::NO_SUPPORT, what.to_string())
}

fn block_only(_: &mut Model<'_>, _: &Params) -> Result<Value, Error> {
    Err(no_support(
        "this appliance serves block storage only: no file systems, snapshots of them or NFS exports",
    ))
}

/// The volume store `name` if targetd may use it.
pub(crate) fn pool(m: &mut Model<'_>, name: &str) -> Result<StoreInfo, Error> {
    let allowed = m.targetd().is_ok_and(|s| s.pool_allowed(name));
    let found = m
        .lvs_list(Some(StoreRef::Name(name)))
        .ok()
        .and_then(|v| v.into_iter().next());
    match found {
        Some(s) if allowed => Ok(s),
        _ => Err(Error::new(
            code::INVALID_POOL,
            format!("Invalid pool ({name})"),
        )),
    }
}

fn volumes(m: &Model<'_>, pool: &str) -> Vec<VolumeInfo> {
    m.lvol_list(Some(StoreRef::Name(pool)))
        .map(|v| v.into_iter().map(|(_, v)| v).collect())
        .unwrap_or_default()
}

pub(crate) fn volume(m: &Model<'_>, pool: &str, name: &str) -> Result<VolumeInfo, Error> {
    volumes(m, pool)
        .into_iter()
        .find(|v| v.name == name)
        .ok_or_else(|| Error::new(code::NOT_FOUND_VOLUME, format!("Volume {name} not found")))
}

/// Whether an iSCSI LUN or an NVMe-oF namespace serves the volume.
fn exported(m: &Model<'_>, v: &VolumeInfo) -> bool {
    let Some(id) = m.bdevs.find(&v.uuid.to_string()) else {
        return false;
    };
    let lun = exports::mapped(m, id)
        || m.iscsi_config()
            .is_some_and(|c| c.nodes.iter().flat_map(|n| &n.luns).any(|l| l.bdev == id));
    let ns = m.nvmf_config().is_some_and(|c| {
        c.subsystems
            .iter()
            .flat_map(|s| &s.namespaces)
            .any(|n| m.bdevs.find(&n.bdev_name) == Some(id))
    });
    lun || ns
}

fn pool_list(m: &mut Model<'_>, p: &Params) -> Result<Value, Error> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct P {}
    let _: P = parse(p)?;
    let stores = m.lvs_list(None).unwrap_or_default();
    let settings = m.targetd().map_err(backend)?;
    let list: Vec<Value> = stores
        .iter()
        .filter(|s| settings.pool_allowed(&s.name))
        .map(|s| {
            json!({
                "name": s.name,
                "size": s.total_data_clusters * s.cluster_size,
                "free_size": s.free_clusters * s.cluster_size,
                "type": "block",
                "uuid": s.uuid.to_string(),
            })
        })
        .collect();
    Ok(Value::Array(list))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolOnly {
    pool: String,
}

fn vol_list(m: &mut Model<'_>, p: &Params) -> Result<Value, Error> {
    let a: PoolOnly = parse(p)?;
    pool(m, &a.pool)?;
    let list: Vec<Value> = volumes(m, &a.pool)
        .iter()
        .map(|v| json!({ "name": v.name, "size": v.size_bytes, "uuid": v.uuid.to_string() }))
        .collect();
    Ok(Value::Array(list))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Create {
    pool: String,
    name: String,
    size: serde_json::Number,
}

fn vol_create(m: &mut Model<'_>, p: &Params) -> Result<Value, Error> {
    let a: Create = parse(p)?;
    pool(m, &a.pool)?;
    let size = bytes(&a.size)?;
    if volume(m, &a.pool, &a.name).is_ok() {
        return Err(Error::new(
            code::NAME_CONFLICT,
            "Volume with that name exists",
        ));
    }
    let thin = m.targetd().map_err(backend)?.thin_for(&a.pool);
    m.lvol_create(
        StoreRef::Name(&a.pool),
        &a.name,
        size,
        thin,
        ironbay_lvol::Clear::Zero,
    )
    .map_err(backend)?;
    Ok(Value::Null)
}

fn vol_destroy(m: &mut Model<'_>, p: &Params) -> Result<Value, Error> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct P {
        pool: String,
        name: String,
    }
    let a: P = parse(p)?;
    pool(m, &a.pool)?;
    let v = volume(m, &a.pool, &a.name)?;
    if exported(m, &v) {
        return Err(Error::new(
            code::VOLUME_MASKED,
            format!("Volume '{}' cannot be removed while exported", a.name),
        ));
    }
    m.lvol_delete(&v.uuid.to_string()).map_err(backend)?;
    Ok(Value::Null)
}

fn vol_resize(m: &mut Model<'_>, p: &Params) -> Result<Value, Error> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct P {
        pool: String,
        name: String,
        size: serde_json::Number,
    }
    let a: P = parse(p)?;
    pool(m, &a.pool)?;
    let v = volume(m, &a.pool, &a.name)?;
    let size = bytes(&a.size)?;
    if size <= v.size_bytes {
        return Err(Error::new(
            code::INVALID_PARAMS,
            format!(
                "volumes only grow: {} is not larger than {}",
                size, v.size_bytes
            ),
        ));
    }
    m.lvol_resize(&v.uuid.to_string(), size).map_err(backend)?;
    Ok(Value::Null)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Copy {
    pool: String,
    vol_orig: String,
    vol_new: String,
    size: Option<serde_json::Number>,
    /// targetd takes it and does not use it; copies here finish before the
    /// answer.
    #[allow(dead_code, reason = "accepted for targetd's clients")]
    timeout: Option<Value>,
}

/// A full, independent copy: a snapshot of the original, a clone of it
/// made independent (thin pools copy what is allocated, thick ones every
/// cluster), then the snapshot merged back into the original.
fn vol_copy(m: &mut Model<'_>, p: &Params) -> Result<Value, Error> {
    let a: Copy = parse(p)?;
    let info = pool(m, &a.pool)?;
    let orig = volume(m, &a.pool, &a.vol_orig)?;
    let size = a.size.as_ref().map(bytes).transpose()?;
    if let Some(s) = size
        && s <= orig.size_bytes
    {
        return Err(Error::new(
            code::INVALID_PARAMS,
            format!(
                "Size {s} need a larger than size in original volume {}",
                orig.size_bytes
            ),
        ));
    }
    if volume(m, &a.pool, &a.vol_new).is_ok() {
        return Err(Error::new(
            code::NAME_CONFLICT,
            "Volume with that name exists",
        ));
    }
    let thin = m.targetd().map_err(backend)?.thin_for(&a.pool);
    let snap_name = temp_name(m, &a.pool);
    let orig_ref = orig.uuid.to_string();
    let snap = m.lvol_snapshot(&orig_ref, &snap_name).map_err(backend)?;
    let made = (|| {
        let copy = m.lvol_clone(&snap, &a.vol_new)?;
        let r = (|| {
            if thin {
                m.lvol_decouple_parent(&copy)?;
            } else {
                m.lvol_inflate(&copy)?;
            }
            if let Some(s) = size {
                m.lvol_resize(&copy, s)?;
            }
            Ok(())
        })();
        if r.is_err() {
            let _ = m.lvol_delete(&copy);
        }
        r
    })();
    // The original is the snapshot's only clone now: deleting the snapshot
    // gives the original its clusters back.
    let merged = m.lvol_delete(&snap);
    if let Err(e) = &merged {
        log::error!(
            "targetd: vol_copy left snapshot {snap_name} in {}: {}",
            info.name,
            e.message
        );
    }
    made.map_err(backend)?;
    Ok(Value::Null)
}

/// A volume name free in the pool for a copy's passing snapshot.
fn temp_name(m: &Model<'_>, pool: &str) -> String {
    let taken: Vec<String> = volumes(m, pool).into_iter().map(|v| v.name).collect();
    (0u32..)
        .map(|k| format!("targetd-copy-{k}"))
        .find(|n| !taken.contains(n))
        .unwrap_or_default()
}
