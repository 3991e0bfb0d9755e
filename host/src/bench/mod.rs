//! Benchmarks behind `amf bench`: each measures amf and a peer in the same run on this machine
//! and reports the ratio. Results are recorded in docs/benchmarks.md between markers.

pub mod card;
pub mod cluster;
pub mod driver;
pub mod isal;
pub mod nbd;
pub mod parity;
pub mod plot;
pub mod takeover;
pub mod write_back;

use std::path::Path;

/// Benchmark failures.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// ISA-L is not available.
    #[error(transparent)]
    Isal(#[from] isal::IsalError),
    /// A peer program is missing or failed.
    #[error("{program}: {detail}")]
    Peer {
        /// Program.
        program: String,
        /// What went wrong.
        detail: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// Path.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The group under test failed.
    #[error(transparent)]
    Raid(#[from] crate::raid::RaidError),
}

/// Replaces the text between `<!-- bench:NAME:start -->` and `<!-- bench:NAME:end -->` in
/// `path` (appending the section if absent).
pub fn record(path: &Path, name: &str, body: &str) -> Result<(), BenchError> {
    let io = |source| BenchError::Io { path: path.display().to_string(), source };
    let old = match std::fs::read_to_string(path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io(e)),
    };
    let (start, end) = (format!("<!-- bench:{name}:start -->"), format!("<!-- bench:{name}:end -->"));
    let section = format!("{start}\n{body}\n{end}");
    let new = match (old.find(&start), old.find(&end)) {
        (Some(a), Some(b)) if b > a => format!("{}{}{}", &old[..a], section, &old[b + end.len()..]),
        _ => format!("{old}\n{section}\n"),
    };
    std::fs::write(path, new).map_err(io)
}

/// Pins the calling thread to one CPU so single-core numbers are single-core.
pub fn pin_to_cpu(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; sched_setaffinity only reads it. Failure is harmless
    // (the numbers are then just less stable), so the result is ignored.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Short description of the machine for reports.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    format!("{cpu}, {cores} cores")
}
