//! Wire format of the controller-to-controller data path: one request, one response, each a
//! fixed header plus a bounded payload. Every request carries the sender's node id and
//! membership epoch; a receiver answers another epoch with `StaleEpoch` and acts on nothing.

use super::FabricError;
use std::io::{Read, Write};

/// "AMFQ": start of a request.
pub const REQUEST_MAGIC: u32 = 0x514d_4641;
/// "AMFS": start of a response.
pub const RESPONSE_MAGIC: u32 = 0x534d_4641;
/// Request header bytes.
pub const REQUEST_BYTES: usize = 40;
/// Response header bytes.
pub const RESPONSE_BYTES: usize = 24;
/// Largest payload either side accepts (a destage batch).
pub const PAYLOAD_BYTES_MAX: u32 = 8 << 20;

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A copy of cache line `a` (flag `FLAG_HANDOFF`: the dirty line this node lost to the
    /// sender's invalidate). Response payload: the line; `a` = its version.
    Fetch = 1,
    /// Keep a replica of the sender's dirty line `a`, version `b`: payload at byte `c` of it.
    Replicate = 2,
    /// Forget the sender's replica of line `a` up to version `b` (it reached the members).
    DropReplica = 3,
    /// Primary only: read `b` bytes of the group at offset `a`.
    DiskRead = 4,
    /// Primary only: write the payload at offset `a` (flag `FLAG_FUA`: durable first).
    DiskWrite = 5,
    /// Primary only: make every completed member write durable (flag `FLAG_LEAVING`: and
    /// record that the sender left with nothing dirty).
    DiskSync = 6,
    /// Write every dirty line of this node to the members (a FLUSH on another controller).
    DestageAll = 7,
    /// The group's size (answer `a`), asked with the sender's line size in `c`, refused when
    /// it differs from this node's.
    Info = 8,
}

impl Kind {
    fn from_raw(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::Fetch,
            2 => Kind::Replicate,
            3 => Kind::DropReplica,
            4 => Kind::DiskRead,
            5 => Kind::DiskWrite,
            6 => Kind::DiskSync,
            7 => Kind::DestageAll,
            8 => Kind::Info,
            _ => return None,
        })
    }
}

/// Fetch: the sender wants the line this node gave up to its invalidate.
pub const FLAG_HANDOFF: u16 = 1;
/// DiskWrite: force unit access.
pub const FLAG_FUA: u16 = 2;
/// DiskSync: the sender wrote back every line it acknowledged and is leaving; the primary may
/// count it when it decides whether the group is clean.
pub const FLAG_LEAVING: u16 = 4;

/// Outcome of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    /// Done; payload as the kind says.
    Ok = 0,
    /// Fetch: this node has no valid copy.
    NotHeld = 1,
    /// Fetch: this node holds the line exclusively, so the asker's copy was invalidated since it
    /// asked; it must start over.
    Retry = 2,
    /// The sender's epoch is not this node's.
    StaleEpoch = 3,
    /// Malformed or not allowed here (e.g. a disk request to a node that is not the primary).
    BadRequest = 4,
    /// The operation failed (a member error).
    Failed = 5,
}

impl Status {
    fn from_raw(v: u8) -> Option<Status> {
        Some(match v {
            0 => Status::Ok,
            1 => Status::NotHeld,
            2 => Status::Retry,
            3 => Status::StaleEpoch,
            4 => Status::BadRequest,
            5 => Status::Failed,
            _ => return None,
        })
    }
}

/// A request header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// What is asked.
    pub kind: Kind,
    /// Sender node.
    pub src: u8,
    /// Kind-specific flags.
    pub flags: u16,
    /// Sender's membership epoch.
    pub epoch: u32,
    /// Kind-specific arguments.
    pub a: u64,
    /// Kind-specific arguments.
    pub b: u64,
    /// Kind-specific arguments.
    pub c: u64,
}

impl Request {
    /// A request with zero arguments.
    pub fn new(kind: Kind, src: u8, epoch: u32) -> Request {
        Request { kind, src, flags: 0, epoch, a: 0, b: 0, c: 0 }
    }
}

/// A response header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Response {
    /// Outcome.
    pub status: Status,
    /// Kind-specific result.
    pub a: u64,
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le64(b: &[u8], at: usize) -> u64 {
    (le32(b, at) as u64) | (le32(b, at + 4) as u64) << 32
}

fn read_payload(r: &mut impl Read, len: u32) -> Result<Vec<u8>, FabricError> {
    if len > PAYLOAD_BYTES_MAX {
        return Err(FabricError::Protocol(format!("payload of {len} bytes (most {PAYLOAD_BYTES_MAX})")));
    }
    let mut p = vec![0u8; len as usize];
    r.read_exact(&mut p).map_err(FabricError::Io)?;
    Ok(p)
}

