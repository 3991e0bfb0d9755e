//! `amf bench cluster`: the coherent cluster against one controller without a card, on the
//! same machine and group shape: 4 KiB random read and write IOPS for 1 and 3 controllers; the
//! latency of a write to unshared data (the line held exclusively: no card message) and to
//! shared data (one write-invalidate round); and card frames and fabric requests per operation
//! for 2 to 8 controllers (model cards: eight Verilator cards would measure the simulator); and
//! the member writes of a sequential write (`write_back.rs`).

use super::BenchError;
use crate::cluster::config::{LINE_KIB_DEFAULT, WRITEBACK_AGE_MS_DEFAULT};
use crate::cluster::launch::Launched;
use crate::nbd::client::Client;
use crate::workload::{self, Spec, BLOCK_BYTES};
use std::path::Path;
use std::time::{Duration, Instant};

fn peer_err(detail: impl ToString) -> BenchError {
    BenchError::Peer { program: "amf cluster".into(), detail: detail.to_string() }
}

fn group(dir: &Path, n: usize, card: &str) -> Result<Launched, BenchError> {
    group_with(dir, n, card, &["--member-size", "128M"])
}

/// `extra` names the member size.
pub(super) fn group_with(dir: &Path, n: usize, card: &str, extra: &[&str]) -> Result<Launched, BenchError> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|source| BenchError::Io { path: dir.display().to_string(), source })?;
    let mut args = vec!["--level", "raid5", "--members", "4", "--card", card];
    args.extend_from_slice(extra);
    Launched::start(dir, n, &args).map_err(peer_err)
}

fn iops(g: &Launched, clients: usize, write_percent: u32, seconds: f64, seed: u64) -> Result<f64, BenchError> {
    let spec = Spec {
        targets: g.nbd.clone(),
        clients,
        blocks: 16384,
        base: 0,
        write_percent,
        // Measured once the caches are warm (what "fits the caches" means): every block read
        // once through each controller (`workload::warm`), then a second of load, as the
        // own-region rows are.
        duration: Duration::from_secs_f64(WARM_UP_S + seconds),
        seed,
        own_regions: false,
        warm_up: Duration::from_secs_f64(WARM_UP_S),
    };
    workload::warm(&spec).map_err(peer_err)?;
    let out = workload::run(&spec);
    if let Some(e) = out.errors.first().or(out.violations.first()) {
        return Err(peer_err(e));
    }
    Ok((out.reads + out.writes) as f64 / out.elapsed.as_secs_f64())
}

pub(super) fn sum(g: &Launched, path: &[&str]) -> Result<u64, BenchError> {
    let st = g.status().map_err(peer_err)?;
    Ok(st.iter().map(|v| path.iter().fold(v, |v, k| &v[*k]).as_u64().unwrap_or(0)).sum())
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(((v.len() as f64 - 1.0) * p) as usize).copied().unwrap_or(0.0)
}

/// Write latency on controller 0: to a line only it uses, and to a line controller 1 has just
/// read (so every write is one invalidate round). Returns (unshared, shared) as (mean, p99) µs.
/// (mean, p99) in µs.
type Latency = (f64, f64);

