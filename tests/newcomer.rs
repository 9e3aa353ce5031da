//! The first hour with flowd, through the real binary: startup mistakes end with one clear
//! message and a non-zero exit (never a panic), JSON logs are parseable with each key once
//! and no API key, definitions are idempotent and refused with a hint when changed in place,
//! and a worker naming a phase that does not exist hears it.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{TestDatabase, TestServer, config_for, flow_type_toml, get, post, request};
use serde_json::{Value, json};

fn flowd_in(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flowd"))
        .current_dir(dir)
        .args(args)
        .env_remove("FLOWD_CONFIG")
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("flowd runs")
}

/// Starts `flowd --config` with `toml`; expects it to refuse with one line matching `expected`.
fn refused(toml: &str, expected: &[&str]) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    refused_in(dir.path(), toml, expected)
}

/// [`refused`] in `dir`, where an earlier start may have left a database.
fn refused_in(dir: &Path, toml: &str, expected: &[&str]) -> String {
    std::fs::write(dir.join("c.toml"), toml).expect("config written");
    let output = flowd_in(dir, &["--config", "c.toml"], &[]);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(1), "exit code; stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("flowd: "))
        .collect();
    assert_eq!(errors.len(), 1, "one error line: {stderr}");
    for text in expected {
        assert_eq!(
            errors[0].matches(text).count(),
            1,
            "`{text}` once in {:?}",
            errors[0]
        );
    }
    errors[0].to_owned()
}

#[test]
fn a_taken_port_is_one_clear_error_without_a_panic() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = taken.local_addr().expect("address");
    refused(
        &format!("[server]\nbind = \"{address}\"\n[database]\nurl = \"sqlite://f.db\"\n"),
        &[
            &format!("cannot listen on {address}"),
            "Address already in use",
        ],
    );
}

#[test]
fn a_port_out_of_range_is_refused() {
    refused(
        "[server]\nbind = \"127.0.0.1:99999\"\n",
        &["server.bind", "port 99999 is out of range"],
    );
}

#[test]
fn unknown_sections_and_keys_are_refused_by_name() {
    refused("[serverr]\nbind = \"127.0.0.1:0\"\n", &["`serverr`"]);
    refused("[server]\nbnid = \"127.0.0.1:0\"\n", &["`bnid`", "server"]);
    refused("[log]\nfilter = \"[[[=\"\n", &["log.filter"]);
    refused(
        &flow_type_toml("typo", &[("collect", "noopp", "{}", 0)]),
        &["flow type `typo`", "unknown handler `noopp`"],
    );
}

#[test]
fn postgres_down_names_host_port_and_reason() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = closed.local_addr().expect("address");
    drop(closed);
    refused(
        &format!(
            "[server]\nbind = \"127.0.0.1:0\"\n[database]\nurl = \"postgres://postgres@{address}/flowd\"\n"
        ),
        &[&format!("cannot reach PostgreSQL at {address}"), "refused"],
    );
}

#[test]
fn a_changed_definition_without_a_new_version_says_to_bump_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let base = "[server]\nbind = \"127.0.0.1:0\"\n[database]\nurl = \"sqlite://f.db\"\n";
    let first = flow_type_toml("report", &[("collect", "noop", "{}", 0)]);
    std::fs::write(dir.path().join("c.toml"), format!("{base}{first}")).expect("written");
    let mut server = Command::new(env!("CARGO_BIN_EXE_flowd"))
        .current_dir(dir.path())
        .args(["--config", "c.toml"])
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .spawn()
        .expect("starts");
    let mut line = String::new();
    BufReader::new(server.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("listening line");
    assert!(line.starts_with("flowd listening on"), "{line}");
    server.kill().expect("kill");
    server.wait().expect("reaped");

    let changed = flow_type_toml("report", &[("collect", "noop", "{}", 3)]);
    let error = refused_in(
        dir.path(),
        &format!("{base}{changed}"),
        &["`report`", "version 1", "`retries`", "bump `version`"],
    );
    assert!(error.contains("phase `collect`"), "{error}");
}

