//! targetd's exports: one iSCSI target node (the configured name) with LUN
//! masking, whose per-initiator maps are the exports, whose ACL CHAP is
//! `initiator_set_auth`, and whose ACL groups are the access groups.
//! The node, a wildcard portal group on 3260 and an open initiator group
//! are made on first use (masking keeps strangers out).

use crate::methods::{Params, backend, parse, pool, volume};
use crate::rpc::{Error, code};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use ironbay_model::Model;
use ironbay_model::iscsi::config::{Acl, NodeSpec, PgIgMap, Portal, Secret};
use serde::Deserialize;
use serde_json::{Value, json};

const ISCSI_PORT: u16 = 3260;
/// Highest host LUN id targetd hands out (its MAX_LUN).
const MAX_LUN: u64 = 255;

fn invalid(e: ironbay_model::Error) -> Error {
    Error::new(code::INVALID, e.message)
}

/// The node's name, making it (and its groups) if it does not exist.
fn node(m: &mut Model<'_>) -> Result<String, Error> {
    let name = m.targetd().map_err(backend)?.target_name.clone();
    if m.iscsi_config().is_some_and(|c| c.node(&name).is_some()) {
        return Ok(name);
    }
    m.iscsi_configure(|c, bdevs| {
        let pg = match c.portal_groups.iter().find(|g| {
            !g.private
                && g.portals
                    .iter()
                    .any(|p| p.port == ISCSI_PORT && matches!(p.host.as_str(), "0.0.0.0" | "[::]"))
        }) {
            Some(g) => g.tag,
            None => {
                let tag = (1..=u16::MAX as u32)
                    .find(|t| c.portal_group(*t).is_none())
                    .unwrap_or(0);
                let portal = Portal {
                    host: "0.0.0.0".into(),
                    port: ISCSI_PORT,
                };
                c.create_portal_group(tag, alloc::vec![portal], false)?;
                tag
            }
        };
        let any = |v: &[String]| v.len() == 1 && v[0].eq_ignore_ascii_case("ANY");
        let ig = match c
            .initiator_groups
            .iter()
            .find(|g| any(&g.initiators) && any(&g.netmasks))
        {
            Some(g) => g.tag,
            None => {
                let tag = (1..=u16::MAX as u32)
                    .find(|t| c.initiator_group(*t).is_none())
                    .unwrap_or(0);
                c.create_initiator_group(
                    tag,
                    alloc::vec!["ANY".into()],
                    alloc::vec!["ANY".into()],
                )?;
                tag
            }
        };
        let spec = NodeSpec {
            name: name.clone(),
            alias: "targetd".into(),
            pg_ig_maps: alloc::vec![PgIgMap {
                pg_tag: pg,
                ig_tag: ig
            }],
            queue_depth: c.options.max_queue_depth.min(128),
            ..Default::default()
        };
        let full = c.create_target_node(spec, bdevs)?;
        c.set_masked(&full, true)?;
        Ok(full)
    })
    .map_err(invalid)
}

fn acls(m: &Model<'_>) -> Vec<Acl> {
    let Some(name) = m.targetd.as_deref().map(|s| s.target_name.clone()) else {
        return Vec::new();
    };
    m.iscsi_config()
        .and_then(|c| c.node(&name))
        .map(|n| n.acls.clone())
        .unwrap_or_default()
}

/// (pool, volume) of a LUN's bdev, if it is a volume of a pool targetd uses.
fn lun_volume(
    m: &mut Model<'_>,
    bdev: ironbay_bdev::BdevId,
) -> Option<(String, ironbay_lvol::VolumeInfo)> {
    let (store, vol) = m.lvol_of(bdev)?;
    m.targetd()
        .ok()?
        .pool_allowed(&store.name)
        .then_some((store.name, vol))
}

pub fn export_list(m: &mut Model<'_>, p: &Params) -> Result<Value, Error> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct P {}
    let _: P = parse(p)?;
    let mut out = Vec::new();
    for a in acls(m) {
        for l in &a.luns {
            if let Some((pool, v)) = lun_volume(m, l.bdev) {
                out.push(json!({
                    "initiator_wwn": a.initiator,
                    "lun": l.id,
                    "vol_name": v.name,
                    "pool": pool,
                    "vol_uuid": v.uuid.to_string(),
                    "vol_size": v.size_bytes,
                }));
            }
        }
    }
    Ok(Value::Array(out))
}

