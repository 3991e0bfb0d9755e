//! The ways into a controller's loop: its inbox (which wakes the loop's poll), the host port
//! that turns NBD requests into host requests, and the NBD server the loop runs on its own
//! thread, so that a client's request reaches the machine, and the answer the client's socket,
//! with no thread hand-off.

use super::{Event, Reply};
use crate::amf::io::{HostError, HostReq};
use crate::nbd::{BackendError, LoopWake, ServerStats};
use crossbeam_channel::{unbounded, Receiver, SendError, Sender};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// Largest WRITE_ZEROES the loop takes as one write (more runs in pieces on the NBD workers).
const ZERO_WRITE_BYTES_MAX: u32 = 1 << 20;
/// How long a stop of the NBD port waits for the loop to say every connection ended (the port
/// itself gives up on connections after two seconds).
const NBD_STOP_WAIT: Duration = Duration::from_secs(10);

/// The loop's inbox: a channel, and the wake of the loop's poll when the loop has one (a
/// sender wakes it only while it sleeps: the loop's own sends cost no system call).
#[derive(Clone)]
pub struct Inbox {
    tx: Sender<Event>,
    wake: Option<Arc<LoopWake>>,
}

impl Inbox {
    /// An inbox whose receiver is woken by the channel alone (tests that read it directly).
    pub fn channel() -> (Inbox, Receiver<Event>) {
        let (tx, rx) = unbounded();
        (Inbox { tx, wake: None }, rx)
    }

    /// An inbox for a loop that sleeps in a poll `wake` interrupts.
    pub fn waking(wake: Arc<LoopWake>) -> (Inbox, Receiver<Event>) {
        let (tx, rx) = unbounded();
        (Inbox { tx, wake: Some(wake) }, rx)
    }

    /// Queues `ev` for the loop and wakes it; gives it back when the loop has ended.
    pub fn send(&self, ev: Event) -> Result<(), SendError<Event>> {
        self.tx.send(ev)?;
        if let Some(w) = &self.wake {
            w.wake();
        }
        Ok(())
    }
}

/// Runs one host request through `inbox` to its answer.
pub fn call(inbox: &Inbox, req: HostReq) -> Result<Vec<u8>, HostError> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    inbox
        .send(Event::Host { req, reply: Reply::Channel(tx) })
        .map_err(|_| HostError::Card("the controller is stopping".into()))?;
    rx.recv().map_err(|_| HostError::Card("the controller stopped".into()))?
}

/// The controller as an NBD backend: host requests into the loop's inbox.
pub struct HostPort {
    pub(super) inbox: Inbox,
    pub(super) capacity: u64,
}

impl HostPort {
    fn call(&self, req: HostReq) -> Result<Vec<u8>, BackendError> {
        call(&self.inbox, req).map_err(nbd_err)
    }
}

impl crate::nbd::Backend for HostPort {
    /// Reads, writes and flushes go to the loop's inbox and answer through `done` (no thread
    /// waits for them); zeroing more than one request's worth runs on the server's workers.
    fn submit(
        &self,
        req: crate::nbd::Request,
        done: crate::nbd::Done,
    ) -> Option<(crate::nbd::Request, crate::nbd::Done)> {
        use crate::nbd::Request;
        let host = match req {
            Request::Read { offset, len } => HostReq::Read { offset, len: len as u64 },
            Request::Write { offset, data, fua } => HostReq::Write { offset, data, fua },
            Request::WriteZeroes { offset, len, fua } if len <= ZERO_WRITE_BYTES_MAX => {
                HostReq::Write { offset, data: vec![0u8; len as usize], fua }
            }
            Request::Flush => HostReq::Flush,
            // Advisory, as on one controller: the data stays.
            Request::Trim { .. } => {
                done(Ok(Vec::new()));
                return None;
            }
            other => return Some((other, done)),
        };
        let reply =
            Reply::Call(super::CallOnce(Some(Box::new(move |r: Result<Vec<u8>, HostError>| done(r.map_err(nbd_err))))));
        // A loop that has ended drops the event, and with it the call, which answers with
        // an error.
        let _ = self.inbox.send(Event::Host { req: host, reply });
        None
    }

