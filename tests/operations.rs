//! Operations endpoints: liveness, readiness and the OpenAPI document, all without a key.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{
    Backend, TestDatabase, TestServer, config_for, flow_type_toml, get, is_terminal, post,
    wait_for_flow,
};
use serde_json::json;

const AUTH_ON: &str = "[auth]\nenabled = true\n[[auth.keys]]\nkey = \"k\"\nclient_account_id = \"a\"\nengagement_id = \"e\"\n";

async fn operations_endpoints_answer_without_a_key(backend: Backend) {
    let db = TestDatabase::new(backend);
    let server = TestServer::start(config_for(&db, AUTH_ON));
    assert_eq!(get(&server, "/healthz").await.status, 200);
    let ready = get(&server, "/readyz").await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.body["database"], "ok");
    let doc = get(&server, "/openapi.json").await;
    assert_eq!(doc.status, 200);
    assert!(doc.body["openapi"].as_str().unwrap().starts_with("3."));
    let routes = [
        ("/v1/flows", "post"),
        ("/v1/flows", "get"),
        ("/v1/flows/{id}", "get"),
        ("/v1/flows/{id}/pause", "post"),
        ("/v1/flows/{id}/resume", "post"),
        ("/v1/flows/{id}/cancel", "post"),
        ("/v1/flows/{id}/retry", "post"),
        ("/v1/flows/{id}/events", "get"),
        ("/v1/flows/{id}/failures", "get"),
        ("/v1/flows/{id}/ws", "get"),
        ("/v1/events/ws", "get"),
        ("/v1/flow-types", "get"),
        ("/v1/flow-types/{name}", "get"),
        ("/v1/flow-types/{name}", "put"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/openapi.json", "get"),
        ("/metrics", "get"),
    ];
    for (path, method) in routes {
        assert!(
            doc.body["paths"][path][method].is_object(),
            "OpenAPI lacks {method} {path}"
        );
    }
    let flow = &doc.body["components"]["schemas"]["FlowState"]["properties"];
    for field in [
        "progress_percentage",
        "next_phase",
        "master_flow_id",
        "parent_flow_id",
    ] {
        assert!(flow[field].is_object(), "FlowState schema lacks {field}");
    }
    assert_eq!(
        get(&server, "/v1/flows").await.status,
        401,
        "while /v1 needs the key"
    );
}

/// Parses the Prometheus text format strictly enough to catch malformed lines.
fn parse_prometheus(text: &str) -> HashMap<String, f64> {
    let mut samples = HashMap::new();
    for line in text.lines() {
        if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            continue;
        }
        assert!(
            !line.starts_with('#') && !line.trim().is_empty(),
            "stray line {line:?}"
        );
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value in {line:?}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "unclosed labels in {line:?}");
        }
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        assert!(
            samples.insert(series.to_owned(), value).is_none(),
            "duplicate series {series}"
        );
    }
    samples
}

async fn metrics_count_what_happened(backend: Backend) {
    let db = TestDatabase::new(backend);
    let types = flow_type_toml(
        "recovers",
        &[
            ("prepare", "noop", "{}", 0),
            ("flaky", "fail", "{ times = 2 }", 2),
        ],
    );
    let server = TestServer::start(config_for(&db, &types));
    let id = post(&server, "/v1/flows", &json!({ "flow_type": "recovers" }))
        .await
        .body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_for_flow(&server, &id, Duration::from_secs(20), is_terminal).await;
    let events = get(&server, &format!("/v1/flows/{id}/events")).await.body["events"]
        .as_array()
        .unwrap()
        .len();
    let response = common::client()
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert!(
        response
            .headers()
            .get("content-type")
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let mut response = response;
    let text = String::from_utf8(response.body().await.unwrap().to_vec()).unwrap();
    let samples = parse_prometheus(&text);
    assert_eq!(samples["flowd_flows{status=\"completed\"}"], 1.0);
    assert_eq!(samples["flowd_retries_total"], 2.0);
    assert_eq!(samples["flowd_failures_total{kind=\"handler_error\"}"], 2.0);
    assert_eq!(
        samples["flowd_phase_duration_seconds_count{flow_type=\"recovers\",phase=\"flaky\"}"],
        3.0
    );
    assert_eq!(
        samples["flowd_phase_duration_seconds_count{flow_type=\"recovers\",phase=\"prepare\"}"],
        1.0
    );
    assert_eq!(samples["flowd_events_committed_total"], events as f64);
    assert_eq!(samples["flowd_actor_restarts_total"], 0.0);
    assert_eq!(
        samples["flowd_live_flow_actors"], 0.0,
        "a finished flow owns no actor"
    );
    let batches = samples["flowd_persistence_batch_writes_count"];
    assert!(batches >= 1.0 && samples["flowd_persistence_commit_seconds_count"] == batches);
}

on_both_backends!(
    operations_endpoints_answer_without_a_key,
    metrics_count_what_happened
);
