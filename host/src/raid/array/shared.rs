//! A group that several controllers assemble and write at once. Which members have failed
//! must be the same in every controller's view before any of them does member I/O that depends
//! on it: a controller that reads a member another one stopped writing reads stale data. So:
//! - a member that fails here leaves this controller's view at once (it stops using it), and
//!   the failure is counted ([`Array::changes`]) instead of written;
//! - the AMF machine records it ([`Array::record_states`]) while it holds the group resource
//!   exclusively, which every other controller yields only with no member I/O in flight, and it
//!   holds the completion of the I/O that saw the failure until then;
//! - a controller that yielded the group re-reads the record ([`Array::load_states`]) before
//!   its next member I/O;
//! - every superblock write of a shared group first merges what the members hold, so no
//!   controller's write undoes another's record.

use super::super::assemble::member_path;
use super::super::member::Member;
use super::super::superblock::{MemberState, Superblock, SUPERBLOCK_BYTES};
use super::super::RaidError;
use super::{AlignedBuf, Array};
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::Arc;

impl Array {
    /// Marks the group as shared with other controllers (see the module's notes).
    pub fn set_shared(&self, shared: bool) {
        self.shared.store(shared, Relaxed);
    }

    /// Where the group's members are (a shared group opens the ones another controller put
    /// in: a rebuild's replacement).
    pub fn set_dir(&self, dir: &std::path::Path) {
        *self.dir.lock().unwrap_or_else(|p| p.into_inner()) = Some(dir.to_path_buf());
    }

    /// Whether other controllers use the group at the same time.
    pub fn shared(&self) -> bool {
        self.shared.load(Relaxed)
    }

    /// Member failures this process has seen. A reader that saw a member's new state also sees
    /// the count that includes it.
    pub fn changes(&self) -> u64 {
        self.changes.load(SeqCst)
    }

    /// Fails member `m` on an operator's word (as `mdadm --fail` does): refused if it is not a
    /// member in use, or if the group could not hold its data without it.
    pub fn fail_by_operator(&self, m: usize) -> Result<(), RaidError> {
        let bad = |reason: &str| RaidError::BadMember { index: m, reason: reason.into() };
        if m >= self.slots.len() {
            return Err(bad(&format!("the group has members 0..{}", self.slots.len())));
        }
        if !self.view(m).writable {
            return Err(bad("it has failed or is missing already"));
        }
        let usable: Vec<bool> =
            (0..self.slots.len()).map(|i| i != m && self.view(i).readable_below == u64::MAX).collect();
        if !super::super::assemble::survives(&self.geo, &usable) {
            return Err(bad("the group would fail without it (it holds the only copy of some data)"));
        }
        self.fail_member(m, "failed by the operator");
        Ok(())
    }

    /// Re-reads the members' superblocks and takes the failures recorded there into this view.
    pub fn load_states(&self) -> Result<(), RaidError> {
        let newest = self.newest_superblock()?;
        let mut sb = self.sb_lock();
        self.adopt(&mut sb, &newest);
        Ok(())
    }

    /// Writes this view's member states to the superblocks, merged with what they hold.
    pub fn record_states(&self) -> Result<(), RaidError> {
        self.update_superblocks(|_| {})
    }

    /// The newest of this group's superblocks on the active members in this view (a member
    /// being rebuilt may not have one yet). A member whose superblock cannot be read or decoded
    /// fails (a change, recorded with the others).
    pub(super) fn newest_superblock(&self) -> Result<Superblock, RaidError> {
        let uuid = self.sb_lock().uuid;
        let mut newest: Option<Superblock> = None;
        for i in 0..self.slots.len() {
            let v = self.view(i);
            let (u64::MAX, Some(member)) = (v.readable_below, v.member) else { continue };
            let mut buf = AlignedBuf::zeroed(SUPERBLOCK_BYTES);
            let decoded = member
                .read_at(0, &mut buf)
                .map_err(|e| e.to_string())
                .and_then(|_| Superblock::decode(&buf).map_err(|e| e.to_string()));
            match decoded {
                Ok(sb) if sb.uuid == uuid => {
                    if newest.as_ref().is_none_or(|n| sb.events > n.events) {
                        newest = Some(sb);
                    }
                }
                Ok(_) => self.fail_member(i, "its superblock belongs to another group now"),
                Err(e) => self.fail_member(i, &format!("reading its superblock: {e}")),
            }
        }
        newest.ok_or_else(|| RaidError::GroupFailed { reason: "no member's superblock could be read".into() })
    }

    /// Takes `newest`'s member states into this view (another controller's record), except
    /// where this process changed a state it has not recorded yet, and its event count into
    /// `sb`. A member another controller put in (a rebuild began or ended) is opened here.
    pub(super) fn adopt(&self, sb: &mut Superblock, newest: &Superblock) {
        let mut changed = false;
        for (i, disk) in newest.states.iter().copied().enumerate().take(self.slots.len()) {
            let slot = &self.slots[i];
            let local = *slot.state.read().unwrap_or_else(|p| p.into_inner());
            if slot.changed_here.load(Relaxed) || local == disk {
                continue;
            }
            changed = true;
            if disk == MemberState::Faulty {
                *slot.state.write().unwrap_or_else(|p| p.into_inner()) = MemberState::Faulty;
                eprintln!("amf: member {i} failed (recorded by another controller)");
                continue;
            }
            if local == MemberState::Faulty {
                match self.open_recorded(i, newest) {
                    Ok(m) => *slot.member.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(m)),
                    Err(e) => {
                        // This controller cannot reach it: it stays out here, and the next
                        // record says so for everyone.
                        self.changes.fetch_add(1, SeqCst);
                        slot.changed_here.store(true, Relaxed);
                        eprintln!("amf: member {i} is {disk:?} in the record but cannot be opened here: {e}");
                        continue;
                    }
                }
            }
            // A rebuild here did not write it: read it only once it is active.
            slot.recovered.store(0, Relaxed);
            *slot.state.write().unwrap_or_else(|p| p.into_inner()) = disk;
            eprintln!("amf: member {i} is {disk:?} (recorded by another controller)");
        }
        if changed {
            self.refresh_alive();
        }
        sb.events = sb.events.max(newest.events);
    }

    /// Opens member `i` at its place in the group's folder and checks that it is that member
    /// of this group.
    fn open_recorded(&self, i: usize, newest: &Superblock) -> Result<Member, String> {
        let dir = self.dir.lock().unwrap_or_else(|p| p.into_inner()).clone().ok_or("the group's folder is unknown")?;
        let m = Member::open(&member_path(&dir, i)).map_err(|e| e.to_string())?;
        let mut buf = AlignedBuf::zeroed(SUPERBLOCK_BYTES);
        m.read_at(0, &mut buf).map_err(|e| e.to_string())?;
        let sb = Superblock::decode(&buf).map_err(|e| e.to_string())?;
        if sb.uuid != newest.uuid || sb.member_index as usize != i {
            return Err(format!("{} is not member {i} of this group", m.path().display()));
        }
        Ok(m)
    }
}
