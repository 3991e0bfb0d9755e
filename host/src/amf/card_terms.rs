//! The card in the machine's terms, for every shell that drives a real driver (the controller
//! and the simulator): commands to opcodes, completions to statuses, held events to inputs,
//! and the two rings merged in the card's order.

use super::io::{CardEventKind, CardOp, CardStatus, Input};
use amf_hdl_model::gen::structs::{Completion, Event, EventKind, Opcode, Status};
use std::collections::VecDeque;

/// The opcode of a machine command and whether it is sent with `hold`.
pub fn opcode(op: CardOp) -> (Opcode, bool) {
    match op {
        CardOp::AcquireShared => (Opcode::AcquireShared, true),
        CardOp::AcquireExclusive => (Opcode::AcquireExclusive, true),
        CardOp::YieldShare => (Opcode::YieldShare, false),
        CardOp::Yield => (Opcode::Yield, false),
        CardOp::Release => (Opcode::Release, false),
    }
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
