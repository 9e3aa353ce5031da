//! The harness's `suspended_memory` scenario: N flows parked on an `external` phase that no
//! worker serves, each with its live actor, its waiting attempt and its queued task. Reports the
//! process's resident memory before and after, and the difference per flow.
//!
//! Included by `load_harness.rs` as a module; also `cargo run --release --example
//! suspended_memory -- --flows 100000` on its own (SQLite in a temp dir). `PARK_WITH=pending`
//! parks the flows on a handler that never returns instead, which tells the flow actor's share
//! of the cost from the queue's.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowd::store::DbStore;
use flowd_actors::definition::{FlowType, PhaseDefinition};
use flowd_actors::handler::HandlerSet;
use flowd_actors::ids::Tenant;
use flowd_actors::model::NewFlow;
use flowd_actors::{Runtime, RuntimeConfig};
use futures_util::StreamExt as _;
use serde_json::json;

/// The flow type every parked flow has: one `external` phase on a queue nobody polls.
pub fn parked_type() -> FlowType {
    FlowType {
        name: "parked".into(),
        version: 1,
        phases: vec![PhaseDefinition {
            params: json!({ "queue": "nobody" }),
            timeout_s: Some(86_400),
            ..PhaseDefinition::new("wait_for_worker", "external")
        }],
    }
}

/// Resident set size of this process, in bytes (Linux `/proc/self/status`).
pub fn rss_bytes() -> Result<u64, String> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("cannot read /proc/self/status: {e}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map(|kib| kib * 1024)
        .ok_or_else(|| "no VmRSS line".to_owned())
}

async fn wait_until_parked(
    runtime: &Runtime,
    count: usize,
    deadline: Instant,
    pending_only: bool,
) -> Result<(), String> {
    loop {
        let stats = runtime.queue_stats().await.map_err(|e| e.to_string())?;
        let parked = if pending_only {
            runtime.live_flows().await.map_err(|e| e.to_string())?
        } else {
            stats.queued
        };
        if parked >= count {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("only {} of {count} flows parked", stats.queued));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn create(runtime: &Runtime, count: usize, concurrency: usize) -> Result<(), String> {
    let creates = (0..count).map(|i| {
        let runtime = runtime.clone();
        async move {
            runtime
                .create_flow(NewFlow {
                    flow_type: "parked".into(),
                    input: json!({ "i": i }),
                    parent_flow_id: None,
                    master_flow_id: None,
                    tenant: Tenant::default_tenant(),
                    created_by: None,
                    idempotency_key: None,
                })
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    });
    let mut running = futures_util::stream::iter(creates).buffer_unordered(concurrency.max(1));
    while let Some(result) = running.next().await {
        result?;
    }
    Ok(())
}

/// Parks `flows` flows, `concurrency` creates at a time, and measures what they cost resident.
pub async fn run(
    store: Arc<DbStore>,
    config: RuntimeConfig,
    flows: usize,
    concurrency: usize,
    timeout: Duration,
) -> Result<BTreeMap<&'static str, f64>, String> {
    let deadline = Instant::now() + timeout;
    let mut handlers = HandlerSet::with_builtins();
    handlers.register("pending", |_ctx: flowd_actors::handler::PhaseContext| {
        std::future::pending()
    });
    let mut parked = parked_type();
    if std::env::var("PARK_WITH").as_deref() == Ok("pending") {
        parked.phases[0].handler = "pending".into();
    }
    let pending_only = parked.phases[0].handler == "pending";
    let runtime = Runtime::start(config, store, handlers, vec![parked])
        .await
        .map_err(|e| format!("runtime: {e}"))?;
    // Warm-up: first-use allocations (pools, statement caches, arbiters) are not per flow.
    const WARM_UP: usize = 200;
    create(&runtime, WARM_UP, concurrency).await?;
    wait_until_parked(&runtime, WARM_UP, deadline, pending_only).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_bytes()?;
    let started = Instant::now();
    create(&runtime, flows, concurrency).await?;
    wait_until_parked(&runtime, WARM_UP + flows, deadline, pending_only).await?;
    let parked_after = started.elapsed().as_secs_f64();
    // Let in-flight batches and their buffers drain before sampling.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_bytes()?;
    let live = runtime.live_flows().await.map_err(|e| e.to_string())?;
    if live < WARM_UP + flows {
        return Err(format!("only {live} live flow actors"));
    }
    let mut figures = BTreeMap::new();
    figures.insert("rss_before_mb", before as f64 / 1048576.0);
    figures.insert("rss_after_mb", after as f64 / 1048576.0);
    figures.insert(
        "bytes_per_flow",
        after.saturating_sub(before) as f64 / flows as f64,
    );
    figures.insert("seconds_to_all_parked", parked_after);
    Ok(figures)
}

#[allow(dead_code)]
fn main() -> Result<(), String> {
    let flows = std::env::args()
        .skip_while(|a| a != "--flows")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let url = format!("sqlite://{}", dir.path().join("parked.db").display());
    actix_web::rt::System::new().block_on(async move {
        let store = DbStore::connect(&url, 8).await.map_err(|e| e.to_string())?;
        let figures = run(
            Arc::new(store),
            RuntimeConfig::default(),
            flows,
            1000,
            Duration::from_secs(600),
        )
        .await?;
        let line = serde_json::to_string(
            &json!({ "scenario": "suspended_memory", "flows": flows, "figures": figures }),
        )
        .map_err(|e| e.to_string())?;
        println!("{line}");
        actix_web::rt::System::current().stop();
        Ok(())
    })
}
