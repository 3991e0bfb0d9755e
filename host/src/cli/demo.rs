//! `amf demo`: the README's main job. A 3-controller RAID5 cluster on member files in a temp
//! folder (each controller its own process with its own simulated card), a mixed read/write
//! workload through all three controllers at once with every read checked against the history
//! of writes, a report of what the coherency method did, a clean stop and a scrub.

use crate::cluster::launch::Launched;
use crate::workload::{self, Spec};
use std::time::Duration;

/// Settings of the demo.
pub struct DemoOptions {
    /// Workload length.
    pub seconds: f64,
    /// Workload seed (printed; the same seed gives the same choices).
    pub seed: u64,
    /// Card of every controller: "sim" or "model".
    pub card: String,
    /// Keep the group directory afterwards.
    pub keep: bool,
    /// Working set in 4 KiB blocks.
    pub blocks: u64,
}

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn counters(group: &Launched) -> Res<Vec<serde_json::Value>> {
    Ok(group
        .status()?
        .into_iter()
        .map(|v| {
            let mut c = v["coherency"]["counters"].clone();
            // Each controller's own member I/O (its own assembly of the group).
            c["engine_member_writes"] = v["engine"]["member_writes"].clone();
            c["engine_member_reads"] = v["engine"]["member_reads"].clone();
            c
        })
        .collect())
}

fn sum(cs: &[serde_json::Value], k: &str) -> u64 {
    cs.iter().map(|c| c[k].as_u64().unwrap_or(0)).sum()
}

/// Runs the demo; an error when anything did not verify.
pub fn run(opts: DemoOptions) -> Res<()> {
    let dir = std::env::temp_dir().join(format!("amf-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    println!("amf demo: 3 controllers serving one RAID5 group of 4 member files in {}", dir.display());
    let mut group = Launched::start(
        &dir,
        3,
        &["--level", "raid5", "--members", "4", "--member-size", "64M", "--card", &opts.card],
    )?;
    for (i, (n, a)) in group.nbd.iter().zip(&group.admin).enumerate() {
        println!("  controller {i}: nbd://{n}/amf admin {a}");
    }
    let nbd = group.nbd.clone();
    let before = counters(&group)?;
    let spec = Spec {
        targets: nbd.clone(),
        clients: 9,
        blocks: opts.blocks,
        base: 0,
        own_regions: false,
        warm_up: std::time::Duration::ZERO,
        write_percent: 30,
        duration: Duration::from_secs_f64(opts.seconds),
        seed: opts.seed,
    };
    println!(
        "amf demo: {} clients (3 per controller), 4 KiB random reads and writes (30% writes) over {} MiB for {:.0} s, seed {}",
        spec.clients,
        (opts.blocks * 4096) >> 20,
        opts.seconds,
        opts.seed
    );
    let outcome = workload::run(&spec);
    let after = counters(&group)?;
    let delta = |k: &str| sum(&after, k).saturating_sub(sum(&before, k));
    let ops = outcome.reads + outcome.writes;
    println!();
    println!(
        "  operations      {ops} ({:.0} ops/s): {} reads, {} writes",
        ops as f64 / outcome.elapsed.as_secs_f64(),
        outcome.reads,
        outcome.writes
    );
    let per: Vec<u64> = (0..3).map(|c| outcome.per_client.iter().skip(c).step_by(3).sum()).collect();
    println!("  per controller  {} / {} / {} operations", per[0], per[1], per[2]);
    println!("  reads served    {} line pieces from the cache (the misses among them below)", delta("hits"));
    println!("  remote hits     {} (misses served from a peer's cache, no member read)", delta("remote_hits"));
    println!("  line fills      {} from the members (misses no peer could serve)", delta("member_reads"));
    println!(
        "  card             {} acquires, {} yields to peers, {} retried",
        delta("acquires"),
        delta("yields"),
        delta("retries")
    );
    println!("  replication     {} writes replicated to a peer before their acknowledgement", delta("replications"));
    println!(
        "  write-back      {} lines written back to the members in {} member writes",
        delta("write_back_lines"),
        delta("member_writes")
    );
    let per_member = |k: &str| -> Vec<u64> {
        (0..after.len())
            .map(|i| {
                let a = after[i][k].as_u64().unwrap_or(0);
                let b = before.get(i).and_then(|v| v[k].as_u64()).unwrap_or(0);
                a.saturating_sub(b)
            })
            .collect()
    };
    let writes = per_member("engine_member_writes");
    println!(
        "  member writes   {} by controller (each writes the members itself; no primary)",
        writes.iter().map(|w| w.to_string()).collect::<Vec<_>>().join(" / ")
    );
    let mut failed = Vec::new();
    if writes.len() == 3 && writes.contains(&0) {
        failed.push(format!("a controller made no member write: {writes:?}"));
    }
    if !outcome.errors.is_empty() {
        failed.push(format!("{} request errors, first: {}", outcome.errors.len(), outcome.errors[0]));
    }
    if !outcome.violations.is_empty() {
        failed.push(format!("{} reads did not verify, first: {}", outcome.violations.len(), outcome.violations[0]));
    }
    println!(
        "  verified        {} reads against the write history: {}",
        outcome.reads,
        if outcome.violations.is_empty() {
            "every read returned the latest acknowledged write or a concurrent one".to_string()
        } else {
            format!("{} VIOLATIONS", outcome.violations.len())
        }
    );
    println!();
    println!("amf demo: stopping the cluster (every controller writes its dirty lines back; the group is marked clean once all have)");
    if !group.stop() {
        failed.push("the cluster did not stop cleanly".into());
    }
    let asm = crate::raid::assemble::assemble(&dir)?;
    let report = crate::raid::scrub::scrub(&asm.array, false, &|_, _| {})?;
    asm.array.close()?;
    println!(
        "amf demo: scrub of the members: {} stripes checked, {} parity mismatches",
        report.checked, report.mismatches
    );
    if report.mismatches != 0 {
        failed.push(format!("scrub found {} mismatches", report.mismatches));
    }
    if failed.is_empty() {
        if !opts.keep {
            let _ = std::fs::remove_dir_all(&dir);
        }
        println!("amf demo: OK");
        Ok(())
    } else {
        println!("amf demo: FAILED (group kept in {})", dir.display());
        Err(failed.join("; ").into())
    }
}
