//! Cluster mode on PostgreSQL: external workers may poll any node and get the tasks of flows
//! owned anywhere; a lease, its heartbeats and its result work on any node, with the replies
//! and guarantees of one node (docs/cluster.md, 2.6). Three real `flowd` processes on one fresh
//! database, workers played by a plain HTTP client.

#![cfg(flowd_postgres_tests)]

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use common::{Backend, TestDatabase, TestServer, config_for, get, post, wait_for_flow};
use futures_util::future::join_all;
use serde_json::{Value, json};

/// Heartbeats every 100 ms; silent for 1 s is `down`.
const CLUSTER: &str = "[cluster]\nheartbeat_ms = 100\nnode_timeout_ms = 1000\n";

const TYPES: &str = r#"
[[flow_types]]
name = "crewed"
version = 1
[[flow_types.phases]]
name = "crew"
handler = "external"
params = { queue = "crews" }
retries = 2
retry_backoff_ms = 10
[[flow_types.phases]]
name = "after"
handler = "noop"

[[flow_types]]
name = "degrades"
version = 1
[[flow_types.phases]]
name = "crew"
handler = "external"
params = { queue = "busy" }
fallback = "sleep"
fallback_params = { ms = 10 }
fallback_after_s = 1
"#;

/// Three nodes of one cluster on a fresh database.
fn cluster() -> (TestDatabase, [TestServer; 3]) {
    let db = TestDatabase::new(Backend::Postgres);
    let config = config_for(&db, &format!("{CLUSTER}{TYPES}"));
    let nodes = [
        TestServer::start(config.clone()),
        TestServer::start(config.clone()),
        TestServer::start(config),
    ];
    (db, nodes)
}

async fn create(server: &TestServer) -> String {
    create_of(server, "crewed").await
}

async fn create_of(server: &TestServer, flow_type: &str) -> String {
    let reply = post(
        server,
        "/v1/flows",
        &json!({ "flow_type": flow_type, "input": { "n": 1 } }),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    reply.body["id"].as_str().expect("flow id").to_owned()
}

async fn poll(server: &TestServer, body: Value) -> common::Reply {
    post(server, "/v1/queues/crews/poll", &body).await
}

/// Polls `server` until a task comes (each poll waits up to 2 s); the lease.
async fn lease(server: &TestServer, worker: &str, lease_s: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let reply = poll(
            server,
            json!({ "worker_id": worker, "wait_ms": 2000, "lease_s": lease_s }),
        )
        .await;
        match reply.status {
            200 => return reply.body,
            204 => assert!(Instant::now() < deadline, "no task for {worker}"),
            other => panic!("poll answered {other}: {}", reply.body),
        }
    }
}

async fn report(server: &TestServer, lease: &Value, what: &str, body: Value) -> common::Reply {
    let task_id = lease["task_id"].as_str().expect("task id");
    let mut body = body;
    body["lease_id"] = lease["lease_id"].clone();
    post(server, &format!("/v1/tasks/{task_id}/{what}"), &body).await
}

async fn completed(server: &TestServer, id: &str) -> Value {
    let flow = wait_for_flow(server, id, Duration::from_secs(20), common::is_terminal).await;
    assert_eq!(flow["status"], "completed", "{flow}");
    flow
}

#[actix_web::test]
async fn a_worker_polling_another_node_completes_the_task_and_the_flow_goes_on() {
    let (_db, [a, b, c]) = cluster();
    let id = create(&a).await;
    let lease = lease(&b, "on-b", 30).await;
    assert_eq!(lease["flow_id"], id.as_str(), "{lease}");
    assert_eq!(lease["phase"], "crew");
    assert_eq!(lease["attempt"], 1);
    assert_eq!(lease["context"]["input"]["n"], 1, "{lease}");

    let done = report(&b, &lease, "complete", json!({ "output": { "rows": 3 } })).await;
    assert_eq!(done.status, 200, "{}", done.body);
    assert_eq!(done.body["status"], "completed");
    let flow = completed(&c, &id).await;
    assert_eq!(flow["phases"][0]["output"]["rows"], 3, "{flow}");

    // A duplicate report is refused on every node, as on one, and changes nothing.
    for node in [&a, &b, &c] {
        let again = report(node, &lease, "complete", json!({ "output": { "rows": 4 } })).await;
        assert_eq!(again.status, 409, "{}", again.body);
        let again = report(node, &lease, "fail", json!({ "error": "late" })).await;
        assert_eq!(again.status, 409, "{}", again.body);
    }
    let flow = get(&a, &format!("/v1/flows/{id}")).await.body;
    assert_eq!(flow["phases"][0]["output"]["rows"], 3, "{flow}");
    assert_eq!(flow["phases"][0]["attempt"], 1, "{flow}");
}

