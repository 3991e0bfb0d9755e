//! The group resource ([`GROUP_RESOURCE`]): which members have failed, as the superblocks
//! record it. Every controller starts holding it shared with the view its assembly loaded (a
//! held request reaches the host whatever the card's table says, so no acquire is needed for
//! that); member I/O goes out only under that hold. A member failure seen here is recorded under
//! the exclusive hold: each peer yields only with no member I/O in flight, and re-reads the
//! record before its next member I/O; here, every member completion waits until the record is
//! made, so the line or stripe it belongs to is not given up while a peer could still read the
//! failed member's stale data.

use super::*;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct Group {
    /// Held here: Some(exclusive).
    held: Option<bool>,
    /// An acquire in flight: (card id, exclusive).
    acquiring: Option<(u64, bool)>,
    /// When the current run of acquire attempts began (0: none runs).
    since_us: u64,
    /// This view matches the superblocks for the current hold.
    view: bool,
    /// A superblock read or write in flight: (id, record).
    io: Option<(u64, bool)>,
    /// A change seen here is not recorded yet.
    change: bool,
    /// Some member is out in this view: reads may reconstruct from the rest of a stripe.
    degraded: bool,
    owed_excl: bool,
    owed_share: bool,
    /// Member I/O out and not completed.
    in_flight: u32,
    /// Member I/O waiting for the hold.
    blocked: VecDeque<Output>,
    /// Member completions held until a change is recorded.
    held_done: VecDeque<(u64, Result<Vec<u8>, String>)>,
    /// Host requests for a record that no record in flight covers yet.
    record_asked: Vec<u64>,
    /// Host requests the record in flight answers.
    record_for: Vec<u64>,
}

impl Group {
    /// The group as the assembly left it: held shared with a current view.
    pub(super) fn new(degraded: bool) -> Group {
        Group {
            held: Some(false),
            acquiring: None,
            since_us: 0,
            view: true,
            io: None,
            change: false,
            degraded,
            owed_excl: false,
            owed_share: false,
            in_flight: 0,
            blocked: VecDeque::new(),
            held_done: VecDeque::new(),
            record_asked: Vec::new(),
            record_for: Vec::new(),
        }
    }

    /// The group for a controller joining a running membership: held by nothing here and
    /// with no view yet. Its assembly may predate a change another controller recorded while
    /// it was out, or one being recorded now under the exclusive hold, so it asks for the
    /// shared hold and reads the record before its first member I/O.
    pub(super) fn joining(degraded: bool) -> Group {
        Group { held: None, view: false, ..Group::new(degraded) }
    }

    /// A change waits to be recorded (or its record is being written).
    fn recording(&self) -> bool {
        self.change || matches!(self.io, Some((_, true)))
    }

    /// Member I/O may go out now.
    fn ready(&self) -> bool {
        self.held.is_some() && self.view && self.io.is_none() && !self.change && !self.owed_excl
    }
}

impl Machine {
    /// Whether reads may reconstruct lines from the rest of their stripes.
    pub(super) fn group_degraded(&self) -> bool {
        self.group.degraded
    }

    /// Member I/O goes out through here: now if the group is held with a current view, else
    /// when it is.
    pub(super) fn member_io(&mut self, o: Output) {
        self.group.blocked.push_back(o);
    }

    /// A member's state changed in this controller's view.
    pub(super) fn group_changed(&mut self) {
        self.group.change = true;
    }

    /// A host asks for this view to be recorded (a rebuild began, advanced or ended).
    pub(super) fn request_record(&mut self, host: u64) {
        self.group.change = true;
        self.group.record_asked.push(host);
    }

    /// Asks for the group again with a new command (a membership change: the one in flight
    /// may wait for a controller that left); the old one's completion is ignored.
    pub(super) fn reissue_group_acquire(&mut self) {
        if let Some((_, exclusive)) = self.group.acquiring {
            let op = if exclusive { CardOp::AcquireExclusive } else { CardOp::AcquireShared };
            let id = self.cmd(op, GROUP_RESOURCE, CardUse::Group);
            self.group.acquiring = Some((id, exclusive));
        }
    }

