//! The dashboard's server side through the real binary: `/ui` and its assets are served with
//! no key, `/` redirects there; flows carry a `status_reason` while not terminal; the counts
//! and queues the page reads are scoped to the caller's tenant.

mod common;

use std::time::Duration;

use common::{
    Backend, TestDatabase, TestServer, config_for, get, is_terminal, post, wait_for_flow,
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

[[flow_types]]
name = "slow"
version = 1
[[flow_types.phases]]
name = "wait"
handler = "sleep"
params = { ms = 60000 }

[[flow_types]]
name = "fanout"
version = 1
[[flow_types.phases]]
name = "spread"
handler = "child_flows"
params = { flow_type = "slow", count = 3 }

[[flow_types]]
name = "flaky"
version = 1
[[flow_types.phases]]
name = "shaky"
handler = "fail"
params = { times = 1 }
retries = 1
retry_backoff_ms = 60000

[[flow_types]]
name = "hiccup"
version = 1
[[flow_types.phases]]
name = "bump"
handler = "fail"
params = { times = 1 }
retries = 1
retry_backoff_ms = 300
"#;

const AUTH: &str = r#"
[auth]
enabled = true
keys = [
  { key = "key-a", client_account_id = "a", engagement_id = "e" },
  { key = "key-b", client_account_id = "b", engagement_id = "e" },
]
"#;

async fn get_with(server: &TestServer, path: &str, key: Option<&str>) -> (u16, String, String) {
    // Redirects are not followed: `/` must answer with one.
    let client = awc::Client::builder()
        .disable_redirects()
        .timeout(Duration::from_secs(30))
        .finish();
    let mut request = client.get(server.url(path));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let mut response = request.send().await.expect("GET");
    let status = response.status().as_u16();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let content_type = header("content-type");
    let location = header("location");
    let body = response.body().await.expect("body");
    let body = String::from_utf8_lossy(&body).into_owned();
    (
        status,
        content_type,
        if location.is_empty() { body } else { location },
    )
}

async fn create(server: &TestServer, flow_type: &str, key: Option<&str>) -> Value {
    let mut request = common::client().post(server.url("/v1/flows"));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let mut response = request
        .send_json(&json!({ "flow_type": flow_type }))
        .await
        .expect("POST");
    assert_eq!(response.status().as_u16(), 201);
    response.json().await.expect("flow JSON")
}

async fn the_dashboard_is_served_without_a_key_and_root_redirects(backend: Backend) {
    let db = TestDatabase::new(backend);
    let server = TestServer::start(config_for(&db, &format!("{TYPES}{AUTH}")));
    let (status, _, location) = get_with(&server, "/", None).await;
    assert_eq!((status, location.as_str()), (302, "/ui"));
    for path in ["/ui", "/ui/", "/ui/flows/0193", "/ui/types", "/ui/queues"] {
        let (status, content_type, body) = get_with(&server, path, None).await;
        assert_eq!(status, 200, "{path}");
        assert!(
            content_type.starts_with("text/html"),
            "{path}: {content_type}"
        );
        assert!(body.contains("/ui/assets/app.js"), "{path}");
    }
    let (status, content_type, body) = get_with(&server, "/ui/assets/app.js", None).await;
    assert_eq!(status, 200);
    assert!(content_type.starts_with("text/javascript"));
    assert!(body.contains("sessionStorage"));
    let (status, content_type, _) = get_with(&server, "/ui/assets/style.css", None).await;
    assert_eq!((status, content_type.starts_with("text/css")), (200, true));
    // The assets hold no data; the API they call still needs a key.
    let (status, _, _) = get_with(&server, "/v1/flows/counts", None).await;
    assert_eq!(status, 401);
}

async fn counts_and_queues_are_the_callers_own(backend: Backend) {
    let db = TestDatabase::new(backend);
    let server = TestServer::start(config_for(&db, &format!("{TYPES}{AUTH}")));
    create(&server, "crewed", Some("key-a")).await;
    create(&server, "crewed", Some("key-a")).await;
    let (status, _, body) = get_with(&server, "/v1/flows/counts", Some("key-a")).await;
    assert_eq!(status, 200);
    let counts: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(counts["total"], 2, "{counts}");
    assert_eq!(counts["counts"]["running"], 2, "{counts}");
    assert_eq!(counts["counts"]["completed"], 0, "{counts}");
    assert!(counts["stream_after"].as_i64().unwrap() > 0);
    let (_, _, body) = get_with(&server, "/v1/flows/counts", Some("key-b")).await;
    let counts: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(counts["total"], 0, "{counts}");

    // Both tasks reach the queue; tenant B sees no queue of A's.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let queues = loop {
        let (_, _, body) = get_with(&server, "/v1/queues", Some("key-a")).await;
        let queues: Value = serde_json::from_str(&body).unwrap();
        if queues["queues"][0]["queued"] == 2 || std::time::Instant::now() > deadline {
            break queues;
        }
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(queues["queues"][0]["queue"], "crews", "{queues}");
    assert_eq!(queues["queues"][0]["queued"], 2, "{queues}");
    assert!(queues["queues"][0]["oldest_queued_at"].is_string());
    let (_, _, body) = get_with(&server, "/v1/queues", Some("key-b")).await;
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"queues": []})
    );
    let (status, _, body) = get_with(&server, "/v1/health", Some("key-b")).await;
    assert_eq!(status, 200);
    let health: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["ready"], true);
    assert!(
        health["live_flow_actors"].is_null(),
        "operator figure: {health}"
    );
}

