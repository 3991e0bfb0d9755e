//! The I/O engine of one group: reads (degraded when needed), writes with read-modify-write or
//! reconstruct-write chosen by fewest reads, full-stripe writes without reads, member failure
//! handling, flush, and clean shutdown.

use super::bitmap::{Persist, WriteIntent};
use super::geometry::{Geometry, Level, Piece, BLOCK_BYTES};
use super::member::Member;
use super::parity::recover::reconstruct;
use super::parity::{gf256, AlignedBuf, Kernel};
use super::superblock::{MemberState, Superblock};
use super::{stripe_lock::StripeLocks, RaidError};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

mod shared;
mod slots;

/// One member slot: the open member (if any), its recorded state and rebuild progress.
struct Slot {
    member: RwLock<Option<Arc<Member>>>,
    state: RwLock<MemberState>,
    /// Rebuilding members: stripes below this are current.
    recovered: AtomicU64,
    /// This process changed the state (a failure, a rebuild's start or end) and has not
    /// written it to the superblocks yet: a shared group's merge keeps it over the record.
    changed_here: AtomicBool,
}

/// Engine counters, for status output and for tests that prove which path ran.
#[derive(Default, Debug, Serialize)]
pub struct Stats {
    /// Member read calls.
    pub member_reads: AtomicU64,
    /// Member write calls.
    pub member_writes: AtomicU64,
    /// Stripe writes done by read-modify-write.
    pub rmw_writes: AtomicU64,
    /// Stripe writes done by reconstruct-write that had to read.
    pub rcw_writes: AtomicU64,
    /// Stripe writes that covered whole chunks and read nothing.
    pub full_stripe_writes: AtomicU64,
    /// Reads served by reconstruction or from another copy.
    pub degraded_reads: AtomicU64,
    /// Members failed while running.
    pub member_failures: AtomicU64,
}

/// What a member looks like to one I/O.
struct View {
    member: Option<Arc<Member>>,
    readable_below: u64,
    writable: bool,
}

/// An assembled group.
pub struct Array {
    geo: Geometry,
    /// Where data starts on every member (fixed at creation; kept out of the superblock lock).
    data_offset: u64,
    sb: Mutex<Superblock>,
    slots: Vec<Slot>,
    locks: StripeLocks,
    bitmap: WriteIntent,
    /// This controller's write-intent bitmap slot.
    bitmap_slot: usize,
    /// Whether every stripe keeps enough active members; recomputed whenever a member's state
    /// changes, so the write path reads one flag instead of every member's state.
    alive: AtomicBool,
    kernel: Kernel,
    /// Other controllers use the group at the same time (see `shared.rs`).
    shared: AtomicBool,
    /// The group's folder (a shared group opens members other controllers put in).
    dir: Mutex<Option<std::path::PathBuf>>,
    /// Member state changes made by this process (failures it saw), counted before the state
    /// changes so that whoever sees the new state also sees the count.
    changes: AtomicU64,
    /// Stripes whose mirror copies may differ (a dead controller's write-intent regions, until
    /// resynced): their reads go to the first copy only, as md reads an unsynced region, so
    /// that two reads never see the two sides of a write cut off by the crash.
    unsynced: Mutex<std::collections::BTreeSet<u64>>,
    /// Counters.
    pub stats: Stats,
}

/// Per-member status for reports.
#[derive(Debug, Serialize, Clone)]
pub struct MemberStatus {
    /// Index.
    pub index: usize,
    /// Path, if present.
    pub path: Option<String>,
    /// State.
    pub state: MemberState,
    /// Rebuild progress in stripes, for rebuilding members.
    pub recovered_stripes: u64,
}

impl Array {
    /// Builds the engine from assembled parts. `sb` is the group's reference superblock.
    pub(crate) fn from_parts(
        geo: Geometry,
        sb: Superblock,
        members: Vec<(Option<Member>, MemberState, u64)>,
        bitmap_bits: Vec<u8>,
        bitmap_slot: usize,
    ) -> Array {
        let bitmap = WriteIntent::new(geo.stripes(), sb.region_stripes as u64, bitmap_bits);
        let slots = members
            .into_iter()
            .map(|(m, state, rec)| Slot {
                member: RwLock::new(m.map(Arc::new)),
                state: RwLock::new(state),
                recovered: AtomicU64::new(rec),
                changed_here: AtomicBool::new(false),
            })
            .collect();
        let array = Array {
            geo,
            data_offset: sb.data_offset_bytes,
            sb: Mutex::new(sb),
            slots,
            locks: StripeLocks::default(),
            bitmap,
            bitmap_slot,
            alive: AtomicBool::new(true),
            kernel: Kernel::detect(),
            shared: AtomicBool::new(false),
            dir: Mutex::new(None),
            changes: AtomicU64::new(0),
            unsynced: Mutex::new(std::collections::BTreeSet::new()),
            stats: Stats::default(),
        };
        array.refresh_alive();
        array
    }

