//! The card's presence filter, kept true by the machine. The card has a bit per bucket of lines
//! (bucket = line number modulo 2^`log2`): set, this host may hold or be acquiring a line
//! there; clear, it holds and acquires nothing there, and the card answers a peer's held request
//! for the bucket itself, as this host's yield would, without waking the host. With a workload
//! larger than the caches most lines a peer asks for are in no other cache, and every request
//! used to wake every peer's host for a yield of nothing (session 15's profile: two yields per
//! operation, most of them for lines the peer did not have).
//!
//! The bit of a line is set by its own acquire (a line's acquires are `filtered`: the card sets
//! the bit as it takes the command, before its request goes out) or by `Mark` for a line that
//! came without one (taken over from a dead controller's replica). It is cleared by `Unmark`,
//! sent after the step in which the last line of the bucket stopped using room (Invalid, no
//! acquire, fill or fetch), so after that line's yield or release. No later acquire or presence
//! command overtakes it on the way to the card (`card_terms::take_submittable`).
//!
//! A stripe lock counts in its bucket (stripe number modulo 2^`log2`) as a line does, from its
//! acquire until its yield: a peer's lock acquire is filtered too, since a write-back's acquire
//! used to wake every peer's host for a lock it nearly never held.
//!
//! A new membership turns the card's filter off (an epoch write), since it gives this host
//! lines without commands. The machine then marks every bucket it uses and, once the card has
//! taken those marks, sends `FilterOn`; so it does at its start too.

use super::Mutation;
use crate::amf::io::{PRESENCE_BUCKETS_LOG2_MAX, PRESENCE_NS, STRIPE_NS};
use std::collections::{BTreeMap, BTreeSet};

/// The filter's state in the machine.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub(super) struct Presence {
    /// Buckets = 2^log2; 0: the card has no filter and nothing is sent.
    log2: u32,
    /// Lines using room and stripe locks held or asked for, per bucket (buckets with none are
    /// absent).
    counts: BTreeMap<u64, u32>,
    /// The stripes counted (a lock held here or an acquire of it on its way).
    stripes: BTreeSet<u64>,
    /// Stripes whose lock may have changed in this step.
    stripes_touched: BTreeSet<u64>,
    /// Buckets that lost a line this step, and buckets that gained one that no acquire of its
    /// own marks.
    emptied: BTreeSet<u64>,
    to_mark: BTreeSet<u64>,
    /// Every bucket in use is to be marked (a new membership).
    remark: bool,
    /// `FilterOn` is owed once the marks in flight are done.
    want_on: bool,
    /// Marks of a new membership in flight (machine command ids).
    marks: BTreeSet<u64>,
    /// A rule broken on purpose (`Mutation::UnmarkWithLinesLeft`, `NoPresenceMarks`).
    mutation: Option<Mutation>,
}

/// What the presence filter asks of the card after a step.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct PresenceCmds {
    /// Resources (`PRESENCE_NS` | bucket) to mark, for the new membership's marks
    /// (`tracked`) and the rest.
    pub(super) mark: Vec<(u64, bool)>,
    /// Resources to unmark.
    pub(super) unmark: Vec<u64>,
    /// Send `FilterOn`.
    pub(super) on: bool,
}

impl Presence {
    /// A filter of 2^`log2` buckets (0: none; at most 2^`PRESENCE_BUCKETS_LOG2_MAX`).
    pub(super) fn new(log2: u32, mutation: Option<Mutation>) -> Presence {
        let log2 = log2.min(PRESENCE_BUCKETS_LOG2_MAX);
        Presence { log2, want_on: log2 > 0, mutation, ..Presence::default() }
    }

    /// True when the card has a filter.
    pub(super) fn enabled(&self) -> bool {
        self.log2 > 0
    }

    fn bucket(&self, r: u64) -> u64 {
        r & ((1u64 << self.log2) - 1)
    }

    /// Line `r` started (`used`) or stopped using room; `acquiring`: an acquire of its own is
    /// on its way to the card or there, which sets the bit.
    pub(super) fn line_changed(&mut self, r: u64, used: bool, acquiring: bool) {
        if !self.enabled() {
            return;
        }
        let b = self.bucket(r);
        if used {
            let c = self.counts.entry(b).or_insert(0);
            *c += 1;
            if !acquiring {
                self.to_mark.insert(b);
            }
        } else if let Some(c) = self.counts.get_mut(&b) {
            *c = c.saturating_sub(1);
            if *c == 0 {
                self.counts.remove(&b);
                self.emptied.insert(b);
            } else if self.mutation == Some(Mutation::UnmarkWithLinesLeft) {
                self.emptied.insert(b);
            }
        }
    }

    /// Stripe `s`'s lock may have changed (an acquire, a yield, a completion).
    pub(super) fn stripe_touched(&mut self, s: u64) {
        if self.enabled() {
            self.stripes_touched.insert(s);
        }
    }

    /// The stripes touched in this step.
    pub(super) fn take_stripes_touched(&mut self) -> BTreeSet<u64> {
        std::mem::take(&mut self.stripes_touched)
    }

