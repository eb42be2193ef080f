//! A write-back cache over a source that holds every write (an error bdev's
//! `pending` injection, as an administrator would stage it): writes still
//! complete from RAM.

use ironbay_bdev::error::{ErrorBdev, Injected, Injection};
use ironbay_bdev::{HeapPages, IoBuf, IoOp, IoRequest, IoType, MallocBdev, Registry, Uuid};
use ironbay_cache::{CacheBdev, Mode};

#[test]
fn writes_complete_while_the_source_holds_every_write() {
    let mut reg = Registry::new();
    let disk = MallocBdev::new("Disk0", 2048, 512);
    let disk_id = reg.add(Box::new(disk)).unwrap();
    let dh = reg.claim(disk_id, "EE_Disk0").unwrap();
    let mut ee = ErrorBdev::new("Disk0", None, dh, disk_id);
    ee.inject(
        Some(IoType::Write),
        Injection {
            error: Injected::Pending,
            num: 1_000_000,
            queue_depth: 0,
        },
    );
    let ee_id = reg.add(Box::new(ee)).unwrap();
    let uuid = Uuid::from_name(&[b"rd0"]);
    let ram = MallocBdev::with_pool(
        "rd0",
        "RapidDisk",
        uuid,
        8 * 64,
        512,
        HeapPages::unlimited(),
    )
    .unwrap();
    let ram_id = reg.add(Box::new(ram)).unwrap();
    let name = "rc-wb_EE_Disk0";
    let sh = reg.claim(ee_id, name).unwrap();
    let rh = reg.claim(ram_id, name).unwrap();
    let cache = CacheBdev::new(name, Mode::WriteBack, sh, ee_id, rh, ram_id).unwrap();
    let id = reg.add(Box::new(cache)).unwrap();
    let mut now = 1;
    for tag in 1..=3u64 {
        let mut buf = IoBuf::new(4096);
        buf.as_mut_slice().fill(tag as u8);
        let req = IoRequest {
            tag,
            op: IoOp::Write {
                lba: 8 * (tag - 1),
                buf,
            },
            fua: false,
        };
        reg.submit(id, req, now).unwrap();
        let mut done = Vec::new();
        for _ in 0..100 {
            now += 100;
            reg.poll(now, &mut done);
            if done.iter().any(|(_, c)| c.tag == tag) {
                break;
            }
        }
        let c = done.iter().find(|(_, c)| c.tag == tag);
        assert!(
            c.is_some_and(|(_, c)| c.status.is_ok()),
            "write {tag}: {done:?}"
        );
    }
}
