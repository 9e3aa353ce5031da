//! Cluster run (issue 18, docs/cluster.md): N `flowd` nodes (3 by default) on one fresh
//! PostgreSQL database, a load of flows created over HTTP round-robin on every node, one node
//! SIGKILLed while its flows are in flight; then, once every flow has ended (or the wait is
//! over), a table read from the API of the survivors:
//!
//! - flows completed (of those created), failed, left unfinished;
//! - takeover time: from the kill to the first event after it of the last of the killed node's
//!   in-flight flows (the moment a survivor had them all running again, give or take the
//!   interrupted phase, which re-runs before its next event: keep `--phase-ms` short);
//! - duplicate phase successes: phases of a flow with more than one `phase_succeeded` event;
//! - event gaps: flows whose `seq`s are not 1, 2, … without a hole;
//! - the tenant stream of one survivor, open from before the first create: whether it carried
//!   every event of every node exactly once, in id order.
//!
//! Exits non-zero when a flow is left unfinished or failed, a phase succeeded twice, a `seq` has
//! a gap, a flow of the killed node was not taken over, or the stream missed or repeated events.
//!
//! With `--throughput` nothing is killed: C clients, round-robin over the nodes (1 or more),
//! each create a flow of `--phases` `noop` phases and wait for its `flow_completed` on the flow's
//! own websocket, until `--flows` completed; prints flows/s and transitions (events)/s of the
//! whole cluster.
//!
//! `cargo build --release --bin flowd && cargo run --release --example cluster [-- --flows 300]`
//! (the nodes are the `flowd` binary of the same build; the database is a throw-away one next
//! to `FLOWD_TEST_POSTGRES_URL`, default `postgres://postgres@127.0.0.1:5432/test`).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use chrono::{DateTime, Utc};
use clap::Parser;
use flowd::testing::{Backend, ServerLogs, TestDatabase, TestServer};
use futures_util::StreamExt as _;
use serde_json::{Value, json};

#[derive(Parser)]
struct Args {
    /// Nodes to start; the last one is killed.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Flows to create, round-robin over the nodes.
    #[arg(long, default_value_t = 300)]
    flows: usize,
    /// `sleep` phases per flow.
    #[arg(long, default_value_t = 4)]
    phases: usize,
    /// How long each phase sleeps.
    #[arg(long, default_value_t = 500)]
    phase_ms: u64,
    /// `[cluster] heartbeat_ms` of every node.
    #[arg(long, default_value_t = 500)]
    heartbeat_ms: u64,
    /// `[cluster] node_timeout_ms` of every node.
    #[arg(long, default_value_t = 3000)]
    node_timeout_ms: u64,
    /// How long after the last create the victim is killed.
    #[arg(long, default_value_t = 700)]
    kill_after_ms: u64,
    /// Longest wait for every flow to end after the kill.
    #[arg(long, default_value_t = 90)]
    timeout_s: u64,
    /// Creates in flight at once (with `--throughput`: clients, each with one flow in flight).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Measure the cluster's throughput instead (`noop` phases, no kill).
    #[arg(long)]
    throughput: bool,
}

const FLOW_TYPE: &str = "cluster_load";

