//! Load harness: drives an in-process runtime (or, for `db_limit`, the store alone; for
//! `recovery` and `http_start_latency`, the real server binary) and prints one JSON object per
//! run on stdout, then the medians when `--runs` > 1.
//!
//! ```text
//! cargo run --release --example load_harness -- \
//!     --db sqlite --scenario throughput --flows 5000 --phases 6 --concurrency 1000 --runs 3
//! ```
//!
//! Scenarios:
//! - `throughput`: flows of K `noop` phases, C in flight until N completed; flows and committed
//!   events (transitions) per second, and create-to-completion latency.
//! - `start_latency`: create-to-running (the `create_flow` call) and create-to-first-phase
//!   (a registered handler starts running) latencies, with at most C flows in flight.
//! - `db_limit`: no actors; the writes the runtime would issue for N flows of K phases, committed
//!   straight through the store in batches of C. The physical ceiling `throughput` is held to.
//! - `recovery`: N flows in flight in the real server, SIGKILL, restart; seconds to resume.
//! - `http_start_latency`: the real server; N `POST /v1/flows` (flows of K `noop` phases) sent
//!   open-loop at `--rate` per second over a keep-alive pool of at most C connections. Latency
//!   runs from each request's *scheduled* send time to its `201` (the flow committed
//!   `running`), so a slow answer delays no later measurement (no coordinated omission).
//! - `ws_fanout`: the server in-process with C websocket subscribers on the tenant stream; N
//!   flows of K `sleep 20 ms` phases created `--rate` per second; delay from each event's
//!   commit to its arrival at every subscriber (`examples/ws_fanout.rs`, included as a module).
//! - `soak`: the real server under `--rate` creates per second (default 100) of a mixed 6-phase
//!   flow with three `command` phases and a 1 s stored-flow sweep, until N were sent; create
//!   latency, live flows and resident memory over time, failed flows and phases that ran
//!   twice (`examples/harness/soak.rs`, included as a module).
//! - `http_e2e`: the real server; C clients, each creating a flow of K `noop` phases over HTTP
//!   and waiting for it to complete on its own websocket (or, with `--tenant-stream`, on one
//!   shared tenant stream), until N completed. Flows/s, create-to-completed latency, the
//!   server's and the harness's CPU per flow, the writer's busy share and batch
//!   (`examples/harness/http_e2e.rs`, included as a module).
//! - `suspended_memory`: N flows parked on an `external` phase no worker serves, C creates at a
//!   time; the process's RSS before and after, and the difference per flow
//!   (`examples/suspended_memory.rs`, included as a module).
//!
//! Every run gets a fresh database: SQLite in a temp dir, or a throw-away PostgreSQL database
//! created next to `FLOWD_BENCH_POSTGRES_URL` / `FLOWD_TEST_POSTGRES_URL` and dropped after.
//! Logs are off unless `RUST_LOG` is set (they go to stderr).

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::rt::System;
use clap::{Parser, ValueEnum};
use flowd::store::DbStore;
use flowd::store::sqlite::SqliteSync;
use flowd::testing::{Backend, ServerLogs, TestDatabase, TestServer, postgres_admin_url};
use flowd_actors::definition::{FlowType, PhaseDefinition};
use flowd_actors::events::EventKind;
use flowd_actors::handler::{HandlerSet, PhaseContext, PhaseOutput};
use flowd_actors::ids::{FlowId, Tenant};
use flowd_actors::machine;
use flowd_actors::model::{FlowState, NewFlow, now};
use flowd_actors::persistence::PersistenceStats;
use flowd_actors::store::{FlowStore, FlowUpdate, TransitionWrite, Write};
use flowd_actors::{Runtime, RuntimeConfig};
use futures_util::StreamExt as _;
use parking_lot::Mutex;
use serde_json::{Map, Value, json};
use tokio::sync::{broadcast, mpsc};

#[path = "harness/http_e2e.rs"]
mod http_e2e;
#[path = "harness/soak.rs"]
mod soak;
#[path = "suspended_memory.rs"]
mod suspended_memory;
#[path = "ws_fanout.rs"]
mod ws_fanout;

/// The allocator of the `flowd` binary (`src/main.rs`), so that figures match the server's.
/// mimalloc rather than the system allocator: the commit path and the actors allocate many
/// short-lived strings and vectors from several threads, where glibc's malloc spent ~15 % of a
/// throughput run. In turn: +11 % transitions/s on SQLite, +8 % on PostgreSQL, for +5 % resident
/// memory per parked flow (BENCHMARKS.md, session 6).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The first phase of `start_latency` flows: records when it begins running.
const MARK_HANDLER: &str = "bench_mark";

