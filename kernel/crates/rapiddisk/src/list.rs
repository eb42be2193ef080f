//! The listings, in RapidDisk's JSON shapes.

use alloc::string::String;
use alloc::vec::Vec;
use ironbay_cache::Mode;
use ironbay_model::Model;
use serde_json::{Map, Value, json};

pub fn resources(m: &mut Model<'_>) -> Value {
    let (total, free) = m.memory();
    let disks: Vec<Value> = m
        .disks()
        .into_iter()
        .map(|d| json!({"device": d.name, "size": d.size, "vendor": d.vendor, "model": d.model}))
        .collect();
    json!({"resources": [
        {"memory": [{"mem_total": total, "mem_free": free}]},
        {"volumes": disks},
    ]})
}

pub fn volumes(m: &mut Model<'_>) -> Value {
    let (disks, caches) = m.rapiddisk_list();
    let disks: Vec<Value> = disks
        .into_iter()
        .map(|d| {
            json!({
                "device": d.name,
                "size": d.size,
                "usage": d.usage,
                "status": if d.locked { "locked" } else { "unlocked" },
            })
        })
        .collect();
    let caches: Vec<Value> = caches
        .into_iter()
        .map(|c| json!({"device": c.name, "cache": c.cache, "source": c.source, "mode": c.mode.policy()}))
        .collect();
    json!({"volumes": [{"rapiddisk": disks}, {"rapiddisk_cache": caches}]})
}

pub fn cache_stats(m: &mut Model<'_>, name: &str) -> Result<Value, String> {
    let (mode, s) = m.cache_stats(name).map_err(|e| e.message)?;
    let mut stats = Map::new();
    stats.insert("device".into(), Value::String(name.into()));
    let fields: &[(&str, u64)] = if mode == Mode::WriteBack {
        &s.writeback()
    } else {
        &s.counters()
    };
    for &(k, v) in fields {
        stats.insert(k.into(), v.into());
    }
    Ok(json!({"statistics": [{"cache_stats": [stats]}]}))
}

/// Listeners numbered from 1 in the order subsystems name them (Linux
/// nvmet's ports), one entry per subsystem that uses them when `with_nqn`.
pub fn nvme_ports(m: &Model<'_>, with_nqn: bool) -> Vec<Value> {
    let Some(t) = m.nvmf.as_deref() else {
        return Vec::new();
    };
    let mut ports: Vec<(String, u16)> = Vec::new();
    let mut out = Vec::new();
    for s in &t.config.subsystems {
        for l in &s.listeners {
            let key = (l.traddr.clone(), l.port);
            let n = match ports.iter().position(|p| *p == key) {
                Some(i) => i + 1,
                None => {
                    ports.push(key);
                    if !with_nqn {
                        out.push(port(ports.len(), l, None));
                    }
                    ports.len()
                }
            };
            if with_nqn {
                out.push(port(n, l, Some(&s.nqn)));
            }
        }
    }
    out
}

fn port(n: usize, l: &ironbay_model::nvmf::config::Listener, nqn: Option<&str>) -> Value {
    let mut v = json!({
        "port": n,
        "address": l.traddr,
        "protocol": l.trtype.name().to_ascii_lowercase(),
        "trsvcid": l.port,
    });
    if let (Some(nqn), Some(o)) = (nqn, v.as_object_mut()) {
        o.insert("nqn".into(), Value::String(nqn.into()));
    }
    v
}

pub fn nvme_targets(m: &Model<'_>) -> Value {
    let mut targets = Vec::new();
    if let Some(t) = m.nvmf.as_deref() {
        for s in &t.config.subsystems {
            for ns in &s.namespaces {
                targets.push(json!({
                    "nqn": s.nqn,
                    "namespace": ns.nsid,
                    "device": ns.bdev_name,
                    "enabled": "true",
                }));
            }
        }
    }
    json!({"targets": [{"nvmet_targets": targets}, {"nvmet_ports": nvme_ports(m, true)}]})
}
