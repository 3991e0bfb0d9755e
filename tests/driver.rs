//! The card driver against the reference-model backend: discovery, reset and rings, ring
//! wrap-around, back-pressure with a full ring, a dead card (timeouts), a card returning
//! garbage, and 2 and 4 cards exchanging broadcasts over a link. (The same suite will run
//! against the Verilator card when its engine lands.)

use amf::engine::backend::Backend;
use amf::engine::driver::discover;
use amf::engine::{Driver, DriverConfig, EngineError, ModelBackend};
use amf_hdl_model::gen::regs;
use amf_hdl_model::gen::structs::{EventKind, Opcode, Status};
use rand::{rngs::SmallRng, Rng, SeedableRng};
use std::time::Duration;

const T: Duration = Duration::from_secs(5);

fn nothing() {}

#[test]
fn discovery_reset_and_ring_wrap_around() {
    let cfg = DriverConfig { ring_log2: 4, ..DriverConfig::default() };
    let mut d = Driver::open(ModelBackend::new(), cfg).unwrap();
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
    let cfg = DriverConfig { ring_log2: 4, ..DriverConfig::default() };
    let mut d = Driver::open(ModelBackend::new(), cfg).unwrap();
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
    d.poll();
    let done = d.reap().unwrap();
    assert_eq!(done.len(), tags.len());
    assert!(d.submit(Opcode::Nop, 0).is_ok(), "room again after reaping");
}

/// A card whose clock never runs: every command times out, and the driver says so.
struct DeadCard(ModelBackend);

impl Backend for DeadCard {
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
    let mut d = Driver::open(DeadCard(ModelBackend::new()), DriverConfig::default()).unwrap();
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
fn pump_link(cards: &[ModelBackend]) {
    for _ in 0..4 {
        let mut moved = false;
        for c in cards {
            for o in c.take_outgoing() {
                moved = true;
                if let Some(dst) = cards.get(o.dst as usize) {
                    dst.deliver(&o.bytes);
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

fn cluster(n: u8) -> (Vec<ModelBackend>, Vec<Driver<ModelBackend>>) {
    let cards: Vec<ModelBackend> = (0..n).map(|_| ModelBackend::new()).collect();
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
    for n in [2u8, 4] {
        let (cards, mut d) = cluster(n);
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
    let card = ModelBackend::new();
    let mut d = Driver::open(card.clone(), DriverConfig::default()).unwrap();
    d.call(Opcode::Nop, 0, T, &mut nothing).unwrap();
    // The card resets behind the driver's back (a soft reset: rings emptied, registers kept).
    card.write32(regs::device::BASE + regs::device::ctrl::OFFSET, 3);
    drop(d);
    let mut d = Driver::open(card, DriverConfig::default()).unwrap();
    let (c, _) = d.call(Opcode::Nop, 0, T, &mut nothing).unwrap();
    assert_eq!(c.status, Status::Ok as u8);
}
