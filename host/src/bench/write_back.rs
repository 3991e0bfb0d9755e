//! `amf bench cluster --write-back-only`: a sequential write through one controller, flushed,
//! and the member I/O it cost. A dirty line's write-back takes the dirty lines beside it in its
//! stripes along (coherency.md, rule 4), so a stripe written whole goes as one full-stripe
//! write instead of a read-modify-write per line. One controller without a card (its own
//! write-back cache) is the peer row.

use super::cluster::{group_with, sum};
use super::BenchError;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

/// What the sequential write writes.
const WRITE_MIB: u64 = 192;

/// The member-I/O counters of `amf status` the rows report, summed over the controllers.
const ENGINE: [&str; 4] = ["member_writes", "full_stripe_writes", "rcw_writes", "rmw_writes"];

/// The rows: one controller, then three with model cards, each writing `WRITE_MIB` MiB with
/// `nbdcopy --flush` through controller 0.
pub fn sequential(base: &Path) -> Result<String, BenchError> {
    std::fs::create_dir_all(base).map_err(|source| BenchError::Io { path: base.display().to_string(), source })?;
    let source = base.join("source");
    write_source(&source)?;
    let mut out = format!(
        "\nA sequential write of {WRITE_MIB} MiB through controller 0 with `nbdcopy --flush` (RAID5 of 4, 64 KiB \
         chunks, 256 MiB caches):\n\n"
    );
    out += "| controllers | card | MiB/s | member writes / MiB | full-stripe writes | reconstruct-writes | \
            read-modify-writes | lines written back | in write-backs |\n|---|---|---|---|---|---|---|---|---|\n";
    for (n, card) in [(1usize, "sim"), (3, "model")] {
        let dir = base.join(format!("write-back{n}"));
        let mut g = group_with(&dir, n, card, &["--member-size", "128M", "--cache-mib", "256"])?;
        let counts = |g: &_| -> Result<Vec<u64>, BenchError> {
            let mut v = Vec::new();
            for k in ENGINE {
                v.push(sum(g, &["engine", k])?);
            }
            for k in ["write_back_lines", "member_writes"] {
                v.push(sum(g, &["coherency", "counters", k])?);
            }
            Ok(v)
        };
        let target = g
            .nbd
            .first()
            .cloned()
            .ok_or_else(|| BenchError::Peer { program: "amf cluster".into(), detail: "no NBD address".into() })?;
        let before = counts(&g)?;
        let start = Instant::now();
        let copied =
            std::process::Command::new("nbdcopy").arg("--flush").arg(&source).arg(format!("nbd://{target}")).output();
        let seconds = start.elapsed().as_secs_f64();
        let after = counts(&g);
        g.stop();
        let copied = copied.map_err(|e| BenchError::Peer {
            program: "nbdcopy (apt-get install libnbd-bin)".into(),
            detail: e.to_string(),
        })?;
        if !copied.status.success() {
            return Err(BenchError::Peer {
                program: "nbdcopy".into(),
                detail: String::from_utf8_lossy(&copied.stderr).into(),
            });
        }
        let d: Vec<u64> = after?.iter().zip(&before).map(|(a, b)| a.saturating_sub(*b)).collect();
        // In the order `counts` reads them: ENGINE's, then the machine's two.
        let &[member_writes, full, rcw, rmw, lines_written_back, write_backs] = &d[..] else {
            return Err(BenchError::Peer { program: "amf status".into(), detail: "counters missing".into() });
        };
        let per_mib = member_writes as f64 / WRITE_MIB as f64;
        // One controller keeps no coherency counters: its cache is the engine's own.
        let lines = if n == 1 { "- | -".to_string() } else { format!("{lines_written_back} | {write_backs}") };
        out += &format!(
            "| {n} | {} | {:.0} | {per_mib:.1} | {full} | {rcw} | {rmw} | {lines} |\n",
            if n == 1 { "none" } else { card },
            WRITE_MIB as f64 / seconds.max(1e-9),
        );
    }
    let _ = std::fs::remove_file(&source);
    Ok(out)
}

/// `WRITE_MIB` MiB of pseudo-random bytes (no zero blocks for the client to skip).
fn write_source(path: &Path) -> Result<(), BenchError> {
    let io = |source| BenchError::Io { path: path.display().to_string(), source };
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..WRITE_MIB {
        for chunk in block.chunks_exact_mut(8) {
            // xorshift64: cheap bytes that do not compress to zeros.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&block).map_err(io)?;
    }
    f.flush().map_err(io)
}