async fn every_non_terminal_flow_says_why_it_is_not_progressing(backend: Backend) {
    let db = TestDatabase::new(backend);
    let server = TestServer::start(config_for(&db, TYPES));

    // An external attempt nobody polls: waiting for a worker on its queue.
    let crewed = post(&server, "/v1/flows", &json!({"flow_type": "crewed"})).await;
    let id = crewed.body["id"].as_str().unwrap().to_owned();
    let flow = wait_for_flow(&server, &id, Duration::from_secs(10), |f| {
        f["status_reason"]["kind"] == "waiting_for_worker"
    })
    .await;
    assert_eq!(flow["status_reason"]["queue"], "crews", "{flow}");
    assert_eq!(flow["status_reason"]["phase"], "crew");
    assert!(flow["status_reason"]["since"].is_string());
    // The listing carries the same reason.
    let listed = get(&server, "/v1/flows?flow_type=crewed").await;
    assert_eq!(
        listed.body["flows"][0]["status_reason"], flow["status_reason"],
        "{}",
        listed.body
    );

    // A running sleep, then paused.
    let slow = post(&server, "/v1/flows", &json!({"flow_type": "slow"})).await;
    let id = slow.body["id"].as_str().unwrap().to_owned();
    let flow = wait_for_flow(&server, &id, Duration::from_secs(10), |f| {
        f["status_reason"]["kind"] == "running"
    })
    .await;
    assert_eq!(flow["status_reason"]["phase"], "wait");
    assert_eq!(flow["status_reason"]["handler"], "sleep");
    let paused = post(&server, &format!("/v1/flows/{id}/pause"), &json!({})).await;
    assert_eq!(paused.status, 200, "{}", paused.body);
    let flow = wait_for_flow(&server, &id, Duration::from_secs(10), |f| {
        f["status"] == "paused"
    })
    .await;
    assert_eq!(flow["status_reason"]["kind"], "paused", "{flow}");

    // A failed attempt waiting out its backoff, after a handler error.
    let flaky = post(&server, "/v1/flows", &json!({"flow_type": "flaky"})).await;
    let id = flaky.body["id"].as_str().unwrap().to_owned();
    let flow = wait_for_flow(&server, &id, Duration::from_secs(10), |f| {
        f["status_reason"]["kind"] == "retry_backoff"
    })
    .await;
    let reason = &flow["status_reason"];
    assert_eq!(reason["phase"], "shaky", "{flow}");
    assert_eq!(reason["attempt"], 1);
    assert!(reason["after"].is_string(), "{flow}");
    assert!(reason["next_attempt_at"].is_string(), "{flow}");

    // A fan-out counts its children (one flow's read; not a listing's).
    let fanout = post(&server, "/v1/flows", &json!({"flow_type": "fanout"})).await;
    let master = fanout.body["id"].as_str().unwrap().to_owned();
    let flow = wait_for_flow(&server, &master, Duration::from_secs(10), |f| {
        f["status_reason"]["kind"] == "waiting_for_children" && f["status_reason"]["total"] == 3
    })
    .await;
    assert_eq!(flow["status_reason"]["done"], 0, "{flow}");
    assert_eq!(flow["status_reason"]["phase"], "spread");

    // Terminal flows have none.
    let cancelled = post(&server, &format!("/v1/flows/{id}/cancel"), &json!({})).await;
    assert_eq!(cancelled.status, 200);
    let flow = wait_for_flow(&server, &id, Duration::from_secs(10), is_terminal).await;
    assert!(flow["status_reason"].is_null(), "{flow}");
}

