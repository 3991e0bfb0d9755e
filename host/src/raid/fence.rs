//! The process's permission to write members: the fence a controller puts up around itself.
//!
//! A controller on a lease (see `cluster/lease`) may write the members only until its lease
//! runs out, and never once it fenced itself: the survivors take over its lines and its
//! stripes after that, and a late write of its would land over theirs. Every member write of
//! this process passes [`WriteGate::enter`], which refuses once the gate is closed or the
//! lease's deadline has passed, measured on the monotonic clock at the moment of the write: a
//! controller that was paused (SIGSTOP, a VM stall) and resumes refuses before anything else
//! of it runs, without waiting for its lease thread to notice. Writes in flight are counted, so
//! the fence can wait for them to end before it tells the others it stopped.
//!
//! One gate per process: a process is one controller, and being fenced is a property of the
//! process. Without a lease (one controller, the tools) the deadline never comes.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The exit status of a controller that fenced itself.
pub const FENCED_EXIT_CODE: i32 = 3;

/// The gate every member write of this process passes.
pub static GATE: WriteGate = WriteGate::new();

/// When this process's monotonic clock started (nanoseconds are counted from it).
fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

/// Nanoseconds on the process's monotonic clock.
pub fn now_ns() -> u64 {
    base().elapsed().as_nanos() as u64
}

/// The monotonic instant `t` in the gate's nanoseconds.
pub fn instant_ns(t: Instant) -> u64 {
    t.saturating_duration_since(base()).as_nanos() as u64
}

/// A permission to write, with a deadline and a count of the writes inside.
#[derive(Debug)]
pub struct WriteGate {
    closed: AtomicBool,
    /// Writes are allowed before this (gate nanoseconds); u64::MAX: no lease.
    valid_until_ns: AtomicU64,
    inflight: AtomicU64,
    refused: AtomicU64,
}

/// A write inside the gate; dropping it ends the write.
#[derive(Debug)]
pub struct Pass<'a>(&'a WriteGate);

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, SeqCst);
    }
}

impl WriteGate {
    /// An open gate without a deadline.
    pub const fn new() -> WriteGate {
        WriteGate {
            closed: AtomicBool::new(false),
            valid_until_ns: AtomicU64::new(u64::MAX),
            inflight: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// Lets a write in, or says why not. The count goes up before the check, so a fence that
    /// closes the gate and then sees no write inside knows none will start.
    pub fn enter(&self) -> Result<Pass<'_>, &'static str> {
        self.inflight.fetch_add(1, SeqCst);
        let pass = Pass(self);
        if self.closed.load(SeqCst) {
            self.refused.fetch_add(1, SeqCst);
            return Err("this controller fenced itself: it no longer writes the members");
        }
        if now_ns() >= self.valid_until_ns.load(SeqCst) {
            self.refused.fetch_add(1, SeqCst);
            return Err("this controller's lease ran out: it no longer writes the members");
        }
        Ok(pass)
    }

    /// Whether a write would be let in now (the loop asks before it answers a host).
    pub fn open(&self) -> bool {
        !self.closed.load(SeqCst) && now_ns() < self.valid_until_ns.load(SeqCst)
    }

    /// Moves the deadline (a renewal); never past a closed gate.
    pub fn extend_to(&self, until_ns: u64) {
        self.valid_until_ns.store(until_ns, SeqCst);
    }

    /// Closes the gate for good and waits up to `wait` for the writes inside to end. Returns
    /// whether none is left (only then may the others be told that this controller stopped).
    pub fn close(&self, wait: Duration) -> bool {
        self.closed.store(true, SeqCst);
        let deadline = Instant::now() + wait;
        while self.inflight.load(SeqCst) != 0 {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    /// The deadline (gate nanoseconds; u64::MAX without a lease).
    pub fn deadline_ns(&self) -> u64 {
        self.valid_until_ns.load(SeqCst)
    }

    /// Whether a lease gives the gate a deadline.
    pub fn leased(&self) -> bool {
        self.valid_until_ns.load(SeqCst) != u64::MAX
    }

    /// Whether the gate was closed.
    pub fn closed(&self) -> bool {
        self.closed.load(SeqCst)
    }

    /// Writes refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(SeqCst)
    }
}

impl Default for WriteGate {
    fn default() -> Self {
        WriteGate::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gate_refuses_after_its_deadline_and_once_closed() {
        let g = WriteGate::new();
        assert!(g.enter().is_ok(), "no lease: open");
        g.extend_to(now_ns() + 50_000_000);
        assert!(g.enter().is_ok() && g.open());
        std::thread::sleep(Duration::from_millis(60));
        assert!(g.enter().is_err(), "the deadline passed while nothing ran (a pause)");
        assert!(!g.open());
        g.extend_to(now_ns() + 1_000_000_000);
        assert!(g.enter().is_ok(), "renewed");
        assert_eq!(g.refused(), 1);
    }

    #[test]
    fn a_close_waits_for_the_writes_inside() {
        let g = std::sync::Arc::new(WriteGate::new());
        let inside = g.enter().map_err(|e| e.to_string());
        assert!(inside.is_ok());
        assert!(!g.close(Duration::from_millis(20)), "a write is still inside");
        assert!(g.enter().is_err(), "closed: nothing new gets in");
        drop(inside);
        assert!(g.close(Duration::from_millis(20)));
        assert!(g.closed());
    }
}
