//! Websocket fan-out benchmark: the real server with C subscribers on one tenant stream, flows
//! committing events at a steady pace, and the delay from each event's commit to its arrival at
//! every subscriber. Commit time is when an in-process fan-out subscriber sees the event: the
//! persistence actor publishes right after the commit.
//!
//! `cargo run --release --example ws_fanout -- --subscribers 1000 --flows 40`
//! Prints one JSON object: `p50_ms`, `p99_ms`, `max_ms`, frames delivered and expected.
//!
//! The same measurement is `load_harness --scenario ws_fanout` (which includes this file as its
//! `ws_fanout` module), with `--db sqlite|postgres`, `--runs` and medians; this program keeps
//! the original command line on a temp SQLite database.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use flowd::configuration::Settings;
use flowd::startup::Application;
use flowd_actors::Runtime;
use flowd_actors::definition::{FlowType, PhaseDefinition};
use flowd_actors::ids::{FlowId, Tenant};
use flowd_actors::model::NewFlow;
use futures_util::{SinkExt as _, StreamExt as _};
use parking_lot::Mutex;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

/// The command line of the standalone program.
#[derive(Parser)]
struct Args {
    /// Websocket subscribers on the tenant stream.
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Flows to run while they listen (15 events each).
    #[arg(long, default_value_t = 40)]
    flows: usize,
    /// Pause between flow creations.
    #[arg(long, default_value_t = 25)]
    every_ms: u64,
}

