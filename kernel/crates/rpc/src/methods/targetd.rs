//! The targetd API's settings over JSON-RPC: `targetd_set_auth` (a user
//! and a password, kept only as a salted hash; or the hash itself, as the
//! saved configuration replays it), `targetd_set_options`,
//! `targetd_get_options`, and the `targetd` subsystem of the saved config.

use super::RpcError;
use super::params::{Params, parse};
use alloc::string::String;
use alloc::vec::Vec;
use ironbay_model::Model;
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetAuth {
    user: Option<String>,
    password: Option<String>,
    password_hash: Option<String>,
}

pub fn set_auth(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    let a: SetAuth = parse(p)?;
    let s = m.targetd()?;
    let user = a.user.unwrap_or_else(|| s.user.clone());
    if s.pinned {
        // The command line's password wins; a saved one replayed at boot
        // is passed over quietly.
        if a.password.is_some() {
            return Err(RpcError {
                code: super::code::INVALID_STATE,
                message: "the targetd password is set on the command line (targetd.password=)"
                    .into(),
            });
        }
        return Ok(Value::Bool(true));
    }
    match (a.password, a.password_hash) {
        (Some(pw), None) => s.set_password(&user, &pw)?,
        (None, Some(h)) => s.set_password_hash(&user, &h)?,
        _ => {
            return Err(RpcError::params(
                "give exactly one of `password` and `password_hash`",
            ));
        }
    }
    Ok(Value::Bool(true))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetOptions {
    target_name: Option<String>,
    pools: Option<Vec<String>>,
    thin_provision: Option<bool>,
    /// Per pool, overriding `thin_provision`: `{"lvs0": false}`.
    pool_thin_provision: Option<alloc::collections::BTreeMap<String, bool>>,
}

pub fn set_options(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    let o: SetOptions = parse(p)?;
    let per_pool: Option<Vec<(String, bool)>> =
        o.pool_thin_provision.map(|m| m.into_iter().collect());
    if per_pool.as_ref().is_some_and(|l| l.len() > 1024) {
        return Err(RpcError::params(
            "at most 1024 pools in `pool_thin_provision`",
        ));
    }
    let s = m.targetd()?;
    s.set_options(o.target_name.as_deref(), o.pools, o.thin_provision)?;
    if let Some(l) = per_pool {
        s.set_pool_thin(l)?;
    }
    Ok(Value::Bool(true))
}

pub fn get_options(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    super::no_params(p)?;
    let s = m.targetd()?;
    Ok(json!({
        "user": s.user,
        "password_set": s.has_password(),
        "target_name": s.target_name,
        "pools": s.pools,
        "thin_provision": s.thin,
        "pool_thin_provision": per_pool_json(s),
    }))
}

/// The settings as method calls; the password only as its hash (one set on
/// the command line is not saved: the command line brings it every boot).
pub fn config(m: &mut Model<'_>) -> Vec<Value> {
    let Some(s) = m.targetd.as_deref() else {
        return Vec::new();
    };
    let mut calls = alloc::vec![json!({
        "method": "targetd_set_options",
        "params": {
            "target_name": s.target_name,
            "pools": s.pools,
            "thin_provision": s.thin,
            "pool_thin_provision": per_pool_json(s),
        }
    })];
    if let (Some(h), false) = (s.password_hash(), s.pinned) {
        calls.push(json!({
            "method": "targetd_set_auth",
            "params": { "user": s.user, "password_hash": h }
        }));
    }
    calls
}

fn per_pool_json(s: &ironbay_model::targetd::Settings) -> Value {
    Value::Object(
        s.pool_thin
            .iter()
            .map(|(p, t)| (p.clone(), Value::Bool(*t)))
            .collect(),
    )
}
