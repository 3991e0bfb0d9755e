//! Connection handling. One reader thread per connection parses requests and receives write
//! payloads completely before anything is queued, so a client that disconnects mid-write leaves
//! nothing behind; a small worker pool per connection executes requests and writes replies.

use super::proto::*;
use crossbeam_channel::{bounded, Receiver};
use std::io::{BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// A failed backend operation.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// Outside the export.
    #[error("out of range")]
    OutOfRange,
    /// Anything else.
    #[error("I/O error: {0}")]
    Io(String),
}

/// What the server exports.
pub trait Backend: Send + Sync + 'static {
    /// Export size in bytes.
    fn size(&self) -> u64;
    /// Reads `buf.len()` bytes at `offset`.
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), BackendError>;
    /// Writes `data` at `offset`; durable before returning when `fua`.
    fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), BackendError>;
    /// Zeroes a range.
    fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> Result<(), BackendError>;
    /// Discards a range (advisory).
    fn trim(&self, offset: u64, len: u64) -> Result<(), BackendError>;
    /// Makes every completed write durable.
    fn flush(&self) -> Result<(), BackendError>;
}

/// Default of [`ServerConfig::connections_max`].
pub const CONNECTIONS_MAX_DEFAULT: usize = 128;

/// Server settings.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Export name (the empty name also selects it).
    pub export: String,
    /// Worker threads per connection.
    pub workers_per_connection: usize,
    /// Requests queued per connection before the reader stops reading (back-pressure).
    pub queue_depth: usize,
    /// Time a client has to finish negotiation.
    pub negotiation_timeout: Duration,
    /// Connections served at once; more are closed as soon as they are accepted (each costs a
    /// reader thread and its workers).
    pub connections_max: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            export: "amf".into(),
            workers_per_connection: 4,
            queue_depth: 64,
            negotiation_timeout: Duration::from_secs(30),
            connections_max: CONNECTIONS_MAX_DEFAULT,
        }
    }
}

/// Counters.
#[derive(Default, Debug, serde::Serialize)]
pub struct ServerStats {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Connections open now.
    pub connections_open: AtomicU64,
    /// Requests served.
    pub requests: AtomicU64,
    /// Requests answered with an error.
    pub errors: AtomicU64,
    /// Connections closed for protocol violations (bad magic, oversized payload, ...).
    pub protocol_violations: AtomicU64,
    /// Bytes read by clients.
    pub read_bytes: AtomicU64,
    /// Bytes written by clients.
    pub written_bytes: AtomicU64,
    /// Times a connection's reader waited for its in-flight byte budget (back-pressure).
    pub budget_waits: AtomicU64,
    /// Queued requests not run because their client had gone.
    pub dropped: AtomicU64,
    /// Connections closed at once because `connections_max` were being served.
    pub connections_refused: AtomicU64,
}

/// Open connections: a socket handle (to end it at shutdown) and its thread.
type Connections = Arc<Mutex<Vec<(TcpStream, JoinHandle<()>)>>>;

/// A running server.
pub struct Server {
    stop: Arc<AtomicBool>,
    addr: std::net::SocketAddr,
    accept: Option<JoinHandle<()>>,
    conns: Connections,
    /// Counters.
    pub stats: Arc<ServerStats>,
}

impl Server {
    /// Serves `backend` on `listener` until [`Server::shutdown`].
    pub fn spawn(listener: TcpListener, backend: Arc<dyn Backend>, cfg: ServerConfig) -> std::io::Result<Server> {
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(ServerStats::default());
        let conns: Connections = Arc::default();
        let accept = {
            let (stop, stats, conns) = (stop.clone(), stats.clone(), conns.clone());
            std::thread::Builder::new().name("nbd-accept".into()).spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Relaxed) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    {
                        let mut list = conns.lock().unwrap_or_else(|p| p.into_inner());
                        list.retain(|(_, t)| !t.is_finished());
                        if list.len() >= cfg.connections_max {
                            // Closed unread: the client sees the connection end before the
                            // greeting, and the ones being served keep their threads.
                            stats.connections_refused.fetch_add(1, Relaxed);
                            let _ = stream.shutdown(Shutdown::Both);
                            continue;
                        }
                    }
                    let Ok(handle) = stream.try_clone() else {
                        continue;
                    };
                    stats.connections.fetch_add(1, Relaxed);
                    let (backend, cfg, stats2) = (backend.clone(), cfg.clone(), stats.clone());
                    let t = std::thread::Builder::new().name("nbd-conn".into()).spawn(move || {
                        stats2.connections_open.fetch_add(1, Relaxed);
                        if let Err(e) = serve_connection(stream, backend, &cfg, &stats2) {
                            if e.kind() != std::io::ErrorKind::UnexpectedEof {
                                eprintln!("amf: nbd connection closed: {e}");
                            }
                        }
                        stats2.connections_open.fetch_sub(1, Relaxed);
                    });
                    let mut list = conns.lock().unwrap_or_else(|p| p.into_inner());
                    list.retain(|(_, t)| !t.is_finished());
                    if let Ok(t) = t {
                        list.push((handle, t));
                    }
                }
            })?
        };
        Ok(Server { stop, addr, accept: Some(accept), conns, stats })
    }

    /// Address served.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// Stops accepting, ends every connection after its accepted requests complete, and waits.
    pub fn shutdown(&mut self) {
        self.stop.store(true, Relaxed);
        let _ = TcpStream::connect(self.addr); // wakes the accept loop
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        let list = std::mem::take(&mut *self.conns.lock().unwrap_or_else(|p| p.into_inner()));
        for (s, _) in &list {
            let _ = s.shutdown(Shutdown::Read);
        }
        for (_, t) in list {
            let _ = t.join();
        }
    }
}

