//! Bad input gets a clear 4xx problem+json answer and changes nothing stored.

mod common;

use std::time::Duration;

use common::{
    Backend, TestDatabase, TestServer, config_for, flow_type_toml, get, is_terminal, post,
    post_raw, request, wait_for_flow,
};
use serde_json::{Value, json};

struct Case {
    what: &'static str,
    method: &'static str,
    path: String,
    body: Body,
    status: u16,
}

enum Body {
    None,
    Json(Value),
    Raw(&'static str, Vec<u8>),
}

fn case(
    what: &'static str,
    method: &'static str,
    path: impl Into<String>,
    body: Body,
    status: u16,
) -> Case {
    Case {
        what,
        method,
        path: path.into(),
        body,
        status,
    }
}

async fn send(server: &TestServer, case: &Case) -> common::Reply {
    match &case.body {
        Body::None => request(server, case.method, &case.path, None).await,
        Body::Json(body) => request(server, case.method, &case.path, Some(body)).await,
        Body::Raw(content_type, bytes) => {
            post_raw(server, &case.path, content_type, bytes.clone()).await
        }
    }
}

async fn snapshot(server: &TestServer) -> (Value, Value) {
    let flows = get(server, "/v1/flows?limit=500").await.body;
    let types = get(server, "/v1/flow-types").await.body;
    (flows, types)
}

async fn every_bad_input_is_a_4xx_problem_and_changes_nothing(backend: Backend) {
    let db = TestDatabase::new(backend);
    let types = flow_type_toml("simple", &[("a", "noop", "{}", 0), ("b", "noop", "{}", 0)]);
    let server = TestServer::start_with_env(
        config_for(&db, &types),
        &[("FLOWD_SERVER__MAX_BODY_BYTES", "4096")],
    );
    let done = post(&server, "/v1/flows", &json!({ "flow_type": "simple" }))
        .await
        .body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_for_flow(&server, &done, Duration::from_secs(20), is_terminal).await;
    let before = snapshot(&server).await;
    let unknown = uuid::Uuid::now_v7();
    let big = format!(
        "{{\"flow_type\":\"simple\",\"input\":\"{}\"}}",
        "x".repeat(8192)
    );
    let dup_phases = json!({ "phases": [{ "name": "a", "handler": "noop" }, { "name": "a", "handler": "noop" }] });
    let cases = vec![
        case(
            "malformed JSON",
            "POST",
            "/v1/flows",
            Body::Raw("application/json", b"{\"flow_type\":".to_vec()),
            400,
        ),
        case(
            "not JSON at all",
            "POST",
            "/v1/flows",
            Body::Raw("application/json", b"hello".to_vec()),
            400,
        ),
        case(
            "wrong content type",
            "POST",
            "/v1/flows",
            Body::Raw("text/plain", b"{}".to_vec()),
            415,
        ),
        case(
            "flow_type of the wrong type",
            "POST",
            "/v1/flows",
            Body::Json(json!({ "flow_type": 5 })),
            422,
        ),
        case(
            "missing flow_type",
            "POST",
            "/v1/flows",
            Body::Json(json!({ "input": {} })),
            422,
        ),
        case(
            "unknown field",
            "POST",
            "/v1/flows",
            Body::Json(json!({ "flow_type": "simple", "flowtype": "x" })),
            422,
        ),
        case(
            "unknown flow type",
            "POST",
            "/v1/flows",
            Body::Json(json!({ "flow_type": "nope" })),
            422,
        ),
        case(
            "parent id not a UUID",
            "POST",
            "/v1/flows",
            Body::Json(json!({ "flow_type": "simple", "parent_flow_id": "p" })),
            400,
        ),
        case(
            "unknown parent",
            "POST",
            "/v1/flows",
            Body::Json(json!({ "flow_type": "simple", "parent_flow_id": unknown })),
            422,
        ),
        case(
            "oversize body",
            "POST",
            "/v1/flows",
            Body::Raw("application/json", big.into_bytes()),
            413,
        ),
        case(
            "flow id not a UUID",
            "GET",
            "/v1/flows/not-a-uuid",
            Body::None,
            400,
        ),
        case(
            "unknown flow",
            "GET",
            format!("/v1/flows/{unknown}"),
            Body::None,
            404,
        ),
        case(
            "unknown status filter",
            "GET",
            "/v1/flows?status=bogus",
            Body::None,
            400,
        ),
        case("zero limit", "GET", "/v1/flows?limit=0", Body::None, 400),
        case(
            "limit not a number",
            "GET",
            "/v1/flows?limit=abc",
            Body::None,
            400,
        ),
        case(
            "forged cursor",
            "GET",
            "/v1/flows?cursor=xyz",
            Body::None,
            400,
        ),
        case(
            "unknown query parameter",
            "GET",
            "/v1/flows?colour=red",
            Body::None,
            400,
        ),
        case("unknown route", "GET", "/v1/nothing-here", Body::None, 404),
        case("unrouted method", "DELETE", "/v1/flows", Body::None, 404),
        case(
            "pause an unknown flow",
            "POST",
            format!("/v1/flows/{unknown}/pause"),
            Body::None,
            404,
        ),
        case(
            "pause a completed flow",
            "POST",
            format!("/v1/flows/{done}/pause"),
            Body::None,
            409,
        ),
        case(
            "retry a completed flow",
            "POST",
            format!("/v1/flows/{done}/retry"),
            Body::None,
            409,
        ),
        case(
            "negative events cursor",
            "GET",
            format!("/v1/flows/{done}/events?after=-1"),
            Body::None,
            400,
        ),
        case(
            "duplicate phase names",
            "PUT",
            "/v1/flow-types/newtype",
            Body::Json(dup_phases),
            422,
        ),
        case(
            "unknown handler kind",
            "PUT",
            "/v1/flow-types/newtype",
            Body::Json(json!({ "phases": [{ "name": "a", "handler": "teleport" }] })),
            422,
        ),
        case(
            "next_phase to nowhere",
            "PUT",
            "/v1/flow-types/newtype",
            Body::Json(
                json!({ "phases": [{ "name": "a", "handler": "noop", "next_phase": "zz" }] }),
            ),
            422,
        ),
        case(
            "flow type with no phases",
            "PUT",
            "/v1/flow-types/newtype",
            Body::Json(json!({ "phases": [] })),
            422,
        ),
        case(
            "external phase without a queue",
            "PUT",
            "/v1/flow-types/newtype",
            Body::Json(json!({ "phases": [{ "name": "a", "handler": "external" }] })),
            422,
        ),
        case(
            "fan-out with no inputs",
            "PUT",
            "/v1/flow-types/newtype",
            Body::Json(
                json!({ "phases": [{ "name": "a", "handler": "child_flows", "params": { "flow_type": "simple" } }] }),
            ),
            422,
        ),
        case(
            "fallback to an unknown handler",
            "PUT",
            "/v1/flow-types/newtype",
            Body::Json(
                json!({ "phases": [{ "name": "a", "handler": "noop", "fallback": "teleport" }] }),
            ),
            422,
        ),
        case(
            "unknown flow type read",
            "GET",
            "/v1/flow-types/nope",
            Body::None,
            404,
        ),
    ];
    assert!(cases.len() >= 20);
    for case in &cases {
        let reply = send(&server, case).await;
        assert_eq!(reply.status, case.status, "{}: {}", case.what, reply.body);
        assert_eq!(
            reply.content_type, "application/problem+json",
            "{}",
            case.what
        );
        assert_eq!(reply.body["status"], case.status, "{}", case.what);
        assert!(
            reply.body["type"]
                .as_str()
                .is_some_and(|t| t.starts_with("/problems/")),
            "{}",
            case.what
        );
        assert!(
            reply.body["title"].is_string() && reply.body["detail"].is_string(),
            "{}",
            case.what
        );
    }
    let unknown_handler = send(&server, &cases[24]).await;
    assert!(
        unknown_handler.body["detail"]
            .as_str()
            .unwrap()
            .contains("phases[0].handler"),
        "422 names the field"
    );
    let long_key = "k".repeat(300);
    let reply = common::client()
        .post(server.url("/v1/flows"))
        .insert_header(("Idempotency-Key", long_key.as_str()))
        .send_json(&json!({ "flow_type": "simple" }))
        .await
        .unwrap();
    assert_eq!(
        reply.status().as_u16(),
        400,
        "an oversize idempotency key is refused"
    );
    assert_eq!(snapshot(&server).await, before, "nothing stored changed");
}

on_both_backends!(every_bad_input_is_a_4xx_problem_and_changes_nothing);
