//! Recovery of missing blocks in one stripe: any one block with P (RAID5), any two with P+Q (RAID6):
//! two data, data+P, data+Q, P+Q.

use super::{gf256, AlignedBuf, Kernel};

/// More blocks are missing than the parity can recover.
#[derive(Debug, thiserror::Error)]
#[error("{missing} blocks missing in a stripe with {parities} parity blocks")]
pub struct TooManyMissing {
    /// Blocks missing.
    pub missing: usize,
    /// Parity blocks per stripe.
    pub parities: usize,
}

fn pq_of(kernel: Kernel, data: &[AlignedBuf], parities: usize) -> (AlignedBuf, AlignedBuf) {
    let len = data.first().map_or(0, |d| d.len());
    let refs: Vec<&[u8]> = data.iter().map(|d| &d[..]).collect();
    let mut p = AlignedBuf::scratch(len);
    let mut q = AlignedBuf::scratch(if parities == 2 { len } else { 0 });
    if parities == 2 {
        kernel.pq_gen(&refs, &mut p, &mut q);
    } else {
        kernel.xor_gen(&refs, &mut p);
    }
    (p, q)
}

/// Rebuilds the blocks at positions `missing` in `blocks` (data blocks in logical order, then P,
/// then Q when `parities` is 2) from the others. Missing blocks' contents are ignored on input.
pub fn reconstruct(
    kernel: Kernel,
    blocks: &mut [AlignedBuf],
    parities: usize,
    missing: &[usize],
) -> Result<(), TooManyMissing> {
    let n = blocks.len() - parities;
    let mut md: Vec<usize> = missing.iter().copied().filter(|&m| m < n).collect();
    md.sort_unstable();
    md.dedup();
    let p_missing = parities >= 1 && missing.contains(&n);
    let q_missing = parities == 2 && missing.contains(&(n + 1));
    let count = md.len() + p_missing as usize + q_missing as usize;
    if count > parities {
        return Err(TooManyMissing { missing: count, parities });
    }
    for &x in &md {
        blocks[x].fill(0);
    }
    let (data, par) = blocks.split_at_mut(n);
    match md.as_slice() {
        [] => {
            let (p, q) = pq_of(kernel, data, parities);
            if p_missing {
                par[0].copy_from_slice(&p);
            }
            if q_missing {
                par[1].copy_from_slice(&q);
            }
        }
        &[x] if !p_missing => {
            // D_x = P ^ (XOR of the other data), with D_x zeroed above.
            let (p, _) = pq_of(kernel, data, 1);
            let refs: [&[u8]; 2] = [&p, &par[0]];
            kernel.xor_gen(&refs, &mut data[x]);
            if q_missing {
                let (_, q) = pq_of(kernel, data, 2);
                par[1].copy_from_slice(&q);
            }
        }
        &[x] => {
            // P is missing too: Q ^ Q(D_x = 0) = g^x * D_x.
            let (mut p, mut q) = pq_of(kernel, data, 2);
            for (a, b) in q.iter_mut().zip(par[1].iter()) {
                *a ^= *b;
            }
            kernel.mul_acc(gf256::inv(gf256::exp(x)), &q, &mut data[x]);
            for (a, b) in p.iter_mut().zip(data[x].iter()) {
                *a ^= *b;
            }
            par[0].copy_from_slice(&p);
        }
        &[x, y] => {
            // With D_x = D_y = 0: P' = D_x ^ D_y, Q' = g^x D_x ^ g^y D_y, so
            // D_x = (Q' ^ g^y P') / (g^x ^ g^y) and D_y = P' ^ D_x.
            let (mut pp, mut qq) = pq_of(kernel, data, 2);
            for (a, b) in pp.iter_mut().zip(par[0].iter()) {
                *a ^= *b;
            }
            for (a, b) in qq.iter_mut().zip(par[1].iter()) {
                *a ^= *b;
            }
            let den_inv = gf256::inv(gf256::exp(x) ^ gf256::exp(y));
            kernel.mul_acc(den_inv, &qq, &mut data[x]);
            kernel.mul_acc(gf256::mul(den_inv, gf256::exp(y)), &pp, &mut data[x]);
            let refs: [&[u8]; 2] = [&pp, &data[x]];
            let mut dy = AlignedBuf::scratch(pp.len());
            kernel.xor_gen(&refs, &mut dy);
            data[y].copy_from_slice(&dy);
        }
        _ => return Err(TooManyMissing { missing: count, parities }),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::SmallRng, RngCore, SeedableRng};

    fn stripe(rng: &mut SmallRng, n: usize, parities: usize, len: usize) -> Vec<AlignedBuf> {
        let mut blocks: Vec<AlignedBuf> = (0..n)
            .map(|_| {
                let mut b = AlignedBuf::zeroed(len);
                rng.fill_bytes(&mut b);
                b
            })
            .collect();
        let (p, q) = pq_of(Kernel::detect(), &blocks, parities);
        blocks.push(p);
        if parities == 2 {
            blocks.push(q);
        }
        blocks
    }

    #[test]
    fn every_single_and_double_loss_recovers() {
        let mut rng = SmallRng::seed_from_u64(11);
        for parities in [1usize, 2] {
            for n in [1usize, 2, 3, 6] {
                let len = 4096 + 65;
                let orig = stripe(&mut rng, n, parities, len);
                let total = n + parities;
                let mut sets: Vec<Vec<usize>> = (0..total).map(|a| vec![a]).collect();
                if parities == 2 {
                    for a in 0..total {
                        for b in a + 1..total {
                            sets.push(vec![a, b]);
                        }
                    }
                }
                for set in sets {
                    for k in Kernel::available() {
                        let mut blocks: Vec<AlignedBuf> = orig
                            .iter()
                            .map(|b| {
                                let mut c = AlignedBuf::zeroed(len);
                                c.copy_from_slice(b);
                                c
                            })
                            .collect();
                        for &m in &set {
                            rng.fill_bytes(&mut blocks[m]);
                        }
                        reconstruct(k, &mut blocks, parities, &set).unwrap();
                        for i in 0..total {
                            assert!(blocks[i][..] == orig[i][..], "{k:?} n={n} lost {set:?} block {i}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn too_many_missing_is_an_error() {
        let mut rng = SmallRng::seed_from_u64(3);
        let mut blocks = stripe(&mut rng, 4, 1, 64);
        assert!(reconstruct(Kernel::Portable, &mut blocks, 1, &[0, 1]).is_err());
    }
}
