//! One controller's lease record as it lies on every member: a page of which the first
//! [`RECORD_BYTES`] are used, checked by CRC32C and tied to the group by its UUID, so that a
//! torn, foreign or zeroed page reads as "no record" rather than as a live controller.

/// "AMFLEASE".
const MAGIC: u64 = 0x4553_4145_4c46_4d41;
/// Format version.
const VERSION: u32 = 1;
/// Bytes of a record that are used (the rest of its page is zero).
pub const RECORD_BYTES: usize = 64;

/// What a controller says about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Standing {
    /// Renewing and serving (past its start barrier): a member of the running membership.
    Live,
    /// Renewing, at its start barrier (the cluster is starting: no one serves yet).
    Starting,
    /// Renewing, joining a running membership (a restarted controller; not a member yet).
    Joining,
    /// It fenced itself and every member write of its ended: take over at once.
    Fenced,
    /// It stopped clean (everything written back): nothing to take over.
    Left,
}

impl Standing {
    fn code(self) -> u8 {
        match self {
            Standing::Live => 1,
            Standing::Fenced => 2,
            Standing::Left => 3,
            Standing::Starting => 4,
            Standing::Joining => 5,
        }
    }
    fn from_code(c: u8) -> Option<Standing> {
        Some(match c {
            1 => Standing::Live,
            2 => Standing::Fenced,
            3 => Standing::Left,
            4 => Standing::Starting,
            5 => Standing::Joining,
            _ => return None,
        })
    }
}

/// A lease record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Record {
    /// The controller.
    pub node: u8,
    /// Its process's run (a restart is a new incarnation).
    pub incarnation: u64,
    /// Renewals so far in this incarnation: observers count time from its last change.
    pub seq: u64,
    /// The membership epoch it serves in.
    pub epoch: u32,
    /// The controllers it hears over the fabric (itself included).
    pub reach: u8,
    /// What it says about itself.
    pub standing: Standing,
    /// The member it is rebuilding, if it runs a rebuild (a survivor resumes it if it dies).
    pub rebuilding: Option<u8>,
}

impl Record {
    /// Its bytes for the group `uuid`.
    pub fn encode(&self, uuid: &[u8; 16]) -> [u8; RECORD_BYTES] {
        let mut b = [0u8; RECORD_BYTES];
        b[0..8].copy_from_slice(&MAGIC.to_le_bytes());
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[12] = self.node;
        b[13] = self.standing.code();
        b[14] = self.reach;
        b[15] = self.rebuilding.map_or(0, |m| m.saturating_add(1));
        b[16..32].copy_from_slice(uuid);
        b[32..40].copy_from_slice(&self.incarnation.to_le_bytes());
        b[40..48].copy_from_slice(&self.seq.to_le_bytes());
        b[48..52].copy_from_slice(&self.epoch.to_le_bytes());
        let crc = crc32c::crc32c(&b[..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// The record in `b` if it is one of group `uuid`'s, whole.
    pub fn decode(b: &[u8], uuid: &[u8; 16]) -> Option<Record> {
        let b = b.get(..RECORD_BYTES)?;
        let u64_at = |i: usize| b.get(i..i + 8).and_then(|s| s.try_into().ok()).map(u64::from_le_bytes);
        let u32_at = |i: usize| b.get(i..i + 4).and_then(|s| s.try_into().ok()).map(u32::from_le_bytes);
        if u64_at(0)? != MAGIC || u32_at(8)? != VERSION || &b[16..32] != uuid {
            return None;
        }
        if u32_at(60)? != crc32c::crc32c(&b[..60]) {
            return None;
        }
        Some(Record {
            node: b[12],
            standing: Standing::from_code(b[13])?,
            reach: b[14],
            rebuilding: b[15].checked_sub(1),
            incarnation: u64_at(32)?,
            seq: u64_at(40)?,
            epoch: u32_at(48)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_and_damage_reads_as_none() {
        let uuid = [7u8; 16];
        let r = Record {
            node: 2,
            incarnation: 99,
            seq: 12345,
            epoch: 17,
            reach: 0b101,
            standing: Standing::Live,
            rebuilding: None,
        };
        let b = r.encode(&uuid);
        assert_eq!(Record::decode(&b, &uuid), Some(r));
        let rb = Record { rebuilding: Some(3), ..r };
        assert_eq!(Record::decode(&rb.encode(&uuid), &uuid), Some(rb));
        assert_eq!(Record::decode(&b, &[8u8; 16]), None, "another group's record");
        assert_eq!(Record::decode(&[0u8; RECORD_BYTES], &uuid), None, "a page never written");
        assert_eq!(Record::decode(&b[..10], &uuid), None, "short");
        for i in 0..RECORD_BYTES {
            let mut bad = b;
            bad[i] ^= 0x10;
            assert_eq!(Record::decode(&bad, &uuid), None, "byte {i} flipped");
        }
    }
}