/// The standalone program: one run on a temp SQLite database, one JSON line.
#[allow(
    dead_code,
    reason = "unused where load_harness includes this file as a module"
)]
fn main() -> ExitCode {
    let args = Args::parse();
    let result = actix_web::rt::System::new().block_on(async {
        let scratch = tempfile::tempdir()?;
        let plan = FanoutPlan {
            database_url: format!("sqlite://{}", scratch.path().join("fanout.db").display()),
            subscribers: args.subscribers,
            flows: args.flows,
            phases: 6,
            phase_ms: 20,
            every: Duration::from_millis(args.every_ms),
        };
        measure(&plan).await
    });
    let measured = match result {
        Ok(measured) => measured,
        Err(error) => {
            eprintln!("ws_fanout failed: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    let line = json!({
        "scenario": "ws_fanout",
        "subscribers": args.subscribers,
        "flows": args.flows,
        "events": measured.events,
        "frames_expected": measured.frames_expected,
        "frames_delivered": measured.frames_delivered,
        "p50_ms": measured.p50_ms,
        "p99_ms": measured.p99_ms,
        "max_ms": measured.max_ms,
        "elapsed_s": measured.elapsed_s,
    });
    println!("{line}");
    if measured.complete() {
        ExitCode::SUCCESS
    } else {
        eprintln!("ws_fanout: frames lost or duplicated");
        ExitCode::FAILURE
    }
}

/// What one fan-out run does.
pub struct FanoutPlan {
    /// A fresh database for the server (`sqlite://…` or `postgres://…`).
    pub database_url: String,
    /// Websocket subscribers on the tenant stream (C).
    pub subscribers: usize,
    /// Flows created while they listen (N).
    pub flows: usize,
    /// `sleep` phases per flow (K); a flow commits 2K + 3 events.
    pub phases: usize,
    /// How long each phase sleeps.
    pub phase_ms: u64,
    /// Pause between flow creations.
    pub every: Duration,
}

/// What one fan-out run measured: commit → subscriber delays over every delivered frame.
pub struct FanoutMeasured {
    /// Events the flows committed.
    pub events: usize,
    /// Events × subscribers.
    pub frames_expected: usize,
    /// Frames that reached a subscriber.
    pub frames_delivered: usize,
    /// Median delay, in milliseconds.
    pub p50_ms: f64,
    /// 99th-percentile delay, in milliseconds.
    pub p99_ms: f64,
    /// Largest delay, in milliseconds.
    pub max_ms: f64,
    /// Seconds from the first creation to the last frame (or the wait's end).
    pub elapsed_s: f64,
}

impl FanoutMeasured {
    /// Every frame arrived exactly once.
    pub fn complete(&self) -> bool {
        self.frames_delivered == self.frames_expected
    }
}

/// The one field a subscriber needs to match a frame to its commit.
#[derive(serde::Deserialize)]
struct EventId {
    id: i64,
}

/// Starts the server in-process on `plan.database_url`, connects the subscribers, runs the
/// flows, and waits until every frame arrived (at most 30 s after the flows finished).
pub async fn measure(plan: &FanoutPlan) -> anyhow::Result<FanoutMeasured> {
    let mut settings = Settings::default();
    settings.server.bind = "127.0.0.1:0".into();
    settings.database.url = plan.database_url.clone();
    settings.flow_types = vec![FlowType {
        name: "paced".into(),
        version: 1,
        phases: (1..=plan.phases)
            .map(|i| PhaseDefinition {
                params: json!({ "ms": plan.phase_ms }),
                ..PhaseDefinition::new(format!("p{i}"), "sleep")
            })
            .collect(),
    }];
    let application = Application::build(settings).await?;
    let address = application.address();
    let runtime = application.runtime().clone();
    let server = actix_web::rt::spawn(application.run_until_stopped());
    let measured = fan_out(plan, &runtime, &format!("http://{address}/v1/events/ws")).await;
    // Dropping the server's future stops its workers and releases the listener.
    server.abort();
    measured
}

async fn fan_out(
    plan: &FanoutPlan,
    runtime: &Runtime,
    ws_url: &str,
) -> anyhow::Result<FanoutMeasured> {
    // Commit times, from an in-process subscriber. Its buffer is the runtime's: a lag would
    // leave frames without a commit time, and fails the run.
    let committed: Arc<Mutex<HashMap<i64, Instant>>> = Arc::default();
    let lagged: Arc<Mutex<u64>> = Arc::default();
    let mut feed = runtime.subscribe();
    let (committed_feed, lagged_feed) = (committed.clone(), lagged.clone());
    let feeder = actix_web::rt::spawn(async move {
        loop {
            match feed.recv().await {
                Ok(event) => {
                    committed_feed.lock().insert(event.id, Instant::now());
                }
                Err(RecvError::Lagged(missed)) => *lagged_feed.lock() += missed,
                Err(RecvError::Closed) => break,
            }
        }
    });

    // Subscribers: each records (event id, arrival) for every frame, and answers pings (the
    // server closes a client silent for 30 s).
    let arrivals: Arc<Mutex<Vec<(i64, Instant)>>> = Arc::default();
    // awc's connector allows 100 connections by default; every subscriber holds one.
    let client = awc::Client::builder()
        .connector(awc::Connector::new().limit(0))
        .timeout(Duration::from_secs(60))
        .finish();
    let mut sockets = Vec::with_capacity(plan.subscribers);
    for _ in 0..plan.subscribers {
        let (_, mut socket) = client
            .ws(ws_url)
            .connect()
            .await
            .map_err(|e| anyhow::anyhow!("websocket: {e}"))?;
        let arrivals = arrivals.clone();
        sockets.push(actix_web::rt::spawn(async move {
            while let Some(Ok(frame)) = socket.next().await {
                match frame {
                    awc::ws::Frame::Text(bytes) => {
                        let at = Instant::now();
                        if let Ok(frame) = serde_json::from_slice::<EventId>(&bytes) {
                            arrivals.lock().push((frame.id, at));
                        }
                    }
                    awc::ws::Frame::Ping(bytes) => {
                        let pong = socket.send(awc::ws::Message::Pong(bytes)).await;
                        if pong.is_err() {
                            break;
                        }
                    }
                    _ => {}
                }
            }
        }));
    }

    let started = Instant::now();
    let mut ids = Vec::with_capacity(plan.flows);
    for _ in 0..plan.flows {
        let created = runtime
            .create_flow(NewFlow {
                flow_type: "paced".into(),
                input: json!({}),
                parent_flow_id: None,
                master_flow_id: None,
                tenant: Tenant::default_tenant(),
                created_by: None,
                idempotency_key: None,
            })
            .await?;
        ids.push(created.flow.id);
        actix_web::rt::time::sleep(plan.every).await;
    }
    let events = {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut done = 0;
            let mut total = 0;
            for id in &ids {
                let flow = runtime.flow(&Tenant::default_tenant(), *id).await?;
                done += usize::from(flow.status.is_terminal());
                total += flow_events(runtime, *id).await?;
            }
            if done == ids.len() || Instant::now() > deadline {
                break total;
            }
            actix_web::rt::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let frames_expected = events * plan.subscribers;
    let deadline = Instant::now() + Duration::from_secs(30);
    while arrivals.lock().len() < frames_expected && Instant::now() < deadline {
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed_s = started.elapsed().as_secs_f64();
    for socket in sockets {
        socket.abort();
    }
    feeder.abort();
    let missed = *lagged.lock();
    anyhow::ensure!(
        missed == 0,
        "the commit-time subscriber lagged and missed {missed} events"
    );

    let committed = committed.lock();
    let arrivals = std::mem::take(&mut *arrivals.lock());
    let mut delays = arrivals
        .iter()
        .map(|(id, at)| {
            committed
                .get(id)
                .map(|c| at.saturating_duration_since(*c).as_secs_f64() * 1e3)
                .ok_or_else(|| anyhow::anyhow!("a frame of event {id} that was never committed"))
        })
        .collect::<anyhow::Result<Vec<f64>>>()?;
    delays.sort_by(f64::total_cmp);
    Ok(FanoutMeasured {
        events,
        frames_expected,
        frames_delivered: arrivals.len(),
        p50_ms: percentile(&delays, 0.50),
        p99_ms: percentile(&delays, 0.99),
        max_ms: delays.last().copied().unwrap_or(f64::NAN),
        elapsed_s,
    })
}

/// Nearest rank of `p` (0–1) in `sorted`; NaN when empty.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

async fn flow_events(runtime: &Runtime, id: FlowId) -> anyhow::Result<usize> {
    Ok(runtime
        .events(&Tenant::default_tenant(), id, 0, 10_000)
        .await?
        .len())
}
