//! The simulated card as a device of its own: a clock thread that runs the RTL only while the
//! card is busy (a doorbell, a frame, a pending acquire or a timer) and sleeps otherwise, host
//! memory the driver shares, and the link bridged to UDP on loopback so cards in different
//! processes talk (one datagram per 32-byte frame).

use crate::card::SimCard;
use amf_hdl_model::model::card::HostMemory;
use amf_hdl_model::model::link_auth::{self, WireFrame};
use amf_hdl_model::model::VecMemory;
use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// Cycles run per burst while busy. Short: the card's answer to a doorbell or a frame is tens
/// of cycles, and every cycle run past it is CPU three cards on two cores share (256-cycle
/// bursts made a shared write in a 3-controller cluster 2.4 ms; 16-cycle ones 0.2 ms).
const BURST_CYCLES: u64 = 16;
/// Idle bursts before the clock stops (lets in-flight answers arrive).
const IDLE_BURSTS: u32 = 4;
/// Longest sleep without a wake-up (a safety net, not a timer).
const SLEEP_MAX: Duration = Duration::from_millis(50);

struct Inner {
    card: SimCard,
    next_free: u64,
}

/// Host memory behind its own lock: the driver reads completions and writes descriptors without
/// waiting for a running burst, and the card takes the lock per DMA access.
struct LockedMem<'a>(&'a Mutex<VecMemory>);

impl HostMemory for LockedMem<'_> {
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), amf_hdl_model::model::card::DmaError> {
        lock(self.0).read(addr, buf)
    }
    fn write(&mut self, addr: u64, data: &[u8]) -> Result<(), amf_hdl_model::model::card::DmaError> {
        lock(self.0).write(addr, data)
    }
}

/// Shared state of the device's threads and its users.
struct Shared {
    inner: Mutex<Inner>,
    /// The clock's sleep decision, never held during a burst. True: someone gave the card work
    /// (a posted write, a frame) since the last burst; the card's busy output shows such work
    /// only a cycle after it arrives, too late for the decision.
    gate: Mutex<bool>,
    wake: Condvar,
    stop: AtomicBool,
    cycles: AtomicU64,
    peers: Mutex<HashMap<u8, SocketAddr>>,
    socket: UdpSocket,
    /// Frames from the link, handed to the card at the next burst. A queue of its own so the
    /// link thread never waits for a running burst (std's mutex is not fair: a busy clock
    /// thread that relocks at once would starve it).
    rx: Mutex<std::collections::VecDeque<WireFrame>>,
    /// Host memory.
    mem: Mutex<VecMemory>,
    /// Register writes posted by the host, applied in order before the next burst (as PCIe
    /// posted writes: the host does not wait for the card).
    posted: Mutex<std::collections::VecDeque<(u32, u32)>>,
    /// What the interrupt line does to the host (an MSI-X message: an eventfd written).
    notify: Mutex<Option<Notify>>,
    /// The host has cleared the interrupt causes since the last message: the next time the
    /// line is seen high a message goes out.
    armed: AtomicBool,
}

/// Called when the card interrupts the host.
pub type Notify = Box<dyn Fn() + Send + Sync>;

