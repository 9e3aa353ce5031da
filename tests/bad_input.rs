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

/// A JSON string holding a NUL, which PostgreSQL `jsonb` cannot store.
const NUL: &str = "a\u{0}b";

/// Strings that look like attacks or oddities; as names they are refused, never run.
const NASTY: [&str; 12] = [
    "../../etc/passwd",
    "simple; DROP TABLE flows; --",
    "' OR '1'='1",
    "<script>alert(1)</script>",
    "${jndi:ldap://x/a}",
    "名前",
    "emoji-🚀",
    "a b",
    "",
    "a\u{0}b",
    "%00",
    "\u{202e}evil",
];

fn nested(depth: usize) -> Value {
    let mut value = json!("leaf");
    for _ in 0..depth {
        value = json!({ "n": value });
    }
    value
}

/// A definition with one phase of `handler` and these extra fields.
fn def(handler: &str, extra: Value) -> Value {
    let mut phase = json!({ "name": "p", "handler": handler });
    if let (Some(phase), Some(extra)) = (phase.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            phase.insert(k.clone(), v.clone());
        }
    }
    json!({ "phases": [phase] })
}

fn table(done: &str) -> Vec<Case> {
    let unknown = uuid::Uuid::now_v7();
    let mut cases = Vec::new();
    let mut add = |what: &'static str, method: &'static str, path: String, body: Body, status| {
        cases.push(case(what, method, path, body, status));
    };

    // POST /v1/flows: bodies of the wrong shape.
    for body in [
        json!([]),
        json!(["simple", {}]),
        json!("simple"),
        json!(5),
        json!(null),
        json!(true),
    ] {
        add(
            "create: not an object",
            "POST",
            "/v1/flows".into(),
            Body::Json(body),
            422,
        );
    }
    for flow_type in [
        json!(5),
        json!(true),
        json!(null),
        json!([]),
        json!({}),
        json!(1.5),
    ] {
        add(
            "create: flow_type of a wrong type",
            "POST",
            "/v1/flows".into(),
            Body::Json(json!({ "flow_type": flow_type })),
            422,
        );
    }
    for input in [
        json!({ "a": NUL }),
        json!({ NUL: 1 }),
        json!([NUL]),
        json!(NUL),
        json!({ "a": [{ "b": [NUL] }] }),
        nested(100),
    ] {
        add(
            "create: unstorable input",
            "POST",
            "/v1/flows".into(),
            Body::Json(json!({ "flow_type": "simple", "input": input })),
            422,
        );
    }
    for name in NASTY {
        add(
            "create: unknown or nasty flow type",
            "POST",
            "/v1/flows".into(),
            Body::Json(json!({ "flow_type": name })),
            422,
        );
    }
    add(
        "create: a very long flow type",
        "POST",
        "/v1/flows".into(),
        Body::Json(json!({ "flow_type": "t".repeat(300) })),
        422,
    );
    for parent in [json!(5), json!([]), json!({})] {
        add(
            "create: parent of a wrong type",
            "POST",
            "/v1/flows".into(),
            Body::Json(json!({ "flow_type": "simple", "parent_flow_id": parent })),
            422,
        );
    }
    for parent in ["", "../x", "00000000-0000-0000-0000-00000000000g", NUL] {
        add(
            "create: parent not a UUID",
            "POST",
            "/v1/flows".into(),
            Body::Json(json!({ "flow_type": "simple", "parent_flow_id": parent })),
            400,
        );
    }
    add(
        "create: unknown parent (nil UUID)",
        "POST",
        "/v1/flows".into(),
        Body::Json(
            json!({ "flow_type": "simple", "parent_flow_id": "00000000-0000-0000-0000-000000000000" }),
        ),
        422,
    );
    for raw in [
        &b"{"[..],
        b"}",
        b"[",
        b"{\"flow_type\":}",
        b"{'flow_type':'simple'}",
        b"{\"flow_type\":\"simple\"}x",
        b"\xef\xbb\xbf{\"flow_type\":\"simple\"}",
        b"{\"flow_type\":\"\xff\xfe\"}",
        b"",
        b"nul",
        b"{\"flow_type\":\"simple\",}",
        b"{\"flow_type\":\"simple\" \"input\":{}}",
    ] {
        add(
            "create: malformed JSON",
            "POST",
            "/v1/flows".into(),
            Body::Raw("application/json", raw.to_vec()),
            400,
        );
    }
    for content_type in [
        "text/plain",
        "application/xml",
        "multipart/form-data",
        "application/x-www-form-urlencoded",
    ] {
        add(
            "create: not JSON",
            "POST",
            "/v1/flows".into(),
            Body::Raw(content_type, b"{\"flow_type\":\"simple\"}".to_vec()),
            415,
        );
    }

    // GET /v1/flows: queries.
    for query in [
        "status=bogus",
        "status=",
        "status=RUNNING%00",
        "limit=-1",
        "limit=0",
        "limit=501",
        "limit=1e3",
        "limit=abc",
        "limit=99999999999999999999",
        "cursor=xyz",
        "cursor=%00",
        "parent_flow_id=bad",
        "parent_flow_id=..%2F..",
        "flow_type=a%00b",
        "colour=red",
        "limit=1&limit=2",
    ] {
        add(
            "list: bad query",
            "GET",
            format!("/v1/flows?{query}"),
            Body::None,
            400,
        );
    }

    // One flow: ids that are not ids, on every route that takes one.
    let bad_ids = [
        "not-a-uuid",
        "1",
        "%00",
        "..%2F..%2Fetc%2Fpasswd",
        "'%20OR%201=1",
        "x".repeat(300).leak(),
    ];
    for id in bad_ids {
        add(
            "flow: bad id",
            "GET",
            format!("/v1/flows/{id}"),
            Body::None,
            400,
        );
        add(
            "events: bad id",
            "GET",
            format!("/v1/flows/{id}/events"),
            Body::None,
            400,
        );
        add(
            "failures: bad id",
            "GET",
            format!("/v1/flows/{id}/failures"),
            Body::None,
            400,
        );
        for action in ["pause", "resume", "cancel", "retry"] {
            let what: &'static str = match action {
                "pause" => "pause: bad id",
                "resume" => "resume: bad id",
                "cancel" => "cancel: bad id",
                _ => "retry: bad id",
            };
            add(
                what,
                "POST",
                format!("/v1/flows/{id}/{action}"),
                Body::None,
                400,
            );
        }
    }
    add(
        "flow: unknown",
        "GET",
        format!("/v1/flows/{unknown}"),
        Body::None,
        404,
    );
    add(
        "events: unknown",
        "GET",
        format!("/v1/flows/{unknown}/events"),
        Body::None,
        404,
    );
    add(
        "failures: unknown",
        "GET",
        format!("/v1/flows/{unknown}/failures"),
        Body::None,
        404,
    );
    for action in ["pause", "resume", "cancel", "retry"] {
        add(
            "lifecycle: unknown flow",
            "POST",
            format!("/v1/flows/{unknown}/{action}"),
            Body::None,
            404,
        );
    }
    add(
        "resume a completed flow",
        "POST",
        format!("/v1/flows/{done}/resume"),
        Body::None,
        409,
    );
    for query in [
        "after=-1",
        "after=abc",
        "limit=0",
        "limit=10001",
        "limit=-5",
        "other=1",
    ] {
        add(
            "events: bad query",
            "GET",
            format!("/v1/flows/{done}/events?{query}"),
            Body::None,
            400,
        );
    }

    // Streams refuse bad queries before the handshake.
    for query in ["after=-1", "after=abc", "colour=red"] {
        add(
            "tenant stream: bad query",
            "GET",
            format!("/v1/events/ws?{query}"),
            Body::None,
            400,
        );
    }
    add(
        "flow stream: flow_type",
        "GET",
        format!("/v1/flows/{done}/ws?flow_type=x"),
        Body::None,
        400,
    );
    add(
        "flow stream: bad id",
        "GET",
        "/v1/flows/nope/ws".into(),
        Body::None,
        400,
    );

    // PUT /v1/flow-types/{name}: names, shapes, and every definition rule.
    for name in ["bad%20name", "%00", "%C3%A9", "semi%3Bcolon", "quote%27"] {
        add(
            "put: invalid name",
            "PUT",
            format!("/v1/flow-types/{name}"),
            Body::Json(def("noop", json!({}))),
            422,
        );
    }
    add(
        "put: name too long",
        "PUT",
        format!("/v1/flow-types/{}", "n".repeat(101)),
        Body::Json(def("noop", json!({}))),
        422,
    );
    for body in [
        json!([]),
        json!("x"),
        json!(null),
        json!({ "phases": {} }),
        json!({ "phases": "a" }),
        json!({}),
        json!({ "phases": [], "extra": 1 }),
    ] {
        add(
            "put: body of a wrong shape",
            "PUT",
            "/v1/flow-types/newtype".into(),
            Body::Json(body),
            422,
        );
    }
    for version in [
        json!(0),
        json!(-1),
        json!(2_147_483_648u64),
        json!("1"),
        json!(1.5),
        json!(4_294_967_296u64),
    ] {
        add(
            "put: bad version",
            "PUT",
            "/v1/flow-types/newtype".into(),
            Body::Json(
                json!({ "version": version, "phases": [{ "name": "p", "handler": "noop" }] }),
            ),
            422,
        );
    }
    let phase_fields = [
        json!({ "retries": -1 }),
        json!({ "retries": "3" }),
        json!({ "retries": 1.5 }),
        json!({ "retries": 101 }),
        json!({ "retries": 4_000_000_000u64 }),
        json!({ "weight": -1 }),
        json!({ "weight": 0 }),
        json!({ "weight": 2_000_000 }),
        json!({ "timeout_s": 0 }),
        json!({ "timeout_s": -1 }),
        json!({ "timeout_s": 18_446_744_073_709_551_615u64 }),
        json!({ "heartbeat_timeout_s": 0 }),
        json!({ "heartbeat_timeout_s": 9_223_372_036_854_775_808u64 }),
        json!({ "retry_backoff_ms": 100_000_000_000u64 }),
        json!({ "retry_backoff_ms": -10 }),
        json!({ "next_phase": "zz" }),
        json!({ "next_phase": 5 }),
        json!({ "fallback": "teleport" }),
        json!({ "fallback_after_s": 5 }),
        json!({ "fallback": "noop", "fallback_after_s": 0 }),
        json!({ "fallback": "noop", "fallback_params": [] }),
        json!({ "fallback": "noop", "fallback_params": { "x": NUL } }),
        json!({ "params": [] }),
        json!({ "params": "x" }),
        json!({ "params": 5 }),
        json!({ "params": { "k": NUL } }),
        json!({ "params": { NUL: 1 } }),
        json!({ "params": nested(100) }),
        json!({ "name": "" }),
        json!({ "name": "a b" }),
        json!({ "name": "../p" }),
        json!({ "name": NUL }),
        json!({ "name": 5 }),
        json!({ "handler": 5 }),
        json!({ "handler": "" }),
        json!({ "handler": "../../bin/sh" }),
        json!({ "surprise": true }),
    ];
    for extra in phase_fields {
        add(
            "put: bad phase field",
            "PUT",
            "/v1/flow-types/newtype".into(),
            Body::Json(def("noop", extra)),
            422,
        );
    }
    let kinds = [
        ("sleep", json!({ "ms": -1 })),
        ("sleep", json!({ "ms": 1e30 })),
        ("sleep", json!({ "ms": "abc" })),
        ("sleep", json!({ "ms": 86_400_001 })),
        ("fail", json!({ "times": 1e30 })),
        ("fail", json!({ "times": -1 })),
        ("fail", json!({ "times": "x" })),
        ("command", json!({})),
        ("command", json!({ "program": "" })),
        ("command", json!({ "program": 5 })),
        ("command", json!({ "program": "sh", "args": "-c id" })),
        ("command", json!({ "program": "sh", "args": [1, 2] })),
        ("command", json!({ "program": "sh", "env": ["A=1"] })),
        ("command", json!({ "program": "sh", "env": { "A": 1 } })),
        ("command", json!({ "program": "sh", "cwd": 5 })),
        (
            "command",
            json!({ "program": "sh", "max_output_bytes": -1 }),
        ),
        ("command", json!({ "program": "sh", "surprise": 1 })),
        ("http", json!({})),
        ("http", json!({ "url": 5 })),
        ("http", json!({ "url": "ftp://example.com/x" })),
        ("http", json!({ "url": "file:///etc/passwd" })),
        ("http", json!({ "url": "gopher://example.com" })),
        ("http", json!({ "url": "javascript:alert(1)" })),
        ("http", json!({ "url": "http://" })),
        ("http", json!({ "url": "example.com/x" })),
        (
            "http",
            json!({ "url": "http://example.com", "timeout_ms": -1 }),
        ),
        (
            "http",
            json!({ "url": "http://example.com", "timeout_ms": 1e12 }),
        ),
        (
            "http",
            json!({ "url": "http://example.com", "headers": ["a"] }),
        ),
        (
            "http",
            json!({ "url": "http://example.com", "headers": { "a": 1 } }),
        ),
        (
            "http",
            json!({ "url": "http://example.com", "headers": { "a": { "file": "/etc/shadow" } } }),
        ),
        (
            "http",
            json!({ "url": "http://example.com", "surprise": 1 }),
        ),
        ("external", json!({})),
        ("external", json!({ "queue": "" })),
        ("external", json!({ "queue": "a b" })),
        ("external", json!({ "queue": "../q" })),
        ("external", json!({ "queue": 5 })),
        ("child_flows", json!({ "count": 1 })),
        ("child_flows", json!({ "flow_type": "simple" })),
        ("child_flows", json!({ "flow_type": "nope", "count": 1 })),
        ("child_flows", json!({ "flow_type": "newtype", "count": 1 })),
        ("child_flows", json!({ "flow_type": "simple", "count": -1 })),
        (
            "child_flows",
            json!({ "flow_type": "simple", "count": 100_000_000_000u64 }),
        ),
        (
            "child_flows",
            json!({ "flow_type": "simple", "count": 10_001 }),
        ),
        (
            "child_flows",
            json!({ "flow_type": "simple", "inputs": {} }),
        ),
        (
            "child_flows",
            json!({ "flow_type": "simple", "inputs_from": 5 }),
        ),
        (
            "child_flows",
            json!({ "flow_type": "simple", "count": 1, "inputs": [] }),
        ),
        (
            "child_flows",
            json!({ "flow_type": "simple", "count": 1, "policy": "most" }),
        ),
        (
            "child_flows",
            json!({ "flow_type": "../simple", "count": 1 }),
        ),
    ];
    for (handler, params) in kinds {
        add(
            "put: bad params of a kind",
            "PUT",
            "/v1/flow-types/newtype".into(),
            Body::Json(def(handler, json!({ "params": params }))),
            422,
        );
    }
    let many: Vec<Value> = (0..101)
        .map(|i| json!({ "name": format!("p{i}"), "handler": "noop" }))
        .collect();
    add(
        "put: too many phases",
        "PUT",
        "/v1/flow-types/newtype".into(),
        Body::Json(json!({ "phases": many })),
        422,
    );
    add(
        "put: another definition under an existing version",
        "PUT",
        "/v1/flow-types/simple".into(),
        Body::Json(json!({ "version": 1, "phases": [{ "name": "z", "handler": "noop" }] })),
        409,
    );
    for query in [
        "version=abc",
        "version=-1",
        "version=1099511627776",
        "other=1",
    ] {
        add(
            "get type: bad query",
            "GET",
            format!("/v1/flow-types/simple?{query}"),
            Body::None,
            400,
        );
    }
    add(
        "get type: unknown version",
        "GET",
        "/v1/flow-types/simple?version=0".into(),
        Body::None,
        404,
    );
    for name in ["%00", "..%2F..", "nope"] {
        add(
            "get type: unknown",
            "GET",
            format!("/v1/flow-types/{name}"),
            Body::None,
            404,
        );
    }

    // External workers.
    for queue in ["a%20b", "%00", "..%2Fq", &*"q".repeat(101).leak()] {
        add(
            "poll: bad queue",
            "POST",
            format!("/v1/queues/{queue}/poll"),
            Body::None,
            400,
        );
    }
    for body in [
        json!([]),
        json!({ "wait_ms": 60_001 }),
        json!({ "wait_ms": -1 }),
        json!({ "lease_s": 0 }),
        json!({ "lease_s": 3601 }),
        json!({ "worker_id": NUL }),
        json!({ "worker_id": "w".repeat(201) }),
        json!({ "worker_id": 5 }),
        json!({ "surprise": 1 }),
    ] {
        add(
            "poll: bad body",
            "POST",
            "/v1/queues/q/poll".into(),
            Body::Json(body),
            422,
        );
    }
    add(
        "poll: malformed body",
        "POST",
        "/v1/queues/q/poll".into(),
        Body::Raw("application/json", b"{".to_vec()),
        400,
    );
    add(
        "poll: huge body",
        "POST",
        "/v1/queues/q/poll".into(),
        Body::Raw("application/json", vec![b' '; 64 * 1024]),
        413,
    );
    let lease = uuid::Uuid::now_v7();
    for report in ["heartbeat", "complete", "fail"] {
        let what: &'static str = match report {
            "heartbeat" => "heartbeat: bad task id",
            "complete" => "complete: bad task id",
            _ => "fail: bad task id",
        };
        let body = if report == "fail" {
            json!({ "lease_id": lease, "error": "x" })
        } else {
            json!({ "lease_id": lease })
        };
        add(
            what,
            "POST",
            format!("/v1/tasks/nope/{report}"),
            Body::Json(body),
            400,
        );
        add(
            "report: not an object",
            "POST",
            format!("/v1/tasks/{unknown}/{report}"),
            Body::Json(json!([lease])),
            422,
        );
        add(
            "report: no lease",
            "POST",
            format!("/v1/tasks/{unknown}/{report}"),
            Body::Json(json!({})),
            422,
        );
        add(
            "report: lease not a UUID",
            "POST",
            format!("/v1/tasks/{unknown}/{report}"),
            Body::Json(json!({ "lease_id": "x", "error": "e" })),
            422,
        );
    }
    add(
        "heartbeat: unknown task",
        "POST",
        format!("/v1/tasks/{unknown}/heartbeat"),
        Body::Json(json!({ "lease_id": lease })),
        404,
    );
    add(
        "heartbeat: lease_s 0",
        "POST",
        format!("/v1/tasks/{unknown}/heartbeat"),
        Body::Json(json!({ "lease_id": lease, "lease_s": 0 })),
        422,
    );
    add(
        "complete: NUL output",
        "POST",
        format!("/v1/tasks/{unknown}/complete"),
        Body::Json(json!({ "lease_id": lease, "output": { "a": NUL } })),
        422,
    );
    add(
        "complete: NUL key",
        "POST",
        format!("/v1/tasks/{unknown}/complete"),
        Body::Json(json!({ "lease_id": lease, "output": { NUL: 1 } })),
        422,
    );
    add(
        "complete: next_phase of a wrong type",
        "POST",
        format!("/v1/tasks/{unknown}/complete"),
        Body::Json(json!({ "lease_id": lease, "next_phase": 5 })),
        422,
    );
    add(
        "complete: unknown task",
        "POST",
        format!("/v1/tasks/{unknown}/complete"),
        Body::Json(json!({ "lease_id": lease, "output": {} })),
        404,
    );
    add(
        "fail: NUL error",
        "POST",
        format!("/v1/tasks/{unknown}/fail"),
        Body::Json(json!({ "lease_id": lease, "error": NUL })),
        422,
    );
    add(
        "fail: error of a wrong type",
        "POST",
        format!("/v1/tasks/{unknown}/fail"),
        Body::Json(json!({ "lease_id": lease, "error": {} })),
        422,
    );
    add(
        "fail: retryable of a wrong type",
        "POST",
        format!("/v1/tasks/{unknown}/fail"),
        Body::Json(json!({ "lease_id": lease, "error": "e", "retryable": "yes" })),
        422,
    );
    add(
        "fail: unknown task",
        "POST",
        format!("/v1/tasks/{unknown}/fail"),
        Body::Json(json!({ "lease_id": lease, "error": "e" })),
        404,
    );

    // Routes and methods that do not exist.
    for (method, path) in [
        ("DELETE", "/v1/flow-types/simple"),
        ("PATCH", "/v1/flows"),
        ("POST", "/v1/flow-types"),
        ("PUT", "/v1/flows"),
        ("GET", "/v1"),
        ("GET", "/v2/flows"),
        ("GET", "/v1/flows/x/y/z"),
        ("POST", "/v1/tasks"),
    ] {
        add("no such route", method, path.into(), Body::None, 404);
    }
    cases
}

