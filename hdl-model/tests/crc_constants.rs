//! The RTL's frame CRC constants (hdl-model/rtl/amf_crc_pkg.sv) against the crc32c crate: the
//! CRC of a frame's 28 bytes is affine in the data, so the RTL keeps the CRC of zero bytes and,
//! per output bit, a mask of the data bits it depends on. Both are recomputed here.

/// CRC-32C from the all-ones start without the final inversion (what the RTL computes).
fn raw_crc(data: &[u8; 28]) -> u32 {
    !crc32c::crc32c(data)
}

/// Parses `224'h<56 hex digits>` into the bit vector, bit i = data bit i.
fn bits_224(hex: &str) -> Vec<bool> {
    assert_eq!(hex.len(), 56, "224-bit constant {hex}");
    let mut bits = vec![false; 224];
    for (k, c) in hex.chars().rev().enumerate() {
        let v = c.to_digit(16).unwrap_or_else(|| panic!("not hex: {c}"));
        for b in 0..4 {
            bits[4 * k + b] = v >> b & 1 == 1;
        }
    }
    bits
}

#[test]
fn rtl_frame_crc_constants_match_crc32c() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/rtl/amf_crc_pkg.sv");
    let sv = std::fs::read_to_string(path).expect("amf_crc_pkg.sv is readable");
    let zero = raw_crc(&[0; 28]);
    let init = sv
        .lines()
        .find_map(|l| l.trim().strip_prefix("localparam logic [31:0] FrameCrcInit = 32'h"))
        .and_then(|v| u32::from_str_radix(v.trim_end_matches(';'), 16).ok())
        .expect("FrameCrcInit in amf_crc_pkg.sv");
    assert_eq!(init, zero, "FrameCrcInit");
    // Contribution of each data bit: raw(e_i) ^ raw(0).
    let unit: Vec<u32> = (0..224)
        .map(|i| {
            let mut d = [0u8; 28];
            d[i / 8] = 1 << (i % 8);
            raw_crc(&d) ^ zero
        })
        .collect();
    let mut seen = 0;
    for line in sv.lines() {
        let Some((j, rest)) = line.trim().split_once(": frame_crc_mask = 224'h") else { continue };
        let j: usize = j.parse().expect("mask index");
        let mask = bits_224(rest.trim_end_matches(';'));
        for (i, &m) in mask.iter().enumerate() {
            assert_eq!(m, unit[i] >> j & 1 == 1, "frame_crc_mask({j}) bit {i}");
        }
        seen += 1;
    }
    assert_eq!(seen, 32, "one mask per CRC bit");
}
