//! The card's RTL under Verilator as a driver backend: a `SimDevice` with its own clock thread,
//! a UDP link, and its interrupt line delivered as an eventfd (as VFIO gives an MSI-X vector).

use super::Backend;
use amf_verilator::device::SimDevice;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;
use vmm_sys_util::eventfd::EventFd;

/// A simulated card (shareable: the driver and whatever wires its link hold it).
#[derive(Clone)]
pub struct SimBackend(pub Arc<SimDevice>, Arc<EventFd>);

impl SimBackend {
    /// Starts a simulated card whose link listens on `bind`.
    pub fn start(bind: std::net::SocketAddr) -> std::io::Result<SimBackend> {
        let device = Arc::new(SimDevice::start(bind)?);
        let irq = Arc::new(EventFd::new(libc::EFD_NONBLOCK)?);
        let fd = irq.clone();
        device.set_interrupt(Box::new(move || {
            // A full counter (never, at 2^64 - 1) already wakes the waiter.
            let _ = fd.write(1);
        }));
        Ok(SimBackend(device, irq))
    }
}

impl Backend for SimBackend {
    fn read32(&self, offset: u32) -> u32 {
        self.0.read32(offset)
    }
    fn write32(&self, offset: u32, value: u32) {
        self.0.write32(offset, value)
    }
    fn dma_alloc(&self, bytes: usize) -> Result<u64, String> {
        self.0.dma_alloc(bytes)
    }
    fn dma_read(&self, addr: u64, buf: &mut [u8]) -> Result<(), String> {
        self.0.dma_read(addr, buf)
    }
    fn dma_write(&self, addr: u64, data: &[u8]) -> Result<(), String> {
        self.0.dma_write(addr, data)
    }
    fn run(&self, _cycles: u64) {
        // The card's clock thread runs it; the caller only waits a little.
        std::thread::sleep(Duration::from_micros(50));
    }
    fn interrupt(&self) -> Option<std::os::fd::RawFd> {
        Some(self.1.as_raw_fd())
    }
    fn interrupt_ack(&self) {
        self.0.interrupt_ack();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::engine::{Driver, DriverConfig};

    /// A card interrupts: a command's completion makes its eventfd readable soon, never before
    /// the completion is in the ring, and again after the driver clears the causes.
    pub(crate) fn completions_interrupt<B: Backend + Clone + 'static>(b: B) {
        let fd = b.interrupt().expect("the card has an interrupt");
        let cfg = DriverConfig {
            node: 0,
            peers: 1,
            epoch: 1,
            ring_log2: 4,
            ack_timeout_cycles: 1000,
            heartbeat_cycles: 0,
            link_key: None,
        };
        let mut d = Driver::open(b, cfg).unwrap();
        for round in 0..20 {
            d.ack_interrupt();
            d.submit(amf_hdl_model::gen::structs::Opcode::AcquireExclusive, 10 + round).unwrap();
            let t = std::time::Instant::now();
            assert!(
                crate::engine::asynch::wait_interrupt(fd, Duration::from_secs(5)),
                "round {round}: no interrupt in 5 s"
            );
            let waited = t.elapsed();
            let done = d.reap().unwrap();
            assert_eq!(done.len(), 1, "round {round}: {done:?} after {waited:?} (an interrupt for nothing)");
            assert!(waited < Duration::from_millis(20), "round {round}: interrupt after {waited:?}");
        }
    }

    #[test]
    fn the_simulated_card_interrupts_on_completions() {
        completions_interrupt(SimBackend::start("127.0.0.1:0".parse().unwrap()).unwrap());
    }
}
