//! Websocket progress: stored events, then live ones, each exactly once and in order, across
//! reconnects; a flow's stream never shows another flow's events; and a tenant's stream never
//! shows another tenant's events.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::{
    Backend, EventSocket, TestDatabase, TestServer, config_for, flow_type_toml, get, is_terminal,
    wait_for_flow,
};
use serde_json::{Value, json};

/// A flow type `name` of `count` phases `step1`… of one handler.
fn uniform_type(name: &str, count: usize, handler: &str, params: &str) -> String {
    let names: Vec<String> = (1..=count).map(|i| format!("step{i}")).collect();
    let phases: Vec<(&str, &str, &str, u32)> = names
        .iter()
        .map(|n| (n.as_str(), handler, params, 0))
        .collect();
    flow_type_toml(name, &phases)
}

fn slow_type() -> String {
    uniform_type("slow", 6, "sleep", "{ ms = 120 }")
}

const AUTH: &str = "[auth]\nenabled = true\n[[auth.keys]]\nkey = \"key-a\"\nclient_account_id = \"acme\"\nengagement_id = \"e1\"\n[[auth.keys]]\nkey = \"key-b\"\nclient_account_id = \"globex\"\nengagement_id = \"e2\"\n";

async fn create_as(server: &TestServer, key: &str, flow_type: &str) -> String {
    create(server, Some(key), flow_type).await
}

/// Creates a flow of `flow_type` (with `key` when auth is on); its id.
async fn create(server: &TestServer, key: Option<&str>, flow_type: &str) -> String {
    let mut request = common::client()
        .post(server.url("/v1/flows"))
        .insert_header(("X-User-Id", "ada"));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let mut response = request
        .send_json(&json!({ "flow_type": flow_type }))
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    let body: Value = response.json().await.unwrap();
    body["id"].as_str().unwrap().to_owned()
}

async fn a_reconnecting_client_gets_every_event_once_in_order(backend: Backend) {
    let db = TestDatabase::new(backend);
    let server = TestServer::start(config_for(&db, &slow_type()));
    let created = common::post(&server, "/v1/flows", &json!({ "flow_type": "slow" }))
        .await
        .body;
    let id = created["id"].as_str().unwrap().to_owned();
    let mut socket = EventSocket::connect(&server, &format!("/v1/flows/{id}/ws"), None).await;
    let mut received = Vec::new();
    while received.len() < 6 {
        received.push(
            socket
                .next_event(Duration::from_secs(10))
                .await
                .expect("an event"),
        );
    }
    drop(socket);
    let last = received.last().unwrap()["seq"].as_u64().unwrap();
    let mut socket =
        EventSocket::connect(&server, &format!("/v1/flows/{id}/ws?after={last}"), None).await;
    loop {
        let event = socket
            .next_event(Duration::from_secs(10))
            .await
            .expect("an event");
        let done = event["kind"] == "flow_completed";
        received.push(event);
        if done {
            break;
        }
    }
    assert!(
        socket
            .next_event(Duration::from_millis(300))
            .await
            .is_none(),
        "nothing after the end"
    );
    let seqs: Vec<u64> = received
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "every event once, in order"
    );
    let stored = get(&server, &format!("/v1/flows/{id}/events")).await.body["events"].clone();
    assert_eq!(
        Value::Array(received),
        stored,
        "the stream is the stored history"
    );
}

