//! The AMF as one deterministic state machine (`machine`), its inputs and outputs (`io`), and
//! the seeded simulator that drives it with the card's reference model, a faulty fabric and
//! link, and a RAID group every controller writes itself (`sim`). The controllers move onto
//! this machine next (docs/architecture.md, "Toward the symmetric core").

pub mod card_terms;
pub mod io;
pub mod machine;
#[cfg(test)]
mod model_check;
pub mod shell;
pub mod sim;

pub use machine::{Config, Machine, Mutation, State, WRITEBACK_AGE_US_DEFAULT};
