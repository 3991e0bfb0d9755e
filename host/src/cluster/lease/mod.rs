//! The controllers' leases on the members: how a controller on another host (or one that is
//! paused, or cut off from its peers) is proven dead without a fence agent, and how a
//! controller that lost its place stops before anyone takes over from it.
//!
//! A lease thread per controller renews its record on every member each `renew_us`
//! ([`disk`]), reads everyone's, and applies the [`rules`]: it moves its write gate's deadline
//! (`raid::fence`) after each good renewal, publishes which peers' leases are over (the
//! shell's [`DeathWatch`] asks), and fences the controller when its deadline passes or it
//! loses a conflict over reach: it closes the gate, waits for the member writes inside,
//! writes a record that says so (the others take over at once instead of after the expiry),
//! and ends the process. The argument and its timing assumptions: docs/protocol.md.

pub mod disk;
pub mod record;
pub mod rules;

use crate::amf::shell::net::NetStats;
use crate::amf::shell::{DeathWatch, TakeoverProgress};
use crate::raid::fence::{self, FENCED_EXIT_CODE, GATE};
use crate::raid::Array;
use record::Standing;
use rules::{Lease, Timing};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// What the lease thread tells the rest of the controller.
#[derive(Debug, Default)]
pub struct LeaseState {
    /// Peers whose leases are over (bit n: controller n).
    pub expired: AtomicU8,
    /// Peers whose record says they stopped clean.
    pub left: AtomicU8,
    /// Renewals that reached at least one member.
    pub renewals: AtomicU64,
    /// Renewals that reached none.
    pub renewals_failed: AtomicU64,
    /// The longest a renewal took, in microseconds.
    pub renew_us_max: AtomicU64,
    /// The member this controller is rebuilding, plus one (0: none); published in its record.
    pub rebuilding: AtomicU8,
    /// What the last record written said of `rebuilding`, the same way.
    pub rebuilding_written: AtomicU8,
    /// What each controller's last record said it was rebuilding, the same way.
    pub peers_rebuilding: [AtomicU8; 8],
    /// The peers' records as last read (`Lease::peers_json`).
    pub peers: std::sync::Mutex<Vec<serde_json::Value>>,
}

impl LeaseState {
    /// As JSON, for `amf status`.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "expired": self.expired.load(Relaxed),
            "renewals": self.renewals.load(Relaxed),
            "renewals_failed": self.renewals_failed.load(Relaxed),
            "renew_us_max": self.renew_us_max.load(Relaxed),
            "peers": self.peers.lock().map(|p| p.clone()).unwrap_or_default(),
            "write_deadline_in_ms": if GATE.leased() {
                serde_json::json!((GATE.deadline_ns().saturating_sub(fence::now_ns())) / 1_000_000)
            } else {
                serde_json::Value::Null
            },
        })
    }
}

/// The peers whose leases are over are dead: they fenced themselves or cannot write.
pub struct LeaseWatch(pub Arc<LeaseState>);

impl DeathWatch for LeaseWatch {
    fn dead(&mut self) -> u8 {
        // A controller that left clean wrote everything back: its exit is a stop.
        self.0.expired.load(Relaxed) & !self.0.left.load(Relaxed)
    }
}

/// Any of several proofs.
pub struct AnyOf(pub Vec<Box<dyn DeathWatch>>);

impl DeathWatch for AnyOf {
    fn dead(&mut self) -> u8 {
        self.0.iter_mut().fold(0, |m, w| m | w.dead())
    }
}

/// A running lease thread.
pub struct LeaseThread {
    /// What it found.
    pub state: Arc<LeaseState>,
    stop: Arc<AtomicBool>,
    /// How the stopped thread signs off: the controller left clean.
    clean: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Where a controller's lease lives and what it watches.
pub struct LeaseConfig {
    /// This controller.
    pub node: u8,
    /// Controllers in the cluster.
    pub nodes: u8,
    /// It joins a running membership (its records say `Joining` until it serves; otherwise
    /// `Starting`).
    pub joining: bool,
    /// The group (its members' paths are read at every renewal: a rebuild may replace one).
    pub array: Arc<Array>,
    /// Where the records start on every member.
    pub offset: u64,
    /// The times.
    pub timing: Timing,
    /// This process ([`new_incarnation`]; its hellos on the fabric name it too).
    pub incarnation: u64,
}

/// A name for this controller process, written in its lease records and said in its hellos:
/// a restart is another one.
pub fn new_incarnation() -> u64 {
    let ns = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64);
    (ns.unwrap_or(0) ^ (std::process::id() as u64) << 32 ^ rand::random::<u64>()).max(1)
}

fn now_us() -> u64 {
    fence::now_ns() / 1000
}

/// The members that carry leases: not a faulty one (nothing may write a member once its
/// failure is recorded; a replacement being rebuilt carries them).
fn member_paths(array: &Array) -> Vec<PathBuf> {
    array
        .member_status()
        .into_iter()
        .filter(|m| m.state != crate::raid::MemberState::Faulty)
        .filter_map(|m| m.path.map(PathBuf::from))
        .collect()
}