fn read_u32(r: &mut impl Read) -> std::io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

fn protocol(msg: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.to_string())
}

/// Transmission flags of this export.
fn transmission_flags() -> u16 {
    TFLAG_HAS_FLAGS
        | TFLAG_SEND_FLUSH
        | TFLAG_SEND_FUA
        | TFLAG_SEND_TRIM
        | TFLAG_SEND_WRITE_ZEROES
        | TFLAG_CAN_MULTI_CONN
}

/// Fixed newstyle negotiation. Ok(true) when the client entered transmission.
fn negotiate(s: &mut TcpStream, backend: &dyn Backend, cfg: &ServerConfig) -> std::io::Result<bool> {
    let mut hello = Vec::with_capacity(18);
    hello.extend_from_slice(&NBDMAGIC.to_be_bytes());
    hello.extend_from_slice(&IHAVEOPT.to_be_bytes());
    hello.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    s.write_all(&hello)?;
    let client_flags = read_u32(s)?;
    if client_flags & !CLIENT_FLAGS_KNOWN != 0 {
        return Err(protocol("unknown client flags"));
    }
    let no_zeroes = client_flags & FLAG_NO_ZEROES as u32 != 0;
    let known = |name: &str| name.is_empty() || name == cfg.export;
    loop {
        let mut m = [0u8; 8];
        s.read_exact(&mut m)?;
        if u64::from_be_bytes(m) != IHAVEOPT {
            return Err(protocol("bad option magic"));
        }
        let option = read_u32(s)?;
        let len = read_u32(s)?;
        if len > OPTION_BYTES_MAX {
            return Err(protocol("option payload too large"));
        }
        let mut data = vec![0u8; len as usize];
        s.read_exact(&mut data)?;
        match option {
            OPT_EXPORT_NAME => {
                if !known(&String::from_utf8_lossy(&data)) {
                    return Err(protocol("unknown export"));
                }
                let mut r = Vec::with_capacity(134);
                r.extend_from_slice(&backend.size().to_be_bytes());
                r.extend_from_slice(&transmission_flags().to_be_bytes());
                if !no_zeroes {
                    r.extend_from_slice(&[0u8; 124]);
                }
                s.write_all(&r)?;
                return Ok(true);
            }
            OPT_ABORT => {
                let _ = s.write_all(&option_reply(option, REP_ACK, &[]));
                return Ok(false);
            }
            OPT_LIST => {
                if !data.is_empty() {
                    s.write_all(&option_reply(option, REP_ERR_INVALID, b"LIST takes no data"))?;
                    continue;
                }
                let mut d = (cfg.export.len() as u32).to_be_bytes().to_vec();
                d.extend_from_slice(cfg.export.as_bytes());
                s.write_all(&option_reply(option, REP_SERVER, &d))?;
                s.write_all(&option_reply(option, REP_ACK, &[]))?;
            }
            OPT_INFO | OPT_GO => {
                let Some(info) = parse_info(&data) else {
                    s.write_all(&option_reply(option, REP_ERR_INVALID, b"malformed INFO/GO payload"))?;
                    continue;
                };
                if !known(&info.name) {
                    s.write_all(&option_reply(option, REP_ERR_UNKNOWN, b"no such export"))?;
                    continue;
                }
                let mut e = INFO_EXPORT.to_be_bytes().to_vec();
                e.extend_from_slice(&backend.size().to_be_bytes());
                e.extend_from_slice(&transmission_flags().to_be_bytes());
                s.write_all(&option_reply(option, REP_INFO, &e))?;
                let mut b = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
                b.extend_from_slice(&1u32.to_be_bytes());
                b.extend_from_slice(&PREFERRED_BLOCK_BYTES.to_be_bytes());
                b.extend_from_slice(&PAYLOAD_BYTES_MAX.to_be_bytes());
                s.write_all(&option_reply(option, REP_INFO, &b))?;
                s.write_all(&option_reply(option, REP_ACK, &[]))?;
                if option == OPT_GO {
                    return Ok(true);
                }
            }
            // STARTTLS, structured replies, meta contexts, extended headers: not offered.
            _ => s.write_all(&option_reply(option, REP_ERR_UNSUP, &[]))?,
        }
    }
}

