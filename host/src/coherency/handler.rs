//! What a controller answers on the fabric: forwarded lines (step 3 of a peer's read), lines
//! its invalidate took (a peer's write), replicas, destage on FLUSH, and — on the primary —
//! member I/O.

use super::read::{DIRTY_BIT, HANDOFF_BIT};
use super::{disk::Disk, Amf};
use crate::cache::Busy;
use crate::fabric::wire::{Kind, Request, Response, Status, FLAG_FUA, FLAG_HANDOFF, FLAG_LEAVING};
use crate::fabric::Handler;
use std::sync::atomic::Ordering::Relaxed;

fn answer(status: Status) -> (Response, Vec<u8>) {
    (Response { status, a: 0 }, Vec::new())
}

fn line_answer(version: u64, dirty: bool, data: Vec<u8>) -> (Response, Vec<u8>) {
    (Response { status: Status::Ok, a: version | if dirty { DIRTY_BIT } else { 0 } }, data)
}

fn handoff_answer(version: u64, dirty: bool, data: Vec<u8>) -> (Response, Vec<u8>) {
    let (mut r, d) = line_answer(version, dirty, data);
    r.a |= HANDOFF_BIT;
    (r, d)
}

impl Amf {
    fn serve_fetch(&self, q: &Request) -> (Response, Vec<u8>) {
        let r = q.a;
        let mut g = self.lock();
        if self.sync_events(&mut g).is_err() {
            return answer(Status::Failed);
        }
        if q.flags & FLAG_HANDOFF != 0 {
            // First: is an operation here still taking the line, with the result owed to the
            // asker? Then whatever sits in the handoff area now is older: wait for it.
            let owed = match g.busy(r) {
                // Its round completed and the asker's invalidate came after it.
                Some(Busy::Holding(Some(acquired))) => {
                    g.invalidated_since(r, acquired) && g.invalidated_by(r) == Some(q.src)
                }
                // Its acquire may have completed before the asker's invalidate without this
                // node knowing yet.
                Some(Busy::Holding(None)) => g.invalidated_by(r) == Some(q.src),
                _ => false,
            };
            if owed {
                return answer(Status::Retry);
            }
            if let Some(l) = g.take_handoff(r, q.b) {
                super::trace!(
                    "n{} handoff r{r} v{} {:08x} dirty {} to n{}",
                    self.cfg.node,
                    l.version,
                    crc32c::crc32c(&l.data),
                    l.dirty,
                    q.src
                );
                self.counters.handoffs.fetch_add(1, Relaxed);
                return handoff_answer(l.version, l.dirty, l.data);
            }
            return answer(Status::NotHeld);
        }
        match (g.busy(r), g.get(r)) {
            // Mid-write or mid-writeback: the asker tries again when it is done.
            (Some(Busy::Holding(_)), _) => answer(Status::Retry),
            (_, Some(l)) => {
                super::trace!(
                    "n{} forward r{r} v{} {:08x} to n{}",
                    self.cfg.node,
                    l.version,
                    crc32c::crc32c(&l.data),
                    q.src
                );
                self.counters.lines_forwarded.fetch_add(1, Relaxed);
                line_answer(l.version, l.dirty, l.data.clone())
            }
            // Lost to a writer's round that has not taken it yet (that round may even have been
            // aborted): still the newest data there is. The reader takes the newest version of
            // all sharers' answers, and drops it if the round reaches it meanwhile.
            (_, None) => match g.handoff_line(r) {
                Some(l) => handoff_answer(l.version, l.dirty, l.data.clone()),
                None => answer(Status::NotHeld),
            },
        }
    }

