//! The controller's shell around the AMF state machine: one event-loop thread owns the
//! machine, the card driver, the NBD server's connections and the fabric's incoming ones
//! (nothing is locked around them). It sleeps in one poll over those sockets, the card's
//! interrupt and its inbox's wake; member workers (and status, leave and maintenance calls)
//! talk to it through the inbox. The loop feeds the machine
//! the card's completions and events in the card's order (by `events_before`), fabric
//! messages, member I/O completions and ticks, and carries out what the machine asks: card
//! commands, fabric sends (written by the loop, non-blocking), member I/O (to a worker pool
//! over this controller's own `Array`) and host replies.

mod join;
mod leave;
mod maintenance;
pub mod members;
pub mod net;
mod port;
mod takeover;

pub use port::{call, HostPort, Inbox, NbdPort};

pub use takeover::{epoch_live, flip_epoch, DeathWatch, TakeoverProgress};

use super::card_terms::{opcode, take_submittable, waits, CardOrder};
use super::io::*;
use super::machine::{Config, Machine};
use crate::engine::AnyCard;
use crate::engine::{Driver, DriverConfig};
use crate::nbd::{EventLoop, LoopWake};
use crate::raid::Array;
use crossbeam_channel::{Receiver, Sender, TryRecvError};
use leave::{Leave, LEAVE_SLOW, LEAVE_WAIT};
use std::collections::{BTreeMap, VecDeque};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the loop receives.
pub enum Event {
    /// A host request and where its answer goes.
    Host {
        /// The request.
        req: HostReq,
        /// The answer.
        reply: Reply,
    },
    /// An input for the machine as it came: a finished member I/O (`Input::MemberDone`).
    Input(Input),
    /// A status snapshot.
    Status(Sender<serde_json::Value>),
    /// Write back everything, tell the peers, wait (bounded) for theirs, then end the loop.
    Leave(Sender<LeaveReport>),
    /// Serve NBD on the loop's thread.
    Nbd(Box<port::NbdStart>),
    /// End the loop at once, as a crash would: nothing written back, nothing said.
    #[cfg(test)]
    Crash,
}

/// Where a host request's answer goes: a channel someone waits on, or a call (the NBD event
/// loop's completion, which wakes it).
pub enum Reply {
    /// Sent on a channel.
    Channel(Sender<Result<Vec<u8>, HostError>>),
    /// Called once.
    Call(CallOnce),
}

/// A call made once: with the answer, or with an error if it is dropped unanswered (a loop
/// that ended), so that whoever waits for it (an NBD connection's count of requests in
/// flight) is never left waiting.
pub struct CallOnce(Option<AnswerFn>);

/// What a [`CallOnce`] calls.
pub type AnswerFn = Box<dyn FnOnce(Result<Vec<u8>, HostError>) + Send>;

impl Drop for CallOnce {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f(Err(HostError::Card("the controller stopped before answering".into())));
        }
    }
}

impl Reply {
    fn send(self, result: Result<Vec<u8>, HostError>) {
        match self {
            Reply::Channel(tx) => {
                let _ = tx.send(result);
            }
            Reply::Call(mut c) => {
                if let Some(f) = c.0.take() {
                    f(result)
                }
            }
        }
    }
}

/// How a controller left.
#[derive(Clone, Debug)]
pub struct LeaveReport {
    /// Its write-back failed: the group must stay dirty.
    pub write_back_error: Option<String>,
    /// Peers that did not say they left clean within the wait.
    pub peers_unconfirmed: Vec<u8>,
}

/// How often a controller says hello to its peers once they all answered (the fabric's
/// heartbeat; see `cluster/lease`).
const HEARTBEAT: Duration = Duration::from_millis(100);
/// Machine ticks.
const TICK: Duration = Duration::from_millis(1);
/// The loop's wait for input while card commands are in flight, for a card without an
/// interrupt (its rings are polled).
const BUSY_WAIT: Duration = Duration::from_micros(50);
/// With an interrupt the loop is woken by the card; it looks at the rings this often anyway,
/// so a lost interrupt costs latency, never a hang.
const IRQ_FALLBACK: Duration = Duration::from_millis(1);
/// The loop's wait when nothing is in flight.
const IDLE_WAIT: Duration = Duration::from_millis(1);
/// The loop's wait when nothing is in flight and no timer of the machine is set (an idle
/// controller): input wakes the loop at once, so this bounds only what the loop looks at by
/// polling (a member failure the member check found, the lease's fence), and the loop still
/// wakes for each heartbeat and deaths watch. A 1 ms wait made an idle controller wake a
/// thousand times a second for nothing (about 3% of a core here).
const QUIET_WAIT: Duration = Duration::from_millis(10);
/// Socket events the loop takes from one poll (more wait for the next).
const POLL_EVENTS_MAX: usize = 1024;
/// Fetches whose latency is being timed at once.
const FETCHES_TIMED_MAX: usize = 4096;
/// Card commands kept in the ring at once.
const CARD_INFLIGHT_MAX: usize = 200;
/// Debug builds check the machine's invariants in at most one part in this many of the loop's
/// time.
const CHECK_TIME_SHARE_INVERSE: u32 = 10;
/// Events the loop takes in one round before it looks at the card, the clock and the fabric
/// again. A steady stream of events (a leave's write-back completing thousands of member
/// writes) once held a round for over a second: nothing it queued for the fabric was sent,
/// its heartbeats included, and peers that stopped hearing it fenced themselves.
const EVENTS_PER_ROUND_MAX: usize = 1024;
/// How long a starting controller waits for every peer's hello.
pub const HELLO_WAIT: Duration = Duration::from_secs(120);

/// Where a controller's shell runs.
pub struct ShellConfig {
    /// The machine's configuration.
    pub machine: Config,
    /// The card.
    pub card: AnyCard,
    /// Card cycles a broadcast waits for answers.
    pub ack_timeout_cycles: u32,
    /// This controller's assembly of the group.
    pub array: Arc<Array>,
    /// The fabric listener.
    pub fabric: TcpListener,
    /// The peers' fabric addresses.
    pub peers: Vec<(u8, SocketAddr)>,
    /// Member I/O threads.
    pub member_workers: usize,
    /// Which peers are dead for sure (the membership's proof); None: no takeover (a peer that
    /// stops answering only makes the requests that need it fail).
    pub deaths: Option<Box<dyn DeathWatch>>,
    /// Join a running membership (a restarted controller) instead of meeting every peer at
    /// the start barrier.
    pub join: bool,
    /// Mutual TLS on the fabric.
    pub fabric_tls: Option<Arc<crate::tls::fabric::FabricTls>>,
    /// The cluster's card link key (`[card] link_key`): frames sealed and checked under it.
    pub link_key: Option<crate::engine::LinkKey>,
    /// This process, as its hellos name it (the lease records carry the same).
    pub incarnation: u64,
}

