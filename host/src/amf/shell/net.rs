//! The fabric between controllers' machines: one-way messages over TCP. Every frame has a
//! fixed header (magic, format version, sender, epoch, payload length) and a bincode payload
//! (the serde form of [`Msg`]); nothing is decoded by hand. A writer thread per peer owns the
//! outgoing connection (the event loop never blocks on a socket); a reader thread per
//! incoming connection decodes frames into the loop's inbox. Lost messages are the machine's
//! business: it retransmits its requests.

use super::Inbox;
use crate::amf::io::Msg;
use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// "AMFM": a frame of the machine fabric.
const MAGIC: u32 = 0x4d46_4d41;
/// Format version; frames of another version are refused.
pub const VERSION: u8 = 2;
/// Header bytes: magic, version, sender, epoch, payload length.
const HEADER_BYTES: usize = 4 + 1 + 1 + 4 + 4;
/// Messages queued for one peer; past it new ones are dropped (and retransmitted).
const QUEUE_MAX: usize = 4096;
/// Pause between connection attempts to a peer that is not up.
const RECONNECT_PAUSE: Duration = Duration::from_millis(20);

/// Why a frame was refused.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// Not a machine-fabric frame.
    #[error("bad magic {0:#010x}")]
    Magic(u32),
    /// Another format version.
    #[error("format version {0}, this controller speaks {VERSION}")]
    Version(u8),
    /// Longer than any message.
    #[error("payload of {0} bytes is over the limit")]
    TooLong(usize),
    /// The payload does not decode.
    #[error("payload: {0}")]
    Payload(String),
    /// The connection failed.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
}

/// Encodes one frame.
pub fn encode(from: u8, epoch: u32, msg: &Msg) -> Result<Vec<u8>, FrameError> {
    let payload = bincode::serialize(msg).map_err(|e| FrameError::Payload(e.to_string()))?;
    let mut out = Vec::with_capacity(HEADER_BYTES + payload.len());
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.push(VERSION);
    out.push(from);
    out.extend_from_slice(&epoch.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Reads one frame: (sender, epoch, message). `payload_max` bounds what a peer can make this
/// controller allocate.
pub fn read_frame(r: &mut impl Read, payload_max: usize) -> Result<(u8, u32, Msg), FrameError> {
    let mut h = [0u8; HEADER_BYTES];
    r.read_exact(&mut h)?;
    let magic = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    if magic != MAGIC {
        return Err(FrameError::Magic(magic));
    }
    if h[4] != VERSION {
        return Err(FrameError::Version(h[4]));
    }
    let from = h[5];
    let epoch = u32::from_le_bytes([h[6], h[7], h[8], h[9]]);
    let len = u32::from_le_bytes([h[10], h[11], h[12], h[13]]) as usize;
    if len > payload_max {
        return Err(FrameError::TooLong(len));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    let msg = bincode::DefaultOptions::new();
    let msg: Msg = bincode::Options::deserialize(
        bincode::Options::with_limit(bincode::Options::with_fixint_encoding(msg), payload_max as u64),
        &payload,
    )
    .map_err(|e| FrameError::Payload(e.to_string()))?;
    Ok((from, epoch, msg))
}

/// Counters of the fabric.
#[derive(Default, Debug)]
pub struct NetStats {
    /// Frames sent.
    pub sent: AtomicU64,
    /// Frames received and decoded.
    pub received: AtomicU64,
    /// Frames dropped because a peer's queue was full or its connection failed.
    pub dropped: AtomicU64,
    /// Connections closed for garbage (bad magic, version, length or payload).
    pub refused: AtomicU64,
    /// When a frame last came from each controller (the fence gate's nanoseconds, see
    /// `raid::fence`; 0: never): which peers this one hears, for the lease's reach.
    pub heard_ns: [AtomicU64; 8],
}

impl NetStats {
    /// Peers heard from within `within_ns` of now, as a mask.
    pub fn heard_within(&self, within_ns: u64) -> u8 {
        let now = crate::raid::fence::now_ns();
        (0..8u8)
            .filter(|p| {
                let t = self.heard_ns[*p as usize].load(Relaxed);
                t != 0 && now.saturating_sub(t) <= within_ns
            })
            .fold(0, |m, p| m | 1 << p)
    }
}

/// This controller's end of the fabric.
pub struct Net {
    node: u8,
    /// The membership epoch frames carry (changed by the loop only).
    epoch: AtomicU32,
    peers: Vec<Option<Sender<Vec<u8>>>>,
    /// Counters.
    pub stats: Arc<NetStats>,
    stop: Arc<AtomicBool>,
}

impl Net {
    /// Starts accepting on `listener` (frames go to `inbox`) and a writer per peer.
    pub fn start(
        listener: TcpListener,
        node: u8,
        epoch: u32,
        peers: &[(u8, SocketAddr)],
        payload_max: usize,
        inbox: Inbox,
    ) -> std::io::Result<Net> {
        let stats = Arc::new(NetStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut out: Vec<Option<Sender<Vec<u8>>>> = vec![None; 8];
        for &(p, addr) in peers {
            let (tx, rx) = bounded(QUEUE_MAX);
            let (stats, stop) = (stats.clone(), stop.clone());
            std::thread::Builder::new().name(format!("fabric-to-{p}")).spawn(move || writer(addr, rx, stats, stop))?;
            if let Some(slot) = out.get_mut(p as usize) {
                *slot = Some(tx);
            }
        }
        let (s, st) = (stats.clone(), stop.clone());
        listener.set_nonblocking(true)?;
        std::thread::Builder::new()
            .name("fabric-accept".into())
            .spawn(move || accept(listener, payload_max, inbox, s, st))?;
        Ok(Net { node, epoch: AtomicU32::new(epoch), peers: out, stats, stop })
    }

    /// Queues `msg` for `to` (dropped when its queue is full: the machine retransmits).
    pub fn send(&self, to: u8, msg: &Msg) {
        let Some(Some(tx)) = self.peers.get(to as usize) else {
            self.stats.dropped.fetch_add(1, Relaxed);
            return;
        };
        match encode(self.node, self.epoch.load(Relaxed), msg) {
            Ok(bytes) => match tx.try_send(bytes) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                    self.stats.dropped.fetch_add(1, Relaxed);
                }
            },
            Err(_) => {
                self.stats.dropped.fetch_add(1, Relaxed);
            }
        }
    }

    /// Frames from now on carry `epoch` (a new membership).
    pub fn set_epoch(&self, epoch: u32) {
        self.epoch.store(epoch, Relaxed);
    }

    /// Stops the threads (writers drop what is queued).
    pub fn stop(&self) {
        self.stop.store(true, Relaxed);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.stop();
    }
}

fn writer(addr: SocketAddr, rx: Receiver<Vec<u8>>, stats: Arc<NetStats>, stop: Arc<AtomicBool>) {
    let mut conn: Option<TcpStream> = None;
    while !stop.load(Relaxed) {
        let Ok(bytes) = rx.recv_timeout(Duration::from_millis(100)) else { continue };
        if conn.is_none() {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
                    conn = Some(s);
                }
                Err(_) => {
                    stats.dropped.fetch_add(1, Relaxed);
                    std::thread::sleep(RECONNECT_PAUSE);
                    continue;
                }
            }
        }
        if let Some(s) = conn.as_mut() {
            if s.write_all(&bytes).is_ok() {
                stats.sent.fetch_add(1, Relaxed);
            } else {
                stats.dropped.fetch_add(1, Relaxed);
                conn = None;
            }
        }
    }
}

