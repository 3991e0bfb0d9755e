//! Parity kernels: P (XOR) and Q (Reed-Solomon syndrome over GF(2^8), poly 0x11d, g = 2),
//! bit-exact with Linux `lib/raid6` and ISA-L. Hand-written AVX-512BW and AVX2 kernels are chosen
//! at run time; the portable kernel is the fallback and finishes every SIMD kernel's tail.

pub mod gf256;
mod portable;
pub mod recover;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;

use serde::Serialize;
use std::sync::OnceLock;

/// One implementation of the parity kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kernel {
    /// 64-bit words, any CPU.
    Portable,
    /// 32-byte AVX2 vectors.
    Avx2,
    /// 64-byte AVX-512BW vectors.
    Avx512,
}

/// This core's L2 size in bytes (sysfs, then sysconf; 1 MiB when neither says), read once.
pub fn l2_bytes() -> usize {
    static L2: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *L2.get_or_init(|| {
        let sysfs = std::fs::read_to_string("/sys/devices/system/cpu/cpu0/cache/index2/size").ok().and_then(|s| {
            let s = s.trim();
            let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
            let n: usize = n.parse().ok()?;
            Some(match unit {
                "K" => n << 10,
                "M" => n << 20,
                _ => n,
            })
        });
        // SAFETY: sysconf only reads system configuration.
        let conf = unsafe { libc::sysconf(libc::_SC_LEVEL2_CACHE_SIZE) };
        sysfs.filter(|&n| n > 0).or((conf > 0).then_some(conf as usize)).unwrap_or(1 << 20)
    })
}

impl Kernel {
    /// The fastest kernel this CPU runs (detected once).
    pub fn detect() -> Kernel {
        static BEST: OnceLock<Kernel> = OnceLock::new();
        *BEST.get_or_init(|| *Kernel::available().last().unwrap_or(&Kernel::Portable))
    }

    /// Every kernel this CPU can run, slowest first.
    pub fn available() -> Vec<Kernel> {
        let mut v = vec![Kernel::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                v.push(Kernel::Avx2);
            }
            if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bw") {
                v.push(Kernel::Avx512);
            }
        }
        v
    }

    /// Short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Portable => "portable",
            Kernel::Avx2 => "avx2",
            Kernel::Avx512 => "avx512",
        }
    }

    /// `p = data[0] ^ data[1] ^ ...`. Every data slice must be as long as `p`.
    pub fn xor_gen(self, data: &[&[u8]], p: &mut [u8]) {
        assert!(data.iter().all(|d| d.len() == p.len()), "parity: unequal lengths");
        if data.is_empty() {
            p.fill(0);
            return;
        }
        let done = match self {
            Kernel::Portable => 0,
            // SAFETY: the kernel is only constructed after run-time detection of its CPU features
            // (or by `available()`), and the lengths were checked above.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { avx2::xor_gen(data, p) },
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => unsafe { avx512::xor_gen(data, p) },
            #[cfg(not(target_arch = "x86_64"))]
            _ => 0,
        };
        portable::xor_gen_from(data, p, done);
    }

    /// P and Q of `data` (data index i has coefficient g^i in Q).
    pub fn pq_gen(self, data: &[&[u8]], p: &mut [u8], q: &mut [u8]) {
        assert!(data.iter().all(|d| d.len() == p.len()) && q.len() == p.len(), "parity: unequal lengths");
        let done = match self {
            Kernel::Portable => 0,
            // SAFETY: as in `xor_gen`: features detected, lengths checked.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { avx2::pq_gen(data, p, q) },
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => unsafe { avx512::pq_gen(data, p, q) },
            #[cfg(not(target_arch = "x86_64"))]
            _ => 0,
        };
        portable::pq_gen_from(data, p, q, done);
    }

    /// `dst ^= c * src` in GF(2^8).
    pub fn mul_acc(self, c: u8, src: &[u8], dst: &mut [u8]) {
        assert_eq!(src.len(), dst.len(), "parity: unequal lengths");
        let done = match self {
            Kernel::Portable => 0,
            // SAFETY: AVX2 detected (AVX-512 CPUs have AVX2); lengths checked.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 | Kernel::Avx512 => unsafe { avx2::mul_acc(c, src, dst) },
            #[cfg(not(target_arch = "x86_64"))]
            _ => 0,
        };
        gf256::mul_acc(c, &src[done..], &mut dst[done..]);
    }
}

/// A zeroed, 64-byte-aligned byte buffer (SIMD- and O_DIRECT-friendly).
pub struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like Vec<u8>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only hands out &[u8].
unsafe impl Sync for AlignedBuf {}

