//! The Array Management Function of one controller: a write-back cache kept coherent with the
//! other controllers' through the card, data moved over the fabric, members reached through
//! the primary. The method, step by step (each step is named where the code does it):
//!
//! 1. a host request arrives at any controller (`nbd` calls [`Amf`] through `nbd::Backend`);
//! 2. the AMF asks its card whether the line is shared: a line it holds exclusively is read
//!    and written with no message at all (`read::step2_local_hit`, `write::step2_exclusive`);
//! 3. otherwise it acquires through the card, which broadcasts only to the sharers (every peer
//!    when it does not know them):
//!    - write: an exclusive acquire is a write-invalidate round; every sharer drops its copy
//!      before the card completes (`write::step3_invalidate`); then the write is replicated to
//!      a peer and acknowledged only when two controllers hold it (`write::step4_replicate`);
//!    - read: a shared acquire learns the sharers; they are asked for the line and one that
//!      has it forwards it (`read::step3_search`); if none has it, the members are read;
//! 4. the AMF performs the operation on its cache line.
//!
//! The subtle parts and why they are safe are in docs/coherency.md.

pub mod card;
pub mod destage;
pub mod disk;
pub mod handler;
pub mod read;
pub mod write;

use crate::cache::{Busy, Cache, State};
use crate::fabric::Peer;
use amf_hdl_model::gen::structs::EventKind;
use card::CardPort;
use disk::Disk;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Errors of the coherency layer.
#[derive(Debug, thiserror::Error)]
pub enum CoherencyError {
    /// The card driver failed (no completion, broken registers, a dead card).
    #[error("card: {0}")]
    Engine(#[source] crate::engine::EngineError),
    /// The card completed a command with an error.
    #[error("card: {0}")]
    Card(String),
    /// Peers did not answer the card's broadcast in time.
    #[error("card broadcast for line {resource}: peers {missing:#04x} did not answer")]
    PeersSilent {
        /// Line.
        resource: u64,
        /// Mask of silent peers.
        missing: u8,
    },
    /// A fabric call failed.
    #[error(transparent)]
    Fabric(#[from] crate::fabric::FabricError),
    /// Member I/O failed on the primary.
    #[error(transparent)]
    Raid(crate::raid::RaidError),
    /// A request that makes no sense (sizes, ranges).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// A line stayed busy or kept changing owner for too long.
    #[error("line {0} is contended beyond the retry limit")]
    Contended(u64),
}

/// Counters that prove the method (see docs/coherency.md for each).
#[derive(Default, Debug)]
pub struct Counters {
    /// Reads and writes served.
    pub reads: AtomicU64,
    /// Writes served.
    pub writes: AtomicU64,
    /// Line reads served from this cache.
    pub hits: AtomicU64,
    /// Line reads that needed the line.
    pub misses: AtomicU64,
    /// Misses served from a peer's cache.
    pub remote_hits: AtomicU64,
    /// Line reads from the members (misses nobody could forward, write fills).
    pub disk_reads: AtomicU64,
    /// Line writes on a line already held exclusively: no message.
    pub writes_local: AtomicU64,
    /// Acquires the card decided locally (no broadcast).
    pub broadcasts_skipped: AtomicU64,
    /// Acquires that went to peers.
    pub broadcasts: AtomicU64,
    /// Exclusive acquires that went to peers (write-invalidate rounds).
    pub invalidate_rounds: AtomicU64,
    /// Invalidations of this node's lines by peers (events).
    pub invalidations_received: AtomicU64,
    /// Downgrades of this node's lines by peers' reads (events).
    pub downgrades_received: AtomicU64,
    /// Lines forwarded to peers.
    pub lines_forwarded: AtomicU64,
    /// Lines handed to the peer whose invalidate took them.
    pub handoffs: AtomicU64,
    /// Writes replicated to a peer before their acknowledgement.
    pub replications: AtomicU64,
    /// Writes made durable on the members before their acknowledgement (no peer answered).
    pub write_through: AtomicU64,
    /// Replicas held for peers.
    pub replicas_held: AtomicU64,
    /// Lines written back to the members.
    pub destaged_lines: AtomicU64,
    /// Member writes issued by destage (one per run of adjacent lines).
    pub destage_writes: AtomicU64,
    /// Operations retried after losing a line to a peer mid-way.
    pub retries: AtomicU64,
    /// Take-overs that installed a line older than a version this node had known (must stay 0).
    pub older_member_reads: AtomicU64,
}

macro_rules! snapshot {
    ($c:expr, $($f:ident),*) => { serde_json::json!({ $(stringify!($f): $c.$f.load(Relaxed)),* }) };
}

impl Counters {
    /// All counters as JSON.
    pub fn json(&self) -> serde_json::Value {
        snapshot!(
            self,
            reads,
            writes,
            hits,
            misses,
            remote_hits,
            disk_reads,
            writes_local,
            broadcasts_skipped,
            broadcasts,
            invalidate_rounds,
            invalidations_received,
            downgrades_received,
            lines_forwarded,
            handoffs,
            replications,
            write_through,
            replicas_held,
            destaged_lines,
            destage_writes,
            retries,
            older_member_reads
        )
    }
}

/// How a controller is set up.
pub struct AmfConfig {
    /// This node.
    pub node: u8,
    /// Nodes in the cluster (ids 0..nodes).
    pub nodes: u8,
    /// Membership epoch.
    pub epoch: u32,
    /// Bytes per cache line (the coherency resource).
    pub line_bytes: usize,
    /// Cache budget in bytes.
    pub cache_bytes: usize,
    /// Size of the group.
    pub capacity: u64,
}

/// Replicas of peers' dirty lines: (owner, line) -> (version, bytes).
type Replicas = std::collections::HashMap<(u8, u64), (u64, Vec<u8>)>;

/// `AMF_TRACE=DIR`: every coherency step of this controller, with wall-clock nanoseconds, in
/// DIR/trace-PID.log (a debugging aid; one file per process so lines never interleave).
fn trace_file() -> Option<&'static Mutex<std::fs::File>> {
    static FILE: std::sync::OnceLock<Option<Mutex<std::fs::File>>> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        let dir = std::env::var_os("AMF_TRACE")?;
        let path = std::path::Path::new(&dir).join(format!("trace-{}.log", std::process::id()));
        std::fs::File::create(path).ok().map(Mutex::new)
    })
    .as_ref()
}

