//! Scrub: reads every stripe, checks parity (or that mirror copies agree) and, with repair,
//! rewrites the redundancy from the data. RAID6 first locates a single bad block from the two
//! syndromes (as md's raid6check does): a corrupt data block is rewritten from P, not made
//! permanent by recomputing P and Q from it.

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
    /// RAID6 stripes whose bad block was located in the data (and, with repair, rewritten).
    pub data_blocks_located: u64,
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
        r.add(s, scrub_stripe(array, s, repair)?);
        if s % 64 == 63 || s + 1 == total {
            progress(s + 1, total);
        }
    }
    if repair && r.repaired > 0 {
        array.sync_members()?;
    }
    Ok(r)
}

/// What a scrub found in one stripe.
#[derive(Debug, Default, Serialize, serde::Deserialize, Clone, Copy, PartialEq, Eq)]
pub struct StripeCheck {
    /// A member was missing: not checked.
    pub skipped: bool,
    /// The redundancy did not match.
    pub mismatch: bool,
    /// RAID6: the bad block was located in the data.
    pub located: bool,
    /// Rewritten.
    pub repaired: bool,
}

impl ScrubReport {
    /// Adds stripe `s`'s outcome.
    pub fn add(&mut self, s: u64, c: StripeCheck) {
        if c.skipped {
            self.skipped += 1;
            return;
        }
        self.checked += 1;
        if c.mismatch {
            self.mismatches += 1;
            if self.mismatched_stripes.len() < LISTED_MAX {
                self.mismatched_stripes.push(s);
            }
        }
        self.data_blocks_located += c.located as u64;
        self.repaired += c.repaired as u64;
    }
}

/// Checks (and with `repair` fixes) stripe `s` under this process's lock of it; a cluster's
/// controller also holds the stripe's lock from its peers (the AMF machine's stripe job).
pub fn scrub_stripe(array: &Array, s: u64, repair: bool) -> Result<StripeCheck, RaidError> {
    let geo = array.geometry();
    if geo.copies() == 1 && geo.parities() == 0 {
        return Ok(StripeCheck { skipped: true, ..Default::default() });
    }
    let _g = array.locks().lock(s);
    let Some(blocks) = array.stripe_blocks(s)? else {
        return Ok(StripeCheck { skipped: true, ..Default::default() });
    };
    if geo.parities() == 2 {
        if let Some((pos, fixed)) = locate_raid6_data_error(array, &blocks.bufs) {
            if repair {
                array.write_block(blocks.members[pos], blocks.offsets[pos], &fixed);
            }
            return Ok(StripeCheck { mismatch: true, located: true, repaired: repair, ..Default::default() });
        }
    }
    let want = expected(array, &blocks.bufs);
    let bad: Vec<usize> = want.iter().filter(|(pos, w)| blocks.bufs[*pos][..] != w[..]).map(|(pos, _)| *pos).collect();
    if bad.is_empty() {
        return Ok(StripeCheck::default());
    }
    if repair {
        for (pos, w) in want.iter().filter(|(pos, _)| bad.contains(pos)) {
            array.write_block(blocks.members[*pos], blocks.offsets[*pos], w);
        }
    }
    Ok(StripeCheck { mismatch: true, repaired: repair, ..Default::default() })
}

/// RAID6: if P and Q both disagree with the data and the disagreement is explained by one data
/// block z (Q' = g^z * P' byte for byte), returns z's position and its corrected contents.
fn locate_raid6_data_error(array: &Array, bufs: &[AlignedBuf]) -> Option<(usize, AlignedBuf)> {
    use super::parity::gf256;
    let n = array.geometry().data_per_stripe();
    let len = bufs[0].len();
    let refs: Vec<&[u8]> = bufs[..n].iter().map(|b| &b[..]).collect();
    let (mut p, mut q) = (AlignedBuf::scratch(len), AlignedBuf::scratch(len));
    array.kernel().pq_gen(&refs, &mut p, &mut q);
    // P' and Q': the syndromes' differences.
    for (a, b) in p.iter_mut().zip(bufs[n].iter()) {
        *a ^= *b;
    }
    for (a, b) in q.iter_mut().zip(bufs[n + 1].iter()) {
        *a ^= *b;
    }
    let mut z: Option<usize> = None;
    for (dp, dq) in p.iter().zip(q.iter()) {
        match (*dp, *dq) {
            (0, 0) => continue,
            (0, _) | (_, 0) => return None, // only one syndrome is off here: not a data block
            (dp, dq) => {
                let ratio = gf256::mul(dq, gf256::inv(dp));
                let idx = (0..n).find(|&i| gf256::exp(i) == ratio)?;
                if z.is_some_and(|z| z != idx) {
                    return None; // more than one block is bad
                }
                z = Some(idx);
            }
        }
    }
    let z = z?;
    let mut fixed = AlignedBuf::scratch(len);
    for ((f, d), e) in fixed.iter_mut().zip(bufs[z].iter()).zip(p.iter()) {
        *f = d ^ e;
    }
    Some((z, fixed))
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
