//! The session fuzz target's seeds (`fuzz/seeds/session`) against the
//! method table: every method has a seed, and every seed is a session the
//! appliance answers without an error, so the fuzzer starts from requests
//! that reach past parameter checks into each handler. The model and the
//! steering byte are the fuzz target's.

use crate::{Devices, METHODS, Model, Session, Wait};
use ironbay_bdev::{BdevId, MallocBdev, NullBdev, Registry};
use ironbay_nbd::{Export, Exports};
use serde_json::{Value, json};
use std::path::Path;

#[derive(Default)]
struct Hardware {
    attached: Vec<(String, BdevId)>,
}

impl Hardware {
    fn attach(
        &mut self,
        bdevs: &mut Registry,
        name: &str,
        bdev: String,
        at: bool,
    ) -> Result<Vec<String>, String> {
        if !at || self.attached.iter().any(|(n, _)| n == name) {
            return Err(format!("cannot attach {name}"));
        }
        let id = bdevs
            .add(Box::new(MallocBdev::new(&bdev, 16, 512)))
            .map_err(|e| e.to_string())?;
        self.attached.push((name.into(), id));
        Ok(vec![bdev])
    }

    fn detach(&mut self, bdevs: &mut Registry, name: &str) -> Result<(), String> {
        let i = self
            .attached
            .iter()
            .position(|(n, _)| n == name)
            .ok_or_else(|| format!("no controller {name}"))?;
        bdevs
            .remove(self.attached[i].1)
            .map_err(|e| e.to_string())?;
        self.attached.remove(i);
        Ok(())
    }
}

impl Devices for Hardware {
    fn nvme_attach(
        &mut self,
        b: &mut Registry,
        name: &str,
        traddr: &str,
    ) -> Result<Vec<String>, String> {
        self.attach(b, name, format!("{name}n1"), traddr == "0000:00:04.0")
    }
    fn nvme_detach(&mut self, b: &mut Registry, name: &str) -> Result<(), String> {
        self.detach(b, name)
    }
    fn virtio_attach(
        &mut self,
        b: &mut Registry,
        name: &str,
        traddr: &str,
    ) -> Result<Vec<String>, String> {
        self.attach(b, name, name.into(), traddr == "0000:00:05.0")
    }
    fn virtio_detach(&mut self, b: &mut Registry, name: &str) -> Result<(), String> {
        self.detach(b, name)
    }
}

/// Runs one seed as the fuzz target does and returns every reply.
fn run(data: &[u8]) -> Vec<Value> {
    let (&steer, stream) = data.split_first().expect("a steering byte");
    let piece = 1usize << (steer & 0x0f).min(11);
    let mut initialized = steer & 0x80 == 0;
    let mut reg = Registry::new();
    let malloc = reg
        .add(Box::new(MallocBdev::new("Malloc0", 64, 512)))
        .unwrap();
    reg.add(Box::new(NullBdev::new("Null0", 1024, 4096)))
        .unwrap();
    // Room for a config area; a null bdev, so it costs no memory.
    reg.add(Box::new(NullBdev::new("Store0", 768, 4096)))
        .unwrap();
    // Room for a volume store; a null bdev, so it costs no memory.
    reg.add(Box::new(NullBdev::new("Lvs0", 4096, 4096)))
        .unwrap();
    let mut lvols = ironbay_model::lvol::Lvols::new(|| 0, 1);
    let mut store = ironbay_model::persist::ConfigStore::new(|| 0);
    let mut exports = Exports::default();
    let info = reg.info(malloc).unwrap().clone();
    exports
        .list
        .push(Export::new("Malloc0", &info.product, malloc, &info, false));
    let mut iscsi = ironbay_model::iscsi::Target::default();
    let mut nvmf = ironbay_model::nvmf::Target::default();
    let mut hw = Hardware::default();
    let (mut shutdown, mut bench) = (false, None);
    let mut targetd = ironbay_model::targetd::Settings::new(7);
    let mut s = Session::new();
    let mut out = Vec::new();
    for input in stream.chunks(piece) {
        let mut model = Model {
            bdevs: &mut reg,
            devices: Some(&mut hw),
            nbd: Some(&mut exports),
            iscsi: Some(&mut iscsi),
            nvmf: Some(&mut nvmf),
            memory_budget: 4 << 20,
            initialized: &mut initialized,
            shutdown: &mut shutdown,
            bench: Some(&mut bench),
            config_store: Some(&mut store),
            lvol: Some(&mut lvols),
            targetd: Some(&mut targetd),
        };
        s.handle_input(input, &mut model);
        if let Some(spec) = bench.take() {
            s.complete_deferred(Wait::Bench, Ok(json!({ "bdev_name": spec.bdev })));
        }
        if initialized {
            s.complete_deferred(Wait::Init, Ok(Value::Bool(true)));
        }
        out.extend_from_slice(s.poll_output());
        let n = s.poll_output().len();
        s.consume_output(n);
    }
    assert!(!s.closed());
    serde_json::Deserializer::from_slice(&out)
        .into_iter::<Value>()
        .map(Result::unwrap)
        .collect()
}

fn seeds() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/session");
    let mut seeds: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect();
    seeds.sort();
    seeds
}

#[test]
fn every_method_has_a_seed() {
    let seeds = seeds();
    for m in METHODS {
        let call = format!("\"method\":\"{}\"", m.name);
        assert!(
            seeds
                .iter()
                .any(|(_, s)| s.windows(call.len()).any(|w| w == call.as_bytes())),
            "no seed in fuzz/seeds/session calls {}",
            m.name
        );
    }
}

#[test]
fn every_seed_is_answered_without_errors() {
    let mut failed = Vec::new();
    for (name, data) in seeds() {
        let replies = run(&data);
        assert!(!replies.is_empty(), "{name}");
        for r in replies.iter().flat_map(|r| match r {
            Value::Array(batch) => batch.clone(),
            one => vec![one.clone()],
        }) {
            if r.get("result").is_none() {
                failed.push(format!("{name}: {r}"));
            }
        }
    }
    assert!(failed.is_empty(), "{failed:#?}");
}
