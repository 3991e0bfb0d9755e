//! Member I/O of a coherent cluster. The primary (node 0) owns the members: it assembled the
//! group and is the only process that writes them, so parity of a stripe is computed by one
//! controller at a time under the RAID engine's stripe lock, and the write-intent bitmap and
//! superblocks have one writer. The other controllers read and destage through it.
//!
//! The primary also keeps, per cache line, the highest version written: a destage that
//! arrives late with an older version (a line that changed owner while its old owner was
//! writing it back) is skipped instead of overwriting newer data.

use super::CoherencyError;
use crate::fabric::wire::{Kind, Request, FLAG_FUA, FLAG_LEAVING};
use crate::fabric::Peer;
use crate::raid::Array;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

/// The members, owned by this process (the primary).
pub struct Members {
    /// The group.
    pub array: Arc<Array>,
    line_bytes: u64,
    versions: Mutex<HashMap<u64, u64>>,
    /// Nodes that joined (asked for the group's size), as a bit mask.
    joined: AtomicU8,
    /// Nodes that left after writing back everything they acknowledged.
    left_clean: AtomicU8,
}

impl Members {
    /// Wraps the assembled group.
    pub fn new(array: Arc<Array>, line_bytes: u64) -> Members {
        Members {
            array,
            line_bytes,
            versions: Mutex::new(HashMap::new()),
            joined: AtomicU8::new(0),
            left_clean: AtomicU8::new(0),
        }
    }

    /// Node `node` joined: until it leaves clean, the group cannot be marked clean.
    pub fn note_join(&self, node: u8) {
        if node < 8 {
            self.joined.fetch_or(1 << node, SeqCst);
            self.left_clean.fetch_and(!(1 << node), SeqCst);
        }
    }

    /// Node `node` wrote back everything it acknowledged and left.
    pub fn note_clean_leave(&self, node: u8) {
        if node < 8 {
            self.left_clean.fetch_or(1 << node, SeqCst);
        }
    }

    /// Nodes that joined and did not confirm their write-back.
    pub fn unconfirmed(&self) -> Vec<u8> {
        let open = self.joined.load(SeqCst) & !self.left_clean.load(SeqCst);
        (0..8).filter(|n| open & (1 << n) != 0).collect()
    }

    fn versions(&self) -> std::sync::MutexGuard<'_, HashMap<u64, u64>> {
        self.versions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads `len` bytes at `offset`; returns them and the version of the line at `offset`.
    pub fn read(&self, offset: u64, len: usize) -> Result<(Vec<u8>, u64), CoherencyError> {
        let mut buf = vec![0u8; len];
        self.array.read(offset, &mut buf).map_err(CoherencyError::Raid)?;
        let v = self.versions().get(&(offset / self.line_bytes)).copied().unwrap_or(0);
        super::trace!("members: read r{} v{v} {:08x}", offset / self.line_bytes, crc32c::crc32c(&buf));
        Ok((buf, v))
    }

    /// Writes whole lines from `first` on (the last may be short at the end of the group),
    /// skipping any whose version is older than one written before. Returns lines written.
    pub fn write_lines(&self, first: u64, versions: &[u64], data: &[u8], fua: bool) -> Result<usize, CoherencyError> {
        let lb = self.line_bytes as usize;
        if versions.is_empty() || data.len() > versions.len() * lb || data.len() <= (versions.len() - 1) * lb {
            return Err(CoherencyError::BadRequest(format!(
                "{} bytes for {} lines of {lb}",
                data.len(),
                versions.len()
            )));
        }
        // Hold the version map across the write: two late destages of one line must not pass
        // each other between the check and the write.
        let mut map = self.versions();
        let fresh: Vec<bool> =
            versions.iter().enumerate().map(|(i, v)| map.get(&(first + i as u64)).is_none_or(|old| v >= old)).collect();
        for (i, f) in fresh.iter().enumerate() {
            if !f {
                super::trace!(
                    "members: skip r{} v{} (have v{:?})",
                    first + i as u64,
                    versions[i],
                    map.get(&(first + i as u64))
                );
            }
        }
        let mut written = 0;
        let mut i = 0;
        while i < versions.len() {
            if !fresh[i] {
                i += 1;
                continue;
            }
            let j = i + fresh[i..].iter().take_while(|f| **f).count();
            let lo = i * lb;
            let hi = (j * lb).min(data.len());
            self.array.write((first + i as u64) * self.line_bytes, &data[lo..hi], fua).map_err(CoherencyError::Raid)?;
            for (k, v) in versions.iter().enumerate().take(j).skip(i) {
                map.insert(first + k as u64, *v);
            }
            written += j - i;
            i = j;
        }
        Ok(written)
    }

