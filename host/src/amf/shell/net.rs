//! The fabric between controllers' machines: one-way messages over TCP. Every frame has a
//! fixed header (magic, format version, sender, epoch, payload length) and a bincode payload
//! (the serde form of [`Msg`]); nothing is decoded by hand. The event loop owns the outgoing
//! connections: it queues frames per peer and writes them without blocking at the end of each
//! round (one write for everything a round sent a peer; what the socket does not take waits
//! for the next round), so a message costs no thread hand-off on the way out. Connections are
//! made by a short-lived thread, never by the loop. A reader thread per incoming connection
//! decodes frames into the loop's inbox. Lost messages are the machine's business: it
//! retransmits its requests.
//!
//! With fabric TLS (`tls::fabric`) every connection is mutual TLS under the cluster's CA: the
//! connecting thread does the handshake (blocking, bounded) before it hands the connection to
//! the loop, which then writes records without blocking; a reader accepts only a peer whose
//! certificate names a node, and only frames that say they come from that node.

use super::Inbox;
use crate::amf::io::Msg;
use crate::tls::fabric::{node_name, node_of, FabricTls};
use crate::tls::nonblocking;
use crossbeam_channel::{bounded, Receiver, TryRecvError};
use std::io::{ErrorKind, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// "AMFM": a frame of the machine fabric.
const MAGIC: u32 = 0x4d46_4d41;
/// Format version; frames of another version are refused.
pub const VERSION: u8 = 3;
/// Header bytes: magic, version, sender, epoch, payload length.
const HEADER_BYTES: usize = 4 + 1 + 1 + 4 + 4;
/// Bytes queued for one peer; past it new frames are dropped (and retransmitted).
const QUEUE_BYTES_MAX: usize = 64 << 20;
/// Pause between connection attempts to a peer that is not up.
const RECONNECT_PAUSE: Duration = Duration::from_millis(20);
/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a TLS handshake with a peer may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a stopping controller waits for its last frames to leave.
const STOP_FLUSH_TIMEOUT: Duration = Duration::from_secs(1);
/// Incoming connections read at once (a thread each); past it new ones are closed at once and
/// counted as refused. A cluster needs one per peer (8 at most), and a peer that reconnects
/// leaves its old one behind until that one ends.
pub const INCOMING_MAX: usize = 32;
/// Of those, connections still in their TLS handshake (not yet proven a controller) at once,
/// each for `HANDSHAKE_TIMEOUT` at most. A connection past it closes the oldest unfinished
/// handshake: strangers on the fabric's network hold no more than these, and a peer that
/// connects among them gets through in the milliseconds its handshake takes.
pub const HANDSHAKES_MAX: usize = 8;
/// An incoming connection that brings no frame for this long is closed: peers say hello every
/// 100 ms (`HEARTBEAT`), so only a stranger or a stopped peer is that quiet, and a peer that
/// wakes up connects again (its requests are retransmitted).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames of one peer waiting in the loop's inbox at once. Its readers stop reading past it
/// (TCP then pushes back on the peer, whose own queue drops and retransmits), so a peer that
/// floods holds at most this much of the inbox and the frames of the others wait behind at most
/// this many of its own: each peer gets its share of the loop, whatever it sends. A peer's
/// legitimate bursts (a round's replicas and invalidations) are a few hundred frames.
pub const PEER_FRAMES_QUEUED_MAX: usize = 1024;
/// Payload bytes of one peer waiting in the loop's inbox at once (as above; 256 lines of 64 KiB).
pub const PEER_BYTES_QUEUED_MAX: usize = 16 << 20;
/// How long a throttled reader waits before it looks at its peer's budget again.
const THROTTLE_PAUSE: Duration = Duration::from_micros(200);
/// How often a throttled reader looks whether its peer's bytes wait in the socket (and so
/// counts the peer as heard): well within the lease's suspicion time.
const THROTTLED_HEARD_EVERY: Duration = Duration::from_millis(20);

/// Why a frame was refused.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// Not a machine-fabric frame.
    #[error("bad magic {0:#010x}")]
    Magic(u32),
    /// Another format version.
    #[error("format version {0}, this controller speaks {VERSION}")]
    Version(u8),
    /// Longer than any message.
    #[error("payload of {0} bytes is over the limit")]
    TooLong(usize),
    /// The payload does not decode.
    #[error("payload: {0}")]
    Payload(String),
    /// The connection failed.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
}

