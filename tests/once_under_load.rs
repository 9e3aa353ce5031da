//! Once, under load: a finished phase never runs again, whatever the stored-flow sweep, a
//! backlog of waiting handlers or a database outage does. Every `command` phase here appends
//! its context to a step log, so each execution of a phase is counted from outside the server.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Backend, TestDatabase, TestServer, config_for, get, post};
use serde_json::{Value, json};

/// A `command` phase that appends its context (one JSON line) to `log` and outputs `{}`.
fn logging_phase(name: &str, log: &Path, extra: &str) -> String {
    format!(
        "[[flow_types.phases]]\nname = \"{name}\"\nhandler = \"command\"\nparams = {{ program = \"awk\", args = [\"-v\", \"steps={}\", \"{{ print >> steps }} END {{ print \\\"{{}}\\\" }}\"] }}\n{extra}",
        log.display()
    )
}

/// Executions per (flow id, phase) in the step log, with the attempts they ran as.
fn executions(log: &Path) -> HashMap<(String, String), Vec<u64>> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut runs: HashMap<(String, String), Vec<u64>> = HashMap::new();
    for line in text.lines() {
        let context: Value = serde_json::from_str(line).expect("a context line");
        let key = (
            context["flow_id"].as_str().expect("flow_id").to_owned(),
            context["phase"].as_str().expect("phase").to_owned(),
        );
        runs.entry(key)
            .or_default()
            .push(context["attempt"].as_u64().expect("attempt"));
    }
    runs
}

/// Waits until every flow in `ids` is terminal; returns them. Tolerates 503s (an outage).
async fn wait_all_terminal(server: &TestServer, ids: &[String], timeout: Duration) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    let mut done = Vec::with_capacity(ids.len());
    for id in ids {
        loop {
            let reply = get(server, &format!("/v1/flows/{id}")).await;
            if reply.status == 200 && common::is_terminal(&reply.body) {
                done.push(reply.body);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "flow {id} not terminal in time: {}",
                reply.body
            );
            actix_web::rt::time::sleep(Duration::from_millis(50)).await;
        }
    }
    done
}

/// One series of `/metrics` (0 when absent); the metrics answer during an outage too.
async fn metric(server: &TestServer, series: &str) -> f64 {
    let mut response = common::client()
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("metrics");
    assert_eq!(response.status().as_u16(), 200, "/metrics failed");
    let body = response.body().await.expect("metrics body");
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Asserts each flow completed and each logged phase of it ran exactly once, as attempt 1.
fn assert_ran_once(flows: &[Value], log: &Path, logged_phases: &[&str]) {
    let runs = executions(log);
    for flow in flows {
        let id = flow["id"].as_str().expect("id");
        assert_eq!(flow["status"], "completed", "flow {id}: {flow}");
        for phase in logged_phases {
            let attempts = runs
                .get(&(id.to_owned(), (*phase).to_owned()))
                .cloned()
                .unwrap_or_default();
            assert_eq!(
                attempts,
                vec![1],
                "flow {id} phase {phase} ran as {attempts:?}"
            );
        }
    }
    assert_eq!(
        runs.len(),
        flows.len() * logged_phases.len(),
        "executions of flows the test did not create"
    );
}

/// A sweep every 200 ms under 100 creates/s for 20 s revives no ended flow and re-runs no
/// succeeded phase.
async fn a_short_sweep_under_load_reruns_nothing(backend: Backend) {
    let db = TestDatabase::new(backend);
    let log = db.dir().join("steps.log");
    let toml = format!(
        "stored_sweep_ms = 200\n[[flow_types]]\nname = \"steps\"\nversion = 1\n{}[[flow_types.phases]]\nname = \"middle\"\nhandler = \"noop\"\n{}",
        logging_phase("first", &log, ""),
        logging_phase("last", &log, "")
    );
    // `stored_sweep_ms` belongs to [health], which config_for opens last.
    let server = TestServer::start(config_for(&db, &toml));
    let started = Instant::now();
    let mut creates = Vec::new();
    for n in 0..2000u32 {
        let due = Duration::from_millis(u64::from(n) * 10);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            actix_web::rt::time::sleep(wait).await;
        }
        let url = server.url("/v1/flows");
        creates.push(actix_web::rt::spawn(async move {
            let mut response = common::client()
                .post(url)
                .send_json(&json!({"flow_type": "steps", "input": {"n": n}}))
                .await
                .expect("create");
            let body: Value = response.json().await.expect("flow JSON");
            (response.status().as_u16(), body)
        }));
    }
    let mut ids = Vec::new();
    for create in creates {
        let (status, body) = create.await.expect("create task");
        assert_eq!(status, 201, "{body}");
        ids.push(body["id"].as_str().expect("id").to_owned());
    }
    let flows = wait_all_terminal(&server, &ids, Duration::from_secs(120)).await;
    // A few sweeps more after the last flow ended: none may wake an ended flow.
    actix_web::rt::time::sleep(Duration::from_millis(1000)).await;
    assert_ran_once(&flows, &log, &["first", "last"]);
    assert_eq!(
        metric(&server, "flowd_live_flow_actors").await,
        0.0,
        "live actors left after the load drained"
    );
}

