//! Writes: a line held exclusively is written with no card message; otherwise one exclusive
//! acquire (a write-invalidate round to the sharers, or to every peer when they are unknown)
//! makes every other copy disappear before the write proceeds. Data the invalidated nodes held
//! is handed to this node when its own copy did not survive; then the write is applied,
//! replicated to a peer, and acknowledged.

use super::read::{keep_newest, Found, DIRTY_BIT, VERSION_MASK};
use super::{is_exclusive, Amf, CoherencyError};
use crate::cache::{Busy, Line, State};
use crate::fabric::wire::{Kind, Request};
use amf_hdl_model::gen::structs::Opcode;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::MutexGuard;
use std::time::Duration;

/// How many times a handoff fetch is repeated while the peer still owes the line.
const HANDOFF_WAITS_MAX: u32 = 20_000;

impl Amf {
    /// Writes `data` at `offset` (step 1); with `fua` it is on the members before returning.
    pub fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), CoherencyError> {
        self.check_range(offset, data.len() as u64)?;
        self.counters.writes.fetch_add(1, Relaxed);
        let mut done = 0;
        for (r, off, n) in self.pieces(offset, data.len() as u64).collect::<Vec<_>>() {
            self.write_line(r, off, &data[done..done + n], fua)?;
            done += n;
        }
        if fua {
            self.disk.sync()?;
        }
        Ok(())
    }

    fn write_line(&self, r: u64, off: usize, src: &[u8], fua: bool) -> Result<(), CoherencyError> {
        let start = std::time::Instant::now();
        for attempt in 0u32.. {
            self.before_attempt(r, attempt, start)?;
            let g = self.lock_line(r, Busy::Holding(None))?;
            match self.write_attempt(g, r, off, src) {
                Ok(Some((g, version))) => {
                    let replicated = self.step4_replicate(g, r, off, src, version, fua);
                    return replicated;
                }
                Ok(None) => continue,
                Err(e) => {
                    self.unlock_line(self.lock(), r);
                    return Err(e);
                }
            }
        }
        Err(CoherencyError::Contended(r))
    }

    /// One try: Some(version written) with the line still busy, None to start over.
    fn write_attempt<'a>(
        &'a self,
        mut g: MutexGuard<'a, Cache>,
        r: u64,
        off: usize,
        src: &[u8],
    ) -> Result<Option<(MutexGuard<'a, Cache>, u64)>, CoherencyError> {
        // Step 2: held exclusively here, so nobody else holds it: write with no message.
        if g.get(r).is_some_and(|l| is_exclusive(l.state)) {
            self.counters.writes_local.fetch_add(1, Relaxed);
            let v = self.apply(&mut g, r, off, src);
            return Ok(Some((g, v)));
        }
        if g.get(r).is_none() {
            g = self.make_room(g, r)?;
        }
        let floor = g.floor(r);
        drop(g);
        // Step 3 (write): one write-invalidate round through the card.
        let c = self.step3_invalidate(r)?;
        // The card's events before this completion happened before the acquire; any from
        // `acquired` on came after it (a later writer).
        let acquired = c.events_before;
        let mut g = self.lock();
        self.sync_events(&mut g)?;
        g.set_busy(r, Busy::Holding(Some(acquired)));
        super::trace!(
            "n{} excl r{} untracked {} asked {:#x} events_before {acquired} present {} superseded {}",
            self.cfg.node,
            r,
            c.untracked,
            c.peers_asked,
            g.get(r).is_some(),
            g.invalidated_since(r, acquired)
        );
        if c.untracked != 0 {
            // The host keeps at most `ways` lines per card set, so this means host and card
            // disagree; give the line back and try again rather than write untracked.
            drop(g);
            self.card.call(Opcode::Release, r)?;
            let mut g = self.lock();
            g.end(r);
            drop(g);
            self.changed.notify_all();
            return Ok(None);
        }
        // A present line was not invalidated after the round (that would have removed it).
        if g.get(r).is_some() {
            // Our shared copy survived the round (a removal is final while we hold the line
            // busy): every other copy is gone and ours is current. A reader that came after
            // the round (a downgrade from `acquired` on) shares it again: our write goes first
            // (it waits for us to finish), and the line stays Shared.
            let downgraded = g.downgraded_since(r, acquired);
            if let Some(l) = g.touch(r) {
                l.state = if downgraded { State::Shared } else { State::Exclusive };
            }
            let v = self.apply(&mut g, r, off, src);
            return Ok(Some((g, v)));
        }
        // Our copy is gone or never was: take the newest copy the peers hold in their handoff
        // areas, else the members. Even when a later writer's invalidate already came, the
        // lines are taken and passed on to that writer: nobody else would fetch them.
        drop(g);
        let (data, version, dirty) = match self.take_over(r, floor) {
            Ok(x) => x,
            Err(e) => {
                // Hold nothing we have no data for: the next attempt asks again.
                let _ = self.card.call(Opcode::Release, r);
                return Err(e);
            }
        };
        let mut g = self.lock();
        self.sync_events(&mut g)?;
        if g.invalidated_since(r, acquired) {
            // A later writer invalidated us while we were taking the line: it is owed to that
            // writer, which will fetch it from here.
            if let Some(by) = g.invalidated_by(r) {
                let line = Line::handed(version, dirty, data);
                g.hand_off(r, by, line);
            }
            g.end(r);
            drop(g);
            self.changed.notify_all();
            return Ok(None);
        }
        let state = if g.downgraded_since(r, acquired) {
            State::Shared
        } else if dirty {
            State::Modified
        } else {
            State::Exclusive
        };
        if version < floor {
            // Installed (not passed on to a later writer), yet older than a version this node
            // once knew: a protocol hole if it ever happens. Counted so tests can assert zero.
            super::trace!("n{} OLDER take-over r{r} v{version} floor {floor}", self.cfg.node);
            self.counters.older_member_reads.fetch_add(1, Relaxed);
        }
        g.install(r, state, dirty, version, data);
        // Taken over: whatever this node kept for another writer is older than this now.
        g.drop_handoff(r);
        let v = self.apply(&mut g, r, off, src);
        Ok(Some((g, v)))
    }

    /// Step 3 (write): the exclusive acquire; counts the round when it went to peers.
    fn step3_invalidate(&self, r: u64) -> Result<amf_hdl_model::gen::structs::Completion, CoherencyError> {
        let start = std::time::Instant::now();
        let c = self.card.call(Opcode::AcquireExclusive, r)?;
        self.count_acquire(&c);
        if c.no_broadcast == 0 {
            self.counters.invalidate_rounds.fetch_add(1, Relaxed);
            crate::metrics::observe(crate::metrics::Op::SharedWrite, start);
        }
        Ok(c)
    }

    /// Step 4: writes into the present, exclusive line; returns the new version.
    fn apply(&self, g: &mut Cache, r: u64, off: usize, src: &[u8]) -> u64 {
        let Some(l) = g.touch(r) else { return 0 };
        let before = if super::trace_on() { crc32c::crc32c(&l.data) } else { 0 };
        l.data[off..off + src.len()].copy_from_slice(src);
        super::trace!(
            "n{} write r{r} off {off} v{} {before:08x} -> v{} {:08x} {:?} value {}",
            self.cfg.node,
            l.version,
            l.version + 1,
            crc32c::crc32c(&l.data),
            l.state,
            if src.len() >= 16 { u64::from_le_bytes(src[8..16].try_into().unwrap_or([0; 8])) } else { 0 }
        );
        // A line downgraded while this write was being prepared stays Shared (dirty).
        if l.state == State::Exclusive {
            l.state = State::Modified;
        }
        l.dirty = true;
        l.version += 1;
        let v = l.version;
        g.raise_floor(r, v);
        v
    }

    /// Gets the line after an exclusive acquire that found no valid copy here: the newest of
    /// the handoff lines the peers and this node hold (waiting for a peer that is still taking
    /// it itself), unless the members have a newer version; else the members. Returns (data,
    /// version, dirty).
    fn take_over(&self, r: u64, floor: u64) -> Result<(Vec<u8>, u64, bool), CoherencyError> {
        // Every peer, not only those the round reached: a round the card aborted may have left
        // the newest data with a node no sharer list names any more; and a round the card
        // decided locally asked nobody, yet lines owed to this node may wait anywhere.
        let asked = self.others();
        // A line this node itself lost to another round (which then lost to ours) is a
        // candidate as well.
        let mut best: Option<(Vec<u8>, u64)> = self
            .lock()
            .handoff_line(r)
            .filter(|l| l.version >= floor)
            .map(|l| (l.data.clone(), l.version | if l.dirty { DIRTY_BIT } else { 0 }));
        for p in (0..8u8).filter(|p| asked & (1 << p) != 0) {
            let mut waits = 0;
            loop {
                match self.fetch(p, r, true, floor)? {
                    Found::Peer(d, v) => {
                        keep_newest(&mut best, d, v);
                        break;
                    }
                    Found::Retry if waits < HANDOFF_WAITS_MAX => {
                        waits += 1;
                        std::thread::sleep(Duration::from_micros(500));
                    }
                    Found::Retry => return Err(CoherencyError::Contended(r)),
                    Found::Members(..) => break,
                }
            }
        }
        super::trace!(
            "n{} take_over r{} asked {asked:#x} best {:?}",
            self.cfg.node,
            r,
            best.as_ref().map(|b| (b.1 & !DIRTY_BIT, b.1 >> 63, format!("{:08x}", crc32c::crc32c(&b.0))))
        );
        // Handoff copies can be leftovers older than what reached the members since.
        if let Some((d, v)) = best {
            if self.member_version(r)? <= v & VERSION_MASK {
                self.counters.remote_hits.fetch_add(1, Relaxed);
                return Ok((d, v & VERSION_MASK, v & DIRTY_BIT != 0));
            }
        }
        // Also for a whole-line write: the members' version orders this write after theirs.
        let (d, v) = self.disk.read(r * self.cfg.line_bytes as u64, self.line_len(r))?;
        self.counters.disk_reads.fetch_add(1, Relaxed);
        Ok((d, v, false))
    }

    /// Step 4 (write, continued): the write lives in two controllers before the host hears of
    /// it — replicated to a peer, or written through to the members when no peer takes it.
    fn step4_replicate(
        &self,
        g: MutexGuard<'_, Cache>,
        r: u64,
        off: usize,
        src: &[u8],
        version: u64,
        fua: bool,
    ) -> Result<(), CoherencyError> {
        drop(g);
        let replicated = !fua
            && self.replica_peer().is_some_and(|p| {
                let q = Request {
                    a: r,
                    b: version,
                    c: off as u64,
                    ..Request::new(Kind::Replicate, self.cfg.node, self.cfg.epoch)
                };
                p.call_ok(&q, src).is_ok()
            });
        let result = if replicated {
            self.counters.replications.fetch_add(1, Relaxed);
            Ok(())
        } else {
            if !fua {
                self.counters.write_through.fetch_add(1, Relaxed);
            }
            self.destage_line(r)
        };
        let g = self.lock();
        self.unlock_line(g, r);
        result
    }
}

use crate::cache::Cache;