/// A running controller core.
pub struct Shell {
    inbox: Inbox,
    /// Wakes the loop's poll.
    wake: Arc<LoopWake>,
    /// The controller as an NBD backend.
    port: Arc<HostPort>,
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The fabric's counters.
    pub net: Arc<net::NetStats>,
    card: AnyCard,
    /// The resync of dead controllers' write-intent regions, for status.
    pub takeover: Arc<TakeoverProgress>,
}

impl Shell {
    /// Opens the card, starts the fabric, the member workers and the loop. The loop waits for
    /// a hello from every peer before it takes host requests (they queue meanwhile).
    pub fn start(cfg: ShellConfig) -> Result<Shell, String> {
        let poll = mio::Poll::new().map_err(|e| format!("the loop's poll: {e}"))?;
        let wake = LoopWake::new(poll.registry()).map_err(|e| format!("the loop's wake: {e}"))?;
        let (tx, rx) = Inbox::waking(wake.clone());
        let m = &cfg.machine;
        let peers_mask = if m.nodes >= 8 { 0xff } else { (1u8 << m.nodes) - 1 };
        let dcfg = DriverConfig {
            node: m.node,
            peers: peers_mask,
            epoch: m.epoch,
            ring_log2: 8,
            ack_timeout_cycles: cfg.ack_timeout_cycles,
            heartbeat_cycles: 0,
            link_key: cfg.link_key,
        };
        let driver = Driver::open(cfg.card.clone(), dcfg).map_err(|e| format!("card: {e}"))?;
        let card_waker = CardWaker::start(&cfg.card, poll.registry()).map_err(|e| format!("card interrupt: {e}"))?;
        let card_link = CardLink::start(&cfg.card, poll.registry()).map_err(|e| format!("card link: {e}"))?;
        let payload_max = m.line_bytes as usize + 1024;
        let net = net::Net::start(
            cfg.fabric,
            m.node,
            m.epoch,
            &cfg.peers,
            payload_max,
            cfg.fabric_tls.clone(),
            net::Polled { registry: poll.registry(), wake: wake.clone() },
        )
        .map_err(|e| format!("fabric: {e}"))?;
        let stats = net.stats.clone();
        let jobs = members::Workers::start(cfg.array.clone(), cfg.member_workers, tx.clone())
            .map_err(|e| format!("member workers: {e}"))?;
        let capacity = m.capacity;
        let presence_buckets_log2 = driver.presence_buckets_log2();
        let mut machine = Machine::new(Config { presence_buckets_log2, ..cfg.machine.clone() });
        if cfg.join {
            machine.joins();
        }
        let peers: Vec<u8> = cfg.peers.iter().map(|p| p.0).collect();
        let card = cfg.card.clone();
        let array = cfg.array.clone();
        array.set_shared(true);
        let changes_seen = array.changes();
        let takeover = Arc::new(TakeoverProgress::default());
        let (deaths, inbox, progress) = (cfg.deaths, tx.clone(), takeover.clone());
        let base_epoch = m.epoch;
        takeover.epoch.store(base_epoch, std::sync::atomic::Ordering::Relaxed);
        takeover.live.store(peers_mask, std::sync::atomic::Ordering::Relaxed);
        let join = cfg.join.then(join::Joining::new);
        let loop_wake = wake.clone();
        let thread = std::thread::Builder::new()
            .name(format!("amf-loop-{}", m.node))
            .spawn(move || {
                let mut l = Loop {
                    m: machine,
                    driver,
                    net,
                    jobs,
                    rx,
                    poll,
                    events: mio::Events::with_capacity(POLL_EVENTS_MAX),
                    wake: loop_wake,
                    nbd: None,
                    tags: BTreeMap::new(),
                    fetches: BTreeMap::new(),
                    backlog: VecDeque::new(),
                    hosts: BTreeMap::new(),
                    next_host: 1,
                    start: Instant::now(),
                    peers,
                    hello_from: 0,
                    left_from: 0,
                    held: VecDeque::new(),
                    own: BTreeMap::new(),
                    card_error: None,
                    array,
                    changes_seen,
                    deaths,
                    last_watch: Instant::now(),
                    rounds: 0,
                    check_at: Instant::now(),
                    view_due: None,
                    base_epoch,
                    started: false,
                    join,
                    inbox,
                    takeover: progress,
                    card_waker,
                    card_link,
                    card_order: CardOrder::default(),
                    incarnation: cfg.incarnation,
                    met: [None; 8],
                    reborn: 0,
                };
                l.run();
            })
            .map_err(|e| format!("loop thread: {e}"))?;
        let port = Arc::new(HostPort { inbox: tx.clone(), capacity });
        Ok(Shell { inbox: tx, wake, port, thread: std::sync::Mutex::new(Some(thread)), net: stats, card, takeover })
    }

    /// The inbox (for NBD handlers).
    pub fn inbox(&self) -> Inbox {
        self.inbox.clone()
    }

    /// The controller as an NBD backend (for servers on threads of their own: the service
    /// addresses taken over from dead controllers).
    pub fn port(&self) -> Arc<HostPort> {
        self.port.clone()
    }

    /// Serves NBD on `listener` from the loop's own thread (one server per controller).
    pub fn serve_nbd(&self, listener: TcpListener, cfg: crate::nbd::ServerConfig) -> std::io::Result<NbdPort> {
        NbdPort::start(&self.inbox, self.wake.clone(), self.port.clone(), listener, cfg)
    }

    /// The group's size.
    pub fn capacity(&self) -> u64 {
        self.port.capacity
    }

    /// The card (register dumps read it directly: its backends are thread-safe).
    pub fn card(&self) -> &AnyCard {
        &self.card
    }

    /// The machine's state and counters, and the card's.
    pub fn status(&self) -> serde_json::Value {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let mut v = if self.inbox.send(Event::Status(tx)).is_err() {
            serde_json::json!({ "error": "the controller's loop has ended" })
        } else {
            rx.recv_timeout(Duration::from_secs(5))
                .unwrap_or_else(|_| serde_json::json!({ "error": "the controller's loop did not answer" }))
        };
        v["card_kind"] = self.card_kind().into();
        v["card"] = self.card_state().unwrap_or_else(|e| serde_json::json!({ "error": e }));
        v
    }

    /// Which card this is.
    pub fn card_kind(&self) -> &'static str {
        match self.card {
            AnyCard::Sim(_) => "sim",
            AnyCard::Model(_) => "model",
        }
    }

    /// The card's state and counters (read from its registers).
    pub fn card_state(&self) -> Result<serde_json::Value, String> {
        crate::engine::diag::card_state(&self.card).map_err(|e| e.to_string())
    }

    /// The card's registers, decoded.
    pub fn card_registers(&self) -> Result<serde_json::Value, String> {
        crate::engine::diag::dump_registers(&self.card).map_err(|e| e.to_string())
    }

    /// Runs one host request to its answer.
    pub fn call(&self, req: HostReq) -> Result<Vec<u8>, HostError> {
        call(&self.inbox, req)
    }

    /// Writes everything back, waits (bounded) for the peers to do the same, stops the loop.
    pub fn leave(&self) -> LeaveReport {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let report = if self.inbox.send(Event::Leave(tx)).is_ok() {
            rx.recv().unwrap_or(LeaveReport {
                write_back_error: Some("the controller's loop ended".into()),
                peers_unconfirmed: Vec::new(),
            })
        } else {
            LeaveReport { write_back_error: Some("the controller's loop ended".into()), peers_unconfirmed: Vec::new() }
        };
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
        if let AnyCard::Model(m) = &self.card {
            m.stop();
        }
        report
    }
}

