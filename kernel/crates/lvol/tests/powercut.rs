//! Power cut at every write point of every metadata operation.
//!
//! A scripted sequence of operations (store creation, volume create, thin
//! allocations, snapshot, clone, resize, rename, inflate, decouple, delete,
//! unmap, grow, persistent bitmaps added, removed, saved by an orderly
//! close and loaded again) first runs on a disk that never loses power, recording the
//! store's state and every volume's content after each step. Then, for every
//! write the sequence makes, it runs again on a disk that loses power at
//! that write (cleanly, and torn after one block), and the surviving image
//! is loaded. The store must open (unless the cut came before its super
//! block existed); every step that completed must be there; the interrupted
//! one wholly there or wholly absent; and the load-time checker (no cluster
//! leaked or owned twice) must pass. A bitmap may load whole only with the
//! bits of the last completed save; otherwise it must load as lost.

mod common;

use common::*;
use ironbay_bdev::dirty::DirtyBitmap;
use ironbay_bdev::powercut::PowerCutBdev;
use ironbay_bdev::{IoOp, IoStatus, MallocBdev, SharedBdev, Uuid};
use ironbay_lvol::{BitmapInfo, Clear, Store, StoreInfo, VolumeInfo};

const CS: u64 = 64 * 1024;

thread_local! {
    /// Block size of the disk the current test runs on.
    static BS: std::cell::Cell<u64> = const { std::cell::Cell::new(512) };
}

/// The block holding byte `b`.
fn lba(b: u64) -> u64 {
    b / BS.with(|x| x.get())
}
const DISK_BYTES: u64 = 6 << 20;

/// What a step leaves behind: store info, volumes, each volume's digest,
/// and the persistent bitmaps' descriptions.
type Snapshot = Option<(
    StoreInfo,
    Vec<VolumeInfo>,
    Vec<(String, u32)>,
    Vec<BitmapInfo>,
)>;

/// The bits the `n`th orderly close saves for bitmap b0 of the thin volume.
fn saved_bits(n: u64) -> DirtyBitmap {
    let mut b = DirtyBitmap::new("b0", 512, 2 * CS).unwrap();
    b.persistent = true;
    b.mark(512 * n, 1);
    b.mark(CS + 4096 * n, 3000);
    b.enabled = n.is_multiple_of(2);
    b
}

/// Orderly close saving b0 with the `n`th bits.
fn close_saving(s: &Store, n: u64) -> Result<(), String> {
    let v = id(s, "thin-renamed")?;
    let failed = s
        .close_saving(&[(v, &saved_bits(n))])
        .map_err(|e| e.to_string())?;
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("not saved: {failed:?}"))
    }
}

/// The disk under test: small transfers, so cluster copies and
/// checkpoints are many writes, each a cut point.
fn disk(block: u32, max_transfer: u32) -> MallocBdev {
    let mut d = MallocBdev::new("m", DISK_BYTES / block as u64, block);
    d.set_max_transfer(max_transfer);
    d
}

fn uuid(n: u8) -> Uuid {
    Uuid([n; 16])
}

fn capture(s: &Store) -> Snapshot {
    let mut digests = Vec::new();
    for v in s.volumes() {
        let mut b = s.bdev(v.id)?;
        digests.push((v.name.clone(), digest(&mut b).ok()?));
    }
    Some((s.info(), s.volumes(), digests, s.bitmaps()))
}

fn ok(st: IoStatus) -> Result<(), String> {
    if st.is_ok() {
        Ok(())
    } else {
        Err(format!("{st}"))
    }
}

fn id(s: &Store, name: &str) -> Result<u32, String> {
    s.find(name).ok_or_else(|| format!("no volume {name}"))
}

type Step = fn(&mut Option<Store>, &SharedBdev) -> Result<(), String>;

