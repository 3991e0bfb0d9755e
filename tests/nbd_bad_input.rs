//! Malformed NBD traffic against the real server on a real RAID group: every case gets an error
//! reply or a closed connection, nothing is written that was not fully received, and other
//! clients keep being served.

mod common;
use amf::nbd::{Server, ServerConfig};
use amf::raid::assemble::{assemble, create, CreateOptions};
use amf::raid::Level;
use common::nbd_client::*;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

const EINVAL: u32 = 22;
const ENOSPC: u32 = 28;
const EOVERFLOW: u32 = 75;

struct Fixture {
    _tmp: tempfile::TempDir,
    server: Server,
    addr: String,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("g");
    create(&dir, &CreateOptions::new(Level::Raid5, 3, 8 << 20)).unwrap();
    let array = Arc::new(assemble(&dir).unwrap().array);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let cfg = ServerConfig { negotiation_timeout: Duration::from_millis(500), ..ServerConfig::default() };
    let server = Server::spawn(listener, array, cfg).unwrap();
    let addr = server.local_addr().to_string();
    Fixture { _tmp: tmp, server, addr }
}

fn closed(s: &mut std::net::TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 64];
    match s.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
    }
}

fn still_served(addr: &str) {
    let mut c = Client::connect(addr);
    assert_eq!(c.write(0, &[9u8; 4096], 0).unwrap(), 0);
    assert_eq!(c.read(0, 4096).unwrap().unwrap(), vec![9u8; 4096]);
    c.disconnect();
}

