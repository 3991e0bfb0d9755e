//! The simulated cluster and its scheduler.

use super::history::{pattern, History, BLOCK_BYTES};
use crate::amf::card_terms::{opcode, take_submittable, waits};
use crate::amf::io::*;
use crate::amf::machine::{Config, Counters, Machine, State};
use crate::engine::{Backend, Driver, DriverConfig, LinkKey, ModelBackend};
use crate::raid::assemble::{assemble_as, create, CreateOptions};
use crate::raid::power_loss::VolatileCaches;
use crate::raid::{Array, Level};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;

mod lease;
mod power;
mod rejoin;
use lease::Leases;
pub use lease::{Partition, Pause};
pub use power::{PowerCut, PowerReport};

/// Card clock cycles per simulated microsecond (the nominal 100 MHz).
const CYCLES_PER_US: u64 = 100;
/// Accepted card frames kept for replays.
const ACCEPTED_FRAMES_KEPT: usize = 32;
/// How long a card waits for answers before it reports the silent peers.
const ACK_TIMEOUT_US: u64 = 3_000;
/// Machine ticks.
const TICK_US: u64 = 1_000;
/// Card clock steps while nothing else happens (timeouts fire on them).
const CARD_POLL_US: u64 = 50;
/// A run that has not finished by then is stuck (a liveness failure).
const TIME_LIMIT_US: u64 = 30_000_000;
/// Commands a node keeps in its card's ring at once.
const CARD_INFLIGHT_MAX: usize = 200;
/// Pumps (with completions and events both) in which the last completion is reaped late.
const REAP_RACE_PPM: u32 = 300_000;
/// Rounds of feeding card output back into machines per event before it is called a loop.
const PUMP_ROUNDS_MAX: usize = 10_000;

/// Fault knobs (ppm: per million messages).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Faults {
    /// Largest fabric delay; messages are reordered by their random delays.
    pub fabric_delay_us_max: u64,
    /// Fabric messages lost.
    pub fabric_loss_ppm: u32,
    /// Fabric messages delivered twice.
    pub fabric_dup_ppm: u32,
    /// Largest card-link delay.
    pub link_delay_us_max: u64,
    /// Link frames lost.
    pub link_loss_ppm: u32,
    /// Link frames delivered twice.
    pub link_dup_ppm: u32,
    /// Largest member I/O latency.
    pub member_latency_us_max: u64,
    /// Garbage injected per million events: corrupt frames to cards, stale-epoch fabric
    /// messages to machines (both must be dropped and counted, nothing else changes).
    pub garbage_ppm: u32,
    /// A member fails in one controller's view (its path to the disk broke) at a time; the
    /// others learn it only through the group resource.
    pub member_fail: Option<MemberFail>,
    /// A controller dies (kill -9) and the others take over.
    pub crash: Option<Crash>,
    /// A controller stops for a while (SIGSTOP); past its lease the others take over and it
    /// fences itself when it resumes.
    pub pause: Option<Pause>,
    /// A controller is cut off from the others' fabric and card link (not from the members).
    pub partition: Option<Partition>,
    /// The members answer slowly for a while (a disk retrying, a saturated path).
    pub slow: Option<SlowMembers>,
    /// The power goes for every controller and member at once.
    pub power_cut: Option<PowerCut>,
}

/// A window in which member I/O takes up to `latency_us_max` (instead of the seed's usual
/// latency): write-backs and fills hold their lines and stripe locks that much longer, and
/// peers' acquires wait on them.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct SlowMembers {
    /// From when.
    pub at_us: u64,
    /// For how long.
    pub for_us: u64,
    /// The longest an I/O takes meanwhile.
    pub latency_us_max: u64,
}

/// A controller that dies: it stops at once (no step, no card, no member I/O of its own from
/// then on; what it sent is still in flight), the stripes it was writing are left with their
/// redundancy torn where its write-intent slot marks them, its clients reconnect to a
/// survivor, and after `detect_us` each survivor (at its own time) moves to a membership
/// without it.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Crash {
    /// The controller.
    pub node: u8,
    /// When.
    pub at_us: u64,
    /// How long until the membership says it is dead (the proof of its death).
    pub detect_us: u64,
    /// It is started again this long after the survivors took over from it, and joins them
    /// with a cold cache.
    pub restart_after_us: Option<u64>,
    /// Once it joined, the controller before it in ring order (whose replicas went elsewhere
    /// while it was out) dies this long after, for good.
    pub then_crash_us: Option<u64>,
}

/// The membership epoch at the start (the full membership's).
const BASE_EPOCH: u32 = 1;
/// Survivors hear of the new membership within this of each other.
const VIEW_SPREAD_US: u64 = 500;
/// A client of the dead controller reconnects to a survivor this long after the survivors
/// hear of its death.
const RECONNECT_US: u64 = 1_000;

/// A member that fails in one controller's view, found by a write of that controller's: the
/// write goes on without the member, and the machine hears of the failure before the write's
/// completion (as in the controller, where the write that finds a failure is already out).
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct MemberFail {
    /// The controller that sees it.
    pub node: u8,
    /// The member.
    pub member: usize,
    /// From when: the controller's first member write from then on finds it (or its tick, if
    /// it writes nothing for a while).
    pub at_us: u64,
}

/// A member failure armed but not found by a write yet is found at a tick after this long.
const MEMBER_FAIL_LATE_US: u64 = 5_000;

/// One simulated run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SimConfig {
    /// The seed everything comes from.
    pub seed: u64,
    /// Controllers.
    pub nodes: u8,
    /// RAID level.
    pub level: Level,
    /// Members.
    pub members: usize,
    /// Chunk bytes.
    pub chunk_bytes: u64,
    /// Stripes in the group.
    pub stripes: u64,
    /// Cache line bytes.
    pub line_bytes: u64,
    /// Lines each controller may cache.
    pub lines_max: usize,
    /// Lines the clients touch.
    pub working_lines: u64,
    /// Clients per controller (each runs its operations one after another).
    pub clients: usize,
    /// Operations per client.
    pub ops: usize,
    /// A controller that scrubs every stripe online while the clients run.
    pub scrub_node: Option<u8>,
    /// How long a line stays dirty before its background write-back (short: a run lasts tens
    /// of simulated milliseconds, and write-backs racing the protocol are what it looks for).
    pub writeback_age_us: u64,
    /// Buckets of the cards' presence filters, log2: a few, so that lines share them, or the
    /// card's default.
    pub presence_buckets_log2: u32,
    /// Faults.
    pub faults: Faults,
    /// A protocol rule broken on purpose (tests of the checkers).
    pub mutation: Option<crate::amf::machine::Mutation>,
}

