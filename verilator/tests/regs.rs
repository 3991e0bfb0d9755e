//! Differential test: the RTL register file against the card model's MMIO on seeded random
//! reads and writes over the whole BAR (and past it), doorbells excepted (their effects are the
//! engine's). Plus discovery by walking NEXT, w1c, and doorbell pulses.

use amf_hdl_model::gen::regs;
use amf_hdl_model::model::card::Card;
use amf_verilator::regs::Regs;
use rand::{rngs::SmallRng, Rng, SeedableRng};

fn is_doorbell(addr: u32) -> bool {
    [
        regs::cmd_ring::BASE + regs::cmd_ring::doorbell::OFFSET,
        regs::cpl_ring::BASE + regs::cpl_ring::doorbell::OFFSET,
        regs::evt_ring::BASE + regs::evt_ring::doorbell::OFFSET,
    ]
    .contains(&addr)
}

#[test]
fn rtl_registers_match_model() {
    let seeds: Vec<u64> = match std::env::var("AMF_SEED") {
        Ok(s) => vec![s.parse().expect("AMF_SEED must be a number")],
        Err(_) => vec![21, 22, 23],
    };
    for seed in seeds {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut rtl = Regs::new();
        let mut model = Card::new();
        for i in 0..20_000 {
            let addr = match rng.gen_range(0..10) {
                0 => rng.gen_range(0..4096u32),                 // anything, even unaligned
                _ => rng.gen_range(0..regs::BAR_BYTES / 4) * 4, // a word in the BAR
            };
            if rng.gen_bool(0.4) {
                if is_doorbell(addr) {
                    continue;
                }
                // Soft reset only touches engine state; keep it out of value comparisons.
                let value = if addr == regs::device::BASE + regs::device::ctrl::OFFSET {
                    rng.gen::<u32>() & 1
                } else {
                    rng.gen()
                };
                rtl.write(addr as u16, value);
                model.mmio_write(addr, value);
            } else {
                let got = rtl.read(addr as u16);
                let want = model.mmio_read(addr);
                assert_eq!(got, want, "seed {seed} op {i}: read {addr:#x}");
            }
        }
    }
}

#[test]
fn discovery_doorbells_and_interrupts() {
    let mut rtl = Regs::new();
    let mut at = 0u32;
    let mut types = vec![];
    loop {
        types.push(rtl.read(at as u16));
        assert_eq!(rtl.read((at + regs::header::VERSION) as u16) >> 16, 1, "version major");
        at = rtl.read((at + regs::header::NEXT) as u16);
        if at == 0 {
            break;
        }
    }
    assert_eq!(types, regs::BLOCKS.iter().map(|b| b.type_id).collect::<Vec<_>>());
    let io = rtl.write((regs::cmd_ring::BASE + regs::cmd_ring::doorbell::OFFSET) as u16, 17);
    assert_eq!((io.cmd_doorbell, io.doorbell_value), (1, 17), "doorbell pulses with its value");
    assert_eq!(rtl.read((regs::cmd_ring::BASE + regs::cmd_ring::doorbell::OFFSET) as u16), 0, "write-only reads 0");
    // Interrupt: a cause raised, enabled, then cleared by writing 1.
    let irq = (regs::device::BASE + regs::device::irq::OFFSET) as u16;
    rtl.engine.irq_set = 0b010;
    let mut io = rtl.engine;
    rtl.cycle(&mut io);
    rtl.engine.irq_set = 0;
    assert_eq!(rtl.read(irq), 0b010);
    rtl.write((regs::device::BASE + regs::device::irq_enable::OFFSET) as u16, 0b010);
    let mut io = rtl.engine;
    rtl.cycle(&mut io);
    assert_eq!(io.irq, 1, "event line follows enabled causes");
    rtl.write(irq, 0b010);
    assert_eq!(rtl.read(irq), 0);
    // Engine counters show through.
    rtl.engine.stats[2] = 99;
    assert_eq!(rtl.read((regs::stats::BASE + regs::stats::crc_errors::OFFSET) as u16), 99);
}
