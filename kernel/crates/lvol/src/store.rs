//! A volume store on a claimed base device, its volumes as bdevs, and the
//! operations on them. Every operation checks everything first, then makes
//! one metadata commit: it is wholly done or not done at all.

use crate::Error;
use crate::format::{Change, Layout, MAX_NAME, MAX_VOLUMES};
use crate::io::Router;
use crate::meta::Meta;
use crate::state::Volume;
use alloc::format;
use alloc::rc::Rc;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::cell::RefCell;
use ironbay_bdev::sync;
use ironbay_bdev::{
    BdevInfo, BlockDevice, IoCompletion, IoRequest, IoStatus, IoType, IoTypes, SharedBdev, Uuid,
};

/// Microseconds since boot (or any monotonic origin).
pub type ClockFn = fn() -> u64;

pub struct Core {
    pub(crate) base: SharedBdev,
    pub(crate) base_name: String,
    pub(crate) meta: Meta,
    pub(crate) clock: ClockFn,
    pub(crate) router: Router,
}

/// What `bdev_lvol_get_lvstores` shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreInfo {
    pub uuid: Uuid,
    pub name: String,
    pub base_bdev: String,
    pub cluster_size: u64,
    pub block_size: u32,
    pub total_data_clusters: u64,
    pub free_clusters: u64,
    /// Data clusters the metadata area can describe: the store grows to at
    /// most this many.
    pub max_clusters: u64,
}

/// What `bdev_lvol_get_lvols` and the bdev's driver-specific part show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeInfo {
    pub id: u32,
    pub uuid: Uuid,
    pub name: String,
    pub size_bytes: u64,
    pub thin: bool,
    pub read_only: bool,
    /// Has clones (SPDK's `snapshot`).
    pub is_snapshot: bool,
    /// Has a parent (SPDK's `clone`).
    pub is_clone: bool,
    pub parent: Option<String>,
    pub clones: Vec<String>,
    pub allocated_clusters: u64,
}

/// How new thick clusters are cleared (SPDK's `clear_method`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clear {
    /// Leave whatever the disk held (fast; may expose old data).
    None,
    /// Make the clusters read zeroes (unmap where that zeroes, else write
    /// zeroes).
    Zero,
}

impl Core {
    /// A copy of volume `id`, to change and commit.
    fn volume(&self, id: u32) -> Result<Volume, Error> {
        self.meta
            .state
            .volumes
            .get(&id)
            .cloned()
            .ok_or(Error::NotFound)
    }

    pub(crate) fn cluster_blocks(&self) -> u64 {
        self.meta.layout.cluster_size / self.meta.layout.block_size as u64
    }

    /// Runs blocking I/O on the base; completions of data requests that
    /// arrive meanwhile are routed as usual.
    pub(crate) fn with_base<T>(
        &mut self,
        f: impl FnOnce(
            &mut dyn BlockDevice,
            sync::Clock<'_>,
            &mut Vec<IoCompletion>,
        ) -> Result<T, IoStatus>,
    ) -> Result<T, Error> {
        let clock = self.clock;
        let mut others = Vec::new();
        let r = {
            let mut base = self.base.borrow_mut();
            f(&mut **base, &mut || clock(), &mut others)
        };
        for c in others {
            self.router.route(c);
        }
        r.map_err(Error::Io)
    }

    pub(crate) fn commit(&mut self, changes: Vec<Change>) -> Result<(), Error> {
        let clock = self.clock;
        let mut others = Vec::new();
        let r = {
            let mut base = self.base.borrow_mut();
            self.meta
                .commit(&mut **base, changes, &mut || clock(), &mut others)
        };
        for c in others {
            self.router.route(c);
        }
        r
    }

