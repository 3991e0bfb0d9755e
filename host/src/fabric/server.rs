//! The answering side: a thread per connection reads requests, checks sender and epoch, and
//! hands them to the controller's handler. A connection that breaks the protocol is closed
//! (and counted); nothing it sent is acted on.

use super::wire::{read_request, write_response, Request, Response, Status};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// What a controller does with a request.
pub trait Handler: Send + Sync + 'static {
    /// This node's id and membership epoch.
    fn identity(&self) -> (u8, u32);
    /// Whether `node` is a member of the cluster (others are refused).
    fn is_peer(&self, node: u8) -> bool;
    /// Answers a request from a checked peer.
    fn handle(&self, q: &Request, payload: Vec<u8>) -> (Response, Vec<u8>);
}

/// Counters of the server.
#[derive(Default, Debug)]
pub struct ServerStats {
    /// Requests answered.
    pub requests: AtomicU64,
    /// Connections closed for protocol errors.
    pub protocol_errors: AtomicU64,
    /// Requests refused for another epoch or an unknown sender.
    pub refused: AtomicU64,
}

/// A running fabric listener.
pub struct FabricServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Counters.
    pub stats: Arc<ServerStats>,
    stop: Arc<AtomicBool>,
}

/// An idle connection is closed after this long (peers reconnect on demand).
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

impl FabricServer {
    /// Serves `listener` with `handler` on background threads.
    pub fn spawn(listener: TcpListener, handler: Arc<dyn Handler>) -> std::io::Result<FabricServer> {
        let addr = listener.local_addr()?;
        let stats = Arc::new(ServerStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        listener.set_nonblocking(true)?;
        {
            let (stats, stop) = (stats.clone(), stop.clone());
            std::thread::Builder::new().name("fabric-accept".into()).spawn(move || {
                while !stop.load(Relaxed) {
                    match listener.accept() {
                        Ok((s, _)) => {
                            let (h, st, sp) = (handler.clone(), stats.clone(), stop.clone());
                            let _ = std::thread::Builder::new()
                                .name("fabric-conn".into())
                                .spawn(move || serve(s, h.as_ref(), &st, &sp));
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(5))
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(50)),
                    }
                }
            })?;
        }
        Ok(FabricServer { addr, stats, stop })
    }

    /// Stops accepting; open connections end with their peers.
    pub fn stop(&self) {
        self.stop.store(true, Relaxed);
    }
}

impl Drop for FabricServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(mut s: TcpStream, h: &dyn Handler, stats: &ServerStats, stop: &AtomicBool) {
    if s.set_nonblocking(false).is_err() || s.set_read_timeout(Some(IDLE_TIMEOUT)).is_err() {
        return;
    }
    let _ = s.set_nodelay(true);
    let (me, epoch) = h.identity();
    while !stop.load(Relaxed) {
        let (q, payload) = match read_request(&mut s) {
            Ok(Some(x)) => x,
            Ok(None) => return,
            Err(super::FabricError::Protocol(why)) => {
                stats.protocol_errors.fetch_add(1, Relaxed);
                eprintln!("amf: node {me}: fabric connection closed: {why}");
                return;
            }
            Err(_) => return,
        };
        let (r, p) = if q.epoch != epoch || !h.is_peer(q.src) || q.src == me {
            stats.refused.fetch_add(1, Relaxed);
            let status = if q.epoch != epoch { Status::StaleEpoch } else { Status::BadRequest };
            (Response { status, a: 0 }, Vec::new())
        } else {
            stats.requests.fetch_add(1, Relaxed);
            h.handle(&q, payload)
        };
        if write_response(&mut s, &r, &p).is_err() {
            return;
        }
    }
}
