//! Volume store behaviour: provisioning, snapshots and clones, resizing,
//! renames, deletes, tasting.

mod common;

use common::*;
use ironbay_bdev::{BlockDevice, IoOp, IoStatus, MallocBdev, Uuid};
use ironbay_lvol::{Clear, Error, Store};

const CS: u64 = 64 * 1024;

fn uuid(n: u8) -> Uuid {
    Uuid([n; 16])
}

fn new_store(mib: u64) -> Store {
    let base = shared(MallocBdev::new("m", mib * 2048, 512));
    Store::create(base, "Malloc0", "lvs0", CS, uuid(0xa5), clock).unwrap()
}

#[test]
fn thick_and_thin_provisioning_and_free_cluster_arithmetic() {
    let s = new_store(8);
    let total = s.info().total_data_clusters;
    assert!(total > 50, "{total}");
    assert_eq!(s.info().free_clusters, total);
    let a = s
        .create_volume("thick", 3 * CS - 1, false, uuid(1), Clear::Zero)
        .unwrap();
    assert_eq!(s.info().free_clusters, total - 3);
    assert_eq!(s.volume(a).unwrap().size_bytes, 3 * CS, "rounded up");
    let t = s
        .create_volume("thin", 10 * CS, true, uuid(2), Clear::Zero)
        .unwrap();
    assert_eq!(s.info().free_clusters, total - 3);
    let mut tb = s.bdev(t).unwrap();
    assert_eq!(
        tb.allocation(0, 10 * 128),
        Some(vec![(10 * 128, false)]),
        "thin volume is all hole"
    );
    // A 4 KiB write in cluster 2 allocates exactly one cluster.
    let data = pattern(5, 4096);
    assert_eq!(write(&mut tb, 2 * 128 + 16, &data), IoStatus::Success);
    assert_eq!(s.info().free_clusters, total - 4);
    assert_eq!(s.volume(t).unwrap().allocated_clusters, 1);
    assert_eq!(read(&mut tb, 2 * 128 + 16, 4096).unwrap(), data);
    // The rest of the new cluster reads zeroes, neighbours are holes.
    assert!(
        read(&mut tb, 2 * 128, 8192).unwrap()[..8192]
            .iter()
            .all(|&b| b == 0)
    );
    assert_eq!(
        tb.allocation(0, 10 * 128),
        Some(vec![(256, false), (128, true), (896, false)])
    );
    // Unmapping the whole cluster gives it back.
    assert!(
        io(
            &mut tb,
            IoOp::Unmap {
                lba: 256,
                blocks: 128
            }
        )
        .status
        .is_ok()
    );
    assert_eq!(s.info().free_clusters, total - 3);
    assert!(read(&mut tb, 256, 4096).unwrap().iter().all(|&b| b == 0));
    // Duplicate names are refused; deleting frees the thick clusters.
    assert!(matches!(
        s.create_volume("thick", CS, true, uuid(3), Clear::Zero),
        Err(Error::Exists(_))
    ));
    s.delete(a).unwrap();
    assert_eq!(s.info().free_clusters, total);
    assert!(matches!(
        s.create_volume("big", (total + 1) * CS, false, uuid(4), Clear::Zero),
        Err(Error::NoSpace)
    ));
    s.check().unwrap();
}

#[test]
fn writes_spanning_clusters_and_thin_space_exhaustion() {
    let s = new_store(4);
    let total = s.info().total_data_clusters;
    let t = s
        .create_volume("t", (total + 4) * CS, true, uuid(1), Clear::Zero)
        .unwrap();
    let mut b = s.bdev(t).unwrap();
    // One write across four clusters (blocks 120..392).
    let data = pattern(9, (2 * CS + 8192) as usize);
    assert_eq!(write(&mut b, 120, &data), IoStatus::Success);
    assert_eq!(read(&mut b, 120, data.len()).unwrap(), data);
    assert_eq!(s.volume(t).unwrap().allocated_clusters, 4);
    // Overwrite in place (all clusters mapped: no allocation).
    let d2 = pattern(10, data.len());
    assert_eq!(write(&mut b, 120, &d2), IoStatus::Success);
    assert_eq!(read(&mut b, 120, d2.len()).unwrap(), d2);
    // Fill the store: the write past the last free cluster fails ENOSPC-style.
    let mut st = IoStatus::Success;
    for c in 4..total + 4 {
        st = write(&mut b, c * 128, &[1u8; 512]);
        if st != IoStatus::Success {
            break;
        }
    }
    assert_eq!(st, IoStatus::NoSpace);
    assert_eq!(s.info().free_clusters, 0);
    s.check().unwrap();
}

