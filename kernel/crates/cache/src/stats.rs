//! The cache's counters, under RapidDisk's and dm-writecache's names.

/// What a cache reports.
///
/// Write-through and write-around count the first thirteen fields as
/// RapidDisk's `dm-rapiddisk-cache` does, per 4 KiB piece: device-mapper
/// splits every request at 4 KiB cache-block boundaries before RapidDisk
/// sees it, so a 16 KiB aligned read counts as four reads. A piece that does
/// not cover its whole cache block is "partial" and never cached.
///
/// Write-back counts only the last four, with dm-writecache's meaning.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Read pieces.
    pub reads: u64,
    /// Write pieces.
    pub writes: u64,
    /// Read pieces served from RAM.
    pub cache_hits: u64,
    /// Read misses that evicted a cached block to make room.
    pub replacement: u64,
    /// Write-through writes that evicted a cached block to make room.
    pub write_replacement: u64,
    /// Cached blocks dropped because a partial read covered them.
    pub read_invalidates: u64,
    /// Cached blocks dropped by a write (its new data may then be cached
    /// again), an unmap or a write-zeroes.
    pub write_invalidates: u64,
    /// Read pieces the source served without the cache (partial pieces, or
    /// no slot free in the set), counted when they end.
    pub uncached_reads: u64,
    /// Write pieces that went to the source without being cached, counted
    /// when they end.
    pub uncached_writes: u64,
    /// Pieces read from the source (fills and uncached reads).
    pub disk_reads: u64,
    /// Pieces written to the source.
    pub disk_writes: u64,
    /// Pieces read from RAM.
    pub cache_reads: u64,
    /// Blocks written to RAM after the source read or wrote them.
    pub cache_writes: u64,
    /// Write-backs the source failed (write-back mode).
    pub errors: u64,
    /// Cache blocks (4 KiB each).
    pub num_blocks: u64,
    /// Blocks free for new data: not holding valid data (write-through,
    /// write-around), not dirty (write-back; clean blocks stay readable but
    /// are reused at once).
    pub num_free_blocks: u64,
    /// Blocks being written back to the source right now.
    pub num_wb_blocks: u64,
}

impl Stats {
    /// RapidDisk's counters (write-through, write-around), by name.
    pub fn counters(&self) -> [(&'static str, u64); 13] {
        [
            ("reads", self.reads),
            ("writes", self.writes),
            ("cache_hits", self.cache_hits),
            ("replacement", self.replacement),
            ("write_replacement", self.write_replacement),
            ("read_invalidates", self.read_invalidates),
            ("write_invalidates", self.write_invalidates),
            ("uncached_reads", self.uncached_reads),
            ("uncached_writes", self.uncached_writes),
            ("disk_reads", self.disk_reads),
            ("disk_writes", self.disk_writes),
            ("cache_reads", self.cache_reads),
            ("cache_writes", self.cache_writes),
        ]
    }

    /// dm-writecache's figures (write-back), by name.
    pub fn writeback(&self) -> [(&'static str, u64); 4] {
        [
            ("errors", self.errors),
            ("num_blocks", self.num_blocks),
            ("num_free_blocks", self.num_free_blocks),
            ("num_wb_blocks", self.num_wb_blocks),
        ]
    }
}
