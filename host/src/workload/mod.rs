//! A verifying block workload over NBD: clients spread over several controllers read and write
//! random 4 KiB blocks; every written block carries its value id, so each read can be traced to
//! the write it returns, and the whole history is checked (see `check`) afterwards.

pub mod check;

use crate::nbd::client::Client;
use check::{ReadRec, WriteRec};
use rand::{Rng, SeedableRng};
use std::time::{Duration, Instant};

/// Bytes per block.
pub const BLOCK_BYTES: usize = 4096;
const MAGIC: &[u8; 8] = b"AMFVALUE";

/// The bytes of value `id` in `block`.
pub fn encode(block: u64, id: u64) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK_BYTES];
    b[0..8].copy_from_slice(MAGIC);
    b[8..16].copy_from_slice(&id.to_le_bytes());
    b[16..24].copy_from_slice(&block.to_le_bytes());
    for (i, x) in b.iter_mut().enumerate().skip(24) {
        *x = (id as u8).wrapping_add((i as u8).wrapping_mul(31)) ^ (id >> 40) as u8;
    }
    b
}

/// The value id in `bytes` of `block`: Some(0) for the initial zeroes, None for anything no
/// write produced.
pub fn decode(block: u64, bytes: &[u8]) -> Option<u64> {
    if bytes.iter().all(|x| *x == 0) {
        return Some(0);
    }
    let id = u64::from_le_bytes(bytes.get(8..16)?.try_into().ok()?);
    (bytes.len() == BLOCK_BYTES && encode(block, id) == bytes).then_some(id)
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Spec {
    /// NBD addresses (host:port) of the controllers; client i uses target i mod len.
    pub targets: Vec<String>,
    /// Client connections.
    pub clients: usize,
    /// Blocks in the working set, from byte `base` on.
    pub blocks: u64,
    /// Offset of block 0.
    pub base: u64,
    /// Share of writes, percent.
    pub write_percent: u32,
    /// How long.
    pub duration: Duration,
    /// Seed of every client's choices.
    pub seed: u64,
    /// Operations started in this first part of `duration` are checked but not counted in
    /// `Outcome::reads`, `writes` and `elapsed` (a warm-up that fills the caches).
    pub warm_up: Duration,
    /// Each client on its own slice of the blocks (each host its own data), aligned to
    /// `OWN_REGION_ALIGN_BLOCKS` so that no two clients share a cache line or a stripe; otherwise every
    /// client over all of them.
    pub own_regions: bool,
}

/// Own regions start on multiples of this many blocks (3 MiB): whole lines of every line size
/// (up to 1 MiB) and whole stripes of the benches' group (RAID5 of 4 members with 64 KiB
/// chunks: 192 KiB). A stripe split between two regions is shared data: its parity is written
/// by both hosts' controllers in turn, and its lock moves between them at every write-back.
pub const OWN_REGION_ALIGN_BLOCKS: u64 = 768;

impl Spec {
    /// The blocks client `i` picks from: (first, count).
    fn blocks_of(&self, i: usize) -> (u64, u64) {
        if !self.own_regions || self.clients <= 1 {
            return (0, self.blocks);
        }
        let per = self.blocks / self.clients as u64;
        let per = if per >= OWN_REGION_ALIGN_BLOCKS { per - per % OWN_REGION_ALIGN_BLOCKS } else { per };
        (i as u64 * per, per.max(1))
    }

    /// The blocks client `i` reads in [`warm`]: its own region, or its share of what its
    /// controller's clients use (client i is the (i / targets)-th of them).
    fn warm_blocks_of(&self, i: usize) -> (u64, u64) {
        if self.own_regions {
            return self.blocks_of(i);
        }
        let targets = self.targets.len().max(1);
        let t = i % targets;
        let (k, of) = (i / targets, self.clients.saturating_sub(t).div_ceil(targets).max(1));
        let per = self.blocks.div_ceil(of as u64);
        let first = (k as u64 * per).min(self.blocks);
        (first, per.min(self.blocks - first))
    }
}

/// What happened.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Reads done.
    pub reads: u64,
    /// Writes acknowledged.
    pub writes: u64,
    /// Requests that failed (first few, with the client).
    pub errors: Vec<String>,
    /// History violations.
    pub violations: Vec<String>,
    /// Wall time.
    pub elapsed: Duration,
    /// Per-client operations (to show the load reached every controller).
    pub per_client: Vec<u64>,
}

