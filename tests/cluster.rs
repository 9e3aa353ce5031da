//! Cluster mode: nodes register and heartbeat in the `nodes` table, `/v1/cluster/nodes`
//! (operators only) and `/metrics` show them, a killed node turns `down` after the node
//! timeout, a stopped one `stopped`; SQLite refuses a second process. On PostgreSQL, the
//! flows of a killed or paused node are taken over by the others, and a paused node's late
//! writes are fenced off (`takeover`).

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Backend, TestDatabase, TestServer, config_for, get_as};
use serde_json::Value;

/// Heartbeats every 100 ms; silent for 1 s is `down`.
const CLUSTER: &str = "[cluster]\nheartbeat_ms = 100\nnode_timeout_ms = 1000\n";
/// The node timeout of [`CLUSTER`]; used only by the PostgreSQL tests.
#[cfg_attr(not(flowd_postgres_tests), allow(dead_code))]
const TIMEOUT: Duration = Duration::from_millis(1000);

const AUTH: &str = "[auth]\nenabled = true\n\
    [[auth.keys]]\nkey = \"op\"\nclient_account_id = \"ops\"\nengagement_id = \"ops\"\nrole = \"admin\"\n\
    [[auth.keys]]\nkey = \"tk\"\nclient_account_id = \"acme\"\nengagement_id = \"e1\"\n";

/// The node list as `server` sees it (auth off: the local caller is the operator).
async fn nodes(server: &TestServer) -> Value {
    let reply = common::get(server, "/v1/cluster/nodes").await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    reply.body
}

/// `node_id`'s entry in a node list.
fn entry<'a>(list: &'a Value, node_id: &str) -> Option<&'a Value> {
    list["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["node_id"] == node_id)
}

fn status_of(list: &Value, node_id: &str) -> String {
    entry(list, node_id)
        .and_then(|n| n["status"].as_str())
        .unwrap_or("absent")
        .to_owned()
}