    pub(super) fn group_event(&mut self, kind: CardEventKind) {
        match kind {
            CardEventKind::Invalidate => self.group.owed_excl = true,
            CardEventKind::Share => self.group.owed_share = true,
        }
    }

    pub(super) fn group_acquired(&mut self, id: u64, status: CardStatus) {
        let Some((want, exclusive)) = self.group.acquiring else { return };
        if want != id {
            return;
        }
        self.group.acquiring = None;
        match status {
            CardStatus::Ok | CardStatus::Untracked => {
                self.group.held = Some(exclusive);
                self.group.view = self.cfg.mutation == Some(Mutation::StaleView);
                self.group.since_us = 0;
            }
            CardStatus::Timeout | CardStatus::Conflict | CardStatus::StaleEpoch
                if self.now_us.saturating_sub(self.group.since_us) < ACQUIRE_PATIENCE_US =>
            {
                self.counters.retries += 1;
            }
            _ => {
                // Peers that do not answer for this long (or a card that refuses): the member
                // I/O waiting fails with the reason and the next I/O asks again.
                self.group.since_us = 0;
                let why = format!("the group resource: peers did not answer the card ({status:?})");
                let blocked = std::mem::take(&mut self.group.blocked);
                for o in blocked {
                    if let Some(id) = member_id(&o) {
                        self.member_finished(id, Err(why.clone()));
                    }
                }
            }
        }
    }

    /// A member completion: held while a change here waits to be recorded.
    pub(super) fn member_done(&mut self, id: u64, result: Result<Vec<u8>, String>) {
        if self.group.io.is_some_and(|(io, _)| io == id) {
            self.group.io = None;
            self.group.view = true;
            for host in std::mem::take(&mut self.group.record_for) {
                let result = match &result {
                    Ok(_) => Ok(Vec::new()),
                    Err(e) => Err(HostError::Member(format!("recording the superblocks: {e}"))),
                };
                self.out.push(Output::Reply { id: host, result });
            }
            match result {
                // The shell answers whether a member is out in the view it now has.
                Ok(d) => {
                    self.group.degraded = d.first().is_some_and(|b| *b != 0);
                    if self.group.degraded {
                        self.relock_blocked_fills();
                    }
                }
                // The shell reports why; the member I/O that depends on it fails on its own.
                Err(_) => self.counters.group_errors += 1,
            }
            return;
        }
        if !self.members.contains_key(&id) {
            return;
        }
        self.group.in_flight = self.group.in_flight.saturating_sub(1);
        if self.group.recording() && self.cfg.mutation != Some(Mutation::CompleteBeforeRecord) {
            self.group.held_done.push_back((id, result));
            return;
        }
        if let Some((r, exclusive)) = self.unlocked_fill(id).filter(|_| self.group_degraded()) {
            // Issued before a member went out and finished after this view has it out: the
            // read may have been reconstructed from a stripe a peer was writing (simulator
            // seed 1831, a slow read). Read again, under the locks.
            self.members.remove(&id);
            self.start_fill(r, exclusive);
            self.touched.insert(r);
            return;
        }
        self.member_finished(id, result);
    }