#[derive(Parser, Debug)]
#[command(about = "flowd load harness: one JSON object per run on stdout")]
struct Args {
    /// Backend of the fresh database each run gets: `sqlite` or `postgres`.
    #[arg(long)]
    db: Backend,
    /// Flows per run (N); 5000 unless given, 40 for `ws_fanout`.
    #[arg(long)]
    flows: Option<usize>,
    /// Phases per flow (K).
    #[arg(long, default_value_t = 6)]
    phases: usize,
    /// Flows in flight (C); for `db_limit`, writes per batch; for `http_start_latency`, most
    /// pooled connections; for `ws_fanout`, websocket subscribers; for `http_e2e`, clients.
    #[arg(long, default_value_t = 1000)]
    concurrency: usize,
    /// Flow creations per second, for `http_start_latency` (open loop; default 1000) and
    /// `ws_fanout` (a pause of 1/rate after each creation; default 40).
    #[arg(long)]
    rate: Option<f64>,
    #[arg(long, value_enum)]
    scenario: Scenario,
    /// Repetitions, each on a fresh database; more than one also prints the medians.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Most writes per transaction in the runtime (`RuntimeConfig::max_batch`).
    #[arg(long, default_value_t = RuntimeConfig::default().max_batch)]
    max_batch: usize,
    /// Connections of the store's pool.
    #[arg(long, default_value_t = 8)]
    pool_size: usize,
    /// How SQLite's commits are synced (`database.sync`): `full` (the default) or `normal`.
    #[arg(long, value_enum, default_value = "full")]
    sqlite_sync: SqliteSync,
    /// `http_e2e`: wait for completions on one tenant stream instead of per-flow websockets.
    #[arg(long)]
    tenant_stream: bool,
    /// A run that has not finished after this long fails.
    #[arg(long, default_value_t = 600)]
    timeout_s: u64,
}

impl Args {
    /// N, with the scenario's default.
    fn flows(&self) -> usize {
        self.flows.unwrap_or(match self.scenario {
            Scenario::WsFanout => 40,
            _ => 5000,
        })
    }

    /// Creations per second, with the scenario's default.
    fn rate(&self) -> f64 {
        self.rate.unwrap_or(match self.scenario {
            Scenario::WsFanout => 40.0,
            Scenario::Soak => 100.0,
            _ => 1000.0,
        })
    }

    /// Whether `--rate` means anything to the scenario.
    fn paced(&self) -> bool {
        matches!(
            self.scenario,
            Scenario::HttpStartLatency | Scenario::WsFanout | Scenario::Soak
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
#[clap(rename_all = "snake_case")]
enum Scenario {
    Throughput,
    StartLatency,
    DbLimit,
    Recovery,
    HttpStartLatency,
    SuspendedMemory,
    WsFanout,
    Soak,
    HttpE2e,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Self::Throughput => "throughput",
            Self::StartLatency => "start_latency",
            Self::DbLimit => "db_limit",
            Self::Recovery => "recovery",
            Self::HttpStartLatency => "http_start_latency",
            Self::SuspendedMemory => "suspended_memory",
            Self::WsFanout => "ws_fanout",
            Self::Soak => "soak",
            Self::HttpE2e => "http_e2e",
        }
    }
}

/// The numbers one run reports, by name; medians are taken per name.
type Figures = BTreeMap<&'static str, f64>;

fn main() -> ExitCode {
    let args = Args::parse();
    if args.flows() == 0 || args.phases == 0 || args.concurrency == 0 || args.runs == 0 {
        eprintln!("--flows, --phases, --concurrency and --runs must be at least 1");
        return ExitCode::from(2);
    }
    if !(args.rate().is_finite() && args.rate() > 0.0) {
        eprintln!("--rate must be a positive number of creations per second");
        return ExitCode::from(2);
    }
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }

    let mut all = Vec::with_capacity(args.runs);
    for run in 1..=args.runs {
        let figures = match run_once(&args) {
            Ok(figures) => figures,
            Err(error) => {
                eprintln!("{} run {run} failed: {error}", args.scenario.name());
                return ExitCode::FAILURE;
            }
        };
        let mut line = header(&args);
        line.insert("run".into(), json!(run));
        for (name, value) in &figures {
            line.insert((*name).into(), round(*value));
        }
        println!("{}", Value::Object(line));
        all.push(figures);
    }
    if args.runs > 1 {
        let mut line = header(&args);
        line.insert("runs".into(), json!(args.runs));
        let medians: Map<String, Value> = all[0]
            .keys()
            .map(|name| {
                let values: Vec<f64> = all.iter().map(|f| f[name]).collect();
                ((*name).to_owned(), round(median(values)))
            })
            .collect();
        line.insert("median".into(), Value::Object(medians));
        println!("{}", Value::Object(line));
    }
    ExitCode::SUCCESS
}

fn header(args: &Args) -> Map<String, Value> {
    let mut line = Map::new();
    line.insert("scenario".into(), json!(args.scenario.name()));
    line.insert("db".into(), json!(args.db.name()));
    line.insert("flows".into(), json!(args.flows()));
    line.insert("phases".into(), json!(args.phases));
    line.insert("concurrency".into(), json!(args.concurrency));
    if args.paced() {
        line.insert("rate".into(), json!(args.rate()));
    }
    if args.scenario == Scenario::HttpE2e {
        line.insert("tenant_stream".into(), json!(args.tenant_stream));
    }
    line
}

