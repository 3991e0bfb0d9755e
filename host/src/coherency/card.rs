//! This controller's card as the coherency layer sees it: blocking acquire/release calls on top
//! of the async driver, the event ring drained on demand, and the card's state for status.

use super::CoherencyError;
use crate::engine::{diag, AsyncDriver, Backend, Driver, DriverConfig, LinkedModel, SimBackend};
use amf_hdl_model::gen::structs::{Completion, Event, Opcode, Status};
use std::net::SocketAddr;
use std::time::Duration;

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
}

/// Commands in flight at once (below the ring size).
const IN_FLIGHT_MAX: usize = 64;

/// The card under the driver, for blocking callers.
pub struct CardPort {
    rt: tokio::runtime::Runtime,
    drv: Option<AsyncDriver<AnyCard>>,
    card: AnyCard,
    timeout: Duration,
    /// Sharer table shape: (sets, ways).
    pub geometry: (u64, usize),
}

impl CardPort {
    /// Opens the card as node `node` of the nodes in mask `peers`, in `epoch`.
    pub fn open(card: AnyCard, node: u8, peers: u8, epoch: u32, timeout: Duration) -> Result<CardPort, CoherencyError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| CoherencyError::Card(format!("runtime: {e}")))?;
        // The ack timeout in card cycles: a tenth of the host's patience, so a silent peer
        // shows up as a completion naming it, not as a host-side timeout.
        let ack_timeout_cycles = match card {
            AnyCard::Model(_) => crate::engine::link::CLOCK_HZ / 10 * timeout.as_millis() as u64 / 1000,
            // The RTL's clock runs near 1 M cycles/s under Verilator here.
            AnyCard::Sim(_) => 100 * timeout.as_millis() as u64,
        }
        .clamp(10_000, u32::MAX as u64) as u32;
        let cfg = DriverConfig { node, peers, epoch, ring_log2: 8, ack_timeout_cycles, heartbeat_cycles: 0 };
        let geometry = diag::table_geometry(&card).map_err(CoherencyError::Engine)?;
        let driver = Driver::open(card.clone(), cfg).map_err(CoherencyError::Engine)?;
        let drv = {
            let _g = rt.enter();
            AsyncDriver::new(driver, IN_FLIGHT_MAX)
        };
        Ok(CardPort { rt, drv: Some(drv), card, timeout, geometry })
    }

    fn drv(&self) -> Result<&AsyncDriver<AnyCard>, CoherencyError> {
        self.drv.as_ref().ok_or_else(|| CoherencyError::Card("card closed".into()))
    }

    /// Runs a command to completion; a status other than Ok is an error naming it.
    pub fn call(&self, op: Opcode, resource: u64) -> Result<Completion, CoherencyError> {
        let drv = self.drv()?;
        let start = std::time::Instant::now();
        let c = self.rt.block_on(drv.call(op, resource, self.timeout)).map_err(CoherencyError::Engine)?;
        crate::metrics::observe(crate::metrics::Op::CardRoundTrip, start);
        match Status::from_raw(c.status) {
            Some(Status::Ok) => Ok(c),
            Some(Status::Timeout) => Err(CoherencyError::PeersSilent { resource, missing: c.missing }),
            other => {
                Err(CoherencyError::Card(format!("{op:?} of resource {resource}: status {other:?} ({})", c.status)))
            }
        }
    }

    /// Events written so far, in order.
    pub fn drain_events(&self) -> Result<Vec<(u32, Event)>, CoherencyError> {
        self.drv()?.drain_events().map_err(CoherencyError::Engine)
    }

    /// The card's registers decoded (for `amf regs` through the admin endpoint).
    pub fn registers(&self) -> Result<serde_json::Value, CoherencyError> {
        let drv = self.drv()?;
        drv.with_driver(|d| diag::dump_registers(d.backend())).map_err(CoherencyError::Engine)
    }

    /// The card's state and counters.
    pub fn state(&self) -> Result<serde_json::Value, CoherencyError> {
        let drv = self.drv()?;
        drv.with_driver(|d| diag::card_state(d.backend())).map_err(CoherencyError::Engine)
    }

    /// Which card this is.
    pub fn kind(&self) -> &'static str {
        match self.card {
            AnyCard::Sim(_) => "sim",
            AnyCard::Model(_) => "model",
        }
    }
}

impl Drop for CardPort {
    fn drop(&mut self) {
        if let Some(d) = self.drv.take() {
            self.rt.block_on(d.shutdown());
        }
        if let AnyCard::Model(m) = &self.card {
            m.stop();
        }
    }
}
