//! What the driver needs from a card: 32-bit BAR0 access and host memory the card can reach by
//! DMA. `ModelBackend` runs the Rust reference model in process.

use amf_hdl_model::model::card::{Card, HostMemory, Outgoing};
use amf_hdl_model::model::VecMemory;
use std::sync::{Arc, Mutex, MutexGuard};

/// Register access and DMA memory of one card.
pub trait Backend: Send {
    /// 32-bit read of BAR0 at a byte offset (diagnostics and setup; the fast path never reads).
    fn read32(&self, offset: u32) -> u32;
    /// 32-bit posted write of BAR0.
    fn write32(&self, offset: u32, value: u32);
    /// Allocates `bytes` of zeroed DMA memory; returns its device address.
    fn dma_alloc(&self, bytes: usize) -> Result<u64, String>;
    /// Reads host memory at a device address (the CPU's view of DMA memory).
    fn dma_read(&self, addr: u64, buf: &mut [u8]) -> Result<(), String>;
    /// Writes host memory at a device address.
    fn dma_write(&self, addr: u64, data: &[u8]) -> Result<(), String>;
    /// Lets the card run (a simulated card advances its clock; a real one needs nothing).
    fn run(&self, _cycles: u64) {}
    /// An eventfd that becomes readable when the card raises its interrupt (MSI-X through VFIO),
    /// if the backend has one: the driver then sleeps on it instead of polling.
    fn interrupt(&self) -> Option<std::os::fd::RawFd> {
        None
    }
    /// The host cleared the card's interrupt causes (its write to the IRQ register was posted
    /// just before): a simulated card interrupts again the next time its line is high. A real
    /// card's MSI-X needs nothing.
    fn interrupt_ack(&self) {}
}

struct ModelState {
    card: Card,
    mem: VecMemory,
    next_free: u64,
}

/// The reference model as a card: registers, DMA memory and a link port, shareable between the
/// driver and whatever carries its frames.
#[derive(Clone)]
pub struct ModelBackend {
    state: Arc<Mutex<ModelState>>,
}

/// DMA window of a model card.
const DMA_BASE: u64 = 0x1_0000_0000;
const DMA_BYTES: usize = 4 << 20;

impl Default for ModelBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl ModelBackend {
    /// A card out of reset with 4 MiB of DMA memory.
    pub fn new() -> ModelBackend {
        ModelBackend {
            state: Arc::new(Mutex::new(ModelState {
                card: Card::new(),
                mem: VecMemory::new(DMA_BASE, DMA_BYTES),
                next_free: DMA_BASE,
            })),
        }
    }

    /// A model card whose presence filter has 2^`log2` buckets (a simulator's knob).
    pub fn with_presence_buckets_log2(log2: u32) -> ModelBackend {
        let b = ModelBackend::new();
        b.lock().card = Card::with_presence_buckets_log2(log2);
        b
    }

    fn lock(&self) -> MutexGuard<'_, ModelState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Frames the card sent since the last call.
    pub fn take_outgoing(&self) -> Vec<Outgoing> {
        self.lock().card.take_outgoing()
    }

    /// The card's interrupt line: a cause is set that the host enabled.
    pub fn irq_line(&self) -> bool {
        self.lock().card.irq_line()
    }

    /// Runs the card until its clock reads `cycle`, and lets it take what came since its last
    /// tick (a doorbell) even when no cycle has passed.
    pub fn run_to(&self, cycle: u64) {
        let mut g = self.lock();
        let ModelState { card, mem, .. } = &mut *g;
        let cycles = cycle.saturating_sub(card.cycle());
        card.tick(cycles, mem);
    }

    /// The first cycle at which the card has something to do without new input, if any.
    pub fn next_due(&self) -> Option<u64> {
        self.lock().card.next_due()
    }

    /// Delivers a frame from the link.
    pub fn deliver(&self, bytes: &[u8]) -> bool {
        let mut g = self.lock();
        let ModelState { card, mem, .. } = &mut *g;
        card.receive(bytes, mem)
    }
}

impl Backend for ModelBackend {
    fn read32(&self, offset: u32) -> u32 {
        self.lock().card.mmio_read(offset)
    }
    fn write32(&self, offset: u32, value: u32) {
        self.lock().card.mmio_write(offset, value)
    }
    fn dma_alloc(&self, bytes: usize) -> Result<u64, String> {
        let mut g = self.lock();
        let addr = g.next_free;
        let end = addr + bytes.next_multiple_of(64) as u64;
        if end > DMA_BASE + DMA_BYTES as u64 {
            return Err(format!("model card DMA window exhausted ({bytes} bytes asked)"));
        }
        g.next_free = end;
        Ok(addr)
    }
    fn dma_read(&self, addr: u64, buf: &mut [u8]) -> Result<(), String> {
        self.lock().mem.read(addr, buf).map_err(|e| e.to_string())
    }
    fn dma_write(&self, addr: u64, data: &[u8]) -> Result<(), String> {
        self.lock().mem.write(addr, data).map_err(|e| e.to_string())
    }
    fn run(&self, cycles: u64) {
        let mut g = self.lock();
        let ModelState { card, mem, .. } = &mut *g;
        card.tick(cycles, mem);
    }
}
