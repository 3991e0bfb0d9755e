//! Differential test: seeded random lookups, updates, releases and clears into the RTL sharer
//! table and the reference model; every response and counter must agree. A failing seed is
//! printed; AMF_SEED=N replays it.

use amf_hdl_model::model::sharer_table::SharerTable as Model;
use amf_verilator::sharer_table::SharerTable as Rtl;
use rand::{rngs::SmallRng, Rng, SeedableRng};

fn run(seed: u64, ops: usize) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut rtl = Rtl::new();
    let mut model = Model::new(Rtl::SETS.trailing_zeros(), Rtl::WAYS);
    // A resource pool a few times the table's size: hits, misses and full sets all happen.
    let pool: Vec<u64> = (0..(Rtl::SETS * Rtl::WAYS * 3)).map(|_| rng.gen::<u64>() & 0xffff_ffff_ffff).collect();
    for op in 0..ops {
        let resource = pool[rng.gen_range(0..pool.len())];
        let (want, what) = match rng.gen_range(0..100) {
            0 => {
                rtl.clear();
                model.clear();
                continue;
            }
            1..=40 => (model.lookup(resource), "lookup"),
            41..=60 => (model.update(resource, 0, 0), "release"),
            _ => {
                let (sharers, owner) = (rng.gen::<u8>(), rng.gen_range(0..9u8));
                let got = rtl.request(true, resource, sharers, owner);
                let want = model.update(resource, sharers, owner);
                let got = got.unwrap_or_else(|| panic!("seed {seed} op {op}: RTL did not answer an update"));
                assert_eq!(
                    (got.hit, got.full, got.sharers, got.owner),
                    (want.hit, want.full, want.sharers, want.owner),
                    "seed {seed} op {op}: update {resource:#x}"
                );
                continue;
            }
        };
        let got = if what == "lookup" { rtl.request(false, resource, 0, 0) } else { rtl.request(true, resource, 0, 0) }
            .unwrap_or_else(|| panic!("seed {seed} op {op}: RTL did not answer a {what}"));
        assert_eq!(
            (got.hit, got.full, got.sharers, got.owner),
            (want.hit, want.full, want.sharers, want.owner),
            "seed {seed} op {op}: {what} {resource:#x}"
        );
        if op % 97 == 0 {
            assert_eq!(rtl.counters(), (model.occupancy(), model.full_fallbacks()), "seed {seed} op {op}: counters");
        }
    }
    assert_eq!(rtl.counters(), (model.occupancy(), model.full_fallbacks()), "seed {seed}: final counters");
    assert!(model.full_fallbacks() > 0, "seed {seed}: the test never filled a set");
}

#[test]
fn rtl_matches_model_on_seeded_random_traffic() {
    let seeds: Vec<u64> = match std::env::var("AMF_SEED") {
        Ok(s) => vec![s.parse().expect("AMF_SEED must be a number")],
        Err(_) => vec![1, 2, 3, 0xc0ffee],
    };
    for seed in seeds {
        eprintln!("sharer table differential test: seed {seed}");
        run(seed, 20_000);
    }
}
