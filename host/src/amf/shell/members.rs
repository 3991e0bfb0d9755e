//! Member I/O for the loop: a few worker threads run reads, writes and syncs on this
//! controller's own assembly of the group and post the results to the loop's inbox. The
//! machine holds the stripe locks a write needs before it asks for the write; two writes of one
//! stripe from this controller are ordered by the `Array`'s own stripe lock.

use super::{Event, Inbox};
use crate::amf::io::StripeJob;
use crate::raid::Array;
use crossbeam_channel::{unbounded, Receiver, Sender};
use std::sync::Arc;

enum Job {
    Read { id: u64, offset: u64, len: u64 },
    Write { id: u64, offset: u64, data: Vec<u8>, fua: bool },
    Sync { id: u64 },
    Superblocks { id: u64, record: bool },
    Stripe { id: u64, stripe: u64, job: StripeJob },
    Stop,
}

/// The worker pool.
pub struct Workers {
    tx: Sender<Job>,
    count: usize,
}

impl Workers {
    /// Starts `count` workers over `array`.
    pub fn start(array: Arc<Array>, count: usize, inbox: Inbox) -> std::io::Result<Workers> {
        let (tx, rx) = unbounded();
        let count = count.max(1);
        for i in 0..count {
            let (a, rx, inbox): (Arc<Array>, Receiver<Job>, Inbox) = (array.clone(), rx.clone(), inbox.clone());
            std::thread::Builder::new().name(format!("members-{i}")).spawn(move || work(a, rx, inbox))?;
        }
        Ok(Workers { tx, count })
    }

    /// Reads `len` bytes at `offset`.
    pub fn read(&self, id: u64, offset: u64, len: u64) {
        let _ = self.tx.send(Job::Read { id, offset, len });
    }

    /// Writes `data` at `offset`.
    pub fn write(&self, id: u64, offset: u64, data: Vec<u8>, fua: bool) {
        let _ = self.tx.send(Job::Write { id, offset, data, fua });
    }

    /// Makes completed writes durable.
    pub fn sync(&self, id: u64) {
        let _ = self.tx.send(Job::Sync { id });
    }

    /// Records this view's member states in the superblocks, or reads theirs into it.
    pub fn superblocks(&self, id: u64, record: bool) {
        let _ = self.tx.send(Job::Superblocks { id, record });
    }

    /// Runs a stripe's maintenance (the machine holds its lock).
    pub fn stripe(&self, id: u64, stripe: u64, job: StripeJob) {
        let _ = self.tx.send(Job::Stripe { id, stripe, job });
    }

    /// Ends the workers once the queued jobs are done.
    pub fn stop(&self) {
        for _ in 0..self.count {
            let _ = self.tx.send(Job::Stop);
        }
    }
}

fn work(array: Arc<Array>, rx: Receiver<Job>, inbox: Inbox) {
    while let Ok(job) = rx.recv() {
        let start = std::time::Instant::now();
        let (id, result) = match job {
            Job::Stop => return,
            Job::Read { id, offset, len } => {
                let mut buf = vec![0u8; len as usize];
                let r = array.read(offset, &mut buf).map(|_| buf).map_err(|e| e.to_string());
                crate::metrics::observe(crate::metrics::Op::MemberRead, start);
                (id, r)
            }
            Job::Write { id, offset, data, fua } => {
                let r = array.write(offset, &data, fua).map(|_| Vec::new()).map_err(|e| e.to_string());
                crate::metrics::observe(crate::metrics::Op::MemberWrite, start);
                (id, r)
            }
            Job::Sync { id } => (id, array.flush().map(|_| Vec::new()).map_err(|e| e.to_string())),
            Job::Stripe { id, stripe, job } => (id, run_stripe_job(&array, stripe, job)),
            Job::Superblocks { id, record } => {
                let r = if record { array.record_states() } else { array.load_states() };
                if let Err(e) = &r {
                    let what = if record { "recording member states in" } else { "reading" };
                    eprintln!("amf: {what} the superblocks: {e}");
                }
                // The machine learns whether reads may now reconstruct from whole stripes.
                let degraded = !array.degraded_members().is_empty();
                (id, r.map(|_| vec![degraded as u8]).map_err(|e| e.to_string()))
            }
        };
        if inbox.send(Event::Input(crate::amf::io::Input::MemberDone { id, result })).is_err() {
            return;
        }
    }
}

/// Runs a stripe's maintenance on `array` (the machine holds the stripe's lock from the other
/// controllers; this process's own lock of it is taken here). The answer: a scrub's
/// `StripeCheck` as JSON, nothing for a rebuild.
pub fn run_stripe_job(array: &Array, stripe: u64, job: StripeJob) -> Result<Vec<u8>, String> {
    match job {
        StripeJob::Scrub { repair } => crate::raid::scrub::scrub_stripe(array, stripe, repair)
            .map_err(|e| e.to_string())
            .and_then(|c| serde_json::to_vec(&c).map_err(|e| e.to_string())),
        StripeJob::Rebuild { member } => {
            let _g = array.locks().lock(stripe);
            array.rebuild_stripe(member as usize, stripe).map_err(|e| e.to_string())?;
            array.set_recovered(member as usize, stripe + 1);
            Ok(Vec::new())
        }
    }
}