async fn events(server: &TestServer, id: &str) -> Vec<Value> {
    let reply = get(server, &format!("/v1/flows/{id}/events")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body["events"].as_array().expect("events").clone()
}

async fn events_carry_the_reason_and_a_missed_ping_restart_is_one(backend: Backend) {
    let db = TestDatabase::new(backend);
    let config = config_for(&db, &format!("{TYPES}[faults]\nenabled = true\n"));
    let server = TestServer::start_with_env(config, &[("FLOWD_HEALTH__PING_TIMEOUT_MS", "400")]);

    // Every event of a transition carries the reason it left the flow with: the create of an
    // external flow leaves it waiting for a worker.
    let crewed = create(&server, "crewed", None).await;
    let crewed = crewed["id"].as_str().unwrap().to_owned();
    let history = events(&server, &crewed).await;
    let kinds: Vec<&str> = history
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["flow_initialized", "flow_started", "phase_started"]);
    for event in &history {
        assert_eq!(
            event["status_reason"]["kind"], "waiting_for_worker",
            "{event}"
        );
        assert_eq!(event["status_reason"]["queue"], "crews", "{event}");
    }

    // A paused flow's pause event says so; a terminal event carries none.
    let slow = create(&server, "slow", None).await;
    let slow = slow["id"].as_str().unwrap().to_owned();
    wait_for_flow(&server, &slow, Duration::from_secs(10), |f| {
        f["status"] == "running"
    })
    .await;
    assert_eq!(
        post(&server, &format!("/v1/flows/{slow}/pause"), &json!({}))
            .await
            .status,
        200
    );
    let paused = events(&server, &slow).await;
    let last = paused.last().unwrap();
    assert_eq!(
        (
            last["kind"].as_str(),
            last["status_reason"]["kind"].as_str()
        ),
        (Some("flow_paused"), Some("paused")),
        "{last}"
    );
    assert_eq!(
        post(&server, &format!("/v1/flows/{slow}/cancel"), &json!({}))
            .await
            .status,
        200
    );
    let cancelled = events(&server, &slow).await;
    assert!(cancelled.last().unwrap().get("status_reason").is_none());

    // A frozen actor misses its ping: the health actor restarts it, and the restart is the
    // flow's reason, journaled and on its event history.
    let frozen = create(&server, "slow", None).await;
    let frozen = frozen["id"].as_str().unwrap().to_owned();
    wait_for_flow(&server, &frozen, Duration::from_secs(10), |f| {
        f["status_reason"]["kind"] == "running"
    })
    .await;
    let reply = post(
        &server,
        &format!("/v1/flows/{frozen}/faults/freeze"),
        &json!({ "ms": 3000, "times": 1 }),
    )
    .await;
    assert_eq!(reply.status, 202);
    let flow = wait_for_flow(&server, &frozen, Duration::from_secs(20), |f| {
        f["status_reason"]["kind"] == "restarted_by_health"
    })
    .await;
    let reason = &flow["status_reason"];
    assert_eq!(reason["phase"], "wait", "{flow}");
    assert!(
        reason["detail"].as_str().unwrap().contains("ping"),
        "{flow}"
    );
    assert_eq!(flow["status"], "running");
    let journal = get(&server, &format!("/v1/flows/{frozen}/failures"))
        .await
        .body;
    let row = &journal["failures"].as_array().unwrap()[0];
    assert_eq!(row["error_kind"], "missed_ping", "{journal}");
    assert_eq!(row["phase"], "wait");
    let history = events(&server, &frozen).await;
    let restarted = history
        .iter()
        .find(|e| e["kind"] == "flow_restarted")
        .unwrap_or_else(|| panic!("no flow_restarted event: {history:?}"));
    assert_eq!(restarted["status_reason"]["kind"], "restarted_by_health");
    assert_eq!(restarted["status"], "running");
    let seqs: Vec<u64> = history.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());

    // The reasons are stored with the events: a new server reads them back from the database.
    let config = server.kill();
    let server = TestServer::start(config);
    let history = events(&server, &crewed).await;
    assert_eq!(history.len(), 3);
    assert!(
        history
            .iter()
            .all(|e| e["status_reason"]["kind"] == "waiting_for_worker"),
        "{history:?}"
    );
    let history = events(&server, &frozen).await;
    assert!(
        history.iter().any(|e| e["kind"] == "flow_restarted"
            && e["status_reason"]["kind"] == "restarted_by_health"),
        "{history:?}"
    );
}

