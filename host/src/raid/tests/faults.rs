//! Exhaustive member-fault tests: for every level and every kind of operation, each fault kind is
//! injected at each member I/O index of the operation (the operation is first run without faults
//! to count its I/Os). After each case: an operation that succeeded did what it said; a write that
//! failed left old or new data, never garbage; the member that failed is recorded as failed, also
//! after a restart; a dead group refuses to start instead of serving stale data; a live group is
//! rebuilt onto fresh files, resynced, scrubs clean and still reads back.
//!
//! A failing case names itself; `AMF_FAULT_CASE='raid5/5 rcw eio@7'` runs that case alone.

use super::super::assemble::{assemble, create, member_path, resync, CreateOptions};
use super::super::faults::{FaultKind, FaultPlan, IoOp};
use super::super::geometry::Level;
use super::super::member::Member;
use super::super::rebuild::{prepare_replacement, rebuild};
use super::super::scrub::scrub;
use super::super::{Array, MemberState, RaidError};
use rand::{rngs::SmallRng, RngCore, SeedableRng};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

const CHUNK: u64 = 4096;
/// Rows of chunks on each member: enough for every operation's stripes.
const STRIPES: u64 = 6;
/// The stripe whose redundancy the scrub case corrupts.
const CORRUPT_STRIPE: u64 = 3;
/// The stripe a crash left half-written in the resync case.
const RESYNC_STRIPE: u64 = 5;

/// The operations under test. Writes on a fresh assembly also set write-intent bits (bitmap
/// updates); a member failure inside any of them updates the superblocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    /// Whole stripes written (parity computed without reads).
    FullStripe,
    /// One block: read-modify-write on parity levels.
    Rmw,
    /// Most chunks of a stripe: reconstruct-write.
    Rcw,
    /// Unaligned bytes across stripes.
    Unaligned,
    /// The whole group read.
    Read,
    /// Read with one member failed first.
    DegradedRead,
    /// Unaligned write with one member failed first.
    DegradedWrite,
    /// Member 1 rebuilt onto a fresh file (the fault may hit it or a source).
    Rebuild,
    /// Scrub with repair of a corrupted redundancy block.
    ScrubRepair,
    /// Post-crash resync of the dirty regions.
    Resync,
    /// Flush: member syncs, write-intent bits cleared.
    Flush,
    /// Clean shutdown: flush and superblock update.
    Close,
}

const OPS: [Op; 12] = [
    Op::FullStripe,
    Op::Rmw,
    Op::Rcw,
    Op::Unaligned,
    Op::Read,
    Op::DegradedRead,
    Op::DegradedWrite,
    Op::Rebuild,
    Op::ScrubRepair,
    Op::Resync,
    Op::Flush,
    Op::Close,
];

fn applies(level: Level, op: Op) -> bool {
    let redundant = level != Level::Raid0;
    let parity = matches!(level, Level::Raid5 | Level::Raid6);
    match op {
        Op::Rmw | Op::Rcw => parity,
        Op::DegradedRead | Op::DegradedWrite | Op::Rebuild | Op::ScrubRepair | Op::Resync => redundant,
        _ => true,
    }
}

#[derive(Clone, Copy, Debug)]
struct Case {
    level: Level,
    members: usize,
    op: Op,
    fault: Option<(FaultKind, u64)>,
}

impl std::fmt::Display for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{} {}", self.level, self.members, format!("{:?}", self.op).to_lowercase())?;
        match self.fault {
            Some((k, i)) => write!(f, " {}@{i}", format!("{k:?}").to_lowercase()),
            None => write!(f, " none"),
        }
    }
}