/// Many flows in flight at once, each watched on its own stream (from the start, or from
/// `seq` 2): a flow's stream carries its own events only, each once and in order, then nothing;
/// the tenant stream carries every event of every flow once, in id order.
async fn a_flows_stream_carries_none_of_another_flows_events(backend: Backend) {
    const FLOWS: usize = 40;
    let db = TestDatabase::new(backend);
    let phases: Vec<(String, &str, &str, u32)> = (1..=6)
        .map(|i| (format!("step{i}"), "sleep", "{ ms = 30 }", 0))
        .collect();
    let phases: Vec<(&str, &str, &str, u32)> = phases
        .iter()
        .map(|(n, h, p, r)| (n.as_str(), *h, *p, *r))
        .collect();
    let server = TestServer::start(config_for(&db, &flow_type_toml("quick", &phases)));
    let mut tenant = EventSocket::connect(&server, "/v1/events/ws", None).await;
    let body = json!({ "flow_type": "quick" });
    let ids: Vec<String> = futures_util::future::join_all(
        (0..FLOWS).map(|_| common::post(&server, "/v1/flows", &body)),
    )
    .await
    .into_iter()
    .map(|reply| reply.body["id"].as_str().unwrap().to_owned())
    .collect();
    let streams = ids.iter().enumerate().map(|(i, id)| {
        let server = &server;
        async move {
            let after = if i % 2 == 0 { 0 } else { 2 };
            let mut socket =
                EventSocket::connect(server, &format!("/v1/flows/{id}/ws?after={after}"), None)
                    .await;
            let mut seqs = Vec::new();
            loop {
                let event = socket
                    .next_event(Duration::from_secs(20))
                    .await
                    .expect("an event");
                assert_eq!(event["flow_id"], json!(id), "only the flow's own events");
                seqs.push(event["seq"].as_u64().unwrap());
                if event["kind"] == "flow_completed" {
                    break;
                }
            }
            assert!(
                socket
                    .next_event(Duration::from_millis(300))
                    .await
                    .is_none(),
                "nothing after the end"
            );
            assert_eq!(
                seqs,
                (after + 1..=15).collect::<Vec<u64>>(),
                "every event once, in order"
            );
        }
    });
    futures_util::future::join_all(streams).await;

    let mut by_flow: HashMap<String, Vec<u64>> = HashMap::new();
    let mut last_id = 0;
    let mut completed = 0;
    while completed < FLOWS {
        let event = tenant
            .next_event(Duration::from_secs(20))
            .await
            .expect("an event");
        let id = event["id"].as_i64().unwrap();
        assert!(id > last_id, "ids rise along the tenant stream");
        last_id = id;
        by_flow
            .entry(event["flow_id"].as_str().unwrap().to_owned())
            .or_default()
            .push(event["seq"].as_u64().unwrap());
        if event["kind"] == "flow_completed" {
            completed += 1;
        }
    }
    assert_eq!(by_flow.len(), FLOWS);
    for seqs in by_flow.values() {
        assert_eq!(seqs, &(1..=15).collect::<Vec<u64>>());
    }
}

async fn tenants_never_see_each_others_flows_or_events(backend: Backend) {
    let db = TestDatabase::new(backend);
    let server = TestServer::start(config_for(&db, &format!("{}{AUTH}", slow_type())));
    assert_eq!(get(&server, "/v1/flows").await.status, 401, "no key");
    let wrong = common::client()
        .get(server.url("/v1/flows"))
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401, "unknown key");
    assert_eq!(
        get(&server, "/healthz").await.status,
        200,
        "operations need no key"
    );

    let mut a_stream = EventSocket::connect(&server, "/v1/events/ws", Some("key-a")).await;
    let b_flow = create_as(&server, "key-b", "slow").await;
    let a_flow = create_as(&server, "key-a", "slow").await;

    for path in [
        format!("/v1/flows/{b_flow}"),
        format!("/v1/flows/{b_flow}/events"),
        format!("/v1/flows/{b_flow}/failures"),
    ] {
        let reply = common::client()
            .get(server.url(&path))
            .bearer_auth("key-a")
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status().as_u16(), 404, "{path}");
    }
    let pause = common::client()
        .post(server.url(&format!("/v1/flows/{b_flow}/pause")))
        .bearer_auth("key-a")
        .send()
        .await
        .unwrap();
    assert_eq!(pause.status().as_u16(), 404);
    assert_eq!(
        EventSocket::refused(&server, &format!("/v1/flows/{b_flow}/ws"), Some("key-a")).await,
        404
    );
    let mut listed = common::client()
        .get(server.url("/v1/flows"))
        .bearer_auth("key-a")
        .send()
        .await
        .unwrap();
    let listed: Value = listed.json().await.unwrap();
    let ids: Vec<&str> = listed["flows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![a_flow.as_str()]);
    assert_eq!(listed["flows"][0]["client_account_id"], "acme");
    assert_eq!(listed["flows"][0]["engagement_id"], "e1");
    assert_eq!(listed["flows"][0]["created_by"], "ada");

    let mut flows_seen = HashSet::new();
    loop {
        let event = a_stream
            .next_event(Duration::from_secs(10))
            .await
            .expect("an event");
        flows_seen.insert(event["flow_id"].as_str().unwrap().to_owned());
        if event["kind"] == "flow_completed" && event["flow_id"] == json!(a_flow) {
            break;
        }
    }
    assert_eq!(
        flows_seen,
        HashSet::from([a_flow.clone()]),
        "only the tenant's own events"
    );
}

