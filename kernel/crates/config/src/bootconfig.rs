//! SPDK-format JSON configuration, as `spdk_tgt --json` reads it and
//! `framework_get_config` / `save_config` write it:
//!
//! ```json
//! {"subsystems":[{"subsystem":"bdev","config":[
//!     {"method":"bdev_malloc_create","params":{"name":"Malloc0",...}}]}]}
//! ```
//!
//! [`BootConfig::parse`] checks the shape and yields the method calls in file
//! order; applying them is the object model's business.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use serde_json::{Map, Value};

/// Largest configuration accepted; bigger modules are refused unread.
pub const MAX_CONFIG_BYTES: usize = 1 << 20;

#[derive(Clone, Debug, PartialEq)]
pub struct MethodCall {
    pub method: String,
    /// `params` object; absent params are an empty object.
    pub params: Map<String, Value>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Subsystem {
    pub name: String,
    pub calls: Vec<MethodCall>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct BootConfig {
    pub subsystems: Vec<Subsystem>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigError {
    TooLarge(usize),
    NotUtf8,
    /// JSON syntax, with serde_json's line and column.
    Syntax(String),
    /// Valid JSON of the wrong shape; the string says where.
    Shape(String),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::TooLarge(n) => {
                write!(f, "config is {n} bytes, more than {MAX_CONFIG_BYTES}")
            }
            ConfigError::NotUtf8 => write!(f, "config is not UTF-8 text"),
            ConfigError::Syntax(e) => write!(f, "config is not valid JSON: {e}"),
            ConfigError::Shape(e) => write!(f, "config: {e}"),
        }
    }
}

impl BootConfig {
    pub fn parse(bytes: &[u8]) -> Result<Self, ConfigError> {
        if bytes.len() > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge(bytes.len()));
        }
        // Boot modules are often padded with NULs to a page; ignore trailing ones.
        let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
        let text = core::str::from_utf8(&bytes[..end]).map_err(|_| ConfigError::NotUtf8)?;
        let root: Value =
            serde_json::from_str(text).map_err(|e| ConfigError::Syntax(format!("{e}")))?;
        let shape = |s: String| ConfigError::Shape(s);

        let subsystems = root
            .as_object()
            .ok_or_else(|| shape("top level must be an object".into()))?
            .get("subsystems")
            .ok_or_else(|| shape("missing \"subsystems\"".into()))?
            .as_array()
            .ok_or_else(|| shape("\"subsystems\" must be an array".into()))?;

        let mut out = BootConfig::default();
        for (i, sub) in subsystems.iter().enumerate() {
            let sub = sub
                .as_object()
                .ok_or_else(|| shape(format!("subsystems[{i}] is not an object")))?;
            let name = sub
                .get("subsystem")
                .and_then(Value::as_str)
                .ok_or_else(|| shape(format!("subsystems[{i}].subsystem must be a string")))?;
            let mut calls = Vec::new();
            // SPDK writes `"config": null` for a subsystem with nothing to say.
            match sub.get("config") {
                None | Some(Value::Null) => {}
                Some(Value::Array(entries)) => {
                    for (j, e) in entries.iter().enumerate() {
                        calls.push(method_call(e).map_err(|why| {
                            shape(format!("subsystems[{i}] ({name}) config[{j}]: {why}"))
                        })?);
                    }
                }
                Some(_) => return Err(shape(format!("subsystems[{i}].config must be an array"))),
            }
            out.subsystems.push(Subsystem {
                name: name.into(),
                calls,
            });
        }
        Ok(out)
    }

    /// Every method call, in file order, with its subsystem.
    pub fn calls(&self) -> impl Iterator<Item = (&str, &MethodCall)> {
        self.subsystems
            .iter()
            .flat_map(|s| s.calls.iter().map(move |c| (s.name.as_str(), c)))
    }
}

fn method_call(e: &Value) -> Result<MethodCall, &'static str> {
    let e = e.as_object().ok_or("not an object")?;
    let method = e
        .get("method")
        .and_then(Value::as_str)
        .ok_or("\"method\" must be a string")?;
    let params = match e.get("params") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(p)) => p.clone(),
        Some(_) => return Err("\"params\" must be an object"),
    };
    Ok(MethodCall {
        method: method.into(),
        params,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{
      "subsystems": [
        {"subsystem": "bdev", "config": [
          {"method": "bdev_malloc_create",
           "params": {"name": "Malloc0", "num_blocks": 32768, "block_size": 512}},
          {"method": "bdev_wait_for_examine"}
        ]},
        {"subsystem": "nbd", "config": null}
      ]
    }"#;

    #[test]
    fn parses_spdk_save_config_shape() {
        let c = BootConfig::parse(SAMPLE.as_bytes()).unwrap();
        assert_eq!(c.subsystems.len(), 2);
        let calls: Vec<_> = c.calls().collect();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].0, "bdev");
        assert_eq!(calls[0].1.method, "bdev_malloc_create");
        assert_eq!(calls[0].1.params["num_blocks"], 32768);
        assert!(calls[1].1.params.is_empty());
    }

    #[test]
    fn trailing_nul_padding_is_ignored() {
        let mut b = SAMPLE.as_bytes().to_vec();
        b.extend([0u8; 100]);
        assert!(BootConfig::parse(&b).is_ok());
    }

    #[test]
    fn errors_say_what_and_where() {
        let cases: &[(&[u8], &str)] = &[
            (b"{\"subsystems\": [", "not valid JSON"),
            (b"[]", "top level"),
            (b"{}", "missing"),
            (b"{\"subsystems\": 3}", "must be an array"),
            (b"{\"subsystems\": [{\"config\": []}]}", "subsystem must be a string"),
            (b"{\"subsystems\": [{\"subsystem\":\"bdev\",\"config\":[{\"params\":{}}]}]}", "config[0]"),
            (b"{\"subsystems\": [{\"subsystem\":\"bdev\",\"config\":[{\"method\":\"x\",\"params\":[]}]}]}", "params"),
            (b"\xff\xfe", "UTF-8"),
        ];
        for (input, needle) in cases {
            let e = BootConfig::parse(input).unwrap_err().to_string();
            assert!(e.contains(needle), "{e} lacks {needle}");
        }
    }

    #[test]
    fn deep_nesting_and_size_are_bounded() {
        let deep = "[".repeat(100_000);
        assert!(matches!(
            BootConfig::parse(deep.as_bytes()),
            Err(ConfigError::Syntax(_))
        ));
        let big = vec![b' '; MAX_CONFIG_BYTES + 1];
        assert!(matches!(
            BootConfig::parse(&big),
            Err(ConfigError::TooLarge(_))
        ));
    }
}
