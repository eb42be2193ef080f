//! Making metadata durable: a checkpoint in one of two slots plus a journal
//! of records after it (docs/lvol-format.md says why this is crash-safe).

use crate::Error;
use crate::format::{self, Change, Layout};
use crate::state::{Clusters, State};
use alloc::vec;
use alloc::vec::Vec;
use ironbay_bdev::sync::{self, Clock};
use ironbay_bdev::{BlockDevice, IoCompletion, IoStatus};

pub struct Meta {
    pub layout: Layout,
    pub state: State,
    pub clusters: Clusters,
    /// Generation of the newest checkpoint; records carry it as their epoch.
    epoch: u64,
    /// The slot holding that checkpoint.
    active: usize,
    /// Next record's sequence number and byte offset in the journal.
    seq: u64,
    jpos: u64,
    /// Whether the store had been closed cleanly before this open.
    pub was_clean: bool,
    /// The bitmaps as this open found them: those not in use then hold
    /// current bits in their clusters.
    pub found_bitmaps: Vec<crate::state::StoredBitmap>,
}

fn lba(layout: &Layout, byte: u64) -> u64 {
    byte / layout.block_size as u64
}

impl Meta {
    /// Writes a new, empty store: the first checkpoint, then the super
    /// block (last, so a cut before it leaves no store at all).
    pub fn format(
        dev: &mut dyn BlockDevice,
        layout: Layout,
        name: &str,
        clock: Clock<'_>,
        others: &mut Vec<IoCompletion>,
    ) -> Result<Meta, Error> {
        let dev_bytes = dev.info().size_bytes();
        let total = layout.clusters_for(dev_bytes);
        let mut state = State::new(name, total);
        state.clean = false;
        // Epochs start from the store's random UUID so records left on the
        // disk by an earlier store can never pass for this one's.
        let epoch = u64::from_le_bytes(layout.uuid.0[..8].try_into().unwrap_or([0; 8])) >> 8;
        let unit = layout.unit() as usize;
        // A stale super block of an earlier store must not survive a cut.
        sync::write(dev, 0, &vec![0; unit], clock, others)?;
        sync::flush(dev, clock, others)?;
        let cp = format::encode_checkpoint(&state, epoch, unit);
        sync::write(dev, lba(&layout, layout.slots[0]), &cp, clock, others)?;
        // The other slot and the journal head must not hold a store's
        // frames with a newer generation.
        sync::write(
            dev,
            lba(&layout, layout.slots[1]),
            &vec![0; unit],
            clock,
            others,
        )?;
        sync::write(
            dev,
            lba(&layout, layout.journal),
            &vec![0; unit],
            clock,
            others,
        )?;
        sync::flush(dev, clock, others)?;
        sync::write(dev, 0, &layout.encode(), clock, others)?;
        sync::flush(dev, clock, others)?;
        let clusters = Clusters::new(vec![0; total.div_ceil(64) as usize], total);
        Ok(Meta {
            layout,
            state,
            clusters,
            epoch,
            active: 0,
            seq: 0,
            jpos: 0,
            was_clean: true,
            found_bitmaps: Vec::new(),
        })
    }