/// A request accepted for execution, with its payload fully received.
enum Job {
    Read {
        cookie: u64,
        offset: u64,
        len: u32,
    },
    /// One write, or several adjacent pipelined writes merged (one cookie each).
    Write {
        cookies: Vec<u64>,
        offset: u64,
        data: Vec<u8>,
        fua: bool,
    },
    Zero {
        cookie: u64,
        offset: u64,
        len: u32,
        fua: bool,
    },
    Trim {
        cookie: u64,
        offset: u64,
        len: u32,
    },
    Flush {
        cookie: u64,
    },
}

impl Job {
    /// Bytes of the connection's budget the job holds until it is answered.
    fn bytes(&self) -> u64 {
        match self {
            Job::Read { len, .. } => *len as u64,
            Job::Write { data, .. } => data.len() as u64,
            _ => 0,
        }
    }
}

/// The reply side of a connection, and whether its client is gone: requests of a connection
/// that closed without NBD_CMD_DISC (or whose replies cannot be sent) are dropped, not run.
struct Writer {
    stream: Mutex<TcpStream>,
    gone: AtomicBool,
}

impl Writer {
    fn gone(&self) -> bool {
        self.gone.load(Relaxed)
    }
}

fn send(w: &Writer, bytes: &[u8]) {
    let mut s = w.stream.lock().unwrap_or_else(|p| p.into_inner());
    // A failed reply means the client is gone; the reader notices and ends the connection.
    if s.write_all(bytes).is_err() {
        w.gone.store(true, Relaxed);
    }
}

fn errno(e: &BackendError, write: bool) -> u32 {
    match e {
        BackendError::OutOfRange if write => ENOSPC,
        BackendError::OutOfRange => EINVAL,
        BackendError::Io(_) => EIO,
    }
}

/// Socket read buffer: large enough for a burst of request headers, small enough that write
/// payloads of 16 KiB and more are read straight into their own buffer (no extra copy).
const READ_BUFFER_BYTES: usize = 16 * 1024;

/// Largest write assembled from adjacent pipelined writes.
const MERGE_BYTES_MAX: usize = 4 << 20;

/// Payload and read-buffer bytes one connection may hold at once. The request queue bounds the
/// number of requests; this bounds their memory (64 queued 32 MiB reads would be 2 GiB).
const INFLIGHT_BYTES_MAX: u64 = 64 << 20;

/// A connection's in-flight byte budget: the reader takes before it allocates, the worker gives
/// back after replying.
struct Budget {
    used: Mutex<u64>,
    freed: std::sync::Condvar,
}

impl Budget {
    fn new() -> Budget {
        Budget { used: Mutex::new(0), freed: std::sync::Condvar::new() }
    }

    fn take(&self, bytes: u64, stats: &ServerStats) {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        // A request larger than the budget still runs, alone.
        if *used > 0 && *used + bytes > INFLIGHT_BYTES_MAX {
            stats.budget_waits.fetch_add(1, Relaxed);
        }
        while *used > 0 && *used + bytes > INFLIGHT_BYTES_MAX {
            used = self.freed.wait(used).unwrap_or_else(|p| p.into_inner());
        }
        *used += bytes;
    }

    fn give(&self, bytes: u64) {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        *used = used.saturating_sub(bytes);
        self.freed.notify_all();
    }
}

/// A request and when its header arrived (latencies include the time it queued).
type Queued = (std::time::Instant, Job);

