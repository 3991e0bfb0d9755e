//! Reads: a hit is served from the cache with no message; a miss acquires the line shared
//! through the card, asks the sharers the card reports for it, and reads the members only when
//! none of them has it.

use super::{Amf, CoherencyError};
use crate::cache::{Busy, State};
use crate::fabric::wire::{Kind, Request, Status};
use amf_hdl_model::gen::structs::Opcode;
use std::sync::atomic::Ordering::Relaxed;

/// Where a line's data came from.
pub(crate) enum Found {
    /// A peer's cache.
    Peer(Vec<u8>, u64),
    /// The members.
    Members(Vec<u8>, u64),
    /// A peer holds the line in the middle of changing it: start over.
    Retry,
}

/// Top bit of a forwarded line's version: the sender held it dirty.
pub(crate) const DIRTY_BIT: u64 = 1 << 63;
/// Next bit: the copy came from a handoff area, not a held line — it may be a leftover older
/// than what reached the members since.
pub(crate) const HANDOFF_BIT: u64 = 1 << 62;
/// The version part of a forwarded line's tag.
pub(crate) const VERSION_MASK: u64 = !(DIRTY_BIT | HANDOFF_BIT);

/// Keeps the newer of `best` and the copy `(data, tag)` (tags as forwarded: version and bits).
pub(crate) fn keep_newest(best: &mut Option<(Vec<u8>, u64)>, data: Vec<u8>, tag: u64) {
    if best.as_ref().is_none_or(|(_, b)| (tag & VERSION_MASK) > (b & VERSION_MASK)) {
        *best = Some((data, tag));
    }
}

