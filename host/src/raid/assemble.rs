//! Creating a group on member files and assembling it again from whatever members a directory
//! holds: identity and freshness checks, degraded start, and the post-crash resync driven by
//! the write-intent bitmap.

use super::array::Array;
use super::bitmap::{WriteIntent, PAGE_BYTES};
use super::geometry::{Geometry, Level};
use super::member::Member;
use super::superblock::{MemberState, Superblock, BITMAP_SLOTS_MAX, SUPERBLOCK_BYTES};
use super::{RaidError, Rejected};
use std::path::{Path, PathBuf};

/// Where member data starts (room for the superblock and the bitmap, 1 MiB aligned).
pub const DATA_OFFSET_BYTES: u64 = 1 << 20;
/// Where the write-intent bitmap starts.
pub const BITMAP_OFFSET_BYTES: u64 = SUPERBLOCK_BYTES as u64;
/// Bytes of one controller's lease record on every member (a page: a 4 KiB-sector device
/// writes it whole, and O_DIRECT can).
pub const LEASE_RECORD_BYTES: u64 = 4096;
/// The controllers' lease records: the last pages before the data, one per controller.
pub const LEASE_AREA_BYTES: u64 = LEASE_RECORD_BYTES * super::superblock::BITMAP_SLOTS_MAX as u64;
/// Largest bitmap slot: the slots of every controller share the room between the superblock
/// and the lease records.
pub fn bitmap_bytes_max(slots: u32) -> u64 {
    (DATA_OFFSET_BYTES - BITMAP_OFFSET_BYTES - LEASE_AREA_BYTES) / slots.max(1) as u64 / PAGE_BYTES as u64
        * PAGE_BYTES as u64
}
/// Where the lease records start on every member of a group with superblock `sb`, or None
/// when its bitmaps reach into that room (a group made before leases with a large bitmap).
pub fn lease_offset(sb: &Superblock) -> Option<u64> {
    let at = sb.data_offset_bytes.checked_sub(LEASE_AREA_BYTES)?;
    let bitmap_end = sb.bitmap_offset_bytes + sb.bitmap_slots as u64 * sb.bitmap_bytes as u64;
    (bitmap_end <= at).then_some(at)
}
/// Default logical bytes covered by one write-intent bit (md's default bitmap chunk). Every first
/// write into a clean region waits for a durable bitmap write on every member, so small regions
/// cost sequential writers dearly; large ones resync more after a crash.
pub const DEFAULT_REGION_BYTES: u64 = 64 << 20;
/// Default chunk size.
pub const DEFAULT_CHUNK_BYTES: u64 = 64 * 1024;

/// Shape of a new group.
#[derive(Clone, Debug)]
pub struct CreateOptions {
    /// Level.
    pub level: Level,
    /// Member count.
    pub members: usize,
    /// Size of each member file in bytes.
    pub member_bytes: u64,
    /// Chunk size in bytes.
    pub chunk_bytes: u64,
    /// Logical bytes per write-intent bit (rounded to whole stripes; grown if the bitmap would
    /// exceed its area).
    pub region_bytes: u64,
    /// Write-intent bitmap slots, one per controller that may write the group.
    pub bitmap_slots: u32,
}

impl CreateOptions {
    /// A shape with the default chunk and bitmap region sizes.
    pub fn new(level: Level, members: usize, member_bytes: u64) -> CreateOptions {
        CreateOptions {
            level,
            members,
            member_bytes,
            chunk_bytes: DEFAULT_CHUNK_BYTES,
            region_bytes: DEFAULT_REGION_BYTES,
            bitmap_slots: BITMAP_SLOTS_MAX,
        }
    }
}

/// Path of member `i` in a group directory.
pub fn member_path(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("member-{i:02}.img"))
}

fn random_uuid() -> Result<[u8; 16], std::io::Error> {
    use std::io::Read;
    let mut u = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut u)?;
    u[6] = (u[6] & 0x0f) | 0x40; // RFC 4122 version 4
    u[8] = (u[8] & 0x3f) | 0x80;
    Ok(u)
}

