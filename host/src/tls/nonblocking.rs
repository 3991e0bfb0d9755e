//! TLS over a non-blocking socket, for loops that never wait on one connection: the NBD event
//! loop's connections (server side) and the fabric's outgoing connections (client side).
//! Records the socket cannot take yet wait inside rustls and go with the next call.

use std::io::{self, ErrorKind, Read, Write};

/// Sends what rustls has queued; Err(WouldBlock) when the socket is full.
pub fn flush(sock: &mut impl Write, tls: &mut rustls::Connection) -> io::Result<()> {
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
pub fn process(sock: &mut impl Write, tls: &mut rustls::Connection) -> io::Result<()> {
    if let Err(e) = tls.process_new_packets() {
        let _ = flush(sock, tls);
        return Err(io::Error::new(ErrorKind::InvalidData, e));
    }
    flush_some(sock, tls)
}

/// Reads plaintext: Ok(0) when the peer has closed, Err(WouldBlock) when nothing is there yet,
/// Err(InvalidData) for a TLS failure. Handshake records are answered on the way.
pub fn read<S: Read + Write>(sock: &mut S, tls: &mut rustls::Connection, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match tls.reader().read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            // Closed without close_notify: the same as a hang-up here.
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(0),
            Err(e) => return Err(e),
        }
        match tls.read_tls(sock) {
            Ok(0) => return Ok(0),
            Ok(_) => process(sock, tls)?,
            Err(e) => return Err(e),
        }
    }
}

/// Writes plaintext; Err(WouldBlock) when nothing could be taken now.
pub fn write(sock: &mut impl Write, tls: &mut rustls::Connection, data: &[u8]) -> io::Result<usize> {
    flush(sock, tls)?;
    let n = tls.writer().write(data)?;
    flush_some(sock, tls)?;
    if n == 0 && !data.is_empty() {
        return Err(io::Error::from(ErrorKind::WouldBlock));
    }
    Ok(n)
}
