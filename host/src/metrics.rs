//! Latency histograms per kind of operation, and the Prometheus (OpenMetrics) document that
//! `/metrics` serves through the prometheus-client crate.
//!
//! The histograms are process-wide: a controller is one process. (The in-process cluster of the
//! tests runs several controllers in one process; their observations then add up.)

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::Instant;

/// What a latency was measured on (the discriminant indexes the histograms; `OPS` lists them in
/// the same order).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
#[repr(usize)]
pub enum Op {
    /// An NBD read, request received to reply sent.
    Read,
    /// An NBD write (or write-zeroes).
    Write,
    /// An NBD flush.
    Flush,
    /// A write to a line that needed an invalidate round through the card.
    SharedWrite,
    /// A read miss served from a peer's cache.
    RemoteHit,
    /// One card command, doorbell to completion as the host sees it.
    CardRoundTrip,
    /// One member read.
    MemberRead,
    /// One member write.
    MemberWrite,
}

impl Op {
    fn label(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::Flush => "flush",
            Op::SharedWrite => "shared_write",
            Op::RemoteHit => "remote_hit",
            Op::CardRoundTrip => "card_round_trip",
            Op::MemberRead => "member_read",
            Op::MemberWrite => "member_write",
        }
    }
}

/// Upper bound of the first bucket: 1 us; each next one doubles, up to about 16 s.
const BUCKET0_NS: u64 = 1_000;
const BUCKETS: usize = 25;