    /// Moves the group along: answers peers, acquires, reads or records the superblocks, lets
    /// member I/O out. True when it released held completions (lines may move again).
    pub(super) fn advance_group(&mut self) -> bool {
        let g = &mut self.group;
        if g.owed_excl || g.owed_share {
            match g.held {
                None => {
                    let op = if g.owed_excl { CardOp::Yield } else { CardOp::YieldShare };
                    g.owed_excl = false;
                    g.owed_share = false;
                    self.counters.yields += 1;
                    self.cmd(op, GROUP_RESOURCE, CardUse::Fire);
                }
                Some(exclusive) => {
                    let busy = g.io.is_some() || (g.change && exclusive);
                    if g.owed_excl && !busy && g.in_flight == 0 {
                        g.held = None;
                        g.view = false;
                        g.owed_excl = false;
                        g.owed_share = false;
                        self.counters.yields += 1;
                        self.cmd(CardOp::Yield, GROUP_RESOURCE, CardUse::Fire);
                    } else if !g.owed_excl && g.owed_share && !busy {
                        g.held = Some(false);
                        g.owed_share = false;
                        self.counters.yields += 1;
                        self.cmd(CardOp::YieldShare, GROUP_RESOURCE, CardUse::Fire);
                    }
                }
            }
        }
        let g = &mut self.group;
        // A controller that yielded asks again at once, so that its view (and its status)
        // follows a peer's record without waiting for its own next member I/O.
        let need = g.change || !g.blocked.is_empty() || g.held.is_none();
        let upgrade = g.change && g.held == Some(false);
        if need && g.acquiring.is_none() && !g.owed_excl && (g.held.is_none() || upgrade) {
            let exclusive = g.change;
            let op = if exclusive { CardOp::AcquireExclusive } else { CardOp::AcquireShared };
            if g.since_us == 0 {
                g.since_us = self.now_us.max(1);
            }
            let id = self.cmd(op, GROUP_RESOURCE, CardUse::Group);
            self.group.acquiring = Some((id, exclusive));
        }
        let g = &self.group;
        if g.io.is_none() {
            if g.held == Some(true) && g.change {
                let id = self.id();
                self.counters.group_records += 1;
                self.group.change = false;
                self.group.record_for = std::mem::take(&mut self.group.record_asked);
                self.group.io = Some((id, true));
                self.out.push(Output::Superblocks { id, record: true });
            } else if g.held.is_some() && !g.view && !g.change {
                let id = self.id();
                self.counters.group_loads += 1;
                self.group.io = Some((id, false));
                self.out.push(Output::Superblocks { id, record: false });
            }
        }
        if self.group.ready() {
            while let Some(o) = self.group.blocked.pop_front() {
                self.group.in_flight += 1;
                self.out.push(o);
            }
        }
        if self.group.recording() || self.group.held_done.is_empty() {
            return false;
        }
        let held = std::mem::take(&mut self.group.held_done);
        for (id, result) in held {
            if let Some((r, exclusive)) = self.unlocked_fill(id).filter(|_| self.group_degraded()) {
                // Read without the stripe locks while a member went out: it may have been
                // reconstructed from a stripe a peer was writing. Read again, under the locks.
                self.members.remove(&id);
                self.start_fill(r, exclusive);
                self.touched.insert(r);
                continue;
            }
            self.member_finished(id, result);
        }
        true
    }

    /// Fills that waited for this view were planned without the stripe locks: in a degraded
    /// group they take them first.
    fn relock_blocked_fills(&mut self) {
        let blocked = std::mem::take(&mut self.group.blocked);
        for o in blocked {
            let fill = member_id(&o).and_then(|id| self.unlocked_fill(id).map(|f| (id, f)));
            match fill {
                Some((id, (r, exclusive))) => {
                    self.members.remove(&id);
                    self.start_fill(r, exclusive);
                    self.touched.insert(r);
                }
                None => self.group.blocked.push_back(o),
            }
        }
    }

    /// True while member I/O or a superblock read or write is out, or waits for the group.
    pub(super) fn group_busy(&self) -> bool {
        let g = &self.group;
        g.in_flight > 0 || g.io.is_some() || !g.blocked.is_empty() || !g.held_done.is_empty()
    }

    /// The group's invariants.
    pub(super) fn check_group(&self) -> Result<(), String> {
        let g = &self.group;
        let n = self.cfg.node;
        if g.in_flight > 0 && g.held.is_none() {
            return Err(format!("n{n} has member I/O out without holding the group"));
        }
        if !g.held_done.is_empty() && !g.recording() {
            return Err(format!("n{n} holds member completions with no change to record"));
        }
        if matches!(g.io, Some((_, true))) && g.held != Some(true) {
            return Err(format!("n{n} records the superblocks without holding the group exclusively"));
        }
        Ok(())
    }
}

fn member_id(o: &Output) -> Option<u64> {
    match o {
        Output::MemberRead { id, .. }
        | Output::MemberWrite { id, .. }
        | Output::MemberSync { id }
        | Output::StripeJob { id, .. } => Some(*id),
        _ => None,
    }
}
