//! The member superblock: one 4 KiB block at offset 0 of every member, protected by crc32c.
//!
//! Layout (little-endian): magic[8] version:u32 crc:u32 uuid[16] level:u8 layout:u8 clean:u8 pad:u8
//! chunk:u32 data_offset:u64 member_data_bytes:u64 index:u32 count:u32 events:u64 epoch:u64
//! bitmap_offset:u64 bitmap_bytes:u32 region_stripes:u32 recovery_stripes:u64 created_unix:u64
//! bitmap_slots:u32 (version 2) then at byte 128 one state byte per member slot. The crc covers
//! the whole block with the crc field zeroed.
//!
//! Version 2 added the write-intent bitmap slots: `bitmap_slots` bitmaps of `bitmap_bytes` each,
//! one per controller, back to back from `bitmap_offset`. A version 1 superblock (one slot) is
//! still read; the next superblock update writes version 2.

use super::geometry::{Layout, Level, MAX_MEMBERS};
use serde::Serialize;

/// Bytes reserved for the superblock.
pub const SUPERBLOCK_BYTES: usize = 4096;
/// Identifies an amf member.
pub const MAGIC: [u8; 8] = *b"AMF-RAID";
/// The format this build writes.
pub const VERSION: u32 = 2;
/// The oldest format this build reads.
pub const VERSION_MIN: u32 = 1;
/// Most write-intent bitmap slots (one per controller of a cluster).
pub const BITMAP_SLOTS_MAX: u32 = 8;
const CRC_AT: usize = 12;
const STATES_AT: usize = 128;

/// State of one member as recorded in the superblocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// Holds current data.
    Active,
    /// Failed or missing: its contents are not trusted.
    Faulty,
    /// Being rebuilt; stripes below its recovery point are current.
    Rebuilding,
}

impl MemberState {
    fn code(self) -> u8 {
        match self {
            MemberState::Active => 0,
            MemberState::Faulty => 1,
            MemberState::Rebuilding => 2,
        }
    }
    fn from_code(c: u8) -> Option<MemberState> {
        Some(match c {
            0 => MemberState::Active,
            1 => MemberState::Faulty,
            2 => MemberState::Rebuilding,
            _ => return None,
        })
    }
}

/// Why a superblock did not decode.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SuperblockError {
    /// Shorter than a superblock.
    #[error("superblock truncated: {0} bytes")]
    Truncated(usize),
    /// Not an amf member.
    #[error("no amf superblock (bad magic)")]
    BadMagic,
    /// A version this build does not know.
    #[error("superblock version {0} is not supported (this build reads {VERSION})")]
    Version(u32),
    /// Checksum mismatch.
    #[error("superblock checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum {
        /// Stored crc32c.
        stored: u32,
        /// Computed crc32c.
        computed: u32,
    },
    /// A field holds an impossible value.
    #[error("superblock field {field} is invalid: {value}")]
    Field {
        /// Field name.
        field: &'static str,
        /// Its value.
        value: u64,
    },
}

/// Decoded superblock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Superblock {
    /// Group identity, shared by all members.
    pub uuid: [u8; 16],
    /// RAID level.
    pub level: Level,
    /// Chunk size.
    pub chunk_bytes: u32,
    /// Where data starts on each member.
    pub data_offset_bytes: u64,
    /// Usable data bytes per member.
    pub member_data_bytes: u64,
    /// This member's index.
    pub member_index: u32,
    /// Members in the group.
    pub member_count: u32,
    /// Bumped on every superblock update; the freshest member decides.
    pub events: u64,
    /// Membership epoch of the controllers (used by the cluster layer).
    pub epoch: u64,
    /// True when the group was shut down cleanly.
    pub clean: bool,
    /// Write-intent bitmap location on each member.
    pub bitmap_offset_bytes: u64,
    /// Write-intent bitmap size of one slot.
    pub bitmap_bytes: u32,
    /// Write-intent bitmap slots: one per controller, each `bitmap_bytes` long.
    pub bitmap_slots: u32,
    /// Stripes per bitmap bit.
    pub region_stripes: u32,
    /// For a rebuilding member: stripes already rebuilt.
    pub recovery_stripes: u64,
    /// Creation time, seconds since the epoch.
    pub created_unix: u64,
    /// State of every member, by index.
    pub states: Vec<MemberState>,
}

