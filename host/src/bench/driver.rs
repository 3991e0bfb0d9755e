//! `amf bench driver`: commands through the card driver against the reference model and against
//! the card's RTL under Verilator (its own clock thread): commands per second, latency per
//! command, and the host-side overhead per command (driver work: building and posting the
//! descriptor, finding and decoding the completion — the card's own time excluded).

use crate::engine::{Backend, Driver, DriverConfig, ModelBackend, SimBackend};
use amf_hdl_model::gen::structs::Opcode;
use std::time::{Duration, Instant};

struct Row {
    card: &'static str,
    batch: usize,
    commands: u64,
    per_second: f64,
    latency_us: f64,
    host_us: f64,
}

fn run<B: Backend>(card: &'static str, d: &mut Driver<B>, batch: usize, budget: Duration) -> Result<Row, String> {
    let start = Instant::now();
    let (mut host, mut commands, mut lat) = (Duration::ZERO, 0u64, Duration::ZERO);
    while start.elapsed() < budget {
        let t0 = Instant::now();
        let h0 = Instant::now();
        for i in 0..batch {
            d.submit(Opcode::Nop, i as u64).map_err(|e| e.to_string())?;
        }
        host += h0.elapsed();
        let mut done = 0;
        let mut polls = 0u32;
        while done < batch {
            d.poll();
            let h = Instant::now();
            done += d.reap().map_err(|e| e.to_string())?.len();
            host += h.elapsed();
            polls += 1;
            if polls > 1_000_000 {
                return Err(format!("{card}: completions stopped"));
            }
        }
        lat += t0.elapsed();
        commands += batch as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(Row {
        card,
        batch,
        commands,
        per_second: commands as f64 / secs,
        latency_us: lat.as_secs_f64() * 1e6 / (commands as f64 / batch as f64),
        host_us: host.as_secs_f64() * 1e6 / commands as f64,
    })
}

/// Runs the benchmark; returns a markdown table.
pub fn run_all(budget: Duration) -> Result<String, super::BenchError> {
    let err = |e: String| super::BenchError::Peer { program: "amf bench driver".into(), detail: e };
    let mut rows = vec![];
    for batch in [1usize, 16] {
        let mut d = Driver::open(ModelBackend::new(), DriverConfig::default()).map_err(|e| err(e.to_string()))?;
        rows.push(run("model", &mut d, batch, budget).map_err(err)?);
        let sim = SimBackend::start("127.0.0.1:0".parse().map_err(|e: std::net::AddrParseError| err(e.to_string()))?)
            .map_err(|e| err(e.to_string()))?;
        let mut d = Driver::open(sim, DriverConfig::default()).map_err(|e| err(e.to_string()))?;
        rows.push(run("sim (Verilator)", &mut d, batch, budget).map_err(err)?);
    }
    let mut s = format!(
        "Command: `amf bench driver` — {}; NOP commands through `engine::Driver`: submit (descriptor + one posted \
         doorbell), poll, reap by phase bit. Host overhead = time in submit and reap per command (the card's \
         own time excluded); latency = submit of a batch to its last completion.\n\n\
         | card | batch | commands/s | latency per batch (µs) | host overhead per command (µs) |\n|---|---|---|---|---|\n",
        super::machine()
    );
    for r in rows {
        s += &format!("| {} | {} | {:.0} | {:.1} | {:.2} |\n", r.card, r.batch, r.per_second, r.latency_us, r.host_us);
        let _ = r.commands;
    }
    Ok(s)
}
