//! Frames from the card link into the reference model of the card (what the RTL's
//! `amf_frame_check` and engine do, differential-tested against it elsewhere), with link
//! authentication on. Each 49-byte piece of the input is one wire frame; its first byte says
//! whether to seal it first (a valid CRC, the current epoch, addressed to this card, and a MAC
//! under the cluster key over the counter the input gives, so replays and new counters both
//! occur), so the fuzzer also reaches the replay window and the engine behind the checks.
//! Checks: never a panic, and every frame the card drops is counted.
#![no_main]

use amf_hdl_model::gen::regs;
use amf_hdl_model::gen::structs::LinkFrame;
use amf_hdl_model::model::card::Card;
use amf_hdl_model::model::link_auth::{seal, WireFrame, WIRE_BYTES};
use amf_hdl_model::model::VecMemory;
use libfuzzer_sys::fuzz_target;

const BASE: u64 = 0x1000_0000;
const EPOCH: u32 = 3;
const KEY: [u32; 4] = [0x0f0e_0d0c, 0x0b0a_0908, 0x0706_0504, 0x0302_0100];

fn card() -> Card {
    use regs::*;
    let mut c = Card::new();
    let setup = [
        (device::BASE + device::node::OFFSET, device::node::peers::set(0, 0x0f)),
        (device::BASE + device::epoch::OFFSET, EPOCH),
        (device::BASE + device::ack_timeout::OFFSET, 1 << 12),
        (cmd_ring::BASE + cmd_ring::base_lo::OFFSET, BASE as u32),
        (cmd_ring::BASE + cmd_ring::size_log2::OFFSET, 6),
        (cpl_ring::BASE + cpl_ring::base_lo::OFFSET, (BASE + 0x4000) as u32),
        (cpl_ring::BASE + cpl_ring::size_log2::OFFSET, 6),
        (evt_ring::BASE + evt_ring::base_lo::OFFSET, (BASE + 0x8000) as u32),
        (evt_ring::BASE + evt_ring::size_log2::OFFSET, 6),
        (link_auth::BASE + link_auth::key_0::OFFSET, KEY[0]),
        (link_auth::BASE + link_auth::key_1::OFFSET, KEY[1]),
        (link_auth::BASE + link_auth::key_2::OFFSET, KEY[2]),
        (link_auth::BASE + link_auth::key_3::OFFSET, KEY[3]),
        (link_auth::BASE + link_auth::ctrl::OFFSET, 1),
        (device::BASE + device::ctrl::OFFSET, 1),
    ];
    for (a, v) in setup {
        c.mmio_write(a, v);
    }
    c
}

fuzz_target!(|data: &[u8]| {
    let mut mem = VecMemory::new(BASE, 0x10000);
    let mut c = card();
    for piece in data.chunks(1 + WIRE_BYTES) {
        let Some((&how, frame)) = piece.split_first() else { continue };
        let mut raw = frame.to_vec();
        if let (1, Ok(w)) = (how & 1, <WireFrame>::try_from(frame)) {
            // Addressed to this card, in its epoch, with the CRC-32C of bytes 0..28, sealed
            // under the key with the counter of bytes 32..40 (small, so that counters repeat).
            let mut b = [0u8; 32];
            b.copy_from_slice(&w[..32]);
            let mut f = LinkFrame::decode(&b);
            f.dst |= 1;
            f.epoch = EPOCH;
            f.crc = crc32c::crc32c(&f.encode()[..28]);
            let counter = u64::from(w[32] & 0x3f);
            raw = seal(&f.encode(), Some(KEY), counter).to_vec();
        }
        let dropped = |c: &Card| {
            let s = c.stats();
            [s.crc_errors, s.malformed, s.stale_epoch, s.forged, s.replayed].iter().fold(0u32, |a, x| a.wrapping_add(*x))
        };
        let before = dropped(&c);
        let taken = c.receive(&raw, &mut mem);
        assert_eq!(dropped(&c).wrapping_sub(before), u32::from(!taken), "a dropped frame is counted once");
        c.tick(u64::from(how >> 1) + 1, &mut mem);
        let _ = c.take_outgoing();
    }
});