pub fn export_create(m: &mut Model<'_>, p: &Params) -> Result<Value, Error> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct P {
        pool: String,
        vol: String,
        initiator_wwn: String,
        lun: u64,
    }
    let a: P = parse(p)?;
    pool(m, &a.pool)?;
    let v = volume(m, &a.pool, &a.vol)?;
    let name = node(m)?;
    let bdev = v.uuid.to_string();
    m.iscsi_configure(|c, bdevs| c.map_lun(&name, &a.initiator_wwn, &bdev, Some(a.lun), bdevs))
        .map_err(invalid)?;
    Ok(Value::Null)
}

pub fn export_destroy(m: &mut Model<'_>, p: &Params) -> Result<Value, Error> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct P {
        pool: String,
        vol: String,
        initiator_wwn: String,
    }
    let a: P = parse(p)?;
    pool(m, &a.pool)?;
    let v = volume(m, &a.pool, &a.vol)?;
    let not_found = || {
        Error::new(
            code::NOT_FOUND_VOLUME_EXPORT,
            format!(
                "Volume '{}' not found in {} exports",
                a.vol, a.initiator_wwn
            ),
        )
    };
    let name = m.targetd().map_err(backend)?.target_name.clone();
    let Some(bdev) = m.bdevs.find(&v.uuid.to_string()) else {
        return Err(not_found());
    };
    if m.iscsi_config().is_none_or(|c| c.node(&name).is_none()) {
        return Err(not_found());
    }
    let ids = m
        .iscsi_configure(|c, _| c.unmap_lun(&name, &a.initiator_wwn, bdev))
        .map_err(invalid)?;
    if ids.is_empty() {
        return Err(not_found());
    }
    Ok(Value::Null)
}

pub fn initiator_set_auth(m: &mut Model<'_>, p: &Params) -> Result<Value, Error> {
    // All five keys, null allowed (targetd's signature).
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct P {
        initiator_wwn: String,
        in_user: Option<String>,
        in_pass: Option<String>,
        out_user: Option<String>,
        out_pass: Option<String>,
    }
    for k in ["in_user", "in_pass", "out_user", "out_pass"] {
        if !p.contains_key(k) {
            return Err(Error::new(
                code::INVALID_PARAMS,
                format!("invalid method arguments: missing `{k}`"),
            ));
        }
    }
    let a: P = parse(p)?;
    let set = |u: Option<String>, s: Option<String>| match (u, s) {
        (Some(u), Some(s)) if !u.is_empty() && !s.is_empty() => Some((u, s)),
        _ => None,
    };
    let chap = match (set(a.in_user, a.in_pass), set(a.out_user, a.out_pass)) {
        (Some((user, secret)), out) => Some(Secret {
            user,
            secret,
            muser: out.as_ref().map(|o| o.0.clone()),
            msecret: out.map(|o| o.1),
        }),
        (None, None) => None,
        (None, Some(_)) => {
            return Err(Error::new(
                code::INVALID_PARAMS,
                "the target authenticates back only to an initiator that authenticates: set in_user and in_pass too",
            ));
        }
    };
    let name = node(m)?;
    m.iscsi_configure(|c, _| c.set_acl_chap(&name, &a.initiator_wwn, chap))
        .map_err(invalid)?;
    Ok(Value::Null)
}

/// Python's truth of a JSON value (targetd tests `if standalone_only`).
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

pub fn initiator_list(m: &mut Model<'_>, p: &Params) -> Result<Value, Error> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct P {
        standalone_only: Option<Value>,
    }
    let a: P = parse(p)?;
    let standalone = a.standalone_only.as_ref().is_some_and(truthy);
    let list: Vec<Value> = acls(m)
        .iter()
        .filter(|x| !standalone || x.group.is_none())
        .map(|x| json!({ "init_id": x.initiator, "init_type": "iscsi" }))
        .collect();
    Ok(Value::Array(list))
}

