//! The fabric between controllers' machines: one-way messages over TCP. Every frame has a
//! fixed header (magic, format version, sender, epoch, payload length) and a bincode payload
//! (the serde form of [`Msg`]); nothing is decoded by hand. The event loop owns the outgoing
//! connections: it queues frames per peer and writes them without blocking at the end of each
//! round (one write for everything a round sent a peer; what the socket does not take waits
//! for the next round), so a message costs no thread hand-off on the way out. Connections are
//! made by a short-lived thread, never by the loop. Incoming connections are read by the loop
//! too: an accept thread takes them (and, with TLS, a thread per connection does the server's
//! handshake, blocking and bounded), then hands them to the loop, which has them in its poll
//! and decodes their frames without blocking, at most a share of each connection per round, so
//! a frame reaches the machine with no thread hand-off and a peer that floods cannot crowd the
//! others out. Lost messages are the machine's business: it retransmits its requests.
//!
//! With fabric TLS (`tls::fabric`) every connection is mutual TLS under the cluster's CA: the
//! connecting thread does the handshake (blocking, bounded) before it hands the connection to
//! the loop, which then writes records without blocking; an incoming connection is accepted
//! only from a peer whose certificate names a node, and only frames that say they come from
//! that node.

use crate::amf::io::Msg;
use crate::nbd::LoopWake;
use crate::tls::fabric::{node_name, node_of, FabricTls};
use crate::tls::nonblocking;
use crossbeam_channel::{bounded, unbounded, Receiver, Sender, TryRecvError};
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
/// The accept thread's poll: the listener, and the stop's wake.
const ACCEPT_LISTEN_TOKEN: mio::Token = mio::Token(0);
const ACCEPT_STOP_TOKEN: mio::Token = mio::Token(1);
/// The accept thread's longest sleep (a safety net: a connection or the stop wakes it).
const ACCEPT_WAIT: Duration = Duration::from_millis(500);
/// The accept thread's pause after a failed accept (it polled every 5 ms before it slept in
/// a poll: 0.6% of a core for an idle controller).
const ACCEPT_PAUSE: Duration = Duration::from_millis(5);
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
/// Frames the loop decodes from one incoming connection in one round. What the peer sent
/// beyond waits in the socket (TCP then pushes back on the peer, whose own queue drops and
/// retransmits), so a peer that floods gets its share of each round and the frames of the
/// others wait behind at most this many of its own. A peer's legitimate bursts (a round's
/// replicas and invalidations) are a few hundred frames.
pub const FRAMES_PER_ROUND_MAX: usize = 1024;
/// Bytes the loop reads from one incoming connection in one round (as above; 64 lines of 64 KiB).
pub const BYTES_PER_ROUND_MAX: usize = 4 << 20;
/// Bytes taken from a socket by one read.
const READ_CHUNK_BYTES: usize = 256 << 10;
/// The incoming connections' tokens in the loop's poll start here (below: the NBD server's).
const FIRST_INCOMING_TOKEN: usize = 1 << 40;

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
    /// Rounds in which the loop stopped reading a connection at its share
    /// (`FRAMES_PER_ROUND_MAX` frames or `BYTES_PER_ROUND_MAX` bytes) with more of it waiting.
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
    /// Wakes the accept thread to see `stop`.
    accept_wake: Arc<mio::Waker>,
    /// The loop's poll, where incoming connections are registered.
    registry: mio::Registry,
    /// Incoming connections accepted (and, with TLS, proven) for the loop to take.
    adopted: Receiver<Adopted>,
    incoming: std::collections::BTreeMap<usize, Incoming>,
    next_token: usize,
    payload_max: usize,
    idle: Duration,
    /// What one read from a socket lands in.
    chunk: Vec<u8>,
}

/// The loop's poll, as the fabric needs it: where incoming connections are registered, and the
/// wake that tells the loop one is there.
pub struct Polled<'a> {
    /// The poll's registry.
    pub registry: &'a mio::Registry,
    /// Its wake.
    pub wake: Arc<LoopWake>,
}

