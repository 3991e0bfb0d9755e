//! TLS over a non-blocking socket, for loops that never wait on one connection: the NBD event
//! loop's connections (server side, TLS from NBD_OPT_STARTTLS on) and the fabric's outgoing
//! connections (client side). Records the socket cannot take yet wait inside rustls and go
//! with the next call.

use std::io::{self, ErrorKind, Read, Write};
use std::sync::Arc;

/// Socket bytes read ahead of rustls under TLS. rustls asks its reader for 4 KiB at a time, so
/// a 4 KiB write's record (4.1 KiB) took two system calls and a 16 KiB line's five; one read of
/// up to this much takes what the socket holds.
const READ_AHEAD_BYTES: usize = 64 << 10;

/// A non-blocking socket carrying plaintext, or TLS once started.
pub struct Stream<S> {
    sock: S,
    /// Running TLS (boxed: a rustls connection is large and most NBD connections have none).
    tls: Option<Box<rustls::Connection>>,
    /// The last read of the socket under TLS gave less than rustls asked for, or nothing: the
    /// socket was empty then (see [`Stream::drained`]).
    short: bool,
    /// The last plaintext read under TLS gave less than was asked: rustls held no more
    /// plaintext then, and every complete record it had was decrypted (the read processes
    /// each record it takes from the socket).
    emptied: bool,
    /// Under TLS: socket bytes read ahead for rustls (allocated with the first read), and the
    /// range of them not handed on yet.
    ahead: Vec<u8>,
    ahead_at: usize,
    ahead_end: usize,
}

impl<S: Read + Write> Stream<S> {
    /// Plaintext over `sock`.
    pub fn plain(sock: S) -> Stream<S> {
        Stream { sock, tls: None, short: false, emptied: false, ahead: Vec::new(), ahead_at: 0, ahead_end: 0 }
    }

    /// TLS over `sock` with a connection whose handshake is done or under way.
    pub fn with_tls(sock: S, tls: rustls::Connection) -> Stream<S> {
        Stream {
            sock,
            tls: Some(Box::new(tls)),
            short: false,
            emptied: false,
            ahead: Vec::new(),
            ahead_at: 0,
            ahead_end: 0,
        }
    }

    /// The socket, to register with a poller or shut down.
    pub fn socket(&mut self) -> &mut S {
        &mut self.sock
    }

    /// Whether TLS runs.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Starts TLS as the server. `early` holds bytes the client sent after asking for TLS that
    /// were already read from the socket (the start of its handshake).
    pub fn start_server(&mut self, config: Arc<rustls::ServerConfig>, mut early: &[u8]) -> io::Result<()> {
        if self.tls.is_some() {
            return Ok(());
        }
        let tls = rustls::ServerConnection::new(config).map_err(|e| io::Error::new(ErrorKind::InvalidData, e))?;
        let mut tls = rustls::Connection::Server(tls);
        while !early.is_empty() {
            if tls.read_tls(&mut early)? == 0 {
                break;
            }
            process(&mut self.sock, &mut tls)?;
        }
        self.tls = Some(Box::new(tls));
        Ok(())
    }

