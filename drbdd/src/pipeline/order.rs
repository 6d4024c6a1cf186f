//! Write ordering: overlapping writes reach the disk in submission order.
//!
//! Owns: the byte ranges of admitted (in-flight) writes and the FIFO of writes
//! held back because they overlap an earlier one. Must never: admit a write
//! while an earlier-submitted overlapping write is in flight or still held
//! (that would let a file system observe reordering), or do I/O.
//!
//! Every op that changes content (write, discard, write-zeroes) goes through
//! here; reads and flushes do not (a read racing a write may see either).

use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;

/// Submission sequence number of a request; strictly increasing.
pub(crate) type Seq = u64;

fn overlaps(a: &Range<u64>, b: &Range<u64>) -> bool {
    a.start < b.end && b.start < a.end
}

/// Interval conflict tracker.
#[derive(Debug, Default)]
pub(crate) struct WriteOrder {
    admitted: BTreeMap<Seq, Range<u64>>,
    held: VecDeque<(Seq, Range<u64>)>,
}

impl WriteOrder {
    /// Registers write `seq`; returns true when it may start now, false when
    /// it is held until [`WriteOrder::complete`] admits it.
    pub(crate) fn try_admit(&mut self, seq: Seq, range: Range<u64>) -> bool {
        // Held writes are in submission order, so the newest known write is
        // the last admitted or the last held one: O(log n), not a scan.
        let newest = self
            .admitted
            .keys()
            .next_back()
            .max(self.held.back().map(|(s, _)| s));
        assert!(
            newest.is_none_or(|&s| s < seq),
            "write sequence numbers must increase"
        );
        let blocked = self.admitted.values().any(|r| overlaps(r, &range))
            || self.held.iter().any(|(_, r)| overlaps(r, &range));
        if blocked {
            self.held.push_back((seq, range));
            false
        } else {
            self.admitted.insert(seq, range);
            true
        }
    }

    /// Registers write `seq` only if it may start now (no earlier write in
    /// flight or held overlaps it); `false` registers nothing.
    pub(crate) fn try_admit_now(&mut self, seq: Seq, range: Range<u64>) -> bool {
        let blocked = self.admitted.values().any(|r| overlaps(r, &range))
            || self.held.iter().any(|(_, r)| overlaps(r, &range));
        !blocked && self.try_admit(seq, range)
    }

    /// Write `seq` finished; returns the held writes that may start now, oldest first.
    pub(crate) fn complete(&mut self, seq: Seq) -> Vec<Seq> {
        let removed = self.admitted.remove(&seq);
        assert!(
            removed.is_some(),
            "completing write {seq} that was never admitted"
        );
        let mut started = Vec::new();
        let mut still_held: VecDeque<(Seq, Range<u64>)> = VecDeque::with_capacity(self.held.len());
        for (s, r) in std::mem::take(&mut self.held) {
            let blocked = self.admitted.values().any(|a| overlaps(a, &r))
                || still_held.iter().any(|(_, h)| overlaps(h, &r));
            if blocked {
                still_held.push_back((s, r));
            } else {
                self.admitted.insert(s, r);
                started.push(s);
            }
        }
        self.held = still_held;
        started
    }

    /// Writes admitted or held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.admitted.len() + self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_write_waits_for_earlier_one() {
        let mut o = WriteOrder::default();
        assert!(o.try_admit(1, 0..4096));
        assert!(!o.try_admit(2, 2048..8192));
        assert!(o.try_admit(3, 8192..12288), "disjoint write is not held");
        assert_eq!(o.complete(1), vec![2]);
        assert_eq!(o.complete(2), Vec::<Seq>::new());
        assert_eq!(o.complete(3), Vec::<Seq>::new());
        assert_eq!(o.len(), 0);
    }

    #[test]
    fn later_write_never_overtakes_held_overlapping_one() {
        let mut o = WriteOrder::default();
        assert!(o.try_admit(1, 0..512));
        assert!(!o.try_admit(2, 0..1024)); // held behind 1
        assert!(
            !o.try_admit(3, 512..1024),
            "overlaps held write 2, so it must wait too"
        );
        assert_eq!(o.complete(1), vec![2]);
        assert_eq!(o.complete(2), vec![3]);
        assert_eq!(o.complete(3), Vec::<Seq>::new());
    }

    #[test]
    fn chain_of_same_block_writes_runs_one_at_a_time_in_order() {
        let mut o = WriteOrder::default();
        assert!(o.try_admit(10, 0..512));
        for s in 11..20 {
            assert!(!o.try_admit(s, 0..512));
        }
        let mut next = 10;
        while next < 20 {
            let started = o.complete(next);
            if next < 19 {
                assert_eq!(started, vec![next + 1]);
            }
            next += 1;
        }
        assert_eq!(o.len(), 0);
    }
}