impl SimConfig {
    /// The run seed `seed` stands for: shape, sizes and fault knobs drawn from it.
    pub fn from_seed(seed: u64) -> SimConfig {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x0005_eed0_fa3f);
        let (level, members) = match rng.gen_range(0..10) {
            0 => (Level::Raid0, rng.gen_range(2..=3)),
            1 => (Level::Raid1, rng.gen_range(2..=3)),
            2 => (Level::Raid10, 4),
            3..=4 => (Level::Raid6, rng.gen_range(4..=6)),
            _ => (Level::Raid5, rng.gen_range(3..=5)),
        };
        let line_bytes = 4096;
        let chunk_bytes = if rng.gen_bool(0.5) { 4096 } else { 8192 };
        let nodes = rng.gen_range(3..=5);
        let big = rng.gen_range(0..4) == 0;
        // One seed in three loses a member in one controller's view (not RAID0: it has no
        // redundancy, and the group would fail).
        let member_fail = (level != Level::Raid0 && rng.gen_range(0..3) == 0).then(|| MemberFail {
            node: rng.gen_range(0..nodes),
            member: rng.gen_range(0..members),
            at_us: rng.gen_range(200..=5_000),
        });
        SimConfig {
            seed,
            nodes,
            level,
            members,
            chunk_bytes,
            stripes: if big { 256 } else { 16 },
            line_bytes,
            // One seed in four caches more lines than the card's sharer table holds (256), so
            // acquires come back untracked and the table is only a filter.
            lines_max: if big { rng.gen_range(260..=400) } else { rng.gen_range(4..=16) },
            working_lines: if big { rng.gen_range(300..=500) } else { rng.gen_range(6..=24) },
            clients: rng.gen_range(1..=3),
            ops: rng.gen_range(30..=60),
            scrub_node: (rng.gen_range(0..3) == 0).then(|| rng.gen_range(0..nodes)),
            writeback_age_us: 50_000,
            presence_buckets_log2: amf_hdl_model::model::card::PRESENCE_BUCKETS_LOG2,
            faults: Faults {
                fabric_delay_us_max: rng.gen_range(5..=200),
                fabric_loss_ppm: if rng.gen_bool(0.5) { rng.gen_range(0..=20_000) } else { 0 },
                fabric_dup_ppm: if rng.gen_bool(0.5) { rng.gen_range(0..=20_000) } else { 0 },
                link_delay_us_max: rng.gen_range(1..=100),
                link_loss_ppm: if rng.gen_bool(0.3) { rng.gen_range(0..=5_000) } else { 0 },
                link_dup_ppm: if rng.gen_bool(0.3) { rng.gen_range(0..=5_000) } else { 0 },
                member_latency_us_max: rng.gen_range(5..=500),
                garbage_ppm: if rng.gen_bool(0.3) { 2_000 } else { 0 },
                member_fail,
                crash: None,
                pause: None,
                partition: None,
                slow: None,
                power_cut: None,
            },
            mutation: None,
        }
        .with_crash(&mut rng)
        .with_pause(&mut rng)
        .with_partition(&mut rng)
        .with_slow_members(&mut rng)
        .with_power_cut(&mut rng)
        .with_writeback_age(&mut rng)
        .with_small_presence_filter(&mut rng)
    }

    /// Half the seeds give the cards a presence filter of 2 to 8 buckets, so that lines share
    /// them (drawn last).
    fn with_small_presence_filter(mut self, rng: &mut StdRng) -> SimConfig {
        if rng.gen_bool(0.5) {
            self.presence_buckets_log2 = rng.gen_range(1..=3);
        }
        self
    }

    /// Half the seeds write dirty lines back sooner than 50 ms (drawn last, so that the knobs
    /// drawn before keep the values they had before this one existed).
    fn with_writeback_age(mut self, rng: &mut StdRng) -> SimConfig {
        if rng.gen_bool(0.5) {
            self.writeback_age_us = rng.gen_range(500..=20_000);
        }
        self
    }

    /// One seed in four has its members slow for a while (drawn after everything else).
    fn with_slow_members(mut self, rng: &mut StdRng) -> SimConfig {
        if rng.gen_range(0..4) == 0 {
            self.faults.slow = Some(SlowMembers {
                at_us: rng.gen_range(300..=8_000),
                for_us: rng.gen_range(2_000..=10_000),
                latency_us_max: rng.gen_range(1_000..=3_000),
            });
        }
        self
    }

    /// One seed in three of those without a death or a pause cuts a controller off: shorter
    /// than the lease's suspicion (everything resumes) or long enough that it fences itself
    /// (the others take over); both ways, or only what comes to it.
    fn with_partition(mut self, rng: &mut StdRng) -> SimConfig {
        if self.faults.crash.is_none() && self.faults.pause.is_none() && rng.gen_range(0..3) == 0 {
            let t = lease::SIM_LEASE;
            let for_us = if rng.gen_bool(0.4) {
                rng.gen_range(t.renew_us..t.suspect_us - t.renew_us)
            } else {
                rng.gen_range(t.suspect_us + t.settle_us + 3 * t.renew_us..=3 * t.expire_us)
            };
            self.faults.partition = Some(Partition {
                node: rng.gen_range(0..self.nodes),
                at_us: rng.gen_range(300..=8_000),
                for_us,
                deaf_only: rng.gen_bool(0.3),
                mute_only: false,
            });
            if let Some(p) = self.faults.partition.as_mut().filter(|p| !p.deaf_only) {
                p.mute_only = rng.gen_bool(0.3);
            }
        }
        self
    }

    /// One seed in three of those without a death pauses a controller: for less than its
    /// lease's deadline (it goes on), past the deadline but not the expiry (it fences itself
    /// when it resumes), or past the expiry (the others take over while it is paused).
    fn with_pause(mut self, rng: &mut StdRng) -> SimConfig {
        if self.faults.crash.is_none() && rng.gen_range(0..3) == 0 {
            let t = lease::SIM_LEASE;
            let for_us = match rng.gen_range(0..5) {
                0 | 1 => rng.gen_range(t.renew_us..t.fence_us - t.renew_us),
                // Past its deadline but not its expiry: it fences itself on resume and says so.
                2 => rng.gen_range(t.fence_us + t.renew_us..t.expire_us - t.renew_us),
                _ => rng.gen_range(t.expire_us + t.renew_us..=3 * t.expire_us),
            };
            self.faults.pause =
                Some(Pause { node: rng.gen_range(0..self.nodes), at_us: rng.gen_range(300..=8_000), for_us });
        }
        self
    }

    /// Half the seeds with no other controller fault and no member failure cut the power
    /// (drawn last). A member failure is left out: a stripe torn by the cut that also lost a
    /// member has lost that member's blocks (the RAID write hole, which the assembly refuses
    /// without --force).
    fn with_power_cut(mut self, rng: &mut StdRng) -> SimConfig {
        let f = &self.faults;
        let calm = f.crash.is_none() && f.pause.is_none() && f.partition.is_none() && f.member_fail.is_none();
        if calm && rng.gen_bool(0.5) {
            self.faults.power_cut =
                Some(PowerCut { at_us: rng.gen_range(300..=8_000), off_us: rng.gen_range(1_000..=5_000) });
        }
        self
    }

    /// One seed in three kills a controller (drawn last, so the rest of a seed's shape is as
    /// it was before crashes were simulated).
    fn with_crash(mut self, rng: &mut StdRng) -> SimConfig {
        self.faults.crash = (rng.gen_range(0..3) == 0).then(|| Crash {
            node: rng.gen_range(0..self.nodes),
            at_us: rng.gen_range(300..=8_000),
            detect_us: rng.gen_range(100..=3_000),
            // Half of them are started again (well after anything of their last life is in
            // flight: 500 us at most).
            restart_after_us: rng.gen_bool(0.5).then(|| rng.gen_range(2_000..=6_000)),
            then_crash_us: None,
        });
        if let Some(c) = self.faults.crash.as_mut().filter(|c| c.restart_after_us.is_some()) {
            c.then_crash_us = rng.gen_bool(0.5).then(|| rng.gen_range(500..=8_000));
        }
        self
    }
}

/// What a passing run did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// Hash of every input every machine received, in order, with its time: two runs of one
    /// seed must agree.
    pub trace_hash: u64,
    /// Machine steps.
    pub steps: u64,
    /// Simulated time.
    pub sim_us: u64,
    /// Host operations completed.
    pub ops: u64,
    /// Block reads checked against the history.
    pub reads_checked: u64,
    /// Member writes per controller (every controller writes the members itself).
    pub member_writes: Vec<u64>,
    /// Peers' requests the cards' presence filters answered without their hosts.
    pub filtered: u64,
    /// Each controller's counters.
    pub counters: Vec<Counters>,
    /// Garbage injected (dropped by cards and machines).
    pub garbage: u64,
    /// Of it, card frames a card had accepted, sent to it again (each dropped as replayed).
    pub replays: u64,
    /// Stripes the online scrub checked (0 when the seed runs none).
    pub scrubbed_online: u64,
    /// The controller that died, if one did.
    pub crashed: Option<u8>,
    /// Stripes the survivors resynced from its write-intent slot.
    pub resynced_after_crash: u64,
    /// Stripes it was writing when it died, left with their redundancy torn.
    pub torn_at_crash: u64,
    /// The controller that was paused, if one was.
    pub paused: Option<u8>,
    /// The controller that was cut off, if one was.
    pub partitioned: Option<u8>,
    /// A controller that fenced itself (a pause past its deadline), if one did.
    pub fenced: Option<u8>,
    /// A dead controller that was started again and joined the others, if one did.
    pub rejoined: Option<u8>,
    /// What the power cut lost and what its restart resynced, if the power went.
    pub power_cut: Option<PowerReport>,
    /// Lease renewals in the run.
    pub lease_renewals: u64,
}