    /// Reads plaintext: Ok(0) when the peer has closed, Err(WouldBlock) when nothing is there
    /// yet, Err(InvalidData) for a TLS failure.
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.tls.as_mut() {
            None => self.sock.read(buf),
            Some(tls) => {
                let mut from = Probe {
                    sock: &mut self.sock,
                    short: &mut self.short,
                    ahead: &mut self.ahead,
                    at: &mut self.ahead_at,
                    end: &mut self.ahead_end,
                };
                let n = read(&mut from, tls, buf)?;
                self.emptied = n < buf.len();
                Ok(n)
            }
        }
    }

    /// Under TLS, after a read that gave plaintext: the socket was empty at its last read and
    /// rustls holds no plaintext, so another read would only find the socket empty (data that
    /// comes later raises a new readable edge). Lets an edge-triggered loop stop without a
    /// read that returns WouldBlock, as a short plaintext read does. False without TLS (there
    /// the short read itself says so).
    pub fn drained(&self) -> bool {
        self.tls.is_some() && self.short && self.emptied && self.ahead_at == self.ahead_end
    }

    /// Writes plaintext; Err(WouldBlock) when nothing could be taken now.
    pub fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match self.tls.as_mut() {
            None => self.sock.write(data),
            Some(tls) => write(&mut self.sock, tls, data),
        }
    }

    /// TLS records queued but not on the socket yet.
    pub fn pending(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.wants_write())
    }

    /// Sends queued TLS records; Err(WouldBlock) when the socket is full.
    pub fn flush(&mut self) -> io::Result<()> {
        match self.tls.as_mut() {
            None => Ok(()),
            Some(tls) => flush(&mut self.sock, tls),
        }
    }

    /// Ends TLS politely (close_notify) where it runs.
    pub fn close(&mut self) {
        if let Some(tls) = self.tls.as_mut() {
            tls.send_close_notify();
            let _ = flush(&mut self.sock, tls);
        }
    }
}

/// Sends what rustls has queued; Err(WouldBlock) when the socket is full.
fn flush(sock: &mut impl Write, tls: &mut rustls::Connection) -> io::Result<()> {
    while tls.wants_write() {
        match tls.write_tls(sock) {
            Ok(0) => return Err(io::Error::from(ErrorKind::WriteZero)),
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Like [`flush`], with a full socket not an error.
fn flush_some(sock: &mut impl Write, tls: &mut rustls::Connection) -> io::Result<()> {
    match flush(sock, tls) {
        Err(e) if e.kind() != ErrorKind::WouldBlock => Err(e),
        _ => Ok(()),
    }
}

/// Hands rustls the records it has received; a protocol or certificate error sends its alert
/// and fails with InvalidData.
fn process(sock: &mut impl Write, tls: &mut rustls::Connection) -> io::Result<()> {
    if let Err(e) = tls.process_new_packets() {
        let _ = flush(sock, tls);
        return Err(io::Error::new(ErrorKind::InvalidData, e));
    }
    flush_some(sock, tls)
}

/// Reads plaintext: Ok(0) when the peer has closed, Err(WouldBlock) when nothing is there yet,
/// Err(InvalidData) for a TLS failure. Handshake records are answered on the way.
fn read<S: Read + Write>(from: &mut Probe<'_, S>, tls: &mut rustls::Connection, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match tls.reader().read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            // Closed without close_notify: the same as a hang-up here.
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(0),
            Err(e) => return Err(e),
        }
        match tls.read_tls(from) {
            Ok(0) => return Ok(0),
            Ok(_) => process(from.sock, tls)?,
            Err(e) => {
                *from.short = true;
                return Err(e);
            }
        }
    }
}

/// The socket as rustls reads it: through a read-ahead buffer filled by one socket read at a
/// time, noting whether that read gave less than was asked (the socket had no more then).
struct Probe<'a, S> {
    sock: &'a mut S,
    short: &'a mut bool,
    ahead: &'a mut Vec<u8>,
    at: &'a mut usize,
    end: &'a mut usize,
}

impl<S: Read> Read for Probe<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if *self.at == *self.end {
            if self.ahead.len() != READ_AHEAD_BYTES {
                self.ahead.resize(READ_AHEAD_BYTES, 0);
            }
            let n = self.sock.read(self.ahead)?;
            *self.short = n < READ_AHEAD_BYTES;
            (*self.at, *self.end) = (0, n);
        }
        let n = buf.len().min(*self.end - *self.at);
        buf[..n].copy_from_slice(&self.ahead[*self.at..*self.at + n]);
        *self.at += n;
        Ok(n)
    }
}

