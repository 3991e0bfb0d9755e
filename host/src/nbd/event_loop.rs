//! One thread serves every NBD connection (mio, edge-triggered): it accepts, negotiates,
//! parses requests and writes replies, and hands each request to the backend, which answers
//! through a completion channel that wakes the loop. The thread is its own, or another loop's
//! that polls for it (the cluster controller's AMF loop, whose machine then gets each request
//! with no hand-off). A backend that takes requests itself (the cluster controller's) gets them
//! at once; one that blocks (the RAID engine) runs them on a small shared worker pool. An idle
//! or slow client costs a socket and its buffers, not a thread. A write's payload is received
//! completely before the request is handed on, so a client that disconnects mid-write leaves
//! nothing behind.

use super::negotiate::{self, Negotiation, Outcome, Tls};
use super::proto::*;
use super::server::{run_blocking, Backend, BackendError, Done, Request, ServerConfig, ServerStats};
/// A connection's bytes: plaintext, or TLS once the client sent NBD_OPT_STARTTLS.
type Transport = crate::tls::nonblocking::Stream<mio::net::TcpStream>;
use crate::metrics::{observe, Op};
use crossbeam_channel::{unbounded, Receiver, Sender};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use std::collections::{BTreeMap, BTreeSet};
use std::io::ErrorKind;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
/// Tokens of connections start here and are never reused.
const FIRST_CONNECTION: usize = 2;
/// Bytes read from a socket at a time.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Bytes read ahead of what the next request needs (headers of pipelined requests).
const READ_AHEAD_BYTES: usize = 256 * 1024;
/// Largest write assembled from adjacent pipelined writes.
const MERGE_BYTES_MAX: usize = 4 << 20;
/// Payload and unsent reply bytes one connection may hold at once: past it the loop stops
/// reading that connection until replies go out (64 queued 32 MiB reads would be 2 GiB).
const INFLIGHT_BYTES_MAX: u64 = 64 << 20;
/// The loop's longest sleep (negotiation deadlines and the stop flag are checked after it).
const POLL_TIMEOUT: Duration = Duration::from_millis(100);
/// How long a stop waits for requests in flight and their replies before it closes every
/// connection: well inside the 4 s a controller has to stop (a client that does not read its
/// replies must not hold the stop).
const STOP_WAIT: Duration = Duration::from_secs(2);
/// Rounds of read-parse-write per connection per wake-up (each either makes progress or ends).
const SERVICE_ROUNDS_MAX: usize = 64;

#[derive(Clone, Copy, Debug)]
enum Kind {
    Read,
    Write,
    Flush,
    Other,
}

/// A backend's answer, on its way back to the loop.
struct Completion {
    conn: usize,
    cookies: Vec<u64>,
    kind: Kind,
    /// Payload bytes the request held in its connection's budget.
    held: u64,
    received: Instant,
    result: Result<Vec<u8>, BackendError>,
}

enum Phase {
    Negotiating { state: Negotiation, deadline: Instant },
    Serving,
}

struct Connection {
    io: Transport,
    phase: Phase,
    /// TLS as negotiation sees it.
    tls: Tls,
    /// STARTTLS was acknowledged: TLS starts once the acknowledgement is on the wire.
    starttls: bool,
    /// Bytes received; those before `at` are consumed.
    inbuf: Vec<u8>,
    at: usize,
    outbuf: Vec<u8>,
    /// Bytes of `outbuf` already sent.
    sent: usize,
    inflight: usize,
    inflight_bytes: u64,
    /// No more requests are read: NBD_CMD_DISC, a protocol violation, an abort or a stop.
    no_more: bool,
    /// The client hung up (or a reply could not be sent): answers are dropped, and requests
    /// not started yet are not run.
    gone: Arc<AtomicBool>,
    /// A violation during negotiation: close at once.
    kill: bool,
    /// The last parse stopped for the byte budget (counted once per stall).
    budget_wait: bool,
    /// The socket may hold bytes not read yet: set by the poll's readable edge, cleared when a
    /// read finds the socket empty. Without it every turn that touches the connection (an
    /// answer, a writable edge) costs a read that finds nothing: five reads per request.
    readable: bool,
}

