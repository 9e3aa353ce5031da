//! The CLI client against a real server: create, list, show, watch (exit codes), flow-types.

mod common;

use std::process::{Command, Output};

use common::{Backend, TestDatabase, TestServer, config_for, flow_type_toml};

fn flowd(server: &TestServer, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flowd"))
        .args(args)
        .args(["--server", &server.base])
        .env_remove("FLOWD_API_KEY")
        .output()
        .expect("flowd runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

async fn the_cli_creates_lists_shows_and_watches_flows(backend: Backend) {
    let db = TestDatabase::new(backend);
    let types = [
        flow_type_toml(
            "report",
            &[
                ("collect", "sleep", "{ ms = 100 }", 0),
                ("render", "noop", "{}", 0),
            ],
        ),
        flow_type_toml("broken", &[("collect", "fail", "{ times = 5 }", 0)]),
        flow_type_toml(
            "fanned",
            &[
                (
                    "fan",
                    "child_flows",
                    "{ flow_type = \"report\", count = 3 }",
                    0,
                ),
                ("merge", "noop", "{}", 0),
            ],
        ),
    ]
    .concat();
    let server = TestServer::start(config_for(&db, &types));

    let created = flowd(
        &server,
        &["flows", "create", "report", "--input", "{\"month\": 11}"],
    );
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let id = stdout(&created)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    assert!(stdout(&created).contains("running"));

    let watched = flowd(&server, &["flows", "watch", &id]);
    assert_eq!(watched.status.code(), Some(0), "completed flows exit 0");
    let text = stdout(&watched);
    assert!(
        text.contains("flow_completed") && text.contains("100.0%"),
        "{text}"
    );

    let listed = stdout(&flowd(&server, &["flows", "list", "--status", "completed"]));
    assert!(listed.contains(&id), "{listed}");
    let shown = stdout(&flowd(&server, &["flows", "show", &id]));
    assert!(
        shown.contains("collect") && shown.contains("render") && shown.contains("succeeded"),
        "{shown}"
    );
    let types = stdout(&flowd(&server, &["flow-types", "list"]));
    assert!(
        types.contains("report") && types.contains("collect → render"),
        "{types}"
    );

    let broken = flowd(&server, &["flows", "create", "broken"]);
    let broken_id = stdout(&broken)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(
        flowd(&server, &["flows", "watch", &broken_id])
            .status
            .code(),
        Some(1),
        "failed flows exit 1"
    );

    // A master's stream carries its children's events; only the master's end ends the watch.
    let fanned = flowd(&server, &["flows", "create", "fanned"]);
    let fanned_id = stdout(&fanned)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let watched = flowd(&server, &["flows", "watch", &fanned_id]);
    assert_eq!(watched.status.code(), Some(0));
    let text = stdout(&watched);
    assert_eq!(text.matches("flow_completed child").count(), 3, "{text}");
    assert!(
        text.contains("merge"),
        "watched to the master's end: {text}"
    );

    let refused = flowd(&server, &["flows", "create", "nope"]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("422"));
}

on_both_backends!(the_cli_creates_lists_shows_and_watches_flows);

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn json_of(output: &Output) -> serde_json::Value {
    assert!(output.status.success(), "{}", stderr(output));
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(output)))
}