/// Writes plaintext; Err(WouldBlock) when nothing could be taken now.
fn write(sock: &mut impl Write, tls: &mut rustls::Connection, data: &[u8]) -> io::Result<usize> {
    flush(sock, tls)?;
    let n = tls.writer().write(data)?;
    flush_some(sock, tls)?;
    if n == 0 && !data.is_empty() {
        return Err(io::Error::from(ErrorKind::WouldBlock));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    /// A socket that counts the reads made of it.
    struct Counted(UnixStream, Arc<std::sync::atomic::AtomicUsize>);

    impl Read for Counted {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.0.read(buf)
        }
    }

    impl Write for Counted {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            self.0.flush()
        }
    }

    /// A client and a server `Stream` over a socket pair, the handshake done; the server's
    /// socket reads are counted.
    fn pair(dir: &std::path::Path) -> (Stream<UnixStream>, Stream<Counted>, Arc<std::sync::atomic::AtomicUsize>) {
        let tls = super::super::fabric::generate_cluster(dir, 2).unwrap();
        let (a, b) = (tls[0].load(0).unwrap(), tls[1].load(1).unwrap());
        let (ca, sb) = UnixStream::pair().unwrap();
        ca.set_nonblocking(true).unwrap();
        sb.set_nonblocking(true).unwrap();
        let name = rustls::pki_types::ServerName::try_from(super::super::fabric::node_name(1)).unwrap();
        let client = rustls::ClientConnection::new(a.client, name).unwrap();
        let server = rustls::ServerConnection::new(b.server).unwrap();
        let mut client = Stream::with_tls(ca, rustls::Connection::Client(client));
        let reads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut server = Stream::with_tls(Counted(sb, reads.clone()), rustls::Connection::Server(server));
        let mut buf = [0u8; 64];
        for _ in 0..8 {
            let _ = client.flush();
            assert_eq!(server.read(&mut buf).unwrap_err().kind(), ErrorKind::WouldBlock);
            let _ = server.flush();
            assert_eq!(client.read(&mut buf).unwrap_err().kind(), ErrorKind::WouldBlock);
        }
        (client, server, reads)
    }

    /// Reads until WouldBlock in `chunk`-byte reads; whenever the stream says it is drained,
    /// the next read must find nothing (else an edge-triggered loop would leave data behind).
    fn read_all(s: &mut Stream<Counted>, chunk: usize) -> (Vec<u8>, bool) {
        let (mut got, mut buf, mut said) = (Vec::new(), vec![0u8; chunk], false);
        loop {
            match s.read(&mut buf) {
                Ok(n) => {
                    assert!(n > 0, "closed");
                    got.extend_from_slice(&buf[..n]);
                    if s.drained() {
                        said = true;
                        assert_eq!(
                            s.read(&mut buf).unwrap_err().kind(),
                            ErrorKind::WouldBlock,
                            "drained with data left"
                        );
                        return (got, said);
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return (got, said),
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn drained_says_so_only_when_the_socket_and_rustls_are_empty() {
        let dir = tempfile::tempdir().unwrap();
        let (mut client, mut server, _) = pair(dir.path());
        for (round, (len, chunk)) in
            [(40_000usize, 1000usize), (100, 4096), (17_000, 16_384), (3, 1)].into_iter().enumerate()
        {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 + round) as u8).collect();
            let mut sent = 0;
            while sent < len {
                sent += client.write(&data[sent..]).unwrap();
            }
            client.flush().unwrap();
            let (got, said) = read_all(&mut server, chunk);
            assert_eq!(got, data, "round {round}");
            assert!(said || chunk == 1, "round {round}: never said drained");
        }
    }

    /// rustls reads its socket 4 KiB at a time; the read-ahead takes a 4 KiB write's record
    /// (a little over 4 KiB) in one system call.
    #[test]
    fn a_record_is_read_from_the_socket_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let (mut client, mut server, reads) = pair(dir.path());
        let data = vec![0x5au8; 4096];
        assert_eq!(client.write(&data).unwrap(), data.len());
        client.flush().unwrap();
        let before = reads.load(std::sync::atomic::Ordering::Relaxed);
        let mut buf = vec![0u8; 64 << 10];
        assert_eq!(server.read(&mut buf).unwrap(), data.len());
        assert!(server.drained(), "the socket gave all it had");
        assert_eq!(reads.load(std::sync::atomic::Ordering::Relaxed) - before, 1, "socket reads for one record");
    }
}
