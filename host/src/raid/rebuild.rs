//! Rebuild of one member onto a replacement while the group stays online: stripes below the
//! rebuild point are served from the new member, stripes above it are reconstructed, and writes
//! go to it everywhere (see `Array::write_parity`).

use super::array::Array;
use super::member::Member;
use super::RaidError;
use serde::Serialize;

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