/// Where a workload client sends its requests: an NBD connection, or an in-process controller.
pub trait Port: Send {
    /// Reads `buf.len()` bytes at `offset`.
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), String>;
    /// Writes `data` at `offset`, returning once it is acknowledged.
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), String>;
    /// Ends the session politely.
    fn close(self: Box<Self>) {}
}

impl Port for Client {
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), String> {
        Client::read(self, offset, buf).map_err(|e| e.to_string())
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), String> {
        Client::write(self, offset, data, false).map_err(|e| e.to_string())
    }
    fn close(self: Box<Self>) {
        self.disconnect();
    }
}

/// Opens client `i`'s port.
pub type Open<'a> = dyn Fn(usize) -> Result<Box<dyn Port>, String> + Sync + 'a;

struct ClientLog {
    writes: Vec<WriteRec>,
    reads: Vec<ReadRec>,
    errors: Vec<String>,
}

fn client(spec: &Spec, open: &Open<'_>, i: usize, t0: Instant) -> ClientLog {
    let mut log = ClientLog { writes: Vec::new(), reads: Vec::new(), errors: Vec::new() };
    let target = spec.targets.get(i % spec.targets.len().max(1)).cloned().unwrap_or_default();
    let mut c = match open(i) {
        Ok(c) => c,
        Err(e) => {
            log.errors.push(format!("client {i} ({target}): {e}"));
            return log;
        }
    };
    let mut rng = rand::rngs::SmallRng::seed_from_u64(spec.seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let ns = |t: Instant| t.duration_since(t0).as_nanos() as u64;
    let mut seq = 0u64;
    let mut buf = vec![0u8; BLOCK_BYTES];
    let (first, count) = spec.blocks_of(i);
    while t0.elapsed() < spec.duration {
        let block = first + rng.gen_range(0..count);
        let offset = spec.base + block * BLOCK_BYTES as u64;
        if rng.gen_range(0..100) < spec.write_percent {
            seq += 1;
            let id = ((i as u64 + 1) << 40) | seq;
            let start = Instant::now();
            let r = c.write(offset, &encode(block, id));
            let ack_ns = r.is_ok().then(|| ns(Instant::now()));
            log.writes.push(WriteRec { block, id, start_ns: ns(start), ack_ns });
            if let Err(e) = r {
                log.errors.push(format!("client {i} write of block {block} via {target}: {e}"));
                break;
            }
        } else {
            let start = Instant::now();
            match c.read(offset, &mut buf) {
                Ok(()) => log.reads.push(ReadRec {
                    block,
                    id: decode(block, &buf),
                    start_ns: ns(start),
                    end_ns: ns(Instant::now()),
                    client: i,
                }),
                Err(e) => {
                    log.errors.push(format!("client {i} read of block {block} via {target}: {e}"));
                    break;
                }
            }
        }
    }
    c.close();
    log
}

/// Blocks one warm-up read covers (256 KiB: whole lines of every line size up to it).
const WARM_READ_BLOCKS: u64 = 64;

/// Reads every block the clients of `spec` will use once, through the controller each client
/// uses, so that a measurement after it starts from warm caches: a random warm-up of a few
/// seconds leaves many lines untouched (it takes about n ln n random reads to touch n lines),
/// and their misses, card messages and member reads then count as the steady state. The
/// clients of one controller share its part. Nothing read here is checked: it precedes the
/// workload.
pub fn warm(spec: &Spec) -> Result<(), String> {
    let targets = spec.targets.len().max(1);
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..spec.clients)
            .map(|i| {
                s.spawn(move || -> Result<(), String> {
                    let target = spec.targets.get(i % targets).ok_or("no targets")?;
                    let (first, count) = spec.warm_blocks_of(i);
                    let mut c = Client::connect(target, "amf").map_err(|e| format!("warm-up via {target}: {e}"))?;
                    let mut buf = vec![0u8; (WARM_READ_BLOCKS as usize) * BLOCK_BYTES];
                    let mut b = first;
                    while b < first + count {
                        let n = WARM_READ_BLOCKS.min(first + count - b) as usize;
                        let offset = spec.base + b * BLOCK_BYTES as u64;
                        c.read(offset, &mut buf[..n * BLOCK_BYTES])
                            .map_err(|e| format!("warm-up read at {offset} via {target}: {e}"))?;
                        b += n as u64;
                    }
                    c.disconnect();
                    Ok(())
                })
            })
            .collect();
        hs.into_iter().try_for_each(|h| h.join().unwrap_or_else(|_| Err("a warm-up client panicked".into())))
    })
}

