//! The card at transaction level: the oracle the RTL is checked against, and the fast card for
//! large simulations.

pub mod sharer_table;
