//! Reading a command's `arguments` with the reference server's errors.
//!
//! A handler asks for each member it knows, then calls [`Args::finish`],
//! which reports the first member nobody asked for:
//!
//! ```
//! # use ironbay_qmp::{Args, QmpError};
//! # use serde_json::json;
//! # fn main() -> Result<(), QmpError> {
//! let v = json!({"node-name": "disk0", "writable": true});
//! let mut args = Args::new(v.as_object().unwrap());
//! let node = args.req_str("node-name")?;
//! let writable = args.opt_bool("writable")?.unwrap_or(false);
//! args.finish()?;
//! # assert_eq!((node, writable), ("disk0", true));
//! # Ok(())
//! # }
//! ```
//!
//! Members of nested objects and array elements are named by their path
//! (`options.size`, `enable[1]`), as the reference server names them.
//! A JSON `null` is never taken for an absent optional member: it is a type
//! error like any other wrong type.

use crate::error::QmpError;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use serde_json::{Map, Value};

/// The type words used in "expected: ..." errors.
const STRING: &str = "string";
const BOOLEAN: &str = "boolean";
const INTEGER: &str = "integer";
const NUMBER: &str = "number";
const OBJECT: &str = "object";
const ARRAY: &str = "array";

pub fn missing(name: &str) -> QmpError {
    QmpError::generic(format!("Parameter '{name}' is missing"))
}

pub fn invalid_type(name: &str, expected: &str) -> QmpError {
    QmpError::generic(format!(
        "Invalid parameter type for '{name}', expected: {expected}"
    ))
}

/// A value of the right JSON type that the member does not accept, e.g.
/// `expects uint32` or `expects a non-empty string`.
pub fn invalid_value(name: &str, what: &str) -> QmpError {
    QmpError::generic(format!("Parameter '{name}' expects {what}"))
}

/// A value outside an enumeration.
pub fn bad_enum(name: &str, value: &str) -> QmpError {
    QmpError::generic(format!(
        "Parameter '{name}' does not accept value '{value}'"
    ))
}

pub fn unexpected(name: &str) -> QmpError {
    QmpError::generic(format!("Parameter '{name}' is unexpected"))
}

/// A command's arguments (or a nested object) being read.
#[derive(Debug)]
pub struct Args<'a> {
    map: &'a Map<String, Value>,
    /// Path of this object, ending in `.`, or empty at the top.
    prefix: String,
    taken: Vec<&'a str>,
}

impl<'a> Args<'a> {
    pub fn new(map: &'a Map<String, Value>) -> Self {
        Args {
            map,
            prefix: String::new(),
            taken: Vec::new(),
        }
    }

    /// The full name of member `name`, for errors.
    pub fn path(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn take(&mut self, name: &str) -> Option<(&'a str, &'a Value)> {
        let (key, v) = self.map.get_key_value(name)?;
        if !self.taken.contains(&key.as_str()) {
            self.taken.push(key.as_str());
        }
        Some((key.as_str(), v))
    }

    fn opt<T>(
        &mut self,
        name: &str,
        expected: &str,
        get: impl FnOnce(&'a Value) -> Option<T>,
    ) -> Result<Option<T>, QmpError> {
        match self.take(name) {
            None => Ok(None),
            Some((_, v)) => get(v)
                .map(Some)
                .ok_or_else(|| invalid_type(&self.path(name), expected)),
        }
    }

    fn req<T>(&mut self, name: &str, got: Result<Option<T>, QmpError>) -> Result<T, QmpError> {
        got?.ok_or_else(|| missing(&self.path(name)))
    }

    /// Any JSON value.
    pub fn opt_value(&mut self, name: &str) -> Option<&'a Value> {
        self.take(name).map(|(_, v)| v)
    }

    pub fn req_value(&mut self, name: &str) -> Result<&'a Value, QmpError> {
        let got = Ok(self.opt_value(name));
        self.req(name, got)
    }

