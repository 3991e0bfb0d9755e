//! Where logical bytes live: levels, md-style left-symmetric parity rotation, mirror copies.
//!
//! The engine works in *stripes*: for RAID0/5/6 a stripe is one chunk-row across all members
//! (data chunks plus parity); for RAID1/10 it is one logical chunk and its copies. Locks,
//! write-intent regions, scrub and rebuild all count in stripes.

use serde::Serialize;
use std::fmt;

/// RAID level of a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Striping, no redundancy.
    Raid0,
    /// N-way mirror.
    Raid1,
    /// Striping with rotating XOR parity.
    Raid5,
    /// Striping with rotating P+Q parity.
    Raid6,
    /// Striped mirrors, md "near" layout with two copies.
    Raid10,
}

impl Level {
    /// On-disk code.
    pub fn code(self) -> u8 {
        match self {
            Level::Raid0 => 0,
            Level::Raid1 => 1,
            Level::Raid5 => 5,
            Level::Raid6 => 6,
            Level::Raid10 => 10,
        }
    }

    /// Level from its on-disk code.
    pub fn from_code(code: u8) -> Option<Level> {
        Some(match code {
            0 => Level::Raid0,
            1 => Level::Raid1,
            5 => Level::Raid5,
            6 => Level::Raid6,
            10 => Level::Raid10,
            _ => return None,
        })
    }

    /// Layout name used in `inspect` and the superblock.
    pub fn layout(self) -> Layout {
        match self {
            Level::Raid0 => Layout::Striped,
            Level::Raid1 => Layout::Mirror,
            Level::Raid5 | Level::Raid6 => Layout::LeftSymmetric,
            Level::Raid10 => Layout::Near2,
        }
    }

    /// Fewest members the level accepts.
    pub fn min_members(self) -> usize {
        match self {
            Level::Raid0 => 1,
            Level::Raid1 | Level::Raid10 => 2,
            Level::Raid5 => 3,
            Level::Raid6 => 4,
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Raid0 => "raid0",
            Level::Raid1 => "raid1",
            Level::Raid5 => "raid5",
            Level::Raid6 => "raid6",
            Level::Raid10 => "raid10",
        })
    }
}

impl std::str::FromStr for Level {
    type Err = String;
    fn from_str(s: &str) -> Result<Level, String> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "raid0" | "0" => Level::Raid0,
            "raid1" | "1" => Level::Raid1,
            "raid5" | "5" => Level::Raid5,
            "raid6" | "6" => Level::Raid6,
            "raid10" | "10" => Level::Raid10,
            other => return Err(format!("unknown RAID level {other:?} (raid0|raid1|raid5|raid6|raid10)")),
        })
    }
}

/// Placement of data and redundancy within a level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Layout {
    /// RAID0 round robin.
    Striped,
    /// Every member holds every chunk.
    Mirror,
    /// md's ALGORITHM_LEFT_SYMMETRIC.
    LeftSymmetric,
    /// md raid10 near layout, 2 copies on adjacent members.
    Near2,
}

impl Layout {
    /// On-disk code.
    pub fn code(self) -> u8 {
        match self {
            Layout::Striped => 0,
            Layout::Mirror => 1,
            Layout::LeftSymmetric => 2,
            Layout::Near2 => 3,
        }
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Layout::Striped => "striped",
            Layout::Mirror => "mirror",
            Layout::LeftSymmetric => "left-symmetric",
            Layout::Near2 => "near2",
        })
    }
}

/// A geometry that cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum GeometryError {
    /// Too few members for the level.
    #[error("{level} needs at least {min} members, got {got}")]
    TooFewMembers {
        /// Level asked for.
        level: Level,
        /// Its minimum.
        min: usize,
        /// Members given.
        got: usize,
    },
    /// More members than the superblock can describe.
    #[error("at most {max} members are supported, got {got}")]
    TooManyMembers {
        /// Limit.
        max: usize,
        /// Members given.
        got: usize,
    },
    /// Chunk size not a positive multiple of 4 KiB.
    #[error("chunk size {0} bytes is not a positive multiple of 4096")]
    BadChunk(u64),
    /// Members too small to hold one stripe.
    #[error("members hold {0} data bytes each, less than one chunk")]
    TooSmall(u64),
}

/// The I/O granularity of the engine and the NBD preferred block size.
pub const BLOCK_BYTES: u64 = 4096;
/// Largest group this build describes in a superblock.
pub const MAX_MEMBERS: usize = 64;

