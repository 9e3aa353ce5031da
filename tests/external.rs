//! `external` phases and the worker protocol through the real server: poll, heartbeat,
//! complete, fail; expired leases, stale completions, fallbacks, restarts, and the Python worker.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{
    Backend, TestDatabase, TestServer, config_for, get, is_terminal, post, post_raw, wait_for_flow,
};
use serde_json::{Value, json};

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
params = { queue = "nobody-polls-this" }
fallback = "sleep"
fallback_params = { ms = 10 }
fallback_after_s = 1

[[flow_types]]
name = "no_program"
version = 1
[[flow_types.phases]]
name = "crew"
handler = "command"
params = { program = "flowd-no-such-crew-runner" }
fallback = "noop"
"#;

async fn create(server: &TestServer, flow_type: &str, input: Value) -> String {
    let reply = post(
        server,
        "/v1/flows",
        &json!({ "flow_type": flow_type, "input": input }),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    reply.body["id"].as_str().expect("flow id").to_owned()
}

async fn poll(server: &TestServer, queue: &str, body: Value) -> common::Reply {
    post(server, &format!("/v1/queues/{queue}/poll"), &body).await
}

async fn failures(server: &TestServer, id: &str) -> Vec<Value> {
    let reply = get(server, &format!("/v1/flows/{id}/failures")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body["failures"].as_array().expect("failures").clone()
}

/// Waits until `/metrics` has the exact line `line`.
async fn wait_for_metric(server: &TestServer, line: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut response = common::client()
            .get(server.url("/metrics"))
            .send()
            .await
            .expect("metrics");
        let body = response.body().await.expect("metrics body");
        if String::from_utf8_lossy(&body).lines().any(|l| l == line) {
            return;
        }
        assert!(Instant::now() < deadline, "no `{line}` in /metrics");
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
}

fn is_problem(reply: &common::Reply, status: u16) {
    assert_eq!(reply.status, status, "{}", reply.body);
    assert_eq!(reply.content_type, "application/problem+json");
    assert!(reply.body["type"].is_string(), "{}", reply.body);
}

async fn a_worker_leases_heartbeats_and_completes_a_task(backend: Backend) {
    let db = TestDatabase::new(backend);
    let server = TestServer::start(config_for(&db, TYPES));
    let empty = poll(&server, "crews", json!({ "wait_ms": 100 })).await;
    assert_eq!(
        empty.status, 204,
        "an empty queue answers 204 after wait_ms"
    );

    let id = create(&server, "crewed", json!({ "platform": "aws" })).await;
    wait_for_metric(&server, "flowd_tasks_queued 1").await;
    let leased = poll(
        &server,
        "crews",
        json!({ "worker_id": "w1", "wait_ms": 5000 }),
    )
    .await;
    assert_eq!(leased.status, 200, "{}", leased.body);
    let task = leased.body;
    assert_eq!(task["flow_id"], id.as_str());
    assert_eq!(task["phase"], "crew");
    assert_eq!(task["attempt"], 1);
    assert_eq!(task["context"]["input"], json!({ "platform": "aws" }));
    assert_eq!(task["context"]["idempotency_key"], format!("{id}:crew:1"));
    let task_id = task["task_id"].as_str().unwrap();
    let lease_id = task["lease_id"].as_str().unwrap();

    let beat = post(
        &server,
        &format!("/v1/tasks/{task_id}/heartbeat"),
        &json!({ "lease_id": lease_id, "lease_s": 60 }),
    )
    .await;
    assert_eq!(beat.status, 200, "{}", beat.body);
    assert_eq!(beat.body["status"], "leased");
    wait_for_metric(&server, "flowd_tasks_leased 1").await;

    let done = post(
        &server,
        &format!("/v1/tasks/{task_id}/complete"),
        &json!({ "lease_id": lease_id, "output": { "answer": 42 } }),
    )
    .await;
    assert_eq!(done.status, 200, "{}", done.body);
    assert_eq!(done.body["status"], "completed");

    let flow = wait_for_flow(&server, &id, Duration::from_secs(10), is_terminal).await;
    assert_eq!(flow["status"], "completed", "{flow}");
    assert_eq!(flow["phases"][0]["output"], json!({ "answer": 42 }));

    let again = post(
        &server,
        &format!("/v1/tasks/{task_id}/complete"),
        &json!({ "lease_id": lease_id, "output": {} }),
    )
    .await;
    is_problem(&again, 409);
}

async fn a_dead_workers_lease_expires_and_another_worker_finishes(backend: Backend) {
    let db = TestDatabase::new(backend);
    let server = TestServer::start(config_for(&db, TYPES));
    let id = create(&server, "crewed", json!({})).await;

    // Worker A takes the task with a 1 s lease and dies without a word.
    let a = poll(
        &server,
        "crews",
        json!({ "worker_id": "a", "wait_ms": 5000, "lease_s": 1 }),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let a_task = a.body["task_id"].as_str().unwrap().to_owned();
    let a_lease = a.body["lease_id"].as_str().unwrap().to_owned();

    // Worker B gets the phase's next attempt once A's lease has expired.
    let b = poll(
        &server,
        "crews",
        json!({ "worker_id": "b", "wait_ms": 10000 }),
    )
    .await;
    assert_eq!(b.status, 200, "{}", b.body);
    assert_eq!(b.body["flow_id"], id.as_str());
    assert_eq!(b.body["attempt"], 2);
    assert_ne!(b.body["task_id"], a_task.as_str());

    // A wakes up: its completion is stale.
    let stale = post(
        &server,
        &format!("/v1/tasks/{a_task}/complete"),
        &json!({ "lease_id": a_lease, "output": { "from": "a" } }),
    )
    .await;
    is_problem(&stale, 409);

    let b_task = b.body["task_id"].as_str().unwrap();
    let wrong_lease = post(
        &server,
        &format!("/v1/tasks/{b_task}/complete"),
        &json!({ "lease_id": a_lease, "output": {} }),
    )
    .await;
    is_problem(&wrong_lease, 409);
    let done = post(
        &server,
        &format!("/v1/tasks/{b_task}/complete"),
        &json!({ "lease_id": b.body["lease_id"], "output": { "from": "b" } }),
    )
    .await;
    assert_eq!(done.status, 200, "{}", done.body);

    let flow = wait_for_flow(&server, &id, Duration::from_secs(10), is_terminal).await;
    assert_eq!(flow["status"], "completed", "{flow}");
    assert_eq!(flow["phases"][0]["output"], json!({ "from": "b" }));
    assert_eq!(flow["phases"][0]["attempt"], 2);
    let journal = failures(&server, &id).await;
    assert_eq!(journal.len(), 1, "{journal:?}");
    assert_eq!(journal[0]["error_kind"], "lease_expired");
    assert_eq!(journal[0]["attempt"], 1);
}

async fn a_worker_failure_is_a_failed_attempt(backend: Backend) {
    let db = TestDatabase::new(backend);
    let server = TestServer::start(config_for(&db, TYPES));
    let id = create(&server, "crewed", json!({})).await;
    let task = poll(&server, "crews", json!({ "wait_ms": 5000 }))
        .await
        .body;
    let reply = post(
        &server,
        &format!("/v1/tasks/{}/fail", task["task_id"].as_str().unwrap()),
        &json!({ "lease_id": task["lease_id"], "error": "the crew gave up", "retryable": false }),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let flow = wait_for_flow(&server, &id, Duration::from_secs(10), is_terminal).await;
    assert_eq!(flow["status"], "failed", "not retryable: {flow}");
    let journal = failures(&server, &id).await;
    assert_eq!(journal[0]["error_kind"], "worker_failed");
    assert_eq!(journal[0]["message"], "the crew gave up");
}

async fn bad_worker_requests_are_refused(backend: Backend) {
    let db = TestDatabase::new(backend);
    let server = TestServer::start(config_for(&db, TYPES));
    is_problem(&poll(&server, "bad!queue", json!({})).await, 400);
    is_problem(
        &poll(&server, "crews", json!({ "wait_ms": 600000 })).await,
        422,
    );
    is_problem(&poll(&server, "crews", json!({ "lease_s": 0 })).await, 422);
    is_problem(&poll(&server, "crews", json!({ "surprise": 1 })).await, 422);
    is_problem(
        &post_raw(
            &server,
            "/v1/queues/crews/poll",
            "application/json",
            b"{".to_vec(),
        )
        .await,
        400,
    );
    let unknown = "0192f000-0000-7000-8000-000000000000";
    let lease = "0192f000-0000-4000-8000-000000000000";
    is_problem(
        &post(
            &server,
            &format!("/v1/tasks/{unknown}/complete"),
            &json!({ "lease_id": lease, "output": {} }),
        )
        .await,
        404,
    );
    is_problem(
        &post(
            &server,
            "/v1/tasks/not-a-uuid/heartbeat",
            &json!({ "lease_id": lease }),
        )
        .await,
        400,
    );
    is_problem(
        &post(
            &server,
            &format!("/v1/tasks/{unknown}/complete"),
            &json!({ "output": {} }),
        )
        .await,
        422,
    );
    // Nothing above queued, leased or changed anything: the next flow's task is attempt 1.
    let id = create(&server, "crewed", json!({})).await;
    let task = poll(&server, "crews", json!({ "wait_ms": 5000 })).await;
    assert_eq!(task.status, 200);
    assert_eq!(task.body["flow_id"], id.as_str());
    assert_eq!(task.body["attempt"], 1);
}

async fn with_no_worker_the_phase_falls_back(backend: Backend) {
    let db = TestDatabase::new(backend);
    let server = TestServer::start(config_for(&db, TYPES));
    let id = create(&server, "degrades", json!({})).await;
    let flow = wait_for_flow(&server, &id, Duration::from_secs(15), is_terminal).await;
    assert_eq!(flow["status"], "completed", "{flow}");
    assert_eq!(
        flow["phases"][0]["attempt"], 1,
        "the same attempt, run by the fallback"
    );

    let journal = failures(&server, &id).await;
    assert_eq!(journal.len(), 1, "{journal:?}");
    assert_eq!(journal[0]["error_kind"], "handler_unavailable");
    assert_eq!(journal[0]["diagnostic"]["fallback"], "sleep");
    assert_eq!(journal[0]["diagnostic"]["primary"], "external");

    let events = get(&server, &format!("/v1/flows/{id}/events")).await.body["events"]
        .as_array()
        .unwrap()
        .clone();
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["kind"].as_str()).collect();
    assert!(kinds.contains(&"phase_fallback"), "{kinds:?}");
    // A missing program degrades the same way, at once.
    let id = create(&server, "no_program", json!({})).await;
    let flow = wait_for_flow(&server, &id, Duration::from_secs(15), is_terminal).await;
    assert_eq!(flow["status"], "completed", "{flow}");
    let journal = failures(&server, &id).await;
    assert_eq!(journal.len(), 1, "{journal:?}");
    assert_eq!(journal[0]["error_kind"], "handler_unavailable");
    assert_eq!(journal[0]["diagnostic"]["primary"], "command");
    // The withdrawn task is not handed to a late worker.
    assert_eq!(
        poll(&server, "nobody-polls-this", json!({ "wait_ms": 200 }))
            .await
            .status,
        204
    );
}

async fn tasks_and_leases_survive_a_restart(backend: Backend) {
    let db = TestDatabase::new(backend);
    let server = TestServer::start(config_for(&db, TYPES));
    let leased_flow = create(&server, "crewed", json!({ "n": 1 })).await;
    let lease = poll(&server, "crews", json!({ "wait_ms": 5000, "lease_s": 120 })).await;
    assert_eq!(lease.status, 200);
    assert_eq!(lease.body["flow_id"], leased_flow.as_str());
    let queued_flow = create(&server, "crewed", json!({ "n": 2 })).await;
    // Crash before any worker sees the second task: queued or not yet, it must come back.
    let config = server.kill();

    let server = TestServer::start(config);
    // The worker that held a lease before the crash completes under it.
    let done = post(
        &server,
        &format!(
            "/v1/tasks/{}/complete",
            lease.body["task_id"].as_str().unwrap()
        ),
        &json!({ "lease_id": lease.body["lease_id"], "output": { "survived": true } }),
    )
    .await;
    assert_eq!(done.status, 200, "{}", done.body);
    // The queued task is still there.
    let queued = poll(&server, "crews", json!({ "wait_ms": 5000 })).await;
    assert_eq!(queued.status, 200);
    assert_eq!(queued.body["flow_id"], queued_flow.as_str());
    assert_eq!(queued.body["attempt"], 1);
    let done = post(
        &server,
        &format!(
            "/v1/tasks/{}/complete",
            queued.body["task_id"].as_str().unwrap()
        ),
        &json!({ "lease_id": queued.body["lease_id"], "output": {} }),
    )
    .await;
    assert_eq!(done.status, 200, "{}", done.body);

    for id in [&leased_flow, &queued_flow] {
        let flow = wait_for_flow(&server, id, Duration::from_secs(10), is_terminal).await;
        assert_eq!(flow["status"], "completed", "{flow}");
        assert_eq!(flow["phases"][0]["attempt"], 1);
    }
    let flow = get(&server, &format!("/v1/flows/{leased_flow}")).await.body;
    assert_eq!(flow["phases"][0]["output"], json!({ "survived": true }));
}

async fn the_python_crew_worker_runs_tasks(backend: Backend) {
    let db = TestDatabase::new(backend);
    let server = TestServer::start(config_for(&db, TYPES));
    let ids = [
        create(&server, "crewed", json!({ "topic": "cloud" })).await,
        create(&server, "crewed", json!({ "topic": "data" })).await,
    ];
    let worker = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/workers/crew_worker.py");
    let started = Instant::now();
    let status = Command::new("python3")
        .arg(&worker)
        .args([
            "--url",
            &server.base,
            "--queue",
            "crews",
            "--max-tasks",
            "2",
        ])
        .args(["--work-seconds", "1.5", "--lease-seconds", "1"])
        .status()
        .expect("python3 runs the worker");
    assert!(status.success(), "worker exited with {status}");
    assert!(started.elapsed() >= Duration::from_secs(3));
    for id in &ids {
        let flow = wait_for_flow(&server, id, Duration::from_secs(10), is_terminal).await;
        assert_eq!(flow["status"], "completed", "{flow}");
        assert_eq!(
            flow["phases"][0]["attempt"], 1,
            "heartbeats kept the 1 s lease alive through 1.5 s of work"
        );
        assert_eq!(flow["phases"][0]["output"]["worker"], "crew_worker.py");
        assert_eq!(flow["phases"][0]["output"]["input"], flow["input"]);
    }
}

on_both_backends!(
    a_worker_leases_heartbeats_and_completes_a_task,
    a_dead_workers_lease_expires_and_another_worker_finishes,
    a_worker_failure_is_a_failed_attempt,
    bad_worker_requests_are_refused,
    with_no_worker_the_phase_falls_back,
    tasks_and_leases_survive_a_restart,
    the_python_crew_worker_runs_tasks,
);