/// Encodes one frame.
pub fn encode(from: u8, epoch: u32, msg: &Msg) -> Result<Vec<u8>, FrameError> {
    let payload = bincode::serialize(msg).map_err(|e| FrameError::Payload(e.to_string()))?;
    let mut out = Vec::with_capacity(HEADER_BYTES + payload.len());
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.push(VERSION);
    out.push(from);
    out.extend_from_slice(&epoch.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Reads one frame: (sender, epoch, message). `payload_max` bounds what a peer can make this
/// controller allocate.
pub fn read_frame(r: &mut impl Read, payload_max: usize) -> Result<(u8, u32, Msg), FrameError> {
    read_sized(r, payload_max).map(|(from, epoch, msg, _)| (from, epoch, msg))
}

/// [`read_frame`], with the payload's length.
fn read_sized(r: &mut impl Read, payload_max: usize) -> Result<(u8, u32, Msg, usize), FrameError> {
    let mut h = [0u8; HEADER_BYTES];
    r.read_exact(&mut h)?;
    let magic = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    if magic != MAGIC {
        return Err(FrameError::Magic(magic));
    }
    if h[4] != VERSION {
        return Err(FrameError::Version(h[4]));
    }
    let from = h[5];
    let epoch = u32::from_le_bytes([h[6], h[7], h[8], h[9]]);
    let len = u32::from_le_bytes([h[10], h[11], h[12], h[13]]) as usize;
    if len > payload_max {
        return Err(FrameError::TooLong(len));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    let msg = bincode::DefaultOptions::new();
    let msg: Msg = bincode::Options::deserialize(
        bincode::Options::with_limit(bincode::Options::with_fixint_encoding(msg), payload_max as u64),
        &payload,
    )
    .map_err(|e| FrameError::Payload(e.to_string()))?;
    Ok((from, epoch, msg, len))
}

/// Counters of the fabric.
#[derive(Default, Debug)]
pub struct NetStats {
    /// Frames sent.
    pub sent: AtomicU64,
    /// Frames received and decoded.
    pub received: AtomicU64,
    /// Frames dropped because a peer's queue was full or its connection failed.
    pub dropped: AtomicU64,
    /// Connections closed for garbage (bad magic, version, length or payload), or refused
    /// because `INCOMING_MAX` were open.
    pub refused: AtomicU64,
    /// Incoming connections closed after `IDLE_TIMEOUT` without a frame.
    pub idle_closed: AtomicU64,
    /// TLS handshakes that failed (a peer without a valid certificate, or whose certificate
    /// names no node or another node than it claims), either way.
    pub tls_refused: AtomicU64,
    /// Times a reader stopped reading because its peer had `PEER_FRAMES_QUEUED_MAX` frames or
    /// `PEER_BYTES_QUEUED_MAX` bytes waiting in the loop's inbox.
    pub throttled: AtomicU64,
    /// When a frame last came from each controller (the fence gate's nanoseconds, see
    /// `raid::fence`; 0: never): which peers this one hears, for the lease's reach.
    pub heard_ns: [AtomicU64; 8],
}

impl NetStats {
    /// Peers heard from within `within_ns` of now, as a mask.
    pub fn heard_within(&self, within_ns: u64) -> u8 {
        let now = crate::raid::fence::now_ns();
        (0..8u8)
            .filter(|p| {
                let t = self.heard_ns[*p as usize].load(Relaxed);
                t != 0 && now.saturating_sub(t) <= within_ns
            })
            .fold(0, |m, p| m | 1 << p)
    }
}

/// A connection to a peer: non-blocking, TLS where the fabric has it.
type Outgoing = nonblocking::Stream<TcpStream>;

/// Connects to peer `node` at `addr`: TCP, then (with `tls`) the handshake that proves the peer
/// is that node, both bounded; the result is non-blocking.
fn connect_to(addr: SocketAddr, node: u8, tls: Option<&FabricTls>) -> std::io::Result<Outgoing> {
    let s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
    s.set_nodelay(true)?;
    let tls = match tls {
        None => None,
        Some(t) => {
            let name = rustls::pki_types::ServerName::try_from(node_name(node))
                .map_err(|e| std::io::Error::new(ErrorKind::InvalidInput, e))?;
            let c = rustls::ClientConnection::new(t.client.clone(), name)
                .map_err(|e| std::io::Error::new(ErrorKind::InvalidData, e))?;
            let mut c = rustls::Connection::Client(c);
            s.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
            s.set_write_timeout(Some(HANDSHAKE_TIMEOUT))?;
            let mut sock = &s;
            while c.is_handshaking() {
                c.complete_io(&mut sock)?;
            }
            s.set_read_timeout(None)?;
            s.set_write_timeout(None)?;
            Some(c)
        }
    };
    s.set_nonblocking(true)?;
    Ok(match tls {
        None => Outgoing::plain(s),
        Some(c) => Outgoing::with_tls(s, c),
    })
}

/// The way out to one peer.
struct Peer {
    node: u8,
    addr: SocketAddr,
    /// Non-blocking, once connected.
    conn: Option<Outgoing>,
    /// Encoded frames not yet taken by the socket (a partial frame first).
    queued: Vec<u8>,
    /// A connection attempt running on its own thread.
    connecting: Option<Receiver<std::io::Result<Outgoing>>>,
    last_attempt: Option<Instant>,
    /// A failed handshake with this peer was logged (once until one succeeds).
    warned: bool,
}

/// This controller's end of the fabric.
pub struct Net {
    node: u8,
    tls: Option<Arc<FabricTls>>,
    /// The membership epoch frames carry (changed by the loop only).
    epoch: AtomicU32,
    peers: Vec<Option<Peer>>,
    /// Counters.
    pub stats: Arc<NetStats>,
    stop: Arc<AtomicBool>,
}

impl Net {
    /// Starts accepting on `listener` (frames go to `inbox`); peers are connected when there is
    /// something to send them. With `tls`, every connection is mutual TLS.
    pub fn start(
        listener: TcpListener,
        node: u8,
        epoch: u32,
        peers: &[(u8, SocketAddr)],
        payload_max: usize,
        tls: Option<Arc<FabricTls>>,
        inbox: Inbox,
    ) -> std::io::Result<Net> {
        Net::start_with(listener, node, epoch, peers, Limits { payload_max, idle: IDLE_TIMEOUT, tls }, inbox)
    }

    fn start_with(
        listener: TcpListener,
        node: u8,
        epoch: u32,
        peers: &[(u8, SocketAddr)],
        limits: Limits,
        inbox: Inbox,
    ) -> std::io::Result<Net> {
        let stats = Arc::new(NetStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut out: Vec<Option<Peer>> = (0..8).map(|_| None).collect();
        for &(p, addr) in peers {
            if let Some(slot) = out.get_mut(p as usize) {
                *slot = Some(Peer {
                    node: p,
                    addr,
                    conn: None,
                    queued: Vec::new(),
                    connecting: None,
                    last_attempt: None,
                    warned: false,
                });
            }
        }
        let (s, st) = (stats.clone(), stop.clone());
        let tls = limits.tls.clone();
        listener.set_nonblocking(true)?;
        std::thread::Builder::new()
            .name("fabric-accept".into())
            .spawn(move || accept(listener, limits, inbox, s, st))?;
        Ok(Net { node, tls, epoch: AtomicU32::new(epoch), peers: out, stats, stop })
    }

    /// Queues `msg` for `to`; it leaves at the next [`Net::flush`] (dropped when the peer's
    /// queue is full: the machine retransmits).
    pub fn send(&mut self, to: u8, msg: &Msg) {
        let frame = encode(self.node, self.epoch.load(Relaxed), msg);
        match (self.peers.get_mut(to as usize), frame) {
            (Some(Some(p)), Ok(bytes)) if p.queued.len() + bytes.len() <= QUEUE_BYTES_MAX => {
                p.queued.extend_from_slice(&bytes);
                self.stats.sent.fetch_add(1, Relaxed);
            }
            _ => {
                self.stats.dropped.fetch_add(1, Relaxed);
            }
        }
    }

    /// Writes what is queued, as far as each socket takes it without blocking, and connects
    /// peers that have something queued and no connection.
    pub fn flush(&mut self) {
        for p in self.peers.iter_mut().flatten() {
            if p.queued.is_empty() && !p.conn.as_ref().is_some_and(Outgoing::pending) {
                continue;
            }
            if p.conn.is_none() {
                p.connect(&self.stats, self.tls.as_ref());
            }
            let Some(conn) = p.conn.as_mut() else { continue };
            let mut written = 0;
            let failed = loop {
                if written == p.queued.len() {
                    break conn.flush().is_err_and(|e| e.kind() != ErrorKind::WouldBlock);
                }
                match conn.write(&p.queued[written..]) {
                    Ok(0) => break true,
                    Ok(n) => {
                        written += n;
                        if written == p.queued.len() {
                            break false;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break false,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => break true,
                }
            };
            if failed {
                // A new connection must start at a frame: what is queued is dropped whole.
                p.conn = None;
                p.queued.clear();
                self.stats.dropped.fetch_add(1, Relaxed);
            } else {
                p.queued.drain(..written);
            }
        }
    }

    /// Whether connections are mutual TLS.
    pub fn tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Frames from now on carry `epoch` (a new membership).
    pub fn set_epoch(&self, epoch: u32) {
        self.epoch.store(epoch, Relaxed);
    }

    /// Sends what is queued (waiting at most a second for it), then stops the threads.
    pub fn stop(&mut self) {
        let until = Instant::now() + STOP_FLUSH_TIMEOUT;
        loop {
            self.flush();
            let waiting = self
                .peers
                .iter()
                .flatten()
                .any(|p| p.conn.as_ref().is_some_and(|c| !p.queued.is_empty() || c.pending()));
            if !waiting || Instant::now() >= until {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        self.stop.store(true, Relaxed);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
    }
}

impl Peer {
    /// Takes a finished connection attempt, or starts one (at most one per
    /// `RECONNECT_PAUSE`). Never blocks.
    fn connect(&mut self, stats: &NetStats, tls: Option<&Arc<FabricTls>>) {
        if let Some(rx) = &self.connecting {
            match rx.try_recv() {
                Ok(Ok(s)) => {
                    self.conn = Some(s);
                    self.connecting = None;
                    self.warned = false;
                }
                Ok(Err(e)) if e.kind() == ErrorKind::InvalidData => {
                    // The peer's certificate (or ours, in its eyes) is not right: say so once.
                    stats.tls_refused.fetch_add(1, Relaxed);
                    if !std::mem::replace(&mut self.warned, true) {
                        eprintln!("amf: fabric: TLS with controller {} at {} failed: {e}", self.node, self.addr);
                    }
                    self.connecting = None;
                    self.queued.clear();
                    stats.dropped.fetch_add(1, Relaxed);
                }
                Ok(Err(_)) | Err(TryRecvError::Disconnected) => {
                    // The peer is not up: what waited for it is dropped (and retransmitted).
                    self.connecting = None;
                    self.queued.clear();
                    stats.dropped.fetch_add(1, Relaxed);
                }
                Err(TryRecvError::Empty) => {}
            }
            return;
        }
        if self.last_attempt.is_some_and(|t| t.elapsed() < RECONNECT_PAUSE) {
            return;
        }
        self.last_attempt = Some(Instant::now());
        let (tx, rx) = bounded(1);
        let (addr, node, tls) = (self.addr, self.node, tls.cloned());
        let started = std::thread::Builder::new().name("fabric-connect".into()).spawn(move || {
            let _ = tx.send(connect_to(addr, node, tls.as_deref()));
        });
        if started.is_ok() {
            self.connecting = Some(rx);
        }
    }
}

/// What one incoming connection may cost, and what it must prove.
#[derive(Clone)]
struct Limits {
    payload_max: usize,
    idle: Duration,
    tls: Option<Arc<FabricTls>>,
}

/// A counted slot, given back when dropped.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(count: &Arc<AtomicUsize>) -> Slot {
        count.fetch_add(1, Relaxed);
        Slot(count.clone())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// What one peer has waiting in the loop's inbox (every connection from it counts).
#[derive(Default)]
struct PeerQueue {
    frames: AtomicUsize,
    bytes: AtomicUsize,
}

/// The inbox budgets: one per controller, and one for senders that name none (a plaintext
/// fabric's frames name their sender only by their own say).
type PeerQueues = Arc<[PeerQueue; 9]>;

/// A fabric frame's share of its peer's budget, given back when the loop takes the frame.
pub struct Credit {
    queues: PeerQueues,
    peer: usize,
    bytes: usize,
}

impl Credit {
    /// Waits (bounded by `stop`) until `peer` may have `bytes` more in the inbox, then takes
    /// them. A frame alone is always let through, so a budget never holds one forever.
    ///
    /// Meanwhile the frame's sender `from` still counts as heard while more of its bytes wait
    /// in `socket`: they are this controller's backlog (its loop is behind), not the link's
    /// silence, and a peer the lease's reach lost for that would turn a slow loop into a
    /// fence. A peer cut off is still found once the loop has caught up with what it sent,
    /// as with its frames already in the inbox.
    fn take(
        queues: &PeerQueues,
        (from, peer): (u8, u8),
        bytes: usize,
        (stats, socket): (&NetStats, &TcpStream),
        stop: &AtomicBool,
    ) -> Option<Credit> {
        let peer = (peer as usize).min(queues.len() - 1);
        let q = &queues[peer];
        let mut counted = false;
        let mut looked = Instant::now();
        loop {
            let frames = q.frames.load(Relaxed);
            let over = frames >= PEER_FRAMES_QUEUED_MAX || q.bytes.load(Relaxed) + bytes > PEER_BYTES_QUEUED_MAX;
            if frames == 0 || !over {
                break;
            }
            if stop.load(Relaxed) {
                return None;
            }
            if !std::mem::replace(&mut counted, true) {
                stats.throttled.fetch_add(1, Relaxed);
            }
            if looked.elapsed() >= THROTTLED_HEARD_EVERY {
                looked = Instant::now();
                if let (true, Some(t)) = (bytes_waiting(socket), stats.heard_ns.get(from as usize)) {
                    t.store(crate::raid::fence::now_ns().max(1), Relaxed);
                }
            }
            std::thread::sleep(THROTTLE_PAUSE);
        }
        q.frames.fetch_add(1, Relaxed);
        q.bytes.fetch_add(bytes, Relaxed);
        Some(Credit { queues: queues.clone(), peer, bytes })
    }
}

/// Whether bytes wait unread in `s`'s receive buffer. The reader that owns `s` is the only
/// one reading it, and it is not reading now (it waits for a budget), so switching the socket
/// to non-blocking for a peek disturbs nothing; if it cannot be switched back, the reader's
/// next read fails and the connection ends (the peer connects again).
fn bytes_waiting(s: &TcpStream) -> bool {
    if s.set_nonblocking(true).is_err() {
        return false;
    }
    let waiting = matches!(s.peek(&mut [0u8; 1]), Ok(n) if n > 0);
    let _ = s.set_nonblocking(false);
    waiting
}

impl Drop for Credit {
    fn drop(&mut self) {
        let q = &self.queues[self.peer];
        q.frames.fetch_sub(1, Relaxed);
        q.bytes.fetch_sub(self.bytes, Relaxed);
    }
}

/// The incoming connections in their TLS handshake, oldest first (with a handle to close one).
#[derive(Default)]
struct Handshakes {
    next: u64,
    open: std::collections::VecDeque<(u64, TcpStream)>,
}

/// A connection's place among the handshakes, left when dropped (handshake over).
struct Handshake {
    id: u64,
    all: Arc<std::sync::Mutex<Handshakes>>,
}

impl Handshake {
    /// Enters `s`; past `HANDSHAKES_MAX` the oldest is closed (its reader then fails).
    fn enter(all: &Arc<std::sync::Mutex<Handshakes>>, s: &TcpStream, stats: &NetStats) -> Option<Handshake> {
        let handle = s.try_clone().ok()?;
        let (id, evicted) = {
            let mut h = all.lock().unwrap_or_else(|p| p.into_inner());
            let evicted = (h.open.len() >= HANDSHAKES_MAX).then(|| h.open.pop_front()).flatten();
            let id = h.next;
            h.next += 1;
            h.open.push_back((id, handle));
            (id, evicted)
        };
        if let Some((_, old)) = evicted {
            stats.refused.fetch_add(1, Relaxed);
            let _ = old.shutdown(std::net::Shutdown::Both);
        }
        Some(Handshake { id, all: all.clone() })
    }
}

impl Drop for Handshake {
    fn drop(&mut self) {
        self.all.lock().unwrap_or_else(|p| p.into_inner()).open.retain(|(id, _)| *id != self.id);
    }
}

fn accept(listener: TcpListener, limits: Limits, inbox: Inbox, stats: Arc<NetStats>, stop: Arc<AtomicBool>) {
    let open = Arc::new(AtomicUsize::new(0));
    let handshakes = Arc::new(std::sync::Mutex::new(Handshakes::default()));
    let queues: PeerQueues = Arc::new(Default::default());
    while !stop.load(Relaxed) {
        match listener.accept() {
            Ok((s, _)) => {
                let tls = limits.tls.is_some();
                if open.load(Relaxed) >= INCOMING_MAX {
                    stats.refused.fetch_add(1, Relaxed);
                    continue;
                }
                let (inbox, stats, stop) = (inbox.clone(), stats.clone(), stop.clone());
                let (limits, queues) = (limits.clone(), queues.clone());
                let first_timeout = if tls { HANDSHAKE_TIMEOUT.min(limits.idle) } else { limits.idle };
                if s.set_nonblocking(false).and_then(|_| s.set_read_timeout(Some(first_timeout))).is_err() {
                    continue;
                }
                let handshake = if tls {
                    let Some(h) = Handshake::enter(&handshakes, &s, &stats) else { continue };
                    Some(h)
                } else {
                    None
                };
                let slot = Slot::take(&open);
                let _ = std::thread::Builder::new().name("fabric-from".into()).spawn(move || {
                    reader(s, &limits, handshake, Queue { inbox, queues }, &stats, stop);
                    drop(slot);
                });
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// Where a reader puts frames: the loop's inbox, within each peer's budget.
struct Queue {
    inbox: Inbox,
    queues: PeerQueues,
}

/// Serves one incoming connection; `handshake` is its place among the connections still in
/// their TLS handshake, given up once the peer is proven.
fn reader(
    s: TcpStream,
    limits: &Limits,
    handshake: Option<Handshake>,
    inbox: Queue,
    stats: &NetStats,
    stop: Arc<AtomicBool>,
) {
    let Some(tls) = &limits.tls else {
        return frames(std::io::BufReader::new(&s), (&s, None), limits.payload_max, inbox, stats, stop);
    };
    let who = s.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let refuse = |why: String| {
        stats.tls_refused.fetch_add(1, Relaxed);
        eprintln!("amf: fabric: refused a connection from {who}: {why}");
    };
    let mut conn = match rustls::ServerConnection::new(tls.server.clone()) {
        Ok(c) => c,
        Err(e) => return refuse(e.to_string()),
    };
    let mut sock = &s;
    while conn.is_handshaking() {
        match conn.complete_io(&mut sock) {
            Ok(_) => {}
            Err(e) if is_timeout(&e) => {
                stats.idle_closed.fetch_add(1, Relaxed);
                return;
            }
            Err(e) => return refuse(e.to_string()),
        }
    }
    let Some(node) = conn.peer_certificates().and_then(node_of) else {
        return refuse("its certificate names no controller".into());
    };
    drop(handshake);
    if s.set_read_timeout(Some(limits.idle)).is_err() {
        return;
    }
    let stream = rustls::StreamOwned::new(conn, &s);
    frames(std::io::BufReader::new(stream), (&s, Some(node)), limits.payload_max, inbox, stats, stop)
}

/// Decodes frames from one incoming connection (`r`, reading `socket`) into the inbox; `node`
/// is who its certificate says is on the other end, where there is one.
fn frames(
    mut r: impl Read,
    (socket, node): (&TcpStream, Option<u8>),
    payload_max: usize,
    inbox: Queue,
    stats: &NetStats,
    stop: Arc<AtomicBool>,
) {
    // Blocking reads, with the idle timeout: a timeout (inside a frame or between frames) ends
    // the connection, so no frame is ever read from its middle. The thread ends when the peer
    // closes, idles or sends garbage, or when the loop is gone.
    while !stop.load(Relaxed) {
        match read_sized(&mut r, payload_max) {
            Ok((from, _, _, _)) if node.is_some_and(|n| n != from) => {
                stats.tls_refused.fetch_add(1, Relaxed);
                eprintln!(
                    "amf: fabric: closing a connection: a frame says it is from controller {from}, the certificate is {}",
                    node.map(node_name).unwrap_or_default()
                );
                return;
            }
            Ok((from, epoch, msg, bytes)) => {
                stats.received.fetch_add(1, Relaxed);
                if let Some(t) = stats.heard_ns.get(from as usize) {
                    t.store(crate::raid::fence::now_ns().max(1), Relaxed);
                }
                let budget = (from, node.unwrap_or(from));
                let Some(credit) = Credit::take(&inbox.queues, budget, bytes, (stats, socket), &stop) else {
                    return;
                };
                if inbox.inbox.send(super::Event::Fabric { from, epoch, msg, credit }).is_err() {
                    return;
                }
            }
            Err(FrameError::Io(e)) if is_timeout(&e) => {
                stats.idle_closed.fetch_add(1, Relaxed);
                return;
            }
            Err(FrameError::Io(_)) => return,
            Err(e) => {
                stats.refused.fetch_add(1, Relaxed);
                eprintln!("amf: fabric: closing a connection: {e}");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// The line payloads are encoded as bytes; the frame must be what the per-byte sequence
    /// encoding of format version 2 gave (the kinds that were in version 2 kept their encoding).
    #[test]
    fn line_payloads_keep_the_sequence_encoding_and_round_trip() {
        #[derive(serde::Serialize)]
        enum Seq {
            Replicate { id: u64, line: u64, wseq: u64, data: Vec<u8> },
        }
        let data: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
        let msg = Msg::Replicate { id: 3, line: 9, wseq: 12, data: data.clone() };
        let ours = bincode::serialize(&msg).unwrap();
        let seq = bincode::serialize(&Seq::Replicate { id: 3, line: 9, wseq: 12, data: data.clone() }).unwrap();
        assert_eq!(ours, seq);
        for msg in [msg, Msg::LineData { id: 4, data: Some(data) }, Msg::LineData { id: 5, data: None }] {
            let frame = encode(1, 7, &msg).unwrap();
            let (from, epoch, back) = read_frame(&mut frame.as_slice(), 1 << 20).unwrap();
            assert_eq!((from, epoch, back), (1, 7, msg));
        }
    }

    /// Strangers cannot take a controller's threads: past `INCOMING_MAX` open connections new
    /// ones are closed at once, a connection that sends nothing is closed after the idle
    /// timeout, and a peer that connects afterwards is served.
    #[test]
    fn incoming_connections_are_bounded_and_idle_ones_closed() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = crossbeam_channel::unbounded();
        let limits = Limits { payload_max: 1 << 16, idle: Duration::from_millis(1500), tls: None };
        let net = Net::start_with(listener, 0, 1, &[], limits, tx).unwrap();
        let wait_for = |what: &str, f: &dyn Fn() -> bool| {
            let deadline = Instant::now() + Duration::from_secs(20);
            while !f() {
                assert!(Instant::now() < deadline, "{what}");
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        let extra = 5;
        let idle: Vec<TcpStream> = (0..INCOMING_MAX + extra).map(|_| TcpStream::connect(addr).unwrap()).collect();
        wait_for("the connections past the limit are refused", &|| net.stats.refused.load(Relaxed) >= extra as u64);
        wait_for("idle connections are closed", &|| net.stats.idle_closed.load(Relaxed) >= INCOMING_MAX as u64);
        drop(idle);
        let mut peer = TcpStream::connect(addr).unwrap();
        peer.write_all(&encode(3, 1, &Msg::Hello { incarnation: 7 }).unwrap()).unwrap();
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(super::super::Event::Fabric { from, epoch, msg, .. }) => {
                assert_eq!((from, epoch, msg), (3, 1, Msg::Hello { incarnation: 7 }))
            }
            _ => panic!("the peer's frame did not arrive"),
        }
    }

    /// A loop behind its inbox is not a peer gone silent: while a peer's reader is throttled
    /// and its frames wait in the socket, the lease's reach still hears it; once it stops
    /// sending and the loop has caught up, it is no longer heard.
    #[test]
    fn a_throttled_peer_that_keeps_sending_stays_heard() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = crossbeam_channel::unbounded();
        let limits = Limits { payload_max: 1 << 16, idle: Duration::from_secs(30), tls: None };
        let net = Net::start_with(listener, 0, 1, &[], limits, tx).unwrap();
        let sending = Arc::new(AtomicBool::new(true));
        let peer = {
            let sending = sending.clone();
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_write_timeout(Some(Duration::from_millis(50))).unwrap();
                let frame = encode(1, 1, &Msg::Hello { incarnation: 7 }).unwrap();
                // A burst past the budget, then a heartbeat every 10 ms (a write that times
                // out leaves the frame half sent: the connection is dropped after the test).
                for _ in 0..2 * PEER_FRAMES_QUEUED_MAX {
                    s.write_all(&frame).unwrap();
                }
                while sending.load(Relaxed) {
                    if s.write_all(&frame).is_err() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                s
            })
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while net.stats.throttled.load(Relaxed) == 0 {
            assert!(Instant::now() < deadline, "the reader was not throttled: {} queued", rx.len());
            std::thread::sleep(Duration::from_millis(5));
        }
        // The loop takes nothing for longer than the window asked about.
        let window_ns = 300_000_000;
        std::thread::sleep(Duration::from_millis(600));
        assert_eq!(net.stats.heard_within(window_ns) & 0b10, 0b10, "a throttled peer that keeps sending is heard");
        sending.store(false, Relaxed);
        let s = peer.join().unwrap();
        // The loop catches up; the peer, silent but connected, is no longer heard.
        while rx.recv_timeout(Duration::from_millis(100)).is_ok() {}
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(net.stats.heard_within(window_ns) & 0b10, 0, "a silent peer is not heard");
        drop(s);
    }

    /// A peer that floods the fabric holds at most its budget of the loop's inbox, in frames
    /// and in bytes; the others' frames get in beside it, and nothing of the flood is lost
    /// (TCP pushes back until the loop takes what waits).
    #[test]
    fn a_flooding_peer_holds_at_most_its_share_of_the_inbox() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = crossbeam_channel::unbounded();
        let line = 64 << 10;
        let limits = Limits { payload_max: line + 1024, idle: Duration::from_secs(30), tls: None };
        let net = Net::start_with(listener, 0, 1, &[], limits, tx).unwrap();
        let flood = |from: u8, count: usize, msg: Msg| {
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                let frame = encode(from, 1, &msg).unwrap();
                for _ in 0..count {
                    s.write_all(&frame).unwrap();
                }
                s
            })
        };
        let (small, big) = (3 * PEER_FRAMES_QUEUED_MAX, 2 * PEER_BYTES_QUEUED_MAX / line);
        let hellos = flood(1, small, Msg::Hello { incarnation: 7 });
        let lines = flood(2, big, Msg::LineData { id: 1, data: Some(vec![7; line]) });
        let deadline = Instant::now() + Duration::from_secs(20);
        while net.stats.throttled.load(Relaxed) < 2 {
            assert!(Instant::now() < deadline, "the floods were not throttled: {} queued", rx.len());
            std::thread::sleep(Duration::from_millis(5));
        }
        let bounded = PEER_FRAMES_QUEUED_MAX + PEER_BYTES_QUEUED_MAX / line;
        std::thread::sleep(Duration::from_millis(200));
        assert!(rx.len() <= bounded, "{} frames queued, budget {bounded}", rx.len());
        let before = rx.len();
        let mut other = TcpStream::connect(addr).unwrap();
        other.write_all(&encode(3, 1, &Msg::Hello { incarnation: 7 }).unwrap()).unwrap();
        while rx.len() == before {
            assert!(Instant::now() < deadline, "the other peer's frame did not get in beside the floods");
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut got = [0usize; 4];
        let mut third_at = None;
        while got.iter().sum::<usize>() < small + big + 1 {
            match rx.recv_timeout(Duration::from_secs(10)) {
                Ok(super::super::Event::Fabric { from, .. }) => {
                    got[from as usize] += 1;
                    if from == 3 {
                        third_at = Some(got.iter().sum::<usize>());
                    }
                }
                _ => panic!("frames were lost: {got:?}"),
            }
        }
        assert_eq!(got, [0, small, big, 1]);
        let third_at = third_at.unwrap();
        assert!(third_at <= bounded + 1, "the other peer's frame waited behind {third_at} frames");
        drop((hellos.join().unwrap(), lines.join().unwrap()));
    }

    fn fabric_tls(dir: &std::path::Path, nodes: u8) -> Vec<crate::tls::fabric::FabricTlsConfig> {
        crate::tls::fabric::generate_cluster(dir, nodes).unwrap()
    }

    /// Strangers that open connections and never finish a TLS handshake hold at most
    /// `HANDSHAKES_MAX` of them (each newer one closes the oldest), for `HANDSHAKE_TIMEOUT`
    /// each; a peer of the cluster that connects meanwhile is served at once.
    #[test]
    fn unfinished_handshakes_cannot_keep_peers_out() {
        let dir = tempfile::tempdir().unwrap();
        let ours = fabric_tls(dir.path(), 2);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = crossbeam_channel::unbounded();
        let tls = |n: u8| Some(Arc::new(ours[n as usize].load(n).unwrap()));
        let limits = Limits { payload_max: 1 << 16, idle: Duration::from_secs(30), tls: tls(0) };
        let server = Net::start_with(listener, 0, 1, &[], limits, tx).unwrap();
        let strangers: Vec<TcpStream> = (0..INCOMING_MAX + 4).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        while server.stats.refused.load(Relaxed) < (INCOMING_MAX + 4 - HANDSHAKES_MAX) as u64 {
            assert!(Instant::now() < deadline, "strangers past the handshake budget were not refused");
            std::thread::sleep(Duration::from_millis(5));
        }
        // The strangers still hold their slots: the peer gets in beside them, well before their
        // handshakes time out.
        let started = Instant::now();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let limits = Limits { payload_max: 1 << 16, idle: Duration::from_secs(30), tls: tls(1) };
        let (itx, _irx) = crossbeam_channel::unbounded();
        let mut peer = Net::start_with(l, 1, 1, &[(0, addr)], limits, itx).unwrap();
        let arrived = loop {
            peer.send(0, &Msg::Hello { incarnation: 7 });
            peer.flush();
            if let Ok(super::super::Event::Fabric { from: 1, .. }) = rx.recv_timeout(Duration::from_millis(50)) {
                break true;
            }
            if started.elapsed() > HANDSHAKE_TIMEOUT / 2 {
                break false;
            }
        };
        assert!(arrived, "the peer was kept out by strangers");
        assert!(started.elapsed() < HANDSHAKE_TIMEOUT, "{:?}", started.elapsed());
        drop(strangers);
    }

    /// Mutual TLS: a peer of the cluster gets its frames through; a plaintext stranger, a
    /// controller of another cluster and a controller that claims another node's id are refused
    /// and counted, and none of their frames reaches the loop.
    #[test]
    fn mutual_tls_carries_frames_and_refuses_strangers() {
        let dir = tempfile::tempdir().unwrap();
        let ours = fabric_tls(&dir.path().join("ours"), 3);
        let theirs = fabric_tls(&dir.path().join("theirs"), 3);
        let tls = |c: &crate::tls::fabric::FabricTlsConfig, n: u8| Some(Arc::new(c.load(n).unwrap()));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = crossbeam_channel::unbounded();
        let limits = Limits { payload_max: 1 << 16, idle: Duration::from_secs(5), tls: tls(&ours[0], 0) };
        let server = Net::start_with(listener, 0, 1, &[], limits, tx).unwrap();
        let send_from = |node: u8, t: Option<Arc<FabricTls>>| {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let limits = Limits { payload_max: 1 << 16, idle: Duration::from_secs(5), tls: t };
            let (itx, _irx) = crossbeam_channel::unbounded();
            let mut net = Net::start_with(l, node, 1, &[(0, addr)], limits, itx).unwrap();
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                net.send(0, &Msg::Hello { incarnation: 7 });
                net.flush();
                std::thread::sleep(Duration::from_millis(50));
            }
            net
        };
        let arrived = |rx: &crossbeam_channel::Receiver<super::super::Event>| {
            let mut from = Vec::new();
            while let Ok(super::super::Event::Fabric { from: f, .. }) = rx.recv_timeout(Duration::from_millis(300)) {
                from.push(f);
            }
            from
        };
        let peer = send_from(1, tls(&ours[1], 1));
        let got = arrived(&rx);
        assert!(
            !got.is_empty() && got.iter().all(|f| *f == 1),
            "frames of a peer with the cluster's certificate: {got:?}"
        );
        assert_eq!(peer.stats.tls_refused.load(Relaxed), 0);

        let mut plain = TcpStream::connect(addr).unwrap();
        plain.write_all(&encode(1, 1, &Msg::Hello { incarnation: 7 }).unwrap()).unwrap();
        let other = send_from(1, tls(&theirs[1], 1));
        assert!(other.stats.tls_refused.load(Relaxed) > 0, "the stranger sees the cluster's certificate fail");
        // Node 2's certificate, frames saying node 1.
        let liar = send_from(1, tls(&ours[2], 2));
        assert!(liar.stats.sent.load(Relaxed) > 0);
        assert_eq!(arrived(&rx), Vec::<u8>::new(), "no frame of a stranger or a liar reaches the loop");
        assert!(server.stats.tls_refused.load(Relaxed) >= 3, "{:?}", server.stats.tls_refused);
    }
}