const BUF_ALIGN: usize = 4096;
/// Buffers kept per thread for reuse, and the largest buffer kept.
const POOL_BUFFERS_MAX: usize = 64;
const POOL_BUF_BYTES_MAX: usize = 4 << 20;

/// An allocation parked in the per-thread pool (freed if the thread exits).
struct Parked {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

impl Drop for Parked {
    fn drop(&mut self) {
        // SAFETY: allocated by AlignedBuf with this layout; ownership passed to the pool.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), AlignedBuf::layout(self.len)) }
    }
}

thread_local! {
    static POOL: std::cell::RefCell<Vec<Parked>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes.
    pub fn zeroed(len: usize) -> AlignedBuf {
        match Self::reuse(len) {
            Some(mut b) => {
                b.fill(0);
                b
            }
            None => Self::fresh(len),
        }
    }

    /// A buffer of `len` bytes whose contents are unspecified (reused from this thread's pool
    /// when possible): for buffers that are overwritten completely before being read. The I/O
    /// path allocates several per stripe; reuse saves the allocation and the zeroing.
    pub fn scratch(len: usize) -> AlignedBuf {
        Self::reuse(len).unwrap_or_else(|| Self::fresh(len))
    }

    fn reuse(len: usize) -> Option<AlignedBuf> {
        POOL.try_with(|p| {
            let mut p = p.borrow_mut();
            let i = p.iter().position(|b| b.len == len)?;
            let parked = p.swap_remove(i);
            let b = AlignedBuf { ptr: parked.ptr, len: parked.len };
            std::mem::forget(parked);
            Some(b)
        })
        .ok()
        .flatten()
    }

    fn fresh(len: usize) -> AlignedBuf {
        if len == 0 {
            return AlignedBuf { ptr: std::ptr::NonNull::dangling(), len: 0 };
        }
        let layout = Self::layout(len);
        // SAFETY: layout has non-zero size.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = std::ptr::NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, len }
    }

    fn layout(len: usize) -> std::alloc::Layout {
        match std::alloc::Layout::from_size_align(len, BUF_ALIGN) {
            Ok(l) => l,
            Err(_) => panic!("buffer of {len} bytes cannot be laid out"),
        }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if self.len == 0 {
            return;
        }
        let parked = Parked { ptr: self.ptr, len: self.len };
        // Park for reuse; a full pool (or a thread being torn down) frees it instead.
        let _ = POOL.try_with(|p| {
            let mut p = p.borrow_mut();
            if p.len() < POOL_BUFFERS_MAX && parked.len <= POOL_BUF_BYTES_MAX {
                p.push(Parked { ptr: parked.ptr, len: parked.len });
                std::mem::forget(parked);
            }
        });
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr is valid for len bytes (or dangling with len 0) and initialised (zeroed).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in Deref, and &mut self guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::SmallRng, RngCore, SeedableRng};

    fn random_bufs(rng: &mut SmallRng, n: usize, len: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|_| {
                let mut v = vec![0u8; len];
                rng.fill_bytes(&mut v);
                v
            })
            .collect()
    }

    #[test]
    fn every_kernel_matches_portable_on_odd_lengths() {
        let mut rng = SmallRng::seed_from_u64(7);
        for len in [0usize, 1, 7, 31, 33, 63, 64, 65, 255, 257, 1000, 4096, 4097, 12345] {
            for n in [1usize, 2, 3, 5, 16] {
                let data = random_bufs(&mut rng, n, len);
                let refs: Vec<&[u8]> = data.iter().map(|d| d.as_slice()).collect();
                let (mut p0, mut q0) = (vec![0u8; len], vec![0u8; len]);
                Kernel::Portable.pq_gen(&refs, &mut p0, &mut q0);
                // Q by definition: sum of g^i * D_i.
                let mut q_def = vec![0u8; len];
                for (i, d) in refs.iter().enumerate() {
                    gf256::mul_acc(gf256::exp(i), d, &mut q_def);
                }
                assert_eq!(q0, q_def, "portable Q, len {len} n {n}");
                for k in Kernel::available() {
                    let (mut p, mut q, mut x) = (vec![1u8; len], vec![2u8; len], vec![3u8; len]);
                    k.pq_gen(&refs, &mut p, &mut q);
                    k.xor_gen(&refs, &mut x);
                    assert_eq!(p, p0, "{k:?} P len {len} n {n}");
                    assert_eq!(q, q0, "{k:?} Q len {len} n {n}");
                    assert_eq!(x, p0, "{k:?} XOR len {len} n {n}");
                    let mut acc = vec![0u8; len];
                    k.mul_acc(0x53, refs[0], &mut acc);
                    let mut want = vec![0u8; len];
                    gf256::mul_acc(0x53, refs[0], &mut want);
                    assert_eq!(acc, want, "{k:?} mul_acc len {len}");
                }
            }
        }
    }
}