#[derive(Clone, Debug)]
enum Ev {
    Frame {
        to: u8,
        bytes: amf_hdl_model::model::link_auth::WireFrame,
    },
    Fabric {
        to: u8,
        from: u8,
        epoch: u32,
        msg: Msg,
    },
    MemberDone {
        node: u8,
        id: u64,
        result: Result<Vec<u8>, String>,
        stripes: Vec<u64>,
    },
    MemberRead {
        node: u8,
        id: u64,
        offset: u64,
        len: u64,
    },
    Client(usize),
    Tick(u8),
    CardPoll,
    MemberFail(MemberFail),
    Crash(Crash),
    /// A survivor hears that the dead controller is out of the membership.
    View(u8),
    /// A controller renews its lease.
    Renew(u8),
    /// A controller stops.
    Pause(Pause),
    /// A paused controller goes on.
    Resume(u8),
    /// A dead controller starts again.
    Restart(u8),
    /// The power goes.
    PowerCut(PowerCut),
    /// The power comes back: every controller starts.
    PowerOn,
    /// A member hears that the restarted controller joins.
    Join(u8),
}

/// The survivors' resync of the dead controller's write-intent slot, one stripe at a time
/// through one survivor's machine (under the stripe locks, beside the clients).
struct Takeover {
    dead: u8,
    node: u8,
    stripes: Vec<u64>,
    next: usize,
    req: Option<u64>,
    done: bool,
}

#[derive(Clone, Debug)]
enum OpKind {
    Read { first: u64, count: u64 },
    Write { id: u64, first: u64, count: u64 },
    Flush,
}

struct Client {
    node: u8,
    /// The controller it started on (it goes back there once that one rejoined).
    home: u8,
    left: usize,
    op: Option<(u64, OpKind, u64)>,
}

struct Node {
    m: Machine,
    driver: Driver<ModelBackend>,
    card: ModelBackend,
    array: Array,
    card_cycles: u64,
    /// Member-state changes of `array` the machine has heard of.
    changes_seen: u64,
    /// A member failure to be found by this node's next member write.
    fail_armed: Option<MemberFail>,
    tags: BTreeMap<u32, (u64, CardOp)>,
    backlog: VecDeque<(u64, CardOp, u64)>,
    /// A new membership waits for the card to fetch the commands of the old one (new ones
    /// wait in the backlog meanwhile).
    view_due: bool,
    /// Completions and events in the card's order across looks (the shell's code).
    card_order: crate::amf::card_terms::CardOrder,
    /// With `events-before-completions`: completions left for the next look.
    held: Vec<amf_hdl_model::gen::structs::Completion>,
}

/// The card link's key of the cluster's `start`th full start (0: the first; a power cut
/// starts every controller again), from the seed. A new key at every full start, as
/// `amf cluster` makes one and docs/operations.md asks of a configured key: under one key the
/// cards of a new start would take a frame recorded in the last one (their counters and replay
/// windows start over at the same epoch), the weakness the link's authentication has across
/// full starts (docs/protocol.md, "Authenticated frames").
fn start_key(seed: u64, start: u32) -> LinkKey {
    LinkKey([seed as u32, (seed >> 32) as u32, 0x6c69_6e6b ^ start, 0x6b65_7921])
}

impl Node {
    /// Controller `n` starting in `epoch` (a restarted one: the epoch it joins in): it
    /// assembles the group with its own write-intent slot, opens a fresh card and a machine
    /// with a cold cache.
    fn start(
        cfg: &SimConfig,
        dir: &std::path::Path,
        n: u8,
        (epoch, key): (u32, LinkKey),
        caches: Option<&Arc<VolatileCaches>>,
    ) -> Result<Node, String> {
        let array = assemble_as(dir, false, n as usize).map_err(|e| format!("assemble: {e}"))?.array;
        Node::open(cfg, array, n, (epoch, key), caches)
    }

    /// Controller `n` on its assembled `array` (its members seen through `caches` when the
    /// run cuts the power).
    fn open(
        cfg: &SimConfig,
        array: Array,
        n: u8,
        (epoch, key): (u32, LinkKey),
        caches: Option<&Arc<VolatileCaches>>,
    ) -> Result<Node, String> {
        let peers = ((1u16 << cfg.nodes) - 1) as u8;
        if let Some(c) = caches {
            array.cache_members(c);
        }
        array.set_shared(true);
        let capacity = array.capacity();
        let stripe_bytes = array.geometry().stripe_bytes();
        let card = ModelBackend::with_presence_buckets_log2(cfg.presence_buckets_log2);
        let dcfg = DriverConfig {
            node: n,
            peers,
            epoch,
            ring_log2: 8,
            ack_timeout_cycles: (ACK_TIMEOUT_US * CYCLES_PER_US) as u32,
            heartbeat_cycles: 0,
            // Every card of a start under one key (`start_key`): frames are authenticated as in
            // a deployed cluster, and a replayed frame must be dropped (inject_garbage).
            link_key: Some(key),
        };
        let driver = Driver::open(card.clone(), dcfg).map_err(|e| format!("card: {e}"))?;
        let m = Machine::new(Config {
            node: n,
            nodes: cfg.nodes,
            epoch: 1,
            line_bytes: cfg.line_bytes,
            lines_max: cfg.lines_max,
            stripe_bytes,
            capacity: capacity - capacity % cfg.line_bytes,
            degraded: !array.degraded_members().is_empty(),
            writeback_age_us: cfg.writeback_age_us,
            presence_buckets_log2: driver.presence_buckets_log2(),
            mutation: cfg.mutation,
        });
        Ok(Node {
            m,
            driver,
            card,
            array,
            card_cycles: 0,
            // The machine hears of every change its assembly has seen at its first event.
            changes_seen: 0,
            fail_armed: None,
            tags: BTreeMap::new(),
            backlog: VecDeque::new(),
            view_due: false,
            card_order: Default::default(),
            held: Vec::new(),
        })
    }
}

struct World {
    cfg: SimConfig,
    rng: StdRng,
    /// The card's ring-write race alone draws from this (the rest of a seed's run is as it was
    /// before the race was modelled).
    race_rng: StdRng,
    /// Picks replayed card frames: a stream of its own, so that the other draws of a seed stay
    /// as they were before replays existed (the mutation seeds were found with them).
    replay_rng: StdRng,
    now_us: u64,
    seq: u64,
    queue: BTreeMap<(u64, u64), Ev>,
    nodes: Vec<Node>,
    clients: Vec<Client>,
    history: History,
    hasher: std::collections::hash_map::DefaultHasher,
    steps: u64,
    /// Stripe -> (node writing it, writes in flight, the byte of the stripe's data one of
    /// them starts at): one node's writes of a stripe are ordered by its own `Array`; two
    /// nodes' must never overlap. A crash tears that block's redundancy (seed 3317 once tore a
    /// mirror block nobody was writing, and a peer's fill of it, rightly without the stripe's
    /// lock, read the torn copy).
    writing: BTreeMap<u64, (u8, u32, u64)>,
    next_req: u64,
    reqs: BTreeMap<u64, usize>,
    ops_done: u64,
    garbage: u64,
    stale_sent: u64,
    /// The last card frames a card accepted (destination, frame): a party on the link replays
    /// them (inject_garbage), and the destination must drop every one.
    accepted_frames: VecDeque<(u8, amf_hdl_model::model::link_auth::WireFrame)>,
    /// Replays injected (each dropped).
    replays_sent: u64,
    final_flush: Option<u64>,
    /// The online scrub: (next stripe, its request in flight, stripes checked).
    scrub: Option<(u64, Option<u64>, u64)>,
    finished: bool,
    /// Controllers dead now.
    dead: u8,
    /// Controllers that died at some point (a restarted one too).
    ever_dead: u8,
    /// The membership's epoch (`flip_epoch` over `BASE_EPOCH`).
    epoch: u32,
    /// A controller that was started again and joined every member (its clients go back).
    rejoined: Option<u8>,
    /// Survivors that have not heard of the new membership yet.
    view_pending: u8,
    takeover: Option<Takeover>,
    leases: Leases,
    /// The members' volatile write caches (seeds that cut the power).
    caches: Option<Arc<VolatileCaches>>,
    /// What the power cut did.
    power: Option<PowerReport>,
    torn: u64,
    stripe_bytes: u64,
    blocks: u64,
    dir: PathBuf,
}

