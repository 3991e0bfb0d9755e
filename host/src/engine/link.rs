//! The reference model as a card of its own in a controller process: its clock follows wall
//! time (`CLOCK_HZ`, so timeouts in cycles mean the same as on the simulated RTL's nominal
//! clock) and its link port is bridged to UDP on loopback, one datagram per frame, like the
//! Verilator device's.

use super::{Backend, ModelBackend};
use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Nominal card clock: cycles per second of wall time.
pub const CLOCK_HZ: u64 = 100_000_000;
/// How long the link thread sleeps when nothing arrived (a socket read timeout would round up
/// to a scheduler tick, milliseconds).
const IDLE_SLEEP: Duration = Duration::from_micros(50);

/// A model card with a UDP link and a wall-clock-driven clock thread.
#[derive(Clone)]
pub struct LinkedModel {
    card: ModelBackend,
    socket: Arc<UdpSocket>,
    peers: Arc<Mutex<HashMap<u8, SocketAddr>>>,
    stop: Arc<AtomicBool>,
}

impl LinkedModel {
    /// Starts a model card whose link listens on `bind`.
    pub fn start(bind: SocketAddr) -> std::io::Result<LinkedModel> {
        let socket = Arc::new(UdpSocket::bind(bind)?);
        socket.set_nonblocking(true)?;
        let me = LinkedModel {
            card: ModelBackend::new(),
            socket,
            peers: Arc::default(),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let t = me.clone();
        std::thread::Builder::new().name("model-card".into()).spawn(move || t.clock())?;
        Ok(me)
    }

    /// The link's UDP address.
    pub fn link_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Where node `id`'s card listens.
    pub fn set_peer(&self, id: u8, addr: SocketAddr) {
        self.peers.lock().unwrap_or_else(|p| p.into_inner()).insert(id, addr);
    }

    /// Stops the clock thread.
    pub fn stop(&self) {
        self.stop.store(true, Relaxed);
    }

    fn clock(&self) {
        let start = Instant::now();
        let mut cycles_done = 0u64;
        let mut buf = [0u8; 64];
        while !self.stop.load(Relaxed) {
            let mut received = false;
            while let Ok((n, _)) = self.socket.recv_from(&mut buf) {
                // Wrong-sized datagrams reach the card too: it counts them as malformed.
                self.card.deliver(&buf[..n]);
                received = true;
            }
            let due = start.elapsed().as_nanos() as u64 * CLOCK_HZ / 1_000_000_000;
            if due > cycles_done {
                self.card.run(due - cycles_done);
                cycles_done = due;
            }
            let out = self.card.take_outgoing();
            if out.is_empty() && !received {
                std::thread::sleep(IDLE_SLEEP);
            } else {
                let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner()).clone();
                // The link multicasts: one datagram to each node the frame names.
                for o in out {
                    for (_, a) in peers.iter().filter(|(n, _)| **n < 8 && o.dst_mask & (1 << **n) != 0) {
                        let _ = self.socket.send_to(&o.bytes, a);
                    }
                }
            }
        }
    }
}

impl Backend for LinkedModel {
    fn read32(&self, offset: u32) -> u32 {
        self.card.read32(offset)
    }
    fn write32(&self, offset: u32, value: u32) {
        self.card.write32(offset, value)
    }
    fn dma_alloc(&self, bytes: usize) -> Result<u64, String> {
        self.card.dma_alloc(bytes)
    }
    fn dma_read(&self, addr: u64, buf: &mut [u8]) -> Result<(), String> {
        self.card.dma_read(addr, buf)
    }
    fn dma_write(&self, addr: u64, data: &[u8]) -> Result<(), String> {
        self.card.dma_write(addr, data)
    }
    fn run(&self, _cycles: u64) {
        // The clock thread runs the card; the driver only waits a little.
        std::thread::sleep(Duration::from_micros(20));
    }
}
