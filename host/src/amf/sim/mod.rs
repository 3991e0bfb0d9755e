//! The deterministic simulator: N controllers' state machines, each with the card's Rust
//! reference model behind the real driver and rings, cards linked by a lossy link, machines
//! by a lossy fabric, and one RAID group on member files that every controller writes itself
//! (its own `Array`, its own write-intent slot). One seed drives every choice: which event
//! runs next is the earliest in simulated time, ties broken by insertion order; delays, loss,
//! duplication, member latency, the workload and the group's shape come from the seed's RNG.
//! A failing seed replays bit for bit (`amf sim --seed N`).
//!
//! Checkers, outside the code under test: the history checker (every read is one a
//! linearizable register allows), single-writer (no two nodes hold a line with one of them
//! Exclusive or Modified; no two hold a stripe lock), stripe writes never overlap in time,
//! every acknowledged dirty line has its replica, and at the end every acknowledged write is
//! on the members and parity is consistent (scrub).

pub mod history;
mod world;

pub use world::{run, Faults, Report, SimConfig};

#[cfg(test)]
mod tests;