/// Runs one seed's simulation; Err names what a checker found (with the seed to replay).
pub fn run(cfg: SimConfig) -> Result<Report, String> {
    // Member files in memory when there is a tmpfs: a run is mostly small member I/O.
    let shm = std::path::Path::new("/dev/shm");
    let base = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
    // Unique per run: tests run the same seed on several threads of one process at once.
    static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = base.join(format!("amf-sim-{}-{}-{run}", std::process::id(), cfg.seed));
    let result = World::new(cfg.clone(), dir.clone()).and_then(|mut w| w.run());
    let _ = std::fs::remove_dir_all(&dir);
    let mutate = cfg.mutation.map(|m| format!(" --mutate {}", m.name())).unwrap_or_default();
    result.map_err(|e| format!("seed {}: {e}\n  replay: amf sim --seed {}{mutate}", cfg.seed, cfg.seed))
}

impl World {
    fn new(cfg: SimConfig, dir: PathBuf) -> Result<World, String> {
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let opts = CreateOptions {
            chunk_bytes: cfg.chunk_bytes,
            region_bytes: 0,
            ..CreateOptions::new(cfg.level, cfg.members, (1 << 20) + cfg.stripes * cfg.chunk_bytes)
        };
        create(&dir, &opts).map_err(|e| format!("create: {e}"))?;
        let caches = cfg.faults.power_cut.map(|_| VolatileCaches::new(cfg.members));
        let mut nodes = Vec::new();
        for n in 0..cfg.nodes {
            nodes.push(Node::start(&cfg, &dir, n, (BASE_EPOCH, start_key(cfg.seed, 0)), caches.as_ref())?);
        }
        let capacity = nodes[0].m.config().capacity;
        let stripe_bytes = nodes[0].array.geometry().stripe_bytes();
        let lines = (capacity / cfg.line_bytes).min(cfg.working_lines).max(1);
        let blocks = lines * cfg.line_bytes / BLOCK_BYTES as u64;
        let clients = (0..cfg.nodes as usize * cfg.clients)
            .map(|i| {
                let node = (i % cfg.nodes as usize) as u8;
                Client { node, home: node, left: cfg.ops, op: None }
            })
            .collect();
        let (nodes_count, mutation) = (cfg.nodes, cfg.mutation);
        Ok(World {
            rng: StdRng::seed_from_u64(cfg.seed),
            race_rng: StdRng::seed_from_u64(cfg.seed ^ 0x00ca_4d0e_4de4),
            replay_rng: StdRng::seed_from_u64(cfg.seed ^ 0x7265_706c_6179),
            cfg,
            now_us: 1,
            seq: 0,
            queue: BTreeMap::new(),
            nodes,
            clients,
            history: History::default(),
            hasher: Default::default(),
            steps: 0,
            writing: BTreeMap::new(),
            next_req: 1,
            reqs: BTreeMap::new(),
            ops_done: 0,
            garbage: 0,
            stale_sent: 0,
            accepted_frames: VecDeque::new(),
            replays_sent: 0,
            final_flush: None,
            scrub: None,
            finished: false,
            dead: 0,
            ever_dead: 0,
            epoch: BASE_EPOCH,
            rejoined: None,
            view_pending: 0,
            takeover: None,
            leases: Leases::new(nodes_count, World::lease_timing(mutation)),
            caches,
            power: None,
            torn: 0,
            stripe_bytes,
            blocks,
            dir,
        })
    }

    fn at(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        self.queue.insert((t, self.seq), ev);
    }

    fn chance(&mut self, ppm: u32) -> bool {
        ppm > 0 && self.rng.gen_range(0..1_000_000) < ppm
    }

    fn run(&mut self) -> Result<Report, String> {
        for c in 0..self.clients.len() {
            let t = self.rng.gen_range(1..100);
            self.at(t, Ev::Client(c));
        }
        for n in 0..self.cfg.nodes {
            self.at(TICK_US, Ev::Tick(n));
        }
        self.at(CARD_POLL_US, Ev::CardPoll);
        if let Some(f) = self.cfg.faults.member_fail {
            self.at(f.at_us, Ev::MemberFail(f));
        }
        if let Some(c) = self.cfg.faults.crash {
            self.at(c.at_us, Ev::Crash(c));
        }
        if let Some(p) = self.cfg.faults.pause {
            self.at(p.at_us, Ev::Pause(p));
        }
        if let Some(p) = self.cfg.faults.power_cut {
            self.at(p.at_us, Ev::PowerCut(p));
        }
        for n in 0..self.cfg.nodes {
            self.at(lease::SIM_LEASE.renew_us, Ev::Renew(n));
        }
        if self.cfg.scrub_node.is_some() {
            self.scrub = Some((0, None, 0));
            self.scrub_next()?;
        }
        while !self.finished {
            let Some(((t, _), ev)) = self.queue.pop_first() else {
                return Err("nothing left to run before the workload finished (a lost wake-up)".into());
            };
            if t > TIME_LIMIT_US {
                return Err(format!(
                    "stuck: {} of {} operations done by {t} us; {}",
                    self.ops_done,
                    self.total_ops(),
                    self.open()
                ));
            }
            self.now_us = t;
            for n in 0..self.nodes.len() {
                if self.alive(n as u8) {
                    self.advance_card(n);
                }
            }
            self.event(ev)?;
            self.pump()?;
        }
        self.final_checks()
    }

    fn total_ops(&self) -> u64 {
        (self.clients.len() * self.cfg.ops) as u64
    }

    fn open(&self) -> String {
        let open: Vec<String> =
            self.nodes.iter().enumerate().map(|(i, n)| format!("n{i}: {} open", n.m.requests_open())).collect();
        open.join(", ")
    }

    fn advance_card(&mut self, n: usize) {
        let target = self.now_us * CYCLES_PER_US;
        let node = &mut self.nodes[n];
        if target > node.card_cycles {
            node.card.run(target - node.card_cycles);
            node.card_cycles = target;
        }
    }

    fn alive(&self, n: u8) -> bool {
        self.dead & (1 << n) == 0
    }

    /// The lowest controller alive.
    fn first_alive(&self) -> u8 {
        (0..self.cfg.nodes).find(|n| self.alive(*n)).unwrap_or(0)
    }

