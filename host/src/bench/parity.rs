//! `amf bench parity`: XOR and P+Q generation, amf's kernel against ISA-L, one core, same run.

use super::isal::Isal;
use super::BenchError;
use crate::raid::parity::{AlignedBuf, Kernel};
use rand::RngCore;
use std::time::{Duration, Instant};

/// One measured configuration.
#[derive(Debug, serde::Serialize)]
pub struct ParityRow {
    /// "4+1", "8+2", ...
    pub width: String,
    /// Chunk size in bytes.
    pub chunk_bytes: usize,
    /// amf kernel used.
    pub kernel: &'static str,
    /// amf throughput, GB/s of data in.
    pub amf_gbps: f64,
    /// ISA-L throughput, GB/s of data in.
    pub isal_gbps: f64,
}

/// Widths measured: (data, parities).
pub const WIDTHS: [(usize, usize); 3] = [(4, 1), (8, 2), (16, 2)];
/// Chunk sizes measured.
pub const CHUNKS: [usize; 5] = [4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20];

fn best_gbps(bytes: usize, budget: Duration, mut f: impl FnMut()) -> f64 {
    // Rounds of at least budget/ROUNDS each; the best round is reported (least disturbed).
    const ROUNDS: u32 = 5;
    let mut best = 0f64;
    for _ in 0..ROUNDS {
        let start = Instant::now();
        let mut iters = 0u64;
        while start.elapsed() < budget / ROUNDS {
            for _ in 0..16 {
                f();
            }
            iters += 16;
        }
        let gbps = bytes as f64 * iters as f64 / start.elapsed().as_secs_f64() / 1e9;
        best = best.max(gbps);
    }
    best
}

/// Runs every width and chunk size, `budget` per measurement.
pub fn run(budget: Duration) -> Result<Vec<ParityRow>, BenchError> {
    let isal = Isal::load()?;
    super::pin_to_cpu(0);
    let kernel = Kernel::detect();
    let mut rows = Vec::new();
    let mut rng = rand::thread_rng();
    for (n, par) in WIDTHS {
        for chunk in CHUNKS {
            let data: Vec<AlignedBuf> = (0..n)
                .map(|_| {
                    let mut b = AlignedBuf::zeroed(chunk);
                    rng.fill_bytes(&mut b);
                    b
                })
                .collect();
            let refs: Vec<&[u8]> = data.iter().map(|d| &d[..]).collect();
            let (mut p, mut q) = (AlignedBuf::zeroed(chunk), AlignedBuf::zeroed(chunk));
            let bytes = n * chunk;
            let (amf, peer) = if par == 1 {
                isal.xor_gen(&refs, &mut p)?;
                let peer = best_gbps(bytes, budget, || {
                    let _ = isal.xor_gen(&refs, &mut p);
                });
                let amf = best_gbps(bytes, budget, || kernel.xor_gen(&refs, &mut p));
                (amf, peer)
            } else {
                isal.pq_gen(&refs, &mut p, &mut q)?;
                let peer = best_gbps(bytes, budget, || {
                    let _ = isal.pq_gen(&refs, &mut p, &mut q);
                });
                let amf = best_gbps(bytes, budget, || kernel.pq_gen(&refs, &mut p, &mut q));
                (amf, peer)
            };
            rows.push(ParityRow {
                width: format!("{n}+{par}"),
                chunk_bytes: chunk,
                kernel: kernel.name(),
                amf_gbps: amf,
                isal_gbps: peer,
            });
        }
    }
    Ok(rows)
}

/// Markdown table of the rows.
pub fn markdown(rows: &[ParityRow], command: &str) -> String {
    let mut s = format!(
        "Command: `{command}` — {}; one core pinned; GB/s of data consumed (data bytes, not parity).\n\n\
         | width | chunk | amf kernel | amf GB/s | ISA-L GB/s | amf / ISA-L |\n|---|---|---|---|---|---|\n",
        super::machine()
    );
    for r in rows {
        s += &format!(
            "| {} | {} KiB | {} | {:.1} | {:.1} | {:.2}x |\n",
            r.width,
            r.chunk_bytes / 1024,
            r.kernel,
            r.amf_gbps,
            r.isal_gbps,
            r.amf_gbps / r.isal_gbps.max(1e-9)
        );
    }
    s
}
