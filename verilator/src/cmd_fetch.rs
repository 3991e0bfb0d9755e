//! `amf_cmd_fetch` under Verilator, with its DMA port served from host memory.

use crate::sim::Sim;
use amf_hdl_model::model::card::HostMemory;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct Io {
    rst_n: u8,
    clear: u8,
    enable: u8,
    doorbell: u8,
    out_ready: u8,
    dma_req_ready: u8,
    dma_rsp_valid: u8,
    dma_rsp_error: u8,
    size_log2: u32,
    doorbell_value: u32,
    base: u64,
    cons_addr: u64,
    dma_rsp_rdata: [u32; 8],
    out_valid: u8,
    dma_req_valid: u8,
    dma_req_write: u8,
    dma_req_bytes: u8,
    error: u8,
    error_code: u8,
    pad: [u8; 2],
    dma_req_wdata: u32,
    cons: u32,
    dma_req_addr: u64,
    out_cmd: [u32; 8],
}

mod ffi {
    use super::Io;
    use std::ffi::c_void;
    extern "C" {
        pub fn amf_cf_new() -> *mut c_void;
        pub fn amf_cf_free(p: *mut c_void);
        pub fn amf_cf_cycle(p: *mut c_void, io: *mut Io);
    }
}

/// One simulated command fetcher.
pub struct CmdFetch {
    sim: Sim<Io>,
    io: Io,
}

/// Cycles without a DMA request after which "nothing to fetch" is concluded.
const IDLE_CYCLES: u32 = 4;
const CYCLES_MAX: u32 = 64;

impl CmdFetch {
    /// A fetcher out of reset, enabled.
    pub fn new() -> CmdFetch {
        // SAFETY: the three functions come from this top's shim and Io mirrors its struct.
        let sim = unsafe { Sim::new(ffi::amf_cf_new, ffi::amf_cf_free, ffi::amf_cf_cycle) };
        let mut f = CmdFetch { sim, io: Io::default() };
        for _ in 0..3 {
            f.cycle();
        }
        f.io.rst_n = 1;
        f.io.enable = 1;
        f
    }

    fn cycle(&mut self) {
        self.sim.cycle(&mut self.io);
    }

    /// Sets the ring registers.
    pub fn configure(&mut self, base: u64, size_log2: u32, cons_addr: u64) {
        self.io.base = base;
        self.io.size_log2 = size_log2;
        self.io.cons_addr = cons_addr;
    }

    /// The host's producer doorbell; Some(error code) if refused.
    pub fn doorbell(&mut self, value: u32) -> Option<u8> {
        self.io.doorbell = 1;
        self.io.doorbell_value = value;
        self.cycle();
        self.io.doorbell = 0;
        (self.io.error == 1).then_some(self.io.error_code)
    }

    /// Lets the fetcher take one descriptor: Ok(Some) a descriptor, Ok(None) nothing posted,
    /// Err(code) an error; None if the RTL hangs.
    pub fn fetch(&mut self, mem: &mut dyn HostMemory) -> Option<Result<Option<[u8; 32]>, u8>> {
        self.io.out_ready = 1;
        let mut idle = 0;
        for _ in 0..CYCLES_MAX {
            self.io.dma_req_ready = 1;
            self.cycle();
            self.io.dma_req_ready = 0;
            if self.io.error == 1 {
                self.io.out_ready = 0;
                return Some(Err(self.io.error_code));
            }
            if self.io.out_valid == 1 {
                self.io.out_ready = 0;
                let mut b = [0u8; 32];
                for (i, w) in self.io.out_cmd.iter().enumerate() {
                    b[4 * i..4 * i + 4].copy_from_slice(&w.to_le_bytes());
                }
                // The handshake cycle above consumed it.
                return Some(Ok(Some(b)));
            }
            if self.io.dma_req_valid == 1 {
                idle = 0;
                let ok = if self.io.dma_req_write == 1 {
                    mem.write(
                        self.io.dma_req_addr,
                        &self.io.dma_req_wdata.to_le_bytes()[..self.io.dma_req_bytes.min(4) as usize],
                    )
                    .is_ok()
                } else {
                    let mut b = [0u8; 32];
                    let ok = mem.read(self.io.dma_req_addr, &mut b).is_ok();
                    for (i, w) in self.io.dma_rsp_rdata.iter_mut().enumerate() {
                        *w = u32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]);
                    }
                    ok
                };
                self.io.dma_rsp_valid = 1;
                self.io.dma_rsp_error = (!ok) as u8;
                self.cycle();
                self.io.dma_rsp_valid = 0;
                self.io.dma_rsp_error = 0;
                if self.io.error == 1 {
                    self.io.out_ready = 0;
                    return Some(Err(self.io.error_code));
                }
                continue;
            }
            idle += 1;
            if idle >= IDLE_CYCLES {
                self.io.out_ready = 0;
                return Some(Ok(None));
            }
        }
        None
    }

    /// The consumer index.
    pub fn cons(&mut self) -> u32 {
        self.cycle();
        self.io.cons
    }
}

impl Default for CmdFetch {
    fn default() -> Self {
        Self::new()
    }
}