    fn info_of(&self, v: &Volume) -> VolumeInfo {
        let st = &self.meta.state;
        VolumeInfo {
            id: v.id,
            uuid: v.uuid,
            name: v.name.clone(),
            size_bytes: v.size_clusters * self.meta.layout.cluster_size,
            thin: v.thin,
            read_only: v.read_only,
            is_snapshot: v.snapshot || st.children(v.id).next().is_some(),
            is_clone: v.parent.is_some(),
            parent: v
                .parent
                .and_then(|p| st.volumes.get(&p))
                .map(|p| p.name.clone()),
            clones: st.children(v.id).map(|c| c.name.clone()).collect(),
            allocated_clusters: v.map.len(),
        }
    }

    fn bdev_info(&self, id: u32) -> Option<BdevInfo> {
        let v = self.meta.state.volumes.get(&id)?;
        let base = self.base.borrow();
        let b = base.info();
        let io_types = IoType::ALL
            .into_iter()
            .fold(IoTypes::empty(), IoTypes::with);
        Some(BdevInfo {
            name: v.uuid.to_string(),
            uuid: v.uuid,
            product: "Logical Volume".into(),
            block_size: b.block_size,
            num_blocks: v.size_clusters * self.cluster_blocks(),
            io_types,
            max_transfer: b.max_transfer,
            max_unmap_blocks: u32::MAX,
            max_write_zeroes_blocks: self.cluster_blocks().min(u32::MAX as u64) as u32,
            queue_depth: b.queue_depth,
            write_cache: b.write_cache,
            read_only: v.read_only,
            // A clone's unallocated clusters read its parent, unmap or not.
            unmap_zeroes: v.parent.is_none(),
        })
    }
}

/// A volume store. Cheap to clone: every handle and every volume bdev
/// shares the one store.
#[derive(Clone)]
pub struct Store(Rc<RefCell<Core>>);

/// Checks a store or volume name the way SPDK does.
fn check_name(name: &str) -> Result<(), Error> {
    if name.is_empty() {
        return Err(Error::Invalid("name must not be empty".into()));
    }
    if name.len() > MAX_NAME {
        return Err(Error::Invalid(format!("name longer than {MAX_NAME} bytes")));
    }
    if name.contains('/') {
        return Err(Error::Invalid("name must not contain '/'".into()));
    }
    Ok(())
}

impl Store {
    pub(crate) fn core(&self) -> &Rc<RefCell<Core>> {
        &self.0
    }

    /// Creates a store on `base` (claimed by the caller), erasing what was
    /// there.
    pub fn create(
        base: SharedBdev,
        base_name: &str,
        name: &str,
        cluster_size: u64,
        uuid: Uuid,
        clock: ClockFn,
    ) -> Result<Store, Error> {
        check_name(name)?;
        let (bs, bytes) = {
            let b = base.borrow();
            (b.info().block_size, b.info().size_bytes())
        };
        if !cluster_size.is_power_of_two() || cluster_size < 4096.max(bs as u64) {
            return Err(Error::Invalid(format!(
                "cluster size {cluster_size} must be a power of two of at least 4096 bytes and one block"
            )));
        }
        let layout = Layout::plan(uuid, bs, cluster_size, bytes).ok_or_else(|| {
            Error::Invalid(format!(
                "{base_name} is too small for a store with {cluster_size}-byte clusters"
            ))
        })?;
        let mut others = Vec::new();
        let meta = {
            let mut b = base.borrow_mut();
            Meta::format(&mut **b, layout, name, &mut || clock(), &mut others)?
        };
        Ok(Store(Rc::new(RefCell::new(Core {
            base,
            base_name: base_name.into(),
            meta,
            clock,
            router: Router::default(),
        }))))
    }

    /// Whether `base` starts with a store's super block.
    pub fn probe(base: &mut dyn BlockDevice, clock: ClockFn) -> bool {
        let bs = base.info().block_size as usize;
        let mut others = Vec::new();
        sync::read(
            base,
            0,
            crate::format::UNIT.max(bs as u64) as usize,
            &mut || clock(),
            &mut others,
        )
        .is_ok_and(|b| crate::format::looks_like_store(b.as_slice()))
    }