    fn event(&mut self, ev: Ev) -> Result<(), String> {
        // A dead controller hears nothing and its own I/O completions never come.
        let to = match &ev {
            Ev::Frame { to, .. } | Ev::Fabric { to, .. } => Some(*to),
            Ev::MemberDone { node, .. }
            | Ev::MemberRead { node, .. }
            | Ev::Tick(node)
            | Ev::View(node)
            | Ev::Join(node)
            | Ev::Renew(node) => Some(*node),
            _ => None,
        };
        if to.is_some_and(|n| !self.alive(n)) {
            return Ok(());
        }
        // A paused controller's host side hears nothing until it resumes.
        let Some(ev) = self.defer_if_paused(ev) else { return Ok(()) };
        match ev {
            Ev::Frame { to, bytes } => {
                if self.nodes[to as usize].card.deliver(&bytes) {
                    if self.accepted_frames.len() == ACCEPTED_FRAMES_KEPT {
                        self.accepted_frames.pop_front();
                    }
                    self.accepted_frames.push_back((to, bytes));
                }
            }
            Ev::Fabric { to, from, epoch, msg } => {
                self.step(to, Input::Fabric { from, epoch, msg })?;
            }
            Ev::MemberDone { node, id, result, stripes } => {
                for s in stripes {
                    if let Some(w) = self.writing.get_mut(&s) {
                        w.1 -= 1;
                        if w.1 == 0 {
                            self.writing.remove(&s);
                        }
                    }
                }
                self.note_changes(node)?;
                self.step(node, Input::MemberDone { id, result })?;
            }
            Ev::MemberRead { node, id, offset, len } => {
                let mut buf = vec![0u8; len as usize];
                let mut result =
                    self.nodes[node as usize].array.read(offset, &mut buf).map(|_| buf).map_err(|e| e.to_string());
                if let (Some(w), Ok(buf)) = (self.torn_reconstruction(node, offset, len), result.as_mut()) {
                    // What a controller would read there: some blocks new, the parity old.
                    buf.fill(0xee ^ w);
                }
                self.note_changes(node)?;
                self.step(node, Input::MemberDone { id, result })?;
            }
            Ev::MemberFail(f) => self.nodes[f.node as usize].fail_armed = Some(f),
            Ev::Crash(c) => self.crash(c)?,
            Ev::View(n) => self.view(n)?,
            Ev::Renew(n) => self.renew(n)?,
            Ev::Pause(p) => self.pause(p),
            Ev::Resume(n) => self.resume(n)?,
            Ev::Restart(n) => self.restart(n)?,
            Ev::Join(n) => self.join(n)?,
            Ev::PowerCut(p) => self.power_cut(p)?,
            Ev::PowerOn => self.power_on()?,
            Ev::Client(c) => self.issue(c)?,
            Ev::Tick(n) => {
                if self.nodes[n as usize].fail_armed.is_some_and(|f| f.at_us + MEMBER_FAIL_LATE_US <= self.now_us) {
                    self.fail_armed_member(n);
                    self.note_changes(n)?;
                }
                self.step(n, Input::Tick { now_us: self.now_us })?;
                self.at(self.now_us + TICK_US, Ev::Tick(n));
            }
            Ev::CardPoll => {
                self.at(self.now_us + CARD_POLL_US, Ev::CardPoll);
                self.inject_garbage()?;
            }
        }
        Ok(())
    }

    /// As the controller's shell does: the machine hears of a change of its array's member
    /// states before any member completion that may have seen it.
    fn note_changes(&mut self, n: u8) -> Result<(), String> {
        let changes = self.nodes[n as usize].array.changes();
        if changes == self.nodes[n as usize].changes_seen {
            return Ok(());
        }
        self.nodes[n as usize].changes_seen = changes;
        self.step(n, Input::GroupChanged)
    }

    /// A read that may reconstruct data from the rest of its stripes (a member is out in the
    /// reader's view) while another node writes one of them: the node writing, whose write a
    /// real reconstruction would see half done. Member writes here are atomic, so the run
    /// returns garbage for such a read; a machine that used it fails the history check.
    fn torn_reconstruction(&self, n: u8, offset: u64, len: u64) -> Option<u8> {
        if self.nodes[n as usize].array.degraded_members().is_empty() || len == 0 {
            return None;
        }
        let sb = self.stripe_bytes;
        (offset / sb..=(offset + len - 1) / sb)
            .find_map(|s| self.writing.get(&s).map(|(w, _, _)| *w).filter(|w| *w != n))
    }

    /// Controller `c.node` dies.
    fn crash(&mut self, c: Crash) -> Result<(), String> {
        let n = c.node;
        if !self.alive(n) {
            return Ok(());
        }
        self.dead |= 1 << n;
        self.ever_dead |= 1 << n;
        self.epoch = crate::amf::shell::flip_epoch(BASE_EPOCH, self.epoch, 1 << n);
        if let Some(after) = c.restart_after_us {
            self.at(self.now_us + c.detect_us + VIEW_SPREAD_US + after, Ev::Restart(n));
        }
        let live = self.first_alive() as usize;
        // Its writes in flight are cut off: data written, redundancy not (where its slot says
        // it was writing: the bitmap's bit is on the members before any write of its region).
        let marked = self.nodes[live].array.slot_dirty_regions(n as usize).map_err(|e| format!("slot {n}: {e}"))?;
        let marked = self.nodes[live].array.region_stripes(&marked);
        let cut: Vec<(u64, u64)> =
            self.writing.iter().filter(|(_, (w, _, _))| *w == n).map(|(s, (_, _, at))| (*s, *at)).collect();
        // A torn stripe that also loses a member (before the resync makes it whole) loses the
        // member's blocks there: the RAID write hole, a documented two-fault limit. Seeds that
        // fail a member keep the dead controller's writes whole.
        let tear = self.cfg.faults.member_fail.is_none();
        for (s, at) in cut {
            self.writing.remove(&s);
            if tear && marked.contains(&s) && self.nodes[live].array.tear_redundancy(s, at) {
                self.torn += 1;
            }
        }
        // Its clients' requests are lost (a write among them is never acknowledged: either
        // outcome is allowed); they reconnect to a survivor.
        let survivors: Vec<u8> = (0..self.cfg.nodes).filter(|x| self.alive(*x)).collect();
        let reconnect = self.now_us + c.detect_us + VIEW_SPREAD_US + RECONNECT_US;
        for i in 0..self.clients.len() {
            if self.clients[i].node != n {
                continue;
            }
            self.clients[i].node = survivors[i % survivors.len()];
            if let Some((req, _, _)) = self.clients[i].op.take() {
                self.reqs.remove(&req);
                self.at(reconnect, Ev::Client(i));
            }
        }
        if self.cfg.scrub_node == Some(n) {
            self.scrub = None;
            self.cfg.scrub_node = None;
        }
        if self.final_flush.is_some() && n == 0 {
            self.final_flush = None;
        }
        for s in survivors {
            self.view_pending |= 1 << s;
            let t = self.now_us + c.detect_us + self.rng.gen_range(0..VIEW_SPREAD_US);
            self.at(t, Ev::View(s));
        }
        Ok(())
    }

    /// Survivor `n` moves to the membership without the dead controller, as the controller's
    /// shell does: once its card has fetched every command of the old epoch.
    fn view(&mut self, n: u8) -> Result<(), String> {
        // As the shells do: the dead controller's mirror copies may differ where it wrote
        // (marked before the new membership serves anything).
        let dead = self.dead.trailing_zeros() as usize;
        let array = &self.nodes[n as usize].array;
        let regions = array.slot_dirty_regions(dead).map_err(|e| format!("slot {dead}: {e}"))?;
        array.mark_unsynced(&array.region_stripes(&regions));
        if !self.move_to_membership(n, Ev::View(n))? {
            return Ok(());
        }
        if n == self.first_alive() {
            let dead = self.dead.trailing_zeros() as u8;
            let array = &self.nodes[n as usize].array;
            let regions = array.slot_dirty_regions(dead as usize).map_err(|e| format!("slot {dead}: {e}"))?;
            let mut stripes = array.region_stripes(&regions);
            if self.cfg.mutation == Some(crate::amf::machine::Mutation::SkipTakeoverResync) {
                stripes.clear();
            }
            self.takeover = Some(Takeover { dead, node: n, stripes, next: 0, req: None, done: false });
            self.takeover_next()?;
        }
        // The last survivor to move may be all the final flush waits for: a takeover with
        // nothing to resync ends at the first survivor's move, and with every client done
        // nothing else would ask again (seed 3732 stopped there until the time limit).
        self.maybe_final_flush()
    }

    /// Controller `n` moves to the current membership (`self.epoch`, the live controllers) as
    /// the shells do: once its card has fetched every command of the old one; until then
    /// `retry` comes back. True once it moved.
    fn move_to_membership(&mut self, n: u8, retry: Ev) -> Result<bool, String> {
        let node = &mut self.nodes[n as usize];
        node.view_due = true;
        if node.driver.unfetched().map_err(|e| format!("n{n} card: {e}"))? > 0 {
            self.at(self.now_us + CARD_POLL_US, retry);
            return Ok(false);
        }
        node.view_due = false;
        let live = !self.dead & (((1u16 << self.cfg.nodes) - 1) as u8);
        let epoch = self.epoch;
        node.driver.set_view(epoch, live);
        self.view_pending &= !(1 << n);
        self.step(n, Input::View { epoch, live })?;
        Ok(true)
    }

