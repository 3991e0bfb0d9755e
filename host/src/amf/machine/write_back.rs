//! Write-backs: a dirty line goes to the members with the dirty lines beside it in its stripes,
//! in one member write. A stripe written whole needs no parity read, and the lines of a stripe
//! written together cost one read-modify-write of its parity instead of one each (a sequential
//! write of 16 KiB lines to stripes of three 64 KiB chunks: one full-stripe write for twelve
//! read-modify-writes).
//!
//! Every line of the run is in `Phase::Destaging` with the run's member I/O, holds its stripe
//! locks as if it went alone, and ends (`written_back`) as it would alone: a run changes how
//! many member writes carry the lines, not what happens to each.

use super::{HostError, Machine, MemberUse, Msg, Mutation, Output, Phase, Purpose, State, DESTAGE_RETRY_US};

impl Machine {
    /// Writes line `r` back once every stripe it touches is locked here, in one member write
    /// with the dirty lines beside it in its stripes (`destage_run`): a stripe written whole
    /// needs no parity read, and a stripe's lines written together cost one read-modify-write
    /// instead of one each.
    pub(super) fn try_destage(&mut self, r: u64) {
        if !self.lock_stripes(r) {
            return;
        }
        let (first, last) = self.destage_run(r);
        let id = self.id();
        self.members.insert(id, MemberUse::Destage { first, lines: last - first + 1 });
        self.counters.member_writes += 1;
        let lb = self.line_len();
        let mut offset = first * self.cfg.line_bytes;
        let mut data = Vec::with_capacity(lb * (last - first + 1) as usize);
        for n in first..=last {
            // `destage_run` saw every stripe of `n` held here and not owed: this takes them.
            let locked = n == r || self.lock_stripes(n);
            debug_assert!(locked, "line {n} joined a write-back without its stripe locks");
            self.counters.write_back_lines += 1;
            let l = self.line(n);
            let wseq = l.wseq;
            l.writeback = false;
            // Bytes written from here on are the next write-back's.
            let dirty = std::mem::take(&mut l.dirty);
            let range = dirty.within(lb);
            // Between two lines of the run the bytes not written are the members' own (the
            // line is held here whole), so the write stays one range.
            let lo = if n == first { range.start } else { 0 };
            let hi = if n == last { range.end } else { lb };
            if n == first {
                offset += lo as u64;
            }
            data.extend_from_slice(&l.data[lo..hi]);
            l.phase = Phase::Destaging { id, wseq, dirty };
        }
        // The piece this destage answers is FUA: the members must hold it durably before its
        // reply, not only in their write caches.
        let head = self.lines.get(&r).and_then(|l| l.queue.front()).and_then(|p| self.pieces.get(p));
        let fua = head.is_some_and(|p| p.fua && p.applied) && self.cfg.mutation != Some(Mutation::VolatileFua);
        self.member_io(Output::MemberWrite { id, offset, data, fua });
    }

    /// The lines that go back with line `r`: the contiguous run around it, within the stripes
    /// `r` touches, of lines whose write-back is due (its age, a flush, an eviction or a peer
    /// asked) and could start now without waiting (Modified, idle or waiting for the same
    /// stripe locks, nothing queued, no replica answer outstanding, their stripes held here and
    /// not owed to a peer). Returns the first and the last. A line waiting for the locks leaves their waiters as it takes them
    /// (`lock_stripes`): a tick's or a flush's write-backs of one stripe all wait for its lock,
    /// and the first to get it takes the others along.
    fn destage_run(&self, r: u64) -> (u64, u64) {
        let (lb, sb) = (self.cfg.line_bytes.max(1), self.cfg.stripe_bytes.max(1));
        let stripes = self.stripes_of(r);
        let lowest = stripes.start() * sb / lb;
        let highest = ((stripes.end() + 1) * sb - 1) / lb;
        let mut first = r;
        while first > lowest && self.joins_write_back(first - 1) {
            first -= 1;
        }
        let mut last = r;
        while last < highest && self.joins_write_back(last + 1) {
            last += 1;
        }
        (first, last)
    }

