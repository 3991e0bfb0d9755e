//! Differential test: the RTL ring writer against `model::ring::RingWriter` on seeded random
//! entries, host doorbells (valid and garbage), size changes and refused DMA writes; host memory
//! must end up identical. AMF_SEED=N replays one seed.

use amf_hdl_model::model::ring::RingWriter as Model;
use amf_hdl_model::model::VecMemory;
use amf_verilator::ring_writer::{Posted, RingWriter as Rtl};
use rand::{rngs::SmallRng, Rng, RngCore, SeedableRng};

const BASE: u64 = 0x8000_0000;

/// Host memory that refuses writes while `fail` is set.
#[test]
fn rtl_ring_writer_matches_model() {
    let seeds: Vec<u64> = match std::env::var("AMF_SEED") {
        Ok(s) => vec![s.parse().expect("AMF_SEED must be a number")],
        Err(_) => vec![31, 32, 33],
    };
    for seed in seeds {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut rtl = Rtl::new();
        let mut model = Model { base: BASE, size_log2: 4, ..Model::default() };
        rtl.configure(BASE, 4);
        let mut rtl_mem = VecMemory::new(BASE, 32 << 12);
        let mut model_mem = VecMemory::new(BASE, 32 << 12);
        let (mut written, mut full, mut errors) = (0, 0, 0);
        for op in 0..6000 {
            match rng.gen_range(0..100) {
                0..=1 => {
                    // Reconfigure, sometimes to garbage.
                    let s = if rng.gen_bool(0.8) { rng.gen_range(4..=7) } else { rng.gen() };
                    model.size_log2 = s;
                    rtl.configure(BASE, s);
                }
                2..=79 => {
                    let fail = rng.gen_range(0..30) == 0;
                    rtl_mem.refuse = fail;
                    model_mem.refuse = fail;
                    let mut e = [0u8; 32];
                    rng.fill_bytes(&mut e);
                    let want = match model.post(&mut model_mem, e) {
                        Ok(true) => Posted::Written,
                        Ok(false) => Posted::Full,
                        Err(err) => Posted::Error(err.code() as u8),
                    };
                    let got = rtl.post(&e, &mut rtl_mem).unwrap_or_else(|| panic!("seed {seed} op {op}: RTL hung"));
                    assert_eq!(got, want, "seed {seed} op {op}: post");
                    match got {
                        Posted::Written => written += 1,
                        Posted::Full => full += 1,
                        Posted::Error(_) => errors += 1,
                    }
                }
                _ => {
                    // The host consumes some, or sends garbage.
                    let value = if rng.gen_bool(0.9) {
                        model.prod.wrapping_sub(rng.gen_range(0..=model.used().min(20)))
                    } else {
                        rng.gen()
                    };
                    let want = model.host_consumed(value).err().map(|e| e.code() as u8);
                    assert_eq!(rtl.host_consumed(value), want, "seed {seed} op {op}: doorbell {value}");
                }
            }
            assert_eq!(rtl.prod(), model.prod, "seed {seed} op {op}: producer");
            if op % 50 == 0 {
                assert_eq!(rtl.space(), model.space(), "seed {seed} op {op}: space");
            }
        }
        assert!(rtl_mem.bytes == model_mem.bytes, "seed {seed}: host memory differs");
        assert!(
            written > 100 && full > 10 && errors > 10,
            "seed {seed}: {written} written, {full} full, {errors} errors"
        );
    }
}