/// One run in its own actix System, so the runtime's arbiters stop with it and the next run
/// starts clean; the database outlives the System and is dropped after it.
/// Set in a child process that runs one `suspended_memory` run for its parent.
const FRESH_PROCESS: &str = "FLOWD_HARNESS_FRESH_PROCESS";

fn run_once(args: &Args) -> Result<Figures, String> {
    if args.scenario == Scenario::SuspendedMemory && std::env::var_os(FRESH_PROCESS).is_none() {
        return in_fresh_process();
    }
    let database = bench_database(args.db)?;
    let url = database.url.clone();
    System::new().block_on(async {
        let result = tokio::time::timeout(Duration::from_secs(args.timeout_s), async {
            // The server scenarios open the database themselves.
            match args.scenario {
                Scenario::Recovery => return recovery(args, &url).await,
                Scenario::HttpStartLatency => return http_start_latency(args, &url).await,
                Scenario::WsFanout => return ws_fanout(args, &url).await,
                Scenario::Soak => return soak::run(args, &url).await,
                Scenario::HttpE2e => return http_e2e::run(args, &url).await,
                Scenario::Throughput
                | Scenario::StartLatency
                | Scenario::DbLimit
                | Scenario::SuspendedMemory => {}
            }
            let store = DbStore::connect_with_sync(&url, args.pool_size, args.sqlite_sync)
                .await
                .map_err(|e| format!("cannot open {url}: {e}"))?;
            match args.scenario {
                Scenario::Throughput => throughput(args, Arc::new(store)).await,
                Scenario::StartLatency => start_latency(args, Arc::new(store)).await,
                // The server's own defaults: a parked flow costs what it costs in production.
                Scenario::SuspendedMemory => {
                    let config = RuntimeConfig {
                        max_batch: args.max_batch,
                        ..RuntimeConfig::default()
                    };
                    let timeout = Duration::from_secs(args.timeout_s);
                    suspended_memory::run(
                        Arc::new(store),
                        config,
                        args.flows(),
                        args.concurrency,
                        timeout,
                    )
                    .await
                }
                _ => db_limit(args, store).await,
            }
        })
        .await
        .unwrap_or_else(|_| Err(format!("not finished after {} s", args.timeout_s)));
        // Stop every arbiter the runtime started, and give the System a moment to do it.
        System::current().stop();
        tokio::time::sleep(Duration::from_millis(100)).await;
        result
    })
}

fn flow_type(name: &str, handlers: &[&str]) -> FlowType {
    FlowType {
        name: name.into(),
        version: 1,
        phases: handlers
            .iter()
            .enumerate()
            .map(|(i, handler)| PhaseDefinition::new(format!("p{}", i + 1), *handler))
            .collect(),
    }
}

fn new_flow(flow_type: &str) -> NewFlow {
    NewFlow {
        flow_type: flow_type.into(),
        input: json!({}),
        parent_flow_id: None,
        master_flow_id: None,
        tenant: Tenant::default_tenant(),
        created_by: None,
        idempotency_key: None,
    }
}

fn runtime_config(args: &Args) -> RuntimeConfig {
    // Every event of the run fits the buffer: the harness must never lag behind the fan-out.
    let events = args.flows() * (2 * args.phases + 3);
    RuntimeConfig {
        event_buffer: events.next_power_of_two().max(1 << 16),
        max_batch: args.max_batch,
        ..RuntimeConfig::default()
    }
}

/// When one flow was asked for, became running, and completed.
struct FlowTiming {
    requested: Instant,
    running: Instant,
    completed: Instant,
}

/// What [`drive`] measured.
struct Driven {
    flows: HashMap<FlowId, FlowTiming>,
    elapsed: Duration,
    before: PersistenceStats,
    after: PersistenceStats,
}