impl Amf {
    /// Reads `buf.len()` bytes at `offset` (step 1: a host request arrives).
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), CoherencyError> {
        self.check_range(offset, buf.len() as u64)?;
        self.counters.reads.fetch_add(1, Relaxed);
        let mut done = 0;
        for (r, off, n) in self.pieces(offset, buf.len() as u64).collect::<Vec<_>>() {
            self.read_line(r, off, &mut buf[done..done + n])?;
            done += n;
        }
        Ok(())
    }

    fn read_line(&self, r: u64, off: usize, dst: &mut [u8]) -> Result<(), CoherencyError> {
        let start = std::time::Instant::now();
        for attempt in 0u32.. {
            self.before_attempt(r, attempt, start)?;
            let g = self.lock_line(r, Busy::Filling)?;
            // Step 2: a line present here is valid (events were applied just now): no message.
            let mut g = g;
            if let Some(l) = g.touch(r) {
                dst.copy_from_slice(&l.data[off..off + dst.len()]);
                super::trace!(
                    "hit r{r} off {off} v{} {:?} value {}",
                    l.version,
                    l.state,
                    if dst.len() >= 16 { u64::from_le_bytes(dst[8..16].try_into().unwrap_or([0; 8])) } else { 0 }
                );
                self.counters.hits.fetch_add(1, Relaxed);
                self.unlock_line(g, r);
                return Ok(());
            }
            self.counters.misses.fetch_add(1, Relaxed);
            let g = match self.make_room(g, r) {
                Ok(g) => g,
                Err(e) => {
                    self.unlock_line(self.lock(), r);
                    return Err(e);
                }
            };
            let generation = g.generation(r);
            drop(g);
            let found = self.step3_search(r);
            let mut g = self.lock();
            let sync = self.sync_events(&mut g);
            let (found, untracked) = match (found, sync) {
                (Ok((f, untracked)), Ok(())) => (f, untracked),
                (Err(e), _) | (_, Err(e)) => {
                    self.unlock_line(g, r);
                    return Err(e);
                }
            };
            let (data, version) = match found {
                Found::Peer(d, v) | Found::Members(d, v) => (d, v & VERSION_MASK),
                Found::Retry => {
                    self.unlock_line(g, r);
                    continue;
                }
            };
            // Step 4. A writer's round that reached this node during the fill may have taken
            // the data from where it was read (to the members' older copy): start over. Keep
            // the line only if the card tracks it.
            let current = g.generation(r) == generation;
            super::trace!(
                "n{} fill r{r} off {off} v{version} {:08x} current {current} value {}",
                self.cfg.node,
                crc32c::crc32c(&data),
                u64::from_le_bytes(data[off + 8..off + 16].try_into().unwrap_or([0; 8]))
            );
            if !current {
                self.unlock_line(g, r);
                continue;
            }
            dst.copy_from_slice(&data[off..off + dst.len()]);
            if !untracked {
                g.install(r, State::Shared, false, version, data);
            }
            self.unlock_line(g, r);
            return Ok(());
        }
        Err(CoherencyError::Contended(r))
    }

    /// Step 3 (read): acquire shared, then ask the sharers the card reports; members last.
    fn step3_search(&self, r: u64) -> Result<(Found, bool), CoherencyError> {
        let start = std::time::Instant::now();
        let c = self.card.call(Opcode::AcquireShared, r)?;
        self.count_acquire(&c);
        super::trace!("n{} shared r{} untracked {} sharers {:#x}", self.cfg.node, r, c.untracked, c.sharers);
        let untracked = c.untracked != 0;
        // Every sharer is asked and the newest version wins: a sharer the card still lists
        // may keep an older copy that a later writer's round took from it.
        let holders = c.sharers & self.others();
        // This node's own handoff line counts too: it may be the newest data, owed to a
        // writer whose round was aborted.
        let mut best: Option<(Vec<u8>, u64)> =
            self.lock().handoff_line(r).map(|l| (l.data.clone(), l.version | HANDOFF_BIT));
        // The listed sharers first; if none has the line, the other peers: a round the card
        // aborted may have left the newest data with a node no list names any more.
        let rest = self.others() & !holders;
        for group in [holders, rest] {
            if best.is_some() && group == rest {
                break;
            }
            for p in (0..8u8).filter(|p| group & (1 << p) != 0) {
                match self.fetch(p, r, false, 0)? {
                    Found::Peer(d, v) => keep_newest(&mut best, d, v),
                    Found::Retry => return Ok((Found::Retry, untracked)),
                    Found::Members(..) => {}
                }
            }
        }
        if let Some((d, v)) = best {
            // A held line is the newest there is; a handoff copy only if the members do not
            // have a newer version (a leftover from a round whose writer kept its own copy).
            if v & HANDOFF_BIT == 0 || self.member_version(r)? <= v & VERSION_MASK {
                self.counters.remote_hits.fetch_add(1, Relaxed);
                crate::metrics::observe(crate::metrics::Op::RemoteHit, start);
                return Ok((Found::Peer(d, v), untracked));
            }
        }
        let (d, v) = self.disk.read(r * self.cfg.line_bytes as u64, self.line_len(r))?;
        self.counters.disk_reads.fetch_add(1, Relaxed);
        Ok((Found::Members(d, v), untracked))
    }

    /// The version of line `r` the members have (a zero-length read: no data moves).
    pub(crate) fn member_version(&self, r: u64) -> Result<u64, CoherencyError> {
        Ok(self.disk.read(r * self.cfg.line_bytes as u64, 0)?.1)
    }

    /// Asks peer `p` for line `r` (`handoff`: the line its invalidate gave to this node).
    /// `Found::Members` means "not there".
    pub(crate) fn fetch(&self, p: u8, r: u64, handoff: bool, floor: u64) -> Result<Found, CoherencyError> {
        let Some(peer) = self.peer(p) else {
            return Err(CoherencyError::BadRequest(format!("the card named node {p}, which has no fabric address")));
        };
        let mut q = Request { a: r, b: floor, ..Request::new(Kind::Fetch, self.cfg.node, self.cfg.epoch) };
        if handoff {
            q.flags |= crate::fabric::wire::FLAG_HANDOFF;
        }
        let (resp, data) = peer.call(&q, &[])?;
        match resp.status {
            Status::Ok if data.len() == self.line_len(r) => Ok(Found::Peer(data, resp.a)),
            Status::Ok => Err(CoherencyError::BadRequest(format!(
                "node {p} forwarded {} bytes for line {r} ({} expected)",
                data.len(),
                self.line_len(r)
            ))),
            Status::NotHeld => Ok(Found::Members(Vec::new(), 0)),
            Status::Retry => Ok(Found::Retry),
            s => Err(CoherencyError::Fabric(crate::fabric::FabricError::Refused { node: p, status: s })),
        }
    }

    pub(crate) fn count_acquire(&self, c: &amf_hdl_model::gen::structs::Completion) {
        if c.no_broadcast != 0 {
            self.counters.broadcasts_skipped.fetch_add(1, Relaxed);
        } else {
            self.counters.broadcasts.fetch_add(1, Relaxed);
        }
    }
}
