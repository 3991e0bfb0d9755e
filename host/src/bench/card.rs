//! `amf bench card [--record docs/benchmarks.md]`: the card's RTL under Verilator, cards linked
//! in process. Measures (1) cycles from the doorbell of an acquire-exclusive to its completion in
//! host memory with 1..7 sharers to invalidate (lockstep, a frame moves to its destinations the
//! cycle after it is sent), and (2) simulated cycles per second for 4 cards exchanging
//! broadcasts, lockstep on one thread and on two threads with a link of `LINK_CYCLES`.

use super::BenchError;
use amf_hdl_model::gen::regs;
use amf_hdl_model::gen::structs::{Command, Completion, Opcode};
use amf_hdl_model::model::card::HostMemory;
use amf_hdl_model::model::link_auth::{link_frame, WireFrame};
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
        let before = self.evt_cons;
        loop {
            let slot = EVT + (self.evt_cons & ((1 << RING_LOG2) - 1)) as u64 * 32;
            let mut b = [0u8; 32];
            let _ = self.mem.read(slot, &mut b);
            if (b[2] >> 7) & 1 != ((self.evt_cons >> RING_LOG2) & 1 == 0) as u8 {
                break;
            }
            self.evt_cons += 1;
        }
        if self.evt_cons != before {
            self.card.mmio_write(regs::evt_ring::BASE + regs::evt_ring::doorbell::OFFSET, self.evt_cons, &mut self.mem);
        }
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
        let dst_mask = link_frame(&f).dst;
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

/// Link latency of the threaded run: each thread runs its cards this many cycles between
/// exchanges, exactly (a frame sent in cycle t is presented from cycle t + LINK_CYCLES, so no
/// frame can arrive inside the window it was sent in). 64 cycles is 256 ns at 250 MHz, below a
/// real card-to-card hop through an Ethernet switch.
const LINK_CYCLES: u64 = 64;
/// Cycles between the host's turns (submitting, reaping completions and events).
const HOST_CYCLES: u64 = 64;
/// Wall-clock length of each throughput run.
const RUN_SECS: f64 = 3.0;

/// A barrier that spins: the windows between exchanges are tens of microseconds, about what a
/// futex wake-up costs on a VM, so a sleeping barrier would halve the rate.
struct SpinBarrier {
    threads: usize,
    arrived: std::sync::atomic::AtomicUsize,
    generation: std::sync::atomic::AtomicUsize,
}

impl SpinBarrier {
    fn new(threads: usize) -> SpinBarrier {
        SpinBarrier { threads, arrived: 0.into(), generation: 0.into() }
    }

