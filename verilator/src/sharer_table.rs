//! `amf_sharer_table` under Verilator.

use crate::sim::Sim;

/// Inputs and outputs of one cycle (mirrors `amf_st_io` in csrc/sharer_table_shim.cpp).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Io {
    /// Active-low reset.
    pub rst_n: u8,
    /// Soft clear.
    pub clear: u8,
    /// Request valid.
    pub req_valid: u8,
    /// 1 update, 0 lookup.
    pub req_write: u8,
    /// Sharer mask to store.
    pub req_sharers: u8,
    /// Owner + 1 to store (0 none).
    pub req_owner: u8,
    /// Resource id.
    pub req_resource: u64,
    /// Ready for a request.
    pub req_ready: u8,
    /// Response valid this cycle.
    pub rsp_valid: u8,
    /// The resource had an entry.
    pub rsp_hit: u8,
    /// The update found its set full.
    pub rsp_full: u8,
    /// Sharers before the request.
    pub rsp_sharers: u8,
    /// Owner + 1 before the request.
    pub rsp_owner: u8,
    /// Clear finished.
    pub ready: u8,
    /// Valid entries.
    pub occupancy: u32,
    /// Updates that found their set full.
    pub full_fallbacks: u32,
}

mod ffi {
    use super::Io;
    use std::ffi::c_void;
    extern "C" {
        pub fn amf_st_new() -> *mut c_void;
        pub fn amf_st_free(p: *mut c_void);
        pub fn amf_st_cycle(p: *mut c_void, io: *mut Io);
    }
}

/// One simulated sharer table (default parameters: 64 sets, 4 ways, 8 nodes).
pub struct SharerTable {
    sim: Sim<Io>,
}

/// The table's answer to one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Response {
    /// The resource had an entry.
    pub hit: bool,
    /// An update found the set full and stored nothing.
    pub full: bool,
    /// Sharers before the request.
    pub sharers: u8,
    /// Owner + 1 before the request.
    pub owner: u8,
}

/// Cycles a request may take before the wrapper declares the RTL hung.
const REQUEST_CYCLES_MAX: u32 = 64;

impl SharerTable {
    /// Sets in the compiled table.
    pub const SETS: usize = 64;
    /// Ways in the compiled table.
    pub const WAYS: usize = 4;

    /// A table out of reset, cleared.
    pub fn new() -> SharerTable {
        // SAFETY: the three functions come from this top's shim and Io mirrors its struct.
        let sim = unsafe { Sim::new(ffi::amf_st_new, ffi::amf_st_free, ffi::amf_st_cycle) };
        let mut t = SharerTable { sim };
        let mut io = Io::default();
        for _ in 0..4 {
            t.cycle(&mut io);
        }
        io.rst_n = 1;
        while io.ready == 0 {
            t.cycle(&mut io);
        }
        t
    }

    /// Runs one clock cycle with `io`'s inputs; fills its outputs.
    pub fn cycle(&mut self, io: &mut Io) {
        self.sim.cycle(io);
    }

    /// Cycles run so far.
    pub fn cycles(&self) -> u64 {
        self.sim.cycles()
    }

    /// Issues one request and waits for its response; None if the RTL does not answer.
    pub fn request(&mut self, write: bool, resource: u64, sharers: u8, owner: u8) -> Option<Response> {
        let mut io = Io { rst_n: 1, ..Io::default() };
        let mut waited = 0;
        loop {
            io.req_valid = 1;
            io.req_write = write as u8;
            io.req_resource = resource;
            io.req_sharers = sharers;
            io.req_owner = owner;
            self.cycle(&mut io);
            if io.req_ready == 1 {
                break;
            }
            waited += 1;
            if waited > REQUEST_CYCLES_MAX {
                return None;
            }
        }
        io.req_valid = 0;
        for _ in 0..REQUEST_CYCLES_MAX {
            self.cycle(&mut io);
            if io.rsp_valid == 1 {
                return Some(Response {
                    hit: io.rsp_hit == 1,
                    full: io.rsp_full == 1,
                    sharers: io.rsp_sharers,
                    owner: io.rsp_owner,
                });
            }
        }
        None
    }

    /// Current (occupancy, full fallbacks).
    pub fn counters(&mut self) -> (u32, u32) {
        let mut io = Io { rst_n: 1, ..Io::default() };
        self.cycle(&mut io);
        (io.occupancy, io.full_fallbacks)
    }

    /// Soft clear; returns when the table is ready again.
    pub fn clear(&mut self) {
        let mut io = Io { rst_n: 1, clear: 1, ..Io::default() };
        self.cycle(&mut io);
        io.clear = 0;
        self.cycle(&mut io);
        while io.ready == 0 {
            self.cycle(&mut io);
        }
    }
}

impl Default for SharerTable {
    fn default() -> Self {
        Self::new()
    }
}
