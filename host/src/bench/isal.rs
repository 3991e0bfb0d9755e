//! ISA-L's `xor_gen` and `pq_gen`, loaded at run time from libisal (Debian: libisal2 /
//! libisal-dev). The peer that our parity kernels are checked and benchmarked against; never
//! used on the I/O path, so the `amf` binary does not link it.

use libloading::{Library, Symbol};
use std::ffi::{c_int, c_void};

type GenFn = unsafe extern "C" fn(c_int, c_int, *mut *mut c_void) -> c_int;

/// ISA-L could not be used.
#[derive(Debug, thiserror::Error)]
pub enum IsalError {
    /// The shared library is not installed.
    #[error("cannot load ISA-L (install libisal-dev): {0}")]
    Load(#[source] libloading::Error),
    /// A buffer violates ISA-L's alignment or length rules.
    #[error("ISA-L needs 32-byte aligned buffers of equal length, a multiple of 32: {0}")]
    Shape(&'static str),
    /// ISA-L returned failure.
    #[error("ISA-L {0} returned {1}")]
    Failed(&'static str, c_int),
}

/// The loaded library.
pub struct Isal {
    xor: GenFn,
    pq: GenFn,
    _lib: Library,
}

impl Isal {
    /// Loads libisal.
    pub fn load() -> Result<Isal, IsalError> {
        let mut last = None;
        for name in ["libisal.so.2", "libisal.so"] {
            // SAFETY: loading libisal runs no initialisers with preconditions; the symbols are
            // plain C functions with the signature declared in isa-l/raid.h.
            match unsafe { Library::new(name) } {
                Ok(lib) => unsafe {
                    let xor: Symbol<GenFn> = lib.get(b"xor_gen\0").map_err(IsalError::Load)?;
                    let pq: Symbol<GenFn> = lib.get(b"pq_gen\0").map_err(IsalError::Load)?;
                    let (xor, pq) = (*xor, *pq);
                    return Ok(Isal { xor, pq, _lib: lib });
                },
                Err(e) => last = Some(e),
            }
        }
        Err(IsalError::Load(last.unwrap_or(libloading::Error::DlOpenUnknown)))
    }

    fn call(&self, f: GenFn, name: &'static str, bufs: Vec<*mut c_void>, len: usize) -> Result<(), IsalError> {
        if !len.is_multiple_of(32) || bufs.iter().any(|p| !(*p as usize).is_multiple_of(32)) {
            return Err(IsalError::Shape(name));
        }
        let len = c_int::try_from(len).map_err(|_| IsalError::Shape(name))?;
        let mut bufs = bufs;
        // SAFETY: every pointer addresses `len` valid bytes (checked by the callers), aligned as
        // ISA-L requires (checked above); ISA-L writes only the destination buffers, which the
        // callers hold as &mut.
        let rc = unsafe { f(bufs.len() as c_int, len, bufs.as_mut_ptr()) };
        if rc != 0 {
            return Err(IsalError::Failed(name, rc));
        }
        Ok(())
    }

    /// `p = XOR of data`.
    pub fn xor_gen(&self, data: &[&[u8]], p: &mut [u8]) -> Result<(), IsalError> {
        if data.is_empty() || data.iter().any(|d| d.len() != p.len()) {
            return Err(IsalError::Shape("xor_gen"));
        }
        let mut v: Vec<*mut c_void> = data.iter().map(|d| d.as_ptr() as *mut c_void).collect();
        v.push(p.as_mut_ptr() as *mut c_void);
        self.call(self.xor, "xor_gen", v, p.len())
    }

    /// P and Q of `data`.
    pub fn pq_gen(&self, data: &[&[u8]], p: &mut [u8], q: &mut [u8]) -> Result<(), IsalError> {
        if data.len() < 2 || q.len() != p.len() || data.iter().any(|d| d.len() != p.len()) {
            return Err(IsalError::Shape("pq_gen"));
        }
        let mut v: Vec<*mut c_void> = data.iter().map(|d| d.as_ptr() as *mut c_void).collect();
        v.push(p.as_mut_ptr() as *mut c_void);
        v.push(q.as_mut_ptr() as *mut c_void);
        self.call(self.pq, "pq_gen", v, p.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raid::parity::{AlignedBuf, Kernel};
    use rand::{rngs::SmallRng, RngCore, SeedableRng};

    /// Every kernel is bit-exact with ISA-L on random data. ISA-L takes lengths in multiples of
    /// 32; odd lengths are checked by padding ISA-L's buffers with zeros (parity is bytewise).
    #[test]
    fn every_kernel_is_bit_exact_with_isal() {
        let isal = Isal::load().expect("libisal must be installed for this test (apt-get install libisal-dev)");
        let mut rng = SmallRng::seed_from_u64(2024);
        for len in [32usize, 64, 96, 224, 4096, 4096 + 32, 65536 + 96, 1, 7, 33, 1000, 4097, 12345] {
            let padded = len.div_ceil(32) * 32;
            for n in [2usize, 3, 4, 5, 8, 16, 24].into_iter().filter(|&n| len < 262144 || n <= 5) {
                let data: Vec<AlignedBuf> = (0..n)
                    .map(|_| {
                        let mut b = AlignedBuf::zeroed(padded);
                        rng.fill_bytes(&mut b[..len]);
                        b
                    })
                    .collect();
                let refs: Vec<&[u8]> = data.iter().map(|d| &d[..]).collect();
                let (mut ip, mut iq, mut ix) =
                    (AlignedBuf::zeroed(padded), AlignedBuf::zeroed(padded), AlignedBuf::zeroed(padded));
                isal.pq_gen(&refs, &mut ip, &mut iq).unwrap();
                isal.xor_gen(&refs, &mut ix).unwrap();
                let short: Vec<&[u8]> = data.iter().map(|d| &d[..len]).collect();
                for k in Kernel::available() {
                    // 64-byte aligned outputs, so the non-temporal store path of large buffers runs too.
                    let (mut p, mut q, mut x) =
                        (AlignedBuf::zeroed(len), AlignedBuf::zeroed(len), AlignedBuf::zeroed(len));
                    k.pq_gen(&short, &mut p, &mut q);
                    k.xor_gen(&short, &mut x);
                    assert!(p[..] == ip[..len], "{k:?} P differs from ISA-L, len {len}, n {n}");
                    assert!(q[..] == iq[..len], "{k:?} Q differs from ISA-L, len {len}, n {n}");
                    assert!(x[..] == ix[..len], "{k:?} XOR differs from ISA-L, len {len}, n {n}");
                }
            }
        }
    }

    #[test]
    fn misaligned_buffers_are_refused_not_passed_to_isal() {
        let isal = Isal::load().expect("libisal");
        let a = AlignedBuf::zeroed(96);
        let mut p = AlignedBuf::zeroed(96);
        let refs: [&[u8]; 2] = [&a[1..65], &a[1..65]];
        assert!(matches!(isal.xor_gen(&refs, &mut p[..64]), Err(IsalError::Shape(_))));
    }
}
