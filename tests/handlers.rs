//! The `command` and `http` phase handlers through the real server: what a user sees in the
//! flow, its phases' outputs and its failure journal.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use actix_web::{App, HttpResponse, HttpServer, web};
use common::{
    Backend, TestDatabase, TestServer, config_for, flow_type_toml, get, is_terminal, post,
    wait_for_flow,
};
use serde_json::{Value, json};

/// Reads the context from stdin and answers with something derived from it.
const DOUBLER: &str = r#"import json, sys; ctx = json.load(sys.stdin); print(json.dumps({"output": {"doubled": ctx["input"]["n"] * 2, "phase": ctx["phase"], "key": ctx["idempotency_key"], "tenant": ctx["client_account_id"]}}))"#;
/// Ends the flow early through `next_phase: null`.
const FINISHER: &str =
    r#"import json; print(json.dumps({"output": {"done": True}, "next_phase": None}))"#;
const FAILER: &str = r#"import sys; sys.stderr.write("the crew lost its way\n"); sys.exit(3)"#;
const NOT_JSON: &str = r#"print("certainly not json")"#;
/// Valid JSON that no backend can store: a NUL inside a string.
const NUL_OUTPUT: &str = r#"import json; print(json.dumps({"s": "a" + chr(0) + "b"}))"#;
/// Writes its PID to the file named by its first argument, then hangs.
const HANGER: &str = r#"import os, sys, time, pathlib; pathlib.Path(sys.argv[1]).write_text(str(os.getpid())); time.sleep(600)"#;

fn python(script: &str, extra_args: &[&str]) -> String {
    let mut args = vec!["'-c'".to_owned(), format!("'{script}'")];
    args.extend(extra_args.iter().map(|a| format!("'{a}'")));
    format!("{{ program = \"python3\", args = [{}] }}", args.join(", "))
}

fn with_timeout(toml: String, phase: &str, timeout_s: u32) -> String {
    toml.replace(
        &format!("name = \"{phase}\"\n"),
        &format!("name = \"{phase}\"\ntimeout_s = {timeout_s}\n"),
    )
}

fn command_types(dir: &Path) -> String {
    let pid_file = dir.join("hanger.pid");
    [
        flow_type_toml(
            "doubles",
            &[
                ("double", "command", &python(DOUBLER, &[]), 0),
                ("after", "noop", "{}", 0),
            ],
        ),
        flow_type_toml(
            "finishes_early",
            &[
                ("first", "command", &python(FINISHER, &[]), 0),
                ("never", "fail", "{ times = 100 }", 0),
            ],
        ),
        flow_type_toml("exits_3", &[("crew", "command", &python(FAILER, &[]), 0)]),
        flow_type_toml(
            "not_json",
            &[("crew", "command", &python(NOT_JSON, &[]), 0)],
        ),
        flow_type_toml(
            "missing_program",
            &[(
                "crew",
                "command",
                "{ program = \"flowd-no-such-program-anywhere\" }",
                2,
            )],
        ),
        flow_type_toml(
            "no_params",
            &[(
                "crew",
                "command",
                "{ program = \"python3\", cwd = \"/flowd/no/such/dir\" }",
                2,
            )],
        ),
        flow_type_toml(
            "nul_output",
            &[("crew", "command", &python(NUL_OUTPUT, &[]), 1)],
        ),
        with_timeout(
            flow_type_toml(
                "hangs",
                &[(
                    "crew",
                    "command",
                    &python(HANGER, &[&pid_file.display().to_string()]),
                    0,
                )],
            ),
            "crew",
            // Long enough for python to start and write its pid on a loaded machine.
            4,
        ),
    ]
    .concat()
}

