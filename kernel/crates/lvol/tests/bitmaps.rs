//! Persistent dirty bitmaps in a store: bits spread over several
//! clusters, growth with the volume, checksum damage, bitmaps a close did
//! not save, and a volume's bitmaps going with it.

mod common;

use common::*;
use ironbay_bdev::dirty::DirtyBitmap;
use ironbay_bdev::{MallocBdev, SharedBdev, Uuid};
use ironbay_lvol::{Clear, Error, Store};

const CS: u64 = 64 * 1024;

fn new_store() -> (Store, SharedBdev) {
    let base = shared(MallocBdev::new("m", 16 * 2048, 512));
    let s = Store::create(base.clone(), "Malloc0", "lvs0", CS, Uuid([7; 16]), clock).unwrap();
    (s, base)
}

fn reopen(s: Store, base: &SharedBdev) -> Store {
    drop(s);
    Store::open(base.clone(), "Malloc0", clock).unwrap()
}

fn bits(size: u64, granularity: u32, seed: u64) -> DirtyBitmap {
    let mut b = DirtyBitmap::new("b0", granularity, size).unwrap();
    b.persistent = true;
    let mut x = seed;
    for _ in 0..200 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        b.mark((x >> 16) % size, 1 + (x >> 50) % 70_000);
    }
    b
}

fn named<'a>(got: &'a [(u32, DirtyBitmap)], name: &str) -> &'a DirtyBitmap {
    &got.iter().find(|(_, b)| b.name == name).unwrap().1
}

#[test]
fn bits_over_several_clusters_survive_an_orderly_close_and_follow_growth() {
    let (s, base) = new_store();
    // 1 GiB thin at 512-byte granularity: 256 KiB of bits, four clusters.
    let v = s
        .create_volume("big", 1 << 30, true, Uuid([1; 16]), Clear::Zero)
        .unwrap();
    let free = s.info().free_clusters;
    s.add_bitmap(v, "b0", 512, 1 << 30, true).unwrap();
    assert_eq!(
        s.info().free_clusters,
        free - 4,
        "clusters reserved at once"
    );
    assert_eq!(s.bitmaps()[0].clusters, 4);
    let b = bits(1 << 30, 512, 1);
    assert!(s.close_saving(&[(v, &b)]).unwrap().is_empty());
    let s = reopen(s, &base);
    s.check().unwrap();
    let got = s.load_bitmaps();
    assert_eq!(got.len(), 1);
    let (gv, g) = &got[0];
    assert_eq!(*gv, v);
    assert!(!g.inconsistent && g.persistent && g.enabled);
    assert_eq!(g.words(), b.words());
    assert!(s.load_bitmaps().is_empty(), "handed out once");

    // The volume grew: the bits need a fifth cluster at the next close.
    s.resize(v, (1 << 30) + (256 << 20)).unwrap();
    let mut grown = g.clone();
    assert!(grown.resize((1 << 30) + (256 << 20)));
    grown.mark((1 << 30) + 4096, 512);
    assert!(s.close_saving(&[(v, &grown)]).unwrap().is_empty());
    assert_eq!(s.bitmaps()[0].clusters, 5);
    assert_eq!(s.bitmaps()[0].size, (1 << 30) + (256 << 20));
    let s = reopen(s, &base);
    s.check().unwrap();
    let got = s.load_bitmaps();
    assert_eq!(got[0].1.words(), grown.words());
    assert_eq!(got[0].1.dirty_bytes(), grown.dirty_bytes());
}

