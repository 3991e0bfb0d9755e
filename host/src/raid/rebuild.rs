//! Rebuild of one member onto a replacement while the group stays online: stripes below the
//! rebuild point are served from the new member, stripes above it are reconstructed, and writes
//! go to it everywhere (see `Array::write_parity`).

use super::array::Array;
use super::assemble::member_path;
use super::member::Member;
use super::{MemberState, RaidError};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Stripes between superblock updates that record the rebuild point (so an interrupted rebuild
/// resumes near where it stopped).
const CHECKPOINT_STRIPES: u64 = 1024;

/// Outcome of a rebuild.
#[derive(Debug, Serialize, Clone)]
pub struct RebuildReport {
    /// Member rebuilt.
    pub member: usize,
    /// Stripes rebuilt in this run.
    pub stripes: u64,
}

/// Rebuilds member `index` onto `replacement` (or resumes a rebuild in progress when None),
/// reporting (done, total) stripes.
pub fn rebuild(
    array: &Array,
    index: usize,
    replacement: Option<Member>,
    progress: &dyn Fn(u64, u64),
) -> Result<RebuildReport, RaidError> {
    let start = array.begin_rebuild(index, replacement)?;
    let total = array.geometry().stripes();
    for s in start..total {
        {
            let _g = array.locks().lock(s);
            array.rebuild_stripe(index, s)?;
            array.set_recovered(index, s + 1);
        }
        if (s + 1) % CHECKPOINT_STRIPES == 0 {
            array.sync_members()?;
            array.update_superblocks(|_| {})?;
        }
        if (s + 1) % 64 == 0 || s + 1 == total {
            progress(s + 1, total);
        }
    }
    array.finish_rebuild(index)?;
    Ok(RebuildReport { member: index, stripes: total - start })
}

/// Checks everything a rebuild of slot `index` onto `replacement` (or onto a new file in the
/// slot) needs, changing nothing: the slot exists and is not active, the group keeps enough
/// members to rebuild from, and a replacement opens, is large enough and is not a member of the
/// group already.
pub fn check_replacement(array: &Array, index: usize, replacement: Option<&Path>) -> Result<(), RaidError> {
    let status = array.member_status();
    let Some(slot) = status.get(index) else {
        return Err(RaidError::BadMember { index, reason: format!("the group has {} members", status.len()) });
    };
    if slot.state == MemberState::Active {
        return Err(RaidError::BadMember { index, reason: "is active; nothing to rebuild".into() });
    }
    if !array.alive() {
        return Err(RaidError::GroupFailed {
            reason: format!("members {:?} are not active: too few are left to rebuild from", array.degraded_members()),
        });
    }
    match replacement {
        None => Ok(()),
        Some(r) => {
            let members: Vec<(usize, PathBuf)> =
                status.iter().filter_map(|m| m.path.as_ref().map(|p| (m.index, PathBuf::from(p)))).collect();
            check_replacement_file(index, r, array.member_bytes_needed(), &members)
        }
    }
}

/// Checks a replacement file without changing anything: it opens, holds `bytes`, and is not one
/// of `members` (slot, path) of the group.
pub fn check_replacement_file(
    index: usize,
    r: &Path,
    bytes: u64,
    members: &[(usize, PathBuf)],
) -> Result<(), RaidError> {
    let m = Member::open(r)?;
    if m.size() < bytes {
        return Err(RaidError::BadMember {
            index,
            reason: format!("replacement {} is {} bytes, needs {bytes}", r.display(), m.size()),
        });
    }
    let target = std::fs::canonicalize(r).map_err(|source| RaidError::OpenMember { path: r.to_path_buf(), source })?;
    for (slot, path) in members {
        if std::fs::canonicalize(path).is_ok_and(|p| p == target) {
            return Err(RaidError::BadMember {
                index,
                reason: format!(
                    "replacement {} is member {slot} of this group; rebuild without a replacement path creates a new file",
                    r.display()
                ),
            });
        }
    }
    Ok(())
}

/// The member a rebuild of slot `index` writes to, after [`check_replacement`] passed. With
/// `replacement`, that file or block device is used and DIR/member-NN.img becomes a symlink to
/// it; without, a new DIR/member-NN.img is created. An old file in the slot is kept, renamed
/// `replaced-member-NN-<time>.img`.
pub fn prepare_replacement(
    array: &Array,
    dir: &Path,
    index: usize,
    replacement: Option<&Path>,
) -> Result<Member, RaidError> {
    check_replacement(array, index, replacement)?;
    let bytes = array.member_bytes_needed();
    let slot = member_path(dir, index);
    let dir_err = |source| RaidError::Dir { path: dir.to_path_buf(), source };
    let target = replacement.map(std::fs::canonicalize).transpose().map_err(dir_err)?;
    if std::fs::symlink_metadata(&slot).is_ok() {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        std::fs::rename(&slot, dir.join(format!("replaced-member-{index:02}-{now}.img"))).map_err(dir_err)?;
    }
    match target {
        Some(target) => {
            std::os::unix::fs::symlink(&target, &slot).map_err(dir_err)?;
            Member::open(&slot)
        }
        None => Member::create_file(&slot, bytes),
    }
}
