//! `amf_frame_check` under Verilator.

use crate::sim::Sim;

/// Inputs and outputs of one cycle (mirrors `amf_fc_io` in csrc/frame_check_shim.cpp).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct Io {
    rst_n: u8,
    in_valid: u8,
    node_id: u8,
    peers: u8,
    epoch: u32,
    in_frame: [u32; 8],
    in_ready: u8,
    out_valid: u8,
    out_verdict: u8,
    pad: u8,
    out_frame: [u32; 8],
}

mod ffi {
    use super::Io;
    use std::ffi::c_void;
    extern "C" {
        pub fn amf_fc_new() -> *mut c_void;
        pub fn amf_fc_free(p: *mut c_void);
        pub fn amf_fc_cycle(p: *mut c_void, io: *mut Io);
    }
}

/// One simulated frame checker.
pub struct FrameCheck {
    sim: Sim<Io>,
}

const CYCLES_MAX: u32 = 64;

impl FrameCheck {
    /// A checker out of reset.
    pub fn new() -> FrameCheck {
        // SAFETY: the three functions come from this top's shim and Io mirrors its struct.
        let sim = unsafe { Sim::new(ffi::amf_fc_new, ffi::amf_fc_free, ffi::amf_fc_cycle) };
        let mut f = FrameCheck { sim };
        let mut io = Io::default();
        for _ in 0..3 {
            f.cycle(&mut io);
        }
        f
    }

    fn cycle(&mut self, io: &mut Io) {
        self.sim.cycle(io);
    }

    /// Checks one frame for node `node` of cluster `peers` in `epoch`; returns the verdict code
    /// and the frame as passed through, or None if the RTL does not answer.
    pub fn check(&mut self, frame: &[u8; 32], node: u8, peers: u8, epoch: u32) -> Option<(u8, [u8; 32])> {
        let mut io = Io { rst_n: 1, node_id: node, peers, epoch, ..Io::default() };
        for (i, w) in io.in_frame.iter_mut().enumerate() {
            *w = u32::from_le_bytes([frame[4 * i], frame[4 * i + 1], frame[4 * i + 2], frame[4 * i + 3]]);
        }
        for _ in 0..CYCLES_MAX {
            io.in_valid = 1;
            self.cycle(&mut io);
            if io.in_ready == 1 {
                break;
            }
        }
        io.in_valid = 0;
        for _ in 0..CYCLES_MAX {
            self.cycle(&mut io);
            if io.out_valid == 1 {
                let mut out = [0u8; 32];
                for (i, w) in io.out_frame.iter().enumerate() {
                    out[4 * i..4 * i + 4].copy_from_slice(&w.to_le_bytes());
                }
                return Some((io.out_verdict, out));
            }
        }
        None
    }
}

impl Default for FrameCheck {
    fn default() -> Self {
        Self::new()
    }
}