#[test]
fn without_a_config_file_it_warns_where_it_looked() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("f.db").display());
    let stderr_path = dir.path().join("stderr.log");
    let mut server = Command::new(env!("CARGO_BIN_EXE_flowd"))
        .current_dir(dir.path())
        .env_remove("FLOWD_CONFIG")
        .env("RUST_LOG", "warn")
        .env("FLOWD_SERVER__BIND", "127.0.0.1:0")
        .env("FLOWD_DATABASE__URL", &url)
        .env("FLOWD_AUTH__ENABLED", "true")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
        .spawn()
        .expect("starts");
    let mut line = String::new();
    BufReader::new(server.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("listening line");
    server.kill().expect("kill");
    server.wait().expect("reaped");
    let stderr = std::fs::read_to_string(&stderr_path).expect("stderr");
    assert!(line.starts_with("flowd listening on"), "{line} {stderr}");
    let looked = dir.path().join("config.toml");
    assert!(
        stderr.contains("no configuration file") && stderr.contains(&*looked.to_string_lossy()),
        "{stderr}"
    );
    assert!(stderr.contains("auth.keys is empty"), "{stderr}");
}

/// A server started by hand, its stderr kept in a file.
struct LoggedServer {
    server: std::process::Child,
    base: String,
    log: std::path::PathBuf,
}

