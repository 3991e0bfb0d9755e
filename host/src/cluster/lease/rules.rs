//! The lease's rules, with no I/O and no clock of their own (times come in, in microseconds of
//! the caller's monotonic clock), so that tests drive them through every timing.
//!
//! Delta leases (Chockler and Malkhi; sanlock's host leases): each controller renews a record
//! on the members every `renew_us`; the others never compare clocks with it, they time how
//! long its record has not changed on their own clocks. The safety argument, in full in
//! docs/protocol.md:
//! - the owner writes the members only until `fence_us` after the *start* of its last
//!   renewal that succeeded (the write gate's deadline, `raid::fence`), checked at every
//!   write, so a pause anywhere counts against it;
//! - an observer declares it expired only when a read that *started* `expire_us` after the
//!   read that first saw its current record still sees that record; any renewal that
//!   succeeded before then would have been seen, so the owner's last good renewal started
//!   before the observer first saw it, and `expire_us > fence_us` (with room for clock rate
//!   drift) puts the owner's deadline in the past.
//!
//! Who stays when the fabric splits: every record carries the controllers its owner hears;
//! two live controllers are in conflict when either does not hear the other, and of the two
//! the one that hears fewer (then the one with the higher id) fences itself. Both read the
//! same records, so both come to the same answer; a conflict must hold for `settle_us` before
//! anyone acts on it, so that reach masks published a moment apart do not fence the wrong
//! side.

use super::record::{Record, Standing};

/// The lease's times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// Between renewals.
    pub renew_us: u64,
    /// The owner writes nothing this long after the start of its last good renewal.
    pub fence_us: u64,
    /// Observers declare a record that has not changed this long expired.
    pub expire_us: u64,
    /// A peer not heard on the fabric this long is out of reach.
    pub suspect_us: u64,
    /// A conflict must last this long before the loser fences itself.
    pub settle_us: u64,
    /// A record that changed this recently is fresh (its owner is renewing).
    pub fresh_us: u64,
}

impl Timing {
    /// The times the controllers use: a renewal every 200 ms; self-fencing 2 s after the
    /// start of the last good one (ten renewals may fail or stall in a row before a
    /// controller stops itself); expiry after 4 s; a peer unheard for 1 s is out of reach.
    pub const DEFAULT: Timing = Timing {
        renew_us: 200_000,
        fence_us: 2_000_000,
        expire_us: 4_000_000,
        suspect_us: 1_000_000,
        settle_us: 500_000,
        fresh_us: 450_000,
    };

