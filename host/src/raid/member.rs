//! One member disk: a regular file or a block device, accessed with positional I/O.

use super::RaidError;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// An open member.
#[derive(Debug)]
pub struct Member {
    path: PathBuf,
    file: File,
    size: u64,
}

impl Member {
    /// Opens an existing file or block device read-write.
    pub fn open(path: &Path) -> Result<Member, RaidError> {
        let open_err = |source| RaidError::OpenMember { path: path.to_path_buf(), source };
        let mut file = OpenOptions::new().read(true).write(true).open(path).map_err(open_err)?;
        // Seeking to the end gives the size of block devices as well as files.
        let size = file.seek(SeekFrom::End(0)).map_err(open_err)?;
        Ok(Member { path: path.to_path_buf(), file, size })
    }

    /// Creates (or truncates) a regular file of `size` bytes.
    pub fn create_file(path: &Path, size: u64) -> Result<Member, RaidError> {
        let err = |source| RaidError::OpenMember { path: path.to_path_buf(), source };
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path).map_err(err)?;
        file.set_len(size).map_err(err)?;
        Ok(Member { path: path.to_path_buf(), file, size })
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
        self.file.read_exact_at(buf, offset).map_err(|source| RaidError::ReadMember {
            path: self.path.clone(),
            offset,
            source,
        })
    }

    /// Writes all of `buf` at `offset`.
    pub fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), RaidError> {
        self.file.write_all_at(buf, offset).map_err(|source| RaidError::WriteMember {
            path: self.path.clone(),
            offset,
            source,
        })
    }

    /// Writes `buf` at `offset` and makes that range durable before returning (a FUA write):
    /// pwritev2 with RWF_DSYNC syncs only this range, where fdatasync would flush every dirty
    /// page of the member. Used for superblocks and write-intent bits, which must be on stable
    /// storage before the data they cover is written.
    pub fn write_durable(&self, offset: u64, buf: &[u8]) -> Result<(), RaidError> {
        use std::os::unix::io::AsRawFd;
        let iov = libc::iovec { iov_base: buf.as_ptr() as *mut libc::c_void, iov_len: buf.len() };
        // SAFETY: iov points at `buf`, valid for its length for the duration of the call; the
        // kernel only reads it. The descriptor is owned by self.file.
        let n = unsafe { libc::pwritev2(self.file.as_raw_fd(), &iov, 1, offset as libc::off_t, libc::RWF_DSYNC) };
        if n == buf.len() as isize {
            return Ok(());
        }
        // Kernels or filesystems without RWF_DSYNC (or a short write): the portable way.
        self.write_at(offset, buf)?;
        self.sync()
    }

    /// fdatasync: everything written so far survives power loss.
    pub fn sync(&self) -> Result<(), RaidError> {
        self.file.sync_data().map_err(|source| RaidError::SyncMember { path: self.path.clone(), source })
    }
}
