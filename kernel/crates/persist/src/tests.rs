//! The area on RAM disks: round trips, slot choice, corruption of either
//! slot, limits, and power cuts at every write of many saves.

use super::*;
use crate::format::{HEADER_BLOCK, SLOT_BYTES};
use alloc::string::ToString;
use ironbay_bdev::powercut::PowerCutBdev;
use ironbay_bdev::{BdevInfo, IoCompletion, IoRequest, MallocBdev, sync};

fn clock() -> impl FnMut() -> u64 {
    let mut t = 0u64;
    move || {
        t += 1;
        t
    }
}

/// A device with 4 KiB transfers, so a payload takes several writes.
struct SmallIo<D> {
    inner: D,
    info: BdevInfo,
}

impl<D: BlockDevice> SmallIo<D> {
    fn new(inner: D) -> Self {
        let mut info = inner.info().clone();
        info.max_transfer = 4096;
        SmallIo { inner, info }
    }
}

impl<D: BlockDevice> BlockDevice for SmallIo<D> {
    fn info(&self) -> &BdevInfo {
        &self.info
    }
    fn submit(&mut self, req: IoRequest, now_us: u64) -> Result<(), IoRequest> {
        self.inner.submit(req, now_us)
    }
    fn poll(&mut self, now_us: u64, out: &mut Vec<IoCompletion>) -> usize {
        self.inner.poll(now_us, out)
    }
    fn in_flight(&self) -> usize {
        self.inner.in_flight()
    }
}

fn disk(block_size: u32) -> MallocBdev {
    MallocBdev::new("cfg", 3 * SLOT_BYTES / u64::from(block_size), block_size)
}

/// A config-like payload of about `len` bytes that names its version.
fn config(version: usize, len: usize) -> Vec<u8> {
    let mut s = alloc::format!("{{\"version\":{version},\"pad\":\"");
    while s.len() + 2 < len {
        s.push(char::from(b'a' + (version + s.len()) as u8 % 26));
    }
    s.push_str("\"}");
    s.into_bytes()
}

fn load(dev: &mut dyn BlockDevice) -> Option<Loaded> {
    Store::open(dev, &mut clock()).unwrap().1
}

#[test]
fn saves_alternate_slots_and_the_newest_loads() {
    for bs in [512, 4096] {
        let mut d = disk(bs);
        let mut c = clock();
        let (mut store, found) = Store::open(&mut d, &mut c).unwrap();
        assert!(found.is_none());
        assert_eq!(probe(&mut d, &mut c).unwrap(), None);
        for (i, len) in [10, 5000, 0, 700_000, 3].into_iter().enumerate() {
            let payload = config(i, len);
            let generation = store.save(&mut d, &payload, &mut c).unwrap();
            assert_eq!(generation, i as u64 + 1);
            let l = load(&mut d).unwrap();
            assert_eq!((l.slot, l.generation), ((i % 2) as u8, generation));
            assert_eq!(l.payload, payload);
            assert_eq!(probe(&mut d, &mut c).unwrap(), Some(generation));
        }
    }
}

#[test]
fn limits_are_refused_with_reasons() {
    let mut c = clock();
    let mut d = disk(512);
    let mut store = Store::default();
    let e = store
        .save(&mut d, &alloc::vec![b' '; MAX_PAYLOAD + 1], &mut c)
        .unwrap_err();
    assert_eq!(
        e,
        Error::TooLarge {
            bytes: MAX_PAYLOAD + 1
        }
    );
    assert!(e.to_string().contains("at most 1044480"), "{e}");
    store
        .save(&mut d, &alloc::vec![b' '; MAX_PAYLOAD], &mut c)
        .unwrap();
    assert_eq!(load(&mut d).unwrap().payload.len(), MAX_PAYLOAD);

    let mut small = MallocBdev::new("s", AREA_BYTES / 512 - 1, 512);
    let e = Store::open(&mut small, &mut c).unwrap_err();
    assert!(matches!(e, Error::TooSmall { .. }), "{e}");
    let mut odd = MallocBdev::new("o", 8192, 520);
    assert_eq!(
        Store::open(&mut odd, &mut c).unwrap_err(),
        Error::BlockSize(520)
    );
    assert_eq!(
        Store::default().save(&mut odd, b"{}", &mut c),
        Err(Error::BlockSize(520))
    );
}

/// Overwrites `len` bytes at `offset` with `fill`.
fn scribble(dev: &mut dyn BlockDevice, offset: u64, fill: u8) {
    let bs = dev.info().block_size as u64;
    let mut o = Vec::new();
    let mut c = clock();
    let block = sync::read(dev, offset / bs, bs as usize, &mut c, &mut o).unwrap();
    let mut b = block.as_slice().to_vec();
    b[(offset % bs) as usize] ^= fill;
    sync::write(dev, offset / bs, &b, &mut c, &mut o).unwrap();
}

