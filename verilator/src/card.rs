//! `amf_card` (the whole card) under Verilator: BAR0 access, DMA served from host memory each
//! cycle, and the link port as frame queues.

use crate::sim::{bytes, words, Sim};
use amf_hdl_model::model::card::HostMemory;
use amf_hdl_model::model::link_auth::WireFrame;
use std::collections::VecDeque;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct Io {
    rst_n: u8,
    reg_req_valid: u8,
    reg_req_write: u8,
    dma_req_ready: u8,
    dma_rsp_valid: u8,
    dma_rsp_error: u8,
    link_rx_valid: u8,
    link_tx_ready: u8,
    reg_req_addr: u16,
    pad0: u16,
    reg_req_wdata: u32,
    dma_rsp_rdata: [u32; 8],
    link_rx_frame: [u32; 12],
    reg_rsp_valid: u8,
    dma_req_valid: u8,
    dma_req_write: u8,
    dma_req_bytes: u8,
    link_rx_ready: u8,
    link_tx_valid: u8,
    irq: u8,
    busy: u8,
    active: u8,
    reg_rsp_rdata: u32,
    dma_req_addr: u64,
    dma_req_wdata: [u32; 8],
    link_tx_frame: [u32; 12],
}

mod ffi {
    use super::Io;
    use std::ffi::c_void;
    extern "C" {
        pub fn amf_cd_new() -> *mut c_void;
        pub fn amf_cd_free(p: *mut c_void);
        pub fn amf_cd_cycle(p: *mut c_void, io: *mut Io);
    }
}

/// One simulated card.
pub struct SimCard {
    sim: Sim<Io>,
    io: Io,
    rx: VecDeque<WireFrame>,
    tx: Vec<WireFrame>,
    /// A DMA response to present once its delay runs out: (cycles left, error, data).
    dma_rsp: Option<(u32, bool, [u8; 32])>,
    /// A test aid: DMA responses come 1 + (0..=max) cycles after their request, drawn from this
    /// seeded sequence (a real PCIe read or write completes in hundreds of cycles, and the
    /// card's writers then wait for the port in orders a 1-cycle memory never shows).
    dma_delay: Option<DmaDelay>,
    cycles: u64,
}

/// Seeded DMA response delays (splitmix64: a test aid needs no better generator).
struct DmaDelay {
    state: u64,
    cycles_max: u32,
}

impl DmaDelay {
    fn next(&mut self) -> u32 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z % (u64::from(self.cycles_max) + 1)) as u32
    }
}

/// Cycles a register read may take before the card is declared hung.
const REG_CYCLES_MAX: u32 = 16;

impl SimCard {
    /// A card out of reset.
    pub fn new() -> SimCard {
        // SAFETY: the three functions come from this top's shim and Io mirrors its struct.
        let sim = unsafe { Sim::new(ffi::amf_cd_new, ffi::amf_cd_free, ffi::amf_cd_cycle) };
        let mut c = SimCard {
            sim,
            io: Io::default(),
            rx: VecDeque::new(),
            tx: Vec::new(),
            dma_rsp: None,
            dma_delay: None,
            cycles: 0,
        };
        c.io.link_tx_ready = 1;
        c.io.dma_req_ready = 1;
        let mut mem = NoMemory;
        c.run(3, &mut mem);
        c.io.rst_n = 1;
        c.run(80, &mut mem); // the sharer table clears itself after reset
        c
    }

    /// A test aid: from now on each DMA response comes up to `cycles_max` cycles later than the
    /// next cycle, by a sequence seeded with `seed` (0: at once, as before).
    pub fn set_dma_delay(&mut self, seed: u64, cycles_max: u32) {
        self.dma_delay = (cycles_max > 0).then_some(DmaDelay { state: seed, cycles_max });
    }

    /// Cycles run.
    pub fn cycles(&self) -> u64 {
        self.cycles
    }

