//! The controller's side of a membership change: it asks the membership's proof
//! ([`DeathWatch`]) which peers are dead, moves its card, its fabric and its machine to the
//! membership without them (the machine takes over their dirty lines, see
//! `machine/view.rs`), and the lowest survivor resyncs the regions their write-intent slots
//! mark, stripe by stripe under the stripe locks, while everyone keeps serving.

use super::{call, Inbox, Loop};
use crate::amf::io::{HostReq, Input, StripeJob};
use crate::raid::Array;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// How often the loop asks the membership's proof about its peers.
pub(super) const WATCH_INTERVAL: Duration = Duration::from_millis(50);
/// Stripes between progress lines of the takeover's resync.
const PROGRESS_STRIPES: u64 = 1024;

/// Which peers are dead for sure: their process is gone (on one host the kernel released the
/// lock it held while alive) or their lease ran out (they fenced themselves). A peer that is
/// only slow or cut off is not dead: taking over from it would let two controllers serve one
/// line.
pub trait DeathWatch: Send {
    /// Mask of the peers proven dead (bit n: controller n).
    fn dead(&mut self) -> u8;
}

/// The takeover's resync, for `amf status`.
#[derive(Debug, Default)]
pub struct TakeoverProgress {
    /// Controllers out of the membership now, as a mask (a controller that joins again is
    /// taken out of it).
    pub gone: AtomicU64,
    /// The membership's epoch now.
    pub epoch: AtomicU32,
    /// Its members, as a mask.
    pub live: AtomicU8,
    /// Joins seen (this controller's own included).
    pub joins: AtomicU64,
    /// Stripes of their write-intent regions to resync.
    pub stripes: AtomicU64,
    /// Stripes resynced.
    pub done: AtomicU64,
    /// Milliseconds from the proof of death to the new membership in this controller.
    pub view_ms: AtomicU64,
    /// Resyncs started here and not finished: while any is, the group must not be marked
    /// clean (its next start resyncs every slot's regions instead).
    pub unfinished: AtomicU64,
    /// Every peer said hello: the start barrier is passed and the fabric carries heartbeats.
    pub serving: std::sync::atomic::AtomicBool,
    /// The process (incarnation) of each member met over the fabric, 0 for none: the lease
    /// counts its records as of this run.
    pub met: [AtomicU64; 8],
}

impl TakeoverProgress {
    /// As JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "gone": self.gone.load(Relaxed),
            "epoch": self.epoch.load(Relaxed),
            "live": self.live.load(Relaxed),
            "joins": self.joins.load(Relaxed),
            "resync_stripes": self.stripes.load(Relaxed),
            "resync_done": self.done.load(Relaxed),
            "view_ms": self.view_ms.load(Relaxed),
            "resync_unfinished": self.unfinished.load(Relaxed),
        })
    }
}

/// The epoch after the controllers of `changed` left or joined, from `epoch`: each change of
/// controller n (a leave or a join) adds one to its nibble (bits 4n..4n+4, counted modulo 16)
/// over `base`, the full membership's epoch. Changes commute, so controllers that see the same
/// leaves and joins agree on the epoch without talking, whatever order they saw them in; a
/// controller is a member when its nibble is even ([`epoch_live`]); and two memberships share
/// an epoch only after 16 changes of one controller (8 restarts), long after any frame of the
/// first is gone.
pub fn flip_epoch(base: u32, epoch: u32, changed: u8) -> u32 {
    let mut d = epoch.wrapping_sub(base);
    for n in (0..8u32).filter(|n| changed & (1 << n) != 0) {
        let nibble = (d >> (4 * n)) & 0xf;
        d = (d & !(0xf << (4 * n))) | (((nibble + 1) & 0xf) << (4 * n));
    }
    base.wrapping_add(d)
}

/// The members of `epoch` among controllers `0..nodes` (see [`flip_epoch`]).
pub fn epoch_live(base: u32, epoch: u32, nodes: u8) -> u8 {
    let d = epoch.wrapping_sub(base);
    (0..nodes.min(8)).filter(|n| (d >> (4 * *n as u32)) & 1 == 0).fold(0, |m, n| m | 1 << n)
}

