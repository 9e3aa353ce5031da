//! The runtime's counters and histograms. One [`RuntimeMetrics`] is created per runtime and
//! handed to the actors that record into it (no global registry); the HTTP layer renders it
//! in the Prometheus text format.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

/// Upper bounds (seconds) for phase durations and commit latencies.
const SECONDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0,
];
/// Upper bounds for the number of writes in one commit.
const BATCH: [f64; 10] = [
    1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 2000.0, 5000.0,
];

/// A cumulative histogram with fixed buckets.
#[derive(Clone, Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, value: f64) {
        if let Some(i) = self.bounds.iter().position(|b| value <= *b) {
            self.counts[i] += 1;
        }
        self.sum += value;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        let sep = if labels.is_empty() { "" } else { "," };
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            cumulative += count;
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

/// Everything the runtime counts. Cheap to record from any thread.
pub struct RuntimeMetrics {
    phase_seconds: Mutex<BTreeMap<(String, String), Histogram>>,
    failures: Mutex<BTreeMap<String, u64>>,
    retries: AtomicU64,
    actor_restarts: AtomicU64,
    pings_missed: AtomicU64,
    events_committed: AtomicU64,
    commit_seconds: Mutex<Histogram>,
    batch_writes: Mutex<Histogram>,
    handler_queued_seconds: Mutex<Histogram>,
    /// Most distinct label sets per family; later ones are counted under `other`, so
    /// definitions and error kinds cannot grow the exposition without bound.
    max_series: usize,
}

/// The label value that series past [`RuntimeMetrics::with_max_series`] are counted under.
pub const OTHER_LABEL: &str = "other";

impl Default for RuntimeMetrics {
    fn default() -> Self {
        Self::with_max_series(200)
    }
}

impl RuntimeMetrics {
    /// Metrics keeping at most `max_series` distinct label sets per family.
    pub fn with_max_series(max_series: usize) -> Self {
        Self {
            max_series: max_series.max(1),
            phase_seconds: Mutex::default(),
            failures: Mutex::default(),
            retries: AtomicU64::new(0),
            actor_restarts: AtomicU64::new(0),
            pings_missed: AtomicU64::new(0),
            events_committed: AtomicU64::new(0),
            commit_seconds: Mutex::new(Histogram::new(&SECONDS)),
            batch_writes: Mutex::new(Histogram::new(&BATCH)),
            handler_queued_seconds: Mutex::new(Histogram::new(&SECONDS)),
        }
    }
}

/// Point-in-time values the metrics endpoint adds from elsewhere (database, supervisor).
#[derive(Clone, Debug, Default)]
pub struct Gauges {
    pub flows_by_status: Vec<(String, u64)>,
    pub live_flow_actors: usize,
    pub event_subscribers: usize,
    /// External tasks waiting for a worker, and leased to one.
    pub queued_tasks: usize,
    pub leased_tasks: usize,
    /// Failed tries of the batch the writer is waiting to commit: non-zero during an outage.
    pub commit_outage_tries: u64,
    /// Writes the database refused for their content since start (each failed alone).
    pub refused_writes: u64,
}

impl RuntimeMetrics {
    /// One attempt of `phase` ran for `seconds`.
    pub fn phase_finished(&self, flow_type: &str, phase: &str, seconds: f64) {
        let mut series = self.phase_seconds.lock();
        let mut key = (flow_type.to_owned(), phase.to_owned());
        if !series.contains_key(&key) && series.len() >= self.max_series {
            key = (OTHER_LABEL.to_owned(), OTHER_LABEL.to_owned());
        }
        series
            .entry(key)
            .or_insert_with(|| Histogram::new(&SECONDS))
            .observe(seconds);
    }

    /// A failure-journal row of this kind was committed.
    pub fn failure(&self, kind: &str) {
        let mut failures = self.failures.lock();
        let key = if failures.contains_key(kind) || failures.len() < self.max_series {
            kind
        } else {
            OTHER_LABEL
        };
        *failures.entry(key.to_owned()).or_default() += 1;
    }

    /// A phase attempt was scheduled again after a failure.
    pub fn retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    /// A flow actor was restarted from stored state.
    pub fn actor_restart(&self) {
        self.actor_restarts.fetch_add(1, Ordering::Relaxed);
    }

    /// A flow actor did not answer its ping in time.
    pub fn ping_missed(&self) {
        self.pings_missed.fetch_add(1, Ordering::Relaxed);
    }

    /// A phase attempt waited `seconds` for a handler thread before its handler started.
    pub fn handler_queued(&self, seconds: f64) {
        self.handler_queued_seconds.lock().observe(seconds);
    }

    /// A batch of `writes` holding `events` committed in `seconds`.
    pub fn batch_committed(&self, writes: usize, events: usize, seconds: f64) {
        self.events_committed
            .fetch_add(events as u64, Ordering::Relaxed);
        self.commit_seconds.lock().observe(seconds);
        self.batch_writes.lock().observe(writes as f64);
    }

    /// Failures counted so far, by kind.
    pub fn failures_by_kind(&self) -> BTreeMap<String, u64> {
        self.failures.lock().clone()
    }

