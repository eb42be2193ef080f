//! NBD exports (`nbd_*`). The appliance has no /dev/nbdX: `nbd_device`
//! names the export, and is what NBD clients ask for. Parameters are typed,
//! one struct per method, refusing unknown fields.

use super::RpcError;
use super::params::{Params, name, opt_string, parse};
use alloc::string::String;
use alloc::vec::Vec;
use ironbay_model::Model;
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetDisks {
    #[serde(default, deserialize_with = "opt_string")]
    nbd_device: Option<String>,
}

pub(super) fn get_disks(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    let p: GetDisks = parse(p)?;
    Ok(Value::Array(
        m.nbd_exports_list()
            .into_iter()
            .filter(|(export, _)| p.nbd_device.as_ref().is_none_or(|w| w == export))
            .map(|(export, bdev)| json!({ "bdev_name": bdev, "nbd_device": export }))
            .collect(),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StartDisk {
    #[serde(deserialize_with = "name")]
    bdev_name: String,
    /// The export's name; the bdev's name if absent.
    #[serde(default, deserialize_with = "opt_string")]
    nbd_device: Option<String>,
}

/// Exports a bdev over NBD; returns the export's name.
pub(super) fn start_disk(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    let p: StartDisk = parse(p)?;
    Ok(Value::String(
        m.export_nbd(&p.bdev_name, p.nbd_device.as_deref())?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StopDisk {
    #[serde(deserialize_with = "name")]
    nbd_device: String,
}

pub(super) fn stop_disk(m: &mut Model<'_>, p: &Params) -> Result<Value, RpcError> {
    let p: StopDisk = parse(p)?;
    m.unexport_nbd(&p.nbd_device)?;
    Ok(Value::Bool(true))
}

/// NBD exports started by name (`nbd_start_disk`); a bdev's export under
/// its own name comes back by itself. Only where the caller serves NBD.
pub(super) fn config(m: &Model<'_>) -> Vec<Value> {
    m.nbd_exports_list()
        .into_iter()
        .filter(|(export, bdev)| export != bdev)
        .map(|(export, bdev)| {
            json!({
                "method": "nbd_start_disk",
                "params": { "bdev_name": bdev, "nbd_device": export }
            })
        })
        .collect()
}