/// One copy of a piece of data on a member: member index and byte offset within the data area.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place {
    /// Member index.
    pub member: usize,
    /// Byte offset of the chunk start within the member's data area.
    pub chunk_offset: u64,
}

/// Shape of a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Level.
    pub level: Level,
    /// Member count.
    pub members: usize,
    /// Chunk size in bytes.
    pub chunk_bytes: u64,
    /// Chunk rows per member.
    pub rows: u64,
}

impl Geometry {
    /// Builds and validates a geometry for members with `member_data_bytes` usable bytes each.
    pub fn new(
        level: Level,
        members: usize,
        chunk_bytes: u64,
        member_data_bytes: u64,
    ) -> Result<Geometry, GeometryError> {
        if members < level.min_members() {
            return Err(GeometryError::TooFewMembers { level, min: level.min_members(), got: members });
        }
        if members > MAX_MEMBERS {
            return Err(GeometryError::TooManyMembers { max: MAX_MEMBERS, got: members });
        }
        if chunk_bytes == 0 || !chunk_bytes.is_multiple_of(BLOCK_BYTES) {
            return Err(GeometryError::BadChunk(chunk_bytes));
        }
        let rows = member_data_bytes / chunk_bytes;
        let g = Geometry { level, members, chunk_bytes, rows };
        if rows == 0 || g.stripes() == 0 {
            return Err(GeometryError::TooSmall(member_data_bytes));
        }
        Ok(g)
    }

    /// Parity blocks per stripe.
    pub fn parities(&self) -> usize {
        match self.level {
            Level::Raid5 => 1,
            Level::Raid6 => 2,
            _ => 0,
        }
    }

    /// True for RAID1 and RAID10.
    pub fn is_mirror(&self) -> bool {
        matches!(self.level, Level::Raid1 | Level::Raid10)
    }

    /// Copies of each chunk.
    pub fn copies(&self) -> usize {
        match self.level {
            Level::Raid1 => self.members,
            Level::Raid10 => 2,
            _ => 1,
        }
    }

    /// Data chunks per stripe.
    pub fn data_per_stripe(&self) -> usize {
        match self.level {
            Level::Raid0 => self.members,
            Level::Raid5 | Level::Raid6 => self.members - self.parities(),
            Level::Raid1 | Level::Raid10 => 1,
        }
    }

    /// Logical bytes per stripe.
    pub fn stripe_bytes(&self) -> u64 {
        self.data_per_stripe() as u64 * self.chunk_bytes
    }

    /// Stripes in the group.
    pub fn stripes(&self) -> u64 {
        match self.level {
            Level::Raid10 => self.rows * self.members as u64 / 2,
            _ => self.rows,
        }
    }

    /// Logical capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.stripes() * self.stripe_bytes()
    }

    /// Member failures the level survives whatever members fail.
    pub fn tolerance(&self) -> usize {
        match self.level {
            Level::Raid0 => 0,
            Level::Raid1 => self.members - 1,
            Level::Raid5 | Level::Raid10 => 1,
            Level::Raid6 => 2,
        }
    }

    /// P member of a parity stripe (md left-symmetric: n-1-(s mod n)).
    pub fn p_member(&self, stripe: u64) -> usize {
        let n = self.members as u64;
        (n - 1 - stripe % n) as usize
    }

    /// Q member of a RAID6 stripe: the member after P.
    pub fn q_member(&self, stripe: u64) -> usize {
        (self.p_member(stripe) + 1) % self.members
    }

    /// Member holding data index `dd` of a parity or RAID0 stripe.
    pub fn data_member(&self, stripe: u64, dd: usize) -> usize {
        match self.level {
            Level::Raid5 => (self.p_member(stripe) + 1 + dd) % self.members,
            Level::Raid6 => (self.p_member(stripe) + 2 + dd) % self.members,
            _ => dd,
        }
    }

    /// Every copy of data index `dd` of `stripe`.
    pub fn places(&self, stripe: u64, dd: usize) -> Vec<Place> {
        let row_offset = |row: u64| row * self.chunk_bytes;
        match self.level {
            Level::Raid0 | Level::Raid5 | Level::Raid6 => {
                vec![Place { member: self.data_member(stripe, dd), chunk_offset: row_offset(stripe) }]
            }
            Level::Raid1 => (0..self.members).map(|m| Place { member: m, chunk_offset: row_offset(stripe) }).collect(),
            Level::Raid10 => {
                let m = self.members as u64;
                (0..2u64)
                    .map(|k| {
                        let pos = stripe * 2 + k;
                        Place { member: (pos % m) as usize, chunk_offset: row_offset(pos / m) }
                    })
                    .collect()
            }
        }
    }

    /// Data index and member of every block of a parity stripe, data first, then P, then Q.
    pub fn parity_stripe_members(&self, stripe: u64) -> Vec<usize> {
        let mut v: Vec<usize> = (0..self.data_per_stripe()).map(|dd| self.data_member(stripe, dd)).collect();
        if self.parities() >= 1 {
            v.push(self.p_member(stripe));
        }
        if self.parities() == 2 {
            v.push(self.q_member(stripe));
        }
        v
    }

    /// Splits a logical range into per-chunk pieces: (stripe, data index, offset in chunk, length).
    pub fn split(&self, offset: u64, len: u64) -> impl Iterator<Item = Piece> + '_ {
        let mut pos = offset;
        let end = offset + len;
        std::iter::from_fn(move || {
            if pos >= end {
                return None;
            }
            let chunk = pos / self.chunk_bytes;
            let in_chunk = pos % self.chunk_bytes;
            let n = (self.chunk_bytes - in_chunk).min(end - pos);
            let dps = self.data_per_stripe() as u64;
            let piece = Piece { stripe: chunk / dps, dd: (chunk % dps) as usize, in_chunk, len: n, logical: pos };
            pos += n;
            Some(piece)
        })
    }
}

