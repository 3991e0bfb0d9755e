//! The simulated card as a device of its own: a clock thread that runs the RTL only while the
//! card is busy (a doorbell, a frame, a pending acquire or a timer) and sleeps otherwise, host
//! memory the driver shares, and the link bridged to UDP on loopback so cards in different
//! processes talk (one datagram per 32-byte frame).
//!
//! A host with an event loop may take the link into its poll ([`SimDevice::host_link`]): then
//! a frame, and a doorbell, are served by the RTL on the host's thread at once (until the card
//! has answered or only waits), and the clock thread only keeps a waiting card's time. A real
//! card answers within a microsecond with no host thread woken; a clock thread woken per frame
//! and per doorbell cost a shared write in a three-controller cluster four thread wake-ups
//! more than a model card's (each tens of microseconds on two cores).

use crate::card::SimCard;
use amf_hdl_model::model::card::HostMemory;
use amf_hdl_model::model::link_auth::{self, WireFrame};
use amf_hdl_model::model::VecMemory;
use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
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
/// Cycles per burst on the host's thread: short, since every cycle run after the card's answer
/// is the host's time (a simulated cycle costs about a microsecond here).
const INLINE_BURST_CYCLES: u64 = 4;
/// Bursts a hosted card runs on the host's thread for one input, at most: its answer to a
/// doorbell or a frame takes tens of cycles (the clock thread goes on with anything longer,
/// such as a ring the host must empty first).
const INLINE_BURSTS_MAX: u32 = 64;
/// The hosted clock's pause between bursts while the card waits (an acquire for its peers'
/// answers, a timer): a clock spinning through a wait took CPU its peers needed to answer
/// (three cards on two cores). A waiting card's timeouts, in cycles, last longer in wall time.
const WAITING_PAUSE: Duration = Duration::from_micros(100);
/// Datagrams one [`SimDevice::pump_link`] takes before it returns (more wait for the next).
const PUMP_FRAMES_MAX: usize = 1024;

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
    /// The host's loop reads the link and the card serves input on the host's thread
    /// (`host_link`): the link thread has ended.
    hosted: AtomicBool,
    /// The clock thread sleeps until a kick (or its safety net): a card left waiting must
    /// wake it to count its time.
    asleep: AtomicBool,
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
            hosted: AtomicBool::new(false),
            asleep: AtomicBool::new(false),
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

    /// A posted BAR0 write: queued for the card, the host goes on at once. A hosted card
    /// serves it on this thread first (a doorbell's command goes out as it would on a real
    /// card, within the write's time).
    pub fn write32(&self, offset: u32, value: u32) {
        lock(&self.shared.posted).push_back((offset, value));
        if self.shared.hosted.load(SeqCst) {
            serve(&self.shared);
        } else {
            kick(&self.shared);
        }
    }

    /// Hands the link to the host's event loop: the link thread ends, and the loop calls
    /// [`SimDevice::pump_link`] when the returned socket is readable (edge-triggered). From
    /// now on frames and register writes are served on the caller's thread.
    pub fn host_link(&self) -> std::io::Result<std::os::fd::RawFd> {
        // The link thread sees the flag at its next datagram or timeout; a frame it takes
        // meanwhile reaches the card through the clock thread as before.
        self.shared.socket.set_nonblocking(true)?;
        self.shared.hosted.store(true, SeqCst);
        Ok(self.shared.socket.as_raw_fd())
    }

    /// Takes the frames waiting on a hosted link (at most `PUMP_FRAMES_MAX`) to the card and
    /// lets it answer on this thread. Returns true when more may wait (the bound was reached:
    /// no new readable edge will say so).
    pub fn pump_link(&self) -> bool {
        let mut buf = [0u8; 2 * link_auth::WIRE_BYTES];
        let mut taken = 0;
        while taken < PUMP_FRAMES_MAX {
            match self.shared.socket.recv_from(&mut buf) {
                Ok((n, _)) => {
                    taken += 1;
                    take_datagram(&self.shared, &buf[..n]);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // WouldBlock: empty. Anything else: a datagram error the next edge retries.
                Err(_) => break,
            }
        }
        if taken > 0 {
            serve(&self.shared);
        }
        taken == PUMP_FRAMES_MAX
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
        let mut g = lock(&self.shared.inner);
        apply_posted_settled(&self.shared, &mut g);
        self.shared.armed.store(true, Relaxed);
        if self.shared.hosted.load(SeqCst) {
            // Causes raised since the clear interrupt now; the card's other work is the clock
            // thread's or the next input's.
            if g.card.irq() {
                notify(&self.shared);
            }
        } else {
            drop(g);
            kick(&self.shared);
        }
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

/// Applies the host's posted register writes to the card, in order; returns how many.
fn apply_posted(s: &Shared, g: &mut Inner) -> usize {
    let writes: Vec<(u32, u32)> = lock(&s.posted).drain(..).collect();
    for &(offset, value) in &writes {
        g.card.mmio_write(offset, value, &mut LockedMem(&s.mem));
    }
    writes.len()
}

/// Applies the posted register writes and, if there were any, runs one more cycle: the card's
/// outputs are sampled before the clock edge, so they show a write's effect (work to do, an
/// interrupt line cleared) one cycle after it.
fn apply_posted_settled(s: &Shared, g: &mut Inner) {
    if apply_posted(s, g) > 0 {
        g.card.run(1, &mut LockedMem(&s.mem));
        s.cycles.fetch_add(1, Relaxed);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What one burst of cycles did.
struct Burst {
    /// Frames the card sent.
    out: Vec<WireFrame>,
    /// The card has work or waits for something after it.
    busy: bool,
    /// The card has work to do now after it.
    active: bool,
}

/// Runs one burst: the frames and register writes that came first, then `cycles`; the
/// interrupt, if raised, goes to the host.
fn burst(s: &Shared, cycles: u64) -> Burst {
    let mut g = lock(&s.inner);
    for f in lock(&s.rx).drain(..) {
        g.card.receive(f);
    }
    apply_posted(s, &mut g);
    g.card.run(cycles, &mut LockedMem(&s.mem));
    s.cycles.fetch_add(cycles, Relaxed);
    if g.card.irq() {
        notify(s);
    }
    Burst { out: g.card.take_outgoing(), busy: g.card.busy(), active: g.card.active() }
}

/// Interrupts the host if it cleared the causes since the last interrupt.
fn notify(s: &Shared) {
    if let Some(notify) = lock(&s.notify).as_ref().filter(|_| s.armed.swap(false, Relaxed)) {
        notify();
    }
}

/// Sends frames: the link multicasts, one datagram to each node a frame names. A lost
/// datagram is a lost frame: the protocol's timeouts cover it.
fn send(s: &Shared, out: Vec<WireFrame>) {
    if out.is_empty() {
        return;
    }
    let peers = lock(&s.peers).clone();
    for f in out {
        let dst_mask = link_auth::link_frame(&f).dst;
        for (_, addr) in peers.iter().filter(|(n, _)| **n < 8 && dst_mask & (1 << **n) != 0) {
            let _ = s.socket.send_to(&f, addr);
        }
    }
}

/// A hosted card serves its input on the caller's thread: bursts while it has work to do now,
/// and then, if it waits (for its peers' answers, a timer), its clock thread keeps its time.
fn serve(s: &Shared) {
    let (busy, active) = {
        let mut g = lock(&s.inner);
        apply_posted_settled(s, &mut g);
        let frames = !lock(&s.rx).is_empty();
        (g.card.busy() || frames, g.card.active() || frames)
    };
    // A register write that gave the card nothing to do (an interrupt's clear, a mask) costs
    // no burst.
    let mut waits = busy;
    if active {
        let mut bursts = 0;
        loop {
            let b = burst(s, INLINE_BURST_CYCLES);
            send(s, b.out);
            if !b.active {
                waits = b.busy;
                break;
            }
            bursts += 1;
            if bursts == INLINE_BURSTS_MAX {
                // Still at work: the clock thread goes on with it at its full pace.
                kick(s);
                return;
            }
        }
    }
    if waits && s.asleep.load(SeqCst) {
        kick(s);
    }
}

/// The clock: bursts of cycles while the card is busy, sleep when it is not. A hosted card's
/// clock pauses between bursts while the card only waits: its input is served on the host's
/// thread, so the clock only counts its time down.
fn clock(s: Arc<Shared>) {
    // Bursts in a row that found the card idle with nothing going out.
    let mut idle = 0;
    let mut b = Burst { out: Vec::new(), busy: true, active: true };
    while !s.stop.load(Relaxed) {
        {
            let mut gate = lock(&s.gate);
            let queued = !lock(&s.rx).is_empty() || !lock(&s.posted).is_empty();
            if !*gate && !queued && b.busy && !b.active && s.hosted.load(SeqCst) {
                gate = s.wake.wait_timeout(gate, WAITING_PAUSE).unwrap_or_else(|p| p.into_inner()).0;
            } else if !*gate && !b.busy && !queued && idle >= IDLE_BURSTS {
                s.asleep.store(true, SeqCst);
                gate = s.wake.wait_timeout(gate, SLEEP_MAX).unwrap_or_else(|p| p.into_inner()).0;
                s.asleep.store(false, SeqCst);
                // Woken, or the safety net's time is up: a burst, then sleep again if nothing
                // came of it (the host's thread may have left the card waiting meanwhile).
                idle = IDLE_BURSTS - 1;
            }
            *gate = false;
        }
        b = burst(&s, BURST_CYCLES);
        idle = if b.busy || !b.out.is_empty() { 0 } else { idle + 1 };
        // Let the driver and the link thread in between bursts.
        std::thread::yield_now();
        send(&s, std::mem::take(&mut b.out));
    }
}

/// A datagram from the link goes to the card if it is exactly one wire frame; datagrams of any
/// other size cannot be frames and are dropped here.
fn take_datagram(s: &Shared, datagram: &[u8]) {
    if let Ok(f) = WireFrame::try_from(datagram) {
        lock(&s.rx).push_back(f);
    }
}

/// The link receiver (until the host takes the link): frames go to the card's queue and wake
/// the clock.
fn receive(s: Arc<Shared>) {
    let mut buf = [0u8; 2 * link_auth::WIRE_BYTES];
    while !s.stop.load(Relaxed) && !s.hosted.load(SeqCst) {
        if let Ok((n, _)) = s.socket.recv_from(&mut buf) {
            take_datagram(&s, &buf[..n]);
            kick(&s);
        }
    }
}
