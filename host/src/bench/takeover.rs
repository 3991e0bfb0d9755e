//! `amf bench takeover`: how long hosts wait when a controller dies or stops. A 3-controller
//! RAID6 cluster; one client streams 4 KiB writes through controller 0 (write-back: its lines
//! stay dirty in its cache, replicated to controller 1); after a while controller 0 gets kill
//! -9 (its life lock frees at once) or SIGSTOP (only its lease on the members can tell the
//! others, once it expired; it gets SIGCONT after the round and fences itself), and a client of each survivor reads the block the writer last had acknowledged (a line the
//! dead controller held Modified, so the read needs the takeover) until it completes. The
//! time from the kill to the later of the two answers is the service gap; the survivors' own
//! time from the proof of death to the new membership is in their status. Each round starts a
//! fresh cluster.

use super::BenchError;
use crate::cluster::launch::Launched;
use crate::nbd::client::Client;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bytes the writer cycles over.
const SPAN_BYTES: u64 = 8 << 20;
const BLOCK: usize = 4096;
/// How long the writer runs before the kill.
const WARM: Duration = Duration::from_millis(700);

fn peer_err(detail: impl ToString) -> BenchError {
    BenchError::Peer { program: "amf cluster".into(), detail: detail.to_string() }
}

/// How controller 0 goes.
#[derive(Clone, Copy, Debug)]
enum Stop {
    Kill,
    Pause,
}

impl Stop {
    fn signal(self) -> libc::c_int {
        match self {
            Stop::Kill => libc::SIGKILL,
            Stop::Pause => libc::SIGSTOP,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Stop::Kill => "kill -9",
            Stop::Pause => "SIGSTOP",
        }
    }
}

/// One round: (service gap ms, survivors' view ms, lines taken over).
fn round(dir: &Path, card: &str, how: Stop) -> Result<(f64, u64, u64), BenchError> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|source| BenchError::Io { path: dir.display().to_string(), source })?;
    let mut g =
        Launched::start(dir, 3, &["--level", "raid6", "--members", "5", "--member-size", "64M", "--card", card])
            .map_err(peer_err)?;
    let pid = g.status().map_err(peer_err)?[0]["pid"].as_i64().ok_or_else(|| peer_err("no pid in /status"))?;
    let last = Arc::new(AtomicU64::new(u64::MAX));
    let stop = Arc::new(AtomicBool::new(false));
    let mut w = Client::connect(&g.nbd[0], "amf").map_err(peer_err)?;
    let writer = {
        let (last, stop) = (last.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut at = 0u64;
            let mut block = vec![0u8; BLOCK];
            while !stop.load(Relaxed) {
                block[..8].copy_from_slice(&at.to_le_bytes());
                if w.write(at, &block, false).is_err() {
                    return;
                }
                last.store(at, Relaxed);
                at = (at + BLOCK as u64) % SPAN_BYTES;
            }
        })
    };
    std::thread::sleep(WARM);
    // SAFETY: kill(2) of a controller process this run started; no memory is involved.
    unsafe {
        libc::kill(pid as libc::pid_t, how.signal());
    }
    let killed = Instant::now();
    stop.store(true, Relaxed);
    let at = last.load(Relaxed);
    if at == u64::MAX {
        return Err(peer_err("the writer wrote nothing before the kill"));
    }
    // Through each survivor at once: controller 1 holds the replica (it serves the line itself
    // once it took it over), controller 2 has to take the line from controller 1.
    let readers: Vec<_> = g.nbd[1..]
        .iter()
        .map(|addr| {
            let addr = addr.clone();
            std::thread::spawn(move || -> Result<f64, BenchError> {
                let mut buf = vec![0u8; BLOCK];
                loop {
                    let got = Client::connect(&addr, "amf").and_then(|mut r| r.read(at, &mut buf));
                    match got {
                        Ok(()) => break,
                        Err(_) if killed.elapsed() < Duration::from_secs(60) => {}
                        Err(e) => return Err(peer_err(format!("no answer through {addr} within 60 s: {e}"))),
                    }
                }
                if buf[..8] != at.to_le_bytes() {
                    return Err(peer_err(format!("the block at {at} lost its acknowledged write")));
                }
                Ok(killed.elapsed().as_secs_f64() * 1e3)
            })
        })
        .collect();
    let mut gaps = Vec::new();
    for r in readers {
        gaps.push(r.join().map_err(|_| peer_err("a reader panicked"))??);
    }
    let gap_ms = gaps.iter().copied().fold(0.0, f64::max);
    if let Stop::Pause = how {
        // It resumes, finds its lease over and fences itself; its client's write fails.
        // SAFETY: as above.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGCONT);
        }
    }
    let _ = writer.join();
    let mut survivors = Vec::new();
    for a in &g.admin[1..] {
        let (_, body) = crate::cluster::admin::request(a, "GET", "/status", None).map_err(peer_err)?;
        survivors.push(serde_json::from_str::<serde_json::Value>(&body).map_err(peer_err)?);
    }
    let view_ms = survivors.iter().map(|s| s["coherency"]["takeover"]["view_ms"].as_u64().unwrap_or(0)).max();
    let taken = survivors.iter().map(|s| s["coherency"]["counters"]["lines_taken_over"].as_u64().unwrap_or(0)).sum();
    g.stop();
    Ok((gap_ms, view_ms.unwrap_or(0), taken))
}

/// Runs `rounds` rounds per card kind; returns the markdown report.
pub fn run(rounds: usize) -> Result<String, BenchError> {
    let base = std::env::temp_dir().join(format!("amf-bench-takeover-{}", std::process::id()));
    let mut out = format!(
        "Machine: {}. RAID6 of 5 member files, 3 controllers, one client streaming 4 KiB writes \
         (no FLUSH) through controller 0, kill -9 (proof: its life lock) or SIGSTOP (proof: its \
         lease expires, 4 s) of controller 0 after {} ms; {rounds} rounds per card and kind, each \
         on a fresh cluster.\n\n",
        super::machine(),
        WARM.as_millis()
    );
    out += "| card | controller 0 | signal to an answer through each survivor, ms (min / mean / max) | proof to new membership, ms (max) | dirty lines taken over (mean) |\n|---|---|---|---|---|\n";
    for (card, how) in [("sim", Stop::Kill), ("model", Stop::Kill), ("sim", Stop::Pause), ("model", Stop::Pause)] {
        let mut gaps = Vec::new();
        let (mut view_max, mut taken) = (0, 0);
        for i in 0..rounds {
            let (gap, view, t) = round(&base.join(format!("{card}-{i}")), card, how)?;
            gaps.push(gap);
            view_max = view_max.max(view);
            taken += t;
        }
        let mean = gaps.iter().sum::<f64>() / gaps.len().max(1) as f64;
        let min = gaps.iter().copied().fold(f64::MAX, f64::min);
        let max = gaps.iter().copied().fold(0.0, f64::max);
        out += &format!(
            "| {card} | {} | {min:.0} / {mean:.0} / {max:.0} | {view_max} | {:.1} |\n",
            how.name(),
            taken as f64 / rounds.max(1) as f64
        );
    }
    let _ = std::fs::remove_dir_all(&base);
    out += &format!("\nCommand: `amf bench takeover --rounds {rounds} --record docs/benchmarks.md`\n");
    Ok(out)
}
