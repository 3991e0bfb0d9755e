//! A whole coherent cluster inside one process: N AMFs, each with its own reference-model card
//! (linked over UDP on loopback) and fabric endpoint (TCP on loopback), node 0 owning the
//! members. The same code as `amf serve`, minus NBD and the admin endpoint: for the seeded
//! cluster test (tests/cluster_sim.rs) and for trying protocol changes quickly.

use super::ClusterError;
use crate::coherency::card::{AnyCard, CardKind, CardPort};
use crate::coherency::disk::{Disk, Members};
use crate::coherency::{Amf, AmfConfig};
use crate::fabric::{FabricServer, Peer};
use crate::raid::assemble::{assemble, create, CreateOptions};
use crate::raid::Array;
use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// A running in-process cluster.
pub struct InProcess {
    /// The controllers, by node id.
    pub amfs: Vec<Arc<Amf>>,
    servers: Vec<FabricServer>,
    array: Arc<Array>,
}

fn io(what: &str) -> impl Fn(std::io::Error) -> ClusterError + '_ {
    move |source| ClusterError::Bind { addr: what.to_string(), source }
}

impl InProcess {
    /// Creates a group in `dir` with `shape` and starts `nodes` controllers on it.
    pub fn start(
        dir: &Path,
        shape: &CreateOptions,
        nodes: u8,
        line_bytes: usize,
        cache_bytes: usize,
    ) -> Result<InProcess, ClusterError> {
        if !(2..=super::config::NODES_MAX).contains(&nodes) {
            return Err(ClusterError::Config(format!("an in-process cluster has 2 to 8 nodes, not {nodes}")));
        }
        create(dir, shape)?;
        let asm = assemble(dir)?;
        let array = Arc::new(asm.array);
        array.mark_dirty()?;
        let local = "127.0.0.1:0".parse().map_err(|_| ClusterError::Config("loopback".into()))?;
        let mut listeners = Vec::new();
        let mut cards = Vec::new();
        for _ in 0..nodes {
            let l = TcpListener::bind(local).map_err(io("fabric"))?;
            listeners.push(l);
            cards.push(AnyCard::start(CardKind::Model, local).map_err(io("card link"))?);
        }
        let mut peers: Vec<Arc<Peer>> = Vec::new();
        for (n, l) in listeners.iter().enumerate() {
            peers.push(Arc::new(Peer::new(n as u8, l.local_addr().map_err(io("fabric"))?)));
        }
        for (n, card) in cards.iter().enumerate() {
            for (m, other) in cards.iter().enumerate() {
                if n != m {
                    card.set_peer(m as u8, other.link_addr().map_err(io("card link"))?);
                }
            }
        }
        let mask = if nodes >= 8 { 0xff } else { (1u8 << nodes) - 1 };
        let members = Arc::new(Members::new(array.clone(), line_bytes as u64));
        let mut amfs = Vec::new();
        for (n, card) in cards.into_iter().enumerate() {
            let node = n as u8;
            let port = CardPort::open(card, node, mask, 1, Duration::from_secs(5))?;
            let disk = if node == 0 {
                Disk::Local(members.clone())
            } else {
                Disk::Remote { primary: peers[0].clone(), node, epoch: 1, line_bytes: line_bytes as u64 }
            };
            let others: Vec<Arc<Peer>> =
                peers.iter().filter(|p| p.node != node).map(|p| Arc::new(Peer::new(p.node, p.addr()))).collect();
            let cfg = AmfConfig { node, nodes, epoch: 1, line_bytes, cache_bytes, capacity: array.capacity() };
            amfs.push(Arc::new(Amf::new(cfg, port, others, disk)));
        }
        let mut servers = Vec::new();
        for (l, amf) in listeners.into_iter().zip(&amfs) {
            servers.push(FabricServer::spawn(l, amf.clone()).map_err(io("fabric"))?);
        }
        Ok(InProcess { amfs, servers, array })
    }

    /// Writes every dirty line back (the other controllers first, through the primary), then
    /// marks the group clean.
    pub fn stop(self) -> Result<(), ClusterError> {
        for a in self.amfs.iter().rev() {
            a.destage_all()?;
        }
        for s in &self.servers {
            s.stop();
        }
        self.array.close()?;
        Ok(())
    }
}