    /// Loads the store on `base` (tasting).
    pub fn open(base: SharedBdev, base_name: &str, clock: ClockFn) -> Result<Store, Error> {
        let mut others = Vec::new();
        let meta = {
            let mut b = base.borrow_mut();
            Meta::open(&mut **b, &mut || clock(), &mut others)?
        };
        Ok(Store(Rc::new(RefCell::new(Core {
            base,
            base_name: base_name.into(),
            meta,
            clock,
            router: Router::default(),
        }))))
    }

    /// Whether the store was closed cleanly before this load.
    pub fn was_clean(&self) -> bool {
        self.0.borrow().meta.was_clean
    }

    pub fn info(&self) -> StoreInfo {
        let c = self.0.borrow();
        let l = &c.meta.layout;
        StoreInfo {
            uuid: l.uuid,
            name: c.meta.state.name.clone(),
            base_bdev: c.base_name.clone(),
            cluster_size: l.cluster_size,
            block_size: l.block_size,
            total_data_clusters: c.meta.state.total_clusters,
            free_clusters: c.meta.clusters.free(),
            max_clusters: l.max_clusters,
        }
    }

    pub fn volumes(&self) -> Vec<VolumeInfo> {
        let c = self.0.borrow();
        c.meta
            .state
            .volumes
            .values()
            .map(|v| c.info_of(v))
            .collect()
    }

    pub fn volume(&self, id: u32) -> Option<VolumeInfo> {
        let c = self.0.borrow();
        c.meta.state.volumes.get(&id).map(|v| c.info_of(v))
    }

    /// Finds a volume by its name in this store or its UUID.
    pub fn find(&self, name_or_uuid: &str) -> Option<u32> {
        let c = self.0.borrow();
        let st = &c.meta.state;
        if let Some(v) = st.by_name(name_or_uuid) {
            return Some(v.id);
        }
        let u = Uuid::parse(name_or_uuid)?;
        st.volumes.values().find(|v| v.uuid == u).map(|v| v.id)
    }

    /// The bdev serving volume `id`.
    pub fn bdev(&self, id: u32) -> Option<LvolBdev> {
        let info = self.0.borrow().bdev_info(id)?;
        Some(LvolBdev {
            core: self.0.clone(),
            id,
            info,
        })
    }

    /// Hands the base device back (after [`destroy`](Store::destroy) or to
    /// unload); volume bdevs must be gone.
    pub fn base(&self) -> SharedBdev {
        self.0.borrow().base.clone()
    }

    pub fn rename(&self, new_name: &str) -> Result<(), Error> {
        check_name(new_name)?;
        self.0
            .borrow_mut()
            .commit(alloc::vec![Change::Rename(new_name.into())])
    }

    /// Takes in space the base device gained since the store was made.
    pub fn grow(&self) -> Result<u64, Error> {
        let mut c = self.0.borrow_mut();
        let bytes = c.base.borrow().info().size_bytes();
        let total = c.meta.layout.clusters_for(bytes);
        if total <= c.meta.state.total_clusters {
            return Ok(c.meta.state.total_clusters);
        }
        c.commit(alloc::vec![Change::Grow(total)])?;
        c.meta.clusters.grow(total);
        Ok(total)
    }

    /// Erases the store's super block; it is not found again.
    pub fn destroy(&self) -> Result<(), Error> {
        let mut c = self.0.borrow_mut();
        c.drain()?;
        let clock = c.clock;
        let mut others = Vec::new();
        let Core { base, meta, .. } = &mut *c;
        let mut b = base.borrow_mut();
        meta.wipe(&mut **b, &mut || clock(), &mut others)
    }

    /// Records a clean close: the next load knows nothing was cut short.
    /// Persistent bitmaps are not saved (see [`Store::close_saving`]).
    pub fn close(&self) -> Result<(), Error> {
        self.close_saving(&[]).map(|_| ())
    }

