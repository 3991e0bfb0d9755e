//! Write-back: dirty lines reach the members in runs of adjacent lines, so a run that covers
//! a whole stripe is written with parity computed from the new data alone (no reads). A FLUSH
//! on any controller makes every controller's dirty lines durable, since MULTI_CONN clients
//! may have written them through another controller.

use super::{Amf, CoherencyError};
use crate::cache::{Busy, State};
use crate::fabric::wire::{Kind, Request};
use std::sync::atomic::Ordering::Relaxed;

/// Longest run of lines in one member write.
const RUN_BYTES_MAX: usize = 4 << 20;

impl Amf {
    /// Writes line `r` back if it is dirty. The caller holds `r` busy.
    pub(crate) fn destage_line(&self, r: u64) -> Result<(), CoherencyError> {
        let snap = {
            let g = self.lock();
            g.get(r).filter(|l| l.dirty).map(|l| (l.version, l.data.clone()))
        };
        let Some((version, data)) = snap else { return Ok(()) };
        super::trace!("n{} destage r{r} v{version} {:08x}", self.cfg.node, crc32c::crc32c(&data));
        self.disk.write_lines(r, &[version], &data, false)?;
        self.cleaned(r, &[version]);
        Ok(())
    }

    /// Marks lines `first..` clean where their versions are still those written, and lets
    /// the replica peer forget them.
    fn cleaned(&self, first: u64, versions: &[u64]) {
        {
            let mut g = self.lock();
            for (i, v) in versions.iter().enumerate() {
                if let Some(l) = g.touch(first + i as u64).filter(|l| l.version == *v) {
                    l.dirty = false;
                    if l.state == State::Modified {
                        l.state = State::Exclusive;
                    }
                }
            }
        }
        self.counters.destaged_lines.fetch_add(versions.len() as u64, Relaxed);
        self.counters.destage_writes.fetch_add(1, Relaxed);
        if let Some(p) = self.replica_peer() {
            let payload: Vec<u8> = versions.iter().flat_map(|v| v.to_le_bytes()).collect();
            let q = Request {
                a: first,
                b: versions.len() as u64,
                ..Request::new(Kind::DropReplica, self.cfg.node, self.cfg.epoch)
            };
            // Best effort: a replica left behind is only memory until the next write of the line.
            let _ = p.call(&q, &payload);
        }
    }

    /// Writes back up to `max` dirty lines in runs; busy lines are skipped unless `wait`.
    /// Returns the lines written.
    pub fn destage(&self, max: usize, wait: bool) -> Result<usize, CoherencyError> {
        let dirty = self.lock().dirty_lines(max);
        let run_lines = (RUN_BYTES_MAX / self.cfg.line_bytes).max(1);
        let mut written = 0;
        let mut i = 0;
        while i < dirty.len() {
            // Claim a run of adjacent dirty lines.
            let mut run: Vec<u64> = Vec::new();
            {
                let mut g = self.lock();
                while i < dirty.len() && run.len() < run_lines {
                    let r = dirty[i];
                    if run.last().is_some_and(|&last| last + 1 != r) {
                        break;
                    }
                    if g.try_begin(r, Busy::Holding(None)) {
                        run.push(r);
                        i += 1;
                    } else if !run.is_empty() {
                        // Never wait while holding lines: the holder may need one of them.
                        break;
                    } else if wait {
                        drop(g);
                        g = self.lock_line(r, Busy::Holding(None))?;
                        run.push(r);
                        i += 1;
                    } else {
                        i += 1;
                    }
                }
            }
            if run.is_empty() {
                continue;
            }
            let result = self.destage_run(&run);
            let mut g = self.lock();
            for r in &run {
                g.end(*r);
            }
            drop(g);
            self.changed.notify_all();
            written += result?;
        }
        Ok(written)
    }

    /// Writes one claimed run (lines still dirty and present; the others split it).
    fn destage_run(&self, run: &[u64]) -> Result<usize, CoherencyError> {
        let mut parts: Vec<(u64, Vec<u64>, Vec<u8>)> = Vec::new();
        {
            let g = self.lock();
            for &r in run {
                if let Some(l) = g.get(r).filter(|l| l.dirty) {
                    match parts.last_mut() {
                        Some((first, vs, data)) if *first + vs.len() as u64 == r => {
                            vs.push(l.version);
                            data.extend_from_slice(&l.data);
                        }
                        _ => parts.push((r, vec![l.version], l.data.clone())),
                    }
                }
            }
        }
        let mut n = 0;
        for (first, versions, data) in parts {
            super::trace!("n{} destage run r{first}+{} v{versions:?}", self.cfg.node, versions.len());
            self.disk.write_lines(first, &versions, &data, false)?;
            self.cleaned(first, &versions);
            n += versions.len();
        }
        Ok(n)
    }

    /// At stop, after [`Amf::destage_all`] succeeded: tells the primary this node leaves with
    /// nothing dirty.
    pub fn leave_clean(&self) -> Result<(), CoherencyError> {
        self.disk.leave()
    }

    /// Nodes that joined this primary and did not confirm their write-back.
    pub fn unconfirmed_peers(&self) -> Vec<u8> {
        self.disk.unconfirmed()
    }

    /// Writes back every dirty line, waiting for busy ones, and the dirty lines kept for
    /// peers that have not taken them yet (their writes were acknowledged too).
    pub fn destage_all(&self) -> Result<usize, CoherencyError> {
        let mut total = 0;
        loop {
            let n = self.destage(usize::MAX, true)?;
            total += n;
            if n == 0 {
                break;
            }
        }
        let handoffs = self.lock().dirty_handoffs();
        for r in handoffs {
            let snap = self.lock().handoff_line(r).map(|l| (l.version, l.data.clone()));
            if let Some((v, data)) = snap {
                self.disk.write_lines(r, &[v], &data, false)?;
                self.lock().handoff_clean(r, v);
                total += 1;
            }
        }
        Ok(total)
    }

    /// FLUSH: every controller writes its dirty lines back, then the members are synced.
    pub fn flush(&self) -> Result<(), CoherencyError> {
        let others: Vec<_> = (0..8u8).filter(|p| self.others() & (1 << p) != 0).filter_map(|p| self.peer(p)).collect();
        let results: Vec<Result<(), CoherencyError>> = std::thread::scope(|s| {
            let hs: Vec<_> = others
                .iter()
                .map(|p| {
                    s.spawn(|| {
                        p.call_ok(&Request::new(Kind::DestageAll, self.cfg.node, self.cfg.epoch), &[])
                            .map(|_| ())
                            .map_err(CoherencyError::Fabric)
                    })
                })
                .collect();
            let own = self.destage_all().map(|_| ());
            let mut v: Vec<_> = hs.into_iter().map(|h| h.join().unwrap_or(Err(CoherencyError::Contended(0)))).collect();
            v.push(own);
            v
        });
        for r in results {
            r?;
        }
        self.disk.sync()
    }

    /// Zeroes a range through the cache (so every controller sees it).
    pub fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> Result<(), CoherencyError> {
        self.check_range(offset, len)?;
        let zeros = vec![0u8; self.cfg.line_bytes];
        for (r, off, n) in self.pieces(offset, len).collect::<Vec<_>>() {
            self.write(r * self.cfg.line_bytes as u64 + off as u64, &zeros[..n], false)?;
        }
        if fua {
            self.flush()?;
        }
        Ok(())
    }
}
