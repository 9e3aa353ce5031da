//! The runtime's counters and histograms, kept in a `prometheus-client` [`Registry`]. One
//! [`RuntimeMetrics`] is created per runtime and handed to the actors that record into it (no
//! global registry); the HTTP layer serves [`RuntimeMetrics::render`], the Prometheus text
//! format (0.0.4), with the gauges only a scrape can know added.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicU64;

use parking_lot::RwLock;
use prometheus_client::encoding::{EncodeLabelSet, prometheus_text};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The `Content-Type` of [`RuntimeMetrics::render`]'s text.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Upper bounds (seconds) for phase durations and commit latencies.
const SECONDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0,
];
/// Upper bounds for the number of writes in one commit.
const BATCH: [f64; 10] = [
    1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 2000.0, 5000.0,
];

/// The label value that series past [`RuntimeMetrics::with_max_series`] are counted under.
pub const OTHER_LABEL: &str = "other";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    flow_type: String,
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: String,
}

fn seconds_histogram() -> Histogram {
    Histogram::new(SECONDS)
}

/// The series of one labelled family by their label values (one or two), so that recording
/// into a series that exists borrows the caller's strings and allocates nothing. At most
/// `max` label sets; later ones are all recorded under [`OTHER_LABEL`], so definitions and
/// error kinds cannot grow the exposition without bound.
struct Capped<M> {
    max: usize,
    series: RwLock<Series<M>>,
}

/// Series by first, then second label value, and how many there are.
struct Series<M> {
    by_first: HashMap<String, HashMap<String, M>>,
    len: usize,
}

impl<M> Default for Series<M> {
    fn default() -> Self {
        Self {
            by_first: HashMap::new(),
            len: 0,
        }
    }
}

impl<M> Capped<M> {
    fn new(max: usize) -> Self {
        Self {
            max,
            series: RwLock::default(),
        }
    }

    /// Runs `record` on the series of `labels`, made by `create` the first time; on the series
    /// of `overflow` instead when `labels` is new and the family is full.
    fn record<'a>(
        &self,
        labels: (&'a str, &'a str),
        overflow: (&'a str, &'a str),
        create: impl FnOnce(&str, &str) -> M,
        record: impl FnOnce(&M),
    ) {
        let (first, second) = labels;
        if let Some(series) = self
            .series
            .read()
            .by_first
            .get(first)
            .and_then(|by| by.get(second))
        {
            return record(series);
        }
        let mut guard = self.series.write();
        let Series { by_first, len } = &mut *guard;
        let exists = by_first
            .get(first)
            .is_some_and(|by| by.contains_key(second));
        let (first, second) = if exists || *len < self.max {
            labels
        } else {
            overflow
        };
        let by_second = by_first.entry(first.to_owned()).or_default();
        let series = by_second.entry(second.to_owned()).or_insert_with(|| {
            *len += 1;
            create(first, second)
        });
        record(series);
    }
}

/// Everything the runtime counts. Cheap to record from any thread: counters are atomics,
/// each histogram has its own lock, and labelled series are found without allocating.
pub struct RuntimeMetrics {
    registry: Registry,
    phase_seconds: HistogramFamilyHandles<PhaseLabels>,
    failures: CounterFamilyHandles<KindLabel>,
    retries: Counter,
    actor_restarts: Counter,
    pings_missed: Counter,
    events_committed: Counter,
    fenced_writes: Counter,
    commit_seconds: Histogram,
    batch_writes: Histogram,
    handler_queued_seconds: Histogram,
}

/// A histogram family and its capped handles.
struct HistogramFamilyHandles<S> {
    family: Family<S, Histogram, fn() -> Histogram>,
    handles: Capped<Histogram>,
}

/// A counter family and its capped handles.
struct CounterFamilyHandles<S> {
    family: Family<S, Counter>,
    handles: Capped<Counter>,
}

impl Default for RuntimeMetrics {
    fn default() -> Self {
        Self::with_max_series(200)
    }
}

