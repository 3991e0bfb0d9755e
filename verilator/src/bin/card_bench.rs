//! `cargo run --release -p amf-verilator --bin card_bench [-- --record docs/benchmarks.md]`:
//! simulated cards linked in process (a frame moves to its destination the cycle after it is
//! sent). Measures (1) cycles from the doorbell of an acquire-exclusive to its completion in host
//! memory with 1..7 sharers to invalidate, and (2) simulated cycles per second for 4 cards
//! exchanging broadcasts.

use amf_hdl_model::gen::regs;
use amf_hdl_model::gen::structs::{Command, Completion, LinkFrame, Opcode};
use amf_hdl_model::model::card::HostMemory;
use amf_hdl_model::model::VecMemory;
use amf_verilator::card::SimCard;
use std::time::Instant;

const BASE: u64 = 0x2000_0000;
const CMD: u64 = BASE;
const CPL: u64 = BASE + 0x4000;
const EVT: u64 = BASE + 0x8000;
const RING_LOG2: u32 = 6;
const EPOCH: u32 = 1;

struct Node {
    card: SimCard,
    mem: VecMemory,
    cmd_prod: u32,
    cpl_cons: u32,
    evt_cons: u32,
    tag: u32,
}

impl Node {
    fn new(id: u8, nodes: u8) -> Node {
        let mut n = Node {
            card: SimCard::new(),
            mem: VecMemory::new(BASE, 0x10000),
            cmd_prod: 0,
            cpl_cons: 0,
            evt_cons: 0,
            tag: 0,
        };
        use regs::*;
        let setup = [
            (device::BASE + device::node::OFFSET, device::node::peers::set(id as u32, ((1u32 << nodes) - 1) & 0xff)),
            (device::BASE + device::epoch::OFFSET, EPOCH),
            (device::BASE + device::ack_timeout::OFFSET, 1 << 20),
            (cmd_ring::BASE + cmd_ring::base_lo::OFFSET, CMD as u32),
            (cmd_ring::BASE + cmd_ring::size_log2::OFFSET, RING_LOG2),
            (cpl_ring::BASE + cpl_ring::base_lo::OFFSET, CPL as u32),
            (cpl_ring::BASE + cpl_ring::size_log2::OFFSET, RING_LOG2),
            (evt_ring::BASE + evt_ring::base_lo::OFFSET, EVT as u32),
            (evt_ring::BASE + evt_ring::size_log2::OFFSET, RING_LOG2),
            (device::BASE + device::ctrl::OFFSET, 1),
        ];
        for (a, v) in setup {
            n.card.mmio_write(a, v, &mut n.mem);
        }
        n
    }

    fn submit(&mut self, op: Opcode, resource: u64) {
        self.tag += 1;
        let c = Command { opcode: op as u8, tag: self.tag, resource, epoch: EPOCH, ..Default::default() };
        let slot = CMD + (self.cmd_prod & ((1 << RING_LOG2) - 1)) as u64 * 32;
        let _ = self.mem.write(slot, &c.encode());
        self.cmd_prod += 1;
        self.card.mmio_write(regs::cmd_ring::BASE + regs::cmd_ring::doorbell::OFFSET, self.cmd_prod, &mut self.mem);
    }

    /// New completions (by phase bit); returns ring space to the card.
    fn completions(&mut self) -> Vec<Completion> {
        let mut out = vec![];
        loop {
            let slot = CPL + (self.cpl_cons & ((1 << RING_LOG2) - 1)) as u64 * 32;
            let mut b = [0u8; 32];
            let _ = self.mem.read(slot, &mut b);
            let c = Completion::decode(&b);
            if c.phase != ((self.cpl_cons >> RING_LOG2) & 1 == 0) as u8 {
                break;
            }
            out.push(c);
            self.cpl_cons += 1;
        }
        if !out.is_empty() {
            self.card.mmio_write(regs::cpl_ring::BASE + regs::cpl_ring::doorbell::OFFSET, self.cpl_cons, &mut self.mem);
        }
        out
    }

    fn drain_events(&mut self) {
        loop {
            let slot = EVT + (self.evt_cons & ((1 << RING_LOG2) - 1)) as u64 * 32;
            let mut b = [0u8; 32];
            let _ = self.mem.read(slot, &mut b);
            if (b[2] >> 7) & 1 != ((self.evt_cons >> RING_LOG2) & 1 == 0) as u8 {
                break;
            }
            self.evt_cons += 1;
        }
        self.card.mmio_write(regs::evt_ring::BASE + regs::evt_ring::doorbell::OFFSET, self.evt_cons, &mut self.mem);
    }
}