/// Why the membership changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Cause {
    /// Peers are dead for sure: take over from them.
    Deaths,
    /// A restarted peer joins (every member was ready for it).
    Join(u8),
    /// This controller joins the running members.
    Joined,
}

/// A new membership waiting for the card to fetch every command of the old one.
#[derive(Clone, Copy, Debug)]
pub(super) struct ViewDue {
    pub(super) epoch: u32,
    pub(super) live: u8,
    pub(super) since: Instant,
    pub(super) cause: Cause,
}

impl Loop {
    /// The next pass of the loop asks the proof at once.
    pub(super) fn watch_now(&mut self) {
        self.last_watch = Instant::now() - WATCH_INTERVAL;
    }

    fn all_nodes(&self) -> u8 {
        if self.m.config().nodes >= 8 {
            0xff
        } else {
            (1u8 << self.m.config().nodes) - 1
        }
    }

    /// Asks the proof about the peers now and then (`leaving`: this controller is stopping);
    /// moves to a new membership once the card has fetched every command of the old one.
    /// True when it moved to one for peers' deaths (a leave then writes back again).
    pub(super) fn watch_members(&mut self, leaving: bool) -> bool {
        let node = self.m.config().node;
        let watching = self.started || self.join.as_ref().is_some_and(|j| j.moved());
        if self.view_due.is_none() && watching && self.last_watch.elapsed() >= WATCH_INTERVAL {
            self.last_watch = Instant::now();
            // A peer that said it left wrote back everything first. When the whole cluster
            // stops (this controller too), its exit is a stop, not a death: nothing of it
            // needs taking over. A peer that stops alone leaves the membership all the same
            // (its replicas of this controller's lines went with it).
            let stopping = if leaving { self.left_from } else { 0 };
            let proven = self.deaths.as_mut().map_or(0, |w| w.dead()) | self.reborn;
            let dead = proven & self.all_peers() & !stopping;
            if dead != 0 {
                let live = self.m.live() & !dead;
                let epoch = flip_epoch(self.base_epoch, self.m.config().epoch, dead);
                eprintln!(
                    "amf: controller {node}: controllers {:?} are dead; moving to epoch {epoch}",
                    mask_list(dead)
                );
                self.view_due = Some(ViewDue { epoch, live, since: Instant::now(), cause: Cause::Deaths });
            }
        }
        let Some(due) = self.view_due else { return false };
        match self.driver.unfetched() {
            Ok(0) => {}
            Ok(_) => return false,
            Err(e) => {
                self.card_error = Some(e.to_string());
                return false;
            }
        }
        self.view_due = None;
        let ViewDue { epoch, live, since, cause } = due;
        let gone = self.m.live() & !live;
        // A controller that left or joins is met again (a new process says hello).
        self.reborn &= !gone;
        for d in mask_list(self.m.live() ^ live) {
            self.set_met(d, None);
        }
        if cause == Cause::Deaths {
            // Before anything is served in the new membership: the dead controllers' mirror
            // copies may differ where they were writing.
            for d in mask_list(gone) {
                match self.array.slot_dirty_regions(d as usize) {
                    Ok(regions) => self.array.mark_unsynced(&self.array.region_stripes(&regions)),
                    Err(e) => eprintln!("amf: controller {node}: reading controller {d}'s write-intent slot: {e}"),
                }
            }
        }
        self.driver.set_view(epoch, live);
        self.net.set_epoch(epoch);
        let before = self.m.counters.lines_taken_over;
        self.step(Input::View { epoch, live });
        let taken = self.m.counters.lines_taken_over - before;
        let ms = since.elapsed().as_millis() as u64;
        let all = self.all_nodes();
        self.takeover.epoch.store(epoch, Relaxed);
        self.takeover.live.store(live, Relaxed);
        self.takeover.gone.store((all & !live) as u64, Relaxed);
        match cause {
            Cause::Deaths => {
                // The survivors may have taken lines over: what they said of their leave
                // before holds no more (each says it again after writing back again).
                self.left_from = 0;
            }
            Cause::Join(j) => {
                self.takeover.joins.fetch_add(1, Relaxed);
                self.left_from &= !(1 << j);
                self.hello_from &= !(1 << j);
                eprintln!(
                    "amf: controller {node}: controller {j} joined; epoch {epoch}, controllers {:?}",
                    mask_list(live)
                );
                return false;
            }
            Cause::Joined => {
                self.takeover.joins.fetch_add(1, Relaxed);
                self.hello_from = 0;
                // Its slot was resynced and cleared by the survivors before they were ready:
                // what this controller assembled from every slot is not its own.
                if let Err(e) = self.array.reload_own_slot() {
                    eprintln!("amf: controller {node}: reading its write-intent slot: {e}");
                }
                eprintln!(
                    "amf: controller {node}: joined the running controllers {:?} in epoch {epoch}",
                    mask_list(live & !(1 << node))
                );
                return false;
            }
        }
        self.takeover.view_ms.store(ms, Relaxed);
        eprintln!(
            "amf: controller {node}: epoch {epoch}, controllers {:?}; took over {taken} dirty lines ({ms} ms)",
            mask_list(live)
        );
        let out = self.array.degraded_members();
        if !out.is_empty() {
            eprintln!(
                "amf: controller {node}: WARNING: controllers {:?} died while members {out:?} are out: stripes they \
                 were writing may have parity out of step, and those members' blocks there cannot be rebuilt \
                 reliably (the RAID write hole); scrub after the rebuild",
                mask_list(gone)
            );
        }
        // The lowest survivor resyncs what the dead were writing (every controller out of the
        // membership: one that died while it resynced for an earlier one left it unfinished).
        if live.trailing_zeros() as u8 == node {
            let (inbox, array, progress) = (self.inbox.clone(), self.array.clone(), self.takeover.clone());
            let dead = mask_list(all & !live);
            progress.unfinished.fetch_add(1, Relaxed);
            let spawned = std::thread::Builder::new()
                .name(format!("amf-takeover-{node}"))
                .spawn(move || resync_dead_slots(&inbox, &array, &dead, &progress, node));
            if let Err(e) = spawned {
                eprintln!("amf: controller {node}: cannot start the takeover's resync: {e}");
            }
        }
        true
    }
}

