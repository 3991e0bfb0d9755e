//! The history checker, outside the code under test: every write puts a unique id in each
//! block it writes, so a read names the write it saw. A read of a block is allowed only what a
//! linearizable register allows: the write it saw was invoked before the read returned, and no
//! other write of the block both followed it and was acknowledged before the read began.

use std::collections::BTreeMap;

/// Bytes per checked block (a write covers whole blocks).
pub const BLOCK_BYTES: usize = 512;

/// One write as the clients saw it.
#[derive(Clone, Copy, Debug)]
struct Write {
    start_us: u64,
    /// Acknowledged at; None while in flight.
    end_us: Option<u64>,
    /// A FUA write: durable once acknowledged.
    fua: bool,
}

/// Writes and their blocks.
#[derive(Default)]
pub struct History {
    writes: BTreeMap<u64, Write>,
    /// Block -> writes of it, by id.
    blocks: BTreeMap<u64, Vec<u64>>,
    /// Writes acknowledged before this are durable (the issue time of the latest flush that
    /// completed: a flush makes every write acknowledged before it began durable).
    durable_before_us: u64,
    /// Reads checked.
    pub reads_checked: u64,
}

/// Fills `buf` (whole blocks, starting at block `first`) with write `id`'s pattern.
pub fn pattern(id: u64, first: u64, buf: &mut [u8]) {
    for (i, b) in buf.chunks_mut(BLOCK_BYTES).enumerate() {
        let block = first + i as u64;
        for (j, w) in b.chunks_mut(8).enumerate() {
            let v = if j == 0 { id } else { id.rotate_left(17) ^ block.wrapping_mul(0x9e37_79b9) ^ j as u64 };
            w.copy_from_slice(&v.to_le_bytes()[..w.len()]);
        }
    }
}

/// The write id a block's bytes carry (0: never written), or None when they are no write's
/// pattern (torn or corrupt).
pub fn decode(block: u64, bytes: &[u8]) -> Option<u64> {
    if bytes.iter().all(|b| *b == 0) {
        return Some(0);
    }
    let id = u64::from_le_bytes(bytes[..8].try_into().ok()?);
    let mut want = vec![0u8; bytes.len()];
    pattern(id, block, &mut want);
    (want == bytes).then_some(id)
}

impl History {
    /// A write of blocks `first..first + count` was invoked.
    pub fn write_started(&mut self, id: u64, first: u64, count: u64, fua: bool, now_us: u64) {
        self.writes.insert(id, Write { start_us: now_us, end_us: None, fua });
        for b in first..first + count {
            self.blocks.entry(b).or_default().push(id);
        }
    }

    /// Write `id` was acknowledged.
    pub fn write_done(&mut self, id: u64, now_us: u64) {
        if let Some(w) = self.writes.get_mut(&id) {
            w.end_us = Some(now_us);
        }
    }

    /// A flush issued at `start_us` completed.
    pub fn flush_done(&mut self, start_us: u64) {
        self.durable_before_us = self.durable_before_us.max(start_us);
    }

    /// Checks what block `block` holds after a power cut (every write in flight then was cut
    /// off and is never acknowledged): its newest durable write, or a write of it that was not
    /// acknowledged before that one began (a later one, or one running beside it), or zeros if
    /// none was durable. Returns the write it holds.
    pub fn check_after_cut(&self, block: u64, bytes: &[u8]) -> Result<u64, String> {
        let Some(seen) = decode(block, bytes) else {
            return Err(format!("block {block}: bytes are no write's after the power cut (torn or corrupt)"));
        };
        let ids = self.blocks.get(&block).map(|v| v.as_slice()).unwrap_or(&[]);
        if seen != 0 && !ids.contains(&seen) {
            return Err(format!("block {block}: holds write {seen}, which never wrote it"));
        }
        let seen_end = if seen == 0 { Some(0) } else { self.writes[&seen].end_us };
        let durable = |w: &Write| w.end_us.is_some_and(|e| w.fua || e < self.durable_before_us);
        let Some(seen_end) = seen_end else { return Ok(seen) };
        for id in ids {
            let w = self.writes[id];
            if *id != seen && durable(&w) && (seen == 0 || w.start_us > seen_end) {
                return Err(format!(
                    "block {block}: the power cut lost write {id} ({}, acknowledged at {} us); it holds {} \
                     (acknowledged at {seen_end} us)",
                    if w.fua { "FUA" } else { "flushed" },
                    w.end_us.unwrap_or(0),
                    if seen == 0 { "zeros".to_string() } else { format!("write {seen}") },
                ));
            }
        }
        Ok(seen)
    }

