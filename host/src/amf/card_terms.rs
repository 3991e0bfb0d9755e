//! The card in the machine's terms, for every shell that drives a real driver (the controller
//! and the simulator): commands to opcodes, completions to statuses, held events to inputs,
//! and the two rings merged in the card's order.

use super::io::{CardEventKind, CardOp, CardStatus, Input, GROUP_RESOURCE, PRESENCE_NS};
use amf_hdl_model::gen::structs::{Completion, Event, EventKind, Opcode, Status};
use std::collections::{BTreeSet, VecDeque};

/// Acquires the card runs at once (its pending table: the RTL's `Inflight`, the model's
/// `INFLIGHT_MAX`). With that many running the card fetches no further command, so a yield
/// queued behind one more acquire would wait for acquires that may be waiting for it: the
/// shells keep acquires below this and let yields and releases go ahead of the acquires held
/// back.
pub const CARD_ACQUIRES_MAX: usize = amf_hdl_model::model::card::INFLIGHT_MAX - 1;

/// True for commands that take a place in the card's pending table until their completion.
pub fn waits(op: CardOp) -> bool {
    matches!(op, CardOp::AcquireShared | CardOp::AcquireExclusive)
}

/// What the card can take now, from [`take_submittable`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Submittable {
    /// Commands to submit, in order.
    pub send: Vec<(u64, CardOp, u64)>,
    /// Acquires taken back before they reached the card: the machine is told they lost
    /// (`CardStatus::Conflict`: it backs off and asks again).
    pub lost: Vec<u64>,
}

/// Takes from `backlog` (in order) up to `room` commands the card can take now: acquires while
/// fewer than [`CARD_ACQUIRES_MAX`] run (`acquires` counts those submitted and not completed),
/// and every yield and release, except one for a resource whose acquire is held back (the card
/// sees one resource's commands in the machine's order). The rest stay in the backlog in order.
///
/// A yield behind its own resource's acquire, held back for want of an acquire slot, takes
/// that acquire back instead of waiting: the host gives the resource to a peer that asked
/// before it ever asked the card for it, so its acquire lost. Waiting would close a cycle
/// across the cards (its slots full of acquires waiting for peers' yields that wait the same
/// way behind their hosts' held-back acquires): 8 controllers writing one region back at a
/// stop once waited so until they were killed.
pub fn take_submittable(backlog: &mut VecDeque<(u64, CardOp, u64)>, mut acquires: usize, room: usize) -> Submittable {
    let mut out = Submittable::default();
    let mut kept = VecDeque::new();
    let mut held_back = BTreeSet::new();
    // Resources whose only commands held back so far are an acquire kept for want of a slot.
    let mut capped = BTreeSet::new();
    // A presence command was held back: later presence commands and acquires wait behind it
    // (an acquire that set a bucket's bit before an earlier `Unmark` cleared it would leave a
    // line held with its bit clear).
    let mut presence_held = false;
    while let Some(c) = backlog.pop_front() {
        let (_, op, resource) = c;
        if matches!(op, CardOp::Yield | CardOp::YieldShare) && capped.remove(&resource) {
            if let Some(at) = kept.iter().position(|k: &(u64, CardOp, u64)| k.2 == resource) {
                if let Some((id, _, _)) = kept.remove(at) {
                    out.lost.push(id);
                }
            }
            held_back.remove(&resource);
        }
        let slot = acquires < CARD_ACQUIRES_MAX;
        let ok = out.send.len() < room
            && !(presence_held && (waits(op) || presence_cmd(op)))
            && if waits(op) { slot } else { !held_back.contains(&resource) };
        if ok {
            acquires += waits(op) as usize;
            out.send.push(c);
        } else {
            presence_held |= presence_cmd(op);
            if waits(op) && !slot && !presence_held && out.send.len() < room && held_back.insert(resource) {
                capped.insert(resource);
            } else {
                held_back.insert(resource);
                capped.remove(&resource);
            }
            kept.push_back(c);
        }
    }
    *backlog = kept;
    out
}

/// The opcode of a machine command on `resource`, whether it is sent with `hold`, and whether
/// it is `filtered`: a line's or a stripe lock's acquire sets its presence bit and lets receivers
/// answer from their presence filters (the group resource is not tracked there: every
/// controller holds it).
pub fn opcode(op: CardOp, resource: u64) -> (Opcode, bool, bool) {
    let filtered = resource & (GROUP_RESOURCE | PRESENCE_NS) == 0;
    match op {
        CardOp::AcquireShared => (Opcode::AcquireShared, true, filtered),
        CardOp::AcquireExclusive => (Opcode::AcquireExclusive, true, filtered),
        CardOp::YieldShare => (Opcode::YieldShare, false, false),
        CardOp::Yield => (Opcode::Yield, false, false),
        CardOp::Release => (Opcode::Release, false, false),
        CardOp::Mark => (Opcode::Mark, false, false),
        CardOp::Unmark => (Opcode::Unmark, false, false),
        CardOp::FilterOn => (Opcode::FilterOn, false, false),
    }
}