    /// Puts `plan`'s fault layer between the engine and every present member (slot i is member
    /// i of the plan). For fault tests and the simulator.
    pub fn inject_faults(&self, plan: &Arc<super::faults::FaultPlan>) {
        for (i, slot) in self.slots.iter().enumerate() {
            let mut m = slot.member.write().unwrap_or_else(|p| p.into_inner());
            if let Some(old) = m.as_ref() {
                *m = Some(Arc::new(old.with_faults(plan, i)));
            }
        }
    }

    /// Puts the volatile write caches of `caches` between the engine and every present member
    /// (slot i is device i there). For the simulator's power cuts.
    pub fn cache_members(&self, caches: &Arc<super::power_loss::VolatileCaches>) {
        for (i, slot) in self.slots.iter().enumerate() {
            let mut m = slot.member.write().unwrap_or_else(|p| p.into_inner());
            if let Some(old) = m.as_ref() {
                *m = Some(Arc::new(old.with_volatile_cache(caches, i)));
            }
        }
    }

    /// The geometry.
    pub fn geometry(&self) -> &Geometry {
        &self.geo
    }

    /// Logical size in bytes.
    pub fn capacity(&self) -> u64 {
        self.geo.capacity()
    }

    /// The write-intent bitmap.
    pub fn bitmap(&self) -> &WriteIntent {
        &self.bitmap
    }

    /// The stripe lock table (rebuild and scrub hold stripes too).
    pub(crate) fn locks(&self) -> &StripeLocks {
        &self.locks
    }

    /// The parity kernel in use.
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    fn sb_lock(&self) -> MutexGuard<'_, Superblock> {
        self.sb.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of the reference superblock.
    pub fn superblock(&self) -> Superblock {
        self.sb_lock().clone()
    }

    fn data_offset(&self) -> u64 {
        self.data_offset
    }

    fn view(&self, m: usize) -> View {
        let slot = &self.slots[m];
        let member = slot.member.read().unwrap_or_else(|p| p.into_inner()).clone();
        let state = *slot.state.read().unwrap_or_else(|p| p.into_inner());
        let readable_below = match (state, member.is_some()) {
            (_, false) | (MemberState::Faulty, _) => 0,
            (MemberState::Active, true) => u64::MAX,
            (MemberState::Rebuilding, true) => slot.recovered.load(Relaxed),
        };
        View { writable: member.is_some() && state != MemberState::Faulty, member, readable_below }
    }

    fn readable(&self, m: usize, stripe: u64) -> bool {
        stripe < self.view(m).readable_below
    }

    /// Status of every member.
    pub fn member_status(&self) -> Vec<MemberStatus> {
        (0..self.slots.len())
            .map(|i| {
                let v = self.view(i);
                MemberStatus {
                    index: i,
                    path: v.member.as_ref().map(|m| m.path().display().to_string()),
                    state: *self.slots[i].state.read().unwrap_or_else(|p| p.into_inner()),
                    recovered_stripes: self.slots[i].recovered.load(Relaxed),
                }
            })
            .collect()
    }

    /// True while every stripe keeps enough active members to hold its data (a member being
    /// rebuilt does not count: it holds only part of it).
    pub fn alive(&self) -> bool {
        self.alive.load(Relaxed)
    }

    /// Recomputes [`Array::alive`]; called after every change of a member's state.
    fn refresh_alive(&self) {
        let usable: Vec<bool> = (0..self.slots.len()).map(|i| self.view(i).readable_below == u64::MAX).collect();
        self.alive.store(super::assemble::survives(&self.geo, &usable), Relaxed);
    }

    /// Checks every member in use (see [`Member::check`]) and fails those that are gone or
    /// do not answer; returns their indexes. Controllers call it every few seconds so a member
    /// that vanishes while idle shows in the status before a request trips over it.
    pub fn check_members(&self) -> Vec<usize> {
        let mut failed = vec![];
        for i in 0..self.slots.len() {
            let v = self.view(i);
            let (true, Some(member)) = (v.writable, v.member) else { continue };
            if let Err(e) = member.check() {
                self.fail_member(i, &e.to_string());
                failed.push(i);
            }
        }
        failed
    }

    /// Members not active.
    pub fn degraded_members(&self) -> Vec<usize> {
        self.member_status().into_iter().filter(|s| s.state != MemberState::Active).map(|s| s.index).collect()
    }

    // ---- member I/O with failure handling -------------------------------------------------

    fn member_read(&self, m: usize, offset: u64, buf: &mut [u8]) -> Result<(), RaidError> {
        let Some(member) = self.view(m).member else {
            return Err(RaidError::BadMember { index: m, reason: "not present".into() });
        };
        self.stats.member_reads.fetch_add(1, Relaxed);
        let start = std::time::Instant::now();
        let r = member.read_at(offset, buf);
        crate::metrics::observe(crate::metrics::Op::MemberRead, start);
        if let Err(e) = &r {
            self.fail_member(m, &e.to_string());
        }
        r
    }

