//! `amf_dma_arb` (3 clients) under Verilator: raw cycle access for tests.

use crate::sim::Sim;

/// Inputs and outputs of one cycle (mirrors `amf_da_io` in csrc/dma_arb_shim.cpp).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Io {
    /// Active-low reset.
    pub rst_n: u8,
    /// Request valid, a bit per client.
    pub req_valid: u8,
    /// Request is a write, a bit per client.
    pub req_write: u8,
    /// The DMA port takes the request.
    pub dma_req_ready: u8,
    /// DMA response valid.
    pub dma_rsp_valid: u8,
    /// DMA response error.
    pub dma_rsp_error: u8,
    /// Padding.
    pub pad0: [u8; 2],
    /// Request addresses.
    pub req_addr: [u64; 3],
    /// Request lengths.
    pub req_bytes: [u8; 3],
    /// Padding.
    pub pad1: [u8; 5],
    /// Write data per client.
    pub req_wdata: [[u32; 8]; 3],
    /// DMA read data.
    pub dma_rsp_rdata: [u32; 8],
    /// Request taken, a bit per client.
    pub req_ready: u8,
    /// Response valid, a bit per client.
    pub rsp_valid: u8,
    /// Response error.
    pub rsp_error: u8,
    /// Port request valid.
    pub dma_req_valid: u8,
    /// Port request is a write.
    pub dma_req_write: u8,
    /// Port request length.
    pub dma_req_bytes: u8,
    /// Padding.
    pub pad2: [u8; 2],
    /// Port request address.
    pub dma_req_addr: u64,
    /// Port write data.
    pub dma_req_wdata: [u32; 8],
    /// Response data to the client.
    pub rsp_rdata: [u32; 8],
}

mod ffi {
    use super::Io;
    use std::ffi::c_void;
    extern "C" {
        pub fn amf_da_new() -> *mut c_void;
        pub fn amf_da_free(p: *mut c_void);
        pub fn amf_da_cycle(p: *mut c_void, io: *mut Io);
    }
}

/// One simulated arbiter.
pub struct DmaArb {
    sim: Sim<Io>,
}

impl DmaArb {
    /// An arbiter out of reset.
    pub fn new() -> DmaArb {
        // SAFETY: the three functions come from this top's shim and Io mirrors its struct.
        let sim = unsafe { Sim::new(ffi::amf_da_new, ffi::amf_da_free, ffi::amf_da_cycle) };
        let mut a = DmaArb { sim };
        let mut io = Io::default();
        for _ in 0..3 {
            a.cycle(&mut io);
        }
        a
    }

    /// One clock cycle with `io`'s inputs; fills its outputs (as seen before the edge).
    pub fn cycle(&mut self, io: &mut Io) {
        self.sim.cycle(io);
    }
}

impl Default for DmaArb {
    fn default() -> Self {
        Self::new()
    }
}