#[test]
fn snapshot_clone_inflate_decouple_and_delete_rules() {
    let s = new_store(8);
    let o = s
        .create_volume("origin", 4 * CS, false, uuid(1), Clear::Zero)
        .unwrap();
    let mut ob = s.bdev(o).unwrap();
    let d1 = pattern(1, (4 * CS) as usize);
    assert_eq!(write(&mut ob, 0, &d1), IoStatus::Success);
    let free0 = s.info().free_clusters;
    let snap = s.snapshot(o, "snap", uuid(2)).unwrap();
    assert_eq!(s.info().free_clusters, free0, "snapshot copies nothing");
    let si = s.volume(snap).unwrap();
    assert!(si.read_only && si.is_snapshot && si.clones == vec!["origin".to_string()]);
    let oi = s.volume(o).unwrap();
    assert!(oi.is_clone && oi.thin && oi.parent.as_deref() == Some("snap"));
    ob.refresh();
    // The origin still reads its data; a write copies one cluster up.
    assert_eq!(read(&mut ob, 0, d1.len()).unwrap(), d1);
    let d2 = pattern(2, 4096);
    assert_eq!(write(&mut ob, 128 + 8, &d2), IoStatus::Success);
    assert_eq!(s.info().free_clusters, free0 - 1);
    let mut want = d1.clone();
    want[(128 + 8) * 512..(128 + 8) * 512 + 4096].copy_from_slice(&d2);
    assert_eq!(read(&mut ob, 0, want.len()).unwrap(), want);
    // The snapshot is untouched and read-only to the registry.
    let mut sb = s.bdev(snap).unwrap();
    assert_eq!(read(&mut sb, 0, d1.len()).unwrap(), d1);
    assert!(sb.info().read_only);
    // Clones: only of read-only volumes.
    assert!(matches!(
        s.clone_volume(o, "bad", uuid(9)),
        Err(Error::Invalid(_))
    ));
    let c = s.clone_volume(snap, "clone", uuid(3)).unwrap();
    let mut cb = s.bdev(c).unwrap();
    assert_eq!(read(&mut cb, 0, d1.len()).unwrap(), d1);
    // A snapshot with two clones cannot go.
    assert!(matches!(s.delete(snap), Err(Error::Busy(_))));
    // Inflate the clone: it owns every cluster and has no parent.
    s.inflate(c).unwrap();
    let ci = s.volume(c).unwrap();
    assert!(!ci.is_clone && ci.allocated_clusters == 4 && !ci.thin);
    cb.refresh();
    assert_eq!(read(&mut cb, 0, d1.len()).unwrap(), d1);
    // Decouple the origin: copies only what the snapshot holds.
    s.decouple_parent(o).unwrap();
    assert!(!s.volume(o).unwrap().is_clone);
    assert_eq!(read(&mut ob, 0, want.len()).unwrap(), want);
    // Now the snapshot has no clones and can be deleted.
    s.delete(snap).unwrap();
    s.check().unwrap();
}

#[test]
fn deleting_a_snapshot_with_one_clone_merges_it() {
    let s = new_store(8);
    let o = s
        .create_volume("o", 3 * CS, true, uuid(1), Clear::Zero)
        .unwrap();
    let mut ob = s.bdev(o).unwrap();
    let d = pattern(4, (3 * CS) as usize);
    assert_eq!(write(&mut ob, 0, &d), IoStatus::Success);
    let snap = s.snapshot(o, "s", uuid(2)).unwrap();
    let d2 = pattern(5, 512);
    assert_eq!(write(&mut ob, 0, &d2), IoStatus::Success);
    let free = s.info().free_clusters;
    s.delete(snap).unwrap();
    // The clone kept its own cluster 0 and took clusters 1-2; the
    // snapshot's cluster 0 was freed.
    assert_eq!(s.info().free_clusters, free + 1);
    let oi = s.volume(o).unwrap();
    assert!(!oi.is_clone && oi.allocated_clusters == 3);
    let mut want = d.clone();
    want[..512].copy_from_slice(&d2);
    assert_eq!(read(&mut ob, 0, want.len()).unwrap(), want);
    s.check().unwrap();
}

/// A short snapshot hides its own parent beyond its end: a clone grown past
/// it reads zeroes there. Removing that snapshot from the chain (deleting
/// it, or decoupling the clone) must not let the older data show through.
#[test]
fn removing_a_short_snapshot_does_not_expose_older_data() {
    for decouple in [false, true] {
        let s = new_store(8);
        let v = s
            .create_volume("v", 4 * CS, true, uuid(1), Clear::Zero)
            .unwrap();
        let mut vb = s.bdev(v).unwrap();
        let d = pattern(7, (4 * CS) as usize);
        assert_eq!(write(&mut vb, 0, &d), IoStatus::Success);
        s.snapshot(v, "old", uuid(2)).unwrap();
        s.resize(v, 2 * CS).unwrap();
        let short = s.snapshot(v, "short", uuid(3)).unwrap();
        s.resize(v, 4 * CS).unwrap();
        let mut want = d[..(2 * CS) as usize].to_vec();
        want.resize((4 * CS) as usize, 0);
        assert_eq!(read(&mut vb, 0, want.len()).unwrap(), want);
        if decouple {
            s.decouple_parent(v).unwrap();
            assert_eq!(s.volume(v).unwrap().parent.as_deref(), Some("old"));
        } else {
            s.delete(short).unwrap();
        }
        assert_eq!(
            read(&mut vb, 0, want.len()).unwrap(),
            want,
            "decouple: {decouple}"
        );
        s.check().unwrap();
    }
}

