//! Authenticated link frames (the link_auth block): the seal a sending card appends to every
//! frame and the replay window a receiving card keeps per sender. The RTL (`amf_siphash`,
//! `amf_frame_tx`, `amf_frame_check`) computes the same bits; the differential tests compare them.
//!
//! On the wire a frame is the 32-byte link frame (CRC included), then the 16-byte seal: the
//! sender's counter of the epoch and SipHash-2-4 of the first 40 bytes under the cluster's key.
//! SipHash is a MAC built for short messages; its rounds are 64-bit add, rotate and xor, half a
//! round per clock cycle in the RTL. The counter, not the MAC, stops replays: a receiver accepts each
//! counter of a sender once, within a window of `WINDOW_BITS` behind the highest it accepted.

use crate::gen::structs::{LinkFrame, LinkSeal};
use std::hash::Hasher;

/// Bytes of a frame on the wire: the link frame, then its seal.
pub const WIRE_BYTES: usize = LinkFrame::BYTES + LinkSeal::BYTES;
/// Bytes the MAC covers: the link frame and the counter.
pub const MAC_COVERED_BYTES: usize = LinkFrame::BYTES + 8;
/// Counters a receiver remembers behind the highest it accepted (the RTL's `WindowBits`).
pub const WINDOW_BITS: u64 = 32;

/// A frame as the link carries it.
pub type WireFrame = [u8; WIRE_BYTES];

/// SipHash-2-4 of `bytes` under the 128-bit `key` given as four little-endian words, as the
/// link_auth key registers hold it.
pub fn mac(key: [u32; 4], bytes: &[u8]) -> u64 {
    let k0 = key[0] as u64 | (key[1] as u64) << 32;
    let k1 = key[2] as u64 | (key[3] as u64) << 32;
    let mut h = siphasher::sip::SipHasher24::new_with_keys(k0, k1);
    h.write(bytes);
    h.finish()
}

/// The wire form of `frame`: with a seal of `counter` under `key`, or a zero seal without one.
pub fn seal(frame: &[u8; 32], key: Option<[u32; 4]>, counter: u64) -> WireFrame {
    let mut w = [0u8; WIRE_BYTES];
    w[..32].copy_from_slice(frame);
    if let Some(key) = key {
        w[32..40].copy_from_slice(&counter.to_le_bytes());
        let m = mac(key, &w[..MAC_COVERED_BYTES]);
        w[40..48].copy_from_slice(&m.to_le_bytes());
    }
    w
}

/// The encoded link frame a wire frame carries (its first 32 bytes).
pub fn head(wire: &WireFrame) -> [u8; LinkFrame::BYTES] {
    let mut raw = [0u8; LinkFrame::BYTES];
    raw.copy_from_slice(&wire[..LinkFrame::BYTES]);
    raw
}

/// The link frame a wire frame carries (its seal aside).
pub fn link_frame(wire: &WireFrame) -> LinkFrame {
    LinkFrame::decode(&head(wire))
}

/// The seal a wire frame carries.
pub fn link_seal(wire: &WireFrame) -> LinkSeal {
    let mut raw = [0u8; LinkSeal::BYTES];
    raw.copy_from_slice(&wire[LinkFrame::BYTES..]);
    LinkSeal::decode(&raw)
}

/// Whether a wire frame's MAC verifies under `key`.
pub fn verifies(wire: &WireFrame, key: [u32; 4]) -> bool {
    mac(key, &wire[..MAC_COVERED_BYTES]) == link_seal(wire).mac
}

/// The counters of one sender a receiver has accepted in this epoch: the highest, and a bit per
/// counter behind it (bit d: `highest - d`). Counter 0 is never sent, so it starts as seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Highest counter accepted.
    pub highest: u64,
    /// Bit d set: counter `highest - d` accepted (bit 0 is `highest` itself).
    pub seen: u32,
}

impl Default for Window {
    fn default() -> Self {
        Window { highest: 0, seen: 1 }
    }
}

impl Window {
    /// Whether `counter` is new: ahead of the highest, or inside the window and not seen.
    pub fn is_new(&self, counter: u64) -> bool {
        if counter > self.highest {
            return true;
        }
        let behind = self.highest - counter;
        behind < WINDOW_BITS && self.seen & (1 << behind) == 0
    }

    /// Records `counter` (which [`Window::is_new`] accepted).
    pub fn accept(&mut self, counter: u64) {
        if counter > self.highest {
            let ahead = counter - self.highest;
            self.seen = if ahead >= WINDOW_BITS { 0 } else { self.seen << ahead } | 1;
            self.highest = counter;
        } else {
            self.seen |= 1 << (self.highest - counter);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference vector of the SipHash paper (appendix A): key 00..0f, message 00..0e.
    #[test]
    fn siphash_reference_vector() {
        let key = [0x0302_0100, 0x0706_0504, 0x0b0a_0908, 0x0f0e_0d0c];
        let msg: Vec<u8> = (0..15).collect();
        assert_eq!(mac(key, &msg), 0xa129_ca61_49be_45e5);
    }

    #[test]
    fn seal_verifies_only_under_its_key_and_bytes() {
        let key = [1, 2, 3, 4];
        let mut frame = [0u8; 32];
        frame[0] = 7;
        let w = seal(&frame, Some(key), 5);
        assert!(verifies(&w, key));
        assert!(!verifies(&w, [1, 2, 3, 5]));
        for byte in 0..WIRE_BYTES {
            let mut bad = w;
            bad[byte] ^= 0x10;
            assert!(!verifies(&bad, key), "a flipped bit in byte {byte} went unnoticed");
        }
        assert_eq!(seal(&frame, None, 5)[32..], [0u8; 16]);
    }

    #[test]
    fn window_takes_each_counter_once() {
        let mut w = Window::default();
        assert!(!w.is_new(0));
        for c in [3u64, 1, 2, 10, 5, 40] {
            assert!(w.is_new(c), "{c}");
            w.accept(c);
            assert!(!w.is_new(c), "{c} twice");
        }
        assert!(w.is_new(9));
        assert!(!w.is_new(40 - WINDOW_BITS), "behind the window");
        assert!(w.is_new(40 - WINDOW_BITS + 1));
        assert!(!w.is_new(10));
    }
}
