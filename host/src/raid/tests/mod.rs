//! Engine property tests on real member files: random writes read back at every level, healthy
//! and with every allowed set of members missing; rebuild restores byte-identical members; scrub
//! finds nothing after random writes and every mismatch injected.

mod faults;

use super::assemble::{assemble, create, member_path, resync, CreateOptions};
use super::member::Member;
use super::rebuild::rebuild;
use super::scrub::scrub;
use super::{Level, RaidError};
use rand::{rngs::SmallRng, Rng, RngCore, SeedableRng};
use std::path::Path;

const CHUNK: u64 = 16 * 1024;
const MEMBER_BYTES: u64 = (1 << 20) + 24 * CHUNK;

fn shapes() -> Vec<(Level, usize)> {
    vec![
        (Level::Raid0, 3),
        (Level::Raid1, 3),
        (Level::Raid5, 4),
        (Level::Raid6, 5),
        (Level::Raid10, 4),
        (Level::Raid10, 3),
    ]
}

fn new_group(dir: &Path, level: Level, members: usize) {
    create(dir, &CreateOptions { chunk_bytes: CHUNK, ..CreateOptions::new(level, members, MEMBER_BYTES) }).unwrap();
}

/// Random writes (aligned and unaligned, small and multi-stripe) applied to the group and a model.
fn random_writes(array: &super::Array, model: &mut [u8], rng: &mut SmallRng, count: usize) {
    let cap = array.capacity();
    for _ in 0..count {
        let len = match rng.gen_range(0..4) {
            0 => rng.gen_range(1..9000u64),
            1 => 4096,
            2 => rng.gen_range(1..4u64) * array.geometry().stripe_bytes(),
            _ => rng.gen_range(1..40u64) * 4096,
        }
        .min(cap);
        let mut off = rng.gen_range(0..=cap - len);
        if rng.gen_bool(0.6) {
            off = off / 4096 * 4096;
        }
        let mut data = vec![0u8; len as usize];
        rng.fill_bytes(&mut data);
        array.write(off, &data, false).unwrap();
        model[off as usize..(off + len) as usize].copy_from_slice(&data);
    }
}

fn assert_reads(array: &super::Array, model: &[u8], what: &str) {
    let mut got = vec![0u8; model.len()];
    array.read(0, &mut got).unwrap();
    assert!(got == model, "{what}: whole-group read differs");
    let mut rng = SmallRng::seed_from_u64(99);
    for _ in 0..50 {
        let len = rng.gen_range(1..20000usize).min(model.len());
        let off = rng.gen_range(0..=model.len() - len);
        let mut b = vec![0u8; len];
        array.read(off as u64, &mut b).unwrap();
        assert!(b == model[off..off + len], "{what}: read {off}+{len} differs");
    }
}

