//! The simulator in CI: a few hundred seeds pass, a seed replays identically, and each broken
//! protocol rule is caught by a checker.

use super::{run, SimConfig};
use crate::amf::Mutation;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// `AMF_SIM_SEEDS` seeds (300 by default) from `AMF_SIM_FIRST` (1), on two threads.
#[test]
fn seeds_pass() {
    let first = env_u64("AMF_SIM_FIRST", 1);
    let count = env_u64("AMF_SIM_SEEDS", 300);
    let threads = 2;
    let failures: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    (first + t..first + count)
                        .step_by(threads as usize)
                        .filter_map(|seed| run(SimConfig::from_seed(seed)).err())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap_or_else(|_| vec!["a simulator thread panicked".into()])).collect()
    });
    assert!(failures.is_empty(), "{} of {count} seeds failed:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn a_seed_replays_identically() {
    let a = run(SimConfig::from_seed(7)).expect("seed 7 passes");
    let b = run(SimConfig::from_seed(7)).expect("seed 7 passes again");
    assert_eq!(a.trace_hash, b.trace_hash);
    assert_eq!((a.steps, a.sim_us, a.ops), (b.steps, b.sim_us, b.ops));
    // Different seeds make different runs.
    let c = run(SimConfig::from_seed(8)).expect("seed 8 passes");
    assert_ne!(a.trace_hash, c.trace_hash);
}

/// Seeds past the CI range that once failed, each for a hole since closed: 851, a restarted
/// controller whose assembly predated a member failure recorded while it was out read the
/// failed member's stale data (it now asks for the group and reads the record before its
/// first member I/O); 4790, a host's flush that returned with lines a survivor took over from
/// a controller that died during it still dirty (a flush under way now covers the lines taken
/// over, and a flush of every controller asks the survivors again).
#[test]
fn seeds_that_found_holes_pass() {
    for seed in [851, 3732, 4790] {
        if let Err(e) = run(SimConfig::from_seed(seed)) {
            panic!("{e}");
        }
    }
}

#[test]
fn every_controller_writes_the_members_itself() {
    let r = run(SimConfig::from_seed(3)).expect("seed 3 passes");
    assert!(r.member_writes.iter().all(|w| *w > 0), "member writes per controller: {:?}", r.member_writes);
}

/// Seeds searched for a run that catches a broken rule. Most are caught in the first few; a
/// member failure that is finished before it is recorded needs a peer to read the failed
/// member's stale data in the short window before the record reaches it (seed 515 since
/// session 24's timing changes; seed 27 before them).
const MUTATION_SEEDS_MAX: u64 = 600;

/// Broken rules no seed of the simulator's catches, each caught by the model checker in a
/// small scope instead. `no-flush-again` (a survivor answers a flush of every controller before
/// it takes over a dead controller's dirty line): seed 4790 found the hole and caught the rule
/// broken until session 26's write-back runs changed its timing; seeds 1-6000 do not catch it
/// since, and `model_check::tests::a_flush_covers_what_a_controller_that_died_during_it_had_acknowledged`
/// and `a_flush_answered_before_a_takeover_asks_the_survivor_again` do.
const CAUGHT_BY_THE_MODEL_CHECKER_ONLY: [Mutation; 1] = [Mutation::NoFlushAgain];

#[test]
fn each_broken_rule_is_caught() {
    for m in Mutation::ALL.into_iter().filter(|m| !CAUGHT_BY_THE_MODEL_CHECKER_ONLY.contains(m)) {
        let caught = std::sync::atomic::AtomicU64::new(u64::MAX);
        std::thread::scope(|s| {
            for t in 0..2u64 {
                let caught = &caught;
                s.spawn(move || {
                    let mut seed = 1 + t;
                    while seed <= MUTATION_SEEDS_MAX && seed < caught.load(std::sync::atomic::Ordering::Relaxed) {
                        if run(SimConfig { mutation: Some(m), ..SimConfig::from_seed(seed) }).is_err() {
                            caught.fetch_min(seed, std::sync::atomic::Ordering::Relaxed);
                        }
                        seed += 2;
                    }
                });
            }
        });
        let seed = caught.into_inner();
        assert!(seed <= MUTATION_SEEDS_MAX, "{} was not caught in {MUTATION_SEEDS_MAX} seeds", m.name());
        eprintln!("{} caught by seed {seed}", m.name());
    }
}

#[test]
fn the_online_scrub_checks_every_stripe_beside_the_clients() {
    let cfg = SimConfig::from_seed(1);
    assert!(cfg.scrub_node.is_some(), "seed 1 scrubs online");
    let r = run(cfg).expect("seed 1 passes");
    assert!(r.scrubbed_online > 0, "stripes checked online: {}", r.scrubbed_online);
}

/// Seeds searched for a power cut that catches member writes in flight (where the cut falls
/// depends on every timing of the run, so no one seed keeps doing it as the protocol changes).
const POWER_CUT_SEEDS_MAX: u64 = 400;

#[test]
fn a_power_cut_loses_only_what_was_not_durable_and_resyncs_only_the_marked_regions() {
    let mut cuts = 0;
    for seed in 1..=POWER_CUT_SEEDS_MAX {
        let cfg = SimConfig::from_seed(seed);
        if cfg.faults.power_cut.is_none() {
            continue;
        }
        cuts += 1;
        // Every run checks that nothing acknowledged is lost and the group resyncs clean.
        let r = run(cfg).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        let p = r.power_cut.unwrap_or_else(|| panic!("seed {seed}: the power was not cut"));
        assert!(p.resynced_stripes < p.stripes, "seed {seed}: a power cut resynced every stripe: {p:?}");
        if p.lost_writes > 0 && p.resynced_stripes > 0 {
            eprintln!("seed {seed}: {p:?}");
            return;
        }
    }
    panic!(
        "none of the {cuts} power cuts in {POWER_CUT_SEEDS_MAX} seeds lost member writes in flight in marked regions"
    );
}