    /// Stripe `s`'s lock is (`used`) or is no longer held here or asked for; `acquiring`: an
    /// acquire of it is on its way to the card, which sets the bit. A stripe's lock is counted
    /// in its bucket as a line is: a peer's acquire of it is filtered too, so the bit must stay
    /// set while this host holds the lock.
    pub(super) fn stripe_changed(&mut self, s: u64, used: bool, acquiring: bool) {
        if used == self.stripes.contains(&s) || self.mutation == Some(Mutation::NoStripePresence) {
            return;
        }
        if used {
            self.stripes.insert(s);
        } else {
            self.stripes.remove(&s);
        }
        self.line_changed(STRIPE_NS | s, used, acquiring);
    }

    /// A new membership: the card's filter is off until every bucket in use is marked again.
    pub(super) fn new_view(&mut self) {
        if self.enabled() {
            self.remark = true;
            self.want_on = true;
            self.marks.clear();
        }
    }

    /// A mark of the new membership was taken by the card.
    pub(super) fn marked(&mut self, id: u64) {
        self.marks.remove(&id);
    }

    /// A mark of the new membership is on its way (`id`).
    pub(super) fn marking(&mut self, id: u64) {
        self.marks.insert(id);
    }

    /// The commands this step asks for, in the order to send them: unmarks (after the yields
    /// and releases of the step), marks, then `FilterOn` once no mark of the membership is in
    /// flight.
    pub(super) fn commands(&mut self) -> PresenceCmds {
        let mut out = PresenceCmds::default();
        if !self.enabled() {
            return out;
        }
        let any = self.mutation == Some(Mutation::UnmarkWithLinesLeft);
        for b in std::mem::take(&mut self.emptied) {
            if any || !self.counts.contains_key(&b) {
                out.unmark.push(PRESENCE_NS | b);
            }
        }
        let to_mark = std::mem::take(&mut self.to_mark);
        let remark = std::mem::take(&mut self.remark);
        if self.mutation == Some(Mutation::NoPresenceMarks) {
            // Broken on purpose: no bucket is marked but by an acquire.
        } else if remark {
            out.mark.extend(self.counts.keys().map(|b| (PRESENCE_NS | b, true)));
        } else {
            out.mark
                .extend(to_mark.into_iter().filter(|b| self.counts.contains_key(b)).map(|b| (PRESENCE_NS | b, false)));
        }
        // The new membership's marks go out with this step or are still in flight.
        let marking = (remark && !out.mark.is_empty()) || !self.marks.is_empty();
        if self.want_on && !marking {
            self.want_on = false;
            out.on = true;
        }
        out
    }

    /// The counts agree with `used`, the lines using room now, and `locked`, the stripes whose
    /// lock is held or asked for (between steps).
    pub(super) fn check(
        &self,
        node: u8,
        used: impl Iterator<Item = u64>,
        locked: impl Iterator<Item = u64>,
    ) -> Result<(), String> {
        if !self.enabled() {
            return Ok(());
        }
        let locked: BTreeSet<u64> = locked.collect();
        if locked != self.stripes && self.mutation != Some(Mutation::NoStripePresence) {
            return Err(format!(
                "n{node}: the presence filter counts {} stripe locks, {} are held or asked for",
                self.stripes.len(),
                locked.len()
            ));
        }
        let mut counts: BTreeMap<u64, u32> = BTreeMap::new();
        for r in used.chain(self.stripes.iter().map(|s| STRIPE_NS | s)) {
            *counts.entry(self.bucket(r)).or_insert(0) += 1;
        }
        if counts != self.counts {
            return Err(format!(
                "n{node}: the presence filter counts lines in {} buckets, the lines use {}",
                self.counts.len(),
                counts.len()
            ));
        }
        if !self.emptied.is_empty() || !self.to_mark.is_empty() || !self.stripes_touched.is_empty() {
            return Err(format!("n{node}: presence changes left unsent after the step"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_is_unmarked_when_its_last_line_goes_and_marked_when_a_line_comes_without_an_acquire() {
        let mut p = Presence::new(4, None);
        assert!(p.commands().on, "the filter goes on at the start");
        p.line_changed(3, true, true);
        p.line_changed(3 + 16, true, false);
        let c = p.commands();
        assert_eq!(c.mark, vec![(PRESENCE_NS | 3, false)], "the line that came without an acquire");
        assert!(c.unmark.is_empty() && !c.on);
        p.line_changed(3, false, false);
        assert!(p.commands().unmark.is_empty(), "another line of the bucket is still here");
        p.line_changed(3 + 16, false, false);
        p.line_changed(5, true, true);
        p.line_changed(5, false, false);
        assert_eq!(p.commands().unmark, vec![PRESENCE_NS | 3, PRESENCE_NS | 5]);
        // A new membership: every bucket in use is marked, and the filter goes on only after.
        p.line_changed(7, true, true);
        p.new_view();
        let c = p.commands();
        assert_eq!((c.mark, c.on), (vec![(PRESENCE_NS | 7, true)], false));
        p.marking(40);
        assert!(!p.commands().on, "a mark is in flight");
        p.marked(40);
        assert!(p.commands().on);
        assert!(p.check(0, [7u64].into_iter(), None.into_iter()).is_ok());
        assert!(p.check(0, [7u64, 8].into_iter(), None.into_iter()).is_err());
        // No filter: nothing, ever.
        let mut none = Presence::new(0, None);
        none.line_changed(1, true, false);
        none.new_view();
        assert_eq!(none.commands(), PresenceCmds::default());
    }
}
