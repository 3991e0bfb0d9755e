//! Write-back block cache of one controller: fixed-size lines in states Shared, Exclusive or
//! Modified (absent = Invalid), a dirty flag (a Shared line can still be dirty right after a
//! peer's read downgraded it, until it reaches the members), and a scan-resistant replacement
//! policy (segmented LRU: a line touched once is evicted before any line touched twice, so one
//! sequential scan cannot flush the working set).
//!
//! The card's sharer table is set-associative; a line this cache holds must have an entry there,
//! so the cache keeps at most `ways` lines per card set (`line % sets`). It is a plain data
//! structure: the coherency layer does the I/O and keeps it under one mutex.

use std::collections::HashMap;

/// Coherence state of a present line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum State {
    /// Others may hold it too; reads are served, writes need an exclusive acquire.
    Shared,
    /// Only this node holds it, same data as the members.
    Exclusive,
    /// Only this node holds it, newer than the members.
    Modified,
}

/// One cache line.
#[derive(Clone, Debug)]
pub struct Line {
    /// Coherence state.
    pub state: State,
    /// Newer than the members (Modified, or Shared right after a downgrade).
    pub dirty: bool,
    /// Bumped by every write anywhere in the cluster (carried with forwarded copies).
    pub version: u64,
    /// The bytes.
    pub data: Vec<u8>,
    /// Replacement: use counter (1 = probation, 2+ = protected) and last use.
    uses: u32,
    last_use: u64,
}

impl Line {
    /// A line taken over from elsewhere (kept for the node that will take it).
    pub fn handed(version: u64, dirty: bool, data: Vec<u8>) -> Line {
        Line { state: State::Shared, dirty, version, data, uses: 0, last_use: 0 }
    }
}

/// What an operation in progress on a line is doing (another node's fetch is told to retry for `Holding`,
/// not for `Filling`: a line being filled has no data yet, and two nodes filling the same line
/// must not wait for each other).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Busy {
    /// Getting the line's data for a read (from a peer or the members).
    Filling,
    /// Writing, upgrading, evicting or destaging. `Some(e)`: the exclusive acquire completed
    /// after the card's first `e` events; an invalidate at or after event `e` means this
    /// operation owes its result to the invalidating node (it hands the line off when it ends).
    Holding(Option<u32>),
}

/// Counters.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct CacheStats {
    /// Lines present.
    pub lines: usize,
    /// Dirty lines.
    pub dirty: usize,
    /// Lines evicted.
    pub evictions: u64,
}

/// The cache.
pub struct Cache {
    line_bytes: usize,
    capacity: usize,
    sets: u64,
    ways: usize,
    lines: HashMap<u64, Line>,
    /// Dirty lines lost to a peer's invalidate before that peer fetched them (see
    /// coherency::handoff), keyed by line, with the node that invalidated them.
    handoff: HashMap<u64, (u8, Line)>,
    busy: HashMap<u64, Busy>,
    /// The node whose invalidate removed the line last, and that event's position.
    invalidated_by: HashMap<u64, (u8, u32)>,
    /// Position of the last downgrade of each line (recorded even when the line is absent: an
    /// operation assembling it must install it Shared).
    downgraded_at: HashMap<u64, u32>,
    /// Highest version this node has known of each line: handoff lines at or below it are
    /// leftovers of an older round and never taken.
    floor: HashMap<u64, u64>,
    /// Bumped when a line is invalidated or installed: an operation that saw generation g and
    /// finds another knows its copy may be stale.
    generation: HashMap<u64, u64>,
    tick: u64,
    evictions: u64,
}

/// Most handoff lines kept (each is one line of memory).
pub const HANDOFF_MAX: usize = 256;

impl Cache {
    /// A cache of at most `capacity` lines of `line_bytes`, at most `ways` per card set of
    /// `sets` sets.
    pub fn new(line_bytes: usize, capacity: usize, sets: u64, ways: usize) -> Cache {
        Cache {
            line_bytes,
            capacity: capacity.max(1),
            sets: sets.max(1),
            ways: ways.max(1),
            lines: HashMap::new(),
            handoff: HashMap::new(),
            busy: HashMap::new(),
            invalidated_by: HashMap::new(),
            downgraded_at: HashMap::new(),
            floor: HashMap::new(),
            generation: HashMap::new(),
            tick: 0,
            evictions: 0,
        }
    }

