//! Websocket fan-out benchmark: the real server with C subscribers on one tenant stream, flows
//! committing events at a steady pace, and the delay from each event's commit to its arrival at
//! every subscriber. Commit time is when an in-process fan-out subscriber sees the event: the
//! persistence actor publishes right after the commit.
//!
//! `cargo run --release --example ws_fanout -- --subscribers 1000 --flows 40`
//! Prints one JSON object: `p50_ms`, `p99_ms`, `max_ms`, frames delivered and expected.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use flowd::configuration::Settings;
use flowd::startup::Application;
use flowd_actors::definition::{FlowType, PhaseDefinition};
use flowd_actors::ids::Tenant;
use flowd_actors::model::NewFlow;
use futures_util::StreamExt;
use parking_lot::Mutex;
use serde_json::json;

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

/// The one field a subscriber needs to match a frame to its commit.
#[derive(serde::Deserialize)]
struct EventId {
    id: i64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let scratch = tempfile::tempdir()?;
    let mut settings = Settings::default();
    settings.server.bind = "127.0.0.1:0".into();
    settings.database.url = format!("sqlite://{}", scratch.path().join("fanout.db").display());
    settings.flow_types = vec![FlowType {
        name: "paced".into(),
        version: 1,
        phases: (1..=6)
            .map(|i| PhaseDefinition {
                params: json!({ "ms": 20 }),
                ..PhaseDefinition::new(format!("p{i}"), "sleep")
            })
            .collect(),
    }];
    let application = Application::build(settings).await?;
    let address = application.address();
    let runtime = application.runtime().clone();
    actix_web::rt::spawn(application.run_until_stopped());

    // Commit times, from an in-process subscriber.
    let committed: Arc<Mutex<HashMap<i64, Instant>>> = Arc::default();
    let mut feed = runtime.subscribe();
    let committed_feed = committed.clone();
    actix_web::rt::spawn(async move {
        while let Ok(event) = feed.recv().await {
            committed_feed.lock().insert(event.id, Instant::now());
        }
    });

    // Subscribers: each records (event id, arrival) for every frame.
    let arrivals: Arc<Mutex<Vec<(i64, Instant)>>> = Arc::default();
    // awc's connector allows 100 connections by default; every subscriber holds one.
    let connector = awc::Connector::new().limit(0);
    let client = awc::Client::builder()
        .connector(connector)
        .timeout(Duration::from_secs(60))
        .finish();
    for _ in 0..args.subscribers {
        let (_, mut socket) = client
            .ws(format!("http://{address}/v1/events/ws"))
            .connect()
            .await
            .map_err(|e| anyhow::anyhow!("websocket: {e}"))?;
        let arrivals = arrivals.clone();
        actix_web::rt::spawn(async move {
            while let Some(Ok(frame)) = socket.next().await {
                if let awc::ws::Frame::Text(bytes) = frame {
                    let at = Instant::now();
                    if let Ok(frame) = serde_json::from_slice::<EventId>(&bytes) {
                        arrivals.lock().push((frame.id, at));
                    }
                }
            }
        });
    }

    let started = Instant::now();
    let mut ids = Vec::new();
    for _ in 0..args.flows {
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
        actix_web::rt::time::sleep(Duration::from_millis(args.every_ms)).await;
    }
    let expected_events = {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut done = 0;
            let mut total = 0;
            for id in &ids {
                let flow = runtime.flow(&Tenant::default_tenant(), *id).await?;
                done += usize::from(flow.status.is_terminal());
                total += flow_events(&runtime, *id).await?;
            }
            if done == ids.len() || Instant::now() > deadline {
                break total;
            }
            actix_web::rt::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let expected_frames = expected_events * args.subscribers;
    let deadline = Instant::now() + Duration::from_secs(30);
    while arrivals.lock().len() < expected_frames && Instant::now() < deadline {
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
    let committed = committed.lock().clone();
    let arrivals = arrivals.lock().clone();
    let mut delays: Vec<f64> = arrivals
        .iter()
        .filter_map(|(id, at)| {
            committed
                .get(id)
                .map(|c| at.saturating_duration_since(*c).as_secs_f64() * 1000.0)
        })
        .collect();
    delays.sort_by(f64::total_cmp);
    let line = json!({
        "scenario": "ws_fanout",
        "subscribers": args.subscribers,
        "flows": args.flows,
        "events": expected_events,
        "frames_expected": expected_frames,
        "frames_delivered": arrivals.len(),
        "p50_ms": percentile(&delays, 50.0),
        "p99_ms": percentile(&delays, 99.0),
        "max_ms": delays.last().copied().unwrap_or(f64::NAN),
        "elapsed_s": started.elapsed().as_secs_f64(),
    });
    println!("{line}");
    anyhow::ensure!(
        arrivals.len() == expected_frames,
        "frames lost or duplicated"
    );
    Ok(())
}

async fn flow_events(
    runtime: &flowd_actors::Runtime,
    id: flowd_actors::ids::FlowId,
) -> anyhow::Result<usize> {
    Ok(runtime
        .events(&Tenant::default_tenant(), id, 0, 10_000)
        .await?
        .len())
}