async fn concurrent_identical_creates_make_one_flow(backend: Backend) {
    let db = TestDatabase::new(backend);
    let server = TestServer::start(config_for(&db, &slow_type()));
    let body = json!({ "flow_type": "slow", "input": { "batch": 7 } });
    let requests = (0..20).map(|_| {
        let url = server.url("/v1/flows");
        let body = body.clone();
        async move {
            let mut response = common::client()
                .post(url)
                .insert_header(("Idempotency-Key", "batch-7"))
                .send_json(&body)
                .await
                .unwrap();
            let flow: Value = response.json().await.unwrap();
            (
                response.status().as_u16(),
                flow["id"].as_str().unwrap().to_owned(),
            )
        }
    });
    let answers = futures_util::future::join_all(requests).await;
    let ids: HashSet<&String> = answers.iter().map(|(_, id)| id).collect();
    assert_eq!(ids.len(), 1, "one flow");
    assert_eq!(answers.iter().filter(|(s, _)| *s == 201).count(), 1);
    assert_eq!(answers.iter().filter(|(s, _)| *s == 200).count(), 19);
    let other = common::client()
        .post(server.url("/v1/flows"))
        .insert_header(("Idempotency-Key", "batch-7"))
        .send_json(&json!({ "flow_type": "slow", "input": { "batch": 8 } }))
        .await
        .unwrap();
    assert_eq!(other.status().as_u16(), 409, "same key, other body");
    let listed = get(&server, "/v1/flows").await.body["flows"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(listed, 1);
}

async fn pause_resume_cancel_and_retry_over_http(backend: Backend) {
    let db = TestDatabase::new(backend);
    let types = format!(
        "{}{}",
        slow_type(),
        flow_type_toml(
            "once",
            &[
                ("a", "noop", "{}", 0),
                ("b", "fail", "{ times = 1 }", 0),
                ("c", "noop", "{}", 0)
            ]
        )
    );
    let server = TestServer::start(config_for(&db, &types));
    let id = common::post(&server, "/v1/flows", &json!({ "flow_type": "slow" }))
        .await
        .body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let paused = common::post(&server, &format!("/v1/flows/{id}/pause"), &json!({})).await;
    assert_eq!(paused.body["status"], "paused");
    let again = common::post(&server, &format!("/v1/flows/{id}/pause"), &json!({})).await;
    assert_eq!(again.status, 200, "pause is idempotent");
    let held = wait_for_flow(&server, &id, Duration::from_secs(10), |f| {
        f["phases"][0]["status"] == "succeeded"
    })
    .await;
    actix_web::rt::time::sleep(Duration::from_millis(300)).await;
    let still = get(&server, &format!("/v1/flows/{id}")).await.body;
    assert_eq!(
        still["phases"][1]["status"], "pending",
        "held at the phase boundary: {held}"
    );
    assert_eq!(still["status"], "paused");
    let resumed = common::post(&server, &format!("/v1/flows/{id}/resume"), &json!({})).await;
    assert_eq!(resumed.body["status"], "running");
    wait_for_flow(&server, &id, Duration::from_secs(10), |f| {
        f["phases"][1]["status"] == "succeeded"
    })
    .await;
    let cancelled = common::post(&server, &format!("/v1/flows/{id}/cancel"), &json!({})).await;
    assert_eq!(cancelled.body["status"], "cancelled");
    actix_web::rt::time::sleep(Duration::from_millis(500)).await;
    let flow = get(&server, &format!("/v1/flows/{id}")).await.body;
    assert_eq!(flow["status"], "cancelled");
    assert!(
        flow["phases"].as_array().unwrap()[3..]
            .iter()
            .all(|p| p["status"] == "pending"),
        "no later phase ran: {flow}"
    );
    let conflict = common::post(&server, &format!("/v1/flows/{id}/resume"), &json!({})).await;
    assert_eq!(conflict.status, 409);
    assert!(
        conflict.body["detail"]
            .as_str()
            .unwrap()
            .contains("cancelled"),
        "409 names the current status"
    );

    let failed = common::post(&server, "/v1/flows", &json!({ "flow_type": "once" }))
        .await
        .body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let flow = wait_for_flow(&server, &failed, Duration::from_secs(10), is_terminal).await;
    assert_eq!(flow["status"], "failed");
    let retried = common::post(&server, &format!("/v1/flows/{failed}/retry"), &json!({})).await;
    assert_eq!(retried.status, 200);
    let flow = wait_for_flow(&server, &failed, Duration::from_secs(10), is_terminal).await;
    assert_eq!(flow["status"], "completed");
    assert_eq!(
        flow["phases"][0]["attempt"], 1,
        "retry resumed at the failed phase"
    );
    assert_eq!(flow["phases"][1]["attempt"], 2);
}

on_both_backends!(
    a_reconnecting_client_gets_every_event_once_in_order,
    a_flows_stream_carries_none_of_another_flows_events,
    tenants_never_see_each_others_flows_or_events,
    concurrent_identical_creates_make_one_flow,
    pause_resume_cancel_and_retry_over_http,
);

/// A client that stops reading costs the server nothing for long: its stream ends after the
/// send timeout, and the connection, which could otherwise never flush what it still holds,
/// is dropped by the kernel once the client's window has stayed closed past the server's
/// unacknowledged-write limit.
#[actix_web::test]
async fn a_client_that_never_reads_is_disconnected() {
    use std::io::Write as _;
    let db = TestDatabase::new(Backend::Sqlite);
    let server = TestServer::start(config_for(&db, &uniform_type("long", 60, "noop", "{}")));
    // 150 flows of 123 events: ~7 MB of tenant history, more than the kernel buffers hold.
    let mut ids = Vec::new();
    for _ in 0..150 {
        ids.push(create(&server, None, "long").await);
    }
    for id in &ids {
        wait_for_flow(&server, id, Duration::from_secs(60), is_terminal).await;
    }

    let address: std::net::SocketAddr = server
        .base
        .trim_start_matches("http://")
        .parse()
        .expect("address");
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&address.into()).expect("connects");
    let mut stream: std::net::TcpStream = socket.into();
    stream
        .write_all(
            b"GET /v1/events/ws?after=0 HTTP/1.1\r\nHost: flowd\r\nUpgrade: websocket\r\n\
              Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
              Sec-WebSocket-Version: 13\r\n\r\n",
        )
        .unwrap();
    // It never reads. A masked, empty pong every second shows whether the server still holds
    // the connection: a write fails once the server has reset it.
    const PONG: [u8; 6] = [0x8a, 0x80, 1, 2, 3, 4];
    let started = std::time::Instant::now();
    let dropped_after = loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if stream.write_all(&PONG).is_err() {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "a client that never reads still holds its connection after 2 minutes"
        );
    };
    // Every other request is served meanwhile and after.
    let health = get(&server, "/healthz").await;
    assert_eq!(health.status, 200, "after {dropped_after:?}");
}

/// A master flow's stream opened with `after` past what is committed yet (a cursor from a
/// node or a read ahead of this one) carries only the flow's events after that `seq`.
#[actix_web::test]
async fn a_stream_from_a_seq_not_yet_committed_starts_after_it() {
    let db = TestDatabase::new(Backend::Sqlite);
    let server = TestServer::start(config_for(
        &db,
        &uniform_type("two_steps", 2, "sleep", "{ ms = 400 }"),
    ));
    let id = create(&server, None, "two_steps").await;
    // Committed at once: seq 1-3 (initialized, started, step1 started); 4-5 after 400 ms;
    // 6-7 (step2 succeeded, flow completed) after 800 ms.
    let mut socket =
        EventSocket::connect(&server, &format!("/v1/flows/{id}/ws?after=5"), None).await;
    let mut seqs = Vec::new();
    while let Some(event) = socket.next_event(Duration::from_secs(10)).await {
        assert_eq!(event["flow_id"], id.as_str());
        seqs.push(event["seq"].as_u64().unwrap());
        if event["kind"] == "flow_completed" {
            break;
        }
    }
    assert_eq!(seqs, [6, 7]);
}
