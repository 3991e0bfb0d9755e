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

const ROUNDS: u32 = 7;

fn round_gbps(bytes: usize, budget: Duration, f: &mut dyn FnMut()) -> f64 {
    let start = Instant::now();
    let mut iters = 0u64;
    while start.elapsed() < budget / ROUNDS {
        for _ in 0..16 {
            f();
        }
        iters += 16;
    }
    bytes as f64 * iters as f64 / start.elapsed().as_secs_f64() / 1e9
}

/// Alternates rounds of `amf` and `peer` so both see the same machine state; the best round of
/// each is reported (the least disturbed).
fn best_gbps(bytes: usize, budget: Duration, amf: &mut dyn FnMut(), peer: &mut dyn FnMut()) -> (f64, f64) {
    let (mut a, mut p) = (0f64, 0f64);
    for _ in 0..ROUNDS {
        a = a.max(round_gbps(bytes, budget, amf));
        p = p.max(round_gbps(bytes, budget, peer));
    }
    (a, p)
}

/// Runs every width and chunk size, `budget` per measurement.
pub fn run(budget: Duration) -> Result<(String, Vec<ParityRow>), BenchError> {
    let isal = Isal::load()?;
    let machine = super::machine();
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
            let (mut p2, mut q2) = (AlignedBuf::zeroed(chunk), AlignedBuf::zeroed(chunk));
            let (amf, peer) = if par == 1 {
                isal.xor_gen(&refs, &mut p)?;
                best_gbps(bytes, budget, &mut || kernel.xor_gen(&refs, &mut p2), &mut || {
                    let _ = isal.xor_gen(&refs, &mut p);
                })
            } else {
                isal.pq_gen(&refs, &mut p, &mut q)?;
                best_gbps(bytes, budget, &mut || kernel.pq_gen(&refs, &mut p2, &mut q2), &mut || {
                    let _ = isal.pq_gen(&refs, &mut p, &mut q);
                })
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
    Ok((machine, rows))
}

/// Markdown table of the rows.
pub fn markdown(machine: &str, rows: &[ParityRow], command: &str) -> String {
    let mut s = format!(
        "Command: `{command}` — {machine}; one core pinned; GB/s of data consumed (data bytes, not \
         parity); best of {ROUNDS} alternating rounds each.\n\n\
         | width | chunk | amf kernel | amf GB/s | ISA-L GB/s | amf / ISA-L |\n|---|---|---|---|---|---|\n"
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

/// The rows as a chart: GB/s against chunk size, amf solid and ISA-L dashed, one colour a width.
pub fn plot(rows: &[ParityRow], path: &std::path::Path) -> Result<(), BenchError> {
    use super::plot::{line_chart, Axes, Series};
    let mut series = Vec::new();
    for (d, p) in WIDTHS {
        let width = format!("{d}+{p}");
        let of = |f: &dyn Fn(&ParityRow) -> f64| -> Vec<(f64, f64)> {
            rows.iter().filter(|r| r.width == width).map(|r| ((r.chunk_bytes / 1024) as f64, f(r))).collect()
        };
        series.push(Series { name: format!("amf {width}"), points: of(&|r| r.amf_gbps), peer: false });
        series.push(Series { name: format!("ISA-L {width}"), points: of(&|r| r.isal_gbps), peer: true });
    }
    let axes =
        Axes { title: "Parity generation, one core: amf vs ISA-L", x: "chunk (KiB)", y: "GB/s of data", log_x: true };
    line_chart(path, &axes, &series)
}
