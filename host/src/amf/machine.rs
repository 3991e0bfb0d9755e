//! One controller's AMF as a deterministic state machine: `step(input) -> outputs`. It does no
//! I/O, takes no lock and reads no clock; the controller, the simulator and the model checker
//! drive the same code.
//!
//! The rules (docs/coherency.md has them as tables):
//! - a line is Invalid, Shared (clean), Exclusive (clean) or Modified here; a write needs
//!   Exclusive or Modified, a read anything but Invalid;
//! - acquires go through the card with `wait`: a peer's request is answered only when this
//!   node yields, and it yields a line only after its current piece is done and its dirty data
//!   is on the members, so a completed exclusive acquire means no other copy exists and the
//!   members hold the newest data;
//! - a write-back holds the exclusive lock of every stripe it touches (parity of a stripe is
//!   computed by one controller at a time); a lock is kept until a peer asks (a lock cache);
//! - a write is acknowledged once a peer holds a replica (or the members hold it).

use super::io::*;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

mod bases;
mod group;
mod jobs;
mod presence;
mod room;
mod view;
mod write_back;

/// How a controller's machine is set up.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Config {
    /// This node.
    pub node: u8,
    /// Nodes in the cluster (ids 0..nodes).
    pub nodes: u8,
    /// Membership epoch.
    pub epoch: u32,
    /// Bytes per cache line (the coherency resource).
    pub line_bytes: u64,
    /// Lines this node may hold.
    pub lines_max: usize,
    /// Data bytes per stripe of the group (the parity-lock resource).
    pub stripe_bytes: u64,
    /// How long a line stays dirty before it is written back in the background. Its replica
    /// on a peer keeps the write safe meanwhile; rewrites within it cost no member I/O.
    pub writeback_age_us: u64,
    /// Bytes in the group (a multiple of `line_bytes`).
    pub capacity: u64,
    /// A member was out when the group was assembled (reads may reconstruct lines).
    pub degraded: bool,
    /// Buckets of the card's presence filter, log2 (0: the card has none; nothing is sent
    /// for it). Read from the card by the shells.
    pub presence_buckets_log2: u32,
    /// A test aid: one protocol rule deliberately broken, so tests show that a checker
    /// catches it. None in every real controller.
    pub mutation: Option<Mutation>,
}

/// Protocol rules a test can break on purpose (see [`Config::mutation`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Mutation {
    /// Yield to an invalidate but keep serving the old copy (skip the invalidate).
    SkipInvalidate,
    /// Acknowledge a write before its replica is held by the peer.
    AckBeforeReplica,
    /// Acknowledge replicas without keeping them (forget a replica).
    ForgetReplica,
    /// Yield a dirty line before its write-back (answer the peer before acting on the event).
    YieldBeforeWriteBack,
    /// Write lines back without the stripe locks.
    NoStripeLock,
    /// Finish member I/O that saw a member fail before the failure is recorded.
    CompleteBeforeRecord,
    /// Take the group back after a peer's record without re-reading the superblocks.
    StaleView,
    /// Reconstruct lines of a degraded group without the stripe locks.
    NoFillLock,
    /// Drop the replicas of a controller that died instead of taking its dirty lines over.
    ForgetDeadReplicas,
    /// Give a written-back line away before its replica's drop is answered.
    YieldBeforeDrop,
    /// Skip the resync of a dead controller's write-intent regions (honoured by the shells).
    SkipTakeoverResync,
    /// Leases expire for the others before their owner's write deadline (honoured by the
    /// simulator's leases).
    ExpireBeforeFence,
    /// After a join, send a dirty line's next write to the ring's new replica peer instead of
    /// the peer that holds its replica (the old replica stays behind).
    ReplicaFollowsRing,
    /// Answer a FUA write once its destage is in the members' write caches, not durable.
    VolatileFua,
    /// Look at the card's rings without the second reap: a completion the card wrote just
    /// after the reap is handled after events it wrote later (honoured by the simulator).
    EventsBeforeCompletions,
    /// A write-back covers only the line's last write, not every byte written since the line
    /// was last on the members.
    NarrowWriteBack,
    /// A write's bytes alone go to the replica peer whatever copy of the line it holds, and
    /// the peer applies them to that copy (or to zeros): replication without the base check.
    PieceOnAnyBase,
    /// A line keeps its kept-base peer when its data goes (invalidated or evicted), so a write
    /// after it is filled again may send a piece against the old content.
    BaseAfterInvalidate,
    /// Clear a presence bucket's bit when any of its lines goes, though others are still here.
    UnmarkWithLinesLeft,
    /// Never mark a presence bucket for a line that came without an acquire (taken over from a
    /// dead controller's replica), nor at a new membership.
    NoPresenceMarks,
    /// Leave stripe locks out of the presence counts (a stripe's acquire is filtered all the
    /// same): a bucket whose last line goes is unmarked under a lock still held.
    NoStripePresence,
    /// On a membership change with controllers gone, leave the flushes under way as they were:
    /// the lines taken over do not join them, and a flush of every controller does not ask the
    /// survivors again (an answer from before the takeover ends it).
    NoFlushAgain,
    /// A write-back of several lines ends only its first line: the others stay in it (their
    /// stripe locks used, their bytes never said to be on the members).
    RunEndsOneLine,
}

impl Mutation {
    /// Every mutation.
    pub const ALL: [Mutation; 23] = [
        Mutation::SkipInvalidate,
        Mutation::AckBeforeReplica,
        Mutation::ForgetReplica,
        Mutation::YieldBeforeWriteBack,
        Mutation::NoStripeLock,
        Mutation::CompleteBeforeRecord,
        Mutation::StaleView,
        Mutation::NoFillLock,
        Mutation::ForgetDeadReplicas,
        Mutation::YieldBeforeDrop,
        Mutation::SkipTakeoverResync,
        Mutation::ExpireBeforeFence,
        Mutation::ReplicaFollowsRing,
        Mutation::VolatileFua,
        Mutation::EventsBeforeCompletions,
        Mutation::NarrowWriteBack,
        Mutation::PieceOnAnyBase,
        Mutation::BaseAfterInvalidate,
        Mutation::UnmarkWithLinesLeft,
        Mutation::NoPresenceMarks,
        Mutation::NoStripePresence,
        Mutation::NoFlushAgain,
        Mutation::RunEndsOneLine,
    ];

    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Mutation::SkipInvalidate => "skip-invalidate",
            Mutation::AckBeforeReplica => "ack-before-replica",
            Mutation::ForgetReplica => "forget-replica",
            Mutation::YieldBeforeWriteBack => "yield-before-write-back",
            Mutation::NoStripeLock => "no-stripe-lock",
            Mutation::CompleteBeforeRecord => "complete-before-record",
            Mutation::StaleView => "stale-view",
            Mutation::NoFillLock => "no-fill-lock",
            Mutation::ForgetDeadReplicas => "forget-dead-replicas",
            Mutation::YieldBeforeDrop => "yield-before-drop",
            Mutation::SkipTakeoverResync => "skip-takeover-resync",
            Mutation::ExpireBeforeFence => "expire-before-fence",
            Mutation::ReplicaFollowsRing => "replica-follows-ring",
            Mutation::VolatileFua => "volatile-fua",
            Mutation::EventsBeforeCompletions => "events-before-completions",
            Mutation::NarrowWriteBack => "narrow-write-back",
            Mutation::PieceOnAnyBase => "piece-on-any-base",
            Mutation::BaseAfterInvalidate => "base-after-invalidate",
            Mutation::UnmarkWithLinesLeft => "unmark-with-lines-left",
            Mutation::NoPresenceMarks => "no-presence-marks",
            Mutation::NoStripePresence => "no-stripe-presence",
            Mutation::NoFlushAgain => "no-flush-again",
            Mutation::RunEndsOneLine => "run-ends-one-line",
        }
    }

    /// The mutation called `name`.
    pub fn from_name(name: &str) -> Option<Mutation> {
        Mutation::ALL.into_iter().find(|m| m.name() == name)
    }
}

/// How long an acquire of a line keeps being retried after timeouts or lost conflicts before
/// its request fails (a count of attempts ran out under contention while every node was
/// making progress: holders finish their piece and their write-back before they yield).
const ACQUIRE_PATIENCE_US: u64 = 10_000_000;
/// A fabric request without an answer is sent again after this long.
const RETRANSMIT_US: u64 = 20_000;
/// Dirty lines older than this are written back in the background, by default: as array
/// controllers do, a second (its replica on a peer keeps it safe meanwhile). With 50 ms nearly
/// every write of a host rewriting its data was the first after a write-back: a whole-line
/// replica, a member read-modify-write and a replica drop each (docs/benchmarks.md).
pub const WRITEBACK_AGE_US_DEFAULT: u64 = 1_000_000;
/// Background write-backs started per tick.
const WRITEBACKS_PER_TICK: usize = 8;
/// A failed write-back is tried again after this long.
const DESTAGE_RETRY_US: u64 = 10_000;
/// Replicas held for peers at once (more is a peer misbehaving: refused).
const REPLICAS_MAX: usize = 1 << 16;
/// Drops remembered per machine (see `Machine::dropped`).
const DROPPED_MAX: usize = 1 << 16;
/// Pieces (line-sized parts of host requests) in flight at once; past it requests are refused.
const PIECES_MAX: usize = 1 << 16;
/// An acquire that lost its conflicts (the card gave up after its own retries) is asked again
/// after a delay doubling from this, with jitter, up to `BACKOFF_US_MAX`: controllers that
/// keep colliding on one line or stripe spread out instead of colliding again at once.
const BACKOFF_US_MIN: u64 = 200;
const BACKOFF_US_MAX: u64 = 32_000;

/// The delay before attempt `attempt` (1, 2, ...) of an acquire of `resource` by `node`: the
/// jitter is a hash of those, so a seed still replays exactly.
fn backoff_us(node: u8, resource: u64, attempt: u32, now_us: u64) -> u64 {
    let top = (BACKOFF_US_MIN << attempt.min(8)).min(BACKOFF_US_MAX);
    // splitmix64 of the inputs.
    let mut z = resource ^ (node as u64) << 56 ^ (attempt as u64) << 40 ^ now_us.rotate_left(17);
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    top / 2 + z % (top / 2 + 1)
}

