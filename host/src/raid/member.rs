//! One member disk: a regular file or a block device, accessed with positional I/O through the
//! [`MemberIo`] trait so that a fault layer ([`super::faults`]) can stand between the engine and
//! the device.

use super::faults::{FaultPlan, FaultyIo};
use super::power_loss::VolatileCaches;
use super::RaidError;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Positional I/O on one member device. Every call may fail; the engine treats any failure as a
/// failure of that member.
pub trait MemberIo: Send + Sync + std::fmt::Debug {
    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()>;
    /// Writes all of `buf` at `offset`.
    fn write_at(&self, offset: u64, buf: &[u8]) -> std::io::Result<()>;
    /// Writes all of `buf` at `offset` and makes that range durable before returning.
    fn write_durable(&self, offset: u64, buf: &[u8]) -> std::io::Result<()>;
    /// Everything written so far survives power loss.
    fn sync(&self) -> std::io::Result<()>;
    /// Device and inode of the open file, to tell whether its path still names it.
    fn identity(&self) -> std::io::Result<(u64, u64)>;
}

/// A member that is a file or block device.
#[derive(Debug)]
pub struct FileIo(File);

impl FileIo {
    /// I/O on an open file or block device.
    pub fn new(file: File) -> FileIo {
        FileIo(file)
    }
}

impl MemberIo for FileIo {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.0.read_exact_at(buf, offset)
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> std::io::Result<()> {
        self.0.write_all_at(buf, offset)
    }

    /// pwritev2 with RWF_DSYNC syncs only this range, where fdatasync would flush every dirty
    /// page of the member. Used for superblocks and write-intent bits, which must be on stable
    /// storage before the data they cover is written.
    fn write_durable(&self, offset: u64, buf: &[u8]) -> std::io::Result<()> {
        use std::os::unix::io::AsRawFd;
        let iov = libc::iovec { iov_base: buf.as_ptr() as *mut libc::c_void, iov_len: buf.len() };
        // SAFETY: iov points at `buf`, valid for its length for the duration of the call; the
        // kernel only reads it. The descriptor is owned by self.0.
        let n = unsafe { libc::pwritev2(self.0.as_raw_fd(), &iov, 1, offset as libc::off_t, libc::RWF_DSYNC) };
        if n == buf.len() as isize {
            return Ok(());
        }
        // Kernels or filesystems without RWF_DSYNC (or a short write): the portable way.
        self.0.write_all_at(buf, offset)?;
        self.0.sync_data()
    }

    fn sync(&self) -> std::io::Result<()> {
        self.0.sync_data()
    }

    fn identity(&self) -> std::io::Result<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        let m = self.0.metadata()?;
        Ok((m.dev(), m.ino()))
    }
}

/// An open member.
#[derive(Debug)]
pub struct Member {
    path: PathBuf,
    io: Arc<dyn MemberIo>,
    size: u64,
}

impl Member {
    /// Opens an existing file or block device read-write.
    pub fn open(path: &Path) -> Result<Member, RaidError> {
        let open_err = |source| RaidError::OpenMember { path: path.to_path_buf(), source };
        let mut file = OpenOptions::new().read(true).write(true).open(path).map_err(open_err)?;
        // Seeking to the end gives the size of block devices as well as files.
        let size = file.seek(SeekFrom::End(0)).map_err(open_err)?;
        Ok(Member { path: path.to_path_buf(), io: Arc::new(FileIo(file)), size })
    }

    /// Creates (or truncates) a regular file of `size` bytes.
    pub fn create_file(path: &Path, size: u64) -> Result<Member, RaidError> {
        let err = |source| RaidError::OpenMember { path: path.to_path_buf(), source };
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path).map_err(err)?;
        file.set_len(size).map_err(err)?;
        Ok(Member { path: path.to_path_buf(), io: Arc::new(FileIo(file)), size })
    }

    /// The same device seen through `plan`'s fault layer as member `index` of the plan.
    pub fn with_faults(&self, plan: &Arc<FaultPlan>, index: usize) -> Member {
        let io = FaultyIo::new(self.io.clone(), plan.clone(), index);
        Member { path: self.path.clone(), io: Arc::new(io), size: self.size }
    }

    /// The same device seen through its volatile write cache in `caches` (member `index`):
    /// a power cut there loses what was not flushed.
    pub fn with_volatile_cache(&self, caches: &Arc<VolatileCaches>, index: usize) -> Member {
        Member { path: self.path.clone(), io: caches.wrap(self.io.clone(), index), size: self.size }
    }

    /// Path the member was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Reads exactly `buf.len()` bytes at `offset`.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), RaidError> {
        self.io.read_at(offset, buf).map_err(|source| RaidError::ReadMember { path: self.path.clone(), offset, source })
    }

    /// Writes all of `buf` at `offset`.
    pub fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), RaidError> {
        let _pass = self.fence_pass(offset)?;
        self.io.write_at(offset, buf).map_err(|source| RaidError::WriteMember {
            path: self.path.clone(),
            offset,
            source,
        })
    }

    /// Writes `buf` at `offset` and makes that range durable before returning (a FUA write).
    pub fn write_durable(&self, offset: u64, buf: &[u8]) -> Result<(), RaidError> {
        let _pass = self.fence_pass(offset)?;
        self.io.write_durable(offset, buf).map_err(|source| RaidError::WriteMember {
            path: self.path.clone(),
            offset,
            source,
        })
    }

    /// The process's permission for one write (see [`super::fence`]).
    fn fence_pass(&self, offset: u64) -> Result<super::fence::Pass<'static>, RaidError> {
        super::fence::GATE.enter().map_err(|why| RaidError::WriteMember {
            path: self.path.clone(),
            offset,
            source: std::io::Error::new(std::io::ErrorKind::PermissionDenied, why),
        })
    }

    /// fdatasync: everything written so far survives power loss.
    pub fn sync(&self) -> Result<(), RaidError> {
        self.io.sync().map_err(|source| RaidError::SyncMember { path: self.path.clone(), source })
    }

    /// Checks that the member is still there: its path names the file that is open (a member
    /// file deleted or replaced while running still answers through the open descriptor, and
    /// would be gone at the next start) and its first block reads.
    pub fn check(&self) -> Result<(), RaidError> {
        use std::os::unix::fs::MetadataExt;
        let gone = |what: String| RaidError::ReadMember {
            path: self.path.clone(),
            offset: 0,
            source: std::io::Error::new(std::io::ErrorKind::NotFound, what),
        };
        let open = self.io.identity().map_err(|source| RaidError::ReadMember {
            path: self.path.clone(),
            offset: 0,
            source,
        })?;
        match std::fs::metadata(&self.path) {
            Ok(m) if (m.dev(), m.ino()) == open => {}
            Ok(_) => return Err(gone("the member path now names another file".into())),
            Err(e) => return Err(gone(format!("the member file is gone: {e}"))),
        }
        let mut block = [0u8; 512];
        self.read_at(0, &mut block)
    }
}