    fn size(&self) -> u64 {
        self.capacity
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), BackendError> {
        let d = self.call(HostReq::Read { offset, len: buf.len() as u64 })?;
        if d.len() != buf.len() {
            return Err(BackendError::Io(format!("{} bytes read for {}", d.len(), buf.len())));
        }
        buf.copy_from_slice(&d);
        Ok(())
    }
    fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), BackendError> {
        self.call(HostReq::Write { offset, data: data.to_vec(), fua }).map(|_| ())
    }
    fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> Result<(), BackendError> {
        const CHUNK: u64 = 1 << 20;
        let end = offset.checked_add(len).ok_or(BackendError::OutOfRange)?;
        let mut at = offset;
        while at < end {
            let n = (end - at).min(CHUNK);
            self.call(HostReq::Write { offset: at, data: vec![0u8; n as usize], fua })?;
            at += n;
        }
        Ok(())
    }
    fn trim(&self, _offset: u64, _len: u64) -> Result<(), BackendError> {
        // Advisory, as on one controller: the data stays.
        Ok(())
    }
    fn flush(&self) -> Result<(), BackendError> {
        self.call(HostReq::Flush).map(|_| ())
    }
}

fn nbd_err(e: HostError) -> BackendError {
    match e {
        HostError::OutOfRange { .. } => BackendError::OutOfRange,
        other => BackendError::Io(other.to_string()),
    }
}

/// An NBD server for the loop to run: its listener and settings, where it says it started,
/// and where it says it stopped.
pub struct NbdStart {
    /// What the server's connections call (the shell's own port).
    pub(super) port: Arc<HostPort>,
    pub(super) listener: TcpListener,
    pub(super) cfg: crate::nbd::ServerConfig,
    pub(super) stats: Arc<ServerStats>,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) started: Sender<std::io::Result<()>>,
    pub(super) stopped: Sender<()>,
}

/// The NBD server a controller's loop runs (see [`super::Shell::serve_nbd`]).
pub struct NbdPort {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    wake: Arc<LoopWake>,
    stopped: Receiver<()>,
    /// Counters.
    pub stats: Arc<ServerStats>,
}

impl NbdPort {
    /// Hands `listener` to the loop behind `inbox` (woken by `wake`) and waits until it serves
    /// `port`.
    pub(super) fn start(
        inbox: &Inbox,
        wake: Arc<LoopWake>,
        port: Arc<HostPort>,
        listener: TcpListener,
        cfg: crate::nbd::ServerConfig,
    ) -> std::io::Result<NbdPort> {
        let addr = listener.local_addr()?;
        let stats = Arc::new(ServerStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (started, started_rx) = crossbeam_channel::bounded(1);
        let (stopped, stopped_rx) = crossbeam_channel::bounded(1);
        let ended = || std::io::Error::other("the controller's loop has ended");
        let start = NbdStart { port, listener, cfg, stats: stats.clone(), stop: stop.clone(), started, stopped };
        inbox.send(Event::Nbd(Box::new(start))).map_err(|_| ended())?;
        started_rx.recv().map_err(|_| ended())??;
        Ok(NbdPort { addr, stop, wake, stopped: stopped_rx, stats })
    }

    /// Address served.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, ends every connection once its requests in flight are answered (or
    /// after a bounded wait), and waits for that.
    pub fn shutdown(&mut self) {
        if self.stop.swap(true, Relaxed) {
            return;
        }
        self.wake.force();
        // A loop that ended has dropped the sender: that ends the wait too.
        let _ = self.stopped.recv_timeout(NBD_STOP_WAIT);
    }
}

impl Drop for NbdPort {
    fn drop(&mut self) {
        self.shutdown();
    }
}
