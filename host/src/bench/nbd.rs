//! `amf bench nbd` (see run).

/// Placeholder until the NBD benchmark lands.
pub fn run(_count: u64) -> Result<String, super::BenchError> {
    Err(super::BenchError::Peer {
        program: "amf bench nbd".into(),
        detail: "not implemented yet".into(),
    })
}