    /// The takeover's resync asks for its next stripe (scrub with repair, under the lock).
    fn takeover_next(&mut self) -> Result<(), String> {
        let Some(t) = self.takeover.as_mut() else { return Ok(()) };
        if t.req.is_some() || t.done {
            return Ok(());
        }
        let Some(&stripe) = t.stripes.get(t.next) else {
            t.done = true;
            let (dead, node) = (t.dead, t.node);
            let array = &self.nodes[node as usize].array;
            array.sync_members().map_err(|e| format!("sync after the takeover's resync: {e}"))?;
            array.clear_bitmap_slot(dead as usize).map_err(|e| format!("clearing slot {dead}: {e}"))?;
            return self.maybe_final_flush();
        };
        let id = self.next_req;
        self.next_req += 1;
        t.req = Some(id);
        let node = t.node;
        let req = HostReq::Stripe { stripe, job: StripeJob::Scrub { repair: true } };
        self.step(node, Input::Host { id, req })
    }

    fn fail_armed_member(&mut self, n: u8) {
        if let Some(f) = self.nodes[n as usize].fail_armed.take() {
            self.nodes[n as usize].array.fail_member(f.member, "injected by the simulator");
        }
    }

    fn inject_garbage(&mut self) -> Result<(), String> {
        if !self.chance(self.cfg.faults.garbage_ppm * 20) {
            return Ok(());
        }
        let to = self.rng.gen_range(0..self.cfg.nodes);
        self.garbage += 1;
        if !self.accepted_frames.is_empty() && self.replay_rng.gen_bool(0.5) {
            let k = self.replay_rng.gen_range(0..self.accepted_frames.len());
            let (to, bytes) = self.accepted_frames[k];
            self.replays_sent += 1;
            if self.alive(to) && self.nodes[to as usize].card.deliver(&bytes) {
                return Err(format!("card {to} accepted a replayed frame"));
            }
        }
        if self.rng.gen_bool(0.5) {
            // Random link frame bytes and a zero seal.
            let mut bytes = [0u8; amf_hdl_model::model::link_auth::WIRE_BYTES];
            self.rng.fill(&mut bytes[..32]);
            if self.nodes[to as usize].card.deliver(&bytes) {
                return Err("a card accepted a garbage frame".into());
            }
        } else {
            let from = (to + 1) % self.cfg.nodes;
            self.stale_sent += 1;
            let msg = Msg::DropReplica { id: 0, line: 0, wseq: u64::MAX };
            self.step(to, Input::Fabric { from, epoch: 0, msg })?;
        }
        Ok(())
    }

    /// A client starts its next operation (or the run its final flush).
    fn issue(&mut self, c: usize) -> Result<(), String> {
        if self.clients[c].left == 0 {
            return Ok(());
        }
        self.clients[c].left -= 1;
        if self.rejoined == Some(self.clients[c].home) {
            self.clients[c].node = self.clients[c].home;
        }
        let node = self.clients[c].node;
        let req = self.next_req;
        self.next_req += 1;
        let lb = self.cfg.line_bytes;
        let per_line = lb / BLOCK_BYTES as u64;
        let roll = self.rng.gen_range(0..100);
        let count =
            if self.rng.gen_bool(0.3) { per_line } else { self.rng.gen_range(1..=per_line + 2) }.min(self.blocks);
        let first = if count == per_line && self.rng.gen_bool(0.7) {
            self.rng.gen_range(0..self.blocks / per_line) * per_line
        } else {
            self.rng.gen_range(0..=self.blocks - count)
        };
        let offset = first * BLOCK_BYTES as u64;
        let (kind, input) = if roll < 4 {
            (OpKind::Flush, HostReq::Flush)
        } else if roll < 50 {
            (OpKind::Read { first, count }, HostReq::Read { offset, len: count * BLOCK_BYTES as u64 })
        } else {
            let mut data = vec![0u8; (count as usize) * BLOCK_BYTES];
            pattern(req, first, &mut data);
            let fua = self.rng.gen_range(0..10) == 0;
            self.history.write_started(req, first, count, fua, self.now_us);
            (OpKind::Write { id: req, first, count }, HostReq::Write { offset, data, fua })
        };
        self.clients[c].op = Some((req, kind, self.now_us));
        self.reqs.insert(req, c);
        self.step(node, Input::Host { id: req, req: input })
    }

    /// The online scrub asks for its next stripe (one at a time, beside the clients).
    fn scrub_next(&mut self) -> Result<(), String> {
        let (Some(node), Some((next, None, _))) = (self.cfg.scrub_node, self.scrub) else { return Ok(()) };
        if next >= self.nodes[node as usize].array.geometry().stripes() {
            return self.maybe_final_flush();
        }
        let id = self.next_req;
        self.next_req += 1;
        self.scrub = Some((next, Some(id), self.scrub.map_or(0, |s| s.2)));
        let req = HostReq::Stripe { stripe: next, job: StripeJob::Scrub { repair: false } };
        self.step(node, Input::Host { id, req })
    }

    fn scrub_done(&mut self, result: Result<Vec<u8>, HostError>) -> Result<(), String> {
        let Some((next, _, checked)) = self.scrub else { return Ok(()) };
        let bytes = result.map_err(|e| format!("online scrub of stripe {next}: {e}"))?;
        let c: crate::raid::scrub::StripeCheck =
            serde_json::from_slice(&bytes).map_err(|e| format!("online scrub of stripe {next}: {e}"))?;
        // A stripe a dead controller was writing is out of step until the takeover's resync
        // reaches it (its slot marks it; the scrub may get its lock first): expected there,
        // and the final scrub checks it after the resync.
        let resync_pending = match self.takeover.as_ref() {
            Some(t) => !t.done && t.stripes[t.next..].contains(&next),
            // Before the lowest survivor moved on, the dead controller's slot says.
            None if self.dead != 0 => {
                let (dead, live) = (self.dead.trailing_zeros() as usize, self.first_alive() as usize);
                let array = &self.nodes[live].array;
                array.slot_dirty_regions(dead).is_ok_and(|r| array.region_stripes(&r).contains(&next))
            }
            None => false,
        };
        if c.mismatch && !resync_pending {
            return Err(format!("the online scrub of stripe {next}, under its lock, found parity out of step"));
        }
        self.scrub = Some((next + 1, None, checked + !c.skipped as u64));
        self.scrub_next()
    }

    /// Once every client is done and the scrub too: a FLUSH through node 0 must put every
    /// acknowledged write on the members.
    fn maybe_final_flush(&mut self) -> Result<(), String> {
        let clients_done = self.clients.iter().all(|c| c.left == 0 && c.op.is_none());
        let scrub_done = self.scrub.is_none_or(|(next, req, _)| {
            req.is_none()
                && self.cfg.scrub_node.is_some_and(|n| next >= self.nodes[n as usize].array.geometry().stripes())
        });
        let takeover_done = self.view_pending == 0 && self.takeover.as_ref().is_none_or(|t| t.done);
        if !clients_done || !scrub_done || !takeover_done || self.final_flush.is_some() {
            return Ok(());
        }
        let id = self.next_req;
        self.next_req += 1;
        self.final_flush = Some(id);
        let node = (0..self.cfg.nodes)
            .find(|n| self.alive(*n) && self.leases.paused & (1 << n) == 0)
            .unwrap_or_else(|| self.first_alive());
        self.step(node, Input::Host { id, req: HostReq::Flush })
    }

    fn reply(&mut self, id: u64, result: Result<Vec<u8>, HostError>) -> Result<(), String> {
        if self.scrub.is_some_and(|(_, req, _)| req == Some(id)) {
            return self.scrub_done(result);
        }
        if let Some(t) = self.takeover.as_mut().filter(|t| t.req == Some(id)) {
            let stripe = t.stripes.get(t.next).copied().unwrap_or(0);
            result.map_err(|e| format!("the takeover's resync of stripe {stripe}: {e}"))?;
            t.req = None;
            t.next += 1;
            return self.takeover_next();
        }
        if self.final_flush == Some(id) {
            result.map_err(|e| format!("final flush: {e}"))?;
            self.finished = true;
            return Ok(());
        }
        let Some(c) = self.reqs.remove(&id) else { return Err(format!("reply to unknown request {id}")) };
        let Some((_, kind, start)) = self.clients[c].op.take() else { return Err("reply with no operation".into()) };
        let data = result.map_err(|e| format!("request {id} ({kind:?}) failed: {e}"))?;
        match kind {
            OpKind::Write { id, first, count } => {
                self.history.write_done(id, self.now_us);
                self.check_replicated(self.clients[c].node, id, first, count)?;
            }
            OpKind::Read { first, count } => {
                for (i, b) in data.chunks(BLOCK_BYTES).enumerate().take(count as usize) {
                    self.history.check_read(first + i as u64, b, start, self.now_us)?;
                }
            }
            OpKind::Flush => self.history.flush_done(start),
        }
        self.ops_done += 1;
        if self.clients[c].left > 0 {
            let t = self.now_us + self.rng.gen_range(0..50);
            self.at(t, Ev::Client(c));
        } else {
            self.maybe_final_flush()?;
        }
        Ok(())
    }

