//! A controller's leave (a stop): it writes its dirty lines back, tells its peers it left
//! clean (`Leaving`), and waits, bounded, until they said the same.
//!
//! Two rules keep a leave from losing what a peer acknowledged:
//! - **A failed write-back says nothing.** A controller whose write-back failed does not send
//!   `Leaving`: its peers, stopping too, would take its exit for a stop and never take over
//!   their replicas of its lines. Without the notice its exit is a death, and they take over.
//! - **A membership change runs the write-back again.** A peer that died during the leave left
//!   its lines to the controllers that held their replicas (the machine takes them over at the
//!   view change); a leave that had written back already would report clean with them dirty.
//!   So the write-back runs again after every such change, the notice waits for it, and the
//!   peers' notices from before the change count no longer (they may have taken lines over
//!   too).

use super::LeaveReport;
use crossbeam_channel::Sender;
use std::time::{Duration, Instant};

/// How long a leave waits for its peers' notices once its own write-back is done.
pub(super) const LEAVE_WAIT: Duration = Duration::from_secs(5);
/// A leave whose write-back takes longer than this says what it waits for.
pub(super) const LEAVE_SLOW: Duration = Duration::from_secs(2);

/// A leave in progress.
pub(super) struct Leave {
    /// Where its report goes.
    pub(super) reply: Sender<LeaveReport>,
    /// The id of the write-back running, if one is.
    pub(super) write_back: Option<u64>,
    /// The membership changed while the write-back ran: run it again when it ends.
    again: bool,
    /// The write-back failed.
    pub(super) error: Option<String>,
    /// When the leave began.
    pub(super) since: Instant,
    /// What the write-back waits for was logged (it was slow).
    pub(super) reported: bool,
}

impl Leave {
    /// A leave whose first write-back is `write_back`.
    pub(super) fn new(reply: Sender<LeaveReport>, write_back: u64) -> Leave {
        Leave { reply, write_back: Some(write_back), again: false, error: None, since: Instant::now(), reported: false }
    }

    /// The write-back ended. Returns true when it must run again (the membership changed
    /// while it ran).
    pub(super) fn written_back(&mut self, result: Result<(), String>) -> bool {
        self.write_back = None;
        match result {
            Err(e) => {
                self.error = Some(e);
                self.again = false;
                false
            }
            Ok(()) => std::mem::take(&mut self.again),
        }
    }

    /// Peers died and the machine took their lines over. Returns true when a write-back must
    /// start now (none runs).
    pub(super) fn membership_changed(&mut self) -> bool {
        if self.error.is_some() {
            return false;
        }
        if self.write_back.is_some() {
            self.again = true;
            return false;
        }
        true
    }

    /// Everything this controller holds is on the members: its peers may be told so.
    pub(super) fn says_left(&self) -> bool {
        self.write_back.is_none() && !self.again && self.error.is_none()
    }

    /// The leave is over: its write-back failed (its peers must take over, the sooner the
    /// better), or it is done and every peer said so too (`peers_done`) or the wait ran out.
    pub(super) fn over(&self, peers_done: bool) -> bool {
        self.error.is_some() || (self.says_left() && (peers_done || self.since.elapsed() > LEAVE_WAIT))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leave() -> Leave {
        Leave::new(crossbeam_channel::bounded(1).0, 1)
    }

    #[test]
    fn a_failed_write_back_never_says_left_and_ends_the_leave() {
        let mut l = leave();
        assert!(!l.says_left() && !l.over(true), "writing back");
        assert!(!l.written_back(Err("member 2: EIO".into())));
        assert!(!l.says_left(), "its peers must take its exit for a death");
        assert!(l.over(false), "over at once: the peers take over once it is gone");
        assert!(!l.membership_changed(), "no second write-back after a failure");
    }

    #[test]
    fn a_membership_change_runs_the_write_back_again_before_the_notice() {
        // The change comes after the write-back: it starts again at once.
        let mut l = leave();
        assert!(!l.written_back(Ok(())));
        assert!(l.says_left() && l.over(true));
        assert!(l.membership_changed(), "lines were taken over: write them back");
        l.write_back = Some(2);
        assert!(!l.says_left() && !l.over(true));
        assert!(!l.written_back(Ok(())));
        assert!(l.says_left() && l.over(true));

        // The change comes while the write-back runs: it runs again when that one ends.
        let mut l = leave();
        assert!(!l.membership_changed(), "one runs already");
        assert!(!l.says_left());
        assert!(l.written_back(Ok(())), "the first may have missed the lines taken over");
        l.write_back = Some(2);
        assert!(!l.says_left() && !l.over(true), "nothing said until the second ends");
        assert!(!l.written_back(Ok(())));
        assert!(l.says_left());
    }
}
