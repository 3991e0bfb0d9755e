//! Dropped replicas kept as bases. After a line's write-back its owner drops the replica; most
//! lines are written again soon (the next write is the first after a write-back), and without a
//! base that write would send the whole line. So the holder keeps the dropped copy here, as the
//! line stood on the members, and a piece whose base is exactly that write sequence revives it
//! as the live replica. A base is never taken over (the members hold its content), and there
//! are at most `cap` of them: the oldest go first, and a piece that finds none is answered
//! `ReplicaMissing` (the owner sends the whole line).

use std::collections::{BTreeMap, VecDeque};

/// The kept copies, by (owner, line): (write sequence, data).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub(super) struct Bases {
    kept: BTreeMap<(u8, u64), (u64, Vec<u8>)>,
    /// Insertion order with the write sequence then, to tell a stale entry from the current one.
    order: VecDeque<((u8, u64), u64)>,
    cap: usize,
}

impl Bases {
    pub(super) fn new(cap: usize) -> Bases {
        Bases { kept: BTreeMap::new(), order: VecDeque::new(), cap }
    }

    /// Keeps `data` as `owner`'s line at `wseq`, forgetting the oldest past the cap.
    pub(super) fn keep(&mut self, key: (u8, u64), wseq: u64, data: Vec<u8>) {
        if self.cap == 0 {
            return;
        }
        self.kept.insert(key, (wseq, data));
        self.order.push_back((key, wseq));
        if self.order.len() > 2 * self.cap {
            // Entries taken or replaced since are stale: dropped, so the order stays within
            // twice the cap (amortised: at least half of it goes each time).
            let kept = &self.kept;
            self.order.retain(|(k, w)| kept.get(k).is_some_and(|(kw, _)| kw == w));
        }
        while self.kept.len() > self.cap {
            let Some((k, w)) = self.order.pop_front() else { break };
            if self.kept.get(&k).is_some_and(|(kw, _)| *kw == w) {
                self.kept.remove(&k);
            }
        }
    }

    /// Takes the copy of `key` if it is at exactly `wseq`.
    pub(super) fn take_at(&mut self, key: (u8, u64), wseq: u64) -> Option<Vec<u8>> {
        if self.kept.get(&key).is_some_and(|(w, _)| *w == wseq) {
            return self.kept.remove(&key).map(|(_, d)| d);
        }
        None
    }

    /// Forgets the copy of `key` (a whole line came instead).
    pub(super) fn forget(&mut self, key: (u8, u64)) {
        self.kept.remove(&key);
    }

    /// Forgets every copy (a membership change: owners may have gone or moved on).
    pub(super) fn clear(&mut self) {
        self.kept.clear();
        self.order.clear();
    }

    /// Copies kept now.
    pub(super) fn len(&self) -> usize {
        self.kept.len()
    }

    /// The (owner, line) of every copy kept.
    pub(super) fn keys(&self) -> impl Iterator<Item = &(u8, u64)> {
        self.kept.keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bases_are_bounded_oldest_first_and_taken_only_at_their_sequence() {
        let mut b = Bases::new(2);
        b.keep((1, 10), 5, vec![1]);
        b.keep((1, 11), 6, vec![2]);
        assert_eq!(b.take_at((1, 10), 4), None, "another sequence");
        b.keep((1, 12), 7, vec![3]);
        assert_eq!(b.len(), 2);
        assert_eq!(b.take_at((1, 10), 5), None, "the oldest went");
        assert_eq!(b.take_at((1, 11), 6), Some(vec![2]));
        assert_eq!(b.take_at((1, 11), 6), None, "taken once");
        // Re-keeping a line many times keeps the order bounded.
        for w in 0..100 {
            b.keep((2, 1), w, vec![]);
        }
        assert!(b.order.len() <= 4);
        assert_eq!(b.take_at((1, 12), 7), Some(vec![3]), "an entry that was never replaced stays");
    }
}