    /// Retries counted so far.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition of everything, with `gauges` added.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::new();
        out.push_str("# HELP flowd_flows Flows by status.\n# TYPE flowd_flows gauge\n");
        for (status, count) in &gauges.flows_by_status {
            let _ = writeln!(out, "flowd_flows{{status=\"{status}\"}} {count}");
        }
        let gauge = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        };
        let counter = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        };
        gauge(
            &mut out,
            "flowd_live_flow_actors",
            "Flow actors alive now.",
            gauges.live_flow_actors as u64,
        );
        gauge(
            &mut out,
            "flowd_event_subscribers",
            "Live event stream subscribers.",
            gauges.event_subscribers as u64,
        );
        gauge(
            &mut out,
            "flowd_tasks_queued",
            "External tasks waiting for a worker.",
            gauges.queued_tasks as u64,
        );
        gauge(
            &mut out,
            "flowd_tasks_leased",
            "External tasks leased to a worker.",
            gauges.leased_tasks as u64,
        );
        gauge(
            &mut out,
            "flowd_persistence_outage_tries",
            "Failed tries of the batch waiting out a database outage (0: writing normally).",
            gauges.commit_outage_tries,
        );
        counter(
            &mut out,
            "flowd_persistence_refused_writes_total",
            "Writes the database refused for their content; each failed alone.",
            gauges.refused_writes,
        );
        counter(
            &mut out,
            "flowd_retries_total",
            "Phase attempts scheduled again after a failure.",
            self.retries(),
        );
        counter(
            &mut out,
            "flowd_actor_restarts_total",
            "Flow actors restarted from stored state.",
            self.actor_restarts.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "flowd_health_pings_missed_total",
            "Pings a flow actor did not answer in time.",
            self.pings_missed.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "flowd_events_committed_total",
            "Events (durable transitions) committed.",
            self.events_committed.load(Ordering::Relaxed),
        );
        out.push_str("# HELP flowd_failures_total Failure-journal rows, by kind.\n# TYPE flowd_failures_total counter\n");
        for (kind, count) in self.failures.lock().iter() {
            let _ = writeln!(out, "flowd_failures_total{{kind=\"{kind}\"}} {count}");
        }
        out.push_str("# HELP flowd_phase_duration_seconds Duration of phase attempts.\n# TYPE flowd_phase_duration_seconds histogram\n");
        for ((flow_type, phase), histogram) in self.phase_seconds.lock().iter() {
            let labels = format!(
                "flow_type=\"{}\",phase=\"{}\"",
                escape(flow_type),
                escape(phase)
            );
            histogram.render(&mut out, "flowd_phase_duration_seconds", &labels);
        }
        out.push_str("# HELP flowd_handler_queued_seconds Time a phase attempt waited for a handler thread; its timeout starts after it.\n# TYPE flowd_handler_queued_seconds histogram\n");
        self.handler_queued_seconds
            .lock()
            .render(&mut out, "flowd_handler_queued_seconds", "");
        out.push_str("# HELP flowd_persistence_commit_seconds Latency of one batch commit.\n# TYPE flowd_persistence_commit_seconds histogram\n");
        self.commit_seconds
            .lock()
            .render(&mut out, "flowd_persistence_commit_seconds", "");
        out.push_str("# HELP flowd_persistence_batch_writes Writes per committed batch.\n# TYPE flowd_persistence_batch_writes histogram\n");
        self.batch_writes
            .lock()
            .render(&mut out, "flowd_persistence_batch_writes", "");
        out
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_labelled() {
        let metrics = RuntimeMetrics::default();
        metrics.phase_finished("t", "a", 0.003);
        metrics.phase_finished("t", "a", 0.2);
        metrics.failure("timeout");
        let text = metrics.render(&Gauges::default());
        assert!(text.contains(
            "flowd_phase_duration_seconds_bucket{flow_type=\"t\",phase=\"a\",le=\"0.005\"} 1"
        ));
        assert!(text.contains(
            "flowd_phase_duration_seconds_bucket{flow_type=\"t\",phase=\"a\",le=\"0.25\"} 2"
        ));
        assert!(text.contains("flowd_phase_duration_seconds_count{flow_type=\"t\",phase=\"a\"} 2"));
        assert!(text.contains("flowd_failures_total{kind=\"timeout\"} 1"));
    }

    #[test]
    fn label_sets_are_bounded() {
        let metrics = RuntimeMetrics::with_max_series(2);
        for i in 0..10 {
            metrics.phase_finished(&format!("t{i}"), "a", 0.1);
            metrics.failure(&format!("k{i}"));
        }
        let text = metrics.render(&Gauges::default());
        assert!(text.contains("flow_type=\"t1\""));
        assert!(!text.contains("flow_type=\"t2\""));
        assert!(
            text.contains(
                "flowd_phase_duration_seconds_count{flow_type=\"other\",phase=\"other\"} 8"
            )
        );
        assert!(text.contains("flowd_failures_total{kind=\"other\"} 8"));
    }
}