async fn a_table_of_bad_inputs_across_every_endpoint(backend: Backend) {
    let db = TestDatabase::new(backend);
    let types = flow_type_toml("simple", &[("a", "noop", "{}", 0), ("b", "noop", "{}", 0)]);
    let server = TestServer::start(config_for(&db, &types));
    let done = post(&server, "/v1/flows", &json!({ "flow_type": "simple" }))
        .await
        .body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_for_flow(&server, &done, Duration::from_secs(20), is_terminal).await;
    let before = snapshot(&server).await;
    let cases = table(&done);
    assert!(cases.len() >= 200, "{} cases", cases.len());
    let mut wrong = Vec::new();
    for case in &cases {
        let reply = send(&server, case).await;
        let problem = reply.content_type == "application/problem+json"
            && reply.body["status"] == reply.status
            && reply.body["type"]
                .as_str()
                .is_some_and(|t| t.starts_with("/problems/"));
        assert!(
            reply.status < 500,
            "{} {} {}: {}",
            case.what,
            case.method,
            case.path,
            reply.body
        );
        if reply.status != case.status || !problem {
            wrong.push(format!(
                "{} ({} {}): {} {} {}",
                case.what, case.method, case.path, reply.status, reply.content_type, reply.body
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} cases answered unexpectedly:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
    assert_eq!(snapshot(&server).await, before, "nothing stored changed");
}

on_both_backends!(
    every_bad_input_is_a_4xx_problem_and_changes_nothing,
    a_table_of_bad_inputs_across_every_endpoint,
);
