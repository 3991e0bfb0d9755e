//! Fixed newstyle negotiation as a parser over the bytes a connection has received so far: the
//! event loop feeds it whatever arrived and sends what it answers, so a slow or silent client
//! holds no thread.

use super::proto::*;

/// Where a connection's negotiation is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Negotiation {
    /// Waiting for the client's flags.
    ClientFlags,
    /// Option haggling.
    Options {
        /// The client asked for no zero padding after NBD_OPT_EXPORT_NAME.
        no_zeroes: bool,
    },
}

/// What a step of negotiation decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// More bytes are needed.
    Continue,
    /// The client entered transmission.
    Go,
    /// The client gave up (NBD_OPT_ABORT).
    Abort,
    /// The server acknowledged NBD_OPT_STARTTLS: once the acknowledgement is sent, the next
    /// bytes each way are the TLS handshake, and negotiation goes on inside TLS.
    StartTls,
}

/// A connection's TLS as negotiation sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tls {
    /// The server has a certificate: NBD_OPT_STARTTLS is accepted.
    pub offered: bool,
    /// Options other than STARTTLS and ABORT are refused until TLS runs (FORCEDTLS).
    pub required: bool,
    /// TLS runs on this connection.
    pub active: bool,
    /// Options refused with NBD_REP_ERR_TLS_REQD on this connection.
    pub refused: u32,
}

/// A protocol violation: the connection is closed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Violation(pub &'static str);

/// The greeting a server sends first.
pub fn greeting() -> Vec<u8> {
    let mut hello = Vec::with_capacity(18);
    hello.extend_from_slice(&NBDMAGIC.to_be_bytes());
    hello.extend_from_slice(&IHAVEOPT.to_be_bytes());
    hello.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    hello
}

/// Transmission flags of this export.
pub fn transmission_flags() -> u16 {
    TFLAG_HAS_FLAGS
        | TFLAG_SEND_FLUSH
        | TFLAG_SEND_FUA
        | TFLAG_SEND_TRIM
        | TFLAG_SEND_WRITE_ZEROES
        | TFLAG_CAN_MULTI_CONN
}

fn be_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_be_bytes(a)
}