    /// One machine step and its outputs, then the checkers.
    fn step(&mut self, n: u8, input: Input) -> Result<(), String> {
        self.steps += 1;
        (self.now_us, n, &input).hash(&mut self.hasher);
        let dbg = std::env::var("AMF_SIM_TRACE").is_ok();
        if dbg {
            eprintln!("{} n{n} <- {:?}", self.now_us, crate::amf::sim::world::short(&input));
        }
        let outs = self.nodes[n as usize].m.step(input);
        if dbg {
            for o in &outs {
                eprintln!("{} n{n} -> {:?}", self.now_us, short_out(o));
            }
        }
        self.nodes[n as usize].m.check()?;
        for o in outs {
            self.output(n, o)?;
        }
        self.check_cluster()
    }

    /// How long a member I/O issued now takes.
    fn member_latency_us(&mut self) -> u64 {
        let max = match self.cfg.faults.slow {
            Some(w) if (w.at_us..w.at_us + w.for_us).contains(&self.now_us) => w.latency_us_max,
            _ => self.cfg.faults.member_latency_us_max,
        };
        self.rng.gen_range(1..=max)
    }

    fn output(&mut self, n: u8, o: Output) -> Result<(), String> {
        let f = self.cfg.faults.clone();
        match o {
            Output::Card { id, op, resource } => self.nodes[n as usize].backlog.push_back((id, op, resource)),
            Output::Send { to, msg } => {
                if to >= self.cfg.nodes || to == n {
                    return Err(format!("n{n} sent {msg:?} to n{to}"));
                }
                if !self.chance(f.fabric_loss_ppm) && !self.cut(n, to) {
                    let copies = if self.chance(f.fabric_dup_ppm) { 2 } else { 1 };
                    for _ in 0..copies {
                        let t = self.now_us + self.rng.gen_range(1..=f.fabric_delay_us_max);
                        let epoch = self.nodes[n as usize].m.config().epoch;
                        self.at(t, Ev::Fabric { to, from: n, epoch, msg: msg.clone() });
                    }
                }
            }
            Output::MemberRead { id, offset, len } => {
                let t = self.now_us + self.member_latency_us();
                self.at(t, Ev::MemberRead { node: n, id, offset, len });
            }
            Output::MemberWrite { id, offset, data, fua } => {
                let sb = self.stripe_bytes;
                let stripes: Vec<u64> = (offset / sb..=(offset + data.len() as u64 - 1) / sb).collect();
                for s in &stripes {
                    // The first byte of the stripe's data this write covers.
                    let at = if *s == offset / sb { offset % sb } else { 0 };
                    let w = self.writing.entry(*s).or_insert((n, 0, at));
                    if w.0 != n {
                        return Err(format!("n{n} and n{} write stripe {s} at the same time", w.0));
                    }
                    w.1 += 1;
                }
                self.fail_armed_member(n);
                let result = self.nodes[n as usize]
                    .array
                    .write(offset, &data, fua)
                    .map(|_| Vec::new())
                    .map_err(|e| e.to_string());
                let t = self.now_us + self.member_latency_us();
                self.at(t, Ev::MemberDone { node: n, id, result, stripes });
            }
            Output::MemberSync { id } => {
                let result = self.nodes[n as usize].array.flush().map(|_| Vec::new()).map_err(|e| e.to_string());
                let t = self.now_us + self.member_latency_us();
                self.at(t, Ev::MemberDone { node: n, id, result, stripes: Vec::new() });
            }
            Output::StripeJob { id, stripe, job } => {
                let result = crate::amf::shell::members::run_stripe_job(&self.nodes[n as usize].array, stripe, job);
                let t = self.now_us + self.member_latency_us();
                self.at(t, Ev::MemberDone { node: n, id, result, stripes: Vec::new() });
            }
            Output::Superblocks { id, record } => {
                let array = &self.nodes[n as usize].array;
                let result = if record { array.record_states() } else { array.load_states() };
                let degraded = !array.degraded_members().is_empty();
                let result = result.map(|_| vec![degraded as u8]).map_err(|e| e.to_string());
                let t = self.now_us + self.member_latency_us();
                self.at(t, Ev::MemberDone { node: n, id, result, stripes: Vec::new() });
            }
            Output::Reply { id, result } => self.reply(id, result)?,
        }
        Ok(())
    }

    /// Feeds card completions and events to the machines (in the card's order) and card frames
    /// to the link, until nothing moves.
    fn pump(&mut self) -> Result<(), String> {
        for _ in 0..PUMP_ROUNDS_MAX {
            let mut moved = false;
            for n in 0..self.nodes.len() {
                // (A paused controller's card runs on; its host does not read it.)
                if self.alive(n as u8) && self.leases.paused & (1 << n) == 0 {
                    moved |= self.pump_node(n)?;
                } else if self.alive(n as u8) {
                    moved |= self.card_frames_out(n);
                }
            }
            if !moved {
                return Ok(());
            }
        }
        Err("card and machines kept feeding each other without end".into())
    }

    fn pump_node(&mut self, n: usize) -> Result<bool, String> {
        let mut moved = false;
        let mut lost = Vec::new();
        {
            let node = &mut self.nodes[n];
            if !node.view_due {
                let acquires = node.tags.values().filter(|t| waits(t.1)).count();
                let room = CARD_INFLIGHT_MAX.saturating_sub(node.driver.in_flight());
                let got = take_submittable(&mut node.backlog, acquires, room);
                for (id, op, resource) in got.send {
                    let (code, wait, filtered) = opcode(op, resource);
                    let tag = node
                        .driver
                        .submit_with(code, resource, wait, filtered)
                        .map_err(|e| format!("n{n} card: {e}"))?;
                    node.tags.insert(tag, (id, op));
                    moved = true;
                }
                lost = got.lost;
            }
            node.card.run(0);
        }
        for id in lost {
            moved = true;
            self.step(n as u8, Input::CardDone { id, status: CardStatus::Conflict, sharers: 0 })?;
        }
        // As the shell looks: reap, read events, reap again. The card here does not run in
        // between, so a completion it wrote just after the first reap (before an event) is
        // modelled by moving the first reap's last completion to the second.
        let mut done = self.nodes[n].driver.reap().map_err(|e| format!("n{n} card: {e}"))?;
        let events = self.nodes[n].driver.events_indexed().map_err(|e| format!("n{n} card: {e}"))?;
        let mut late = self.nodes[n].driver.reap().map_err(|e| format!("n{n} card: {e}"))?;
        if !done.is_empty() && !events.is_empty() && self.race_rng.gen_range(0..1_000_000) < REAP_RACE_PPM {
            if let Some(c) = done.pop() {
                late.insert(0, c);
            }
        }
        if self.cfg.mutation == Some(crate::amf::machine::Mutation::EventsBeforeCompletions) {
            // The look before the fix: no second reap, so what it would find is handled in the
            // next look, after events the card wrote after it.
            let earlier = std::mem::replace(&mut self.nodes[n].held, late);
            moved |= !self.nodes[n].held.is_empty();
            late = Vec::new();
            done.splice(0..0, earlier);
        }
        done.extend(late);
        let node = &mut self.nodes[n];
        let tags = &mut node.tags;
        let mut unknown = None;
        let inputs = node.card_order.merge(done, events, |c| {
            let id = tags.remove(&c.tag).map(|t| t.0);
            if id.is_none() {
                unknown = Some(c.tag);
            }
            id
        });
        if let Some(tag) = unknown {
            return Err(format!("n{n}: completion for tag {tag}"));
        }
        for input in inputs {
            moved = true;
            self.step(n as u8, input)?;
        }
        Ok(self.card_frames_out(n) || moved)
    }