#[test]
fn resize_rename_read_only_and_grow() {
    let base = shared(MallocBdev::new("m", 8 * 2048, 512));
    let s = Store::create(base.clone(), "Malloc0", "lvs0", CS, uuid(7), clock).unwrap();
    let total = s.info().total_data_clusters;
    let v = s
        .create_volume("v", 2 * CS, false, uuid(1), Clear::Zero)
        .unwrap();
    let mut vb = s.bdev(v).unwrap();
    assert_eq!(
        write(&mut vb, 0, &pattern(1, (2 * CS) as usize)),
        IoStatus::Success
    );
    s.resize(v, 5 * CS).unwrap();
    vb.refresh();
    assert_eq!(vb.info().num_blocks, 5 * 128);
    assert_eq!(s.info().free_clusters, total - 5);
    // Grown thick clusters read zeroes.
    assert!(
        read(&mut vb, 2 * 128, (3 * CS) as usize)
            .unwrap()
            .iter()
            .all(|&b| b == 0)
    );
    s.resize(v, CS + 1).unwrap();
    assert_eq!(s.info().free_clusters, total - 2);
    s.rename_volume(v, "w").unwrap();
    assert_eq!(s.find("w"), Some(v));
    assert_eq!(s.find("v"), None);
    let v2 = s
        .create_volume("x", CS, true, uuid(2), Clear::Zero)
        .unwrap();
    assert!(matches!(s.rename_volume(v2, "w"), Err(Error::Exists(_))));
    s.rename("store2").unwrap();
    assert_eq!(s.info().name, "store2");
    s.set_read_only(v2).unwrap();
    let xb = s.bdev(v2).unwrap();
    assert!(xb.info().read_only);
    assert!(s.resize(v2, 2 * CS).is_err());
    let _ = xb.allocation(0, 1);
    // The base grows; the store takes the new space in.
    base.borrow_mut().resize(16 * 2048).unwrap();
    let grown = s.grow().unwrap();
    assert!(grown >= total + 120, "{grown} vs {total}");
    assert_eq!(s.info().total_data_clusters, grown);
    s.check().unwrap();
}

#[test]
fn tasting_finds_everything_again() {
    let base = shared(MallocBdev::new("m", 8 * 2048, 512));
    let s = Store::create(base.clone(), "Malloc0", "lvs0", CS, uuid(7), clock).unwrap();
    let a = s
        .create_volume("a", 3 * CS, false, uuid(1), Clear::Zero)
        .unwrap();
    let t = s
        .create_volume("t", 9 * CS, true, uuid(2), Clear::Zero)
        .unwrap();
    let mut ab = s.bdev(a).unwrap();
    let mut tb = s.bdev(t).unwrap();
    assert_eq!(write(&mut ab, 5, &pattern(1, 8192)), IoStatus::Success);
    assert_eq!(write(&mut tb, 700, &pattern(2, 8192)), IoStatus::Success);
    let snap = s.snapshot(t, "ts", uuid(3)).unwrap();
    s.rename("renamed").unwrap();
    let before = (s.info(), s.volumes());
    let da = digest(&mut ab).unwrap();
    let dt = digest(&mut tb).unwrap();
    drop((ab, tb, s));
    assert!(Store::probe(&mut **base.borrow_mut(), clock));
    let s = Store::open(base.clone(), "Malloc0", clock).unwrap();
    assert!(!s.was_clean());
    assert_eq!((s.info(), s.volumes()), before);
    assert_eq!(digest(&mut s.bdev(a).unwrap()).unwrap(), da);
    assert_eq!(digest(&mut s.bdev(t).unwrap()).unwrap(), dt);
    assert!(s.volume(snap).unwrap().read_only);
    s.check().unwrap();
    s.close().unwrap();
    drop(s);
    let s = Store::open(base.clone(), "Malloc0", clock).unwrap();
    assert!(s.was_clean());
    // Many small commits roll the journal over into checkpoints.
    for i in 0..600 {
        s.rename(&format!("n{i}")).unwrap();
    }
    drop(s);
    let s = Store::open(base.clone(), "Malloc0", clock).unwrap();
    assert_eq!(s.info().name, "n599");
    s.destroy().unwrap();
    drop(s);
    assert!(!Store::probe(&mut **base.borrow_mut(), clock));
}