fn get<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[at..at + N]);
    a
}

impl Superblock {
    /// Layout implied by the level.
    pub fn layout(&self) -> Layout {
        self.level.layout()
    }

    /// The group uuid as text.
    pub fn uuid_string(&self) -> String {
        let h: String = self.uuid.iter().map(|b| format!("{b:02x}")).collect();
        format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
    }

    /// Serializes with a fresh checksum.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; SUPERBLOCK_BYTES];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[16..32].copy_from_slice(&self.uuid);
        b[32] = self.level.code();
        b[33] = self.level.layout().code();
        b[34] = self.clean as u8;
        b[36..40].copy_from_slice(&self.chunk_bytes.to_le_bytes());
        b[40..48].copy_from_slice(&self.data_offset_bytes.to_le_bytes());
        b[48..56].copy_from_slice(&self.member_data_bytes.to_le_bytes());
        b[56..60].copy_from_slice(&self.member_index.to_le_bytes());
        b[60..64].copy_from_slice(&self.member_count.to_le_bytes());
        b[64..72].copy_from_slice(&self.events.to_le_bytes());
        b[72..80].copy_from_slice(&self.epoch.to_le_bytes());
        b[80..88].copy_from_slice(&self.bitmap_offset_bytes.to_le_bytes());
        b[88..92].copy_from_slice(&self.bitmap_bytes.to_le_bytes());
        b[92..96].copy_from_slice(&self.region_stripes.to_le_bytes());
        b[96..104].copy_from_slice(&self.recovery_stripes.to_le_bytes());
        b[104..112].copy_from_slice(&self.created_unix.to_le_bytes());
        b[112..116].copy_from_slice(&self.bitmap_slots.to_le_bytes());
        for (i, s) in self.states.iter().enumerate().take(MAX_MEMBERS) {
            b[STATES_AT + i] = s.code();
        }
        reseal(&mut b);
        b
    }

    /// Parses and validates a superblock.
    pub fn decode(b: &[u8]) -> Result<Superblock, SuperblockError> {
        if b.len() < SUPERBLOCK_BYTES {
            return Err(SuperblockError::Truncated(b.len()));
        }
        let b = &b[..SUPERBLOCK_BYTES];
        if b[0..8] != MAGIC {
            return Err(SuperblockError::BadMagic);
        }
        let version = u32::from_le_bytes(get(b, 8));
        if !(VERSION_MIN..=VERSION).contains(&version) {
            return Err(SuperblockError::Version(version));
        }
        let stored = u32::from_le_bytes(get(b, CRC_AT));
        let mut copy = b.to_vec();
        copy[CRC_AT..CRC_AT + 4].fill(0);
        let computed = crc32c::crc32c(&copy);
        if stored != computed {
            return Err(SuperblockError::Checksum { stored, computed });
        }
        let field = |field: &'static str, value: u64| SuperblockError::Field { field, value };
        let level = Level::from_code(b[32]).ok_or(field("level", b[32] as u64))?;
        if b[33] != level.layout().code() {
            return Err(field("layout", b[33] as u64));
        }
        let member_count = u32::from_le_bytes(get(b, 60));
        if member_count == 0 || member_count as usize > MAX_MEMBERS {
            return Err(field("member_count", member_count as u64));
        }
        let member_index = u32::from_le_bytes(get(b, 56));
        if member_index >= member_count {
            return Err(field("member_index", member_index as u64));
        }
        let chunk_bytes = u32::from_le_bytes(get(b, 36));
        if chunk_bytes == 0 || chunk_bytes % 4096 != 0 {
            return Err(field("chunk_bytes", chunk_bytes as u64));
        }
        let data_offset_bytes = u64::from_le_bytes(get(b, 40));
        let bitmap_offset_bytes = u64::from_le_bytes(get(b, 80));
        let bitmap_bytes = u32::from_le_bytes(get(b, 88));
        let bitmap_slots = if version == 1 { 1 } else { u32::from_le_bytes(get(b, 112)) };
        if bitmap_slots == 0 || bitmap_slots > BITMAP_SLOTS_MAX {
            return Err(field("bitmap_slots", bitmap_slots as u64));
        }
        // Checked: the fields come from disk, and a sum that wraps would pass the bound.
        let bitmap_end = (bitmap_slots as u64 * bitmap_bytes as u64).checked_add(bitmap_offset_bytes);
        if bitmap_offset_bytes < SUPERBLOCK_BYTES as u64 || bitmap_end.is_none_or(|end| end > data_offset_bytes) {
            return Err(field("bitmap_offset_bytes", bitmap_offset_bytes));
        }
        let region_stripes = u32::from_le_bytes(get(b, 92));
        if region_stripes == 0 {
            return Err(field("region_stripes", 0));
        }
        let mut states = Vec::with_capacity(member_count as usize);
        for i in 0..member_count as usize {
            let c = b[STATES_AT + i];
            states.push(MemberState::from_code(c).ok_or(field("member_state", c as u64))?);
        }
        Ok(Superblock {
            uuid: get(b, 16),
            level,
            chunk_bytes,
            data_offset_bytes,
            member_data_bytes: u64::from_le_bytes(get(b, 48)),
            member_index,
            member_count,
            events: u64::from_le_bytes(get(b, 64)),
            epoch: u64::from_le_bytes(get(b, 72)),
            clean: b[34] != 0,
            bitmap_offset_bytes,
            bitmap_bytes,
            bitmap_slots,
            region_stripes,
            recovery_stripes: u64::from_le_bytes(get(b, 96)),
            created_unix: u64::from_le_bytes(get(b, 104)),
            states,
        })
    }
}

