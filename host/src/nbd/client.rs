//! A small synchronous NBD client (fixed newstyle, OPT_GO, simple replies) for `amf demo` and
//! the cluster workloads: one request at a time, so it knows exactly when each write was
//! acknowledged.

use super::proto::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The connection failed.
    #[error("NBD connection: {0}")]
    Io(#[from] std::io::Error),
    /// The server said something that is not the protocol.
    #[error("NBD protocol: {0}")]
    Protocol(String),
    /// The server refused a request with this errno.
    #[error("NBD server answered errno {0}")]
    Errno(u32),
}

/// An open export.
pub struct Client {
    s: TcpStream,
    /// Export size.
    pub size: u64,
    cookie: u64,
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn be64(b: &[u8]) -> u64 {
    (be32(b) as u64) << 32 | be32(&b[4..]) as u64
}

impl Client {
    /// Connects to `addr` (host:port) and opens export `name`.
    pub fn connect(addr: &str, name: &str) -> Result<Client, ClientError> {
        let mut s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        s.set_nodelay(true)?;
        let mut g = [0u8; 18];
        s.read_exact(&mut g)?;
        if be64(&g) != NBDMAGIC || be64(&g[8..]) != IHAVEOPT {
            return Err(ClientError::Protocol("not an NBD newstyle server".into()));
        }
        s.write_all(&CLIENT_FLAGS_KNOWN.to_be_bytes())?;
        let mut m = IHAVEOPT.to_be_bytes().to_vec();
        m.extend_from_slice(&OPT_GO.to_be_bytes());
        m.extend_from_slice(&(4 + name.len() as u32 + 2).to_be_bytes());
        m.extend_from_slice(&(name.len() as u32).to_be_bytes());
        m.extend_from_slice(name.as_bytes());
        m.extend_from_slice(&0u16.to_be_bytes());
        s.write_all(&m)?;
        let mut size = None;
        loop {
            let mut h = [0u8; 20];
            s.read_exact(&mut h)?;
            if be64(&h) != REPLY_MAGIC {
                return Err(ClientError::Protocol("bad option reply magic".into()));
            }
            let len = be32(&h[16..]);
            if len > 1 << 16 {
                return Err(ClientError::Protocol(format!("option reply of {len} bytes")));
            }
            let mut d = vec![0u8; len as usize];
            s.read_exact(&mut d)?;
            match be32(&h[12..]) {
                REP_INFO if d.len() >= 10 && u16::from_be_bytes([d[0], d[1]]) == INFO_EXPORT => {
                    size = Some(be64(&d[2..]))
                }
                REP_INFO => {}
                REP_ACK => break,
                other => return Err(ClientError::Protocol(format!("export {name:?} refused (reply {other:#x})"))),
            }
        }
        let size = size.ok_or_else(|| ClientError::Protocol("no export size in the GO reply".into()))?;
        Ok(Client { s, size, cookie: 0 })
    }

    fn request(&mut self, cmd: u16, flags: u16, offset: u64, len: u32, payload: &[u8]) -> Result<(), ClientError> {
        self.cookie += 1;
        let mut r = Vec::with_capacity(28 + payload.len());
        r.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        r.extend_from_slice(&flags.to_be_bytes());
        r.extend_from_slice(&cmd.to_be_bytes());
        r.extend_from_slice(&self.cookie.to_be_bytes());
        r.extend_from_slice(&offset.to_be_bytes());
        r.extend_from_slice(&len.to_be_bytes());
        r.extend_from_slice(payload);
        self.s.write_all(&r)?;
        let mut h = [0u8; 16];
        self.s.read_exact(&mut h)?;
        if be32(&h) != SIMPLE_REPLY_MAGIC || be64(&h[8..]) != self.cookie {
            return Err(ClientError::Protocol("bad reply magic or cookie".into()));
        }
        match be32(&h[4..]) {
            0 => Ok(()),
            e => Err(ClientError::Errno(e)),
        }
    }

    /// Reads `buf.len()` bytes at `offset`.
    pub fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), ClientError> {
        self.request(CMD_READ, 0, offset, buf.len() as u32, &[])?;
        self.s.read_exact(buf)?;
        Ok(())
    }

    /// Writes `data` at `offset`, returning once the server acknowledged it.
    pub fn write(&mut self, offset: u64, data: &[u8], fua: bool) -> Result<(), ClientError> {
        self.request(CMD_WRITE, if fua { CMD_FLAG_FUA } else { 0 }, offset, data.len() as u32, data)
    }

    /// FLUSH.
    pub fn flush(&mut self) -> Result<(), ClientError> {
        self.request(CMD_FLUSH, 0, 0, 0, &[])
    }

    /// Ends the session.
    pub fn disconnect(mut self) {
        self.cookie += 1;
        let mut r = REQUEST_MAGIC.to_be_bytes().to_vec();
        r.extend_from_slice(&0u16.to_be_bytes());
        r.extend_from_slice(&CMD_DISC.to_be_bytes());
        r.extend_from_slice(&self.cookie.to_be_bytes());
        r.extend_from_slice(&[0u8; 12]);
        let _ = self.s.write_all(&r);
    }
}
