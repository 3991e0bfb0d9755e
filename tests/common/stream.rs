//! A stream of verifiable writes through qemu-io: what each place must hold after the writes
//! a controller acknowledged, whatever happened to it after.

use super::qemu_io;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

/// Writes of 8 KiB through qemu-io, one after another, over `PLACES` places (4 MiB): write i
/// goes to place i % PLACES with pattern byte i % 251 + 1 (so two writes of one place differ).
pub const WRITES: u64 = 6000;
pub const PLACES: u64 = 512;
pub const WRITE_BYTES: u64 = 8192;

pub fn pattern(i: u64) -> u64 {
    i % 251 + 1
}

/// What each place must hold after the writes `0..=last` of a writer whose first place is
/// `first` were acknowledged and write `last + 1` may or may not have happened: (place,
/// allowed patterns).
pub fn expected(first: u64, last: u64) -> Vec<(u64, Vec<u64>)> {
    (0..PLACES.min(last + 1))
        .map(|p| {
            let done = last - (last + PLACES - p) % PLACES;
            let mut allowed = vec![pattern(done)];
            if done + PLACES == last + 1 {
                allowed.push(pattern(last + 1));
            }
            (first + p, allowed)
        })
        .collect()
}

/// qemu-io writing `WRITES` writes through `uri` from place `first` on; the receiver gets one
/// message per write it answered. `cache` is qemu's cache mode: `writeback` (the writes stay
/// in the controller's cache) or `writethrough` (every write is FUA: on the members before its
/// answer).
pub fn spawn_writer(uri: &str, first: u64, cache: &str) -> (std::process::Child, std::sync::mpsc::Receiver<()>) {
    let mut args = vec!["-f".to_string(), "raw".to_string(), "-t".to_string(), cache.to_string()];
    for i in 0..WRITES {
        args.push("-c".into());
        args.push(format!("write -P {} {} {WRITE_BYTES}", pattern(i), (first + i % PLACES) * WRITE_BYTES));
    }
    args.push(uri.to_string());
    let mut writer = Command::new("qemu-io").args(&args).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let out = writer.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if line.starts_with("wrote 8192/8192 bytes at offset ") {
                let _ = tx.send(());
            }
        }
    });
    (writer, rx)
}

/// Reads every place back through `uri` and checks it holds one allowed pattern, whole.
pub fn verify(uri: &str, want: &[(u64, Vec<u64>)]) {
    let cmds: Vec<String> = want.iter().map(|(p, _)| format!("read -v {} {WRITE_BYTES}", p * WRITE_BYTES)).collect();
    let refs: Vec<&str> = cmds.iter().map(|s| s.as_str()).collect();
    for (chunk, want) in refs.chunks(64).zip(want.chunks(64)) {
        let out = qemu_io(uri, chunk);
        // `read -v` dumps the bytes, 16 per line after the offset: the values each place holds.
        let mut seen: std::collections::BTreeMap<u64, std::collections::BTreeSet<u64>> = Default::default();
        for l in out.lines().filter(|l| l.len() > 9 && l.as_bytes()[8] == b':') {
            let Ok(off) = u64::from_str_radix(&l[..8], 16) else { continue };
            let values = l[9..].split_whitespace().take(16).filter_map(|b| u64::from_str_radix(b, 16).ok());
            seen.entry(off / WRITE_BYTES).or_default().extend(values);
        }
        assert_eq!(seen.len(), want.len(), "through {uri}: {out}");
        for (p, allowed) in want {
            let got = &seen[p];
            assert!(
                got.len() == 1 && allowed.iter().any(|a| got.contains(a)),
                "place {p} through {uri}: bytes {got:?}, want all one of {allowed:?}"
            );
        }
    }
}
