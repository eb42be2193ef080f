//! I/O statistics: counters and latency histograms per I/O type.

use crate::types::IoType;
use alloc::vec;
use alloc::vec::Vec;

/// Latency histogram in microseconds with log-linear buckets: exact below 16,
/// then 8 buckets per power of two (at most 12.5% error), up to 2^40 us.
#[derive(Clone, Debug)]
pub struct LatencyHistogram {
    buckets: Vec<u64>,
    count: u64,
}

const LINEAR: u64 = 16;
const SUB_BITS: u32 = 3;
const MAX_EXP: u32 = 40;
const BUCKETS: usize = LINEAR as usize + ((MAX_EXP - 4) << SUB_BITS) as usize;

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            buckets: vec![0; BUCKETS],
            count: 0,
        }
    }
}

impl LatencyHistogram {
    fn index(us: u64) -> usize {
        if us < LINEAR {
            return us as usize;
        }
        let exp = 63 - us.leading_zeros(); // >= 4
        if exp >= MAX_EXP {
            return BUCKETS - 1;
        }
        let sub = (us >> (exp - SUB_BITS)) & ((1 << SUB_BITS) - 1);
        LINEAR as usize + (((exp - 4) << SUB_BITS) as u64 + sub) as usize
    }

    /// The largest value that falls in bucket `i`.
    fn upper(i: usize) -> u64 {
        if i < LINEAR as usize {
            return i as u64;
        }
        let j = (i - LINEAR as usize) as u64;
        let exp = (j >> SUB_BITS) as u32 + 4;
        let sub = j & ((1 << SUB_BITS) - 1);
        let step = 1u64 << (exp - SUB_BITS);
        (1u64 << exp) + (sub + 1) * step - 1
    }

    pub fn record(&mut self, us: u64) {
        self.buckets[Self::index(us)] += 1;
        self.count += 1;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The latency below which `p` percent of samples fall (bucket upper bound).
    pub fn percentile(&self, p: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        // ceil(count * p / 100) in integers: f64::ceil needs std.
        let milli = (p * 1000.0) as u128;
        let target = ((self.count as u128 * milli).div_ceil(100_000) as u64).clamp(1, self.count);
        let mut seen = 0;
        for (i, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= target {
                return Self::upper(i);
            }
        }
        Self::upper(BUCKETS - 1)
    }

    /// Non-empty buckets as (upper bound in us, count), for reports.
    pub fn buckets(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.buckets
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(i, n)| (Self::upper(i), *n))
    }

    pub fn merge(&mut self, other: &LatencyHistogram) {
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
        self.count += other.count;
    }
}

/// Counters for one I/O type.
#[derive(Clone, Debug, Default)]
pub struct TypeStats {
    pub ops: u64,
    pub bytes: u64,
    pub errors: u64,
    pub latency_sum_us: u64,
    pub latency_min_us: u64,
    pub latency_max_us: u64,
    pub histogram: LatencyHistogram,
}

impl TypeStats {
    fn record(&mut self, bytes: u64, latency_us: u64, ok: bool) {
        if !ok {
            self.errors += 1;
            return;
        }
        if self.ops == 0 || latency_us < self.latency_min_us {
            self.latency_min_us = latency_us;
        }
        self.latency_max_us = self.latency_max_us.max(latency_us);
        self.ops += 1;
        self.bytes += bytes;
        self.latency_sum_us += latency_us;
        self.histogram.record(latency_us);
    }
}

/// Per-bdev statistics, one [`TypeStats`] per [`IoType`].
#[derive(Clone, Debug, Default)]
pub struct IoStats {
    types: [TypeStats; 5],
}

impl IoStats {
    pub fn record(&mut self, t: IoType, bytes: u64, latency_us: u64, ok: bool) {
        self.types[t.index()].record(bytes, latency_us, ok);
    }

    pub fn get(&self, t: IoType) -> &TypeStats {
        &self.types[t.index()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_values_with_bounded_error() {
        for v in [0u64, 1, 15, 16, 17, 100, 1000, 123_456, 1 << 30] {
            let i = LatencyHistogram::index(v);
            let up = LatencyHistogram::upper(i);
            assert!(up >= v, "{v} -> {up}");
            assert!((up - v) as f64 <= v as f64 * 0.125 + 1.0, "{v} -> {up}");
            if i > 0 {
                assert!(LatencyHistogram::upper(i - 1) < v, "{v}");
            }
        }
        assert_eq!(LatencyHistogram::index(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn percentiles() {
        let mut h = LatencyHistogram::default();
        for v in 1..=1000u64 {
            h.record(v);
        }
        let p50 = h.percentile(50.0);
        assert!((500..=560).contains(&p50), "{p50}");
        let p99 = h.percentile(99.0);
        assert!((990..=1120).contains(&p99), "{p99}");
        assert!(h.percentile(100.0) >= 1000);
        assert_eq!(LatencyHistogram::default().percentile(50.0), 0);
        let mut g = LatencyHistogram::default();
        g.merge(&h);
        assert_eq!(g.count(), 1000);
    }

    #[test]
    fn type_stats_track_min_max_and_errors() {
        let mut s = IoStats::default();
        s.record(IoType::Read, 4096, 50, true);
        s.record(IoType::Read, 4096, 10, true);
        s.record(IoType::Read, 4096, 99, false);
        let r = s.get(IoType::Read);
        assert_eq!((r.ops, r.bytes, r.errors), (2, 8192, 1));
        assert_eq!(
            (r.latency_min_us, r.latency_max_us, r.latency_sum_us),
            (10, 50, 60)
        );
        assert_eq!(s.get(IoType::Write).ops, 0);
    }
}