/// Runs the workload over NBD (client i connects to target i mod targets) and checks its
/// history.
pub fn run(spec: &Spec) -> Outcome {
    let targets = spec.targets.clone();
    let open = move |i: usize| -> Result<Box<dyn Port>, String> {
        let t = targets.get(i % targets.len().max(1)).ok_or("no targets")?;
        Client::connect(t, "amf").map(|c| Box::new(c) as Box<dyn Port>).map_err(|e| e.to_string())
    };
    run_on(spec, &open)
}

/// Runs the workload over the ports `open` gives and checks its history.
pub fn run_on(spec: &Spec, open: &Open<'_>) -> Outcome {
    let t0 = Instant::now();
    let logs: Vec<ClientLog> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..spec.clients).map(|i| s.spawn(move || client(spec, open, i, t0))).collect();
        hs.into_iter()
            .enumerate()
            .map(|(i, h)| {
                h.join().unwrap_or_else(|_| ClientLog {
                    writes: vec![],
                    reads: vec![],
                    errors: vec![format!("client {i} panicked")],
                })
            })
            .collect()
    });
    let elapsed = t0.elapsed().saturating_sub(spec.warm_up);
    let from_ns = spec.warm_up.as_nanos() as u64;
    let per_client = logs.iter().map(|l| (l.reads.len() + l.writes.len()) as u64).collect();
    let writes: Vec<WriteRec> = logs.iter().flat_map(|l| l.writes.iter().copied()).collect();
    let reads: Vec<ReadRec> = logs.iter().flat_map(|l| l.reads.iter().copied()).collect();
    Outcome {
        reads: reads.iter().filter(|r| r.start_ns >= from_ns).count() as u64,
        writes: writes.iter().filter(|w| w.ack_ns.is_some() && w.start_ns >= from_ns).count() as u64,
        errors: logs.iter().flat_map(|l| l.errors.iter().cloned()).take(10).collect(),
        violations: check::check(&writes, &reads, 20),
        elapsed,
        per_client,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_warm_up_reads_every_block_a_client_will_use() {
        for (clients, targets, blocks) in
            [(9usize, 3usize, 16384u64), (3, 1, 16384), (4, 3, 1000), (12, 3, 7), (2, 3, 50)]
        {
            let spec = Spec {
                targets: vec![String::new(); targets],
                clients,
                blocks,
                base: 0,
                write_percent: 0,
                duration: Duration::ZERO,
                seed: 0,
                warm_up: Duration::ZERO,
                own_regions: false,
            };
            let mut seen = vec![0u32; blocks as usize];
            for i in 0..clients {
                let (first, count) = spec.warm_blocks_of(i);
                for b in first..first + count {
                    seen[b as usize] |= 1 << (i % targets);
                }
            }
            // Every controller a client uses reads every block.
            let used = (0..clients.min(targets)).fold(0u32, |m, t| m | 1 << t);
            assert!(seen.iter().all(|m| *m == used), "{clients} clients on {targets}: a block missed by a controller");
            let own = Spec { own_regions: true, ..spec };
            let (first, count) = own.warm_blocks_of(clients - 1);
            assert_eq!((first, count), own.blocks_of(clients - 1), "own regions: each client its own");
        }
    }

    #[test]
    fn values_round_trip_and_foreign_bytes_do_not() {
        let b = encode(7, 42);
        assert_eq!(decode(7, &b), Some(42));
        assert_eq!(decode(8, &b), None, "another block's value");
        assert_eq!(decode(7, &vec![0; BLOCK_BYTES]), Some(0));
        let mut torn = b.clone();
        torn[2000..].copy_from_slice(&encode(7, 43)[2000..]);
        assert_eq!(decode(7, &torn), None);
    }
}
