//! The reference model as a card of its own in a controller process: its clock follows wall
//! time (`CLOCK_HZ`, so timeouts in cycles mean the same as on the simulated RTL's nominal
//! clock) and its link port is bridged to UDP on loopback, one datagram per frame, like the
//! Verilator device's.

use super::{Backend, ModelBackend};
use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vmm_sys_util::eventfd::EventFd;

/// Nominal card clock: cycles per second of wall time.
pub const CLOCK_HZ: u64 = 100_000_000;
/// Longest the clock thread sleeps without a doorbell, a frame or an acknowledged interrupt
/// (the card's timers run on the cycles it catches up when it wakes).
const IDLE_SLEEP: Duration = Duration::from_micros(50);
/// The link receiver's socket timeout (only how soon it sees a stop).
const RECV_TIMEOUT: Duration = Duration::from_millis(100);

/// A model card with a UDP link, a wall-clock-driven clock thread woken by doorbells and
/// frames, and its interrupt line as an eventfd (as VFIO gives an MSI-X vector).
#[derive(Clone)]
pub struct LinkedModel {
    card: ModelBackend,
    socket: Arc<UdpSocket>,
    peers: Arc<Mutex<HashMap<u8, SocketAddr>>>,
    stop: Arc<AtomicBool>,
    clock_thread: Arc<Mutex<Option<std::thread::Thread>>>,
    irq: Arc<EventFd>,
    /// The host cleared the interrupt causes since the last interrupt: the line seen high
    /// interrupts again.
    armed: Arc<AtomicBool>,
}

impl LinkedModel {
    /// Starts a model card whose link listens on `bind`.
    pub fn start(bind: SocketAddr) -> std::io::Result<LinkedModel> {
        let socket = Arc::new(UdpSocket::bind(bind)?);
        socket.set_read_timeout(Some(RECV_TIMEOUT))?;
        let me = LinkedModel {
            card: ModelBackend::new(),
            socket,
            peers: Arc::default(),
            stop: Arc::new(AtomicBool::new(false)),
            clock_thread: Arc::default(),
            irq: Arc::new(EventFd::new(libc::EFD_NONBLOCK)?),
            armed: Arc::new(AtomicBool::new(true)),
        };
        let t = me.clone();
        let clock = std::thread::Builder::new().name("model-card".into()).spawn(move || t.clock())?;
        *me.clock_thread.lock().unwrap_or_else(|p| p.into_inner()) = Some(clock.thread().clone());
        let r = me.clone();
        std::thread::Builder::new().name("model-card-link".into()).spawn(move || r.receive())?;
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

    /// Stops the clock and link threads.
    pub fn stop(&self) {
        self.stop.store(true, Relaxed);
        self.wake_clock();
    }

    fn wake_clock(&self) {
        if let Some(t) = self.clock_thread.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            t.unpark();
        }
    }

    /// Frames from the link go to the card at once, and the clock runs them.
    fn receive(&self) {
        let mut buf = [0u8; 64];
        while !self.stop.load(Relaxed) {
            if let Ok((n, _)) = self.socket.recv_from(&mut buf) {
                // Wrong-sized datagrams reach the card too: it counts them as malformed.
                self.card.deliver(&buf[..n]);
                // The model takes a frame at once: an event or completion it raised
                // interrupts now, not after the clock's next look.
                self.interrupt_if_due();
                self.wake_clock();
            }
        }
    }

    /// Interrupts the host when the line is high and the host cleared the causes since the
    /// last interrupt.
    fn interrupt_if_due(&self) {
        if self.card.irq_line() && self.armed.swap(false, Relaxed) {
            // Looked at again once armed: the host arms after its clear, so a line seen high
            // before the clear does not interrupt for nothing.
            if self.card.irq_line() {
                let _ = self.irq.write(1);
            } else {
                self.armed.store(true, Relaxed);
            }
        }
    }

    fn clock(&self) {
        let start = Instant::now();
        let mut cycles_done = 0u64;
        while !self.stop.load(Relaxed) {
            let due = start.elapsed().as_nanos() as u64 * CLOCK_HZ / 1_000_000_000;
            if due > cycles_done {
                self.card.run(due - cycles_done);
                cycles_done = due;
            }
            self.interrupt_if_due();
            let out = self.card.take_outgoing();
            if out.is_empty() {
                std::thread::park_timeout(IDLE_SLEEP);
                continue;
            }
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

impl Backend for LinkedModel {
    fn read32(&self, offset: u32) -> u32 {
        self.card.read32(offset)
    }
    fn write32(&self, offset: u32, value: u32) {
        self.card.write32(offset, value);
        // A doorbell: the clock runs the command now rather than after its idle sleep.
        self.wake_clock();
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
    fn interrupt(&self) -> Option<std::os::fd::RawFd> {
        Some(self.irq.as_raw_fd())
    }
    fn interrupt_ack(&self) {
        self.armed.store(true, Relaxed);
        self.wake_clock();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_model_card_interrupts_on_completions() {
        let card = super::LinkedModel::start("127.0.0.1:0".parse().unwrap()).unwrap();
        crate::engine::sim::tests::completions_interrupt(card.clone());
        card.stop();
    }
}
