//! LUN masking on a target node (ours; SPDK has none): per-initiator LUN
//! maps, CHAP credentials and access groups, as targetd's exports need
//! them. The saved configuration replays them with these methods.

use super::RpcError;
use super::params::{Params, parse};
use alloc::string::String;
use alloc::vec::Vec;
use ironbay_model::Model;
use ironbay_model::iscsi::config::{Secret, TargetNode};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetMasking {
    name: String,
    masked: bool,
}

pub fn set_masking(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    let a: SetMasking = parse(p)?;
    m.iscsi_configure(|c, _| c.set_masked(&a.name, a.masked))?;
    Ok(Value::Bool(true))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetInitiator {
    name: String,
    initiator_name: String,
    group: Option<String>,
    chap_user: Option<String>,
    chap_secret: Option<String>,
    mutual_user: Option<String>,
    mutual_secret: Option<String>,
}

/// An initiator's group and CHAP credentials on a node (absent: none).
pub fn set_initiator(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    let a: SetInitiator = parse(p)?;
    let chap = match (a.chap_user, a.chap_secret) {
        (Some(user), Some(secret)) => Some(Secret {
            user,
            secret,
            muser: a.mutual_user,
            msecret: a.mutual_secret,
        }),
        (None, None) if a.mutual_user.is_none() && a.mutual_secret.is_none() => None,
        _ => {
            return Err(RpcError::params(
                "give `chap_user` and `chap_secret` together (mutual credentials need them)",
            ));
        }
    };
    m.iscsi_configure(|c, _| {
        c.set_acl_group(&a.name, &a.initiator_name, a.group.as_deref())?;
        c.set_acl_chap(&a.name, &a.initiator_name, chap)
    })?;
    Ok(Value::Bool(true))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MapLun {
    name: String,
    initiator_name: String,
    bdev_name: String,
    lun_id: Option<u64>,
}

pub fn map_lun(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    let a: MapLun = parse(p)?;
    let id = m.iscsi_configure(|c, bdevs| {
        c.map_lun(&a.name, &a.initiator_name, &a.bdev_name, a.lun_id, bdevs)
    })?;
    Ok(id.into())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UnmapLun {
    name: String,
    initiator_name: String,
    bdev_name: String,
}

pub fn unmap_lun(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    let a: UnmapLun = parse(p)?;
    let bdev = m.find(&a.bdev_name)?;
    let ids = m.iscsi_configure(|c, _| c.unmap_lun(&a.name, &a.initiator_name, bdev))?;
    Ok(ids.into())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveInitiator {
    name: String,
    initiator_name: String,
}

pub fn remove_initiator(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    let a: RemoveInitiator = parse(p)?;
    m.iscsi_configure(|c, _| c.remove_acl(&a.name, &a.initiator_name))?;
    Ok(Value::Bool(true))
}

/// The calls that rebuild a masked node's ACLs (after its create).
pub(super) fn config(n: &TargetNode) -> Vec<Value> {
    let call = |method: &str, params: Value| json!({ "method": method, "params": params });
    let mut calls = Vec::new();
    if !n.masked {
        return calls;
    }
    calls.push(call(
        "iscsi_target_node_set_masking",
        json!({ "name": n.name, "masked": true }),
    ));
    for a in &n.acls {
        if a.group.is_some() || a.chap.is_some() {
            let mut p = json!({ "name": n.name, "initiator_name": a.initiator });
            if let Some(g) = &a.group {
                p["group"] = g.clone().into();
            }
            if let Some(s) = &a.chap {
                p["chap_user"] = s.user.clone().into();
                p["chap_secret"] = s.secret.clone().into();
                if let (Some(u), Some(x)) = (&s.muser, &s.msecret) {
                    p["mutual_user"] = u.clone().into();
                    p["mutual_secret"] = x.clone().into();
                }
            }
            calls.push(call("iscsi_target_node_set_initiator", p));
        }
        for l in &a.luns {
            calls.push(call(
                "iscsi_target_node_map_lun",
                json!({
                    "name": n.name, "initiator_name": a.initiator,
                    "bdev_name": l.bdev_name, "lun_id": l.id
                }),
            ));
        }
    }
    calls
}

/// A node's masking for `iscsi_get_target_nodes` (secrets left out).
pub(super) fn view(n: &TargetNode) -> Value {
    let acls: Vec<Value> = n
        .acls
        .iter()
        .map(|a| {
            let luns: Vec<Value> = a
                .luns
                .iter()
                .map(|l| json!({ "lun_id": l.id, "bdev_name": l.bdev_name }))
                .collect();
            json!({
                "initiator_name": a.initiator,
                "group": a.group,
                "chap": a.chap.is_some(),
                "mutual_chap": a.chap.as_ref().is_some_and(|s| s.muser.is_some()),
                "luns": luns,
            })
        })
        .collect();
    json!({ "masked": n.masked, "initiators": acls })
}
