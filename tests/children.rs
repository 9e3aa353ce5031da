//! Master and child flows through the real server: fan-out and fan-in, progress, policies,
//! cancel cascades, the master's stream, and a crash in the middle of a fan-out.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{
    Backend, EventSocket, TestDatabase, TestServer, config_for, get, is_terminal, post,
    wait_for_flow,
};
use serde_json::{Value, json};

const CHILDREN: usize = 20;

/// Succeeds with `{}` unless the flow's input says `fail`.
const MAYBE_FAIL: &str = r#"import json, sys; ctx = json.load(sys.stdin); sys.exit(2) if ctx["input"].get("fail") else print(json.dumps({"platform": ctx["input"].get("platform")}))"#;

fn types(child_sleep_ms: u64) -> String {
    format!(
        r#"
[[flow_types]]
name = "platform"
version = 1
[[flow_types.phases]]
name = "collect"
handler = "sleep"
params = {{ ms = {child_sleep_ms} }}
[[flow_types.phases]]
name = "analyze"
handler = "sleep"
params = {{ ms = {child_sleep_ms} }}
[[flow_types.phases]]
name = "summarize"
handler = "noop"

[[flow_types]]
name = "collection"
version = 1
[[flow_types.phases]]
name = "plan"
handler = "noop"
[[flow_types.phases]]
name = "fan_out"
handler = "child_flows"
params = {{ flow_type = "platform", count = {CHILDREN} }}
[[flow_types.phases]]
name = "synthesis"
handler = "noop"

[[flow_types]]
name = "judged"
version = 1
[[flow_types.phases]]
name = "crew"
handler = "command"
params = {{ program = "python3", args = ["-c", '{MAYBE_FAIL}'] }}

[[flow_types]]
name = "strict"
version = 1
[[flow_types.phases]]
name = "fan_out"
handler = "child_flows"
params = {{ flow_type = "judged", inputs = [{{ platform = "a" }}, {{ platform = "b" }}, {{ platform = "c", fail = true }}] }}

[[flow_types]]
name = "lenient"
version = 1
[[flow_types.phases]]
name = "fan_out"
handler = "child_flows"
params = {{ flow_type = "judged", policy = "any", inputs = [{{ platform = "a" }}, {{ platform = "b" }}, {{ platform = "c", fail = true }}] }}
"#
    )
}

async fn create(server: &TestServer, flow_type: &str) -> String {
    let reply = post(server, "/v1/flows", &json!({ "flow_type": flow_type })).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    reply.body["id"].as_str().expect("flow id").to_owned()
}

async fn children_of(server: &TestServer, id: &str) -> Vec<Value> {
    let reply = get(server, &format!("/v1/flows?parent_flow_id={id}&limit=500")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body["flows"].as_array().expect("flows").clone()
}

async fn a_master_completes_only_after_every_child(backend: Backend) {
    let db = TestDatabase::new(backend);
    let server = TestServer::start(config_for(&db, &types(300)));
    let master = create(&server, "collection").await;
    let mut stream = EventSocket::connect(&server, &format!("/v1/flows/{master}/ws"), None).await;

    let mut events = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let event = stream
            .next_event(Duration::from_secs(30))
            .await
            .expect("the master's stream goes on until it completes");
        let done = event["flow_id"] == master.as_str() && event["kind"] == "flow_completed";
        events.push(event);
        if done {
            break;
        }
        assert!(Instant::now() < deadline, "the tree did not finish");
    }

    let flow = wait_for_flow(&server, &master, Duration::from_secs(10), is_terminal).await;
    assert_eq!(flow["status"], "completed", "{flow}");
    assert_eq!(flow["progress_percentage"], 100.0);
    let output = &flow["phases"][1]["output"];
    assert_eq!(output["completed"], CHILDREN, "{output}");
    assert_eq!(output["children"].as_array().map(Vec::len), Some(CHILDREN));

    let children = children_of(&server, &master).await;
    assert_eq!(children.len(), CHILDREN);
    for child in &children {
        assert_eq!(child["status"], "completed", "{child}");
        assert_eq!(child["parent_flow_id"], master.as_str());
        assert_eq!(child["master_flow_id"], master.as_str());
    }

    // The master's stream carries its children's events, in commit order.
    let child_ids: HashSet<&str> = children.iter().filter_map(|c| c["id"].as_str()).collect();
    let last_child_done = events
        .iter()
        .rposition(|e| {
            e["kind"] == "flow_completed" && child_ids.contains(e["flow_id"].as_str().unwrap_or(""))
        })
        .expect("children's completions are on the master's stream");
    let child_completions = events
        .iter()
        .filter(|e| e["kind"] == "flow_completed" && e["flow_id"] != master.as_str())
        .count();
    assert_eq!(child_completions, CHILDREN);
    assert!(
        events
            .iter()
            .all(|e| e["master_flow_id"] == master.as_str())
    );
    let ids: Vec<i64> = events.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids rise: {ids:?}");

    // The master's progress moves with its children, never back, and is 100 only at the end.
    let master_events: Vec<(usize, &Value)> = events
        .iter()
        .enumerate()
        .filter(|(_, e)| e["flow_id"] == master.as_str())
        .collect();
    let progress: Vec<f64> = master_events
        .iter()
        .map(|(_, e)| e["progress_percentage"].as_f64().unwrap())
        .collect();
    assert!(progress.windows(2).all(|w| w[0] <= w[1]), "{progress:?}");
    let within_fan_out = master_events
        .iter()
        .filter(|(_, e)| e["kind"] == "phase_progress")
        .filter(|(_, e)| {
            let p = e["progress_percentage"].as_f64().unwrap();
            p > 100.0 / 3.0 && p < 200.0 / 3.0
        })
        .count();
    assert!(
        within_fan_out > 0,
        "progress moved within the fan-out phase: {progress:?}"
    );
    let first_hundred = master_events
        .iter()
        .find(|(_, e)| e["progress_percentage"].as_f64() == Some(100.0))
        .map(|(i, _)| *i)
        .expect("the master reached 100");
    assert!(
        first_hundred > last_child_done,
        "100 only after every child completed"
    );
}