    fn new_volume(&self, name: &str) -> Result<u32, Error> {
        check_name(name)?;
        let c = self.0.borrow();
        let st = &c.meta.state;
        if st.by_name(name).is_some() {
            return Err(Error::Exists(format!(
                "a volume named {name} already exists in {}",
                st.name
            )));
        }
        if st.volumes.len() as u64 >= MAX_VOLUMES {
            return Err(Error::Invalid(format!(
                "a store holds at most {MAX_VOLUMES} volumes"
            )));
        }
        Ok(st.next_id)
    }

    /// Creates a volume of at least `size_bytes` (rounded up to clusters).
    pub fn create_volume(
        &self,
        name: &str,
        size_bytes: u64,
        thin: bool,
        uuid: Uuid,
        clear: Clear,
    ) -> Result<u32, Error> {
        let id = self.new_volume(name)?;
        let mut c = self.0.borrow_mut();
        let cs = c.meta.layout.cluster_size;
        if size_bytes == 0 {
            return Err(Error::Invalid("size must be greater than zero".into()));
        }
        let n = size_bytes.div_ceil(cs);
        let mut map = crate::extents::Extents::default();
        if !thin {
            let got = c.meta.clusters.take(n).ok_or(Error::NoSpace)?;
            for (i, &cl) in got.iter().enumerate() {
                map.insert(i as u64, cl);
            }
        }
        let v = Volume {
            id,
            uuid,
            name: name.into(),
            size_clusters: n,
            thin,
            read_only: false,
            snapshot: false,
            parent: None,
            map,
        };
        let r = c
            .clear_clusters(&v, clear)
            .and_then(|_| c.commit(alloc::vec![Change::Put(v.clone())]));
        if r.is_err() {
            for cl in v.map.values() {
                c.meta.clusters.release(cl);
            }
        }
        r.map(|_| id)
    }

    /// Snapshot of `origin`: the snapshot takes the origin's clusters and
    /// the origin becomes its (thin) clone. O(extent runs), not O(size).
    pub fn snapshot(&self, origin: u32, name: &str, uuid: Uuid) -> Result<u32, Error> {
        let id = self.new_volume(name)?;
        let mut c = self.0.borrow_mut();
        let o = c.volume(origin)?;
        if o.read_only {
            return Err(Error::Invalid(format!(
                "{} is read-only; snapshots are of writable volumes",
                o.name
            )));
        }
        // Writes in flight must land before the clusters change hands.
        c.drain()?;
        let snap = Volume {
            id,
            uuid,
            name: name.into(),
            size_clusters: o.size_clusters,
            thin: o.thin,
            read_only: true,
            snapshot: true,
            parent: o.parent,
            map: Default::default(),
        };
        let (mut snap, mut o2) = (snap, o);
        snap.map = core::mem::take(&mut o2.map);
        o2.parent = Some(id);
        o2.thin = true;
        c.commit(alloc::vec![Change::Put(snap), Change::Put(o2)])?;
        Ok(id)
    }

    /// A thin, writable volume reading `snapshot`'s data until written.
    pub fn clone_volume(&self, snapshot: u32, name: &str, uuid: Uuid) -> Result<u32, Error> {
        let id = self.new_volume(name)?;
        let mut c = self.0.borrow_mut();
        let s = c.volume(snapshot)?;
        if !s.read_only {
            return Err(Error::Invalid(format!(
                "{} is not a snapshot or read-only volume; only those can be cloned",
                s.name
            )));
        }
        let v = Volume {
            id,
            uuid,
            name: name.into(),
            size_clusters: s.size_clusters,
            thin: true,
            read_only: false,
            snapshot: false,
            parent: Some(snapshot),
            map: Default::default(),
        };
        c.commit(alloc::vec![Change::Put(v)])?;
        Ok(id)
    }

    pub fn rename_volume(&self, id: u32, new_name: &str) -> Result<(), Error> {
        check_name(new_name)?;
        let mut c = self.0.borrow_mut();
        let mut v = c.volume(id)?;
        if v.name == new_name {
            return Ok(());
        }
        if c.meta.state.by_name(new_name).is_some() {
            return Err(Error::Exists(format!(
                "a volume named {new_name} already exists in {}",
                c.meta.state.name
            )));
        }
        v.name = new_name.into();
        c.commit(alloc::vec![Change::Put(v)])
    }

