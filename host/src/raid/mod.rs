//! The redundancy group: geometry, parity, members and superblocks, the I/O engine, write-intent
//! bitmap, degraded operation, rebuild and scrub.

pub mod array;
pub mod assemble;
pub mod bitmap;
pub mod faults;
pub mod fence;
pub mod geometry;
pub mod member;
pub mod parity;
pub mod power_loss;
pub mod rebuild;
pub mod scrub;
pub mod stripe_lock;
pub mod superblock;

pub use array::Array;
pub use geometry::{Geometry, Layout, Level};
pub use superblock::{MemberState, Superblock};

use std::path::PathBuf;

/// A member that assembly did not use, and why.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Rejected {
    /// Member path, or the slot name when no file was found.
    pub member: String,
    /// Why it was left out.
    pub reason: String,
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.member, self.reason)
    }
}

fn list(r: &[Rejected]) -> String {
    r.iter().map(|x| x.to_string()).collect::<Vec<_>>().join("; ")
}

/// Errors of the RAID engine.
#[derive(Debug, thiserror::Error)]
pub enum RaidError {
    /// A member could not be opened or created.
    #[error("cannot open member {path}: {source}")]
    OpenMember {
        /// Member path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A member read failed.
    #[error("read of member {path} at {offset} failed: {source}")]
    ReadMember {
        /// Member path.
        path: PathBuf,
        /// Byte offset.
        offset: u64,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A member write failed.
    #[error("write of member {path} at {offset} failed: {source}")]
    WriteMember {
        /// Member path.
        path: PathBuf,
        /// Byte offset.
        offset: u64,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// fdatasync of a member failed.
    #[error("sync of member {path} failed: {source}")]
    SyncMember {
        /// Member path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A member's superblock is unreadable.
    #[error("member {path}: {source}")]
    Superblock {
        /// Member path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: superblock::SuperblockError,
    },
    /// The requested shape is impossible.
    #[error("invalid geometry: {0}")]
    Geometry(#[from] geometry::GeometryError),
    /// The directory holds no members.
    #[error("no amf members in {0}")]
    NoMembers(PathBuf),
    /// The directory could not be listed or prepared.
    #[error("cannot use directory {path}: {source}")]
    Dir {
        /// Directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Members that must be present for the level are missing or rejected.
    #[error("{level} group cannot start: {} of {total} members unusable, it tolerates {tolerated}: {}", .unusable.len(), list(.unusable))]
    TooManyMissing {
        /// Level.
        level: Level,
        /// Members in the group.
        total: usize,
        /// Members it can lose.
        tolerated: usize,
        /// Those missing or rejected, with reasons.
        unusable: Vec<Rejected>,
    },
    /// Members that could not be used even though the level would tolerate their loss in
    /// principle; the set of failures does not leave one copy of every stripe.
    #[error("stripe {stripe} has no readable copy or cannot be reconstructed")]
    Unrecoverable {
        /// Stripe index.
        stripe: u64,
    },
    /// Too many members failed for the group to hold its data.
    #[error("the group has failed: {reason}")]
    GroupFailed {
        /// What failed.
        reason: String,
    },
    /// Access outside the group.
    #[error("range {offset}+{len} is outside the group ({capacity} bytes)")]
    OutOfRange {
        /// Offset asked for.
        offset: u64,
        /// Length asked for.
        len: u64,
        /// Group capacity.
        capacity: u64,
    },
    /// The group crashed while degraded: parity of the stripes being written may not match
    /// their data, so reconstructing the missing members there could return wrong data.
    #[error(
        "the group was not shut down cleanly and is degraded (members {missing:?} unusable): {dirty_regions} \
         write-intent regions may hold stripes whose parity does not match their data, and the missing \
         members' data there cannot be reconstructed reliably (the RAID write hole); bring the members \
         back, or start with --force to accept that risk"
    )]
    WriteHole {
        /// Unusable members.
        missing: Vec<usize>,
        /// Dirty regions.
        dirty_regions: usize,
    },
    /// A maintenance command named a member that cannot take it.
    #[error("member {index}: {reason}")]
    BadMember {
        /// Member index.
        index: usize,
        /// Why.
        reason: String,
    },
}

#[cfg(test)]
mod tests;