#[test]
fn damage_to_either_slot_falls_back_to_the_other() {
    let older = config(1, 3000);
    let newer = config(2, 2000);
    let fresh = || {
        let mut d = disk(512);
        let mut s = Store::default();
        s.save(&mut d, &older, &mut clock()).unwrap(); // slot 0, gen 1
        s.save(&mut d, &newer, &mut clock()).unwrap(); // slot 1, gen 2
        d
    };
    let header = |slot: u64| slot * SLOT_BYTES + 20;
    let payload = |slot: u64| slot * SLOT_BYTES + HEADER_BLOCK as u64 + 1000;
    // Damage in the newest slot: the older config loads, and the next save
    // goes to the damaged slot with a generation above both.
    for at in [header(1), payload(1)] {
        let mut d = fresh();
        scribble(&mut d, at, 0x40);
        let (mut store, l) = Store::open(&mut d, &mut clock()).unwrap();
        let l = l.unwrap();
        assert_eq!((l.slot, l.generation, &l.payload), (0, 1, &older));
        assert_eq!(store.next_slot(), 1);
        let third = config(3, 100);
        let g = store.save(&mut d, &third, &mut clock()).unwrap();
        assert!(g > 1, "generation {g}");
        assert_eq!(load(&mut d).unwrap().payload, third);
    }
    // Damage in the older slot changes nothing.
    for at in [header(0), payload(0)] {
        let mut d = fresh();
        scribble(&mut d, at, 0x01);
        assert_eq!(load(&mut d).unwrap().payload, newer);
    }
    // Both damaged: nothing loads, and nothing panics.
    let mut d = fresh();
    scribble(&mut d, payload(0), 0x01);
    scribble(&mut d, header(1), 0x01);
    assert_eq!(load(&mut d), None);
}

#[test]
fn wipe_leaves_nothing_to_find() {
    let mut d = disk(512);
    let mut c = clock();
    let mut s = Store::default();
    s.save(&mut d, b"{\"a\":1}", &mut c).unwrap();
    s.save(&mut d, b"{\"a\":2}", &mut c).unwrap();
    s.wipe(&mut d, &mut c).unwrap();
    assert_eq!(probe(&mut d, &mut c).unwrap(), None);
    assert_eq!(load(&mut d), None);
}

#[test]
fn saver_writes_only_changes() {
    let mut d = disk(512);
    let mut c = clock();
    let mut store = Store::default();
    let mut saver = Saver::new();
    assert_eq!(
        saver.save_if_changed(&mut store, &mut d, b"{}", &mut c),
        Ok(Some(1))
    );
    assert_eq!(
        saver.save_if_changed(&mut store, &mut d, b"{}", &mut c),
        Ok(None)
    );
    assert_eq!(
        saver.save_if_changed(&mut store, &mut d, b"{\"x\":1}", &mut c),
        Ok(Some(2))
    );
    // What the area held at boot is adopted, not rewritten.
    let (mut store, l) = Store::open(&mut d, &mut c).unwrap();
    let mut saver = Saver::new();
    saver.adopt(&l.unwrap().payload);
    assert_eq!(
        saver.save_if_changed(&mut store, &mut d, b"{\"x\":1}", &mut c),
        Ok(None)
    );
    // A failed save is retried by the next call.
    let mut cut = PowerCutBdev::new(disk(512), Some(0), 0);
    let mut s2 = Store::default();
    let mut saver = Saver::new();
    assert!(
        saver
            .save_if_changed(&mut s2, &mut cut, b"{}", &mut c)
            .is_err()
    );
    assert!(!saver.is_saved(b"{}"));
}

/// Runs `configs` as successive saves on a disk that loses power after
/// `writes` writes (tearing the next one to `tear` blocks); returns the
/// surviving image and how many saves completed.
fn saves_until_cut(
    configs: &[Vec<u8>],
    writes: Option<u64>,
    tear: u64,
) -> (MallocBdev, usize, u64) {
    let mut dev = SmallIo::new(PowerCutBdev::new(disk(512), writes, tear));
    let mut c = clock();
    let mut store = Store::default();
    let mut saver = Saver::new();
    let mut done = 0;
    for cfg in configs {
        if saver
            .save_if_changed(&mut store, &mut dev, cfg, &mut c)
            .is_err()
        {
            break;
        }
        done += 1;
    }
    let writes = dev.inner.writes();
    (dev.inner.into_disk(), done, writes)
}

#[test]
fn power_cut_at_every_write_of_many_saves_leaves_old_or_new() {
    // Sizes that grow, shrink and cross the 4 KiB transfer boundary.
    let sizes = [
        40, 5000, 12_000, 300, 9000, 4096, 1, 16_384, 2500, 7000, 120, 20_000, 64, 8191, 3000,
        11_000, 512, 6000, 100, 15_000, 4000, 900, 13_000, 2048, 50, 10_000, 777, 9500, 33, 4097,
    ];
    let configs: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| config(i, n))
        .collect();
    let (_, all, total) = saves_until_cut(&configs, None, 0);
    assert_eq!(all, configs.len());
    let mut cuts = 0;
    for writes in 0..=total {
        for tear in [0, 1, 3, 8] {
            let (mut image, done, _) = saves_until_cut(&configs, Some(writes), tear);
            cuts += 1;
            let (mut store, found) = Store::open(&mut image, &mut clock())
                .unwrap_or_else(|e| panic!("cut after {writes} writes, tear {tear}: {e}"));
            match found {
                None => assert_eq!(done, 0, "cut after {writes} writes lost saved config"),
                Some(l) => {
                    // The last completed save, or the one the cut interrupted.
                    let ok = (done > 0 && l.payload == configs[done - 1])
                        || (done < configs.len() && l.payload == configs[done]);
                    assert!(
                        ok,
                        "cut after {writes} writes, tear {tear}: found generation {} (saves done {done})",
                        l.generation
                    );
                }
            }
            // The appliance carries on saving from what it found.
            let next = config(99, 3333);
            store.save(&mut image, &next, &mut clock()).unwrap();
            assert_eq!(load(&mut image).unwrap().payload, next);
        }
    }
    assert!(cuts >= 300, "only {cuts} cuts");
    std::println!(
        "{cuts} power cuts over {total} writes of {} saves",
        configs.len()
    );
}
