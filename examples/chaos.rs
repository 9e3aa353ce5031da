//! Chaos run: a mix of flows while every fault is injected — hanging, thread-blocking and
//! panicking handlers, flow actors that stop answering pings (once, and in a loop), and a
//! database outage — then a table of faults injected, recovered and journaled. Exits non-zero
//! if any flow is left neither completed nor failed.
//!
//! `cargo run --release --example chaos [-- --db sqlite|postgres --steady 200]`
//!
//! Fault injection is compiled only with the cargo feature `faults`; examples get it (and
//! `flowd::testing`) from the crate's dev-dependency on itself, with no flags.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use flowd::store::DbStore;
use flowd::testing::{Backend, TestDatabase};
use flowd_actors::definition::{FlowType, PhaseDefinition};
use flowd_actors::events::FlowEvent;
use flowd_actors::handler::HandlerSet;
use flowd_actors::ids::{FlowId, Tenant};
use flowd_actors::model::{FailureRecord, FlowState, FlowStatus, NewFlow};
use flowd_actors::store::{CommitReceipt, FlowQuery, FlowStore, StoreError, Write};
use flowd_actors::supervisor::RestartIntensity;
use flowd_actors::task::{TaskId, TaskRecord};
use flowd_actors::{Runtime, RuntimeConfig};
use futures_util::future::BoxFuture;
use serde_json::{Value, json};

#[derive(Parser)]
struct Args {
    /// `sqlite` (a temp file) or `postgres` (a throw-away database on FLOWD_TEST_POSTGRES_URL).
    #[arg(long, default_value = "sqlite")]
    db: Backend,
    /// Healthy flows running alongside the faults.
    #[arg(long, default_value_t = 200)]
    steady: usize,
}

/// A store whose commits can be made to fail: the database going away, at the store boundary.
struct Outage {
    inner: DbStore,
    down: AtomicBool,
}

impl FlowStore for Outage {
    fn commit<'a>(&'a self, batch: &'a [Write]) -> BoxFuture<'a, Result<(), StoreError>> {
        if self.down.load(Ordering::SeqCst) {
            return Box::pin(async { Err(StoreError::Unavailable("chaos: database down".into())) });
        }
        self.inner.commit(batch)
    }
    // The persistence actor commits through this one: the outage must reach it too, and the
    // inner store's fence and event numbering must not be lost.
    fn commit_receipted<'a>(
        &'a self,
        batch: &'a [Write],
        synced: bool,
    ) -> BoxFuture<'a, Result<CommitReceipt, StoreError>> {
        if self.down.load(Ordering::SeqCst) {
            return Box::pin(async { Err(StoreError::Unavailable("chaos: database down".into())) });
        }
        self.inner.commit_receipted(batch, synced)
    }
    fn owns(&self, flow: &FlowState) -> bool {
        self.inner.owns(flow)
    }
    fn not_owned<'a>(
        &'a self,
        ids: &'a [FlowId],
    ) -> BoxFuture<'a, Result<Vec<FlowId>, StoreError>> {
        self.inner.not_owned(ids)
    }
    fn load_flow_types(&self) -> BoxFuture<'_, Result<Vec<FlowType>, StoreError>> {
        self.inner.load_flow_types()
    }
    fn load_active_flows(&self) -> BoxFuture<'_, Result<Vec<FlowState>, StoreError>> {
        self.inner.load_active_flows()
    }
    fn stale_active_flows(
        &self,
        updated_before: chrono::DateTime<chrono::Utc>,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<FlowId>, StoreError>> {
        self.inner.stale_active_flows(updated_before, limit)
    }
    fn load_flow(&self, id: FlowId) -> BoxFuture<'_, Result<Option<FlowState>, StoreError>> {
        self.inner.load_flow(id)
    }
    fn find_by_idempotency_key<'a>(
        &'a self,
        tenant: &'a Tenant,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<FlowState>, StoreError>> {
        self.inner.find_by_idempotency_key(tenant, key)
    }
    fn list_flows<'a>(
        &'a self,
        query: &'a FlowQuery,
    ) -> BoxFuture<'a, Result<Vec<FlowState>, StoreError>> {
        self.inner.list_flows(query)
    }
    fn flow_events(
        &self,
        flow_id: FlowId,
        after: u64,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<FlowEvent>, StoreError>> {
        self.inner.flow_events(flow_id, after, limit)
    }
    fn tree_events(
        &self,
        master_flow_id: FlowId,
        after: i64,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<FlowEvent>, StoreError>> {
        self.inner.tree_events(master_flow_id, after, limit)
    }
    fn load_task(&self, id: TaskId) -> BoxFuture<'_, Result<Option<TaskRecord>, StoreError>> {
        self.inner.load_task(id)
    }
    fn find_task<'a>(
        &'a self,
        flow_id: FlowId,
        phase: &'a str,
        attempt: u32,
    ) -> BoxFuture<'a, Result<Option<TaskRecord>, StoreError>> {
        self.inner.find_task(flow_id, phase, attempt)
    }
    fn tenant_events<'a>(
        &'a self,
        tenant: &'a Tenant,
        after: i64,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<FlowEvent>, StoreError>> {
        self.inner.tenant_events(tenant, after, limit)
    }
    fn failures(&self, flow_id: FlowId) -> BoxFuture<'_, Result<Vec<FailureRecord>, StoreError>> {
        self.inner.failures(flow_id)
    }
    fn max_event_id(&self) -> BoxFuture<'_, Result<i64, StoreError>> {
        self.inner.max_event_id()
    }
    fn count_by_status(&self) -> BoxFuture<'_, Result<Vec<(FlowStatus, u64)>, StoreError>> {
        self.inner.count_by_status()
    }
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        self.inner.ping()
    }
}

