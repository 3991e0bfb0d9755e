//! Rejoin: a restarted controller (after a crash, a kill or a fence) joins the running
//! membership with a cold cache. Its earlier life was taken over already: the survivors moved
//! to an epoch without it (its nibble is odd there, see [`flip_epoch`]), took over its dirty
//! lines and resynced its write-intent slot. The join is two rounds on the fabric:
//!
//! 1. The joiner says hello to every peer; a member answers a controller out of its membership
//!    with a hello of its own, whose frame carries its epoch `E`. Once every member of `E`
//!    answered in `E`, the joiner asks each (`JoinAsk`) to join at `E` with its own change
//!    added; a member is ready (`JoinReady`) when it is in `E` and no takeover resync of its
//!    runs (the joiner's slot must be clear before it writes there again).
//! 2. With every member ready, the joiner tells them (`Join`) and moves itself; each member
//!    moves on receipt, as it does for a death: its card and fabric in the new epoch, its
//!    acquires in flight asked again. The joiner serves once every member said hello in the
//!    new epoch, and sends `Join` again meanwhile to those that did not (a lost message).
//!
//! A death in between changes the epoch on both sides the same way (changes commute): a
//! member that sees it first ignores a `Join` for the old target, the joiner's own death watch
//! moves it, and the repeated `Join` names the epoch they agree on.

use super::takeover::{Cause, ViewDue};
use super::{flip_epoch, Loop};
use crate::amf::io::Msg;
use crate::amf::shell::epoch_live;
use std::time::Instant;

/// A join in progress (the joiner's side).
pub(super) struct Joining {
    /// The epoch each peer's frames carried last.
    seen: [Option<u32>; 8],
    /// The epoch asked for, and the members ready for it.
    target: Option<u32>,
    ready: u8,
    /// The joiner moved to `target`; it waits for every member's hello there.
    moved: bool,
    since: Instant,
}

impl Joining {
    pub(super) fn new() -> Joining {
        Joining { seen: [None; 8], target: None, ready: 0, moved: false, since: Instant::now() }
    }

    /// This controller is in the membership it asked for.
    pub(super) fn moved(&self) -> bool {
        self.moved
    }
}

impl Loop {
    fn me(&self) -> u8 {
        1 << self.m.config().node
    }

    /// A frame from `from` in epoch `epoch` that is not this controller's (joining: what the
    /// members' epoch is).
    pub(super) fn join_heard(&mut self, from: u8, epoch: u32) {
        if let Some(j) = self.join.as_mut().filter(|j| !j.moved) {
            if let Some(slot) = j.seen.get_mut(from as usize) {
                *slot = Some(epoch);
            }
        }
    }

    /// A hello from a member `from` of `epoch`, a membership without this controller, while
    /// it waits at the start barrier: the others served already and took this controller's
    /// earlier life for dead (it restarted before they wrote a record that showed them
    /// serving, so it took itself for part of a cluster's start). It joins them instead.
    pub(super) fn taken_for_dead(&mut self, from: u8, epoch: u32) {
        let (base, nodes, me) = (self.base_epoch, self.m.config().nodes, self.me());
        let live = epoch_live(base, epoch, nodes);
        if self.started || self.join.is_some() || live & me != 0 || live & (1 << from) == 0 {
            return;
        }
        eprintln!(
            "amf: controller {}: the others serve in epoch {epoch} without it (its earlier life was taken over); \
             joining them",
            self.m.config().node
        );
        self.join = Some(Joining::new());
        self.m.joins();
    }

    /// Each heartbeat while joining: ask every member of the membership they agree on, or
    /// repeat the commit to those not heard in the new epoch yet.
    pub(super) fn join_tick(&mut self) {
        let (base, nodes, me) = (self.base_epoch, self.m.config().nodes, self.me());
        let Some(j) = self.join.as_mut() else { return };
        if j.moved {
            let Some(target) = j.target else { return };
            let quiet = self.m.live() & !me & !self.hello_from;
            for p in self.peers.clone().into_iter().filter(|p| quiet & (1 << p) != 0) {
                self.net.send(p, &Msg::Join { target });
            }
            return;
        }
        // An epoch every one of whose members answered in it, with this controller out.
        let agreed = j.seen.iter().flatten().copied().find(|&e| {
            let members = epoch_live(base, e, nodes) & !me;
            epoch_live(base, e, nodes) & me == 0
                && members != 0
                && (0..8u8).filter(|p| members & (1 << p) != 0).all(|p| j.seen[p as usize] == Some(e))
        });
        let Some(epoch) = agreed else {
            if j.since.elapsed() > super::HELLO_WAIT {
                eprintln!(
                    "amf: controller {}: no running membership answered within {} s; still trying",
                    self.m.config().node,
                    super::HELLO_WAIT.as_secs()
                );
                j.since = Instant::now();
            }
            return;
        };
        let target = flip_epoch(base, epoch, me);
        if j.target != Some(target) {
            j.target = Some(target);
            j.ready = 0;
        }
        let members = epoch_live(base, epoch, nodes) & !me & !j.ready;
        for p in self.peers.clone().into_iter().filter(|p| members & (1 << p) != 0) {
            self.net.send(p, &Msg::JoinAsk { target });
        }
    }

    /// A member is ready for this controller to join at `target`; with every one ready, tell
    /// them and move.
    pub(super) fn join_ready(&mut self, from: u8, target: u32) {
        let (base, nodes, me) = (self.base_epoch, self.m.config().nodes, self.me());
        let Some(j) = self.join.as_mut().filter(|j| !j.moved && j.target == Some(target)) else { return };
        if from >= 8 {
            return;
        }
        j.ready |= 1 << from;
        let live = epoch_live(base, target, nodes);
        let members = live & !me;
        if j.ready & members != members || live & me == 0 {
            return;
        }
        j.moved = true;
        for p in self.peers.clone().into_iter().filter(|p| members & (1 << p) != 0) {
            self.net.send(p, &Msg::Join { target });
        }
        self.view_due = Some(ViewDue { epoch: target, live, since: Instant::now(), cause: Cause::Joined });
    }

    /// Whether `from` may join this membership at `target`: it is out of it, and `target` is
    /// this epoch with its change added.
    fn may_join(&self, from: u8, target: u32) -> bool {
        from < self.m.config().nodes
            && from != self.m.config().node
            && self.started
            && self.view_due.is_none()
            && self.m.live() & (1 << from) == 0
            && flip_epoch(self.base_epoch, self.m.config().epoch, 1 << from) == target
    }

    /// A restarted controller asks to join: ready once this controller's takeover resyncs are
    /// done (its write-intent slot among them).
    pub(super) fn join_asked(&mut self, from: u8, target: u32) {
        let resyncing = self.takeover.unfinished.load(std::sync::atomic::Ordering::Relaxed) > 0;
        if self.may_join(from, target) && !resyncing {
            self.net.send(from, &Msg::JoinReady { target });
        }
    }

    /// Every member was ready: `from` joins at `target`.
    pub(super) fn join_commit(&mut self, from: u8, target: u32) {
        if self.may_join(from, target) {
            let live = self.m.live() | 1 << from;
            self.view_due = Some(ViewDue { epoch: target, live, since: Instant::now(), cause: Cause::Join(from) });
        }
    }
}