fn write_latency(g: &Launched, count: usize) -> Result<(Latency, Latency), BenchError> {
    let c = |i: usize| Client::connect(&g.nbd[i], "amf").map_err(peer_err);
    let (mut w, mut r) = (c(0)?, c(1)?);
    let block = vec![0x5au8; BLOCK_BYTES];
    let mut buf = vec![0u8; BLOCK_BYTES];
    let (unshared_at, shared_at) = (1u64 << 20, 2u64 << 20);
    w.write(unshared_at, &block, false).map_err(peer_err)?;
    let mut unshared = Vec::with_capacity(count);
    let mut shared = Vec::with_capacity(count);
    for _ in 0..count {
        let t = Instant::now();
        w.write(unshared_at, &block, false).map_err(peer_err)?;
        unshared.push(t.elapsed().as_secs_f64() * 1e6);
        r.read(shared_at, &mut buf).map_err(peer_err)?;
        let t = Instant::now();
        w.write(shared_at, &block, false).map_err(peer_err)?;
        shared.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    Ok(((mean(&unshared), percentile(&mut unshared, 0.99)), (mean(&shared), percentile(&mut shared, 0.99))))
}

/// One own-region measurement: (ops/s, card frames per op, CPU µs of the cluster per op, the
/// machine's idle share of the run as a cell).
type OwnRow = (f64, f64, f64, String);

/// `OWN_CLIENTS` clients, each on its own region, 50% writes, after a warm-up that brings
/// every client's lines into its controller's cache and its stripes' locks to it (each client
/// reads its region once, then `own_warm_up_s` of load). One run (its history is checked whole); the counters are read as its
/// warm-up ends.
fn own_region_row(g: &Launched, seconds: f64) -> Result<OwnRow, BenchError> {
    let frames = |g: &Launched| sum(g, &["coherency", "card", "counters", "frames_tx"]);
    let spec = Spec {
        targets: g.nbd.clone(),
        clients: OWN_CLIENTS,
        blocks: 16384,
        base: 0,
        write_percent: 50,
        duration: Duration::from_secs_f64(own_warm_up_s() + seconds),
        seed: 10,
        own_regions: true,
        warm_up: Duration::from_secs_f64(own_warm_up_s()),
    };
    workload::warm(&spec).map_err(peer_err)?;
    let (o, (f0, c0, i0)) = std::thread::scope(|s| {
        let h = s.spawn(|| workload::run(&spec));
        std::thread::sleep(Duration::from_secs_f64(own_warm_up_s()));
        let at_warm = (frames(g), g.cpu_seconds(), cpu_idle_total());
        (h.join(), at_warm)
    });
    let o = o.map_err(|_| peer_err("the workload panicked"))?;
    if let Some(e) = o.errors.first().or(o.violations.first()) {
        return Err(peer_err(e));
    }
    let (f1, c1, i1) = (frames(g)?, g.cpu_seconds(), cpu_idle_total());
    let ops = (o.reads + o.writes).max(1) as f64;
    Ok((ops / o.elapsed.as_secs_f64(), f1.saturating_sub(f0?) as f64 / ops, (c1 - c0) * 1e6 / ops, idle_share(i0, i1)))
}

/// Each host its own data: one controller against three (model and Verilator cards), then
/// three with model cards at other line sizes; `quick`: one controller and three with model
/// cards only, the three started with `cluster_args` as well.
pub fn own_regions(base: &Path, seconds: f64, quick: bool, cluster_args: &[String]) -> Result<String, BenchError> {
    let mut out = format!(
        "\nEach client on its own region (each host its own data), 50% writes, {OWN_CLIENTS} clients in all \
         (one request each: the load of 3 clients at queue depth 4), {LINE_KIB_DEFAULT} KiB lines, \
         after a warm-up (each client reads its region once, then {} s of load: the first write-back of a stripe \
         takes its lock, one card round, after the write-back age of {} ms); CPU is every process \
         of the cluster:\n\n",
        own_warm_up_s(),
        WRITEBACK_AGE_MS_DEFAULT
    );
    out += "| controllers | card | IOPS | ratio to 1 | card frames / op | amf CPU µs / op | CPU ratio to 1 | machine idle |\n|---|---|---|---|---|---|---|---|\n";
    let mut one = (0.0, 0.0);
    // The fabric is mutual TLS by default; one row without it shows what TLS costs.
    let rows: [(usize, &str, &[&str]); 4] = [
        (1, "none", &[]),
        (3, "model", &[]),
        (3, "model, fabric without TLS", &["--fabric-tls", "off"]),
        (3, "sim", &[]),
    ];
    let rows = if quick { &rows[..2] } else { &rows[..] };
    for (i, &(n, card, extra)) in rows.iter().enumerate() {
        let kind = if card == "none" { "sim" } else { card.split(',').next().unwrap_or(card) };
        let mut args = vec!["--member-size", "128M"];
        args.extend_from_slice(extra);
        if n > 1 {
            args.extend(cluster_args.iter().map(String::as_str));
        }
        let mut g = group_with(&base.join(format!("own{i}")), n, kind, &args)?;
        let (iops, frames, cpu_us, idle) = own_region_row(&g, seconds)?;
        g.stop();
        if n == 1 {
            one = (iops, cpu_us);
        }
        out += &format!(
            "| {n} | {card} | {iops:.0} | {:.2} | {frames:.3} | {cpu_us:.0} | {:.2} | {idle} |\n",
            iops / one.0,
            cpu_us / one.1
        );
    }
    if quick {
        return Ok(out);
    }
    out += "\nThe same, 3 controllers with model cards, by line size (`--line-kib`):\n\n";
    out += "| line KiB | IOPS | ratio to 1 controller | amf CPU µs / op |\n|---|---|---|---|\n";
    for kib in [4u32, 16, 64] {
        let dir = base.join(format!("line{kib}"));
        let mut g = group_with(&dir, 3, "model", &["--member-size", "128M", "--line-kib", &kib.to_string()])?;
        let (iops, _, cpu_us, _) = own_region_row(&g, seconds)?;
        g.stop();
        out += &format!("| {kib} | {iops:.0} | {:.2} | {cpu_us:.0} |\n", iops / one.0);
    }
    Ok(out)
}

/// One controller's cache at `BIG_CACHE_MIB`: a working set of three quarters of it read twice
/// through controller 0 of 3 (model cards); the second pass must read no member. Returns the
/// markdown row.
fn big_cache(base: &Path) -> Result<String, BenchError> {
    const BIG_CACHE_MIB: u64 = 1024;
    let set_bytes = (BIG_CACHE_MIB * 3 / 4) << 20;
    let dir = base.join("big-cache");
    // RAID5 of 4: three members' worth of data holds the set.
    let member = format!("{}M", set_bytes / 3 / (1 << 20) + 64);
    let mut g = group_with(&dir, 3, "model", &["--member-size", &member, "--cache-mib", &BIG_CACHE_MIB.to_string()])?;
    let fills = |g: &Launched| -> Result<u64, BenchError> {
        let st = g.status().map_err(peer_err)?;
        Ok(st.first().and_then(|v| v["coherency"]["counters"]["member_reads"].as_u64()).unwrap_or(0))
    };
    let mut c = Client::connect(&g.nbd[0], "amf").map_err(peer_err)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut pass = |c: &mut Client| -> Result<f64, BenchError> {
        let t = Instant::now();
        for off in (0..set_bytes).step_by(buf.len()) {
            c.read(off, &mut buf).map_err(peer_err)?;
        }
        Ok(set_bytes as f64 / (1 << 20) as f64 / t.elapsed().as_secs_f64())
    };
    let f0 = fills(&g)?;
    let first = pass(&mut c)?;
    let f1 = fills(&g)?;
    let second = pass(&mut c)?;
    let f2 = fills(&g)?;
    c.disconnect();
    g.stop();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(format!(
        "\nOne controller's cache at {BIG_CACHE_MIB} MiB ({LINE_KIB_DEFAULT} KiB lines): a {} MiB working set read \
         twice through controller 0 of 3 (model cards), 1 MiB reads:\n\n\
         | pass | MiB/s | line fills from the members |\n|---|---|---|\n| first | {first:.0} | {} |\n| second | {second:.0} | {} |\n",
        set_bytes >> 20,
        f1 - f0,
        f2 - f1
    ))
}

/// One shared region 4x larger than one controller's cache (64 MiB caches over 256 MiB), 30%
/// writes, from 9 clients: one controller against 3 with model cards.
pub fn beyond_cache(base: &Path, seconds: f64) -> Result<String, BenchError> {
    const CACHE_MIB: u64 = 64;
    let blocks = ((4 * CACHE_MIB) << 20) / BLOCK_BYTES as u64;
    let mut out = format!(
        "\nOne shared region 4x larger than one cache ({CACHE_MIB} MiB caches over {} MiB), 30% writes, 9 clients:\n\n",
        4 * CACHE_MIB
    );
    out += "| controllers | card | IOPS | ratio to 1 | card frames / op | host yields / op | answered by presence filters / op | amf CPU µs / op | machine idle | read µs | write µs | card round trip µs |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n";
    let mut one = 0.0;
    for (n, card) in [(1usize, "none"), (3, "model")] {
        let dir = base.join(format!("beyond{n}"));
        let cache = CACHE_MIB.to_string();
        let mut g =
            group_with(&dir, n, if n == 1 { "sim" } else { card }, &["--member-size", "128M", "--cache-mib", &cache])?;
        // What the coherency costs per operation: frames the cards sent, yields the hosts made,
        // and requests the cards' presence filters answered without their hosts.
        let counts = |g: &Launched| -> Result<[u64; 3], BenchError> {
            Ok([
                sum(g, &["coherency", "card", "counters", "frames_tx"])?,
                sum(g, &["coherency", "counters", "yields"])?,
                sum(g, &["coherency", "card", "counters", "filtered"])?,
            ])
        };
        let before = if n > 1 { Some(counts(&g)?) } else { None };
        // Where the time goes: whether the machine was busy (the row is CPU-bound) or idle
        // (latency-bound), and the controllers' mean latencies over the run.
        let (cpu0, idle0) = (g.cpu_seconds(), cpu_idle_total());
        let lat0 = LATENCIES.map(|op| latency_total(&g, op));
        let spec = Spec {
            targets: g.nbd.clone(),
            clients: 9,
            blocks,
            base: 0,
            write_percent: 30,
            duration: Duration::from_secs_f64(seconds),
            seed: 20,
            own_regions: false,
            warm_up: Duration::ZERO,
        };
        let o = workload::run(&spec);
        let (cpu1, idle1) = (g.cpu_seconds(), cpu_idle_total());
        let lat1 = LATENCIES.map(|op| latency_total(&g, op));
        let ops = (o.reads + o.writes).max(1) as f64;
        let idle = idle_share(idle0, idle1);
        let mean_us = |i: usize| match (&lat0[i], &lat1[i]) {
            (Ok((n0, t0)), Ok((n1, t1))) if n1 > n0 => format!("{:.0}", (t1 - t0) / (n1 - n0)),
            _ => "-".into(),
        };
        let measured =
            format!("{:.0} | {idle} | {} | {} | {}", (cpu1 - cpu0) * 1e6 / ops, mean_us(0), mean_us(1), mean_us(2));
        let per_op = match before {
            Some(b) => {
                let a = counts(&g)?;
                let d = |i: usize| a[i].saturating_sub(b[i]) as f64 / ops;
                format!("{:.2} | {:.2} | {:.2}", d(0), d(1), d(2))
            }
            None => "- | - | -".to_string(),
        };
        g.stop();
        if let Some(e) = o.errors.first().or(o.violations.first()) {
            return Err(peer_err(e));
        }
        let iops = (o.reads + o.writes) as f64 / o.elapsed.as_secs_f64();
        if n == 1 {
            one = iops;
        }
        out += &format!("| {n} | {card} | {iops:.0} | {:.2} | {per_op} | {measured} |\n", iops / one);
    }
    Ok(out)
}

/// The latencies the beyond-cache row shows (`amf status`'s `latency`).
const LATENCIES: [&str; 3] = ["read", "write", "card_round_trip"];

/// One latency of every controller's `amf status`, summed: (observations, total µs).
fn latency_total(g: &Launched, op: &str) -> Result<(f64, f64), BenchError> {
    let st = g.status().map_err(peer_err)?;
    Ok(st.iter().fold((0.0, 0.0), |(n, t), v| {
        let l = &v["latency"][op];
        let c = l["count"].as_f64().unwrap_or(0.0);
        (n + c, t + c * l["mean_us"].as_f64().unwrap_or(0.0))
    }))
}

/// The machine's idle share between two `cpu_idle_total`s, as a cell ("-" unknown).
fn idle_share(before: Option<(u64, u64)>, after: Option<(u64, u64)>) -> String {
    match (before, after) {
        (Some((i0, t0)), Some((i1, t1))) if t1 > t0 => {
            format!("{:.0}%", 100.0 * i1.saturating_sub(i0) as f64 / (t1 - t0) as f64)
        }
        _ => "-".into(),
    }
}

/// The machine's idle and total CPU time so far, in clock ticks (`/proc/stat`; idle counts
/// I/O wait too); None where there is no such file.
fn cpu_idle_total() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<u64> = line.split_whitespace().skip(1).filter_map(|t| t.parse().ok()).collect();
    let idle = ticks.get(3)? + ticks.get(4).copied().unwrap_or(0);
    Some((idle, ticks.iter().take(8).sum()))
}

