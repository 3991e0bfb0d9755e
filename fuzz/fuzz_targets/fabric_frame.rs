//! The controller fabric's frames (header, then a bincode payload), as a peer or an attacker
//! sends them on a connection. Checks: never a panic, never more than the payload limit held,
//! and a frame that decodes encodes back to a frame that decodes to the same message.
#![no_main]

use amf::amf::shell::net::{encode, read_frame, FrameError};
use libfuzzer_sys::fuzz_target;

/// The limit a controller with 16 KiB lines uses (line + 1 KiB).
const PAYLOAD_MAX: usize = (16 << 10) + 1024;

fuzz_target!(|data: &[u8]| {
    let mut r = data;
    loop {
        match read_frame(&mut r, PAYLOAD_MAX) {
            Ok((from, epoch, msg)) => {
                let again = encode(from, epoch, &msg).expect("a decoded message encodes");
                let (f2, e2, m2) = read_frame(&mut again.as_slice(), PAYLOAD_MAX).expect("and decodes again");
                assert_eq!((f2, e2, &m2), (from, epoch, &msg));
            }
            Err(FrameError::Io(_)) => return,
            Err(_) => return,
        }
    }
});
