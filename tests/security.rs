//! Trust boundaries: tenants reach neither the host, nor each other, nor everyone's writes.
//! Admin and tenant keys, the operator-only registry, the http target allowlist, limits on
//! definitions and flows, and streams that cost nothing once their client stops reading.

mod common;

use std::time::{Duration, Instant};

use actix_web::{App, HttpResponse, HttpServer, web};
use common::{
    Backend, EventSocket, TestDatabase, TestServer, config_for, flow_type_toml, is_terminal,
};
use serde_json::{Value, json};

const KEYS: &str = "[auth]\nenabled = true\n\
[[auth.keys]]\nkey = \"adm\"\nclient_account_id = \"ops\"\nengagement_id = \"ops\"\nrole = \"admin\"\n\
[[auth.keys]]\nkey = \"ta\"\nclient_account_id = \"acme\"\nengagement_id = \"e1\"\n\
[[auth.keys]]\nkey = \"tb\"\nclient_account_id = \"globex\"\nengagement_id = \"e2\"\nrole = \"tenant\"\n\
[metrics]\nkey = \"scrape\"\n";

/// A request with `key` (as `Authorization: Bearer`), answered as status and JSON.
async fn call(
    server: &TestServer,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<&Value>,
) -> common::Reply {
    let method = awc::http::Method::from_bytes(method.as_bytes()).expect("method");
    let mut request = common::client().request(method, server.url(path));
    if let Some(key) = key {
        request = request.insert_header(("Authorization", format!("Bearer {key}")));
    }
    let mut response = match body {
        Some(body) => request.send_json(body).await,
        None => request.send().await,
    }
    .expect("request");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let bytes = response.body().limit(16 << 20).await.expect("body");
    common::Reply {
        status,
        content_type,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

fn assert_problem(reply: &common::Reply, status: u16, what: &str) {
    assert_eq!(reply.status, status, "{what}: {}", reply.body);
    assert_eq!(reply.content_type, "application/problem+json", "{what}");
}

async fn wait_terminal(server: &TestServer, key: &str, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let flow = call(server, "GET", &format!("/v1/flows/{id}"), Some(key), None).await;
        assert_eq!(flow.status, 200, "{}", flow.body);
        if is_terminal(&flow.body) {
            return flow.body;
        }
        assert!(Instant::now() < deadline, "not terminal: {}", flow.body);
        actix_web::rt::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn create(server: &TestServer, key: &str, flow_type: &str) -> String {
    let reply = call(
        server,
        "POST",
        "/v1/flows",
        Some(key),
        Some(&json!({ "flow_type": flow_type })),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    reply.body["id"].as_str().expect("id").to_owned()
}

/// A service on loopback that would hand its secret to anyone who reaches it.
fn start_secret_service() -> String {
    let server = HttpServer::new(|| {
        App::new().default_service(web::to(|| async {
            HttpResponse::Ok().json(json!({ "secret": "loopback-secret-reply" }))
        }))
    })
    .workers(1)
    .bind(("127.0.0.1", 0))
    .expect("binds");
    let address = server.addrs()[0];
    actix_web::rt::spawn(server.run());
    format!("http://{address}")
}

async fn tenants_reach_neither_the_host_nor_each_other(backend: Backend) {
    let db = TestDatabase::new(backend);
    let target = start_secret_service();
    let secret_type = "[[flow_types]]\nname = \"calls_out\"\nversion = 1\n[[flow_types.phases]]\nname = \"ask\"\nhandler = \"http\"\nparams = { url = \"http://svc.example.invalid/x\", headers = { Authorization = { env = \"FLOWD_TEST_UNSET_SECRET\" } } }\n";
    let types = format!(
        "{KEYS}{secret_type}{}",
        flow_type_toml("simple", &[("a", "noop", "{}", 0)])
    );
    let server = TestServer::start(config_for(&db, &types));

    // 1. No tenant registers anything: command, loopback http, or a plain noop.
    let command = json!({ "phases": [{ "name": "x", "handler": "command",
        "params": { "program": "/bin/sh", "args": ["-c", "id"] } }] });
    let loopback = json!({ "phases": [{ "name": "x", "handler": "http",
        "params": { "url": format!("{target}/steal") } }] });
    let plain = json!({ "phases": [{ "name": "x", "handler": "noop" }] });
    for (key, body, what) in [
        ("ta", &command, "tenant command phase"),
        ("ta", &loopback, "tenant loopback http phase"),
        ("tb", &plain, "tenant noop type"),
        ("tb", &plain, "tenant hijack of an existing type"),
    ] {
        let path = if what.contains("hijack") {
            "/v1/flow-types/simple"
        } else {
            "/v1/flow-types/x"
        };
        let reply = call(&server, "PUT", path, Some(key), Some(body)).await;
        assert_problem(&reply, 403, what);
    }
    let simple = call(&server, "GET", "/v1/flow-types/simple", Some("ta"), None).await;
    assert_eq!(simple.body["version"], 1, "the hijack changed nothing");
    assert_problem(
        &call(&server, "GET", "/v1/flow-types/x", Some("ta"), None).await,
        404,
        "nothing was registered",
    );

    // 2. Tenants read a redacted view; the operator sees the (reference to the) secret.
    for key in ["ta", "tb"] {
        let seen = call(&server, "GET", "/v1/flow-types/calls_out", Some(key), None).await;
        assert_eq!(seen.status, 200);
        let text = seen.body.to_string();
        assert!(
            !text.contains("FLOWD_TEST_UNSET_SECRET") && !text.contains("svc.example"),
            "{text}"
        );
        let listed = call(&server, "GET", "/v1/flow-types", Some(key), None)
            .await
            .body;
        assert!(!listed.to_string().contains("svc.example"), "{listed}");
    }
    let admin_view = call(
        &server,
        "GET",
        "/v1/flow-types/calls_out",
        Some("adm"),
        None,
    )
    .await;
    assert!(
        admin_view
            .body
            .to_string()
            .contains("FLOWD_TEST_UNSET_SECRET")
    );

    // 3. Even the operator's http phase cannot reach loopback unless it is allowlisted, and
    //    nothing of the reply lands in the flow or the journal.
    let reply = call(
        &server,
        "PUT",
        "/v1/flow-types/probe",
        Some("adm"),
        Some(&loopback),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    let id = create(&server, "ta", "probe").await;
    let flow = wait_terminal(&server, "ta", &id).await;
    assert_eq!(flow["status"], "failed", "{flow}");
    let journal = call(
        &server,
        "GET",
        &format!("/v1/flows/{id}/failures"),
        Some("ta"),
        None,
    )
    .await;
    assert_eq!(journal.body["failures"][0]["error_kind"], "target_refused");
    let everything = format!("{flow}{}", journal.body);
    assert!(
        !everything.contains("loopback-secret-reply"),
        "{everything}"
    );

    // 4. Versions stay within the column: the top one is fine, the next is a 422, not a 503.
    let top =
        json!({ "version": 2_147_483_647u64, "phases": [{ "name": "a", "handler": "noop" }] });
    assert_eq!(
        call(
            &server,
            "PUT",
            "/v1/flow-types/simple",
            Some("adm"),
            Some(&top)
        )
        .await
        .status,
        201
    );
    assert_problem(
        &call(
            &server,
            "PUT",
            "/v1/flow-types/simple",
            Some("adm"),
            Some(&plain),
        )
        .await,
        422,
        "version past the top",
    );
    let over =
        json!({ "version": 2_147_483_648u64, "phases": [{ "name": "a", "handler": "noop" }] });
    assert_problem(
        &call(
            &server,
            "PUT",
            "/v1/flow-types/other",
            Some("adm"),
            Some(&over),
        )
        .await,
        422,
        "version 2^31",
    );

    // 5. Another tenant's flow is a 404, whatever it asks.
    let id = create(&server, "ta", "simple").await;
    for path in [
        format!("/v1/flows/{id}"),
        format!("/v1/flows/{id}/events"),
        format!("/v1/flows/{id}/failures"),
    ] {
        assert_problem(
            &call(&server, "GET", &path, Some("tb"), None).await,
            404,
            &path,
        );
    }
    assert_problem(
        &call(
            &server,
            "POST",
            &format!("/v1/flows/{id}/cancel"),
            Some("tb"),
            None,
        )
        .await,
        404,
        "cross-tenant cancel",
    );

    // 6. The small doors: case-insensitive scheme, query tokens only on stream routes,
    //    arrays for objects, /metrics behind a key.
    let lower = common::client()
        .get(server.url("/v1/flow-types"))
        .insert_header(("Authorization", "bearer ta"))
        .send()
        .await
        .expect("request");
    assert_eq!(lower.status().as_u16(), 200);
    assert_problem(
        &call(
            &server,
            "PUT",
            "/v1/flow-types/ws?access_token=adm",
            None,
            Some(&plain),
        )
        .await,
        401,
        "query token on a non-stream route",
    );
    assert_problem(
        &call(&server, "GET", "/v1/flows?access_token=ta", None, None).await,
        401,
        "query token on a plain GET",
    );
    assert_problem(
        &call(
            &server,
            "POST",
            "/v1/flows",
            Some("ta"),
            Some(&json!(["simple", {}])),
        )
        .await,
        422,
        "an array for an object",
    );
    assert_problem(
        &call(&server, "GET", "/metrics", None, None).await,
        401,
        "metrics without key",
    );
    assert_problem(
        &call(&server, "GET", "/metrics", Some("ta"), None).await,
        403,
        "metrics, tenant",
    );
    assert_eq!(
        call(&server, "GET", "/metrics", Some("scrape"), None)
            .await
            .status,
        200
    );
    assert_eq!(
        call(&server, "GET", "/metrics", Some("adm"), None)
            .await
            .status,
        200
    );

    // 7. One Idempotency-Key, two different bodies at once: one flow, one 409.
    let send = |input: Value| {
        let request = common::client()
            .post(server.url("/v1/flows"))
            .insert_header(("Authorization", "Bearer ta"))
            .insert_header(("Idempotency-Key", "race-1"));
        async move {
            request
                .send_json(&json!({ "flow_type": "simple", "input": input }))
                .await
                .expect("request")
                .status()
                .as_u16()
        }
    };
    let (a, b) = futures_util::join!(send(json!({ "n": 1 })), send(json!({ "n": 2 })));
    let mut statuses = [a, b];
    statuses.sort_unstable();
    assert_eq!(statuses, [201, 409]);
}

async fn runaway_definitions_are_refused_and_loops_stopped(backend: Backend) {
    let db = TestDatabase::new(backend);
    let limits = "[limits]\nmax_transitions_per_flow = 40\nmax_child_depth = 3\n";
    let types = format!(
        "{limits}{}",
        flow_type_toml("leaf", &[("a", "noop", "{}", 0)])
    );
    let server = TestServer::start(config_for(&db, &types));
    let put = |name: &'static str, phases: Value| {
        let server = &server;
        async move {
            call(
                server,
                "PUT",
                &format!("/v1/flow-types/{name}"),
                None,
                Some(&json!({ "phases": phases })),
            )
            .await
        }
    };
    let one = |handler: &str, params: Value| json!([{ "name": "p", "handler": handler, "params": params }]);
    let many: Vec<Value> = (0..10_000)
        .map(|i| json!({ "name": format!("p{i}"), "handler": "noop" }))
        .collect();
    let cases = vec![
        (
            "retries 4e9",
            json!([{ "name": "p", "handler": "noop", "retries": 4_000_000_000u64 }]),
        ),
        ("sleep ms -1", one("sleep", json!({ "ms": -1 }))),
        ("sleep ms 1e30", one("sleep", json!({ "ms": 1e30 }))),
        ("sleep ms abc", one("sleep", json!({ "ms": "abc" }))),
        ("fail times 1e30", one("fail", json!({ "times": 1e30 }))),
        (
            "command without program",
            one("command", json!({ "args": ["x"] })),
        ),
        (
            "http to ftp",
            one("http", json!({ "url": "ftp://example.com/x" })),
        ),
        (
            "unknown child type",
            one("child_flows", json!({ "flow_type": "nope", "count": 1 })),
        ),
        (
            "own child type",
            one("child_flows", json!({ "flow_type": "selfish", "count": 1 })),
        ),
        (
            "huge fan-out",
            one(
                "child_flows",
                json!({ "flow_type": "leaf", "count": 100_000_000_000u64 }),
            ),
        ),
        (
            "heartbeat 2^63",
            json!([{ "name": "p", "handler": "noop", "heartbeat_timeout_s": 9_223_372_036_854_775_808u64 }]),
        ),
        ("10,000 phases", Value::Array(many)),
    ];
    for (what, phases) in cases {
        let reply = put("selfish", phases).await;
        assert!(
            reply.status == 422 || reply.status == 413,
            "{what}: {} {}",
            reply.status,
            reply.body
        );
        assert_eq!(reply.content_type, "application/problem+json", "{what}");
    }
    assert_eq!(
        call(&server, "GET", "/v1/flow-types/selfish", None, None)
            .await
            .status,
        404,
        "nothing was registered"
    );

    // Mutual recursion through a new version is refused too.
    let fan = |child: &str| one("child_flows", json!({ "flow_type": child, "count": 1 }));
    assert_eq!(put("mid", fan("leaf")).await.status, 201);
    assert_eq!(put("top", fan("mid")).await.status, 201);
    let back = put("mid", fan("top")).await;
    assert_problem(&back, 422, "mid → top → mid");
    assert!(
        back.body["detail"]
            .as_str()
            .unwrap()
            .contains("phases[0].params.flow_type")
    );
    // Too deep: top → mid → leaf is 3 levels; a type fanning out to top would make 4.
    assert_problem(
        &put("above", fan("top")).await,
        422,
        "nesting past max_child_depth",
    );

    // A next_phase cycle runs until the per-flow cap, then fails with a journal row.
    let cycle = json!([
        { "name": "a", "handler": "noop", "next_phase": "b" },
        { "name": "b", "handler": "noop", "next_phase": "a" }
    ]);
    assert_eq!(put("cycle", cycle).await.status, 201);
    let id = common::post(&server, "/v1/flows", &json!({ "flow_type": "cycle" }))
        .await
        .body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let flow = common::wait_for_flow(&server, &id, Duration::from_secs(30), is_terminal).await;
    assert_eq!(flow["status"], "failed", "{flow}");
    let journal = common::get(&server, &format!("/v1/flows/{id}/failures"))
        .await
        .body;
    assert_eq!(
        journal["failures"][0]["error_kind"], "too_many_transitions",
        "{journal}"
    );
    let events = common::get(&server, &format!("/v1/flows/{id}/events?limit=10000"))
        .await
        .body;
    assert!(
        events["events"].as_array().unwrap().len() < 200,
        "bounded: {events}"
    );
}

async fn a_filtered_stream_catches_up_and_follows(backend: Backend) {
    let db = TestDatabase::new(backend);
    let types = [
        flow_type_toml("busy", &[("a", "noop", "{}", 0), ("b", "noop", "{}", 0)]),
        flow_type_toml("rare", &[("a", "noop", "{}", 0)]),
    ]
    .concat();
    let server = TestServer::start(config_for(&db, &types));
    // More than a catch-up page of events, none of which the stream below wants.
    let mut ids = Vec::new();
    for _ in 0..120 {
        ids.push(
            common::post(&server, "/v1/flows", &json!({ "flow_type": "busy" }))
                .await
                .body["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    for id in &ids {
        common::wait_for_flow(&server, id, Duration::from_secs(60), is_terminal).await;
    }
    let stored = common::get(&server, &format!("/v1/flows/{}/events", ids[0]))
        .await
        .body;
    assert!(stored["events"].as_array().unwrap().len() >= 5);

    let mut socket =
        EventSocket::connect(&server, "/v1/events/ws?flow_type=rare&after=0", None).await;
    // Nothing matches: the stream must stay quiet, and the server keep answering promptly.
    assert!(
        socket
            .next_event(Duration::from_millis(500))
            .await
            .is_none()
    );
    let started = Instant::now();
    assert_eq!(common::get(&server, "/healthz").await.status, 200);
    assert!(started.elapsed() < Duration::from_secs(2));
    // And its cursor moved on: a matching flow now arrives live.
    let rare = common::post(&server, "/v1/flows", &json!({ "flow_type": "rare" })).await;
    let event = socket
        .next_event(Duration::from_secs(10))
        .await
        .expect("the matching flow's event arrives");
    assert_eq!(event["flow_id"], rare.body["id"]);

    // A stream nobody reads any more costs nothing once its client is gone.
    drop(socket);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = common::client()
            .get(server.url("/metrics"))
            .send()
            .await
            .unwrap()
            .body()
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&text).into_owned();
        let subscribers = text
            .lines()
            .find(|l| l.starts_with("flowd_event_subscribers"))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse::<f64>().ok());
        if subscribers == Some(0.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the subscriber lingers: {subscribers:?}"
        );
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The `flowd_event_subscribers` gauge.
async fn subscribers(server: &TestServer) -> Option<f64> {
    let mut response = common::client()
        .get(server.url("/metrics"))
        .send()
        .await
        .ok()?;
    let text = response.body().limit(16 << 20).await.ok()?;
    String::from_utf8_lossy(&text)
        .lines()
        .find(|l| l.starts_with("flowd_event_subscribers"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
}

async fn a_subscriber_that_never_reads_is_dropped(backend: Backend) {
    let db = TestDatabase::new(backend);
    // Long names make big events: megabytes of history that no socket buffer holds.
    let type_name = "t".repeat(100);
    let names: Vec<String> = (0..100)
        .map(|i| format!("{i:0>3}{}", "p".repeat(97)))
        .collect();
    let phases: Vec<(&str, &str, &str, u32)> = names
        .iter()
        .map(|n| (n.as_str(), "noop", "{}", 0))
        .collect();
    let server = TestServer::start(config_for(&db, &flow_type_toml(&type_name, &phases)));
    let mut ids = Vec::new();
    for _ in 0..60 {
        let reply = common::post(&server, "/v1/flows", &json!({ "flow_type": type_name })).await;
        ids.push(reply.body["id"].as_str().expect("id").to_owned());
    }
    for id in &ids {
        common::wait_for_flow(&server, id, Duration::from_secs(120), is_terminal).await;
    }
    assert_eq!(subscribers(&server).await, Some(0.0));
    // Connected, and then never read from: the server must give up on it by itself.
    let socket = EventSocket::connect(&server, "/v1/events/ws?after=0", None).await;
    let started = Instant::now();
    loop {
        let now = subscribers(&server).await;
        if now == Some(0.0) && started.elapsed() > Duration::from_millis(500) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(25),
            "a subscriber that never reads is still held: {now:?}"
        );
        actix_web::rt::time::sleep(Duration::from_millis(250)).await;
    }
    drop(socket);
}

on_both_backends!(
    tenants_reach_neither_the_host_nor_each_other,
    runaway_definitions_are_refused_and_loops_stopped,
    a_filtered_stream_catches_up_and_follows,
    a_subscriber_that_never_reads_is_dropped,
);
