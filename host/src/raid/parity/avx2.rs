//! AVX2 parity kernels (32-byte vectors, four vectors per step for instruction-level parallelism).
//! Each kernel handles the longest prefix that is a multiple of 32 bytes and returns its length;
//! the dispatcher finishes the tail with the portable kernel.

use std::arch::x86_64::*;

const STEP: usize = 128;
const LANE: usize = 32;

/// # Safety
/// The CPU must support AVX2 and every slice in `data` must be exactly `p.len()` long.
#[target_feature(enable = "avx2")]
pub unsafe fn xor_gen(data: &[&[u8]], p: &mut [u8]) -> usize {
    let len = p.len();
    let dst = p.as_mut_ptr();
    let mut i = 0;
    while i + STEP <= len {
        let s = data[0].as_ptr().add(i);
        let mut a0 = _mm256_loadu_si256(s as *const __m256i);
        let mut a1 = _mm256_loadu_si256(s.add(LANE) as *const __m256i);
        let mut a2 = _mm256_loadu_si256(s.add(2 * LANE) as *const __m256i);
        let mut a3 = _mm256_loadu_si256(s.add(3 * LANE) as *const __m256i);
        for d in &data[1..] {
            let s = d.as_ptr().add(i);
            a0 = _mm256_xor_si256(a0, _mm256_loadu_si256(s as *const __m256i));
            a1 = _mm256_xor_si256(a1, _mm256_loadu_si256(s.add(LANE) as *const __m256i));
            a2 = _mm256_xor_si256(a2, _mm256_loadu_si256(s.add(2 * LANE) as *const __m256i));
            a3 = _mm256_xor_si256(a3, _mm256_loadu_si256(s.add(3 * LANE) as *const __m256i));
        }
        let o = dst.add(i);
        _mm256_storeu_si256(o as *mut __m256i, a0);
        _mm256_storeu_si256(o.add(LANE) as *mut __m256i, a1);
        _mm256_storeu_si256(o.add(2 * LANE) as *mut __m256i, a2);
        _mm256_storeu_si256(o.add(3 * LANE) as *mut __m256i, a3);
        i += STEP;
    }
    while i + LANE <= len {
        let mut a = _mm256_loadu_si256(data[0].as_ptr().add(i) as *const __m256i);
        for d in &data[1..] {
            a = _mm256_xor_si256(a, _mm256_loadu_si256(d.as_ptr().add(i) as *const __m256i));
        }
        _mm256_storeu_si256(dst.add(i) as *mut __m256i, a);
        i += LANE;
    }
    i
}

/// Multiplies every byte by 2 in GF(2^8) (poly 0x11d): shift left, fold the carried-out bit back.
#[inline(always)]
unsafe fn mul2(q: __m256i, poly: __m256i, zero: __m256i) -> __m256i {
    let carry = _mm256_cmpgt_epi8(zero, q);
    _mm256_xor_si256(_mm256_add_epi8(q, q), _mm256_and_si256(carry, poly))
}

