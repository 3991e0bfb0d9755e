//! The card link under attack, end to end: a cluster of three controllers with Verilator cards
//! (the RTL) and link authentication on (`amf cluster`'s default). The test sniffs a real frame
//! off the loopback link (AF_PACKET, as a party on the link could), then sends it again
//! (replayed), sends it with its counter changed or sealed under another key (forged): the
//! card drops each and counts it, and the cluster keeps serving the same data.

mod common;

use amf_hdl_model::model::link_auth::{self, WireFrame, WIRE_BYTES};
use common::*;
use std::time::{Duration, Instant};

/// Controller `node`'s card link address, as it published it at the rendezvous.
fn link_of(dir: &std::path::Path, node: u8) -> std::net::SocketAddr {
    let path = dir.join(format!("run/rendezvous/node-{node}.json"));
    let published: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    published["link"].as_str().unwrap().parse().unwrap()
}

/// Captures the first UDP datagram of one wire frame sent to `port` on loopback, within
/// `timeout`, while `traffic` runs on another thread.
fn sniff(port: u16, timeout: Duration, traffic: impl FnOnce() + Send + 'static) -> Option<WireFrame> {
    // SAFETY: plain socket calls on a descriptor this function owns and closes.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM, (libc::ETH_P_IP as u16).to_be() as i32) };
    assert!(fd >= 0, "AF_PACKET socket (needs root): {}", std::io::Error::last_os_error());
    let tv = libc::timeval { tv_sec: 0, tv_usec: 200_000 };
    // SAFETY: tv outlives the call; the size is its own.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    let worker = std::thread::spawn(traffic);
    let deadline = Instant::now() + timeout;
    let mut found = None;
    let mut buf = [0u8; 2048];
    while found.is_none() && Instant::now() < deadline {
        // SAFETY: buf is writable for its length.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
        if n <= 0 {
            continue;
        }
        let p = &buf[..n as usize];
        let ihl = (p[0] & 0xf) as usize * 4;
        if p.len() < ihl + 8 || p[0] >> 4 != 4 || p[9] != libc::IPPROTO_UDP as u8 {
            continue;
        }
        let dst = u16::from_be_bytes([p[ihl + 2], p[ihl + 3]]);
        let payload = &p[ihl + 8..];
        if dst == port && payload.len() == WIRE_BYTES {
            found = Some(payload.try_into().unwrap());
        }
    }
    // SAFETY: fd is this function's.
    unsafe { libc::close(fd) };
    worker.join().unwrap();
    found
}

fn card_counter(c: &Cluster, i: usize, k: &str) -> u64 {
    let v = c.admin_of(i, "/status");
    v["coherency"]["card"]["counters"][k].as_u64().unwrap_or_else(|| panic!("no card counter {k}: {v}"))
}

fn wait_counter(c: &Cluster, i: usize, k: &str, above: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while card_counter(c, i, k) <= above {
        assert!(Instant::now() < deadline, "{k} stayed at {above}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn replayed_and_forged_card_frames_are_dropped_and_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("g");
    let args = ["--controllers", "3", "--level", "raid5", "--members", "3", "--member-size", "16M", "--chunk", "16K"];
    let c = start(&dir, &args);
    assert_eq!(c.admin_of(1, "/status")["coherency"]["card"]["link_auth"], true);
    let target = link_of(&dir, 1);
    // Traffic that makes cards talk to node 1: writes through node 0 and 2 of lines node 1
    // reads.
    let uris: Vec<String> = (0..3).map(|i| c.uri(i).to_string()).collect();
    let frame = sniff(target.port(), Duration::from_secs(60), move || {
        for round in 0..20u8 {
            qemu_io(&uris[1], &["read 0 256k"]);
            qemu_io(&uris[(round as usize % 2) * 2], &[&format!("write -P {} 0 256k", 0x30 + round)]);
        }
    })
    .expect("no card frame to node 1 seen on the link");
    qemu_io(c.uri(0), &["write -P 0x77 0 256k"]);
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    // Replayed: the very frame again.
    let replayed = card_counter(&c, 1, "replayed");
    sock.send_to(&frame, target).unwrap();
    wait_counter(&c, 1, "replayed", replayed);
    // Forged: a new counter under the old MAC; a frame sealed under another key (from outside
    // the cluster); the frame changed and its CRC recomputed (as anyone can).
    let forged = card_counter(&c, 1, "forged");
    let mut moved = frame;
    moved[32..40].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    let outsider = link_auth::seal(&link_auth::head(&frame), Some([1, 2, 3, 4]), u64::MAX / 2);
    let mut changed = frame;
    changed[16] ^= 0x40; // the resource
    let crc = crc32c::crc32c(&changed[..28]);
    changed[28..32].copy_from_slice(&crc.to_le_bytes());
    for f in [moved, outsider, changed] {
        sock.send_to(&f, target).unwrap();
    }
    wait_counter(&c, 1, "forged", forged + 2);
    assert_eq!(card_counter(&c, 1, "crc_errors"), 0, "the forgeries had good CRCs");
    // Still one coherent group: every controller reads the last write.
    for i in 0..3 {
        qemu_io(c.uri(i), &["read -P 0x77 0 256k"]);
    }
    let status = amf(&["status", "--admin", &c.controllers[1].1]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("card link: authenticated") && text.contains("forged"), "{text}");
    assert!(c.stop().success());
}
