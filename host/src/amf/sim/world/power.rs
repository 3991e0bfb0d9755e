//! A power cut: every controller and member loses power at once. The controllers stop (what
//! was in flight between them is gone), each member device loses a random part of what it had
//! not flushed ([`VolatileCaches`](crate::raid::power_loss::VolatileCaches)), and when the power
//! comes back every controller starts as `amf serve` starts a cluster: the lowest one assembles
//! first and resyncs the regions every write-intent slot marks before anyone serves. Then every
//! checked block must hold its newest durable write (flushed, or FUA) or a write not older than
//! that, the history goes on from what the blocks hold, and the clients carry on.

use super::{lease, Ev, Leases, Node, World, BASE_EPOCH, CYCLES_PER_US, TICK_US};
use crate::amf::sim::history::BLOCK_BYTES;
use crate::raid::assemble::{assemble_as, resync};
use rand::Rng;
use std::collections::BTreeMap;

/// When the power goes and for how long.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct PowerCut {
    /// When.
    pub at_us: u64,
    /// How long until the controllers start again.
    pub off_us: u64,
}

/// What a power cut did.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct PowerReport {
    /// Member writes that were not flushed and were lost.
    pub lost_writes: u64,
    /// Member writes that were not flushed and landed all the same.
    pub kept_writes: u64,
    /// Stripes resynced at the start after it (what the write-intent slots marked).
    pub resynced_stripes: u64,
    /// Stripes in the group.
    pub stripes: u64,
}

impl World {
    /// The power goes.
    pub(super) fn power_cut(&mut self, p: PowerCut) -> Result<(), String> {
        // The run is ending (its final flush is out): nothing left to cut.
        if self.final_flush.is_some() {
            return Ok(());
        }
        if self.dead != 0 || self.leases.paused != 0 {
            return Err("a power cut in a run that already lost a controller (the seed's draw excludes it)".into());
        }
        self.dead = ((1u16 << self.cfg.nodes) - 1) as u8;
        // Everything between the controllers and in their members' queues is gone.
        self.queue.retain(|_, ev| matches!(ev, Ev::CardPoll));
        self.writing.clear();
        for c in &mut self.clients {
            // A request cut off is never answered: a write among them may have landed or not.
            if let Some((req, _, _)) = c.op.take() {
                self.reqs.remove(&req);
            }
        }
        self.scrub = None;
        self.cfg.scrub_node = None;
        let caches = self.caches.clone().ok_or("a power cut with no volatile member caches")?;
        let rng = &mut self.rng;
        let cut = caches.cut(&mut || rng.gen_bool(0.5)).map_err(|e| format!("power cut: {e}"))?;
        self.power =
            Some(super::PowerReport { lost_writes: cut.lost, kept_writes: cut.kept, resynced_stripes: 0, stripes: 0 });
        self.at(self.now_us + p.off_us, Ev::PowerOn);
        Ok(())
    }

    /// The power comes back.
    pub(super) fn power_on(&mut self) -> Result<(), String> {
        let asm = assemble_as(&self.dir, false, 0).map_err(|e| format!("assemble after the power cut: {e}"))?;
        if !asm.was_dirty {
            return Err("the group was marked clean while its controllers ran".into());
        }
        let mut regions = asm.dirty_regions.clone();
        if self.cfg.mutation == Some(crate::amf::machine::Mutation::SkipTakeoverResync) {
            regions.clear();
        }
        let (resynced, _) =
            resync(&asm.array, &regions, &|_, _| {}).map_err(|e| format!("resync after the power cut: {e}"))?;
        let stripes = asm.array.geometry().stripes();
        if let Some(r) = self.power.as_mut() {
            r.resynced_stripes = resynced;
            r.stripes = stripes;
        }
        // What the members hold, read before anything runs (the caches are cold, so the
        // controllers would read the same).
        let mut held = BTreeMap::new();
        for b in self.history.blocks().collect::<Vec<_>>() {
            let mut buf = vec![0u8; BLOCK_BYTES];
            asm.array.read(b * BLOCK_BYTES as u64, &mut buf).map_err(|e| format!("read after the power cut: {e}"))?;
            held.insert(b, self.history.check_after_cut(b, &buf)?);
        }
        self.history.rebase(&held, self.now_us);
        // The resync made every stripe whole: checked here, since the final scrub comes after
        // the writes that follow.
        let scrub = crate::raid::scrub::scrub(&asm.array, false, &|_, _| {})
            .map_err(|e| format!("scrub after the power cut: {e}"))?;
        if scrub.mismatches != 0 {
            return Err(format!(
                "after the power cut and the resync of the marked regions, {} stripes have parity out of step: {:?}",
                scrub.mismatches, scrub.mismatched_stripes
            ));
        }
        let caches = self.caches.clone();
        let start = (BASE_EPOCH, super::start_key(self.cfg.seed, 1));
        let mut nodes = vec![Node::open(&self.cfg, asm.array, 0, start, caches.as_ref())?];
        for n in 1..self.cfg.nodes {
            nodes.push(Node::start(&self.cfg, &self.dir, n, start, caches.as_ref())?);
        }
        for node in &mut nodes {
            node.card_cycles = self.now_us * CYCLES_PER_US;
        }
        // The stale-epoch messages the old controllers dropped are counted with them.
        let dropped: u64 = self.nodes.iter().map(|n| n.m.counters.stale_epoch).sum();
        self.stale_sent = self.stale_sent.saturating_sub(dropped);
        self.nodes = nodes;
        self.dead = 0;
        self.epoch = BASE_EPOCH;
        self.leases = Leases::new(self.cfg.nodes, World::lease_timing(self.cfg.mutation));
        for n in 0..self.cfg.nodes {
            self.leases.restarted(n, self.now_us);
            self.at(self.now_us + TICK_US, Ev::Tick(n));
            self.at(self.now_us + lease::SIM_LEASE.renew_us, Ev::Renew(n));
        }
        for c in 0..self.clients.len() {
            if self.clients[c].left > 0 {
                let t = self.now_us + self.rng.gen_range(1..100);
                self.at(t, Ev::Client(c));
            }
        }
        self.maybe_final_flush()
    }
}
