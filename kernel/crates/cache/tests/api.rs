//! What the model layer relies on: construction and its errors, what the
//! cache says about itself, the in-flight cap, and removal giving both
//! claimed devices back.

use ironbay_bdev::{
    BlockDevice, HeapPages, IoBuf, IoOp, IoRequest, IoStatus, MallocBdev, NullBdev, Registry, Uuid,
};
use ironbay_cache::{CacheBdev, MAX_REQUESTS, Mode, PRODUCT};

fn ram(name: &str, bytes: u64) -> MallocBdev {
    let uuid = Uuid::from_name(&[name.as_bytes()]);
    MallocBdev::with_pool(
        name,
        "Malloc disk",
        uuid,
        bytes / 512,
        512,
        HeapPages::unlimited(),
    )
    .unwrap()
}

#[test]
fn construction_checks_its_devices() {
    let mut reg = Registry::new();
    let src = reg
        .add(Box::new(MallocBdev::new("Src", 2048, 512)))
        .unwrap();
    let big = reg.add(Box::new(MallocBdev::new("Big", 16, 8192))).unwrap();
    let tiny = reg.add(Box::new(ram("Tiny", 2048))).unwrap();
    let null = reg.add(Box::new(NullBdev::new("Null", 64, 512))).unwrap();
    let r = reg.add(Box::new(ram("Ram", 1 << 20))).unwrap();
    let (s, b) = (reg.claim(src, "c").unwrap(), reg.claim(big, "c").unwrap());
    let (t, n, rh) = (
        reg.claim(tiny, "c").unwrap(),
        reg.claim(null, "c").unwrap(),
        reg.claim(r, "c").unwrap(),
    );
    let new = |src, sid, ram, rid| CacheBdev::new("c", Mode::WriteThrough, src, sid, ram, rid);
    let err = |r: Result<CacheBdev, IoStatus>| r.err();
    assert_eq!(
        err(new(s.clone(), src, n, null)),
        Some(IoStatus::Unsupported)
    );
    assert_eq!(err(new(s.clone(), src, t, tiny)), Some(IoStatus::NoSpace));
    assert_eq!(err(new(b, big, rh.clone(), r)), Some(IoStatus::Unsupported));
    let c = CacheBdev::new("rc-wb_Src", Mode::WriteBack, s, src, rh, r).unwrap();
    let i = c.info();
    assert_eq!(
        (i.name.as_str(), i.product.as_str()),
        ("rc-wb_Src", PRODUCT)
    );
    assert_eq!((i.block_size, i.num_blocks), (512, 2048));
    assert!(i.write_cache, "write-back is a volatile cache");
    assert!(i.queue_depth as usize <= MAX_REQUESTS);
    let st = c.stats();
    assert_eq!(
        (st.num_blocks, st.num_free_blocks, st.num_wb_blocks),
        (256, 256, 0)
    );
    assert_eq!((c.associativity(), c.mode()), (256, Mode::WriteBack));
    assert_eq!((c.source_id(), c.ram_id()), (src, r));
}

#[test]
fn refuses_beyond_its_cap_and_gives_its_devices_back() {
    let mut reg = Registry::new();
    let src = reg
        .add(Box::new(MallocBdev::new("Src", 2048, 512)))
        .unwrap();
    let r = reg.add(Box::new(ram("Ram", 64 << 10))).unwrap();
    let (s, rh) = (reg.claim(src, "c").unwrap(), reg.claim(r, "c").unwrap());
    let mut c = CacheBdev::new("c", Mode::WriteBack, s, src, rh, r).unwrap();
    let mut refused = None;
    for tag in 0..=MAX_REQUESTS as u64 {
        let mut buf = IoBuf::new(4096);
        buf.as_mut_slice().fill(tag as u8);
        let req = IoRequest {
            tag,
            op: IoOp::Write {
                lba: tag % 16 * 8,
                buf,
            },
            fua: false,
        };
        if let Err(back) = c.submit(req, 0) {
            refused = Some(back.tag);
            break;
        }
    }
    assert_eq!(refused, Some(MAX_REQUESTS as u64));
    let mut out = Vec::new();
    c.poll(1, &mut out);
    assert_eq!(out.len(), MAX_REQUESTS);
    assert!(out.iter().all(|c| c.status.is_ok()));
    // Removal: write back, take the handles, remove, release both.
    let id = reg.add(Box::new(c)).unwrap();
    let mut t = 10;
    let mut clock = || {
        t += 1;
        t
    };
    let (hs, hr) = reg
        .with_device(id, |c: &mut CacheBdev| {
            c.write_back_all(&mut clock).unwrap();
            assert_eq!(c.dirty_blocks(), 0);
            c.handles()
        })
        .unwrap();
    drop(reg.remove(id).unwrap());
    reg.release(src, hs).unwrap();
    reg.release(r, hr).unwrap();
    assert_eq!((reg.claimed_by(src), reg.claimed_by(r)), (None, None));
    // The source has the last data written to each block.
    reg.submit(
        src,
        IoRequest {
            tag: 1,
            op: IoOp::Read {
                lba: 15 * 8,
                buf: IoBuf::new(4096),
            },
            fua: false,
        },
        20,
    )
    .unwrap();
    let mut out = Vec::new();
    reg.poll(21, &mut out);
    let buf = out[0].1.buf.as_ref().unwrap();
    assert!(buf.as_slice().iter().all(|&b| b == 127));
}