    /// Reads a member block of stripe `s` if the member holds it; true when `buf` now holds it.
    fn try_read(&self, m: usize, s: u64, offset: u64, buf: &mut [u8], reads: &mut usize) -> bool {
        if !self.readable(m, s) {
            return false;
        }
        *reads += 1;
        self.member_read(m, offset, buf).is_ok()
    }

    /// Writes to a member if it is writable; a failed write fails the member, which is not an
    /// error for the caller as long as the group still has the redundancy to do without it.
    fn member_write(&self, m: usize, offset: u64, buf: &[u8]) -> bool {
        let v = self.view(m);
        let (true, Some(member)) = (v.writable, v.member) else {
            return false;
        };
        self.stats.member_writes.fetch_add(1, Relaxed);
        let start = std::time::Instant::now();
        let r = member.write_at(offset, buf);
        crate::metrics::observe(crate::metrics::Op::MemberWrite, start);
        match r {
            Ok(()) => true,
            Err(e) => {
                self.fail_member(m, &e.to_string());
                false
            }
        }
    }

    /// Marks a member faulty and records that in the other members' superblocks before
    /// returning, so that the operation that saw the failure completes only once it is recorded.
    /// In a shared group the record waits for the group resource (see `shared.rs`): the AMF
    /// machine holds the operation's completion until it is made.
    pub fn fail_member(&self, m: usize, why: &str) {
        if !self.mark_faulty(m, why) || self.shared() {
            return;
        }
        if let Err(e) = self.update_superblocks(|_| {}) {
            eprintln!("amf: recording the failure of member {m} failed too: {e}");
        }
    }

    /// Sets a member's state to faulty; false if it already was.
    fn mark_faulty(&self, m: usize, why: &str) -> bool {
        // A controller that fenced itself (or whose lease ran out) has its writes refused by
        // its own gate: that says nothing about the member.
        if !super::fence::GATE.open() {
            return false;
        }
        {
            let mut st = self.slots[m].state.write().unwrap_or_else(|p| p.into_inner());
            if *st == MemberState::Faulty {
                return false;
            }
            self.changes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.slots[m].changed_here.store(true, Relaxed);
            *st = MemberState::Faulty;
        }
        self.refresh_alive();
        self.stats.member_failures.fetch_add(1, Relaxed);
        eprintln!("amf: member {m} failed: {why}");
        true
    }