    /// The rules' own consistency: expiry leaves the owner's deadline behind with room for a
    /// renewal's write and for clock rates that differ by up to 10%.
    pub fn check(&self) -> Result<(), String> {
        if self.expire_us * 10 < (self.fence_us + self.renew_us) * 11 {
            return Err(format!(
                "expire_us {} must exceed 1.1 x (fence_us {} + renew_us {})",
                self.expire_us, self.fence_us, self.renew_us
            ));
        }
        if self.fence_us < 3 * self.renew_us || self.fresh_us < 2 * self.renew_us || self.settle_us < self.fresh_us {
            return Err(format!("renewals too sparse for the deadlines: {self:?}"));
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Seen {
    rec: Option<Record>,
    /// Start of the read that first saw `rec`.
    since_us: u64,
    /// Read at least once.
    read: bool,
    /// Seen to change since this controller started: the owner renewed in this run. A record
    /// that never moved is a leftover of an earlier run (or of a controller that has not
    /// started): it proves nothing, as a life lock never taken proves nothing.
    moved: bool,
}

/// One controller's view of the leases.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    node: u8,
    timing: Timing,
    incarnation: u64,
    seq: u64,
    started_us: u64,
    /// Start of the last renewal that reached a member.
    renewed_us: Option<u64>,
    seen: [Seen; 8],
    /// Start of the last read of the records.
    read_us: u64,
    conflict_since_us: Option<u64>,
    /// The process of each peer met over the fabric in this run (0: none), as of the last `met`.
    met: [u64; 8],
}

impl Lease {
    /// A controller's lease, from `now_us`.
    pub fn new(node: u8, incarnation: u64, timing: Timing, now_us: u64) -> Lease {
        Lease {
            node,
            timing,
            incarnation,
            seq: 0,
            started_us: now_us,
            renewed_us: None,
            seen: [Seen::default(); 8],
            read_us: now_us,
            conflict_since_us: None,
            met: [0; 8],
        }
    }

    /// The times in force.
    pub fn timing(&self) -> Timing {
        self.timing
    }

    /// The next record to write (a renewal starts).
    pub fn next_record(&mut self, epoch: u32, reach: u8, standing: Standing) -> Record {
        self.seq += 1;
        Record {
            node: self.node,
            incarnation: self.incarnation,
            seq: self.seq,
            epoch,
            reach,
            standing,
            rebuilding: None,
        }
    }

    /// A renewal that started at `start_us` reached a member (or none: `ok` false).
    pub fn renewed(&mut self, start_us: u64, ok: bool) {
        if ok {
            self.renewed_us = Some(self.renewed_us.map_or(start_us, |r| r.max(start_us)));
        }
    }

    /// Until when this controller may write the members (its write gate's deadline).
    pub fn deadline_us(&self) -> u64 {
        self.renewed_us.unwrap_or(self.started_us) + self.timing.fence_us
    }

    /// The records read by a read that started at `read_us` (index: controller).
    pub fn observed(&mut self, read_us: u64, records: &[Option<Record>; 8]) {
        self.read_us = self.read_us.max(read_us);
        for (n, rec) in records.iter().enumerate() {
            if n == self.node as usize {
                continue;
            }
            let s = &mut self.seen[n];
            if !s.read || *rec != s.rec {
                *s = Seen { rec: *rec, since_us: read_us, read: true, moved: s.moved || s.read };
            }
        }
    }

    /// The peers of `live` whose leases are over: they renewed in this run and then fenced
    /// themselves, or their record has not changed for `expire_us` since.
    pub fn expired(&self, live: u8) -> u8 {
        let mut out = 0u8;
        for n in (0..8u8).filter(|n| live & (1 << n) != 0 && *n != self.node) {
            let s = &self.seen[n as usize];
            // A record of a process met in this run is no leftover, even if it never moved (the
            // process died before its second renewal): it wrote that record before this
            // controller first read it, as a renewal seen to move did.
            let met = s.rec.is_some_and(|r| r.incarnation != 0 && r.incarnation == self.met[n as usize]);
            if !s.moved && !met {
                continue;
            }
            let fenced = s.rec.is_some_and(|r| r.standing == Standing::Fenced);
            if fenced || self.read_us.saturating_sub(s.since_us) > self.timing.expire_us {
                out |= 1 << n;
            }
        }
        out
    }

    /// The processes of the peers met over the fabric in this run (0: none).
    pub fn met(&mut self, met: [u64; 8]) {
        self.met = met;
    }

    /// What this controller sees of each peer's record, for `amf status`: its owner's process,
    /// renewal, standing and epoch, and how long it has stood still.
    pub fn peers_json(&self) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        for (n, s) in self.seen.iter().enumerate().filter(|(n, s)| *n != self.node as usize && s.read) {
            let Some(r) = s.rec else { continue };
            out.push(serde_json::json!({
                "node": n,
                "incarnation": r.incarnation,
                "seq": r.seq,
                "standing": format!("{:?}", r.standing),
                "epoch": r.epoch,
                "unchanged_ms": self.read_us.saturating_sub(s.since_us) / 1000,
                "moved": s.moved,
            }));
        }
        out
    }

    /// The peers whose record said they left clean.
    pub fn left(&self) -> u8 {
        (0..8u8)
            .filter(|n| self.seen[*n as usize].rec.is_some_and(|r| r.standing == Standing::Left))
            .fold(0, |m, n| m | 1 << n)
    }

    /// Whether this controller must fence itself at `now_us`, and why: its deadline passed
    /// (it could not renew), or it lost a conflict over reach with a live peer of `live`
    /// (`reach`: the controllers it hears, itself included).
    pub fn verdict(&mut self, now_us: u64, live: u8, reach: u8) -> Option<String> {
        if now_us >= self.deadline_us() {
            return Some(format!(
                "its lease was not renewed for {} ms (paused, or the members do not answer)",
                (now_us - self.renewed_us.unwrap_or(self.started_us)) / 1000
            ));
        }
        let expired = self.expired(live);
        // The records that count: live peers renewing now (a paused or dead one's record
        // stands still, and its expiry decides it), and this controller's own reach.
        let mut fresh: Vec<(u8, u8)> = vec![(self.node, reach)];
        for n in (0..8u8).filter(|n| live & !expired & (1 << n) != 0 && *n != self.node) {
            let s = &self.seen[n as usize];
            let Some(rec) = s.rec.filter(|r| r.standing == Standing::Live) else { continue };
            if s.moved && self.read_us.saturating_sub(s.since_us) <= self.timing.fresh_us {
                fresh.push((n, rec.reach));
            }
        }
        let score = |x: u8, reach_x: u8| standing_score(x, reach_x, &fresh);
        let mine = score(self.node, reach);
        let mut lost_to = None;
        for &(n, theirs) in fresh.iter().skip(1) {
            let conflict = reach & (1 << n) == 0 || theirs & (1 << self.node) == 0;
            if conflict && loses(self.node, mine, n, score(n, theirs)) {
                lost_to = Some((n, theirs));
                break;
            }
        }
        let Some((n, theirs)) = lost_to else {
            self.conflict_since_us = None;
            return None;
        };
        let since = *self.conflict_since_us.get_or_insert(now_us);
        (now_us - since >= self.timing.settle_us).then(|| {
            format!(
                "it and controller {n} do not hear each other over the fabric; {n} hears {:?}, it hears {:?}",
                list(theirs),
                list(reach)
            )
        })
    }
}

/// How well controller `x` (hearing `reach_x`) is connected, by the records that count: the
/// controllers it hears plus those that hear it. Counting both ways makes a controller whose
/// sending alone fails (it hears everyone, no one hears it) the one that goes, as one that
/// hears no one is.
/// Between two equally connected, the one that hears more (of two controllers, one of which
/// does not hear the other, records cannot tell a deaf one from a mute other: the one that
/// hears stays, as before).
fn standing_score(x: u8, reach_x: u8, records: &[(u8, u8)]) -> (u32, u32) {
    let heard_by = records.iter().filter(|(_, r)| r & (1 << x) != 0).count() as u32;
    (reach_x.count_ones() + heard_by, reach_x.count_ones())
}

/// Of two controllers in conflict, whether `a` (connected `score_a`, see `standing_score`) is
/// the one that fences: the worse connected, then the one with the higher id.
pub fn loses(a: u8, score_a: (u32, u32), b: u8, score_b: (u32, u32)) -> bool {
    (score_a, std::cmp::Reverse(a)) < (score_b, std::cmp::Reverse(b))
}

fn list(mask: u8) -> Vec<u8> {
    (0..8u8).filter(|n| mask & (1 << n) != 0).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Round numbers for the tests (the defaults' proportions).
    const T: Timing = Timing {
        renew_us: 100_000,
        fence_us: 1_000_000,
        expire_us: 2_000_000,
        suspect_us: 1_000_000,
        settle_us: 500_000,
        fresh_us: 400_000,
    };

    fn rec(node: u8, seq: u64, reach: u8, standing: Standing) -> Option<Record> {
        Some(Record { node, incarnation: 1, seq, epoch: 1, reach, standing, rebuilding: None })
    }

    #[test]
    fn the_default_timing_is_consistent_and_a_bad_one_is_refused() {
        assert_eq!(T.check(), Ok(()));
        assert_eq!(Timing::DEFAULT.check(), Ok(()));
        assert!(Timing { expire_us: T.fence_us, ..T }.check().is_err());
    }

    #[test]
    fn a_record_that_stops_changing_expires_only_after_expire_us_of_reads() {
        let mut l = Lease::new(0, 1, T, 0);
        let mut recs = [None; 8];
        for i in 0..10u64 {
            recs[1] = rec(1, i, 0b111, Standing::Live);
            l.observed(i * 100_000, &recs);
        }
        assert_eq!(l.expired(0b111), 0);
        // Controller 1 stops renewing at 0.9 s (its record stays at seq 9).
        l.observed(2_800_000, &recs);
        assert_eq!(l.expired(0b111), 0, "1.9 s without change: not yet");
        l.observed(2_901_000, &recs);
        assert_eq!(l.expired(0b111), 0b010);
        // Controller 2 never wrote a record, and a record that never moved (left from an
        // earlier run) proves nothing either.
        assert_eq!(l.expired(0b110), 0b010);
        let mut fresh = Lease::new(0, 1, T, 3_000_000);
        fresh.observed(3_000_000, &recs);
        fresh.observed(9_000_000, &recs);
        assert_eq!(fresh.expired(0b111), 0);
    }

    #[test]
    fn a_fenced_record_expires_at_once_and_a_left_one_is_seen() {
        let mut l = Lease::new(0, 1, T, 0);
        let mut recs = [None; 8];
        recs[1] = rec(1, 5, 0b11, Standing::Fenced);
        l.observed(0, &recs);
        assert_eq!(l.expired(0b111), 0, "a fenced record left from an earlier run");
        recs[1] = rec(1, 6, 0b11, Standing::Live);
        l.observed(5, &recs);
        recs[1] = rec(1, 7, 0b11, Standing::Fenced);
        recs[2] = rec(2, 5, 0b111, Standing::Left);
        l.observed(10, &recs);
        assert_eq!(l.expired(0b111), 0b010);
        assert_eq!(l.left(), 0b100);
    }

    /// A peer that died before its second renewal left one record, which this controller
    /// first read after it was written: it never moved. Met over the fabric (its hello named
    /// the record's process), it expires as any other; not met, it proves nothing.
    #[test]
    fn a_record_that_never_moved_expires_when_its_process_was_met() {
        let mut recs = [None; 8];
        recs[1] = Some(Record { incarnation: 42, ..rec(1, 1, 0b111, Standing::Starting).unwrap() });
        let mut met = Lease::new(0, 1, T, 0);
        let mut unmet = Lease::new(0, 1, T, 0);
        met.met([0, 42, 0, 0, 0, 0, 0, 0]);
        unmet.met([0, 41, 0, 0, 0, 0, 0, 0]);
        for l in [&mut met, &mut unmet] {
            l.observed(0, &recs);
            l.observed(1_900_000, &recs);
            assert_eq!(l.expired(0b111), 0, "not yet");
            l.observed(2_001_000, &recs);
        }
        assert_eq!(met.expired(0b111), 0b010);
        assert_eq!(unmet.expired(0b111), 0);
    }

    #[test]
    fn the_owner_fences_itself_once_its_deadline_passes() {
        let mut l = Lease::new(0, 1, T, 0);
        l.renewed(100_000, true);
        assert_eq!(l.deadline_us(), 1_100_000);
        assert_eq!(l.verdict(1_000_000, 0b1, 0b1), None);
        l.renewed(200_000, false);
        assert!(l.verdict(1_100_000, 0b1, 0b1).is_some(), "a failed renewal does not extend it");
    }

    /// Over one split the two sides reach the same answer: the smaller side, then the higher
    /// ids, fence; and not before the conflict held for settle_us.
    #[test]
    fn of_two_sides_of_a_split_exactly_one_stays() {
        // (live, reach of each, who stays)
        let cases: [(u8, [u8; 3], u8); 6] = [
            // {0} | {1,2}: 0 hears only itself; the larger side stays.
            (0b111, [0b001, 0b110, 0b110], 0b110),
            // {0,1} | {2}
            (0b111, [0b011, 0b011, 0b100], 0b011),
            // 2 controllers cut: the higher id fences.
            (0b011, [0b001, 0b010, 0], 0b001),
            // One way: 1 does not hear 0, 0 hears 1 (as connected; 1 hears fewer).
            (0b111, [0b111, 0b110, 0b111], 0b101),
            // 0's sending fails: it hears everyone, no one hears it; it goes, not the others.
            (0b111, [0b111, 0b110, 0b110], 0b110),
            // 0 hears no one, everyone hears it: it goes.
            (0b111, [0b001, 0b111, 0b111], 0b110),
        ];
        for (live, reach, want) in cases {
            let mut fenced = 0u8;
            for me in (0..3u8).filter(|n| live & (1 << n) != 0) {
                let mut l = Lease::new(me, 1, T, 0);
                let mut recs = [None; 8];
                let mut verdict = None;
                for step in 1..=10u64 {
                    let now = step * 100_000;
                    l.renewed(now, true);
                    for n in (0..3u8).filter(|n| live & (1 << n) != 0) {
                        recs[n as usize] = rec(n, step, reach[n as usize], Standing::Live);
                    }
                    l.observed(now, &recs);
                    verdict = l.verdict(now, live, reach[me as usize]);
                    if step < 6 {
                        assert_eq!(verdict, None, "{me} acted before the conflict settled");
                    }
                }
                if verdict.is_some() {
                    fenced |= 1 << me;
                }
            }
            let stays = live & !fenced;
            assert_eq!(stays, want, "live {live:#b} reach {reach:?}");
            for a in (0..3u8).filter(|n| stays & (1 << n) != 0) {
                for b in (0..3u8).filter(|n| stays & (1 << n) != 0 && *n != a) {
                    assert!(
                        reach[a as usize] & (1 << b) != 0,
                        "live {live:#b} reach {reach:?}: {a} and {b} both stay and {a} does not hear {b}"
                    );
                }
            }
        }
    }

    /// A peer that is paused leaves a record that says it hears everyone; it is not fresh, so
    /// it cannot make the others fence: expiry decides it.
    #[test]
    fn a_paused_peer_with_a_stale_record_fences_no_one() {
        let mut l = Lease::new(0, 1, T, 0);
        let mut recs = [None; 8];
        recs[1] = rec(1, 0, 0b111, Standing::Live);
        l.observed(0, &recs);
        recs[1] = rec(1, 1, 0b111, Standing::Live);
        l.observed(1, &recs);
        for step in 1..=30u64 {
            let now = step * 100_000;
            l.renewed(now, true);
            recs[2] = rec(2, step, 0b101, Standing::Live);
            l.observed(now, &recs);
            assert_eq!(l.verdict(now, 0b111, 0b101), None, "step {step}");
        }
        assert_eq!(l.expired(0b111), 0b010);
    }
}