/// One node's config file.
fn node_config(args: &Args, db: &TestDatabase, index: usize) -> anyhow::Result<std::path::PathBuf> {
    let path = db.dir().join(format!("node-{index}.toml"));
    let mut toml = format!(
        "[server]\nbind = \"127.0.0.1:0\"\nworkers = 2\n\
         [database]\nurl = \"{}\"\npool_size = 8\n\
         [cluster]\nnode_id = \"node-{index}\"\nheartbeat_ms = {}\nnode_timeout_ms = {}\n\
         [[flow_types]]\nname = \"{FLOW_TYPE}\"\nversion = 1\n",
        db.url, args.heartbeat_ms, args.node_timeout_ms
    );
    for phase in 1..=args.phases.max(1) {
        if args.throughput {
            toml.push_str(&format!(
                "[[flow_types.phases]]\nname = \"p{phase}\"\nhandler = \"noop\"\n"
            ));
        } else {
            toml.push_str(&format!(
                "[[flow_types.phases]]\nname = \"p{phase}\"\nhandler = \"sleep\"\nparams = {{ ms = {} }}\n",
                args.phase_ms
            ));
        }
    }
    std::fs::write(&path, toml).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

fn client() -> awc::Client {
    awc::Client::builder()
        .connector(awc::Connector::new().limit(0))
        .timeout(Duration::from_secs(30))
        .finish()
}

async fn get_json(client: &awc::Client, url: &str) -> anyhow::Result<Value> {
    let mut response = client
        .get(url)
        .send()
        .await
        .map_err(|e| anyhow!("GET {url}: {e}"))?;
    let status = response.status();
    let body = response
        .body()
        .limit(64 << 20)
        .await
        .map_err(|e| anyhow!("GET {url}: {e}"))?;
    if !status.is_success() {
        bail!(
            "GET {url} answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    Ok(serde_json::from_slice(&body)?)
}

async fn create(client: &awc::Client, base: &str) -> anyhow::Result<String> {
    let mut response = client
        .post(format!("{base}/v1/flows"))
        .send_json(&json!({ "flow_type": FLOW_TYPE }))
        .await
        .map_err(|e| anyhow!("create on {base}: {e}"))?;
    let body = response.body().await.map_err(|e| anyhow!("create: {e}"))?;
    if response.status().as_u16() != 201 {
        bail!(
            "create on {base} answered {}: {}",
            response.status(),
            String::from_utf8_lossy(&body)
        );
    }
    let flow: Value = serde_json::from_slice(&body)?;
    flow["id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("create's answer has no id"))
}

/// Every stored event of `flow`, oldest first.
async fn events_of(client: &awc::Client, base: &str, flow: &str) -> anyhow::Result<Vec<Value>> {
    let mut events = Vec::new();
    loop {
        let after = events
            .last()
            .and_then(|e: &Value| e["seq"].as_u64())
            .unwrap_or(0);
        let page = get_json(
            client,
            &format!("{base}/v1/flows/{flow}/events?after={after}&limit=1000"),
        )
        .await?;
        let page = page["events"].as_array().cloned().unwrap_or_default();
        let full = page.len() == 1000;
        events.extend(page);
        if !full {
            return Ok(events);
        }
    }
}

/// The survivors' `flowd_cluster_claimed_flows_total`, summed, every 20 ms from the kill on:
/// (time since the kill, flows claimed so far) at each change, until `stop` is set.
async fn watch_claims(
    bases: Vec<String>,
    killed: Instant,
    stop: Rc<std::cell::Cell<bool>>,
) -> Vec<(Duration, u64)> {
    let client = client();
    let mut timeline: Vec<(Duration, u64)> = Vec::new();
    while !stop.get() {
        let mut claimed = 0;
        for base in &bases {
            let text = match client.get(format!("{base}/metrics")).send().await {
                Ok(mut response) => response.body().limit(1 << 24).await.unwrap_or_default(),
                Err(_) => continue,
            };
            claimed += String::from_utf8_lossy(&text)
                .lines()
                .find_map(|line| line.strip_prefix("flowd_cluster_claimed_flows_total "))
                .and_then(|value| value.trim().parse::<f64>().ok())
                .unwrap_or(0.0) as u64;
        }
        if timeline.last().is_none_or(|(_, last)| *last != claimed) {
            timeline.push((killed.elapsed(), claimed));
        }
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
    timeline
}

fn is_terminal(status: &str) -> bool {
    matches!(status, "completed" | "failed" | "cancelled")
}

/// Ids a tenant stream delivered, in arrival order, until the connection ends.
async fn follow_tenant_stream(base: String, ids: Rc<RefCell<Vec<i64>>>) -> anyhow::Result<()> {
    let (_, mut framed) = client()
        .ws(format!("{base}/v1/events/ws"))
        .connect()
        .await
        .map_err(|e| anyhow!("tenant stream on {base}: {e}"))?;
    while let Some(frame) = framed.next().await {
        match frame? {
            awc::ws::Frame::Text(bytes) => {
                let event: Value = serde_json::from_slice(&bytes)?;
                if let Some(id) = event["id"].as_i64() {
                    ids.borrow_mut().push(id);
                }
            }
            awc::ws::Frame::Ping(bytes) => {
                use futures_util::SinkExt as _;
                framed.send(awc::ws::Message::Pong(bytes)).await?;
            }
            awc::ws::Frame::Close(_) => break,
            _ => {}
        }
    }
    Ok(())
}

/// `--throughput`: flows/s and events/s of N nodes driven over HTTP, each client with one flow
/// in flight, waiting on the flow's own websocket.
async fn throughput(args: &Args) -> anyhow::Result<()> {
    let db = TestDatabase::create(Backend::Postgres)?;
    let mut nodes = Vec::with_capacity(args.nodes);
    for index in 0..args.nodes.max(1) {
        nodes.push(start(&node_config(args, &db, index)?)?);
    }
    let bases: Vec<String> = nodes.iter().map(|node| node.base.clone()).collect();
    let next = std::cell::Cell::new(0usize);
    let begun = Instant::now();
    let clients = (0..args.concurrency.max(1)).map(|c| {
        let (bases, next) = (&bases, &next);
        async move {
            let client = client();
            let mut events = 0usize;
            loop {
                let i = next.get();
                if i >= args.flows {
                    return anyhow::Ok(events);
                }
                next.set(i + 1);
                let base = &bases[(i + c) % bases.len()];
                let id = create(&client, base).await?;
                events += wait_completed(&client, base, &id).await?;
            }
        }
    });
    let mut events = 0;
    for done in futures_util::future::join_all(clients).await {
        events += done?;
    }
    let seconds = begun.elapsed().as_secs_f64();
    println!(
        "{:<38} {}\n{:<38} {}\n{:<38} {:.0}\n{:<38} {:.0}",
        "nodes",
        bases.len(),
        "flows completed",
        args.flows,
        "flows/s",
        args.flows as f64 / seconds,
        "transitions (events)/s",
        events as f64 / seconds
    );
    Ok(())
}

/// Waits on a flow's own stream until it completes; the events it carried.
async fn wait_completed(client: &awc::Client, base: &str, id: &str) -> anyhow::Result<usize> {
    let ws = base.replacen("http", "ws", 1);
    let (_, mut socket) = client
        .ws(format!("{ws}/v1/flows/{id}/ws?after=0"))
        .connect()
        .await
        .map_err(|e| anyhow!("flow stream on {base}: {e}"))?;
    let mut events = 0;
    while let Some(frame) = socket.next().await {
        if let awc::ws::Frame::Text(bytes) = frame? {
            events += 1;
            let event: Value = serde_json::from_slice(&bytes)?;
            if event["seq"].as_u64() != Some(events as u64) || event["flow_id"] != id {
                bail!("flow {id}'s stream on {base}: event {events} is {event}");
            }
            match event["kind"].as_str() {
                Some("flow_completed") => return Ok(events),
                Some("flow_failed" | "flow_cancelled") => bail!("flow {id} did not complete"),
                _ => {}
            }
        }
    }
    bail!("flow {id}'s stream ended before it completed")
}

/// What the run found.
#[derive(Default)]
struct Report {
    created: usize,
    /// Creates answered with an error, and the first such answer.
    refused_creates: usize,
    first_refusal: Option<String>,
    completed: usize,
    failed: usize,
    unfinished: usize,
    victim_in_flight: usize,
    victim_not_resumed: usize,
    /// Kill → the survivors had claimed every flow the killed node had in flight (their
    /// `flowd_cluster_claimed_flows_total`); each claimed flow is resumed at once.
    claimed: Option<Duration>,
    takeover: Option<Duration>,
    duplicate_successes: usize,
    flows_with_gaps: usize,
    stored_events: usize,
    streamed_events: usize,
    stream_in_order_once: bool,
}

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.throughput {
        return throughput(&args).await;
    }
    if args.nodes < 2 {
        bail!("--nodes must be 2 or more: one is killed");
    }
    let db = TestDatabase::create(Backend::Postgres)?;
    let mut nodes = Vec::with_capacity(args.nodes);
    for index in 0..args.nodes {
        let config = node_config(&args, &db, index)?;
        nodes.push(Some(start(&config)?));
    }
    let bases: Vec<String> = nodes
        .iter()
        .flatten()
        .map(|node| node.base.clone())
        .collect();
    let victim = args.nodes - 1;
    let client = client();

    // A survivor's tenant stream, from before the first create.
    let streamed = Rc::new(RefCell::new(Vec::new()));
    let stream = actix_web::rt::spawn(follow_tenant_stream(bases[0].clone(), streamed.clone()));

    let creates = futures_util::stream::iter(0..args.flows)
        .map(|i| {
            let node = i % args.nodes;
            let (client, base) = (&client, bases[node].clone());
            async move { create(client, &base).await.map(|id| (id, node)) }
        })
        .buffer_unordered(args.concurrency.max(1));
    let mut flows: Vec<(String, usize)> = Vec::with_capacity(args.flows);
    let mut refused = Vec::new();
    for created in creates.collect::<Vec<_>>().await {
        match created {
            Ok(flow) => flows.push(flow),
            Err(error) => refused.push(error.to_string()),
        }
    }
    actix_web::rt::time::sleep(Duration::from_millis(args.kill_after_ms)).await;

    if let Some(node) = nodes[victim].take() {
        // SIGKILL, and waits for the process to be gone: nothing it writes is later than this.
        node.kill();
    }
    let killed_at: DateTime<Utc> = Utc::now();
    let killed = Instant::now();
    let survivors: Vec<&str> = bases
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != victim)
        .map(|(_, base)| base.as_str())
        .collect();
    let stop_watching = Rc::new(std::cell::Cell::new(false));
    let claims = actix_web::rt::spawn(watch_claims(
        survivors.iter().map(|base| (*base).to_owned()).collect(),
        killed,
        stop_watching.clone(),
    ));
    let mut in_flight = Vec::new();
    for (id, _) in flows.iter().filter(|(_, node)| *node == victim) {
        let flow = get_json(&client, &format!("{}/v1/flows/{id}", survivors[0])).await?;
        if !is_terminal(flow["status"].as_str().unwrap_or_default()) {
            in_flight.push(id.clone());
        }
    }

    // Until every flow has ended, asking the survivors in turn.
    let deadline = killed + Duration::from_secs(args.timeout_s);
    let mut statuses: HashMap<String, String> = HashMap::new();
    loop {
        let mut open = 0;
        for (i, (id, _)) in flows.iter().enumerate() {
            if statuses.get(id).is_some_and(|s| is_terminal(s)) {
                continue;
            }
            let base = survivors[i % survivors.len()];
            let flow = get_json(&client, &format!("{base}/v1/flows/{id}")).await?;
            let status = flow["status"].as_str().unwrap_or_default().to_owned();
            if !is_terminal(&status) {
                open += 1;
            }
            statuses.insert(id.clone(), status);
        }
        if open == 0 || Instant::now() > deadline {
            break;
        }
        actix_web::rt::time::sleep(Duration::from_millis(250)).await;
    }

    stop_watching.set(true);
    let claims = claims.await.unwrap_or_default();
    let claimed = claims
        .iter()
        .find(|(_, claimed)| *claimed >= in_flight.len() as u64)
        .map(|(after, _)| *after);

    let mut report = Report {
        claimed,
        created: flows.len(),
        refused_creates: refused.len(),
        first_refusal: refused.first().cloned(),
        victim_in_flight: in_flight.len(),
        ..Report::default()
    };
    for status in statuses.values() {
        match status.as_str() {
            "completed" => report.completed += 1,
            "failed" | "cancelled" => report.failed += 1,
            _ => report.unfinished += 1,
        }
    }
    let mut stored_ids = Vec::new();
    let mut takeover = Duration::ZERO;
    for (i, (id, _)) in flows.iter().enumerate() {
        let base = survivors[i % survivors.len()];
        let events = events_of(&client, base, id).await?;
        let seqs: Vec<u64> = events.iter().filter_map(|e| e["seq"].as_u64()).collect();
        if seqs != (1..=seqs.len() as u64).collect::<Vec<_>>() {
            report.flows_with_gaps += 1;
        }
        let mut successes: BTreeMap<&str, usize> = BTreeMap::new();
        for event in events.iter().filter(|e| e["kind"] == "phase_succeeded") {
            *successes
                .entry(event["current_phase"].as_str().unwrap_or_default())
                .or_default() += 1;
        }
        report.duplicate_successes += successes.values().filter(|&&n| n > 1).count();
        stored_ids.extend(events.iter().filter_map(|e| e["id"].as_i64()));
        if in_flight.contains(id) {
            let first_after = events
                .iter()
                .filter_map(|e| e["at"].as_str())
                .filter_map(|at| at.parse::<DateTime<Utc>>().ok())
                .find(|at| *at > killed_at);
            match first_after.and_then(|at| (at - killed_at).to_std().ok()) {
                Some(after) => takeover = takeover.max(after),
                None => report.victim_not_resumed += 1,
            }
        }
    }
    if report.victim_in_flight > report.victim_not_resumed {
        report.takeover = Some(takeover);
    }
    stored_ids.sort_unstable();
    report.stored_events = stored_ids.len();

    // Give the stream a moment to deliver the last events, then compare.
    let settle = Instant::now() + Duration::from_secs(5);
    while streamed.borrow().len() < stored_ids.len() && Instant::now() < settle {
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
    stream.abort();
    let streamed = streamed.borrow().clone();
    report.streamed_events = streamed.len();
    report.stream_in_order_once = streamed == stored_ids;

    print_report(&args, &report);
    drop(nodes);
    let ok = report.completed == report.created
        && report.refused_creates == 0
        && report.duplicate_successes == 0
        && report.flows_with_gaps == 0
        && report.victim_not_resumed == 0
        && report.stream_in_order_once;
    if !ok {
        bail!("the cluster run did not meet the contract of docs/cluster.md (see the table)");
    }
    Ok(())
}

fn start(config: &Path) -> anyhow::Result<TestServer> {
    TestServer::spawn(config, &[], ServerLogs::Discard).map_err(|e| anyhow!("{e}"))
}

fn print_report(args: &Args, report: &Report) {
    let takeover = match report.takeover {
        Some(t) => format!("{:.2} s", t.as_secs_f64()),
        None => "not observed".to_owned(),
    };
    let rows = [
        (
            "nodes / killed",
            format!("{} / node-{}", args.nodes, args.nodes - 1),
        ),
        (
            "flows completed",
            format!("{} of {}", report.completed, report.created),
        ),
        (
            "creates refused",
            match &report.first_refusal {
                Some(first) => format!("{} (first: {first})", report.refused_creates),
                None => "0".to_owned(),
            },
        ),
        ("flows failed or cancelled", report.failed.to_string()),
        ("flows left unfinished", report.unfinished.to_string()),
        (
            "killed node's flows in flight",
            report.victim_in_flight.to_string(),
        ),
        (
            "  of them never resumed",
            report.victim_not_resumed.to_string(),
        ),
        (
            "claim time (kill → all claimed)",
            match report.claimed {
                Some(after) => format!(
                    "{:.2} s (node timeout {} ms)",
                    after.as_secs_f64(),
                    args.node_timeout_ms
                ),
                None => "not observed".to_owned(),
            },
        ),
        (
            "takeover time (kill → last resumed)",
            format!(
                "{takeover} (node timeout {} ms, phase {} ms)",
                args.node_timeout_ms, args.phase_ms
            ),
        ),
        (
            "duplicate phase successes",
            report.duplicate_successes.to_string(),
        ),
        ("flows with seq gaps", report.flows_with_gaps.to_string()),
        (
            "tenant stream on node-0",
            format!(
                "{} of {} events, {}",
                report.streamed_events,
                report.stored_events,
                if report.stream_in_order_once {
                    "each once, in id order"
                } else {
                    "NOT each once in id order"
                }
            ),
        ),
    ];
    for (name, value) in rows {
        println!("{name:<38} {value}");
    }
}