#[actix_web::test]
async fn every_flow_command_works_and_reads_take_json() {
    let db = TestDatabase::new(Backend::Sqlite);
    let types = [
        flow_type_toml(
            "slow",
            &[
                ("one", "sleep", "{ ms = 300 }", 0),
                ("two", "sleep", "{ ms = 300 }", 0),
                ("three", "sleep", "{ ms = 300 }", 0),
            ],
        ),
        flow_type_toml("broken", &[("collect", "fail", "{ times = 1 }", 0)]),
    ]
    .concat();
    let server = TestServer::start(config_for(&db, &types));

    let created = json_of(&flowd(
        &server,
        &[
            "flows",
            "create",
            "slow",
            "--json",
            "--idempotency-key",
            "k1",
        ],
    ));
    let id = created["id"].as_str().expect("id").to_owned();
    let again = json_of(&flowd(
        &server,
        &[
            "flows",
            "create",
            "slow",
            "--json",
            "--idempotency-key",
            "k1",
        ],
    ));
    assert_eq!(again["id"], id.as_str(), "the idempotency key is sent");

    let paused = flowd(&server, &["flows", "pause", &id, "--json"]);
    assert!(paused.status.success(), "{}", stderr(&paused));
    let resumed = flowd(&server, &["flows", "resume", &id]);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    assert!(stdout(&resumed).contains(&id));
    let cancelled = json_of(&flowd(&server, &["flows", "cancel", &id, "--json"]));
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");

    let shown = json_of(&flowd(&server, &["flows", "show", &id, "--json"]));
    assert_eq!(shown["id"], id.as_str());
    let events = json_of(&flowd(&server, &["flows", "events", &id, "--json"]));
    let kinds: Vec<&str> = events["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert!(kinds.contains(&"flow_cancelled"), "{kinds:?}");
    let text = stdout(&flowd(&server, &["flows", "events", &id]));
    assert!(text.contains("flow_cancelled"), "{text}");
    let listed = json_of(&flowd(
        &server,
        &["flows", "list", "--json", "--flow-type", "slow"],
    ));
    assert_eq!(listed["flows"][0]["id"], id.as_str());

    let broken = json_of(&flowd(&server, &["flows", "create", "broken", "--json"]));
    let broken_id = broken["id"].as_str().expect("id").to_owned();
    assert_eq!(
        flowd(&server, &["flows", "watch", &broken_id])
            .status
            .code(),
        Some(1)
    );
    let failures = json_of(&flowd(
        &server,
        &["flows", "failures", &broken_id, "--json"],
    ));
    assert_eq!(failures["failures"][0]["phase"], "collect", "{failures}");
    let text = stdout(&flowd(&server, &["flows", "failures", &broken_id]));
    assert!(text.contains("collect"), "{text}");
    let retried = flowd(&server, &["flows", "retry", &broken_id]);
    assert!(retried.status.success(), "{}", stderr(&retried));
    let watched = flowd(&server, &["flows", "watch", &broken_id, "--json"]);
    assert_eq!(watched.status.code(), Some(0), "{}", stderr(&watched));
    for line in stdout(&watched).lines() {
        let event: serde_json::Value = serde_json::from_str(line).expect("one event per line");
        assert!(event["seq"].is_u64());
    }

    let refused = flowd(&server, &["flows", "pause", &broken_id]);
    assert_eq!(
        refused.status.code(),
        Some(2),
        "a 409 is the caller's mistake"
    );
    let unreachable = Command::new(env!("CARGO_BIN_EXE_flowd"))
        .args(["flows", "list", "--server", "http://127.0.0.1:9"])
        .output()
        .expect("runs");
    assert_eq!(
        unreachable.status.code(),
        Some(3),
        "{}",
        stderr(&unreachable)
    );
}

#[actix_web::test]
async fn flow_types_are_listed_shown_and_put_from_toml_or_json() {
    let db = TestDatabase::new(Backend::Sqlite);
    let server = TestServer::start(config_for(
        &db,
        &flow_type_toml("report", &[("collect", "noop", "{}", 0)]),
    ));
    let listed = json_of(&flowd(&server, &["flow-types", "list", "--json"]));
    assert_eq!(listed["flow_types"][0]["name"], "report");
    let shown = json_of(&flowd(&server, &["flow-types", "show", "report", "--json"]));
    assert_eq!(shown["phases"][0]["name"], "collect");
    let text = stdout(&flowd(&server, &["flow-types", "show", "report"]));
    assert!(text.contains("collect") && text.contains("noop"), "{text}");

    let toml = db.dir().join("audit.toml");
    std::fs::write(
        &toml,
        "name = \"audit\"\n[[phases]]\nname = \"scan\"\nhandler = \"sleep\"\nparams = { ms = 1 }\n",
    )
    .expect("written");
    let toml = toml.to_string_lossy().into_owned();
    let put = json_of(&flowd(&server, &["flow-types", "put", &toml, "--json"]));
    assert_eq!(put["version"], 1);
    let repeated = json_of(&flowd(&server, &["flow-types", "put", &toml, "--json"]));
    assert_eq!(
        repeated["version"], 1,
        "an unchanged file is no new version"
    );

    let json_file = db.dir().join("audit.json");
    std::fs::write(
        &json_file,
        r#"{"phases": [{"name": "scan", "handler": "noop"}, {"name": "file", "handler": "noop"}]}"#,
    )
    .expect("written");
    let json_file = json_file.to_string_lossy().into_owned();
    let put = flowd(
        &server,
        &["flow-types", "put", &json_file, "--name", "audit"],
    );
    assert!(put.status.success(), "{}", stderr(&put));
    assert!(stdout(&put).contains("v2") && stdout(&put).contains("scan → file"));

    let nameless = flowd(&server, &["flow-types", "put", &json_file]);
    assert_eq!(nameless.status.code(), Some(2));
    assert!(
        stderr(&nameless).contains("--name"),
        "{}",
        stderr(&nameless)
    );
}

#[actix_web::test]
async fn a_closed_pipe_ends_the_output_quietly() {
    let db = TestDatabase::new(Backend::Sqlite);
    let server = TestServer::start(config_for(
        &db,
        &flow_type_toml("report", &[("collect", "noop", "{}", 0)]),
    ));
    for _ in 0..5 {
        assert!(
            flowd(&server, &["flows", "create", "report"])
                .status
                .success()
        );
    }
    // The reader is gone before flowd writes: like `flowd flows list | head -0`.
    let mut child = Command::new(env!("CARGO_BIN_EXE_flowd"))
        .args(["flows", "list", "--server", &server.base])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("runs");
    drop(child.stdout.take());
    let output = child.wait_with_output().expect("ends");
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(!stderr(&output).contains("panicked"), "{}", stderr(&output));
}

#[test]
fn completions_are_generated_and_config_belongs_to_serve_only() {
    for shell in ["bash", "zsh", "fish"] {
        let output = Command::new(env!("CARGO_BIN_EXE_flowd"))
            .args(["completions", shell])
            .output()
            .expect("runs");
        assert!(output.status.success(), "{shell}");
        assert!(stdout(&output).contains("flow-types"), "{shell}");
    }
    let help = Command::new(env!("CARGO_BIN_EXE_flowd"))
        .args(["flows", "list", "--help"])
        .output()
        .expect("runs");
    assert!(!stdout(&help).contains("--config"), "{}", stdout(&help));
    let misplaced = Command::new(env!("CARGO_BIN_EXE_flowd"))
        .args(["--config", "x.toml", "flows", "list"])
        .output()
        .expect("runs");
    assert_eq!(misplaced.status.code(), Some(2));
}

#[test]
fn config_on_the_command_line_wins_over_flowd_config_before_or_after_serve() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = |name: &str| dir.path().join(name).display().to_string();
    let (from_env, given) = (missing("env.toml"), missing("given.toml"));
    for args in [
        vec!["--config", given.as_str(), "serve"],
        vec!["serve", "--config", given.as_str()],
        vec!["--config", given.as_str()],
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_flowd"))
            .args(&args)
            .env("FLOWD_CONFIG", &from_env)
            .output()
            .expect("runs");
        // Neither file exists: the error names the one the server tried to read.
        assert_eq!(
            output.status.code(),
            Some(1),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(
            stderr(&output).contains(&given) && !stderr(&output).contains(&from_env),
            "{args:?}: {}",
            stderr(&output)
        );
    }
}