/// Writes a request and its payload.
pub fn write_request(w: &mut impl Write, q: &Request, payload: &[u8]) -> Result<(), FabricError> {
    let mut h = [0u8; REQUEST_BYTES];
    h[0..4].copy_from_slice(&REQUEST_MAGIC.to_le_bytes());
    h[4] = q.kind as u8;
    h[5] = q.src;
    h[6..8].copy_from_slice(&q.flags.to_le_bytes());
    h[8..12].copy_from_slice(&q.epoch.to_le_bytes());
    h[12..16].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    h[16..24].copy_from_slice(&q.a.to_le_bytes());
    h[24..32].copy_from_slice(&q.b.to_le_bytes());
    h[32..40].copy_from_slice(&q.c.to_le_bytes());
    w.write_all(&h).and_then(|_| w.write_all(payload)).and_then(|_| w.flush()).map_err(FabricError::Io)
}

/// Reads a request; `Ok(None)` when the peer closed the connection between requests.
pub fn read_request(r: &mut impl Read) -> Result<Option<(Request, Vec<u8>)>, FabricError> {
    let mut h = [0u8; REQUEST_BYTES];
    match r.read_exact(&mut h[..1]) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(FabricError::Io(e)),
    }
    r.read_exact(&mut h[1..]).map_err(FabricError::Io)?;
    if le32(&h, 0) != REQUEST_MAGIC {
        return Err(FabricError::Protocol(format!("bad request magic {:#010x}", le32(&h, 0))));
    }
    let kind = Kind::from_raw(h[4]).ok_or_else(|| FabricError::Protocol(format!("unknown request kind {}", h[4])))?;
    let q = Request {
        kind,
        src: h[5],
        flags: u16::from_le_bytes([h[6], h[7]]),
        epoch: le32(&h, 8),
        a: le64(&h, 16),
        b: le64(&h, 24),
        c: le64(&h, 32),
    };
    let payload = read_payload(r, le32(&h, 12))?;
    Ok(Some((q, payload)))
}

/// Writes a response and its payload.
pub fn write_response(w: &mut impl Write, s: &Response, payload: &[u8]) -> Result<(), FabricError> {
    let mut h = [0u8; RESPONSE_BYTES];
    h[0..4].copy_from_slice(&RESPONSE_MAGIC.to_le_bytes());
    h[4] = s.status as u8;
    h[8..12].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    h[16..24].copy_from_slice(&s.a.to_le_bytes());
    w.write_all(&h).and_then(|_| w.write_all(payload)).and_then(|_| w.flush()).map_err(FabricError::Io)
}

/// Reads a response.
pub fn read_response(r: &mut impl Read) -> Result<(Response, Vec<u8>), FabricError> {
    let mut h = [0u8; RESPONSE_BYTES];
    r.read_exact(&mut h).map_err(FabricError::Io)?;
    if le32(&h, 0) != RESPONSE_MAGIC {
        return Err(FabricError::Protocol(format!("bad response magic {:#010x}", le32(&h, 0))));
    }
    let status =
        Status::from_raw(h[4]).ok_or_else(|| FabricError::Protocol(format!("unknown response status {}", h[4])))?;
    let payload = read_payload(r, le32(&h, 8))?;
    Ok((Response { status, a: le64(&h, 16) }, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips_and_garbage_is_refused() {
        let q = Request { kind: Kind::Replicate, src: 3, flags: FLAG_FUA, epoch: 7, a: 1 << 40, b: 9, c: 4096 };
        let mut buf = Vec::new();
        write_request(&mut buf, &q, b"abc").unwrap();
        let (back, p) = read_request(&mut buf.as_slice()).unwrap().unwrap();
        assert_eq!((back, p.as_slice()), (q, &b"abc"[..]));
        let mut bad = buf.clone();
        bad[0] ^= 1;
        assert!(matches!(read_request(&mut bad.as_slice()), Err(FabricError::Protocol(_))));
        let mut bad = buf.clone();
        bad[4] = 99;
        assert!(matches!(read_request(&mut bad.as_slice()), Err(FabricError::Protocol(_))));
        let mut huge = buf.clone();
        huge[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(read_request(&mut huge.as_slice()), Err(FabricError::Protocol(_))));
        assert!(read_request(&mut &[][..]).unwrap().is_none());
        assert!(matches!(read_request(&mut &buf[..10]), Err(FabricError::Io(_))));
    }

    #[test]
    fn response_round_trips() {
        let s = Response { status: Status::Retry, a: 42 };
        let mut buf = Vec::new();
        write_response(&mut buf, &s, &[1, 2]).unwrap();
        assert_eq!(read_response(&mut buf.as_slice()).unwrap(), (s, vec![1, 2]));
        buf[4] = 200;
        assert!(matches!(read_response(&mut buf.as_slice()), Err(FabricError::Protocol(_))));
    }
}