impl Connection {
    /// Received bytes not consumed yet.
    fn input(&self) -> &[u8] {
        &self.inbuf[self.at..]
    }

    /// Consumes `n` received bytes (the buffer is compacted before the next read).
    fn take(&mut self, n: usize) {
        self.at = (self.at + n).min(self.inbuf.len());
        if self.at == self.inbuf.len() {
            self.inbuf.clear();
            self.at = 0;
        }
    }

    fn unsent(&self) -> usize {
        self.outbuf.len() - self.sent
    }

    fn gone(&self) -> bool {
        self.gone.load(Relaxed)
    }
}

/// The worker pool for a backend that blocks.
struct Pool {
    tx: Option<Sender<Box<dyn FnOnce() + Send>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Pool {
    fn new(count: usize) -> std::io::Result<Pool> {
        let (tx, rx) = unbounded::<Box<dyn FnOnce() + Send>>();
        let threads = (0..count.max(1))
            .map(|i| {
                let rx = rx.clone();
                std::thread::Builder::new().name(format!("nbd-work-{i}")).spawn(move || {
                    for job in rx {
                        job();
                    }
                })
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Pool { tx: Some(tx), threads })
    }

    fn run(&self, job: Box<dyn FnOnce() + Send>) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(job);
        }
    }

    fn stop(&mut self) {
        self.tx = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Wakes a loop that sleeps in its poll, and only then: a thread that hands the loop work while
/// it is awake (its own completions among them) costs no system call.
pub struct LoopWake {
    waker: Waker,
    /// The loop is in (or about to enter) its poll.
    sleeping: AtomicBool,
}

impl LoopWake {
    /// A wake for the poll that `registry` belongs to, under token `WAKER`.
    pub fn new(registry: &mio::Registry) -> std::io::Result<Arc<LoopWake>> {
        Ok(Arc::new(LoopWake { waker: Waker::new(registry, WAKER)?, sleeping: AtomicBool::new(false) }))
    }

    /// Called after handing the loop work: wakes it if it sleeps.
    pub fn wake(&self) {
        // SeqCst pairs with `sleep`: either the loop's look at its queues after `sleep` sees
        // the work, or this sees it sleeping.
        if self.sleeping.swap(false, SeqCst) {
            let _ = self.waker.wake();
        }
    }

    /// Wakes the loop whatever it does (a stop).
    pub fn force(&self) {
        let _ = self.waker.wake();
    }

    /// The loop is about to look at its queues one last time and poll.
    pub fn sleep(&self) {
        self.sleeping.store(true, SeqCst);
    }

    /// The loop's poll returned.
    pub fn awake(&self) {
        self.sleeping.store(false, SeqCst);
    }
}

/// The server's loop (see the module notes). It runs on its own thread ([`EventLoop::run`]),
/// or inside another loop that polls for it and hands it what the poll found
/// ([`EventLoop::hosted`], [`EventLoop::turn`]): the cluster controller's, so that a request
/// reaches the state machine, and its answer the socket, with no thread hand-off.
pub struct EventLoop {
    /// Its own poll, when it runs on its own thread.
    poll: Option<Poll>,
    registry: mio::Registry,
    listener: Option<TcpListener>,
    waker: Arc<LoopWake>,
    /// When the stop flag was seen.
    stopping: Option<Instant>,
    /// No connection's negotiation deadline is earlier (None: none negotiates), so a turn
    /// walks the connections for expired negotiations only when one may have expired.
    negotiation_due: Option<Instant>,
    backend: Arc<dyn Backend>,
    cfg: ServerConfig,
    stats: Arc<ServerStats>,
    stop: Arc<AtomicBool>,
    conns: BTreeMap<usize, Connection>,
    next_token: usize,
    done_tx: Sender<Completion>,
    done_rx: Receiver<Completion>,
    pool: Pool,
    size: u64,
    /// What one read from a socket lands in (reused: zeroing 64 KiB per read cost more than
    /// the read).
    chunk: Vec<u8>,
}

fn protocol_error(stats: &ServerStats) {
    stats.protocol_violations.fetch_add(1, Relaxed);
}

fn errno(e: &BackendError, write: bool) -> u32 {
    match e {
        BackendError::OutOfRange if write => ENOSPC,
        BackendError::OutOfRange => EINVAL,
        BackendError::Io(_) => EIO,
    }
}

fn in_range(offset: u64, len: u64, size: u64) -> bool {
    offset.checked_add(len).is_some_and(|end| end <= size)
}

fn header(inbuf: &[u8]) -> Option<[u8; REQUEST_BYTES]> {
    let mut h = [0u8; REQUEST_BYTES];
    h.copy_from_slice(inbuf.get(..REQUEST_BYTES)?);
    Some(h)
}

impl EventLoop {
    /// A loop over `listener` with a poll of its own; the wake lets another thread interrupt
    /// its wait.
    pub fn new(
        listener: std::net::TcpListener,
        backend: Arc<dyn Backend>,
        cfg: ServerConfig,
        stats: Arc<ServerStats>,
        stop: Arc<AtomicBool>,
    ) -> std::io::Result<(EventLoop, Arc<LoopWake>)> {
        let poll = Poll::new()?;
        let waker = LoopWake::new(poll.registry())?;
        let mut l = EventLoop::hosted(poll.registry(), waker.clone(), listener, backend, cfg, stats, stop)?;
        l.poll = Some(poll);
        Ok((l, waker))
    }

    /// A loop over `listener` whose sockets are polled by the owner of `registry`, who hands
    /// each poll's events to [`EventLoop::turn`]; `waker` wakes that owner's poll (token
    /// `WAKER`), and tokens below `FIRST_CONNECTION` and `LISTENER`'s are this loop's.
    pub fn hosted(
        registry: &mio::Registry,
        waker: Arc<LoopWake>,
        listener: std::net::TcpListener,
        backend: Arc<dyn Backend>,
        cfg: ServerConfig,
        stats: Arc<ServerStats>,
        stop: Arc<AtomicBool>,
    ) -> std::io::Result<EventLoop> {
        listener.set_nonblocking(true)?;
        let mut listener = TcpListener::from_std(listener);
        registry.register(&mut listener, LISTENER, Interest::READABLE)?;
        let (done_tx, done_rx) = unbounded();
        let pool = Pool::new(cfg.workers)?;
        let size = backend.size();
        Ok(EventLoop {
            poll: None,
            registry: registry.try_clone()?,
            listener: Some(listener),
            waker,
            stopping: None,
            negotiation_due: None,
            backend,
            cfg,
            stats,
            stop,
            conns: BTreeMap::new(),
            next_token: FIRST_CONNECTION,
            done_tx,
            done_rx,
            pool,
            size,
            chunk: vec![0u8; READ_CHUNK_BYTES],
        })
    }

    /// Serves until the stop flag is set and every connection has ended.
    pub fn run(mut self) {
        let Some(mut poll) = self.poll.take() else { return self.finish() };
        let mut events = Events::with_capacity(1024);
        loop {
            self.waker.sleep();
            let timeout = if self.pending() { Duration::ZERO } else { POLL_TIMEOUT };
            let polled = poll.poll(&mut events, Some(timeout));
            self.waker.awake();
            if let Err(e) = polled {
                if e.kind() != ErrorKind::Interrupted {
                    eprintln!("amf: nbd event loop: {e}");
                    break;
                }
            }
            if self.turn(&events) {
                break;
            }
        }
        self.finish();
    }

    /// Answers wait to be written: the owner's poll must not sleep.
    pub fn pending(&self) -> bool {
        !self.done_rx.is_empty()
    }

    /// Serves what one poll's `events` found ready (other tokens than this loop's are left
    /// alone) and every answer that came back; true once the stop flag was set and every
    /// connection has ended (or the stop's wait ran out).
    pub fn turn(&mut self, events: &Events) -> bool {
        let mut touched = BTreeSet::new();
        for ev in events.iter() {
            match ev.token() {
                LISTENER => self.accept(&mut touched),
                // The owner's poll may carry tokens of its own: only this loop's are served.
                Token(t) if (FIRST_CONNECTION..self.next_token).contains(&t) => {
                    if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                        if let Some(c) = self.conns.get_mut(&t) {
                            c.readable = true;
                        }
                    }
                    touched.insert(t);
                }
                Token(_) => {}
            }
        }
        for c in self.done_rx.try_iter().collect::<Vec<_>>() {
            touched.insert(c.conn);
            self.complete(c);
        }
        let now = Instant::now();
        if self.negotiation_due.is_some_and(|due| now >= due) {
            self.negotiation_due = None;
            for (t, c) in &mut self.conns {
                if let Phase::Negotiating { deadline, .. } = c.phase {
                    if now >= deadline {
                        c.kill = true;
                        touched.insert(*t);
                    } else {
                        self.negotiation_due = Some(self.negotiation_due.map_or(deadline, |d| d.min(deadline)));
                    }
                }
            }
        }
        if self.stop.load(Relaxed) && self.stopping.is_none() {
            self.stopping = Some(now);
            if let Some(mut l) = self.listener.take() {
                let _ = self.registry.deregister(&mut l);
            }
            for (t, c) in &mut self.conns {
                c.no_more = true;
                if matches!(c.phase, Phase::Negotiating { .. }) {
                    c.kill = true;
                }
                touched.insert(*t);
            }
        }
        for t in touched {
            self.service(t);
        }
        self.stopping.is_some_and(|since| self.conns.is_empty() || since.elapsed() > STOP_WAIT)
    }

    /// Closes every connection and stops the workers.
    pub fn finish(&mut self) {
        for t in self.conns.keys().copied().collect::<Vec<_>>() {
            self.close(t);
        }
        if let Some(mut l) = self.listener.take() {
            let _ = self.registry.deregister(&mut l);
        }
        self.pool.stop();
    }

    fn accept(&mut self, touched: &mut BTreeSet<usize>) {
        loop {
            let Some(listener) = self.listener.as_ref() else { return };
            let (mut stream, _) = match listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                // Out of descriptors and the like: the connection waits in the backlog.
                Err(_) => return,
            };
            if self.conns.len() >= self.cfg.connections_max {
                // Closed unread: the client sees the connection end before the greeting.
                self.stats.connections_refused.fetch_add(1, Relaxed);
                let _ = stream.shutdown(std::net::Shutdown::Both);
                continue;
            }
            let token = self.next_token;
            self.next_token += 1;
            let _ = stream.set_nodelay(true);
            if self.registry.register(&mut stream, Token(token), Interest::READABLE | Interest::WRITABLE).is_err() {
                continue;
            }
            self.stats.connections.fetch_add(1, Relaxed);
            self.stats.connections_open.fetch_add(1, Relaxed);
            let deadline = Instant::now() + self.cfg.negotiation_timeout;
            self.negotiation_due = Some(self.negotiation_due.map_or(deadline, |d| d.min(deadline)));
            let tls = Tls {
                offered: self.cfg.tls.is_some(),
                required: self.cfg.tls.as_ref().is_some_and(|t| t.mode == crate::tls::TlsMode::Required),
                ..Tls::default()
            };
            self.conns.insert(
                token,
                Connection {
                    io: Transport::plain(stream),
                    phase: Phase::Negotiating { state: Negotiation::ClientFlags, deadline },
                    tls,
                    starttls: false,
                    inbuf: Vec::new(),
                    at: 0,
                    outbuf: negotiate::greeting(),
                    sent: 0,
                    inflight: 0,
                    inflight_bytes: 0,
                    no_more: false,
                    gone: Arc::new(AtomicBool::new(false)),
                    kill: false,
                    budget_wait: false,
                    readable: true,
                },
            );
            touched.insert(token);
        }
    }

