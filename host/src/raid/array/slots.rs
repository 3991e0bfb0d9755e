//! Other controllers' write-intent slots: when a controller of a shared group dies, a survivor
//! resyncs the regions its slot marks (the stripes it may have left with parity half-updated)
//! and then clears the slot, without stopping the group.

use super::super::RaidError;
use super::Array;

impl Array {
    /// Byte offset and length of write-intent slot `slot` on every member.
    fn slot_place(&self, slot: usize) -> Result<(u64, usize), RaidError> {
        let sb = self.superblock();
        if slot >= sb.bitmap_slots as usize {
            return Err(RaidError::BadMember {
                index: 0,
                reason: format!("the group has {} write-intent slots, not {}", sb.bitmap_slots, slot + 1),
            });
        }
        Ok((sb.bitmap_offset_bytes + slot as u64 * sb.bitmap_bytes as u64, sb.bitmap_bytes as usize))
    }

    /// Regions write-intent slot `slot` marks on the members in this view (their bits OR-ed:
    /// a bit on any member counts).
    pub fn slot_dirty_regions(&self, slot: usize) -> Result<Vec<u64>, RaidError> {
        let (offset, bytes) = self.slot_place(slot)?;
        let mut bits = vec![0u8; bytes];
        let mut read = 0;
        for m in 0..self.member_count() {
            if self.view(m).readable_below != u64::MAX {
                continue;
            }
            let mut one = super::AlignedBuf::scratch(bytes);
            if self.member_read(m, offset, &mut one).is_ok() {
                read += 1;
                for (x, y) in bits.iter_mut().zip(one.iter()) {
                    *x |= *y;
                }
            }
        }
        if read == 0 {
            return Err(RaidError::BadMember {
                index: 0,
                reason: format!("no member to read write-intent slot {slot}"),
            });
        }
        let regions =
            super::super::bitmap::WriteIntent::regions_for(self.geometry().stripes(), self.bitmap().region_stripes());
        Ok((0..regions).filter(|r| bits.get((r / 8) as usize).is_some_and(|b| b & (1 << (r % 8)) != 0)).collect())
    }

    /// Makes this controller's bitmap its own slot as it is on the members (a controller
    /// that joins a running cluster assembled every slot's bits; the survivors resynced and
    /// cleared its own before it joined).
    pub fn reload_own_slot(&self) -> Result<(), RaidError> {
        let regions = self.slot_dirty_regions(self.bitmap_slot())?;
        self.bitmap().replace(&regions);
        Ok(())
    }

    /// The stripes of `regions`.
    pub fn region_stripes(&self, regions: &[u64]) -> Vec<u64> {
        let stripes = self.geometry().stripes();
        regions.iter().flat_map(|r| self.bitmap().region_stripe_range(*r, stripes)).collect()
    }

    /// Zeroes write-intent slot `slot` (another controller's: its regions were resynced and
    /// the resync's writes synced) on every member, then syncs.
    pub fn clear_bitmap_slot(&self, slot: usize) -> Result<(), RaidError> {
        if slot == self.bitmap_slot() {
            return Err(RaidError::BadMember { index: 0, reason: "a controller clears its own slot itself".into() });
        }
        let (offset, bytes) = self.slot_place(slot)?;
        // The resync's writes are durable before the bits that asked for them go.
        self.sync_members()?;
        let zeros = super::AlignedBuf::zeroed(bytes);
        for m in 0..self.member_count() {
            self.member_write(m, offset, &zeros);
        }
        self.sync_members()
    }

    /// A test aid for the simulator: flips bytes of the redundancy of the 4 KiB block at byte
    /// `at_data` of stripe `s`'s data (its P block, or a mirror's second copy of it), as a
    /// write of that block cut off by a crash leaves it: data written, redundancy not. Blocks
    /// nothing wrote keep their redundancy. False when the group has no redundancy there.
    #[doc(hidden)]
    pub fn tear_redundancy(&self, s: u64, at_data: u64) -> bool {
        let geo = self.geometry();
        let chunk = geo.chunk_bytes.max(1);
        let dd = (at_data / chunk) as usize;
        let within = (at_data % chunk) / 4096 * 4096;
        let (m, at) = if geo.is_mirror() {
            match geo.places(s, dd).get(1) {
                Some(p) => (p.member, self.data_offset() + p.chunk_offset + within),
                None => return false,
            }
        } else if geo.tolerance() > 0 {
            (geo.p_member(s), self.data_offset() + s * geo.chunk_bytes + within)
        } else {
            return false;
        };
        let mut b = super::AlignedBuf::scratch(4096);
        if self.member_read(m, at, &mut b).is_err() {
            return false;
        }
        for x in b.iter_mut().take(64) {
            *x = !*x;
        }
        self.member_write(m, at, &b)
    }
}
