//! `amf_frame_check` under Verilator.

use crate::sim::{bytes, words, Sim};
use amf_hdl_model::model::link_auth::WireFrame;

/// Inputs and outputs of one cycle (mirrors `amf_fc_io` in csrc/frame_check_shim.cpp).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct Io {
    rst_n: u8,
    in_valid: u8,
    node_id: u8,
    peers: u8,
    epoch: u32,
    key: [u32; 4],
    in_frame: [u32; 12],
    auth_en: u8,
    restart: u8,
    out_ready: u8,
    in_ready: u8,
    out_valid: u8,
    out_verdict: u8,
    busy: u8,
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
    /// The link key, when authentication is on.
    key: Option<[u32; 4]>,
}

const CYCLES_MAX: u32 = 64;

impl FrameCheck {
    /// A checker out of reset.
    pub fn new() -> FrameCheck {
        // SAFETY: the three functions come from this top's shim and Io mirrors its struct.
        let sim = unsafe { Sim::new(ffi::amf_fc_new, ffi::amf_fc_free, ffi::amf_fc_cycle) };
        let mut f = FrameCheck { sim, key: None };
        let mut io = Io::default();
        for _ in 0..3 {
            f.cycle(&mut io);
        }
        f
    }

    fn cycle(&mut self, io: &mut Io) {
        io.auth_en = self.key.is_some() as u8;
        io.key = self.key.unwrap_or_default();
        self.sim.cycle(io);
    }

    /// Checks seals under `key` from now on (None: seals are not checked).
    pub fn set_auth(&mut self, key: Option<[u32; 4]>) {
        self.key = key;
    }

    /// A new epoch: the replay windows start over.
    pub fn restart(&mut self) {
        let mut io = Io { rst_n: 1, restart: 1, ..Io::default() };
        self.cycle(&mut io);
    }

    /// Checks one frame for node `node` of cluster `peers` in `epoch`; returns the verdict code
    /// and the frame as passed through, or None if the RTL does not answer.
    pub fn check(&mut self, frame: &WireFrame, node: u8, peers: u8, epoch: u32) -> Option<(u8, [u8; 32])> {
        let mut io = Io { rst_n: 1, node_id: node, peers, epoch, out_ready: 1, ..Io::default() };
        io.in_frame = words(frame);
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
                return Some((io.out_verdict, bytes(&io.out_frame)));
            }
        }
        None
    }

    /// Streams `frames` in back to back while the consumer takes a verdict only in the cycles
    /// `take(cycle)` allows; returns the verdicts and frames in order, the cycles it took, and
    /// the cycles whose busy output disagreed with whether a frame was inside. The checker must
    /// neither drop nor duplicate a frame under back-pressure, and a clock gated on its busy
    /// must never stop with a frame inside.
    pub fn stream(
        &mut self,
        frames: &[WireFrame],
        node: u8,
        peers: u8,
        epoch: u32,
        mut take: impl FnMut(u64) -> bool,
    ) -> (Vec<(u8, [u8; 32])>, u64, u64) {
        let mut io = Io { rst_n: 1, node_id: node, peers, epoch, ..Io::default() };
        let mut next = 0;
        let mut out = vec![];
        let mut cycle = 0u64;
        let cycles_max = 64 + 64 * frames.len() as u64 * if self.key.is_some() { 4 } else { 1 };
        let mut busy_wrong = 0;
        while out.len() < frames.len() && cycle < cycles_max {
            // Frames taken and not yet given out, as of the edge before this cycle.
            let inside = next - out.len();
            io.in_valid = (next < frames.len()) as u8;
            if let Some(f) = frames.get(next) {
                io.in_frame = words(f);
            }
            io.out_ready = take(cycle) as u8;
            self.cycle(&mut io);
            if (io.busy == 1) != (inside > 0) {
                busy_wrong += 1;
            }
            // Handshakes at this edge (outputs as seen before it).
            if io.in_valid == 1 && io.in_ready == 1 {
                next += 1;
            }
            if io.out_valid == 1 && io.out_ready == 1 {
                out.push((io.out_verdict, bytes(&io.out_frame)));
            }
            cycle += 1;
        }
        (out, cycle, busy_wrong)
    }
}

impl Default for FrameCheck {
    fn default() -> Self {
        Self::new()
    }
}
