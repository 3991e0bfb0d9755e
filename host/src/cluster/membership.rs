//! Who is in the cluster: the proof that a controller is dead, which the survivors need before
//! they take over from it (a controller that is only slow or cut off still serves what it
//! holds, so taking over from it would put two controllers on one line).
//!
//! The proof used here is the kernel's: every controller holds an exclusive lock on
//! `DIR/amf-controller-N.lock` for as long as its process lives, and the kernel releases it
//! only when the process is gone, after every I/O it issued has returned. A peer that can take
//! the lock knows the controller is dead. That holds for controllers on one host (the demo,
//! CI, and file-backed members); controllers on separate hosts need the proof from a lease on
//! the members that a controller renews and that lapses only after it stopped writing (see
//! docs/protocol.md), or from a fence agent that powers the controller off.

use super::dirlock::open;
use super::ClusterError;
use crate::amf::shell::DeathWatch;
use std::fs::{File, OpenOptions};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// Path of controller `node`'s life lock.
pub fn life_lock_path(dir: &Path, node: u8) -> PathBuf {
    dir.join(format!("amf-controller-{node}.lock"))
}

/// Controller `node`'s life lock, held until the process ends.
#[derive(Debug)]
pub struct LifeLock {
    _file: File,
}

impl LifeLock {
    /// Takes the lock; fails if a live process holds it (controller `node` runs already).
    pub fn take(dir: &Path, node: u8) -> Result<LifeLock, ClusterError> {
        let path = life_lock_path(dir, node);
        let file = open(&path)?;
        // SAFETY: flock on a descriptor we own; no memory is involved.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(ClusterError::Locked {
                    dir: dir.to_path_buf(),
                    holder: format!("controller {node} runs already (it holds {})", path.display()),
                });
            }
            return Err(ClusterError::File { path, source: err });
        }
        Ok(LifeLock { _file: file })
    }
}

/// Watches the peers' life locks: a lock that can be taken belongs to a dead controller.
pub struct LifeLocks {
    dir: PathBuf,
    peers: Vec<(u8, Option<File>)>,
}

impl LifeLocks {
    /// Watches `peers` of the group in `dir`.
    pub fn new(dir: &Path, peers: &[u8]) -> LifeLocks {
        LifeLocks { dir: dir.to_path_buf(), peers: peers.iter().map(|p| (*p, None)).collect() }
    }
}

impl DeathWatch for LifeLocks {
    fn dead(&mut self) -> u8 {
        let mut dead = 0u8;
        for (p, file) in self.peers.iter_mut() {
            if file.is_none() {
                // No file yet: the peer never started, which proves nothing (the start barrier
                // waits for it). Open without creating.
                *file = OpenOptions::new().write(true).open(life_lock_path(&self.dir, *p)).ok();
            }
            let Some(f) = file.as_ref() else { continue };
            // SAFETY: flock on a descriptor we own; no memory is involved.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                // Let go at once: a restarted controller takes it again.
                // SAFETY: as above.
                unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_UN) };
                dead |= 1 << *p;
            }
        }
        dead
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_held_is_alive_and_a_released_one_is_dead() {
        let dir = tempfile::tempdir().unwrap();
        let held = LifeLock::take(dir.path(), 1).unwrap();
        assert!(LifeLock::take(dir.path(), 1).is_err(), "one process per controller");
        let mut watch = LifeLocks::new(dir.path(), &[1, 2]);
        assert_eq!(watch.dead(), 0, "1 holds its lock; 2 never started: no proof");
        drop(held);
        assert_eq!(watch.dead(), 1 << 1);
        // The watcher let go: the controller can start again.
        let again = LifeLock::take(dir.path(), 1).unwrap();
        assert_eq!(watch.dead(), 0);
        drop(again);
    }
}