    fn close(&mut self, t: usize) {
        if let Some(mut c) = self.conns.remove(&t) {
            if c.gone() && matches!(c.phase, Phase::Serving) {
                // Received whole but never run: their client left without NBD_CMD_DISC.
                self.stats.dropped.fetch_add(whole_requests(c.input()), Relaxed);
            }
            if c.tls.refused > 0 && !c.tls.active {
                self.stats.tls_refused.fetch_add(1, Relaxed);
            }
            c.io.close();
            let _ = self.registry.deregister(c.io.socket());
            let _ = c.io.socket().shutdown(std::net::Shutdown::Both);
            c.gone.store(true, Relaxed);
            self.stats.connections_open.fetch_sub(1, Relaxed);
        }
    }

    /// Reads, parses, hands on and writes what connection `t` can; closes it when it is done.
    fn service(&mut self, t: usize) {
        for _ in 0..SERVICE_ROUNDS_MAX {
            let Some(c) = self.conns.get_mut(&t) else { return };
            let before = (c.input().len(), c.inflight, c.sent, c.outbuf.len());
            self.read(t);
            self.parse(t);
            self.write(t);
            let Some(c) = self.conns.get(&t) else { return };
            let flushed = c.unsent() == 0 && !c.io.pending();
            let end = c.kill || (c.gone() && c.inflight == 0) || (c.no_more && c.inflight == 0 && flushed);
            if end {
                return self.close(t);
            }
            if (c.input().len(), c.inflight, c.sent, c.outbuf.len()) == before {
                return;
            }
        }
    }

