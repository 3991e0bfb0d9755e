//! Differential test: the RTL frame checker against `model::card::classify` on seeded random
//! frames — valid ones, and ones with a flipped bit, a bad kind, an impossible or foreign source,
//! a wrong destination or another epoch. AMF_SEED=N replays one seed.

use amf_hdl_model::gen::structs::{FrameKind, LinkFrame};
use amf_hdl_model::model::card::{classify, Verdict};
use amf_verilator::frame_check::FrameCheck;
use rand::{rngs::SmallRng, Rng, SeedableRng};

fn sealed(mut f: LinkFrame) -> [u8; 32] {
    let b = f.encode();
    f.crc = crc32c::crc32c(&b[..28]);
    f.encode()
}

#[test]
fn rtl_frame_check_matches_model() {
    let seeds: Vec<u64> = match std::env::var("AMF_SEED") {
        Ok(s) => vec![s.parse().expect("AMF_SEED must be a number")],
        Err(_) => vec![11, 12, 13],
    };
    for seed in seeds {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut rtl = FrameCheck::new();
        let mut seen = [0usize; 4];
        for i in 0..5000 {
            let node = rng.gen_range(0..8u8);
            let peers = rng.gen::<u8>() | 1 << node;
            let epoch = rng.gen_range(0..4u32);
            let kinds = FrameKind::ALL;
            let mut f = LinkFrame {
                kind: kinds[rng.gen_range(0..kinds.len())] as u8,
                src: rng.gen_range(0..8),
                dst: node,
                epoch,
                seq: rng.gen(),
                stamp: rng.gen(),
                resource: rng.gen(),
                sharers: rng.gen(),
                owner: rng.gen_range(0..9),
                ..Default::default()
            };
            match rng.gen_range(0..8) {
                0 => f.kind = rng.gen(),
                1 => f.src = rng.gen(),
                2 => f.dst = rng.gen(),
                3 => f.epoch = rng.gen_range(0..4),
                _ => {}
            }
            let mut bytes = sealed(f);
            if rng.gen_range(0..8) == 0 {
                let bit = rng.gen_range(0..256);
                bytes[bit / 8] ^= 1 << (bit % 8);
            }
            let want = classify(&bytes, node, peers, epoch);
            let (got, out) =
                rtl.check(&bytes, node, peers, epoch).unwrap_or_else(|| panic!("seed {seed} frame {i}: no verdict"));
            assert_eq!(
                got,
                want as u8,
                "seed {seed} frame {i}: {:?} node {node} peers {peers:#x} epoch {epoch}",
                LinkFrame::decode(&bytes)
            );
            assert_eq!(out, bytes, "seed {seed} frame {i}: frame passes through unchanged");
            seen[got as usize] += 1;
        }
        assert!(
            seen.iter().all(|&n| n > 50),
            "seed {seed}: every verdict exercised: {seen:?} ({:?})",
            [Verdict::Ok, Verdict::BadCrc, Verdict::Malformed, Verdict::StaleEpoch]
        );
    }
}