    /// Bytes per line.
    pub fn line_bytes(&self) -> usize {
        self.line_bytes
    }

    /// The line, if present (does not count as a use).
    pub fn get(&self, r: u64) -> Option<&Line> {
        self.lines.get(&r)
    }

    /// The line for an access (counts as a use for replacement).
    pub fn touch(&mut self, r: u64) -> Option<&mut Line> {
        self.tick += 1;
        let t = self.tick;
        let l = self.lines.get_mut(&r)?;
        l.uses = l.uses.saturating_add(1);
        l.last_use = t;
        Some(l)
    }

    /// Generation of line `r` (see the field).
    pub fn generation(&self, r: u64) -> u64 {
        self.generation.get(&r).copied().unwrap_or(0)
    }

    fn bump(&mut self, r: u64) {
        *self.generation.entry(r).or_insert(0) += 1;
    }

    /// Installs a line (replacing any copy). The caller made room with `victim` first. A
    /// handoff line of `r` stays: it is owed to another writer until that one takes it (the
    /// write path retires it with `drop_handoff` when this node takes the line over itself).
    pub fn install(&mut self, r: u64, state: State, dirty: bool, version: u64, data: Vec<u8>) {
        self.tick += 1;
        self.bump(r);
        self.raise_floor(r, version);
        self.lines.insert(r, Line { state, dirty, version, data, uses: 1, last_use: self.tick });
    }

    /// A peer's invalidate: the line is gone. A dirty line moves to the handoff area for the
    /// invalidating node `by` to fetch. Returns whether a line was present.
    pub fn invalidate(&mut self, r: u64, by: u8, at: u32) -> bool {
        // Only a present line or an operation in progress can be affected; recording events of
        // other lines would grow these maps with every line any peer writes.
        if self.watched(r) {
            self.bump(r);
            self.invalidated_by.insert(r, (by, at));
        }
        match self.lines.remove(&r) {
            Some(l) => {
                self.hand_off(r, by, l);
                true
            }
            None => false,
        }
    }

    /// Keeps `l` for node `by` to take (its invalidate removed it here).
    pub fn hand_off(&mut self, r: u64, by: u8, l: Line) {
        if self.handoff.len() >= HANDOFF_MAX && !self.handoff.contains_key(&r) {
            // Clean leftovers go first; a dirty one is only ever replaced by a newer round.
            if let Some(k) = self.handoff.iter().find(|(_, (_, l))| !l.dirty).map(|(k, _)| *k) {
                self.handoff.remove(&k);
                self.forget(k);
            }
        }
        if self.handoff.len() < HANDOFF_MAX || self.handoff.contains_key(&r) {
            self.handoff.insert(r, (by, l));
        }
    }

    /// Who invalidated `r` last.
    pub fn invalidated_by(&self, r: u64) -> Option<u8> {
        self.invalidated_by.get(&r).map(|x| x.0)
    }

    /// Whether an invalidate of `r` was event `mark` or later (positions wrap).
    pub fn invalidated_since(&self, r: u64, mark: u32) -> bool {
        self.invalidated_by.get(&r).is_some_and(|(_, at)| at.wrapping_sub(mark) as i32 >= 0)
    }

    /// Highest version known of `r`.
    pub fn floor(&self, r: u64) -> u64 {
        self.floor.get(&r).copied().unwrap_or(0)
    }

    /// Records that version `v` of `r` exists.
    pub fn raise_floor(&mut self, r: u64, v: u64) {
        let f = self.floor.entry(r).or_insert(0);
        *f = (*f).max(v);
    }

    /// Dirty handoff lines (a FLUSH makes them durable too), ascending.
    pub fn dirty_handoffs(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.handoff.iter().filter(|(_, (_, l))| l.dirty).map(|(k, _)| *k).collect();
        v.sort_unstable();
        v
    }

    /// A handoff line's data and version (destage; a reader's fetch, see coherency::read).
    pub fn handoff_line(&self, r: u64) -> Option<&Line> {
        self.handoff.get(&r).map(|(_, l)| l)
    }

    /// Marks a handoff line clean if it still has version `v`.
    pub fn handoff_clean(&mut self, r: u64, v: u64) {
        if let Some((_, l)) = self.handoff.get_mut(&r) {
            if l.version == v {
                l.dirty = false;
            }
        }
    }

