//! A connection's byte stream as the event loop sees it: the TCP socket itself, or TLS over it
//! once the client has sent NBD_OPT_STARTTLS. Both read and write without blocking; TLS records
//! that could not go out yet wait inside rustls and go with the next write or writable event.

use crate::tls::nonblocking;
use mio::net::TcpStream;
use std::io::{self, ErrorKind, Read, Write};
use std::sync::Arc;

/// Plaintext or TLS over a non-blocking socket.
pub(super) struct Transport {
    sock: TcpStream,
    /// Running TLS (boxed: a rustls connection is large and most connections have none).
    tls: Option<Box<rustls::Connection>>,
}

impl Transport {
    /// Plaintext over `sock`.
    pub(super) fn plain(sock: TcpStream) -> Transport {
        Transport { sock, tls: None }
    }

    /// The socket, to register with the poller or shut down.
    pub(super) fn socket(&mut self) -> &mut TcpStream {
        &mut self.sock
    }

    /// Whether TLS runs.
    pub(super) fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Starts TLS as the server. `early` holds bytes the client sent after STARTTLS that were
    /// already read from the socket (the start of its handshake).
    pub(super) fn start_tls(&mut self, config: Arc<rustls::ServerConfig>, mut early: &[u8]) -> io::Result<()> {
        if self.tls.is_some() {
            return Ok(());
        }
        let tls = rustls::ServerConnection::new(config).map_err(|e| io::Error::new(ErrorKind::InvalidData, e))?;
        let mut tls = rustls::Connection::Server(tls);
        while !early.is_empty() {
            if tls.read_tls(&mut early)? == 0 {
                break;
            }
            nonblocking::process(&mut self.sock, &mut tls)?;
        }
        self.tls = Some(Box::new(tls));
        Ok(())
    }

    /// Reads plaintext: Ok(0) when the client has closed, Err(WouldBlock) when nothing is
    /// there yet. Handshake records are answered on the way.
    pub(super) fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.tls.as_mut() {
            None => self.sock.read(buf),
            Some(tls) => nonblocking::read(&mut self.sock, tls, buf),
        }
    }

    /// Writes plaintext; Err(WouldBlock) when nothing could be taken now.
    pub(super) fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match self.tls.as_mut() {
            None => self.sock.write(data),
            Some(tls) => nonblocking::write(&mut self.sock, tls, data),
        }
    }

    /// TLS records queued but not on the socket yet.
    pub(super) fn pending(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.wants_write())
    }

    /// Sends queued TLS records; Err(WouldBlock) when the socket is full.
    pub(super) fn flush(&mut self) -> io::Result<()> {
        match self.tls.as_mut() {
            None => Ok(()),
            Some(tls) => nonblocking::flush(&mut self.sock, tls),
        }
    }

    /// Ends TLS politely (close_notify) where it runs.
    pub(super) fn close(&mut self) {
        if let Some(tls) = self.tls.as_mut() {
            tls.send_close_notify();
            let _ = nonblocking::flush(&mut self.sock, tls);
        }
    }
}
