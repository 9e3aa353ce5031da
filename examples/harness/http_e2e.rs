//! `http_e2e`: what a user of the server does. C clients, each in a loop: `POST /v1/flows` (a
//! flow of K `noop` phases), then wait for the flow's `flow_completed`, then the next, until N
//! flows completed. A client waits on the flow's own websocket (`/v1/flows/{id}/ws?after=0`,
//! a new connection per flow), or with `--tenant-stream` on one shared tenant stream
//! (`/v1/events/ws`) opened before the first create.
//!
//! Every per-flow stream must carry exactly the flow's events, seq 1, 2, … in order, and none
//! of another flow's; a run that sees otherwise fails. Reports flows/s and phases (steps)/s,
//! create → `flow_completed` p50/p99, the server's CPU per flow (utime + stime of its process
//! from `/proc`, before and after) and the harness's own CPU per flow apart, and the writer's
//! busy share, mean batch and mean commit from `/metrics` over the run.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::oneshot;

use super::{Args, Figures, create_over_http, percentiles, scrape, start_server, sync_toml};

/// The flow type every create starts.
const FLOW_TYPE: &str = "e2e_noop";

/// The fields of an event frame a client checks.
#[derive(Deserialize)]
struct Frame {
    flow_id: String,
    seq: u64,
    kind: String,
}

