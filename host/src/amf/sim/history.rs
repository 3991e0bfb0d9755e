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
}

/// Writes and their blocks.
#[derive(Default)]
pub struct History {
    writes: BTreeMap<u64, Write>,
    /// Block -> writes of it, by id.
    blocks: BTreeMap<u64, Vec<u64>>,
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
    pub fn write_started(&mut self, id: u64, first: u64, count: u64, now_us: u64) {
        self.writes.insert(id, Write { start_us: now_us, end_us: None });
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
        h.write_started(1, 7, 1, 0);
        h.write_done(1, 10);
        h.write_started(2, 7, 1, 20);
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
}