#[actix_web::test]
async fn a_lease_taken_on_one_node_is_kept_and_reported_on_another() {
    let (_db, [a, b, c]) = cluster();
    let id = create(&a).await;
    let lease = lease(&b, "roaming", 2).await;
    assert_eq!(lease["flow_id"], id.as_str());

    // Heartbeats on C keep the lease past its first 2 s.
    for _ in 0..3 {
        let beat = report(&c, &lease, "heartbeat", json!({ "lease_s": 2 })).await;
        assert_eq!(beat.status, 200, "{}", beat.body);
        assert_eq!(beat.body["status"], "leased");
        actix_web::rt::time::sleep(Duration::from_millis(900)).await;
    }
    // Another lease id is refused on any node.
    let forged = json!({ "task_id": lease["task_id"], "lease_id": uuid::Uuid::new_v4() });
    let refused = report(&a, &forged, "complete", json!({})).await;
    assert_eq!(refused.status, 409, "{}", refused.body);

    let done = report(&c, &lease, "complete", json!({ "output": "from c" })).await;
    assert_eq!(done.status, 200, "{}", done.body);
    let flow = completed(&a, &id).await;
    assert_eq!(flow["phases"][0]["output"], "from c");
    assert_eq!(
        flow["phases"][0]["attempt"], 1,
        "the lease never expired: {flow}"
    );
}

#[actix_web::test]
async fn a_lease_that_expires_is_leased_again_on_another_node() {
    let (_db, [a, b, c]) = cluster();
    let id = create(&a).await;
    let first = lease(&b, "gone", 1).await;
    assert_eq!(first["attempt"], 1);

    // The worker on B goes silent; its lease expires and the next attempt goes to C.
    let second = lease(&c, "next", 30).await;
    assert_eq!(second["flow_id"], id.as_str(), "{second}");
    assert_eq!(second["attempt"], 2, "{second}");
    assert_ne!(second["task_id"], first["task_id"]);

    // The silent worker's late result is refused wherever it lands.
    for node in [&a, &b, &c] {
        let late = report(node, &first, "complete", json!({ "output": "late" })).await;
        assert_eq!(late.status, 409, "{}", late.body);
    }
    let done = report(&c, &second, "complete", json!({ "output": "on time" })).await;
    assert_eq!(done.status, 200, "{}", done.body);
    let flow = completed(&b, &id).await;
    assert_eq!(flow["phases"][0]["output"], "on time");
    let failures = get(&a, &format!("/v1/flows/{id}/failures")).await.body;
    let kinds: Vec<&str> = failures["failures"]
        .as_array()
        .expect("failures")
        .iter()
        .filter_map(|f| f["error_kind"].as_str())
        .collect();
    assert_eq!(kinds, ["lease_expired"], "{failures}");
}

