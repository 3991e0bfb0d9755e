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
                // Multicast: this node's bit, maybe others'.
                dst: 1 << node | (rng.gen::<u8>() & rng.gen::<u8>()),
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
                2 => f.dst = rng.gen::<u8>() & !(1 << node),
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

/// Back-to-back frames under random back-pressure: one frame per cycle when the consumer takes
/// every cycle (the acks of a broadcast drain in k cycles), and none dropped, duplicated or
/// reordered when it stalls; every verdict still the model's.
#[test]
fn rtl_frame_check_takes_a_frame_per_cycle_and_holds_under_backpressure() {
    let seeds: Vec<u64> = match std::env::var("AMF_SEED") {
        Ok(s) => vec![s.parse().expect("AMF_SEED must be a number")],
        Err(_) => vec![21, 22],
    };
    for seed in seeds {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut rtl = FrameCheck::new();
        let (node, peers, epoch) = (2u8, 0xffu8, 5u32);
        let frames: Vec<[u8; 32]> = (0..400)
            .map(|_| {
                let mut b = sealed(LinkFrame {
                    kind: FrameKind::Ack as u8,
                    src: [0, 1, 3, 4, 5, 6, 7][rng.gen_range(0..7)],
                    dst: 1 << node,
                    epoch: if rng.gen_range(0..6) == 0 { epoch + 1 } else { epoch },
                    seq: rng.gen(),
                    ..Default::default()
                });
                if rng.gen_range(0..6) == 0 {
                    b[rng.gen_range(0..32)] ^= 1;
                }
                b
            })
            .collect();
        let want: Vec<(u8, [u8; 32])> = frames.iter().map(|f| (classify(f, node, peers, epoch) as u8, *f)).collect();
        // Consumer always ready: n frames in n + pipeline depth cycles.
        let (got, cycles) = rtl.stream(&frames, node, peers, epoch, |_| true);
        assert_eq!(got, want, "seed {seed}: verdicts in order");
        assert!(cycles <= frames.len() as u64 + 3, "seed {seed}: {cycles} cycles for {} frames", frames.len());
        // Random stalls: same verdicts, same order.
        let mut stall = SmallRng::seed_from_u64(seed + 1000);
        let (got, _) = rtl.stream(&frames, node, peers, epoch, |_| stall.gen_bool(0.4));
        assert_eq!(got, want, "seed {seed}: verdicts in order under back-pressure");
    }
}