/// A line's coherency state on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum State {
    /// No copy.
    Invalid,
    /// A clean copy others may share.
    Shared,
    /// The only copy, clean.
    Exclusive,
    /// The only copy, newer than the members.
    Modified,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Phase {
    Idle,
    Acquiring {
        id: u64,
        exclusive: bool,
        since_us: u64,
    },
    Filling {
        id: u64,
        exclusive: bool,
        /// Holds the stripe locks of the line (a degraded group's fill).
        locked: bool,
    },
    /// A degraded group's fill waiting for the stripe locks: the line is reconstructed from
    /// the rest of its stripes, which a peer's write there must not be halfway through.
    FillLocking {
        exclusive: bool,
    },
    /// Asking a sharer for the line (the read search) before the members.
    Fetching {
        id: u64,
    },
    Replicating {
        id: u64,
    },
    /// Waiting for the stripe locks of a write-back.
    Locking,
    Destaging {
        id: u64,
        wseq: u64,
        /// The bytes of the line this write-back carries.
        dirty: Dirty,
    },
}

/// Bytes `lo..hi` of a line (empty when `lo >= hi`), in `DIRTY_GRAIN_BYTES` units.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
struct Dirty {
    lo: u32,
    hi: u32,
}

/// Write-backs carry whole sectors.
const DIRTY_GRAIN_BYTES: usize = 512;

impl Dirty {
    /// The smallest range that covers both (whole grains).
    fn with(self, off: usize, len: usize) -> Dirty {
        let lo = (off / DIRTY_GRAIN_BYTES * DIRTY_GRAIN_BYTES) as u32;
        let hi = (off + len).div_ceil(DIRTY_GRAIN_BYTES) * DIRTY_GRAIN_BYTES;
        if self.lo >= self.hi {
            return Dirty { lo, hi: hi as u32 };
        }
        Dirty { lo: self.lo.min(lo), hi: self.hi.max(hi as u32) }
    }

    /// This range (written since a write-back began) with the range of that write-back,
    /// which failed, in a line of `line_len` bytes.
    fn with_failed(self, failed: Dirty, line_len: usize) -> Dirty {
        let failed = failed.within(line_len);
        self.with(failed.start, failed.len())
    }

    /// All of a line of `line_len` bytes.
    fn all(line_len: usize) -> Dirty {
        Dirty { lo: 0, hi: line_len as u32 }
    }