    /// Whether line `n` may go back with a neighbour's write-back (`destage_run`).
    fn joins_write_back(&self, n: u64) -> bool {
        let Some(l) = self.lines.get(&n) else { return false };
        // A line written lately stays out: a write to a line in a write-back waits for the
        // member write, and a line not due would make that wait for nothing.
        let due = l.phase == Phase::Locking || l.writeback || l.evict || l.owed_excl || l.owed_share;
        let idle = l.state == State::Modified
            && matches!(l.phase, Phase::Idle | Phase::Locking)
            && due
            && l.queue.is_empty()
            && l.data.len() == self.line_len()
            && l.retry_at_us <= self.now_us
            && l.drop_pending.is_none()
            && l.replica_pending.is_none();
        let locked = self.cfg.mutation == Some(Mutation::NoStripeLock)
            || self.stripes_of(n).all(|s| self.stripes.get(&s).is_some_and(|st| st.held && !st.owed));
        idle && locked
    }

    /// Line `r`'s part of write-back `id` ended with `result`.
    pub(super) fn written_back(&mut self, r: u64, id: u64, result: &Result<Vec<u8>, String>) {
        self.unlock_stripes(r);
        let (now, lb) = (self.now_us, self.line_len());
        let l = self.line(r);
        let Phase::Destaging { id: d, wseq, dirty } = l.phase else { return };
        if d != id {
            return;
        }
        l.phase = Phase::Idle;
        match result {
            Ok(_) => {
                l.clean_wseq = l.clean_wseq.max(wseq);
                if l.wseq == wseq && l.state == State::Modified {
                    l.state = State::Exclusive;
                }
                // On the members, a line needs no new replica for its writes' answers.
                let settled = l.clean_wseq >= l.wseq && l.replica_pending.take().is_some();
                if let Some(to) = l.replica_at {
                    // The peer's copy goes, kept there as a base if it is this very
                    // write-back's content: the next write sends its bytes only.
                    l.base_at = (l.replica_wseq == wseq && wseq != 0).then_some((to, wseq));
                    l.replica_wseq = 0;
                    let id = self.id();
                    self.send_request(id, to, Msg::DropReplica { id, line: r, wseq }, Purpose::Drop(r));
                    self.line(r).drop_pending = Some(id);
                }
                if self.head_applied(r) {
                    self.finish_piece(r, None);
                }
                if settled {
                    self.replica_settled();
                }
            }
            Err(e) => {
                // Not on the members: its bytes are the next write-back's too.
                l.dirty = l.dirty.with_failed(dirty, lb);
                l.retry_at_us = now + DESTAGE_RETRY_US;
                self.fail_applied(r, HostError::Member(e.clone()));
                for job in self.flushes.values_mut() {
                    if job.lines.iter().any(|(x, _)| *x == r) {
                        job.failed.get_or_insert(e.clone());
                    }
                }
            }
        }
        self.touched.insert(r);
    }
}

#[cfg(test)]
mod tests {
    use crate::amf::io::*;
    use crate::amf::machine::view::tests::{machine, run};
    use crate::amf::machine::{Machine, State};

    fn write(m: &mut Machine, id: u64, line: u64, byte: u8) {
        let req = HostReq::Write { offset: line * 4, data: vec![byte; 4], fua: false };
        assert_eq!(run(m, Input::Host { id, req }), vec![(id, Ok(Vec::new()))]);
        assert_eq!(m.line_state(line), State::Modified);
    }

    /// A machine of two controllers (lines of 4 bytes, stripes of 16: lines 0-3 are stripe 0)
    /// whose `lines` were written here, line `l` with bytes `base + l`.
    fn dirty_lines(lines: &[u64], base: u8) -> Machine {
        let mut m = machine(0, 2);
        for &line in lines {
            write(&mut m, 100 + line, line, base + line as u8);
        }
        m
    }

    /// Steps `input`, granting the card commands it asks for, until the machine writes to the
    /// members: that write's id, offset and bytes.
    fn next_member_write(m: &mut Machine, input: Input) -> (u64, u64, Vec<u8>) {
        let mut todo = m.step(input);
        for _ in 0..100 {
            let Some(o) = todo.pop() else { break };
            match o {
                Output::MemberWrite { id, offset, data, .. } => return (id, offset, data),
                Output::Card { id, .. } => {
                    todo.extend(m.step(Input::CardDone { id, status: CardStatus::Ok, sharers: 0 }))
                }
                _ => {}
            }
        }
        panic!("no member write");
    }

