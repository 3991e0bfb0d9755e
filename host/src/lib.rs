//! amf: an active-active storage controller. This crate holds the RAID engine, the NBD server
//! and the controller daemon behind the `amf` command.
#![deny(missing_docs)]

pub mod amf;
pub mod bench;
pub mod cli;
pub mod cluster;
pub mod engine;
pub mod metrics;
pub mod nbd;
pub mod raid;
pub mod tls;
pub mod workload;
