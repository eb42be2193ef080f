//! Parameter readers the method modules share. Newer methods decode their
//! parameters into one `#[serde(deny_unknown_fields)]` struct each with
//! [`parse`]; the target methods read keys one by one with the helpers
//! below. Either way absent and `null` are the same, and every wrong type
//! is an invalid-params error naming the key.

use super::RpcError;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use ironbay_bdev::Uuid;
use serde::Deserialize;
use serde::de::{self, DeserializeOwned, IntoDeserializer};
use serde_json::{Map, Value};

pub(super) type Params = Map<String, Value>;

/// Decodes `p` into `T` (a `#[serde(deny_unknown_fields)]` struct); every
/// decoding error is invalid params, in the words the hand-read methods
/// use: "missing `key`", "unknown parameter `key`", and a wrong value named
/// by its key ("`key` must be a string", or "`key`: ..." when the message
/// begins with a colon).
pub(super) fn parse<T: DeserializeOwned>(p: &Params) -> Result<T, RpcError> {
    T::deserialize(Keyed(p)).map_err(|Refused(m)| RpcError::params(m))
}

/// Why parameters did not decode.
#[derive(Debug)]
struct Refused(String);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl core::error::Error for Refused {}

impl de::Error for Refused {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Refused(msg.to_string())
    }

    fn missing_field(field: &'static str) -> Self {
        Refused(format!("missing `{field}`"))
    }

    fn unknown_field(field: &str, _expected: &'static [&'static str]) -> Self {
        Refused(format!("unknown parameter `{field}`"))
    }
}

/// The parameters as a serde map whose value errors name their key
/// (serde_json's own deserializer does not say which key was wrong).
struct Keyed<'p>(&'p Params);

impl<'de> de::Deserializer<'de> for Keyed<'de> {
    type Error = Refused;

    fn deserialize_any<V: de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, Refused> {
        visitor.visit_map(Entries {
            iter: self.0.iter(),
            value: None,
        })
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

struct Entries<'p> {
    iter: serde_json::map::Iter<'p>,
    value: Option<(&'p str, &'p Value)>,
}

impl<'de> de::MapAccess<'de> for Entries<'de> {
    type Error = Refused;

    fn next_key_seed<K: de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Refused> {
        let Some((key, value)) = self.iter.next() else {
            return Ok(None);
        };
        self.value = Some((key, value));
        seed.deserialize(key.as_str().into_deserializer()).map(Some)
    }

    fn next_value_seed<S: de::DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<S::Value, Refused> {
        let (key, value) = self
            .value
            .take()
            .ok_or_else(|| Refused("a value without its key".into()))?;
        seed.deserialize(value).map_err(|e| {
            let why = e.to_string();
            let gap = if why.starts_with(':') { "" } else { " " };
            Refused(format!("`{key}`{gap}{why}"))
        })
    }
}

// Field readers for `#[serde(deserialize_with = ...)]`, with the messages
// the hand-read methods give (`parse` puts the key in front). Optional
// fields also need `#[serde(default)]`; `null` is absent.

/// An optional UUID, as a string.
pub(super) fn uuid(s: Option<&str>) -> Result<Option<Uuid>, RpcError> {
    s.map(|s| Uuid::parse(s).ok_or_else(|| RpcError::params(format!("`uuid` {s} is not a UUID"))))
        .transpose()
}

/// A non-negative integer.
pub(super) fn count<'de, D: de::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    Value::deserialize(d)?
        .as_u64()
        .ok_or_else(|| de::Error::custom("must be a non-negative integer"))
}

/// A non-negative integer, or absent.
pub(super) fn opt_count<'de, D: de::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        v => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| de::Error::custom("must be a non-negative integer")),
    }
}

/// A string that is not empty.
pub(super) fn name<'de, D: de::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match Value::deserialize(d)? {
        Value::String(s) if !s.is_empty() => Ok(s),
        _ => Err(de::Error::custom("must be a non-empty string")),
    }
}

/// A string, or absent.
pub(super) fn opt_string<'de, D: de::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s)),
        _ => Err(de::Error::custom("must be a string")),
    }
}

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
