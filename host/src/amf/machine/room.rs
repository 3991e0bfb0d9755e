//! The cache's room, kept as lines change instead of counted on every miss. With thousands of
//! lines, a count over all of them for every line filled, and a search for the least recently
//! used one for every eviction, cost more CPU than the I/O they stood for (session 15's profile
//! of a working set four times the cache: a quarter of all samples).
//!
//! Every change to a line goes through `Machine::line`, which names the line here. The index
//! looks at the named lines again before it answers and at the end of every step, so between
//! steps it holds exactly what a count over all lines would give; `Machine::check` (after every
//! step of the simulator and in every state of the model checker) holds it to that.

use super::{Line, Phase, State};
use std::collections::{BTreeMap, BTreeSet};

/// What the index counted a line as, the last time it looked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub(super) struct Seen {
    used: bool,
    /// The line's last use, while it holds data (a place in the least-recently-used order).
    resident_use: Option<u64>,
    evict: bool,
}

impl Seen {
    fn of(l: &Line) -> Seen {
        Seen { used: uses_room(l), resident_use: (l.state != State::Invalid).then_some(l.last_use), evict: l.evict }
    }
}

/// True when line `l` takes a place in the cache: it holds data, or is on its way in.
pub(super) fn uses_room(l: &Line) -> bool {
    l.state != State::Invalid
        || matches!(
            l.phase,
            Phase::Acquiring { .. } | Phase::Filling { .. } | Phase::FillLocking { .. } | Phase::Fetching { .. }
        )
}

/// The counts and the order of the lines by last use.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub(super) struct Room {
    /// Lines changed since the index last looked at them.
    changed: BTreeSet<u64>,
    used: usize,
    evicting: usize,
    /// (last use, line) of every line holding data, least recently used first.
    by_use: BTreeSet<(u64, u64)>,
    /// Lines that started (true) or stopped using room since the machine last took these
    /// (`take_used_changes`), kept only when `track_used` (the presence filter counts them).
    used_changes: Vec<(u64, bool)>,
    track_used: bool,
}

impl Room {
    /// An empty index; `track_used`: keep the lines that start or stop using room.
    pub(super) fn new(track_used: bool) -> Room {
        Room { track_used, ..Room::default() }
    }

    /// Line `r` may have changed.
    pub(super) fn changed(&mut self, r: u64) {
        self.changed.insert(r);
    }

    /// Looks again at the lines changed since the last call.
    pub(super) fn sync(&mut self, lines: &mut BTreeMap<u64, Box<Line>>) {
        while let Some(r) = self.changed.pop_first() {
            if let Some(l) = lines.get_mut(&r) {
                let now = Seen::of(l);
                self.count(r, l.seen, now);
                l.seen = now;
            }
        }
    }

    /// Line `r` leaves the map.
    pub(super) fn forget(&mut self, r: u64, l: &Line) {
        self.changed.remove(&r);
        self.count(r, l.seen, Seen::default());
    }

    fn count(&mut self, r: u64, was: Seen, now: Seen) {
        if was == now {
            return;
        }
        self.used = (self.used + usize::from(now.used)).saturating_sub(usize::from(was.used));
        if self.track_used && was.used != now.used {
            self.used_changes.push((r, now.used));
        }
        self.evicting = (self.evicting + usize::from(now.evict)).saturating_sub(usize::from(was.evict));
        if was.resident_use != now.resident_use {
            if let Some(u) = was.resident_use {
                self.by_use.remove(&(u, r));
            }
            if let Some(u) = now.resident_use {
                self.by_use.insert((u, r));
            }
        }
    }

    /// Lines that started (true) or stopped using room since the last call, in order.
    pub(super) fn take_used_changes(&mut self) -> Vec<(u64, bool)> {
        std::mem::take(&mut self.used_changes)
    }

    /// Lines taking a place in the cache (as of the last sync).
    pub(super) fn used(&self) -> usize {
        self.used
    }

    /// True when a line is being evicted (as of the last sync).
    pub(super) fn evicting(&self) -> bool {
        self.evicting > 0
    }

    /// The lines holding data, least recently used first (as of the last sync).
    pub(super) fn by_use(&self) -> impl Iterator<Item = u64> + '_ {
        self.by_use.iter().map(|(_, r)| *r)
    }

    /// The index agrees with a count over all lines (call it between steps: synced).
    pub(super) fn check(&self, node: u8, lines: &BTreeMap<u64, Box<Line>>) -> Result<(), String> {
        if !self.changed.is_empty() {
            return Err(format!("n{node}: {} lines changed and not looked at after the step", self.changed.len()));
        }
        let used = lines.values().filter(|l| uses_room(l)).count();
        let evicting = lines.values().filter(|l| l.evict).count();
        let by_use: BTreeSet<(u64, u64)> =
            lines.iter().filter(|(_, l)| l.state != State::Invalid).map(|(r, l)| (l.last_use, *r)).collect();
        if (used, evicting) != (self.used, self.evicting) || by_use != self.by_use {
            return Err(format!(
                "n{node}: the cache index counts {} used and {} evicting lines, the lines say {used} and {evicting}{}",
                self.used,
                self.evicting,
                if by_use != self.by_use { "; its order by last use differs" } else { "" }
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::amf::io::*;
    use crate::amf::machine::view::tests::{machine, run};
    use crate::amf::machine::{Machine, State};

    fn read(m: &mut Machine, id: u64, line: u64) {
        let replies = run(m, Input::Host { id, req: HostReq::Read { offset: line * 4, len: 4 } });
        assert_eq!(replies, vec![(id, Ok(vec![0; 4]))]);
    }

    #[test]
    fn evictions_and_write_backs_a_peer_waited_for_are_counted() {
        let mut m = machine(0, 2);
        let write = HostReq::Write { offset: 0, data: vec![7; 4], fua: false };
        assert_eq!(run(&mut m, Input::Host { id: 1, req: write }), vec![(1, Ok(Vec::new()))]);
        assert_eq!(m.line_state(0), State::Modified);
        for line in 1..4 {
            read(&mut m, 1 + line, line);
        }
        assert_eq!((m.counters.evictions, m.counters.room_waits), (0, 0));
        // The cache is full: the least recently used line (0, dirty) is written back and goes.
        read(&mut m, 5, 4);
        assert_eq!((m.counters.evictions, m.counters.evictions_dirty, m.counters.room_waits), (1, 1, 1));
        assert_eq!(m.line_state(0), State::Invalid);
        // Line 1 (clean) goes next, with nothing to write.
        read(&mut m, 6, 5);
        assert_eq!((m.counters.evictions, m.counters.evictions_dirty, m.counters.room_waits), (2, 1, 2));
        // A peer's invalidate of a clean line is a yield; of a dirty one, a write-back first.
        run(&mut m, Input::CardEvent { kind: CardEventKind::Invalidate, resource: 2, from: 1 });
        assert_eq!(m.counters.yield_write_backs, 0);
        let write = HostReq::Write { offset: 12, data: vec![9; 4], fua: false };
        assert_eq!(run(&mut m, Input::Host { id: 7, req: write }), vec![(7, Ok(Vec::new()))]);
        run(&mut m, Input::CardEvent { kind: CardEventKind::Invalidate, resource: 3, from: 1 });
        assert_eq!(m.counters.yield_write_backs, 1);
        assert_eq!(m.line_state(3), State::Invalid);
    }
}