/// Creates `args.flows()` flows of `flow_type`, keeping `args.concurrency` of them in flight: a
/// new flow is created whenever one completes, as the committed-event stream reports it.
async fn drive(args: &Args, runtime: &Runtime, flow_type: &str) -> Result<Driven, String> {
    let mut events = runtime.subscribe();
    let (created_tx, mut created_rx) = mpsc::unbounded_channel();
    let launch = |created_tx: &mpsc::UnboundedSender<_>| {
        let runtime = runtime.clone();
        let request = new_flow(flow_type);
        let created_tx = created_tx.clone();
        actix_web::rt::spawn(async move {
            let requested = Instant::now();
            let result = runtime.create_flow(request).await;
            let _ = created_tx.send((requested, Instant::now(), result));
        });
    };

    let before = runtime
        .persistence_stats()
        .await
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    let mut launched = args.concurrency.min(args.flows());
    for _ in 0..launched {
        launch(&created_tx);
    }
    let mut created: HashMap<FlowId, (Instant, Instant)> = HashMap::with_capacity(args.flows());
    let mut completed: HashMap<FlowId, Instant> = HashMap::with_capacity(args.flows());
    while completed.len() < args.flows() {
        tokio::select! {
            event = events.recv() => match event {
                Ok(event) => match event.kind {
                    EventKind::FlowCompleted => {
                        completed.insert(event.flow_id, Instant::now());
                        if launched < args.flows() {
                            launched += 1;
                            launch(&created_tx);
                        }
                    }
                    EventKind::FlowFailed | EventKind::FlowCancelled => {
                        return Err(format!(
                            "flow {} ended {}: {:?}",
                            event.flow_id,
                            event.kind.as_str(),
                            event.error
                        ));
                    }
                    _ => {}
                },
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    return Err(format!(
                        "the event subscriber lagged and missed {missed} events; raise event_buffer"
                    ));
                }
                Err(broadcast::error::RecvError::Closed) => {
                    return Err("the event stream closed".into());
                }
            },
            Some((requested, running, result)) = created_rx.recv() => {
                let flow = result.map_err(|e| format!("create_flow failed: {e}"))?.flow;
                created.insert(flow.id, (requested, running));
            }
        }
    }
    let elapsed = started.elapsed();
    let after = runtime
        .persistence_stats()
        .await
        .map_err(|e| e.to_string())?;
    drop(created_tx);
    // A create's reply may still be on its way after its flow's completion event.
    while created.len() < args.flows() {
        let (requested, running, result) = created_rx
            .recv()
            .await
            .ok_or("a create task vanished without an answer")?;
        let flow = result.map_err(|e| format!("create_flow failed: {e}"))?.flow;
        created.insert(flow.id, (requested, running));
    }
    let flows = created
        .into_iter()
        .map(|(id, (requested, running))| {
            let completed = *completed
                .get(&id)
                .ok_or_else(|| format!("flow {id} was created but never completed"))?;
            Ok((
                id,
                FlowTiming {
                    requested,
                    running,
                    completed,
                },
            ))
        })
        .collect::<Result<_, String>>()?;
    Ok(Driven {
        flows,
        elapsed,
        before,
        after,
    })
}

async fn throughput(args: &Args, store: Arc<DbStore>) -> Result<Figures, String> {
    let definition = flow_type("bench_noop", &vec!["noop"; args.phases]);
    let runtime = Runtime::start(
        runtime_config(args),
        store,
        HandlerSet::with_builtins(),
        vec![definition],
    )
    .await
    .map_err(|e| format!("runtime did not start: {e}"))?;
    let driven = drive(args, &runtime, "bench_noop").await?;
    let latencies = driven
        .flows
        .values()
        .map(|t| t.completed - t.requested)
        .collect();
    let mut figures = persistence_figures(&driven.before, &driven.after, driven.elapsed);
    let (p50, p99) = percentiles(latencies);
    figures.insert(
        "flows_per_sec",
        args.flows() as f64 / driven.elapsed.as_secs_f64(),
    );
    figures.insert("flow_latency_p50_ms", p50);
    figures.insert("flow_latency_p99_ms", p99);
    Ok(figures)
}

async fn start_latency(args: &Args, store: Arc<DbStore>) -> Result<Figures, String> {
    let marks: Arc<Mutex<HashMap<FlowId, Instant>>> = Arc::default();
    let mut handlers = HandlerSet::with_builtins();
    {
        let marks = marks.clone();
        handlers.register(MARK_HANDLER, move |ctx: PhaseContext| {
            let marks = marks.clone();
            async move {
                marks.lock().entry(ctx.flow_id).or_insert_with(Instant::now);
                Ok(PhaseOutput::new(json!({})))
            }
        });
    }
    let mut phases = vec!["noop"; args.phases];
    phases[0] = MARK_HANDLER;
    let definition = flow_type("bench_mark", &phases);
    let runtime = Runtime::start(runtime_config(args), store, handlers, vec![definition])
        .await
        .map_err(|e| format!("runtime did not start: {e}"))?;
    let driven = drive(args, &runtime, "bench_mark").await?;
    let marks = marks.lock();
    let mut running = Vec::with_capacity(args.flows());
    let mut first_phase = Vec::with_capacity(args.flows());
    for (id, timing) in &driven.flows {
        running.push(timing.running - timing.requested);
        let mark = marks
            .get(id)
            .ok_or_else(|| format!("the first phase of flow {id} never ran"))?;
        first_phase.push(*mark - timing.requested);
    }
    let mut figures = Figures::new();
    let (p50, p99) = percentiles(running);
    figures.insert("p50_ms", p50);
    figures.insert("p99_ms", p99);
    let (p50, p99) = percentiles(first_phase);
    figures.insert("first_phase_p50_ms", p50);
    figures.insert("first_phase_p99_ms", p99);
    figures.insert(
        "flows_per_sec",
        args.flows() as f64 / driven.elapsed.as_secs_f64(),
    );
    Ok(figures)
}