fn steps() -> Vec<(&'static str, Step)> {
    vec![
        ("create store", |s, base| {
            *s = Some(
                Store::create(base.clone(), "Malloc0", "lvs", CS, uuid(0x5a), clock)
                    .map_err(|e| e.to_string())?,
            );
            Ok(())
        }),
        ("create thick", |s, _| {
            let s = s.as_ref().unwrap();
            s.create_volume("thick", 3 * CS, false, uuid(1), Clear::Zero)
                .map(|_| ())
                .map_err(|e| e.to_string())
        }),
        ("write thick", |s, _| {
            let s = s.as_ref().unwrap();
            let mut b = s.bdev(id(s, "thick")?).unwrap();
            ok(write(&mut b, lba(8192), &pattern(1, (2 * CS) as usize)))
        }),
        ("create thin", |s, _| {
            let s = s.as_ref().unwrap();
            s.create_volume("thin", 6 * CS, true, uuid(2), Clear::Zero)
                .map(|_| ())
                .map_err(|e| e.to_string())
        }),
        ("add bitmap", |s, _| {
            let s = s.as_ref().unwrap();
            s.add_bitmap(id(s, "thin")?, "b0", 512, 6 * CS, true)
                .map_err(|e| e.to_string())
        }),
        ("allocating write", |s, _| {
            let s = s.as_ref().unwrap();
            let mut b = s.bdev(id(s, "thin")?).unwrap();
            ok(write(&mut b, lba(CS + 4096), &pattern(2, 4096)))
        }),
        ("allocating write across clusters", |s, _| {
            let s = s.as_ref().unwrap();
            let mut b = s.bdev(id(s, "thin")?).unwrap();
            ok(write(&mut b, lba(3 * CS - 4096), &pattern(3, 8192)))
        }),
        ("snapshot", |s, _| {
            let s = s.as_ref().unwrap();
            s.snapshot(id(s, "thick")?, "snap", uuid(3))
                .map(|_| ())
                .map_err(|e| e.to_string())
        }),
        ("copy-on-write", |s, _| {
            let s = s.as_ref().unwrap();
            let mut b = s.bdev(id(s, "thick")?).unwrap();
            ok(write(&mut b, lba(CS + 4096), &pattern(4, 4096)))
        }),
        ("clone", |s, _| {
            let s = s.as_ref().unwrap();
            s.clone_volume(id(s, "snap")?, "clone", uuid(4))
                .map(|_| ())
                .map_err(|e| e.to_string())
        }),
        ("add bitmap on clone", |s, _| {
            let s = s.as_ref().unwrap();
            s.add_bitmap(id(s, "clone")?, "bc", 4096, 3 * CS, false)
                .map_err(|e| e.to_string())
        }),
        ("write clone", |s, _| {
            let s = s.as_ref().unwrap();
            let mut b = s.bdev(id(s, "clone")?).unwrap();
            ok(write(&mut b, lba(2 * CS), &pattern(5, CS as usize)))
        }),
        ("grow thin", |s, _| {
            let s = s.as_ref().unwrap();
            s.resize(id(s, "thin")?, 9 * CS).map_err(|e| e.to_string())
        }),
        ("shrink thin", |s, _| {
            let s = s.as_ref().unwrap();
            s.resize(id(s, "thin")?, 2 * CS).map_err(|e| e.to_string())
        }),
        ("create thick2", |s, _| {
            let s = s.as_ref().unwrap();
            s.create_volume("thick2", CS, false, uuid(5), Clear::Zero)
                .map(|_| ())
                .map_err(|e| e.to_string())
        }),
        ("add bitmap b1", |s, _| {
            let s = s.as_ref().unwrap();
            s.add_bitmap(id(s, "thick2")?, "b1", 65536, CS, true)
                .map_err(|e| e.to_string())
        }),
        ("grow thick", |s, _| {
            let s = s.as_ref().unwrap();
            s.resize(id(s, "thick2")?, 3 * CS)
                .map_err(|e| e.to_string())
        }),
        ("rename volume", |s, _| {
            let s = s.as_ref().unwrap();
            s.rename_volume(id(s, "thin")?, "thin-renamed")
                .map_err(|e| e.to_string())
        }),
        ("remove bitmap b1", |s, _| {
            let s = s.as_ref().unwrap();
            s.remove_bitmap(id(s, "thick2")?, "b1")
                .map_err(|e| e.to_string())
        }),
        ("rename store", |s, _| {
            s.as_ref()
                .unwrap()
                .rename("lvs2")
                .map_err(|e| e.to_string())
        }),
        ("inflate", |s, _| {
            let s = s.as_ref().unwrap();
            s.inflate(id(s, "clone")?).map_err(|e| e.to_string())
        }),
        ("decouple", |s, _| {
            let s = s.as_ref().unwrap();
            s.decouple_parent(id(s, "thick")?)
                .map_err(|e| e.to_string())
        }),
        ("set read-only", |s, _| {
            let s = s.as_ref().unwrap();
            s.set_read_only(id(s, "thick2")?).map_err(|e| e.to_string())
        }),
        ("unmap frees a cluster", |s, _| {
            let s = s.as_ref().unwrap();
            let mut b = s.bdev(id(s, "thin-renamed")?).unwrap();
            ok(io(
                &mut b,
                IoOp::Unmap {
                    lba: lba(CS),
                    blocks: lba(CS) as u32,
                },
            )
            .status)
        }),
        ("snapshot again", |s, _| {
            let s = s.as_ref().unwrap();
            s.snapshot(id(s, "thin-renamed")?, "snap2", uuid(6))
                .map(|_| ())
                .map_err(|e| e.to_string())
        }),
        ("delete snapshot with one clone", |s, _| {
            let s = s.as_ref().unwrap();
            s.delete(id(s, "snap2")?).map_err(|e| e.to_string())
        }),
        ("delete volume", |s, _| {
            let s = s.as_ref().unwrap();
            s.delete(id(s, "clone")?).map_err(|e| e.to_string())
        }),
        ("grow store", |s, base| {
            base.borrow_mut()
                .resize(lba(DISK_BYTES + 16 * CS))
                .map_err(|e| e.to_string())?;
            s.as_ref()
                .unwrap()
                .grow()
                .map(|_| ())
                .map_err(|e| e.to_string())
        }),
        ("clean close saving a bitmap", |s, _| {
            close_saving(s.as_ref().unwrap(), 1)
        }),
        ("reopen", |s, base| {
            *s = None;
            *s = Some(Store::open(base.clone(), "Malloc0", clock).map_err(|e| e.to_string())?);
            Ok(())
        }),
        ("close saving it again", |s, _| {
            close_saving(s.as_ref().unwrap(), 2)
        }),
    ]
}

