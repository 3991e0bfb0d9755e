//! The transmit stage seals frames exactly as the model does (CRC-32C of bytes 0..28 in the crc
//! field, everything else untouched), under link back-pressure, and the receive checker accepts
//! what it sends.

use amf_hdl_model::gen::structs::LinkFrame;
use amf_hdl_model::model::card::{classify, Verdict};
use amf_verilator::frame_check::FrameCheck;
use amf_verilator::frame_tx::FrameTx;
use rand::{rngs::SmallRng, Rng, RngCore, SeedableRng};

#[test]
fn rtl_frame_tx_seals_like_the_model() {
    let mut rng = SmallRng::seed_from_u64(51);
    let mut tx = FrameTx::new();
    let mut rx = FrameCheck::new();
    for i in 0..3000 {
        let mut raw = [0u8; 32];
        rng.fill_bytes(&mut raw);
        let mut want = raw;
        let crc = crc32c::crc32c(&raw[..28]);
        want[28..].copy_from_slice(&crc.to_le_bytes());
        let got = tx.send(&raw, rng.gen_range(0..4)).unwrap_or_else(|| panic!("frame {i}: TX hung"));
        assert_eq!(got, want, "frame {i}");
        // A well-formed frame through TX is accepted by RX.
        let mut f = LinkFrame::decode(&raw);
        f.kind = 3;
        f.src = 1;
        f.dst = 1; // node 0
        f.epoch = 9;
        let sealed = tx.send(&f.encode(), 0).unwrap_or_else(|| panic!("frame {i}: TX hung"));
        assert_eq!(classify(&sealed, 0, 0b11, 9), Verdict::Ok);
        assert_eq!(
            rx.check(&sealed, 0, 0b11, 9).map(|v| v.0),
            Some(Verdict::Ok as u8),
            "frame {i}: RX refuses TX's frame"
        );
    }
}
