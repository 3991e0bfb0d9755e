//! Differential test: the RTL frame checker against `model::card::classify_wire` on seeded random
//! frames — valid ones, and ones with a flipped bit, a bad kind, an impossible or foreign source,
//! a wrong destination or another epoch; with link authentication, also frames sealed under
//! another key, replayed frames, counters behind the window, and new epochs that clear the
//! windows. AMF_SEED=N replays one seed.

use amf_hdl_model::gen::structs::{FrameKind, LinkFrame};
use amf_hdl_model::model::card::{classify_wire, Auth, Verdict, NODES_MAX};
use amf_hdl_model::model::link_auth::{head, link_frame, link_seal, seal, Window, WireFrame, WIRE_BYTES};
use amf_verilator::frame_check::FrameCheck;
use rand::{rngs::SmallRng, Rng, SeedableRng};

const KEY: [u32; 4] = [0xdead_beef, 0x0bad_f00d, 0x1234_5678, 0x9abc_def0];

fn with_crc(mut f: LinkFrame) -> [u8; 32] {
    let b = f.encode();
    f.crc = crc32c::crc32c(&b[..28]);
    f.encode()
}

fn seeds(default: &[u64]) -> Vec<u64> {
    match std::env::var("AMF_SEED") {
        Ok(s) => vec![s.parse().expect("AMF_SEED must be a number")],
        Err(_) => default.to_vec(),
    }
}

/// The receive side of the model: its verdict, and its windows moved as the card moves them.
struct ModelRx {
    key: Option<[u32; 4]>,
    windows: [Window; NODES_MAX as usize],
}

impl ModelRx {
    fn verdict(&mut self, w: &WireFrame, node: u8, peers: u8, epoch: u32) -> Verdict {
        let auth = self.key.map(|key| Auth { key, windows: &self.windows });
        let v = classify_wire(w, node, peers, epoch, auth);
        if v == Verdict::Ok && self.key.is_some() {
            self.windows[link_frame(w).src as usize].accept(link_seal(w).counter);
        }
        v
    }
}

fn random_frame(rng: &mut SmallRng, node: u8, epoch: u32) -> LinkFrame {
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
    f
}

#[test]
fn rtl_frame_check_matches_model() {
    for seed in seeds(&[11, 12, 13]) {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut rtl = FrameCheck::new();
        let mut model = ModelRx { key: None, windows: [Window::default(); 8] };
        let mut seen = [0usize; 4];
        for i in 0..5000 {
            let node = rng.gen_range(0..8u8);
            let peers = rng.gen::<u8>() | 1 << node;
            let epoch = rng.gen_range(0..4u32);
            let mut bytes = seal(&with_crc(random_frame(&mut rng, node, epoch)), None, 0);
            if rng.gen_range(0..8) == 0 {
                let bit = rng.gen_range(0..256);
                bytes[bit / 8] ^= 1 << (bit % 8);
            }
            let want = model.verdict(&bytes, node, peers, epoch);
            let (got, out) =
                rtl.check(&bytes, node, peers, epoch).unwrap_or_else(|| panic!("seed {seed} frame {i}: no verdict"));
            assert_eq!(
                got,
                want as u8,
                "seed {seed} frame {i}: {:?} node {node} peers {peers:#x} epoch {epoch}",
                link_frame(&bytes)
            );
            assert_eq!(out[..], bytes[..32], "seed {seed} frame {i}: frame passes through unchanged");
            seen[got as usize] += 1;
        }
        assert!(
            seen.iter().all(|&n| n > 50),
            "seed {seed}: every verdict exercised: {seen:?} ({:?})",
            [Verdict::Ok, Verdict::BadCrc, Verdict::Malformed, Verdict::StaleEpoch]
        );
    }
}

