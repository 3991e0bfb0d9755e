//! The coherency card as software: register and struct definitions generated from
//! `hdl-model/spec`, and the reference model the RTL is checked against.
#![deny(missing_docs)]

pub mod model;

/// Generated from hdl-model/spec by amf-regen.
pub mod gen {
    /// The register map.
    #[allow(clippy::all)]
    pub mod regs {
        include!("gen/regs.rs");
    }
    /// Frames and ring descriptors.
    #[allow(clippy::all)]
    pub mod structs {
        include!("gen/structs.rs");
    }
}

#[cfg(test)]
mod tests {
    use super::gen::{regs, structs};

    #[test]
    fn blocks_chain_and_fields_fit() {
        assert_eq!(regs::BLOCKS.len() as u32 * regs::BLOCK_BYTES, regs::BAR_BYTES);
        assert_eq!(regs::BLOCKS[0].type_id, regs::device::TYPE);
        for b in regs::BLOCKS {
            for r in b.regs {
                assert!(r.offset >= 0x0c && r.offset < regs::BLOCK_BYTES);
                for f in r.fields {
                    assert!(f.lsb + f.width <= 32);
                }
            }
        }
        let status = regs::device::status::error_code::set(0, regs::device::status::error_code::DMA_ERROR);
        assert_eq!(status, 3 << 8);
        assert_eq!(regs::device::status::error_code::get(status | 1), 3);
    }

    #[test]
    fn structs_round_trip_and_lay_out_little_endian() {
        let f = structs::LinkFrame {
            kind: structs::FrameKind::Invalidate as u8,
            src: 3,
            dst: 0xff,
            epoch: 0x1122_3344,
            resource: 0x0102_0304_0506_0708,
            crc: 0xdead_beef,
            ..Default::default()
        };
        let b = f.encode();
        assert_eq!(b[0], 2);
        assert_eq!(b[1], 3);
        assert_eq!(b[2], 0xff);
        assert_eq!(&b[4..8], &0x1122_3344u32.to_le_bytes());
        assert_eq!(&b[16..24], &0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(&b[28..32], &0xdead_beefu32.to_le_bytes());
        assert_eq!(structs::LinkFrame::decode(&b), f);
        let c =
            structs::Completion { phase: 1, no_broadcast: 1, untracked: 1, retries: 31, tag: 9, ..Default::default() };
        let cb = c.encode();
        assert_eq!(cb[2], 0xff, "no_broadcast bit 16, untracked bit 17, retries bits 22:18, phase bit 23");
        assert_eq!(structs::Completion::decode(&cb), c);
        let r = structs::Completion { retries: 1, ..Default::default() }.encode();
        assert_eq!(r[2], 0b0000_0100, "retries start at bit 18 (the RTL and the model used bit 1 for untracked)");
        assert_eq!(structs::FrameKind::from_raw(9), None);
        assert_eq!(structs::Opcode::from_raw(2), Some(structs::Opcode::AcquireExclusive));
    }
}