/// Consumes what it can of `input` (returns how much) and appends the answers to `out`.
pub fn step(
    state: &mut Negotiation,
    input: &[u8],
    out: &mut Vec<u8>,
    size: u64,
    export: &str,
    tls: &mut Tls,
) -> Result<(usize, Outcome), Violation> {
    let mut used = 0;
    let known = |name: &str| name.is_empty() || name == export;
    loop {
        let rest = &input[used..];
        match *state {
            Negotiation::ClientFlags => {
                if rest.len() < 4 {
                    return Ok((used, Outcome::Continue));
                }
                let flags = be_u32(rest);
                if flags & !CLIENT_FLAGS_KNOWN != 0 {
                    return Err(Violation("unknown client flags"));
                }
                used += 4;
                *state = Negotiation::Options { no_zeroes: flags & FLAG_NO_ZEROES as u32 != 0 };
            }
            Negotiation::Options { no_zeroes } => {
                if rest.len() < 16 {
                    return Ok((used, Outcome::Continue));
                }
                let mut m = [0u8; 8];
                m.copy_from_slice(&rest[..8]);
                if u64::from_be_bytes(m) != IHAVEOPT {
                    return Err(Violation("bad option magic"));
                }
                let option = be_u32(&rest[8..]);
                let len = be_u32(&rest[12..]);
                if len > OPTION_BYTES_MAX {
                    return Err(Violation("option payload too large"));
                }
                let Some(data) = rest.get(16..16 + len as usize) else {
                    return Ok((used, Outcome::Continue));
                };
                used += 16 + len as usize;
                let plaintext_refused = tls.required && !tls.active;
                match option {
                    OPT_STARTTLS if !tls.offered => out.extend_from_slice(&option_reply(option, REP_ERR_UNSUP, &[])),
                    OPT_STARTTLS if tls.active => {
                        out.extend_from_slice(&option_reply(option, REP_ERR_INVALID, b"TLS is already running"))
                    }
                    OPT_STARTTLS if !data.is_empty() => {
                        out.extend_from_slice(&option_reply(option, REP_ERR_INVALID, b"STARTTLS takes no data"))
                    }
                    OPT_STARTTLS => {
                        out.extend_from_slice(&option_reply(option, REP_ACK, &[]));
                        return Ok((used, Outcome::StartTls));
                    }
                    // EXPORT_NAME has no error reply: the spec has the server hang up.
                    OPT_EXPORT_NAME if plaintext_refused => {
                        tls.refused += 1;
                        return Err(Violation("NBD_OPT_EXPORT_NAME before STARTTLS on a server that requires TLS"));
                    }
                    OPT_ABORT => {
                        out.extend_from_slice(&option_reply(option, REP_ACK, &[]));
                        return Ok((used, Outcome::Abort));
                    }
                    _ if plaintext_refused => {
                        tls.refused += 1;
                        out.extend_from_slice(&option_reply(option, REP_ERR_TLS_REQD, b"this server requires TLS"));
                    }
                    OPT_EXPORT_NAME => {
                        if !known(&String::from_utf8_lossy(data)) {
                            return Err(Violation("unknown export"));
                        }
                        out.extend_from_slice(&size.to_be_bytes());
                        out.extend_from_slice(&transmission_flags().to_be_bytes());
                        if !no_zeroes {
                            out.extend_from_slice(&[0u8; 124]);
                        }
                        return Ok((used, Outcome::Go));
                    }
                    OPT_LIST => {
                        if !data.is_empty() {
                            out.extend_from_slice(&option_reply(option, REP_ERR_INVALID, b"LIST takes no data"));
                            continue;
                        }
                        let mut d = (export.len() as u32).to_be_bytes().to_vec();
                        d.extend_from_slice(export.as_bytes());
                        out.extend_from_slice(&option_reply(option, REP_SERVER, &d));
                        out.extend_from_slice(&option_reply(option, REP_ACK, &[]));
                    }
                    OPT_INFO | OPT_GO => {
                        let Some(info) = parse_info(data) else {
                            out.extend_from_slice(&option_reply(option, REP_ERR_INVALID, b"malformed INFO/GO payload"));
                            continue;
                        };
                        if !known(&info.name) {
                            out.extend_from_slice(&option_reply(option, REP_ERR_UNKNOWN, b"no such export"));
                            continue;
                        }
                        let mut e = INFO_EXPORT.to_be_bytes().to_vec();
                        e.extend_from_slice(&size.to_be_bytes());
                        e.extend_from_slice(&transmission_flags().to_be_bytes());
                        out.extend_from_slice(&option_reply(option, REP_INFO, &e));
                        let mut b = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
                        b.extend_from_slice(&1u32.to_be_bytes());
                        b.extend_from_slice(&PREFERRED_BLOCK_BYTES.to_be_bytes());
                        b.extend_from_slice(&PAYLOAD_BYTES_MAX.to_be_bytes());
                        out.extend_from_slice(&option_reply(option, REP_INFO, &b));
                        out.extend_from_slice(&option_reply(option, REP_ACK, &[]));
                        if option == OPT_GO {
                            return Ok((used, Outcome::Go));
                        }
                    }
                    // Structured replies, meta contexts, extended headers: not offered.
                    _ => out.extend_from_slice(&option_reply(option, REP_ERR_UNSUP, &[])),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn option(opt: u32, data: &[u8]) -> Vec<u8> {
        let mut v = IHAVEOPT.to_be_bytes().to_vec();
        v.extend_from_slice(&opt.to_be_bytes());
        v.extend_from_slice(&(data.len() as u32).to_be_bytes());
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn a_negotiation_split_at_every_byte_gives_the_same_answers() {
        let mut input = 3u32.to_be_bytes().to_vec();
        input.extend(option(OPT_LIST, &[]));
        input.extend(option(99, b"x"));
        let mut go = 3u32.to_be_bytes().to_vec();
        go.extend_from_slice(b"amf");
        go.extend_from_slice(&0u16.to_be_bytes());
        input.extend(option(OPT_GO, &go));
        let whole = {
            let (mut st, mut out) = (Negotiation::ClientFlags, Vec::new());
            assert_eq!(
                step(&mut st, &input, &mut out, 4096, "amf", &mut Tls::default()).unwrap(),
                (input.len(), Outcome::Go)
            );
            out
        };
        for cut in 0..input.len() {
            let (mut st, mut out) = (Negotiation::ClientFlags, Vec::new());
            let (a, o) = step(&mut st, &input[..cut], &mut out, 4096, "amf", &mut Tls::default()).unwrap();
            assert_eq!(o, Outcome::Continue, "cut {cut}");
            let (b, o) = step(&mut st, &input[a..], &mut out, 4096, "amf", &mut Tls::default()).unwrap();
            assert_eq!((a + b, o), (input.len(), Outcome::Go), "cut {cut}");
            assert_eq!(out, whole, "cut {cut}");
        }
    }

    #[test]
    fn violations_are_reported() {
        let (mut st, mut out) = (Negotiation::ClientFlags, Vec::new());
        assert!(step(&mut st, &[0, 0, 0, 8], &mut out, 1, "amf", &mut Tls::default()).is_err(), "unknown client flag");
        let mut st = Negotiation::Options { no_zeroes: true };
        assert!(step(&mut st, &[0u8; 16], &mut out, 1, "amf", &mut Tls::default()).is_err(), "bad magic");
        let mut big = IHAVEOPT.to_be_bytes().to_vec();
        big.extend_from_slice(&OPT_LIST.to_be_bytes());
        big.extend_from_slice(&(OPTION_BYTES_MAX + 1).to_be_bytes());
        assert!(step(&mut st, &big, &mut out, 1, "amf", &mut Tls::default()).is_err(), "oversized option");
    }

    fn replies(out: &[u8]) -> Vec<(u32, u32)> {
        let mut v = Vec::new();
        let mut at = 0;
        while at + 20 <= out.len() {
            let len = be_u32(&out[at + 16..]) as usize;
            v.push((be_u32(&out[at + 8..]), be_u32(&out[at + 12..])));
            at += 20 + len;
        }
        v
    }

    #[test]
    fn a_server_that_requires_tls_refuses_options_until_starttls() {
        let mut tls = Tls { offered: true, required: true, ..Tls::default() };
        let mut go = 0u32.to_be_bytes().to_vec();
        go.extend_from_slice(&0u16.to_be_bytes());
        let mut input = option(OPT_LIST, &[]);
        input.extend(option(OPT_GO, &go));
        input.extend(option(OPT_STARTTLS, &[]));
        let (mut st, mut out) = (Negotiation::Options { no_zeroes: true }, Vec::new());
        let (used, o) = step(&mut st, &input, &mut out, 4096, "amf", &mut tls).unwrap();
        assert_eq!((used, o), (input.len(), Outcome::StartTls));
        assert_eq!(
            replies(&out),
            vec![(OPT_LIST, REP_ERR_TLS_REQD), (OPT_GO, REP_ERR_TLS_REQD), (OPT_STARTTLS, REP_ACK)]
        );
        assert_eq!(tls.refused, 2);
        // Inside TLS: GO is served, a second STARTTLS is a client error.
        tls.active = true;
        let mut input = option(OPT_STARTTLS, &[]);
        input.extend(option(OPT_GO, &go));
        let mut out = Vec::new();
        assert_eq!(step(&mut st, &input, &mut out, 4096, "amf", &mut tls).unwrap().1, Outcome::Go);
        let r = replies(&out);
        assert_eq!(r[0], (OPT_STARTTLS, REP_ERR_INVALID));
        assert_eq!(r.last(), Some(&(OPT_GO, REP_ACK)));
    }

    #[test]
    fn export_name_before_tls_ends_the_connection_and_starttls_without_a_certificate_is_unsupported() {
        let mut required = Tls { offered: true, required: true, ..Tls::default() };
        let mut st = Negotiation::Options { no_zeroes: true };
        assert!(step(&mut st, &option(OPT_EXPORT_NAME, b"amf"), &mut Vec::new(), 1, "amf", &mut required).is_err());
        let mut out = Vec::new();
        let (_, o) = step(&mut st, &option(OPT_STARTTLS, &[]), &mut out, 1, "amf", &mut Tls::default()).unwrap();
        assert_eq!((o, replies(&out)), (Outcome::Continue, vec![(OPT_STARTTLS, REP_ERR_UNSUP)]));
        // Optional TLS serves plaintext.
        let mut optional = Tls { offered: true, ..Tls::default() };
        let (_, o) = step(&mut st, &option(OPT_EXPORT_NAME, b"amf"), &mut Vec::new(), 1, "amf", &mut optional).unwrap();
        assert_eq!(o, Outcome::Go);
    }
}