/// One cycle of every card, then frames move to their destinations.
fn step(nodes: &mut [Node]) {
    for n in nodes.iter_mut() {
        n.card.run(1, &mut n.mem);
    }
    let mut moved = vec![];
    for n in nodes.iter_mut() {
        moved.extend(n.card.take_outgoing());
    }
    for f in moved {
        let dst_mask = LinkFrame::decode(&f).dst;
        for (i, n) in nodes.iter_mut().enumerate() {
            if dst_mask & (1 << i) != 0 {
                n.card.receive(f);
            }
        }
    }
}

/// Runs until `node` completes a command; returns the cycles taken (bounded).
fn wait_completion(nodes: &mut [Node], node: usize) -> Option<u64> {
    for cycle in 1..200_000u64 {
        step(nodes);
        if !nodes[node].completions().is_empty() {
            return Some(cycle);
        }
    }
    None
}

fn main() {
    let record = std::env::args().skip_while(|a| a != "--record").nth(1);
    // (1) Doorbell-to-completion of an acquire-exclusive with k sharers to invalidate.
    let mut rows = vec![];
    for k in 1..=7usize {
        let mut nodes: Vec<Node> = (0..8).map(|i| Node::new(i, 8)).collect();
        let r = 100 + k as u64;
        // Node 0 and nodes 1..=k read the resource: node 0 then knows exactly k other sharers.
        for i in (1..=k).chain(std::iter::once(0)) {
            nodes[i].submit(Opcode::AcquireShared, r);
            wait_completion(&mut nodes, i).expect("acquire shared completes");
            for n in nodes.iter_mut() {
                n.drain_events();
            }
        }
        nodes[0].submit(Opcode::AcquireExclusive, r);
        let cycles = wait_completion(&mut nodes, 0).expect("acquire exclusive completes");
        rows.push((k, cycles));
    }
    // (2) 4 cards exchanging broadcasts: every card keeps writing resources the others read.
    let mut nodes: Vec<Node> = (0..4).map(|i| Node::new(i, 4)).collect();
    let start = Instant::now();
    let mut cycles = 0u64;
    let mut done = 0u64;
    let mut next_res = 0u64;
    while start.elapsed().as_secs_f64() < 3.0 {
        for (i, n) in nodes.iter_mut().enumerate() {
            if n.cmd_prod == n.cpl_cons {
                next_res += 1;
                n.submit(
                    if (next_res + i as u64).is_multiple_of(3) {
                        Opcode::AcquireShared
                    } else {
                        Opcode::AcquireExclusive
                    },
                    next_res % 8,
                );
            }
        }
        for _ in 0..64 {
            step(&mut nodes);
        }
        cycles += 64;
        for n in nodes.iter_mut() {
            done += n.completions().len() as u64;
            n.drain_events();
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let mut s = String::from(
        "Command: `cargo run --release -p amf-verilator --bin card_bench` — Verilator 5.006, the whole `amf_card` RTL per node, linked in process (a frame reaches its destination the cycle after it leaves).\n\n\
         | sharers invalidated | doorbell to completion (cycles) |\n|---|---|\n",
    );
    for (k, c) in &rows {
        s += &format!("| {k} | {c} |\n");
    }
    s += &format!(
        "\n4 cards exchanging broadcasts: {:.2} M simulated cycles/s (cluster cycles, all 4 cards stepped), {} acquires completed in {:.1} s.\n",
        cycles as f64 / secs / 1e6,
        done,
        secs
    );
    println!("{s}");
    if let Some(path) = record {
        let old = std::fs::read_to_string(&path).unwrap_or_default();
        let (a, b) = ("<!-- bench:card:start -->", "<!-- bench:card:end -->");
        let section = format!("{a}\n{s}\n{b}");
        let new = match (old.find(a), old.find(b)) {
            (Some(x), Some(y)) if y > x => format!("{}{}{}", &old[..x], section, &old[y + b.len()..]),
            _ => format!("{old}\n{section}\n"),
        };
        if let Err(e) = std::fs::write(&path, new) {
            eprintln!("card_bench: {path}: {e}");
            std::process::exit(1);
        }
    }
}