/// Creates member files in `dir` and writes fresh superblocks; the group starts clean.
pub fn create(dir: &Path, opts: &CreateOptions) -> Result<(), RaidError> {
    let dir_err = |source| RaidError::Dir { path: dir.to_path_buf(), source };
    std::fs::create_dir_all(dir).map_err(dir_err)?;
    let usable = opts.member_bytes.saturating_sub(DATA_OFFSET_BYTES);
    let member_data_bytes = usable / opts.chunk_bytes.max(1) * opts.chunk_bytes;
    let geo = Geometry::new(opts.level, opts.members, opts.chunk_bytes, member_data_bytes)?;
    let mut region_stripes = (opts.region_bytes / geo.stripe_bytes()).max(1);
    if !(1..=BITMAP_SLOTS_MAX).contains(&opts.bitmap_slots) {
        return Err(RaidError::BadMember {
            index: 0,
            reason: format!("{} write-intent bitmap slots: 1 to {BITMAP_SLOTS_MAX}", opts.bitmap_slots),
        });
    }
    while WriteIntent::regions_for(geo.stripes(), region_stripes).div_ceil(8) > bitmap_bytes_max(opts.bitmap_slots) {
        region_stripes *= 2;
    }
    let bitmap_bytes = WriteIntent::regions_for(geo.stripes(), region_stripes).div_ceil(8).div_ceil(PAGE_BYTES as u64)
        * PAGE_BYTES as u64;
    let created_unix =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let sb = Superblock {
        uuid: random_uuid().map_err(dir_err)?,
        level: opts.level,
        chunk_bytes: opts.chunk_bytes as u32,
        data_offset_bytes: DATA_OFFSET_BYTES,
        member_data_bytes,
        member_index: 0,
        member_count: opts.members as u32,
        events: 1,
        epoch: 0,
        clean: true,
        bitmap_offset_bytes: BITMAP_OFFSET_BYTES,
        bitmap_bytes: bitmap_bytes as u32,
        bitmap_slots: opts.bitmap_slots,
        region_stripes: region_stripes as u32,
        recovery_stripes: 0,
        created_unix,
        states: vec![MemberState::Active; opts.members],
    };
    for i in 0..opts.members {
        let m = Member::create_file(&member_path(dir, i), opts.member_bytes)?;
        let mut own = sb.clone();
        own.member_index = i as u32;
        m.write_at(0, &own.encode())?;
        m.sync()?;
    }
    Ok(())
}

/// A member file found in a group directory.
pub struct Scanned {
    /// Its path.
    pub path: PathBuf,
    /// The open member and its superblock, or why it could not be read.
    pub result: Result<(Member, Superblock), RaidError>,
}

/// True when `dir` holds member files.
pub fn has_members(dir: &Path) -> bool {
    member_files(dir).map(|v| !v.is_empty()).unwrap_or(false)
}

fn member_files(dir: &Path) -> Result<Vec<PathBuf>, RaidError> {
    let rd = std::fs::read_dir(dir).map_err(|source| RaidError::Dir { path: dir.to_path_buf(), source })?;
    let mut v: Vec<PathBuf> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("member-")))
        .collect();
    v.sort();
    Ok(v)
}

/// Opens every member file in `dir` and decodes its superblock.
pub fn scan(dir: &Path) -> Result<Vec<Scanned>, RaidError> {
    Ok(member_files(dir)?
        .into_iter()
        .map(|path| {
            let result = Member::open(&path).and_then(|m| {
                let mut b = vec![0u8; SUPERBLOCK_BYTES];
                m.read_at(0, &mut b)?;
                let sb =
                    Superblock::decode(&b).map_err(|source| RaidError::Superblock { path: path.clone(), source })?;
                Ok((m, sb))
            });
            Scanned { path, result }
        })
        .collect())
}

/// An assembled group and what assembly found.
pub struct Assembled {
    /// The running group.
    pub array: Array,
    /// Members left out, with reasons.
    pub rejected: Vec<Rejected>,
    /// The group was not shut down cleanly.
    pub was_dirty: bool,
    /// Bitmap regions to resync (non-empty only after a crash or a forced assembly).
    pub dirty_regions: Vec<u64>,
    /// Members a forced assembly took back.
    pub forced: Vec<Forced>,
}