/// 50 `command` phases sleeping 1 s each, with `timeout_s = 3`, all succeed under a backlog:
/// the deadline counts from when each handler starts, and waiting holds no thread.
async fn a_backlog_of_sleeping_commands_times_nothing_out(backend: Backend) {
    let db = TestDatabase::new(backend);
    let toml = "[[flow_types]]\nname = \"sleeper\"\nversion = 1\n[[flow_types.phases]]\nname = \"nap\"\nhandler = \"command\"\nparams = { program = \"sh\", args = [\"-c\", \"cat > /dev/null; sleep 1; echo '{}'\"] }\ntimeout_s = 3\n";
    let server = TestServer::start(config_for(&db, toml));
    let body = json!({"flow_type": "sleeper"});
    let creates = (0..50).map(|_| post(&server, "/v1/flows", &body));
    let ids: Vec<String> = futures_util::future::join_all(creates)
        .await
        .into_iter()
        .map(|reply| {
            assert_eq!(reply.status, 201, "{}", reply.body);
            reply.body["id"].as_str().expect("id").to_owned()
        })
        .collect();
    for flow in wait_all_terminal(&server, &ids, Duration::from_secs(60)).await {
        assert_eq!(flow["status"], "completed", "{flow}");
        assert_eq!(flow["phases"][0]["attempt"], 1, "{flow}");
        let id = flow["id"].as_str().expect("id");
        let failures = get(&server, &format!("/v1/flows/{id}/failures")).await;
        assert_eq!(failures.body, json!({"failures": []}), "flow {id}");
    }
}

on_both_backends!(
    a_short_sweep_under_load_reruns_nothing,
    a_backlog_of_sleeping_commands_times_nothing_out
);

/// A 10 s PostgreSQL outage (the test database refuses connections and every one it had is
/// killed) costs latency only: readiness says so meanwhile, and no succeeded phase runs again.
#[cfg(flowd_postgres_tests)]
#[actix_web::test]
async fn postgres_a_ten_second_outage_reruns_no_succeeded_phase() {
    let db = TestDatabase::new(Backend::Postgres);
    let name = db
        .postgres_name()
        .expect("a PostgreSQL database")
        .to_owned();
    let log = db.dir().join("steps.log");
    let toml = format!(
        "[[flow_types]]\nname = \"steps\"\nversion = 1\n{}[[flow_types.phases]]\nname = \"wait\"\nhandler = \"sleep\"\nparams = {{ ms = 1500 }}\n{}[[flow_types.phases]]\nname = \"again\"\nhandler = \"sleep\"\nparams = {{ ms = 1500 }}\n{}",
        logging_phase("one", &log, ""),
        logging_phase("two", &log, ""),
        logging_phase("three", &log, "")
    );
    let server = TestServer::start(config_for(&db, &toml));
    let mut ids = Vec::new();
    for n in 0..20 {
        let reply = post(
            &server,
            "/v1/flows",
            &json!({"flow_type": "steps", "input": {"n": n}}),
        )
        .await;
        assert_eq!(reply.status, 201, "{}", reply.body);
        ids.push(reply.body["id"].as_str().expect("id").to_owned());
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
    db.admin(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"));
    db.admin(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
    ));
    let outage = Instant::now();
    let (mut saw_unready, mut saw_waiting) = (false, false);
    while outage.elapsed() < Duration::from_secs(10) {
        saw_unready |= get(&server, "/readyz").await.status == 503;
        saw_waiting |= metric(&server, "flowd_persistence_outage_tries").await > 0.0;
        actix_web::rt::time::sleep(Duration::from_millis(250)).await;
    }
    db.admin(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"));
    assert!(saw_unready, "/readyz never showed the outage");
    assert!(saw_waiting, "/metrics never showed the writer waiting");
    let flows = wait_all_terminal(&server, &ids, Duration::from_secs(60)).await;
    assert_ran_once(&flows, &log, &["one", "two", "three"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&server, "/readyz").await.status != 200 {
        assert!(
            Instant::now() < deadline,
            "/readyz stayed 503 after the outage"
        );
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Connections the server killed are replaced: the next reads and writes succeed at once
/// instead of answering 503.
#[cfg(flowd_postgres_tests)]
#[actix_web::test]
async fn postgres_killed_connections_are_replaced_and_the_request_retried() {
    let db = TestDatabase::new(Backend::Postgres);
    let name = db
        .postgres_name()
        .expect("a PostgreSQL database")
        .to_owned();
    let toml = "[[flow_types]]\nname = \"one\"\nversion = 1\n[[flow_types.phases]]\nname = \"a\"\nhandler = \"noop\"\n";
    let server = TestServer::start(config_for(&db, toml));
    let created = post(&server, "/v1/flows", &json!({"flow_type": "one"})).await;
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.body["id"].as_str().expect("id").to_owned();
    for _ in 0..3 {
        db.admin(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
        ));
        for _ in 0..4 {
            let read = get(&server, &format!("/v1/flows/{id}")).await;
            assert_eq!(read.status, 200, "{}", read.body);
        }
        let another = post(&server, "/v1/flows", &json!({"flow_type": "one"})).await;
        assert_eq!(another.status, 201, "{}", another.body);
    }
}