    /// Waits for every thread; true for exactly one of them (the last to arrive).
    fn wait(&self) -> bool {
        use std::sync::atomic::Ordering::{AcqRel, Acquire, Release};
        let generation = self.generation.load(Acquire);
        if self.arrived.fetch_add(1, AcqRel) + 1 == self.threads {
            self.arrived.store(0, Release);
            self.generation.fetch_add(1, Release);
            return true;
        }
        let mut spins = 0u32;
        while self.generation.load(Acquire) == generation {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(1024) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        false
    }
}

/// A frame on its way: (cycle from which it is presented, frame).
type InFlight = (u64, WireFrame);

/// 4 cards, each submitting an acquire whenever its last one completed, split over `threads`
/// threads that meet every `link` cycles to exchange frames. Returns (cluster cycles per second,
/// acquires completed, seconds).
fn throughput(threads: usize, link: u64) -> (f64, u64, f64) {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
    use std::sync::Mutex;
    const NODES: usize = 4;
    let mut nodes: Vec<Node> = (0..NODES as u8).map(|i| Node::new(i, NODES as u8)).collect();
    // Two mailboxes per node, by window parity: a window's frames are posted to one while the
    // other (last window's) is being emptied.
    let mail: Vec<[Mutex<Vec<InFlight>>; 2]> = (0..NODES).map(|_| [Mutex::default(), Mutex::default()]).collect();
    let barrier = SpinBarrier::new(threads);
    let stop = AtomicBool::new(false);
    let done = AtomicU64::new(0);
    let start = Instant::now();
    let cycles_before: u64 = nodes.iter().map(|n| n.card.cycles()).sum();
    let mut cycles_after = 0u64;
    let per = NODES.div_ceil(threads);
    std::thread::scope(|scope| {
        let mut handles = vec![];
        for (t, chunk) in nodes.chunks_mut(per).enumerate() {
            let (mail, barrier, stop, done) = (&mail, &barrier, &stop, &done);
            handles.push(scope.spawn(move || {
                let first = t * per;
                let mut pending: Vec<Vec<InFlight>> = vec![vec![]; chunk.len()];
                let mut window = 0u64;
                let mut next_res = 0u64;
                let host_every = HOST_CYCLES.div_ceil(link).max(1);
                loop {
                    let host_turn = window.is_multiple_of(host_every);
                    for (k, n) in chunk.iter_mut().enumerate().filter(|_| host_turn) {
                        if n.cmd_prod == n.cpl_cons {
                            next_res += 1;
                            let op = if (next_res + (first + k) as u64).is_multiple_of(3) {
                                Opcode::AcquireShared
                            } else {
                                Opcode::AcquireExclusive
                            };
                            n.submit(op, (next_res * 7 + (first + k) as u64) % 8);
                        }
                    }
                    let base = window * link;
                    for c in base..base + link {
                        for (k, n) in chunk.iter_mut().enumerate() {
                            pending[k].retain(|&(at, f)| {
                                if at <= c {
                                    n.card.receive(f);
                                }
                                at > c
                            });
                            n.card.run(1, &mut n.mem);
                            for f in n.card.take_outgoing() {
                                let dst_mask = link_frame(&f).dst;
                                for (d, m) in mail.iter().enumerate() {
                                    if dst_mask & (1 << d) != 0 {
                                        m[(window % 2) as usize]
                                            .lock()
                                            .unwrap_or_else(|p| p.into_inner())
                                            .push((c + link, f));
                                    }
                                }
                            }
                        }
                    }
                    for n in chunk.iter_mut().filter(|_| host_turn) {
                        done.fetch_add(n.completions().len() as u64, Relaxed);
                        n.drain_events();
                    }
                    if barrier.wait() && host_turn && start.elapsed().as_secs_f64() > RUN_SECS {
                        stop.store(true, Relaxed);
                    }
                    barrier.wait();
                    for (k, p) in pending.iter_mut().enumerate() {
                        let mut m = mail[first + k][(window % 2) as usize].lock().unwrap_or_else(|p| p.into_inner());
                        p.append(&mut m);
                    }
                    window += 1;
                    if stop.load(Relaxed) {
                        return chunk.iter().map(|n| n.card.cycles()).sum::<u64>();
                    }
                }
            }));
        }
        for h in handles {
            cycles_after += h.join().unwrap_or(0);
        }
    });
    let secs = start.elapsed().as_secs_f64();
    // Cluster cycles: every card's cycles (register writes by the host included), per card.
    let cycles = cycles_after.saturating_sub(cycles_before) / NODES as u64;
    (cycles as f64 / secs, done.load(Relaxed), secs)
}

/// Doorbell-to-completion cycles of an acquire-exclusive with `k` sharers, for k in 1..=7.
pub fn latency_by_sharers() -> Result<Vec<(usize, u64)>, BenchError> {
    let stalled = |what: &str| BenchError::Peer {
        program: "amf_card (Verilator)".into(),
        detail: format!("{what} did not complete"),
    };
    let mut rows = vec![];
    for k in 1..=7usize {
        let mut nodes: Vec<Node> = (0..8).map(|i| Node::new(i, 8)).collect();
        let r = 100 + k as u64;
        // Node 0 and nodes 1..=k read the resource: node 0 then knows exactly k other sharers.
        for i in (1..=k).chain(std::iter::once(0)) {
            nodes[i].submit(Opcode::AcquireShared, r);
            wait_completion(&mut nodes, i).ok_or_else(|| stalled("acquire shared"))?;
            for n in nodes.iter_mut() {
                n.drain_events();
            }
        }
        nodes[0].submit(Opcode::AcquireExclusive, r);
        let cycles = wait_completion(&mut nodes, 0).ok_or_else(|| stalled("acquire exclusive"))?;
        rows.push((k, cycles));
    }
    Ok(rows)
}

/// Runs both measurements; returns the report and the latency rows (for the chart).
pub fn run() -> Result<(String, Vec<(usize, u64)>), BenchError> {
    let rows = latency_by_sharers()?;
    // 4 cards exchanging broadcasts: lockstep on one thread with the one-cycle link, then on two
    // threads (this machine's cores) with a LINK_CYCLES link.
    let (lockstep_cps, lockstep_done, lockstep_secs) = throughput(1, 1);
    let (threaded_cps, threaded_done, threaded_secs) = throughput(2, LINK_CYCLES);
    let mut s = format!(
        "Command: `amf bench card` — {}; Verilator 5.006, the whole `amf_card` RTL per node, linked in process. Latency: lockstep, a frame reaches its destinations the cycle after it leaves (one multicast frame per broadcast).\n\n\
         | sharers invalidated | doorbell to completion (cycles) |\n|---|---|\n",
        super::machine()
    );
    for (k, c) in &rows {
        s += &format!("| {k} | {c} |\n");
    }
    s += &format!(
        "\n4 cards exchanging broadcasts (every card keeps acquiring resources the others use; cluster cycles, all 4 cards stepped):\n\n\
         | threads | link latency (cycles) | M simulated cycles/s | acquires completed |\n|---|---|---|---|\n\
         | 1 | 1 | {:.2} | {} in {:.1} s |\n| 2 | {} | {:.2} | {} in {:.1} s |\n",
        lockstep_cps / 1e6,
        lockstep_done,
        lockstep_secs,
        LINK_CYCLES,
        threaded_cps / 1e6,
        threaded_done,
        threaded_secs
    );
    Ok((s, rows))
}

/// Draws doorbell-to-completion cycles against the number of sharers.
pub fn plot(rows: &[(usize, u64)], path: &std::path::Path) -> Result<(), BenchError> {
    let series = [super::plot::Series {
        name: "amf_card RTL (Verilator), acquire-exclusive".into(),
        points: rows.iter().map(|&(k, c)| (k as f64, c as f64)).collect(),
        peer: false,
    }];
    let axes = super::plot::Axes {
        title: "Card latency against sharers invalidated",
        x: "sharers invalidated",
        y: "doorbell to completion (cycles)",
        log_x: false,
    };
    super::plot::line_chart(path, &axes, &series)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The broadcast is one multicast frame: each extra sharer costs about one cycle (its
    /// answer), never a round trip.
    #[test]
    fn latency_grows_by_about_a_cycle_per_sharer() {
        let rows = latency_by_sharers().expect("the RTL completes");
        assert_eq!(rows.len(), 7);
        let (first, last) = (rows[0].1, rows[6].1);
        assert!(last >= first && last - first <= 12, "{rows:?}");
    }
}