    /// Makes every completed write durable.
    pub fn sync(&self) -> Result<(), CoherencyError> {
        self.array.flush().map_err(CoherencyError::Raid)
    }
}

/// Where a controller's member I/O goes.
#[derive(Clone)]
pub enum Disk {
    /// This is the primary.
    Local(Arc<Members>),
    /// Through the primary over the fabric.
    Remote {
        /// The primary.
        primary: Arc<Peer>,
        /// This node.
        node: u8,
        /// Membership epoch.
        epoch: u32,
        /// Bytes per line.
        line_bytes: u64,
    },
}

impl Disk {
    /// Reads a range; returns the bytes and the version of the line at `offset`.
    pub fn read(&self, offset: u64, len: usize) -> Result<(Vec<u8>, u64), CoherencyError> {
        match self {
            Disk::Local(m) => m.read(offset, len),
            Disk::Remote { primary, node, epoch, .. } => {
                let q = Request { a: offset, b: len as u64, ..Request::new(Kind::DiskRead, *node, *epoch) };
                let (r, p) = primary.call_ok(&q, &[]).map_err(CoherencyError::Fabric)?;
                if p.len() != len {
                    return Err(CoherencyError::BadRequest(format!("primary sent {} bytes for {len}", p.len())));
                }
                Ok((p, r.a))
            }
        }
    }

    /// Writes whole lines (see [`Members::write_lines`]).
    pub fn write_lines(&self, first: u64, versions: &[u64], data: &[u8], fua: bool) -> Result<(), CoherencyError> {
        match self {
            Disk::Local(m) => m.write_lines(first, versions, data, fua).map(|_| ()),
            Disk::Remote { primary, node, epoch, line_bytes } => {
                let mut payload = Vec::with_capacity(versions.len() * 8 + data.len());
                for v in versions {
                    payload.extend_from_slice(&v.to_le_bytes());
                }
                payload.extend_from_slice(data);
                let mut q = Request {
                    a: first,
                    b: versions.len() as u64,
                    c: *line_bytes,
                    ..Request::new(Kind::DiskWrite, *node, *epoch)
                };
                if fua {
                    q.flags |= FLAG_FUA;
                }
                primary.call_ok(&q, &payload).map(|_| ()).map_err(CoherencyError::Fabric)
            }
        }
    }

    /// Tells the primary that this node wrote back everything it acknowledged and leaves (the
    /// primary marks the group clean only when every node that joined did).
    pub fn leave(&self) -> Result<(), CoherencyError> {
        match self {
            Disk::Local(m) => m.sync(),
            Disk::Remote { primary, node, epoch, .. } => {
                let mut q = Request::new(Kind::DiskSync, *node, *epoch);
                q.flags |= FLAG_LEAVING;
                primary.call_ok(&q, &[]).map(|_| ()).map_err(CoherencyError::Fabric)
            }
        }
    }

    /// Nodes that joined this primary and did not confirm their write-back (none elsewhere).
    pub fn unconfirmed(&self) -> Vec<u8> {
        match self {
            Disk::Local(m) => m.unconfirmed(),
            Disk::Remote { .. } => Vec::new(),
        }
    }

    /// Makes every completed member write durable.
    pub fn sync(&self) -> Result<(), CoherencyError> {
        match self {
            Disk::Local(m) => m.sync(),
            Disk::Remote { primary, node, epoch, .. } => primary
                .call_ok(&Request::new(Kind::DiskSync, *node, *epoch), &[])
                .map(|_| ())
                .map_err(CoherencyError::Fabric),
        }
    }
}