/// The card's interrupt (an eventfd) in the loop's poll: the loop sleeps in one poll and hears
/// the card at once, with no thread between.
struct CardWaker {
    fd: std::os::fd::RawFd,
    /// A wake was taken and the card's causes are not cleared yet, or rounds were left in the
    /// rings after a clear: the rings are read before the loop sleeps.
    taken: bool,
}

/// The card interrupt's token in the loop's poll (the NBD server's tokens count up from 0, the
/// fabric's from 2^40).
const CARD_TOKEN: mio::Token = mio::Token(usize::MAX);

impl CardWaker {
    /// None when the card has no interrupt (the loop polls it).
    fn start(card: &AnyCard, registry: &mio::Registry) -> std::io::Result<Option<CardWaker>> {
        use crate::engine::Backend;
        let Some(fd) = card.interrupt() else { return Ok(None) };
        // The fd belongs to the card, which the loop's driver holds as long as the poll.
        registry.register(&mut mio::unix::SourceFd(&fd), CARD_TOKEN, mio::Interest::READABLE)?;
        Ok(Some(CardWaker { fd, taken: false }))
    }

    /// The poll found the interrupt: its counter is reset, and the rings are read this round.
    fn signalled(&mut self) {
        crate::engine::asynch::reset_interrupt(self.fd);
        self.taken = true;
    }
}

/// A simulated card's link socket in the loop's poll (`AnyCard::host_link`): its frames reach
/// the card on the loop's thread, with no link thread to wake between.
struct CardLink {
    card: AnyCard,
    /// The socket was readable and may hold frames not yet taken.
    more: bool,
}

/// The card link's token in the loop's poll.
const CARD_LINK_TOKEN: mio::Token = mio::Token(usize::MAX - 1);

impl CardLink {
    fn start(card: &AnyCard, registry: &mio::Registry) -> std::io::Result<CardLink> {
        let fd = card.host_link()?;
        // The socket belongs to the card, which the loop's driver holds as long as the poll.
        registry.register(&mut mio::unix::SourceFd(&fd), CARD_LINK_TOKEN, mio::Interest::READABLE)?;
        // Frames may have come before the registration: look once.
        Ok(CardLink { card: card.clone(), more: true })
    }
}

struct Loop {
    m: Machine,
    driver: Driver<AnyCard>,
    net: net::Net,
    jobs: members::Workers,
    rx: Receiver<Event>,
    /// What the loop sleeps in: the NBD and incoming fabric sockets, the card's interrupt and
    /// the inbox's wake.
    poll: mio::Poll,
    events: mio::Events,
    wake: Arc<LoopWake>,
    /// The NBD server this loop runs, and where it says it stopped.
    nbd: Option<(EventLoop, Sender<()>)>,
    /// Card tag -> (machine id, submitted at, command, resource).
    tags: BTreeMap<u32, (u64, Instant, CardOp, u64)>,
    /// Fetches in flight (the read search), for their latency.
    fetches: BTreeMap<u64, Instant>,
    backlog: VecDeque<(u64, CardOp, u64)>,
    hosts: BTreeMap<u64, Reply>,
    next_host: u64,
    start: Instant,
    peers: Vec<u8>,
    hello_from: u8,
    /// Peers that said they left clean in this membership.
    left_from: u8,
    /// Host requests that came before every peer's hello.
    held: VecDeque<(HostReq, Reply)>,
    /// Answers to the loop's own requests (the leave write-back).
    own: BTreeMap<u64, Result<Vec<u8>, HostError>>,
    card_error: Option<String>,
    /// This controller's assembly (its member-state changes are watched).
    array: Arc<Array>,
    /// Changes the machine has heard of.
    changes_seen: u64,
    /// The membership's proof of peers' deaths.
    deaths: Option<Box<dyn DeathWatch>>,
    last_watch: Instant,
    /// Rounds of the loop so far (`amf status`: an idle controller's loop should hardly turn).
    rounds: u64,
    /// When the machine's invariants are checked next (debug builds; see `step`).
    check_at: Instant,
    /// A new membership waiting for the card to fetch every command of the old one; new
    /// commands wait in the backlog meanwhile.
    view_due: Option<takeover::ViewDue>,
    /// The epoch of the full membership.
    base_epoch: u32,
    /// The start barrier is passed (every peer said hello, or this controller joined): host
    /// requests are served.
    started: bool,
    /// Joining a running membership (a restarted controller), until it serves.
    join: Option<join::Joining>,
    /// The loop's own inbox (for the takeover's resync, which runs beside it).
    inbox: Inbox,
    takeover: Arc<TakeoverProgress>,
    /// The card's interrupt, when it has one.
    card_waker: Option<CardWaker>,
    /// The card's link, read by this loop.
    card_link: CardLink,
    /// Completions and events in the card's order across looks at its rings.
    card_order: CardOrder,
    /// This process (its hellos say it): random at start.
    incarnation: u64,
    /// The process of each member met in this membership (from its hellos).
    met: [Option<u64>; 8],
    /// Members a hello of another process came from: the process met is dead.
    reborn: u8,
}

impl Loop {
    /// The peers in the current membership.
    fn all_peers(&self) -> u8 {
        self.m.live() & !(1 << self.m.config().node)
    }

    /// Every peer in the membership said hello (the start barrier is passed).
    fn hellos_in(&self) -> bool {
        self.hello_from & self.all_peers() == self.all_peers()
    }