    fn step(&mut self, mem: &mut dyn HostMemory) {
        // Inputs for this cycle.
        self.io.dma_rsp_valid = 0;
        match self.dma_rsp.take() {
            Some((0, err, data)) => {
                self.io.dma_rsp_valid = 1;
                self.io.dma_rsp_error = err as u8;
                self.io.dma_rsp_rdata = words(&data);
            }
            Some((left, err, data)) => self.dma_rsp = Some((left - 1, err, data)),
            None => {}
        }
        // One request at a time: the port takes the next once the last one is answered.
        self.io.dma_req_ready = self.dma_rsp.is_none() as u8;
        match self.rx.front() {
            Some(f) => {
                self.io.link_rx_valid = 1;
                self.io.link_rx_frame = words(f);
            }
            None => self.io.link_rx_valid = 0,
        }
        let rx_offered = self.io.link_rx_valid == 1;
        self.sim.cycle(&mut self.io);
        self.cycles += 1;
        // Handshakes at this edge.
        if rx_offered && self.io.link_rx_ready == 1 {
            self.rx.pop_front();
        }
        if self.io.link_tx_valid == 1 {
            self.tx.push(bytes(&self.io.link_tx_frame));
        }
        if self.io.dma_req_valid == 1 && self.io.dma_req_ready == 1 {
            let addr = self.io.dma_req_addr;
            let rsp = if self.io.dma_req_write == 1 {
                let data: [u8; 32] = bytes(&self.io.dma_req_wdata);
                let n = (self.io.dma_req_bytes as usize).min(32);
                (mem.write(addr, &data[..n]).is_err(), [0u8; 32])
            } else {
                let mut b = [0u8; 32];
                let err = mem.read(addr, &mut b).is_err();
                (err, b)
            };
            let delay = self.dma_delay.as_mut().map_or(0, DmaDelay::next);
            self.dma_rsp = Some((delay, rsp.0, rsp.1));
        }
        self.io.reg_req_valid = 0;
    }

    /// Runs `cycles` clock cycles, serving DMA from `mem`.
    pub fn run(&mut self, cycles: u64, mem: &mut dyn HostMemory) {
        for _ in 0..cycles {
            self.step(mem);
        }
    }

    /// A posted BAR0 write (one cycle).
    pub fn mmio_write(&mut self, addr: u32, value: u32, mem: &mut dyn HostMemory) {
        self.io.reg_req_valid = 1;
        self.io.reg_req_write = 1;
        self.io.reg_req_addr = addr.min(u16::MAX as u32) as u16;
        self.io.reg_req_wdata = value;
        self.step(mem);
    }

    /// A BAR0 read; all-ones if the card does not answer.
    pub fn mmio_read(&mut self, addr: u32, mem: &mut dyn HostMemory) -> u32 {
        self.io.reg_req_valid = 1;
        self.io.reg_req_write = 0;
        self.io.reg_req_addr = addr.min(u16::MAX as u32) as u16;
        self.step(mem);
        for _ in 0..REG_CYCLES_MAX {
            self.step(mem);
            if self.io.reg_rsp_valid == 1 {
                return self.io.reg_rsp_rdata;
            }
        }
        u32::MAX
    }

    /// Queues a frame arriving from the link.
    pub fn receive(&mut self, frame: WireFrame) {
        self.rx.push_back(frame);
    }

    /// Frames the card sent since the last call.
    pub fn take_outgoing(&mut self) -> Vec<WireFrame> {
        std::mem::take(&mut self.tx)
    }

    /// The interrupt line.
    pub fn irq(&self) -> bool {
        self.io.irq == 1
    }

    /// The card has work or a timer running (as of the last cycle), or a frame or DMA response
    /// is waiting to go in: its clock must keep running.
    pub fn busy(&self) -> bool {
        self.io.busy == 1 || !self.rx.is_empty() || self.dma_rsp.is_some()
    }

    /// The card has work to do now (as of the last cycle), or a frame or DMA response is
    /// waiting to go in: unlike [`SimCard::busy`], false while it only waits (for its peers'
    /// answers, a timer, room in a ring the host empties).
    pub fn active(&self) -> bool {
        self.io.active == 1 || !self.rx.is_empty() || self.dma_rsp.is_some()
    }
}

impl Default for SimCard {
    fn default() -> Self {
        Self::new()
    }
}

/// Host memory that refuses everything (reset, before rings exist).
struct NoMemory;

impl HostMemory for NoMemory {
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), amf_hdl_model::model::card::DmaError> {
        Err(amf_hdl_model::model::card::DmaError { addr, len: buf.len() })
    }
    fn write(&mut self, addr: u64, data: &[u8]) -> Result<(), amf_hdl_model::model::card::DmaError> {
        Err(amf_hdl_model::model::card::DmaError { addr, len: data.len() })
    }
}
