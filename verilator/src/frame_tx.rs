//! `amf_frame_tx` under Verilator.

use crate::sim::Sim;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct Io {
    rst_n: u8,
    in_valid: u8,
    tx_ready: u8,
    in_ready: u8,
    tx_valid: u8,
    pad: [u8; 3],
    in_frame: [u32; 8],
    tx_frame: [u32; 8],
}

mod ffi {
    use super::Io;
    use std::ffi::c_void;
    extern "C" {
        pub fn amf_tx_new() -> *mut c_void;
        pub fn amf_tx_free(p: *mut c_void);
        pub fn amf_tx_cycle(p: *mut c_void, io: *mut Io);
    }
}

/// One simulated transmit stage.
pub struct FrameTx {
    sim: Sim<Io>,
    io: Io,
}

const CYCLES_MAX: u32 = 64;

impl FrameTx {
    /// A transmit stage out of reset.
    pub fn new() -> FrameTx {
        // SAFETY: the three functions come from this top's shim and Io mirrors its struct.
        let sim = unsafe { Sim::new(ffi::amf_tx_new, ffi::amf_tx_free, ffi::amf_tx_cycle) };
        let mut t = FrameTx { sim, io: Io::default() };
        for _ in 0..3 {
            t.cycle();
        }
        t.io.rst_n = 1;
        t
    }

    fn cycle(&mut self) {
        self.sim.cycle(&mut self.io);
    }

    /// Sends one frame through the stage; returns what appears on the link, with the number of
    /// cycles the link was held not-ready first (back-pressure), or None if it hangs.
    pub fn send(&mut self, frame: &[u8; 32], stall_cycles: u32) -> Option<[u8; 32]> {
        for (i, w) in self.io.in_frame.iter_mut().enumerate() {
            *w = u32::from_le_bytes([frame[4 * i], frame[4 * i + 1], frame[4 * i + 2], frame[4 * i + 3]]);
        }
        self.io.in_valid = 1;
        self.io.tx_ready = 0;
        for _ in 0..CYCLES_MAX {
            self.cycle();
            if self.io.in_ready == 1 {
                break;
            }
        }
        self.io.in_valid = 0;
        let mut stalled = 0;
        for _ in 0..CYCLES_MAX {
            self.io.tx_ready = (stalled >= stall_cycles) as u8;
            self.cycle();
            if self.io.tx_valid == 1 {
                if self.io.tx_ready == 0 {
                    stalled += 1;
                    continue;
                }
                let mut out = [0u8; 32];
                for (i, w) in self.io.tx_frame.iter().enumerate() {
                    out[4 * i..4 * i + 4].copy_from_slice(&w.to_le_bytes());
                }
                self.io.tx_ready = 0;
                return Some(out);
            }
        }
        None
    }
}

impl Default for FrameTx {
    fn default() -> Self {
        Self::new()
    }
}
