//! The one place that calls into Verilated models: a handle over a shim's new/cycle/free
//! functions. Every top's shim (csrc/*_shim.cpp) exports those three with a #[repr(C)] I/O
//! struct; wrappers hold a `Sim<Io>` and stay free of unsafe code.

use std::ffi::c_void;
use std::marker::PhantomData;

/// Shim function types.
pub(crate) type NewFn = unsafe extern "C" fn() -> *mut c_void;
pub(crate) type FreeFn = unsafe extern "C" fn(*mut c_void);
pub(crate) type CycleFn<Io> = unsafe extern "C" fn(*mut c_void, *mut Io);

/// One Verilated model instance.
pub(crate) struct Sim<Io> {
    raw: *mut c_void,
    free: FreeFn,
    cycle: CycleFn<Io>,
    cycles: u64,
    _io: PhantomData<Io>,
}

// SAFETY: a Verilated model has no thread affinity (each shim call makes the model's own context
// current), and &mut self serialises every call.
unsafe impl<Io> Send for Sim<Io> {}

impl<Io> Sim<Io> {
    /// Builds a model with its shim's functions.
    ///
    /// # Safety
    /// `new`, `free` and `cycle` must come from one shim, and `Io` must be the #[repr(C)] mirror
    /// of that shim's I/O struct.
    pub(crate) unsafe fn new(new: NewFn, free: FreeFn, cycle: CycleFn<Io>) -> Sim<Io> {
        // SAFETY: the shim's constructor takes no arguments and returns an owned model.
        let raw = unsafe { new() };
        Sim { raw, free, cycle, cycles: 0, _io: PhantomData }
    }

    /// One clock cycle: applies `io`'s inputs, fills its outputs as seen before the edge, then
    /// clocks a rising and a falling edge.
    pub(crate) fn cycle(&mut self, io: &mut Io) {
        // SAFETY: raw is live until Drop, and Io matches the shim's struct (see `new`).
        unsafe { (self.cycle)(self.raw, io) }
        self.cycles += 1;
    }

    /// Cycles run.
    pub(crate) fn cycles(&self) -> u64 {
        self.cycles
    }
}

impl<Io> Drop for Sim<Io> {
    fn drop(&mut self) {
        // SAFETY: raw came from the shim's constructor and is freed exactly once.
        unsafe { (self.free)(self.raw) }
    }
}

/// A frame or descriptor as the little-endian words of a wide port (32 bytes: 8 words; a 48-byte
/// wire frame: 12). Bytes past the words are ignored, missing ones read as zero.
pub(crate) fn words<const N: usize>(b: &[u8]) -> [u32; N] {
    let byte = |i: usize| b.get(i).copied().unwrap_or(0);
    std::array::from_fn(|i| u32::from_le_bytes([byte(4 * i), byte(4 * i + 1), byte(4 * i + 2), byte(4 * i + 3)]))
}

/// The bytes of a wide port's words.
pub(crate) fn bytes<const B: usize>(w: &[u32]) -> [u8; B] {
    let mut b = [0u8; B];
    for (chunk, x) in b.chunks_mut(4).zip(w) {
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    b
}
