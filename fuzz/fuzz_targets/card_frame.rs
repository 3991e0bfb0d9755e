//! Frames from the card link into the reference model of the card (what the RTL's
//! `amf_frame_check` and engine do, differential-tested against it elsewhere). Each 33-byte
//! piece of the input is one frame; its first byte says whether to seal it first (a valid CRC,
//! the current epoch, addressed to this card), so the fuzzer also reaches the engine behind the
//! checks. Checks: never a panic, and every frame the card drops is counted.
#![no_main]

use amf_hdl_model::gen::regs;
use amf_hdl_model::gen::structs::LinkFrame;
use amf_hdl_model::model::card::Card;
use amf_hdl_model::model::VecMemory;
use libfuzzer_sys::fuzz_target;

const BASE: u64 = 0x1000_0000;
const EPOCH: u32 = 3;

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
    for piece in data.chunks(33) {
        let Some((&how, frame)) = piece.split_first() else { continue };
        let mut raw = frame.to_vec();
        if let (1, Ok(b)) = (how & 1, <[u8; 32]>::try_from(frame)) {
            // Addressed to this card, in its epoch, with the CRC-32C of bytes 0..28.
            let mut f = LinkFrame::decode(&b);
            f.dst |= 1;
            f.epoch = EPOCH;
            f.crc = crc32c::crc32c(&f.encode()[..28]);
            raw = f.encode().to_vec();
        }
        let dropped = |c: &Card| {
            let s = c.stats();
            s.crc_errors.wrapping_add(s.malformed).wrapping_add(s.stale_epoch)
        };
        let before = dropped(&c);
        let taken = c.receive(&raw, &mut mem);
        assert_eq!(dropped(&c).wrapping_sub(before), u32::from(!taken), "a dropped frame is counted once");
        c.tick(u64::from(how >> 1) + 1, &mut mem);
        let _ = c.take_outgoing();
    }
});