impl RuntimeMetrics {
    /// Metrics keeping at most `max_series` distinct label sets per family.
    pub fn with_max_series(max_series: usize) -> Self {
        let max_series = max_series.max(1);
        let phase_seconds = HistogramFamilyHandles {
            family: Family::new_with_constructor(seconds_histogram as fn() -> Histogram),
            handles: Capped::new(max_series),
        };
        let failures = CounterFamilyHandles {
            family: Family::default(),
            handles: Capped::new(max_series),
        };
        let (retries, actor_restarts, pings_missed, events_committed, fenced_writes) =
            Default::default();
        let (commit_seconds, batch_writes, handler_queued_seconds) = (
            seconds_histogram(),
            Histogram::new(BATCH),
            seconds_histogram(),
        );
        // The registry holds clones: each shares its value with the handle kept here.
        let mut registry = Registry::default();
        let counters: [(&str, &str, &Counter); 5] = [
            (
                "flowd_retries",
                "Phase attempts scheduled again after a failure",
                &retries,
            ),
            (
                "flowd_actor_restarts",
                "Flow actors restarted from stored state",
                &actor_restarts,
            ),
            (
                "flowd_health_pings_missed",
                "Pings a flow actor did not answer in time",
                &pings_missed,
            ),
            (
                "flowd_events_committed",
                "Events (durable transitions) committed",
                &events_committed,
            ),
            (
                "flowd_fenced_writes",
                "Transitions that committed nothing because another node had taken the flow over",
                &fenced_writes,
            ),
        ];
        for (name, help, counter) in counters {
            registry.register(name, help, counter.clone());
        }
        registry.register(
            "flowd_failures",
            "Failure-journal rows, by kind",
            failures.family.clone(),
        );
        registry.register(
            "flowd_phase_duration_seconds",
            "Duration of phase attempts",
            phase_seconds.family.clone(),
        );
        let histograms: [(&str, &str, &Histogram); 3] = [
            (
                "flowd_handler_queued_seconds",
                "Time a phase attempt waited for a handler thread; its timeout starts after it",
                &handler_queued_seconds,
            ),
            (
                "flowd_persistence_commit_seconds",
                "Latency of one batch commit",
                &commit_seconds,
            ),
            (
                "flowd_persistence_batch_writes",
                "Writes per committed batch",
                &batch_writes,
            ),
        ];
        for (name, help, histogram) in histograms {
            registry.register(name, help, histogram.clone());
        }
        Self {
            registry,
            phase_seconds,
            failures,
            retries,
            actor_restarts,
            pings_missed,
            events_committed,
            fenced_writes,
            commit_seconds,
            batch_writes,
            handler_queued_seconds,
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

impl Gauges {
    /// A registry of this scrape's values, rendered before the runtime's own.
    fn registry(&self) -> Registry {
        let mut registry = Registry::default();
        let flows = Family::<StatusLabel, Gauge<u64, AtomicU64>>::default();
        for (status, count) in &self.flows_by_status {
            flows
                .get_or_create(&StatusLabel {
                    status: status.clone(),
                })
                .set(*count);
        }
        registry.register("flowd_flows", "Flows by status", flows);
        registry.register(
            "flowd_live_flow_actors",
            "Flow actors alive now",
            ConstGauge::new(self.live_flow_actors as u64),
        );
        registry.register(
            "flowd_event_subscribers",
            "Live event stream subscribers",
            ConstGauge::new(self.event_subscribers as u64),
        );
        registry.register(
            "flowd_tasks_queued",
            "External tasks waiting for a worker",
            ConstGauge::new(self.queued_tasks as u64),
        );
        registry.register(
            "flowd_tasks_leased",
            "External tasks leased to a worker",
            ConstGauge::new(self.leased_tasks as u64),
        );
        registry.register(
            "flowd_persistence_outage_tries",
            "Failed tries of the batch waiting out a database outage (0: writing normally)",
            ConstGauge::new(self.commit_outage_tries),
        );
        registry.register(
            "flowd_persistence_refused_writes",
            "Writes the database refused for their content; each failed alone",
            ConstCounter::new(self.refused_writes),
        );
        registry
    }
}

impl RuntimeMetrics {
    /// One attempt of `phase` ran for `seconds`.
    pub fn phase_finished(&self, flow_type: &str, phase: &str, seconds: f64) {
        let family = &self.phase_seconds.family;
        self.phase_seconds.handles.record(
            (flow_type, phase),
            (OTHER_LABEL, OTHER_LABEL),
            |flow_type, phase| {
                family.get_or_create_owned(&PhaseLabels {
                    flow_type: flow_type.to_owned(),
                    phase: phase.to_owned(),
                })
            },
            |histogram| histogram.observe(seconds),
        );
    }

    /// A failure-journal row of this kind was committed.
    pub fn failure(&self, kind: &str) {
        let family = &self.failures.family;
        self.failures.handles.record(
            (kind, ""),
            (OTHER_LABEL, ""),
            |kind, _| {
                family.get_or_create_owned(&KindLabel {
                    kind: kind.to_owned(),
                })
            },
            |counter| {
                counter.inc();
            },
        );
    }

    /// A transition was fenced off: this node no longer owns its flow.
    pub fn fenced_write(&self) {
        self.fenced_writes.inc();
    }

    /// Transitions fenced off since start.
    pub fn fenced_writes(&self) -> u64 {
        self.fenced_writes.get()
    }

    /// A phase attempt was scheduled again after a failure.
    pub fn retry(&self) {
        self.retries.inc();
    }

    /// A flow actor was restarted from stored state.
    pub fn actor_restart(&self) {
        self.actor_restarts.inc();
    }

    /// A flow actor did not answer its ping in time.
    pub fn ping_missed(&self) {
        self.pings_missed.inc();
    }

    /// A phase attempt waited `seconds` for a handler thread before its handler started.
    pub fn handler_queued(&self, seconds: f64) {
        self.handler_queued_seconds.observe(seconds);
    }

    /// A batch of `writes` holding `events` committed in `seconds`.
    pub fn batch_committed(&self, writes: usize, events: usize, seconds: f64) {
        self.events_committed.inc_by(events as u64);
        self.commit_seconds.observe(seconds);
        self.batch_writes.observe(writes as f64);
    }

    /// Failures counted so far, by kind.
    pub fn failures_by_kind(&self) -> BTreeMap<String, u64> {
        self.failures
            .handles
            .series
            .read()
            .by_first
            .iter()
            .flat_map(|(kind, by)| {
                by.values()
                    .map(move |counter| (kind.clone(), counter.get()))
            })
            .collect()
    }

    /// Retries counted so far.
    pub fn retries(&self) -> u64 {
        self.retries.get()
    }

    /// The Prometheus text exposition of everything, with `gauges` added.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail, and every metric here encodes.
        let _ = prometheus_text::encode(&mut out, &gauges.registry());
        let _ = prometheus_text::encode(&mut out, &self.registry);
        out
    }
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
        assert_eq!(metrics.failures_by_kind()[OTHER_LABEL], 8);
    }

    #[test]
    fn every_family_keeps_its_name_type_and_help() {
        let gauges = Gauges {
            flows_by_status: vec![("running".into(), 3)],
            live_flow_actors: 2,
            refused_writes: 5,
            ..Gauges::default()
        };
        let metrics = RuntimeMetrics::default();
        metrics.phase_finished("t", "a", 0.1);
        metrics.failure("timeout");
        let text = metrics.render(&gauges);
        let types: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .collect();
        assert_eq!(
            types,
            [
                "flowd_flows gauge",
                "flowd_live_flow_actors gauge",
                "flowd_event_subscribers gauge",
                "flowd_tasks_queued gauge",
                "flowd_tasks_leased gauge",
                "flowd_persistence_outage_tries gauge",
                "flowd_persistence_refused_writes_total counter",
                "flowd_retries_total counter",
                "flowd_actor_restarts_total counter",
                "flowd_health_pings_missed_total counter",
                "flowd_events_committed_total counter",
                "flowd_fenced_writes_total counter",
                "flowd_failures_total counter",
                "flowd_phase_duration_seconds histogram",
                "flowd_handler_queued_seconds histogram",
                "flowd_persistence_commit_seconds histogram",
                "flowd_persistence_batch_writes histogram",
            ]
        );
        assert!(text.contains("# HELP flowd_failures_total Failure-journal rows, by kind.\n"));
        assert!(text.contains("flowd_flows{status=\"running\"} 3\n"));
        assert!(text.contains("flowd_live_flow_actors 2\n"));
        assert!(text.contains("flowd_persistence_refused_writes_total 5\n"));
        assert!(text.contains("flowd_persistence_batch_writes_bucket{le=\"+Inf\"} 0\n"));
        assert!(!text.contains("# EOF"), "Prometheus text, not OpenMetrics");
    }
}