impl Net {
    /// Starts accepting on `listener` (the connections go to the loop `polled` describes, which
    /// reads them with [`Net::receive`]); peers are connected when there is something to send
    /// them. With `tls`, every connection is mutual TLS.
    pub fn start(
        listener: TcpListener,
        node: u8,
        epoch: u32,
        peers: &[(u8, SocketAddr)],
        payload_max: usize,
        tls: Option<Arc<FabricTls>>,
        polled: Polled,
    ) -> std::io::Result<Net> {
        Net::start_with(listener, node, epoch, peers, Limits { payload_max, idle: IDLE_TIMEOUT, tls }, polled)
    }

    fn start_with(
        listener: TcpListener,
        node: u8,
        epoch: u32,
        peers: &[(u8, SocketAddr)],
        limits: Limits,
        polled: Polled,
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
        let (payload_max, idle) = (limits.payload_max, limits.idle);
        listener.set_nonblocking(true)?;
        let (tx, adopted) = unbounded();
        let to_loop = ToLoop { tx, wake: polled.wake };
        // Before the thread: if the clone fails, no thread is left accepting for nobody.
        let registry = polled.registry.try_clone()?;
        // The accept thread sleeps until a connection comes or the stop wakes it.
        let accept_poll = mio::Poll::new()?;
        let accept_wake = Arc::new(mio::Waker::new(accept_poll.registry(), ACCEPT_STOP_TOKEN)?);
        accept_poll.registry().register(
            &mut mio::unix::SourceFd(&std::os::fd::AsRawFd::as_raw_fd(&listener)),
            ACCEPT_LISTEN_TOKEN,
            mio::Interest::READABLE,
        )?;
        std::thread::Builder::new()
            .name("fabric-accept".into())
            .spawn(move || accept(accept_poll, listener, limits, to_loop, s, st))?;
        Ok(Net {
            node,
            tls,
            epoch: AtomicU32::new(epoch),
            peers: out,
            stats,
            stop,
            accept_wake,
            registry,
            adopted,
            incoming: std::collections::BTreeMap::new(),
            next_token: FIRST_INCOMING_TOKEN,
            payload_max,
            idle,
            chunk: vec![0u8; READ_CHUNK_BYTES],
        })
    }

    /// Takes the connections accepted since, reads those the poll's `events` found readable
    /// (and those with more waiting from an earlier round), up to each one's share of a round,
    /// and gives their frames: (sender, epoch, message). Closes the connections that ended,
    /// sent garbage or brought no frame for the idle time.
    pub fn receive(&mut self, events: &mio::Events) -> Vec<(u8, u32, Msg)> {
        while let Ok(a) = self.adopted.try_recv() {
            self.adopt(a);
        }
        for ev in events.iter() {
            if let Some(c) = self.incoming.get_mut(&ev.token().0) {
                c.readable = true;
            }
        }
        let mut out = Vec::new();
        let mut ended = Vec::new();
        let now = Instant::now();
        for (t, c) in self.incoming.iter_mut() {
            if c.round(&mut self.chunk, self.payload_max, &self.stats, &mut out).is_err() {
                ended.push(*t);
            } else if now.saturating_duration_since(c.last_frame) > self.idle {
                self.stats.idle_closed.fetch_add(1, Relaxed);
                ended.push(*t);
            }
        }
        for t in ended {
            if let Some(mut c) = self.incoming.remove(&t) {
                let _ = self.registry.deregister(c.io.socket());
                let _ = c.io.socket().shutdown(std::net::Shutdown::Both);
            }
        }
        out
    }

    /// A connection has more waiting than its last round took: the loop must not sleep.
    pub fn busy(&self) -> bool {
        !self.adopted.is_empty() || self.incoming.values().any(|c| c.more)
    }

