//! `amf_frame_tx` under Verilator.

use crate::sim::{bytes, words, Sim};
use amf_hdl_model::model::link_auth::WireFrame;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct Io {
    rst_n: u8,
    in_valid: u8,
    tx_ready: u8,
    in_ready: u8,
    tx_valid: u8,
    auth_en: u8,
    restart: u8,
    pad: u8,
    key: [u32; 4],
    in_frame: [u32; 8],
    tx_frame: [u32; 12],
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

    /// Seals frames under `key` from now on (None: zero seals).
    pub fn set_auth(&mut self, key: Option<[u32; 4]>) {
        self.io.auth_en = key.is_some() as u8;
        self.io.key = key.unwrap_or_default();
    }

    /// A new epoch: the counter starts over.
    pub fn restart(&mut self) {
        self.io.restart = 1;
        self.cycle();
        self.io.restart = 0;
    }

    /// Sends one frame through the stage; returns what appears on the link, with the number of
    /// cycles the link was held not-ready first (back-pressure), or None if it hangs.
    pub fn send(&mut self, frame: &[u8; 32], stall_cycles: u32) -> Option<WireFrame> {
        self.io.in_frame = words(frame);
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
                self.io.tx_ready = 0;
                return Some(bytes(&self.io.tx_frame));
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
