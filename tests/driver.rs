//! The card driver against both card backends — the reference model and the card's RTL under
//! Verilator — with one suite: discovery, reset and rings, ring wrap-around, back-pressure with a
//! full ring, a dead card (timeouts), a card returning garbage, 2 and 4 cards exchanging
//! broadcasts over a link, a card reset under the driver.

use amf::engine::backend::Backend;
use amf::engine::driver::discover;
use amf::engine::{Driver, DriverConfig, EngineError, ModelBackend};
use amf_hdl_model::gen::regs;
use amf_hdl_model::gen::structs::{EventKind, Opcode, Status};
use rand::{rngs::SmallRng, Rng, SeedableRng};
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

/// The card's RTL under Verilator as a driver backend (test-side wrapper).
#[derive(Clone)]
struct SimBackend(std::sync::Arc<std::sync::Mutex<SimState>>);

struct SimState {
    card: amf_verilator::card::SimCard,
    mem: amf_hdl_model::model::VecMemory,
    next_free: u64,
}

const SIM_DMA_BASE: u64 = 0x1_0000_0000;

impl SimBackend {
    fn new() -> SimBackend {
        SimBackend(std::sync::Arc::new(std::sync::Mutex::new(SimState {
            card: amf_verilator::card::SimCard::new(),
            mem: amf_hdl_model::model::VecMemory::new(SIM_DMA_BASE, 1 << 20),
            next_free: SIM_DMA_BASE,
        })))
    }
}

impl Backend for SimBackend {
    fn read32(&self, o: u32) -> u32 {
        let mut g = self.0.lock().unwrap();
        let SimState { card, mem, .. } = &mut *g;
        card.mmio_read(o, mem)
    }
    fn write32(&self, o: u32, v: u32) {
        let mut g = self.0.lock().unwrap();
        let SimState { card, mem, .. } = &mut *g;
        card.mmio_write(o, v, mem)
    }
    fn dma_alloc(&self, n: usize) -> Result<u64, String> {
        let mut g = self.0.lock().unwrap();
        let a = g.next_free;
        g.next_free += n.next_multiple_of(64) as u64;
        Ok(a)
    }
    fn dma_read(&self, a: u64, b: &mut [u8]) -> Result<(), String> {
        use amf_hdl_model::model::card::HostMemory;
        self.0.lock().unwrap().mem.read(a, b).map_err(|e| e.to_string())
    }
    fn dma_write(&self, a: u64, d: &[u8]) -> Result<(), String> {
        use amf_hdl_model::model::card::HostMemory;
        self.0.lock().unwrap().mem.write(a, d).map_err(|e| e.to_string())
    }
    fn run(&self, cycles: u64) {
        let mut g = self.0.lock().unwrap();
        let SimState { card, mem, .. } = &mut *g;
        card.run(cycles, mem);
    }
}

/// A card backend with a link port, for the multi-card tests.
trait Linked: Backend + Clone + 'static {
    fn make() -> Self;
    fn outgoing(&self) -> Vec<amf_hdl_model::model::link_auth::WireFrame>;
    fn deliver_frame(&self, f: amf_hdl_model::model::link_auth::WireFrame);
}

impl Linked for ModelBackend {
    fn make() -> Self {
        ModelBackend::new()
    }
    fn outgoing(&self) -> Vec<amf_hdl_model::model::link_auth::WireFrame> {
        self.take_outgoing().into_iter().map(|o| o.bytes).collect()
    }
    fn deliver_frame(&self, f: amf_hdl_model::model::link_auth::WireFrame) {
        self.deliver(&f);
    }
}

impl Linked for SimBackend {
    fn make() -> Self {
        SimBackend::new()
    }
    fn outgoing(&self) -> Vec<amf_hdl_model::model::link_auth::WireFrame> {
        self.0.lock().unwrap().card.take_outgoing()
    }
    fn deliver_frame(&self, f: amf_hdl_model::model::link_auth::WireFrame) {
        self.0.lock().unwrap().card.receive(f);
    }
}

fn nothing() {}

#[test]
fn discovery_reset_and_ring_wrap_around() {
    wrap_around::<ModelBackend>();
    wrap_around::<SimBackend>();
}

