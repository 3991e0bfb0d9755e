//! Who drives a group directory: a flock on DIR/amf.lock, exclusive for one controller alone
//! or an offline maintenance command, shared by the controllers of a cluster (each assembles the
//! group itself); plus a status file naming a controller so maintenance commands can reach it
//! instead.

use super::ClusterError;
use std::fs::{File, OpenOptions};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// Held until dropped.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

/// Path of the lock file.
pub fn lock_path(dir: &Path) -> PathBuf {
    dir.join("amf.lock")
}

/// Path of the running controller's status file.
pub fn controller_file(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("controller-{index}.json"))
}

/// Opens (creating) a lock file.
pub(super) fn open(path: &Path) -> Result<File, ClusterError> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|source| ClusterError::File { path: path.to_path_buf(), source })
}

impl DirLock {
    /// Takes the lock, or says who holds it.
    pub fn acquire(dir: &Path) -> Result<DirLock, ClusterError> {
        match Self::try_acquire(dir)? {
            Some(l) => Ok(l),
            None => {
                let holder =
                    std::fs::read_to_string(controller_file(dir, 0)).unwrap_or_else(|_| "unknown process".into());
                Err(ClusterError::Locked { dir: dir.to_path_buf(), holder: holder.trim().to_string() })
            }
        }
    }

    /// Takes the lock shared (one of a cluster's controllers), or says who holds it
    /// exclusively.
    pub fn acquire_shared(dir: &Path) -> Result<DirLock, ClusterError> {
        match Self::take(dir, libc::LOCK_SH)? {
            Some(l) => Ok(l),
            None => Err(ClusterError::Locked {
                dir: dir.to_path_buf(),
                holder: "a process that holds it alone (one controller or an offline maintenance command)".into(),
            }),
        }
    }

    /// Waits for the group's superblock lock (DIR/amf-superblocks.lock, exclusive): the
    /// controllers of a cluster assemble, resync and close the group one at a time, so none
    /// reads the superblocks while another is writing them.
    pub fn superblocks(dir: &Path) -> Result<DirLock, ClusterError> {
        let path = dir.join("amf-superblocks.lock");
        let file = open(&path)?;
        // SAFETY: flock on a descriptor we own; no memory is involved.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(ClusterError::File { path, source: std::io::Error::last_os_error() });
        }
        Ok(DirLock { _file: file })
    }

    /// Takes the lock exclusively if nobody holds it.
    pub fn try_acquire(dir: &Path) -> Result<Option<DirLock>, ClusterError> {
        Self::take(dir, libc::LOCK_EX)
    }

    fn take(dir: &Path, how: libc::c_int) -> Result<Option<DirLock>, ClusterError> {
        let path = lock_path(dir);
        let file = open(&path)?;
        // SAFETY: flock on a descriptor we own; no memory is involved.
        let rc = unsafe { libc::flock(file.as_raw_fd(), how | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(Some(DirLock { _file: file }));
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Ok(None);
        }
        Err(ClusterError::File { path, source: err })
    }
}