/// Runs the steps on `dev`; returns the snapshots after each completed
/// step and the index of the step that failed, if one did.
fn run(dev: PowerCutBdev, record: bool) -> (Vec<Snapshot>, Option<usize>, SharedBdev) {
    let base = shared(dev);
    let mut store = None;
    let mut snaps = Vec::new();
    for (i, (name, step)) in steps().into_iter().enumerate() {
        if let Err(e) = step(&mut store, &base) {
            let _ = (name, e);
            return (snaps, Some(i), base);
        }
        snaps.push(if record {
            capture(store.as_ref().unwrap())
        } else {
            None
        });
    }
    (snaps, None, base)
}

/// The image left on the base after a run.
fn image(base: SharedBdev) -> MallocBdev {
    let dev = std::rc::Rc::try_unwrap(base)
        .ok()
        .expect("store dropped")
        .into_inner();
    // The box holds a PowerCutBdev; rebuild the surviving disk from its
    // content.
    let mut dev = dev;
    let info = dev.info().clone();
    let mut image = MallocBdev::new("m", info.num_blocks, info.block_size);
    let mut o = Vec::new();
    let bytes = (info.num_blocks * info.block_size as u64) as usize;
    let mut t = || clock();
    let mut data = vec![0u8; bytes];
    // The power-cut disk refuses reads once cut; take the image from the
    // inner disk instead.
    let any = dev.as_any_mut().expect("power-cut disk exposes itself");
    let pc = any
        .downcast_mut::<PowerCutBdev>()
        .expect("a power-cut disk");
    let inner = pc.disk_mut();
    ironbay_bdev::sync::read_into(inner, 0, &mut data, &mut t, &mut o).unwrap();
    ironbay_bdev::sync::write(&mut image, 0, &data, &mut t, &mut o).unwrap();
    image
}

#[test]
fn every_write_point_on_a_512_byte_disk() {
    cut_everywhere(512, 2048, &[0, 1, 3], 750);
}

#[test]
fn every_write_point_on_a_4k_disk() {
    cut_everywhere(4096, 16384, &[0, 1, 2, 3], 250);
}