/// The writes the runtime issues for one flow of `definition`, in commit order, from the pure
/// state machine: the create (3 events), then one per phase (2 events each).
fn flow_writes(definition: &FlowType) -> Vec<TransitionWrite> {
    let mut flow = FlowState::new_initialized(definition, new_flow(&definition.name));
    let step = machine::start(&mut flow, definition, now());
    let mut writes = vec![TransitionWrite {
        flow_id: flow.id,
        create: Some(Box::new(flow.clone())),
        flow: FlowUpdate::of(&flow),
        phases: Vec::new(),
        events: step.events,
        failure: None,
    }];
    for phase in &definition.phases {
        let step = machine::phase_succeeded(
            &mut flow,
            definition,
            &phase.name,
            1,
            PhaseOutput::new(json!({})),
            now(),
        )
        .expect("a running phase accepts its result");
        writes.push(step.into_write(&flow).0);
    }
    writes
}

async fn db_limit(args: &Args, store: DbStore) -> Result<Figures, String> {
    let definition = flow_type("bench_noop", &vec!["noop"; args.phases]);
    store
        .commit(&[Write::FlowType(definition.clone())])
        .await
        .map_err(|e| e.to_string())?;
    // Waves of C flows, as the runtime has them in flight: every wave's creates, then its
    // first phases, …; each step of a wave is one batch of C writes. Built before the clock
    // starts: only the database is measured.
    let mut batches: Vec<Vec<Write>> = Vec::new();
    let mut next_event_id = 0i64;
    let mut flows_left = args.flows();
    while flows_left > 0 {
        let wave = flows_left.min(args.concurrency);
        flows_left -= wave;
        let per_flow: Vec<Vec<TransitionWrite>> =
            (0..wave).map(|_| flow_writes(&definition)).collect();
        for step in 0..=args.phases {
            let batch = per_flow
                .iter()
                .map(|writes| {
                    let mut write = writes[step].clone();
                    for event in &mut write.events {
                        next_event_id += 1;
                        event.id = next_event_id;
                    }
                    Write::Transition(write)
                })
                .collect();
            batches.push(batch);
        }
    }
    let started = Instant::now();
    let mut commit_time = Duration::ZERO;
    let mut commit_latencies = Vec::with_capacity(batches.len());
    let (mut writes, mut events) = (0u64, 0u64);
    for batch in &batches {
        let commit_started = Instant::now();
        store.commit(batch).await.map_err(|e| e.to_string())?;
        let took = commit_started.elapsed();
        commit_time += took;
        commit_latencies.push(took);
        writes += batch.len() as u64;
        events += batch
            .iter()
            .map(|w| match w {
                Write::Transition(t) => t.events.len() as u64,
                Write::FlowType(_) | Write::Task(_) => 0,
            })
            .sum::<u64>();
    }
    let elapsed = started.elapsed();
    let before = PersistenceStats::default();
    let after = PersistenceStats {
        batches: batches.len() as u64,
        writes,
        events,
        commit_micros: commit_time.as_micros() as u64,
        ..PersistenceStats::default()
    };
    let mut figures = persistence_figures(&before, &after, elapsed);
    let (p50, p99) = percentiles(commit_latencies);
    figures.insert("commit_p50_ms", p50);
    figures.insert("commit_p99_ms", p99);
    Ok(figures)
}

/// Rates and batch shape from two snapshots of the persistence counters.
fn persistence_figures(
    before: &PersistenceStats,
    after: &PersistenceStats,
    elapsed: Duration,
) -> Figures {
    let seconds = elapsed.as_secs_f64();
    let events = (after.events - before.events) as f64;
    let writes = (after.writes - before.writes) as f64;
    let batches = (after.batches - before.batches) as f64;
    let commit_s = (after.commit_micros - before.commit_micros) as f64 / 1e6;
    let mut figures = Figures::new();
    figures.insert("elapsed_s", seconds);
    figures.insert("transitions_per_sec", events / seconds);
    figures.insert("writes_per_sec", writes / seconds);
    figures.insert("batches", batches);
    figures.insert("mean_batch", writes / batches.max(1.0));
    figures.insert("mean_commit_ms", commit_s * 1e3 / batches.max(1.0));
    // Share of the wall time the writer spent inside commits: near 1 means database-bound.
    figures.insert("commit_busy", commit_s / seconds);
    figures
}

