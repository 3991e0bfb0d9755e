//! Latency histograms per kind of operation, and the Prometheus (OpenMetrics) document that
//! `/metrics` serves, both through the prometheus-client crate.
//!
//! The histograms are process-wide: a controller is one process. (The in-process cluster of the
//! tests runs several controllers in one process; their observations then add up.)

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::OnceLock;
use std::time::Instant;

/// What a latency was measured on.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    op: &'static str,
}

type Latencies = Family<OpLabels, Histogram, fn() -> Histogram>;

/// Buckets from 1 us to about 16 s, doubling: a member write on a real disk and a card round
/// trip on a real card both land in the middle.
fn new_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1e-6, 2.0, 25))
}

fn latencies() -> &'static Latencies {
    static L: OnceLock<Latencies> = OnceLock::new();
    L.get_or_init(|| Family::new_with_constructor(new_histogram as fn() -> Histogram))
}

/// Records the time since `start` as one `op`.
pub fn observe(op: Op, start: Instant) {
    latencies().get_or_create(&OpLabels { op: op.label() }).observe(start.elapsed().as_secs_f64());
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
        self.registry.register_with_unit(
            "latency",
            "Latency by operation",
            prometheus_client::registry::Unit::Seconds,
            latencies().clone(),
        );
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