fn cli(server: &TestServer, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_flowd"))
        .args(args)
        .args(["--server", &server.base])
        .env_remove("FLOWD_API_KEY")
        .output()
        .expect("flowd runs")
}

async fn the_cli_says_why_in_show_and_watch(backend: Backend) {
    let db = TestDatabase::new(backend);
    let server = TestServer::start(config_for(&db, TYPES));
    let crewed = create(&server, "crewed", None).await;
    let crewed = crewed["id"].as_str().unwrap().to_owned();
    wait_for_flow(&server, &crewed, Duration::from_secs(10), |f| {
        f["status_reason"]["kind"] == "waiting_for_worker"
    })
    .await;
    let shown = cli(&server, &["flows", "show", &crewed]);
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(
        text.contains("why: waiting for a worker on queue `crews` since "),
        "{text}"
    );

    // `watch` prints the reason each time the flow's events change it.
    let hiccup = create(&server, "hiccup", None).await;
    let hiccup = hiccup["id"].as_str().unwrap().to_owned();
    let watched = cli(&server, &["flows", "watch", &hiccup]);
    assert_eq!(watched.status.code(), Some(0));
    let text = String::from_utf8_lossy(&watched.stdout);
    let whys: Vec<&str> = text
        .lines()
        .filter_map(|line| line.trim().strip_prefix("why: "))
        .collect();
    assert!(
        whys.iter()
            .any(|w| w.starts_with("running bump (fail), attempt 1")),
        "{text}"
    );
    assert!(
        whys.iter()
            .any(|w| w.starts_with("retrying bump at ") && w.contains("(attempt 1 failed)")),
        "{text}"
    );
    assert!(
        whys.windows(2).all(|pair| pair[0] != pair[1]),
        "printed only when it changes: {text}"
    );
}

on_both_backends!(
    the_cli_says_why_in_show_and_watch,
    the_dashboard_is_served_without_a_key_and_root_redirects,
    counts_and_queues_are_the_callers_own,
    every_non_terminal_flow_says_why_it_is_not_progressing,
    events_carry_the_reason_and_a_missed_ping_restart_is_one,
);