    /// Bytes connection `c` may read now: what completes its next request plus some read-ahead,
    /// nothing while it is held back.
    fn wanted(&self, c: &Connection) -> usize {
        if c.no_more || c.gone() || self.throttled(c) {
            return 0;
        }
        let next = match (&c.phase, header(c.input()).and_then(|h| parse_request(&h))) {
            (Phase::Serving, Some(r)) if r.kind == CMD_WRITE && r.len <= PAYLOAD_BYTES_MAX => {
                REQUEST_BYTES + r.len as usize
            }
            _ => 0,
        };
        next + READ_AHEAD_BYTES
    }

    /// Requests in flight or reply bytes unsent are at their limits.
    fn throttled(&self, c: &Connection) -> bool {
        c.inflight >= self.cfg.queue_depth.max(1)
            || (c.inflight > 0 && c.inflight_bytes + c.unsent() as u64 > INFLIGHT_BYTES_MAX)
    }

    fn read(&mut self, t: usize) {
        let Some(c) = self.conns.get(&t) else { return };
        let mut want = if c.starttls { 0 } else { self.wanted(c) };
        let chunk = &mut self.chunk;
        let stats = &self.stats;
        let Some(c) = self.conns.get_mut(&t) else { return };
        if want > c.input().len() && c.at > 0 {
            c.inbuf.drain(..c.at);
            c.at = 0;
        }
        while c.readable && c.input().len() < want {
            match c.io.read(chunk) {
                Ok(0) => {
                    // The client hung up: only NBD_CMD_DISC asks for what is queued to be
                    // finished, so nothing more is done for it.
                    c.gone.store(true, Relaxed);
                    c.no_more = true;
                    want = 0;
                }
                Ok(n) => {
                    c.inbuf.extend_from_slice(&chunk[..n]);
                    // A plaintext read that did not fill the chunk emptied the socket (what
                    // comes later raises a new edge); through TLS, a short socket read with no
                    // plaintext left in rustls (it may hold more than one read gives).
                    if (n < chunk.len() && !c.io.is_tls()) || c.io.drained() {
                        c.readable = false;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    c.readable = false;
                    break;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    if c.io.is_tls() && e.kind() == ErrorKind::InvalidData {
                        stats.tls_failures.fetch_add(1, Relaxed);
                        eprintln!("amf: nbd connection closed: TLS: {e}");
                    }
                    c.gone.store(true, Relaxed);
                    c.no_more = true;
                    want = 0;
                }
            }
        }
    }

    fn write(&mut self, t: usize) {
        let Some(c) = self.conns.get_mut(&t) else { return };
        match c.io.flush() {
            Err(e) if e.kind() != ErrorKind::WouldBlock && e.kind() != ErrorKind::Interrupted => {
                c.gone.store(true, Relaxed)
            }
            _ => {}
        }
        while c.unsent() > 0 && !c.gone() {
            match c.io.write(&c.outbuf[c.sent..]) {
                Ok(0) => c.gone.store(true, Relaxed),
                Ok(n) => c.sent += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                // A reply that cannot be sent means the client is gone.
                Err(_) => c.gone.store(true, Relaxed),
            }
        }
        if c.unsent() == 0 {
            c.outbuf.clear();
            c.sent = 0;
            if c.starttls && !c.gone() {
                self.start_tls(t);
            }
        }
    }

    /// The STARTTLS acknowledgement is out: what follows each way is TLS.
    fn start_tls(&mut self, t: usize) {
        let Some(c) = self.conns.get_mut(&t) else { return };
        c.starttls = false;
        let Some(tls) = self.cfg.tls.as_ref() else {
            c.kill = true;
            return;
        };
        // A client that sent its handshake right behind STARTTLS: those bytes are TLS.
        let early = c.input().to_vec();
        c.inbuf.clear();
        c.at = 0;
        match c.io.start_server(tls.config.clone(), &early) {
            Ok(()) => {
                c.tls.active = true;
                // The rest of the client's handshake may wait in the socket already.
                c.readable = true;
                self.stats.tls_connections.fetch_add(1, Relaxed);
            }
            Err(e) => {
                self.stats.tls_failures.fetch_add(1, Relaxed);
                eprintln!("amf: nbd connection closed: TLS: {e}");
                c.kill = true;
            }
        }
    }

    fn parse(&mut self, t: usize) {
        let Some(c) = self.conns.get_mut(&t) else { return };
        if c.starttls {
            return;
        }
        if let Phase::Negotiating { state, .. } = &mut c.phase {
            match negotiate::step(state, &c.inbuf[c.at..], &mut c.outbuf, self.size, &self.cfg.export, &mut c.tls) {
                Ok((used, outcome)) => {
                    c.take(used);
                    match outcome {
                        Outcome::Continue => return,
                        Outcome::StartTls => {
                            c.starttls = true;
                            return;
                        }
                        Outcome::Go => c.phase = Phase::Serving,
                        Outcome::Abort => {
                            c.no_more = true;
                            return;
                        }
                    }
                }
                Err(e) => {
                    if !c.gone() {
                        eprintln!("amf: nbd connection closed: {e}");
                    }
                    c.kill = true;
                    return;
                }
            }
        }
        self.requests(t);
    }

    /// Takes the complete requests connection `t` has buffered, within its limits.
    fn requests(&mut self, t: usize) {
        let size = self.size;
        loop {
            let Some(c) = self.conns.get(&t) else { return };
            if c.no_more || c.gone() || self.throttled(c) {
                return;
            }
            let Some(h) = header(c.input()) else { return };
            let Some(req) = parse_request(&h) else {
                protocol_error(&self.stats);
                eprintln!("amf: nbd connection closed: bad request magic");
                if let Some(c) = self.conns.get_mut(&t) {
                    c.gone.store(true, Relaxed);
                    c.no_more = true;
                }
                return;
            };
            let received = Instant::now();
            let fua = req.flags & CMD_FLAG_FUA != 0;
            let flags_ok = req.flags & !(CMD_FLAG_FUA | CMD_FLAG_NO_HOLE) == 0;
            let (cookie, offset, len) = (req.cookie, req.offset, req.len);
            match req.kind {
                CMD_WRITE if len > PAYLOAD_BYTES_MAX => {
                    // The payload cannot be skipped safely: answer and hang up.
                    protocol_error(&self.stats);
                    eprintln!("amf: nbd connection closed: write payload larger than the advertised maximum");
                    self.reject(t, cookie, EOVERFLOW);
                    if let Some(c) = self.conns.get_mut(&t) {
                        c.no_more = true;
                    }
                    return;
                }
                CMD_WRITE => {
                    if self.over_budget(t, len as u64) {
                        return;
                    }
                    let Some(c) = self.conns.get_mut(&t) else { return };
                    if c.input().len() < REQUEST_BYTES + len as usize {
                        return;
                    }
                    let mut data: Vec<u8> = c.input()[REQUEST_BYTES..REQUEST_BYTES + len as usize].to_vec();
                    c.take(REQUEST_BYTES + len as usize);
                    if !flags_ok || !in_range(offset, len as u64, size) {
                        self.reject(t, cookie, if flags_ok { ENOSPC } else { EINVAL });
                        continue;
                    }
                    let mut cookies = vec![cookie];
                    merge_adjacent_writes(c, req.flags, offset, size, &mut data, &mut cookies);
                    let held = data.len() as u64;
                    self.dispatch(t, cookies, Kind::Write, held, received, Request::Write { offset, data, fua });
                }
                CMD_READ if len > PAYLOAD_BYTES_MAX => {
                    self.consume(t);
                    self.reject(t, cookie, EOVERFLOW);
                }
                CMD_READ | CMD_TRIM if !in_range(offset, len as u64, size) || !flags_ok => {
                    self.consume(t);
                    self.reject(t, cookie, EINVAL);
                }
                CMD_WRITE_ZEROES if !in_range(offset, len as u64, size) || !flags_ok => {
                    self.consume(t);
                    self.reject(t, cookie, if flags_ok { ENOSPC } else { EINVAL });
                }
                CMD_READ => {
                    if self.over_budget(t, len as u64) {
                        return;
                    }
                    self.consume(t);
                    self.dispatch(t, vec![cookie], Kind::Read, len as u64, received, Request::Read { offset, len });
                }
                CMD_TRIM => {
                    self.consume(t);
                    self.dispatch(t, vec![cookie], Kind::Other, 0, received, Request::Trim { offset, len });
                }
                CMD_WRITE_ZEROES => {
                    self.consume(t);
                    let req = Request::WriteZeroes { offset, len, fua };
                    self.dispatch(t, vec![cookie], Kind::Write, 0, received, req);
                }
                CMD_FLUSH => {
                    self.consume(t);
                    self.dispatch(t, vec![cookie], Kind::Flush, 0, received, Request::Flush);
                }
                CMD_DISC => {
                    self.consume(t);
                    if let Some(c) = self.conns.get_mut(&t) {
                        c.no_more = true;
                    }
                    return;
                }
                _ => {
                    self.consume(t);
                    self.reject(t, cookie, EINVAL);
                }
            }
        }
    }

    /// Whether a request of `bytes` must wait for connection `t`'s replies to go out (a
    /// request alone still runs, however large); each stall is counted once.
    fn over_budget(&mut self, t: usize, bytes: u64) -> bool {
        let Some(c) = self.conns.get_mut(&t) else { return true };
        let over = c.inflight > 0 && c.inflight_bytes + c.unsent() as u64 + bytes > INFLIGHT_BYTES_MAX;
        if over && !c.budget_wait {
            self.stats.budget_waits.fetch_add(1, Relaxed);
        }
        c.budget_wait = over;
        over
    }

    /// Drops the header at the front of connection `t`'s input.
    fn consume(&mut self, t: usize) {
        if let Some(c) = self.conns.get_mut(&t) {
            c.take(REQUEST_BYTES);
        }
    }

    fn reject(&mut self, t: usize, cookie: u64, code: u32) {
        self.stats.errors.fetch_add(1, Relaxed);
        if let Some(c) = self.conns.get_mut(&t) {
            c.outbuf.extend_from_slice(&simple_reply(code, cookie));
        }
    }

    fn dispatch(&mut self, t: usize, cookies: Vec<u64>, kind: Kind, held: u64, received: Instant, req: Request) {
        let Some(c) = self.conns.get_mut(&t) else { return };
        c.inflight += 1;
        c.inflight_bytes += held;
        let gone = c.gone.clone();
        let (tx, waker) = (self.done_tx.clone(), self.waker.clone());
        let done: Done = Box::new(move |result| {
            let _ = tx.send(Completion { conn: t, cookies, kind, held, received, result });
            waker.wake();
        });
        let Some((req, done)) = self.backend.submit(req, done) else { return };
        let (backend, stats) = (self.backend.clone(), self.stats.clone());
        self.pool.run(Box::new(move || {
            if gone.load(Relaxed) {
                stats.dropped.fetch_add(1, Relaxed);
                return done(Err(BackendError::Io("the client has gone".into())));
            }
            done(run_blocking(&*backend, req))
        }));
    }

    fn complete(&mut self, d: Completion) {
        let Some(c) = self.conns.get_mut(&d.conn) else { return };
        c.inflight = c.inflight.saturating_sub(1);
        c.inflight_bytes = c.inflight_bytes.saturating_sub(d.held);
        if c.gone() {
            return;
        }
        let write = matches!(d.kind, Kind::Write);
        let op = match d.kind {
            Kind::Read => Op::Read,
            Kind::Flush => Op::Flush,
            Kind::Write | Kind::Other => Op::Write,
        };
        let code = match &d.result {
            Ok(_) => 0,
            Err(e) => {
                eprintln!("amf: nbd request failed: {e}");
                errno(e, write)
            }
        };
        for cookie in &d.cookies {
            self.stats.requests.fetch_add(1, Relaxed);
            if code != 0 {
                self.stats.errors.fetch_add(1, Relaxed);
            }
            c.outbuf.extend_from_slice(&simple_reply(code, *cookie));
        }
        match (d.kind, d.result) {
            (Kind::Read, Ok(data)) => {
                self.stats.read_bytes.fetch_add(data.len() as u64, Relaxed);
                c.outbuf.extend_from_slice(&data);
            }
            (Kind::Write, Ok(_)) => {
                self.stats.written_bytes.fetch_add(d.held, Relaxed);
            }
            _ => {}
        }
        observe(op, d.received);
    }
}

/// Complete requests (header and, for writes, payload) at the front of `input`.
fn whole_requests(mut input: &[u8]) -> u64 {
    let mut n = 0;
    while let Some(r) = header(input).and_then(|h| parse_request(&h)) {
        let payload = if r.kind == CMD_WRITE { r.len as usize } else { 0 };
        let Some(rest) = input.get(REQUEST_BYTES + payload..) else { break };
        input = rest;
        n += 1;
    }
    n
}

/// Absorbs the adjacent writes the client has already pipelined (whole in the input buffer)
/// into one, as a block layer merges requests: sequential streams then reach the engine as
/// whole stripes and need no parity reads. Each merged write keeps its own reply.
fn merge_adjacent_writes(
    c: &mut Connection,
    flags: u16,
    first: u64,
    size: u64,
    data: &mut Vec<u8>,
    cookies: &mut Vec<u64>,
) {
    while data.len() < MERGE_BYTES_MAX {
        let Some(next) = header(c.input()).and_then(|h| parse_request(&h)) else { break };
        let end = first + data.len() as u64;
        let whole = c.input().len() >= REQUEST_BYTES + next.len as usize;
        if next.kind != CMD_WRITE
            || next.flags != flags
            || next.offset != end
            || data.len() + next.len as usize > MERGE_BYTES_MAX
            || !in_range(next.offset, next.len as u64, size)
            || !whole
        {
            break;
        }
        data.extend_from_slice(&c.input()[REQUEST_BYTES..REQUEST_BYTES + next.len as usize]);
        c.take(REQUEST_BYTES + next.len as usize);
        cookies.push(next.cookie);
    }
}