#[test]
fn bad_request_magic_closes_only_that_connection() {
    let f = fixture();
    let mut c = Client::connect(&f.addr);
    c.s.write_all(&[0xde, 0xad, 0xbe, 0xef]).unwrap();
    c.s.write_all(&[0u8; 24]).unwrap();
    assert!(closed(&mut c.s));
    still_served(&f.addr);
    assert_eq!(f.server.stats.protocol_violations.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[test]
fn unknown_command_and_flags_get_einval_and_the_connection_lives() {
    let f = fixture();
    let mut c = Client::connect(&f.addr);
    c.send(77, 0, 0, 0, &[]);
    assert_eq!(c.reply().unwrap().0, EINVAL);
    c.send(CMD_READ, 0x40, 0, 4096, &[]);
    assert_eq!(c.reply().unwrap().0, EINVAL);
    assert!(c.read(0, 4096).unwrap().is_ok());
}

#[test]
fn out_of_range_requests_fail_and_write_nothing() {
    let f = fixture();
    let mut c = Client::connect(&f.addr);
    let size = c.size;
    assert_eq!(c.read(size - 100, 4096).unwrap(), Err(EINVAL));
    assert_eq!(c.read(u64::MAX - 10, 4096).unwrap(), Err(EINVAL));
    assert_eq!(c.write(size - 4096, &[7u8; 8192], 0).unwrap(), ENOSPC);
    assert_eq!(c.read(size - 4096, 4096).unwrap().unwrap(), vec![0u8; 4096], "rejected write left nothing");
    c.send(CMD_READ, 0, 0, 64 << 20, &[]);
    assert_eq!(c.reply().unwrap().0, EOVERFLOW);
    assert!(c.read(0, 512).unwrap().is_ok(), "connection still usable");
}

#[test]
fn oversized_write_is_refused_and_the_connection_closed() {
    let f = fixture();
    let mut c = Client::connect(&f.addr);
    c.send(CMD_WRITE, 0, 0, u32::MAX, &[1, 2, 3]);
    assert_eq!(c.reply().unwrap().0, EOVERFLOW);
    assert!(closed(&mut c.s));
    let mut d = Client::connect(&f.addr);
    assert_eq!(d.read(0, 3).unwrap().unwrap(), vec![0, 0, 0], "nothing of the payload was written");
    still_served(&f.addr);
}

#[test]
fn disconnect_mid_write_writes_nothing() {
    let f = fixture();
    let mut c = Client::connect(&f.addr);
    // Announce 64 KiB, send half, hang up.
    c.send(CMD_WRITE, 0, 1 << 20, 65536, &[0xabu8; 32768]);
    drop(c);
    std::thread::sleep(Duration::from_millis(200));
    let mut d = Client::connect(&f.addr);
    assert_eq!(d.read(1 << 20, 65536).unwrap().unwrap(), vec![0u8; 65536]);
    still_served(&f.addr);
}

#[test]
fn negotiation_errors() {
    let f = fixture();
    // Unknown export in GO: an error reply, negotiation continues.
    let mut s = greet(&f.addr);
    option(&mut s, 7, &go_payload("nope"));
    assert_eq!(option_reply(&mut s).unwrap().1, 0x8000_0006);
    // Malformed GO payload.
    option(&mut s, 7, &[0, 0, 0, 9, b'a']);
    assert_eq!(option_reply(&mut s).unwrap().1, 0x8000_0003);
    // TLS is not offered yet.
    option(&mut s, 5, &[]);
    assert_eq!(option_reply(&mut s).unwrap().1, 0x8000_0001);
    // LIST names the export.
    option(&mut s, 3, &[]);
    let (_, kind, d) = option_reply(&mut s).unwrap();
    assert_eq!((kind, &d[4..]), (2, &b"amf"[..]));
    assert_eq!(option_reply(&mut s).unwrap().1, 1);
    // ABORT is acknowledged and closes.
    option(&mut s, 2, &[]);
    assert_eq!(option_reply(&mut s).unwrap().1, 1);
    assert!(closed(&mut s));
    // Bad option magic closes.
    let mut s = greet(&f.addr);
    s.write_all(&[0u8; 16]).unwrap();
    assert!(closed(&mut s));
    // An option larger than the server accepts closes.
    let mut s = greet(&f.addr);
    let mut m = 0x4948_4156_454f_5054u64.to_be_bytes().to_vec();
    m.extend_from_slice(&7u32.to_be_bytes());
    m.extend_from_slice(&(1u32 << 30).to_be_bytes());
    s.write_all(&m).unwrap();
    assert!(closed(&mut s));
    // A client that never negotiates is timed out.
    let mut idle = std::net::TcpStream::connect(&f.addr).unwrap();
    let mut greeting = [0u8; 18];
    idle.read_exact(&mut greeting).unwrap();
    let t = std::time::Instant::now();
    assert!(closed(&mut idle));
    assert!(t.elapsed() < Duration::from_secs(4), "closed by the negotiation timeout");
    still_served(&f.addr);
}

#[test]
fn pipelined_large_reads_are_held_to_the_byte_budget() {
    let f = fixture();
    let mut c = Client::connect(&f.addr);
    let len = 8u32 << 20;
    assert!(c.size >= len as u64);
    // 24 reads of 8 MiB (192 MiB) sent before any reply is read: the reader must wait for the
    // workers to hand budget back instead of allocating them all.
    for _ in 0..24 {
        c.send(CMD_READ, 0, 0, len, &[]);
    }
    let mut buf = vec![0u8; len as usize];
    for _ in 0..24 {
        assert_eq!(c.reply().unwrap().0, 0);
        c.s.read_exact(&mut buf).unwrap();
    }
    assert!(f.server.stats.budget_waits.load(std::sync::atomic::Ordering::Relaxed) > 0, "back-pressure engaged");
    still_served(&f.addr);
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

#[test]
fn idle_connections_cost_no_thread() {
    let f = fixture();
    // Warm up: the first request starts nothing new either, but let the pool settle.
    still_served(&f.addr);
    let before = threads();
    let idle: Vec<Client> = (0..100).map(|_| Client::connect(&f.addr)).collect();
    let mut half: Vec<std::net::TcpStream> = (0..20).map(|_| greet(&f.addr)).collect();
    let during = threads();
    assert!(during <= before + 2, "{} threads for 120 idle connections (were {before})", during);
    assert_eq!(f.server.stats.connections_open.load(std::sync::atomic::Ordering::Relaxed), 120);
    // They are all served: each can still do I/O.
    for (i, mut c) in idle.into_iter().enumerate().step_by(10) {
        assert_eq!(c.write(4096 * i as u64, &[i as u8; 4096], 0).unwrap(), 0);
        assert_eq!(c.read(4096 * i as u64, 4096).unwrap().unwrap(), vec![i as u8; 4096]);
    }
    half.clear();
    still_served(&f.addr);
}
