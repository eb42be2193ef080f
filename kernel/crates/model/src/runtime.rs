//! The framework's lifecycle as the front ends see it: the deferred init,
//! an orderly shutdown and the built-in benchmark.

use crate::{Error, Model, Result};
use alloc::format;
use ironbay_bdev::bench::BenchSpec;

impl Model<'_> {
    /// Ends the deferred start: the caller applies what waited for it.
    pub fn start_init(&mut self) -> Result<()> {
        if *self.initialized {
            return Err(Error::state("init already ran"));
        }
        *self.initialized = true;
        Ok(())
    }

    /// An orderly stop: write-back caches write their dirty data to their
    /// sources first.
    pub fn request_shutdown(&mut self) {
        for name in self.write_back_caches() {
            log::error!("{name}: dirty data could not be written back before shutdown");
        }
        *self.shutdown = true;
    }

    /// Asks the caller to run a benchmark on an existing bdev.
    pub fn request_bench(&mut self, spec: BenchSpec) -> Result<()> {
        self.find(&spec.bdev)?;
        // One buffer per queue slot: refuse what the heap cannot hold rather
        // than fail an allocation mid-run.
        let bytes = spec.block_size as u64 * spec.queue_depth as u64;
        if bytes > self.memory_budget {
            return Err(Error::params(format!(
                "io_size x queue_depth is {bytes} bytes, {} available",
                self.memory_budget
            )));
        }
        let slot = self
            .bench
            .as_deref_mut()
            .ok_or_else(|| Error::state("benchmarks are not offered here"))?;
        if slot.is_some() {
            return Err(Error::state("a benchmark is already running"));
        }
        *slot = Some(spec);
        Ok(())
    }
}