/// A part of a logical range that lies in one chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    /// Stripe index.
    pub stripe: u64,
    /// Data index within the stripe.
    pub dd: usize,
    /// Offset within the chunk.
    pub in_chunk: u64,
    /// Length in bytes.
    pub len: u64,
    /// Logical offset of the piece.
    pub logical: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raid5_left_symmetric_matches_md() {
        // md raid5 left-symmetric, 4 disks: P on disk 3-(s mod 4), data starts after P and wraps,
        // so stripe 1 has P on disk 2, D0 on disk 3, D1 on disk 0, D2 on disk 1.
        let g = Geometry::new(Level::Raid5, 4, 65536, 65536 * 8).unwrap();
        assert_eq!(g.parity_stripe_members(0), vec![0, 1, 2, 3]);
        assert_eq!(g.parity_stripe_members(1), vec![3, 0, 1, 2]);
        assert_eq!(g.parity_stripe_members(2), vec![2, 3, 0, 1]);
        assert_eq!(g.parity_stripe_members(3), vec![1, 2, 3, 0]);
        assert_eq!(g.parity_stripe_members(4), vec![0, 1, 2, 3]);
    }

    #[test]
    fn raid6_q_follows_p() {
        let g = Geometry::new(Level::Raid6, 5, 4096, 4096 * 10).unwrap();
        // stripe 0: P on 4, Q on 0, data from 1.
        assert_eq!(g.parity_stripe_members(0), vec![1, 2, 3, 4, 0]);
        // stripe 1: P on 3, Q on 4, data from 0.
        assert_eq!(g.parity_stripe_members(1), vec![0, 1, 2, 3, 4]);
        for s in 0..10 {
            let mut m = g.parity_stripe_members(s);
            m.sort();
            assert_eq!(m, (0..5).collect::<Vec<_>>(), "stripe {s} uses each member once");
        }
    }

    #[test]
    fn raid10_near2_copies_are_adjacent_and_cover_members() {
        let g = Geometry::new(Level::Raid10, 3, 4096, 4096 * 4).unwrap();
        assert_eq!(g.stripes(), 6);
        let mut used = std::collections::HashSet::new();
        for s in 0..g.stripes() {
            let p = g.places(s, 0);
            assert_eq!(p.len(), 2);
            assert_ne!(p[0].member, p[1].member);
            for x in p {
                assert!(used.insert((x.member, x.chunk_offset)), "place reused");
                assert!(x.chunk_offset < g.rows * g.chunk_bytes);
            }
        }
        assert_eq!(used.len() as u64, g.rows * 3);
    }

    #[test]
    fn split_round_trips() {
        for level in [Level::Raid0, Level::Raid1, Level::Raid5, Level::Raid6, Level::Raid10] {
            let g = Geometry::new(level, 5, 8192, 8192 * 16).unwrap();
            let (off, len) = (5000u64, 100_000u64);
            let pieces: Vec<Piece> = g.split(off, len).collect();
            let mut pos = off;
            for p in &pieces {
                assert_eq!(p.logical, pos);
                let chunk = p.stripe * g.data_per_stripe() as u64 + p.dd as u64;
                assert_eq!(chunk * g.chunk_bytes + p.in_chunk, pos);
                pos += p.len;
            }
            assert_eq!(pos, off + len);
        }
    }
}