    /// The range within a line of `line_len` bytes; all of it when empty (nothing known).
    fn within(self, line_len: usize) -> std::ops::Range<usize> {
        let (lo, hi) = (self.lo as usize, (self.hi as usize).min(line_len));
        if lo >= hi {
            0..line_len
        } else {
            lo..hi
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Line {
    state: State,
    data: Vec<u8>,
    /// Write sequence (this node's counter) of the content.
    wseq: u64,
    /// Content up to this write sequence is on the members.
    clean_wseq: u64,
    phase: Phase,
    queue: VecDeque<u64>,
    owed_excl: bool,
    owed_share: bool,
    evict: bool,
    writeback: bool,
    last_use: u64,
    dirty_since_us: u64,
    /// The bytes written since the line was last on the members (a write-back carries only
    /// them: a 4 KiB write to a 16 KiB line writes 4 KiB back, not the whole line).
    dirty: Dirty,
    retry_at_us: u64,
    /// Just acquired: the head piece is served before any yield, so that two nodes taking a
    /// line from each other each make progress.
    fresh: bool,
    /// The peer that may hold a replica of this line (a drop is owed there after its
    /// write-back). A line's writes go to that peer until its replica is dropped, even when a
    /// controller joined in between and the ring now names another: one line, one replica.
    replica_at: Option<u8>,
    /// A drop of the replica is unanswered: the line is given to no one until it is (a
    /// replica taken over after this node's death must never be older than the members).
    drop_pending: Option<u64>,
    /// Replicated again to a new replica peer after a membership change, not answered yet.
    replica_pending: Option<u64>,
    /// The write sequence `replica_at` acknowledged holding this line at (0: not known): the
    /// next write sends only its bytes when it is the line's current one.
    replica_wseq: u64,
    /// After a write-back: the peer that held the replica at exactly the written-back
    /// sequence, which it keeps as a base once dropped (`bases.rs`). The next write sends only
    /// its bytes there while the line is still that sequence; cleared when the line's data
    /// goes (another node may change it on the members).
    base_at: Option<(u8, u64)>,
    /// Acquires that lost their conflicts in a row, when the run began, and when to ask again.
    lost: u32,
    lost_since_us: u64,
    acquire_at_us: u64,
    /// What the cache's index counted this line as when it last looked (`room.rs`).
    seen: room::Seen,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Piece {
    req: u64,
    off: usize,
    len: usize,
    at: usize,
    write: Option<Vec<u8>>,
    fua: bool,
    applied: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Request {
    left: usize,
    data: Vec<u8>,
    error: Option<HostError>,
    /// The lines a write touches: its answer waits until none of them is being replicated
    /// again after a membership change (a piece done earlier had its replica only at the
    /// controller that left).
    lines: Vec<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
struct Stripe {
    held: bool,
    acquiring: Option<u64>,
    /// When the current run of attempts began (for the patience of the writes waiting).
    since_us: u64,
    users: u32,
    owed: bool,
    /// Lines whose write-back or degraded fill waits for the lock.
    waiters: BTreeSet<u64>,
    /// Maintenance jobs waiting for the lock.
    jobs: BTreeSet<u64>,
    /// Acquires that lost their conflicts in a row, and when to ask again.
    lost: u32,
    acquire_at_us: u64,
}

/// Who waits for a stripe lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Waiter {
    Line(u64),
    Job(u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum CardUse {
    Line(u64),
    Stripe(u64),
    Group,
    /// A command whose completion needs no action (yields, releases).
    Fire,
    /// A presence mark of a new membership: the filter goes on once all are done.
    Mark,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum MemberUse {
    Fill(u64),
    /// A write-back of the run of lines `first..first + lines` (`destage_run`).
    Destage {
        first: u64,
        lines: u64,
    },
    Sync(u64),
    Job(u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Purpose {
    Replica(u64),
    Flush(u64),
    Fetch(u64),
    /// The drop of line r's replica after its write-back.
    Drop(u64),
    /// Line r's dirty content sent to a new replica peer after a membership change.
    Rereplicate(u64),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Outstanding {
    to: u8,
    msg: Msg,
    sent_us: u64,
    purpose: Purpose,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Origin {
    Host(u64),
    Peer { node: u8, id: u64 },
}

/// Whether line `r`, dirty at write sequence `w` when a flush started, is still to be written
/// back for it.
fn unwritten(lines: &BTreeMap<u64, Box<Line>>, r: u64, w: u64) -> bool {
    lines.get(&r).is_some_and(|l| l.state == State::Modified && l.clean_wseq < w)
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct FlushJob {
    origin: Origin,
    started_us: u64,
    /// The lines dirty when it started and their write sequence then.
    lines: Vec<(u64, u64)>,
    /// `lines[..written]` were found on the members at their sequence. That stays so (a line's
    /// clean sequence only grows, and a line made again starts clean at the machine's current
    /// sequence), so each check resumes here: a check from the first line at every step cost
    /// a leave with thousands of dirty lines most of its loop's time.
    written: usize,
    peers_left: u8,
    /// A flush of every controller's cache (a host's flush), not of this one's alone.
    everyone: bool,
    sync: Option<Option<u64>>,
    failed: Option<String>,
}

/// Counters of what the machine did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Counters {
    /// Line pieces served from this cache.
    pub hits: u64,
    /// Fills served by a peer's cache (the read search found the line).
    pub remote_hits: u64,
    /// Lines this node sent to peers that searched for them.
    pub lines_forwarded: u64,
    /// Acquires issued (line and stripe).
    pub acquires: u64,
    /// Of those, stripe-lock acquires (write-backs).
    pub stripe_acquires: u64,
    /// Acquires retried after a timeout, a lost conflict or an untracked answer.
    pub retries: u64,
    /// Yields answered for peers.
    pub yields: u64,
    /// Presence buckets this host marked (a line without an acquire, a new membership).
    pub presence_marks: u64,
    /// Presence buckets this host unmarked (its last line there gone).
    pub presence_unmarks: u64,
    /// Member reads (line fills).
    pub member_reads: u64,
    /// Member writes (write-backs).
    pub member_writes: u64,
    /// Lines those write-backs carried (more than `member_writes` when neighbours went
    /// together: `destage_run`).
    pub write_back_lines: u64,
    /// Writes replicated to a peer before their acknowledgement.
    pub replications: u64,
    /// Of those, sent as the write's bytes alone (the peer held the line as it was before).
    pub replica_pieces: u64,
    /// Pieces the peer could not apply (its replica was not at the piece's base): the whole
    /// line was sent instead.
    pub replica_missing: u64,
    /// Pieces applied here to a replica kept after its drop (the line's first write after its
    /// write-back).
    pub replica_bases_used: u64,
    /// Fabric messages dropped for another epoch.
    pub stale_epoch: u64,
    /// Fabric messages dropped as malformed.
    pub malformed: u64,
    /// Fabric requests sent again after no answer.
    pub retransmits: u64,
    /// Member failures seen here and recorded in the superblocks under the group resource.
    pub group_records: u64,
    /// Times the superblocks were read again after a peer recorded a change.
    pub group_loads: u64,
    /// Superblock reads or records that failed.
    pub group_errors: u64,
    /// Membership changes this controller went through.
    pub views: u64,
    /// Dirty lines of controllers that left, taken over from the replicas held here.
    pub lines_taken_over: u64,
    /// Replicas of controllers that left that were older than a copy here (dropped).
    pub replicas_stale: u64,
    /// Dirty lines sent to a new replica peer after a membership change.
    pub rereplications: u64,
    /// Yields or releases the card refused for a stale epoch.
    pub card_stale: u64,
    /// Lines evicted to make room.
    pub evictions: u64,
    /// Of those, lines that were dirty when chosen (written back before they went).
    pub evictions_dirty: u64,
    /// Misses that found the cache full and waited for an eviction.
    pub room_waits: u64,
    /// Write-backs a peer's request waited for: the line was dirty here when the card asked
    /// for it, and it is written back before the yield.
    pub yield_write_backs: u64,
}

/// One controller's AMF.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Machine {
    cfg: Config,
    /// Boxed: a B-tree moves its values when nodes change, and a line is a few hundred bytes
    /// (lines come and go with every miss of a workload larger than the cache).
    lines: BTreeMap<u64, Box<Line>>,
    pieces: BTreeMap<u64, Piece>,
    requests: BTreeMap<u64, Request>,
    stripes: BTreeMap<u64, Stripe>,
    card: BTreeMap<u64, CardUse>,
    members: BTreeMap<u64, MemberUse>,
    fabric: BTreeMap<u64, Outstanding>,
    replicas: BTreeMap<(u8, u64), (u64, Vec<u8>)>,
    /// Dropped replicas kept as bases for the owners' next pieces (never taken over).
    bases: bases::Bases,
    /// Replicas dropped, by (owner, line): the write sequence dropped up to, so a late copy of
    /// an older `Replicate` (a retransmission the network held back) is not kept again: taken
    /// over, it would be older than the members. The oldest are forgotten past
    /// `DROPPED_MAX` (on an ordered fabric connection no copy is that late).
    dropped: BTreeMap<(u8, u64), u64>,
    dropped_order: VecDeque<(u8, u64)>,
    flushes: BTreeMap<u64, FlushJob>,
    /// Writes done but not answered: a line of theirs waits for a new replica.
    parked: BTreeSet<u64>,
    group: group::Group,
    /// The controllers in the current membership (this one's bit included).
    live: u8,
    jobs: BTreeMap<u64, jobs::Job>,
    touched_jobs: BTreeSet<u64>,
    room_waiters: BTreeSet<u64>,
    /// Lines in use and by last use, kept as lines change (`room.rs`).
    room: room::Room,
    /// The card's presence filter, as this machine keeps it true.
    presence: presence::Presence,
    touched: BTreeSet<u64>,
    /// Lines changed since the last tick (through [`Machine::line`], the only way a line
    /// becomes Modified or gets a timer): the tick queues their deadlines.
    timed: BTreeSet<u64>,
    /// (when a dirty line is old enough to be written back, line), oldest first. An entry
    /// whose line has since been written back or made dirty anew is skipped when it comes up:
    /// a tick looks only at what is due, however many lines are dirty.
    writeback_due: BTreeSet<(u64, u64)>,
    /// (when a line's retry or acquire timer fires, line), soonest first; stale ones likewise.
    timer_due: BTreeSet<(u64, u64)>,
    next_id: u64,
    wseq: u64,
    uses: u64,
    now_us: u64,
    out: Vec<Output>,
    /// What the machine did.
    pub counters: Counters,
}

impl Machine {
    /// A machine with an empty cache.
    pub fn new(cfg: Config) -> Machine {
        let degraded = cfg.degraded;
        // As many bases as a quarter of this node's own cache.
        let bases_cap = cfg.lines_max / 4;
        let live = if cfg.nodes >= 8 { 0xff } else { (1u8 << cfg.nodes) - 1 };
        Machine {
            live,
            room: room::Room::new(cfg.presence_buckets_log2 > 0),
            presence: presence::Presence::new(cfg.presence_buckets_log2, cfg.mutation),
            cfg,
            lines: BTreeMap::new(),
            pieces: BTreeMap::new(),
            requests: BTreeMap::new(),
            stripes: BTreeMap::new(),
            card: BTreeMap::new(),
            members: BTreeMap::new(),
            fabric: BTreeMap::new(),
            replicas: BTreeMap::new(),
            bases: bases::Bases::new(bases_cap),
            dropped: BTreeMap::new(),
            dropped_order: VecDeque::new(),
            flushes: BTreeMap::new(),
            parked: BTreeSet::new(),
            group: group::Group::new(degraded),
            jobs: BTreeMap::new(),
            touched_jobs: BTreeSet::new(),
            room_waiters: BTreeSet::new(),
            touched: BTreeSet::new(),
            timed: BTreeSet::new(),
            writeback_due: BTreeSet::new(),
            timer_due: BTreeSet::new(),
            next_id: 1,
            wseq: 0,
            uses: 0,
            now_us: 0,
            out: Vec::new(),
            counters: Counters::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Line `r`'s state here (for checkers).
    pub fn line_state(&self, r: u64) -> State {
        self.lines.get(&r).map_or(State::Invalid, |l| l.state)
    }

    /// Line `r`'s content here when valid (for checkers).
    pub fn line_data(&self, r: u64) -> Option<&[u8]> {
        self.lines.get(&r).filter(|l| l.state != State::Invalid).map(|l| l.data.as_slice())
    }

    /// Lines with a copy here, and their states.
    pub fn resident(&self) -> impl Iterator<Item = (u64, State)> + '_ {
        self.lines.iter().filter(|(_, l)| l.state != State::Invalid).map(|(r, l)| (*r, l.state))
    }

    /// Stripes whose lock this node holds.
    pub fn stripes_held(&self) -> impl Iterator<Item = u64> + '_ {
        self.stripes.iter().filter(|(_, s)| s.held).map(|(s, _)| *s)
    }

    /// Replicas held for peers: (owner, line) -> (write sequence, bytes).
    pub fn replicas(&self) -> &BTreeMap<(u8, u64), (u64, Vec<u8>)> {
        &self.replicas
    }

    /// Dropped replicas kept here as bases for their owners' next pieces.
    pub fn bases_kept(&self) -> usize {
        self.bases.len()
    }

    /// This controller joins a running membership (it was restarted): it holds nothing of
    /// the group until it asks, and reads the record before its first member I/O (simulator
    /// seed 851: a restarted controller whose assembly predated a member failure another
    /// controller recorded read the failed member's stale data).
    pub fn joins(&mut self) {
        self.group = group::Group::joining(self.group_degraded());
    }

    /// Host requests not answered yet.
    pub fn requests_open(&self) -> usize {
        self.requests.len()
    }

    /// True when nothing is in flight: no request, card command, member I/O or fabric request.
    pub fn quiet(&self) -> bool {
        self.requests.is_empty()
            && self.card.is_empty()
            && self.members.is_empty()
            && self.fabric.is_empty()
            && self.flushes.is_empty()
            && self.jobs.is_empty()
            && !self.group_busy()
    }

    /// True when a tick would find nothing to do until something else happens: [`Machine::quiet`],
    /// and no timer set (no dirty line waiting for its write-back age, no retry or backoff, no
    /// line or stripe waiting for its turn). The loop of an idle controller then sleeps longer
    /// than a tick: input wakes it, and nothing here is due by the clock alone.
    pub fn timers_idle(&self) -> bool {
        self.quiet()
            && self.pieces.is_empty()
            && self.touched.is_empty()
            && self.timed.is_empty()
            && self.writeback_due.is_empty()
            && self.timer_due.is_empty()
            && self.room_waiters.is_empty()
            && self.stripes.values().all(|st| st.acquire_at_us == 0 && st.acquiring.is_none())
    }

    /// Dirty lines whose last write was acknowledged (idle), with their content: each must have
    /// a replica at the replica peer (for checkers).
    pub fn dirty_idle(&self) -> impl Iterator<Item = (u64, &[u8])> + '_ {
        self.lines
            .iter()
            .filter(|(_, l)| l.state == State::Modified && l.phase == Phase::Idle && l.replica_pending.is_none())
            .map(|(r, l)| (*r, l.data.as_slice()))
    }

    /// True while dirty line `r` is on its way to a new replica peer after a membership change
    /// (until then it lives only here: the window a second failure would hit).
    pub fn replica_pending(&self, r: u64) -> bool {
        self.lines.get(&r).is_some_and(|l| l.replica_pending.is_some())
    }

    /// The node that holds this node's replicas of new lines (the next member in ring order).
    pub fn replica_node(&self) -> Option<u8> {
        self.replica_peer()
    }

    /// The node that holds (or is to hold) the replica of line `r`: the peer its replica went
    /// to while that is still a member, else the ring's.
    pub fn replica_holder(&self, r: u64) -> Option<u8> {
        match self.lines.get(&r).and_then(|l| l.replica_at) {
            Some(p) if self.others() & (1 << p) != 0 && self.cfg.mutation != Some(Mutation::ReplicaFollowsRing) => {
                Some(p)
            }
            _ => self.replica_peer(),
        }
    }

    /// Dirty lines here.
    pub fn dirty_lines(&self) -> usize {
        self.lines.values().filter(|l| l.state == State::Modified).count()
    }

    fn id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn line_len(&self) -> usize {
        self.cfg.line_bytes as usize
    }

    /// The next member after this one, in ring order.
    fn replica_peer(&self) -> Option<u8> {
        let n = self.cfg.nodes.max(1);
        (1..n).map(|i| (self.cfg.node + i) % n).find(|p| self.live & (1 << p) != 0)
    }

    fn others(&self) -> u8 {
        self.live & !(1 << self.cfg.node)
    }

    /// What the open flushes wait for, one line per job (a diagnosis for a flush or a leave
    /// that takes long): peers that did not answer, and each unwritten line's phase, its
    /// stripe locks and its owed drop.
    pub fn flushes_waiting(&self) -> Vec<String> {
        self.flushes
            .iter()
            .map(|(job, j)| {
                let mut lines = Vec::new();
                for (r, w) in &j.lines[j.written..] {
                    let Some(l) = self.lines.get(r) else { continue };
                    if !unwritten(&self.lines, *r, *w) {
                        continue;
                    }
                    let locks: Vec<String> = self
                        .stripes_of(*r)
                        .map(|s| match self.stripes.get(&s) {
                            Some(st) => format!(
                                "s{s}:held={},acquiring={:?},users={},owed={},lost={}",
                                st.held, st.acquiring, st.users, st.owed, st.lost
                            ),
                            None => format!("s{s}:none"),
                        })
                        .collect();
                    lines.push(format!(
                        "line {r} {:?} queue={} drop={:?} retry_at={} [{}]",
                        l.phase,
                        l.queue.len(),
                        l.drop_pending,
                        l.retry_at_us,
                        locks.join(" ")
                    ));
                    if lines.len() >= 8 {
                        break;
                    }
                }
                format!(
                    "flush {job} from {:?} for {} us: peers_left={:#04x} sync={:?} card_commands={} unwritten: {}",
                    j.origin,
                    self.now_us.saturating_sub(j.started_us),
                    j.peers_left,
                    j.sync,
                    self.card.len(),
                    if lines.is_empty() { "none".to_string() } else { lines.join("; ") }
                )
            })
            .collect()
    }

    /// The controllers in the current membership (this one's bit included).
    pub fn live(&self) -> u8 {
        self.live
    }

    /// Advances the machine by one input; returns what to do.
    pub fn step(&mut self, input: Input) -> Vec<Output> {
        match input {
            Input::Host { id, req } => self.host(id, req),
            Input::CardDone { id, status, sharers } => self.card_done(id, status, sharers),
            Input::CardEvent { kind, resource, from } => self.card_event(kind, resource, from),
            Input::Fabric { from, epoch, msg } => self.fabric_in(from, epoch, msg),
            Input::MemberDone { id, result } => self.member_done(id, result),
            Input::GroupChanged => self.group_changed(),
            Input::View { epoch, live } => self.view_change(epoch, live),
            Input::Tick { now_us } => self.tick(now_us),
        }
        // Held member completions are released at most once per step; the passes after that
        // only let out member I/O that lines and flushes asked for.
        for _ in 0..4 {
            while let Some(r) = self.touched.pop_first() {
                self.advance(r);
            }
            while let Some(j) = self.touched_jobs.pop_first() {
                self.advance_job(j);
            }
            self.check_flushes();
            if !self.advance_group() && self.touched.is_empty() {
                break;
            }
        }
        // Between steps the index is exact (and so the same for equal caches).
        self.room.sync(&mut self.lines);
        self.presence_step();
        std::mem::take(&mut self.out)
    }

    /// Tells the card's presence filter what this step changed (see `presence.rs`): after
    /// everything else the step sent, so after the yields and releases an unmark follows.
    fn presence_step(&mut self) {
        for (r, used) in self.room.take_used_changes() {
            let acquiring = self.lines.get(&r).is_some_and(|l| matches!(l.phase, Phase::Acquiring { .. }));
            self.presence.line_changed(r, used, acquiring);
        }
        for s in self.presence.take_stripes_touched() {
            let (used, acquiring) = self
                .stripes
                .get(&s)
                .map_or((false, false), |st| (st.held || st.acquiring.is_some(), st.acquiring.is_some()));
            self.presence.stripe_changed(s, used, acquiring);
        }
        let cmds = self.presence.commands();
        for r in cmds.unmark {
            self.counters.presence_unmarks += 1;
            self.cmd(CardOp::Unmark, r, CardUse::Fire);
        }
        for (r, tracked) in cmds.mark {
            self.counters.presence_marks += 1;
            let id = self.cmd(CardOp::Mark, r, if tracked { CardUse::Mark } else { CardUse::Fire });
            if tracked {
                self.presence.marking(id);
            }
        }
        if cmds.on {
            self.cmd(CardOp::FilterOn, PRESENCE_NS, CardUse::Fire);
        }
    }

    fn line(&mut self, r: u64) -> &mut Line {
        // A line that is not here has no data of this node's that the members lack: a line
        // leaves only after its write-back.
        let clean = self.wseq;
        self.timed.insert(r);
        self.room.changed(r);
        self.lines.entry(r).or_insert_with(|| {
            Box::new(Line {
                state: State::Invalid,
                data: Vec::new(),
                wseq: clean,
                clean_wseq: clean,
                phase: Phase::Idle,
                queue: VecDeque::new(),
                owed_excl: false,
                owed_share: false,
                evict: false,
                writeback: false,
                last_use: 0,
                dirty_since_us: 0,
                dirty: Dirty::default(),
                retry_at_us: 0,
                fresh: false,
                replica_at: None,
                drop_pending: None,
                replica_pending: None,
                replica_wseq: 0,
                base_at: None,
                lost: 0,
                lost_since_us: 0,
                acquire_at_us: 0,
                seen: room::Seen::default(),
            })
        })
    }

    /// Answers the peers' requests for line `r` on the card: all of them once the line is given
    /// up (`all`: its room may go to a waiter), else the shared ones.
    fn yield_line(&mut self, r: u64, all: bool) {
        self.counters.yields += 1;
        if all {
            self.cmd(CardOp::Yield, r, CardUse::Fire);
            self.wake_room();
        } else {
            self.cmd(CardOp::YieldShare, r, CardUse::Fire);
        }
    }

    fn cmd(&mut self, op: CardOp, resource: u64, usage: CardUse) -> u64 {
        let id = self.id();
        self.card.insert(id, usage);
        if matches!(op, CardOp::AcquireShared | CardOp::AcquireExclusive) {
            self.counters.acquires += 1;
            if resource & STRIPE_NS != 0 {
                self.counters.stripe_acquires += 1;
            }
        }
        if resource & STRIPE_NS != 0 {
            self.presence.stripe_touched(resource & !STRIPE_NS);
        }
        self.out.push(Output::Card { id, op, resource });
        id
    }

    // ---- host requests -------------------------------------------------------------------

    fn host(&mut self, id: u64, req: HostReq) {
        let (offset, len, write, fua) = match req {
            HostReq::Flush => return self.start_flush(Origin::Host(id), true),
            HostReq::FlushLocal => return self.start_flush(Origin::Host(id), false),
            HostReq::Stripe { stripe, job } => return self.start_job(id, stripe, job),
            HostReq::Record => return self.request_record(id),
            HostReq::Read { offset, len } => (offset, len, None, false),
            HostReq::Write { offset, data, fua } => (offset, data.len() as u64, Some(data), fua),
        };
        if offset.checked_add(len).is_none_or(|e| e > self.cfg.capacity) {
            self.out.push(Output::Reply { id, result: Err(HostError::OutOfRange { offset, len }) });
            return;
        }
        let lb = self.cfg.line_bytes;
        let count = if len == 0 { 0 } else { ((offset + len - 1) / lb - offset / lb + 1) as usize };
        if self.pieces.len() + count > PIECES_MAX {
            self.out.push(Output::Reply { id, result: Err(HostError::Card("too many requests in flight".into())) });
            return;
        }
        if count == 0 {
            self.out.push(Output::Reply { id, result: Ok(Vec::new()) });
            return;
        }
        let data = if write.is_some() { Vec::new() } else { vec![0u8; len as usize] };
        let lines = if write.is_some() { (offset / lb..=(offset + len - 1) / lb).collect() } else { Vec::new() };
        self.requests.insert(id, Request { left: count, data, error: None, lines });
        let mut pos = offset;
        while pos < offset + len {
            let r = pos / lb;
            let off = (pos % lb) as usize;
            let n = ((lb - off as u64).min(offset + len - pos)) as usize;
            let at = (pos - offset) as usize;
            let bytes = write.as_ref().map(|d| d[at..at + n].to_vec());
            let pid = self.id();
            self.pieces.insert(pid, Piece { req: id, off, len: n, at, write: bytes, fua, applied: false });
            self.line(r).queue.push_back(pid);
            self.touched.insert(r);
            pos += n as u64;
        }
    }

    /// Ends the piece at the head of line `r`'s queue.
    fn finish_piece(&mut self, r: u64, error: Option<HostError>) {
        let Some(pid) = self.lines.get_mut(&r).and_then(|l| l.queue.pop_front()) else { return };
        let Some(p) = self.pieces.remove(&pid) else { return };
        let Some(req) = self.requests.get_mut(&p.req) else { return };
        if let Some(e) = error {
            req.error.get_or_insert(e);
        }
        req.left -= 1;
        if req.left == 0 {
            self.answer_when_replicated(p.req);
        }
    }

    /// Answers request `id` (all its pieces done) unless one of its lines waits for a new
    /// replica; then it is parked until the replica is held.
    fn answer_when_replicated(&mut self, id: u64) {
        let Some(req) = self.requests.get(&id) else { return };
        let waiting = req.error.is_none()
            && req.lines.iter().any(|r| self.lines.get(r).is_some_and(|l| l.replica_pending.is_some()));
        if waiting {
            self.parked.insert(id);
            return;
        }
        self.parked.remove(&id);
        if let Some(req) = self.requests.remove(&id) {
            let result = match req.error {
                Some(e) => Err(e),
                None => Ok(req.data),
            };
            self.out.push(Output::Reply { id, result });
        }
    }

    /// A line's new replica is held (or needs none any more): answers parked on it go out.
    fn replica_settled(&mut self) {
        for id in self.parked.clone() {
            self.answer_when_replicated(id);
        }
    }

    /// Fails every piece queued on line `r`.
    fn fail_queue(&mut self, r: u64, e: HostError) {
        while self.lines.get(&r).is_some_and(|l| !l.queue.is_empty()) {
            self.finish_piece(r, Some(e.clone()));
        }
    }

    // ---- the per-line engine -------------------------------------------------------------

    /// Does whatever line `r` can do next; stops when it waits for an input.
    fn advance(&mut self, r: u64) {
        // Each pass either serves a piece or returns: bounded by the queue.
        let passes_max = self.lines.get(&r).map_or(0, |l| l.queue.len()) + 4;
        for _ in 0..passes_max {
            let Some(l) = self.lines.get(&r) else { return };
            let (state, phase) = (l.state, l.phase);
            match phase {
                Phase::Idle | Phase::Acquiring { .. } => {}
                Phase::Locking => {
                    // A write-back waiting for a stripe lock does not hold up the line: a piece
                    // this node can serve now goes first and the write-back is tried again
                    // after it (unless a peer or an eviction waits for it).
                    let head = l.queue.front().and_then(|p| self.pieces.get(p));
                    let servable = head.is_some_and(|p| p.write.is_none() || state == State::Modified);
                    if !servable || l.owed_excl || l.owed_share || l.evict || self.head_applied(r) {
                        return self.try_destage(r);
                    }
                    for s in self.stripes_of(r) {
                        if let Some(st) = self.stripes.get_mut(&s) {
                            st.waiters.remove(&r);
                        }
                    }
                    // The background write-back (the line is still old and dirty) starts it
                    // again at the next tick; a flush waits for that.
                    let l = self.line(r);
                    l.phase = Phase::Idle;
                    l.writeback = false;
                    continue;
                }
                Phase::FillLocking { .. } => return self.try_fill(r),
                _ => return,
            }
            let servable = phase == Phase::Idle
                && l.queue.front().and_then(|p| self.pieces.get(p)).is_some_and(|p| match p.write {
                    Some(_) => matches!(state, State::Exclusive | State::Modified),
                    None => state != State::Invalid,
                });
            if (l.owed_excl || l.owed_share) && !(l.fresh && servable) {
                if state == State::Modified && self.cfg.mutation != Some(Mutation::YieldBeforeWriteBack) {
                    // Only an idle owner is Modified here (acquires start from Shared or
                    // Invalid): write back first, the yield follows.
                    if l.retry_at_us <= self.now_us {
                        self.counters.yield_write_backs += 1;
                        self.start_destage(r);
                    }
                    return;
                }
                if l.drop_pending.is_some() && self.cfg.mutation != Some(Mutation::YieldBeforeDrop) {
                    // The replica's drop is answered first (its answer touches the line).
                    return;
                }
                let skip = self.cfg.mutation == Some(Mutation::SkipInvalidate);
                let keep_base = self.cfg.mutation == Some(Mutation::BaseAfterInvalidate);
                let l = self.line(r);
                if l.owed_excl {
                    if skip && l.state != State::Invalid {
                        l.state = State::Shared;
                    } else {
                        l.state = State::Invalid;
                        l.data = Vec::new();
                        if !keep_base {
                            l.base_at = None;
                        }
                    }
                    l.owed_excl = false;
                    l.owed_share = false;
                    self.yield_line(r, true);
                } else {
                    if l.state == State::Exclusive {
                        l.state = State::Shared;
                    }
                    l.owed_share = false;
                    self.yield_line(r, false);
                }
                continue;
            }
            if matches!(phase, Phase::Acquiring { .. }) {
                return;
            }
            let l = &self.lines[&r];
            if l.evict || (l.writeback && l.state == State::Modified) {
                if l.state == State::Modified {
                    if l.retry_at_us <= self.now_us {
                        self.start_destage(r);
                    }
                    return;
                }
                if l.evict {
                    if l.drop_pending.is_some() && self.cfg.mutation != Some(Mutation::YieldBeforeDrop) {
                        return;
                    }
                    if l.state != State::Invalid {
                        self.cmd(CardOp::Release, r, CardUse::Fire);
                    }
                    let keep_base = self.cfg.mutation == Some(Mutation::BaseAfterInvalidate);
                    let l = self.line(r);
                    l.state = State::Invalid;
                    l.data = Vec::new();
                    l.evict = false;
                    if !keep_base {
                        l.base_at = None;
                    }
                    self.wake_room();
                    continue;
                }
            }
            let l = &self.lines[&r];
            let Some(&pid) = l.queue.front() else {
                if l.state == State::Invalid {
                    if let Some(l) = self.lines.remove(&r) {
                        self.room.forget(r, &l);
                    }
                    self.wake_room();
                } else if !self.room_waiters.is_empty() {
                    self.make_room();
                }
                return;
            };
            let p = &self.pieces[&pid];
            let (off, len, at, req, is_write) = (p.off, p.len, p.at, p.req, p.write.is_some());
            if !is_write && l.state != State::Invalid {
                self.counters.hits += 1;
                let bytes = l.data[off..off + len].to_vec();
                if let Some(q) = self.requests.get_mut(&req) {
                    q.data[at..at + len].copy_from_slice(&bytes);
                }
                self.uses += 1;
                let u = self.uses;
                let l = self.line(r);
                l.last_use = u;
                l.fresh = false;
                self.finish_piece(r, None);
                continue;
            }
            if is_write && matches!(l.state, State::Exclusive | State::Modified) {
                return self.apply(r, pid);
            }
            let (invalid, acquire_at_us) = (l.state == State::Invalid, l.acquire_at_us);
            if invalid && !self.has_room() {
                if self.room_waiters.insert(r) {
                    self.counters.room_waits += 1;
                }
                self.make_room();
                return;
            }
            if acquire_at_us > self.now_us {
                // Backing off after lost conflicts; a tick brings it back.
                return;
            }
            let exclusive = is_write;
            let op = if exclusive { CardOp::AcquireExclusive } else { CardOp::AcquireShared };
            let id = self.cmd(op, r, CardUse::Line(r));
            let now = self.now_us;
            let l = self.line(r);
            let since_us = if l.lost > 0 { l.lost_since_us } else { now };
            l.phase = Phase::Acquiring { id, exclusive, since_us };
            return;
        }
    }

    /// Applies the write piece `pid` to line `r` (held Exclusive or Modified), then makes it
    /// live in two places before the piece ends.
    fn apply(&mut self, r: u64, pid: u64) {
        self.wseq += 1;
        let wseq = self.wseq;
        self.uses += 1;
        let (uses, now) = (self.uses, self.now_us);
        let Some(p) = self.pieces.get_mut(&pid) else { return };
        p.applied = true;
        let (off, fua) = (p.off, p.fua);
        let bytes = p.write.take().unwrap_or_default();
        let narrow = self.cfg.mutation == Some(Mutation::NarrowWriteBack);
        let l = self.line(r);
        let base = l.wseq;
        l.data[off..off + bytes.len()].copy_from_slice(&bytes);
        if l.state != State::Modified {
            l.dirty_since_us = now;
        }
        l.dirty = if narrow { Dirty::default() } else { l.dirty }.with(off, bytes.len());
        l.state = State::Modified;
        l.wseq = wseq;
        l.last_use = uses;
        l.fresh = false;
        // FUA goes to the members before the reply and needs no replica, unless the line has
        // one already: that one must not be left older than the members (taken over after
        // this controller's death with its drop unanswered, it would undo this write).
        let replicated = self.lines.get(&r).is_some_and(|l| l.replica_at.is_some());
        match self.replica_holder(r).filter(|_| !fua || replicated) {
            Some(to) => {
                self.counters.replications += 1;
                let id = self.id();
                // The peer holds this line as it was before the write: only the write goes.
                let l = &self.lines[&r];
                let any_base = self.cfg.mutation == Some(Mutation::PieceOnAnyBase);
                let held = l.replica_at == Some(to) && (any_base || (l.replica_wseq == base && base != 0));
                let kept = l.base_at == Some((to, base)) && base != 0;
                let msg = if held || kept {
                    self.counters.replica_pieces += 1;
                    Msg::ReplicatePiece { id, line: r, wseq, base, off: off as u32, data: bytes }
                } else {
                    Msg::Replicate { id, line: r, wseq, data: l.data.clone() }
                };
                self.send_request(id, to, msg, Purpose::Replica(r));
                let l = self.line(r);
                l.replica_at = Some(to);
                l.base_at = None;
                if self.cfg.mutation == Some(Mutation::AckBeforeReplica) {
                    self.fabric.remove(&id);
                    self.finish_piece(r, None);
                    self.touched.insert(r);
                    return;
                }
                self.line(r).phase = Phase::Replicating { id };
            }
            // No peer to hold it, or FUA: the members hold it before the reply.
            None => self.start_destage(r),
        }
    }

    /// Lines that take a place in the cache: resident, or on their way in.
    fn lines_used(&mut self) -> usize {
        self.room.sync(&mut self.lines);
        self.room.used()
    }

    fn has_room(&mut self) -> bool {
        // Every line in use is in the map: a map shorter than the cache needs no count.
        self.lines.len() < self.cfg.lines_max || self.lines_used() < self.cfg.lines_max
    }

    /// Starts evicting the least recently used idle line (unless one is leaving already).
    fn make_room(&mut self) {
        self.room.sync(&mut self.lines);
        if self.room.evicting() {
            return;
        }
        let lines = &self.lines;
        let victim = self.room.by_use().find(|r| {
            lines.get(r).is_some_and(|l| l.phase == Phase::Idle && l.queue.is_empty() && !l.owed_excl && !l.owed_share)
        });
        if let Some(v) = victim {
            self.counters.evictions += 1;
            if self.lines.get(&v).is_some_and(|l| l.state == State::Modified) {
                self.counters.evictions_dirty += 1;
            }
            self.line(v).evict = true;
            self.touched.insert(v);
        }
    }

    fn wake_room(&mut self) {
        let waiters = std::mem::take(&mut self.room_waiters);
        self.touched.extend(waiters);
    }

    // ---- write-back under stripe locks ---------------------------------------------------

    fn stripes_of(&self, r: u64) -> std::ops::RangeInclusive<u64> {
        let lb = self.cfg.line_bytes;
        let sb = self.cfg.stripe_bytes.max(1);
        (r * lb / sb)..=((r * lb + lb - 1) / sb)
    }

    fn start_destage(&mut self, r: u64) {
        let l = self.line(r);
        l.phase = Phase::Locking;
        l.writeback = false;
        self.try_destage(r);
    }

    /// Takes every stripe lock line `r` needs, or asks for the missing ones (the line waits);
    /// true when they are all held here and counted as used by `r`.
    fn lock_stripes(&mut self, r: u64) -> bool {
        self.lock(self.stripes_of(r), Waiter::Line(r))
    }

    /// Takes the locks of `stripes` for `who`, or asks for the missing ones (`who` waits).
    fn lock(&mut self, stripes: std::ops::RangeInclusive<u64>, who: Waiter) -> bool {
        if self.cfg.mutation == Some(Mutation::NoStripeLock) {
            return true;
        }
        for s in stripes.clone() {
            let st = self.stripes.entry(s).or_default();
            if !st.held || st.owed {
                match who {
                    Waiter::Line(r) => st.waiters.insert(r),
                    Waiter::Job(j) => st.jobs.insert(j),
                };
                if !st.held && st.acquiring.is_none() && st.acquire_at_us == 0 {
                    let now = self.now_us;
                    let id = self.cmd(CardOp::AcquireExclusive, STRIPE_NS | s, CardUse::Stripe(s));
                    if let Some(st) = self.stripes.get_mut(&s) {
                        st.acquiring = Some(id);
                        st.since_us = now;
                    }
                }
                return false;
            }
        }
        for s in stripes {
            if let Some(st) = self.stripes.get_mut(&s) {
                st.users += 1;
                match who {
                    Waiter::Line(r) => st.waiters.remove(&r),
                    Waiter::Job(j) => st.jobs.remove(&j),
                };
            }
        }
        true
    }

    /// Line `r` no longer uses its stripe locks; each is given to a peer that asked.
    fn unlock_stripes(&mut self, r: u64) {
        self.unlock(self.stripes_of(r));
    }

    /// A user of `stripes` is done with them; each is given to a peer that asked.
    fn unlock(&mut self, stripes: std::ops::RangeInclusive<u64>) {
        for s in stripes {
            if let Some(st) = self.stripes.get_mut(&s) {
                st.users = st.users.saturating_sub(1);
            }
            self.maybe_yield_stripe(s);
        }
    }

    /// The line and mode of member read `id` if it is a fill made without the stripe locks.
    fn unlocked_fill(&self, id: u64) -> Option<(u64, bool)> {
        let Some(MemberUse::Fill(r)) = self.members.get(&id) else { return None };
        match self.lines.get(r)?.phase {
            Phase::Filling { id: f, exclusive, locked: false } if f == id => Some((*r, exclusive)),
            _ => None,
        }
    }

    /// Reads line `r` from the members: in a degraded group under its stripe locks.
    fn start_fill(&mut self, r: u64, exclusive: bool) {
        if self.group_degraded() && self.cfg.mutation != Some(Mutation::NoFillLock) {
            self.line(r).phase = Phase::FillLocking { exclusive };
            return self.try_fill(r);
        }
        self.issue_fill(r, exclusive, false);
    }

    fn try_fill(&mut self, r: u64) {
        let Some(Phase::FillLocking { exclusive }) = self.lines.get(&r).map(|l| l.phase) else { return };
        if self.lock_stripes(r) {
            self.issue_fill(r, exclusive, true);
        }
    }

    fn issue_fill(&mut self, r: u64, exclusive: bool, locked: bool) {
        let fid = self.id();
        self.members.insert(fid, MemberUse::Fill(r));
        self.counters.member_reads += 1;
        self.line(r).phase = Phase::Filling { id: fid, exclusive, locked };
        let offset = r * self.cfg.line_bytes;
        let len = self.cfg.line_bytes;
        self.member_io(Output::MemberRead { id: fid, offset, len });
    }

    fn stripe_event(&mut self, s: u64) {
        self.stripes.entry(s).or_default().owed = true;
        self.maybe_yield_stripe(s);
    }

    /// Gives stripe `s` to the peer that asked once no write-back here uses it; asks for it
    /// again when write-backs here wait for it.
    fn maybe_yield_stripe(&mut self, s: u64) {
        let Some(st) = self.stripes.get_mut(&s) else { return };
        if !st.owed || st.users > 0 {
            return;
        }
        st.owed = false;
        st.held = false;
        self.counters.yields += 1;
        self.cmd(CardOp::Yield, STRIPE_NS | s, CardUse::Fire);
        let st = self.stripes.entry(s).or_default();
        let waiting = !st.waiters.is_empty() || !st.jobs.is_empty();
        if waiting && st.acquiring.is_none() && st.acquire_at_us == 0 {
            let now = self.now_us;
            let id = self.cmd(CardOp::AcquireExclusive, STRIPE_NS | s, CardUse::Stripe(s));
            if let Some(st) = self.stripes.get_mut(&s) {
                st.acquiring = Some(id);
                st.since_us = now;
            }
        } else if !waiting {
            self.stripes.remove(&s);
        }
    }

    // ---- inputs from the card ------------------------------------------------------------

    fn card_done(&mut self, id: u64, status: CardStatus, sharers: u8) {
        let Some(usage) = self.card.remove(&id) else { return };
        match usage {
            CardUse::Fire => {
                if status == CardStatus::StaleEpoch {
                    self.counters.card_stale += 1;
                }
            }
            CardUse::Stripe(s) => self.stripe_done(s, id, status),
            CardUse::Group => self.group_acquired(id, status),
            CardUse::Line(r) => self.line_done(r, id, status, sharers),
            CardUse::Mark => self.presence.marked(id),
        }
    }

    /// Asks again for the stripe locks whose back-off is over.
    fn retry_stripes(&mut self, now: u64) {
        let due: Vec<u64> = self
            .stripes
            .iter()
            .filter(|(_, st)| st.acquire_at_us != 0 && st.acquire_at_us <= now)
            .map(|(s, _)| *s)
            .collect();
        for s in due {
            let Some(st) = self.stripes.get_mut(&s) else { continue };
            st.acquire_at_us = 0;
            if st.held || st.acquiring.is_some() {
                continue;
            }
            if st.waiters.is_empty() && st.jobs.is_empty() {
                self.stripes.remove(&s);
                continue;
            }
            let id = self.cmd(CardOp::AcquireExclusive, STRIPE_NS | s, CardUse::Stripe(s));
            if let Some(st) = self.stripes.get_mut(&s) {
                st.acquiring = Some(id);
            }
        }
    }

    fn stripe_done(&mut self, s: u64, id: u64, status: CardStatus) {
        let Some(st) = self.stripes.get_mut(&s) else { return };
        if st.acquiring != Some(id) {
            return;
        }
        st.acquiring = None;
        self.presence.stripe_touched(s);
        let Some(st) = self.stripes.get_mut(&s) else { return };
        match status {
            // Untracked: the card's table had no room. With `hold` every request still reaches
            // this host, which knows what it holds: the table is a filter, not the truth.
            CardStatus::Ok | CardStatus::Untracked => {
                st.held = true;
                st.lost = 0;
                let waiters: Vec<u64> = st.waiters.iter().copied().collect();
                let jobs: Vec<u64> = st.jobs.iter().copied().collect();
                self.touched.extend(waiters);
                self.touched_jobs.extend(jobs);
                // A peer that asked while this acquire was in flight waits for it.
                self.maybe_yield_stripe(s);
            }
            CardStatus::Timeout | CardStatus::Conflict | CardStatus::StaleEpoch => {
                self.counters.retries += 1;
                if self.now_us.saturating_sub(st.since_us) >= ACQUIRE_PATIENCE_US {
                    // Writes waiting to be written through fail with the reason; the
                    // write-backs themselves stay queued and the lock is asked for again.
                    st.since_us = self.now_us;
                    let waiters: Vec<u64> = st.waiters.iter().copied().collect();
                    let jobs = std::mem::take(&mut st.jobs);
                    for r in waiters {
                        let why = format!("stripe {s}: peers did not answer the card (write-back of line {r} waits)");
                        self.fail_applied(r, HostError::Card(why));
                    }
                    for j in jobs {
                        self.fail_job(j, HostError::Card(format!("stripe {s}: peers did not answer the card")));
                    }
                }
                if status == CardStatus::Conflict {
                    // Lost to other controllers after the card's own retries: back off.
                    let (node, now) = (self.cfg.node, self.now_us);
                    if let Some(st) = self.stripes.get_mut(&s) {
                        st.lost += 1;
                        st.acquire_at_us = now + backoff_us(node, STRIPE_NS | s, st.lost, now);
                    }
                    return;
                }
                let id = self.cmd(CardOp::AcquireExclusive, STRIPE_NS | s, CardUse::Stripe(s));
                if let Some(st) = self.stripes.get_mut(&s) {
                    st.acquiring = Some(id);
                }
            }
            CardStatus::Refused => {
                // The setup is broken (epoch): write-backs waiting for it cannot happen.
                let waiters = std::mem::take(&mut st.waiters);
                let jobs = std::mem::take(&mut st.jobs);
                for j in jobs {
                    self.fail_job(j, HostError::Card(format!("stripe {s} refused")));
                }
                let retry_at = self.now_us + DESTAGE_RETRY_US;
                for r in waiters {
                    let l = self.line(r);
                    l.phase = Phase::Idle;
                    l.retry_at_us = retry_at;
                    self.fail_applied(r, HostError::Card(format!("stripe {s} refused")));
                }
            }
        }
    }

    fn line_done(&mut self, r: u64, id: u64, status: CardStatus, sharers: u8) {
        let Some(l) = self.lines.get(&r) else { return };
        let Phase::Acquiring { id: want, exclusive, since_us } = l.phase else { return };
        if want != id {
            return;
        }
        match status {
            // As for stripes: untracked by the card's table, still answered by this host.
            CardStatus::Ok | CardStatus::Untracked => {
                let whole_write = l
                    .queue
                    .front()
                    .and_then(|p| self.pieces.get(p))
                    .is_some_and(|p| p.write.is_some() && p.len == self.cfg.line_bytes as usize);
                let len = self.line_len();
                let others = self.others();
                let l = self.line(r);
                l.fresh = true;
                l.lost = 0;
                match (l.state, exclusive) {
                    (State::Shared, true) => {
                        l.state = State::Exclusive;
                        l.phase = Phase::Idle;
                    }
                    (State::Invalid, true) if whole_write => {
                        l.data = vec![0u8; len];
                        l.state = State::Exclusive;
                        l.phase = Phase::Idle;
                    }
                    (State::Invalid, false) if sharers & others != 0 => {
                        // Step 3 (read): every holder yielded clean, so a sharer's copy is the
                        // newest; ask one before the members.
                        let mask = sharers & others;
                        let to = (0..8u8).find(|p| mask & (1 << p) != 0).unwrap_or(0);
                        let fid = self.id();
                        self.send_request(fid, to, Msg::Fetch { id: fid, line: r }, Purpose::Fetch(r));
                        self.line(r).phase = Phase::Fetching { id: fid };
                    }
                    (State::Invalid, _) => self.start_fill(r, exclusive),
                    _ => l.phase = Phase::Idle,
                }
            }
            CardStatus::Conflict if self.now_us.saturating_sub(since_us) < ACQUIRE_PATIENCE_US => {
                self.counters.retries += 1;
                let (node, now) = (self.cfg.node, self.now_us);
                let l = self.line(r);
                l.lost += 1;
                l.lost_since_us = since_us;
                l.acquire_at_us = now + backoff_us(node, r, l.lost, now);
                l.phase = Phase::Idle;
            }
            CardStatus::Timeout | CardStatus::StaleEpoch
                if self.now_us.saturating_sub(since_us) < ACQUIRE_PATIENCE_US =>
            {
                // The card already waited its ack timeout (or the membership changed while the
                // command was queued): ask again at once.
                self.counters.retries += 1;
                let op = if exclusive { CardOp::AcquireExclusive } else { CardOp::AcquireShared };
                let id = self.cmd(op, r, CardUse::Line(r));
                self.line(r).phase = Phase::Acquiring { id, exclusive, since_us };
            }
            CardStatus::Refused => {
                self.line(r).phase = Phase::Idle;
                self.fail_queue(r, HostError::Card(format!("line {r}: the card refused the acquire")));
            }
            _ => {
                self.line(r).phase = Phase::Idle;
                let waited_ms = self.now_us.saturating_sub(since_us) / 1000;
                let why = if status == CardStatus::Timeout {
                    format!("line {r}: peers did not answer the card for {waited_ms} ms")
                } else {
                    format!("line {r}: kept losing conflicting acquires for {waited_ms} ms")
                };
                self.line(r).lost = 0;
                self.finish_piece(r, Some(HostError::Card(why)));
            }
        }
        self.touched.insert(r);
    }

    fn card_event(&mut self, kind: CardEventKind, resource: u64, from: u8) {
        if from >= 8 || self.others() & (1 << from) == 0 {
            self.counters.malformed += 1;
            return;
        }
        if resource == GROUP_RESOURCE {
            return self.group_event(kind);
        }
        if resource & STRIPE_NS != 0 {
            return self.stripe_event(resource & !STRIPE_NS);
        }
        if !self.lines.contains_key(&resource) {
            // Not held nor being acquired here: the yield the line's own turn would make, at
            // once (most events of a workload larger than the caches are for lines the peer
            // does not have; making an entry to drop it again cost a B-tree insert and removal).
            return self.yield_line(resource, kind == CardEventKind::Invalidate);
        }
        let l = self.line(resource);
        match kind {
            CardEventKind::Invalidate => l.owed_excl = true,
            CardEventKind::Share => l.owed_share = true,
        }
        self.touched.insert(resource);
    }

    // ---- member I/O ----------------------------------------------------------------------

    /// A member I/O's completion, once the group lets it through (see `group.rs`).
    fn member_finished(&mut self, id: u64, result: Result<Vec<u8>, String>) {
        let Some(usage) = self.members.remove(&id) else { return };
        match usage {
            MemberUse::Fill(r) => {
                let len = self.line_len();
                let l = self.line(r);
                let Phase::Filling { exclusive, locked, .. } = l.phase else { return };
                l.phase = Phase::Idle;
                match result {
                    Ok(d) if d.len() == len => {
                        l.data = d;
                        l.state = if exclusive { State::Exclusive } else { State::Shared };
                    }
                    Ok(d) => self.finish_piece(r, Some(HostError::Member(format!("{} bytes for {len}", d.len())))),
                    Err(e) => self.finish_piece(r, Some(HostError::Member(e))),
                }
                if locked {
                    self.unlock_stripes(r);
                }
                self.touched.insert(r);
            }
            MemberUse::Job(j) => self.job_done(j, result),
            MemberUse::Destage { first, lines } => {
                let lines = if self.cfg.mutation == Some(Mutation::RunEndsOneLine) { 1 } else { lines };
                for r in first..first + lines {
                    self.written_back(r, id, &result);
                }
            }
            MemberUse::Sync(job) => {
                // A sync the flush no longer waits for (lines joined it after it was issued:
                // `flush_again`) does not end it; the one issued after them does.
                if let Some(j) = self.flushes.get_mut(&job).filter(|j| j.sync == Some(Some(id))) {
                    j.sync = Some(None);
                    if let Err(e) = result {
                        j.failed.get_or_insert(e);
                    }
                }
            }
        }
    }

    fn head_applied(&self, r: u64) -> bool {
        self.lines.get(&r).and_then(|l| l.queue.front()).and_then(|p| self.pieces.get(p)).is_some_and(|p| p.applied)
    }

    /// A write-through of an applied piece failed: the piece fails (its data stays dirty here).
    fn fail_applied(&mut self, r: u64, e: HostError) {
        if self.head_applied(r) {
            self.finish_piece(r, Some(e));
        }
    }

    // ---- fabric --------------------------------------------------------------------------

    fn send_request(&mut self, id: u64, to: u8, msg: Msg, purpose: Purpose) {
        self.fabric.insert(id, Outstanding { to, msg: msg.clone(), sent_us: self.now_us, purpose });
        self.out.push(Output::Send { to, msg });
    }

    /// Requests to the controllers of `peers` that they dropped (sent in an epoch they were not
    /// in yet) go again now rather than at their retransmission.
    pub(super) fn resend_requests_to(&mut self, peers: u8) {
        let now = self.now_us;
        for o in self.fabric.values_mut().filter(|o| peers & (1 << o.to) != 0) {
            o.sent_us = now;
            self.out.push(Output::Send { to: o.to, msg: o.msg.clone() });
        }
    }

    fn fabric_in(&mut self, from: u8, epoch: u32, msg: Msg) {
        if epoch != self.cfg.epoch {
            self.counters.stale_epoch += 1;
            return;
        }
        if from >= 8 || self.others() & (1 << from) == 0 {
            self.counters.malformed += 1;
            return;
        }
        match msg {
            Msg::Replicate { id, line, wseq, data } => {
                let fits = data.len() == self.line_len() && line < self.cfg.capacity / self.cfg.line_bytes;
                let room = self.replicas.len() < REPLICAS_MAX || self.replicas.contains_key(&(from, line));
                if !fits || !room {
                    self.counters.malformed += 1;
                    return;
                }
                let late = self.dropped.get(&(from, line)).is_some_and(|w| wseq <= *w);
                self.bases.forget((from, line));
                if self.cfg.mutation != Some(Mutation::ForgetReplica) && !late {
                    let e = self.replicas.entry((from, line)).or_insert((0, Vec::new()));
                    if wseq >= e.0 {
                        *e = (wseq, data);
                    }
                }
                self.out.push(Output::Send { to: from, msg: Msg::ReplicaAck { id } });
            }
            Msg::ReplicatePiece { id, line, wseq, base, off, data } => {
                let off = off as usize;
                let fits = off.checked_add(data.len()).is_some_and(|end| end <= self.line_len())
                    && line < self.cfg.capacity / self.cfg.line_bytes;
                if !fits {
                    self.counters.malformed += 1;
                    return;
                }
                let late = self.dropped.get(&(from, line)).is_some_and(|w| wseq <= *w);
                let any_base = self.cfg.mutation == Some(Mutation::PieceOnAnyBase);
                let (lb, room) = (self.line_len(), self.replicas.len() < REPLICAS_MAX);
                let kept = match self.replicas.get_mut(&(from, line)) {
                    _ if late || self.cfg.mutation == Some(Mutation::ForgetReplica) => true,
                    Some(e) if e.0 >= wseq => true,
                    Some(e) if e.0 == base || any_base => {
                        e.1[off..off + data.len()].copy_from_slice(&data);
                        e.0 = wseq;
                        true
                    }
                    None if any_base && room => {
                        let mut d = vec![0u8; lb];
                        d[off..off + data.len()].copy_from_slice(&data);
                        self.replicas.insert((from, line), (wseq, d));
                        true
                    }
                    None if room => match self.bases.take_at((from, line), base) {
                        Some(mut d) if d.len() == lb => {
                            d[off..off + data.len()].copy_from_slice(&data);
                            self.replicas.insert((from, line), (wseq, d));
                            self.counters.replica_bases_used += 1;
                            true
                        }
                        _ => false,
                    },
                    _ => false,
                };
                let msg = if kept { Msg::ReplicaAck { id } } else { Msg::ReplicaMissing { id } };
                self.out.push(Output::Send { to: from, msg });
            }
            Msg::ReplicaMissing { id } => {
                // The whole line instead, under the same id. The line waits for this answer
                // (it is Replicating), so its content is still the piece's.
                let Some(Outstanding { purpose: Purpose::Replica(r), msg: Msg::ReplicatePiece { wseq, .. }, .. }) =
                    self.fabric.get(&id)
                else {
                    return;
                };
                let (r, wseq) = (*r, *wseq);
                let Some(l) = self.lines.get(&r).filter(|l| l.wseq == wseq && l.phase == Phase::Replicating { id })
                else {
                    return;
                };
                self.counters.replica_missing += 1;
                let full = Msg::Replicate { id, line: r, wseq, data: l.data.clone() };
                let now = self.now_us;
                if let Some(o) = self.fabric.get_mut(&id) {
                    o.msg = full.clone();
                    o.sent_us = now;
                    let to = o.to;
                    self.out.push(Output::Send { to, msg: full });
                }
            }
            Msg::ReplicaAck { id } => {
                if let Some(Outstanding { purpose: Purpose::Rereplicate(r), .. }) = self.fabric.get(&id) {
                    let r = *r;
                    self.fabric.remove(&id);
                    if let Some(l) = self.lines.get_mut(&r).filter(|l| l.replica_pending == Some(id)) {
                        l.replica_pending = None;
                    }
                    self.replica_settled();
                    return;
                }
                if let Some(Outstanding { purpose: Purpose::Replica(r), to, msg, .. }) = self.fabric.get(&id) {
                    let (r, to) = (*r, *to);
                    let acked = match msg {
                        Msg::Replicate { wseq, .. } | Msg::ReplicatePiece { wseq, .. } => *wseq,
                        _ => 0,
                    };
                    self.fabric.remove(&id);
                    if let Some(l) = self.lines.get_mut(&r).filter(|l| l.replica_pending == Some(id)) {
                        l.replica_pending = None;
                        self.replica_settled();
                    }
                    if self.lines.get(&r).is_some_and(|l| l.phase == Phase::Replicating { id }) {
                        let l = self.line(r);
                        if l.replica_at == Some(to) && from == to {
                            l.replica_wseq = acked;
                        }
                        l.phase = Phase::Idle;
                        let head = self.lines.get(&r).and_then(|l| l.queue.front()).and_then(|p| self.pieces.get(p));
                        if head.is_some_and(|p| p.fua) {
                            // The replica is current; now the members, before the reply.
                            self.start_destage(r);
                        } else {
                            self.finish_piece(r, None);
                        }
                        self.touched.insert(r);
                    }
                }
            }
            Msg::DropReplica { id, line, wseq } => {
                if self.replicas.get(&(from, line)).is_some_and(|(w, _)| *w <= wseq) {
                    if let Some((w, d)) = self.replicas.remove(&(from, line)) {
                        // Exactly what the members hold now: the base of the owner's next piece.
                        if w == wseq {
                            self.bases.keep((from, line), w, d);
                        }
                    }
                }
                self.note_dropped(from, line, wseq);
                self.out.push(Output::Send { to: from, msg: Msg::ReplicaDropped { id } });
            }
            Msg::ReplicaDropped { id } => {
                if let Some(Outstanding { purpose: Purpose::Drop(r), msg, .. }) = self.fabric.get(&id) {
                    let (r, wseq) = (*r, if let Msg::DropReplica { wseq, .. } = msg { *wseq } else { 0 });
                    self.fabric.remove(&id);
                    self.replica_dropped(r, id, wseq);
                }
            }
            Msg::FlushReq { id } => {
                let origin = Origin::Peer { node: from, id };
                if !self.flushes.values().any(|j| j.origin == origin) {
                    self.start_flush(origin, false);
                }
            }
            Msg::Fetch { id, line } => {
                // Only clean copies go out: a dirty one here means the asker's acquire is long
                // over (a late or repeated request) and it no longer waits for this answer.
                let data = self
                    .lines
                    .get(&line)
                    .filter(|l| matches!(l.state, State::Shared | State::Exclusive))
                    .map(|l| l.data.clone());
                if data.is_some() {
                    self.counters.lines_forwarded += 1;
                }
                self.out.push(Output::Send { to: from, msg: Msg::LineData { id, data } });
            }
            Msg::LineData { id, data } => {
                let Some(Outstanding { purpose: Purpose::Fetch(r), .. }) = self.fabric.get(&id) else { return };
                let r = *r;
                self.fabric.remove(&id);
                if self.lines.get(&r).is_none_or(|l| l.phase != Phase::Fetching { id }) {
                    return;
                }
                let len = self.line_len();
                match data.filter(|d| d.len() == len) {
                    Some(d) => {
                        self.counters.remote_hits += 1;
                        let l = self.line(r);
                        l.data = d;
                        l.state = State::Shared;
                        l.phase = Phase::Idle;
                    }
                    None => self.start_fill(r, false),
                }
                self.touched.insert(r);
            }
            // The shells handle start and stop; nothing changes here.
            Msg::Hello { .. } | Msg::Leaving | Msg::JoinAsk { .. } | Msg::JoinReady { .. } | Msg::Join { .. } => {}
            Msg::ViewChanged => {
                self.reissue_acquires();
                self.resend_requests_to(1 << from);
            }
            Msg::FlushDone { id, ok } => {
                if let Some(Outstanding { purpose: Purpose::Flush(job), to, .. }) = self.fabric.get(&id) {
                    let (job, to) = (*job, *to);
                    self.fabric.remove(&id);
                    if let Some(j) = self.flushes.get_mut(&job) {
                        j.peers_left &= !(1 << to);
                        if !ok {
                            j.failed.get_or_insert(format!("node {to} could not write back"));
                        }
                    }
                }
            }
        }
    }

    /// Remembers that `from`'s replicas of `line` up to `wseq` are dropped.
    fn note_dropped(&mut self, from: u8, line: u64, wseq: u64) {
        let w = self.dropped.entry((from, line)).or_insert(0);
        if wseq > *w {
            if *w == 0 {
                self.dropped_order.push_back((from, line));
            }
            *w = wseq;
        }
        while self.dropped_order.len() > DROPPED_MAX {
            if let Some(k) = self.dropped_order.pop_front() {
                self.dropped.remove(&k);
            }
        }
    }

    // ---- flush ---------------------------------------------------------------------------

    fn start_flush(&mut self, origin: Origin, everyone: bool) {
        let job = self.id();
        let lines: Vec<(u64, u64)> =
            self.lines.iter().filter(|(_, l)| l.state == State::Modified).map(|(r, l)| (*r, l.wseq)).collect();
        for (r, _) in &lines {
            self.line(*r).writeback = true;
            self.touched.insert(*r);
        }
        let peers = if everyone { self.others() } else { 0 };
        let started_us = self.now_us;
        self.flushes.insert(
            job,
            FlushJob { origin, started_us, lines, written: 0, peers_left: peers, everyone, sync: None, failed: None },
        );
        for p in (0..8u8).filter(|p| peers & (1 << p) != 0) {
            let id = self.id();
            self.send_request(id, p, Msg::FlushReq { id }, Purpose::Flush(job));
        }
    }

    fn check_flushes(&mut self) {
        let ids: Vec<u64> = self.flushes.keys().copied().collect();
        for job in ids {
            let lines = &self.lines;
            let Some(j) = self.flushes.get_mut(&job) else { continue };
            j.written += j.lines[j.written..].iter().take_while(|(r, w)| !unwritten(lines, *r, *w)).count();
            let pending = j.written < j.lines.len();
            let j = &self.flushes[&job];
            if (pending || j.peers_left != 0)
                && j.failed.is_none()
                && self.now_us.saturating_sub(j.started_us) >= ACQUIRE_PATIENCE_US
            {
                // A peer that does not answer (or a write-back that cannot get its stripe
                // locks) fails the flush with the reason instead of holding it forever.
                let why = if j.peers_left != 0 {
                    format!("controllers with mask {:#04x} did not answer the flush", j.peers_left)
                } else {
                    "write-backs could not get their stripe locks (a peer does not answer)".to_string()
                };
                if let Some(j) = self.flushes.get_mut(&job) {
                    j.failed = Some(why);
                    j.peers_left = 0;
                }
                continue;
            }
            if (pending && j.failed.is_none()) || j.peers_left != 0 {
                continue;
            }
            match j.sync {
                None if j.failed.is_none() => {
                    let id = self.id();
                    self.members.insert(id, MemberUse::Sync(job));
                    if let Some(j) = self.flushes.get_mut(&job) {
                        j.sync = Some(Some(id));
                    }
                    self.member_io(Output::MemberSync { id });
                }
                Some(Some(_)) => {}
                _ => {
                    let Some(j) = self.flushes.remove(&job) else { continue };
                    match j.origin {
                        Origin::Host(id) => {
                            let result = match j.failed {
                                Some(e) => Err(HostError::Flush(e)),
                                None => Ok(Vec::new()),
                            };
                            self.out.push(Output::Reply { id, result });
                        }
                        Origin::Peer { node, id } => {
                            let msg = Msg::FlushDone { id, ok: j.failed.is_none() };
                            self.out.push(Output::Send { to: node, msg });
                        }
                    }
                }
            }
        }
    }

    // ---- time ----------------------------------------------------------------------------

    fn tick(&mut self, now_us: u64) {
        self.now_us = self.now_us.max(now_us);
        let now = self.now_us;
        let late: Vec<u64> =
            self.fabric.iter().filter(|(_, o)| o.sent_us + RETRANSMIT_US <= now).map(|(id, _)| *id).collect();
        for id in late {
            if let Some(o) = self.fabric.get_mut(&id) {
                o.sent_us = now;
                let (to, msg) = (o.to, o.msg.clone());
                self.counters.retransmits += 1;
                self.out.push(Output::Send { to, msg });
            }
        }
        // The deadlines of the lines changed since the last tick join the queues.
        for r in std::mem::take(&mut self.timed) {
            let Some(l) = self.lines.get(&r) else { continue };
            if l.state == State::Modified {
                self.writeback_due.insert((l.dirty_since_us + self.cfg.writeback_age_us, r));
            }
            for t in [l.retry_at_us, l.acquire_at_us].into_iter().filter(|t| *t != 0) {
                self.timer_due.insert((t, r));
            }
        }
        // The oldest dirty lines that are due, a few per tick; one busy now (replicating or
        // being written back) is looked at again next tick.
        let (mut old, mut busy) = (Vec::new(), Vec::new());
        while old.len() < WRITEBACKS_PER_TICK {
            let Some(&(due, r)) = self.writeback_due.first() else { break };
            if due > now {
                break;
            }
            self.writeback_due.pop_first();
            let Some(l) = self.lines.get(&r) else { continue };
            if l.state != State::Modified || l.dirty_since_us + self.cfg.writeback_age_us > now {
                continue;
            }
            if l.phase == Phase::Idle {
                old.push(r);
            } else {
                busy.push(r);
            }
        }
        for r in busy {
            self.writeback_due.insert((now + 1, r));
        }
        let mut retry = BTreeSet::new();
        while let Some(&(due, r)) = self.timer_due.first() {
            if due > now {
                break;
            }
            self.timer_due.pop_first();
            retry.insert(r);
        }
        for r in old {
            self.line(r).writeback = true;
            self.touched.insert(r);
        }
        for r in retry {
            let Some(l) = self.lines.get_mut(&r) else { continue };
            let (retry_due, acquire_due) =
                (l.retry_at_us != 0 && l.retry_at_us <= now, l.acquire_at_us != 0 && l.acquire_at_us <= now);
            if !retry_due && !acquire_due {
                continue;
            }
            let l = self.line(r);
            if retry_due {
                l.retry_at_us = 0;
            }
            if acquire_due {
                l.acquire_at_us = 0;
            }
            self.touched.insert(r);
        }
        self.retry_stripes(now);
    }

    /// Checks the machine's own invariants; the simulator calls it after every step.
    pub fn check(&self) -> Result<(), String> {
        let lb = self.line_len();
        for (r, l) in &self.lines {
            if l.state != State::Invalid && l.data.len() != lb {
                return Err(format!("n{} line {r} is {:?} with {} bytes", self.cfg.node, l.state, l.data.len()));
            }
            if matches!(l.phase, Phase::Replicating { .. } | Phase::Destaging { .. }) && l.state == State::Invalid {
                return Err(format!("n{} line {r} is {:?} without data", self.cfg.node, l.phase));
            }
            if l.state == State::Modified && l.clean_wseq >= l.wseq {
                return Err(format!("n{} line {r} is Modified but its content is on the members", self.cfg.node));
            }
            if let (Phase::Filling { locked: true, .. }, None) = (l.phase, self.cfg.mutation) {
                for s in self.stripes_of(*r) {
                    if !self.stripes.get(&s).is_some_and(|st| st.held && st.users > 0) {
                        return Err(format!("n{} reconstructs line {r} without stripe {s}'s lock", self.cfg.node));
                    }
                }
            }
            if let (Phase::Destaging { .. }, None) = (l.phase, self.cfg.mutation) {
                for s in self.stripes_of(*r) {
                    if !self.stripes.get(&s).is_some_and(|st| st.held && st.users > 0) {
                        return Err(format!("n{} writes line {r} back without stripe {s}'s lock", self.cfg.node));
                    }
                }
            }
        }
        for (s, st) in &self.stripes {
            if st.users > 0 && !st.held {
                return Err(format!("n{} uses stripe {s} without holding it", self.cfg.node));
            }
        }
        for (job, j) in &self.flushes {
            // The written prefix a flush skips stays written (`FlushJob::written`).
            for (r, w) in &j.lines[..j.written] {
                if unwritten(&self.lines, *r, *w) {
                    return Err(format!("n{} flush {job} counts line {r} written though it is not", self.cfg.node));
                }
            }
        }
        self.check_group()?;
        self.check_jobs()?;
        // Lines taken over from a controller that left may overfill the cache: those are
        // being evicted.
        self.room.check(self.cfg.node, &self.lines)?;
        self.presence.check(
            self.cfg.node,
            self.lines.iter().filter(|(_, l)| room::uses_room(l)).map(|(r, _)| *r),
            self.stripes.iter().filter(|(_, st)| st.held || st.acquiring.is_some()).map(|(s, _)| *s),
        )?;
        let resident = self.lines.values().filter(|l| l.state != State::Invalid && !l.evict).count();
        if resident > self.cfg.lines_max {
            return Err(format!("n{} holds {resident} lines, more than {}", self.cfg.node, self.cfg.lines_max));
        }
        if self.bases.len() > self.cfg.lines_max / 4 {
            return Err(format!(
                "n{} keeps {} replica bases, more than a quarter of its cache",
                self.cfg.node,
                self.bases.len()
            ));
        }
        if let Some((o, r)) = self.bases.keys().find(|k| self.replicas.contains_key(k)) {
            return Err(format!("n{}: n{o}'s line {r} is both a live replica and a kept base", self.cfg.node));
        }
        Ok(())
    }
}