/// Writes the checksum of an encoded superblock (`SUPERBLOCK_BYTES` long; shorter is left
/// alone): what `encode` does last, and what tests and the fuzzer use to reach the field checks
/// behind the checksum.
pub fn reseal(b: &mut [u8]) {
    let Some(b) = b.get_mut(..SUPERBLOCK_BYTES) else { return };
    b[CRC_AT..CRC_AT + 4].fill(0);
    let crc = crc32c::crc32c(b);
    b[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
}

#[cfg(test)]
pub(crate) fn sample() -> Superblock {
    Superblock {
        uuid: [7; 16],
        level: Level::Raid6,
        chunk_bytes: 65536,
        data_offset_bytes: 1 << 20,
        member_data_bytes: 64 << 20,
        member_index: 2,
        member_count: 5,
        events: 9,
        epoch: 1,
        clean: true,
        bitmap_offset_bytes: 4096,
        bitmap_bytes: 4096,
        bitmap_slots: 8,
        region_stripes: 4,
        recovery_stripes: 0,
        created_unix: 1,
        states: vec![MemberState::Active; 5],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_bit_flip_is_caught() {
        let sb = sample();
        let enc = sb.encode();
        assert_eq!(Superblock::decode(&enc), Ok(sb));
        for byte in [0usize, 9, 12, 20, 33, 64, 128, 4095] {
            let mut bad = enc.clone();
            bad[byte] ^= 0x10;
            assert!(Superblock::decode(&bad).is_err(), "flip at {byte} accepted");
        }
        assert_eq!(Superblock::decode(&enc[..100]), Err(SuperblockError::Truncated(100)));
    }

    #[test]
    fn version_1_reads_as_one_bitmap_slot() {
        let mut v1 = sample().encode();
        v1[8..12].copy_from_slice(&1u32.to_le_bytes());
        v1[112..116].fill(0);
        reseal(&mut v1);
        let sb = Superblock::decode(&v1).unwrap();
        assert_eq!(sb.bitmap_slots, 1);
        assert_eq!(Superblock { bitmap_slots: 8, ..sb }, sample());
        let mut v3 = sample().encode();
        v3[8..12].copy_from_slice(&3u32.to_le_bytes());
        assert!(matches!(Superblock::decode(&v3), Err(SuperblockError::Version(3))));
    }

    /// Found by the fuzzer (fuzz/, target superblock): a bitmap offset near 2^64 made the
    /// bound's sum overflow (a panic with overflow checks, a wrapped sum that passed without).
    #[test]
    fn a_bitmap_end_past_u64_is_refused() {
        let mut b = sample().encode();
        b[80..88].copy_from_slice(&(u64::MAX - 8).to_le_bytes());
        reseal(&mut b);
        assert!(matches!(Superblock::decode(&b), Err(SuperblockError::Field { field: "bitmap_offset_bytes", .. })));
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..5000)) {
            let _ = Superblock::decode(&bytes);
        }
    }
}