/// A latency histogram of atomics: an observation on the I/O path is three relaxed additions,
/// no lock (prometheus-client's own histogram takes a mutex per observation).
#[derive(Debug, Default)]
pub struct Latency {
    /// Observations per bucket (not cumulative), the last one unbounded.
    buckets: [AtomicU64; BUCKETS + 1],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl Latency {
    fn observe(&self, ns: u64) {
        // Bucket i holds (BUCKET0_NS * 2^(i-1), BUCKET0_NS * 2^i].
        let i = if ns <= BUCKET0_NS { 0 } else { (64 - ((ns - 1) / BUCKET0_NS).leading_zeros()) as usize };
        self.buckets[i.min(BUCKETS)].fetch_add(1, Relaxed);
        self.count.fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(ns, Relaxed);
    }

    fn bound_s(i: usize) -> f64 {
        if i >= BUCKETS {
            f64::INFINITY
        } else {
            (BUCKET0_NS << i) as f64 / 1e9
        }
    }

    /// Observations, mean and an upper bound of the median and of the 99th percentile (the
    /// bucket bounds they fall in), in microseconds.
    pub fn summary(&self) -> serde_json::Value {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let n: u64 = counts.iter().sum();
        let quantile = |q: f64| -> Option<f64> {
            let want = ((n as f64) * q).ceil().max(1.0) as u64;
            let mut seen = 0;
            counts.iter().enumerate().find_map(|(i, c)| {
                seen += c;
                (seen >= want).then(|| Self::bound_s(i) * 1e6)
            })
        };
        let mean = (n > 0).then(|| self.sum_ns.load(Relaxed) as f64 / n as f64 / 1e3);
        serde_json::json!({ "count": n, "mean_us": mean, "p50_us_max": quantile(0.5), "p99_us_max": quantile(0.99) })
    }
}

impl EncodeMetric for Latency {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let buckets: Vec<(f64, u64)> =
            self.buckets.iter().enumerate().map(|(i, b)| (Self::bound_s(i), b.load(Relaxed))).collect();
        let sum = self.sum_ns.load(Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, self.count.load(Relaxed), &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

const OPS: [Op; 8] = [
    Op::Read,
    Op::Write,
    Op::Flush,
    Op::SharedWrite,
    Op::RemoteHit,
    Op::CardRoundTrip,
    Op::MemberRead,
    Op::MemberWrite,
];

fn latencies() -> &'static [Latency; OPS.len()] {
    static L: OnceLock<[Latency; OPS.len()]> = OnceLock::new();
    L.get_or_init(Default::default)
}

/// Records the time since `start` as one `op`.
pub fn observe(op: Op, start: Instant) {
    latencies()[op as usize].observe(start.elapsed().as_nanos().min(u64::MAX as u128) as u64);
}

/// Every operation's latency summary (see [`Latency::summary`]), for `amf status`.
pub fn summary() -> serde_json::Value {
    let m: serde_json::Map<String, serde_json::Value> =
        OPS.iter().map(|&op| (op.label().to_string(), latencies()[op as usize].summary())).collect();
    serde_json::Value::Object(m)
}

/// The histograms as one family labelled by `op`, encoded at scrape time.
#[derive(Debug)]
struct LatencyFamily;

impl prometheus_client::collector::Collector for LatencyFamily {
    fn encode(&self, mut encoder: prometheus_client::encoding::DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "latency",
            "Latency by operation",
            Some(&prometheus_client::registry::Unit::Seconds),
            MetricType::Histogram,
        )?;
        for op in OPS {
            let labels = [("op", op.label())];
            latencies()[op as usize].encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// A /metrics document being built: counters and gauges read at scrape time, then the
/// histograms.
pub struct Document {
    registry: Registry,
}

impl Document {
    /// A document whose every sample carries `controller="index"`.
    pub fn new(controller: usize) -> Document {
        let labels = [("controller".into(), controller.to_string().into())];
        Document { registry: Registry::with_prefix_and_labels("amf", labels.into_iter()) }
    }

    /// Every unsigned number of a JSON object of counters as `amf_{prefix}_{key}` counters.
    pub fn counters(&mut self, prefix: &str, v: serde_json::Value) {
        if let serde_json::Value::Object(m) = v {
            for (k, v) in m {
                if let Some(n) = v.as_u64() {
                    self.registry.register(
                        format!("{prefix}_{k}"),
                        format!("{prefix} counter {k}"),
                        ConstCounter::new(n),
                    );
                }
            }
        }
    }

    /// One gauge.
    pub fn gauge(&mut self, name: &str, help: &str, value: i64) {
        self.registry.register(name, help, ConstGauge::new(value));
    }

    /// The text, with the latency histograms (seconds) at the end.
    pub fn finish(mut self) -> String {
        self.registry.register_collector(Box::new(LatencyFamily));
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            out = format!("# encoding the metrics failed: {e}\n# EOF\n");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses a document with a Prometheus text parser: (metric name, labels, value) samples.
    pub(crate) fn parse(text: &str) -> Vec<prometheus_parse::Sample> {
        let lines = text.lines().map(|l| Ok(l.to_string()));
        prometheus_parse::Scrape::parse(lines).expect("a Prometheus text parser reads /metrics").samples
    }

    #[test]
    fn ops_list_matches_the_discriminants() {
        for (i, op) in OPS.iter().enumerate() {
            assert_eq!(*op as usize, i, "{op:?}");
        }
    }

    #[test]
    fn latency_buckets_double_from_one_microsecond_and_summaries_bound_them() {
        let l = Latency::default();
        for ns in [500, 1_000, 1_001, 2_000, 2_001, 4_000, 4_001] {
            l.observe(ns);
        }
        let counts: Vec<u64> = l.buckets.iter().map(|b| b.load(Relaxed)).take(4).collect();
        assert_eq!(counts, vec![2, 2, 2, 1], "(..1 us], (1, 2], (2, 4], (4, 8]");
        l.observe(u64::MAX / 2);
        assert_eq!(l.buckets[BUCKETS].load(Relaxed), 1, "past the last bound: +Inf");
        let s = Latency::default();
        for _ in 0..99 {
            s.observe(3_000);
        }
        s.observe(3_000_000);
        let sum = s.summary();
        assert_eq!((sum["count"].as_u64(), sum["p50_us_max"].as_f64()), (Some(100), Some(4.0)));
        assert_eq!(sum["p99_us_max"].as_f64(), Some(4.0), "99 of 100 at 3 us");
        assert!(sum["mean_us"].as_f64().unwrap() > 30.0, "the 3 ms outlier moves the mean");
    }

    #[test]
    fn document_parses_with_counters_gauges_and_latency_histograms() {
        observe(Op::MemberWrite, Instant::now());
        observe(Op::CardRoundTrip, Instant::now() - std::time::Duration::from_millis(3));
        let mut doc = Document::new(4);
        doc.counters("engine", serde_json::json!({ "member_writes": 17, "name": "not a number" }));
        doc.gauge("members_degraded", "Members not active", 1);
        let text = doc.finish();
        let samples = parse(&text);
        let find =
            |name: &str| samples.iter().find(|s| s.metric == name).unwrap_or_else(|| panic!("{name} in\n{text}"));
        let c = find("amf_engine_member_writes_total");
        assert!(
            matches!(c.value, prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) if v == 17.0)
        );
        assert_eq!(c.labels.get("controller"), Some("4"));
        assert!(matches!(find("amf_members_degraded").value, prometheus_parse::Value::Gauge(v) if v == 1.0));
        let card = samples
            .iter()
            .find(|s| s.metric == "amf_latency_seconds" && s.labels.get("op") == Some("card_round_trip"))
            .unwrap_or_else(|| panic!("card round trip histogram in\n{text}"));
        let prometheus_parse::Value::Histogram(buckets) = &card.value else { panic!("{:?}", card.value) };
        let le_2ms = buckets.iter().find(|b| (b.less_than - 0.002048).abs() < 1e-9).map(|b| b.count);
        let le_4ms = buckets.iter().find(|b| (b.less_than - 0.004096).abs() < 1e-9).map(|b| b.count);
        let (Some(le_2ms), Some(le_4ms)) = (le_2ms, le_4ms) else { panic!("buckets at 2 and 4 ms: {buckets:?}") };
        // Other tests of this process may observe card round trips too: compare the two buckets.
        assert!(le_4ms >= le_2ms + 1.0, "3 ms lands between 2 and 4 ms: {buckets:?}");
        assert!(!text.contains("name"), "non-numeric fields are not metrics");
    }
}