impl Assembled {
    /// What assembly decided that an operator must see: members left out, members forced back
    /// and the regions a forced assembly resyncs (byte ranges of the group).
    pub fn notes(&self) -> Vec<String> {
        let mut v: Vec<String> = self.rejected.iter().map(|r| format!("member left out: {r}")).collect();
        for f in &self.forced {
            v.push(format!(
                "FORCED: member {} ({}) taken back although the group recorded it as failed (its events {}, the group's {})",
                f.index, f.member, f.events, f.group_events
            ));
        }
        if !self.forced.is_empty() {
            let stripes = self.array.geometry().stripes();
            let sb = self.array.geometry().stripe_bytes();
            let ranges: Vec<String> = self
                .dirty_regions
                .iter()
                .map(|&r| {
                    let s = self.array.bitmap().region_stripe_range(r, stripes);
                    format!("{}..{}", s.start * sb, s.end * sb)
                })
                .collect();
            v.push(format!(
                "FORCED: {} regions were being written when members failed; their redundancy is recomputed from \
                 the data now, and writes there that were not acknowledged may read back old, bytes {}",
                ranges.len(),
                if ranges.is_empty() { "none".to_string() } else { ranges.join(", ") }
            ));
        }
        v
    }
}

fn same_shape(a: &Superblock, b: &Superblock) -> bool {
    a.level == b.level
        && a.chunk_bytes == b.chunk_bytes
        && a.member_count == b.member_count
        && a.data_offset_bytes == b.data_offset_bytes
        && a.member_data_bytes == b.member_data_bytes
        && a.bitmap_offset_bytes == b.bitmap_offset_bytes
        && a.bitmap_bytes == b.bitmap_bytes
        && a.bitmap_slots == b.bitmap_slots
        && a.region_stripes == b.region_stripes
}

/// True when every stripe keeps enough members among `usable`.
pub(crate) fn survives(geo: &Geometry, usable: &[bool]) -> bool {
    let lost = usable.iter().filter(|u| !**u).count();
    match geo.level {
        Level::Raid0 => lost == 0,
        Level::Raid1 => lost < geo.members,
        Level::Raid5 | Level::Raid6 => lost <= geo.parities(),
        // Copies of stripe s sit at positions 2s, 2s+1 mod m: the pattern repeats every m stripes.
        Level::Raid10 => {
            (0..geo.stripes().min(geo.members as u64)).all(|s| geo.places(s, 0).iter().any(|p| usable[p.member]))
        }
    }
}

/// Members of a directory sorted into slots by the freshest superblock of the majority uuid.
pub struct Classified {
    /// The group's reference superblock.
    pub reference: Superblock,
    /// Accepted member per index.
    pub slots: Vec<Option<(Member, Superblock)>>,
    /// Members left out, with reasons.
    pub rejected: Vec<Rejected>,
    /// Members left out only because the group recorded them as failed or their superblock is
    /// behind: whole, of this group and shape. A forced assembly may take them back.
    pub stale: Vec<(Member, Superblock)>,
}

/// Reads every member of `dir` and decides which belong to the group, without writing anything:
/// foreign, misshapen, undersized, duplicate, corrupt and stale members are rejected by name.
pub fn classify(dir: &Path) -> Result<Classified, RaidError> {
    let scanned = scan(dir)?;
    if scanned.is_empty() {
        return Err(RaidError::NoMembers(dir.to_path_buf()));
    }
    let mut rejected = Vec::new();
    let mut good: Vec<(PathBuf, Member, Superblock)> = Vec::new();
    for s in scanned {
        match s.result {
            Ok((m, sb)) => good.push((s.path, m, sb)),
            Err(e) => rejected.push(Rejected { member: s.path.display().to_string(), reason: e.to_string() }),
        }
    }
    // Majority uuid, then the freshest superblock within it.
    let mut uuids: Vec<([u8; 16], usize, u64)> = Vec::new();
    for (_, _, sb) in &good {
        match uuids.iter_mut().find(|u| u.0 == sb.uuid) {
            Some(u) => {
                u.1 += 1;
                u.2 = u.2.max(sb.events);
            }
            None => uuids.push((sb.uuid, 1, sb.events)),
        }
    }
    let Some(&(uuid, _, _)) = uuids.iter().max_by_key(|u| (u.1, u.2)) else {
        return Err(RaidError::TooManyMissing { level: Level::Raid0, total: 0, tolerated: 0, unusable: rejected });
    };
    let Some(reference) = good.iter().filter(|g| g.2.uuid == uuid).max_by_key(|g| g.2.events).map(|g| g.2.clone())
    else {
        return Err(RaidError::NoMembers(dir.to_path_buf()));
    };
    let count = reference.member_count as usize;
    let needed = reference.data_offset_bytes + reference.member_data_bytes;
    let mut slots: Vec<Option<(Member, Superblock)>> = (0..count).map(|_| None).collect();
    let mut stale = Vec::new();
    for (path, m, sb) in good {
        let recorded_failed = reference.states[sb.member_index as usize] == MemberState::Faulty;
        let name = path.display().to_string();
        let reason = if sb.uuid != uuid {
            Some(format!("belongs to group {}, not {}", sb.uuid_string(), reference.uuid_string()))
        } else if !same_shape(&sb, &reference) {
            Some("superblock geometry differs from the group's".to_string())
        } else if m.size() < needed {
            Some(format!("is {} bytes, the group needs {needed}", m.size()))
        } else if recorded_failed || sb.events + 1 < reference.events {
            let why = if recorded_failed { "the group recorded it as failed" } else { "its superblock is behind" };
            rejected.push(Rejected {
                member: name,
                reason: format!("stale: {why} (events {} < {})", sb.events, reference.events),
            });
            stale.push((m, sb));
            continue;
        } else if slots[sb.member_index as usize].is_some() {
            Some(format!("duplicate of member index {}", sb.member_index))
        } else {
            None
        };
        match reason {
            Some(reason) => rejected.push(Rejected { member: name, reason }),
            None => {
                let i = sb.member_index as usize;
                slots[i] = Some((m, sb));
            }
        }
    }
    Ok(Classified { reference, slots, rejected, stale })
}

