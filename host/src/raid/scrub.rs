//! Scrub: reads every stripe, checks parity (or that mirror copies agree) and, with repair,
//! rewrites the redundancy from the data.

use super::array::Array;
use super::parity::AlignedBuf;
use super::RaidError;
use serde::Serialize;

/// Mismatching stripes listed individually in a report.
pub const LISTED_MAX: usize = 100;

/// Outcome of a scrub.
#[derive(Debug, Default, Serialize, Clone)]
pub struct ScrubReport {
    /// Stripes in the group.
    pub stripes: u64,
    /// Stripes checked.
    pub checked: u64,
    /// Stripes that could not be checked (a member missing).
    pub skipped: u64,
    /// Stripes whose redundancy did not match.
    pub mismatches: u64,
    /// Stripes rewritten.
    pub repaired: u64,
    /// The first mismatching stripes.
    pub mismatched_stripes: Vec<u64>,
}

/// Checks (and with `repair` fixes) every stripe, reporting (done, total) progress.
pub fn scrub(array: &Array, repair: bool, progress: &dyn Fn(u64, u64)) -> Result<ScrubReport, RaidError> {
    let geo = *array.geometry();
    let total = geo.stripes();
    let mut r = ScrubReport { stripes: total, ..Default::default() };
    if geo.copies() == 1 && geo.parities() == 0 {
        // RAID0 has nothing to check against.
        r.skipped = total;
        progress(total, total);
        return Ok(r);
    }
    for s in 0..total {
        let _g = array.locks().lock(s);
        let Some(blocks) = array.stripe_blocks(s)? else {
            r.skipped += 1;
            continue;
        };
        r.checked += 1;
        let want = expected(array, &blocks.bufs);
        let bad: Vec<usize> =
            want.iter().filter(|(pos, w)| blocks.bufs[*pos][..] != w[..]).map(|(pos, _)| *pos).collect();
        if !bad.is_empty() {
            r.mismatches += 1;
            if r.mismatched_stripes.len() < LISTED_MAX {
                r.mismatched_stripes.push(s);
            }
            if repair {
                for (pos, w) in want.iter().filter(|(pos, _)| bad.contains(pos)) {
                    array.write_block(blocks.members[*pos], blocks.offsets[*pos], w);
                }
                r.repaired += 1;
            }
        }
        if s % 64 == 63 || s + 1 == total {
            progress(s + 1, total);
        }
    }
    if repair && r.repaired > 0 {
        array.sync_members()?;
    }
    Ok(r)
}

/// The redundancy blocks as the data says they should be: (position, contents).
fn expected(array: &Array, bufs: &[AlignedBuf]) -> Vec<(usize, AlignedBuf)> {
    let geo = array.geometry();
    let len = bufs[0].len();
    if geo.is_mirror() {
        return (1..bufs.len())
            .map(|pos| {
                let mut b = AlignedBuf::zeroed(len);
                b.copy_from_slice(&bufs[0]);
                (pos, b)
            })
            .collect();
    }
    let n = geo.data_per_stripe();
    let refs: Vec<&[u8]> = bufs[..n].iter().map(|b| &b[..]).collect();
    let mut p = AlignedBuf::zeroed(len);
    if geo.parities() == 2 {
        let mut q = AlignedBuf::zeroed(len);
        array.kernel().pq_gen(&refs, &mut p, &mut q);
        vec![(n, p), (n + 1, q)]
    } else {
        array.kernel().xor_gen(&refs, &mut p);
        vec![(n, p)]
    }
}
