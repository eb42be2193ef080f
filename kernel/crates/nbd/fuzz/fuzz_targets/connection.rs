//! Arbitrary client bytes through the handshake and transmission phases.
//! Seeds: ../fixtures (real nbdinfo and qemu-io traffic).
#![no_main]

use ironbay_bdev::{IoRequest, MallocBdev, Registry};
use ironbay_nbd::{Connection, Export, Exports};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut reg = Registry::new();
    let id = reg.add(Box::new(MallocBdev::new("Malloc0", 2048, 512))).unwrap();
    let info = reg.info(id).unwrap().clone();
    let mut exports = Exports::default();
    exports.list.push(Export::new("Malloc0", "", id, &info, false));
    let mut conn = Connection::new();
    let mut off = 0;
    let mut done = Vec::new();
    for _ in 0..256 {
        off += conn.handle_input(&data[off..], &exports, &reg);
        while let Some(io) = conn.poll_io() {
            let _ = reg.submit(io.bdev, IoRequest { tag: io.tag, op: io.op, fua: io.fua }, 0);
        }
        done.clear();
        reg.poll(0, &mut done);
        for (_, c) in done.drain(..) {
            conn.handle_completion(c.tag, c);
        }
        while let Some(b) = conn.poll_output() {
            let n = b.len();
            conn.consume_output(n);
        }
        if off >= data.len() || conn.finished() {
            break;
        }
    }
});
