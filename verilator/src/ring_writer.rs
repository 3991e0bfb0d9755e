//! `amf_ring_writer` under Verilator, with its DMA write port served from host memory.

use crate::sim::Sim;
use amf_hdl_model::model::card::HostMemory;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct Io {
    rst_n: u8,
    clear: u8,
    host_cons_valid: u8,
    entry_valid: u8,
    dma_req_ready: u8,
    dma_rsp_valid: u8,
    dma_rsp_error: u8,
    pad0: u8,
    size_log2: u32,
    host_cons: u32,
    base: u64,
    entry: [u32; 8],
    entry_ready: u8,
    dma_req_valid: u8,
    written: u8,
    error: u8,
    error_code: u8,
    pad1: [u8; 3],
    prod: u32,
    space: u32,
    dma_req_addr: u64,
    dma_req_data: [u32; 8],
}

/// Outcome of offering one entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Posted {
    /// Written into host memory.
    Written,
    /// Refused: the ring is full.
    Full,
    /// Refused with an error code (device.status.error_code).
    Error(u8),
}

mod ffi {
    use super::Io;
    use std::ffi::c_void;
    extern "C" {
        pub fn amf_rw_new() -> *mut c_void;
        pub fn amf_rw_free(p: *mut c_void);
        pub fn amf_rw_cycle(p: *mut c_void, io: *mut Io);
    }
}

/// One simulated ring writer.
pub struct RingWriter {
    sim: Sim<Io>,
    io: Io,
}

const CYCLES_MAX: u32 = 64;

impl RingWriter {
    /// A writer out of reset.
    pub fn new() -> RingWriter {
        // SAFETY: the three functions come from this top's shim and Io mirrors its struct.
        let sim = unsafe { Sim::new(ffi::amf_rw_new, ffi::amf_rw_free, ffi::amf_rw_cycle) };
        let mut w = RingWriter { sim, io: Io::default() };
        for _ in 0..3 {
            w.cycle();
        }
        w.io.rst_n = 1;
        w
    }

    fn cycle(&mut self) {
        self.sim.cycle(&mut self.io);
    }

    /// Sets the ring's base and size registers.
    pub fn configure(&mut self, base: u64, size_log2: u32) {
        self.io.base = base;
        self.io.size_log2 = size_log2;
    }

    /// Entries written so far (runs an idle cycle to see the registers after the last edge).
    pub fn prod(&mut self) -> u32 {
        self.cycle();
        self.io.prod
    }

    /// Free entries as the RTL reports them.
    pub fn space(&mut self) -> u32 {
        self.cycle();
        self.io.space
    }

    /// The host's consumer doorbell; Some(error code) if refused.
    pub fn host_consumed(&mut self, value: u32) -> Option<u8> {
        self.io.host_cons_valid = 1;
        self.io.host_cons = value;
        self.cycle();
        self.io.host_cons_valid = 0;
        (self.io.error == 1).then_some(self.io.error_code)
    }

    /// Offers one entry; DMA writes go to `mem` (which may refuse them).
    pub fn post(&mut self, entry: &[u8; 32], mem: &mut dyn HostMemory) -> Option<Posted> {
        for (i, w) in self.io.entry.iter_mut().enumerate() {
            *w = u32::from_le_bytes([entry[4 * i], entry[4 * i + 1], entry[4 * i + 2], entry[4 * i + 3]]);
        }
        self.io.entry_valid = 1;
        self.cycle();
        self.io.entry_valid = 0;
        if self.io.error == 1 {
            return Some(Posted::Error(self.io.error_code));
        }
        if self.io.entry_ready == 0 {
            return Some(Posted::Full);
        }
        // Serve the DMA write.
        for _ in 0..CYCLES_MAX {
            self.io.dma_req_ready = 1;
            self.cycle();
            if self.io.dma_req_valid == 1 {
                self.io.dma_req_ready = 0;
                let mut data = [0u8; 32];
                for (i, w) in self.io.dma_req_data.iter().enumerate() {
                    data[4 * i..4 * i + 4].copy_from_slice(&w.to_le_bytes());
                }
                let ok = mem.write(self.io.dma_req_addr, &data).is_ok();
                self.io.dma_rsp_valid = 1;
                self.io.dma_rsp_error = (!ok) as u8;
                self.cycle();
                self.io.dma_rsp_valid = 0;
                self.io.dma_rsp_error = 0;
                return Some(if self.io.written == 1 {
                    Posted::Written
                } else if self.io.error == 1 {
                    Posted::Error(self.io.error_code)
                } else {
                    return None;
                });
            }
        }
        None
    }
}

impl Default for RingWriter {
    fn default() -> Self {
        Self::new()
    }
}