/// One simulated card with its clock and link threads.
pub struct SimDevice {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

/// DMA window of a simulated card.
pub const DMA_BASE: u64 = 0x1_0000_0000;
const DMA_BYTES: usize = 4 << 20;

impl SimDevice {
    /// Starts a card whose link listens on `bind` (e.g. 127.0.0.1:0).
    pub fn start(bind: SocketAddr) -> std::io::Result<SimDevice> {
        let socket = UdpSocket::bind(bind)?;
        socket.set_read_timeout(Some(Duration::from_millis(20)))?;
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner { card: SimCard::new(), next_free: DMA_BASE }),
            gate: Mutex::new(false),
            mem: Mutex::new(VecMemory::new(DMA_BASE, DMA_BYTES)),
            posted: Mutex::new(std::collections::VecDeque::new()),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
            cycles: AtomicU64::new(0),
            peers: Mutex::new(HashMap::new()),
            socket,
            rx: Mutex::new(std::collections::VecDeque::new()),
            notify: Mutex::new(None),
            armed: AtomicBool::new(true),
        });
        let (a, b) = (shared.clone(), shared.clone());
        let clock = std::thread::Builder::new().name("card-clock".into()).spawn(move || clock(a))?;
        let rx = std::thread::Builder::new().name("card-link".into()).spawn(move || receive(b))?;
        Ok(SimDevice { shared, threads: vec![clock, rx] })
    }

    /// The link's UDP address.
    pub fn link_addr(&self) -> std::io::Result<SocketAddr> {
        self.shared.socket.local_addr()
    }

    /// Where node `id`'s card listens.
    pub fn set_peer(&self, id: u8, addr: SocketAddr) {
        lock(&self.shared.peers).insert(id, addr);
    }

    /// Cycles simulated so far.
    pub fn cycles(&self) -> u64 {
        self.shared.cycles.load(Relaxed)
    }

    /// A BAR0 read: waits for the card, after the writes posted before it (PCIe ordering).
    pub fn read32(&self, offset: u32) -> u32 {
        let v = {
            let mut g = lock(&self.shared.inner);
            apply_posted(&self.shared, &mut g);
            g.card.mmio_read(offset, &mut LockedMem(&self.shared.mem))
        };
        kick(&self.shared);
        v
    }

    /// A posted BAR0 write: queued for the card, the host goes on at once.
    pub fn write32(&self, offset: u32, value: u32) {
        lock(&self.shared.posted).push_back((offset, value));
        kick(&self.shared);
    }

    /// Allocates DMA memory; returns its device address.
    pub fn dma_alloc(&self, bytes: usize) -> Result<u64, String> {
        let mut g = lock(&self.shared.inner);
        let addr = g.next_free;
        let end = addr + bytes.next_multiple_of(64) as u64;
        if end > DMA_BASE + DMA_BYTES as u64 {
            return Err(format!("simulated card DMA window exhausted ({bytes} bytes asked)"));
        }
        g.next_free = end;
        Ok(addr)
    }

    /// Reads host memory.
    pub fn dma_read(&self, addr: u64, buf: &mut [u8]) -> Result<(), String> {
        lock(&self.shared.mem).read(addr, buf).map_err(|e| e.to_string())
    }

    /// Writes host memory.
    pub fn dma_write(&self, addr: u64, data: &[u8]) -> Result<(), String> {
        lock(&self.shared.mem).write(addr, data).map_err(|e| e.to_string())
    }

    /// Interrupts the host through `notify` from now on: once when the card's interrupt line
    /// is high after the host cleared its causes (see [`SimDevice::interrupt_ack`]), as an
    /// MSI-X vector does.
    pub fn set_interrupt(&self, notify: Notify) {
        *lock(&self.shared.notify) = Some(notify);
        kick(&self.shared);
    }

    /// The host cleared the interrupt causes (its write to the IRQ register is posted before
    /// this): the line seen high from now on interrupts again.
    pub fn interrupt_ack(&self) {
        // The clear reaches the card first (as a read-back flushes posted writes on PCIe):
        // armed before it, the line still high from the causes it clears would interrupt
        // for nothing.
        {
            let mut g = lock(&self.shared.inner);
            apply_posted(&self.shared, &mut g);
        }
        self.shared.armed.store(true, Relaxed);
        kick(&self.shared);
    }

    /// Stops the threads.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.shared.stop.store(true, Relaxed);
        self.shared.wake.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for SimDevice {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Tells the clock there is work (under the gate, so the clock cannot miss it).
fn kick(s: &Shared) {
    *lock(&s.gate) = true;
    s.wake.notify_all();
}

/// Applies the host's posted register writes to the card, in order.
fn apply_posted(s: &Shared, g: &mut Inner) {
    let writes: Vec<(u32, u32)> = lock(&s.posted).drain(..).collect();
    for (offset, value) in writes {
        g.card.mmio_write(offset, value, &mut LockedMem(&s.mem));
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The clock: bursts of cycles while the card is busy, sleep when it is not.
fn clock(s: Arc<Shared>) {
    let mut idle = 0;
    let mut busy = true;
    while !s.stop.load(Relaxed) {
        {
            let mut gate = lock(&s.gate);
            let queued = !lock(&s.rx).is_empty() || !lock(&s.posted).is_empty();
            if !*gate && !busy && !queued && idle >= IDLE_BURSTS {
                let (g, timeout) = s.wake.wait_timeout(gate, SLEEP_MAX).unwrap_or_else(|p| p.into_inner());
                gate = g;
                if timeout.timed_out() && !*gate {
                    continue; // nothing happened: stay asleep
                }
                // Woken: run a burst, then sleep again if nothing came of it.
                idle = IDLE_BURSTS - 1;
            }
            *gate = false;
        }
        let out = {
            let mut g = lock(&s.inner);
            for f in lock(&s.rx).drain(..) {
                g.card.receive(f);
            }
            apply_posted(&s, &mut g);
            g.card.run(BURST_CYCLES, &mut LockedMem(&s.mem));
            s.cycles.fetch_add(BURST_CYCLES, Relaxed);
            busy = g.card.busy();
            if g.card.irq() {
                if let Some(notify) = lock(&s.notify).as_ref().filter(|_| s.armed.swap(false, Relaxed)) {
                    notify();
                }
            }
            g.card.take_outgoing()
        };
        idle = if busy || !out.is_empty() { 0 } else { idle + 1 };
        // Let the driver and the link thread in between bursts.
        std::thread::yield_now();
        if !out.is_empty() {
            let peers = lock(&s.peers).clone();
            for f in out {
                // The link multicasts: one datagram to each node the frame names. A lost
                // datagram is a lost frame: the protocol's timeouts cover it.
                let dst_mask = link_auth::link_frame(&f).dst;
                for (_, addr) in peers.iter().filter(|(n, _)| **n < 8 && dst_mask & (1 << **n) != 0) {
                    let _ = s.socket.send_to(&f, addr);
                }
            }
        }
    }
}

/// The link receiver: datagrams of exactly one wire frame go to the card (which checks them);
/// datagrams of any other size cannot be frames and are dropped here.
fn receive(s: Arc<Shared>) {
    let mut buf = [0u8; 2 * link_auth::WIRE_BYTES];
    while !s.stop.load(Relaxed) {
        if let Ok((link_auth::WIRE_BYTES, _)) = s.socket.recv_from(&mut buf) {
            let mut f = [0u8; link_auth::WIRE_BYTES];
            f.copy_from_slice(&buf[..link_auth::WIRE_BYTES]);
            lock(&s.rx).push_back(f);
            kick(&s);
        }
    }
}