/// CPU seconds (user + system) a process has used, from `/proc/<pid>/stat`.
fn cpu_seconds(pid: &str) -> Result<f64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| e.to_string())?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').ok_or("unreadable stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks = |i: usize| -> Result<f64, String> {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or_else(|| "unreadable stat".to_owned())
    };
    Ok((ticks(11)? + ticks(12)?) / clock_ticks())
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux when it cannot be asked).
fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// Creates one flow; its id.
async fn create(client: &awc::Client, endpoint: &str) -> Result<String, String> {
    let (status, body) = create_over_http(client.post(endpoint), FLOW_TYPE).await?;
    if status.as_u16() != 201 {
        return Err(format!(
            "create answered {status}: {}",
            String::from_utf8_lossy(&body)
        ));
    }
    let flow: Value =
        serde_json::from_slice(&body).map_err(|e| format!("create's body is not JSON: {e}"))?;
    flow["id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| "create's body has no id".to_owned())
}

/// Waits on the flow's own stream until it completes; checks that the stream carries exactly
/// its events, in order.
async fn wait_on_flow_stream(
    client: &awc::Client,
    ws_base: &str,
    id: &str,
    events_per_flow: u64,
) -> Result<(), String> {
    let (_, mut socket) = client
        .ws(format!("{ws_base}/v1/flows/{id}/ws?after=0"))
        .connect()
        .await
        .map_err(|e| format!("websocket: {e}"))?;
    let mut last_seq = 0;
    while let Some(frame) = socket.next().await {
        match frame.map_err(|e| format!("websocket: {e}"))? {
            awc::ws::Frame::Text(bytes) => {
                let event: Frame = serde_json::from_slice(&bytes)
                    .map_err(|e| format!("a frame is not an event: {e}"))?;
                if event.flow_id != id {
                    return Err(format!(
                        "flow {id}'s stream carried an event of {}",
                        event.flow_id
                    ));
                }
                if event.seq != last_seq + 1 {
                    return Err(format!("flow {id}: seq {} after {last_seq}", event.seq));
                }
                last_seq = event.seq;
                match event.kind.as_str() {
                    "flow_completed" => {
                        if last_seq != events_per_flow {
                            return Err(format!(
                                "flow {id} completed after {last_seq} events, not {events_per_flow}"
                            ));
                        }
                        let _ = socket.send(awc::ws::Message::Close(None)).await;
                        return Ok(());
                    }
                    "flow_failed" | "flow_cancelled" => {
                        return Err(format!("flow {id} ended {}", event.kind));
                    }
                    _ => {}
                }
            }
            awc::ws::Frame::Ping(bytes) => {
                let _ = socket.send(awc::ws::Message::Pong(bytes)).await;
            }
            awc::ws::Frame::Close(reason) => {
                return Err(format!("flow {id}'s stream closed: {reason:?}"));
            }
            _ => {}
        }
    }
    Err(format!("flow {id}'s stream ended before it completed"))
}

/// Completions seen on the tenant stream, and the clients waiting for theirs.
#[derive(Default)]
struct Completions {
    done: HashMap<String, Result<(), String>>,
    waiting: HashMap<String, oneshot::Sender<Result<(), String>>>,
}

/// Reads the tenant stream, handing each flow's end to its client (or keeping it until the
/// client asks, when the stream is faster than the create's answer).
async fn read_tenant_stream(
    client: awc::Client,
    ws_base: String,
    completions: Rc<RefCell<Completions>>,
    frames: Rc<Cell<u64>>,
) -> Result<(), String> {
    let (_, mut socket) = client
        .ws(format!("{ws_base}/v1/events/ws?after=0"))
        .connect()
        .await
        .map_err(|e| format!("tenant websocket: {e}"))?;
    while let Some(frame) = socket.next().await {
        match frame.map_err(|e| format!("tenant websocket: {e}"))? {
            awc::ws::Frame::Text(bytes) => {
                frames.set(frames.get() + 1);
                let event: Frame = serde_json::from_slice(&bytes)
                    .map_err(|e| format!("a frame is not an event: {e}"))?;
                let outcome = match event.kind.as_str() {
                    "flow_completed" => Ok(()),
                    "flow_failed" | "flow_cancelled" => {
                        Err(format!("flow {} ended {}", event.flow_id, event.kind))
                    }
                    _ => continue,
                };
                let mut completions = completions.borrow_mut();
                match completions.waiting.remove(&event.flow_id) {
                    Some(waiter) => {
                        let _ = waiter.send(outcome);
                    }
                    None => {
                        completions.done.insert(event.flow_id, outcome);
                    }
                }
            }
            awc::ws::Frame::Ping(bytes) => {
                let _ = socket.send(awc::ws::Message::Pong(bytes)).await;
            }
            awc::ws::Frame::Close(reason) => {
                return Err(format!("tenant stream closed: {reason:?}"));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Waits for flow `id`'s end on the tenant stream.
async fn wait_on_tenant_stream(
    completions: &Rc<RefCell<Completions>>,
    id: String,
) -> Result<(), String> {
    let receiver = {
        let mut completions = completions.borrow_mut();
        if let Some(outcome) = completions.done.remove(&id) {
            return outcome;
        }
        let (sender, receiver) = oneshot::channel();
        completions.waiting.insert(id, sender);
        receiver
    };
    receiver
        .await
        .map_err(|_| "the tenant stream ended".to_owned())?
}

pub(super) async fn run(args: &Args, url: &str) -> Result<Figures, String> {
    let scratch = tempfile::tempdir().map_err(|e| e.to_string())?;
    let config = scratch.path().join("http_e2e.toml");
    let mut toml = format!(
        "[server]\nbind = \"127.0.0.1:0\"\n[database]\nurl = \"{url}\"\n{}\
         [[flow_types]]\nname = \"{FLOW_TYPE}\"\nversion = 1\n",
        sync_toml(args)
    );
    for i in 1..=args.phases {
        toml.push_str(&format!(
            "[[flow_types.phases]]\nname = \"p{i}\"\nhandler = \"noop\"\n"
        ));
    }
    std::fs::write(&config, toml).map_err(|e| e.to_string())?;
    let server = start_server(&config)?;
    let pid = server.pid().to_string();
    let endpoint = format!("{}/v1/flows", server.base);
    let ws_base = server.base.replacen("http", "ws", 1);
    // Every client holds one pooled connection for its creates and, per flow, one websocket.
    let client = awc::Client::builder()
        .connector(awc::Connector::new().limit(0))
        .timeout(Duration::from_secs(60))
        .finish();
    let n = args.flows();
    let events_per_flow = 3 + 2 * args.phases as u64;

    let completions: Rc<RefCell<Completions>> = Rc::default();
    let tenant_frames = Rc::new(Cell::new(0));
    let tenant_reader = args.tenant_stream.then(|| {
        actix_web::rt::spawn(read_tenant_stream(
            client.clone(),
            ws_base.clone(),
            completions.clone(),
            tenant_frames.clone(),
        ))
    });
    if args.tenant_stream {
        // The stream is open (its server task subscribed) before the first create.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let before = scrape(&client, &server.base).await?;
    let server_cpu_before = cpu_seconds(&pid)?;
    let client_cpu_before = cpu_seconds("self")?;
    let start = Instant::now();
    let next = Rc::new(Cell::new(0usize));
    let latencies: Rc<RefCell<Vec<Duration>>> = Rc::default();
    let clients = (0..args.concurrency.min(n)).map(|_| {
        let (client, endpoint, ws_base) = (client.clone(), endpoint.clone(), ws_base.clone());
        let (next, latencies, completions) = (next.clone(), latencies.clone(), completions.clone());
        let tenant_stream = args.tenant_stream;
        async move {
            while next.get() < n {
                next.set(next.get() + 1);
                let began = Instant::now();
                let id = create(&client, &endpoint).await?;
                if tenant_stream {
                    wait_on_tenant_stream(&completions, id).await?;
                } else {
                    wait_on_flow_stream(&client, &ws_base, &id, events_per_flow).await?;
                }
                latencies.borrow_mut().push(began.elapsed());
            }
            Ok::<(), String>(())
        }
    });
    let results = futures_util::future::join_all(clients).await;
    let elapsed = start.elapsed().as_secs_f64();
    let server_cpu = cpu_seconds(&pid)? - server_cpu_before;
    let client_cpu = cpu_seconds("self")? - client_cpu_before;
    let after = scrape(&client, &server.base).await?;
    results.into_iter().collect::<Result<Vec<()>, String>>()?;
    if let Some(reader) = tenant_reader {
        reader.abort();
    }
    drop(server);

    let latencies = latencies.take();
    if latencies.len() != n {
        return Err(format!("{} of {n} flows completed", latencies.len()));
    }
    let (p50, p99) = percentiles(latencies);
    let grew = |series: &str| {
        after.get(series).copied().unwrap_or(0.0) - before.get(series).copied().unwrap_or(0.0)
    };
    let commit_s = grew("flowd_persistence_commit_seconds_sum");
    let batches = grew("flowd_persistence_commit_seconds_count").max(1.0);
    let mut figures = Figures::from([
        ("flows_per_sec", n as f64 / elapsed),
        ("steps_per_sec", (n * args.phases) as f64 / elapsed),
        ("p50_ms", p50),
        ("p99_ms", p99),
        ("server_cpu_ms_per_flow", server_cpu * 1e3 / n as f64),
        ("client_cpu_ms_per_flow", client_cpu * 1e3 / n as f64),
        ("commit_busy", commit_s / elapsed),
        ("mean_commit_ms", commit_s * 1e3 / batches),
        (
            "mean_batch",
            grew("flowd_persistence_batch_writes_sum") / batches,
        ),
    ]);
    if args.tenant_stream {
        figures.insert("tenant_frames", tenant_frames.get() as f64);
    }
    Ok(figures)
}
