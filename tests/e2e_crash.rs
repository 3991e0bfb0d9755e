//! Crash test: kill -9 the controller during writes from several connections; the next start
//! resyncs only the dirty regions, scrub is clean, and every acknowledged write reads back.

mod common;
use common::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

const BLOCK: u64 = 4096;

fn pattern(block: u64, version: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(BLOCK as usize);
    while v.len() < BLOCK as usize {
        v.extend_from_slice(&block.to_le_bytes());
        v.extend_from_slice(&version.to_le_bytes());
        v.extend_from_slice(&(!version).to_le_bytes());
    }
    v.truncate(BLOCK as usize);
    v
}

#[test]
fn kill_9_during_writes_loses_no_acknowledged_write() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("g");
    // 64 MiB members, 16 KiB chunks, 4 MiB bitmap regions: many regions, writes confined to a few.
    let c = start(
        &dir,
        &["--level", "raid5", "--members", "4", "--member-size", "64M", "--chunk", "16K", "--bitmap-region", "4M"],
    );
    let writers = 4u64;
    const BLOCKS_PER_WRITER: u64 = 96;
    // Writer w owns blocks spread over a 4 MiB window so only a few regions get dirty.
    let block_of = move |w: u64, i: u64| (w * BLOCKS_PER_WRITER + i) * 7 % 1024;
    // acked[block] = last acknowledged version; inflight[block] = version sent, not yet acked.
    let acked = Arc::new(Mutex::new(vec![0u32; 1024]));
    let inflight = Arc::new(Mutex::new(vec![0u32; 1024]));
    let stop = Arc::new(AtomicBool::new(false));
    let addr = c.nbd_addr();
    let threads: Vec<_> = (0..writers)
        .map(|w| {
            let (acked, inflight, stop, addr) = (acked.clone(), inflight.clone(), stop.clone(), addr.clone());
            std::thread::spawn(move || {
                let mut cl = nbd_client::Client::connect(&addr);
                let mut version = 0u32;
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    version += 1;
                    for i in 0..BLOCKS_PER_WRITER {
                        let b = block_of(w, i);
                        inflight.lock().unwrap()[b as usize] = version;
                        match cl.write(b * BLOCK, &pattern(b, version), 0) {
                            Ok(0) => acked.lock().unwrap()[b as usize] = version,
                            _ => return n,
                        }
                        n += 1;
                    }
                }
                n
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    c.crash();
    stop.store(true, Ordering::Relaxed);
    let total: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(total > 100, "writers made progress before the crash ({total} writes)");
    assert_eq!(inspect(&dir)["clean"], false, "a crash leaves the group dirty");

    let c = start(&dir, &[]);
    let log = c.log();
    let line = log.lines().find(|l| l.contains("resynced")).unwrap_or_else(|| panic!("no resync line: {log}"));
    // "amf: controller 0: resynced N of M stripes (...)"
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "resynced").unwrap();
    let (done, of): (u64, u64) = (words[at + 1].parse().unwrap(), words[at + 3].parse().unwrap());
    assert!(done > 0 && done * 4 < of, "resync limited to dirty regions: {line}");
    let mut cl = nbd_client::Client::connect(&c.nbd_addr());
    let (acked, inflight) = (acked.lock().unwrap(), inflight.lock().unwrap());
    let mut checked = 0;
    for b in 0..1024u64 {
        if acked[b as usize] == 0 && inflight[b as usize] == 0 {
            continue;
        }
        let got = cl.read(b * BLOCK, BLOCK as u32).unwrap().unwrap();
        let ok_versions = [acked[b as usize], inflight[b as usize]];
        assert!(
            ok_versions.iter().any(|&v| v != 0 && got == pattern(b, v))
                || (acked[b as usize] == 0 && got.iter().all(|&x| x == 0)),
            "block {b}: acknowledged version {} lost",
            acked[b as usize]
        );
        checked += 1;
    }
    assert!(checked > 0);
    cl.disconnect();
    assert!(c.stop().success());
    let out = amf(&["scrub", dir.to_str().unwrap(), "--json"]);
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["mismatches"], 0, "parity clean after crash and resync");
}

/// A group that crashes while degraded is not served again without --force: its dirty stripes'
/// parity may not match their data, so the missing member's blocks there could read back wrong.
#[test]
fn crash_while_degraded_needs_force() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("g");
    let c = start(&dir, &["--level", "raid5", "--members", "4", "--member-size", "16M", "--chunk", "16K"]);
    qemu_io(&c.nbd_uri, &["write -P 0x21 0 1M"]);
    assert!(c.stop().success());
    std::fs::remove_file(member(&dir, 2)).unwrap();
    let c = start(&dir, &[]);
    // Writes acknowledged but not flushed: their write-intent bits are still set at the crash.
    // (qemu-io would flush on close, which clears them: then the restart is safe and allowed.)
    let mut cl = nbd_client::Client::connect(&c.nbd_addr());
    assert_eq!(cl.write(1 << 20, &[0x22; 512 * 1024], 0).unwrap(), 0);
    c.crash();
    let err = try_start(&dir, &[]).err().expect("a degraded group that crashed must not start without --force");
    assert!(err.contains("write hole") && err.contains("--force") && err.contains("[2]"), "{err}");
    assert_eq!(inspect(&dir)["clean"], false, "refusing to start leaves the group as it was");
    let c = start(&dir, &["--force"]);
    qemu_io(&c.nbd_uri, &["read -P 0x21 0 1M", "read -P 0x22 1M 512k"]);
    assert!(c.stop().success());
    // A clean stop after the forced start leaves nothing to force.
    let c = start(&dir, &[]);
    assert!(c.stop().success());
}