    pub fn set_read_only(&self, id: u32) -> Result<(), Error> {
        let mut c = self.0.borrow_mut();
        let mut v = c.volume(id)?;
        if v.read_only {
            return Ok(());
        }
        c.drain()?;
        v.read_only = true;
        c.commit(alloc::vec![Change::Put(v)])
    }

    /// Grows or shrinks a volume (size rounded up to clusters).
    pub fn resize(&self, id: u32, size_bytes: u64) -> Result<(), Error> {
        let mut c = self.0.borrow_mut();
        let v = c.volume(id)?;
        if v.read_only {
            return Err(Error::Invalid(format!("{} is read-only", v.name)));
        }
        // Zero is a size SPDK allows: the volume keeps its name and no data.
        let n = size_bytes.div_ceil(c.meta.layout.cluster_size);
        if n == v.size_clusters {
            return Ok(());
        }
        let mut nv = v.clone();
        nv.size_clusters = n;
        let mut fresh = Vec::new();
        if n > v.size_clusters && !v.thin {
            fresh = c
                .meta
                .clusters
                .take(n - v.size_clusters)
                .ok_or(Error::NoSpace)?;
            for (k, &cl) in fresh.iter().enumerate() {
                nv.map.insert(v.size_clusters + k as u64, cl);
            }
        }
        let freed: Vec<u64> = nv.map.split_off(n).values().collect();
        let r = (|| {
            if !fresh.is_empty() {
                let mut part = nv.clone();
                part.map = part.map.split_off(v.size_clusters);
                c.clear_clusters(&part, Clear::Zero)?;
            }
            if !freed.is_empty() {
                c.drain()?;
            }
            c.commit(alloc::vec![Change::Put(nv.clone())])
        })();
        match r {
            Ok(()) => {
                for cl in freed {
                    c.meta.clusters.release(cl);
                }
                Ok(())
            }
            Err(e) => {
                for cl in fresh {
                    c.meta.clusters.release(cl);
                }
                Err(e)
            }
        }
    }

    /// Deletes a volume. A snapshot with one clone is merged into it (the
    /// clone takes over the clusters it still reads from the snapshot); a
    /// snapshot with more clones cannot be deleted.
    pub fn delete(&self, id: u32) -> Result<(), Error> {
        let mut c = self.0.borrow_mut();
        let v = c.volume(id)?;
        let kids: Vec<Volume> = c.meta.state.children(id).cloned().collect();
        if kids.len() > 1 {
            return Err(Error::Busy(format!(
                "{} has {} clones; delete or inflate them first",
                v.name,
                kids.len()
            )));
        }
        c.drain()?;
        let mut changes = Vec::new();
        // The volume's bitmaps go with it (the record's Drop removes them).
        let mut freed: Vec<u64> = c
            .meta
            .state
            .bitmaps
            .iter()
            .filter(|b| b.volume == id)
            .flat_map(|b| b.clusters.iter().copied())
            .collect();
        let mut fresh = Vec::new();
        let r = (|| {
            if let Some(kid) = kids.into_iter().next() {
                let mut k = kid;
                c.shield(&mut k, &v, &mut fresh)?;
                for (i, cl) in v.map.iter() {
                    if i < k.size_clusters && !k.map.contains_key(&i) {
                        k.map.insert(i, cl);
                    } else {
                        freed.push(cl);
                    }
                }
                k.parent = v.parent;
                changes.push(Change::Put(k));
            } else {
                freed.extend(v.map.values());
            }
            changes.push(Change::Drop(id));
            c.commit(changes)
        })();
        if r.is_err() {
            for cl in fresh {
                c.meta.clusters.release(cl);
            }
            return r;
        }
        for cl in freed {
            c.meta.clusters.release(cl);
        }
        Ok(())
    }