    /// The process of member `n` met over the fabric (the lease reads it too).
    fn set_met(&mut self, n: u8, incarnation: Option<u64>) {
        if let (Some(m), Some(shared)) = (self.met.get_mut(n as usize), self.takeover.met.get(n as usize)) {
            *m = incarnation;
            shared.store(incarnation.unwrap_or(0), std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// This controller's hello.
    fn hello(&self) -> Msg {
        Msg::Hello { incarnation: self.incarnation }
    }

    fn run(&mut self) {
        for p in self.peers.clone() {
            self.net.send(p, &self.hello());
        }
        if self.all_peers() == 0 && self.join.is_none() {
            // Alone: nobody to meet.
            self.start_serving();
        }
        self.last_watch = Instant::now();
        let mut last_tick = Instant::now();
        let mut last_hello = Instant::now();
        let mut leaving: Option<Leave> = None;
        loop {
            // What this round sent leaves before the loop waits.
            self.net.flush();
            self.rounds += 1;
            let idle = self.tags.is_empty() && self.backlog.is_empty();
            let quiet = idle && leaving.is_none() && self.may_sleep();
            let wait = match (&self.card_waker, idle) {
                (_, true) if quiet => self.quiet_wait(last_hello),
                (_, true) => IDLE_WAIT,
                (Some(_), false) => IRQ_FALLBACK,
                (None, false) => BUSY_WAIT,
            };
            let woke = self.wait(wait);
            if quiet {
                // After a sleep longer than a tick the machine's clock is brought up to date
                // before what woke the loop is stepped (a write's dirty time, an acquire's
                // start are read from it).
                self.tick_if_due(&mut last_tick);
            }
            match woke {
                Ok(ev) => self.take_events(Some(ev), &mut leaving),
                Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Disconnected) => return,
            }
            // The peers' frames the poll found (each connection's share of a round).
            for (from, epoch, msg) in self.net.receive(&self.events) {
                self.fabric(from, epoch, msg);
            }
            if crate::raid::fence::GATE.leased() && !crate::raid::fence::GATE.open() {
                // The lease ran out under this loop (it was paused, or its lease thread could
                // not renew): nothing more of it may reach a host or a member. The lease
                // thread says so on the members when it can; the process ends either way.
                eprintln!(
                    "amf: controller {}: its lease ran out; fencing itself (it stops writing the members and answering \
                     hosts)",
                    self.m.config().node
                );
                crate::raid::fence::GATE.close(Duration::from_secs(1));
                std::process::exit(crate::raid::fence::FENCED_EXIT_CODE);
            }
            // The card's frames reach it before the rings are read: what they complete is
            // reaped in this round.
            if self.card_link.more {
                self.card_link.more = self.card_link.card.pump_link();
            }
            self.pump_card();
            // Failures found by the periodic member check, with no I/O of this loop's.
            self.note_changes();
            if self.watch_members(leaving.is_some()) {
                if let Some(l) = leaving.as_mut() {
                    if l.membership_changed() {
                        l.write_back = Some(self.write_back_all());
                    }
                }
            }
            self.tick_if_due(&mut last_tick);
            // Hellos are repeated until every peer answered one (a peer that starts later
            // would miss the first), and then now and then as a heartbeat: the lease's reach
            // is the peers heard from lately.
            if last_hello.elapsed() >= HEARTBEAT {
                last_hello = Instant::now();
                let live = self.all_peers();
                // A leave's notice goes with every heartbeat: a frame dropped on the way (a
                // full queue, a connection that failed) would leave its peers waiting for it.
                let left = leaving.as_ref().is_some_and(|l| l.says_left());
                for p in self.peers.clone().into_iter().filter(|p| live & (1 << p) != 0) {
                    self.net.send(p, &self.hello());
                    if left {
                        self.net.send(p, &Msg::Leaving);
                    }
                }
                self.join_tick();
            }
            // The NBD sockets the poll found ready, and the answers of this round.
            self.serve_nbd();
            // The requests that turn read go to the machine in this round, the card commands
            // queued since the card was pumped (theirs, a tick's) go to the card, and what was
            // answered at once (cache hits) leaves now: none of it waits for another poll (a
            // round of its own per request, with its system calls; a command left queued would
            // wait out the interrupt's fallback).
            if !self.rx.is_empty() {
                self.take_events(None, &mut leaving);
            }
            if !self.backlog.is_empty() {
                self.pump_card();
            }
            if self.nbd.as_ref().is_some_and(|(n, _)| n.pending()) {
                self.serve_nbd();
            }
            if let Some(l) = leaving.as_mut() {
                if let Some(done) = l.write_back.and_then(|i| self.hosts_done(i)) {
                    if l.written_back(done.map(|_| ()).map_err(|e| e.to_string())) {
                        l.write_back = Some(self.write_back_all());
                    } else if l.says_left() {
                        let live = self.all_peers();
                        for p in self.peers.clone().into_iter().filter(|p| live & (1 << p) != 0) {
                            self.net.send(p, &Msg::Leaving);
                        }
                    }
                }
                let peers_done = self.left_from & self.all_peers() == self.all_peers();
                if l.over(peers_done) {
                    let live = self.all_peers();
                    let unconfirmed =
                        self.peers.iter().copied().filter(|p| live & !self.left_from & (1 << p) != 0).collect();
                    let _ =
                        l.reply.send(LeaveReport { write_back_error: l.error.take(), peers_unconfirmed: unconfirmed });
                    self.net.stop();
                    self.jobs.stop();
                    return;
                }
                if l.write_back.is_some() && !l.reported && l.since.elapsed() > LEAVE_SLOW {
                    l.reported = true;
                    let node = self.m.config().node;
                    for w in self.m.flushes_waiting() {
                        eprintln!("amf: controller {node}: the leave's write-back is slow: {w}");
                    }
                    eprintln!(
                        "amf: controller {node}: card tags {} backlog {} view_due {:?}",
                        self.tags.len(),
                        self.backlog.len(),
                        self.view_due
                    );
                }
                if l.write_back.is_some() && l.since.elapsed() > LEAVE_WAIT * 4 {
                    let _ = l.reply.send(LeaveReport {
                        write_back_error: Some("write-back did not finish".into()),
                        peers_unconfirmed: self.peers.clone(),
                    });
                    return;
                }
            }
        }
    }

    /// Ticks the machine if a tick's time passed since `last`.
    fn tick_if_due(&mut self, last: &mut Instant) {
        if last.elapsed() >= TICK {
            *last = Instant::now();
            let now_us = self.start.elapsed().as_micros() as u64;
            self.step(Input::Tick { now_us });
        }
    }

    /// Whether the loop may wait longer than a tick: serving in a settled membership (no join,
    /// view change or model-card link work under way) and the machine has no timer set.
    fn may_sleep(&self) -> bool {
        self.started
            && self.join.is_none()
            && self.view_due.is_none()
            && self.hellos_in()
            && !self.card_link.more
            && self.m.timers_idle()
    }

    /// An idle loop's wait: `QUIET_WAIT`, or less when the next heartbeat or deaths watch is
    /// due sooner.
    fn quiet_wait(&self, last_hello: Instant) -> Duration {
        let hello = HEARTBEAT.saturating_sub(last_hello.elapsed());
        let watch = takeover::WATCH_INTERVAL.saturating_sub(self.last_watch.elapsed());
        QUIET_WAIT.min(hello).min(watch).max(IDLE_WAIT)
    }

    /// Sleeps in the poll until a socket, the card or the inbox's wake wants the loop (at most
    /// `wait`; not at all while work waits from an earlier round), then takes the first event
    /// of the inbox.
    fn wait(&mut self, wait: Duration) -> Result<Event, TryRecvError> {
        self.wake.sleep();
        let busy = !self.rx.is_empty()
            || self.net.busy()
            || self.nbd.as_ref().is_some_and(|(n, _)| n.pending())
            || self.card_waker.as_ref().is_some_and(|w| w.taken)
            || self.card_link.more;
        let polled = self.poll.poll(&mut self.events, Some(if busy { Duration::ZERO } else { wait }));
        self.wake.awake();
        if let Some(w) = self.card_waker.as_mut() {
            if self.events.iter().any(|e| e.token() == CARD_TOKEN) {
                w.signalled();
            }
        }
        if self.events.iter().any(|e| e.token() == CARD_LINK_TOKEN) {
            self.card_link.more = true;
        }
        if let Err(e) = polled {
            if e.kind() != std::io::ErrorKind::Interrupted {
                // Not expected of epoll; the loop goes on (it looks again within `wait`).
                eprintln!("amf: controller {}: the loop's poll: {e}", self.m.config().node);
                self.events.clear();
            }
        }
        self.rx.try_recv()
    }

    /// Runs the NBD server's turn: what the last poll found on its sockets and every answer
    /// given since. A server that finished its stop says so and goes.
    fn serve_nbd(&mut self) {
        let Some((n, _)) = self.nbd.as_mut() else { return };
        if n.turn(&self.events) {
            if let Some((mut n, stopped)) = self.nbd.take() {
                n.finish();
                let _ = stopped.send(());
            }
        }
        // Events are handed on once.
        self.events.clear();
    }

    /// Starts serving NBD from this loop.
    fn start_nbd(&mut self, start: port::NbdStart) {
        if self.nbd.is_some() {
            let e = std::io::Error::new(std::io::ErrorKind::AlreadyExists, "the loop serves NBD already");
            let _ = start.started.send(Err(e));
            return;
        }
        let port::NbdStart { port, listener, cfg, stats, stop, started, stopped } = start;
        match EventLoop::hosted(self.poll.registry(), self.wake.clone(), listener, port, cfg, stats, stop) {
            Ok(n) => {
                self.nbd = Some((n, stopped));
                let _ = started.send(Ok(()));
            }
            Err(e) => {
                let _ = started.send(Err(e));
            }
        }
    }

    /// The start barrier is passed: held host requests go in.
    fn start_serving(&mut self) {
        self.started = true;
        self.join = None;
        self.takeover.serving.store(true, std::sync::atomic::Ordering::Relaxed);
        while let Some((req, reply)) = self.held.pop_front() {
            self.host(req, reply);
        }
    }

    /// Starts writing back every dirty line of this controller (a leave's); returns its id.
    fn write_back_all(&mut self) -> u64 {
        let id = self.next_host;
        self.next_host += 1;
        self.step(Input::Host { id, req: HostReq::FlushLocal });
        id
    }

    /// Answers of the loop's own requests (the leave flush) are kept here.
    fn hosts_done(&mut self, id: u64) -> Option<Result<Vec<u8>, HostError>> {
        self.own.remove(&id)
    }

    /// A peer's frame: the start, join and stop notices are the loop's; the rest is the
    /// machine's.
    fn fabric(&mut self, from: u8, epoch: u32, msg: Msg) {
        match msg {
            Msg::Hello { incarnation } => {
                if from < 8 && self.all_peers() & (1 << from) != 0 && epoch == self.m.config().epoch {
                    match self.met[from as usize] {
                        Some(met) if met != incarnation && self.started => {
                            // A member killed and started again at once may say hello before
                            // its death was seen (its life lock taken again within the watch
                            // interval, its lease's expiry still ahead). Let in as the member
                            // met, it would serve with a cold cache while this controller holds
                            // its dirty lines' replicas: its earlier life is dead, taken over
                            // first, and it joins.
                            if self.reborn & (1 << from) == 0 {
                                eprintln!(
                                    "amf: controller {}: controller {from} says hello from a new process: the one it \
                                     ran is dead",
                                    self.m.config().node
                                );
                            }
                            self.reborn |= 1 << from;
                            self.watch_now();
                            return;
                        }
                        _ => self.set_met(from, Some(incarnation)),
                    }
                    let first = self.hello_from & (1 << from) == 0;
                    self.hello_from |= 1 << from;
                    if first {
                        // Answer, so a peer that started after our first hello hears one.
                        self.net.send(from, &self.hello());
                    }
                    if self.hellos_in() && !self.started && self.join.as_ref().is_none_or(|j| j.moved()) {
                        self.start_serving();
                    }
                } else if from < 8 && from != self.m.config().node && self.peers.contains(&from) {
                    // A controller out of the membership (restarted, joining): its answer
                    // tells it this membership's epoch.
                    if self.started && self.m.live() & (1 << from) == 0 {
                        self.net.send(from, &self.hello());
                    }
                    self.taken_for_dead(from, epoch);
                    self.join_heard(from, epoch);
                }
            }
            Msg::JoinAsk { target } => self.join_asked(from, target),
            Msg::JoinReady { target } => self.join_ready(from, target),
            Msg::Join { target } => self.join_commit(from, target),
            Msg::Leaving => {
                if from < 8 && epoch == self.m.config().epoch {
                    self.left_from |= 1 << from;
                }
            }
            msg => {
                if epoch != self.m.config().epoch && from < 8 && self.all_peers() & (1 << from) != 0 {
                    // A peer in another epoch: it may have seen a death first; look now.
                    self.watch_now();
                }
                if let Msg::LineData { id, data } = &msg {
                    if let Some(at) = self.fetches.remove(id) {
                        if data.is_some() {
                            crate::metrics::observe(crate::metrics::Op::RemoteHit, at);
                        }
                    }
                }
                self.step(Input::Fabric { from, epoch, msg })
            }
        }
    }

    /// Handles `first` and whatever else is queued (at most `EVENTS_PER_ROUND_MAX` in all)
    /// before the loop looks at the card again. A leave may come behind other events: it
    /// starts the leave just the same.
    fn take_events(&mut self, first: Option<Event>, leaving: &mut Option<Leave>) {
        let mut next = first;
        let mut taken = 0;
        while let Some(ev) = next.take().or_else(|| {
            taken += 1;
            (taken < EVENTS_PER_ROUND_MAX).then(|| self.rx.try_recv().ok()).flatten()
        }) {
            let Some(reply) = self.event(ev) else { continue };
            if leaving.is_some() {
                let _ = reply.send(LeaveReport {
                    write_back_error: Some("already leaving".into()),
                    peers_unconfirmed: Vec::new(),
                });
                continue;
            }
            // Write back this controller's lines through the machine.
            *leaving = Some(Leave::new(reply, self.write_back_all()));
        }
    }

    fn event(&mut self, ev: Event) -> Option<Sender<LeaveReport>> {
        match ev {
            Event::Host { req, reply } => {
                if !self.started {
                    self.held.push_back((req, reply));
                } else {
                    self.host(req, reply);
                }
            }
            Event::Input(input) => {
                if matches!(input, Input::MemberDone { .. }) {
                    // The worker saw any member failure it caused before it posted this: the
                    // machine hears of the change first and holds the completion until it is
                    // recorded.
                    self.note_changes();
                }
                self.step(input)
            }
            Event::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Event::Leave(reply) => return Some(reply),
            Event::Nbd(start) => self.start_nbd(*start),
            // Unwinding drops the loop's sockets and workers as a dead process's close; no
            // panic message (it is not a failure).
            #[cfg(test)]
            Event::Crash => std::panic::resume_unwind(Box::new("a test crashed this controller")),
        }
        None
    }

    /// Tells the machine that this controller's view of the members changed since it last
    /// heard.
    fn note_changes(&mut self) {
        let changes = self.array.changes();
        if changes != self.changes_seen {
            self.changes_seen = changes;
            self.step(Input::GroupChanged);
        }
    }

    fn host(&mut self, req: HostReq, reply: Reply) {
        let id = self.next_host;
        self.next_host += 1;
        self.hosts.insert(id, reply);
        self.step(Input::Host { id, req });
    }

    fn step(&mut self, input: Input) {
        let outs = self.m.step(input);
        // The check walks every line: after every step, a cache of thousands of dirty lines
        // made a debug build's leave quadratic (seconds instead of milliseconds). It takes at
        // most a tenth of the loop's time here; the simulator checks after every step.
        if cfg!(debug_assertions) && Instant::now() >= self.check_at {
            let began = Instant::now();
            if let Err(e) = self.m.check() {
                eprintln!("amf: node {}: invariant broken: {e}", self.m.config().node);
            }
            self.check_at = Instant::now() + began.elapsed() * CHECK_TIME_SHARE_INVERSE;
        }
        for o in outs {
            match o {
                Output::Card { id, op, resource } => self.backlog.push_back((id, op, resource)),
                Output::Send { to, msg } => {
                    if let Msg::Fetch { id, .. } = msg {
                        if self.fetches.len() >= FETCHES_TIMED_MAX {
                            // Answers that never came (a peer gone): only their latency is lost.
                            self.fetches.retain(|_, at| at.elapsed() < Duration::from_secs(10));
                        }
                        self.fetches.entry(id).or_insert_with(Instant::now);
                    }
                    self.net.send(to, &msg)
                }
                Output::MemberRead { id, offset, len } => self.jobs.read(id, offset, len),
                Output::MemberWrite { id, offset, data, fua } => self.jobs.write(id, offset, data, fua),
                Output::MemberSync { id } => self.jobs.sync(id),
                Output::Superblocks { id, record } => self.jobs.superblocks(id, record),
                Output::StripeJob { id, stripe, job } => self.jobs.stripe(id, stripe, job),
                Output::Reply { id, result } => match self.hosts.remove(&id) {
                    // A controller whose lease ran out (it was paused, or cut off from the
                    // members) answers no host: the survivors may have taken its lines over.
                    // Its lease thread ends the process.
                    Some(_) if !crate::raid::fence::GATE.open() => {}
                    Some(reply) => reply.send(result),
                    None => {
                        self.own.insert(id, result);
                    }
                },
            }
        }
    }

    /// Submits queued commands; feeds completions and events to the machine in card order.
    fn pump_card(&mut self) {
        for _ in 0..64 {
            if self.view_due.is_none() {
                let acquires = self.tags.values().filter(|t| waits(t.2)).count();
                let room = CARD_INFLIGHT_MAX.saturating_sub(self.driver.in_flight());
                let got = take_submittable(&mut self.backlog, acquires, room);
                for id in got.lost {
                    self.step(Input::CardDone { id, status: CardStatus::Conflict, sharers: 0 });
                }
                let mut batch = got.send.into_iter();
                while let Some((id, op, resource)) = batch.next() {
                    let (code, hold, filtered) = opcode(op, resource);
                    match self.driver.submit_with(code, resource, hold, filtered) {
                        Ok(tag) => {
                            self.tags.insert(tag, (id, Instant::now(), op, resource));
                        }
                        Err(e) => {
                            self.card_error = Some(e.to_string());
                            let unsent: Vec<_> = std::iter::once((id, op, resource)).chain(batch).collect();
                            for c in unsent.into_iter().rev() {
                                self.backlog.push_front(c);
                            }
                            break;
                        }
                    }
                }
            }
            // Reap, read events, reap again: see `CardOrder`.
            let looked = self.driver.reap().and_then(|mut done| {
                let events = self.driver.events_indexed()?;
                done.extend(self.driver.reap()?);
                Ok((done, events))
            });
            let (done, events) = match looked {
                Ok(x) => x,
                Err(e) => {
                    self.card_error = Some(e.to_string());
                    return;
                }
            };
            if done.is_empty() && events.is_empty() {
                // After an interrupt, once the rings are empty: causes set from here on
                // interrupt again, and what came before the clear is reaped in the next round.
                // Not at the wake: what this round's commands complete (a yield's completion
                // at once) would interrupt for what the round reaps anyway, a wake of the
                // loop for nothing (two in five before). Only after an interrupt: a clear is
                // a register write, which a simulated card runs its clock for.
                if self.rearm() {
                    continue;
                }
                return;
            }
            let mut measured = Vec::new();
            let tags = &mut self.tags;
            let inputs = self.card_order.merge(done, events, |c| {
                let (id, at, op, resource) = tags.remove(&c.tag)?;
                measured.push((at, op, resource, c.no_broadcast));
                Some(id)
            });
            for (at, op, resource, no_broadcast) in measured {
                crate::metrics::observe(crate::metrics::Op::CardRoundTrip, at);
                if op == CardOp::AcquireExclusive && resource & STRIPE_NS == 0 && no_broadcast == 0 {
                    crate::metrics::observe(crate::metrics::Op::SharedWrite, at);
                }
            }
            for input in inputs {
                self.step(input);
            }
        }
        // Rounds left over: cleared and armed, and the loop comes back for them without
        // sleeping (a clear wipes the causes of what is still in the rings).
        if self.rearm() {
            if let Some(w) = self.card_waker.as_mut() {
                w.taken = true;
            }
        }
    }

    /// After an interrupt was taken: clears the card's causes and arms its interrupt again
    /// (true); the rings must be read after this.
    fn rearm(&mut self) -> bool {
        match self.card_waker.as_mut().filter(|w| w.taken) {
            Some(w) => {
                w.taken = false;
                self.driver.ack_interrupt();
                true
            }
            None => false,
        }
    }

    fn status(&self) -> serde_json::Value {
        let cfg = self.m.config();
        serde_json::json!({
            "node": cfg.node,
            "nodes": cfg.nodes,
            "epoch": cfg.epoch,
            "primary": false,
            "line_bytes": cfg.line_bytes,
            "cache": {
                "lines_max": cfg.lines_max,
                "lines": self.m.resident().count(),
                "dirty": self.m.dirty_lines(),
            },
            "peers_up": self.hello_from,
            "live": self.m.live(),
            "takeover": self.takeover.json(),
            "replicas": self.m.replicas().len(),
            "replica_bases": self.m.bases_kept(),
            "requests_open": self.m.requests_open(),
            "card_commands_in_flight": self.tags.len() + self.backlog.len(),
            "loop_rounds": self.rounds,
            "counters": self.m.counters,
            "fabric": {
                "sent": self.net.stats.sent.load(std::sync::atomic::Ordering::Relaxed),
                "received": self.net.stats.received.load(std::sync::atomic::Ordering::Relaxed),
                "dropped": self.net.stats.dropped.load(std::sync::atomic::Ordering::Relaxed),
                "refused": self.net.stats.refused.load(std::sync::atomic::Ordering::Relaxed),
                "idle_closed": self.net.stats.idle_closed.load(std::sync::atomic::Ordering::Relaxed),
                "tls": self.net.tls(),
                "tls_refused": self.net.stats.tls_refused.load(std::sync::atomic::Ordering::Relaxed),
                "throttled": self.net.stats.throttled.load(std::sync::atomic::Ordering::Relaxed),
            },
            "card_error": self.card_error,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::CardKind;
    use crate::nbd::Backend;
    use crate::raid::assemble::{assemble, create, CreateOptions};
    use crate::raid::Level;

    /// A one-controller shell on a model card over a small RAID5 in `dir`.
    fn one_controller(dir: &std::path::Path) -> Shell {
        create(dir, &CreateOptions { chunk_bytes: 64 << 10, ..CreateOptions::new(Level::Raid5, 3, 8 << 20) })
            .expect("create");
        let array = Arc::new(assemble(dir).expect("assemble").array);
        let card = AnyCard::start(CardKind::Model, "127.0.0.1:0".parse().expect("addr")).expect("card");
        let fabric = TcpListener::bind("127.0.0.1:0").expect("fabric");
        Shell::start(shell_config(0, 1, array, card, fabric, Vec::new(), crate::amf::WRITEBACK_AGE_US_DEFAULT))
            .expect("shell")
    }

    /// Controller `node` of `nodes` on `array`, with no proof of deaths.
    fn shell_config(
        node: u8,
        nodes: u8,
        array: Arc<Array>,
        card: AnyCard,
        fabric: TcpListener,
        peers: Vec<(u8, SocketAddr)>,
        writeback_age_us: u64,
    ) -> ShellConfig {
        let line_bytes = 64 << 10;
        ShellConfig {
            machine: Config {
                node,
                nodes,
                epoch: 1,
                line_bytes,
                lines_max: 64,
                stripe_bytes: array.geometry().stripe_bytes(),
                capacity: array.capacity() - array.capacity() % line_bytes,
                degraded: false,
                writeback_age_us,
                presence_buckets_log2: 0,
                mutation: None,
            },
            card,
            // Half a second, as `amf cluster` gives a model card.
            ack_timeout_cycles: (crate::engine::link::CLOCK_HZ / 2) as u32,
            array,
            fabric,
            peers,
            member_workers: 2,
            deaths: None,
            join: false,
            fabric_tls: None,
            link_key: None,
            incarnation: 1 + node as u64,
        }
    }

    /// The test's proof of deaths: the peers it says.
    struct Told(Arc<std::sync::atomic::AtomicU8>);

    impl DeathWatch for Told {
        fn dead(&mut self) -> u8 {
            self.0.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    /// A test's controller: its shell, its assembly, and the proof of deaths it is told.
    type Controller = (Shell, Arc<Array>, Arc<std::sync::atomic::AtomicU8>);

    /// `nodes` controllers on model cards over one small RAID5 in `dir` (each its own
    /// assembly and write-intent slot, as separate processes have), whose dirty lines stay
    /// dirty until a leave, and a proof of deaths each that the test sets.
    fn controllers(dir: &std::path::Path, nodes: u8) -> Vec<Controller> {
        controllers_aged(dir, nodes, 600_000_000)
    }

    /// As [`controllers`], with dirty lines written back after `writeback_age_us`.
    fn controllers_aged(dir: &std::path::Path, nodes: u8, writeback_age_us: u64) -> Vec<Controller> {
        create(dir, &CreateOptions { chunk_bytes: 64 << 10, ..CreateOptions::new(Level::Raid5, 3, 8 << 20) })
            .expect("create");
        let cards: Vec<AnyCard> = (0..nodes)
            .map(|_| AnyCard::start(CardKind::Model, "127.0.0.1:0".parse().expect("addr")).expect("card"))
            .collect();
        let links: Vec<SocketAddr> = cards.iter().map(|c| c.link_addr().expect("link")).collect();
        let fabrics: Vec<TcpListener> = (0..nodes).map(|_| TcpListener::bind("127.0.0.1:0").expect("fabric")).collect();
        let addrs: Vec<SocketAddr> = fabrics.iter().map(|f| f.local_addr().expect("addr")).collect();
        let mut out = Vec::new();
        for (node, (card, fabric)) in (0..nodes).zip(cards.into_iter().zip(fabrics)) {
            for p in (0..nodes).filter(|p| *p != node) {
                card.set_peer(p, links[p as usize]);
            }
            let array =
                Arc::new(crate::raid::assemble::assemble_as(dir, false, node as usize).expect("assemble").array);
            let peers = (0..nodes).filter(|p| *p != node).map(|p| (p, addrs[p as usize])).collect();
            let dead = Arc::new(std::sync::atomic::AtomicU8::new(0));
            let mut cfg = shell_config(node, nodes, array.clone(), card, fabric, peers, writeback_age_us);
            cfg.deaths = Some(Box::new(Told(dead.clone())));
            out.push((Shell::start(cfg).expect("shell"), array, dead));
        }
        out
    }

    /// A controller that died during a stop left its dirty lines to the peer that held their
    /// replicas, and that peer had already written its own back: it writes back again before
    /// it says it left. It once reported a clean leave with the lines taken over only in its
    /// cache, and the group was marked clean without them.
    #[test]
    fn a_leave_writes_back_the_lines_it_took_over_from_a_peer_that_died_during_it() {
        let tmp = tempfile::tempdir().expect("tmp");
        // Lines of controller 0's, dirty there, replicated to controller 1.
        let (mut shells, lines) = controllers_with_dirty_lines(tmp.path(), 2, 8, 192 << 10);
        let (b, b_array, b_dead) = shells.pop().expect("b");
        let (a, _a_array, _) = shells.pop().expect("a");
        // Controller 1 begins to stop, writes back what it holds (nothing of its own), and
        // waits for controller 0's notice; controller 0 dies meanwhile.
        let rx = leave_on_a_thread(b);
        std::thread::sleep(Duration::from_millis(300));
        a.inbox.send(Event::Crash).expect("crash");
        b_dead.store(1, std::sync::atomic::Ordering::SeqCst);
        let report = rx.recv_timeout(Duration::from_secs(30)).expect("controller 1's leave hung");
        assert_eq!(report.write_back_error, None);
        assert!(report.peers_unconfirmed.is_empty(), "{report:?}");
        assert_on_members(&b_array, &lines, "controller 1 left");
        let _ = a.leave();
    }

    /// An idle controller's loop sleeps until its next heartbeat or deaths watch instead of
    /// waking every tick (a thousand rounds a second made an idle controller use about 3% of
    /// a core). A write wakes it and is answered, its write-back (a timer) runs, and the loop
    /// goes back to sleep.
    #[test]
    fn an_idle_controller_hardly_turns_its_loop() {
        const IDLE_ROUNDS_PER_S_MAX: f64 = 400.0;
        let tmp = tempfile::tempdir().expect("tmp");
        let shells = controllers_aged(tmp.path(), 2, 50_000);
        let rounds = |s: &Shell| s.status()["loop_rounds"].as_u64().expect("loop_rounds");
        let rate = |s: &Shell| {
            let (r0, t0) = (rounds(s), Instant::now());
            std::thread::sleep(Duration::from_secs(1));
            rounds(s).saturating_sub(r0) as f64 / t0.elapsed().as_secs_f64()
        };
        // The start's hellos and the group's first records settle.
        std::thread::sleep(Duration::from_millis(500));
        for (s, _, _) in &shells {
            let r = rate(s);
            assert!(r < IDLE_ROUNDS_PER_S_MAX, "an idle loop turned {r:.0} times a second");
        }
        let data = vec![0x5au8; 4096];
        shells[0].0.port().write(64 << 10, &data, false).expect("a write to a sleeping controller");
        let until = Instant::now() + Duration::from_secs(10);
        while shells[0].0.status()["cache"]["dirty"].as_u64() != Some(0) {
            assert!(Instant::now() < until, "the write was not written back after its age");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_on_members(&shells[0].1, &[(64 << 10, data)], "the write-back's age passed");
        let r = rate(&shells[0].0);
        assert!(r < IDLE_ROUNDS_PER_S_MAX, "the loop turned {r:.0} times a second after the write-back");
        for (s, _, _) in shells {
            let _ = s.leave();
        }
    }

    /// `n` controllers, and `count` 4 KiB writes `stride` bytes apart through controller 0
    /// (dirty there, replicated to the next controller in ring order).
    fn controllers_with_dirty_lines(
        dir: &std::path::Path,
        n: u8,
        count: u64,
        stride: u64,
    ) -> (Vec<Controller>, Vec<(u64, Vec<u8>)>) {
        let shells = controllers(dir, n);
        let lines: Vec<(u64, Vec<u8>)> = (0..count).map(|i| (i * stride, vec![0x10 + i as u8; 4096])).collect();
        for (at, data) in &lines {
            shells[0].0.port().write(*at, data, false).expect("write through controller 0");
        }
        (shells, lines)
    }

    /// Runs `s`'s leave on a thread of its own; its report comes on the channel.
    fn leave_on_a_thread(s: Shell) -> crossbeam_channel::Receiver<LeaveReport> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        std::thread::spawn(move || {
            let _ = tx.send(s.leave());
        });
        rx
    }

    /// Every write of `lines` is on the members (read through `array`) when `when`.
    fn assert_on_members(array: &Array, lines: &[(u64, Vec<u8>)], when: &str) {
        for (at, data) in lines {
            let mut got = vec![0u8; data.len()];
            array.read(*at, &mut got).expect("read the members");
            assert!(got == *data, "line at {at}: an acknowledged write is not on the members when {when}");
        }
    }

    /// Of three stopping controllers one dies: the peer that held its replicas writes them
    /// back again, and the third, which had heard that peer's notice before the death, waits
    /// for its notice after: it once reported at the new membership with the lines taken over
    /// still on their way to the members, and marked the group clean under them.
    #[test]
    fn a_stopping_peer_waits_for_the_survivor_that_took_lines_over() {
        use crate::raid::faults::{FaultKind, FaultPlan, IoOp, Rule, Target};
        let tmp = tempfile::tempdir().expect("tmp");
        // Lines of controller 0's, replicated to controller 1 (the next in ring order).
        let (mut shells, lines) = controllers_with_dirty_lines(tmp.path(), 3, 48, 64 << 10);
        let (c, c_array, c_dead) = shells.pop().expect("c");
        let (b, b_array, b_dead) = shells.pop().expect("b");
        let (a, _a_array, _) = shells.pop().expect("a");
        // Controller 1's member writes are slow: its second write-back takes a while.
        let plan = FaultPlan::new();
        plan.add(Rule {
            target: Target { op: Some(IoOp::Write), ..Target::default() },
            kind: FaultKind::Latency,
            times: u32::MAX,
        });
        b_array.inject_faults(&plan);
        let (b_left, c_left) = (leave_on_a_thread(b), leave_on_a_thread(c));
        std::thread::sleep(Duration::from_millis(300));
        a.inbox.send(Event::Crash).expect("crash");
        b_dead.store(1, std::sync::atomic::Ordering::SeqCst);
        c_dead.store(1, std::sync::atomic::Ordering::SeqCst);
        let report = c_left.recv_timeout(Duration::from_secs(30)).expect("controller 2's leave hung");
        assert_eq!(report.write_back_error, None);
        assert!(report.peers_unconfirmed.is_empty(), "{report:?}");
        // Controller 2 says the group may be marked clean: everything acknowledged is on the
        // members now.
        assert_on_members(&c_array, &lines, "controller 2 left");
        let report = b_left.recv_timeout(Duration::from_secs(30)).expect("controller 1's leave hung");
        assert_eq!(report.write_back_error, None);
        let _ = a.leave();
    }

    /// A leave that reaches the loop behind other events (the loop takes a batch at a time)
    /// starts the leave as one that comes alone does, and the loop ends: the leave once
    /// answered "already leaving" and the loop served on, so the controller never stopped.
    #[test]
    fn a_leave_queued_behind_other_events_ends_the_loop() {
        for round in 0..20 {
            let tmp = tempfile::tempdir().expect("tmp");
            let shell = Arc::new(one_controller(tmp.path()));
            shell.port().write(0, &[7u8; 4096], false).expect("write");
            // Fill the inbox, so the leave lands in the middle of a batch.
            let (tx, rx) = crossbeam_channel::bounded(1);
            for _ in 0..64 {
                let (t, _r) = crossbeam_channel::bounded(1);
                shell.inbox.send(Event::Status(t)).expect("inbox");
            }
            let s = shell.clone();
            std::thread::spawn(move || {
                let _ = tx.send(s.leave());
            });
            let report = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_else(|_| panic!("round {round}: hung"));
            assert_eq!(report.write_back_error, None, "round {round}");
            assert!(report.peers_unconfirmed.is_empty());
        }
    }
}