fn mask_list(mask: u8) -> Vec<u8> {
    (0..8).filter(|n| mask & (1 << n) != 0).collect()
}

/// Resyncs the stripes the write-intent slots of `dead` mark, one stripe job at a time through
/// the loop (under the stripe's lock), then clears the slots.
fn resync_dead_slots(inbox: &Inbox, array: &Array, dead: &[u8], progress: &TakeoverProgress, node: u8) {
    for &d in dead {
        let stripes = match array.slot_dirty_regions(d as usize) {
            Ok(regions) => array.region_stripes(&regions),
            Err(e) => {
                eprintln!("amf: controller {node}: reading controller {d}'s write-intent slot: {e}");
                continue;
            }
        };
        progress.stripes.fetch_add(stripes.len() as u64, Relaxed);
        eprintln!("amf: controller {node}: resyncing {} stripes controller {d} may have been writing", stripes.len());
        for (i, &stripe) in stripes.iter().enumerate() {
            let job = StripeJob::Scrub { repair: true };
            if let Err(e) = call(inbox, HostReq::Stripe { stripe, job }) {
                // Left unfinished: the group stays dirty, and its next start resyncs.
                eprintln!("amf: controller {node}: resync of stripe {stripe} stopped: {e}");
                return;
            }
            progress.done.fetch_add(1, Relaxed);
            if (i as u64 + 1).is_multiple_of(PROGRESS_STRIPES) {
                eprintln!("amf: controller {node}: resync {}/{} stripes", i + 1, stripes.len());
            }
        }
        match array.clear_bitmap_slot(d as usize) {
            Ok(()) => eprintln!("amf: controller {node}: controller {d}'s write-intent regions are in sync"),
            Err(e) => {
                eprintln!("amf: controller {node}: clearing controller {d}'s write-intent slot: {e}");
                return;
            }
        }
    }
    progress.unfinished.fetch_sub(1, Relaxed);
}
