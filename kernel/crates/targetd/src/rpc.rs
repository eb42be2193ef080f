//! The JSON-RPC 2.0 envelope as targetd reads it: one request object per
//! body (no batches, no notifications), parameters by name, integer ids.

use crate::methods;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use serde_json::{Map, Value, json};

/// JSON-RPC and targetd error codes.
pub mod code {
    pub const INVALID: i64 = -1;
    pub const NAME_CONFLICT: i64 = -50;
    pub const EXISTS_INITIATOR: i64 = -52;
    pub const NOT_FOUND_VOLUME: i64 = -103;
    pub const INVALID_POOL: i64 = -110;
    pub const NOT_FOUND_VOLUME_EXPORT: i64 = -151;
    pub const NO_SUPPORT: i64 = -153;
    pub const NOT_FOUND_ACCESS_GROUP: i64 = -200;
    /// Both "a backend step failed" and "the volume is exported", as in
    /// targetd.
    pub const UNEXPECTED_EXIT_CODE: i64 = -303;
    pub const VOLUME_MASKED: i64 = -303;
    pub const NO_FREE_HOST_LUN_ID: i64 = -1000;
    pub const INVALID_REQUEST: i64 = -32600;
    pub const METHOD_NOT_FOUND: i64 = -32601;
    pub const INVALID_PARAMS: i64 = -32602;
    pub const PARSE_ERROR: i64 = -32700;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub code: i64,
    pub message: String,
}

impl Error {
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        Error {
            code,
            message: message.into(),
        }
    }
}

fn reply(id: i64, r: Result<Value, Error>) -> Vec<u8> {
    let v = match r {
        Ok(result) => json!({ "result": result, "id": id, "jsonrpc": "2.0" }),
        Err(e) => json!({
            "error": { "code": e.code, "message": e.message },
            "id": id,
            "jsonrpc": "2.0"
        }),
    };
    serde_json::to_vec(&v).unwrap_or_default()
}

/// targetd takes any id its `int()` takes: integers, numeric strings,
/// floats (truncated) and booleans.
fn int_id(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => s.trim().parse().ok(),
        Value::Bool(b) => Some(*b as i64),
        _ => None,
    }
}

/// The response body for a request body.
pub fn answer(body: &[u8], m: &mut ironbay_model::Model<'_>) -> Vec<u8> {
    let req: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(_) => return reply(0, Err(Error::new(code::PARSE_ERROR, "parse error"))),
    };
    let Value::Object(req) = req else {
        return reply(
            0,
            Err(Error::new(
                code::INVALID,
                "jsonrpc error: the body must be one request object (no batches)",
            )),
        );
    };
    let invalid = || {
        reply(
            0,
            Err(Error::new(
                code::INVALID_REQUEST,
                "not a valid jsonrpc-2.0 request",
            )),
        )
    };
    if req.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return invalid();
    }
    let Some(method) = req.get("method").and_then(Value::as_str) else {
        return invalid();
    };
    let Some(id) = req.get("id").and_then(int_id) else {
        return invalid();
    };
    let empty = Map::new();
    let params = match req.get("params") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(p)) => p,
        Some(Value::Array(a)) if a.is_empty() => &empty,
        Some(_) => {
            return reply(
                id,
                Err(Error::new(
                    code::INVALID_PARAMS,
                    "invalid method arguments: params go by name, in an object",
                )),
            );
        }
    };
    let r = match methods::find(method) {
        Some(f) => f(m, params),
        None => Err(Error::new(
            code::METHOD_NOT_FOUND,
            format!("method {method} not found"),
        )),
    };
    if let Err(e) = &r {
        log::info!("targetd: {method} failed: {} ({})", e.message, e.code);
    }
    reply(id, r)
}