async fn create(server: &TestServer, flow_type: &str, input: Value) -> String {
    let reply = post(
        server,
        "/v1/flows",
        &json!({ "flow_type": flow_type, "input": input }),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    reply.body["id"].as_str().expect("flow id").to_owned()
}

async fn finish(server: &TestServer, id: &str) -> Value {
    wait_for_flow(server, id, Duration::from_secs(30), is_terminal).await
}

async fn failures(server: &TestServer, id: &str) -> Vec<Value> {
    let reply = get(server, &format!("/v1/flows/{id}/failures")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body["failures"].as_array().expect("failures").clone()
}

async fn a_command_phase_reads_the_context_and_returns_its_output(backend: Backend) {
    let db = TestDatabase::new(backend);
    let server = TestServer::start(config_for(&db, &command_types(&db.dir())));
    let doubles = create(&server, "doubles", json!({ "n": 21 })).await;
    let early = create(&server, "finishes_early", json!({})).await;

    let flow = finish(&server, &doubles).await;
    assert_eq!(flow["status"], "completed", "{flow}");
    assert_eq!(
        flow["phases"][0]["output"],
        json!({
            "doubled": 42,
            "phase": "double",
            "key": format!("{doubles}:double:1"),
            "tenant": "default",
        })
    );
    assert_eq!(flow["phases"][1]["status"], "succeeded");

    let flow = finish(&server, &early).await;
    assert_eq!(
        flow["status"], "completed",
        "next_phase: null finished the flow: {flow}"
    );
    assert_eq!(flow["phases"][0]["output"], json!({ "done": true }));
    assert!(
        failures(&server, &early).await.is_empty(),
        "`never` never ran"
    );
}

async fn command_failures_land_in_the_journal(backend: Backend) {
    let db = TestDatabase::new(backend);
    let server = TestServer::start(config_for(&db, &command_types(&db.dir())));
    let exits = create(&server, "exits_3", json!({})).await;
    let not_json = create(&server, "not_json", json!({})).await;
    let missing = create(&server, "missing_program", json!({})).await;
    let no_params = create(&server, "no_params", json!({})).await;
    let nul_output = create(&server, "nul_output", json!({})).await;

    let flow = finish(&server, &exits).await;
    assert_eq!(flow["status"], "failed");
    let journal = failures(&server, &exits).await;
    assert_eq!(journal.len(), 1, "{journal:?}");
    assert_eq!(journal[0]["error_kind"], "command_failed");
    assert!(
        journal[0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("code 3"),
        "{}",
        journal[0]
    );
    assert_eq!(journal[0]["diagnostic"]["detail"]["exit_code"], 3);
    assert!(
        journal[0]["diagnostic"]["detail"]["stderr"]
            .as_str()
            .unwrap_or_default()
            .contains("the crew lost its way"),
        "{}",
        journal[0]
    );

    let flow = finish(&server, &not_json).await;
    assert_eq!(flow["status"], "failed");
    let journal = failures(&server, &not_json).await;
    assert_eq!(journal[0]["error_kind"], "bad_output");
    assert!(
        journal[0]["diagnostic"]["detail"]["output_excerpt"]
            .as_str()
            .unwrap_or_default()
            .contains("certainly not json")
    );

    for (id, kind) in [
        (&missing, "handler_unavailable"),
        (&no_params, "bad_params"),
    ] {
        let flow = finish(&server, id).await;
        assert_eq!(flow["status"], "failed");
        let journal = failures(&server, id).await;
        assert_eq!(
            journal.len(),
            1,
            "{kind} is not retried despite retries = 2"
        );
        assert_eq!(journal[0]["error_kind"], kind);
    }

    // An output no backend can store fails its attempt (journaled), not the whole commit.
    let flow = finish(&server, &nul_output).await;
    assert_eq!(flow["status"], "failed", "{flow}");
    let journal = failures(&server, &nul_output).await;
    assert_eq!(journal.len(), 2, "retried once, then failed: {journal:?}");
    for row in &journal {
        assert_eq!(row["error_kind"], "bad_output", "{row}");
    }
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

async fn a_timed_out_command_is_killed(backend: Backend) {
    let db = TestDatabase::new(backend);
    let pid_file = db.dir().join("hanger.pid");
    let server = TestServer::start(config_for(&db, &command_types(&db.dir())));
    let id = create(&server, "hangs", json!({})).await;

    let deadline = Instant::now() + Duration::from_secs(20);
    let pid: u32 = loop {
        if let Some(pid) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|text| text.trim().parse().ok())
        {
            break pid;
        }
        assert!(Instant::now() < deadline, "the script never started");
        actix_web::rt::time::sleep(Duration::from_millis(25)).await;
    };
    assert!(alive(pid), "the script hangs while its phase runs");

    let flow = finish(&server, &id).await;
    assert_eq!(flow["status"], "failed");
    assert_eq!(failures(&server, &id).await[0]["error_kind"], "timeout");
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(pid) {
        assert!(
            Instant::now() < deadline,
            "process {pid} outlived its timed-out phase"
        );
        actix_web::rt::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A stand-in for a service that runs phases, on a free port of this test's own.
fn start_target() -> String {
    async fn echo(ctx: web::Json<Value>) -> HttpResponse {
        HttpResponse::Ok().json(json!({
            "output": {
                "echo": ctx["input"]["word"],
                "phase": ctx["phase"],
                "attempt": ctx["attempt"],
            }
        }))
    }
    async fn whole(ctx: web::Json<Value>) -> HttpResponse {
        HttpResponse::Ok().json(json!({ "flow_type": ctx["flow_type"] }))
    }
    async fn broken() -> HttpResponse {
        HttpResponse::InternalServerError().body("the target is on fire")
    }
    async fn gone() -> HttpResponse {
        HttpResponse::NotFound().body("no such phase here")
    }
    async fn prose() -> HttpResponse {
        HttpResponse::Ok()
            .content_type("text/plain")
            .body("hello, not json")
    }
    let server = HttpServer::new(|| {
        App::new()
            .route("/echo", web::post().to(echo))
            .route("/whole", web::post().to(whole))
            .route("/broken", web::post().to(broken))
            .route("/gone", web::post().to(gone))
            .route("/prose", web::post().to(prose))
    })
    .workers(1)
    .bind(("127.0.0.1", 0))
    .expect("target binds");
    let address = server.addrs()[0];
    actix_web::rt::spawn(server.run());
    format!("http://{address}")
}

fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").port()
}

fn http_types(target: &str) -> String {
    let http = |path: &str| format!("{{ url = \"{target}{path}\", timeout_ms = 5000 }}");
    [
        flow_type_toml("echoes", &[("ask", "http", &http("/echo"), 0)]),
        flow_type_toml("whole", &[("ask", "http", &http("/whole"), 0)]),
        flow_type_toml("broken", &[("ask", "http", &http("/broken"), 1)]),
        flow_type_toml("gone", &[("ask", "http", &http("/gone"), 2)]),
        flow_type_toml("prose", &[("ask", "http", &http("/prose"), 0)]),
        flow_type_toml(
            "closed",
            &[(
                "ask",
                "http",
                &format!("{{ url = \"http://127.0.0.1:{}/x\" }}", closed_port()),
                2,
            )],
        ),
    ]
    .concat()
}

async fn http_phases_post_the_context_and_classify_failures(backend: Backend) {
    let db = TestDatabase::new(backend);
    let target = start_target();
    let allow = "[security]\nhttp_allow = [\"127.0.0.1\"]\n";
    let server = TestServer::start(config_for(&db, &format!("{allow}{}", http_types(&target))));
    let echoes = create(&server, "echoes", json!({ "word": "hello" })).await;
    let whole = create(&server, "whole", json!({})).await;
    let broken = create(&server, "broken", json!({})).await;
    let gone = create(&server, "gone", json!({})).await;
    let prose = create(&server, "prose", json!({})).await;
    let closed = create(&server, "closed", json!({})).await;

    let flow = finish(&server, &echoes).await;
    assert_eq!(flow["status"], "completed", "{flow}");
    assert_eq!(
        flow["phases"][0]["output"],
        json!({ "echo": "hello", "phase": "ask", "attempt": 1 })
    );
    let flow = finish(&server, &whole).await;
    assert_eq!(flow["status"], "completed", "{flow}");
    assert_eq!(flow["phases"][0]["output"], json!({ "flow_type": "whole" }));

    let flow = finish(&server, &broken).await;
    assert_eq!(flow["status"], "failed");
    let journal = failures(&server, &broken).await;
    assert_eq!(journal.len(), 2, "a 500 is retried once: {journal:?}");
    for row in &journal {
        assert_eq!(row["error_kind"], "http_status");
        assert_eq!(row["diagnostic"]["detail"]["status"], 500);
        assert_eq!(
            row["diagnostic"]["detail"]["body_excerpt"],
            "the target is on fire"
        );
    }

    for (id, kind) in [(&gone, "http_status"), (&closed, "handler_unavailable")] {
        let flow = finish(&server, id).await;
        assert_eq!(flow["status"], "failed");
        let journal = failures(&server, id).await;
        assert_eq!(
            journal.len(),
            1,
            "{kind} is not retried despite retries = 2"
        );
        assert_eq!(journal[0]["error_kind"], kind);
    }
    assert_eq!(
        failures(&server, &gone).await[0]["diagnostic"]["detail"]["status"],
        404
    );

    let flow = finish(&server, &prose).await;
    assert_eq!(flow["status"], "failed");
    assert_eq!(
        failures(&server, &prose).await[0]["error_kind"],
        "bad_output"
    );
}

on_both_backends!(
    a_command_phase_reads_the_context_and_returns_its_output,
    command_failures_land_in_the_journal,
    a_timed_out_command_is_killed,
    http_phases_post_the_context_and_classify_failures,
);