/// A bitmap is found whole only as an orderly close left it: after the
/// close that was cut (if its record made it), or the previous close when
/// a reopen was cut before it marked the bitmap in use. Anything else
/// finds it lost, never holding bits that are not current.
/// Returns how many bitmaps were found (whole, lost).
fn check_bits(
    s: &Store,
    k: usize,
    now: &Snapshot,
    after: &Snapshot,
    n: u64,
    tear: u64,
) -> (u32, u32) {
    let mut counts = (0, 0);
    let step = steps()[k].0;
    let loaded = s.load_bitmaps();
    for (_, b) in loaded {
        let allowed = match step {
            "clean close saving a bitmap" if now == after => Some(1),
            "close saving it again" if now == after => Some(2),
            "reopen" => Some(1),
            _ => None,
        };
        let must = matches!(
            step,
            "clean close saving a bitmap" | "close saving it again"
        ) && now == after;
        if b.inconsistent {
            assert!(
                !must,
                "cut {n}/{tear} in step {k} ({step}): {} lost after its save",
                b.name
            );
            counts.1 += 1;
            continue;
        }
        let Some(save) = allowed else {
            panic!(
                "cut {n}/{tear} in step {k} ({step}): {} trusted while in use",
                b.name
            );
        };
        let want = saved_bits(save);
        assert_eq!(
            (b.words(), b.size(), b.granularity, b.enabled),
            (want.words(), want.size(), want.granularity, want.enabled),
            "cut {n}/{tear} in step {k} ({step}): {} holds other bits",
            b.name
        );
        counts.0 += 1;
    }
    counts
}

/// `min_cuts`: the two geometries together make over a thousand.
fn cut_everywhere(block: u32, max_transfer: u32, tears: &[u64], min_cuts: u32) {
    BS.with(|x| x.set(block as u64));
    let (golden, failed, base) = run(PowerCutBdev::new(disk(block, max_transfer), None, 0), true);
    assert_eq!(failed, None, "the uncut run completes every step");
    let writes = {
        let mut b = base.borrow_mut();
        let pc = b
            .as_any_mut()
            .unwrap()
            .downcast_mut::<PowerCutBdev>()
            .unwrap();
        pc.writes()
    };
    drop(base);
    let mut cuts = 0;
    let mut absent = 0;
    let mut present = 0;
    let (mut bits_whole, mut bits_lost) = (0, 0);
    for n in 0..=writes {
        for &tear in tears {
            let dev = PowerCutBdev::new(disk(block, max_transfer), Some(n), tear);
            let (snaps, failed, base) = run(dev, false);
            cuts += 1;
            let Some(k) = failed else {
                continue;
            };
            assert_eq!(snaps.len(), k);
            let disk = image(base);
            let shared_disk = shared(disk);
            let opened = Store::open(shared_disk.clone(), "Malloc0", clock);
            let s = match opened {
                Ok(s) => s,
                Err(e) => {
                    assert_eq!(k, 0, "cut {n}/{tear} in step {k}: store lost: {e}");
                    absent += 1;
                    continue;
                }
            };
            s.check()
                .unwrap_or_else(|e| panic!("cut {n}/{tear} in step {k}: check: {e}"));
            let now = capture(&s);
            let (w, l) = check_bits(&s, k, &now, &golden[k], n, tear);
            bits_whole += w;
            bits_lost += l;
            // The interrupted step is wholly absent or wholly present.
            let before = if k == 0 { None } else { golden[k - 1].clone() };
            let after = golden[k].clone();
            // The store's cleanliness flag and journal position are not part
            // of the comparison; names, sizes, maps and data are.
            // An in-place data write may land in part: only its metadata
            // (none) is all-or-nothing.
            let meta = |x: &Snapshot| x.as_ref().map(|x| (x.0.clone(), x.1.clone()));
            let in_place = steps()[k].0 == "write thick";
            if in_place && (meta(&now) == meta(&before) || meta(&now) == meta(&after)) {
                absent += 1;
                continue;
            }
            if now == before || (k == 0 && now.as_ref().is_some_and(|x| x.1.is_empty())) {
                absent += 1;
            } else if now == after {
                present += 1;
            } else {
                panic!(
                    "cut {n}/{tear} in step {k} ({}): state is neither before nor after\nnow: {now:#?}\nbefore: {before:#?}\nafter: {after:#?}",
                    steps()[k].0
                );
            }
        }
    }
    eprintln!(
        "power cuts on a {block}-byte-block disk: {cuts} over {writes} write points; interrupted step absent {absent}, present {present}; bitmaps found whole {bits_whole}, lost {bits_lost}"
    );
    assert!(
        bits_whole > 0 && bits_lost > 0,
        "cuts reached both sides of a save"
    );
    assert!(cuts >= min_cuts, "{cuts} cuts");
}
