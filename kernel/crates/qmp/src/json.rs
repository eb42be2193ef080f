//! JSON in and out, worded and formatted as QMP clients expect.
//!
//! In: one framed message to a [`Value`], refusing duplicate keys (the
//! reference server does; a plain map would keep the last silently), with
//! parse errors phrased like the reference server's "JSON parse error, ...".
//!
//! Out: `{"a": 1, "b": [2, 3]}` with a space after `:` and `,`, and ASCII
//! only, non-ASCII characters as `\uXXXX` escapes, which the protocol
//! specifies for server output.

use crate::stream::SplitError;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Parses one message from the splitter.
pub fn parse(message: &[u8]) -> Result<Value, String> {
    let mut de = serde_json::Deserializer::from_slice(message);
    let parsed = Strict::deserialize(&mut de).and_then(|v| de.end().map(|()| v.0));
    parsed.map_err(|e| parse_error(message, &e))
}

/// The description for a message the splitter dropped.
pub fn split_error(e: SplitError) -> String {
    match e {
        SplitError::Stray(b) if b.is_ascii_graphic() => {
            format!("JSON parse error, stray '{}'", b as char)
        }
        SplitError::Stray(b) => format!("JSON parse error, stray '\\x{b:02x}'"),
        // The reference server's names for its own limits.
        SplitError::TooLong => "JSON token size limit exceeded".into(),
        SplitError::TooMany => "JSON token count limit exceeded".into(),
        SplitError::TooDeep => "JSON nesting depth limit exceeded".into(),
    }
}

fn parse_error(message: &[u8], e: &serde_json::Error) -> String {
    // A lone word is a misspelt keyword; name it as the reference does.
    if !message.is_empty() && message.iter().all(u8::is_ascii_lowercase) {
        let word = core::str::from_utf8(message).unwrap_or_default();
        return format!("JSON parse error, invalid keyword '{word}'");
    }
    let text = e.to_string();
    // serde_json appends the position; the reference wording has none.
    let position = format!(" at line {} column {}", e.line(), e.column());
    let text = text.strip_suffix(position.as_str()).unwrap_or(&text);
    let what = match text {
        "expected value" | "trailing comma" => "expecting value",
        "key must be a string" => "key is not a string in object",
        "expected `:`" => "missing : in object pair",
        "expected `,` or `}`" => "expected separator in dict",
        "expected `,` or `]`" => "expected separator in list",
        "expected ident" => "invalid keyword",
        "invalid escape" => "invalid escape sequence in string",
        "invalid unicode code point"
        | "lone leading surrogate in hex escape"
        | "unexpected end of hex escape" => "invalid Unicode character in string",
        "invalid number" | "number out of range" => "invalid number",
        t if t.starts_with("EOF while parsing") => "premature EOI",
        t if t.starts_with("control character") => "control character in string",
        t => return format!("JSON parse error, {t}"),
    };
    format!("JSON parse error, {what}")
}

/// A [`Value`] whose objects had no repeated key.
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Strict;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Strict, E> {
        Ok(Strict(Value::Bool(v)))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Strict, E> {
        Ok(Strict(Value::Number(v.into())))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Strict, E> {
        Ok(Strict(Value::Number(v.into())))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Strict, E> {
        Ok(Strict(
            Number::from_f64(v).map_or(Value::Null, Value::Number),
        ))
    }

    fn visit_str<E>(self, v: &str) -> Result<Strict, E> {
        Ok(Strict(Value::String(v.into())))
    }

    fn visit_string<E>(self, v: String) -> Result<Strict, E> {
        Ok(Strict(Value::String(v)))
    }

    fn visit_unit<E>(self) -> Result<Strict, E> {
        Ok(Strict(Value::Null))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Strict, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Strict(Value::Array(items)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Strict, A::Error> {
        let mut obj = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if obj.contains_key(&key) {
                return Err(de::Error::custom("duplicate key"));
            }
            let Strict(v) = map.next_value()?;
            obj.insert(key, v);
        }
        Ok(Strict(Value::Object(obj)))
    }
}

/// Appends `v` in the wire format.
pub fn write(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => out.extend_from_slice(n.to_string().as_bytes()),
        Value::String(s) => write_str(out, s),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.extend_from_slice(b", ");
                }
                write(out, item);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            out.push(b'{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.extend_from_slice(b", ");
                }
                write_str(out, k);
                out.extend_from_slice(b": ");
                write(out, item);
            }
            out.push(b'}');
        }
    }
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            '\u{8}' => out.extend_from_slice(b"\\b"),
            '\u{c}' => out.extend_from_slice(b"\\f"),
            ' '..='~' => out.push(c as u8),
            _ => {
                let mut units = [0u16; 2];
                for &u in c.encode_utf16(&mut units).iter() {
                    out.extend_from_slice(b"\\u");
                    for shift in [12, 8, 4, 0] {
                        out.push(HEX[usize::from((u >> shift) & 0xf)]);
                    }
                }
            }
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn text(v: &Value) -> String {
        let mut out = Vec::new();
        write(&mut out, v);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn writes_spaced_ascii() {
        assert_eq!(
            text(&json!({"a": [1, 2], "b": {}})),
            r#"{"a": [1, 2], "b": {}}"#
        );
        assert_eq!(
            text(&json!("é\u{1F600}\"\\\n\u{1}")),
            r#""\u00e9\ud83d\ude00\"\\\n\u0001""#
        );
        assert_eq!(
            text(&json!([null, true, false, -3, 1.5])),
            "[null, true, false, -3, 1.5]"
        );
    }

    #[test]
    fn written_text_parses_back() {
        let v = json!({"k": ["x\u{7f}y", {"z": [1e300, u64::MAX, i64::MIN]}], "": "\u{10FFFF}"});
        assert_eq!(parse(text(&v).as_bytes()).unwrap(), v);
    }

    #[test]
    fn parse_errors_are_worded_like_qemu() {
        let e = |s: &str| parse(s.as_bytes()).unwrap_err();
        assert_eq!(e("}"), "JSON parse error, expecting value");
        assert_eq!(e("[1,]"), "JSON parse error, expecting value");
        assert_eq!(
            e("{1: 2}"),
            "JSON parse error, key is not a string in object"
        );
        assert_eq!(
            e(r#"{"a" 2}"#),
            "JSON parse error, missing : in object pair"
        );
        assert_eq!(
            e(r#"{"a": 1 "b": 2}"#),
            "JSON parse error, expected separator in dict"
        );
        assert_eq!(e("[1 2]"), "JSON parse error, expected separator in list");
        assert_eq!(e(r#"{"a": 1, "a": 2}"#), "JSON parse error, duplicate key");
        assert_eq!(e("nope"), "JSON parse error, invalid keyword 'nope'");
        assert_eq!(e("[nope]"), "JSON parse error, invalid keyword");
        assert_eq!(
            e(r#""\q""#),
            "JSON parse error, invalid escape sequence in string"
        );
        assert_eq!(
            e(r#""\ud800""#),
            "JSON parse error, invalid Unicode character in string"
        );
        assert_eq!(e("[1"), "JSON parse error, premature EOI");
    }

    #[test]
    fn nested_duplicates_are_found() {
        assert!(parse(br#"{"a": [{"b": 1, "b": 1}]}"#).is_err());
        assert!(parse(br#"{"a": {"b": 1}, "b": {"a": 1}}"#).is_ok());
    }
}
