//! The reference model as a card of its own in a controller process: its clock follows wall
//! time (`CLOCK_HZ`, so timeouts in cycles mean the same as on the simulated RTL's nominal
//! clock) and its link port is bridged to UDP on loopback, one datagram per frame, like the
//! Verilator device's.

use super::{Backend, ModelBackend};
use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vmm_sys_util::eventfd::EventFd;

/// Nominal card clock: cycles per second of wall time.
pub const CLOCK_HZ: u64 = 100_000_000;
/// How long the clock thread waits while the card has work it cannot do yet (a ring full).
const STALLED_SLEEP: Duration = Duration::from_micros(50);
/// Longest the clock thread sleeps without a doorbell, a frame or an acknowledged interrupt
/// when nothing is timed: the card's next timer (a command's deadline or back-off, a
/// heartbeat) wakes it otherwise.
const IDLE_SLEEP_MAX: Duration = Duration::from_millis(10);
/// `wakes_at` while the clock thread is awake.
const AWAKE: u64 = 0;
/// The link receiver's socket timeout (only how soon it sees a stop).
const RECV_TIMEOUT: Duration = Duration::from_millis(100);
/// Frames one [`LinkedModel::pump_link`] takes before it returns (more wait for the next).
const PUMP_FRAMES_MAX: usize = 1024;

/// A model card with a UDP link, a wall-clock-driven clock thread woken by doorbells and
/// frames, and its interrupt line as an eventfd (as VFIO gives an MSI-X vector).
#[derive(Clone)]
pub struct LinkedModel {
    card: ModelBackend,
    socket: Arc<UdpSocket>,
    peers: Arc<Mutex<HashMap<u8, SocketAddr>>>,
    stop: Arc<AtomicBool>,
    clock_thread: Arc<Mutex<Option<std::thread::Thread>>>,
    /// When the clock's time started (cycle 0).
    start: Instant,
    /// The cycle the sleeping clock thread wakes at by itself (`AWAKE` while it runs): a
    /// frame that makes the card due sooner wakes it.
    wakes_at: Arc<AtomicU64>,
    irq: Arc<EventFd>,
    /// The host cleared the interrupt causes since the last interrupt: the line seen high
    /// interrupts again.
    armed: Arc<AtomicBool>,
    /// The host's loop reads the link (`host_link`): the link thread has ended.
    hosted: Arc<AtomicBool>,
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
            start: Instant::now(),
            wakes_at: Arc::new(AtomicU64::new(AWAKE)),
            irq: Arc::new(EventFd::new(libc::EFD_NONBLOCK)?),
            armed: Arc::new(AtomicBool::new(true)),
            hosted: Arc::new(AtomicBool::new(false)),
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

    /// The card's cycle now: wall time since the start at `CLOCK_HZ`.
    fn cycle_now(&self) -> u64 {
        (self.start.elapsed().as_nanos() * CLOCK_HZ as u128 / 1_000_000_000) as u64
    }

    /// Frames from the link go to the card at once, on this thread: the card's answers leave
    /// from here too, and the clock thread is woken only when the frame gave the card a timer
    /// sooner than the one it sleeps until (a context switch per frame was most of a model
    /// card's CPU).
    fn receive(&self) {
        let mut buf = [0u8; 64];
        while !self.stop.load(Relaxed) && !self.hosted.load(SeqCst) {
            if let Ok((n, _)) = self.socket.recv_from(&mut buf) {
                // The card's time catches up first: timers the frame starts count from now.
                self.card.run_to(self.cycle_now());
                // Wrong-sized datagrams reach the card too: it counts them as malformed.
                self.card.deliver(&buf[..n]);
                self.react();
            }
        }
    }

    /// Hands the link to the host's event loop: the link thread ends, and the loop calls
    /// [`LinkedModel::pump_link`] when the returned socket is readable (edge-triggered). A frame
    /// then reaches the card on the thread that would otherwise be woken by its interrupt: the
    /// model stands for a card that takes frames off its link by itself, so a simulated card
    /// costs a waiting host one wake per frame, as a real one does, instead of two.
    pub fn host_link(&self) -> std::io::Result<std::os::fd::RawFd> {
        // The thread sees the flag at its next frame or timeout; a frame it takes meanwhile
        // reaches the card as before.
        self.hosted.store(true, SeqCst);
        self.socket.set_nonblocking(true)?;
        Ok(self.socket.as_raw_fd())
    }

    /// Takes the frames waiting on a hosted link to the card (at most `PUMP_FRAMES_MAX`) and
    /// lets the card answer. Returns true when more may wait (the bound was reached: no new
    /// readable edge will say so).
    pub fn pump_link(&self) -> bool {
        let mut buf = [0u8; 64];
        let mut taken = 0;
        while taken < PUMP_FRAMES_MAX {
            match self.socket.recv_from(&mut buf) {
                Ok((n, _)) => {
                    self.card.run_to(self.cycle_now());
                    self.card.deliver(&buf[..n]);
                    taken += 1;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // WouldBlock: empty. Anything else: a datagram error the next edge retries.
                Err(_) => break,
            }
        }
        if taken > 0 {
            self.react();
        }
        taken == PUMP_FRAMES_MAX
    }

    /// After new input (a frame, a host write): the card's answers leave now, an interrupt it
    /// raised fires now, and the clock thread is woken only when the card is due sooner than
    /// the clock sleeps.
    fn react(&self) {
        self.send_outgoing();
        self.interrupt_if_due();
        let wakes_at = self.wakes_at.load(SeqCst);
        if self.card.next_due().is_some_and(|due| wakes_at == AWAKE || due < wakes_at) {
            self.wake_clock();
        }
    }

    /// Sends the frames the card put out; false when there were none.
    fn send_outgoing(&self) -> bool {
        let out = self.card.take_outgoing();
        if out.is_empty() {
            return false;
        }
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner()).clone();
        // The link multicasts: one datagram to each node the frame names.
        for o in out {
            for (_, a) in peers.iter().filter(|(n, _)| **n < 8 && o.dst_mask & (1 << **n) != 0) {
                let _ = self.socket.send_to(&o.bytes, a);
            }
        }
        true
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

    /// Runs the card's clock: catches up with wall time, sends what the card put out, and
    /// sleeps until the card's next timer, a doorbell, a frame that needs it sooner, or an
    /// acknowledged interrupt.
    fn clock(&self) {
        while !self.stop.load(Relaxed) {
            self.wakes_at.store(AWAKE, SeqCst);
            let now = self.cycle_now();
            self.card.run_to(now);
            self.interrupt_if_due();
            if self.send_outgoing() {
                continue;
            }
            let sleep = match self.card.next_due() {
                Some(due) if due <= now => STALLED_SLEEP,
                Some(due) => {
                    self.wakes_at.store(due, SeqCst);
                    Duration::from_nanos((due - now).saturating_mul(1_000_000_000 / CLOCK_HZ)).min(IDLE_SLEEP_MAX)
                }
                None => {
                    self.wakes_at.store(u64::MAX, SeqCst);
                    IDLE_SLEEP_MAX
                }
            };
            std::thread::park_timeout(sleep);
        }
    }
}

impl Backend for LinkedModel {
    fn read32(&self, offset: u32) -> u32 {
        self.card.read32(offset)
    }
    fn write32(&self, offset: u32, value: u32) {
        // A doorbell is served at once, on the writer's thread, as a card fetching the
        // command within the write's time would (a real card takes about a microsecond).
        self.card.write32(offset, value);
        self.card.run_to(self.cycle_now());
        self.react();
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
        // Causes raised since the host's clear interrupt again now.
        self.interrupt_if_due();
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