fn check_iscsi(init_type: &str) -> Result<(), Error> {
    if init_type == "iscsi" {
        Ok(())
    } else {
        Err(Error::new(
            code::NO_SUPPORT,
            format!("initiator type {init_type} is not supported: iscsi only"),
        ))
    }
}

fn check_group_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::new(
            code::INVALID_PARAMS,
            "Illegal name, should match: ^[a-zA-Z0-9_-]+$",
        ))
    }
}

fn members(acls: &[Acl], group: &str) -> Vec<String> {
    acls.iter()
        .filter(|a| a.group.as_deref() == Some(group))
        .map(|a| a.initiator.clone())
        .collect()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Member {
    ag_name: String,
    init_id: String,
    init_type: String,
}

pub fn access_group_list(m: &mut Model<'_>, p: &Params) -> Result<Value, Error> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct P {}
    let _: P = parse(p)?;
    let acls = acls(m);
    let mut names: Vec<String> = acls.iter().filter_map(|a| a.group.clone()).collect();
    names.sort();
    names.dedup();
    let list: Vec<Value> = names
        .iter()
        .map(|g| json!({ "name": g, "init_ids": members(&acls, g), "init_type": "iscsi" }))
        .collect();
    Ok(Value::Array(list))
}

pub fn access_group_create(m: &mut Model<'_>, p: &Params) -> Result<Value, Error> {
    let a: Member = parse(p)?;
    check_iscsi(&a.init_type)?;
    check_group_name(&a.ag_name)?;
    let acls = acls(m);
    if acls
        .iter()
        .any(|x| x.group.as_deref() == Some(a.ag_name.as_str()))
    {
        return Err(Error::new(
            code::NAME_CONFLICT,
            "Access group with that name exists",
        ));
    }
    if acls
        .iter()
        .any(|x| x.initiator.eq_ignore_ascii_case(&a.init_id))
    {
        return Err(Error::new(
            code::EXISTS_INITIATOR,
            format!("{} is in use already", a.init_id),
        ));
    }
    let name = node(m)?;
    m.iscsi_configure(|c, _| c.set_acl_group(&name, &a.init_id, Some(&a.ag_name)))
        .map_err(invalid)?;
    Ok(Value::Null)
}

pub fn access_group_destroy(m: &mut Model<'_>, p: &Params) -> Result<Value, Error> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct P {
        ag_name: String,
    }
    let a: P = parse(p)?;
    let gone = members(&acls(m), &a.ag_name);
    if gone.is_empty() {
        return Ok(Value::Null);
    }
    let name = node(m)?;
    m.iscsi_configure(|c, _| {
        for i in &gone {
            c.remove_acl(&name, i)?;
        }
        Ok(())
    })
    .map_err(invalid)?;
    Ok(Value::Null)
}

pub fn access_group_init_add(m: &mut Model<'_>, p: &Params) -> Result<Value, Error> {
    let a: Member = parse(p)?;
    check_iscsi(&a.init_type)?;
    let acls = acls(m);
    if let Some(x) = acls
        .iter()
        .find(|x| x.initiator.eq_ignore_ascii_case(&a.init_id))
    {
        if x.group.as_deref() == Some(a.ag_name.as_str()) {
            return Ok(Value::Null);
        }
        return Err(Error::new(
            code::EXISTS_INITIATOR,
            format!("{} is in use already", a.init_id),
        ));
    }
    check_group_name(&a.ag_name)?;
    // The newcomer sees what the group sees.
    let luns: Vec<(String, u64)> = acls
        .iter()
        .find(|x| x.group.as_deref() == Some(a.ag_name.as_str()))
        .map(|x| x.luns.iter().map(|l| (l.bdev_name.clone(), l.id)).collect())
        .unwrap_or_default();
    let name = node(m)?;
    m.iscsi_configure(|c, bdevs| {
        c.set_acl_group(&name, &a.init_id, Some(&a.ag_name))?;
        for (bdev, id) in &luns {
            c.map_lun(&name, &a.init_id, bdev, Some(*id), bdevs)?;
        }
        Ok(())
    })
    .map_err(invalid)?;
    Ok(Value::Null)
}

