//! The lease records' pages on the members, read and written beside the RAID engine with
//! handles of their own: O_DIRECT and O_DSYNC where the member's filesystem allows, so that
//! controllers on other hosts sharing a block device see each other's records and not a page
//! cache, and a renewal is on the device when it counts. A member that fails here is not
//! failed in the group (the engine decides that); it only does not carry this renewal.

use super::record::{Record, RECORD_BYTES};
use crate::raid::assemble::{LEASE_AREA_BYTES, LEASE_RECORD_BYTES};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Alignment of O_DIRECT buffers.
const ALIGN: usize = 4096;

struct Handle {
    file: File,
    direct: bool,
}

/// The lease pages of a group's members.
pub struct LeaseDisk {
    offset: u64,
    uuid: [u8; 16],
    handles: BTreeMap<PathBuf, Handle>,
}

/// A buffer of `len` bytes aligned for O_DIRECT, as (storage, start): no unsafe needed.
fn aligned(len: usize) -> (Vec<u8>, usize) {
    let v = vec![0u8; len + ALIGN];
    let at = v.as_ptr().align_offset(ALIGN).min(ALIGN);
    (v, at)
}

fn open(path: &Path, direct: bool) -> std::io::Result<File> {
    let flags = libc::O_DSYNC | if direct { libc::O_DIRECT } else { 0 };
    OpenOptions::new().read(true).write(true).custom_flags(flags).open(path)
}

impl LeaseDisk {
    /// The lease pages at `offset` of the members of group `uuid`.
    pub fn new(offset: u64, uuid: [u8; 16]) -> LeaseDisk {
        LeaseDisk { offset, uuid, handles: BTreeMap::new() }
    }

    /// Runs `io` on `path`'s handle, falling back to a handle without O_DIRECT where the
    /// filesystem refuses it (tmpfs; EINVAL at open or at the first I/O).
    fn with<T>(&mut self, path: &Path, mut io: impl FnMut(&File) -> std::io::Result<T>) -> std::io::Result<T> {
        if !self.handles.contains_key(path) {
            let (file, direct) = match open(path, true) {
                Ok(f) => (f, true),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => (open(path, false)?, false),
                Err(e) => return Err(e),
            };
            self.handles.insert(path.to_path_buf(), Handle { file, direct });
        }
        let Some(h) = self.handles.get(path) else { return Err(std::io::ErrorKind::NotFound.into()) };
        match io(&h.file) {
            Err(e) if h.direct && e.raw_os_error() == Some(libc::EINVAL) => {
                let file = open(path, false)?;
                let r = io(&file);
                self.handles.insert(path.to_path_buf(), Handle { file, direct: false });
                r
            }
            Err(e) => {
                // Open it again next time (a member file replaced or gone).
                self.handles.remove(path);
                Err(e)
            }
            ok => ok,
        }
    }

    /// Writes `rec` into its page on each of `paths`; returns how many took it.
    pub fn write(&mut self, paths: &[PathBuf], rec: &Record) -> usize {
        let (mut buf, at) = aligned(LEASE_RECORD_BYTES as usize);
        buf[at..at + RECORD_BYTES].copy_from_slice(&rec.encode(&self.uuid));
        let page = &buf[at..at + LEASE_RECORD_BYTES as usize];
        let where_ = self.offset + rec.node as u64 * LEASE_RECORD_BYTES;
        paths.iter().filter(|p| self.with(p, |f| f.write_all_at(page, where_)).is_ok()).count()
    }

    /// Every controller's newest record over `paths` (a record missing from a member that
    /// failed a renewal is found on the others).
    pub fn read(&mut self, paths: &[PathBuf]) -> [Option<Record>; 8] {
        let mut out: [Option<Record>; 8] = [None; 8];
        let (mut buf, at) = aligned(LEASE_AREA_BYTES as usize);
        for p in paths {
            let offset = self.offset;
            let area = &mut buf[at..at + LEASE_AREA_BYTES as usize];
            if self.with(p, |f| f.read_exact_at(area, offset)).is_err() {
                continue;
            }
            for (n, page) in area.chunks_exact(LEASE_RECORD_BYTES as usize).enumerate().take(out.len()) {
                let Some(r) = Record::decode(page, &self.uuid).filter(|r| r.node as usize == n) else { continue };
                if out[n].is_none_or(|o| (r.incarnation, r.seq) > (o.incarnation, o.seq)) {
                    out[n] = Some(r);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::record::Standing;
    use super::*;

    #[test]
    fn records_written_to_some_members_are_read_from_any() {
        let dir = tempfile::tempdir().expect("tmp");
        let paths: Vec<PathBuf> = (0..3).map(|i| dir.path().join(format!("m{i}"))).collect();
        for p in &paths {
            File::create(p).and_then(|f| f.set_len(2 << 20)).expect("member");
        }
        let uuid = [3u8; 16];
        let mut d = LeaseDisk::new(1 << 20, uuid);
        let r = |node, seq| Record {
            node,
            incarnation: 5,
            seq,
            epoch: 1,
            reach: 0b11,
            standing: Standing::Live,
            rebuilding: None,
        };
        assert_eq!(d.write(&paths, &r(1, 1)), 3);
        assert_eq!(d.write(&paths[..1], &r(1, 2)), 1, "one member took the next renewal");
        assert_eq!(d.write(&paths[2..], &r(0, 9)), 1);
        let got = d.read(&paths);
        assert_eq!(got[1], Some(r(1, 2)));
        assert_eq!(got[0], Some(r(0, 9)));
        assert_eq!(got[2], None);
        // A record in the wrong controller's page is not believed.
        let mut other = LeaseDisk::new(1 << 20, uuid);
        let page = r(4, 1).encode(&uuid);
        File::options()
            .write(true)
            .open(&paths[0])
            .and_then(|f| f.write_all_at(&page, (1 << 20) + 3 * 4096))
            .expect("w");
        assert_eq!(other.read(&paths)[3], None);
        // A member that is not there is skipped.
        let mut with_missing = paths.clone();
        with_missing.push(dir.path().join("gone"));
        assert_eq!(d.write(&with_missing, &r(1, 3)), 3);
        assert_eq!(d.read(&with_missing)[1], Some(r(1, 3)));
    }
}
