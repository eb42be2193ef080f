//! The config store's methods: which bdev the configuration is saved to
//! (`config_store_set`, `config_store_get`, `config_store_clear`), and the
//! save the caller runs after every handled input ([`save_if_changed`]).
//!
//! What is saved is exactly `framework_get_config`'s reply, serialized
//! compactly (object keys sorted, so the same configuration gives the same
//! bytes).

use super::{RpcError, framework_get_config, no_params, only, str_param};
use alloc::string::String;
use alloc::vec::Vec;
use ironbay_model::Model;
use serde_json::{Map, Value, json};

/// The running configuration as the bytes the store keeps.
pub fn config_bytes(m: &mut Model<'_>) -> Result<Vec<u8>, RpcError> {
    let config = framework_get_config(m, &Map::new())?;
    serde_json::to_vec(&config).map_err(|_| RpcError {
        code: super::code::INTERNAL_ERROR,
        message: "configuration does not serialize".into(),
    })
}

/// Saves the configuration to the store if it changed since the last save;
/// the generation written, if any. Nothing happens before init (the held-back
/// boot config has not run yet) or without a store.
pub fn save_if_changed(m: &mut Model<'_>) -> Result<Option<u64>, RpcError> {
    if !*m.initialized || m.config_store.as_deref().is_none_or(|c| c.bdev().is_none()) {
        return Ok(None);
    }
    let bytes = config_bytes(m)?;
    Ok(m.config_store_save_if_changed(&bytes)?)
}

/// `config_store_set {"bdev_name": NAME}`: the configuration is saved to
/// NAME from now on (and at once); the bdev is claimed.
pub fn set(m: &mut Model<'_>, p: &Map<String, Value>) -> Result<Value, RpcError> {
    only(p, &["bdev_name"])?;
    let name = str_param(p, "bdev_name")?;
    let bytes = config_bytes(m)?;
    m.config_store_set(name, &bytes)?;
    Ok(Value::Bool(true))
}

/// `config_store_get`: the bdev, the newest generation and slot, the last
/// save error, and what the boot found.
pub fn get(m: &mut Model<'_>, p: &Map<String, Value>) -> Result<Value, RpcError> {
    no_params(p)?;
    let s = m.config_store_status().ok_or_else(|| RpcError {
        code: super::code::INVALID_STATE,
        message: "no config store on this front end".into(),
    })?;
    Ok(json!({
        "bdev_name": s.bdev_name,
        "generation": s.current.map(|c| c.1),
        "slot": s.current.map(|c| c.0),
        "max_bytes": ironbay_model::persist::MAX_CONFIG_BYTES,
        "last_error": s.last_error,
        "loaded_at_boot": s.boot.map(|b| json!({
            "bdev_name": b.bdev_name,
            "generation": b.generation,
            "applied": b.applied,
        })),
    }))
}

/// `config_store_clear {"keep_area": false}`: stop saving; the area is
/// erased (so no boot finds it) unless `keep_area`, and the bdev released.
pub fn clear(m: &mut Model<'_>, p: &Map<String, Value>) -> Result<Value, RpcError> {
    only(p, &["keep_area"])?;
    let keep = match p.get("keep_area") {
        None => false,
        Some(v) => v
            .as_bool()
            .ok_or_else(|| RpcError::params("`keep_area` must be a boolean"))?,
    };
    m.config_store_clear(keep)?;
    Ok(Value::Bool(true))
}

#[cfg(test)]
mod tests;