    /// Copies into the volume what it reads from its parents, then cuts it
    /// loose. `all`: every cluster the chain holds, and zero-filled the
    /// rest (inflate); else only the direct parent's clusters, and the
    /// volume's parent becomes the grandparent (decouple).
    fn copy_up(&self, id: u32, all: bool) -> Result<(), Error> {
        let mut c = self.0.borrow_mut();
        let v = c.volume(id)?;
        if all {
            // Inflating a volume without a parent allocates it (thin to thick).
            return c.fill(v, None);
        }
        let pid = v
            .parent
            .ok_or_else(|| Error::Invalid(format!("{} has no parent", v.name)))?;
        let parent = c.volume(pid)?;
        c.fill(v, Some(parent))
    }

    pub fn inflate(&self, id: u32) -> Result<(), Error> {
        self.copy_up(id, true)
    }

    pub fn decouple_parent(&self, id: u32) -> Result<(), Error> {
        self.copy_up(id, false)
    }

    /// Whole-store consistency check (for tests and diagnostics): the same
    /// check a load makes, against the allocator's view.
    pub fn check(&self) -> Result<(), String> {
        let c = self.0.borrow();
        let used = c.meta.state.check()?;
        let total = c.meta.state.total_clusters;
        for cl in 0..total {
            let owned = used[(cl / 64) as usize] & (1 << (cl % 64)) != 0;
            if owned != c.meta.clusters.is_used(cl) {
                return Err(format!(
                    "cluster {cl}: {} by the maps but {} by the allocator",
                    if owned { "owned" } else { "free" },
                    if owned { "free" } else { "used" }
                ));
            }
        }
        Ok(())
    }
}

impl Core {
    /// Before `parent` leaves `v`'s chain: `v`'s unallocated clusters past
    /// the parent's end read zeroes now, but would read the grandparent's
    /// data once it is `v`'s parent. Those get zeroed clusters of their
    /// own (durable before the commit that unlinks the parent), taken
    /// into `fresh` so a failure can give them back.
    fn shield(
        &mut self,
        v: &mut Volume,
        parent: &Volume,
        fresh: &mut Vec<u64>,
    ) -> Result<(), Error> {
        let Some(g) = parent.parent else {
            return Ok(());
        };
        let exposed: Vec<u64> = (parent.size_clusters..v.size_clusters)
            .filter(|i| !v.map.contains_key(i) && self.meta.state.resolve(g, *i).is_some())
            .collect();
        if exposed.is_empty() {
            return Ok(());
        }
        let got = self
            .meta
            .clusters
            .take(exposed.len() as u64)
            .ok_or(Error::NoSpace)?;
        fresh.extend_from_slice(&got);
        let mut part = v.clone();
        part.map = Default::default();
        for (&i, &cl) in exposed.iter().zip(&got) {
            part.map.insert(i, cl);
            v.map.insert(i, cl);
        }
        self.clear_clusters(&part, Clear::Zero)
    }

    /// Zeroes a volume's (new) clusters on the base, durably: the record
    /// that hands them over must not outlive the zeroes in a power cut.
    fn clear_clusters(&mut self, v: &Volume, clear: Clear) -> Result<(), Error> {
        if clear == Clear::None || v.map.is_empty() {
            return Ok(());
        }
        let cb = self.cluster_blocks();
        for (_, c, n) in v.map.runs() {
            let at = self.base_lba(c, 0);
            self.zero(at, cb * n)?;
        }
        self.with_base(sync::flush)
    }