fn subsets(n: usize, max: usize) -> Vec<Vec<usize>> {
    let mut out = vec![];
    for mask in 1u32..(1 << n) {
        if (mask.count_ones() as usize) <= max {
            out.push((0..n).filter(|i| mask & (1 << i) != 0).collect());
        }
    }
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn data_area(path: &Path) -> Vec<u8> {
    let b = std::fs::read(path).unwrap();
    b[super::assemble::DATA_OFFSET_BYTES as usize..].to_vec()
}

#[test]
fn random_writes_read_back_healthy_and_degraded_then_rebuild_and_scrub() {
    for (level, n) in shapes() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("base");
        new_group(&base, level, n);
        let mut rng = SmallRng::seed_from_u64(level as u64 * 31 + n as u64);
        let a = assemble(&base).unwrap();
        let cap = a.array.capacity() as usize;
        let mut model = vec![0u8; cap];
        random_writes(&a.array, &mut model, &mut rng, 150);
        assert_reads(&a.array, &model, &format!("{level} healthy"));
        let clean = scrub(&a.array, false, &|_, _| {}).unwrap();
        assert_eq!(clean.mismatches, 0, "{level}: scrub after random writes");
        a.array.close().unwrap();
        drop(a);
        let tolerance = match level {
            Level::Raid0 => 0,
            Level::Raid1 => n - 1,
            Level::Raid5 => 1,
            Level::Raid6 => 2,
            Level::Raid10 => 2, // some pairs survive, others must be refused
        };
        let mut accepted = 0;
        for lost in subsets(n, tolerance + 1) {
            let what = format!("{level}/{n} without {lost:?}");
            let dir = tmp.path().join(format!("case-{lost:?}"));
            copy_dir(&base, &dir);
            let originals: Vec<Vec<u8>> = lost.iter().map(|&i| data_area(&member_path(&dir, i))).collect();
            for &i in &lost {
                std::fs::remove_file(member_path(&dir, i)).unwrap();
            }
            let a = match assemble(&dir) {
                Ok(a) => a,
                Err(RaidError::TooManyMissing { unusable, .. }) => {
                    assert!(lost.len() > tolerance || level == Level::Raid10, "{what}: refused");
                    for &i in &lost {
                        let name = member_path(&dir, i).display().to_string();
                        assert!(unusable.iter().any(|u| u.member == name), "{what}: refusal names member {i}");
                    }
                    continue;
                }
                Err(RaidError::NoMembers(_)) if lost.len() == n => continue,
                Err(e) => panic!("{what}: {e}"),
            };
            assert!(lost.len() <= tolerance, "{what}: must be refused");
            accepted += 1;
            assert_eq!(a.array.degraded_members(), lost, "{what}");
            assert_reads(&a.array, &model, &what);
            // Rebuild each lost member onto a fresh file: byte-identical to what it held.
            for (k, &i) in lost.iter().enumerate() {
                let m = Member::create_file(&member_path(&dir, i), a.array.member_bytes_needed()).unwrap();
                rebuild(&a.array, i, Some(m), &|_, _| {}).unwrap();
                a.array.sync_members().unwrap();
                assert!(data_area(&member_path(&dir, i)) == originals[k], "{what}: member {i} rebuilt differs");
            }
            assert!(a.array.degraded_members().is_empty());
            let mut m2 = model.clone();
            random_writes(&a.array, &mut m2, &mut rng, 20);
            assert_reads(&a.array, &m2, &format!("{what} after rebuild"));
            assert_eq!(scrub(&a.array, false, &|_, _| {}).unwrap().mismatches, 0, "{what}: scrub after rebuild");
            a.array.close().unwrap();
        }
        if level != Level::Raid0 {
            assert!(accepted > 0, "{level}: some degraded set must be accepted");
        }
    }
}

#[test]
fn degraded_writes_read_back_and_survive_rebuild() {
    for (level, n) in shapes().into_iter().filter(|s| s.0 != Level::Raid0) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("g");
        new_group(&dir, level, n);
        let mut rng = SmallRng::seed_from_u64(5 + n as u64);
        let a = assemble(&dir).unwrap();
        let mut model = vec![0u8; a.array.capacity() as usize];
        random_writes(&a.array, &mut model, &mut rng, 60);
        a.array.close().unwrap();
        drop(a);
        std::fs::remove_file(member_path(&dir, 1)).unwrap();
        let a = assemble(&dir).unwrap();
        random_writes(&a.array, &mut model, &mut rng, 120);
        assert_reads(&a.array, &model, &format!("{level} degraded writes"));
        let m = Member::create_file(&member_path(&dir, 1), a.array.member_bytes_needed()).unwrap();
        rebuild(&a.array, 1, Some(m), &|_, _| {}).unwrap();
        assert_eq!(scrub(&a.array, false, &|_, _| {}).unwrap().mismatches, 0, "{level}");
        a.array.close().unwrap();
        drop(a);
        // The rebuilt member alone must now carry its share: lose a different one.
        std::fs::remove_file(member_path(&dir, 0)).unwrap();
        let a = assemble(&dir).unwrap();
        assert_reads(&a.array, &model, &format!("{level} after rebuild, member 0 lost"));
    }
}

