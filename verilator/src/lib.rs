//! The card's RTL, compiled by Verilator, as Rust objects. Each simulated module has a small
//! extern "C" shim (verilator/csrc) and a safe wrapper here; the only unsafe code is in `sim`,
//! which owns a model through its shim's new/cycle/free functions.
#![deny(missing_docs)]

pub mod card;
pub mod cmd_fetch;
pub mod device;
pub mod dma_arb;
pub mod frame_check;
pub mod frame_tx;
pub mod regs;
pub mod ring_writer;
pub mod sharer_table;
mod sim;
