//! HTTPS for the admin endpoint: a TLS front on the public address that forwards each request to
//! the plain endpoint on a loopback port of its own and the answer back. tiny_http's own TLS
//! would bring a second, older rustls; the front keeps one TLS stack in the process.
//!
//! Bounded: at most `CONNECTIONS_MAX` connections at once (more are closed at accept), a request
//! or answer of at most `MESSAGE_BYTES_MAX`, and every read and write under `IO_TIMEOUT`, so a
//! client that stalls holds one thread for that long at most.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// Connections served at once.
const CONNECTIONS_MAX: usize = 16;
/// Largest request or answer forwarded (metrics and status are a few KiB).
const MESSAGE_BYTES_MAX: usize = 4 << 20;
/// Largest header block: the end of the headers is searched for after every read, so the
/// search stays short.
const HEADER_BYTES_MAX: usize = 64 << 10;
/// Longest wait for a client or the plain endpoint.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A running TLS front.
pub struct Front {
    stop: Arc<AtomicBool>,
    addr: SocketAddr,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Front {
    /// Serves TLS on `public` and forwards to the plain endpoint at `plain`.
    pub fn start(public: TcpListener, plain: SocketAddr, config: Arc<rustls::ServerConfig>) -> io::Result<Front> {
        let addr = public.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let active = Arc::new(AtomicUsize::new(0));
        let flag = stop.clone();
        let thread = std::thread::Builder::new().name("admin-tls".into()).spawn(move || {
            for conn in public.incoming() {
                if flag.load(Relaxed) {
                    return;
                }
                let Ok(sock) = conn else { continue };
                if active.load(Relaxed) >= CONNECTIONS_MAX {
                    continue; // dropped: closed at once
                }
                active.fetch_add(1, Relaxed);
                let (count, config) = (active.clone(), config.clone());
                let spawned = std::thread::Builder::new().name("admin-tls-conn".into()).spawn(move || {
                    if let Err(e) = serve(sock, plain, config) {
                        if e.kind() != io::ErrorKind::UnexpectedEof {
                            eprintln!("amf: admin endpoint: TLS connection ended: {e}");
                        }
                    }
                    count.fetch_sub(1, Relaxed);
                });
                if spawned.is_err() {
                    active.fetch_sub(1, Relaxed);
                }
            }
        })?;
        Ok(Front { stop, addr, thread: Some(thread) })
    }

    /// Stops accepting (connections being served finish on their own, within `IO_TIMEOUT`).
    pub fn stop(mut self) {
        self.stop.store(true, Relaxed);
        // Wake the accept.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One client: requests in turn, each forwarded on the same plain connection.
fn serve(sock: TcpStream, plain: SocketAddr, config: Arc<rustls::ServerConfig>) -> io::Result<()> {
    sock.set_read_timeout(Some(IO_TIMEOUT))?;
    sock.set_write_timeout(Some(IO_TIMEOUT))?;
    let conn = rustls::ServerConnection::new(config).map_err(io::Error::other)?;
    let mut client = Messages::new(rustls::StreamOwned::new(conn, sock));
    let mut inner: Option<Messages<TcpStream>> = None;
    loop {
        let Some(request) = client.next(false)? else { return Ok(()) };
        let close = wants_close(&request);
        let out = match inner.as_mut() {
            Some(s) => s,
            None => {
                let s = TcpStream::connect_timeout(&plain, IO_TIMEOUT)?;
                s.set_read_timeout(Some(IO_TIMEOUT))?;
                s.set_write_timeout(Some(IO_TIMEOUT))?;
                inner.insert(Messages::new(s))
            }
        };
        out.r.write_all(&request)?;
        let answer = out.next(true)?.ok_or_else(|| io::Error::other("the admin endpoint closed"))?;
        let tls = &mut client.r;
        tls.write_all(&answer)?;
        tls.flush()?;
        if close || wants_close(&answer) {
            tls.conn.send_close_notify();
            let _ = tls.flush();
            return Ok(());
        }
    }
}

/// Whether an HTTP message ends its connection: HTTP/1.0 without keep-alive, or
/// `Connection: close`.
fn wants_close(message: &[u8]) -> bool {
    let head = String::from_utf8_lossy(&message[..header_end(message).unwrap_or(message.len())]).to_ascii_lowercase();
    let first = head.lines().next().unwrap_or("");
    let http10 = first.contains("http/1.0");
    let header = |v: &str| head.lines().any(|l| l.starts_with("connection:") && l.contains(v));
    header("close") || (http10 && !header("keep-alive"))
}

fn header_end(b: &[u8]) -> Option<usize> {
    b.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// Reads HTTP messages one at a time from a stream, keeping bytes that arrive past a message
/// (a pipelining client's next request) for the next one.
struct Messages<R> {
    r: R,
    buf: Vec<u8>,
}

impl<R: Read> Messages<R> {
    fn new(r: R) -> Messages<R> {
        Messages { r, buf: Vec::new() }
    }

    fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 4096];
        let n = self.r.read(&mut chunk)?;
        self.buf.extend_from_slice(&chunk[..n]);
        if self.buf.len() > MESSAGE_BYTES_MAX + 4096 {
            return Err(io::Error::other("HTTP message too long"));
        }
        Ok(n)
    }

    /// One message: headers, then `Content-Length` bytes of body (an answer without a length
    /// runs to the end of the connection). None: the peer closed before a message began.
    fn next(&mut self, answer: bool) -> io::Result<Option<Vec<u8>>> {
        let end = loop {
            if let Some(e) = header_end(&self.buf) {
                break e;
            }
            if self.buf.len() > HEADER_BYTES_MAX {
                return Err(io::Error::other("HTTP headers too long"));
            }
            if self.fill()? == 0 {
                return if self.buf.is_empty() { Ok(None) } else { Err(io::ErrorKind::UnexpectedEof.into()) };
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
        // A chunked body would be forwarded as the next message: refused instead (the endpoint
        // takes no bodies, and its answers carry a length).
        if head.lines().any(|l| l.starts_with("transfer-encoding:")) {
            return Err(io::Error::other("chunked HTTP messages are not forwarded"));
        }
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| v.trim().parse::<usize>().map_err(|_| io::Error::other("bad Content-Length")))
            .transpose()?;
        let total = match length {
            Some(n) if n > MESSAGE_BYTES_MAX => return Err(io::Error::other("HTTP body too long")),
            Some(n) => end + n,
            None if answer => {
                while self.fill()? != 0 {}
                self.buf.len()
            }
            None => end,
        };
        while self.buf.len() < total {
            if self.fill()? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        let rest = self.buf.split_off(total);
        Ok(Some(std::mem::replace(&mut self.buf, rest)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_read_whole_and_closing_is_recognised() {
        let req =
            b"GET /status HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET /metrics HTTP/1.1\r\n\r\n".to_vec();
        let mut r = Messages::new(&req[..]);
        let m = r.next(false).unwrap().unwrap();
        assert_eq!(m, b"GET /status HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc");
        assert!(!wants_close(&m));
        assert_eq!(r.next(false).unwrap().unwrap(), b"GET /metrics HTTP/1.1\r\n\r\n", "a pipelined request kept");
        assert!(r.next(false).unwrap().is_none());
        assert!(wants_close(b"GET / HTTP/1.0\r\n\r\n"));
        assert!(!wants_close(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
        assert!(wants_close(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"));
        let empty: &[u8] = &[];
        assert!(Messages::new(empty).next(false).unwrap().is_none());
        let cut: &[u8] = b"GET / HTTP/1.1\r\nHost";
        assert!(Messages::new(cut).next(false).is_err());
        let chunked: &[u8] = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        assert!(Messages::new(chunked).next(false).is_err());
        let long_headers = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(HEADER_BYTES_MAX + 1));
        assert!(Messages::new(long_headers.as_bytes()).next(false).is_err());
        let huge = format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", MESSAGE_BYTES_MAX + 1);
        assert!(Messages::new(huge.as_bytes()).next(false).is_err());
        let answer: &[u8] = b"HTTP/1.0 200 OK\r\n\r\nto the end";
        assert_eq!(Messages::new(answer).next(true).unwrap().unwrap(), answer, "an answer without a length");
    }
}
