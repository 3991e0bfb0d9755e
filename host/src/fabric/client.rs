//! The calling side: one request at a time per connection, connections pooled per peer. A
//! connection that failed is dropped, never reused.

use super::wire::{read_response, write_request, Request, Response};
use super::FabricError;
use std::net::{SocketAddr, TcpStream};
use std::sync::Mutex;
use std::time::Duration;

/// Idle connections kept per peer.
const POOL_MAX: usize = 16;
/// Longest wait for a peer's answer: a peer that takes longer is treated as failed.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A peer controller's fabric endpoint.
pub struct Peer {
    /// Node id.
    pub node: u8,
    addr: SocketAddr,
    pool: Mutex<Vec<TcpStream>>,
}

impl Peer {
    /// A peer at `addr` (connections are made on first use).
    pub fn new(node: u8, addr: SocketAddr) -> Peer {
        Peer { node, addr, pool: Mutex::new(Vec::new()) }
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn connection(&self) -> Result<TcpStream, FabricError> {
        if let Some(s) = self.pool.lock().unwrap_or_else(|p| p.into_inner()).pop() {
            return Ok(s);
        }
        let s = TcpStream::connect_timeout(&self.addr, CONNECT_TIMEOUT).map_err(FabricError::Io)?;
        s.set_nodelay(true).map_err(FabricError::Io)?;
        s.set_read_timeout(Some(ANSWER_TIMEOUT)).map_err(FabricError::Io)?;
        s.set_write_timeout(Some(ANSWER_TIMEOUT)).map_err(FabricError::Io)?;
        Ok(s)
    }

    /// Sends a request and waits for its answer.
    pub fn call(&self, q: &Request, payload: &[u8]) -> Result<(Response, Vec<u8>), FabricError> {
        let mut s = self.connection()?;
        write_request(&mut s, q, payload)?;
        let answer = read_response(&mut s)?;
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < POOL_MAX {
            pool.push(s);
        }
        Ok(answer)
    }

    /// `call`, with any status but `Ok` turned into an error.
    pub fn call_ok(&self, q: &Request, payload: &[u8]) -> Result<(Response, Vec<u8>), FabricError> {
        let (r, p) = self.call(q, payload)?;
        if r.status != super::wire::Status::Ok {
            return Err(FabricError::Refused { node: self.node, status: r.status });
        }
        Ok((r, p))
    }
}