    /// After a power cut, once every block was checked: the blocks hold `held` (block -> write
    /// id) as if written at `now_us`, and nothing else was ever written.
    pub fn rebase(&mut self, held: &BTreeMap<u64, u64>, now_us: u64) {
        self.writes.clear();
        self.blocks.clear();
        self.durable_before_us = 0;
        for (b, id) in held.iter().filter(|(_, id)| **id != 0) {
            self.writes.insert(*id, Write { start_us: now_us, end_us: Some(now_us), fua: false });
            self.blocks.entry(*b).or_default().push(*id);
        }
    }

    /// Checks a read of block `block` that ran from `start_us` to `end_us` and returned
    /// `bytes`.
    pub fn check_read(&mut self, block: u64, bytes: &[u8], start_us: u64, end_us: u64) -> Result<(), String> {
        self.reads_checked += 1;
        let Some(seen) = decode(block, bytes) else {
            return Err(format!("block {block}: bytes are no write's (torn or corrupt)"));
        };
        let ids = self.blocks.get(&block).map(|v| v.as_slice()).unwrap_or(&[]);
        // When did what the read saw stop being the newest for sure?
        let seen_end = if seen == 0 {
            Some(0)
        } else {
            if !ids.contains(&seen) {
                return Err(format!("block {block}: read write {seen}, which never wrote it"));
            }
            let w = self.writes[&seen];
            if w.start_us > end_us {
                return Err(format!("block {block}: read write {seen} before it was issued"));
            }
            w.end_us
        };
        if let Some(seen_end) = seen_end {
            for id in ids {
                let w = self.writes[id];
                if *id != seen && w.start_us > seen_end && w.end_us.is_some_and(|e| e < start_us) {
                    return Err(format!(
                        "block {block}: stale read of write {seen} (acknowledged at {seen_end} us); write {id} ran \
                         {}..{} us, before the read began at {start_us} us",
                        w.start_us,
                        w.end_us.unwrap_or(0)
                    ));
                }
            }
        }
        Ok(())
    }

    /// Blocks ever written.
    pub fn blocks(&self) -> impl Iterator<Item = u64> + '_ {
        self.blocks.keys().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_read_is_caught_and_a_concurrent_one_is_not() {
        let mut h = History::default();
        let mut a = vec![0u8; BLOCK_BYTES];
        let mut b = vec![0u8; BLOCK_BYTES];
        pattern(1, 7, &mut a);
        pattern(2, 7, &mut b);
        h.write_started(1, 7, 1, false, 0);
        h.write_done(1, 10);
        h.write_started(2, 7, 1, false, 20);
        // Concurrent with write 2: either value is fine.
        assert!(h.check_read(7, &a, 25, 40).is_ok());
        h.write_done(2, 30);
        assert!(h.check_read(7, &b, 25, 40).is_ok());
        // Began after write 2 was acknowledged: write 1 is stale, zeros are too.
        assert!(h.check_read(7, &a, 31, 40).is_err());
        assert!(h.check_read(7, &[0u8; BLOCK_BYTES], 31, 40).is_err());
        // Torn.
        let mut torn = a.clone();
        torn[100] ^= 1;
        assert!(h.check_read(7, &torn, 50, 60).is_err());
    }

    #[test]
    fn a_power_cut_may_lose_only_what_was_not_durable() {
        let mut h = History::default();
        let at = |id: u64| {
            let mut b = vec![0u8; BLOCK_BYTES];
            pattern(id, 3, &mut b);
            b
        };
        h.write_started(1, 3, 1, false, 0);
        h.write_done(1, 10);
        // Nothing durable yet: zeros are allowed.
        assert_eq!(h.check_after_cut(3, &[0u8; BLOCK_BYTES]), Ok(0));
        h.flush_done(20);
        assert!(h.check_after_cut(3, &[0u8; BLOCK_BYTES]).is_err(), "write 1 was flushed");
        h.write_started(2, 3, 1, false, 30);
        h.write_done(2, 40);
        // Acknowledged, not flushed: either.
        assert_eq!(h.check_after_cut(3, &at(1)), Ok(1));
        assert_eq!(h.check_after_cut(3, &at(2)), Ok(2));
        h.write_started(3, 3, 1, true, 50);
        h.write_done(3, 60);
        assert!(h.check_after_cut(3, &at(2)).is_err(), "write 3 was FUA");
        // Cut off in flight: may have landed.
        h.write_started(4, 3, 1, false, 70);
        assert_eq!(h.check_after_cut(3, &at(4)), Ok(4));
        let held: BTreeMap<u64, u64> = [(3, 4)].into();
        h.rebase(&held, 100);
        assert!(h.check_read(3, &at(4), 110, 120).is_ok());
        assert!(h.check_read(3, &at(3), 110, 120).is_err());
    }
}