/// With link authentication: senders seal with their own counters; the traffic mixes good
/// frames, frames sealed under another key (outside the cluster), changed bytes anywhere in the
/// 48 (forged), frames sent again (replayed), old epochs' frames, and epoch changes that clear
/// the windows. Every verdict is the model's and each kind is seen.
#[test]
fn rtl_frame_check_authenticates_like_the_model() {
    for seed in seeds(&[31, 32]) {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut rtl = FrameCheck::new();
        rtl.set_auth(Some(KEY));
        let mut model = ModelRx { key: Some(KEY), windows: [Window::default(); 8] };
        let (node, peers) = (3u8, 0xffu8);
        let mut epoch = 1u32;
        let mut counters = [0u64; 8];
        let mut sent: Vec<WireFrame> = vec![];
        let mut seen = [0usize; 6];
        for i in 0..3000 {
            let bytes = match rng.gen_range(0..10) {
                0 if !sent.is_empty() => sent[rng.gen_range(0..sent.len())],
                1 if rng.gen_range(0..10) == 0 => {
                    // A new epoch: counters and windows start over on both sides.
                    epoch += 1;
                    counters = [0; 8];
                    rtl.restart();
                    model.windows = [Window::default(); 8];
                    continue;
                }
                k => {
                    let mut f = random_frame(&mut rng, node, epoch);
                    if k < 6 {
                        f.src = [0, 1, 2, 4, 5, 6, 7][rng.gen_range(0..7)];
                        f.kind = FrameKind::Ack as u8;
                        f.dst = 1 << node;
                        f.epoch = if rng.gen_range(0..8) == 0 { epoch.wrapping_sub(1) } else { epoch };
                    }
                    let s = f.src as usize % 8;
                    counters[s] += if rng.gen_range(0..16) == 0 { rng.gen_range(2..60) } else { 1 };
                    let key = if k == 9 { [1, 2, 3, 4] } else { KEY };
                    let mut w = seal(&with_crc(f), Some(key), counters[s]);
                    if k == 8 {
                        let byte = rng.gen_range(28..WIRE_BYTES);
                        w[byte] ^= 1 << rng.gen_range(0..8);
                    }
                    sent.push(w);
                    w
                }
            };
            let want = model.verdict(&bytes, node, peers, epoch);
            let (got, _) =
                rtl.check(&bytes, node, peers, epoch).unwrap_or_else(|| panic!("seed {seed} frame {i}: no verdict"));
            assert_eq!(got, want as u8, "seed {seed} frame {i}: {:?} seal {:02x?}", link_frame(&bytes), &bytes[32..]);
            seen[got as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 20), "seed {seed}: every verdict exercised: {seen:?}");
    }
}

/// Back-to-back frames under random back-pressure: one frame per cycle when the consumer takes
/// every cycle (the acks of a broadcast drain in k cycles), and none dropped, duplicated or
/// reordered when it stalls; every verdict still the model's. With authentication, one frame
/// per MAC.
#[test]
fn rtl_frame_check_takes_a_frame_per_cycle_and_holds_under_backpressure() {
    for seed in seeds(&[21, 22]) {
        for key in [None, Some(KEY)] {
            let mut rng = SmallRng::seed_from_u64(seed);
            let (node, peers, epoch) = (2u8, 0xffu8, 5u32);
            let mut counters = [0u64; 8];
            let frames: Vec<WireFrame> = (0..400)
                .map(|_| {
                    let src = [0, 1, 3, 4, 5, 6, 7][rng.gen_range(0..7)];
                    counters[src as usize] += 1;
                    let mut b = seal(
                        &with_crc(LinkFrame {
                            kind: FrameKind::Ack as u8,
                            src,
                            dst: 1 << node,
                            epoch: if rng.gen_range(0..6) == 0 { epoch + 1 } else { epoch },
                            seq: rng.gen(),
                            ..Default::default()
                        }),
                        key,
                        counters[src as usize],
                    );
                    if rng.gen_range(0..6) == 0 {
                        b[rng.gen_range(0..32)] ^= 1;
                    }
                    b
                })
                .collect();
            let want = |_: ()| {
                let mut model = ModelRx { key, windows: [Window::default(); 8] };
                frames.iter().map(|f| (model.verdict(f, node, peers, epoch) as u8, head(f))).collect::<Vec<_>>()
            };
            // Consumer always ready: n frames in n + pipeline depth cycles (n MACs with a key: 34
            // cycles each, this checker being built with half rounds, build.rs).
            let mut rtl = FrameCheck::new();
            rtl.set_auth(key);
            let (got, cycles, busy_wrong) = rtl.stream(&frames, node, peers, epoch, |_| true);
            assert_eq!(got, want(()), "seed {seed} key {}: verdicts in order", key.is_some());
            assert_eq!(busy_wrong, 0, "seed {seed}: cycles whose busy output said otherwise than the frames inside");
            let per_frame = if key.is_some() { 34 } else { 1 };
            if key.is_some() {
                assert!(cycles > 32 * frames.len() as u64, "seed {seed}: half rounds take 32 cycles a MAC");
            }
            assert!(
                cycles <= per_frame * frames.len() as u64 + 3,
                "seed {seed}: {cycles} cycles for {} frames",
                frames.len()
            );
            // Random stalls: same verdicts, same order.
            let mut rtl = FrameCheck::new();
            rtl.set_auth(key);
            let mut stall = SmallRng::seed_from_u64(seed + 1000);
            let (got, _, busy_wrong) = rtl.stream(&frames, node, peers, epoch, |_| stall.gen_bool(0.4));
            assert_eq!(got, want(()), "seed {seed} key {}: verdicts in order under back-pressure", key.is_some());
            assert_eq!(busy_wrong, 0, "seed {seed}: busy under back-pressure");
        }
    }
}
