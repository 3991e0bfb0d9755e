//! Write-intent bitmap (md-style): one bit per region of stripes, set and made durable on every
//! member before the first write into the region, cleared lazily once the region's writes are
//! durable. After a crash only regions with their bit set need a parity/mirror resync.

use super::RaidError;
use std::sync::{Mutex, MutexGuard};

/// Bytes written per bitmap update.
pub const PAGE_BYTES: usize = 4096;
const BITS_PER_PAGE: u64 = PAGE_BYTES as u64 * 8;

struct Inner {
    on_disk: Vec<u8>,
    inflight: Vec<u32>,
    seq: Vec<u64>,
}

/// The bitmap of one group.
pub struct WriteIntent {
    region_stripes: u64,
    regions: u64,
    inner: Mutex<Inner>,
}

/// Idle regions seen before a member sync; cleared by [`WriteIntent::clear_idle`] if still idle.
pub struct IdleSnapshot(Vec<(u64, u64)>);

/// Writes one bitmap page (byte offset within the bitmap area, page contents) to every member.
pub type Persist<'a> = dyn Fn(u64, &[u8]) -> Result<(), RaidError> + 'a;

impl WriteIntent {
    /// Regions needed to cover `stripes`.
    pub fn regions_for(stripes: u64, region_stripes: u64) -> u64 {
        stripes.div_ceil(region_stripes.max(1))
    }

    /// A bitmap whose on-disk state is `bits` (all members' bitmaps OR-ed together).
    pub fn new(stripes: u64, region_stripes: u64, mut bits: Vec<u8>) -> WriteIntent {
        let regions = Self::regions_for(stripes, region_stripes);
        let bytes = (regions.div_ceil(BITS_PER_PAGE) * PAGE_BYTES as u64) as usize;
        bits.resize(bytes, 0);
        WriteIntent {
            region_stripes: region_stripes.max(1),
            regions,
            inner: Mutex::new(Inner {
                on_disk: bits,
                inflight: vec![0; regions as usize],
                seq: vec![0; regions as usize],
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stripes per region.
    pub fn region_stripes(&self) -> u64 {
        self.region_stripes
    }

    /// Regions whose bit is set.
    pub fn dirty_regions(&self) -> Vec<u64> {
        let g = self.lock();
        (0..self.regions).filter(|&r| bit(&g.on_disk, r)).collect()
    }

    /// Marks a write into `stripe` as started; persists the region's bit first if it is clear.
    pub fn begin(&self, stripe: u64, persist: &Persist<'_>) -> Result<(), RaidError> {
        let r = stripe / self.region_stripes;
        let mut g = self.lock();
        if !bit(&g.on_disk, r) {
            let page = (r / BITS_PER_PAGE) as usize;
            let mut copy = g.on_disk[page * PAGE_BYTES..(page + 1) * PAGE_BYTES].to_vec();
            set_bit(&mut copy, r % BITS_PER_PAGE, true);
            persist((page * PAGE_BYTES) as u64, &copy)?;
            set_bit(&mut g.on_disk, r, true);
        }
        g.inflight[r as usize] += 1;
        g.seq[r as usize] += 1;
        Ok(())
    }

    /// Marks a write into `stripe` as finished.
    pub fn end(&self, stripe: u64) {
        let r = (stripe / self.region_stripes) as usize;
        let mut g = self.lock();
        g.inflight[r] = g.inflight[r].saturating_sub(1);
    }

    /// Regions with their bit set and no write in flight; take before syncing the members.
    pub fn snapshot_idle(&self) -> IdleSnapshot {
        let g = self.lock();
        IdleSnapshot(
            (0..self.regions)
                .filter(|&r| bit(&g.on_disk, r) && g.inflight[r as usize] == 0)
                .map(|r| (r, g.seq[r as usize]))
                .collect(),
        )
    }

    /// After the members were synced: clears the snapshot's regions that saw no write since.
    pub fn clear_idle(&self, snap: IdleSnapshot, persist: &Persist<'_>) -> Result<usize, RaidError> {
        let mut g = self.lock();
        let mut pages = std::collections::BTreeSet::new();
        let mut cleared = 0;
        for (r, seq) in snap.0 {
            if g.inflight[r as usize] == 0 && g.seq[r as usize] == seq && bit(&g.on_disk, r) {
                set_bit(&mut g.on_disk, r, false);
                pages.insert((r / BITS_PER_PAGE) as usize);
                cleared += 1;
            }
        }
        for page in pages {
            persist((page * PAGE_BYTES) as u64, &g.on_disk[page * PAGE_BYTES..(page + 1) * PAGE_BYTES])?;
        }
        Ok(cleared)
    }

    /// Takes `regions` as the bits on disk (a controller that joins a running cluster: what it
    /// assembled was every slot's bits, and its own slot is what it writes).
    pub fn replace(&self, regions: &[u64]) {
        let mut g = self.lock();
        g.on_disk.iter_mut().for_each(|b| *b = 0);
        for &r in regions.iter().filter(|r| **r < self.regions) {
            set_bit(&mut g.on_disk, r, true);
        }
    }

    /// Stripe range of a region.
    pub fn region_stripe_range(&self, region: u64, stripes: u64) -> std::ops::Range<u64> {
        let start = region * self.region_stripes;
        start..(start + self.region_stripes).min(stripes)
    }
}

fn bit(bits: &[u8], r: u64) -> bool {
    bits.get((r / 8) as usize).is_some_and(|b| b & (1 << (r % 8)) != 0)
}

fn set_bit(bits: &mut [u8], r: u64, on: bool) {
    if let Some(b) = bits.get_mut((r / 8) as usize) {
        if on {
            *b |= 1 << (r % 8);
        } else {
            *b &= !(1 << (r % 8));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[test]
    fn bit_is_persisted_before_first_write_and_cleared_only_when_idle() {
        let wi = WriteIntent::new(100, 10, vec![]);
        let writes = RefCell::new(0);
        let persist = |_off: u64, _p: &[u8]| -> Result<(), RaidError> {
            *writes.borrow_mut() += 1;
            Ok(())
        };
        wi.begin(15, &persist).unwrap();
        wi.begin(17, &persist).unwrap();
        assert_eq!(*writes.borrow(), 1, "second write into a dirty region needs no bitmap write");
        assert_eq!(wi.dirty_regions(), vec![1]);
        let snap = wi.snapshot_idle();
        assert_eq!(wi.clear_idle(snap, &persist).unwrap(), 0, "in-flight region stays dirty");
        wi.end(15);
        wi.end(17);
        let snap = wi.snapshot_idle();
        wi.begin(12, &persist).unwrap();
        wi.end(12);
        assert_eq!(wi.clear_idle(snap, &persist).unwrap(), 0, "region written after the snapshot stays dirty");
        let snap = wi.snapshot_idle();
        assert_eq!(wi.clear_idle(snap, &persist).unwrap(), 1);
        assert!(wi.dirty_regions().is_empty());
    }
}