    /// Loads a store: newest valid checkpoint, then the journal records
    /// after it, then the consistency check. A fresh checkpoint is written
    /// at once so the journal starts clean (a torn tail is never appended
    /// to).
    pub fn open(
        dev: &mut dyn BlockDevice,
        clock: Clock<'_>,
        others: &mut Vec<IoCompletion>,
    ) -> Result<Meta, Error> {
        let bs = dev.info().block_size as usize;
        let head = sync::read(dev, 0, format::UNIT.max(bs as u64) as usize, clock, others)?;
        let layout = Layout::decode(head.as_slice())
            .ok_or_else(|| Error::Damaged("super block is damaged".into()))?;
        if layout.block_size as usize != bs {
            return Err(Error::Damaged(
                "block size differs from the device's".into(),
            ));
        }
        let max_entries = layout.max_clusters + format::MAX_VOLUMES;
        let mut best: Option<(u64, usize, State)> = None;
        for (i, &at) in layout.slots.iter().enumerate() {
            let mut buf = vec![0u8; layout.slot_bytes as usize];
            sync::read_into(dev, lba(&layout, at), &mut buf, clock, others)?;
            if let Some((generation, st)) = format::decode_checkpoint(&buf, max_entries)
                && best.as_ref().is_none_or(|b| generation > b.0)
            {
                best = Some((generation, i, st));
            }
        }
        let (epoch, active, mut state) =
            best.ok_or_else(|| Error::Damaged("no valid checkpoint".into()))?;
        let mut journal = vec![0u8; layout.journal_bytes as usize];
        sync::read_into(
            dev,
            lba(&layout, layout.journal),
            &mut journal,
            clock,
            others,
        )?;
        let unit = layout.unit() as usize;
        let (mut pos, mut seq) = (0usize, 0u64);
        while pos < journal.len() {
            let Some((e, s, len)) = format::frame_header(&journal[pos..], format::record_magic())
            else {
                break;
            };
            if e != epoch || s != seq {
                break;
            }
            let flen = format::frame_len(len, unit);
            let Some(frame) = journal.get(pos..pos + flen) else {
                break;
            };
            let Some((_, _, changes)) = format::decode_record(frame, max_entries) else {
                // Torn: the operation it carried was never acknowledged.
                break;
            };
            state.apply(changes).map_err(Error::Damaged)?;
            pos += flen;
            seq += 1;
        }
        let used = state.check().map_err(Error::Damaged)?;
        if state.total_clusters > layout.max_clusters {
            return Err(Error::Damaged(
                "more clusters than the metadata area allows".into(),
            ));
        }
        let was_clean = state.clean;
        let clusters = Clusters::new(used, state.total_clusters);
        let found_bitmaps = state.bitmaps.clone();
        // From this checkpoint on, the bitmaps record in memory: what their
        // clusters hold is stale until an orderly close saves them again.
        for b in &mut state.bitmaps {
            b.in_use = true;
        }
        let mut m = Meta {
            layout,
            state,
            clusters,
            epoch,
            active,
            seq,
            jpos: pos as u64,
            was_clean,
            found_bitmaps,
        };
        m.state.clean = false;
        m.checkpoint(dev, None, clock, others)?;
        Ok(m)
    }

    /// Writes the state (with `changes` applied, if given) as the next
    /// checkpoint in the other slot; the journal restarts behind it.
    fn checkpoint(
        &mut self,
        dev: &mut dyn BlockDevice,
        changes: Option<Vec<Change>>,
        clock: Clock<'_>,
        others: &mut Vec<IoCompletion>,
    ) -> Result<(), Error> {
        let mut next = self.state.clone();
        if let Some(c) = changes {
            next.apply(c).map_err(Error::Invalid)?;
        }
        let unit = self.layout.unit() as usize;
        let cp = format::encode_checkpoint(&next, self.epoch + 1, unit);
        if cp.len() as u64 > self.layout.slot_bytes {
            return Err(Error::MetadataFull);
        }
        let slot = 1 - self.active;
        sync::write(
            dev,
            lba(&self.layout, self.layout.slots[slot]),
            &cp,
            clock,
            others,
        )?;
        sync::flush(dev, clock, others)?;
        self.state = next;
        self.epoch += 1;
        self.active = slot;
        self.seq = 0;
        self.jpos = 0;
        Ok(())
    }

    /// Makes `changes` durable and applies them. On error nothing changed
    /// in memory, and a reload finds the state before or after the changes,
    /// never a mix.
    pub fn commit(
        &mut self,
        dev: &mut dyn BlockDevice,
        changes: Vec<Change>,
        clock: Clock<'_>,
        others: &mut Vec<IoCompletion>,
    ) -> Result<(), Error> {
        let unit = self.layout.unit() as usize;
        let rec = format::encode_record(&changes, self.epoch, self.seq, unit);
        if self.jpos + rec.len() as u64 > self.layout.journal_bytes {
            return self.checkpoint(dev, Some(changes), clock, others);
        }
        let at = lba(&self.layout, self.layout.journal + self.jpos);
        sync::write(dev, at, &rec, clock, others)?;
        sync::flush(dev, clock, others)?;
        self.state.apply(changes).map_err(Error::Invalid)?;
        self.jpos += rec.len() as u64;
        self.seq += 1;
        Ok(())
    }

    /// Marks the super block gone, so the store is no longer found.
    pub fn wipe(
        &mut self,
        dev: &mut dyn BlockDevice,
        clock: Clock<'_>,
        others: &mut Vec<IoCompletion>,
    ) -> Result<(), Error> {
        let unit = self.layout.unit() as usize;
        sync::write(dev, 0, &vec![0; unit], clock, others)?;
        sync::flush(dev, clock, others)
            .map_err(Error::from)
            .map(|_| ())
    }
}

impl From<IoStatus> for Error {
    fn from(s: IoStatus) -> Self {
        Error::Io(s)
    }
}