pub fn access_group_init_del(m: &mut Model<'_>, p: &Params) -> Result<Value, Error> {
    let a: Member = parse(p)?;
    check_iscsi(&a.init_type)?;
    let acls = acls(m);
    let member = acls.iter().any(|x| {
        x.initiator.eq_ignore_ascii_case(&a.init_id)
            && x.group.as_deref() == Some(a.ag_name.as_str())
    });
    if !member {
        return Ok(Value::Null);
    }
    let name = node(m)?;
    m.iscsi_configure(|c, _| c.remove_acl(&name, &a.init_id))
        .map_err(invalid)?;
    Ok(Value::Null)
}

pub fn access_group_map_list(m: &mut Model<'_>, p: &Params) -> Result<Value, Error> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct P {}
    let _: P = parse(p)?;
    let acls = acls(m);
    let mut seen: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for a in &acls {
        let Some(g) = &a.group else { continue };
        if seen.contains(g) {
            continue;
        }
        seen.push(g.clone());
        for l in &a.luns {
            if let Some((pool, v)) = lun_volume(m, l.bdev) {
                out.push(json!({
                    "ag_name": g, "h_lun_id": l.id, "pool_name": pool, "vol_name": v.name
                }));
            }
        }
    }
    Ok(Value::Array(out))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupMap {
    pool_name: String,
    vol_name: String,
    ag_name: String,
    h_lun_id: Option<u64>,
}

pub fn access_group_map_create(m: &mut Model<'_>, p: &Params) -> Result<Value, Error> {
    let a: GroupMap = parse(p)?;
    pool(m, &a.pool_name)?;
    let v = volume(m, &a.pool_name, &a.vol_name)?;
    let acls = acls(m);
    let group: Vec<&Acl> = acls
        .iter()
        .filter(|x| x.group.as_deref() == Some(a.ag_name.as_str()))
        .collect();
    let Some(first) = group.first() else {
        return Err(Error::new(
            code::NOT_FOUND_ACCESS_GROUP,
            "Access group not found",
        ));
    };
    let bdev = v.uuid.to_string();
    let id = m.bdevs.find(&bdev);
    if first.luns.iter().any(|l| Some(l.bdev) == id) {
        return Ok(Value::Null);
    }
    let lun = match a.h_lun_id {
        Some(l) => l,
        None => (0..=MAX_LUN)
            .find(|k| group.iter().all(|x| x.lun(*k).is_none()))
            .ok_or_else(|| {
                Error::new(
                    code::NO_FREE_HOST_LUN_ID,
                    format!("All host LUN ID 0 ~ {MAX_LUN} is in use"),
                )
            })?,
    };
    let who: Vec<String> = group.iter().map(|x| x.initiator.clone()).collect();
    let name = node(m)?;
    m.iscsi_configure(|c, bdevs| {
        for i in &who {
            c.map_lun(&name, i, &bdev, Some(lun), bdevs)?;
        }
        Ok(())
    })
    .map_err(invalid)?;
    Ok(Value::Null)
}

pub fn access_group_map_destroy(m: &mut Model<'_>, p: &Params) -> Result<Value, Error> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct P {
        pool_name: String,
        vol_name: String,
        ag_name: String,
    }
    let a: P = parse(p)?;
    pool(m, &a.pool_name)?;
    let v = volume(m, &a.pool_name, &a.vol_name)?;
    let who = members(&acls(m), &a.ag_name);
    let Some(bdev) = m.bdevs.find(&v.uuid.to_string()) else {
        return Ok(Value::Null);
    };
    if who.is_empty() {
        return Ok(Value::Null);
    }
    let name = node(m)?;
    m.iscsi_configure(|c, _| {
        for i in &who {
            c.unmap_lun(&name, i, bdev)?;
        }
        Ok(())
    })
    .map_err(invalid)?;
    Ok(Value::Null)
}

/// Whether targetd's node serves the volume to anyone (vol_destroy's -303).
pub fn mapped(m: &Model<'_>, bdev: ironbay_bdev::BdevId) -> bool {
    m.iscsi_config().is_some_and(|c| {
        c.nodes
            .iter()
            .flat_map(|n| &n.acls)
            .flat_map(|a| &a.luns)
            .any(|l| l.bdev == bdev)
    })
}
