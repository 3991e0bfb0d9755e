//! A member's superblock as read from disk (any bytes: a foreign disk, a torn write, an
//! attacker's file). The first input byte says whether to give the rest the magic, a version and
//! a valid checksum first, so the fuzzer reaches the field checks behind them. Checks: never a
//! panic (overflow checks on), and what decodes encodes to bytes that decode the same.
#![no_main]

use amf::raid::superblock::{reseal, Superblock, MAGIC, SUPERBLOCK_BYTES, VERSION, VERSION_MIN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&how, rest)) = data.split_first() else { return };
    let mut b = rest.to_vec();
    if how & 1 == 1 {
        b.resize(SUPERBLOCK_BYTES, 0);
        b[0..8].copy_from_slice(&MAGIC);
        let version = if how & 2 == 0 { VERSION } else { VERSION_MIN };
        b[8..12].copy_from_slice(&version.to_le_bytes());
        reseal(&mut b);
    }
    if let Ok(sb) = Superblock::decode(&b) {
        let again = Superblock::decode(&sb.encode()).expect("an encoded superblock decodes");
        assert_eq!(again, sb);
    }
});