/// Clients of the own-region rows.
const OWN_CLIENTS: usize = 12;

/// Seconds of load before a shared-region row is measured.
const WARM_UP_S: f64 = 1.0;

/// Seconds of load before an own-region row is measured: the default write-back age and a
/// second more, so that every stripe's first write-back (which takes its lock, the last card
/// round of a region only one controller uses) comes before the measurement.
fn own_warm_up_s() -> f64 {
    WRITEBACK_AGE_MS_DEFAULT as f64 / 1000.0 + 1.0
}

/// The write-latency rows: through controller 0 of 3, to an unshared and a shared line, with
/// model cards and Verilator cards (with and without the link's authentication).
pub fn latency_rows(base: &Path) -> Result<String, BenchError> {
    let mut out = String::new();
    out += "\nWrite latency through controller 0 of 3, 2000 writes each:\n\n";
    out += "| card | write to | mean µs | p99 µs | card frames per write |\n|---|---|---|---|---|\n";
    // Card frames are authenticated by default; one row without it shows what the MAC costs
    // a shared write on the RTL (its checker takes 34 cycles per frame instead of one).
    let rows: [(&str, &str, &[&str]); 3] = [
        ("model", "model", &[]),
        ("sim", "sim", &[]),
        ("sim", "sim, link without authentication", &["--link-auth", "off"]),
    ];
    for (i, (kind, card, extra)) in rows.into_iter().enumerate() {
        let mut args = vec!["--member-size", "128M"];
        args.extend_from_slice(extra);
        let mut g = group_with(&base.join(format!("lat{i}")), 3, kind, &args)?;
        let frames = |g: &Launched| sum(g, &["coherency", "card", "counters", "frames_tx"]);
        let f0 = frames(&g)?;
        let ((um, up), (sm, sp)) = write_latency(&g, 2000)?;
        let f1 = frames(&g)?;
        // Unshared writes send nothing; the frames are the shared writes' rounds and the
        // reads that re-share the line.
        out += &format!("| {card} | unshared line (held exclusively) | {um:.0} | {up:.0} | 0 (no acquire) |\n");
        out += &format!(
            "| {card} | shared line (read by controller 1 before each write) | {sm:.0} | {sp:.0} | {:.1} incl. the read's |\n",
            (f1 - f0) as f64 / 2000.0
        );
        g.stop();
    }
    Ok(out)
}