#[actix_web::test]
async fn workers_polling_different_nodes_never_hold_the_same_task() {
    let (_db, nodes) = cluster();
    let creates = (0..30).map(|i| create(&nodes[i % 3]));
    let ids = join_all(creates).await;

    // Two workers per node, each completing what it leases until every flow completed.
    let (nodes, ids) = (&nodes, &ids);
    let workers = (0..6).map(|w| {
        let node = &nodes[w % 3];
        async move {
            let mut held = Vec::new();
            let idle_until = Instant::now() + Duration::from_secs(60);
            loop {
                let reply = poll(
                    node,
                    json!({ "worker_id": format!("w{w}"), "wait_ms": 1000, "lease_s": 30 }),
                )
                .await;
                match reply.status {
                    200 => {
                        let lease = reply.body;
                        held.push(lease["task_id"].as_str().expect("task id").to_owned());
                        let done = report(node, &lease, "complete", json!({ "output": w })).await;
                        assert_eq!(done.status, 200, "{}", done.body);
                    }
                    204 if held.len() < 30 && Instant::now() < idle_until => {
                        // Stop once every flow completed (checked from the last node).
                        let mut open = 0;
                        for id in ids {
                            let flow = get(&nodes[2], &format!("/v1/flows/{id}")).await.body;
                            if !common::is_terminal(&flow) {
                                open += 1;
                            }
                        }
                        if open == 0 {
                            return held;
                        }
                    }
                    204 => return held,
                    other => panic!("poll answered {other}: {}", reply.body),
                }
            }
        }
    });
    let held: Vec<Vec<String>> = join_all(workers).await;

    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for task in held.iter().flatten() {
        *seen.entry(task.as_str()).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "tasks leased twice: {twice:?}");
    assert_eq!(seen.len(), 30, "one task per flow, each leased once");
    let busy: HashSet<usize> = held
        .iter()
        .enumerate()
        .filter(|(_, tasks)| !tasks.is_empty())
        .map(|(w, _)| w % 3)
        .collect();
    assert!(busy.len() >= 2, "workers on several nodes got tasks");
    for id in ids {
        let flow = completed(&nodes[0], id).await;
        assert_eq!(flow["phases"][0]["attempt"], 1, "{flow}");
    }
}

#[actix_web::test]
async fn a_busy_worker_on_another_node_holds_the_fallback_back() {
    let (_db, [a, b, _c]) = cluster();
    let first = create_of(&a, "degrades").await;
    let second = create_of(&a, "degrades").await;
    let busy = |lease_s| json!({ "worker_id": "busy", "wait_ms": 3000, "lease_s": lease_s });

    // The only worker polls B, takes one task and is busy past the fallback window: on one
    // node its poll would hold the other task's fallback back, and so it does across nodes.
    let held = post(&b, "/v1/queues/busy/poll", &busy(30)).await;
    assert_eq!(held.status, 200, "{}", held.body);
    actix_web::rt::time::sleep(Duration::from_millis(1600)).await;
    let done = report(&b, &held.body, "complete", json!({ "output": "worker" })).await;
    assert_eq!(done.status, 200, "{}", done.body);
    let next = post(&b, "/v1/queues/busy/poll", &busy(30)).await;
    assert_eq!(
        next.status, 200,
        "the other task was withdrawn: {}",
        next.body
    );
    assert_ne!(next.body["flow_id"], held.body["flow_id"]);
    let done = report(&b, &next.body, "complete", json!({ "output": "worker" })).await;
    assert_eq!(done.status, 200, "{}", done.body);

    for id in [&first, &second] {
        let flow = completed(&a, id).await;
        assert_eq!(flow["phases"][0]["output"], "worker", "{flow}");
    }
}

#[actix_web::test]
async fn a_task_leased_before_its_owner_died_is_completed_after_the_takeover() {
    let (_db, [a, b, c]) = cluster();
    let ids = [create(&a).await, create(&a).await];
    let early = lease(&b, "survivor", 30).await;
    a.kill();

    // One result lands before the takeover is likely done, one well after it.
    let done = report(&b, &early, "complete", json!({ "output": "early" })).await;
    assert_eq!(done.status, 200, "{}", done.body);
    let late = lease(&c, "survivor", 30).await;
    actix_web::rt::time::sleep(Duration::from_millis(2500)).await;
    let done = report(&c, &late, "complete", json!({ "output": "late" })).await;
    assert_eq!(done.status, 200, "{}", done.body);

    let mut outputs = Vec::new();
    for id in &ids {
        let flow = completed(&b, id).await;
        assert_eq!(flow["phases"][0]["attempt"], 1, "{flow}");
        outputs.push(
            flow["phases"][0]["output"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    outputs.sort();
    assert_eq!(outputs, ["early", "late"]);
}