    #[test]
    fn a_write_back_leaves_out_the_lines_beside_it_that_are_not_due() {
        let mut m = dirty_lines(&[0, 1, 2], 0xa0);
        // A peer asks for line 1: lines 0 and 2, written lately, are not due and stay out.
        let ask = Input::CardEvent { kind: CardEventKind::Invalidate, resource: 1, from: 1 };
        let (id, offset, data) = next_member_write(&mut m, ask);
        assert_eq!((offset, data), (4, vec![0xa1; 4]));
        // So a write to line 0 meanwhile is answered without waiting for that member write.
        write(&mut m, 4, 0, 0xb0);
        run(&mut m, Input::MemberDone { id, result: Ok(Vec::new()) });
        assert_eq!(m.line_state(1), State::Invalid);
        assert_eq!((m.line_state(0), m.line_state(2)), (State::Modified, State::Modified));
        assert_eq!((m.counters.member_writes, m.counters.write_back_lines), (1, 1));
        assert_eq!(m.check(), Ok(()));
    }

    #[test]
    fn a_write_back_takes_along_the_lines_beside_it_a_peer_asked_for_too() {
        let mut m = dirty_lines(&[0, 1, 2, 4], 0xa0);
        // A peer asks for line 1, then for line 0 while 1 waits for the stripe lock: the
        // first to get the lock takes the other along. Line 2 is not due; line 4 is another
        // stripe's.
        let ask = |r| Input::CardEvent { kind: CardEventKind::Invalidate, resource: r, from: 1 };
        let lock: Vec<u64> = m
            .step(ask(1))
            .into_iter()
            .filter_map(|o| match o {
                Output::Card { id, .. } => Some(id),
                _ => None,
            })
            .collect();
        assert_eq!(lock.len(), 1, "one stripe lock asked for");
        assert!(m.step(ask(0)).iter().all(|o| !matches!(o, Output::MemberWrite { .. })));
        let granted = Input::CardDone { id: lock[0], status: CardStatus::Ok, sharers: 0 };
        let (id, offset, data) = next_member_write(&mut m, granted);
        assert_eq!((offset, data), (0, [[0xa0; 4], [0xa1; 4]].concat()));
        assert_eq!((m.counters.member_writes, m.counters.write_back_lines), (1, 2));
        // Every line of the run ends as it would alone: given up to the peer that asked.
        run(&mut m, Input::MemberDone { id, result: Ok(Vec::new()) });
        assert_eq!((m.line_state(0), m.line_state(1)), (State::Invalid, State::Invalid));
        assert_eq!((m.line_state(2), m.line_state(4)), (State::Modified, State::Modified));
        assert_eq!(m.check(), Ok(()));
    }

    #[test]
    fn the_write_backs_of_a_local_flush_waiting_for_one_stripe_lock_go_as_one_full_stripe() {
        let mut m = dirty_lines(&[0, 1, 2, 3], 0xc0);
        let (id, offset, data) = next_member_write(&mut m, Input::Host { id: 9, req: HostReq::FlushLocal });
        assert_eq!((offset, data), (0, [[0xc0; 4], [0xc1; 4], [0xc2; 4], [0xc3; 4]].concat()));
        let replies = run(&mut m, Input::MemberDone { id, result: Ok(Vec::new()) });
        assert_eq!(m.counters.member_writes, 1);
        assert_eq!(replies, vec![(9, Ok(Vec::new()))]);
        assert!((0..4).all(|line| m.line_state(line) == State::Exclusive));
        assert_eq!(m.check(), Ok(()));
    }

    #[test]
    fn a_failed_write_back_leaves_every_line_of_its_run_dirty() {
        let mut m = dirty_lines(&[2, 3], 0xb0);
        let (id, offset, data) = next_member_write(&mut m, Input::Host { id: 3, req: HostReq::FlushLocal });
        assert_eq!((offset, data), (8, [[0xb2; 4], [0xb3; 4]].concat()));
        m.step(Input::MemberDone { id, result: Err("member gone".into()) });
        assert_eq!(m.line_state(2), State::Modified);
        assert_eq!(m.line_state(3), State::Modified);
        assert_eq!(m.check(), Ok(()));
    }
}
