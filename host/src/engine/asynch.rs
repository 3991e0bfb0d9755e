//! Async face of the driver (tokio): `call` submits a command and resolves when its completion
//! arrives or its timeout passes. In-flight commands are bounded by a semaphore (back-pressure:
//! callers wait for a slot instead of failing), and one poller task owns the driver, reaping
//! completions and handing each to the caller waiting for its tag.

use super::{Backend, Driver, EngineError};
use amf_hdl_model::gen::structs::{Completion, Event, Opcode};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{oneshot, Semaphore};

type Waiters = Arc<Mutex<HashMap<u32, oneshot::Sender<Completion>>>>;

/// A driver shared by async callers.
pub struct AsyncDriver<B: Backend + 'static> {
    driver: Arc<Mutex<Driver<B>>>,
    waiters: Waiters,
    slots: Arc<Semaphore>,
    events: Arc<Mutex<Vec<(u32, Event)>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    poller: Option<tokio::task::JoinHandle<()>>,
    /// The poller's thread, unparked by every submission so a command never waits out an
    /// idle sleep.
    poller_thread: Arc<Mutex<Option<std::thread::Thread>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Time between polls when nothing is in flight.
const IDLE_POLL: Duration = Duration::from_millis(1);
/// With interrupts: the longest wait for one before the rings are looked at anyway.
const IRQ_FALLBACK: Duration = Duration::from_millis(10);

/// Resets the counter of `fd` (a non-blocking eventfd) that a poll found readable.
pub(crate) fn reset_interrupt(fd: std::os::fd::RawFd) {
    let mut count = [0u8; 8];
    // SAFETY: reading the 8-byte eventfd counter into a local buffer; the fd belongs to a
    // backend the caller holds (the controller's loop holds the driver that owns it), and is
    // non-blocking, so a counter already reset makes this fail harmlessly with EAGAIN.
    unsafe { libc::read(fd, count.as_mut_ptr() as *mut libc::c_void, count.len()) };
}

/// Waits until `fd` (an eventfd) is readable or `timeout` passes, then resets its counter.
/// True when it was signalled.
pub(crate) fn wait_interrupt(fd: std::os::fd::RawFd, timeout: Duration) -> bool {
    let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one pollfd on the stack, valid for the call; the fd belongs to a backend the
    // caller holds (the poller holds the driver that owns it; the shell's waiter a clone of
    // the card).
    let n = unsafe { libc::poll(&mut p, 1, timeout.as_millis().min(i32::MAX as u128) as i32) };
    if n > 0 {
        let mut count = [0u8; 8];
        // SAFETY: reading the 8-byte eventfd counter into a local buffer; the fd is
        // non-blocking, so a racing reader makes this fail harmlessly with EAGAIN.
        unsafe { libc::read(fd, count.as_mut_ptr() as *mut libc::c_void, count.len()) };
    }
    n > 0
}

impl<B: Backend + 'static> AsyncDriver<B> {
    /// Wraps an open driver; at most `in_flight` commands at once (below the ring size).
    pub fn new(driver: Driver<B>, in_flight: usize) -> AsyncDriver<B> {
        Self::with_fallback(driver, in_flight, IRQ_FALLBACK)
    }

    /// Like `new`; with an interrupt-driven backend the poller also looks at the rings every
    /// `fallback` without an interrupt (a lost interrupt costs that much latency, never a hang).
    pub fn with_fallback(driver: Driver<B>, in_flight: usize, fallback: Duration) -> AsyncDriver<B> {
        let driver = Arc::new(Mutex::new(driver));
        let waiters: Waiters = Arc::default();
        let events: Arc<Mutex<Vec<(u32, Event)>>> = Arc::default();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let poller_thread: Arc<Mutex<Option<std::thread::Thread>>> = Arc::default();
        let poller = {
            let (driver, waiters, events, stop) = (driver.clone(), waiters.clone(), events.clone(), stop.clone());
            let me = poller_thread.clone();
            tokio::task::spawn_blocking(move || {
                *lock(&me) = Some(std::thread::current());
                let irq = lock(&driver).backend().interrupt();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let busy = !lock(&waiters).is_empty();
                    if let (Some(fd), true) = (irq, busy) {
                        // Interrupt-driven: sleep until the card signals (or the fallback
                        // period passes), instead of spinning on the rings.
                        wait_interrupt(fd, fallback);
                    }
                    let done = {
                        let mut d = lock(&driver);
                        d.ack_interrupt();
                        d.poll();
                        let done = d.reap().unwrap_or_default();
                        // Under the driver lock: a `drain_events` caller that reads the ring
                        // next must find these queued already.
                        lock(&events).extend(d.events_indexed().unwrap_or_default());
                        done
                    };
                    let mut w = lock(&waiters);
                    for c in done {
                        if let Some(tx) = w.remove(&c.tag) {
                            let _ = tx.send(c);
                        }
                    }
                    drop(w);
                    if !busy {
                        std::thread::park_timeout(IDLE_POLL);
                    }
                }
            })
        };
        AsyncDriver {
            driver,
            waiters,
            slots: Arc::new(Semaphore::new(in_flight)),
            events,
            stop,
            poller: Some(poller),
            poller_thread,
        }
    }

    /// Submits a command and waits for its completion, at most `timeout`.
    pub async fn call(&self, opcode: Opcode, resource: u64, timeout: Duration) -> Result<Completion, EngineError> {
        let _slot = self.slots.acquire().await.map_err(|_| EngineError::NotReady)?;
        let (tx, rx) = oneshot::channel();
        let tag = {
            let mut d = lock(&self.driver);
            let tag = d.submit(opcode, resource)?;
            lock(&self.waiters).insert(tag, tx);
            tag
        };
        if let Some(t) = lock(&self.poller_thread).as_ref() {
            t.unpark();
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(c)) => Ok(c),
            _ => {
                lock(&self.waiters).remove(&tag);
                Err(EngineError::Timeout { tag, waited_ms: timeout.as_millis() as u64 })
            }
        }
    }

    /// Events reaped so far (taken).
    pub fn take_events(&self) -> Vec<Event> {
        std::mem::take(&mut *lock(&self.events)).into_iter().map(|(_, e)| e).collect()
    }

    /// Every event the card has written so far, in ring order: the poller's backlog and what
    /// is in the ring right now (read from host memory, no register access).
    /// Each comes with its position (see [`Driver::events_indexed`]).
    pub fn drain_events(&self) -> Result<Vec<(u32, Event)>, EngineError> {
        let mut d = lock(&self.driver);
        let fresh = d.events_indexed()?;
        let mut q = lock(&self.events);
        q.extend(fresh);
        Ok(std::mem::take(&mut *q))
    }

    /// Runs `f` on the driver (slow-path register access: status, counters).
    pub fn with_driver<T>(&self, f: impl FnOnce(&Driver<B>) -> T) -> T {
        f(&lock(&self.driver))
    }

    /// Stops the poller.
    pub async fn shutdown(mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(p) = self.poller.take() {
            let _ = p.await;
        }
    }
}

impl<B: Backend + 'static> Drop for AsyncDriver<B> {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
