//! Portable parity kernels: 64-bit words (SWAR) with a byte tail. The reference for the SIMD kernels.

const HIGH_BITS: u64 = 0x8080_8080_8080_8080;
const LOW_SEVEN: u64 = 0xfefe_fefe_fefe_fefe;
const POLY_LOW: u64 = 0x1d;

/// Multiplies each byte of a word by g = 2 in GF(2^8).
#[inline(always)]
fn mul2_word(q: u64) -> u64 {
    let hi = (q & HIGH_BITS) >> 7;
    ((q << 1) & LOW_SEVEN) ^ (hi * POLY_LOW)
}

#[inline(always)]
fn mul2_byte(q: u8) -> u8 {
    (q << 1) ^ if q & 0x80 != 0 { POLY_LOW as u8 } else { 0 }
}

#[inline(always)]
fn word(buf: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&buf[at..at + 8]);
    u64::from_ne_bytes(w)
}

/// P = XOR of all data, from byte `start` on.
pub fn xor_gen_from(data: &[&[u8]], p: &mut [u8], start: usize) {
    let len = p.len();
    let words_end = start + (len - start) / 8 * 8;
    let mut i = start;
    while i < words_end {
        let mut acc = 0u64;
        for d in data {
            acc ^= word(d, i);
        }
        p[i..i + 8].copy_from_slice(&acc.to_ne_bytes());
        i += 8;
    }
    for j in words_end..len {
        let mut acc = 0u8;
        for d in data {
            acc ^= d[j];
        }
        p[j] = acc;
    }
}

/// P and Q from byte `start` on. Q is evaluated by Horner's rule from the highest data index.
pub fn pq_gen_from(data: &[&[u8]], p: &mut [u8], q: &mut [u8], start: usize) {
    let len = p.len();
    let Some((last, rest)) = data.split_last() else {
        p[start..].fill(0);
        q[start..].fill(0);
        return;
    };
    let words_end = start + (len - start) / 8 * 8;
    let mut i = start;
    while i < words_end {
        let mut pw = word(last, i);
        let mut qw = pw;
        for d in rest.iter().rev() {
            let dw = word(d, i);
            pw ^= dw;
            qw = mul2_word(qw) ^ dw;
        }
        p[i..i + 8].copy_from_slice(&pw.to_ne_bytes());
        q[i..i + 8].copy_from_slice(&qw.to_ne_bytes());
        i += 8;
    }
    for j in words_end..len {
        let mut pb = last[j];
        let mut qb = pb;
        for d in rest.iter().rev() {
            pb ^= d[j];
            qb = mul2_byte(qb) ^ d[j];
        }
        p[j] = pb;
        q[j] = qb;
    }
}
