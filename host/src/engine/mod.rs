//! Host driver for the coherency card: one driver over any backend that offers 32-bit register
//! access to BAR0 and DMA-able host memory. Backends: `model` (the Rust reference model, in
//! process); the Verilator card and VFIO come next (see docs/driver.md).

pub mod any;
pub mod asynch;
pub mod backend;
pub mod diag;
pub mod driver;
pub mod link;
pub mod sim;
pub mod vfio;

pub use any::{AnyCard, CardKind};
pub use asynch::AsyncDriver;
pub use backend::{Backend, ModelBackend};
pub use driver::{Driver, DriverConfig, LinkKey};
pub use link::LinkedModel;
pub use sim::SimBackend;
pub use vfio::VfioBackend;

/// Errors of the driver.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The register chain does not contain a block the driver needs.
    #[error("card has no {0} register block (TYPE {1:#010x})")]
    MissingBlock(&'static str, u32),
    /// A block has a major version this driver does not know.
    #[error("card's {block} block has version {found:#x}; this driver knows major {known}")]
    Version {
        /// Block name.
        block: &'static str,
        /// VERSION register value.
        found: u32,
        /// Supported major.
        known: u32,
    },
    /// Walking NEXT pointers did not end (garbage or a dead card reading all-ones).
    #[error("register block chain is broken at offset {0:#x} (a card that does not answer reads all-ones)")]
    BrokenChain(u32),
    /// The card reports an error in device.status.
    #[error("card reports error code {0} (1 bad ring size, 2 doorbell overrun, 3 DMA error)")]
    Card(u32),
    /// The card did not become ready after reset.
    #[error("card not ready after reset")]
    NotReady,
    /// Every command slot is in use: back-pressure, try again after reaping completions.
    #[error("command ring full ({0} commands in flight)")]
    Busy(usize),
    /// A command got no completion in time.
    #[error("command with tag {tag} timed out after {waited_ms} ms")]
    Timeout {
        /// Tag.
        tag: u32,
        /// Time waited.
        waited_ms: u64,
    },
    /// A completion named a tag the driver never issued (a misbehaving card).
    #[error("completion for unknown tag {0}")]
    UnknownTag(u32),
    /// Host memory for the rings could not be provided.
    #[error("DMA memory: {0}")]
    Dma(String),
    /// link_auth.ctrl.enable did not read back set after the key was loaded.
    #[error("card did not turn link authentication on (link_auth.ctrl.enable reads back clear)")]
    LinkAuth,
}
