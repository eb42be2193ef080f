//! The bdev subsystem of a boot config, applied: `bdev_malloc_create` and
//! `bdev_null_create` become devices in the registry. Parameters are checked
//! the way SPDK checks them, and a call that fails leaves nothing behind.

use crate::bootconfig::MethodCall;
use alloc::boxed::Box;
use alloc::format;
use alloc::string::{String, ToString};
use ironbay_bdev::{MallocBdev, NullBdev, Registry, Uuid};
use serde_json::{Map, Value};

/// Block sizes SPDK accepts for RAM and null bdevs.
fn valid_block_size(bs: u64) -> bool {
    (512..=65536).contains(&bs) && bs.is_multiple_of(512)
}

fn u64_param(p: &Map<String, Value>, key: &str) -> Result<u64, String> {
    p.get(key)
        .ok_or_else(|| format!("missing `{key}`"))?
        .as_u64()
        .ok_or_else(|| format!("`{key}` must be a non-negative integer"))
}

fn opt_str<'a>(p: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, String> {
    match p.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("`{key}` must be a string")),
    }
}

fn geometry(p: &Map<String, Value>) -> Result<(u64, u32), String> {
    let block_size = u64_param(p, "block_size")?;
    if !valid_block_size(block_size) {
        return Err(format!(
            "`block_size` {block_size} must be a multiple of 512 from 512 to 65536"
        ));
    }
    let num_blocks = u64_param(p, "num_blocks")?;
    if num_blocks == 0 {
        return Err("`num_blocks` must be at least 1".into());
    }
    Ok((num_blocks, block_size as u32))
}

fn check_name(reg: &Registry, name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 255 {
        return Err("`name` must be 1-255 characters".into());
    }
    if reg.find(name).is_some() {
        return Err(format!("a bdev named {name} already exists"));
    }
    Ok(())
}

fn uuid_param(p: &Map<String, Value>) -> Result<Option<Uuid>, String> {
    opt_str(p, "uuid")?
        .map(|s| Uuid::parse(s).ok_or_else(|| format!("`uuid` {s} is not a UUID")))
        .transpose()
}

/// Applies one call of the bdev subsystem. `memory_budget` bounds the bytes a
/// RAM bdev may take. Returns the new bdev's name.
pub fn bdev_call(
    reg: &mut Registry,
    call: &MethodCall,
    memory_budget: u64,
) -> Result<String, String> {
    let p = &call.params;
    match call.method.as_str() {
        "bdev_malloc_create" | "construct_malloc_bdev" => {
            let (num_blocks, block_size) = geometry(p)?;
            let name = match opt_str(p, "name")? {
                Some(n) => n.to_string(),
                None => (0..)
                    .map(|i| format!("Malloc{i}"))
                    .find(|n| reg.find(n).is_none())
                    .unwrap_or_default(),
            };
            check_name(reg, &name)?;
            let uuid = uuid_param(p)?;
            let bytes = num_blocks
                .checked_mul(block_size as u64)
                .ok_or("size overflows")?;
            if bytes > memory_budget {
                return Err(format!(
                    "{bytes} bytes requested, {memory_budget} available for RAM bdevs"
                ));
            }
            let mut m = MallocBdev::new(&name, num_blocks, block_size);
            if let Some(u) = uuid {
                m.set_uuid(u);
            }
            reg.add(Box::new(m)).map_err(|e| e.to_string())?;
            Ok(name)
        }
        "bdev_null_create" | "construct_null_bdev" => {
            let (num_blocks, block_size) = geometry(p)?;
            let name = opt_str(p, "name")?.ok_or("missing `name`")?.to_string();
            check_name(reg, &name)?;
            let uuid = uuid_param(p)?;
            let mut n = NullBdev::new(&name, num_blocks, block_size);
            if let Some(u) = uuid {
                n.set_uuid(u);
            }
            reg.add(Box::new(n)).map_err(|e| e.to_string())?;
            Ok(name)
        }
        other => Err(format!(
            "method {other} is not supported in the boot config yet"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BootConfig;

    fn call(json: &str) -> MethodCall {
        let cfg = BootConfig::parse(
            format!(r#"{{"subsystems":[{{"subsystem":"bdev","config":[{json}]}}]}}"#).as_bytes(),
        )
        .unwrap();
        cfg.subsystems[0].calls[0].clone()
    }

    #[test]
    fn malloc_and_null_from_params() {
        let mut reg = Registry::new();
        let c =
            call(r#"{"method":"bdev_malloc_create","params":{"num_blocks":128,"block_size":512}}"#);
        assert_eq!(bdev_call(&mut reg, &c, 1 << 20).unwrap(), "Malloc0");
        assert_eq!(bdev_call(&mut reg, &c, 1 << 20).unwrap(), "Malloc1");
        let c = call(
            r#"{"method":"bdev_null_create","params":{"name":"Null0","num_blocks":1000000,"block_size":4096,
            "uuid":"8f1a2b3c-0000-4000-8000-000000000001"}}"#,
        );
        assert_eq!(bdev_call(&mut reg, &c, 0).unwrap(), "Null0");
        let id = reg.find("Null0").unwrap();
        assert_eq!(
            reg.info(id).unwrap().uuid.to_string(),
            "8f1a2b3c-0000-4000-8000-000000000001"
        );
        assert_eq!(reg.info(id).unwrap().num_blocks, 1_000_000);
    }

    #[test]
    fn bad_params_say_why_and_add_nothing() {
        let mut reg = Registry::new();
        for (json, why) in [
            (
                r#"{"method":"bdev_malloc_create","params":{"num_blocks":8}}"#,
                "missing `block_size`",
            ),
            (
                r#"{"method":"bdev_malloc_create","params":{"num_blocks":8,"block_size":1000}}"#,
                "multiple of 512",
            ),
            (
                r#"{"method":"bdev_malloc_create","params":{"num_blocks":0,"block_size":512}}"#,
                "at least 1",
            ),
            (
                r#"{"method":"bdev_malloc_create","params":{"num_blocks":-1,"block_size":512}}"#,
                "non-negative",
            ),
            (
                r#"{"method":"bdev_malloc_create","params":{"num_blocks":9007199254740993,"block_size":65536}}"#,
                "overflows",
            ),
            (
                r#"{"method":"bdev_malloc_create","params":{"num_blocks":4096,"block_size":512}}"#,
                "available",
            ),
            (
                r#"{"method":"bdev_malloc_create","params":{"num_blocks":8,"block_size":512,"uuid":"x"}}"#,
                "not a UUID",
            ),
            (
                r#"{"method":"bdev_null_create","params":{"num_blocks":8,"block_size":512}}"#,
                "missing `name`",
            ),
            (
                r#"{"method":"bdev_null_create","params":{"name":7,"num_blocks":8,"block_size":512}}"#,
                "must be a string",
            ),
            (
                r#"{"method":"bdev_lvol_create","params":{}}"#,
                "not supported",
            ),
        ] {
            let e = bdev_call(&mut reg, &call(json), 1 << 20).unwrap_err();
            assert!(e.contains(why), "{e} lacks {why}");
        }
        assert_eq!(reg.ids().count(), 0);
        let c = call(
            r#"{"method":"bdev_null_create","params":{"name":"A","num_blocks":8,"block_size":512}}"#,
        );
        bdev_call(&mut reg, &c, 0).unwrap();
        assert!(
            bdev_call(&mut reg, &c, 0)
                .unwrap_err()
                .contains("already exists")
        );
    }
}