    /// Applies `change` to the reference superblock, bumps the event counter and writes it to every
    /// writable member (each with its own index, the current member states and its rebuild point).
    /// A member whose superblock write fails is failed, and the others are written again so that
    /// they record it: a member holding a superblock older than the others' must not look current.
    pub fn update_superblocks(&self, change: impl FnOnce(&mut Superblock)) -> Result<(), RaidError> {
        let on_members = if self.shared() { Some(self.newest_superblock()?) } else { None };
        let mut sb = self.sb_lock();
        if let Some(newest) = on_members {
            self.adopt(&mut sb, &newest);
        }
        change(&mut sb);
        // Each pass either writes every writable member or fails one more: bounded by the count.
        for _ in 0..=self.slots.len() {
            sb.events += 1;
            sb.states = self.slots.iter().map(|s| *s.state.read().unwrap_or_else(|p| p.into_inner())).collect();
            let (mut written, mut failed) = (0, false);
            for (i, slot) in self.slots.iter().enumerate() {
                let v = self.view(i);
                let (true, Some(member)) = (v.writable, v.member) else {
                    continue;
                };
                let mut own = sb.clone();
                own.member_index = i as u32;
                own.recovery_stripes = slot.recovered.load(Relaxed);
                match member.write_durable(0, &own.encode()) {
                    Ok(()) => written += 1,
                    Err(e) => {
                        failed |= self.mark_faulty(i, &e.to_string());
                    }
                }
            }
            if written == 0 {
                return Err(RaidError::GroupFailed { reason: "no member took the superblock update".into() });
            }
            if !failed {
                // Changes this write carried are on the members now (one made meanwhile is not).
                for (slot, written) in self.slots.iter().zip(&sb.states) {
                    if *slot.state.read().unwrap_or_else(|p| p.into_inner()) == *written {
                        slot.changed_here.store(false, Relaxed);
                    }
                }
                return Ok(());
            }
        }
        Ok(())
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<(), RaidError> {
        let capacity = self.capacity();
        match offset.checked_add(len) {
            Some(end) if end <= capacity => Ok(()),
            _ => Err(RaidError::OutOfRange { offset, len, capacity }),
        }
    }

    fn persist_bitmap(&self) -> impl Fn(u64, &[u8]) -> Result<(), RaidError> + '_ {
        move |off: u64, page: &[u8]| {
            let base = {
                let sb = self.sb_lock();
                sb.bitmap_offset_bytes + self.bitmap_slot as u64 * sb.bitmap_bytes as u64
            };
            let members: Vec<(usize, Arc<Member>)> = (0..self.slots.len())
                .filter_map(|i| {
                    let v = self.view(i);
                    v.member.filter(|_| v.writable).map(|m| (i, m))
                })
                .collect();
            // The bit must be durable before the data it covers is written; the members' durable
            // writes run in parallel so the wait is one write, not one per member.
            let results: Vec<Result<(), String>> = std::thread::scope(|scope| {
                let handles: Vec<_> = members
                    .iter()
                    .map(|(_, m)| scope.spawn(move || m.write_durable(base + off, page).map_err(|e| e.to_string())))
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("bitmap writer panicked".into()))).collect()
            });
            // A member without the bit could hide a stripe that needs a resync: it is failed.
            for ((i, _), r) in members.iter().zip(&results) {
                if let Err(e) = r {
                    self.fail_member(*i, e);
                }
            }
            if !results.iter().any(|r| r.is_ok()) {
                return Err(RaidError::GroupFailed { reason: "no member took the write-intent bit".into() });
            }
            Ok(())
        }
    }

    /// Fails the request once the group has lost more members than it tolerates: what a write
    /// put there may not read back, and a group that failed takes no more writes (as md does).
    fn check_alive(&self) -> Result<(), RaidError> {
        if self.alive() {
            return Ok(());
        }
        Err(RaidError::GroupFailed { reason: format!("members {:?} failed", self.degraded_members()) })
    }

    // ---- reads ------------------------------------------------------------------------------

    /// Marks `stripes` as possibly out of step between their mirror copies (see `unsynced`):
    /// a survivor does so for a dead controller's write-intent regions before it serves in the
    /// new membership. They stay marked for this process's life (only read balancing is lost).
    pub fn mark_unsynced(&self, stripes: &[u64]) {
        if self.geo.copies() > 1 {
            self.unsynced.lock().unwrap_or_else(|e| e.into_inner()).extend(stripes.iter().copied());
        }
    }

    /// Reads `buf.len()` bytes at logical `offset`.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), RaidError> {
        self.check_range(offset, buf.len() as u64)?;
        let base = self.data_offset();
        for p in self.geo.split(offset, buf.len() as u64) {
            let dst = &mut buf[(p.logical - offset) as usize..][..p.len as usize];
            self.read_piece(base, &p, dst)?;
        }
        Ok(())
    }

    fn read_piece(&self, base: u64, p: &Piece, dst: &mut [u8]) -> Result<(), RaidError> {
        let places = self.geo.places(p.stripe, p.dd);
        // Spread mirror reads over the copies; any copy but the preferred one is a degraded read.
        let unsynced = places.len() > 1 && self.unsynced.lock().unwrap_or_else(|e| e.into_inner()).contains(&p.stripe);
        let start = if unsynced { 0 } else { (p.stripe as usize) % places.len() };
        for k in 0..places.len() {
            let place = places[(start + k) % places.len()];
            if self.readable(place.member, p.stripe)
                && self.member_read(place.member, base + place.chunk_offset + p.in_chunk, dst).is_ok()
            {
                if k > 0 {
                    self.stats.degraded_reads.fetch_add(1, Relaxed);
                }
                return Ok(());
            }
        }
        if self.geo.parities() == 0 {
            return Err(RaidError::Unrecoverable { stripe: p.stripe });
        }
        self.stats.degraded_reads.fetch_add(1, Relaxed);
        let _g = self.locks.lock(p.stripe);
        let blocks = self.read_stripe_range(base, p.stripe, p.in_chunk, p.in_chunk + p.len)?;
        dst.copy_from_slice(&blocks[p.dd]);
        Ok(())
    }

    /// Reads blocks [lo, hi) of every member of a parity stripe (data, then P, then Q) and
    /// reconstructs the unreadable ones.
    pub(crate) fn read_stripe_range(&self, base: u64, s: u64, lo: u64, hi: u64) -> Result<Vec<AlignedBuf>, RaidError> {
        let members = self.geo.parity_stripe_members(s);
        let row = base + s * self.geo.chunk_bytes;
        let len = (hi - lo) as usize;
        let mut blocks: Vec<AlignedBuf> = members.iter().map(|_| AlignedBuf::scratch(len)).collect();
        let mut missing = Vec::new();
        for (pos, &m) in members.iter().enumerate() {
            if !(self.readable(m, s) && self.member_read(m, row + lo, &mut blocks[pos]).is_ok()) {
                missing.push(pos);
            }
        }
        if !missing.is_empty() {
            reconstruct(self.kernel, &mut blocks, self.geo.parities(), &missing)
                .map_err(|_| RaidError::Unrecoverable { stripe: s })?;
        }
        Ok(blocks)
    }

    // ---- writes -----------------------------------------------------------------------------

    /// Writes `data` at logical `offset`; with `fua` the members are synced before returning.
    pub fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), RaidError> {
        self.check_range(offset, data.len() as u64)?;
        let base = self.data_offset();
        let pieces: Vec<Piece> = self.geo.split(offset, data.len() as u64).collect();
        let mut i = 0;
        while i < pieces.len() {
            let s = pieces[i].stripe;
            let j = i + pieces[i..].iter().take_while(|p| p.stripe == s).count();
            self.write_stripe(base, s, &pieces[i..j], data, offset)?;
            i = j;
        }
        if fua {
            self.sync_members()?;
        }
        Ok(())
    }

    /// Writes zeroes over a range.
    pub fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> Result<(), RaidError> {
        self.check_range(offset, len)?;
        const STEP: u64 = 1 << 20;
        let zeros = vec![0u8; STEP.min(len) as usize];
        let mut pos = offset;
        while pos < offset + len {
            let n = STEP.min(offset + len - pos);
            self.write(pos, &zeros[..n as usize], false)?;
            pos += n;
        }
        if fua {
            self.sync_members()?;
        }
        Ok(())
    }

    fn write_stripe(&self, base: u64, s: u64, pieces: &[Piece], data: &[u8], offset: u64) -> Result<(), RaidError> {
        let src = |p: &Piece| &data[(p.logical - offset) as usize..][..p.len as usize];
        if self.geo.level == Level::Raid0 {
            for p in pieces {
                let place = self.geo.places(s, p.dd)[0];
                let v = self.view(place.member);
                let (true, Some(member)) = (v.writable, v.member) else {
                    return Err(RaidError::Unrecoverable { stripe: s });
                };
                self.stats.member_writes.fetch_add(1, Relaxed);
                if let Err(e) = member.write_at(base + place.chunk_offset + p.in_chunk, src(p)) {
                    self.fail_member(place.member, &e.to_string());
                    return Err(e);
                }
            }
            return Ok(());
        }
        self.check_alive()?;
        let _g = self.locks.lock(s);
        let persist = self.persist_bitmap();
        self.bitmap.begin(s, &persist as &Persist<'_>)?;
        let r = if self.geo.is_mirror() {
            self.write_mirror(base, s, pieces, &src)
        } else {
            self.write_parity(base, s, pieces, &src)
        };
        self.bitmap.end(s);
        r?;
        self.check_alive()
    }

    fn write_mirror<'d>(
        &self,
        base: u64,
        s: u64,
        pieces: &[Piece],
        src: &dyn Fn(&Piece) -> &'d [u8],
    ) -> Result<(), RaidError> {
        for p in pieces {
            let mut copies = 0;
            for place in self.geo.places(s, p.dd) {
                if self.member_write(place.member, base + place.chunk_offset + p.in_chunk, src(p)) {
                    copies += 1;
                }
            }
            if copies == 0 {
                return Err(RaidError::Unrecoverable { stripe: s });
            }
        }
        Ok(())
    }

    fn write_parity<'d>(
        &self,
        base: u64,
        s: u64,
        pieces: &[Piece],
        src: &dyn Fn(&Piece) -> &'d [u8],
    ) -> Result<(), RaidError> {
        let n = self.geo.data_per_stripe();
        let par = self.geo.parities();
        let members = self.geo.parity_stripe_members(s);
        let row = base + s * self.geo.chunk_bytes;
        let lo = pieces.iter().map(|p| p.in_chunk).min().unwrap_or(0) / BLOCK_BYTES * BLOCK_BYTES;
        let hi = pieces.iter().map(|p| p.in_chunk + p.len).max().unwrap_or(0).div_ceil(BLOCK_BYTES) * BLOCK_BYTES;
        let hi = hi.min(self.geo.chunk_bytes);
        let mut by_dd: Vec<Option<&Piece>> = vec![None; n];
        for p in pieces {
            by_dd[p.dd] = Some(p);
        }
        let full = |dd: usize| by_dd[dd].is_some_and(|p| p.in_chunk <= lo && p.in_chunk + p.len >= hi);
        let touched = by_dd.iter().filter(|p| p.is_some()).count();
        let rmw_ok =
            (0..n).filter(|&dd| by_dd[dd].is_some()).chain(n..n + par).all(|pos| self.readable(members[pos], s));
        let rcw_reads = (0..n).filter(|&dd| !full(dd)).count();
        // Attempt the cheaper path; a member failing mid-way falls back to reconstruction.
        if rmw_ok && touched + par < rcw_reads && self.rmw(row, lo, hi, &members, &by_dd, src).is_ok() {
            self.stats.rmw_writes.fetch_add(1, Relaxed);
            return Ok(());
        }
        let reads = self.rcw(s, row, lo, hi, &members, &by_dd, &full, src)?;
        if reads == 0 {
            self.stats.full_stripe_writes.fetch_add(1, Relaxed);
        } else {
            self.stats.rcw_writes.fetch_add(1, Relaxed);
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn rmw<'d>(
        &self,
        row: u64,
        lo: u64,
        hi: u64,
        members: &[usize],
        by_dd: &[Option<&Piece>],
        src: &dyn Fn(&Piece) -> &'d [u8],
    ) -> Result<(), RaidError> {
        let n = by_dd.len();
        let par = self.geo.parities();
        let len = (hi - lo) as usize;
        let mut parity: Vec<AlignedBuf> = (0..par).map(|_| AlignedBuf::scratch(len)).collect();
        for (j, buf) in parity.iter_mut().enumerate() {
            self.member_read(members[n + j], row + lo, buf)?;
        }
        let mut deltas = Vec::new();
        for (dd, p) in by_dd.iter().enumerate() {
            let Some(p) = p else { continue };
            let mut old = AlignedBuf::scratch(len);
            self.member_read(members[dd], row + lo, &mut old)?;
            // delta = old ^ new over the piece; zero elsewhere.
            let mut delta = AlignedBuf::zeroed(len);
            let at = (p.in_chunk - lo) as usize;
            for (i, (d, n)) in delta[at..at + p.len as usize].iter_mut().zip(src(p)).enumerate() {
                *d = old[at + i] ^ n;
            }
            deltas.push((dd, delta));
        }
        for (dd, delta) in &deltas {
            for (a, b) in parity[0].iter_mut().zip(delta.iter()) {
                *a ^= *b;
            }
            if par == 2 {
                self.kernel.mul_acc(gf256::exp(*dd), delta, &mut parity[1]);
            }
        }
        for (dd, p) in by_dd.iter().enumerate() {
            if let Some(p) = p {
                self.member_write(members[dd], row + p.in_chunk, src(p));
            }
        }
        for (j, buf) in parity.iter().enumerate() {
            self.member_write(members[n + j], row + lo, buf);
        }
        Ok(())
    }

    /// Reconstruct-write: read what the new parity needs, rebuild anything unreadable, compute
    /// P/Q over [lo, hi) and write. Returns the number of member reads.
    #[allow(clippy::too_many_arguments)]
    fn rcw<'d>(
        &self,
        s: u64,
        row: u64,
        lo: u64,
        hi: u64,
        members: &[usize],
        by_dd: &[Option<&Piece>],
        full: &dyn Fn(usize) -> bool,
        src: &dyn Fn(&Piece) -> &'d [u8],
    ) -> Result<usize, RaidError> {
        let n = by_dd.len();
        let par = self.geo.parities();
        let len = (hi - lo) as usize;
        let mut blocks: Vec<AlignedBuf> = (0..n + par).map(|_| AlignedBuf::scratch(len)).collect();
        let mut reads = 0;
        // First the blocks whose old contents the new parity needs. If one of them cannot be read
        // (unreadable from the start, or failing now), the plan changes to a full reconstruction,
        // which needs every surviving block: the ones skipped as overwritten and the parity too.
        // A block is used only once it has been read (`have`).
        let mut have = vec![false; n + par];
        let mut tried = vec![false; n + par];
        for dd in (0..n).filter(|&dd| !full(dd)) {
            tried[dd] = true;
            have[dd] = self.try_read(members[dd], s, row + lo, &mut blocks[dd], &mut reads);
        }
        if (0..n).any(|dd| !full(dd) && !have[dd]) {
            for pos in (0..n + par).filter(|&pos| !tried[pos]) {
                have[pos] = self.try_read(members[pos], s, row + lo, &mut blocks[pos], &mut reads);
            }
            let missing: Vec<usize> = (0..n + par).filter(|&pos| !have[pos]).collect();
            reconstruct(self.kernel, &mut blocks, par, &missing).map_err(|_| RaidError::Unrecoverable { stripe: s })?;
        }
        for (dd, p) in by_dd.iter().enumerate() {
            if let Some(p) = p {
                let at = (p.in_chunk - lo) as usize;
                blocks[dd][at..at + p.len as usize].copy_from_slice(src(p));
            }
        }
        let (data, parity) = blocks.split_at_mut(n);
        let refs: Vec<&[u8]> = data.iter().map(|b| &b[..]).collect();
        match parity {
            [p] => self.kernel.xor_gen(&refs, p),
            [p, q] => self.kernel.pq_gen(&refs, p, q),
            _ => {}
        }
        let mut written = 0;
        for (dd, p) in by_dd.iter().enumerate() {
            if let Some(p) = p {
                written += self.member_write(members[dd], row + p.in_chunk, src(p)) as usize;
            }
        }
        for (j, buf) in parity.iter().enumerate() {
            written += self.member_write(members[n + j], row + lo, buf) as usize;
        }
        if written == 0 {
            return Err(RaidError::Unrecoverable { stripe: s });
        }
        Ok(reads)
    }

    // ---- durability -------------------------------------------------------------------------

    /// fdatasync every writable member.
    pub fn sync_members(&self) -> Result<(), RaidError> {
        let mut ok = 0;
        for i in 0..self.slots.len() {
            let v = self.view(i);
            let (true, Some(member)) = (v.writable, v.member) else {
                continue;
            };
            match member.sync() {
                Ok(()) => ok += 1,
                Err(e) => self.fail_member(i, &e.to_string()),
            }
        }
        if ok == 0 || !self.alive() {
            return Err(RaidError::GroupFailed { reason: "too many members failed to sync".into() });
        }
        Ok(())
    }

    /// Makes every completed write durable and clears write-intent bits of idle regions.
    /// While a member is out, bits stay set (as md keeps them): they then name every region
    /// written since, which a forced assembly that takes the member back must resync.
    pub fn flush(&self) -> Result<(), RaidError> {
        let snap = self.bitmap.snapshot_idle();
        self.sync_members()?;
        if !self.degraded_members().is_empty() {
            return Ok(());
        }
        let persist = self.persist_bitmap();
        self.bitmap.clear_idle(snap, &persist as &Persist<'_>)?;
        Ok(())
    }

    /// Zeroes every write-intent slot but this controller's on every writable member: after a
    /// start that resynced the regions of all slots (their bits are merged into this one's in
    /// memory), so old bits of controllers that are gone do not cost a resync after every crash.
    /// Only while no member is out (then the bits must stay).
    pub fn clear_other_bitmap_slots(&self) -> Result<(), RaidError> {
        if !self.degraded_members().is_empty() {
            return Ok(());
        }
        let (base, bytes, slots) = {
            let sb = self.sb_lock();
            (sb.bitmap_offset_bytes, sb.bitmap_bytes as u64, sb.bitmap_slots as usize)
        };
        let zeros = vec![0u8; bytes as usize];
        for slot in (0..slots).filter(|&s| s != self.bitmap_slot) {
            for i in 0..self.slots.len() {
                self.member_write(i, base + slot as u64 * bytes, &zeros);
            }
        }
        self.sync_members()
    }

    /// This controller's write-intent bitmap slot.
    pub fn bitmap_slot(&self) -> usize {
        self.bitmap_slot
    }

    /// Flushes, clears the bitmap and records a clean shutdown.
    pub fn close(&self) -> Result<(), RaidError> {
        self.flush()?;
        self.update_superblocks(|sb| sb.clean = true)
    }

    /// Records that the group is in use (a crash from now on leaves it dirty).
    pub fn mark_dirty(&self) -> Result<(), RaidError> {
        self.update_superblocks(|sb| sb.clean = false)
    }

    // ---- maintenance hooks used by resync, scrub and rebuild --------------------------------

    /// Recomputes redundancy of one stripe from its data (parity) or first readable copy
    /// (mirrors). Caller holds the stripe lock. Returns false if the stripe lacks the members.
    pub(crate) fn resync_stripe(&self, s: u64) -> Result<bool, RaidError> {
        let base = self.data_offset();
        let chunk = self.geo.chunk_bytes as usize;
        if self.geo.is_mirror() {
            let places = self.geo.places(s, 0);
            let mut buf = AlignedBuf::scratch(chunk);
            let Some(src) = places.iter().find(|p| {
                self.readable(p.member, s) && self.member_read(p.member, base + p.chunk_offset, &mut buf).is_ok()
            }) else {
                return Ok(false);
            };
            for p in places.iter().filter(|p| p.member != src.member) {
                self.member_write(p.member, base + p.chunk_offset, &buf);
            }
            return Ok(true);
        }
        if self.geo.parities() == 0 {
            return Ok(true);
        }
        let members = self.geo.parity_stripe_members(s);
        let n = self.geo.data_per_stripe();
        if !(0..n).all(|dd| self.readable(members[dd], s)) {
            return Ok(false);
        }
        let mut blocks = self.read_stripe_range(base, s, 0, chunk as u64)?;
        let (data, parity) = blocks.split_at_mut(n);
        let refs: Vec<&[u8]> = data.iter().map(|b| &b[..]).collect();
        let mut fresh: Vec<AlignedBuf> = parity.iter().map(|_| AlignedBuf::scratch(chunk)).collect();
        match fresh.as_mut_slice() {
            [p] => self.kernel.xor_gen(&refs, p),
            [p, q] => self.kernel.pq_gen(&refs, p, q),
            _ => {}
        }
        let row = base + s * self.geo.chunk_bytes;
        for (j, f) in fresh.iter().enumerate() {
            if f[..] != parity[j][..] {
                self.member_write(members[n + j], row, f);
            }
        }
        Ok(true)
    }

    /// Number of member slots.
    pub fn member_count(&self) -> usize {
        self.slots.len()
    }

    /// Puts `member` into slot `index` as a rebuilding member starting at stripe 0 (or resumes a
    /// rebuilding one when `member` is None). Returns the stripe to start from.
    pub(crate) fn begin_rebuild(&self, index: usize, member: Option<Member>) -> Result<u64, RaidError> {
        let slot = self.slots.get(index).ok_or(RaidError::BadMember { index, reason: "no such member".into() })?;
        let state = *slot.state.read().unwrap_or_else(|p| p.into_inner());
        match (state, member) {
            (MemberState::Active, _) => {
                return Err(RaidError::BadMember { index, reason: "is active; nothing to rebuild".into() })
            }
            (_, Some(m)) => {
                *slot.member.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(m));
                slot.recovered.store(0, Relaxed);
            }
            (MemberState::Rebuilding, None) => {}
            (MemberState::Faulty, None) => {
                return Err(RaidError::BadMember { index, reason: "is faulty and no replacement was given".into() })
            }
        }
        *slot.state.write().unwrap_or_else(|p| p.into_inner()) = MemberState::Rebuilding;
        slot.changed_here.store(true, Relaxed);
        self.refresh_alive();
        // Bitmap area of the new member: a copy of what the others hold is not needed, zeros
        // are written by creation; superblock follows (in a shared group, the caller records
        // it under the group resource).
        if !self.shared() {
            self.update_superblocks(|_| {})?;
        }
        Ok(slot.recovered.load(Relaxed))
    }

    /// Rebuilds the blocks of member `index` in stripe `s`. Caller holds the stripe lock.
    pub(crate) fn rebuild_stripe(&self, index: usize, s: u64) -> Result<(), RaidError> {
        let base = self.data_offset();
        let chunk = self.geo.chunk_bytes;
        if self.geo.is_mirror() {
            let places = self.geo.places(s, 0);
            let Some(target) = places.iter().find(|p| p.member == index) else {
                return Ok(());
            };
            let mut buf = AlignedBuf::scratch(chunk as usize);
            let src = places.iter().find(|p| {
                p.member != index
                    && self.readable(p.member, s)
                    && self.member_read(p.member, base + p.chunk_offset, &mut buf).is_ok()
            });
            if src.is_none() {
                return Err(RaidError::Unrecoverable { stripe: s });
            }
            return self.rebuild_write(index, base + target.chunk_offset, &buf);
        }
        if self.geo.parities() == 0 {
            return Err(RaidError::BadMember { index, reason: "raid0 has no redundancy to rebuild from".into() });
        }
        let members = self.geo.parity_stripe_members(s);
        let pos = members.iter().position(|&m| m == index).ok_or(RaidError::Unrecoverable { stripe: s })?;
        // The rebuilding member is not readable at s (s >= recovered), so it is reconstructed.
        let blocks = self.read_stripe_range(base, s, 0, chunk)?;
        self.rebuild_write(index, base + s * chunk, &blocks[pos])
    }

    /// Writes a rebuilt block; a replacement that fails its writes ends the rebuild (the write
    /// failed it, so it will not be marked active).
    fn rebuild_write(&self, index: usize, offset: u64, buf: &[u8]) -> Result<(), RaidError> {
        if self.member_write(index, offset, buf) {
            return Ok(());
        }
        Err(RaidError::BadMember { index, reason: "the replacement failed during the rebuild".into() })
    }

    /// Advances the rebuild point of a rebuilding member.
    pub(crate) fn set_recovered(&self, index: usize, stripes: u64) {
        self.slots[index].recovered.store(stripes, Relaxed);
    }

    /// Marks a rebuilt member active.
    pub(crate) fn finish_rebuild(&self, index: usize) -> Result<(), RaidError> {
        self.sync_members()?;
        {
            let mut st = self.slots[index].state.write().unwrap_or_else(|p| p.into_inner());
            if *st != MemberState::Rebuilding {
                return Err(RaidError::BadMember { index, reason: "failed during the rebuild".into() });
            }
            *st = MemberState::Active;
        }
        self.slots[index].changed_here.store(true, Relaxed);
        self.refresh_alive();
        self.slots[index].recovered.store(0, Relaxed);
        if self.shared() {
            return Ok(());
        }
        self.update_superblocks(|_| {})
    }

    /// Size a replacement member needs.
    pub fn member_bytes_needed(&self) -> u64 {
        let sb = self.sb_lock();
        sb.data_offset_bytes + sb.member_data_bytes
    }
}