#[test]
fn scrub_finds_and_repairs_every_injected_mismatch() {
    for (level, n) in shapes().into_iter().filter(|s| s.0 != Level::Raid0) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("g");
        new_group(&dir, level, n);
        let a = assemble(&dir).unwrap();
        let mut rng = SmallRng::seed_from_u64(77);
        let mut model = vec![0u8; a.array.capacity() as usize];
        random_writes(&a.array, &mut model, &mut rng, 80);
        a.array.close().unwrap();
        drop(a);
        // Flip one byte in distinct stripes, on random members.
        let geo = assemble(&dir).unwrap().array.geometry().to_owned();
        let mut stripes: Vec<u64> = (0..geo.stripes()).collect();
        for i in (1..stripes.len()).rev() {
            stripes.swap(i, rng.gen_range(0..=i));
        }
        let injected: Vec<u64> = stripes.into_iter().take(5).collect();
        for &s in &injected {
            let (member, off) = if geo.is_mirror() {
                let p = geo.places(s, 0)[1];
                (p.member, p.chunk_offset)
            } else {
                let ms = geo.parity_stripe_members(s);
                (ms[rng.gen_range(0..ms.len())], s * geo.chunk_bytes)
            };
            let path = member_path(&dir, member);
            let m = Member::open(&path).unwrap();
            let at = super::assemble::DATA_OFFSET_BYTES + off + rng.gen_range(0..geo.chunk_bytes);
            let mut b = [0u8];
            m.read_at(at, &mut b).unwrap();
            m.write_at(at, &[b[0] ^ 0x5a]).unwrap();
        }
        let a = assemble(&dir).unwrap();
        let r = scrub(&a.array, false, &|_, _| {}).unwrap();
        let mut found = r.mismatched_stripes.clone();
        found.sort();
        let mut want = injected.clone();
        want.sort();
        assert_eq!(found, want, "{level}: scrub finds exactly the injected stripes");
        let r = scrub(&a.array, true, &|_, _| {}).unwrap();
        assert_eq!(r.repaired, 5);
        assert_eq!(scrub(&a.array, false, &|_, _| {}).unwrap().mismatches, 0, "{level}: clean after repair");
    }
}

#[test]
fn full_stripe_writes_read_nothing_and_small_writes_pick_fewer_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("g");
    create(&dir, &CreateOptions { chunk_bytes: CHUNK, ..CreateOptions::new(Level::Raid6, 8, MEMBER_BYTES) }).unwrap();
    let a = assemble(&dir).unwrap().array;
    let sb = a.geometry().stripe_bytes() as usize;
    let reads0 = a.stats.member_reads.load(std::sync::atomic::Ordering::Relaxed);
    a.write(0, &vec![7u8; sb * 2], false).unwrap();
    assert_eq!(a.stats.member_reads.load(std::sync::atomic::Ordering::Relaxed), reads0, "full stripes read nothing");
    assert_eq!(a.stats.full_stripe_writes.load(std::sync::atomic::Ordering::Relaxed), 2);
    // One 4 KiB block of 6 data chunks: RMW reads 1 data + 2 parity = 3 < RCW's 5.
    a.write(4096, &[1u8; 4096], false).unwrap();
    assert_eq!(a.stats.rmw_writes.load(std::sync::atomic::Ordering::Relaxed), 1);
    // Five of six chunks: RCW reads 1 < RMW's 7.
    a.write(0, &vec![2u8; CHUNK as usize * 5], false).unwrap();
    assert_eq!(a.stats.rcw_writes.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(scrub(&a, false, &|_, _| {}).unwrap().mismatches, 0);
}

#[test]
fn crash_leaves_dirty_bits_and_resync_fixes_only_those_regions() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("g");
    // Big enough for several bitmap regions.
    let opts = CreateOptions {
        chunk_bytes: CHUNK,
        region_bytes: 1 << 20,
        ..CreateOptions::new(Level::Raid5, 4, (1 << 20) + 512 * CHUNK)
    };
    create(&dir, &opts).unwrap();
    let a = assemble(&dir).unwrap().array;
    let stripe = a.geometry().stripe_bytes();
    a.write(stripe * 3, &[9u8; 4096], false).unwrap();
    // Simulate a torn write: data written, parity not (corrupt parity of stripe 3 by hand).
    let p = a.geometry().p_member(3);
    drop(a); // no close: the group stays dirty
    let m = Member::open(&member_path(&dir, p)).unwrap();
    m.write_at(super::assemble::DATA_OFFSET_BYTES + 3 * CHUNK, &[0xee; 64]).unwrap();
    let asm = assemble(&dir).unwrap();
    assert!(asm.was_dirty);
    assert_eq!(asm.dirty_regions.len(), 1, "only the written region is dirty");
    let (done, skipped) = resync(&asm.array, &asm.dirty_regions, &|_, _| {}).unwrap();
    assert!(done >= 1 && done < asm.array.geometry().stripes(), "resync limited to the region: {done}");
    assert_eq!(skipped, 0);
    assert_eq!(scrub(&asm.array, false, &|_, _| {}).unwrap().mismatches, 0);
    assert!(asm.array.bitmap().dirty_regions().is_empty());
}