fn worker(
    rx: Receiver<Queued>,
    w: Arc<Writer>,
    backend: Arc<dyn Backend>,
    stats: Arc<ServerStats>,
    budget: Arc<Budget>,
) {
    use crate::metrics::{observe, Op};
    for (received, job) in rx {
        let held = job.bytes();
        if w.gone() {
            stats.dropped.fetch_add(1, Relaxed);
            budget.give(held);
            continue;
        }
        let op = match &job {
            Job::Read { .. } => Op::Read,
            Job::Flush { .. } => Op::Flush,
            _ => Op::Write,
        };
        let (cookies, result, write) = match job {
            Job::Read { cookie, offset, len } => {
                let mut buf = vec![0u8; 16 + len as usize];
                match backend.read(offset, &mut buf[16..]) {
                    Ok(()) => {
                        buf[..16].copy_from_slice(&simple_reply(0, cookie));
                        stats.requests.fetch_add(1, Relaxed);
                        stats.read_bytes.fetch_add(len as u64, Relaxed);
                        send(&w, &buf);
                        budget.give(held);
                        observe(Op::Read, received);
                        continue;
                    }
                    Err(e) => (vec![cookie], Err(e), false),
                }
            }
            Job::Write { cookies, offset, data, fua } => {
                let r = backend.write(offset, &data, fua);
                if r.is_ok() {
                    stats.written_bytes.fetch_add(data.len() as u64, Relaxed);
                }
                (cookies, r, true)
            }
            Job::Zero { cookie, offset, len, fua } => {
                (vec![cookie], backend.write_zeroes(offset, len as u64, fua), true)
            }
            Job::Trim { cookie, offset, len } => (vec![cookie], backend.trim(offset, len as u64), false),
            Job::Flush { cookie } => (vec![cookie], backend.flush(), false),
        };
        let code = match &result {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("amf: nbd request failed: {e}");
                errno(e, write)
            }
        };
        let mut replies = Vec::with_capacity(16 * cookies.len());
        for c in &cookies {
            stats.requests.fetch_add(1, Relaxed);
            if code != 0 {
                stats.errors.fetch_add(1, Relaxed);
            }
            replies.extend_from_slice(&simple_reply(code, *c));
        }
        send(&w, &replies);
        budget.give(held);
        observe(op, received);
    }
}

fn serve_connection(
    mut stream: TcpStream,
    backend: Arc<dyn Backend>,
    cfg: &ServerConfig,
    stats: &Arc<ServerStats>,
) -> std::io::Result<()> {
    // The server keeps a clone of the socket for shutdown, so dropping ours would not close the
    // connection: close it explicitly however this function ends.
    struct CloseOnDrop(TcpStream);
    impl Drop for CloseOnDrop {
        fn drop(&mut self) {
            let _ = self.0.shutdown(Shutdown::Both);
        }
    }
    let _closer = CloseOnDrop(stream.try_clone()?);
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(cfg.negotiation_timeout))?;
    if !negotiate(&mut stream, &*backend, cfg)? {
        return Ok(());
    }
    stream.set_read_timeout(None)?;
    let writer = Arc::new(Writer { stream: Mutex::new(stream.try_clone()?), gone: AtomicBool::new(false) });
    let (tx, rx) = bounded::<Queued>(cfg.queue_depth);
    let budget = Arc::new(Budget::new());
    let workers: Vec<_> = (0..cfg.workers_per_connection.max(1))
        .map(|_| {
            let (rx, w, b, st, bu) = (rx.clone(), writer.clone(), backend.clone(), stats.clone(), budget.clone());
            std::thread::spawn(move || worker(rx, w, b, st, bu))
        })
        .collect();
    drop(rx);
    let result = read_requests(
        &mut BufReader::with_capacity(READ_BUFFER_BYTES, stream),
        &*backend,
        &tx,
        &writer,
        stats,
        &budget,
    );
    // Only NBD_CMD_DISC asks for the queued requests to be finished (the protocol says so);
    // a client that hung up or broke the protocol gets nothing more done.
    if !matches!(result, Ok(Ending::Disconnect)) {
        writer.gone.store(true, Relaxed);
    }
    drop(tx);
    for w in workers {
        let _ = w.join();
    }
    result.map(|_| ())
}

/// How a connection's request stream ended.
enum Ending {
    /// NBD_CMD_DISC: finish what is queued, then close.
    Disconnect,
    /// The client closed the socket.
    Closed,
}

fn in_range(offset: u64, len: u64, size: u64) -> bool {
    offset.checked_add(len).is_some_and(|end| end <= size)
}

