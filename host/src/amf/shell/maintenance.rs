//! Scrub and rebuild of a group that several controllers serve, run from any of them: each
//! stripe is a job of the machine's, done under the stripe's lock from every controller, and a
//! rebuild's start, checkpoints and end are records under the group resource, which every
//! controller reads before its next member I/O.

use super::{Event, Shell};
use crate::amf::io::{HostError, HostReq, StripeJob};
use crate::raid::rebuild::RebuildReport;
use crate::raid::scrub::{ScrubReport, StripeCheck};
use crate::raid::{member::Member, Array};
use crossbeam_channel::Receiver;
use std::collections::VecDeque;

/// Stripes a scrub has in flight at once.
const SCRUB_WINDOW: usize = 16;
/// Stripes between records of a rebuild's progress.
const REBUILD_CHECKPOINT_STRIPES: u64 = 1024;

type Answer = Receiver<Result<Vec<u8>, HostError>>;

impl Shell {
    /// Sends a request; its answer comes on the receiver.
    fn submit(&self, req: HostReq) -> Result<Answer, String> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let reply = super::Reply::Channel(tx);
        self.inbox.send(Event::Host { req, reply }).map_err(|_| "the controller is stopping".to_string())?;
        Ok(rx)
    }

    /// Checks (with `repair`, rewrites) every stripe of `array`, reporting (done, total).
    pub fn scrub(&self, array: &Array, repair: bool, progress: &dyn Fn(u64, u64)) -> Result<ScrubReport, String> {
        let total = array.geometry().stripes();
        let mut report = ScrubReport { stripes: total, ..Default::default() };
        let mut out: VecDeque<(u64, Answer)> = VecDeque::new();
        let mut next = 0;
        while next < total || !out.is_empty() {
            while next < total && out.len() < SCRUB_WINDOW {
                out.push_back((next, self.submit(HostReq::Stripe { stripe: next, job: StripeJob::Scrub { repair } })?));
                next += 1;
            }
            let Some((s, rx)) = out.pop_front() else { break };
            let bytes = rx.recv().map_err(|_| "the controller stopped".to_string())?.map_err(|e| e.to_string())?;
            let check: StripeCheck = serde_json::from_slice(&bytes).map_err(|e| format!("stripe {s}: {e}"))?;
            report.add(s, check);
            if s % 64 == 63 || s + 1 == total {
                progress(s + 1, total);
            }
        }
        if repair && report.repaired > 0 {
            self.call(HostReq::FlushLocal).map_err(|e| e.to_string())?;
        }
        Ok(report)
    }

    /// Rebuilds member `index` of `array` onto `replacement` (or resumes), reporting (done,
    /// total). Every controller learns of the new member before the first stripe is rebuilt,
    /// and writes it from then on; it reads it once the rebuild is recorded as finished.
    pub fn rebuild(
        &self,
        array: &Array,
        index: usize,
        replacement: Option<Member>,
        progress: &dyn Fn(u64, u64),
    ) -> Result<RebuildReport, String> {
        let start = array.begin_rebuild(index, replacement).map_err(|e| e.to_string())?;
        self.call(HostReq::Record).map_err(|e| e.to_string())?;
        let total = array.geometry().stripes();
        let member = index as u32;
        for s in start..total {
            self.call(HostReq::Stripe { stripe: s, job: StripeJob::Rebuild { member } })
                .map_err(|e| format!("stripe {s}: {e}"))?;
            if (s + 1) % REBUILD_CHECKPOINT_STRIPES == 0 {
                // Every controller's writes to the new member are durable up to here.
                self.call(HostReq::Flush).map_err(|e| e.to_string())?;
                self.call(HostReq::Record).map_err(|e| e.to_string())?;
            }
            if (s + 1) % 64 == 0 || s + 1 == total {
                progress(s + 1, total);
            }
        }
        self.call(HostReq::Flush).map_err(|e| e.to_string())?;
        array.finish_rebuild(index).map_err(|e| e.to_string())?;
        self.call(HostReq::Record).map_err(|e| e.to_string())?;
        Ok(RebuildReport { member: index, stripes: total - start })
    }
}
