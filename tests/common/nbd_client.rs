//! A small NBD client for tests that must know exactly which writes were acknowledged, and that
//! send malformed traffic on purpose.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;

pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const FLAG_FUA: u16 = 1;

pub struct Client {
    pub s: TcpStream,
    pub size: u64,
    cookie: u64,
}

pub fn option(s: &mut TcpStream, opt: u32, data: &[u8]) {
    let mut m = 0x4948_4156_454f_5054u64.to_be_bytes().to_vec();
    m.extend_from_slice(&opt.to_be_bytes());
    m.extend_from_slice(&(data.len() as u32).to_be_bytes());
    m.extend_from_slice(data);
    s.write_all(&m).unwrap();
}

/// Reads one option reply: (option, type, data).
pub fn option_reply(s: &mut TcpStream) -> std::io::Result<(u32, u32, Vec<u8>)> {
    let mut h = [0u8; 20];
    s.read_exact(&mut h)?;
    assert_eq!(u64::from_be_bytes(h[0..8].try_into().unwrap()), 0x0003_e889_0455_65a9);
    let len = u32::from_be_bytes(h[16..20].try_into().unwrap());
    let mut d = vec![0u8; len as usize];
    s.read_exact(&mut d)?;
    Ok((u32::from_be_bytes(h[8..12].try_into().unwrap()), u32::from_be_bytes(h[12..16].try_into().unwrap()), d))
}

/// Connects and reads the greeting; returns the socket in option haggling.
pub fn greet(addr: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    let mut g = [0u8; 18];
    s.read_exact(&mut g).unwrap();
    assert_eq!(&g[0..8], b"NBDMAGIC");
    s.write_all(&3u32.to_be_bytes()).unwrap(); // fixed newstyle + no zeroes
    s
}

pub fn go_payload(name: &str) -> Vec<u8> {
    let mut d = (name.len() as u32).to_be_bytes().to_vec();
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(&0u16.to_be_bytes());
    d
}

impl Client {
    pub fn connect(addr: &str) -> Client {
        let mut s = greet(addr);
        option(&mut s, 7, &go_payload("amf"));
        let mut size = 0;
        loop {
            let (_, kind, d) = option_reply(&mut s).unwrap();
            match kind {
                3 if u16::from_be_bytes([d[0], d[1]]) == 0 => size = u64::from_be_bytes(d[2..10].try_into().unwrap()),
                3 => {}
                1 => break,
                other => panic!("GO refused: {other:#x}"),
            }
        }
        Client { s, size, cookie: 0 }
    }

    pub fn send(&mut self, kind: u16, flags: u16, offset: u64, len: u32, payload: &[u8]) -> u64 {
        self.cookie += 1;
        let mut r = REQUEST_MAGIC.to_be_bytes().to_vec();
        r.extend_from_slice(&flags.to_be_bytes());
        r.extend_from_slice(&kind.to_be_bytes());
        r.extend_from_slice(&self.cookie.to_be_bytes());
        r.extend_from_slice(&offset.to_be_bytes());
        r.extend_from_slice(&len.to_be_bytes());
        r.extend_from_slice(payload);
        self.s.write_all(&r).unwrap();
        self.cookie
    }

    /// Reads a simple reply header: (error, cookie).
    pub fn reply(&mut self) -> std::io::Result<(u32, u64)> {
        let mut h = [0u8; 16];
        self.s.read_exact(&mut h)?;
        assert_eq!(u32::from_be_bytes(h[0..4].try_into().unwrap()), 0x6744_6698, "simple reply magic");
        Ok((u32::from_be_bytes(h[4..8].try_into().unwrap()), u64::from_be_bytes(h[8..16].try_into().unwrap())))
    }

    pub fn write(&mut self, offset: u64, data: &[u8], flags: u16) -> std::io::Result<u32> {
        self.send(CMD_WRITE, flags, offset, data.len() as u32, data);
        Ok(self.reply()?.0)
    }

    pub fn read(&mut self, offset: u64, len: u32) -> std::io::Result<Result<Vec<u8>, u32>> {
        self.send(CMD_READ, 0, offset, len, &[]);
        let (err, _) = self.reply()?;
        if err != 0 {
            return Ok(Err(err));
        }
        let mut d = vec![0u8; len as usize];
        self.s.read_exact(&mut d)?;
        Ok(Ok(d))
    }

    pub fn flush(&mut self) -> std::io::Result<u32> {
        self.send(CMD_FLUSH, 0, 0, 0, &[]);
        Ok(self.reply()?.0)
    }

    pub fn disconnect(mut self) {
        self.send(CMD_DISC, 0, 0, 0, &[]);
    }
}