    fn serve_disk(&self, q: &Request, payload: Vec<u8>) -> (Response, Vec<u8>) {
        let Disk::Local(m) = &self.disk else { return answer(Status::BadRequest) };
        let result = match q.kind {
            Kind::DiskRead => {
                if q.b > crate::fabric::wire::PAYLOAD_BYTES_MAX as u64 || self.check_range(q.a, q.b).is_err() {
                    return answer(Status::BadRequest);
                }
                m.read(q.a, q.b as usize).map(|(d, v)| (Response { status: Status::Ok, a: v }, d))
            }
            Kind::DiskWrite => {
                let n = q.b as usize;
                if q.c != self.cfg.line_bytes as u64 || n == 0 || payload.len() < n.saturating_mul(8) {
                    return answer(Status::BadRequest);
                }
                let (vs, data) = payload.split_at(n * 8);
                let versions: Vec<u64> =
                    vs.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect();
                let end = q.a.saturating_mul(q.c).saturating_add(data.len() as u64);
                if end > self.cfg.capacity {
                    return answer(Status::BadRequest);
                }
                m.write_lines(q.a, &versions, data, q.flags & FLAG_FUA != 0).map(|_| answer(Status::Ok))
            }
            _ => m.sync().map(|_| {
                if q.flags & FLAG_LEAVING != 0 {
                    m.note_clean_leave(q.src);
                }
                answer(Status::Ok)
            }),
        };
        result.unwrap_or_else(|e| {
            eprintln!("amf: node {}: member I/O for node {}: {e}", self.cfg.node, q.src);
            match e {
                super::CoherencyError::BadRequest(_) => answer(Status::BadRequest),
                _ => answer(Status::Failed),
            }
        })
    }

    fn serve_replica(&self, q: &Request, payload: Vec<u8>) -> (Response, Vec<u8>) {
        let lb = self.cfg.line_bytes;
        let mut reps = self.replicas.lock().unwrap_or_else(|p| p.into_inner());
        match q.kind {
            Kind::Replicate => {
                let off = q.c as usize;
                if off.checked_add(payload.len()).is_none_or(|e| e > lb)
                    || q.a.saturating_mul(lb as u64) >= self.cfg.capacity
                {
                    return answer(Status::BadRequest);
                }
                let e = reps.entry((q.src, q.a)).or_insert_with(|| (0, vec![0u8; lb]));
                e.0 = e.0.max(q.b);
                e.1[off..off + payload.len()].copy_from_slice(&payload);
                self.counters.replicas_held.store(reps.len() as u64, Relaxed);
                answer(Status::Ok)
            }
            _ => {
                for (i, c) in payload.chunks_exact(8).enumerate().take(q.b as usize) {
                    let v = u64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
                    let key = (q.src, q.a + i as u64);
                    if reps.get(&key).is_some_and(|(rv, _)| *rv <= v) {
                        reps.remove(&key);
                    }
                }
                self.counters.replicas_held.store(reps.len() as u64, Relaxed);
                answer(Status::Ok)
            }
        }
    }
}

impl Handler for Amf {
    fn identity(&self) -> (u8, u32) {
        (self.cfg.node, self.cfg.epoch)
    }

    fn is_peer(&self, node: u8) -> bool {
        node < 8 && self.others() & (1 << node) != 0
    }

    fn handle(&self, q: &Request, payload: Vec<u8>) -> (Response, Vec<u8>) {
        match q.kind {
            Kind::Fetch if q.a.saturating_mul(self.cfg.line_bytes as u64) < self.cfg.capacity => self.serve_fetch(q),
            Kind::Fetch => answer(Status::BadRequest),
            Kind::Replicate | Kind::DropReplica => self.serve_replica(q, payload),
            Kind::DiskRead | Kind::DiskWrite | Kind::DiskSync => self.serve_disk(q, payload),
            Kind::DestageAll => match self.destage_all() {
                Ok(_) => answer(Status::Ok),
                Err(e) => {
                    eprintln!("amf: node {}: destage for a FLUSH failed: {e}", self.cfg.node);
                    answer(Status::Failed)
                }
            },
            Kind::Info => {
                if q.c != self.cfg.line_bytes as u64 {
                    return answer(Status::BadRequest);
                }
                if let Disk::Local(m) = &self.disk {
                    m.note_join(q.src);
                }
                (Response { status: Status::Ok, a: self.cfg.capacity }, Vec::new())
            }
        }
    }
}