fn read_requests(
    r: &mut BufReader<TcpStream>,
    backend: &dyn Backend,
    tx: &crossbeam_channel::Sender<Queued>,
    writer: &Writer,
    stats: &ServerStats,
    budget: &Budget,
) -> std::io::Result<Ending> {
    let size = backend.size();
    let reject = |cookie: u64, code: u32| {
        stats.errors.fetch_add(1, Relaxed);
        send(writer, &simple_reply(code, cookie));
    };
    loop {
        if writer.gone() {
            return Ok(Ending::Closed);
        }
        let mut h = [0u8; REQUEST_BYTES];
        match r.read_exact(&mut h) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(Ending::Closed),
            Err(e) => return Err(e),
        }
        let received = std::time::Instant::now();
        let Some(req) = parse_request(&h) else {
            stats.protocol_violations.fetch_add(1, Relaxed);
            return Err(protocol("bad request magic"));
        };
        let fua = req.flags & CMD_FLAG_FUA != 0;
        let flags_ok = req.flags & !(CMD_FLAG_FUA | CMD_FLAG_NO_HOLE) == 0;
        let (cookie, offset, len) = (req.cookie, req.offset, req.len);
        let job = match req.kind {
            CMD_WRITE => {
                if len > PAYLOAD_BYTES_MAX {
                    // The payload cannot be skipped safely: answer and hang up.
                    reject(cookie, EOVERFLOW);
                    stats.protocol_violations.fetch_add(1, Relaxed);
                    return Err(protocol("write payload larger than the advertised maximum"));
                }
                budget.take(len as u64, stats);
                let mut data = Vec::with_capacity(len as usize);
                // A client that disconnects here has written nothing.
                r.by_ref().take(len as u64).read_to_end(&mut data)?;
                if data.len() != len as usize {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                if !flags_ok || !in_range(offset, len as u64, size) {
                    budget.give(len as u64);
                    reject(cookie, if flags_ok { ENOSPC } else { EINVAL });
                    continue;
                }
                let mut cookies = vec![cookie];
                merge_adjacent_writes(r, req, size, &mut data, &mut cookies, budget, stats)?;
                Job::Write { cookies, offset, data, fua }
            }
            CMD_READ if len > PAYLOAD_BYTES_MAX => {
                reject(cookie, EOVERFLOW);
                continue;
            }
            CMD_READ | CMD_TRIM if !in_range(offset, len as u64, size) || !flags_ok => {
                reject(cookie, EINVAL);
                continue;
            }
            CMD_WRITE_ZEROES if !in_range(offset, len as u64, size) || !flags_ok => {
                reject(cookie, if flags_ok { ENOSPC } else { EINVAL });
                continue;
            }
            CMD_READ => {
                budget.take(len as u64, stats);
                Job::Read { cookie, offset, len }
            }
            CMD_TRIM => Job::Trim { cookie, offset, len },
            CMD_WRITE_ZEROES => Job::Zero { cookie, offset, len, fua },
            CMD_FLUSH => Job::Flush { cookie },
            CMD_DISC => return Ok(Ending::Disconnect),
            _ => {
                reject(cookie, EINVAL);
                continue;
            }
        };
        if tx.send((received, job)).is_err() {
            return Ok(Ending::Closed);
        }
    }
}

/// Absorbs the adjacent writes that the client has already pipelined (their headers are in the
/// read buffer) into one, as a block layer merges requests: sequential streams then reach the
/// engine as whole stripes and need no parity reads. Each merged write keeps its own reply.
fn merge_adjacent_writes(
    r: &mut BufReader<TcpStream>,
    first: Request,
    size: u64,
    data: &mut Vec<u8>,
    cookies: &mut Vec<u64>,
    budget: &Budget,
    stats: &ServerStats,
) -> std::io::Result<()> {
    use std::io::BufRead;
    while data.len() < MERGE_BYTES_MAX {
        let Some(h) = r.buffer().get(..REQUEST_BYTES) else { break };
        let mut header = [0u8; REQUEST_BYTES];
        header.copy_from_slice(h);
        let Some(next) = parse_request(&header) else { break };
        let end = first.offset + data.len() as u64;
        if next.kind != CMD_WRITE
            || next.flags != first.flags
            || next.offset != end
            || data.len() + next.len as usize > MERGE_BYTES_MAX
            || !in_range(next.offset, next.len as u64, size)
        {
            break;
        }
        r.consume(REQUEST_BYTES);
        budget.take(next.len as u64, stats);
        let at = data.len();
        data.resize(at + next.len as usize, 0);
        // A client that disconnects here has none of these writes applied.
        r.read_exact(&mut data[at..])?;
        cookies.push(next.cookie);
    }
    Ok(())
}
