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
