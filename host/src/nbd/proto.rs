//! NBD wire constants and request/reply framing (fixed newstyle, simple replies), after the
//! protocol document in the NBD project (doc/proto.md).

/// Server greeting magic ("NBDMAGIC").
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// Option haggling magic ("IHAVEOPT").
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Option reply magic.
pub const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Request magic.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Simple reply magic.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

/// Handshake flag: fixed newstyle.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1;
/// Handshake flag: no zero padding after NBD_OPT_EXPORT_NAME.
pub const FLAG_NO_ZEROES: u16 = 2;
/// Client flags this server understands.
pub const CLIENT_FLAGS_KNOWN: u32 = 3;

/// Options.
pub const OPT_EXPORT_NAME: u32 = 1;
/// Abort negotiation.
pub const OPT_ABORT: u32 = 2;
/// List exports.
pub const OPT_LIST: u32 = 3;
/// TLS upgrade.
pub const OPT_STARTTLS: u32 = 5;
/// Export information.
pub const OPT_INFO: u32 = 6;
/// Export information and start.
pub const OPT_GO: u32 = 7;

/// Option reply types.
pub const REP_ACK: u32 = 1;
/// An export name in a list.
pub const REP_SERVER: u32 = 2;
/// Export information.
pub const REP_INFO: u32 = 3;
const REP_FLAG_ERROR: u32 = 1 << 31;
/// Option not supported.
pub const REP_ERR_UNSUP: u32 = REP_FLAG_ERROR | 1;
/// Option malformed.
pub const REP_ERR_INVALID: u32 = REP_FLAG_ERROR | 3;
/// Unknown export.
pub const REP_ERR_UNKNOWN: u32 = REP_FLAG_ERROR | 6;
/// The server requires TLS before this option.
pub const REP_ERR_TLS_REQD: u32 = REP_FLAG_ERROR | 5;

/// Information types.
pub const INFO_EXPORT: u16 = 0;
/// Block size constraints.
pub const INFO_BLOCK_SIZE: u16 = 3;

/// Transmission flags.
pub const TFLAG_HAS_FLAGS: u16 = 1 << 0;
/// Read-only export.
pub const TFLAG_READ_ONLY: u16 = 1 << 1;
/// FLUSH supported.
pub const TFLAG_SEND_FLUSH: u16 = 1 << 2;
/// FUA supported.
pub const TFLAG_SEND_FUA: u16 = 1 << 3;
/// TRIM supported.
pub const TFLAG_SEND_TRIM: u16 = 1 << 5;
/// WRITE_ZEROES supported.
pub const TFLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
/// Every connection sees the same data; a FLUSH on one covers writes completed on all.
pub const TFLAG_CAN_MULTI_CONN: u16 = 1 << 8;

/// Commands.
pub const CMD_READ: u16 = 0;
/// Write.
pub const CMD_WRITE: u16 = 1;
/// Disconnect.
pub const CMD_DISC: u16 = 2;
/// Flush.
pub const CMD_FLUSH: u16 = 3;
/// Trim (advisory).
pub const CMD_TRIM: u16 = 4;
/// Write zeroes.
pub const CMD_WRITE_ZEROES: u16 = 6;

/// Command flag: force unit access.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
/// Command flag: may leave a hole when zeroing.
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;

/// Error numbers on the wire.
pub const EIO: u32 = 5;
/// Invalid argument.
pub const EINVAL: u32 = 22;
/// Past the end of the export on write.
pub const ENOSPC: u32 = 28;
/// Request too large.
pub const EOVERFLOW: u32 = 75;
/// Server is shutting down.
pub const ESHUTDOWN: u32 = 108;

/// Bytes in a request header.
pub const REQUEST_BYTES: usize = 28;
/// Largest option payload accepted during negotiation.
pub const OPTION_BYTES_MAX: u32 = 64 * 1024;
/// Largest read or write payload (also advertised as the maximum block size).
pub const PAYLOAD_BYTES_MAX: u32 = 32 << 20;
/// Preferred block size (the engine's granularity).
pub const PREFERRED_BLOCK_BYTES: u32 = 4096;