    /// Registers an accepted connection with the loop's poll.
    fn adopt(&mut self, a: Adopted) {
        let Adopted { stream, tls, node, slot } = a;
        if stream.set_nonblocking(true).is_err() {
            return;
        }
        let mut sock = mio::net::TcpStream::from_std(stream);
        let token = self.next_token;
        self.next_token += 1;
        if self.registry.register(&mut sock, mio::Token(token), mio::Interest::READABLE).is_err() {
            return;
        }
        let io = match tls {
            None => nonblocking::Stream::plain(sock),
            Some(c) => nonblocking::Stream::with_tls(sock, rustls::Connection::Server(c)),
        };
        let last_frame = Instant::now();
        let c = Incoming { io, node, buf: Vec::new(), at: 0, readable: true, more: false, last_frame, _slot: slot };
        self.incoming.insert(token, c);
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
        let _ = self.accept_wake.wake();
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        let _ = self.accept_wake.wake();
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

/// An incoming connection, read by the loop.
struct Incoming {
    io: nonblocking::Stream<mio::net::TcpStream>,
    /// The node its certificate names (TLS), whose frames alone it may carry.
    node: Option<u8>,
    /// Bytes received; those before `at` are decoded.
    buf: Vec<u8>,
    at: usize,
    /// The socket may hold bytes not read yet (set by the poll's readable edge, cleared when a
    /// read finds it empty).
    readable: bool,
    /// The last round stopped at the connection's share with more waiting.
    more: bool,
    last_frame: Instant,
    /// Its place among `INCOMING_MAX`.
    _slot: Slot,
}

impl Incoming {
    /// Reads and decodes up to the connection's share of a round into `out`; Err when it ended
    /// (the peer closed, the socket failed, or it sent garbage or another node's frames).
    fn round(
        &mut self,
        chunk: &mut [u8],
        payload_max: usize,
        stats: &NetStats,
        out: &mut Vec<(u8, u32, Msg)>,
    ) -> Result<(), ()> {
        let (mut frames, mut bytes) = (0usize, 0usize);
        self.more = false;
        loop {
            while frames < FRAMES_PER_ROUND_MAX {
                let rest = &self.buf[self.at..];
                let decoded = whole_frame(rest, payload_max)
                    .and_then(|len| len.map(|len| read_sized(&mut &rest[..len], payload_max)).transpose());
                let (from, epoch, msg, len) = match decoded {
                    Ok(Some((from, epoch, msg, payload))) => (from, epoch, msg, HEADER_BYTES + payload),
                    Ok(None) => break,
                    Err(e) => {
                        stats.refused.fetch_add(1, Relaxed);
                        eprintln!("amf: fabric: closing a connection: {e}");
                        return Err(());
                    }
                };
                if self.node.is_some_and(|n| n != from) {
                    stats.tls_refused.fetch_add(1, Relaxed);
                    eprintln!(
                        "amf: fabric: closing a connection: a frame says it is from controller {from}, the certificate is {}",
                        self.node.map(node_name).unwrap_or_default()
                    );
                    return Err(());
                }
                self.at += len;
                frames += 1;
                self.last_frame = Instant::now();
                stats.received.fetch_add(1, Relaxed);
                if let Some(t) = stats.heard_ns.get(from as usize) {
                    t.store(crate::raid::fence::now_ns().max(1), Relaxed);
                }
                out.push((from, epoch, msg));
            }
            if frames >= FRAMES_PER_ROUND_MAX || bytes >= BYTES_PER_ROUND_MAX {
                self.more = self.readable || matches!(whole_frame(&self.buf[self.at..], payload_max), Ok(Some(_)));
                if self.more {
                    stats.throttled.fetch_add(1, Relaxed);
                }
                return Ok(());
            }
            if !self.readable {
                return Ok(());
            }
            if self.at > 0 {
                self.buf.drain(..self.at);
                self.at = 0;
            }
            match self.io.read(chunk) {
                Ok(0) => return Err(()),
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    bytes += n;
                    // A plaintext read short of the chunk emptied the socket (what comes later
                    // raises a new edge); through TLS, a short socket read with no plaintext
                    // left in rustls.
                    if (n < chunk.len() && !self.io.is_tls()) || self.io.drained() {
                        self.readable = false;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => self.readable = false,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Err(()),
            }
        }
    }
}

/// The length of the whole frame at the start of `buf`, None while part of it has not come;
/// Err for a header no frame has.
fn whole_frame(buf: &[u8], payload_max: usize) -> Result<Option<usize>, FrameError> {
    let Some(h) = buf.get(..HEADER_BYTES) else { return Ok(None) };
    let magic = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    if magic != MAGIC {
        return Err(FrameError::Magic(magic));
    }
    if h[4] != VERSION {
        return Err(FrameError::Version(h[4]));
    }
    let len = u32::from_le_bytes([h[10], h[11], h[12], h[13]]) as usize;
    if len > payload_max {
        return Err(FrameError::TooLong(len));
    }
    Ok((buf.len() >= HEADER_BYTES + len).then_some(HEADER_BYTES + len))
}

/// An incoming connection on its way to the loop: TLS proven where the fabric has it.
struct Adopted {
    stream: TcpStream,
    tls: Option<rustls::ServerConnection>,
    node: Option<u8>,
    slot: Slot,
}

/// The way to the loop for accepted connections.
#[derive(Clone)]
struct ToLoop {
    tx: Sender<Adopted>,
    wake: Arc<LoopWake>,
}

impl ToLoop {
    fn adopt(&self, a: Adopted) {
        if self.tx.send(a).is_ok() {
            self.wake.wake();
        }
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

fn accept(
    mut poll: mio::Poll,
    listener: TcpListener,
    limits: Limits,
    to_loop: ToLoop,
    stats: Arc<NetStats>,
    stop: Arc<AtomicBool>,
) {
    let open = Arc::new(AtomicUsize::new(0));
    let handshakes = Arc::new(std::sync::Mutex::new(Handshakes::default()));
    let mut events = mio::Events::with_capacity(4);
    while !stop.load(Relaxed) {
        match listener.accept() {
            Ok((s, _)) => {
                if open.load(Relaxed) >= INCOMING_MAX {
                    stats.refused.fetch_add(1, Relaxed);
                    continue;
                }
                let slot = Slot::take(&open);
                let Some(tls) = limits.tls.clone() else {
                    to_loop.adopt(Adopted { stream: s, tls: None, node: None, slot });
                    continue;
                };
                if s.set_nonblocking(false)
                    .and_then(|_| s.set_read_timeout(Some(HANDSHAKE_TIMEOUT.min(limits.idle))))
                    .is_err()
                {
                    continue;
                }
                let Some(place) = Handshake::enter(&handshakes, &s, &stats) else { continue };
                let (to_loop, stats) = (to_loop.clone(), stats.clone());
                let _ = std::thread::Builder::new().name("fabric-tls".into()).spawn(move || {
                    if let Some((conn, node)) = handshake(&s, &tls, place, &stats) {
                        to_loop.adopt(Adopted { stream: s, tls: Some(conn), node: Some(node), slot });
                    }
                });
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                // Edge-triggered: the listener was drained above, so the next connection (or
                // the stop's wake) raises a new edge.
                if poll.poll(&mut events, Some(ACCEPT_WAIT)).is_err() {
                    std::thread::sleep(ACCEPT_PAUSE);
                }
            }
            // A failed accept (out of descriptors, a connection reset before it was taken):
            // pause rather than spin on it.
            Err(_) => std::thread::sleep(ACCEPT_PAUSE),
        }
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// The server's side of an incoming connection's TLS handshake (blocking, bounded by the
/// socket's read timeout): the connection and the node its certificate names, or None (refused
/// and counted). `place` is its place among the connections still in their handshake, given
/// up once the peer is proven.
fn handshake(
    s: &TcpStream,
    tls: &FabricTls,
    place: Handshake,
    stats: &NetStats,
) -> Option<(rustls::ServerConnection, u8)> {
    let who = s.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let refuse = |why: String| {
        stats.tls_refused.fetch_add(1, Relaxed);
        eprintln!("amf: fabric: refused a connection from {who}: {why}");
    };
    let mut conn = match rustls::ServerConnection::new(tls.server.clone()) {
        Ok(c) => c,
        Err(e) => {
            refuse(e.to_string());
            return None;
        }
    };
    let mut sock = s;
    while conn.is_handshaking() {
        match conn.complete_io(&mut sock) {
            Ok(_) => {}
            Err(e) if is_timeout(&e) => {
                stats.idle_closed.fetch_add(1, Relaxed);
                return None;
            }
            Err(e) => {
                refuse(e.to_string());
                return None;
            }
        }
    }
    let Some(node) = conn.peer_certificates().and_then(node_of) else {
        refuse("its certificate names no controller".into());
        return None;
    };
    drop(place);
    s.set_read_timeout(None).ok()?;
    Some((conn, node))
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

    /// A loop's poll for a `Net` under test, kept with it.
    fn polled(poll: &mio::Poll) -> Polled<'_> {
        Polled { registry: poll.registry(), wake: LoopWake::new(poll.registry()).unwrap() }
    }

    /// A `Net` that only sends (its poll is never polled).
    fn sender(node: u8, peers: &[(u8, SocketAddr)], limits: Limits) -> (Net, mio::Poll) {
        let poll = mio::Poll::new().unwrap();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let net = Net::start_with(l, node, 1, peers, limits, polled(&poll)).unwrap();
        (net, poll)
    }

    /// Ends a receiving thread when dropped.
    struct Stop(Arc<AtomicBool>);

    impl Drop for Stop {
        fn drop(&mut self) {
            self.0.store(true, Relaxed);
        }
    }

    /// A `Net` that receives as a loop does, on a thread that polls for it and passes on the
    /// frames it decodes, until the `Stop` is dropped.
    fn receiver(
        listener: TcpListener,
        limits: Limits,
    ) -> (Arc<NetStats>, crossbeam_channel::Receiver<(u8, u32, Msg)>, Stop) {
        let (tx, rx) = crossbeam_channel::unbounded();
        let (stats_tx, stats_rx) = crossbeam_channel::bounded(1);
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            let mut poll = mio::Poll::new().unwrap();
            let p = polled(&poll);
            let wake = p.wake.clone();
            let mut net = Net::start_with(listener, 0, 1, &[], limits, p).unwrap();
            stats_tx.send(net.stats.clone()).unwrap();
            let mut events = mio::Events::with_capacity(64);
            while !stopped.load(Relaxed) {
                wake.sleep();
                let wait = if net.busy() { Duration::ZERO } else { Duration::from_millis(10) };
                poll.poll(&mut events, Some(wait)).unwrap();
                wake.awake();
                for f in net.receive(&events) {
                    let _ = tx.send(f);
                }
            }
            net.stop();
        });
        (stats_rx.recv().unwrap(), rx, Stop(stop))
    }

    /// Strangers cannot take a controller's connections: past `INCOMING_MAX` open ones new
    /// ones are closed at once, a connection that sends nothing is closed after the idle
    /// timeout, and a peer that connects afterwards is served.
    #[test]
    fn incoming_connections_are_bounded_and_idle_ones_closed() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = Limits { payload_max: 1 << 16, idle: Duration::from_millis(1500), tls: None };
        let (stats, rx, _stop) = receiver(listener, limits);
        let wait_for = |what: &str, f: &dyn Fn() -> bool| {
            let deadline = Instant::now() + Duration::from_secs(20);
            while !f() {
                assert!(Instant::now() < deadline, "{what}");
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        let extra = 5;
        let idle: Vec<TcpStream> = (0..INCOMING_MAX + extra).map(|_| TcpStream::connect(addr).unwrap()).collect();
        wait_for("the connections past the limit are refused", &|| stats.refused.load(Relaxed) >= extra as u64);
        wait_for("idle connections are closed", &|| stats.idle_closed.load(Relaxed) >= INCOMING_MAX as u64);
        drop(idle);
        let mut peer = TcpStream::connect(addr).unwrap();
        peer.write_all(&encode(3, 1, &Msg::Hello { incarnation: 7 }).unwrap()).unwrap();
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(frame) => assert_eq!(frame, (3, 1, Msg::Hello { incarnation: 7 })),
            Err(_) => panic!("the peer's frame did not arrive"),
        }
    }

    /// A peer that floods the fabric gets its share of each round, in frames and in bytes; a
    /// peer that connects meanwhile gets its frame through in the first round after, while the
    /// floods still wait, and nothing of the floods is lost (TCP pushes back until the loop
    /// reads what waits).
    #[test]
    fn a_flooding_peer_gets_its_share_of_each_round() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let line = 64 << 10;
        let limits = Limits { payload_max: line + 1024, idle: Duration::from_secs(30), tls: None };
        let mut poll = mio::Poll::new().unwrap();
        let mut net = Net::start_with(listener, 0, 1, &[], limits, polled(&poll)).unwrap();
        let mut events = mio::Events::with_capacity(64);
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
        let (small, big) = (4 * FRAMES_PER_ROUND_MAX, 4 * BYTES_PER_ROUND_MAX / line);
        let hellos = flood(1, small, Msg::Hello { incarnation: 7 });
        let lines = flood(2, big, Msg::LineData { id: 1, data: Some(vec![7; line]) });
        let lines_per_round_max = (BYTES_PER_ROUND_MAX + READ_CHUNK_BYTES) / line + 2;
        let mut got = [0usize; 4];
        let mut round = |net: &mut Net, poll: &mut mio::Poll, got: &mut [usize; 4]| {
            poll.poll(&mut events, Some(Duration::from_millis(10))).unwrap();
            let mut this = [0usize; 4];
            for (from, _, _) in net.receive(&events) {
                this[from as usize] += 1;
            }
            assert!(this[1] <= FRAMES_PER_ROUND_MAX, "{} frames of one peer in a round", this[1]);
            assert!(this[2] <= lines_per_round_max, "{} lines of one peer in a round", this[2]);
            for (g, t) in got.iter_mut().zip(this) {
                *g += t;
            }
            this
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while net.stats.throttled.load(Relaxed) < 2 {
            assert!(Instant::now() < deadline, "the floods were not held to their shares: {got:?}");
            round(&mut net, &mut poll, &mut got);
        }
        let mut other = TcpStream::connect(addr).unwrap();
        other.write_all(&encode(3, 1, &Msg::Hello { incarnation: 7 }).unwrap()).unwrap();
        while net.adopted.is_empty() {
            assert!(Instant::now() < deadline, "the other peer's connection was not accepted");
            std::thread::sleep(Duration::from_millis(5));
        }
        // Its bytes are there by now (sent before the connection got to the loop).
        std::thread::sleep(Duration::from_millis(50));
        let this = round(&mut net, &mut poll, &mut got);
        assert_eq!(this[3], 1, "the other peer's frame waited behind the floods");
        assert!(got[1] < small || got[2] < big, "the floods were already over: {got:?}");
        while got.iter().sum::<usize>() < small + big + 1 {
            assert!(Instant::now() < deadline, "frames were lost: {got:?}");
            round(&mut net, &mut poll, &mut got);
        }
        assert_eq!(got, [0, small, big, 1]);
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
        let tls = |n: u8| Some(Arc::new(ours[n as usize].load(n).unwrap()));
        let limits = Limits { payload_max: 1 << 16, idle: Duration::from_secs(30), tls: tls(0) };
        let (server, rx, _stop) = receiver(listener, limits);
        let strangers: Vec<TcpStream> = (0..INCOMING_MAX + 4).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        while server.refused.load(Relaxed) < (INCOMING_MAX + 4 - HANDSHAKES_MAX) as u64 {
            assert!(Instant::now() < deadline, "strangers past the handshake budget were not refused");
            std::thread::sleep(Duration::from_millis(5));
        }
        // The strangers still hold their slots: the peer gets in beside them, well before their
        // handshakes time out.
        let started = Instant::now();
        let limits = Limits { payload_max: 1 << 16, idle: Duration::from_secs(30), tls: tls(1) };
        let (mut peer, _poll) = sender(1, &[(0, addr)], limits);
        let arrived = loop {
            peer.send(0, &Msg::Hello { incarnation: 7 });
            peer.flush();
            if let Ok((1, ..)) = rx.recv_timeout(Duration::from_millis(50)) {
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
        let limits = Limits { payload_max: 1 << 16, idle: Duration::from_secs(5), tls: tls(&ours[0], 0) };
        let (server, rx, _stop) = receiver(listener, limits);
        let send_from = |node: u8, t: Option<Arc<FabricTls>>| {
            let limits = Limits { payload_max: 1 << 16, idle: Duration::from_secs(5), tls: t };
            let (mut net, _poll) = sender(node, &[(0, addr)], limits);
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                net.send(0, &Msg::Hello { incarnation: 7 });
                net.flush();
                std::thread::sleep(Duration::from_millis(50));
            }
            net
        };
        let arrived = |rx: &crossbeam_channel::Receiver<(u8, u32, Msg)>| {
            let mut from = Vec::new();
            while let Ok((f, ..)) = rx.recv_timeout(Duration::from_millis(300)) {
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
        assert!(server.tls_refused.load(Relaxed) >= 3, "{:?}", server.tls_refused);
    }
}
