//! A controller's TOML configuration, parsed and checked as `amf serve --config` does.
//! Checks: never a panic; a bad file is an error, not a crash.
#![no_main]

use amf::cluster::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Config::parse(text);
    }
});