/// A transmission request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// Command flags.
    pub flags: u16,
    /// Command type.
    pub kind: u16,
    /// Opaque client cookie, echoed in the reply.
    pub cookie: u64,
    /// Byte offset.
    pub offset: u64,
    /// Length in bytes.
    pub len: u32,
}

/// Decodes a request header; None when the magic is wrong (the stream cannot be trusted).
pub fn parse_request(b: &[u8; REQUEST_BYTES]) -> Option<Request> {
    let u32_at = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let u64_at =
        |i: usize| u64::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3], b[i + 4], b[i + 5], b[i + 6], b[i + 7]]);
    if u32_at(0) != REQUEST_MAGIC {
        return None;
    }
    Some(Request {
        flags: u16::from_be_bytes([b[4], b[5]]),
        kind: u16::from_be_bytes([b[6], b[7]]),
        cookie: u64_at(8),
        offset: u64_at(16),
        len: u32_at(24),
    })
}

/// A simple reply header.
pub fn simple_reply(error: u32, cookie: u64) -> [u8; 16] {
    let mut r = [0u8; 16];
    r[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    r[4..8].copy_from_slice(&error.to_be_bytes());
    r[8..16].copy_from_slice(&cookie.to_be_bytes());
    r
}

/// An option reply.
pub fn option_reply(option: u32, kind: u32, data: &[u8]) -> Vec<u8> {
    let mut r = Vec::with_capacity(20 + data.len());
    r.extend_from_slice(&REPLY_MAGIC.to_be_bytes());
    r.extend_from_slice(&option.to_be_bytes());
    r.extend_from_slice(&kind.to_be_bytes());
    r.extend_from_slice(&(data.len() as u32).to_be_bytes());
    r.extend_from_slice(data);
    r
}

/// Parsed payload of NBD_OPT_INFO / NBD_OPT_GO.
#[derive(Debug, PartialEq, Eq)]
pub struct InfoRequest {
    /// Export name.
    pub name: String,
    /// Information types asked for.
    pub requests: Vec<u16>,
}

/// Parses an NBD_OPT_INFO / NBD_OPT_GO payload; None when the lengths do not add up.
pub fn parse_info(data: &[u8]) -> Option<InfoRequest> {
    let name_len = u32::from_be_bytes(data.get(0..4)?.try_into().ok()?) as usize;
    let name = data.get(4..4usize.checked_add(name_len)?)?;
    let rest = &data[4 + name_len..];
    let n = u16::from_be_bytes(rest.get(0..2)?.try_into().ok()?) as usize;
    let reqs = rest.get(2..)?;
    if reqs.len() != n * 2 {
        return None;
    }
    Some(InfoRequest {
        name: String::from_utf8_lossy(name).into_owned(),
        requests: reqs.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trip_and_bad_magic() {
        let mut b = [0u8; REQUEST_BYTES];
        b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[6..8].copy_from_slice(&CMD_WRITE.to_be_bytes());
        b[8..16].copy_from_slice(&42u64.to_be_bytes());
        b[16..24].copy_from_slice(&4096u64.to_be_bytes());
        b[24..28].copy_from_slice(&512u32.to_be_bytes());
        let r = parse_request(&b).unwrap();
        assert_eq!((r.kind, r.cookie, r.offset, r.len), (CMD_WRITE, 42, 4096, 512));
        b[0] ^= 1;
        assert_eq!(parse_request(&b), None);
    }

    #[test]
    fn info_payload_lengths_are_checked() {
        let mut d = vec![0, 0, 0, 3];
        d.extend_from_slice(b"amf");
        d.extend_from_slice(&[0, 1, 0, 3]);
        assert_eq!(parse_info(&d), Some(InfoRequest { name: "amf".into(), requests: vec![3] }));
        assert_eq!(parse_info(&d[..d.len() - 1]), None);
        assert_eq!(parse_info(&[0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(parse_info(&[]), None);
    }

    proptest::proptest! {
        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let _ = parse_info(&bytes);
            if bytes.len() >= REQUEST_BYTES {
                let mut h = [0u8; REQUEST_BYTES];
                h.copy_from_slice(&bytes[..REQUEST_BYTES]);
                let _ = parse_request(&h);
            }
        }
    }
}