fn wrap_around<B: Linked>() {
    let cfg = DriverConfig { ring_log2: 4, ..DriverConfig::default() };
    let mut d = Driver::open(B::make(), cfg).unwrap();
    // 100 commands through a 16-entry ring: the producer, consumer and phase wrap many times.
    for i in 0..100u64 {
        let (c, others) = d.call(Opcode::Nop, i, T, &mut nothing).unwrap();
        assert!(others.is_empty());
        assert_eq!(c.status, Status::Ok as u8);
    }
    assert_eq!(d.in_flight(), 0);
    d.check_health().unwrap();
}

#[test]
fn a_full_ring_pushes_back_and_drains() {
    full_ring::<ModelBackend>();
    full_ring::<SimBackend>();
}

fn full_ring<B: Linked>() {
    let cfg = DriverConfig { ring_log2: 4, ..DriverConfig::default() };
    let mut d = Driver::open(B::make(), cfg).unwrap();
    let mut tags = vec![];
    loop {
        match d.submit(Opcode::Nop, 0) {
            Ok(t) => tags.push(t),
            Err(EngineError::Busy(n)) => {
                assert_eq!(n, 15);
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    let mut done = vec![];
    for _ in 0..200 {
        d.poll();
        done.extend(d.reap().unwrap());
        if done.len() == tags.len() {
            break;
        }
    }
    assert_eq!(done.len(), tags.len());
    assert!(d.submit(Opcode::Nop, 0).is_ok(), "room again after reaping");
}

/// A card whose clock never runs: every command times out, and the driver says so.
struct DeadCard<B>(B);

impl<B: Backend> Backend for DeadCard<B> {
    fn read32(&self, o: u32) -> u32 {
        self.0.read32(o)
    }
    fn write32(&self, o: u32, v: u32) {
        self.0.write32(o, v)
    }
    fn dma_alloc(&self, n: usize) -> Result<u64, String> {
        self.0.dma_alloc(n)
    }
    fn dma_read(&self, a: u64, b: &mut [u8]) -> Result<(), String> {
        self.0.dma_read(a, b)
    }
    fn dma_write(&self, a: u64, d: &[u8]) -> Result<(), String> {
        self.0.dma_write(a, d)
    }
}

#[test]
fn a_card_that_stops_answering_times_out() {
    dead::<ModelBackend>();
    dead::<SimBackend>();
}

fn dead<B: Linked>() {
    let mut d = Driver::open(DeadCard(B::make()), DriverConfig::default()).unwrap();
    match d.call(Opcode::Nop, 1, Duration::from_millis(50), &mut nothing) {
        Err(EngineError::Timeout { .. }) => {}
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert_eq!(d.in_flight(), 0);
}

/// Register reads from a seeded garbage generator (or all-ones, a card that fell off the bus).
struct Garbage(std::sync::Mutex<SmallRng>, bool);

impl Backend for Garbage {
    fn read32(&self, _o: u32) -> u32 {
        if self.1 {
            u32::MAX
        } else {
            let mut g = self.0.lock().unwrap();
            // Mostly plausible-looking values so the walk goes deep.
            match g.gen_range(0..4) {
                0 => g.gen(),
                1 => regs::BLOCKS[g.gen_range(0..regs::BLOCKS.len())].type_id,
                2 => g.gen_range(0..8) * regs::BLOCK_BYTES,
                _ => 0x0001_0000,
            }
        }
    }
    fn write32(&self, _o: u32, _v: u32) {}
    fn dma_alloc(&self, _n: usize) -> Result<u64, String> {
        Ok(0x1000)
    }
    fn dma_read(&self, _a: u64, b: &mut [u8]) -> Result<(), String> {
        b.fill(0xa5);
        Ok(())
    }
    fn dma_write(&self, _a: u64, _d: &[u8]) -> Result<(), String> {
        Ok(())
    }
}

#[test]
fn garbage_registers_are_errors_not_panics() {
    let dead = Garbage(std::sync::Mutex::new(SmallRng::seed_from_u64(0)), true);
    assert!(matches!(discover(&dead), Err(EngineError::BrokenChain(0))));
    for seed in 0..2000 {
        let g = Garbage(std::sync::Mutex::new(SmallRng::seed_from_u64(seed)), false);
        // Whatever the card says, the driver ends with a value or an error.
        let _ = Driver::open(g, DriverConfig::default());
    }
    // A newer major version is refused by name.
    struct V2(ModelBackend);
    impl Backend for V2 {
        fn read32(&self, o: u32) -> u32 {
            if o == regs::cmd_ring::BASE + regs::header::VERSION {
                0x0002_0000
            } else {
                self.0.read32(o)
            }
        }
        fn write32(&self, o: u32, v: u32) {
            self.0.write32(o, v)
        }
        fn dma_alloc(&self, n: usize) -> Result<u64, String> {
            self.0.dma_alloc(n)
        }
        fn dma_read(&self, a: u64, b: &mut [u8]) -> Result<(), String> {
            self.0.dma_read(a, b)
        }
        fn dma_write(&self, a: u64, d: &[u8]) -> Result<(), String> {
            self.0.dma_write(a, d)
        }
    }
    match Driver::open(V2(ModelBackend::new()), DriverConfig::default()) {
        Err(EngineError::Version { block: "cmd_ring", .. }) => {}
        other => panic!("expected a version refusal, got {:?}", other.err()),
    }
}

/// Moves every frame any card sent to its destination.
fn pump_link<B: Linked>(cards: &[B]) {
    for _ in 0..4 {
        let mut moved = false;
        for c in cards {
            for f in c.outgoing() {
                moved = true;
                // The link multicasts: every card the frame's dst mask names gets it.
                let dst_mask = amf_hdl_model::model::link_auth::link_frame(&f).dst;
                for (i, dst) in cards.iter().enumerate() {
                    if dst_mask & (1 << i) != 0 {
                        dst.deliver_frame(f);
                    }
                }
            }
        }
        for c in cards {
            c.run(16);
        }
        if !moved {
            break;
        }
    }
}

fn cluster<B: Linked>(n: u8) -> (Vec<B>, Vec<Driver<B>>) {
    let cards: Vec<B> = (0..n).map(|_| B::make()).collect();
    let drivers = (0..n)
        .map(|i| {
            let cfg = DriverConfig { node: i, peers: ((1u16 << n) - 1) as u8, epoch: 3, ..DriverConfig::default() };
            Driver::open(cards[i as usize].clone(), cfg).unwrap()
        })
        .collect();
    (cards, drivers)
}

#[test]
fn two_and_four_cards_exchange_broadcasts() {
    broadcasts::<ModelBackend>();
    broadcasts::<SimBackend>();
}

fn broadcasts<B: Linked>() {
    for n in [2u8, 4] {
        let (cards, mut d) = cluster::<B>(n);
        let others = ((1u16 << n) - 2) as u8;
        let pump = &mut || pump_link(&cards);
        let (c, _) = d[0].call(Opcode::AcquireShared, 7, T, pump).unwrap();
        assert_eq!((c.status, c.peers_asked), (Status::Ok as u8, others), "n={n}: first read asks everyone");
        let (c, _) = d[1].call(Opcode::AcquireShared, 7, T, pump).unwrap();
        assert_eq!(c.sharers & 0b11, 0b11, "n={n}: node 1 learns node 0 shares it");
        let (c, _) = d[1].call(Opcode::AcquireExclusive, 7, T, pump).unwrap();
        assert_eq!((c.status, c.peers_asked), (Status::Ok as u8, 0b01), "n={n}: invalidate goes to the sharer only");
        let ev = d[0].events().unwrap();
        assert!(ev.iter().any(|e| e.kind == EventKind::Invalidate as u8 && e.resource == 7), "n={n}: {ev:?}");
        // Node 1 owns it now: repeated writes send nothing.
        let (c, _) = d[1].call(Opcode::AcquireExclusive, 7, T, pump).unwrap();
        assert_eq!(c.peers_asked, 0);
        for drv in &d {
            drv.check_health().unwrap();
        }
    }
}

#[test]
fn a_card_restarted_under_the_driver_is_reinitialised() {
    restart::<ModelBackend>();
    restart::<SimBackend>();
}

fn restart<B: Linked>() {
    let card = B::make();
    let mut d = Driver::open(card.clone(), DriverConfig::default()).unwrap();
    d.call(Opcode::Nop, 0, T, &mut nothing).unwrap();
    // The card resets behind the driver's back (a soft reset: rings emptied, registers kept).
    card.write32(regs::device::BASE + regs::device::ctrl::OFFSET, 3);
    drop(d);
    let mut d = Driver::open(card, DriverConfig::default()).unwrap();
    let (c, _) = d.call(Opcode::Nop, 0, T, &mut nothing).unwrap();
    assert_eq!(c.status, Status::Ok as u8);
}

/// A simulated card running on its own clock thread, linked to the others over UDP on loopback.
type DeviceBackend = amf::engine::SimBackend;

#[test]
fn simulated_cards_exchange_broadcasts_over_udp() {
    for n in [2u8, 4] {
        let devs: Vec<DeviceBackend> =
            (0..n).map(|_| DeviceBackend::start("127.0.0.1:0".parse().unwrap()).unwrap()).collect();
        for a in &devs {
            for (i, b) in devs.iter().enumerate() {
                a.0.set_peer(i as u8, b.0.link_addr().unwrap());
            }
        }
        let mut d: Vec<Driver<DeviceBackend>> = (0..n)
            .map(|i| {
                let cfg = DriverConfig { node: i, peers: ((1u16 << n) - 1) as u8, epoch: 3, ..DriverConfig::default() };
                Driver::open(devs[i as usize].clone(), cfg).unwrap()
            })
            .collect();
        let others = ((1u16 << n) - 2) as u8;
        let (c, _) = d[0].call(Opcode::AcquireShared, 9, T, &mut nothing).unwrap();
        assert_eq!((c.status, c.peers_asked), (Status::Ok as u8, others), "n={n}");
        let (c, _) = d[1].call(Opcode::AcquireShared, 9, T, &mut nothing).unwrap();
        assert_eq!(c.sharers & 0b11, 0b11, "n={n}");
        let (c, _) = d[1].call(Opcode::AcquireExclusive, 9, T, &mut nothing).unwrap();
        assert_eq!((c.status, c.peers_asked), (Status::Ok as u8, 0b01), "n={n}: one invalidate round, to the sharer");
        let mut ev = vec![];
        for _ in 0..100 {
            ev.extend(d[0].events().unwrap());
            if ev.iter().any(|e| e.kind == EventKind::Invalidate as u8) {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(ev.iter().any(|e| e.kind == EventKind::Invalidate as u8 && e.resource == 9), "n={n}: {ev:?}");
        // An idle card stops its clock: no cycles pass while nothing happens.
        std::thread::sleep(Duration::from_millis(100));
        let before = devs[2 % n as usize].0.cycles();
        std::thread::sleep(Duration::from_millis(200));
        let after = devs[2 % n as usize].0.cycles();
        assert!(after - before <= 2 * 256 * 8, "n={n}: idle card kept running ({} cycles)", after - before);
    }
}

/// Cards whose links the caller's loop reads (`host_link`, as a controller's loop does): a
/// frame and a doorbell are served on the caller's thread, and a card left waiting for a peer
/// that never answers still counts its time down on its clock thread, at a pace (it pauses
/// between bursts) instead of spinning through the wait.
#[test]
fn hosted_simulated_cards_serve_on_the_callers_thread_and_time_out_while_waiting() {
    let n = 3u8;
    let devs: Vec<DeviceBackend> =
        (0..n).map(|_| DeviceBackend::start("127.0.0.1:0".parse().unwrap()).unwrap()).collect();
    for a in &devs {
        for (i, b) in devs.iter().enumerate() {
            a.0.set_peer(i as u8, b.0.link_addr().unwrap());
        }
    }
    const ACK_TIMEOUT_CYCLES: u32 = 20_000;
    let mut d: Vec<Driver<DeviceBackend>> = (0..n)
        .map(|i| {
            let cfg = DriverConfig {
                node: i,
                peers: ((1u16 << n) - 1) as u8,
                epoch: 3,
                ack_timeout_cycles: ACK_TIMEOUT_CYCLES,
                ..DriverConfig::default()
            };
            Driver::open(devs[i as usize].clone(), cfg).unwrap()
        })
        .collect();
    for dev in &devs {
        dev.0.host_link().unwrap();
    }
    let mut pump_all = || {
        for dev in &devs {
            dev.0.pump_link();
        }
    };
    let (c, _) = d[0].call(Opcode::AcquireShared, 9, T, &mut pump_all).unwrap();
    assert_eq!((c.status, c.peers_asked), (Status::Ok as u8, 0b110), "the first read asks everyone");
    let (c, _) = d[1].call(Opcode::AcquireShared, 9, T, &mut pump_all).unwrap();
    assert_eq!(c.sharers & 0b11, 0b11);
    let (c, _) = d[1].call(Opcode::AcquireExclusive, 9, T, &mut pump_all).unwrap();
    assert_eq!((c.status, c.peers_asked), (Status::Ok as u8, 0b001), "one invalidate round, to the sharer");
    let mut ev = vec![];
    for _ in 0..100 {
        pump_all();
        ev.extend(d[0].events().unwrap());
        if ev.iter().any(|e| e.kind == EventKind::Invalidate as u8) {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(ev.iter().any(|e| e.kind == EventKind::Invalidate as u8 && e.resource == 9), "{ev:?}");

    // Card 2's link is no longer read: card 0's broadcast to it waits, and times out.
    let pump_two = &mut || {
        devs[0].0.pump_link();
        devs[1].0.pump_link();
    };
    let (before, t) = (devs[0].0.cycles(), std::time::Instant::now());
    let (c, _) = d[0].call(Opcode::AcquireExclusive, 10, T, pump_two).unwrap();
    let (cycles, waited) = (devs[0].0.cycles() - before, t.elapsed());
    assert_eq!((c.status, c.missing), (Status::Timeout as u8, 0b100), "card 2 never answered");
    assert!(cycles >= ACK_TIMEOUT_CYCLES as u64, "the timeout came after {cycles} cycles");
    // Spinning ran about a million cycles a second; a pace of a 16-cycle burst per 100 us
    // pause runs at most 160 thousand.
    let per_s = cycles as f64 / waited.as_secs_f64();
    assert!(per_s < 320_000.0, "a waiting card ran {per_s:.0} cycles/s ({cycles} in {waited:?}): it spun");
}

#[test]
fn a_simulated_device_keeps_completing_through_many_ring_wraps() {
    let dev = DeviceBackend::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let mut d = Driver::open(dev, DriverConfig { ring_log2: 4, ..DriverConfig::default() }).unwrap();
    for i in 0..2000u64 {
        let r = d.call(Opcode::Nop, i, Duration::from_secs(5), &mut nothing);
        assert!(r.is_ok(), "command {i}: {r:?}");
    }
}

/// Many concurrent callers through an async driver: every call completes with its own tag.
async fn hammer<B: Backend + 'static>(d: amf::engine::AsyncDriver<B>, what: &str) {
    let d = std::sync::Arc::new(d);
    let mut tasks = vec![];
    for i in 0..200u64 {
        let d = d.clone();
        tasks.push(tokio::spawn(async move { d.call(Opcode::Nop, i, Duration::from_secs(20)).await }));
    }
    let mut tags = std::collections::HashSet::new();
    for t in tasks {
        let c = t.await.unwrap().unwrap();
        assert_eq!(c.status, Status::Ok as u8, "{what}");
        assert!(tags.insert(c.tag), "{what}: every caller gets its own completion");
    }
    assert_eq!(tags.len(), 200, "{what}");
}

/// The async driver: many concurrent callers share a bounded number of in-flight commands
/// (callers wait for a slot instead of failing), each gets its own completion, through a
/// 16-entry ring; a dead card times out per command.
#[test]
fn async_driver_bounds_in_flight_and_times_out() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let small = DriverConfig { ring_log2: 4, ..DriverConfig::default() };
        let model = Driver::open(ModelBackend::new(), small.clone()).unwrap();
        hammer(amf::engine::AsyncDriver::new(model, 8), "model").await;
        let sim = amf::engine::SimBackend::start("127.0.0.1:0".parse().unwrap()).unwrap();
        hammer(amf::engine::AsyncDriver::new(Driver::open(sim, small).unwrap(), 8), "sim").await;
        let dead = amf::engine::AsyncDriver::new(
            Driver::open(DeadCard(ModelBackend::new()), DriverConfig::default()).unwrap(),
            4,
        );
        let t0 = std::time::Instant::now();
        match dead.call(Opcode::Nop, 0, Duration::from_millis(100)).await {
            Err(EngineError::Timeout { .. }) => {}
            other => panic!("expected a timeout, got {other:?}"),
        }
        assert!(t0.elapsed() < Duration::from_secs(2));
    });
}

/// The reference model with a software MSI: a clock thread runs the card and signals an
/// eventfd for every completion or event the card posts while its interrupt line is enabled
/// and the cause was cleared since the last message — a message per edge of the cause, as an
/// MSI-X vector delivered by vfio-pci. A driver that never clears the causes gets no second
/// interrupt.
#[derive(Clone)]
struct InterruptingModel {
    card: ModelBackend,
    efd: std::sync::Arc<std::fs::File>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Set by the driver's write-1-to-clear of the causes: the next entry may interrupt.
    armed: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// Entries the card has posted to a ring so far, found by phase bits in host memory.
fn posted(card: &ModelBackend, block: u32, seen: &mut u32) -> u32 {
    let base = (card.read32(block + regs::cpl_ring::base_hi::OFFSET) as u64) << 32
        | card.read32(block + regs::cpl_ring::base_lo::OFFSET) as u64;
    let log2 = card.read32(block + regs::cpl_ring::size_log2::OFFSET);
    if base == 0 || !(4..=12).contains(&log2) {
        return 0;
    }
    let mut new = 0;
    loop {
        let slot = base + (*seen & ((1 << log2) - 1)) as u64 * 32;
        let mut b = [0u8; 32];
        if card.dma_read(slot, &mut b).is_err() {
            return new;
        }
        let phase = (b[2] >> 7) & 1;
        if phase != ((*seen >> log2) & 1 == 0) as u8 {
            return new;
        }
        *seen = seen.wrapping_add(1);
        new += 1;
    }
}

impl InterruptingModel {
    fn start() -> InterruptingModel {
        use std::os::unix::io::{AsRawFd, FromRawFd};
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        assert!(fd >= 0);
        let me = InterruptingModel {
            card: ModelBackend::new(),
            efd: std::sync::Arc::new(unsafe { std::fs::File::from_raw_fd(fd) }),
            stop: Default::default(),
            armed: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true)),
        };
        let t = me.clone();
        std::thread::spawn(move || {
            let dev = regs::device::BASE;
            let (mut cpl_seen, mut evt_seen) = (0u32, 0u32);
            while !t.stop.load(std::sync::atomic::Ordering::Relaxed) {
                t.card.run(64);
                let new = posted(&t.card, regs::cpl_ring::BASE, &mut cpl_seen)
                    + posted(&t.card, regs::evt_ring::BASE, &mut evt_seen);
                let line = t.card.read32(dev + regs::device::irq::OFFSET)
                    & t.card.read32(dev + regs::device::irq_enable::OFFSET);
                // A new entry with the line up fires the vector once; the driver's clear
                // (write32 below) re-arms it.
                if new > 0 && line != 0 && t.armed.swap(false, std::sync::atomic::Ordering::AcqRel) {
                    let one = 1u64.to_ne_bytes();
                    unsafe { libc::write(t.efd.as_raw_fd(), one.as_ptr() as *const libc::c_void, 8) };
                }
                std::thread::sleep(Duration::from_micros(20));
            }
        });
        me
    }
}

impl Backend for InterruptingModel {
    fn read32(&self, offset: u32) -> u32 {
        self.card.read32(offset)
    }
    fn write32(&self, offset: u32, value: u32) {
        self.card.write32(offset, value);
        if offset == regs::device::BASE + regs::device::irq::OFFSET {
            self.armed.store(true, std::sync::atomic::Ordering::Release);
        }
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
    // The clock thread runs the card: the driver's polling adds nothing.
    fn interrupt(&self) -> Option<std::os::fd::RawFd> {
        use std::os::unix::io::AsRawFd;
        Some(self.efd.as_raw_fd())
    }
}

#[test]
fn an_interrupting_card_completes_commands_without_polling() {
    let card = InterruptingModel::start();
    let drv = Driver::open(card.clone(), DriverConfig::default()).unwrap();
    let dev = regs::device::BASE;
    assert_eq!(card.read32(dev + regs::device::irq_enable::OFFSET), 7, "the driver enables its interrupt causes");
    let rt = tokio::runtime::Runtime::new().unwrap();
    // A fallback poll of 30 s: commands only finish in time if the interrupt wakes the poller
    // and is re-armed (causes cleared) every time.
    let d = {
        let _g = rt.enter();
        amf::engine::AsyncDriver::with_fallback(drv, 16, Duration::from_secs(30))
    };
    let start = std::time::Instant::now();
    rt.block_on(async {
        for i in 0..300u64 {
            let c = d.call(Opcode::Nop, i, Duration::from_secs(5)).await.unwrap();
            assert_eq!(c.status, Status::Ok as u8);
        }
    });
    assert!(start.elapsed() < Duration::from_secs(20), "300 commands took {:?}", start.elapsed());
    card.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    rt.block_on(d.shutdown());
}