/// Polls `server`'s node list until `done` holds; the list that satisfied it.
async fn until_nodes(server: &TestServer, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let list = nodes(server).await;
        if done(&list) {
            return list;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {list}"
        );
        actix_web::rt::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The gauge `flowd_cluster_nodes{status="…"}` of `server`'s metrics.
async fn node_gauge(server: &TestServer, status: &str) -> Option<f64> {
    let mut response = common::client()
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("GET /metrics");
    let text = response.body().await.expect("body");
    let text = String::from_utf8_lossy(&text).into_owned();
    let name = format!("flowd_cluster_nodes{{status=\"{status}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(name.as_str()))
        .and_then(|value| value.trim().parse().ok())
}

/// The process id behind a default node id (`HOST-PID`).
fn pid_of(node_id: &str) -> u32 {
    node_id
        .rsplit_once('-')
        .and_then(|(_, pid)| pid.parse().ok())
        .unwrap_or_else(|| panic!("{node_id} is not HOST-PID"))
}

/// SIGTERM: the graceful stop a service manager sends.
fn terminate(pid: u32) {
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

/// A `flowd` that was started and either listens or exits at once.
enum Start {
    Listening(Spawned),
    Refused { code: Option<i32>, stderr: String },
}

/// A server process started outside [`TestServer`] (which panics when a start fails); killed
/// when dropped.
struct Spawned {
    child: Child,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `flowd --config config` and waits for its listening line or its exit.
fn try_start(config: &Path) -> Start {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(env!("CARGO_BIN_EXE_flowd"))
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("flowd starts");
    let mut line = String::new();
    let stdout = child.stdout.take().expect("stdout");
    BufReader::new(stdout).read_line(&mut line).expect("stdout");
    if line.starts_with("flowd listening on ") {
        return Start::Listening(Spawned { child });
    }
    let status = child.wait().expect("exit status");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("stderr");
    Start::Refused {
        code: status.code(),
        stderr,
    }
}

/// On SQLite: one node, up; a second process on the same file is refused with one clear
/// line while the first keeps serving; after the first is SIGKILLed a new one starts, and the
/// killed node turns `down` after the node timeout.
#[actix_web::test]
async fn sqlite_is_single_node() {
    let db = TestDatabase::new(Backend::Sqlite);
    let config = config_for(&db, CLUSTER);
    let first = TestServer::start(config.clone());
    let list = until_nodes(&first, "heartbeats", |list| {
        list["nodes"][0]["heartbeats"].as_u64() >= Some(2)
    })
    .await;
    let first_id = list["this_node"].as_str().expect("this_node").to_owned();
    assert_eq!(list["nodes"].as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(status_of(&list, &first_id), "up");
    assert_eq!(list["node_timeout_ms"], 1000);
    assert_eq!(node_gauge(&first, "up").await, Some(1.0));
    assert_eq!(node_gauge(&first, "down").await, Some(0.0));

    match try_start(&config) {
        Start::Listening(_) => panic!("a second flowd started on the same SQLite file"),
        Start::Refused { code, stderr } => {
            assert_eq!(code, Some(1), "{stderr}");
            let line = stderr.trim_end();
            assert!(!line.contains('\n'), "one line: {stderr}");
            assert!(
                line.starts_with("flowd: database ")
                    && line.contains("in use by another flowd process")
                    && line.contains("flowd.db.lock"),
                "{stderr}"
            );
        }
    }
    // The first one serves on, alone in the table: the refused process wrote nothing.
    let list = nodes(&first).await;
    assert_eq!(list["nodes"].as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(common::get(&first, "/healthz").await.status, 200);

    let config = first.kill();
    let second = TestServer::start(config);
    let list = nodes(&second).await;
    let second_id = list["this_node"].as_str().expect("this_node").to_owned();
    assert_ne!(second_id, first_id);
    assert_eq!(status_of(&list, &second_id), "up");
    until_nodes(&second, "the killed node down", |list| {
        status_of(list, &first_id) == "down" && status_of(list, &second_id) == "up"
    })
    .await;
    assert_eq!(node_gauge(&second, "down").await, Some(1.0));
}

/// A graceful stop (SIGTERM) marks the node `stopped`, and frees the SQLite file at once.
#[actix_web::test]
async fn a_graceful_stop_is_stopped_not_down() {
    let db = TestDatabase::new(Backend::Sqlite);
    let config = config_for(&db, CLUSTER);
    let first = TestServer::start(config.clone());
    let first_id = nodes(&first).await["this_node"]
        .as_str()
        .expect("this_node")
        .to_owned();
    terminate(pid_of(&first_id));
    let deadline = Instant::now() + Duration::from_secs(15);
    let second = loop {
        match try_start(&config) {
            Start::Listening(server) => break server,
            Start::Refused { stderr, .. } if stderr.contains("in use by another") => {
                assert!(
                    Instant::now() < deadline,
                    "the first never let go: {stderr}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            Start::Refused { stderr, .. } => panic!("{stderr}"),
        }
    };
    drop(first);
    // The second process is up; the first's row says it stopped, not that it crashed.
    let store = flowd::store::DbStore::connect(&db.url, 1)
        .await
        .expect("open the database");
    use flowd_actors::cluster::NodeStore;
    let list = store.list_nodes().await.expect("nodes");
    let row = list
        .nodes
        .iter()
        .find(|n| n.node_id == first_id)
        .expect("the first node's row");
    assert!(row.stopped_at.is_some(), "{row:?}");
    assert_eq!(list.nodes.len(), 2, "{list:?}");
    drop(second);
}

/// `/v1/cluster/nodes` is an operator endpoint: tenant keys get 403, no key 401, both as
/// problem+json.
async fn only_operators_list_nodes(backend: Backend) {
    let db = TestDatabase::new(backend);
    let server = TestServer::start(config_for(&db, &format!("{CLUSTER}{AUTH}")));
    let admin = get_as(&server, "/v1/cluster/nodes", Some("op")).await;
    assert_eq!(admin.status, 200, "{:?}", admin.body);
    assert_eq!(admin.body["nodes"][0]["status"], "up");
    let tenant = get_as(&server, "/v1/cluster/nodes", Some("tk")).await;
    assert_eq!(tenant.status, 403, "{:?}", tenant.body);
    assert_eq!(tenant.content_type, "application/problem+json");
    assert_eq!(tenant.body["type"], "/problems/forbidden");
    let anonymous = get_as(&server, "/v1/cluster/nodes", None).await;
    assert_eq!(anonymous.status, 401);
    assert_eq!(anonymous.content_type, "application/problem+json");
}

on_both_backends!(only_operators_list_nodes);

/// Two real servers on one PostgreSQL database both appear `up` to each other; after one is
/// SIGKILLed it turns `down` once the node timeout has passed (not before), and a third one
/// stopped with SIGTERM turns `stopped`.
#[cfg(flowd_postgres_tests)]
#[actix_web::test]
async fn postgres_nodes_see_each_other_and_a_killed_one_goes_down() {
    let db = TestDatabase::new(Backend::Postgres);
    let config = config_for(&db, CLUSTER);
    let a = TestServer::start(config.clone());
    let b = TestServer::start(config.clone());
    let a_id = nodes(&a).await["this_node"]
        .as_str()
        .expect("id")
        .to_owned();
    let b_id = nodes(&b).await["this_node"]
        .as_str()
        .expect("id")
        .to_owned();
    assert_ne!(a_id, b_id);
    for server in [&a, &b] {
        until_nodes(server, "both up", |list| {
            status_of(list, &a_id) == "up"
                && status_of(list, &b_id) == "up"
                && entry(list, &b_id).and_then(|n| n["heartbeats"].as_u64()) >= Some(2)
        })
        .await;
    }
    assert_eq!(node_gauge(&a, "up").await, Some(2.0));

    b.kill();
    let killed = Instant::now();
    let list = until_nodes(&a, "b down", |list| status_of(list, &b_id) == "down").await;
    let after = killed.elapsed();
    // b's last heartbeat was at most one period before the kill; down means silent > timeout.
    assert!(
        after + Duration::from_millis(150) >= TIMEOUT,
        "down after {after:?}, before the node timeout"
    );
    assert!(after < TIMEOUT + Duration::from_secs(3), "{after:?}");
    let b_row = entry(&list, &b_id).expect("b");
    assert!(b_row["heartbeat_age_ms"].as_u64() > Some(1000), "{b_row}");
    assert!(b_row["stopped_at"].is_null());
    assert_eq!(status_of(&list, &a_id), "up");
    assert_eq!(node_gauge(&a, "down").await, Some(1.0));

    let c = TestServer::start(config);
    let c_id = nodes(&c).await["this_node"]
        .as_str()
        .expect("id")
        .to_owned();
    until_nodes(&a, "c up", |list| status_of(list, &c_id) == "up").await;
    terminate(pid_of(&c_id));
    until_nodes(&a, "c stopped", |list| status_of(list, &c_id) == "stopped").await;
    drop(c);
    assert_eq!(node_gauge(&a, "stopped").await, Some(1.0));
    assert_eq!(node_gauge(&a, "up").await, Some(1.0));
}

/// Three nodes started at the same moment on an empty PostgreSQL database all come up: the
/// migrations run under an advisory lock, one node at a time, instead of racing on
/// `CREATE TABLE`. Three fresh databases, so that one lucky interleaving does not pass it.
#[cfg(flowd_postgres_tests)]
#[actix_web::test]
async fn postgres_nodes_started_at_once_on_an_empty_database_all_come_up() {
    for round in 0..3 {
        let db = TestDatabase::new(Backend::Postgres);
        let config = config_for(&db, CLUSTER);
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(3));
        let starts: Vec<_> = (0..3)
            .map(|_| {
                let (config, barrier) = (config.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    try_start(&config)
                })
            })
            .collect();
        let mut running = Vec::new();
        for start in starts {
            match start.join().expect("start thread") {
                Start::Listening(server) => running.push(server),
                Start::Refused { code, stderr } => {
                    panic!("round {round}: a node did not come up ({code:?}): {stderr}")
                }
            }
        }
        let store = flowd::store::DbStore::connect(&db.url, 1)
            .await
            .expect("open the database");
        use flowd_actors::cluster::NodeStore;
        let list = store.list_nodes().await.expect("nodes");
        assert_eq!(list.nodes.len(), 3, "round {round}: {list:?}");
        assert!(
            list.nodes.iter().all(|n| n.stopped_at.is_none()),
            "{list:?}"
        );
        drop(running);
    }
}

/// Takeover tests: heartbeats every 100 ms, a node silent for 1 s is dead; flows of four
/// sleeping phases, so that many are in flight at any moment.
#[cfg(flowd_postgres_tests)]
mod takeover {
    use std::collections::{BTreeMap, HashMap};
    use std::time::{Duration, Instant};

    use chrono::{DateTime, Utc};
    use futures_util::future::join_all;
    use serde_json::{Value, json};

    use super::common::{self, Backend, TestDatabase, TestServer, config_for};
    use super::{CLUSTER, TIMEOUT};

    /// `steps`: four phases of `ms` milliseconds each.
    fn config(db: &TestDatabase, ms: u64) -> std::path::PathBuf {
        let phase = |name: &str| {
            format!(
                "[[flow_types.phases]]\nname = \"{name}\"\nhandler = \"sleep\"\n\
                 params = {{ ms = {ms} }}\n"
            )
        };
        let types = format!(
            "[[flow_types]]\nname = \"steps\"\nversion = 1\n{}{}{}{}",
            phase("one"),
            phase("two"),
            phase("three"),
            phase("four")
        );
        config_for(db, &format!("{CLUSTER}{types}"))
    }

    /// Creates `count` flows on `server`; their ids. The node that creates a flow owns it.
    async fn create(server: &TestServer, count: usize) -> Vec<String> {
        let posts = (0..count).map(|i| async move {
            let reply = common::post(
                server,
                "/v1/flows",
                &json!({ "flow_type": "steps", "input": { "n": i } }),
            )
            .await;
            assert_eq!(reply.status, 201, "{:?}", reply.body);
            reply.body["id"].as_str().expect("id").to_owned()
        });
        join_all(posts).await
    }

    fn status(flow: &Value) -> &str {
        flow["status"].as_str().unwrap_or_default()
    }

    /// Waits until every flow of `ids` is terminal on `server`; their final states.
    async fn all_terminal(server: &TestServer, ids: &[String], within: Duration) -> Vec<Value> {
        let deadline = Instant::now() + within;
        let mut done: HashMap<String, Value> = HashMap::new();
        loop {
            let pending: Vec<&String> = ids.iter().filter(|id| !done.contains_key(*id)).collect();
            for id in pending {
                let reply = common::get(server, &format!("/v1/flows/{id}")).await;
                assert_eq!(reply.status, 200, "{:?}", reply.body);
                if matches!(status(&reply.body), "completed" | "failed" | "cancelled") {
                    done.insert(id.clone(), reply.body);
                }
            }
            if done.len() == ids.len() {
                return ids.iter().map(|id| done[id].clone()).collect();
            }
            assert!(
                Instant::now() < deadline,
                "{} of {} flows still not terminal",
                ids.len() - done.len(),
                ids.len()
            );
            actix_web::rt::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn events(server: &TestServer, id: &str) -> Vec<Value> {
        let reply = common::get(server, &format!("/v1/flows/{id}/events")).await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        reply.body["events"].as_array().expect("events").clone()
    }

    fn at(event: &Value) -> DateTime<Utc> {
        event["at"]
            .as_str()
            .and_then(|at| at.parse().ok())
            .expect("an event time")
    }

    /// A successful attempt: from its `phase_started` to its `phase_succeeded`.
    type Run = (DateTime<Utc>, DateTime<Utc>);

    /// The checks every flow must pass however its nodes died: completed, `seq` gap-free, and
    /// each phase succeeded exactly once (so no two successful attempts of a phase, let alone
    /// overlapping ones), each success after its own start.
    fn ran_once(id: &str, flow: &Value, events: &[Value]) {
        assert_eq!(status(flow), "completed", "{flow}");
        let seqs: Vec<u64> = events.iter().filter_map(|e| e["seq"].as_u64()).collect();
        assert_eq!(
            seqs,
            (1..=events.len() as u64).collect::<Vec<_>>(),
            "flow {id}: seq gap-free"
        );
        let mut started: HashMap<&str, DateTime<Utc>> = HashMap::new();
        let mut succeeded: BTreeMap<&str, Vec<Run>> = BTreeMap::new();
        for event in events {
            let phase = event["current_phase"].as_str().unwrap_or_default();
            match event["kind"].as_str() {
                Some("phase_started") => {
                    started.insert(phase, at(event));
                }
                Some("phase_succeeded") => {
                    let from = started
                        .get(phase)
                        .copied()
                        .expect("started before it succeeded");
                    succeeded.entry(phase).or_default().push((from, at(event)));
                }
                _ => {}
            }
        }
        assert_eq!(
            succeeded.keys().copied().collect::<Vec<_>>(),
            ["four", "one", "three", "two"],
            "flow {id}: {events:?}"
        );
        for (phase, runs) in &succeeded {
            assert_eq!(runs.len(), 1, "flow {id}: phase {phase} succeeded {runs:?}");
            assert!(runs[0].0 <= runs[0].1, "flow {id}: {runs:?}");
        }
    }

    /// A counter or gauge of `server`'s `/metrics`, by its full name.
    async fn metric(server: &TestServer, name: &str) -> Option<f64> {
        let mut response = common::client()
            .get(server.url("/metrics"))
            .send()
            .await
            .ok()?;
        let text = response.body().await.ok()?;
        let text = String::from_utf8_lossy(&text).into_owned();
        let prefix = format!("{name} ");
        text.lines()
            .find_map(|line| line.strip_prefix(prefix.as_str()))
            .and_then(|value| value.trim().parse().ok())
    }

    fn signal(server: &TestServer, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([signal, &server.pid().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// Three nodes share 300 flows; one is SIGKILLed with its flows in flight. The survivors
    /// take them over after the node timeout and every flow completes, each phase succeeding
    /// once, `seq` gap-free; the killed node's unfinished flows move again within the node
    /// timeout + 2 s.
    /// The same create, with one idempotency key, sent to two nodes at once (many times):
    /// one flow per key, and both answers name it, as on one node.
    #[actix_web::test]
    async fn an_idempotency_key_raced_on_two_nodes_makes_one_flow() {
        let db = TestDatabase::new(Backend::Postgres);
        let config = config(&db, 20);
        let a = TestServer::start(&config);
        let b = TestServer::start(&config);
        let post = |server: &TestServer, key: String| {
            let request = common::client()
                .post(server.url("/v1/flows"))
                .insert_header(("Idempotency-Key", key));
            async move {
                let mut response = request
                    .send_json(&json!({ "flow_type": "steps", "input": { "n": 1 } }))
                    .await
                    .expect("POST");
                let body: Value = response.json().await.expect("JSON");
                (response.status().as_u16(), body)
            }
        };
        for round in 0..20 {
            let key = format!("race-{round}");
            let ((on_a, flow_a), (on_b, flow_b)) =
                futures_util::join!(post(&a, key.clone()), post(&b, key.clone()));
            let mut statuses = [on_a, on_b];
            statuses.sort_unstable();
            assert_eq!(
                statuses,
                [200, 201],
                "round {round}: one create, one repeat: {flow_a} {flow_b}"
            );
            assert_eq!(
                flow_a["id"], flow_b["id"],
                "round {round}: one flow per key"
            );
        }
        // A different request under a used key is refused on the other node too.
        let (status, body) = {
            let mut response = common::client()
                .post(b.url("/v1/flows"))
                .insert_header(("Idempotency-Key", "race-0"))
                .send_json(&json!({ "flow_type": "steps", "input": { "n": 2 } }))
                .await
                .expect("POST");
            let body: Value = response.json().await.expect("JSON");
            (response.status().as_u16(), body)
        };
        assert_eq!(status, 409, "{body}");
        let flows = common::get(&a, "/v1/flows?limit=100").await;
        assert_eq!(
            flows.body["flows"].as_array().map(Vec::len),
            Some(20),
            "{:?}",
            flows.body
        );
    }

    #[actix_web::test]
    async fn a_killed_node_s_flows_complete_on_the_survivors() {
        let db = TestDatabase::new(Backend::Postgres);
        let config = config(&db, 500);
        let a = TestServer::start(&config);
        let b = TestServer::start(&config);
        let c = TestServer::start(&config);
        let (on_a, on_b, on_c) =
            futures_util::join!(create(&a, 100), create(&b, 100), create(&c, 100));
        actix_web::rt::time::sleep(Duration::from_millis(400)).await;

        b.kill();
        let killed = Utc::now();

        let ids: Vec<String> = on_a.iter().chain(&on_b).chain(&on_c).cloned().collect();
        let flows = all_terminal(&a, &ids, Duration::from_secs(90)).await;
        for (id, flow) in ids.iter().zip(&flows) {
            let server = if on_c.contains(id) { &c } else { &a };
            ran_once(id, flow, &events(server, id).await);
        }
        // Every flow of b that moved after the kill was claimed, once; none of b's other
        // flows was (those that b finished just before the kill).
        let limit = chrono::Duration::from_std(TIMEOUT + Duration::from_secs(2)).expect("limit");
        let mut resumed = 0;
        for id in &on_b {
            let events = events(&a, id).await;
            let Some(moved) = events.iter().map(at).find(|at| *at > killed) else {
                continue;
            };
            resumed += 1;
            assert!(
                moved - killed <= limit,
                "flow {id} moved again {:?} after the kill",
                moved - killed
            );
        }
        assert!(
            resumed > 50,
            "only {resumed} of b's flows were still running"
        );
        let claimed = metric(&a, "flowd_cluster_claimed_flows_total")
            .await
            .unwrap_or(0.0)
            + metric(&c, "flowd_cluster_claimed_flows_total")
                .await
                .unwrap_or(0.0);
        assert_eq!(
            claimed,
            f64::from(resumed),
            "each running flow of b claimed once"
        );
    }

    /// A node paused (SIGSTOP) past its lease loses its flows to the others; resumed
    /// (SIGCONT), its late phase results commit nothing, its actors stop, and each flow
    /// finishes once.
    #[actix_web::test]
    async fn a_paused_node_s_late_writes_are_fenced_and_its_actors_stop() {
        let db = TestDatabase::new(Backend::Postgres);
        let config = config(&db, 1500);
        let a = TestServer::start(&config);
        let b = TestServer::start(&config);
        let c = TestServer::start(&config);
        let on_b = create(&b, 30).await;
        actix_web::rt::time::sleep(Duration::from_millis(500)).await;
        signal(&b, "-STOP");
        // Past the lease, and long enough for the claims: the survivors run the phases again.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let claimed = metric(&a, "flowd_cluster_claimed_flows_total")
                .await
                .unwrap_or(0.0)
                + metric(&c, "flowd_cluster_claimed_flows_total")
                    .await
                    .unwrap_or(0.0);
            if claimed >= on_b.len() as f64 {
                break;
            }
            assert!(Instant::now() < deadline, "only {claimed} flows claimed");
            actix_web::rt::time::sleep(Duration::from_millis(50)).await;
        }
        // b's phases were due while it was stopped: it wakes with their results at once.
        actix_web::rt::time::sleep(Duration::from_millis(1200)).await;
        signal(&b, "-CONT");

        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let live = metric(&b, "flowd_live_flow_actors").await;
            if live == Some(0.0) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "b still runs {live:?} flow actors"
            );
            actix_web::rt::time::sleep(Duration::from_millis(50)).await;
        }
        let fenced = metric(&b, "flowd_fenced_writes_total").await.unwrap_or(0.0);
        let reconciled = metric(&b, "flowd_cluster_reconciliations_total")
            .await
            .unwrap_or(0.0);
        assert!(
            fenced >= 1.0 || reconciled >= 1.0,
            "b's actors stopped by its fenced writes ({fenced}) or its reconciliation ({reconciled})"
        );
        let flows = all_terminal(&a, &on_b, Duration::from_secs(60)).await;
        for (id, flow) in on_b.iter().zip(&flows) {
            ran_once(id, flow, &events(&a, id).await);
        }
        // b is alive and takes new work at once.
        let fresh = create(&b, 3).await;
        for flow in all_terminal(&b, &fresh, Duration::from_secs(30)).await {
            assert_eq!(status(&flow), "completed");
        }
        drop((a, c));
    }
}
