//! A power cut for tests and the cluster simulator: a layer over [`MemberIo`] that keeps, per
//! member device, every write since that device's last flush, and on [`VolatileCaches::cut`]
//! loses any subset of them, as a disk's volatile write cache does when the power goes.
//!
//! One [`VolatileCaches`] stands for the devices, not for who opened them: several arrays (one
//! per simulated controller) wrap the same members with it, a flush by any of them makes every
//! earlier write of that device durable, and a durable write (`write_durable`, FUA) is never
//! lost. The controller never uses it.

use super::member::MemberIo;
use std::sync::{Arc, Mutex, MutexGuard};

/// One write the device has not made durable yet.
#[derive(Debug)]
struct Unsynced {
    offset: u64,
    /// What the range held before it.
    old: Vec<u8>,
    new: Vec<u8>,
    /// A FUA write: it survives the cut.
    durable: bool,
}

#[derive(Debug, Default)]
struct Device {
    /// The device below the cache (None until a member wraps it).
    io: Option<Arc<dyn MemberIo>>,
    /// In the order they were written.
    unsynced: Vec<Unsynced>,
}

/// What a cut did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CutReport {
    /// Writes lost.
    pub lost: u64,
    /// Writes that had not been flushed and landed all the same.
    pub kept: u64,
}

/// The volatile write caches of a group's member devices.
#[derive(Debug, Default)]
pub struct VolatileCaches {
    devices: Mutex<Vec<Device>>,
}

impl VolatileCaches {
    /// Caches for `members` devices.
    pub fn new(members: usize) -> Arc<VolatileCaches> {
        let devices = (0..members).map(|_| Device::default()).collect();
        Arc::new(VolatileCaches { devices: Mutex::new(devices) })
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Device>> {
        self.devices.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Member `index`'s device `io` seen through its cache.
    pub fn wrap(self: &Arc<Self>, io: Arc<dyn MemberIo>, index: usize) -> Arc<dyn MemberIo> {
        if let Some(d) = self.lock().get_mut(index) {
            d.io.get_or_insert_with(|| io.clone());
        }
        Arc::new(CachedIo { inner: io, caches: self.clone(), index })
    }

    /// Writes not made durable yet, over every device.
    pub fn unsynced(&self) -> usize {
        self.lock().iter().map(|d| d.unsynced.len()).sum()
    }

    /// The power goes: every device keeps the unsynced writes for which `keep` says so (and
    /// every durable one) and loses the rest. Each device is rolled back to its last flush and
    /// the kept writes are played again in their order, so a lost write leaves whatever the
    /// writes before it left.
    pub fn cut(&self, keep: &mut dyn FnMut() -> bool) -> std::io::Result<CutReport> {
        let mut report = CutReport::default();
        for d in self.lock().iter_mut() {
            let writes = std::mem::take(&mut d.unsynced);
            let Some(io) = d.io.as_ref() else { continue };
            for w in writes.iter().rev() {
                io.write_at(w.offset, &w.old)?;
            }
            for w in &writes {
                if w.durable || keep() {
                    io.write_at(w.offset, &w.new)?;
                    report.kept += !w.durable as u64;
                } else {
                    report.lost += 1;
                }
            }
            io.sync()?;
        }
        Ok(report)
    }

    fn record(&self, index: usize, io: &dyn MemberIo, offset: u64, new: &[u8], durable: bool) -> std::io::Result<()> {
        let mut old = vec![0u8; new.len()];
        io.read_at(offset, &mut old)?;
        if let Some(d) = self.lock().get_mut(index) {
            d.unsynced.push(Unsynced { offset, old, new: new.to_vec(), durable });
        }
        Ok(())
    }
}

/// One member seen through its device's volatile cache.
#[derive(Debug)]
struct CachedIo {
    inner: Arc<dyn MemberIo>,
    caches: Arc<VolatileCaches>,
    index: usize,
}

impl MemberIo for CachedIo {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.inner.read_at(offset, buf)
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> std::io::Result<()> {
        self.caches.record(self.index, self.inner.as_ref(), offset, buf, false)?;
        self.inner.write_at(offset, buf)
    }

    fn write_durable(&self, offset: u64, buf: &[u8]) -> std::io::Result<()> {
        self.caches.record(self.index, self.inner.as_ref(), offset, buf, true)?;
        self.inner.write_durable(offset, buf)
    }

    fn sync(&self) -> std::io::Result<()> {
        self.inner.sync()?;
        if let Some(d) = self.caches.lock().get_mut(self.index) {
            d.unsynced.clear();
        }
        Ok(())
    }

    fn identity(&self) -> std::io::Result<(u64, u64)> {
        self.inner.identity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raid::member::FileIo;

    fn device(len: usize) -> (tempfile::NamedTempFile, Arc<dyn MemberIo>) {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(len as u64).unwrap();
        let io: Arc<dyn MemberIo> = Arc::new(FileIo::new(f.reopen().unwrap()));
        (f, io)
    }

    fn read(io: &dyn MemberIo, offset: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        io.read_at(offset, &mut b).unwrap();
        b
    }

    #[test]
    fn a_cut_loses_unsynced_writes_and_keeps_synced_and_durable_ones() {
        let (_f, raw) = device(4096);
        let caches = VolatileCaches::new(1);
        let a = caches.wrap(raw.clone(), 0);
        // A second opener of the same device (another controller): its flush covers both.
        let b = caches.wrap(raw.clone(), 0);
        a.write_at(0, &[1; 512]).unwrap();
        b.sync().unwrap();
        a.write_at(0, &[2; 512]).unwrap();
        a.write_durable(512, &[3; 512]).unwrap();
        b.write_at(1024, &[4; 512]).unwrap();
        // Overwritten by a durable write: its loss must not undo the durable one.
        a.write_at(1536, &[5; 512]).unwrap();
        a.write_durable(1536, &[6; 512]).unwrap();
        assert_eq!(caches.unsynced(), 5);
        let r = caches.cut(&mut || false).unwrap();
        assert_eq!(r, CutReport { lost: 3, kept: 0 });
        assert_eq!(read(raw.as_ref(), 0, 512), vec![1; 512], "the flushed write stays, the later one is lost");
        assert_eq!(read(raw.as_ref(), 512, 512), vec![3; 512]);
        assert_eq!(read(raw.as_ref(), 1024, 512), vec![0; 512]);
        assert_eq!(read(raw.as_ref(), 1536, 512), vec![6; 512]);
        assert_eq!(caches.unsynced(), 0);
    }

    #[test]
    fn kept_writes_land_in_their_order() {
        let (_f, raw) = device(1024);
        let caches = VolatileCaches::new(1);
        let a = caches.wrap(raw.clone(), 0);
        a.write_at(0, &[1; 1024]).unwrap();
        a.write_at(0, &[2; 512]).unwrap();
        a.write_at(512, &[3; 512]).unwrap();
        // Keep the first and the last: the middle one's range shows the first.
        let mut n = 0;
        let r = caches
            .cut(&mut || {
                n += 1;
                n != 2
            })
            .unwrap();
        assert_eq!(r, CutReport { lost: 1, kept: 2 });
        assert_eq!(read(raw.as_ref(), 0, 512), vec![1; 512]);
        assert_eq!(read(raw.as_ref(), 512, 512), vec![3; 512]);
    }
}
