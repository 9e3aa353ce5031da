//! Black-box test support: the real `flowd` binary on a free port, over HTTP, with a fresh
//! database per test — a SQLite file in a temp dir, or a throw-away PostgreSQL database when
//! `FLOWD_TEST_POSTGRES_URL` is set (then, and only then, the PostgreSQL variants are built).
//! The database and the server come from `flowd::testing`; the HTTP and websocket helpers are
//! the tests' own.

#![allow(dead_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use flowd::testing::{Backend, TestDatabase, TestServer};
use serde_json::Value;

/// Runs `scenario` on SQLite, and on PostgreSQL when the tests were built with
/// `FLOWD_TEST_POSTGRES_URL` set (cfg `flowd_postgres_tests`, see build.rs). Without it the
/// PostgreSQL variants do not exist, so the summary never counts them as passed.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[actix_web::test]
                async fn $name() {
                    super::$name(super::common::Backend::Sqlite).await;
                }
            )+
        }
        #[cfg(flowd_postgres_tests)]
        mod postgres {
            $(
                #[actix_web::test]
                async fn $name() {
                    super::$name(super::common::Backend::Postgres).await;
                }
            )+
        }
    };
}

/// Writes a config with `flow_types_toml` (and any extra TOML) for `db`, and starts the server.
pub fn config_for(db: &TestDatabase, extra_toml: &str) -> PathBuf {
    let path = db.dir().join("config.toml");
    let toml = format!(
        "[server]\nbind = \"127.0.0.1:0\"\nworkers = 2\n[database]\nurl = \"{}\"\npool_size = 4\n[health]\nping_interval_ms = 200\nping_timeout_ms = 2000\n{}",
        db.url, extra_toml
    );
    std::fs::write(&path, toml).expect("config written");
    path
}

/// A response: status, content type and JSON body (Null when not JSON).
pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub body: Value,
}

pub fn client() -> awc::Client {
    awc::Client::builder()
        .timeout(Duration::from_secs(30))
        .finish()
}

async fn read(
    mut response: awc::ClientResponse<
        impl futures_util::Stream<Item = Result<actix_web::web::Bytes, awc::error::PayloadError>>
        + Unpin,
    >,
) -> Reply {
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let bytes = response.body().limit(64 << 20).await.expect("body");
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Reply {
        status,
        content_type,
        body,
    }
}

pub async fn get(server: &TestServer, path: &str) -> Reply {
    read(client().get(server.url(path)).send().await.expect("GET")).await
}

pub async fn post(server: &TestServer, path: &str, body: &Value) -> Reply {
    read(
        client()
            .post(server.url(path))
            .send_json(body)
            .await
            .expect("POST"),
    )
    .await
}

pub async fn request(server: &TestServer, method: &str, path: &str, body: Option<&Value>) -> Reply {
    let method = awc::http::Method::from_bytes(method.as_bytes()).expect("method");
    let request = client().request(method, server.url(path));
    let response = match body {
        Some(body) => request.send_json(body).await,
        None => request.send().await,
    };
    read(response.expect("request")).await
}

pub async fn post_raw(server: &TestServer, path: &str, content_type: &str, body: Vec<u8>) -> Reply {
    let request = client()
        .post(server.url(path))
        .insert_header(("content-type", content_type));
    read(request.send_body(body).await.expect("POST")).await
}

/// Polls a flow until `done` holds, failing after `timeout`. Returns the flow.
pub async fn wait_for_flow(
    server: &TestServer,
    id: &str,
    timeout: Duration,
    mut done: impl FnMut(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let reply = get(server, &format!("/v1/flows/{id}")).await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        if done(&reply.body) {
            return reply.body;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting; flow is {}",
            reply.body
        );
        actix_web::rt::time::sleep(Duration::from_millis(25)).await;
    }
}

pub fn is_terminal(flow: &Value) -> bool {
    matches!(
        flow["status"].as_str(),
        Some("completed" | "failed" | "cancelled")
    )
}

/// TOML for one flow type whose phases are `(name, handler, params, retries)`.
pub fn flow_type_toml(name: &str, phases: &[(&str, &str, &str, u32)]) -> String {
    let mut toml = format!("[[flow_types]]\nname = \"{name}\"\nversion = 1\n");
    for (phase, handler, params, retries) in phases {
        toml.push_str(&format!(
            "[[flow_types.phases]]\nname = \"{phase}\"\nhandler = \"{handler}\"\nparams = {params}\nretries = {retries}\nretry_backoff_ms = 10\n"
        ));
    }
    toml
}

/// A websocket client on one of the stream endpoints.
pub struct EventSocket {
    framed: actix_codec::Framed<awc::BoxedSocket, awc::ws::Codec>,
}

impl EventSocket {
    /// Connects; panics unless the handshake succeeds.
    pub async fn connect(server: &TestServer, path: &str, key: Option<&str>) -> Self {
        let mut request = client().ws(server.url(path));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let (_, framed) = request.connect().await.expect("websocket handshake");
        Self { framed }
    }

    /// The handshake's HTTP status when it is refused.
    pub async fn refused(server: &TestServer, path: &str, key: Option<&str>) -> u16 {
        let mut request = client().ws(server.url(path));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        match request.connect().await {
            Err(awc::error::WsClientError::InvalidResponseStatus(status)) => status.as_u16(),
            Ok(_) => panic!("the handshake was accepted"),
            Err(other) => panic!("unexpected error: {other}"),
        }
    }

    /// The next event, answering pings; `None` if nothing arrives within `timeout`.
    pub async fn next_event(&mut self, timeout: Duration) -> Option<Value> {
        use futures_util::{SinkExt, StreamExt};
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let frame = actix_web::rt::time::timeout(left, self.framed.next())
                .await
                .ok()??;
            match frame.expect("websocket frame") {
                awc::ws::Frame::Text(bytes) => {
                    return Some(serde_json::from_slice(&bytes).expect("event JSON"));
                }
                awc::ws::Frame::Ping(bytes) => {
                    let _ = self.framed.send(awc::ws::Message::Pong(bytes)).await;
                }
                awc::ws::Frame::Close(_) => return None,
                _ => {}
            }
        }
    }
}

/// `GET path` with `Authorization: Bearer key` when a key is given.
pub async fn get_as(server: &TestServer, path: &str, key: Option<&str>) -> Reply {
    let mut request = client().get(server.url(path));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    read(request.send().await.expect("GET")).await
}
