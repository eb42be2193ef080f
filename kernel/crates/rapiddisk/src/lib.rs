//! The RapidDisk-style REST API (TCP 9118 on the management NIC): RAM
//! disks, RAM caches over any bdev, system resources and the NVMe-oF
//! targets, over the same object model as the other front ends.
//!
//! [`handle`] takes a parsed HTTP request and the model and returns the
//! response; framing, limits and deadlines are `ironbay-http`'s. Paths are
//! `/v1/<call>/<arg>...`. Every failure (wrong method, unknown path, bad
//! number or name, a refused operation) is HTTP 400 with
//! `{"status":"Failed","message":"..."}`, as RapidDisk's daemon answers.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

mod list;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use ironbay_cache::Mode;
use ironbay_http::{Request, Response};
use ironbay_model::Model;
use serde_json::{Value, json};

pub const PORT: u16 = 9118;
/// The RapidDisk release whose API this follows.
pub const API_VERSION: &str = "7.0.0";
/// No call takes a body; anything sent is read and ignored up to this.
pub const MAX_BODY: usize = 4096;
/// Largest RAM disk size accepted, in MiB (1 PiB): larger numbers are bad
/// numbers, not memory requests.
const MAX_MIB: u64 = 1 << 30;

fn reply(status: u16, v: &Value) -> Response {
    let mut body = serde_json::to_vec(v).unwrap_or_default();
    body.push(b'\n');
    Response::json(status, body)
}

/// RapidDisk's failure shape.
pub fn failed(message: &str) -> Response {
    reply(400, &json!({"status": "Failed", "message": message}))
}

fn success() -> Response {
    reply(200, &json!({"status": "Success"}))
}

/// A size in MiB: decimal digits only, 1 to [`MAX_MIB`].
fn mib(s: &str) -> Result<u64, String> {
    let n = (!s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse::<u64>().ok())
        .flatten()
        .filter(|n| (1..=MAX_MIB).contains(n));
    n.ok_or_else(|| format!("invalid size `{s}`: a whole number of MiB from 1 to {MAX_MIB}"))
}

/// A volume name: printable, no separators, at most 255 bytes.
fn name(s: &str) -> Result<&str, String> {
    let ok = !s.is_empty()
        && s.len() <= ironbay_model::MAX_NAME
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'%' && b != b'\\');
    ok.then_some(s)
        .ok_or_else(|| format!("invalid volume name `{}`", s.escape_debug()))
}

/// Answers one request.
pub fn handle(req: &Request, m: &mut Model<'_>) -> Response {
    let path = req.path();
    let Some(rest) = path.strip_prefix("/v1/") else {
        return failed(&format!("unknown path {}", path.escape_debug()));
    };
    let parts: Vec<&str> = rest.split('/').collect();
    let get = matches!(req.method.as_str(), "GET" | "HEAD");
    let post = req.method == "POST";
    let (call, args) = (parts[0], &parts[1..]);
    let want_get = matches!(
        call,
        "checkServiceStatus"
            | "listAllResources"
            | "listRapidDiskVolumes"
            | "showRapidDiskCacheStats"
            | "listAllNVMeTargets"
            | "listAllNVMePorts"
    );
    let want_post = matches!(
        call,
        "createRapidDisk"
            | "resizeRapidDisk"
            | "flushRapidDisk"
            | "removeRapidDisk"
            | "lockRapidDisk"
            | "unlockRapidDisk"
            | "createRapidDiskCache"
            | "removeRapidDiskCache"
    );
    if !want_get && !want_post {
        return failed(&format!("unknown call {}", call.escape_debug()));
    }
    if (want_get && !get) || (want_post && !post) {
        let m = if want_get { "GET" } else { "POST" };
        return failed(&format!(
            "{call} takes {m}, not {}",
            req.method.escape_debug()
        ));
    }
    let arity = match call {
        "checkServiceStatus" | "listAllResources" | "listRapidDiskVolumes" => 0,
        "listAllNVMeTargets" | "listAllNVMePorts" => 0,
        "resizeRapidDisk" => 2,
        "createRapidDiskCache" => 3,
        _ => 1,
    };
    if args.len() != arity {
        return failed(&format!("{call} takes {arity} path arguments"));
    }
    match dispatch(call, args, m) {
        Ok(r) => r,
        Err(e) => failed(&e),
    }
}

fn dispatch(call: &str, a: &[&str], m: &mut Model<'_>) -> Result<Response, String> {
    let model = |e: ironbay_model::Error| e.message;
    Ok(match call {
        "checkServiceStatus" => reply(200, &json!({"status": "OK", "version": API_VERSION})),
        "listAllResources" => reply(200, &list::resources(m)),
        "listRapidDiskVolumes" => reply(200, &list::volumes(m)),
        "listAllNVMeTargets" => reply(200, &list::nvme_targets(m)),
        "listAllNVMePorts" => reply(
            200,
            &json!({"targets": [{"nvmet_ports": list::nvme_ports(m, false)}]}),
        ),
        "showRapidDiskCacheStats" => reply(200, &list::cache_stats(m, name(a[0])?)?),
        "createRapidDisk" => {
            m.rapiddisk_create(None, mib(a[0])?).map_err(model)?;
            success()
        }
        "resizeRapidDisk" => {
            let size = mib(a[1])?;
            m.rapiddisk_resize(name(a[0])?, size).map_err(model)?;
            success()
        }
        "flushRapidDisk" => {
            m.rapiddisk_flush(name(a[0])?).map_err(model)?;
            success()
        }
        "removeRapidDisk" => {
            m.rapiddisk_remove(name(a[0])?).map_err(model)?;
            success()
        }
        "lockRapidDisk" | "unlockRapidDisk" => {
            m.rapiddisk_lock(name(a[0])?, call == "lockRapidDisk")
                .map_err(model)?;
            success()
        }
        "createRapidDiskCache" => {
            let mode = Mode::from_policy(a[2]).ok_or_else(|| {
                format!(
                    "unknown cache policy `{}`: write-through, write-around or write-back",
                    a[2].escape_debug()
                )
            })?;
            m.cache_create(name(a[0])?, name(a[1])?, mode)
                .map_err(model)?;
            success()
        }
        "removeRapidDiskCache" => {
            m.cache_remove(name(a[0])?).map_err(model)?;
            success()
        }
        _ => return Err(format!("unknown call {call}")),
    })
}