/// Nearest-rank p50 and p99, in milliseconds.
fn percentiles(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort_unstable();
    let rank = |p: f64| {
        let index = ((p * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1;
        samples[index].as_secs_f64() * 1e3
    };
    (rank(0.50), rank(0.99))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// Runs this harness again as a child for one run: memory an earlier run freed stays resident
/// in its process, so only a fresh process measures resident memory honestly.
fn in_fresh_process() -> Result<Figures, String> {
    let exe = std::env::current_exe().map_err(|e| format!("own path: {e}"))?;
    let mut argv: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = argv.iter().position(|a| a == "--runs") {
        argv.drain(i..(i + 2).min(argv.len()));
    }
    let output = Command::new(exe)
        .args(&argv)
        .env(FRESH_PROCESS, "1")
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run a child harness: {e}"))?;
    if !output.status.success() {
        return Err(format!("the child harness failed: {}", output.status));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line: Value = stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .ok_or_else(|| format!("no JSON line from the child harness: {stdout}"))?;
    let mut figures = Figures::new();
    for name in [
        "bytes_per_flow",
        "rss_before_mb",
        "rss_after_mb",
        "seconds_to_all_parked",
    ] {
        let value = line[name]
            .as_f64()
            .ok_or_else(|| format!("the child reported no `{name}`: {line}"))?;
        figures.insert(name, value);
    }
    Ok(figures)
}

fn round(value: f64) -> Value {
    json!((value * 1000.0).round() / 1000.0)
}

/// The real server as a child process, its logs discarded: `recovery` must SIGKILL it, and
/// `http_start_latency` measures it alone in its process, as deployed.
fn start_server(config: &Path) -> Result<TestServer, String> {
    TestServer::spawn(config, &[], ServerLogs::Discard).map_err(|e| e.to_string())
}

/// The `[database]` line for `--sqlite-sync`: none for the default, so that servers built
/// before the setting existed take the same config.
fn sync_toml(args: &Args) -> &'static str {
    match args.sqlite_sync {
        SqliteSync::Full => "",
        SqliteSync::Normal => "sync = \"normal\"\n",
    }
}

/// One sample of the server's `/metrics`, by series.
async fn scrape(client: &awc::Client, base: &str) -> Result<HashMap<String, f64>, String> {
    let mut response = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let body = response.body().await.map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&body)
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect())
}

/// Polls `/metrics` until `series` reaches `target`; the seconds it took from `since`.
async fn until_metric(
    client: &awc::Client,
    base: &str,
    series: &str,
    target: f64,
    since: Instant,
) -> Result<f64, String> {
    loop {
        if let Ok(sample) = scrape(client, base).await
            && sample.get(series).copied().unwrap_or(0.0) >= target
        {
            return Ok(since.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `recovery`: N flows in flight in a 10 s phase (longer than creating them takes), the server SIGKILLed and restarted on the
/// same database. Reports seconds from the restart to the listening line, to every flow having
/// a live actor again (the interrupted attempt re-runs), and to every flow completed.
async fn recovery(args: &Args, url: &str) -> Result<Figures, String> {
    let scratch = tempfile::tempdir().map_err(|e| e.to_string())?;
    let config = scratch.path().join("recovery.toml");
    let sync = sync_toml(args);
    let toml = format!(
        "[server]\nbind = \"127.0.0.1:0\"\n[database]\nurl = \"{url}\"\n{sync}\
         [[flow_types]]\nname = \"resume\"\nversion = 1\n\
         [[flow_types.phases]]\nname = \"before\"\nhandler = \"noop\"\n\
         [[flow_types.phases]]\nname = \"interrupted\"\nhandler = \"sleep\"\nparams = {{ ms = 10000 }}\n\
         [[flow_types.phases]]\nname = \"after\"\nhandler = \"noop\"\n"
    );
    std::fs::write(&config, toml).map_err(|e| e.to_string())?;
    let client = awc::Client::builder()
        .connector(awc::Connector::new().limit(0))
        .timeout(Duration::from_secs(60))
        .finish();
    let n = args.flows() as f64;
    let server = start_server(&config)?;
    let base = server.base.clone();
    let creates = futures_util::stream::iter(0..args.flows())
        .map(|_| {
            let request = client.post(format!("{base}/v1/flows"));
            async move {
                match request.send_json(&json!({ "flow_type": "resume" })).await {
                    Ok(response) if response.status().as_u16() == 201 => Ok(()),
                    Ok(response) => Err(format!("create answered {}", response.status())),
                    Err(error) => Err(error.to_string()),
                }
            }
        })
        .buffer_unordered(args.concurrency.max(1));
    let results: Vec<Result<(), String>> = futures_util::StreamExt::collect(creates).await;
    results.into_iter().collect::<Result<Vec<()>, String>>()?;
    // Every flow is running, its first phase done, its second under way: now crash.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = scrape(&client, &base).await?;
    let running = before
        .get("flowd_flows{status=\"running\"}")
        .copied()
        .unwrap_or(0.0);
    if running < n {
        return Err(format!(
            "only {running} of {n} flows running before the crash"
        ));
    }
    server.kill();

    let restarted = Instant::now();
    let server = start_server(&config)?;
    let to_listening = restarted.elapsed().as_secs_f64();
    let to_resumed = until_metric(
        &client,
        &server.base,
        "flowd_live_flow_actors",
        n,
        restarted,
    )
    .await?;
    let to_completed = until_metric(
        &client,
        &server.base,
        "flowd_flows{status=\"completed\"}",
        n,
        restarted,
    )
    .await?;
    drop(server);
    Ok(BTreeMap::from([
        ("seconds_to_listening", to_listening),
        ("seconds_to_all_resumed", to_resumed),
        ("seconds_to_all_completed", to_completed),
        ("interrupted_phase_s", 10.0),
    ]))
}

/// One `POST /v1/flows` of `http_start_latency`: when it was due, when it went out, when its
/// `201` was read in full.
struct HttpCreate {
    scheduled: Instant,
    sent: Instant,
    answered: Instant,
}

/// `http_start_latency`: the real server on a fresh database; N creates of flows of K `noop`
/// phases, due at fixed intervals of 1/rate whatever the answers take, each sent by its own
/// task over a keep-alive pool of at most C connections. Latency is due time → `201` read,
/// and every answer must say `running`. Also reports how late the harness itself sent
/// (`send_lag_p99_ms`), the most requests in flight (sent, or waiting for a pooled
/// connection), the seconds after the last `201` until every flow completed (`drain_s`:
/// whether the server keeps up with the phases too), and, from `/metrics` over the creates'
/// window, the writer's share of time inside commits, its mean commit time and batch.
async fn http_start_latency(args: &Args, url: &str) -> Result<Figures, String> {
    let scratch = tempfile::tempdir().map_err(|e| e.to_string())?;
    let config = scratch.path().join("http_start_latency.toml");
    let sync = sync_toml(args);
    let mut toml = format!(
        "[server]\nbind = \"127.0.0.1:0\"\n[database]\nurl = \"{url}\"\n{sync}\
         [[flow_types]]\nname = \"bench_noop\"\nversion = 1\n"
    );
    for i in 1..=args.phases {
        toml.push_str(&format!(
            "[[flow_types.phases]]\nname = \"p{i}\"\nhandler = \"noop\"\n"
        ));
    }
    std::fs::write(&config, toml).map_err(|e| e.to_string())?;
    let server = start_server(&config)?;
    let endpoint = format!("{}/v1/flows", server.base);
    let client = awc::Client::builder()
        .connector(awc::Connector::new().limit(args.concurrency))
        .timeout(Duration::from_secs(60))
        .finish();

    let n = args.flows();
    let rate = args.rate();
    let before = scrape(&client, &server.base).await?;
    let start = Instant::now();
    let OpenLoop {
        creates,
        max_in_flight,
    } = open_loop_creates(&client, &endpoint, "bench_noop", n, rate, start).await?;
    let creates = creates
        .into_iter()
        .map(|create| create.and_then(|(answer, timing)| check_running(answer).map(|()| timing)))
        .collect::<Result<Vec<_>, _>>()?;
    let last = creates
        .iter()
        .map(|c| c.answered)
        .max()
        .ok_or("no creates")?;
    let after = scrape(&client, &server.base).await?;
    let window_s = start.elapsed().as_secs_f64();
    let drain_s = until_metric(
        &client,
        &server.base,
        "flowd_flows{status=\"completed\"}",
        n as f64,
        last,
    )
    .await?;
    drop(server);

    let latencies: Vec<Duration> = creates.iter().map(|c| c.answered - c.scheduled).collect();
    let max = latencies.iter().max().copied().unwrap_or_default();
    let (p50, p99) = percentiles(latencies);
    let (_, lag_p99) = percentiles(creates.iter().map(|c| c.sent - c.scheduled).collect());
    // The writer while the creates went on (their phases' writes included).
    let grew = |series: &str| {
        after.get(series).copied().unwrap_or(0.0) - before.get(series).copied().unwrap_or(0.0)
    };
    let commit_s = grew("flowd_persistence_commit_seconds_sum");
    let batches = grew("flowd_persistence_commit_seconds_count").max(1.0);
    Ok(BTreeMap::from([
        ("p50_ms", p50),
        ("p99_ms", p99),
        ("max_ms", max.as_secs_f64() * 1e3),
        ("achieved_rate", n as f64 / (last - start).as_secs_f64()),
        ("send_lag_p99_ms", lag_p99),
        ("max_in_flight", max_in_flight as f64),
        ("drain_s", drain_s),
        ("commit_busy", commit_s / window_s),
        ("mean_commit_ms", commit_s * 1e3 / batches),
        (
            "mean_batch",
            grew("flowd_persistence_batch_writes_sum") / batches,
        ),
    ]))
}

/// What [`open_loop_creates`] saw: each create's answer and timing, in answer order.
struct OpenLoop {
    creates: Vec<Result<(CreateAnswer, HttpCreate), String>>,
    /// The most requests in flight at once (sent, or waiting for a pooled connection).
    max_in_flight: usize,
}

/// A create's status and body.
type CreateAnswer = (awc::http::StatusCode, actix_web::web::Bytes);

/// Sends `n` creates of `flow_type`, due at fixed intervals of 1/rate from `start` whatever the
/// answers take, each by its own task (open loop: no coordinated omission).
async fn open_loop_creates(
    client: &awc::Client,
    endpoint: &str,
    flow_type: &'static str,
    n: usize,
    rate: f64,
    start: Instant,
) -> Result<OpenLoop, String> {
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let in_flight = Rc::new(Cell::new(0usize));
    let max_in_flight = Rc::new(Cell::new(0usize));
    let due = |i: usize| start + Duration::from_secs_f64(i as f64 / rate);
    let mut next = 0;
    while next < n {
        // Everything due by now goes out; a late wake-up sends the backlog at once, and those
        // requests' latency includes the wait.
        let now = Instant::now();
        while next < n && due(next) <= now {
            let scheduled = due(next);
            let request = client.post(endpoint);
            let (done_tx, in_flight, max_in_flight) =
                (done_tx.clone(), in_flight.clone(), max_in_flight.clone());
            actix_web::rt::spawn(async move {
                let sent = Instant::now();
                in_flight.set(in_flight.get() + 1);
                max_in_flight.set(max_in_flight.get().max(in_flight.get()));
                let answer = create_over_http(request, flow_type).await;
                let answered = Instant::now();
                in_flight.set(in_flight.get() - 1);
                let _ = done_tx.send(answer.map(|answer| {
                    let timing = HttpCreate {
                        scheduled,
                        sent,
                        answered,
                    };
                    (answer, timing)
                }));
            });
            next += 1;
        }
        if next < n {
            tokio::time::sleep_until(due(next).into()).await;
        }
    }
    drop(done_tx);
    let mut creates = Vec::with_capacity(n);
    while let Some(create) = done_rx.recv().await {
        creates.push(create);
    }
    if creates.len() < n {
        return Err(format!("only {} of {n} creates answered", creates.len()));
    }
    Ok(OpenLoop {
        creates,
        max_in_flight: max_in_flight.get(),
    })
}

/// Sends one create and reads the whole answer: its status and body.
async fn create_over_http(
    request: awc::ClientRequest,
    flow_type: &str,
) -> Result<CreateAnswer, String> {
    let mut response = request
        .send_json(&json!({ "flow_type": flow_type }))
        .await
        .map_err(|e| format!("create failed: {e}"))?;
    let body = response
        .body()
        .await
        .map_err(|e| format!("create's answer unreadable: {e}"))?;
    Ok((response.status(), body))
}

/// A create must answer `201` with the flow already `running`.
fn check_running((status, body): CreateAnswer) -> Result<(), String> {
    if status.as_u16() != 201 {
        return Err(format!(
            "create answered {status}: {}",
            String::from_utf8_lossy(&body)
        ));
    }
    let flow: Value =
        serde_json::from_slice(&body).map_err(|e| format!("create's body is not JSON: {e}"))?;
    match flow.get("status").and_then(Value::as_str) {
        Some("running") => Ok(()),
        other => Err(format!("a created flow is {other:?}, not running")),
    }
}

/// `ws_fanout`: `examples/ws_fanout.rs` on this run's database; C subscribers, N flows of K
/// `sleep 20 ms` phases, one created every 1/rate s. Every frame must arrive exactly once.
async fn ws_fanout(args: &Args, url: &str) -> Result<Figures, String> {
    let plan = ws_fanout::FanoutPlan {
        database_url: url.to_owned(),
        subscribers: args.concurrency,
        flows: args.flows(),
        phases: args.phases,
        phase_ms: 20,
        every: Duration::from_secs_f64(1.0 / args.rate()),
    };
    let measured = ws_fanout::measure(&plan)
        .await
        .map_err(|e| format!("{e:#}"))?;
    if !measured.complete() {
        return Err(format!(
            "{} frames delivered, {} expected (p99 {:.1} ms)",
            measured.frames_delivered, measured.frames_expected, measured.p99_ms
        ));
    }
    Ok(BTreeMap::from([
        ("p50_ms", measured.p50_ms),
        ("p99_ms", measured.p99_ms),
        ("max_ms", measured.max_ms),
        ("events", measured.events as f64),
        ("frames_delivered", measured.frames_delivered as f64),
        ("elapsed_s", measured.elapsed_s),
    ]))
}

/// A fresh database for one run, removed when dropped: PostgreSQL's next to
/// `FLOWD_BENCH_POSTGRES_URL`, else the tests' admin database.
fn bench_database(backend: Backend) -> Result<TestDatabase, String> {
    let admin = std::env::var("FLOWD_BENCH_POSTGRES_URL").unwrap_or_else(|_| postgres_admin_url());
    TestDatabase::create_at(backend, &admin).map_err(|e| e.to_string())
}
