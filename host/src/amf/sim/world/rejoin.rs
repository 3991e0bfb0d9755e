//! A dead controller started again: it joins the survivors with a cold cache, as the
//! controllers do (`amf/shell/join.rs`). It starts once the survivors are ready for it (every
//! one moved to the membership without it and the takeover's resync of its write-intent slot
//! is done: the readiness the real join asks each member for), assembles the group with its
//! own slot (what the survivors cleared), opens a fresh card and a machine in the epoch with
//! its join added, and every member moves to that membership at its own time (a spread of
//! `VIEW_SPREAD_US`) once its card has fetched the commands of the old one. Its clients go
//! back to it once every member moved.

use super::{Ev, Node, World, BASE_EPOCH, TICK_US, VIEW_SPREAD_US};
use crate::amf::io::Input;
use rand::Rng;

/// A restart waits this long again while the survivors are not ready for it.
const NOT_READY_US: u64 = 500;

impl World {
    /// Controller `n` starts again (if the survivors are ready for it).
    pub(super) fn restart(&mut self, n: u8) -> Result<(), String> {
        let ready = self.view_pending == 0 && self.takeover.as_ref().is_none_or(|t| t.done);
        if !ready || self.final_flush.is_some() {
            if self.final_flush.is_none() {
                self.at(self.now_us + NOT_READY_US, Ev::Restart(n));
            }
            return Ok(());
        }
        let target = crate::amf::shell::flip_epoch(BASE_EPOCH, self.epoch, 1 << n);
        // The key of the running start (a run that cuts the power restarts no controller alone:
        // `with_power_cut`).
        let key = super::start_key(self.cfg.seed, self.power.is_some() as u32);
        let mut node = Node::start(&self.cfg, &self.dir, n, (target, key), self.caches.as_ref())?;
        node.array.reload_own_slot().map_err(|e| format!("n{n} reading its slot: {e}"))?;
        node.m.joins();
        node.card_cycles = self.now_us * super::CYCLES_PER_US;
        self.nodes[n as usize] = node;
        self.dead &= !(1 << n);
        self.epoch = target;
        let all = ((1u16 << self.cfg.nodes) - 1) as u8;
        let live = all & !self.dead;
        self.nodes[n as usize].driver.set_view(target, live);
        self.step(n, Input::View { epoch: target, live })?;
        self.leases.restarted(n, self.now_us);
        self.at(self.now_us + TICK_US, Ev::Tick(n));
        self.at(self.now_us, Ev::Renew(n));
        let members: Vec<u8> = (0..self.cfg.nodes).filter(|s| *s != n && self.alive(*s)).collect();
        for s in members {
            self.view_pending |= 1 << s;
            let t = self.now_us + self.rng.gen_range(0..VIEW_SPREAD_US);
            self.at(t, Ev::Join(s));
        }
        Ok(())
    }

    /// Member `s` moves to the membership with the restarted controller in.
    pub(super) fn join(&mut self, s: u8) -> Result<(), String> {
        if !self.move_to_membership(s, Ev::Join(s))? {
            return Ok(());
        }
        if self.view_pending == 0 {
            let Some(c) = self.cfg.faults.crash else { return Ok(()) };
            self.rejoined = Some(c.node);
            if let Some(after) = c.then_crash_us {
                // The controller before the joiner in ring order: its new lines' replicas go to
                // the joiner now, its older dirty lines' stay where they went meanwhile.
                let n = self.cfg.nodes;
                let before = (1..n).map(|i| (c.node + n - i) % n).find(|p| self.alive(*p)).unwrap_or(c.node);
                let then = super::Crash {
                    node: before,
                    at_us: self.now_us + after,
                    detect_us: self.rng.gen_range(100..=3_000),
                    restart_after_us: None,
                    then_crash_us: None,
                };
                self.at(then.at_us, Ev::Crash(then));
            }
            self.maybe_final_flush()?;
        }
        Ok(())
    }
}
