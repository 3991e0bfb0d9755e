//! `amf_regs` (the BAR0 register file) under Verilator.

use crate::sim::Sim;

/// Inputs and outputs of one cycle (mirrors `amf_rg_io` in csrc/regs_shim.cpp).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Io {
    /// Active-low reset.
    pub rst_n: u8,
    /// Request valid.
    pub req_valid: u8,
    /// 1 write, 0 read.
    pub req_write: u8,
    /// Engine ready.
    pub ready: u8,
    /// BAR0 byte address.
    pub req_addr: u16,
    /// Engine error code.
    pub error_code: u8,
    /// Interrupt causes raised this cycle.
    pub irq_set: u8,
    /// Write data.
    pub req_wdata: u32,
    /// Sharer table occupancy.
    pub occupancy: u32,
    /// Sharer table full fallbacks.
    pub full_fallbacks: u32,
    /// Stats counters in register order.
    pub stats: [u32; 11],
    /// Read data valid.
    pub rsp_valid: u8,
    /// ctrl.enable.
    pub ctrl_enable: u8,
    /// Soft reset pulse.
    pub soft_reset: u8,
    /// node.id.
    pub node_id: u8,
    /// node.peers.
    pub peers: u8,
    /// Command doorbell pulse.
    pub cmd_doorbell: u8,
    /// Interrupt line.
    pub irq: u8,
    /// Padding.
    pub pad: u8,
    /// Read data.
    pub rsp_rdata: u32,
    /// epoch.
    pub epoch: u32,
    /// Value written to a doorbell.
    pub doorbell_value: u32,
    /// link_auth.key_0..3.
    pub auth_key: [u32; 4],
    /// link_auth.ctrl.enable.
    pub auth_enable: u8,
    /// Padding.
    pub pad2: [u8; 3],
}

mod ffi {
    use super::Io;
    use std::ffi::c_void;
    extern "C" {
        pub fn amf_rg_new() -> *mut c_void;
        pub fn amf_rg_free(p: *mut c_void);
        pub fn amf_rg_cycle(p: *mut c_void, io: *mut Io);
    }
}

/// One simulated register file.
pub struct Regs {
    sim: Sim<Io>,
    /// Engine-side inputs applied on every cycle.
    pub engine: Io,
}

impl Regs {
    /// A register file out of reset, engine inputs idle (ready, no error, counters 0).
    pub fn new() -> Regs {
        // SAFETY: the three functions come from this top's shim and Io mirrors its struct.
        let sim = unsafe { Sim::new(ffi::amf_rg_new, ffi::amf_rg_free, ffi::amf_rg_cycle) };
        let mut r = Regs { sim, engine: Io { ready: 1, ..Io::default() } };
        let mut io = r.engine;
        for _ in 0..3 {
            r.cycle(&mut io);
        }
        r.engine.rst_n = 1;
        r
    }

    /// One clock cycle with `io`'s inputs; fills its outputs.
    pub fn cycle(&mut self, io: &mut Io) {
        self.sim.cycle(io);
    }

    /// A posted write; returns the outputs seen in the write's cycle (doorbell pulses).
    pub fn write(&mut self, addr: u16, value: u32) -> Io {
        let mut io = Io { req_valid: 1, req_write: 1, req_addr: addr, req_wdata: value, ..self.engine };
        self.cycle(&mut io);
        io
    }

    /// A read; the data arrives one cycle later.
    pub fn read(&mut self, addr: u16) -> u32 {
        let mut io = Io { req_valid: 1, req_write: 0, req_addr: addr, ..self.engine };
        self.cycle(&mut io);
        let mut idle = self.engine;
        self.cycle(&mut idle);
        idle.rsp_rdata
    }
}

impl Default for Regs {
    fn default() -> Self {
        Self::new()
    }
}