    /// Whether a downgrade of `r` was event `mark` or later (positions wrap).
    pub fn downgraded_since(&self, r: u64, mark: u32) -> bool {
        self.downgraded_at.get(&r).is_some_and(|at| at.wrapping_sub(mark) as i32 >= 0)
    }

    /// A peer's shared acquire: an exclusive line becomes Shared (keeping its dirty flag).
    pub fn downgrade(&mut self, r: u64, at: u32) -> bool {
        if self.watched(r) {
            self.downgraded_at.insert(r, at);
        }
        match self.lines.get_mut(&r) {
            Some(l) if l.state != State::Shared => {
                l.state = State::Shared;
                true
            }
            _ => false,
        }
    }

    /// Takes the handoff line of `r` for a writer that now holds the line, if it is not older
    /// than `floor` (older ones are leftovers; they are dropped). Any writer may take it, not
    /// only the node whose invalidate put it there: that node's round may have been aborted
    /// by the card's conflict rule, and then the line is the newest data there is.
    pub fn take_handoff(&mut self, r: u64, floor: u64) -> Option<Line> {
        let (_, l) = self.handoff.remove(&r)?;
        self.forget(r);
        (l.version >= floor).then_some(l)
    }

    /// Forgets a handoff line (this node holds `r` again, so it is outdated).
    pub fn drop_handoff(&mut self, r: u64) {
        self.handoff.remove(&r);
    }

    /// Removes a line (eviction after destage and release).
    pub fn remove(&mut self, r: u64) {
        if self.lines.remove(&r).is_some() {
            self.bump(r);
            self.evictions += 1;
        }
    }

    /// Marks `r` busy; false if it already is.
    pub fn try_begin(&mut self, r: u64, kind: Busy) -> bool {
        if self.busy.contains_key(&r) {
            return false;
        }
        self.busy.insert(r, kind);
        true
    }

    /// What is going on with `r`.
    pub fn busy(&self, r: u64) -> Option<Busy> {
        self.busy.get(&r).copied()
    }

    /// Changes what the operation on `r` does.
    pub fn set_busy(&mut self, r: u64, kind: Busy) {
        if let Some(b) = self.busy.get_mut(&r) {
            *b = kind;
        }
    }

    /// Ends the operation on `r`.
    pub fn end(&mut self, r: u64) {
        self.busy.remove(&r);
        self.forget(r);
    }

    /// Whether events of `r` can matter: the line is here or an operation is working on it.
    /// (An operation compares only against events from its own acquire on, so events from
    /// before it began need no record.)
    fn watched(&self, r: u64) -> bool {
        self.lines.contains_key(&r) || self.busy.contains_key(&r)
    }

    /// Drops the bookkeeping of a line nothing refers to any more (absent, idle, no handoff
    /// copy): the maps stay as large as the cache, not the group.
    fn forget(&mut self, r: u64) {
        if !self.watched(r) && !self.handoff.contains_key(&r) {
            self.generation.remove(&r);
            self.invalidated_by.remove(&r);
            self.downgraded_at.remove(&r);
            self.floor.remove(&r);
        }
    }

    /// Entries in the per-line bookkeeping maps (for tests and status).
    pub fn bookkeeping(&self) -> usize {
        self.generation.len() + self.invalidated_by.len() + self.downgraded_at.len() + self.floor.len()
    }

    /// The line to evict so that `r` fits, if one must go: the set's lines when the card set is
    /// full, else all lines when the cache is full; probation before protected, then least
    /// recently used; never a busy line. `Err(())` when room is needed but every candidate is
    /// busy.
    #[allow(clippy::result_unit_err)]
    pub fn victim(&self, r: u64) -> Result<Option<u64>, ()> {
        if self.lines.contains_key(&r) {
            return Ok(None);
        }
        let set = r % self.sets;
        let in_set = self.lines.keys().filter(|&&k| k % self.sets == set).count();
        let candidates: Box<dyn Iterator<Item = (&u64, &Line)>> = if in_set >= self.ways {
            Box::new(self.lines.iter().filter(move |(k, _)| *k % self.sets == set))
        } else if self.lines.len() >= self.capacity {
            Box::new(self.lines.iter())
        } else {
            return Ok(None);
        };
        candidates
            .filter(|(k, _)| !self.busy.contains_key(k))
            .min_by_key(|(_, l)| (l.uses >= 2, l.last_use))
            .map(|(k, _)| Some(*k))
            .ok_or(())
    }

