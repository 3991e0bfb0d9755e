//! The server's faces: the backend it exports, its settings and counters, and the handle of a
//! running server (the connections are served by one event loop, `event_loop.rs`).

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
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

/// A request as the server hands it to a backend.
#[derive(Debug)]
pub enum Request {
    /// Read `len` bytes at `offset`.
    Read {
        /// Offset.
        offset: u64,
        /// Bytes.
        len: u32,
    },
    /// Write `data` at `offset`.
    Write {
        /// Offset.
        offset: u64,
        /// Bytes.
        data: Vec<u8>,
        /// Durable before the answer.
        fua: bool,
    },
    /// Zero a range.
    WriteZeroes {
        /// Offset.
        offset: u64,
        /// Bytes.
        len: u32,
        /// Durable before the answer.
        fua: bool,
    },
    /// Discard a range (advisory).
    Trim {
        /// Offset.
        offset: u64,
        /// Bytes.
        len: u32,
    },
    /// Make every completed write durable.
    Flush,
}

/// Where a request's answer goes: called once, from any thread, with the read data (empty for
/// everything but reads) or the error.
pub type Done = Box<dyn FnOnce(Result<Vec<u8>, BackendError>) + Send>;

/// Runs `req` on `backend`'s blocking calls.
pub fn run_blocking(backend: &dyn Backend, req: Request) -> Result<Vec<u8>, BackendError> {
    match req {
        Request::Read { offset, len } => {
            let mut buf = vec![0u8; len as usize];
            backend.read(offset, &mut buf).map(|_| buf)
        }
        Request::Write { offset, data, fua } => backend.write(offset, &data, fua).map(|_| Vec::new()),
        Request::WriteZeroes { offset, len, fua } => backend.write_zeroes(offset, len as u64, fua).map(|_| Vec::new()),
        Request::Trim { offset, len } => backend.trim(offset, len as u64).map(|_| Vec::new()),
        Request::Flush => backend.flush().map(|_| Vec::new()),
    }
}

/// What the server exports.
pub trait Backend: Send + Sync + 'static {
    /// Takes `req` and answers through `done` without blocking the caller, or gives both back
    /// (the default) to have them run on the server's worker threads with the blocking calls.
    fn submit(&self, req: Request, done: Done) -> Option<(Request, Done)> {
        Some((req, done))
    }
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
    /// Threads that run a blocking backend's requests (shared by every connection; a backend
    /// that takes requests itself, the cluster controller's, uses none).
    pub workers: usize,
    /// Requests in flight per connection before the server stops reading it (back-pressure).
    pub queue_depth: usize,
    /// Time a client has to finish negotiation.
    pub negotiation_timeout: Duration,
    /// Connections served at once; more are closed as soon as they are accepted.
    pub connections_max: usize,
    /// TLS (NBD_OPT_STARTTLS offered; with `Required`, plaintext refused).
    pub tls: Option<crate::tls::ServerTls>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            export: "amf".into(),
            workers: 16,
            queue_depth: 64,
            negotiation_timeout: Duration::from_secs(30),
            connections_max: CONNECTIONS_MAX_DEFAULT,
            tls: None,
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
    /// Connections that started TLS.
    pub tls_connections: AtomicU64,
    /// Connections ended by a failed TLS handshake or a bad record (an unknown client
    /// certificate among them).
    pub tls_failures: AtomicU64,
    /// Plaintext connections refused because TLS is required.
    pub tls_refused: AtomicU64,
}

/// A running server.
pub struct Server {
    stop: Arc<AtomicBool>,
    waker: Arc<super::LoopWake>,
    addr: std::net::SocketAddr,
    thread: Option<JoinHandle<()>>,
    /// Counters.
    pub stats: Arc<ServerStats>,
}

impl Server {
    /// Serves `backend` on `listener` until [`Server::shutdown`]: one event-loop thread for
    /// every connection, and a few worker threads for a backend that blocks.
    pub fn spawn(listener: TcpListener, backend: Arc<dyn Backend>, cfg: ServerConfig) -> std::io::Result<Server> {
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(ServerStats::default());
        let (looped, waker) = super::event_loop::EventLoop::new(listener, backend, cfg, stats.clone(), stop.clone())?;
        let thread = std::thread::Builder::new().name("nbd-loop".into()).spawn(move || looped.run())?;
        Ok(Server { stop, waker, addr, thread: Some(thread), stats })
    }

    /// Address served.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// Stops accepting, ends every connection once its requests in flight are answered (or
    /// after a bounded wait), and waits.
    pub fn shutdown(&mut self) {
        self.stop.store(true, Relaxed);
        self.waker.force();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}