#[test]
fn assembly_rejects_foreign_stale_short_and_corrupt_members_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("g");
    new_group(&dir, Level::Raid5, 4);
    let other = tmp.path().join("other");
    new_group(&other, Level::Raid5, 4);
    // Foreign member replaces member 2.
    std::fs::copy(member_path(&other, 2), member_path(&dir, 2)).unwrap();
    let a = assemble(&dir).unwrap();
    let name = member_path(&dir, 2).display().to_string();
    assert!(a.rejected.iter().any(|r| r.member == name && r.reason.contains("belongs to group")), "{:?}", a.rejected);
    assert_eq!(a.array.degraded_members(), vec![2]);
    a.array.close().unwrap();
    drop(a);
    // Member 2 was recorded faulty: even restored it is stale.
    let asm = assemble(&dir).unwrap();
    assert_eq!(asm.array.degraded_members(), vec![2]);
    drop(asm);
    // Corrupt superblock on member 0 on top: two unusable in RAID5 — refuse, naming both.
    let m = Member::open(&member_path(&dir, 0)).unwrap();
    m.write_at(40, &[1, 2, 3]).unwrap();
    match assemble(&dir) {
        Err(e @ RaidError::TooManyMissing { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("member-00.img") && msg.contains("checksum"), "{msg}");
            assert!(msg.contains("member-02.img"), "{msg}");
        }
        Err(e) => panic!("unexpected {e}"),
        Ok(_) => panic!("two unusable members in RAID5 must be refused"),
    }
    // A truncated member is rejected with its size.
    let tmp2 = tempfile::tempdir().unwrap();
    new_group(tmp2.path(), Level::Raid1, 2);
    std::fs::OpenOptions::new()
        .write(true)
        .open(member_path(tmp2.path(), 1))
        .unwrap()
        .set_len(MEMBER_BYTES / 2)
        .unwrap();
    let a = assemble(tmp2.path()).unwrap();
    assert!(a.rejected.iter().any(|r| r.reason.contains("bytes, the group needs")), "{:?}", a.rejected);
}

#[test]
fn out_of_range_io_is_an_error_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    new_group(tmp.path(), Level::Raid5, 3);
    let a = assemble(tmp.path()).unwrap().array;
    let cap = a.capacity();
    assert!(matches!(a.write(cap - 10, &[1u8; 20], false), Err(RaidError::OutOfRange { .. })));
    assert!(matches!(a.read(u64::MAX - 5, &mut [0u8; 10]), Err(RaidError::OutOfRange { .. })));
    let mut b = vec![1u8; 10];
    a.read(cap - 10, &mut b).unwrap();
    assert_eq!(b, vec![0u8; 10], "rejected write left no trace");
}

#[test]
fn raid6_scrub_locates_and_rewrites_a_corrupt_data_block() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("g");
    new_group(&dir, Level::Raid6, 6);
    let a = assemble(&dir).unwrap();
    let mut rng = SmallRng::seed_from_u64(8);
    let mut model = vec![0u8; a.array.capacity() as usize];
    random_writes(&a.array, &mut model, &mut rng, 60);
    let geo = *a.array.geometry();
    a.array.close().unwrap();
    drop(a);
    // Corrupt a data block (data index 2 of stripe 3) over a few bytes.
    let member = geo.parity_stripe_members(3)[2];
    let m = Member::open(&member_path(&dir, member)).unwrap();
    let at = super::assemble::DATA_OFFSET_BYTES + 3 * geo.chunk_bytes + 100;
    m.write_at(at, &[0xde, 0xad, 0xbe, 0xef]).unwrap();
    let a = assemble(&dir).unwrap();
    let r = scrub(&a.array, false, &|_, _| {}).unwrap();
    assert_eq!((r.mismatches, r.data_blocks_located), (1, 1));
    let r = scrub(&a.array, true, &|_, _| {}).unwrap();
    assert_eq!(r.repaired, 1);
    assert_eq!(scrub(&a.array, false, &|_, _| {}).unwrap().mismatches, 0);
    assert_reads(&a.array, &model, "raid6 after locating and repairing a data block");
}

