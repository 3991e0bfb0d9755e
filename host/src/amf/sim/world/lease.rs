//! The controllers' leases in the simulator: every controller runs the lease rules the
//! controllers run (`cluster/lease/rules.rs`), renewing a record on a shared lease disk every
//! period and hearing the others' heartbeats; a controller may be paused (SIGSTOP, a VM
//! stall), and its peers learn that only from its lease. The checks: a lease is declared over
//! only once its owner can no longer write (its deadline passed, or it said it fenced itself),
//! and a paused controller that resumes after the others took over from it does nothing
//! before it fences itself.

use super::{Crash, Ev, World, RECONNECT_US, VIEW_SPREAD_US};
use crate::amf::machine::Mutation;
use crate::cluster::lease::record::{Record, Standing};
use crate::cluster::lease::rules::{Lease, Timing};

/// The lease's times in the simulator: the controllers' proportions, in simulated
/// microseconds (the rules have no unit of their own).
pub(super) const SIM_LEASE: Timing =
    Timing { renew_us: 200, fence_us: 2_000, expire_us: 4_000, suspect_us: 1_000, settle_us: 500, fresh_us: 450 };

/// A controller that stops for a while and then goes on (SIGSTOP and SIGCONT, a stalled VM):
/// nothing of its host side runs meanwhile (its card does: it is hardware).
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Pause {
    /// The controller.
    pub node: u8,
    /// When it stops.
    pub at_us: u64,
    /// For how long.
    pub for_us: u64,
}

/// A controller cut off from the others' fabric and card link for a while (its members stay
/// reachable): both ways, or only what comes to it (it hears no one; the others hear it).
/// Past the lease's suspicion and settling times it loses the conflict over reach and fences
/// itself; shorter, everything resumes when the link does.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Partition {
    /// The controller cut off.
    pub node: u8,
    /// When the cut begins.
    pub at_us: u64,
    /// How long it lasts.
    pub for_us: u64,
    /// Only what comes to it is cut.
    pub deaf_only: bool,
    /// Only what it sends is cut (it hears everyone, no one hears it).
    pub mute_only: bool,
}

/// The leases of a run.
pub(super) struct Leases {
    rules: Vec<Lease>,
    disk: [Option<Record>; 8],
    /// heard[a][b]: when a last heard b's heartbeat.
    heard: [[u64; 8]; 8],
    /// Controllers paused now (bit n).
    pub(super) paused: u8,
    /// What reached a paused controller, in order, for when it resumes.
    deferred: Vec<Ev>,
    /// A controller that fenced itself.
    pub(super) fenced: Option<u8>,
    /// A paused controller the others took over from.
    pub(super) taken_over: Option<u8>,
    /// Renewals.
    pub(super) renewals: u64,
}

impl Leases {
    pub(super) fn new(nodes: u8, timing: Timing) -> Leases {
        Leases {
            rules: (0..nodes).map(|n| Lease::new(n, 1, timing, 0)).collect(),
            disk: [None; 8],
            // Everyone counts as heard at the start (the start barrier passed).
            heard: [[1; 8]; 8],
            paused: 0,
            deferred: Vec::new(),
            fenced: None,
            taken_over: None,
            renewals: 0,
        }
    }
}

impl Leases {
    /// Controller `n` runs again (a new process, a new incarnation): its lease starts over,
    /// and it hears and is heard from now (its heartbeats begin with its start).
    pub(super) fn restarted(&mut self, n: u8, now_us: u64) {
        let timing = self.rules[n as usize].timing();
        self.rules[n as usize] = Lease::new(n, 2, timing, now_us);
        for p in 0..8 {
            self.heard[n as usize][p] = now_us;
            self.heard[p][n as usize] = now_us;
        }
    }
}

impl World {
    /// The times in force: the simulator's, or with `expire-before-fence` an expiry shorter
    /// than the owner's deadline (a broken timing the checks must catch).
    pub(super) fn lease_timing(mutation: Option<Mutation>) -> Timing {
        match mutation {
            Some(Mutation::ExpireBeforeFence) => Timing { expire_us: SIM_LEASE.fence_us / 2, ..SIM_LEASE },
            _ => SIM_LEASE,
        }
    }

    /// Whether what `from` sends to `to` is cut off now.
    pub(super) fn cut(&self, from: u8, to: u8) -> bool {
        let Some(p) = self.cfg.faults.partition else { return false };
        let now = self.now_us;
        if from == to || now < p.at_us || now >= p.at_us + p.for_us {
            return false;
        }
        (to == p.node && !p.mute_only) || (from == p.node && !p.deaf_only)
    }

    /// Whether `ev` is for the host side of a paused controller (then it waits).
    pub(super) fn defer_if_paused(&mut self, ev: Ev) -> Option<Ev> {
        let host = match &ev {
            Ev::Fabric { to, .. } => Some(*to),
            Ev::MemberDone { node, .. } | Ev::MemberRead { node, .. } | Ev::Tick(node) | Ev::View(node) => Some(*node),
            Ev::Renew(node) => Some(*node),
            Ev::Client(c) => self.clients.get(*c).map(|c| c.node),
            _ => None,
        };
        if host.is_some_and(|h| self.leases.paused & (1 << h) != 0) {
            self.leases.deferred.push(ev);
            return None;
        }
        Some(ev)
    }