    /// Dirty lines in ascending order, at most `max`.
    pub fn dirty_lines(&self, max: usize) -> Vec<u64> {
        let mut v: Vec<u64> = self.lines.iter().filter(|(_, l)| l.dirty).map(|(k, _)| *k).collect();
        v.sort_unstable();
        v.truncate(max);
        v
    }

    /// Counters.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            lines: self.lines.len(),
            dirty: self.lines.values().filter(|l| l.dirty).count(),
            evictions: self.evictions,
        }
    }

    /// Lines per card set and sets (for status).
    pub fn shape(&self) -> (usize, u64, usize) {
        (self.capacity, self.sets, self.ways)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scan_does_not_evict_the_working_set() {
        let mut c = Cache::new(8, 4, 1024, 4);
        for r in [1, 2] {
            c.install(r, State::Shared, false, 0, vec![0; 8]);
            c.touch(r);
        }
        // A scan of single-use lines: each needs room once the cache is full.
        for r in 100..120 {
            if let Some(v) = c.victim(r).unwrap() {
                assert!(v >= 100, "scan evicted working-set line {v}");
                c.remove(v);
            }
            c.install(r, State::Shared, false, 0, vec![0; 8]);
        }
        assert!(c.get(1).is_some() && c.get(2).is_some());
    }

    #[test]
    fn a_card_set_never_holds_more_than_its_ways() {
        let mut c = Cache::new(8, 100, 4, 2);
        c.install(0, State::Shared, false, 0, vec![]);
        c.install(4, State::Shared, false, 0, vec![]);
        assert_eq!(c.victim(1).unwrap(), None, "another set has room");
        assert_eq!(c.victim(8).unwrap(), Some(0), "same set: the older line goes");
        assert!(c.try_begin(0, Busy::Holding(None)));
        assert_eq!(c.victim(8).unwrap(), Some(4), "busy lines are never victims");
        assert!(c.try_begin(4, Busy::Filling));
        assert!(c.victim(8).is_err());
    }

    #[test]
    fn bookkeeping_stays_as_large_as_the_cache() {
        let mut c = Cache::new(8, 4, 4, 4);
        // Events of lines this node neither holds nor works on leave nothing behind.
        for r in 0..1000 {
            assert!(!c.invalidate(r, 1, r as u32));
            c.downgrade(r, r as u32);
        }
        assert_eq!(c.bookkeeping(), 0);
        // An operation's line is watched while it runs and forgotten when it ends empty.
        assert!(c.try_begin(5, Busy::Filling));
        c.invalidate(5, 1, 7);
        assert!(c.invalidated_since(5, 7));
        c.end(5);
        assert_eq!(c.bookkeeping(), 0);
        // A present line keeps its floor; a handoff copy keeps it until taken.
        c.install(6, State::Modified, true, 3, vec![0; 8]);
        c.invalidate(6, 2, 9);
        assert!(c.bookkeeping() > 0 && c.floor(6) == 3);
        assert!(c.take_handoff(6, 0).is_some());
        assert_eq!(c.bookkeeping(), 0);
    }

    #[test]
    fn invalidation_keeps_dirty_data_for_the_invalidator_only() {
        let mut c = Cache::new(8, 4, 4, 4);
        c.install(3, State::Modified, true, 5, vec![7; 8]);
        let g = c.generation(3);
        assert!(c.downgrade(3, 9));
        assert!(c.downgraded_since(3, 9) && !c.downgraded_since(3, 10));
        assert_eq!(c.get(3).map(|l| (l.state, l.dirty)), Some((State::Shared, true)));
        assert!(c.invalidate(3, 2, 10));
        assert!(c.invalidated_since(3, 10) && !c.invalidated_since(3, 11));
        assert!(c.generation(3) > g && c.get(3).is_none());
        assert_eq!(c.invalidated_by(3), Some(2));
        assert_eq!(c.take_handoff(3, 4).map(|l| l.version), Some(5));
        assert!(c.take_handoff(3, 0).is_none(), "taken once");
        c.install(4, State::Exclusive, false, 3, vec![]);
        c.invalidate(4, 2, u32::MAX);
        assert!(c.invalidated_since(4, u32::MAX - 1) && !c.invalidated_since(4, 0), "positions wrap");
        assert!(c.take_handoff(4, 4).is_none(), "a leftover below the taker's floor is dropped");
        assert!(c.take_handoff(4, 0).is_none(), "and gone");
    }
}