#[test]
fn damaged_or_unsaved_bits_are_reported_lost() {
    let (s, base) = new_store();
    let v = s
        .create_volume("vol", 8 << 20, true, Uuid([1; 16]), Clear::Zero)
        .unwrap();
    s.add_bitmap(v, "b0", 4096, 8 << 20, true).unwrap();
    s.add_bitmap(v, "unsaved", 65536, 8 << 20, false).unwrap();
    let b = bits(8 << 20, 4096, 2);
    // Only b0 is handed to the close: "unsaved" stays in use.
    assert!(s.close_saving(&[(v, &b)]).unwrap().is_empty());
    let s = reopen(s, &base);
    let mut got = s.load_bitmaps();
    got.sort_by(|a, b| a.1.name.cmp(&b.1.name));
    assert!(!got[0].1.inconsistent);
    assert!(got[1].1.inconsistent && !got[1].1.enabled);
    assert_eq!(got[1].1.dirty_bytes(), 0);

    // Power lost while running: nothing is trusted at the next load.
    let s = reopen(s, &base);
    assert!(s.load_bitmaps().iter().all(|(_, b)| b.inconsistent));

    // Saved again, then one byte of the bits is damaged on the disk.
    assert!(s.close_saving(&[(v, &b)]).unwrap().is_empty());
    drop(s);
    let s = Store::open(base.clone(), "Malloc0", clock).unwrap();
    assert!(!named(&s.load_bitmaps(), "b0").inconsistent);
    assert!(s.close_saving(&[(v, &b)]).unwrap().is_empty());
    drop(s);
    // Find the saved bits on the disk and flip one bit of them.
    let enc: Vec<u8> = b.words().iter().flat_map(|w| w.to_le_bytes()).collect();
    let mut o = Vec::new();
    let mut t = || clock();
    let img = {
        let mut d = base.borrow_mut();
        ironbay_bdev::sync::read(&mut **d, 0, 16 << 20, &mut t, &mut o).unwrap()
    };
    let at = img
        .as_slice()
        .windows(enc.len())
        .position(|w| w == enc.as_slice())
        .expect("saved bits on the disk");
    let lba = (at / 512) as u64;
    let mut blk = img.as_slice()[lba as usize * 512..][..512].to_vec();
    blk[at % 512 + 5] ^= 0x10;
    {
        let mut d = base.borrow_mut();
        ironbay_bdev::sync::write(&mut **d, lba, &blk, &mut t, &mut o).unwrap();
    }
    let s = Store::open(base.clone(), "Malloc0", clock).unwrap();
    let got = s.load_bitmaps();
    assert!(
        named(&got, "b0").inconsistent,
        "damaged bits are not trusted"
    );
    s.check().unwrap();
}

#[test]
fn a_volume_takes_its_bitmaps_along_and_names_are_checked() {
    let (s, base) = new_store();
    let v = s
        .create_volume("vol", 8 << 20, true, Uuid([1; 16]), Clear::Zero)
        .unwrap();
    let free = s.info().free_clusters;
    s.add_bitmap(v, "b0", 512, 8 << 20, true).unwrap();
    assert!(matches!(
        s.add_bitmap(v, "b0", 512, 8 << 20, true),
        Err(Error::Exists(_))
    ));
    assert!(matches!(
        s.add_bitmap(v, "", 512, 8 << 20, true),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        s.add_bitmap(v, &"x".repeat(1024), 512, 8 << 20, true),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        s.add_bitmap(v, "g", 1000, 8 << 20, true),
        Err(Error::Invalid(_))
    ));
    s.add_bitmap(v, &"n".repeat(1023), 4096, 8 << 20, true)
        .unwrap();
    assert_eq!(s.bitmaps().len(), 2);
    s.delete(v).unwrap();
    assert!(s.bitmaps().is_empty());
    assert_eq!(s.info().free_clusters, free);
    s.check().unwrap();
    let s = reopen(s, &base);
    assert!(s.bitmaps().is_empty());
    s.check().unwrap();
}

#[test]
fn a_load_takes_no_more_than_the_bitmap_budget() {
    let base = shared(MallocBdev::new("m", 96 * 2048, 512));
    let s = Store::create(
        base.clone(),
        "Malloc0",
        "lvs0",
        4 << 20,
        Uuid([9; 16]),
        clock,
    )
    .unwrap();
    // 40 MiB of bits: more than all bitmaps together may take in memory.
    let size = 40u64 << 32;
    let v = s
        .create_volume("huge", size, true, Uuid([1; 16]), Clear::Zero)
        .unwrap();
    s.add_bitmap(v, "b0", 512, size, true).unwrap();
    let b = DirtyBitmap::new("b0", 512, size).unwrap();
    assert!(s.close_saving(&[(v, &b)]).unwrap().is_empty());
    let s = reopen(s, &base);
    let got = s.load_bitmaps();
    assert!(got[0].1.inconsistent, "refused, not loaded");
    s.check().unwrap();
}