    pub fn opt_str(&mut self, name: &str) -> Result<Option<&'a str>, QmpError> {
        self.opt(name, STRING, Value::as_str)
    }

    pub fn req_str(&mut self, name: &str) -> Result<&'a str, QmpError> {
        let got = self.opt_str(name);
        self.req(name, got)
    }

    pub fn opt_bool(&mut self, name: &str) -> Result<Option<bool>, QmpError> {
        self.opt(name, BOOLEAN, Value::as_bool)
    }

    pub fn req_bool(&mut self, name: &str) -> Result<bool, QmpError> {
        let got = self.opt_bool(name);
        self.req(name, got)
    }

    /// An integer in `i64`; non-integers are a type error.
    pub fn opt_i64(&mut self, name: &str) -> Result<Option<i64>, QmpError> {
        let Some(n) = self.opt(name, INTEGER, Value::as_number)? else {
            return Ok(None);
        };
        n.as_i64()
            .map(Some)
            .ok_or_else(|| invalid_value(&self.path(name), "int64"))
    }

    pub fn req_i64(&mut self, name: &str) -> Result<i64, QmpError> {
        let got = self.opt_i64(name);
        self.req(name, got)
    }

    /// A non-negative integer in `u64`. The reference server lets a
    /// negative number wrap around here for old clients; a storage
    /// appliance would rather refuse `-1` than read it as 16 EiB.
    pub fn opt_u64(&mut self, name: &str) -> Result<Option<u64>, QmpError> {
        self.opt_unsigned(name, u64::MAX, "uint64")
    }

    pub fn req_u64(&mut self, name: &str) -> Result<u64, QmpError> {
        let got = self.opt_u64(name);
        self.req(name, got)
    }

    pub fn opt_u32(&mut self, name: &str) -> Result<Option<u32>, QmpError> {
        let got = self.opt_unsigned(name, u32::MAX.into(), "uint32")?;
        Ok(got.and_then(|n| u32::try_from(n).ok()))
    }

    pub fn req_u32(&mut self, name: &str) -> Result<u32, QmpError> {
        let got = self.opt_u32(name);
        self.req(name, got)
    }

    pub fn opt_u16(&mut self, name: &str) -> Result<Option<u16>, QmpError> {
        let got = self.opt_unsigned(name, u16::MAX.into(), "uint16")?;
        Ok(got.and_then(|n| u16::try_from(n).ok()))
    }

    pub fn req_u16(&mut self, name: &str) -> Result<u16, QmpError> {
        let got = self.opt_u16(name);
        self.req(name, got)
    }

    fn opt_unsigned(&mut self, name: &str, max: u64, what: &str) -> Result<Option<u64>, QmpError> {
        let Some(n) = self.opt(name, INTEGER, Value::as_number)? else {
            return Ok(None);
        };
        match n.as_u64() {
            Some(v) if v <= max => Ok(Some(v)),
            _ => Err(invalid_value(&self.path(name), what)),
        }
    }

    /// Any number, as `f64`.
    pub fn opt_f64(&mut self, name: &str) -> Result<Option<f64>, QmpError> {
        self.opt(name, NUMBER, Value::as_f64)
    }

    pub fn opt_obj(&mut self, name: &str) -> Result<Option<&'a Map<String, Value>>, QmpError> {
        self.opt(name, OBJECT, Value::as_object)
    }

    pub fn req_obj(&mut self, name: &str) -> Result<&'a Map<String, Value>, QmpError> {
        let got = self.opt_obj(name);
        self.req(name, got)
    }

    pub fn opt_array(&mut self, name: &str) -> Result<Option<&'a [Value]>, QmpError> {
        self.opt(name, ARRAY, |v| v.as_array().map(Vec::as_slice))
    }

    pub fn req_array(&mut self, name: &str) -> Result<&'a [Value], QmpError> {
        let got = self.opt_array(name);
        self.req(name, got)
    }

    /// An array of strings; a wrong element is named `name[i]`.
    pub fn opt_str_list(&mut self, name: &str) -> Result<Option<Vec<&'a str>>, QmpError> {
        let Some(items) = self.opt_array(name)? else {
            return Ok(None);
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let s = item
                .as_str()
                .ok_or_else(|| invalid_type(&self.path(&format!("{name}[{i}]")), STRING))?;
            out.push(s);
        }
        Ok(Some(out))
    }

    /// A nested object read with its own `Args`, whose errors name members
    /// `name.member`. Call [`Args::finish`] on it too.
    pub fn opt_nested(&mut self, name: &str) -> Result<Option<Args<'a>>, QmpError> {
        let Some(map) = self.opt_obj(name)? else {
            return Ok(None);
        };
        Ok(Some(Args {
            map,
            prefix: format!("{}{name}.", self.prefix),
            taken: Vec::new(),
        }))
    }

    pub fn req_nested(&mut self, name: &str) -> Result<Args<'a>, QmpError> {
        let got = self.opt_nested(name);
        self.req(name, got)
    }

    /// Fails on the first member (in key order) that was not asked for.
    pub fn finish(self) -> Result<(), QmpError> {
        self.done()
    }

    /// As [`finish`](Args::finish), for a command to call once it has
    /// taken every argument and before it changes anything: a command
    /// refused for an unexpected argument must have done nothing.
    pub fn done(&self) -> Result<(), QmpError> {
        match self.map.keys().find(|k| !self.taken.contains(&k.as_str())) {
            Some(k) => Err(unexpected(&self.path(k))),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn with<T>(
        v: Value,
        f: impl FnOnce(&mut Args<'_>) -> Result<T, QmpError>,
    ) -> Result<T, String> {
        let map = v.as_object().unwrap();
        let mut args = Args::new(map);
        let got = f(&mut args).map_err(|e| e.desc)?;
        args.finish().map_err(|e| e.desc)?;
        Ok(got)
    }

    #[test]
    fn reads_members() {
        let got = with(
            json!({"node-name": "d0", "writable": false, "size": 4096, "n": -2, "o": {}, "a": [1]}),
            |a| {
                Ok((
                    a.req_str("node-name")?.to_owned(),
                    a.opt_bool("writable")?,
                    a.req_u64("size")?,
                    a.opt_i64("n")?,
                    a.opt_obj("o")?.map(Map::len),
                    a.req_array("a")?.len(),
                    a.opt_str("absent")?.is_none(),
                ))
            },
        );
        assert_eq!(
            got,
            Ok(("d0".into(), Some(false), 4096, Some(-2), Some(0), 1, true))
        );
    }

    #[test]
    fn missing_member() {
        let e = with(json!({}), |a| a.req_str("node-name").map(drop));
        assert_eq!(e, Err("Parameter 'node-name' is missing".into()));
        let e = with(json!({}), |a| a.req_u32("n"));
        assert_eq!(e, Err("Parameter 'n' is missing".into()));
    }

    #[test]
    fn wrong_types() {
        type Read = fn(&mut Args<'_>) -> Result<(), QmpError>;
        let cases: [(Value, Read, &str); 7] = [
            (json!({"x": 1}), |a| a.req_str("x").map(drop), "string"),
            (
                json!({"x": "true"}),
                |a| a.opt_bool("x").map(drop),
                "boolean",
            ),
            (json!({"x": "1"}), |a| a.req_u32("x").map(drop), "integer"),
            (json!({"x": true}), |a| a.opt_i64("x").map(drop), "integer"),
            (json!({"x": []}), |a| a.opt_obj("x").map(drop), "object"),
            (json!({"x": {}}), |a| a.opt_array("x").map(drop), "array"),
            (json!({"x": null}), |a| a.opt_str("x").map(drop), "string"),
        ];
        for (v, f, expected) in cases {
            let want = format!("Invalid parameter type for 'x', expected: {expected}");
            assert_eq!(with(v, f), Err(want));
        }
    }

    #[test]
    fn integer_ranges() {
        assert_eq!(
            with(json!({"x": 4294967295u64}), |a| a.req_u32("x")),
            Ok(u32::MAX)
        );
        for bad in [json!(-1), json!(4294967296u64), json!(1.5), json!(1.0)] {
            let e = with(json!({ "x": bad }), |a| a.req_u32("x"));
            assert_eq!(e, Err("Parameter 'x' expects uint32".into()));
        }
        let e = with(json!({"x": 65536}), |a| a.req_u16("x"));
        assert_eq!(e, Err("Parameter 'x' expects uint16".into()));
        let e = with(json!({"x": -1}), |a| a.req_u64("x"));
        assert_eq!(e, Err("Parameter 'x' expects uint64".into()));
        assert_eq!(
            with(json!({"x": u64::MAX}), |a| a.req_u64("x")),
            Ok(u64::MAX)
        );
        let e = with(json!({"x": u64::MAX}), |a| a.req_i64("x"));
        assert_eq!(e, Err("Parameter 'x' expects int64".into()));
    }

    #[test]
    fn unexpected_member_is_the_first_unread() {
        let e = with(json!({"a": 1, "foo": 2, "zz": 3}), |a| a.req_u32("a"));
        assert_eq!(e, Err("Parameter 'foo' is unexpected".into()));
    }

    #[test]
    fn nested_and_list_names() {
        let v = json!({"options": {"size": "big", "extra": 1}, "list": ["a", 2]});
        let e = with(v.clone(), |a| {
            let mut o = a.req_nested("options")?;
            o.req_u64("size")
        });
        assert_eq!(
            e,
            Err("Invalid parameter type for 'options.size', expected: integer".into())
        );
        let e = with(v.clone(), |a| {
            let mut o = a.req_nested("options")?;
            o.opt_str("size")?;
            a.opt_value("list");
            o.finish()
        });
        assert_eq!(e, Err("Parameter 'options.extra' is unexpected".into()));
        let e = with(v, |a| a.opt_str_list("list").map(drop));
        assert_eq!(
            e,
            Err("Invalid parameter type for 'list[1]', expected: string".into())
        );
        let e = with(json!({"o": {}}), |a| {
            a.req_nested("o")?.req_str("name").map(drop)
        });
        assert_eq!(e, Err("Parameter 'o.name' is missing".into()));
    }

    #[test]
    fn asking_twice_counts_once() {
        let got = with(
            json!({"a": "x"}),
            |a| Ok(a.req_str("a")? == a.req_str("a")?),
        );
        assert_eq!(got, Ok(true));
    }
}