pub(crate) fn trace_on() -> bool {
    trace_file().is_some()
}

pub(crate) fn trace_line(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    if let Some(f) = trace_file() {
        let ns = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let mut f = f.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(f, "{ns} {line}");
    }
}

macro_rules! trace {
    ($($t:tt)*) => { if $crate::coherency::trace_on() { $crate::coherency::trace_line(format_args!($($t)*)); } };
}
pub(crate) use trace;

/// How long one line operation keeps starting over after losing its line to other writers
/// before it fails as contended (a count of attempts ran out in under a second on a busy
/// machine with five writers on one line).
const RETRY_PATIENCE: Duration = Duration::from_secs(20);
/// First back-off between two attempts; it doubles per attempt up to `RETRY_PAUSE_MAX`.
const RETRY_PAUSE_MIN: Duration = Duration::from_micros(100);
/// Longest back-off between two attempts.
const RETRY_PAUSE_MAX: Duration = Duration::from_millis(32);
/// Longest wait for a busy line.
const LINE_WAIT_MAX: Duration = Duration::from_secs(30);

/// One controller's AMF.
pub struct Amf {
    cfg: AmfConfig,
    cache: Mutex<Cache>,
    changed: Condvar,
    card: CardPort,
    peers: Vec<Option<Arc<Peer>>>,
    disk: Disk,
    /// Replicas of peers' dirty lines: (owner, line) -> (version, bytes).
    replicas: Mutex<Replicas>,
    /// Counters.
    pub counters: Counters,
    /// Peers the card reported up (mask).
    peer_up: AtomicU8,
}

impl Amf {
    /// A controller's AMF over an open card, its peers' fabric endpoints and its member path.
    pub fn new(cfg: AmfConfig, card: CardPort, peers: Vec<Arc<Peer>>, disk: Disk) -> Amf {
        let (sets, ways) = card.geometry;
        let lines = (cfg.cache_bytes / cfg.line_bytes).max(1).min(sets as usize * ways);
        let cache = Cache::new(cfg.line_bytes, lines, sets, ways);
        let mut by_node: Vec<Option<Arc<Peer>>> = vec![None; 8];
        for p in peers {
            let n = p.node as usize;
            if n < by_node.len() {
                by_node[n] = Some(p);
            }
        }
        Amf {
            cfg,
            cache: Mutex::new(cache),
            changed: Condvar::new(),
            card,
            peers: by_node,
            disk,
            replicas: Mutex::new(Default::default()),
            counters: Counters::default(),
            peer_up: AtomicU8::new(0),
        }
    }

    /// This node.
    pub fn node(&self) -> u8 {
        self.cfg.node
    }

    /// Mask of the other nodes.
    fn others(&self) -> u8 {
        let all = if self.cfg.nodes >= 8 { 0xff } else { (1u8 << self.cfg.nodes) - 1 };
        all & !(1 << self.cfg.node)
    }

    fn peer(&self, n: u8) -> Option<&Arc<Peer>> {
        self.peers.get(n as usize).and_then(|p| p.as_ref())
    }

