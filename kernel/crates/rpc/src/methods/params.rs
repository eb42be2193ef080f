//! Parameter readers the target method modules share: absent and `null`
//! are the same, and every wrong type is an invalid-params error naming the
//! key.

use super::RpcError;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use serde_json::{Map, Value};

pub(super) type Params = Map<String, Value>;

pub(super) fn required<'p>(p: &'p Params, key: &str) -> Result<&'p Value, RpcError> {
    match p.get(key) {
        None | Some(Value::Null) => Err(RpcError::params(format!("missing `{key}`"))),
        Some(v) => Ok(v),
    }
}

pub(super) fn opt_bool(p: &Params, key: &str) -> Result<Option<bool>, RpcError> {
    match p.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(RpcError::params(format!("`{key}` must be a boolean"))),
    }
}

pub(super) fn opt_u64(p: &Params, key: &str) -> Result<Option<u64>, RpcError> {
    match p.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| RpcError::params(format!("`{key}` must be a non-negative integer"))),
    }
}

/// An integer that must fit `max`; the range check proper is the model's.
pub(super) fn opt_num(p: &Params, key: &str, max: u64) -> Result<Option<u64>, RpcError> {
    match opt_u64(p, key)? {
        Some(v) if v > max => Err(RpcError::params(format!(
            "`{key}` {v} must be at most {max}"
        ))),
        v => Ok(v),
    }
}

pub(super) fn opt_u32(p: &Params, key: &str) -> Result<Option<u32>, RpcError> {
    Ok(opt_num(p, key, u32::MAX as u64)?.map(|v| v as u32))
}

pub(super) fn opt_u16(p: &Params, key: &str) -> Result<Option<u16>, RpcError> {
    Ok(opt_num(p, key, u16::MAX as u64)?.map(|v| v as u16))
}

pub(super) fn object<'p>(p: &'p Params, key: &str) -> Result<&'p Params, RpcError> {
    required(p, key)?
        .as_object()
        .ok_or_else(|| RpcError::params(format!("`{key}` must be an object")))
}

/// A list of objects; absent is empty.
pub(super) fn objects<'p>(p: &'p Params, key: &str) -> Result<Vec<&'p Params>, RpcError> {
    match p.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_object()
                    .ok_or_else(|| RpcError::params(format!("`{key}` must hold objects")))
            })
            .collect(),
        Some(_) => Err(RpcError::params(format!("`{key}` must be a list"))),
    }
}

/// A list of strings; absent is empty.
pub(super) fn strings(p: &Params, key: &str) -> Result<Vec<String>, RpcError> {
    match p.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str()
                    .map(String::from)
                    .ok_or_else(|| RpcError::params(format!("`{key}` must hold strings")))
            })
            .collect(),
        Some(_) => Err(RpcError::params(format!("`{key}` must be a list"))),
    }
}

/// SPDK sends a port as a string; a number is taken too. `what` names the
/// field in the error.
pub(super) fn port(v: &Value, what: &str) -> Result<u16, RpcError> {
    let n = match v {
        Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse::<u64>().ok()
        }
        Value::Number(n) => n.as_u64(),
        _ => None,
    };
    n.filter(|n| (1..=65535).contains(n))
        .map(|n| n as u16)
        .ok_or_else(|| RpcError::params(format!("{what} must be a port number, 1-65535")))
}
