//! Maintenance of one stripe at a time (scrub, rebuild): the job takes the stripe's lock
//! through the card like a write-back does, so no controller writes the stripe while the shell
//! checks or rebuilds it, and the shell runs it on the members.

use super::*;

/// A stripe job and the host request it answers.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct Job {
    host: u64,
    stripe: u64,
    job: StripeJob,
    /// Out to the shell (the lock is held and counted).
    running: bool,
}

impl Machine {
    fn stripe_count(&self) -> u64 {
        self.cfg.capacity.div_ceil(self.cfg.stripe_bytes.max(1))
    }

    pub(super) fn start_job(&mut self, host: u64, stripe: u64, job: StripeJob) {
        if stripe >= self.stripe_count() {
            let offset = stripe.saturating_mul(self.cfg.stripe_bytes);
            let err = HostError::OutOfRange { offset, len: self.cfg.stripe_bytes };
            self.out.push(Output::Reply { id: host, result: Err(err) });
            return;
        }
        let j = self.id();
        self.jobs.insert(j, Job { host, stripe, job, running: false });
        self.touched_jobs.insert(j);
    }

    pub(super) fn advance_job(&mut self, j: u64) {
        let Some(&Job { stripe, job, running: false, .. }) = self.jobs.get(&j) else { return };
        if !self.lock(stripe..=stripe, Waiter::Job(j)) {
            return;
        }
        let id = self.id();
        self.members.insert(id, MemberUse::Job(j));
        if let Some(job) = self.jobs.get_mut(&j) {
            job.running = true;
        }
        self.member_io(Output::StripeJob { id, stripe, job });
    }

    pub(super) fn job_done(&mut self, j: u64, result: Result<Vec<u8>, String>) {
        let Some(job) = self.jobs.remove(&j) else { return };
        self.unlock(job.stripe..=job.stripe);
        self.out.push(Output::Reply { id: job.host, result: result.map_err(HostError::Member) });
    }

    /// A job waiting for its lock fails.
    pub(super) fn fail_job(&mut self, j: u64, e: HostError) {
        if let Some(job) = self.jobs.remove(&j) {
            self.out.push(Output::Reply { id: job.host, result: Err(e) });
        }
    }

    pub(super) fn check_jobs(&self) -> Result<(), String> {
        if self.cfg.mutation.is_some() {
            return Ok(());
        }
        for job in self.jobs.values().filter(|j| j.running) {
            if !self.stripes.get(&job.stripe).is_some_and(|st| st.held && st.users > 0) {
                return Err(format!("n{} runs a job on stripe {} without its lock", self.cfg.node, job.stripe));
            }
        }
        Ok(())
    }
}
