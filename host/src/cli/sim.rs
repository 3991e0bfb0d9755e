//! `amf sim`: runs seeds of the deterministic cluster simulator and reports each failure with
//! the command that replays it.

use crate::amf::sim::{run, SimConfig};

/// What to run.
pub struct SimOptions {
    /// One seed (replay), or None for a range.
    pub seed: Option<u64>,
    /// First seed of the range.
    pub first: u64,
    /// Seeds in the range.
    pub seeds: u64,
    /// JSON lines instead of text.
    pub json: bool,
    /// Break one protocol rule (to see the checkers catch it).
    pub mutate: Option<String>,
}

/// Runs the seeds; an error when any failed.
pub fn main(o: SimOptions) -> Result<(), Box<dyn std::error::Error>> {
    let seeds: Vec<u64> = match o.seed {
        Some(s) => vec![s],
        None => (o.first..o.first.saturating_add(o.seeds)).collect(),
    };
    let (mut passed, mut failed) = (0u64, Vec::new());
    let (mut ops, mut steps, mut filtered) = (0u64, 0u64, 0u64);
    let mutation = match o.mutate.as_deref() {
        None => None,
        Some(name) => Some(crate::amf::Mutation::from_name(name).ok_or_else(|| {
            let names: Vec<&str> = crate::amf::Mutation::ALL.iter().map(|m| m.name()).collect();
            format!("unknown mutation {name:?}; known: {}", names.join(", "))
        })?),
    };
    let start = std::time::Instant::now();
    for seed in seeds {
        let cfg = SimConfig { mutation, ..SimConfig::from_seed(seed) };
        let shape = format!("{} nodes, {:?} x{}", cfg.nodes, cfg.level, cfg.members);
        match run(cfg.clone()) {
            Ok(r) => {
                passed += 1;
                ops += r.ops;
                steps += r.steps;
                filtered += r.filtered;
                if o.json {
                    println!("{}", serde_json::json!({ "seed": seed, "ok": true, "config": cfg, "report": r }));
                } else if o.seed.is_some() {
                    println!(
                        "seed {seed}: OK ({shape}; {} ops, {} reads checked, {} steps, {} us simulated, trace {:016x}; \
                         member writes per controller {:?})",
                        r.ops, r.reads_checked, r.steps, r.sim_us, r.trace_hash, r.member_writes
                    );
                }
            }
            Err(e) => {
                if o.json {
                    println!("{}", serde_json::json!({ "seed": seed, "ok": false, "config": cfg, "error": e }));
                } else {
                    println!("FAIL {e}\n  ({shape})");
                }
                failed.push(seed);
            }
        }
    }
    if !o.json {
        println!(
            "amf sim: {passed} passed, {} failed ({ops} host operations, {steps} machine steps, {filtered} requests \
             answered by presence filters, {:.1} s)",
            failed.len(),
            start.elapsed().as_secs_f64()
        );
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("seeds failed: {failed:?}").into())
    }
}