/// Runs everything; returns the markdown report and, for 2 to 8 controllers with model cards,
/// (controllers, ops/s) of the mixed workload.
pub fn run(seconds: f64) -> Result<(String, Vec<(f64, f64)>), BenchError> {
    let base = std::env::temp_dir().join(format!("amf-bench-cluster-{}", std::process::id()));
    let mut out = shared_rows(&base, seconds)?;
    out += &own_regions(&base, seconds, false, &[])?;
    out += &beyond_cache(&base, seconds)?;
    out += &big_cache(&base)?;
    out += &latency_rows(&base)?;
    out += &super::write_back::sequential(&base.join("write-back"))?;
    let (rows, points) = scaling(&base, seconds, &[])?;
    out += &rows;
    let _ = std::fs::remove_dir_all(&base);
    out += &format!("\nCommand: `amf bench cluster --seconds {seconds} --record docs/benchmarks.md`\n");
    Ok((out, points))
}

/// One shared region that fits the caches, read and then written by 3 clients per controller:
/// one controller (no card), three with Verilator cards, three with model cards.
pub fn shared_rows(base: &Path, seconds: f64) -> Result<String, BenchError> {
    let mut out = format!(
        "Machine: {}. RAID5 of 4 member files, 4 KiB random I/O over 64 MiB, {seconds} s per row, \
         3 clients per controller (verifying workload: every read checked), after a warm-up: every block \
         read once through each controller, then {WARM_UP_S} s of load.\n\n",
        super::machine()
    );
    out += "| controllers | card | read IOPS | write IOPS | ratio to 1 controller (read / write) |\n|---|---|---|---|---|\n";
    let mut one = (0.0, 0.0);
    for (n, card) in [(1usize, "none"), (3, "sim"), (3, "model")] {
        let mut g = group(&base.join(format!("n{n}-{card}")), n, if card == "none" { "sim" } else { card })?;
        let rd = iops(&g, 3 * n, 0, seconds, 1)?;
        let wr = iops(&g, 3 * n, 100, seconds, 2)?;
        if n == 1 {
            one = (rd, wr);
        }
        out += &format!("| {n} | {card} | {rd:.0} | {wr:.0} | {:.2} / {:.2} |\n", rd / one.0, wr / one.1);
        g.stop();
    }
    Ok(out)
}