fn accept(listener: TcpListener, payload_max: usize, inbox: Inbox, stats: Arc<NetStats>, stop: Arc<AtomicBool>) {
    while !stop.load(Relaxed) {
        match listener.accept() {
            Ok((s, _)) => {
                let (inbox, stats, stop) = (inbox.clone(), stats.clone(), stop.clone());
                let _ = s.set_nonblocking(false);
                let _ = std::thread::Builder::new()
                    .name("fabric-from".into())
                    .spawn(move || reader(s, payload_max, inbox, stats, stop));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

fn reader(mut s: TcpStream, payload_max: usize, inbox: Inbox, stats: Arc<NetStats>, stop: Arc<AtomicBool>) {
    // Blocking reads without a timeout: a timeout inside a frame would lose its start. The
    // thread ends when the peer closes or sends garbage, or when the loop is gone.
    let mut r = std::io::BufReader::new(&mut s);
    while !stop.load(Relaxed) {
        match read_frame(&mut r, payload_max) {
            Ok((from, epoch, msg)) => {
                stats.received.fetch_add(1, Relaxed);
                if let Some(t) = stats.heard_ns.get(from as usize) {
                    t.store(crate::raid::fence::now_ns().max(1), Relaxed);
                }
                if inbox.send(super::Event::Input(crate::amf::io::Input::Fabric { from, epoch, msg })).is_err() {
                    return;
                }
            }
            Err(FrameError::Io(_)) => return,
            Err(e) => {
                stats.refused.fetch_add(1, Relaxed);
                eprintln!("amf: fabric: closing a connection: {e}");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The line payloads are encoded as bytes; the frame must be what the per-byte sequence
    /// encoding of format version 2 gave (peers of either build read each other).
    #[test]
    fn line_payloads_keep_the_sequence_encoding_and_round_trip() {
        #[derive(serde::Serialize)]
        enum Seq {
            Replicate { id: u64, line: u64, wseq: u64, data: Vec<u8> },
        }
        let data: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
        let msg = Msg::Replicate { id: 3, line: 9, wseq: 12, data: data.clone() };
        let ours = bincode::serialize(&msg).unwrap();
        let seq = bincode::serialize(&Seq::Replicate { id: 3, line: 9, wseq: 12, data: data.clone() }).unwrap();
        assert_eq!(ours, seq);
        for msg in [msg, Msg::LineData { id: 4, data: Some(data) }, Msg::LineData { id: 5, data: None }] {
            let frame = encode(1, 7, &msg).unwrap();
            let (from, epoch, back) = read_frame(&mut frame.as_slice(), 1 << 20).unwrap();
            assert_eq!((from, epoch, back), (1, 7, msg));
        }
    }
}