/// A member that a forced assembly took back although the group had recorded it as failed.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Forced {
    /// Slot.
    pub index: usize,
    /// Its path.
    pub member: String,
    /// Its superblock's event count.
    pub events: u64,
    /// The group's event count.
    pub group_events: u64,
}

/// Assembles the group in `dir` (see [`classify`]), starts degraded if the level allows it,
/// marks the group dirty and returns the regions to resync.
pub fn assemble(dir: &Path) -> Result<Assembled, RaidError> {
    assemble_with(dir, false)
}

/// Like [`assemble`]; with `force`, a group that cannot start because members were recorded as
/// failed takes back the freshest of them (highest event count first), as few as it needs, like
/// `mdadm --assemble --force`. Their write-intent bits are merged in, so the resync covers every
/// region written since the first member failed (bits stay set while a group is degraded).
pub fn assemble_with(dir: &Path, force: bool) -> Result<Assembled, RaidError> {
    assemble_as(dir, force, 0)
}

/// Like [`assemble_with`], for the controller that owns write-intent bitmap slot `slot`: its
/// writes set bits in that slot; a dirty group's regions are those of every slot.
pub fn assemble_as(dir: &Path, force: bool, slot: usize) -> Result<Assembled, RaidError> {
    let Classified { mut reference, mut slots, mut rejected, mut stale } = classify(dir)?;
    let count = reference.member_count as usize;
    let geo = Geometry::new(reference.level, count, reference.chunk_bytes as u64, reference.member_data_bytes)?;
    let usable_now = |slots: &[Option<(Member, Superblock)>], reference: &Superblock| -> Vec<bool> {
        slots
            .iter()
            .enumerate()
            .map(|(i, s)| {
                s.as_ref().is_some_and(|(_, sb)| {
                    reference.states[i] != MemberState::Rebuilding && sb.states[i] != MemberState::Rebuilding
                })
            })
            .collect()
    };
    let mut forced = Vec::new();
    if force && !survives(&geo, &usable_now(&slots, &reference)) {
        stale.sort_by_key(|(_, sb)| std::cmp::Reverse(sb.events));
        for (m, sb) in stale {
            let i = sb.member_index as usize;
            if usable_now(&slots, &reference)[i] {
                continue;
            }
            let name = m.path().display().to_string();
            forced.push(Forced { index: i, member: name.clone(), events: sb.events, group_events: reference.events });
            rejected.retain(|r| r.member != name);
            reference.states[i] = MemberState::Active;
            slots[i] = Some((m, sb));
            if survives(&geo, &usable_now(&slots, &reference)) {
                break;
            }
        }
        // Stripes written while members were out are in the merged bitmap: resync them.
        reference.clean &= forced.is_empty();
    }
    let usable = usable_now(&slots, &reference);
    let mut unusable = Vec::new();
    for (i, slot) in slots.iter().enumerate() {
        if usable[i] {
            continue;
        }
        let reason = match slot {
            None => format!("no usable member with index {i}"),
            Some((_, sb)) => format!("rebuilding, {} of {} stripes done", sb.recovery_stripes, geo.stripes()),
        };
        unusable.push(Rejected { member: member_path(dir, i).display().to_string(), reason });
    }
    if !survives(&geo, &usable) {
        let mut all = rejected.clone();
        all.extend(unusable);
        return Err(RaidError::TooManyMissing {
            level: geo.level,
            total: count,
            tolerated: geo.tolerance(),
            unusable: all,
        });
    }
    if slot >= reference.bitmap_slots as usize {
        return Err(RaidError::BadMember {
            index: 0,
            reason: format!("the group has {} write-intent bitmap slots, not {}", reference.bitmap_slots, slot + 1),
        });
    }
    let was_dirty = !reference.clean;
    let slot_bytes = reference.bitmap_bytes as usize;
    let mut bits = vec![0u8; slot_bytes];
    let mut usable = usable;
    let mut members = Vec::with_capacity(count);
    for (i, entry) in slots.into_iter().enumerate() {
        match entry {
            None => members.push((None, MemberState::Faulty, 0)),
            Some((m, sb)) => {
                let rebuilding = !usable[i];
                if was_dirty && !rebuilding {
                    // Every controller's slot: a crash resyncs whatever any of them was writing.
                    let mut b = vec![0u8; slot_bytes * reference.bitmap_slots as usize];
                    if let Err(e) = m.read_at(reference.bitmap_offset_bytes, &mut b) {
                        // Bits that cannot be read cannot be trusted: the member is left out.
                        rejected.push(Rejected { member: m.path().display().to_string(), reason: e.to_string() });
                        usable[i] = false;
                        members.push((None, MemberState::Faulty, 0));
                        continue;
                    }
                    for one in b.chunks_exact(slot_bytes) {
                        for (x, y) in bits.iter_mut().zip(one) {
                            *x |= *y;
                        }
                    }
                }
                let state = if rebuilding { MemberState::Rebuilding } else { MemberState::Active };
                members.push((Some(m), state, if rebuilding { sb.recovery_stripes } else { 0 }));
            }
        }
    }
    if !survives(&geo, &usable) {
        return Err(RaidError::TooManyMissing {
            level: geo.level,
            total: count,
            tolerated: geo.tolerance(),
            unusable: rejected,
        });
    }
    let array = Array::from_parts(geo, reference, members, bits, slot);
    array.set_dir(dir);
    array.mark_dirty()?;
    let dirty_regions = array.bitmap().dirty_regions();
    Ok(Assembled { array, rejected, was_dirty, dirty_regions, forced })
}

