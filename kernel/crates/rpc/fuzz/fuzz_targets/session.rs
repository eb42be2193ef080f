//! Arbitrary peer bytes through a JSON-RPC session and every method handler,
//! against a model with RAM bdevs, an NBD export, the iSCSI and NVMe-oF
//! targets and fake NVMe and virtio controllers.
//!
//! The first byte steers the harness: bits 0-3 give the size the rest is
//! cut into (2^n bytes, n = 0..11), bit 7 starts before
//! `framework_start_init`, bit 6 plays a peer that never reads its replies.
//! Seeds: ../seeds/session, one or a few requests per method of the table,
//! starting with `\n` (1 KiB pieces, initialised, reading).
#![no_main]

use ironbay_bdev::{BdevId, MallocBdev, NullBdev, Registry};
use ironbay_model::{Devices, Model};
use ironbay_nbd::{Export, Exports};
use ironbay_rpc::{MAX_BATCH_OUTPUT, MAX_OUTPUT, MAX_REFUSED, MAX_REQUEST, Session, Wait};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

/// Controllers at fixed PCI addresses, each one small bdev.
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
        traddr: &str,
        at: &str,
    ) -> Result<Vec<String>, String> {
        if traddr != at {
            return Err(format!("no controller at {traddr}"));
        }
        if self.attached.iter().any(|(n, _)| n == name) {
            return Err(format!("{name} is attached already"));
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
        self.attach(b, name, format!("{name}n1"), traddr, "0000:00:04.0")
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
        self.attach(b, name, name.into(), traddr, "0000:00:05.0")
    }
    fn virtio_detach(&mut self, b: &mut Registry, name: &str) -> Result<(), String> {
        self.detach(b, name)
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&steer, stream)) = data.split_first() else {
        return;
    };
    let piece = 1usize << (steer & 0x0f).min(11);
    let mut initialized = steer & 0x80 == 0;
    let reads = steer & 0x40 == 0;

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

    for input in stream.chunks(piece) {
        let mut model = Model {
            bdevs: &mut reg,
            devices: Some(&mut hw),
            nbd: Some(&mut exports),
            iscsi: Some(&mut iscsi),
            nvmf: Some(&mut nvmf),
            // Small, so that RAM bdevs stay cheap to create.
            memory_budget: 4 << 20,
            initialized: &mut initialized,
            shutdown: &mut shutdown,
            bench: Some(&mut bench),
            config_store: Some(&mut store),
            lvol: Some(&mut lvols),
            targetd: Some(&mut targetd),
        };
        let before = s.poll_output().len();
        s.handle_input(input, &mut model);
        // What the glue does: a benchmark ends, init is reported.
        if let Some(spec) = bench.take() {
            s.complete_deferred(Wait::Bench, Ok(json!({ "bdev_name": spec.bdev })));
        }
        if initialized {
            s.complete_deferred(Wait::Init, Ok(Value::Bool(true)));
        }
        // Past the mark where requests stop running, one input adds at most
        // a batch (a single reply here is smaller), the refusals before the
        // session gives up, and one reply echoing a request-sized id.
        let out = s.poll_output();
        assert!(
            out.len() <= before.max(MAX_OUTPUT) + MAX_BATCH_OUTPUT + MAX_REFUSED + 2 * MAX_REQUEST,
            "{} bytes of output",
            out.len()
        );
        if reads {
            for reply in serde_json::Deserializer::from_slice(out).into_iter::<Value>() {
                let reply = reply.expect("replies are JSON");
                assert!(reply.is_object() || reply.is_array());
            }
            let n = out.len();
            s.consume_output(n);
        }
        if s.closed() {
            break;
        }
    }
});
