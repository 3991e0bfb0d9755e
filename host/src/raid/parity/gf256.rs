//! Arithmetic in GF(2^8) with the RAID6 polynomial x^8+x^4+x^3+x^2+1 (0x11d) and generator 2,
//! the convention of Linux `lib/raid6` and ISA-L.

/// The field polynomial, including the x^8 term.
pub const POLY: u16 = 0x11d;

/// Log and antilog tables, built at compile time.
struct Tables {
    exp: [u8; 512],
    log: [u8; 256],
}

const fn build_tables() -> Tables {
    let mut exp = [0u8; 512];
    let mut log = [0u8; 256];
    let mut x: u16 = 1;
    let mut i = 0;
    while i < 255 {
        exp[i] = x as u8;
        exp[i + 255] = x as u8;
        log[x as usize] = i as u8;
        x <<= 1;
        if x & 0x100 != 0 {
            x ^= POLY;
        }
        i += 1;
    }
    // exp[510..512] stay unused; exp is doubled so exp[a+b] needs no modulo.
    Tables { exp, log }
}

static TABLES: Tables = build_tables();

/// g^n for the generator g = 2.
pub fn exp(n: usize) -> u8 {
    TABLES.exp[n % 255]
}

/// Product of two field elements.
pub fn mul(a: u8, b: u8) -> u8 {
    if a == 0 || b == 0 {
        return 0;
    }
    TABLES.exp[TABLES.log[a as usize] as usize + TABLES.log[b as usize] as usize]
}

/// Multiplicative inverse; `inv(0)` is defined as 0 so callers never divide by zero silently
/// (recovery code never asks for it: its denominators are g^a ^ g^b with a != b).
pub fn inv(a: u8) -> u8 {
    if a == 0 {
        return 0;
    }
    TABLES.exp[255 - TABLES.log[a as usize] as usize]
}

/// The 256-entry multiplication table for a constant `c`.
pub fn mul_table(c: u8) -> [u8; 256] {
    let mut t = [0u8; 256];
    for (x, slot) in t.iter_mut().enumerate() {
        *slot = mul(c, x as u8);
    }
    t
}

/// `dst[i] ^= c * src[i]` over the whole buffer.
pub fn mul_acc(c: u8, src: &[u8], dst: &mut [u8]) {
    debug_assert_eq!(src.len(), dst.len());
    match c {
        0 => {}
        1 => {
            for (d, s) in dst.iter_mut().zip(src) {
                *d ^= *s;
            }
        }
        _ => {
            let t = mul_table(c);
            for (d, s) in dst.iter_mut().zip(src) {
                *d ^= t[*s as usize];
            }
        }
    }
}

/// `buf[i] = c * buf[i]` over the whole buffer.
pub fn mul_in_place(c: u8, buf: &mut [u8]) {
    let t = mul_table(c);
    for b in buf.iter_mut() {
        *b = t[*b as usize];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generator_has_order_255() {
        let mut seen = [false; 256];
        for n in 0..255 {
            let v = exp(n);
            assert!(!seen[v as usize], "g^{n} repeats");
            seen[v as usize] = true;
        }
        assert!(!seen[0]);
    }

    #[test]
    fn inverse_and_distributivity() {
        for a in 1..=255u8 {
            assert_eq!(mul(a, inv(a)), 1, "a={a}");
            for b in [1u8, 2, 3, 0x1d, 0x80, 0xff] {
                for c in [0u8, 7, 0x42] {
                    assert_eq!(mul(a, b ^ c), mul(a, b) ^ mul(a, c));
                }
            }
        }
        // Known values of the 0x11d field: 2*0x80 wraps to 0x1d.
        assert_eq!(mul(2, 0x80), 0x1d);
        assert_eq!(exp(8), 0x1d);
    }
}