    /// The node this one replicates its dirty lines to.
    fn replica_peer(&self) -> Option<&Arc<Peer>> {
        let n = (self.cfg.node + 1) % self.cfg.nodes.max(1);
        if n == self.cfg.node {
            None
        } else {
            self.peer(n)
        }
    }

    fn lock(&self) -> MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies every event the card has written: the card wrote them before acking the peer
    /// that caused them, so after this no line a peer invalidated can be served.
    fn sync_events(&self, g: &mut Cache) -> Result<(), CoherencyError> {
        for (at, e) in self.card.drain_events()? {
            trace!("n{} event#{at} {:?} r{} from n{}", self.cfg.node, EventKind::from_raw(e.kind), e.resource, e.node);
            match EventKind::from_raw(e.kind) {
                Some(EventKind::Invalidate) => {
                    self.counters.invalidations_received.fetch_add(1, Relaxed);
                    g.invalidate(e.resource, e.node, at);
                }
                Some(EventKind::Downgrade) => {
                    self.counters.downgrades_received.fetch_add(1, Relaxed);
                    g.downgrade(e.resource, at);
                }
                Some(EventKind::PeerUp) => {
                    self.peer_up.fetch_or(1 << (e.node & 7), Relaxed);
                }
                Some(EventKind::PeerDown) => {
                    self.peer_up.fetch_and(!(1 << (e.node & 7)), Relaxed);
                }
                Some(EventKind::Error) | None => {
                    eprintln!("amf: node {}: card event {e:?}", self.cfg.node);
                }
            }
        }
        Ok(())
    }

