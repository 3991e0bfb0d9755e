//! NBD transmission-phase request headers and NBD_OPT_INFO/GO payloads. Checks: never a
//! panic; a request that parses has the magic and a length within the protocol's limit or is
//! refused by the caller's checks (what parse_request returns is what the server acts on).
#![no_main]

use amf::nbd::proto::{parse_info, parse_request, REQUEST_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for chunk in data.chunks_exact(REQUEST_BYTES) {
        let mut b = [0u8; REQUEST_BYTES];
        b.copy_from_slice(chunk);
        if let Some(r) = parse_request(&b) {
            // The same bytes parse the same way.
            assert_eq!(parse_request(&b), Some(r));
        }
    }
    let _ = parse_info(data);
});