/// True for the presence filter's own commands: once one is held back, later ones and later
/// acquires wait behind it (see [`take_submittable`]).
fn presence_cmd(op: CardOp) -> bool {
    matches!(op, CardOp::Mark | CardOp::Unmark | CardOp::FilterOn)
}

/// A completion as the machine sees it.
pub fn status_of(c: &Completion) -> CardStatus {
    match Status::from_raw(c.status) {
        Some(Status::Ok) if c.untracked != 0 => CardStatus::Untracked,
        Some(Status::Ok) => CardStatus::Ok,
        Some(Status::Timeout) => CardStatus::Timeout,
        Some(Status::Conflict) => CardStatus::Conflict,
        Some(Status::StaleEpoch) => CardStatus::StaleEpoch,
        _ => CardStatus::Refused,
    }
}

/// A card event as the machine sees it (held requests only; liveness events are not inputs).
pub fn event_input(e: &Event) -> Option<Input> {
    if e.hold == 0 {
        return None;
    }
    let kind = match EventKind::from_raw(e.kind)? {
        EventKind::Invalidate => CardEventKind::Invalidate,
        EventKind::Downgrade => CardEventKind::Share,
        _ => return None,
    };
    Some(Input::CardEvent { kind, resource: e.resource, from: e.node })
}

/// Completions and events reaped together, as inputs in the order the card wrote them: an
/// event numbered below a completion's `events_before` came first. `id_of` names the machine's
/// id of a completion's command (None: not the machine's; it is skipped). Reap completions
/// before events, so every event a completion counts is in `events`.
pub fn in_card_order(
    done: Vec<Completion>,
    events: Vec<(u32, Event)>,
    mut id_of: impl FnMut(&Completion) -> Option<u64>,
) -> Vec<Input> {
    let mut events: VecDeque<(u32, Event)> = events.into();
    let mut inputs = Vec::new();
    for c in done {
        while events.front().is_some_and(|(i, _)| (c.events_before.wrapping_sub(*i) as i32) > 0) {
            if let Some((_, e)) = events.pop_front() {
                inputs.extend(event_input(&e));
            }
        }
        if let Some(id) = id_of(&c) {
            inputs.push(Input::CardDone { id, status: status_of(&c), sharers: c.sharers });
        }
    }
    inputs.extend(events.iter().filter_map(|(_, e)| event_input(e)));
    inputs
}

/// Puts what one look at the card's rings found in the card's order, across looks. A look
/// reaps completions, reads events, then reaps again: a completion the card wrote before an
/// event that was read is in the second reap at the latest (the card writes its rings in its
/// order), so no event is handled before a completion that came first. A completion that counts
/// events not read yet waits here for them (with every completion after it).
#[derive(Default)]
pub struct CardOrder {
    /// Events read so far (the next event's number).
    events_seen: u32,
    held: Vec<Completion>,
}