impl LoggedServer {
    fn start(db: &TestDatabase, extra_toml: &str, rust_log: &str) -> Self {
        let config = config_for(db, extra_toml);
        let log = db.dir().join("stderr.log");
        let mut server = Command::new(env!("CARGO_BIN_EXE_flowd"))
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", rust_log)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("starts");
        let mut line = String::new();
        BufReader::new(server.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("listening line");
        let base = line
            .trim()
            .strip_prefix("flowd listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            .to_owned();
        Self { server, base, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for LoggedServer {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

#[actix_web::test]
async fn json_logs_have_each_key_once_and_no_access_token() {
    let db = TestDatabase::new(common::Backend::Sqlite);
    let types = flow_type_toml("panics", &[("boom", "panic", "{ times = 1 }", 1)]);
    let server = LoggedServer::start(
        &db,
        &format!("[log]\nformat = \"json\"\n[faults]\nenabled = true\n{types}"),
        "info,flowd::telemetry=debug",
    );
    let client = common::client();
    let created = client
        .post(format!("{}/v1/flows", server.base))
        .send_json(&json!({ "flow_type": "panics" }))
        .await
        .expect("create");
    assert_eq!(created.status().as_u16(), 201);
    let health = client
        .get(format!("{}/healthz?access_token=sekrit-key-1", server.base))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status().as_u16(), 200);

    let deadline = Instant::now() + Duration::from_secs(20);
    let log = loop {
        let log = server.log();
        if log.contains("phase handler panicked") && log.contains("/healthz?access_token=***") {
            break log;
        }
        assert!(Instant::now() < deadline, "log so far:\n{log}");
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!log.contains("sekrit-key-1"), "{log}");
    for line in log.lines() {
        let value: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let object = value.as_object().expect("an object per line");
        assert!(object.contains_key("message") && object.contains_key("level"));
        // serde_json keeps the last of duplicate keys: count them in the text instead.
        let top_level = line.split("\"span").next().unwrap_or(line);
        assert_eq!(
            top_level.matches("\"message\":").count(),
            1,
            "one message key: {line}"
        );
    }
    let panicked = log
        .lines()
        .find(|l| l.contains("phase handler panicked"))
        .expect("panic line");
    let panicked: Value = serde_json::from_str(panicked).expect("JSON");
    assert_eq!(panicked["message"], "phase handler panicked");
    assert!(panicked["detail"].is_string(), "{panicked}");
}

#[actix_web::test]
async fn an_identical_put_without_version_is_no_new_version() {
    let db = TestDatabase::new(common::Backend::Sqlite);
    let server = TestServer::start(config_for(&db, ""));
    let body = json!({ "phases": [{ "name": "collect", "handler": "noop" }] });
    let first = request(&server, "PUT", "/v1/flow-types/report", Some(&body)).await;
    assert_eq!(first.status, 201, "{}", first.body);
    assert_eq!(first.body["version"], 1);
    for _ in 0..2 {
        let again = request(&server, "PUT", "/v1/flow-types/report", Some(&body)).await;
        assert_eq!(again.status, 200, "{}", again.body);
        assert_eq!(again.body["version"], 1);
    }
    let changed = json!({ "phases": [{ "name": "collect", "handler": "noop", "retries": 1 }] });
    let second = request(&server, "PUT", "/v1/flow-types/report", Some(&changed)).await;
    assert_eq!(second.status, 201);
    assert_eq!(second.body["version"], 2);

    let conflict = json!({ "version": 1, "phases": [{ "name": "other", "handler": "noop" }] });
    let refused = request(&server, "PUT", "/v1/flow-types/report", Some(&conflict)).await;
    assert_eq!(refused.status, 409);
    let detail = refused.body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("bump `version`") && detail.contains("now [other]"),
        "{detail}"
    );
}

#[actix_web::test]
async fn a_worker_naming_no_phase_gets_422_and_the_flow_goes_on() {
    let db = TestDatabase::new(common::Backend::Sqlite);
    let types = "[[flow_types]]\nname = \"crewed\"\nversion = 1\n[[flow_types.phases]]\nname = \"crew\"\nhandler = \"external\"\nparams = { queue = \"crews\" }\n[[flow_types.phases]]\nname = \"wrap\"\nhandler = \"noop\"\n";
    let server = TestServer::start(config_for(&db, types));
    let created = post(&server, "/v1/flows", &json!({ "flow_type": "crewed" })).await;
    assert_eq!(created.status, 201);
    let id = created.body["id"].as_str().expect("id").to_owned();
    let leased = post(
        &server,
        "/v1/queues/crews/poll",
        &json!({ "wait_ms": 5000 }),
    )
    .await;
    assert_eq!(leased.status, 200, "{}", leased.body);
    let task = leased.body["task_id"].as_str().expect("task").to_owned();
    let lease = leased.body["lease_id"].as_str().expect("lease").to_owned();

    let wrong = post(
        &server,
        &format!("/v1/tasks/{task}/complete"),
        &json!({ "lease_id": lease, "output": {}, "next_phase": "wrapp" }),
    )
    .await;
    assert_eq!(wrong.status, 422, "{}", wrong.body);
    assert_eq!(wrong.body["type"], "/problems/invalid-next-phase");
    let flow = get(&server, &format!("/v1/flows/{id}")).await.body;
    assert_eq!(flow["status"], "running", "{flow}");

    let right = post(
        &server,
        &format!("/v1/tasks/{task}/complete"),
        &json!({ "lease_id": lease, "output": {}, "next_phase": "wrap" }),
    )
    .await;
    assert_eq!(right.status, 200, "{}", right.body);
    let flow =
        common::wait_for_flow(&server, &id, Duration::from_secs(10), common::is_terminal).await;
    assert_eq!(flow["status"], "completed", "{flow}");
}

#[actix_web::test]
async fn the_openapi_subcommand_prints_the_served_document() {
    let db = TestDatabase::new(common::Backend::Sqlite);
    let server = TestServer::start(config_for(&db, ""));
    let served = get(&server, "/openapi.json").await.body;
    let dir = tempfile::tempdir().expect("temp dir");
    let printed = flowd_in(dir.path(), &["openapi"], &[]);
    assert!(printed.status.success());
    let printed: Value = serde_json::from_slice(&printed.stdout).expect("JSON");
    assert_eq!(printed, served);
    assert_eq!(
        served["paths"]["/v1/flows"]["get"]["security"],
        json!([{ "api_key": [] }])
    );
}
