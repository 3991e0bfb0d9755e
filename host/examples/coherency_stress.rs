//! Coherency stress: starts a fresh `amf cluster` with model cards again and again, runs the
//! verifying workload (every read checked against the write history) through all its
//! controllers, and stops at the first violation. A diagnostic tool (it found the stale reads
//! of docs/coherency.md "Known limits", fixed in session 10), not a test.
//!
//! `cargo build --release && cargo run --release -p amf --example coherency_stress -- \
//!     [controllers 3] [blocks 2048] [line_kib 16] [rounds 30]`

use std::io::BufRead;
use std::time::Duration;

fn arg(i: usize, default: u64) -> u64 {
    std::env::args().nth(i).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let (n, blocks, line_kib, rounds) = (arg(1, 3) as usize, arg(2, 2048), arg(3, 16), arg(4, 30));
    // The amf binary beside this example's folder (target/release/examples/..).
    let exe = std::env::current_exe()
        .ok()
        .and_then(|p| Some(p.parent()?.parent()?.join("amf")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| "amf".into());
    for round in 0..rounds {
        let dir = std::env::temp_dir().join(format!("amf-coherency-stress-{}-{round}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut child = match std::process::Command::new(&exe)
            .args(["cluster", "--controllers", &n.to_string(), "--nbd-port", "0", "--admin-port", "0"])
            .args(["--level", "raid5", "--members", "4", "--member-size", "128M", "--card", "model"])
            .args(["--line-kib", &line_kib.to_string(), "--dir"])
            .arg(dir.join("g"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                eprintln!("cannot start {}: {e}", exe.display());
                std::process::exit(2);
            }
        };
        let mut nbd = Vec::new();
        if let Some(out) = child.stdout.take() {
            for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                let w: Vec<&str> = l.split_whitespace().collect();
                if w.len() == 8 && w[0] == "controller" {
                    nbd.push(w[5].trim_start_matches("nbd://").trim_end_matches("/amf").to_string());
                }
                if nbd.len() == n {
                    break;
                }
            }
        }
        let spec = amf::workload::Spec {
            targets: nbd,
            clients: 3 * n,
            blocks,
            base: 0,
            write_percent: 50,
            duration: Duration::from_secs(3),
            seed: round,
            own_regions: false,
            warm_up: Duration::ZERO,
        };
        let o = amf::workload::run(&spec);
        // SAFETY: kill(2) on our own child; no memory is involved.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(&dir);
        println!("round {round}: {} operations, {} violations", o.reads + o.writes, o.violations.len());
        if let Some(v) = o.violations.first().or(o.errors.first()) {
            println!("{v}");
            std::process::exit(1);
        }
    }
}