fn scratch_root() -> PathBuf {
    // tmpfs when there is one: thousands of small groups, each synced several times.
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// What a case starts from: an assembled group, its contents, and the write it will do.
struct Setup {
    dir: tempfile::TempDir,
    array: Array,
    model: Vec<u8>,
    write: Option<(u64, Vec<u8>)>,
    /// A write cut short by a crash before the case: old or new data there.
    unacked: Option<(u64, Vec<u8>)>,
    regions: Vec<u64>,
}

fn rng_for(case: &Case) -> SmallRng {
    SmallRng::seed_from_u64(case.level as u64 * 1000 + case.members as u64 * 10 + case.op as u64)
}

fn open(dir: &Path) -> Array {
    assemble(dir).map(|a| a.array).unwrap_or_else(|e| panic!("assemble {}: {e}", dir.display()))
}

/// A group prepared for one (level, op), before assembly: cases copy its files.
struct Template {
    dir: tempfile::TempDir,
    model: Vec<u8>,
    write: Option<(u64, Vec<u8>)>,
    unacked: Option<(u64, Vec<u8>)>,
}

fn template(case: &Case) -> Template {
    let dir = tempfile::tempdir_in(scratch_root()).unwrap();
    let opts = CreateOptions {
        chunk_bytes: CHUNK,
        // One stripe per write-intent region: bitmap updates happen inside the operations.
        region_bytes: 0,
        ..CreateOptions::new(case.level, case.members, (1 << 20) + STRIPES * CHUNK)
    };
    create(dir.path(), &opts).unwrap();
    let mut rng = rng_for(case);
    let array = open(dir.path());
    assert!(array.geometry().stripes() >= STRIPES);
    let mut model = vec![0u8; array.capacity() as usize];
    rng.fill_bytes(&mut model);
    array.write(0, &model, false).unwrap();
    let geo = *array.geometry();
    let sb = geo.stripe_bytes();
    let write_at = |off: u64, len: u64, rng: &mut SmallRng| {
        let mut d = vec![0u8; len as usize];
        rng.fill_bytes(&mut d);
        Some((off, d))
    };
    let write = match case.op {
        Op::FullStripe => write_at(2 * sb, 2 * sb, &mut rng),
        Op::Rmw => write_at(3 * sb + CHUNK, 4096, &mut rng),
        Op::Rcw => write_at(3 * sb, sb - CHUNK, &mut rng),
        Op::Unaligned | Op::DegradedWrite => write_at(sb + 1000, 2 * sb + 333, &mut rng),
        _ => None,
    };
    let mut unacked = None;
    match case.op {
        Op::Resync => {
            // A crash in the middle of a write to stripe RESYNC_STRIPE: the data landed, the
            // redundancy (P, or the second copy) did not; the write-intent bit stays set.
            let (m, at) = redundancy_place(&geo, RESYNC_STRIPE);
            let member = Member::open(&member_path(dir.path(), m)).unwrap();
            let mut stale = vec![0u8; CHUNK as usize];
            member.read_at(at, &mut stale).unwrap();
            let (off, data) = write_at(RESYNC_STRIPE * sb, 4096, &mut rng).unwrap();
            array.write(off, &data, false).unwrap();
            drop(array);
            member.write_at(at, &stale).unwrap();
            unacked = Some((off, data));
        }
        Op::ScrubRepair => {
            array.close().unwrap();
            drop(array);
            corrupt_redundancy(dir.path(), &geo, CORRUPT_STRIPE);
        }
        _ => {
            // A clean start: the write-intent bits are clear, so writes set them again.
            array.close().unwrap();
            drop(array);
        }
    }
    Template { dir, model, write, unacked }
}

type TemplateKey = (Level, usize, Op);

thread_local! {
    /// Templates by (level, members, op): one test thread runs one level's cases.
    static TEMPLATES: std::cell::RefCell<Vec<(TemplateKey, std::rc::Rc<Template>)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

fn setup(case: &Case) -> Setup {
    let key = (case.level, case.members, case.op);
    let t = TEMPLATES.with(|ts| {
        let found = ts.borrow().iter().find(|(k, _)| *k == key).map(|(_, t)| t.clone());
        found.unwrap_or_else(|| {
            let t = std::rc::Rc::new(template(case));
            ts.borrow_mut().push((key, t.clone()));
            t
        })
    });
    let dir = tempfile::tempdir_in(scratch_root()).unwrap();
    for e in std::fs::read_dir(t.dir.path()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
    }
    let (model, write, unacked) = (t.model.clone(), t.write.clone(), t.unacked.clone());
    let mut regions = vec![];
    let asm = assemble(dir.path()).unwrap();
    if case.op == Op::Resync {
        regions = asm.dirty_regions.clone();
        assert!(!regions.is_empty(), "{case}: the crash left dirty regions");
    }
    let array = asm.array;
    let sb = array.geometry().stripe_bytes();
    match case.op {
        Op::DegradedRead | Op::DegradedWrite => array.fail_member(1, "failed by the test"),
        Op::Rebuild => {
            array.fail_member(1, "failed by the test");
            array.write(0, &model[..CHUNK as usize], false).unwrap();
        }
        Op::Flush => array.write(4 * sb, &model[(4 * sb) as usize..][..4096], false).unwrap(),
        _ => {}
    }
    Setup { dir, array, model, write, unacked, regions }
}

/// Member and byte offset of the first redundancy block of stripe `s` (P, or the second copy).
fn redundancy_place(geo: &super::super::Geometry, s: u64) -> (usize, u64) {
    let base = super::super::assemble::DATA_OFFSET_BYTES;
    if geo.is_mirror() {
        let p = geo.places(s, 0)[1];
        (p.member, base + p.chunk_offset)
    } else {
        (geo.p_member(s), base + s * geo.chunk_bytes)
    }
}

/// Flips bytes of the first redundancy block of stripe `s` on disk.
fn corrupt_redundancy(dir: &Path, geo: &super::super::Geometry, s: u64) {
    let (m, at) = redundancy_place(geo, s);
    let member = Member::open(&member_path(dir, m)).unwrap();
    let mut b = [0u8; 8];
    member.read_at(at + 17, &mut b).unwrap();
    member.write_at(at + 17, &b.map(|x| !x)).unwrap();
}

/// Runs the case's operation; Err is the operation's own error.
fn run_op(case: &Case, s: &Setup, plan: &Arc<FaultPlan>) -> Result<(), RaidError> {
    s.array.inject_faults(plan);
    match case.op {
        Op::FullStripe | Op::Rmw | Op::Rcw | Op::Unaligned | Op::DegradedWrite => {
            let (off, data) = s.write.as_ref().unwrap();
            s.array.write(*off, data, false)
        }
        Op::Read | Op::DegradedRead => {
            let mut b = vec![0u8; s.model.len()];
            s.array.read(0, &mut b)?;
            assert!(b == s.model, "{case}: a read that succeeded returned wrong data");
            Ok(())
        }
        Op::Rebuild => {
            let m = prepare_replacement(&s.array, s.dir.path(), 1, None).unwrap();
            rebuild(&s.array, 1, Some(m.with_faults(plan, 1)), &|_, _| {}).map(|_| ())
        }
        Op::ScrubRepair => scrub(&s.array, true, &|_, _| {}).map(|_| ()),
        Op::Resync => resync(&s.array, &s.regions, &|_, _| {}).map(|_| ()),
        Op::Flush => s.array.flush(),
        Op::Close => s.array.close(),
    }
}

/// The member I/Os of the case's operation without faults, by index; also proves the intended
/// path ran.
fn count_ios(case: &Case) -> Vec<IoOp> {
    let s = setup(case);
    let plan = FaultPlan::tracing();
    let st = &s.array.stats;
    let before = (st.rmw_writes.load(Relaxed), st.rcw_writes.load(Relaxed), st.full_stripe_writes.load(Relaxed));
    run_op(case, &s, &plan).unwrap_or_else(|e| panic!("{case}: fails without faults: {e}"));
    let after = (st.rmw_writes.load(Relaxed), st.rcw_writes.load(Relaxed), st.full_stripe_writes.load(Relaxed));
    if matches!(case.level, Level::Raid5 | Level::Raid6) {
        match case.op {
            Op::Rmw => assert!(after.0 > before.0, "{case}: read-modify-write did not run"),
            Op::Rcw => assert!(after.1 > before.1, "{case}: reconstruct-write did not run"),
            Op::FullStripe => assert!(after.2 > before.2, "{case}: full-stripe write did not run"),
            _ => {}
        }
    }
    plan.trace()
}

/// Reads the whole group: Some(contents) or None when a read failed.
fn read_all(array: &Array) -> Option<Vec<u8>> {
    let mut b = vec![0u8; array.capacity() as usize];
    array.read(0, &mut b).ok().map(|_| b)
}

fn failed_members(array: &Array) -> Vec<usize> {
    array.member_status().into_iter().filter(|m| m.state == MemberState::Faulty).map(|m| m.index).collect()
}

fn run_case(case: &Case) {
    let s = setup(case);
    let (kind, at) = case.fault.unwrap();
    let plan = FaultPlan::at(at, kind);
    let r = run_op(case, &s, &plan);
    let fired = plan.fired();
    // 1. The member the fault hit is recorded as failed.
    if let Some(f) = fired.first().filter(|f| f.kind.fails()) {
        let st = s.array.member_status()[f.member].state;
        assert!(
            st == MemberState::Faulty,
            "{case}: fault hit member {} ({:?}) but its state is {st:?} (op result {r:?})",
            f.member,
            f.op
        );
    }
    if !kind.fails() || fired.is_empty() {
        assert!(r.is_ok(), "{case}: no failing fault, yet the operation failed: {r:?}");
    }
    // 2. A group that still has the redundancy re-plans around the failed member: the operation
    //    succeeds (a rebuild fails only when its own replacement fails).
    let replacement_failed = case.op == Op::Rebuild && fired.iter().any(|f| f.member == 1 && f.kind.fails());
    if s.array.alive() && !replacement_failed {
        assert!(r.is_ok(), "{case}: the group survived the fault, yet the operation failed: {r:?}");
    }
    // 3. What the group holds now: the old data, the new data where a write succeeded, old or
    //    new (per byte) where a write failed or a crash cut one short, and anything where two
    //    faults met (see `double_fault`).
    let mut want = s.model.clone();
    let mut either: Vec<(usize, &[u8])> = vec![];
    if let Some((off, data)) = &s.write {
        match r {
            Ok(()) => want[*off as usize..][..data.len()].copy_from_slice(data),
            Err(_) => either.push((*off as usize, data)),
        }
    }
    if let Some((off, data)) = &s.unacked {
        either.push((*off as usize, data));
    }
    let alive = s.array.alive();
    let lost = double_fault(case, &s, alive, r.is_err(), fired.iter().any(|f| f.kind.fails()));
    let check = |got: &[u8], what: &str| {
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            if g == w || lost.as_ref().is_some_and(|l| l.contains(&i)) {
                continue;
            }
            let new: Vec<u8> = either.iter().filter_map(|(o, d)| d.get(i.checked_sub(*o)?).copied()).collect();
            assert!(new.contains(g), "{case}: {what}: byte {i} is {g:#04x}, neither old {w:#04x} nor new {new:?}");
        }
    };
    let seen = match read_all(&s.array) {
        Some(got) => {
            check(&got, "read after the fault");
            got
        }
        None => {
            assert!(!alive, "{case}: the group is alive but a read failed");
            // Reads that still succeed must not be wrong: check block by block, and a write
            // that succeeded must read back.
            let mut seen = want.clone();
            for off in (0..want.len()).step_by(CHUNK as usize) {
                let mut b = vec![0u8; CHUNK as usize];
                if s.array.read(off as u64, &mut b).is_ok() {
                    seen[off..off + b.len()].copy_from_slice(&b);
                } else if let Some((o, d)) = s.write.as_ref().filter(|_| r.is_ok()) {
                    let o = *o as usize;
                    assert!(
                        off + b.len() <= o || off >= o + d.len(),
                        "{case}: an acknowledged write does not read back"
                    );
                }
            }
            check(&seen, "block reads of a failed group");
            seen
        }
    };
    let failed = failed_members(&s.array);
    let Setup { dir, array, .. } = s;
    drop(array);
    // 4. After a restart: the same members failed, the same data. A group that failed may start
    //    again only where its last members could not record their own failure; it must then
    //    serve what it held.
    let asm = match assemble(dir.path()) {
        Ok(a) => a,
        Err(RaidError::TooManyMissing { .. }) if !alive => return,
        Err(e) => panic!("{case}: restart after the fault: {e} (failed before: {failed:?})"),
    };
    if !alive {
        if let Some(got) = read_all(&asm.array) {
            check(&got, "restart of a failed group");
        }
        return;
    }
    let array = asm.array;
    assert_eq!(array.degraded_members(), failed, "{case}: members recorded as failed after a restart");
    let again = read_all(&array).unwrap_or_else(|| panic!("{case}: read after a restart failed"));
    assert!(again == seen, "{case}: data differs after a restart");
    // 5. Rebuild every failed member onto a fresh file, resync what was being written, scrub.
    for &m in &failed {
        let fresh = prepare_replacement(&array, dir.path(), m, None).unwrap();
        rebuild(&array, m, Some(fresh), &|_, _| {}).unwrap_or_else(|e| panic!("{case}: rebuild of {m}: {e}"));
    }
    resync(&array, &asm.dirty_regions, &|_, _| {}).unwrap();
    if lost.is_some() {
        // What two faults left may not match its redundancy: repair it first.
        scrub(&array, true, &|_, _| {}).unwrap();
    }
    let report = scrub(&array, false, &|_, _| {}).unwrap();
    assert_eq!(report.mismatches, 0, "{case}: scrub after rebuild finds {:?}", report.mismatched_stripes);
    let after = read_all(&array).unwrap_or_else(|| panic!("{case}: read after the rebuild failed"));
    for (i, (a, b)) in after.iter().zip(&seen).enumerate() {
        assert!(a == b || lost.as_ref().is_some_and(|l| l.contains(&i)), "{case}: byte {i} differs after the rebuild");
    }
    array.close().unwrap();
}

/// The bytes a second fault may take, beyond what one fault may: the one-fault guarantee does
/// not cover them, and no RAID without a journal keeps them.
/// - Scrub: the corrupted redundancy block plus a member failing before scrub repaired it: the
///   member's blocks of that stripe are reconstructed from the corrupt block.
/// - Resync on parity levels: a crash mid-write plus a member failing before the resync: the
///   member's blocks of the half-written stripe are reconstructed from stale parity (the RAID
///   write hole; md refuses to start such a group without --force, as `check_write_hole` does).
/// - A degraded group whose last copy of a block fails in a write: the write's range.
fn double_fault(case: &Case, s: &Setup, alive: bool, op_failed: bool, fault_failed: bool) -> Option<Range<usize>> {
    let sb = s.array.geometry().stripe_bytes() as usize;
    let stripe = |n: u64| n as usize * sb..(n as usize + 1) * sb;
    match case.op {
        Op::ScrubRepair if fault_failed => Some(stripe(CORRUPT_STRIPE)),
        Op::Resync if fault_failed && s.array.geometry().parities() > 0 => Some(stripe(RESYNC_STRIPE)),
        Op::DegradedWrite if !alive && op_failed => s.write.as_ref().map(|(o, d)| *o as usize..*o as usize + d.len()),
        _ => None,
    }
}

/// The faults that act differently on this I/O: ENOSPC passes reads and syncs, and a sync that
/// fails fails the same way whatever the kind. A delay changes no outcome, only timing: it is
/// injected at every fourth I/O.
fn kinds_for(io: IoOp, at: usize) -> Vec<FaultKind> {
    let mut kinds = match io {
        IoOp::Write | IoOp::DurableWrite => {
            vec![FaultKind::Eio, FaultKind::Short, FaultKind::NoSpace, FaultKind::Torn, FaultKind::Vanish]
        }
        IoOp::Read => vec![FaultKind::Eio, FaultKind::Short, FaultKind::Torn, FaultKind::Vanish],
        IoOp::Sync => vec![FaultKind::Eio, FaultKind::Vanish],
    };
    if at.is_multiple_of(4) {
        kinds.push(FaultKind::Latency);
    }
    kinds
}

fn cases_of(level: Level, members: usize) -> Vec<Case> {
    let mut out = vec![];
    for op in OPS.into_iter().filter(|&op| applies(level, op)) {
        let probe = Case { level, members, op, fault: None };
        let trace = count_ios(&probe);
        assert!(!trace.is_empty(), "{probe}: no member I/O");
        for (at, io) in trace.into_iter().enumerate() {
            for kind in kinds_for(io, at) {
                out.push(Case { fault: Some((kind, at as u64)), ..probe });
            }
        }
    }
    out
}

fn run_all(level: Level, members: usize) -> usize {
    run_cases(level, members, cases_of(level, members))
}

/// Wider groups: a seeded random sample of their cases (AMF_FAULT_SEED picks another sample).
fn run_sample(level: Level, members: usize, count: usize) -> usize {
    use rand::seq::SliceRandom;
    let seed = std::env::var("AMF_FAULT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_u64);
    let mut cases = cases_of(level, members);
    cases.shuffle(&mut SmallRng::seed_from_u64(seed));
    cases.truncate(count);
    eprintln!("{level}/{members}: sample of seed {seed} (AMF_FAULT_SEED)");
    run_cases(level, members, cases)
}

fn run_cases(level: Level, members: usize, cases: Vec<Case>) -> usize {
    let only = std::env::var("AMF_FAULT_CASE").ok();
    let mut ran = 0;
    for case in &cases {
        if only.as_ref().is_some_and(|o| *o != case.to_string()) {
            continue;
        }
        let r = std::panic::catch_unwind(|| run_case(case));
        if let Err(e) = r {
            eprintln!("failing case: {case}; replay with AMF_FAULT_CASE='{case}'");
            std::panic::resume_unwind(e);
        }
        ran += 1;
    }
    eprintln!("{level}/{members}: {ran} fault cases");
    ran
}

#[test]
fn raid0_every_fault_at_every_member_io() {
    assert!(run_all(Level::Raid0, 3) > 0 || std::env::var("AMF_FAULT_CASE").is_ok());
}

#[test]
fn raid1_every_fault_at_every_member_io() {
    assert!(run_all(Level::Raid1, 2) > 0 || std::env::var("AMF_FAULT_CASE").is_ok());
}

#[test]
fn raid5_every_fault_at_every_member_io() {
    assert!(run_all(Level::Raid5, 5) > 0 || std::env::var("AMF_FAULT_CASE").is_ok());
}

#[test]
fn raid6_every_fault_at_every_member_io() {
    assert!(run_all(Level::Raid6, 7) > 0 || std::env::var("AMF_FAULT_CASE").is_ok());
}

#[test]
fn raid10_every_fault_at_every_member_io() {
    assert!(run_all(Level::Raid10, 4) > 0 || std::env::var("AMF_FAULT_CASE").is_ok());
}

#[test]
fn wider_groups_sampled_faults() {
    let ran: usize = [(Level::Raid5, 8), (Level::Raid6, 10), (Level::Raid10, 6), (Level::Raid1, 3)]
        .map(|(l, m)| run_sample(l, m, 250))
        .iter()
        .sum();
    assert!(ran > 0 || std::env::var("AMF_FAULT_CASE").is_ok());
}

/// Every member of a group runs out of space on the same write (a full filesystem): the members
/// fail one after another and the group fails. Without --force it does not start (unless its
/// last members could not record their own failure: then they start as they are); with it, the
/// freshest members come back, every flushed write reads back, the rest are rebuilt and the
/// scrub is clean.
#[test]
fn members_failed_by_a_full_filesystem_come_back_with_force() {
    for (level, members) in [(Level::Raid1, 2), (Level::Raid5, 4), (Level::Raid6, 5), (Level::Raid10, 4)] {
        full_filesystem_then_force(level, members);
    }
}

fn full_filesystem_then_force(level: Level, members: usize) {
    use super::super::assemble::assemble_with;
    use super::super::faults::{IoOp, Rule, Target};
    let case = Case { level, members, op: Op::Read, fault: None };
    let s = setup(&case);
    let sb = s.array.geometry().stripe_bytes();
    let mut rng = rng_for(&case);
    let mut model = s.model.clone();
    let mut flushed = vec![0u8; 3 * sb as usize];
    rng.fill_bytes(&mut flushed);
    s.array.write(0, &flushed, false).unwrap();
    s.array.flush().unwrap();
    model[..flushed.len()].copy_from_slice(&flushed);
    // From now on no member can allocate: every write fails with ENOSPC.
    let plan = FaultPlan::new();
    let data = Target { op: Some(IoOp::Write), ..Target::default() };
    plan.add(Rule { target: data, kind: FaultKind::NoSpace, times: u32::MAX });
    s.array.inject_faults(&plan);
    let mut later = vec![0u8; sb as usize];
    rng.fill_bytes(&mut later);
    assert!(s.array.write(4 * sb, &later, false).is_err(), "a write with every member full fails");
    assert!(!s.array.alive(), "the group failed");
    let Setup { dir, array, .. } = s;
    drop(array);
    // Space is back. A plain start refuses, naming the members recorded as failed, unless the
    // members left could not record their own failure (nothing else could either).
    let asm = match assemble(dir.path()) {
        Err(RaidError::TooManyMissing { unusable, .. }) => {
            assert!(unusable.iter().any(|u| u.reason.contains("recorded it as failed")), "{case}: {unusable:?}");
            let asm = assemble_with(dir.path(), true).unwrap();
            assert!(!asm.forced.is_empty(), "{case}: force took members back");
            let notes = asm.notes().join("\n");
            assert!(notes.contains("FORCED: member") && notes.contains("regions were being written"), "{notes}");
            asm
        }
        Err(e) => panic!("{case}: unexpected {e}"),
        Ok(asm) => {
            assert!(asm.forced.is_empty());
            assert!(asm.was_dirty, "{case}: a group that failed was not shut down cleanly");
            asm
        }
    };
    resync(&asm.array, &asm.dirty_regions, &|_, _| {}).unwrap();
    let got = read_all(&asm.array).expect("the forced group reads");
    assert!(got[..flushed.len()] == flushed[..], "{case}: flushed writes read back after the forced start");
    for (i, (g, w)) in got.iter().zip(&model).enumerate() {
        let new = (i as u64).checked_sub(4 * sb).and_then(|j| later.get(j as usize));
        assert!(g == w || new == Some(g), "{case}: byte {i}: neither old nor the failed write's data");
    }
    for m in asm.array.degraded_members() {
        let fresh = prepare_replacement(&asm.array, dir.path(), m, None).unwrap();
        rebuild(&asm.array, m, Some(fresh), &|_, _| {}).unwrap();
    }
    assert_eq!(scrub(&asm.array, false, &|_, _| {}).unwrap().mismatches, 0, "{case}");
    asm.array.close().unwrap();
    drop(asm);
    let a = assemble(dir.path()).unwrap();
    assert!(a.array.degraded_members().is_empty() && !a.was_dirty, "{case}");
    assert!(read_all(&a.array).unwrap() == got, "{case}");
}