/// Raw blocks of one stripe as stored: data then parity, or every mirror copy.
pub(crate) struct StripeBlocks {
    pub members: Vec<usize>,
    pub offsets: Vec<u64>,
    pub bufs: Vec<AlignedBuf>,
}

impl Array {
    /// Reads every block of stripe `s` as stored, or None if a member is not readable.
    /// Caller holds the stripe lock.
    pub(crate) fn stripe_blocks(&self, s: u64) -> Result<Option<StripeBlocks>, RaidError> {
        let base = self.data_offset();
        let chunk = self.geo.chunk_bytes;
        let (members, offsets): (Vec<usize>, Vec<u64>) = if self.geo.is_mirror() {
            self.geo.places(s, 0).iter().map(|p| (p.member, base + p.chunk_offset)).unzip()
        } else {
            self.geo.parity_stripe_members(s).into_iter().map(|m| (m, base + s * chunk)).unzip()
        };
        let mut bufs = Vec::with_capacity(members.len());
        for (&m, &off) in members.iter().zip(&offsets) {
            let mut b = AlignedBuf::scratch(chunk as usize);
            if !(self.readable(m, s) && self.member_read(m, off, &mut b).is_ok()) {
                return Ok(None);
            }
            bufs.push(b);
        }
        Ok(Some(StripeBlocks { members, offsets, bufs }))
    }

    /// Writes one block to a member (scrub repair).
    pub(crate) fn write_block(&self, m: usize, offset: u64, buf: &[u8]) -> bool {
        self.member_write(m, offset, buf)
    }
}