    /// Allocates and fills the volume's unallocated clusters. `from`:
    /// only clusters this parent has (decouple); `None`: every cluster,
    /// from the chain or zeroes, and the volume is thick afterwards.
    fn fill(&mut self, v: Volume, from: Option<Volume>) -> Result<(), Error> {
        let cs = self.meta.layout.cluster_size as usize;
        let mut nv = v.clone();
        let mut fresh = Vec::new();
        let r = (|| {
            if let Some(p) = &from {
                self.shield(&mut nv, p, &mut fresh)?;
            }
            for i in 0..v.size_clusters {
                if v.map.contains_key(&i) {
                    continue;
                }
                let src = match &from {
                    Some(p) => match p.map.get(i) {
                        Some(s) => Some(s),
                        None => continue,
                    },
                    None => self.meta.state.resolve(v.id, i),
                };
                let cl = self
                    .meta
                    .clusters
                    .take(1)
                    .and_then(|x| x.first().copied())
                    .ok_or(Error::NoSpace)?;
                fresh.push(cl);
                let at = self.base_lba(cl, 0);
                match src {
                    Some(s) => {
                        let mut buf = Vec::new();
                        buf.try_reserve_exact(cs)
                            .map_err(|_| Error::Io(IoStatus::NoMemory))?;
                        buf.resize(cs, 0);
                        let from_at = self.base_lba(s, 0);
                        self.with_base(|d, k, o| sync::read_into(d, from_at, &mut buf, k, o))?;
                        self.with_base(|d, k, o| sync::write(d, at, &buf, k, o))?;
                    }
                    None => {
                        let n = self.cluster_blocks();
                        self.zero(at, n)?;
                    }
                }
                nv.map.insert(i, cl);
            }
            nv.parent = from.as_ref().and_then(|p| p.parent);
            if from.is_none() {
                nv.thin = false;
            }
            self.drain()?;
            self.with_base(sync::flush)?;
            self.commit(alloc::vec![Change::Put(nv.clone())])
        })();
        if r.is_err() {
            for cl in fresh {
                self.meta.clusters.release(cl);
            }
        }
        r
    }
}

/// A volume as a block device.
pub struct LvolBdev {
    core: Rc<RefCell<Core>>,
    id: u32,
    info: BdevInfo,
}

impl LvolBdev {
    pub fn volume_id(&self) -> u32 {
        self.id
    }
}

impl BlockDevice for LvolBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    fn submit(&mut self, req: IoRequest, _now_us: u64) -> Result<(), IoRequest> {
        self.core.borrow_mut().submit(self.id, req);
        Ok(())
    }

    fn poll(&mut self, _now_us: u64, out: &mut Vec<IoCompletion>) -> usize {
        let mut c = self.core.borrow_mut();
        c.pump();
        c.router.collect(self.id, out)
    }

    fn in_flight(&self) -> usize {
        self.core.borrow().router.in_flight(self.id)
    }

    fn allocation(&self, lba: u64, blocks: u64) -> Option<Vec<(u64, bool)>> {
        let c = self.core.borrow();
        let cb = c.cluster_blocks();
        let end = lba.checked_add(blocks)?.min(self.info.num_blocks);
        let mut runs: Vec<(u64, bool)> = Vec::new();
        let mut at = lba;
        while at < end {
            let n = (cb - at % cb).min(end - at);
            let a = c.meta.state.resolve(self.id, at / cb).is_some();
            match runs.last_mut() {
                Some((k, s)) if *s == a => *k += n,
                _ => runs.push((n, a)),
            }
            at += n;
        }
        Some(runs)
    }

    fn allocation_depth(&self, lba: u64, blocks: u64) -> Option<Vec<(u64, u32)>> {
        let c = self.core.borrow();
        let cb = c.cluster_blocks();
        let end = lba.checked_add(blocks)?.min(self.info.num_blocks);
        let mut runs: Vec<(u64, u32)> = Vec::new();
        let mut at = lba;
        while at < end {
            let n = (cb - at % cb).min(end - at);
            let d = c.meta.state.depth(self.id, at / cb);
            match runs.last_mut() {
                Some((k, s)) if *s == d => *k += n,
                _ => runs.push((n, d)),
            }
            at += n;
        }
        Some(runs)
    }

    fn refresh(&mut self) {
        if let Some(i) = self.core.borrow().bdev_info(self.id) {
            self.info = i;
        }
    }
}
