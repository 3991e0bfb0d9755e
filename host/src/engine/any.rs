//! Which card a controller drives, as one type: the Verilator RTL or the reference model, each
//! with its own clock thread and a UDP link.

use super::{Backend, LinkedModel, SimBackend};
use std::net::SocketAddr;

/// Which card a controller drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CardKind {
    /// The RTL under Verilator (the default: what CI runs).
    Sim,
    /// The Rust reference model.
    Model,
}

/// A card of either kind, with its UDP link.
#[derive(Clone)]
pub enum AnyCard {
    /// Verilator.
    Sim(SimBackend),
    /// Reference model.
    Model(LinkedModel),
}

impl AnyCard {
    /// Starts a card whose link listens on `link`.
    pub fn start(kind: CardKind, link: SocketAddr) -> std::io::Result<AnyCard> {
        Ok(match kind {
            CardKind::Sim => AnyCard::Sim(SimBackend::start(link)?),
            CardKind::Model => AnyCard::Model(LinkedModel::start(link)?),
        })
    }

    /// Its link address.
    pub fn link_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            AnyCard::Sim(s) => s.0.link_addr(),
            AnyCard::Model(m) => m.link_addr(),
        }
    }

    /// Tells it where node `id`'s card listens.
    pub fn set_peer(&self, id: u8, addr: SocketAddr) {
        match self {
            AnyCard::Sim(s) => s.0.set_peer(id, addr),
            AnyCard::Model(m) => m.set_peer(id, addr),
        }
    }

    /// Hands the card's link to the caller's event loop (see `LinkedModel::host_link` and
    /// `SimDevice::host_link`): its socket, to poll for readable.
    pub fn host_link(&self) -> std::io::Result<std::os::fd::RawFd> {
        match self {
            AnyCard::Sim(s) => s.0.host_link(),
            AnyCard::Model(m) => m.host_link(),
        }
    }

    /// Takes the frames waiting on a hosted link to the card; true when more may wait.
    pub fn pump_link(&self) -> bool {
        match self {
            AnyCard::Sim(s) => s.0.pump_link(),
            AnyCard::Model(m) => m.pump_link(),
        }
    }

    fn inner(&self) -> &dyn Backend {
        match self {
            AnyCard::Sim(s) => s,
            AnyCard::Model(m) => m,
        }
    }
}

impl Backend for AnyCard {
    fn read32(&self, offset: u32) -> u32 {
        self.inner().read32(offset)
    }
    fn write32(&self, offset: u32, value: u32) {
        self.inner().write32(offset, value)
    }
    fn dma_alloc(&self, bytes: usize) -> Result<u64, String> {
        self.inner().dma_alloc(bytes)
    }
    fn dma_read(&self, addr: u64, buf: &mut [u8]) -> Result<(), String> {
        self.inner().dma_read(addr, buf)
    }
    fn dma_write(&self, addr: u64, data: &[u8]) -> Result<(), String> {
        self.inner().dma_write(addr, data)
    }
    fn run(&self, cycles: u64) {
        self.inner().run(cycles)
    }
    fn interrupt(&self) -> Option<std::os::fd::RawFd> {
        self.inner().interrupt()
    }
    fn interrupt_ack(&self) {
        self.inner().interrupt_ack()
    }
}