#[test]
fn each_controller_writes_its_own_bitmap_slot_and_a_crash_resyncs_every_slot() {
    use super::assemble::assemble_as;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("g");
    let opts = CreateOptions {
        chunk_bytes: CHUNK,
        region_bytes: 4 * 3 * CHUNK,
        ..CreateOptions::new(Level::Raid5, 4, MEMBER_BYTES)
    };
    create(&dir, &opts).unwrap();
    assert!(matches!(assemble_as(&dir, false, 8), Err(RaidError::BadMember { .. })), "slot 8 of 8 refused");
    // Controller 3 writes, then crashes.
    let a = assemble_as(&dir, false, 3).unwrap().array;
    let sb = a.superblock();
    assert_eq!((sb.bitmap_slots, a.bitmap_slot()), (8, 3));
    let stripe = a.geometry().stripe_bytes();
    a.write(stripe * 20, &[3u8; 4096], false).unwrap();
    drop(a);
    let slot_bits = |slot: u64| {
        let m = Member::open(&member_path(&dir, 0)).unwrap();
        let mut b = vec![0u8; sb.bitmap_bytes as usize];
        m.read_at(sb.bitmap_offset_bytes + slot * sb.bitmap_bytes as u64, &mut b).unwrap();
        b.iter().map(|x| x.count_ones()).sum::<u32>()
    };
    assert_eq!((slot_bits(0), slot_bits(3)), (0, 1), "the bit is in controller 3's slot only");
    // Controller 0 starts the group: it resyncs controller 3's region and clears its slot.
    let asm = assemble(&dir).unwrap();
    assert!(asm.was_dirty);
    let region = 20 / asm.array.bitmap().region_stripes();
    assert_eq!(asm.dirty_regions, vec![region]);
    resync(&asm.array, &asm.dirty_regions, &|_, _| {}).unwrap();
    assert_eq!((slot_bits(0), slot_bits(3)), (0, 0), "every slot clean after the resync");
    let mut b = vec![0u8; 4096];
    asm.array.read(stripe * 20, &mut b).unwrap();
    assert_eq!(b, vec![3u8; 4096]);
}

#[test]
fn a_version_1_group_is_still_assembled_and_upgraded() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("g");
    let opts =
        CreateOptions { chunk_bytes: CHUNK, bitmap_slots: 1, ..CreateOptions::new(Level::Raid6, 5, MEMBER_BYTES) };
    create(&dir, &opts).unwrap();
    // Rewrite every superblock as version 1 wrote it: version 1, no slot count.
    for i in 0..5 {
        let m = Member::open(&member_path(&dir, i)).unwrap();
        let mut b = vec![0u8; 4096];
        m.read_at(0, &mut b).unwrap();
        b[8..12].copy_from_slice(&1u32.to_le_bytes());
        b[112..116].fill(0);
        b[12..16].fill(0);
        let crc = crc32c::crc32c(&b);
        b[12..16].copy_from_slice(&crc.to_le_bytes());
        m.write_at(0, &b).unwrap();
    }
    let a = assemble(&dir).unwrap().array;
    assert_eq!(a.superblock().bitmap_slots, 1);
    a.write(0, &[9u8; 8192], false).unwrap();
    a.close().unwrap();
    let m = Member::open(&member_path(&dir, 2)).unwrap();
    let mut b = vec![0u8; 4096];
    m.read_at(0, &mut b).unwrap();
    assert_eq!(u32::from_le_bytes(b[8..12].try_into().unwrap()), super::superblock::VERSION, "upgraded on update");
}
