//! A volume's extent map as runs of consecutive clusters: a thick or
//! sequentially written volume of any size is a handful of entries, so its
//! memory, its metadata and the time to hand it to a snapshot do not grow
//! with its size.

use alloc::collections::BTreeMap;

/// Volume cluster -> store cluster, kept as runs `start -> (cluster, len)`;
/// neighbouring runs that continue each other are merged.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Extents {
    runs: BTreeMap<u64, (u64, u64)>,
    count: u64,
}

impl Extents {
    /// Mapped clusters.
    pub fn len(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The run holding `idx`: (start, cluster, len).
    fn run_of(&self, idx: u64) -> Option<(u64, u64, u64)> {
        let (&s, &(c, n)) = self.runs.range(..=idx).next_back()?;
        (idx - s < n).then_some((s, c, n))
    }

    pub fn get(&self, idx: u64) -> Option<u64> {
        self.run_of(idx).map(|(s, c, _)| c + (idx - s))
    }

    pub fn contains_key(&self, idx: &u64) -> bool {
        self.run_of(*idx).is_some()
    }

    /// Maps `idx` to `cluster` (replacing any mapping it had).
    pub fn insert(&mut self, idx: u64, cluster: u64) {
        self.remove(&idx);
        self.insert_run(idx, cluster, 1);
    }

    /// Maps `len` clusters from `idx` to consecutive store clusters; the
    /// range must be unmapped.
    pub fn insert_run(&mut self, idx: u64, cluster: u64, len: u64) {
        if len == 0 {
            return;
        }
        let (mut start, mut c, mut n) = (idx, cluster, len);
        // Continue the run before, if it ends right here on the right cluster.
        if let Some((&ps, &(pc, pn))) = self.runs.range(..idx).next_back()
            && ps + pn == idx
            && pc + pn == cluster
        {
            self.runs.remove(&ps);
            (start, c, n) = (ps, pc, pn + n);
        }
        // And take in the run after, if this one leads into it.
        if let Some(&(nc, nn)) = self.runs.get(&(idx + len))
            && nc == cluster + len
        {
            self.runs.remove(&(idx + len));
            n += nn;
        }
        self.runs.insert(start, (c, n));
        self.count += len;
    }

    /// Unmaps `idx`; the cluster it had.
    pub fn remove(&mut self, idx: &u64) -> Option<u64> {
        let idx = *idx;
        let (s, c, n) = self.run_of(idx)?;
        self.runs.remove(&s);
        let k = idx - s;
        if k > 0 {
            self.runs.insert(s, (c, k));
        }
        if k + 1 < n {
            self.runs.insert(idx + 1, (c + k + 1, n - k - 1));
        }
        self.count -= 1;
        Some(c + k)
    }

    /// Every mapping, by volume cluster.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.runs
            .iter()
            .flat_map(|(&s, &(c, n))| (0..n).map(move |k| (s + k, c + k)))
    }

    /// The store clusters mapped.
    pub fn values(&self) -> impl Iterator<Item = u64> + '_ {
        self.iter().map(|(_, c)| c)
    }

    /// The runs: (volume cluster, store cluster, length).
    pub fn runs(&self) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
        self.runs.iter().map(|(&s, &(c, n))| (s, c, n))
    }

    /// Moves the mappings at and past `at` into a new map.
    pub fn split_off(&mut self, at: u64) -> Extents {
        if let Some((s, c, n)) = self.run_of(at)
            && s < at
        {
            self.runs.insert(s, (c, at - s));
            self.runs.insert(at, (c + (at - s), n - (at - s)));
        }
        let tail = self.runs.split_off(&at);
        let moved: u64 = tail.values().map(|&(_, n)| n).sum();
        self.count -= moved;
        Extents {
            runs: tail,
            count: moved,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    #[test]
    fn runs_merge_split_and_match_a_plain_map() {
        let mut e = Extents::default();
        let mut m = BTreeMap::new();
        let mut rng = ironbay_bdev::Rng::new(7);
        for _ in 0..4000 {
            let i = rng.below(64);
            if rng.below(3) == 0 {
                assert_eq!(e.remove(&i), m.remove(&i));
            } else {
                let c = if rng.below(2) == 0 {
                    i + 100
                } else {
                    rng.below(1000)
                };
                e.insert(i, c);
                m.insert(i, c);
            }
            assert_eq!(e.len(), m.len() as u64);
            assert_eq!(
                e.iter().collect::<Vec<_>>(),
                m.iter().map(|(&a, &b)| (a, b)).collect::<Vec<_>>()
            );
            for k in 0..70 {
                assert_eq!(e.get(k), m.get(&k).copied());
            }
            // Runs never continue each other.
            let r: Vec<_> = e.runs().collect();
            for w in r.windows(2) {
                assert!(
                    !(w[0].0 + w[0].2 == w[1].0 && w[0].1 + w[0].2 == w[1].1),
                    "{r:?}"
                );
            }
        }
        let mut e = Extents::default();
        e.insert_run(0, 50, 10);
        assert_eq!(e.runs().count(), 1);
        let tail = e.split_off(4);
        assert_eq!((e.len(), tail.len()), (4, 6));
        assert_eq!(tail.get(4), Some(54));
        assert_eq!(e.get(4), None);
    }
}