/// Messages per operation for 2 to 8 controllers with model cards (each started with
/// `cluster_args` as well), and how each stop went: the markdown rows and (controllers, ops/s).
pub fn scaling(base: &Path, seconds: f64, cluster_args: &[String]) -> Result<(String, Vec<(f64, f64)>), BenchError> {
    let mut points = Vec::new();
    let mut out = "\nMessages per operation, model cards, 50% writes, 3 clients per controller; the stop is \
                   SIGTERM to the cluster right after the run (clean: every controller wrote its dirty lines \
                   back and left):\n\n"
        .to_string();
    out += "| controllers | ops | card frames / op | line acquires / op | stripe acquires / write | fabric messages / op | stop |\n|---|---|---|---|---|---|---|\n";
    for n in 2..=8usize {
        let mut args = vec!["--member-size", "128M"];
        args.extend(cluster_args.iter().map(String::as_str));
        let mut g = group_with(&base.join(format!("m{n}")), n, "model", &args)?;
        let k = |g: &Launched, key: &str| sum(g, &["coherency", "counters", key]);
        let frames = |g: &Launched| sum(g, &["coherency", "card", "counters", "frames_tx"]);
        let fabric = |g: &Launched| sum(g, &["coherency", "fabric", "sent"]);
        let (f0, a0, s0, m0) = (frames(&g)?, k(&g, "acquires")?, k(&g, "stripe_acquires")?, fabric(&g)?);
        let spec = Spec {
            targets: g.nbd.clone(),
            clients: 3 * n,
            blocks: 16384,
            base: 0,
            write_percent: 50,
            duration: Duration::from_secs_f64(seconds),
            seed: n as u64,
            own_regions: false,
            warm_up: Duration::ZERO,
        };
        let o = workload::run(&spec);
        if let Some(e) = o.errors.first().or(o.violations.first()) {
            return Err(peer_err(e));
        }
        let ops = (o.reads + o.writes).max(1) as f64;
        points.push((n as f64, ops / o.elapsed.as_secs_f64()));
        let d = |a: u64, b: u64| a.saturating_sub(b) as f64;
        let (f1, a1, s1, m1) = (frames(&g)?, k(&g, "acquires")?, k(&g, "stripe_acquires")?, fabric(&g)?);
        let stop_at = std::time::Instant::now();
        let clean = g.stop();
        let stop = format!("{} in {:.1} s", if clean { "clean" } else { "NOT clean" }, stop_at.elapsed().as_secs_f64());
        out += &format!(
            "| {n} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {stop} |\n",
            ops,
            d(f1, f0) / ops,
            (d(a1, a0) - d(s1, s0)) / ops,
            d(s1, s0) / (o.writes.max(1) as f64),
            d(m1, m0) / ops
        );
    }
    Ok((out, points))
}

/// IOPS against the number of controllers (model cards, 50% writes).
pub fn plot(scaling: &[(f64, f64)], path: &Path) -> Result<(), BenchError> {
    use super::plot::{line_chart, Axes, Series};
    let series = [Series {
        name: "4 KiB random, 50% writes, 3 clients per controller".into(),
        points: scaling.to_vec(),
        peer: false,
    }];
    let axes = Axes {
        title: "Coherent cluster (model cards): IOPS against controllers",
        x: "controllers",
        y: "IOPS",
        log_x: false,
    };
    line_chart(path, &axes, &series)
}