fn phase(
    name: &str,
    handler: &str,
    params: Value,
    timeout_s: Option<u64>,
    retries: u32,
) -> PhaseDefinition {
    PhaseDefinition {
        params,
        timeout_s,
        retries,
        retry_backoff_ms: Some(50),
        ..PhaseDefinition::new(name, handler)
    }
}

fn flow_types() -> Vec<FlowType> {
    let flow = |name: &str, phases: Vec<PhaseDefinition>| FlowType {
        name: name.into(),
        version: 1,
        phases,
    };
    let steady = || {
        (1..=4)
            .map(|i| phase(&format!("step{i}"), "sleep", json!({ "ms": 100 }), None, 0))
            .collect::<Vec<_>>()
    };
    vec![
        flow("steady", steady()),
        flow(
            "hang",
            vec![phase("wait", "sleep", json!({ "ms": 600_000 }), Some(1), 1)],
        ),
        flow(
            "block",
            vec![phase("stuck", "block", json!({ "ms": 3000 }), Some(1), 0)],
        ),
        flow(
            "panic",
            vec![phase("boom", "panic", json!({ "times": 1 }), None, 2)],
        ),
        flow("frozen", steady()),
        flow("restart_loop", steady()),
    ]
}

/// A fault and the flows it was injected into.
struct Injection {
    fault: &'static str,
    flow_type: &'static str,
    journal_kind: &'static str,
    /// What the flow should end as once the runtime has dealt with the fault.
    expect: FlowStatus,
    ids: Vec<FlowId>,
}

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Dropped last, after the runtime: a PostgreSQL database is dropped with it.
    let database = TestDatabase::create(args.db)?;
    let inner = DbStore::connect(&database.url, 8).await?;
    let store = Arc::new(Outage {
        inner,
        down: AtomicBool::new(false),
    });
    let mut handlers = HandlerSet::with_builtins();
    flowd_actors::builtin::register_faults(&mut handlers);
    let config = RuntimeConfig {
        ping_interval: Duration::from_millis(100),
        ping_timeout: Duration::from_millis(500),
        restart_intensity: RestartIntensity {
            max_restarts: 3,
            window: Duration::from_secs(60),
        },
        ..RuntimeConfig::default()
    };
    let runtime = Runtime::start(config, store.clone(), handlers, flow_types()).await?;
    let started = Instant::now();
    let create = |flow_type: &'static str| {
        let runtime = runtime.clone();
        async move {
            let request = NewFlow {
                flow_type: flow_type.into(),
                input: json!({}),
                parent_flow_id: None,
                master_flow_id: None,
                tenant: Tenant::default_tenant(),
                created_by: Some("chaos".into()),
                idempotency_key: None,
            };
            runtime
                .create_flow(request)
                .await
                .map(|created| created.flow.id)
        }
    };
    let mut injections = vec![
        Injection {
            fault: "handler hangs",
            flow_type: "hang",
            journal_kind: "timeout",
            expect: FlowStatus::Failed,
            ids: vec![],
        },
        Injection {
            fault: "handler blocks its thread",
            flow_type: "block",
            journal_kind: "timeout",
            expect: FlowStatus::Failed,
            ids: vec![],
        },
        Injection {
            fault: "handler panics once",
            flow_type: "panic",
            journal_kind: "panic",
            expect: FlowStatus::Completed,
            ids: vec![],
        },
        Injection {
            fault: "actor deaf to pings once",
            flow_type: "frozen",
            journal_kind: "-",
            expect: FlowStatus::Completed,
            ids: vec![],
        },
        Injection {
            fault: "actor restart loop",
            flow_type: "restart_loop",
            journal_kind: "restart_intensity_exceeded",
            expect: FlowStatus::Failed,
            ids: vec![],
        },
    ];
    for injection in &mut injections {
        for _ in 0..5 {
            injection.ids.push(create(injection.flow_type).await?);
        }
    }
    for id in &injections[3].ids {
        runtime.faults().freeze(*id, 1, Duration::from_secs(2));
    }
    for id in &injections[4].ids {
        runtime.faults().freeze(*id, 1000, Duration::from_secs(60));
    }
    let mut steady = Vec::new();
    for _ in 0..args.steady {
        steady.push(create("steady").await?);
    }
    // The database goes away for two seconds while everything runs.
    tokio::time::sleep(Duration::from_millis(200)).await;
    store.down.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(2)).await;
    store.down.store(false, Ordering::SeqCst);
    let failed_batches = runtime.persistence_stats().await?.failed_batches;

    let every: Vec<FlowId> = injections
        .iter()
        .flat_map(|i| i.ids.iter().copied())
        .chain(steady.iter().copied())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut finals: BTreeMap<FlowId, FlowStatus> = BTreeMap::new();
    while Instant::now() < deadline {
        for id in &every {
            if !finals.contains_key(id)
                && let Some(flow) = store.load_flow(*id).await?
                && flow.status.is_terminal()
            {
                finals.insert(*id, flow.status);
            }
        }
        if finals.len() == every.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    println!("fault                        injected as_expected  journaled  journal kind");
    let mut all_expected = true;
    for injection in &injections {
        let mut journaled = 0;
        for id in &injection.ids {
            let rows = store.failures(*id).await?;
            journaled += rows
                .iter()
                .filter(|f| f.error_kind == injection.journal_kind)
                .count();
        }
        let expected = injection
            .ids
            .iter()
            .filter(|id| finals.get(id) == Some(&injection.expect))
            .count();
        all_expected &= expected == injection.ids.len();
        println!(
            "{:<28} {:>8} {:>10} {:>10}  {} (expect {})",
            injection.fault,
            injection.ids.len(),
            expected,
            journaled,
            injection.journal_kind,
            injection.expect
        );
    }
    println!(
        "{:<28} {:>8} {:>10} {:>10}  batches failed and retried",
        "database down 2 s", 1, "-", failed_batches
    );
    let metrics = runtime.metrics();
    let completed = finals
        .values()
        .filter(|s| **s == FlowStatus::Completed)
        .count();
    let failed = finals
        .values()
        .filter(|s| **s == FlowStatus::Failed)
        .count();
    let steady_done = steady
        .iter()
        .filter(|id| finals.get(id) == Some(&FlowStatus::Completed))
        .count();
    let stuck = every.len() - finals.len();
    println!();
    println!(
        "flows: {} total, {completed} completed, {failed} failed, {stuck} stuck",
        every.len()
    );
    println!(
        "steady flows completed through the chaos: {steady_done}/{}",
        steady.len()
    );
    println!(
        "retries: {}, failures by kind: {:?}",
        metrics.retries(),
        metrics.failures_by_kind()
    );
    println!("elapsed: {:.1}s", started.elapsed().as_secs_f64());
    anyhow::ensure!(stuck == 0, "{stuck} flows stuck");
    anyhow::ensure!(
        all_expected && steady_done == steady.len(),
        "some flows did not end as expected"
    );
    Ok(())
}