async fn a_failing_child_fails_the_master_under_all(backend: Backend) {
    let db = TestDatabase::new(backend);
    let server = TestServer::start(config_for(&db, &types(10)));
    let strict = create(&server, "strict").await;
    let lenient = create(&server, "lenient").await;

    let flow = wait_for_flow(&server, &strict, Duration::from_secs(30), is_terminal).await;
    assert_eq!(flow["status"], "failed", "{flow}");
    let failures = get(&server, &format!("/v1/flows/{strict}/failures")).await;
    let kinds: Vec<&str> = failures.body["failures"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["error_kind"].as_str())
        .collect();
    assert_eq!(kinds, ["children_failed"]);
    let children = children_of(&server, &strict).await;
    assert_eq!(children.len(), 3);
    let failed: Vec<&Value> = children
        .iter()
        .filter(|c| c["status"] == "failed")
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["input"]["platform"], "c");

    let flow = wait_for_flow(&server, &lenient, Duration::from_secs(30), is_terminal).await;
    assert_eq!(flow["status"], "completed", "policy `any`: {flow}");
    assert_eq!(flow["phases"][0]["output"]["completed"], 2);
    assert_eq!(flow["phases"][0]["output"]["unsuccessful"], 1);
}

async fn cancelling_the_master_cancels_every_child(backend: Backend) {
    let db = TestDatabase::new(backend);
    let server = TestServer::start(config_for(&db, &types(60_000)));
    let master = create(&server, "collection").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while children_of(&server, &master)
        .await
        .iter()
        .filter(|c| c["status"] == "running")
        .count()
        < CHILDREN
    {
        assert!(Instant::now() < deadline, "children did not all start");
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }

    let reply = post(&server, &format!("/v1/flows/{master}/cancel"), &json!({})).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["status"], "cancelled");
    // The cascade is done when the cancel answers.
    let children = children_of(&server, &master).await;
    assert_eq!(children.len(), CHILDREN);
    for child in &children {
        assert_eq!(child["status"], "cancelled", "{child}");
    }
    // And it sticks: nothing is resumed or re-created later.
    actix_web::rt::time::sleep(Duration::from_millis(500)).await;
    let children = children_of(&server, &master).await;
    assert_eq!(children.len(), CHILDREN);
    assert!(children.iter().all(|c| c["status"] == "cancelled"));
}

async fn sigkill_during_fan_out_resumes_without_duplicate_children(backend: Backend) {
    let db = TestDatabase::new(backend);
    let server = TestServer::start(config_for(&db, &types(1_500)));
    let master = create(&server, "collection").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while children_of(&server, &master).await.is_empty() {
        assert!(Instant::now() < deadline, "no child started");
        actix_web::rt::time::sleep(Duration::from_millis(5)).await;
    }
    let config = server.kill();

    let server = TestServer::start(config);
    let flow = wait_for_flow(&server, &master, Duration::from_secs(60), is_terminal).await;
    assert_eq!(flow["status"], "completed", "{flow}");
    assert_eq!(
        flow["phases"][1]["attempt"], 1,
        "the fan-out re-ran its interrupted attempt"
    );
    let children = children_of(&server, &master).await;
    assert_eq!(children.len(), CHILDREN, "no child was started twice");
    let indexes: HashSet<u64> = children
        .iter()
        .map(|c| c["input"]["index"].as_u64().expect("index input"))
        .collect();
    assert_eq!(indexes.len(), CHILDREN);
    assert!(children.iter().all(|c| c["status"] == "completed"));
}

on_both_backends!(
    a_master_completes_only_after_every_child,
    a_failing_child_fails_the_master_under_all,
    cancelling_the_master_cancels_every_child,
    sigkill_during_fan_out_resumes_without_duplicate_children,
);