impl LeaseThread {
    /// Writes the first record and starts renewing. The fabric's heartbeats (`net`) give the
    /// reach; the shell's membership (`takeover`) says who is still in.
    pub fn start(
        cfg: LeaseConfig,
        state: Arc<LeaseState>,
        net: Arc<NetStats>,
        takeover: Arc<TakeoverProgress>,
    ) -> std::io::Result<LeaseThread> {
        cfg.timing.check().map_err(std::io::Error::other)?;
        let stop = Arc::new(AtomicBool::new(false));
        let incarnation = cfg.incarnation;
        let clean = Arc::new(AtomicBool::new(false));
        let (s, st, cl) = (state.clone(), stop.clone(), clean.clone());
        let thread = std::thread::Builder::new()
            .name("lease".into())
            .spawn(move || run(cfg, incarnation, net, takeover, s, (st, cl)))?;
        Ok(LeaseThread { state, stop, clean, thread: Some(thread) })
    }

    /// Stops renewing; the last record says this controller left clean (`clean`), or else
    /// (its stop left dirty lines) that it fenced itself: its write gate is closed, and once
    /// no member write of its is left the others take over at once, as after a death (if one
    /// does not end, the record stays as it was and they wait for its expiry).
    pub fn stop(mut self, clean: bool) {
        self.clean.store(clean, Relaxed);
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(
    cfg: LeaseConfig,
    incarnation: u64,
    net: Arc<NetStats>,
    takeover: Arc<TakeoverProgress>,
    state: Arc<LeaseState>,
    (stop, clean): (Arc<AtomicBool>, Arc<AtomicBool>),
) {
    let t = cfg.timing;
    let node = cfg.node;
    let all: u8 = if cfg.nodes >= 8 { 0xff } else { (1u8 << cfg.nodes) - 1 };
    let uuid = cfg.array.superblock().uuid;
    let mut disk = disk::LeaseDisk::new(cfg.offset, uuid);
    let mut lease = Lease::new(node, incarnation, t, now_us());
    loop {
        let start = now_us();
        let live = takeover.live.load(Relaxed) & all;
        let epoch = takeover.epoch.load(Relaxed);
        let serving = takeover.serving.load(Relaxed);
        let paths = member_paths(&cfg.array);
        if stop.load(Relaxed) {
            // A stop that left dirty lines (its write-back failed) is taken over like a death:
            // once no member write of its is left, at once, as a fence is.
            let standing = if clean.load(Relaxed) {
                Standing::Left
            } else if GATE.close(GATE_CLOSE_WAIT) {
                Standing::Fenced
            } else {
                eprintln!("amf: controller {node}: member writes did not end; the others wait for the lease to expire");
                standing_of(serving, cfg.joining)
            };
            let rec = lease.next_record(epoch, 0, standing);
            disk.write(&paths, &rec);
            return;
        }
        // Before the start barrier nobody hears anybody yet, and a joining controller is no
        // member: no conflicts over reach, only the deadline.
        let reach = if serving { net.heard_within(t.suspect_us * 1000) | 1 << node } else { all };
        let judged = if serving { live } else { 1 << node };
        if let Some(why) = lease.verdict(start, judged, reach) {
            fence_and_exit(node, &why, &mut disk, &paths, &mut lease, epoch, reach);
        }
        let mut rec = lease.next_record(epoch, reach, standing_of(serving, cfg.joining));
        rec.rebuilding = state.rebuilding.load(Relaxed).checked_sub(1);
        let ok = disk.write(&paths, &rec) > 0;
        if ok {
            state.rebuilding_written.store(rec.rebuilding.map_or(0, |m| m.saturating_add(1)), Relaxed);
        }
        lease.renewed(start, ok);
        let took = now_us().saturating_sub(start);
        state.renew_us_max.fetch_max(took, Relaxed);
        if ok {
            state.renewals.fetch_add(1, Relaxed);
            GATE.extend_to(lease.deadline_us().saturating_mul(1000));
        } else {
            state.renewals_failed.fetch_add(1, Relaxed);
        }
        let read_start = now_us();
        let recs = disk.read(&paths);
        lease.observed(read_start, &recs);
        for (n, r) in recs.iter().enumerate() {
            if let (Some(r), Some(slot)) = (r, state.peers_rebuilding.get(n)) {
                slot.store(r.rebuilding.map_or(0, |m| m.saturating_add(1)), Relaxed);
            }
        }
        lease.met(std::array::from_fn(|n| takeover.met[n].load(Relaxed)));
        state.expired.store(lease.expired(live), Relaxed);
        if let Ok(mut p) = state.peers.lock() {
            *p = lease.peers_json();
        }
        state.left.store(lease.left(), Relaxed);
        let next = start + t.renew_us;
        let now = now_us();
        if next > now {
            std::thread::sleep(Duration::from_micros(next - now));
        }
    }
}

fn standing_of(serving: bool, joining: bool) -> Standing {
    match (serving, joining) {
        (true, _) => Standing::Live,
        (false, false) => Standing::Starting,
        (false, true) => Standing::Joining,
    }
}

/// How long a controller that stops serving waits for its member writes to end before it
/// says on the members that it fenced itself.
const GATE_CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Closes the write gate, waits for the member writes inside, says so on the members (so the
/// survivors need not wait for the expiry) and ends the process.
fn fence_and_exit(
    node: u8,
    why: &str,
    disk: &mut disk::LeaseDisk,
    paths: &[PathBuf],
    lease: &mut Lease,
    epoch: u32,
    reach: u8,
) -> ! {
    eprintln!("amf: controller {node}: fencing itself: {why}; it stops writing the members and answering hosts");
    if GATE.close(GATE_CLOSE_WAIT) {
        let rec = lease.next_record(epoch, reach, Standing::Fenced);
        disk.write(paths, &rec);
    } else {
        eprintln!("amf: controller {node}: member writes did not end; the others wait for the lease to expire");
    }
    std::process::exit(FENCED_EXIT_CODE)
}

/// What a starting controller finds on the members.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Running {
    /// No peer serves: the cluster is starting (every controller meets at the start barrier).
    No,
    /// Peers serve (their records say so and move): this controller joins them.
    Yes,
}

/// Whether peers of `node` serve a running membership: a record that says `Live` (past its
/// start barrier) and that moves. Records left by an earlier run say `Left`, or stand still;
/// but a serving peer's renewals may stall too (members slow under load, a takeover's
/// resync), for up to its fence time before it stops itself. So "no" takes every `Live`
/// record standing still for the expiry time, as a peer's death does: a restarted controller
/// that took a stalled peer for a finished run would meet nobody at the start barrier, or
/// (if the others had not seen it die) be let in with a cold cache in place of the
/// controller whose dirty lines they hold.
pub fn find_running(array: &Array, offset: u64, node: u8, timing: Timing) -> Running {
    let mut disk = disk::LeaseDisk::new(offset, array.superblock().uuid);
    let serving = |recs: &[Option<record::Record>; 8]| -> Vec<(u8, u64, u64)> {
        recs.iter()
            .flatten()
            .filter(|r| r.node != node && r.standing == Standing::Live)
            .map(|r| (r.node, r.incarnation, r.seq))
            .collect()
    };
    let before = serving(&disk.read(&member_paths(array)));
    if before.is_empty() {
        return Running::No;
    }
    let began = std::time::Instant::now();
    let still_for = Duration::from_micros(timing.expire_us);
    let poll = Duration::from_micros(timing.renew_us / 2).max(Duration::from_millis(1));
    while began.elapsed() <= still_for {
        std::thread::sleep(poll);
        let after = serving(&disk.read(&member_paths(array)));
        if after.iter().any(|r| !before.contains(r)) {
            return Running::Yes;
        }
    }
    Running::No
}

/// Waits until the running peers have put controller `node`'s earlier life out of their
/// membership (their records' epochs say it is out: they took over from it), so that nothing
/// of this run reaches the members before they did. Its own record must stand still: one that
/// moves means another process runs as this controller.
pub fn wait_until_out(
    array: &Array,
    offset: u64,
    node: u8,
    (base_epoch, nodes): (u32, u8),
    timing: Timing,
    wait: Duration,
    stop: &AtomicBool,
) -> Result<(), String> {
    let mut disk = disk::LeaseDisk::new(offset, array.superblock().uuid);
    let mine = |recs: &[Option<record::Record>; 8]| recs.get(node as usize).copied().flatten();
    let first = disk.read(&member_paths(array));
    let first_own = mine(&first);
    let began = std::time::Instant::now();
    // Each peer's last record and when it last changed: only peers renewing now count (a dead
    // peer's record stands still with whatever epoch it died in).
    let mut last: [(Option<record::Record>, Option<std::time::Instant>); 8] = [(None, None); 8];
    for (n, r) in first.iter().enumerate() {
        last[n].0 = *r;
    }
    let fresh = Duration::from_micros(timing.fresh_us);
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let recs = disk.read(&member_paths(array));
        let own = mine(&recs);
        if own.is_some_and(|r| first_own.is_some_and(|f| f.seq != r.seq || f.incarnation != r.incarnation)) {
            return Err(format!("controller {node}'s lease record moves: another process runs as controller {node}"));
        }
        for (n, r) in recs.iter().enumerate() {
            if *r != last[n].0 {
                last[n] = (*r, Some(std::time::Instant::now()));
            }
        }
        let renewing: Vec<record::Record> = last
            .iter()
            .filter(|(r, at)| at.is_some_and(|t| t.elapsed() <= fresh) && r.is_some_and(|r| r.node != node))
            .filter_map(|(r, _)| r.filter(|r| r.standing == Standing::Live))
            .collect();
        let out = |r: &record::Record| crate::amf::shell::epoch_live(base_epoch, r.epoch, nodes) & (1 << node) == 0;
        if !renewing.is_empty() && renewing.iter().all(out) {
            return Ok(());
        }
        if began.elapsed() > wait || stop.load(Relaxed) {
            return Err(format!(
                "the running controllers did not take controller {node}'s earlier run out of their membership within \
                 {} s",
                wait.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
