//! Seeded in-process cluster: 3 to 6 controllers in one process, each with its own reference-
//! model card (UDP on loopback) and fabric endpoint, small caches so lines are evicted, many
//! clients reading and writing random blocks straight through the controllers; the history
//! checker requires every read to return the latest acknowledged write (or a concurrent one),
//! and the members must scrub clean afterwards. A failing seed is printed; `AMF_SEED=N` replays
//! its choices (the thread schedule is the machine's).

use amf::cluster::inproc::InProcess;
use amf::coherency::Amf;
use amf::raid::assemble::{assemble, CreateOptions};
use amf::raid::Level;
use amf::workload::{self, Port, Spec};
use std::sync::Arc;
use std::time::Duration;

struct AmfPort(Arc<Amf>);

impl Port for AmfPort {
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), String> {
        self.0.read(offset, buf).map_err(|e| e.to_string())
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), String> {
        self.0.write(offset, data, false).map_err(|e| e.to_string())
    }
}

fn seeds() -> Vec<u64> {
    match std::env::var("AMF_SEED").ok().and_then(|s| s.parse().ok()) {
        Some(s) => vec![s],
        None => vec![1, 2, 3],
    }
}

#[test]
fn seeded_clusters_of_many_controllers_return_the_latest_acknowledged_write() {
    for seed in seeds() {
        let nodes = 3 + (seed % 4) as u8;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("g");
        std::fs::create_dir_all(&dir).unwrap();
        let shape = CreateOptions::new(Level::Raid6, 5, 16 << 20);
        // 2 MiB of cache per controller over a 16 MiB working set: lines are evicted all the time.
        let c = InProcess::start(&dir, &shape, nodes, 64 << 10, 2 << 20).unwrap();
        let spec = Spec {
            targets: (0..nodes).map(|n| format!("node {n}")).collect(),
            clients: 3 * nodes as usize,
            blocks: 4096,
            base: 0,
            write_percent: 40,
            duration: Duration::from_secs(3),
            seed,
        };
        let amfs = c.amfs.clone();
        let open = move |i: usize| -> Result<Box<dyn Port>, String> {
            Ok(Box::new(AmfPort(amfs[i % amfs.len()].clone())) as Box<dyn Port>)
        };
        let out = workload::run_on(&spec, &open);
        let older: u64 =
            c.amfs.iter().map(|a| a.counters.older_member_reads.load(std::sync::atomic::Ordering::Relaxed)).sum();
        let evictions: u64 = c.amfs.iter().map(|a| a.status()["cache"]["evictions"].as_u64().unwrap_or(0)).sum();
        c.stop().unwrap();
        let failed = !out.errors.is_empty() || !out.violations.is_empty() || older != 0;
        assert!(
            !failed,
            "seed {seed} ({nodes} controllers) failed; replay with AMF_SEED={seed}:\nerrors {:#?}\nviolations {:#?}\nolder member reads {older}",
            out.errors,
            out.violations
        );
        assert!(
            out.reads > 200 && out.writes > 200,
            "seed {seed}: too little traffic: {} reads {} writes",
            out.reads,
            out.writes
        );
        assert!(evictions > 0, "seed {seed}: the caches never evicted: the test lost its edge");
        let asm = assemble(&dir).unwrap();
        let report = amf::raid::scrub::scrub(&asm.array, false, &|_, _| {}).unwrap();
        assert_eq!(report.mismatches, 0, "seed {seed}: parity");
        // Everything written reached the members: read it back without any cache.
        let mut buf = vec![0u8; amf::workload::BLOCK_BYTES];
        for b in 0..spec.blocks {
            asm.array.read(b * buf.len() as u64, &mut buf).unwrap();
            assert!(amf::workload::decode(b, &buf).is_some(), "seed {seed}: block {b} holds bytes no write produced");
        }
    }
}
