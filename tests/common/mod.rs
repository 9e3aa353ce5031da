//! Black-box test support: the real `flowd` binary on a free port, over HTTP, with a fresh
//! database per test — a SQLite file in a temp dir, or a throw-away PostgreSQL database when
//! `FLOWD_TEST_POSTGRES_URL` is set (then, and only then, the PostgreSQL variants are built).

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Which database a scenario runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

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

/// A database made for one test and dropped after it.
pub struct TestDatabase {
    pub url: String,
    dir: tempfile::TempDir,
    postgres: Option<(String, String)>,
}

impl TestDatabase {
    pub fn new(backend: Backend) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        match backend {
            Backend::Sqlite => Self {
                url: format!("sqlite://{}", dir.path().join("flowd.db").display()),
                dir,
                postgres: None,
            },
            Backend::Postgres => {
                let admin =
                    std::env::var("FLOWD_TEST_POSTGRES_URL").expect("FLOWD_TEST_POSTGRES_URL");
                let name = format!("flowd_t_{}", uuid::Uuid::new_v4().simple());
                psql(
                    &admin,
                    &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                );
                psql(&admin, &format!("CREATE DATABASE {name}"));
                let base = admin
                    .rsplit_once('/')
                    .map_or(admin.as_str(), |(base, _)| base);
                Self {
                    url: format!("{base}/{name}"),
                    dir,
                    postgres: Some((admin.clone(), name)),
                }
            }
        }
    }

    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Runs `statement` on the admin connection (PostgreSQL only), e.g. to kill connections.
    pub fn admin(&self, statement: &str) {
        let (admin, _) = self.postgres.as_ref().expect("a PostgreSQL test database");
        psql(admin, statement);
    }

    /// The throw-away PostgreSQL database's name.
    pub fn postgres_name(&self) -> Option<&str> {
        self.postgres.as_ref().map(|(_, name)| name.as_str())
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Some((admin, name)) = &self.postgres {
            psql(
                admin,
                &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            );
        }
    }
}

fn psql(url: &str, statement: &str) {
    let status = Command::new("psql")
        .env("PGOPTIONS", "--client-min-messages=warning")
        .args([url, "-q", "-v", "ON_ERROR_STOP=1", "-c", statement])
        .stdout(Stdio::null())
        .status()
        .expect("psql runs");
    assert!(status.success(), "psql failed: {statement}");
}

/// A running `flowd` process.
pub struct TestServer {
    pub base: String,
    pub config: PathBuf,
    child: Child,
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

impl TestServer {
    /// Starts the binary and waits for its "listening" line.
    pub fn start(config: PathBuf) -> Self {
        Self::start_with_env(config, &[])
    }

    /// Like [`TestServer::start`], with extra `FLOWD_*` overrides in the environment.
    pub fn start_with_env(config: PathBuf, env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_flowd"))
            .arg("--config")
            .arg(&config)
            .envs(env.iter().copied())
            .env(
                "RUST_LOG",
                std::env::var("TEST_LOG").unwrap_or_else(|_| "error".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("flowd starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read listening line");
        let base = line
            .trim()
            .strip_prefix("flowd listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            .to_owned();
        Self {
            base,
            config,
            child,
        }
    }

    /// SIGKILL: no shutdown hooks, no flush — a crash.
    pub fn kill(mut self) -> PathBuf {
        self.child.kill().expect("kill");
        self.child.wait().expect("reap");
        self.config.clone()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