    fn reach(&self, n: u8) -> u8 {
        let t = self.leases.rules[n as usize].timing();
        (0..self.cfg.nodes)
            .filter(|p| self.leases.heard[n as usize][*p as usize] + t.suspect_us >= self.now_us)
            .fold(1 << n, |m, p| m | 1 << p)
    }

    /// Controller `n` renews its lease, hears who is over, and fences itself if it must.
    pub(super) fn renew(&mut self, n: u8) -> Result<(), String> {
        let now = self.now_us;
        let t = self.leases.rules[n as usize].timing();
        self.at(now + t.renew_us, Ev::Renew(n));
        // Its heartbeat reaches every controller that runs.
        let running: Vec<u8> = (0..self.cfg.nodes)
            .filter(|p| *p != n && self.alive(*p) && self.leases.paused & (1 << p) == 0 && !self.cut(n, *p))
            .collect();
        for p in running {
            self.leases.heard[p as usize][n as usize] = now;
        }
        let live = self.nodes[n as usize].m.live();
        let reach = self.reach(n);
        if let Some(why) = self.leases.rules[n as usize].verdict(now, live, reach) {
            return self.fence(n, &why);
        }
        let epoch = self.nodes[n as usize].m.config().epoch;
        let rec = self.leases.rules[n as usize].next_record(epoch, reach, Standing::Live);
        self.leases.disk[n as usize] = Some(rec);
        self.leases.rules[n as usize].renewed(now, true);
        self.leases.renewals += 1;
        let disk = self.leases.disk;
        self.leases.rules[n as usize].observed(now, &disk);
        let expired = self.leases.rules[n as usize].expired(live);
        for p in (0..self.cfg.nodes).filter(|p| expired & (1 << p) != 0) {
            self.declare_expired(p, n)?;
        }
        Ok(())
    }

    /// Controller `by` found `p`'s lease over: the others take over from it. The lease's
    /// promise is checked here: `p` can no longer write.
    fn declare_expired(&mut self, p: u8, by: u8) -> Result<(), String> {
        let fenced = self.leases.disk[p as usize].is_some_and(|r| r.standing == Standing::Fenced);
        let deadline = self.leases.rules[p as usize].deadline_us();
        if !fenced && deadline > self.now_us && self.alive(p) {
            return Err(format!(
                "n{by} found n{p}'s lease over at {} us, but n{p} may still write until {deadline} us",
                self.now_us
            ));
        }
        if !self.alive(p) {
            return Ok(());
        }
        // A paused controller taken over: what waited for it is dropped (it fences itself
        // when it resumes), but its clients' next operations go to a survivor.
        let deferred = std::mem::take(&mut self.leases.deferred);
        self.leases.taken_over = Some(p);
        self.crash(Crash { node: p, at_us: self.now_us, detect_us: 0, restart_after_us: None, then_crash_us: None })?;
        self.requeue_clients(deferred);
        Ok(())
    }

    /// The clients' next operations that waited for a controller that is out now go to the
    /// survivor `crash` gave them; everything else that waited for it is dropped.
    fn requeue_clients(&mut self, deferred: Vec<Ev>) {
        for ev in deferred {
            if let Ev::Client(c) = ev {
                self.at(self.now_us + VIEW_SPREAD_US + RECONNECT_US, Ev::Client(c));
            }
        }
    }

    /// Controller `n` fences itself: nothing of it runs from now on, and its record says so,
    /// which the others see at their next renewal.
    fn fence(&mut self, n: u8, _why: &str) -> Result<(), String> {
        let epoch = self.nodes[n as usize].m.config().epoch;
        let rec = self.leases.rules[n as usize].next_record(epoch, 1 << n, Standing::Fenced);
        self.leases.disk[n as usize] = Some(rec);
        self.leases.fenced = Some(n);
        self.leases.taken_over.get_or_insert(n);
        let renew = self.leases.rules[n as usize].timing().renew_us;
        self.crash(Crash { node: n, at_us: self.now_us, detect_us: renew, restart_after_us: None, then_crash_us: None })
    }

    /// Controller `p.node` stops.
    pub(super) fn pause(&mut self, p: Pause) {
        if self.alive(p.node) {
            self.leases.paused |= 1 << p.node;
            self.at(self.now_us + p.for_us, Ev::Resume(p.node));
        }
    }

    /// Controller `n` goes on: before anything of it runs, it checks its lease.
    pub(super) fn resume(&mut self, n: u8) -> Result<(), String> {
        self.leases.paused &= !(1 << n);
        let live = self.nodes[n as usize].m.live();
        let all = ((1u16 << self.cfg.nodes) - 1) as u8;
        let verdict = self.leases.rules[n as usize].verdict(self.now_us, live, all);
        if !self.alive(n) {
            // Taken over while it was paused: it must find its deadline passed.
            return match verdict {
                Some(_) => {
                    self.leases.fenced = Some(n);
                    Ok(())
                }
                None => {
                    Err(format!("n{n} resumed at {} us with its lease valid after the others took over", self.now_us))
                }
            };
        }
        if let Some(why) = verdict {
            let deferred = std::mem::take(&mut self.leases.deferred);
            self.fence(n, &why)?;
            self.requeue_clients(deferred);
            return Ok(());
        }
        for ev in std::mem::take(&mut self.leases.deferred) {
            self.at(self.now_us, ev);
        }
        Ok(())
    }
}
