//! NBD option negotiation, fed as a client's bytes arrive: in pieces whose sizes the input
//! chooses. Checks: never a panic, every step consumes at most what it was given, and a
//! negotiation that ends (Go, Abort or a violation) stays ended. The first byte also picks the
//! server's TLS setting (none, optional, required; TLS running or not), and a server that
//! requires TLS must never let a plaintext client reach transmission.
#![no_main]

use amf::nbd::negotiate::{step, Negotiation, Outcome, Tls};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, input)) = data.split_first() else { return };
    let piece = (cut as usize % 64) + 1;
    let mut tls = Tls { offered: cut & 64 != 0, required: cut & 128 != 0, active: false, refused: 0 };
    tls.required &= tls.offered;
    tls.active = tls.offered && cut & 32 != 0 && !tls.required;
    let mut state = Negotiation::ClientFlags;
    let (mut have, mut fed) = (Vec::new(), 0);
    let mut out = Vec::new();
    while fed < input.len() {
        let end = (fed + piece).min(input.len());
        have.extend_from_slice(&input[fed..end]);
        fed = end;
        match step(&mut state, &have, &mut out, 1 << 30, "amf", &mut tls) {
            Ok((used, outcome)) => {
                assert!(used <= have.len(), "consumed {used} of {}", have.len());
                assert!(!(tls.required && outcome == Outcome::Go), "plaintext reached transmission");
                have.drain(..used);
                if outcome != Outcome::Continue {
                    return;
                }
            }
            Err(_) => return,
        }
    }
});