#[test]
fn damaged_metadata_is_refused_not_guessed() {
    let base = shared(MallocBdev::new("m", 8 * 2048, 512));
    let s = Store::create(base.clone(), "Malloc0", "lvs0", CS, uuid(7), clock).unwrap();
    s.create_volume("a", 3 * CS, false, uuid(1), Clear::Zero)
        .unwrap();
    drop(s);
    // Flip a byte in the super block: the store is not loaded.
    {
        let mut b = base.borrow_mut();
        let mut o = Vec::new();
        let mut blk = ironbay_bdev::sync::read(&mut **b, 0, 512, &mut || clock(), &mut o).unwrap();
        blk.as_mut_slice()[40] ^= 1;
        ironbay_bdev::sync::write(&mut **b, 0, blk.as_slice(), &mut || clock(), &mut o).unwrap();
    }
    assert!(matches!(
        Store::open(base.clone(), "Malloc0", clock),
        Err(Error::Damaged(_))
    ));
}

/// A disk that says unmapped blocks read zeroes but keeps the data (as NVMe
/// deallocate and SCSI UNMAP may: they are hints).
struct KeepsUnmapped(MallocBdev);

impl BlockDevice for KeepsUnmapped {
    fn info(&self) -> &ironbay_bdev::BdevInfo {
        self.0.info()
    }
    fn submit(
        &mut self,
        req: ironbay_bdev::IoRequest,
        now: u64,
    ) -> Result<(), ironbay_bdev::IoRequest> {
        match req.op {
            IoOp::Unmap { .. } => self.0.submit(
                ironbay_bdev::IoRequest {
                    tag: req.tag,
                    op: IoOp::Flush,
                    fua: false,
                },
                now,
            ),
            _ => self.0.submit(req, now),
        }
    }
    fn poll(&mut self, now: u64, out: &mut Vec<ironbay_bdev::IoCompletion>) -> usize {
        self.0.poll(now, out)
    }
    fn in_flight(&self) -> usize {
        self.0.in_flight()
    }
}

#[test]
fn new_thick_clusters_read_zeroes_even_where_unmap_keeps_data() {
    let base = shared(KeepsUnmapped(MallocBdev::new("m", 8 * 2048, 512)));
    assert!(base.borrow().info().unmap_zeroes);
    let s = Store::create(base, "Malloc0", "lvs0", CS, uuid(7), clock).unwrap();
    let a = s
        .create_volume("a", 4 * CS, false, uuid(1), Clear::Zero)
        .unwrap();
    let mut ab = s.bdev(a).unwrap();
    assert_eq!(
        write(&mut ab, 0, &vec![0x5a; (4 * CS) as usize]),
        IoStatus::Success
    );
    s.delete(a).unwrap();
    let b = s
        .create_volume("b", 4 * CS, false, uuid(2), Clear::Zero)
        .unwrap();
    let mut bb = s.bdev(b).unwrap();
    let back = read(&mut bb, 0, (4 * CS) as usize).unwrap();
    assert!(
        back.iter().all(|&x| x == 0),
        "a new thick volume shows old data"
    );
    // Partial unmaps of owned clusters zero too.
    assert_eq!(write(&mut bb, 0, &vec![0x77; 4096]), IoStatus::Success);
    assert!(
        io(&mut bb, IoOp::Unmap { lba: 0, blocks: 8 })
            .status
            .is_ok()
    );
    assert!(read(&mut bb, 0, 4096).unwrap().iter().all(|&x| x == 0));
}

#[test]
fn write_zeroes_zeroes_and_keeps_its_buffer() {
    let s = new_store(8);
    let v = s
        .create_volume("v", 4 * CS, false, uuid(1), Clear::Zero)
        .unwrap();
    let mut b = s.bdev(v).unwrap();
    let d = pattern(3, (2 * CS) as usize);
    assert_eq!(write(&mut b, 0, &d), IoStatus::Success);
    // Within one cluster (one base request) and across two.
    for (lba, blocks) in [(8, 16), (100, 60)] {
        let c = io(&mut b, IoOp::WriteZeroes { lba, blocks });
        assert_eq!(c.status, IoStatus::Success);
        assert!(c.buf.is_none(), "the zero buffer is the volume's own");
        let got = read(&mut b, lba, blocks as usize * 512).unwrap();
        assert!(got.iter().all(|&x| x == 0));
    }
    let got = read(&mut b, 0, 8 * 512).unwrap();
    assert_eq!(got, d[..8 * 512]);
    s.check().unwrap();
}