    /// Waits until line `r` is free, then marks it busy with `kind`; events are applied.
    fn lock_line(&self, r: u64, kind: Busy) -> Result<MutexGuard<'_, Cache>, CoherencyError> {
        let start = Instant::now();
        let mut g = self.lock();
        loop {
            self.sync_events(&mut g)?;
            if g.try_begin(r, kind) {
                return Ok(g);
            }
            g = self.wait_changed(g, r, start)?;
        }
    }

    /// Waits (briefly) for another operation to change the cache while `r` waits on it; fails
    /// as contended once `LINE_WAIT_MAX` has passed since `start`.
    fn wait_changed<'a>(
        &'a self,
        g: MutexGuard<'a, Cache>,
        r: u64,
        start: Instant,
    ) -> Result<MutexGuard<'a, Cache>, CoherencyError> {
        if start.elapsed() > LINE_WAIT_MAX {
            return Err(CoherencyError::Contended(r));
        }
        Ok(self.changed.wait_timeout(g, Duration::from_millis(5)).map(|x| x.0).unwrap_or_else(|p| p.into_inner().0))
    }

    /// Before attempt `attempt` of an operation on `r` begun at `start`: backs off, or gives up
    /// once `RETRY_PATIENCE` has passed. The pause is random in [0, window), the window doubling
    /// per attempt up to `RETRY_PAUSE_MAX` (binary exponential back-off, as Ethernet): each new
    /// invalidate supersedes a writer still taking the line over, so writers that retry in step
    /// (the old fixed, linear pauses) can supersede each other for as long as they keep coming.
    fn before_attempt(&self, r: u64, attempt: u32, start: Instant) -> Result<(), CoherencyError> {
        if attempt == 0 {
            return Ok(());
        }
        if start.elapsed() > RETRY_PATIENCE {
            return Err(CoherencyError::Contended(r));
        }
        self.counters.retries.fetch_add(1, Relaxed);
        let window = RETRY_PAUSE_MIN.saturating_mul(1 << attempt.min(16)).min(RETRY_PAUSE_MAX);
        let pause = window.mul_f64(rand::random::<f64>());
        std::thread::sleep(pause);
        Ok(())
    }

    /// Ends the operation on `r`.
    fn unlock_line(&self, mut g: MutexGuard<'_, Cache>, r: u64) {
        g.end(r);
        drop(g);
        self.changed.notify_all();
    }

    /// Bytes of line `r` (the last line of the group may be short).
    fn line_len(&self, r: u64) -> usize {
        let lb = self.cfg.line_bytes as u64;
        (self.cfg.capacity.saturating_sub(r * lb)).min(lb) as usize
    }

    /// Splits a byte range into (line, offset in line, length) pieces.
    fn pieces(&self, offset: u64, len: u64) -> impl Iterator<Item = (u64, usize, usize)> + '_ {
        let lb = self.cfg.line_bytes as u64;
        let end = offset + len;
        let mut pos = offset;
        std::iter::from_fn(move || {
            if pos >= end {
                return None;
            }
            let r = pos / lb;
            let off = pos % lb;
            let n = (lb - off).min(end - pos);
            pos += n;
            Some((r, off as usize, n as usize))
        })
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<(), CoherencyError> {
        if offset.checked_add(len).is_none_or(|e| e > self.cfg.capacity) {
            return Err(CoherencyError::BadRequest(format!(
                "{len} bytes at {offset} exceed the group ({} bytes)",
                self.cfg.capacity
            )));
        }
        Ok(())
    }

    /// Makes room for line `r` (evicting: destage if dirty, release on the card); `r` is busy.
    fn make_room<'a>(&'a self, mut g: MutexGuard<'a, Cache>, r: u64) -> Result<MutexGuard<'a, Cache>, CoherencyError> {
        let start = Instant::now();
        loop {
            let v = match g.victim(r) {
                Ok(None) => return Ok(g),
                Ok(Some(v)) => v,
                Err(()) => {
                    g = self.wait_changed(g, r, start)?;
                    self.sync_events(&mut g)?;
                    continue;
                }
            };
            g.try_begin(v, Busy::Holding(None));
            drop(g);
            let evicted = self.evict(v);
            g = self.lock();
            g.end(v);
            self.changed.notify_all();
            evicted?;
        }
    }

    /// Writes `v` back if dirty, releases it on the card, drops it. `v` is busy.
    fn evict(&self, v: u64) -> Result<(), CoherencyError> {
        trace!("n{} evict r{v}", self.cfg.node);
        self.destage_line(v)?;
        // Released only once the members have the data: a later reader that finds no holder
        // reads them.
        self.card.call(amf_hdl_model::gen::structs::Opcode::Release, v)?;
        let mut g = self.lock();
        self.sync_events(&mut g)?;
        g.remove(v);
        Ok(())
    }

    /// Status for the admin endpoint.
    pub fn status(&self) -> serde_json::Value {
        let (stats, shape, events) = {
            let mut g = self.lock();
            let events = self.sync_events(&mut g);
            (g.stats(), g.shape(), events)
        };
        let card = self.card.state().unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }));
        serde_json::json!({
            "node": self.cfg.node,
            "nodes": self.cfg.nodes,
            "epoch": self.cfg.epoch,
            "primary": matches!(self.disk, Disk::Local(_)),
            "line_bytes": self.cfg.line_bytes,
            "cache": {
                "lines_max": shape.0, "card_sets": shape.1, "card_ways": shape.2,
                "lines": stats.lines, "dirty": stats.dirty, "evictions": stats.evictions,
            },
            "peers_up": self.peer_up.load(Relaxed),
            "replicas": self.replicas.lock().map(|r| r.len()).unwrap_or(0),
            "counters": self.counters.json(),
            "card_kind": self.card.kind(),
            "card_error": events.err().map(|e| e.to_string()),
            "card": card,
        })
    }

    /// Applies the card's events now (the background loop calls this so that cache state and
    /// counters do not wait for the next request).
    pub fn apply_events(&self) -> Result<(), CoherencyError> {
        let mut g = self.lock();
        self.sync_events(&mut g)
    }

    /// The card's state and counters (`amf card`).
    pub fn card_state(&self) -> Result<serde_json::Value, CoherencyError> {
        self.card.state()
    }

    /// The card's registers, decoded.
    pub fn card_registers(&self) -> Result<serde_json::Value, CoherencyError> {
        self.card.registers()
    }

    /// Size of the group.
    pub fn capacity(&self) -> u64 {
        self.cfg.capacity
    }
}

fn is_exclusive(s: State) -> bool {
    matches!(s, State::Exclusive | State::Modified)
}

impl crate::nbd::Backend for Amf {
    fn size(&self) -> u64 {
        self.cfg.capacity
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), crate::nbd::BackendError> {
        Amf::read(self, offset, buf).map_err(nbd_err)
    }
    fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), crate::nbd::BackendError> {
        Amf::write(self, offset, data, fua).map_err(nbd_err)
    }
    fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> Result<(), crate::nbd::BackendError> {
        Amf::write_zeroes(self, offset, len, fua).map_err(nbd_err)
    }
    fn trim(&self, _offset: u64, _len: u64) -> Result<(), crate::nbd::BackendError> {
        // Advisory, as on one controller: the data stays.
        Ok(())
    }
    fn flush(&self) -> Result<(), crate::nbd::BackendError> {
        Amf::flush(self).map_err(nbd_err)
    }
}

fn nbd_err(e: CoherencyError) -> crate::nbd::BackendError {
    match e {
        CoherencyError::BadRequest(_) => crate::nbd::BackendError::OutOfRange,
        other => crate::nbd::BackendError::Io(other.to_string()),
    }
}
