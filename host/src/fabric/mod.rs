//! Controller-to-controller data path: forwarded cache lines, replication of dirty data, and
//! member I/O through the primary. Control messages (acquire, invalidate, search) go through the
//! card; this carries the bytes. Blocking TCP with a small connection pool per peer, like the NBD
//! server's thread-per-connection model.

pub mod client;
pub mod server;
pub mod wire;

pub use client::Peer;
pub use server::{FabricServer, Handler};

/// Errors of the fabric.
#[derive(Debug, thiserror::Error)]
pub enum FabricError {
    /// Connecting, reading or writing failed (a peer that is down or stopped answering).
    #[error("fabric I/O: {0}")]
    Io(#[source] std::io::Error),
    /// The other side sent something that is not the protocol.
    #[error("fabric protocol: {0}")]
    Protocol(String),
    /// The peer refused the request.
    #[error("peer {node} answered {status:?}")]
    Refused {
        /// Peer.
        node: u8,
        /// Its answer.
        status: wire::Status,
    },
}