    /// Frames the card of node `n` sent, onto the link (lossy; cut where a partition is).
    fn card_frames_out(&mut self, n: usize) -> bool {
        let mut moved = false;
        let f = self.cfg.faults.clone();
        for o in self.nodes[n].card.take_outgoing() {
            moved = true;
            for to in 0..self.cfg.nodes {
                if o.dst_mask & (1 << to) == 0 || self.chance(f.link_loss_ppm) || self.cut(n as u8, to) {
                    continue;
                }
                let copies = if self.chance(f.link_dup_ppm) { 2 } else { 1 };
                for _ in 0..copies {
                    let t = self.now_us + self.rng.gen_range(1..=f.link_delay_us_max);
                    self.at(t, Ev::Frame { to, bytes: o.bytes });
                }
            }
        }
        moved
    }

    /// At the acknowledgement of write `id` by node `n`: every block of it that `n` still holds
    /// dirty is also in `n`'s replica at its replica peer, or on the members.
    fn check_replicated(&self, n: u8, id: u64, first: u64, count: u64) -> Result<(), String> {
        let node = &self.nodes[n as usize];
        let lb = self.cfg.line_bytes;
        for b in first..first + count {
            let r = b * BLOCK_BYTES as u64 / lb;
            let at = (b * BLOCK_BYTES as u64 % lb) as usize;
            let mut want = vec![0u8; BLOCK_BYTES];
            pattern(id, b, &mut want);
            let ours = node.m.line_data(r).map(|d| &d[at..at + BLOCK_BYTES]);
            if node.m.line_state(r) != State::Modified || ours != Some(want.as_slice()) {
                continue;
            }
            // Wherever it is (the machine's own idea of its holder is what is checked; one that
            // died a moment ago counts until the writer moved on).
            let held = (0..self.cfg.nodes).filter(|p| *p != n).any(|p| {
                self.nodes[p as usize].m.replicas().get(&(n, r)).map(|(_, d)| &d[at..at + BLOCK_BYTES])
                    == Some(want.as_slice())
            });
            let mut members = vec![0u8; BLOCK_BYTES];
            let _ = node.array.read(b * BLOCK_BYTES as u64, &mut members);
            if !held && members != want {
                return Err(format!(
                    "write {id} acknowledged by n{n} while no controller holds a replica of block {b}"
                ));
            }
        }
        Ok(())
    }

    /// Single writer per line and per stripe, and a replica for every acknowledged dirty line.
    fn check_cluster(&self) -> Result<(), String> {
        let mut lines: BTreeMap<u64, (u32, u32)> = BTreeMap::new();
        let mut stripes: BTreeMap<u64, u8> = BTreeMap::new();
        for (i, node) in self.nodes.iter().enumerate().filter(|(i, _)| self.alive(*i as u8)) {
            for (r, s) in node.m.resident() {
                let e = lines.entry(r).or_default();
                if matches!(s, State::Exclusive | State::Modified) {
                    e.0 += 1;
                } else {
                    e.1 += 1;
                }
                if e.0 > 1 || (e.0 == 1 && e.1 > 0) {
                    return Err(format!("line {r}: an exclusive copy and another copy at once (n{i} holds {s:?})"));
                }
            }
            for s in node.m.stripes_held() {
                if let Some(other) = stripes.insert(s, i as u8) {
                    return Err(format!("stripe {s}: locked by n{other} and n{i} at once"));
                }
            }
        }
        // One replica per line at most among the controllers alive: of two, the older could
        // be taken over after its owner's death and undo the newer write.
        let mut held: BTreeMap<(u8, u64), Vec<u8>> = BTreeMap::new();
        for (h, node) in self.nodes.iter().enumerate().filter(|(h, _)| self.alive(*h as u8)) {
            for (o, r) in node.m.replicas().keys().filter(|(o, _)| self.alive(*o)) {
                held.entry((*o, *r)).or_default().push(h as u8);
            }
        }
        if let Some(((o, r), at)) = held.iter().find(|(_, at)| at.len() > 1) {
            return Err(format!("n{o}'s line {r} has replicas at {at:?} at once"));
        }
        // Every acknowledged dirty line has one (at a controller that may have died a moment
        // ago: its owner has not moved on yet).
        for (i, node) in self.nodes.iter().enumerate().filter(|(i, _)| self.alive(*i as u8)) {
            if node.m.replica_node().is_none() {
                continue;
            }
            for (r, data) in node.m.dirty_idle() {
                let found = (0..self.cfg.nodes).filter(|p| *p as usize != i).any(|p| {
                    self.nodes[p as usize].m.replicas().get(&(i as u8, r)).is_some_and(|(_, d)| d.as_slice() == data)
                });
                if !found {
                    return Err(format!("n{i}'s dirty line {r} is acknowledged but no controller has a replica of it"));
                }
            }
        }
        Ok(())
    }

    fn final_checks(&mut self) -> Result<Report, String> {
        for (i, n) in self.nodes.iter().enumerate().filter(|(i, _)| self.alive(*i as u8)) {
            if n.m.dirty_lines() != 0 {
                return Err(format!("n{i} kept {} dirty lines after the final flush", n.m.dirty_lines()));
            }
        }
        let stale: u64 = self.nodes.iter().map(|n| n.m.counters.stale_epoch).sum();
        // Messages of the old membership still in flight when it changed are dropped too.
        if stale != self.stale_sent && (self.ever_dead == 0 || stale < self.stale_sent) {
            return Err(format!("{} stale-epoch messages sent, {stale} dropped", self.stale_sent));
        }
        let now = self.now_us + 1;
        // As a fresh assembly would: a survivor reads what the superblocks say now.
        let first = self.first_alive() as usize;
        self.nodes[first].array.load_states().map_err(|e| format!("final superblock read: {e}"))?;
        let blocks: Vec<u64> = self.history.blocks().collect();
        for b in blocks {
            let mut buf = vec![0u8; BLOCK_BYTES];
            self.nodes[first].array.read(b * BLOCK_BYTES as u64, &mut buf).map_err(|e| format!("final read: {e}"))?;
            self.history
                .check_read(b, &buf, now, now)
                .map_err(|e| format!("on the members after the final flush: {e}"))?;
        }
        let scrub = crate::raid::scrub::scrub(&self.nodes[first].array, false, &|_, _| {})
            .map_err(|e| format!("scrub: {e}"))?;
        if scrub.mismatches != 0 {
            return Err(format!(
                "scrub: {} stripes with parity out of step: {:?}",
                scrub.mismatches, scrub.mismatched_stripes
            ));
        }
        let _ = &self.dir;
        Ok(Report {
            seed: self.cfg.seed,
            trace_hash: self.hasher.finish(),
            steps: self.steps,
            sim_us: self.now_us,
            ops: self.ops_done,
            reads_checked: self.history.reads_checked,
            member_writes: self.nodes.iter().map(|n| n.m.counters.member_writes).collect(),
            filtered: self.nodes.iter().map(|n| n.driver.presence_filtered() as u64).sum(),
            counters: self.nodes.iter().map(|n| n.m.counters).collect(),
            garbage: self.garbage,
            replays: self.replays_sent,
            scrubbed_online: self.scrub.map_or(0, |s| s.2),
            crashed: self.cfg.faults.crash.map(|c| c.node).or(self.leases.taken_over),
            resynced_after_crash: self.takeover.as_ref().map_or(0, |t| t.next as u64),
            torn_at_crash: self.torn,
            paused: self.cfg.faults.pause.map(|p| p.node),
            partitioned: self.cfg.faults.partition.map(|p| p.node),
            fenced: self.leases.fenced,
            rejoined: self.rejoined,
            power_cut: self.power,
            lease_renewals: self.leases.renewals,
        })
    }
}

pub(crate) fn short(i: &Input) -> String {
    let s = format!("{i:?}");
    s.chars().take(160).collect()
}
fn short_out(o: &Output) -> String {
    let s = format!("{o:?}");
    s.chars().take(160).collect()
}