impl CardOrder {
    /// The inputs of `done` (this look's completions, both reaps, in order) and `events`, with
    /// what waited from earlier looks; `id_of` as for [`in_card_order`].
    pub fn merge(
        &mut self,
        done: Vec<Completion>,
        events: Vec<(u32, Event)>,
        id_of: impl FnMut(&Completion) -> Option<u64>,
    ) -> Vec<Input> {
        if let Some((i, _)) = events.last() {
            self.events_seen = i.wrapping_add(1);
        }
        let mut ready = std::mem::take(&mut self.held);
        ready.extend(done);
        let seen = self.events_seen;
        let wait = ready.iter().position(|c| (c.events_before.wrapping_sub(seen) as i32) > 0).unwrap_or(ready.len());
        self.held = ready.split_off(wait);
        in_card_order(ready, events, id_of)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completion(tag: u32, events_before: u32) -> Completion {
        Completion { tag, events_before, ..Completion::default() }
    }

    fn invalidate(resource: u64) -> Event {
        Event { kind: EventKind::Invalidate as u8, hold: 1, resource, node: 1, ..Event::default() }
    }

    /// Which input is which: completions by tag, events by resource.
    fn names(inputs: &[Input]) -> Vec<String> {
        inputs
            .iter()
            .map(|i| match i {
                Input::CardDone { id, .. } => format!("c{id}"),
                Input::CardEvent { resource, .. } => format!("e{resource}"),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_completion_goes_before_the_events_it_precedes_and_waits_for_those_it_counts() {
        let mut order = CardOrder::default();
        let id = |c: &Completion| Some(c.tag as u64);
        // Completion 1 came before event 0 (the second reap found it): it goes first.
        let out = order.merge(vec![completion(1, 0)], vec![(0, invalidate(10))], id);
        assert_eq!(names(&out), ["c1", "e10"]);
        // Completion 2 counts three events (0 to 2); event 2 is not read yet: it waits, and
        // completion 3 behind it too.
        let out = order.merge(vec![completion(2, 3), completion(3, 3)], vec![(1, invalidate(11))], id);
        assert_eq!(names(&out), ["e11"]);
        // Event 2 arrives: it goes before them.
        let out = order.merge(vec![], vec![(2, invalidate(12))], id);
        assert_eq!(names(&out), ["e12", "c2", "c3"]);
    }

    #[test]
    fn yields_go_ahead_of_acquires_held_back_and_take_back_the_acquire_of_their_own_resource() {
        let mut backlog: VecDeque<(u64, CardOp, u64)> = VecDeque::new();
        for r in 0..CARD_ACQUIRES_MAX as u64 + 3 {
            backlog.push_back((r, CardOp::AcquireExclusive, r));
        }
        let (last, other) = (CARD_ACQUIRES_MAX as u64 + 1, CARD_ACQUIRES_MAX as u64 + 2);
        backlog.push_back((100, CardOp::Yield, 500));
        backlog.push_back((101, CardOp::Yield, last));
        backlog.push_back((102, CardOp::Release, other));
        let got = take_submittable(&mut backlog, 0, 1000);
        let ids: Vec<u64> = got.send.iter().map(|c| c.0).collect();
        let mut want: Vec<u64> = (0..CARD_ACQUIRES_MAX as u64).collect();
        want.extend([100, 101]);
        assert_eq!(ids, want, "acquires up to the limit, then the yields");
        assert_eq!(got.lost, vec![last], "the acquire of the yielded resource is taken back as lost");
        let left: Vec<u64> = backlog.iter().map(|c| c.0).collect();
        assert_eq!(left, vec![CARD_ACQUIRES_MAX as u64, other, 102], "a release waits behind its acquire, in order");
        // Room is a limit too, and an acquire held back by it (not by the slots) stays.
        let mut b: VecDeque<_> = (0..5u64).map(|r| (r, CardOp::Yield, r)).collect();
        assert_eq!(take_submittable(&mut b, 0, 2).send.len(), 2);
        assert_eq!(b.len(), 3);
        let mut b: VecDeque<_> = [(1, CardOp::Yield, 7), (2, CardOp::AcquireShared, 9), (3, CardOp::Yield, 9)].into();
        let got = take_submittable(&mut b, 0, 1);
        assert_eq!((got.send.len(), got.lost.len(), b.len()), (1, 0, 2));
    }

    #[test]
    fn no_acquire_or_presence_command_overtakes_a_presence_command_held_back() {
        let unmark = PRESENCE_NS | 7;
        // The unmark waits behind a mark of its bucket's resource held back for room: the
        // later acquire of a line in that bucket, and the later mark, wait behind both; yields
        // and releases still go.
        let mut b: VecDeque<(u64, CardOp, u64)> = [
            (1, CardOp::Mark, unmark),
            (2, CardOp::Unmark, unmark),
            (3, CardOp::AcquireExclusive, 7),
            (4, CardOp::Mark, PRESENCE_NS | 8),
            (5, CardOp::Yield, 9),
        ]
        .into();
        let got = take_submittable(&mut b, 0, 0);
        assert!(got.send.is_empty());
        let got = take_submittable(&mut b, 0, 1);
        assert_eq!(got.send.iter().map(|c| c.0).collect::<Vec<_>>(), vec![1]);
        // Unmark's own resource is free now: everything goes, in order.
        let got = take_submittable(&mut b, 0, 10);
        assert_eq!(got.send.iter().map(|c| c.0).collect::<Vec<_>>(), vec![2, 3, 4, 5]);
        // Held back behind its own resource, a presence command holds later acquires too,
        // and the acquire it holds is not taken back by its yield (it did not lack a slot).
        let mut b: VecDeque<(u64, CardOp, u64)> = [
            (1, CardOp::AcquireShared, unmark),
            (2, CardOp::Unmark, unmark),
            (3, CardOp::AcquireExclusive, 7),
            (4, CardOp::Yield, 7),
            (5, CardOp::Release, 9),
        ]
        .into();
        let got = take_submittable(&mut b, CARD_ACQUIRES_MAX, 10);
        assert_eq!(got.send.iter().map(|c| c.0).collect::<Vec<_>>(), vec![5]);
        assert_eq!(got.lost, Vec::<u64>::new());
        assert_eq!(b.iter().map(|c| c.0).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
        // Line and stripe-lock acquires are filtered; group and presence commands are not.
        assert_eq!(opcode(CardOp::AcquireExclusive, 7), (Opcode::AcquireExclusive, true, true));
        let stripe = crate::amf::io::STRIPE_NS | 7;
        assert_eq!(opcode(CardOp::AcquireExclusive, stripe), (Opcode::AcquireExclusive, true, true));
        assert_eq!(opcode(CardOp::AcquireShared, GROUP_RESOURCE), (Opcode::AcquireShared, true, false));
        assert_eq!(opcode(CardOp::Yield, 7), (Opcode::Yield, false, false));
    }
}
