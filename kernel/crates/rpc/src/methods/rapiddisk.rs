//! RapidDisk's RAM disks and RAM caches over JSON-RPC, so what the REST API
//! on 9118 makes is seen, changed and saved here too.

use super::RpcError;
use super::params::{Params, parse};
use alloc::string::String;
use alloc::vec::Vec;
use ironbay_cache::Mode;
use ironbay_model::Model;
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Create {
    name: Option<String>,
    size_mb: u64,
}

/// `bdev_rapiddisk_create`: the new RAM disk's name (`rdN` unless given).
pub(super) fn create(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    let p: Create = parse(p)?;
    Ok(Value::String(
        m.rapiddisk_create(p.name.as_deref(), p.size_mb)?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Named {
    name: String,
}

pub(super) fn delete(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    let p: Named = parse(p)?;
    m.rapiddisk_remove(&p.name)?;
    Ok(Value::Bool(true))
}

pub(super) fn flush(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    let p: Named = parse(p)?;
    m.rapiddisk_flush(&p.name)?;
    Ok(Value::Bool(true))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Resize {
    name: String,
    size_mb: u64,
}

pub(super) fn resize(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    let p: Resize = parse(p)?;
    m.rapiddisk_resize(&p.name, p.size_mb)?;
    Ok(Value::Bool(true))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Lock {
    name: String,
    locked: bool,
}

pub(super) fn set_locked(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    let p: Lock = parse(p)?;
    m.rapiddisk_lock(&p.name, p.locked)?;
    Ok(Value::Bool(true))
}

pub(super) fn get_disks(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    super::no_params(p)?;
    let (disks, caches) = m.rapiddisk_list();
    let disks: Vec<Value> = disks
        .into_iter()
        .map(|d| json!({"name": d.name, "size": d.size, "usage": d.usage, "locked": d.locked}))
        .collect();
    let caches: Vec<Value> = caches
        .into_iter()
        .map(|c| json!({"name": c.name, "cache": c.cache, "source": c.source, "mode": c.mode.policy()}))
        .collect();
    Ok(json!({"rapiddisk": disks, "rapiddisk_cache": caches}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CacheCreate {
    cache: String,
    source: String,
    mode: String,
}

/// `bdev_rapiddisk_cache_create`: the cache's name (`rc-wt_SOURCE`, ...).
pub(super) fn cache_create(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    let p: CacheCreate = parse(p)?;
    let mode = Mode::from_policy(&p.mode).ok_or_else(|| {
        RpcError::params("`mode` must be write-through, write-around or write-back")
    })?;
    Ok(Value::String(m.cache_create(&p.cache, &p.source, mode)?))
}

pub(super) fn cache_delete(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    let p: Named = parse(p)?;
    m.cache_remove(&p.name)?;
    Ok(Value::Bool(true))
}

pub(super) fn cache_get_stats(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    let p: Named = parse(p)?;
    let (mode, s) = m.cache_stats(&p.name)?;
    let mut v = serde_json::Map::new();
    v.insert("name".into(), Value::String(p.name));
    v.insert("mode".into(), mode.policy().into());
    for (k, n) in s.counters().into_iter().chain(s.writeback()) {
        v.insert(k.into(), n.into());
    }
    Ok(Value::Object(v))
}

/// The calls that recreate RAM disks (empty) and then their caches.
pub(super) fn config(m: &mut Model<'_>) -> Vec<Value> {
    let (disks, caches) = m.rapiddisk_list();
    let mut calls: Vec<Value> = disks
        .iter()
        .rev()
        .map(|d| {
            json!({"method": "bdev_rapiddisk_create", "params": {
                "name": d.name, "size_mb": d.size >> 20 }})
        })
        .collect();
    for d in disks.iter().filter(|d| d.locked) {
        calls.push(json!({"method": "bdev_rapiddisk_set_locked", "params": {
            "name": d.name, "locked": true }}));
    }
    for c in caches {
        calls.push(json!({"method": "bdev_rapiddisk_cache_create", "params": {
            "cache": c.cache, "source": c.source, "mode": c.mode.policy() }}));
    }
    calls
}
