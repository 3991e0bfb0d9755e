//! AVX-512BW parity kernels (64-byte vectors, four per step; three-way XOR in one VPTERNLOG).
//! Each kernel handles the longest prefix that is a multiple of 64 bytes and returns its length.

use std::arch::x86_64::*;

const STEP: usize = 256;
const XOR_LANES: usize = 8;
const XOR_STEP: usize = XOR_LANES * 64;
const LANE: usize = 64;
/// VPTERNLOG truth table for a ^ b ^ c.
const XOR3: i32 = 0x96;

#[inline(always)]
unsafe fn ld(p: *const u8) -> __m512i {
    _mm512_loadu_si512(p as *const _)
}

#[inline(always)]
unsafe fn st(p: *mut u8, v: __m512i) {
    _mm512_storeu_si512(p as *mut _, v)
}

/// # Safety
/// The CPU must support AVX-512F/BW and every slice in `data` must be exactly `p.len()` long.
#[target_feature(enable = "avx512f,avx512bw")]
pub unsafe fn xor_gen(data: &[&[u8]], p: &mut [u8]) -> usize {
    let len = p.len();
    let dst = p.as_mut_ptr();
    let mut i = 0;
    // Once the sources and P no longer fit in this core's L2, non-temporal stores skip the
    // read-for-ownership of P (a sixth of the traffic for 4+1); inside L2 they would only evict
    // P from it. They need 64-byte alignment.
    let working_set = len.saturating_mul(data.len() + 1);
    let stream = working_set > super::l2_bytes() && (dst as usize).is_multiple_of(LANE);
    // Eight vectors per step: XOR is bound by memory, and more loads in flight hide latency
    // once the buffers leave L1/L2.
    while i + XOR_STEP <= len {
        let s = data[0].as_ptr().add(i);
        let mut a = [_mm512_setzero_si512(); XOR_LANES];
        for (j, v) in a.iter_mut().enumerate() {
            *v = ld(s.add(j * LANE));
        }
        let mut k = 1;
        while k + 1 < data.len() {
            let (s, t) = (data[k].as_ptr().add(i), data[k + 1].as_ptr().add(i));
            for (j, v) in a.iter_mut().enumerate() {
                *v = _mm512_ternarylogic_epi32::<XOR3>(*v, ld(s.add(j * LANE)), ld(t.add(j * LANE)));
            }
            k += 2;
        }
        if k < data.len() {
            let s = data[k].as_ptr().add(i);
            for (j, v) in a.iter_mut().enumerate() {
                *v = _mm512_xor_si512(*v, ld(s.add(j * LANE)));
            }
        }
        if stream {
            for (j, v) in a.iter().enumerate() {
                _mm512_stream_si512(dst.add(i + j * LANE) as *mut _, *v);
            }
        } else {
            for (j, v) in a.iter().enumerate() {
                st(dst.add(i + j * LANE), *v);
            }
        }
        i += XOR_STEP;
    }
    if stream {
        _mm_sfence();
    }
    while i + LANE <= len {
        let mut a = ld(data[0].as_ptr().add(i));
        for d in &data[1..] {
            a = _mm512_xor_si512(a, ld(d.as_ptr().add(i)));
        }
        st(dst.add(i), a);
        i += LANE;
    }
    i
}

/// q*2 ^ d in GF(2^8): the carried-out bits select the polynomial, one VPTERNLOG folds all three.
#[inline(always)]
unsafe fn mul2_xor(q: __m512i, d: __m512i, poly: __m512i) -> __m512i {
    let carry = _mm512_movepi8_mask(q);
    _mm512_ternarylogic_epi32::<XOR3>(_mm512_add_epi8(q, q), _mm512_maskz_mov_epi8(carry, poly), d)
}

/// # Safety
/// The CPU must support AVX-512F/BW; every slice in `data` and `q` must be exactly `p.len()` long.
#[target_feature(enable = "avx512f,avx512bw")]
pub unsafe fn pq_gen(data: &[&[u8]], p: &mut [u8], q: &mut [u8]) -> usize {
    let len = p.len();
    let (last, rest) = match data.split_last() {
        Some(x) => x,
        None => return 0,
    };
    let poly = _mm512_set1_epi8(0x1d);
    let (pd, qd) = (p.as_mut_ptr(), q.as_mut_ptr());
    let mut i = 0;
    while i + STEP <= len {
        let s = last.as_ptr().add(i);
        let mut p0 = ld(s);
        let mut p1 = ld(s.add(LANE));
        let mut p2 = ld(s.add(2 * LANE));
        let mut p3 = ld(s.add(3 * LANE));
        let (mut q0, mut q1, mut q2, mut q3) = (p0, p1, p2, p3);
        for d in rest.iter().rev() {
            let s = d.as_ptr().add(i);
            let d0 = ld(s);
            let d1 = ld(s.add(LANE));
            let d2 = ld(s.add(2 * LANE));
            let d3 = ld(s.add(3 * LANE));
            p0 = _mm512_xor_si512(p0, d0);
            p1 = _mm512_xor_si512(p1, d1);
            p2 = _mm512_xor_si512(p2, d2);
            p3 = _mm512_xor_si512(p3, d3);
            q0 = mul2_xor(q0, d0, poly);
            q1 = mul2_xor(q1, d1, poly);
            q2 = mul2_xor(q2, d2, poly);
            q3 = mul2_xor(q3, d3, poly);
        }
        st(pd.add(i), p0);
        st(pd.add(i + LANE), p1);
        st(pd.add(i + 2 * LANE), p2);
        st(pd.add(i + 3 * LANE), p3);
        st(qd.add(i), q0);
        st(qd.add(i + LANE), q1);
        st(qd.add(i + 2 * LANE), q2);
        st(qd.add(i + 3 * LANE), q3);
        i += STEP;
    }
    while i + LANE <= len {
        let mut pv = ld(last.as_ptr().add(i));
        let mut qv = pv;
        for d in rest.iter().rev() {
            let dv = ld(d.as_ptr().add(i));
            pv = _mm512_xor_si512(pv, dv);
            qv = mul2_xor(qv, dv, poly);
        }
        st(pd.add(i), pv);
        st(qd.add(i), qv);
        i += LANE;
    }
    i
}