/// # Safety
/// The CPU must support AVX2, `data` must not be empty and every slice in it must be exactly
/// `p.len()` long, as must `q`.
#[target_feature(enable = "avx2")]
pub unsafe fn pq_gen(data: &[&[u8]], p: &mut [u8], q: &mut [u8]) -> usize {
    let len = p.len();
    let (last, rest) = match data.split_last() {
        Some(x) => x,
        None => return 0,
    };
    let poly = _mm256_set1_epi8(0x1d);
    let zero = _mm256_setzero_si256();
    let (pd, qd) = (p.as_mut_ptr(), q.as_mut_ptr());
    let mut i = 0;
    while i + STEP <= len {
        let s = last.as_ptr().add(i);
        let mut p0 = _mm256_loadu_si256(s as *const __m256i);
        let mut p1 = _mm256_loadu_si256(s.add(LANE) as *const __m256i);
        let mut p2 = _mm256_loadu_si256(s.add(2 * LANE) as *const __m256i);
        let mut p3 = _mm256_loadu_si256(s.add(3 * LANE) as *const __m256i);
        let (mut q0, mut q1, mut q2, mut q3) = (p0, p1, p2, p3);
        for d in rest.iter().rev() {
            let s = d.as_ptr().add(i);
            let d0 = _mm256_loadu_si256(s as *const __m256i);
            let d1 = _mm256_loadu_si256(s.add(LANE) as *const __m256i);
            let d2 = _mm256_loadu_si256(s.add(2 * LANE) as *const __m256i);
            let d3 = _mm256_loadu_si256(s.add(3 * LANE) as *const __m256i);
            p0 = _mm256_xor_si256(p0, d0);
            p1 = _mm256_xor_si256(p1, d1);
            p2 = _mm256_xor_si256(p2, d2);
            p3 = _mm256_xor_si256(p3, d3);
            q0 = _mm256_xor_si256(mul2(q0, poly, zero), d0);
            q1 = _mm256_xor_si256(mul2(q1, poly, zero), d1);
            q2 = _mm256_xor_si256(mul2(q2, poly, zero), d2);
            q3 = _mm256_xor_si256(mul2(q3, poly, zero), d3);
        }
        let (po, qo) = (pd.add(i), qd.add(i));
        _mm256_storeu_si256(po as *mut __m256i, p0);
        _mm256_storeu_si256(po.add(LANE) as *mut __m256i, p1);
        _mm256_storeu_si256(po.add(2 * LANE) as *mut __m256i, p2);
        _mm256_storeu_si256(po.add(3 * LANE) as *mut __m256i, p3);
        _mm256_storeu_si256(qo as *mut __m256i, q0);
        _mm256_storeu_si256(qo.add(LANE) as *mut __m256i, q1);
        _mm256_storeu_si256(qo.add(2 * LANE) as *mut __m256i, q2);
        _mm256_storeu_si256(qo.add(3 * LANE) as *mut __m256i, q3);
        i += STEP;
    }
    while i + LANE <= len {
        let mut pv = _mm256_loadu_si256(last.as_ptr().add(i) as *const __m256i);
        let mut qv = pv;
        for d in rest.iter().rev() {
            let dv = _mm256_loadu_si256(d.as_ptr().add(i) as *const __m256i);
            pv = _mm256_xor_si256(pv, dv);
            qv = _mm256_xor_si256(mul2(qv, poly, zero), dv);
        }
        _mm256_storeu_si256(pd.add(i) as *mut __m256i, pv);
        _mm256_storeu_si256(qd.add(i) as *mut __m256i, qv);
        i += LANE;
    }
    i
}

/// `dst ^= c * src` with the split-nibble table lookup (two PSHUFB per vector).
///
/// # Safety
/// The CPU must support AVX2 and `src.len() == dst.len()`.
#[target_feature(enable = "avx2")]
pub unsafe fn mul_acc(c: u8, src: &[u8], dst: &mut [u8]) -> usize {
    let mut lo = [0u8; 32];
    let mut hi = [0u8; 32];
    for n in 0..16u8 {
        lo[n as usize] = super::gf256::mul(c, n);
        hi[n as usize] = super::gf256::mul(c, n << 4);
        lo[n as usize + 16] = lo[n as usize];
        hi[n as usize + 16] = hi[n as usize];
    }
    let lo_t = _mm256_loadu_si256(lo.as_ptr() as *const __m256i);
    let hi_t = _mm256_loadu_si256(hi.as_ptr() as *const __m256i);
    let nib = _mm256_set1_epi8(0x0f);
    let len = dst.len();
    let mut i = 0;
    while i + LANE <= len {
        let x = _mm256_loadu_si256(src.as_ptr().add(i) as *const __m256i);
        let xl = _mm256_and_si256(x, nib);
        let xh = _mm256_and_si256(_mm256_srli_epi16(x, 4), nib);
        let prod = _mm256_xor_si256(_mm256_shuffle_epi8(lo_t, xl), _mm256_shuffle_epi8(hi_t, xh));
        let d = dst.as_mut_ptr().add(i) as *mut __m256i;
        _mm256_storeu_si256(d, _mm256_xor_si256(_mm256_loadu_si256(d), prod));
        i += LANE;
    }
    i
}
