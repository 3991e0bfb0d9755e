//! Per-stripe exclusive locks: a parity update or mirror write owns its stripe so no two
//! writers compute parity from each other's half-written data. Sharded to keep contention low.

use std::collections::HashSet;
use std::sync::{Condvar, Mutex, MutexGuard};

const SHARDS: usize = 64;

struct Shard {
    held: Mutex<HashSet<u64>>,
    freed: Condvar,
}

/// The lock table.
pub struct StripeLocks {
    shards: Vec<Shard>,
}

/// Holds one stripe until dropped.
pub struct StripeGuard<'a> {
    locks: &'a StripeLocks,
    stripe: u64,
}

fn lock_set(m: &Mutex<HashSet<u64>>) -> MutexGuard<'_, HashSet<u64>> {
    // A panic while holding the set cannot leave it inconsistent (insert/remove are atomic).
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Default for StripeLocks {
    fn default() -> Self {
        StripeLocks {
            shards: (0..SHARDS).map(|_| Shard { held: Mutex::new(HashSet::new()), freed: Condvar::new() }).collect(),
        }
    }
}

impl StripeLocks {
    fn shard(&self, stripe: u64) -> &Shard {
        &self.shards[(stripe % SHARDS as u64) as usize]
    }

    /// Blocks until `stripe` is free, then holds it.
    pub fn lock(&self, stripe: u64) -> StripeGuard<'_> {
        let shard = self.shard(stripe);
        let mut held = lock_set(&shard.held);
        while held.contains(&stripe) {
            held = shard.freed.wait(held).unwrap_or_else(|p| p.into_inner());
        }
        held.insert(stripe);
        StripeGuard { locks: self, stripe }
    }
}

impl Drop for StripeGuard<'_> {
    fn drop(&mut self) {
        let shard = self.locks.shard(self.stripe);
        lock_set(&shard.held).remove(&self.stripe);
        shard.freed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn one_holder_at_a_time() {
        let locks = Arc::new(StripeLocks::default());
        let inside = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (locks, inside) = (locks.clone(), inside.clone());
                std::thread::spawn(move || {
                    for _ in 0..2000 {
                        let _g = locks.lock(5);
                        assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0);
                        inside.fetch_sub(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }
}