/// Refuses a group that crashed while degraded (parity levels), unless `force`: stripes being
/// written at the crash may have data and parity out of step, and a missing member's blocks
/// reconstructed from them would be silently wrong. md refuses such a start without --force too.
pub fn check_write_hole(asm: &Assembled, force: bool) -> Result<(), RaidError> {
    let missing = asm.array.degraded_members();
    if force
        || !asm.was_dirty
        || asm.dirty_regions.is_empty()
        || missing.is_empty()
        || asm.array.geometry().parities() == 0
    {
        return Ok(());
    }
    Err(RaidError::WriteHole { missing, dirty_regions: asm.dirty_regions.len() })
}

/// Resyncs the stripes of `regions` (after a crash) and clears their bits. Reports progress as
/// (done, total) stripes. Returns (stripes resynced, stripes skipped for lack of members).
pub fn resync(array: &Array, regions: &[u64], progress: &dyn Fn(u64, u64)) -> Result<(u64, u64), RaidError> {
    let stripes = array.geometry().stripes();
    let ranges: Vec<_> = regions.iter().map(|&r| array.bitmap().region_stripe_range(r, stripes)).collect();
    let total: u64 = ranges.iter().map(|r| r.end - r.start).sum();
    let (mut done, mut skipped) = (0u64, 0u64);
    for range in ranges {
        for s in range {
            let _g = array.locks().lock(s);
            if !array.resync_stripe(s)? {
                skipped += 1;
            }
            done += 1;
            if done % 64 == 0 || done == total {
                progress(done, total);
            }
        }
    }
    array.flush()?;
    array.clear_other_bitmap_slots()?;
    Ok((done, skipped))
}
