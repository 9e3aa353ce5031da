//! Fault injection against the real server: every flow ends `completed`, or `failed` with a
//! journal entry — never stuck `running`.

mod common;

use std::time::Duration;

use common::{
    Backend, TestDatabase, TestServer, config_for, flow_type_toml, get, is_terminal, post,
    wait_for_flow,
};
use serde_json::{Value, json};

const FAULTS: &str = "[faults]\nenabled = true\n";

fn with_timeout(toml: String, phase: &str, timeout_s: u32) -> String {
    toml.replace(
        &format!("name = \"{phase}\"\n"),
        &format!("name = \"{phase}\"\ntimeout_s = {timeout_s}\n"),
    )
}

fn types() -> String {
    [
        with_timeout(
            flow_type_toml("hangs", &[("wait", "sleep", "{ ms = 600000 }", 1)]),
            "wait",
            1,
        ),
        // Its deadline leaves the quick flows time to finish on a loaded machine.
        with_timeout(
            flow_type_toml("blocks", &[("stuck", "block", "{ ms = 12000 }", 0)]),
            "stuck",
            6,
        ),
        flow_type_toml(
            "panics",
            &[("boom", "panic", "{ times = 1, message = \"kaboom\" }", 1)],
        ),
        flow_type_toml(
            "quick",
            &[("a", "noop", "{}", 0), ("b", "sleep", "{ ms = 50 }", 0)],
        ),
        flow_type_toml(
            "slow",
            &[("a", "sleep", "{ ms = 500 }", 0), ("b", "noop", "{}", 0)],
        ),
        FAULTS.to_owned(),
    ]
    .concat()
}

async fn create(server: &TestServer, flow_type: &str) -> String {
    let reply = post(server, "/v1/flows", &json!({ "flow_type": flow_type })).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    reply.body["id"].as_str().unwrap().to_owned()
}

async fn failures(server: &TestServer, id: &str) -> Vec<Value> {
    get(server, &format!("/v1/flows/{id}/failures")).await.body["failures"]
        .as_array()
        .unwrap()
        .clone()
}

async fn metric(server: &TestServer, series: &str) -> f64 {
    let mut response = common::client()
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap();
    let text = String::from_utf8(response.body().await.unwrap().to_vec()).unwrap();
    text.lines()
        .find_map(|line| {
            line.strip_prefix(series)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

async fn hanging_blocking_and_panicking_handlers_end_loudly(backend: Backend) {
    let db = TestDatabase::new(backend);
    let server = TestServer::start(config_for(&db, &types()));
    let hangs = create(&server, "hangs").await;
    let blocks = create(&server, "blocks").await;
    let panics = create(&server, "panics").await;
    let quick: Vec<String> =
        futures_util::future::join_all((0..10).map(|_| create(&server, "quick"))).await;
    for id in &quick {
        let flow = wait_for_flow(&server, id, Duration::from_secs(20), is_terminal).await;
        assert_eq!(
            flow["status"], "completed",
            "a blocked handler stalls no other flow"
        );
    }
    let blocked = get(&server, &format!("/v1/flows/{blocks}")).await.body;
    assert_eq!(
        blocked["status"], "running",
        "the quick flows finished while a handler blocked its thread"
    );

    let flow = wait_for_flow(&server, &hangs, Duration::from_secs(30), is_terminal).await;
    assert_eq!(flow["status"], "failed");
    let journal = failures(&server, &hangs).await;
    assert_eq!(
        journal
            .iter()
            .filter(|f| f["error_kind"] == "timeout")
            .count(),
        2,
        "both attempts timed out"
    );

    let flow = wait_for_flow(&server, &blocks, Duration::from_secs(30), is_terminal).await;
    assert_eq!(flow["status"], "failed");
    assert_eq!(failures(&server, &blocks).await[0]["error_kind"], "timeout");

    let flow = wait_for_flow(&server, &panics, Duration::from_secs(30), is_terminal).await;
    assert_eq!(flow["status"], "completed", "retried after the panic");
    let journal = failures(&server, &panics).await;
    assert_eq!(journal[0]["error_kind"], "panic");
    assert!(journal[0]["message"].as_str().unwrap().contains("kaboom"));
    assert_eq!(
        get(&server, "/healthz").await.status,
        200,
        "the server survived"
    );
    assert_eq!(
        metric(&server, "flowd_failures_total{kind=\"panic\"}").await,
        1.0
    );
}

async fn an_unresponsive_actor_is_restarted_and_a_restart_loop_fails_loudly(backend: Backend) {
    let db = TestDatabase::new(backend);
    let server = TestServer::start_with_env(
        config_for(&db, &types()),
        &[
            ("FLOWD_HEALTH__PING_TIMEOUT_MS", "400"),
            ("FLOWD_HEALTH__MAX_RESTARTS", "2"),
        ],
    );
    let once = create(&server, "slow").await;
    let reply = post(
        &server,
        &format!("/v1/flows/{once}/faults/freeze"),
        &json!({ "ms": 3000, "times": 1 }),
    )
    .await;
    assert_eq!(reply.status, 202);
    let looping = create(&server, "slow").await;
    let reply = post(
        &server,
        &format!("/v1/flows/{looping}/faults/freeze"),
        &json!({ "ms": 60000, "times": 100 }),
    )
    .await;
    assert_eq!(reply.status, 202);

    let flow = wait_for_flow(&server, &once, Duration::from_secs(30), is_terminal).await;
    assert_eq!(
        flow["status"], "completed",
        "restarted from stored state, then finished"
    );
    let flow = wait_for_flow(&server, &looping, Duration::from_secs(30), is_terminal).await;
    assert_eq!(flow["status"], "failed");
    let journal = failures(&server, &looping).await;
    assert_eq!(
        journal.last().unwrap()["error_kind"],
        "restart_intensity_exceeded"
    );
    for id in [&once, &looping] {
        let events = get(&server, &format!("/v1/flows/{id}/events")).await.body["events"]
            .as_array()
            .unwrap()
            .clone();
        let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "no transition lost or doubled"
        );
    }
    assert!(metric(&server, "flowd_actor_restarts_total").await >= 3.0);
    assert!(metric(&server, "flowd_health_pings_missed_total").await >= 3.0);
}

/// Waits until every flow is terminal, tolerating 503s while the database is being disturbed.
async fn wait_all_terminal(server: &TestServer, ids: &[String], timeout: Duration) -> Vec<Value> {
    let deadline = std::time::Instant::now() + timeout;
    let mut flows = Vec::new();
    for id in ids {
        loop {
            let reply = get(server, &format!("/v1/flows/{id}")).await;
            if reply.status == 200 && is_terminal(&reply.body) {
                flows.push(reply.body);
                break;
            }
            assert!(reply.status == 200 || reply.status == 503, "{}", reply.body);
            assert!(
                std::time::Instant::now() < deadline,
                "flow {id} stuck: {}",
                reply.body
            );
            actix_web::rt::time::sleep(Duration::from_millis(50)).await;
        }
    }
    flows
}

/// Every flow completed, with a gap-free history in which no phase succeeded twice.
async fn assert_intact(server: &TestServer, flows: &[Value]) {
    for flow in flows {
        assert_eq!(flow["status"], "completed", "{flow}");
        let id = flow["id"].as_str().unwrap();
        let events = get(server, &format!("/v1/flows/{id}/events")).await.body["events"]
            .as_array()
            .unwrap()
            .clone();
        let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "flow {id}: no transition lost or doubled"
        );
        let mut succeeded = std::collections::HashSet::new();
        for event in events.iter().filter(|e| e["kind"] == "phase_succeeded") {
            assert!(
                succeeded.insert(event["current_phase"].as_str().unwrap().to_owned()),
                "flow {id}: a phase succeeded twice"
            );
        }
    }
}

fn six_steps() -> String {
    let phases: Vec<(String, &str, &str, u32)> = (1..=6)
        .map(|i| (format!("s{i}"), "sleep", "{ ms = 150 }", 0))
        .collect();
    let phases: Vec<(&str, &str, &str, u32)> = phases
        .iter()
        .map(|(n, h, p, r)| (n.as_str(), *h, *p, *r))
        .collect();
    flow_type_toml("six", &phases)
}

/// PostgreSQL only: SQLite has no server connections to kill.
#[cfg(flowd_postgres_tests)]
#[actix_web::test]
async fn killed_database_connections_lose_no_transition() {
    let db = TestDatabase::new(Backend::Postgres);
    let name = db
        .postgres_name()
        .expect("a PostgreSQL database")
        .to_owned();
    let server = TestServer::start(config_for(&db, &six_steps()));
    let ids: Vec<String> =
        futures_util::future::join_all((0..100).map(|_| create(&server, "six"))).await;
    for _ in 0..8 {
        db.admin(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid()"
        ));
        actix_web::rt::time::sleep(Duration::from_millis(150)).await;
    }
    let flows = wait_all_terminal(&server, &ids, Duration::from_secs(60)).await;
    assert_intact(&server, &flows).await;
    assert_eq!(
        get(&server, "/readyz").await.status,
        200,
        "ready again once the database is back"
    );
}

async fn sigkill_during_batch_commits_loses_nothing(backend: Backend) {
    let db = TestDatabase::new(backend);
    let types = flow_type_toml(
        "noop6",
        &[
            ("p1", "noop", "{}", 0),
            ("p2", "noop", "{}", 0),
            ("p3", "noop", "{}", 0),
            ("p4", "noop", "{}", 0),
            ("p5", "noop", "{}", 0),
            ("p6", "noop", "{}", 0),
        ],
    );
    let server = TestServer::start(config_for(&db, &types));
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.extend(futures_util::future::join_all((0..50).map(|_| create(&server, "noop6"))).await);
    }
    // Commits are flowing for the last wave: kill the process in the middle of them.
    let config = server.kill();
    let server = TestServer::start(config);
    let listed = get(&server, "/v1/flows?limit=500").await.body["flows"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(
        listed,
        ids.len(),
        "every acknowledged create survived the crash"
    );
    let flows = wait_all_terminal(&server, &ids, Duration::from_secs(60)).await;
    assert_intact(&server, &flows).await;
}

/// A small tmpfs for the SQLite file, unmounted when dropped.
struct Volume {
    path: std::path::PathBuf,
}

impl Volume {
    /// Mounts the volume; `None` where mounting is not allowed (not root). In CI, where it is,
    /// failing to mount fails the test instead of skipping it.
    fn mount(path: std::path::PathBuf) -> Option<Self> {
        std::fs::create_dir_all(&path).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64m", "tmpfs"])
            .arg(&path)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        assert!(
            mounted || std::env::var("CI").is_err(),
            "CI runs as root and must run this test"
        );
        mounted.then_some(Self { path })
    }

    /// Fills the volume until the kernel refuses more; returns the filler to delete later.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let filler = self.path.join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 1 << 20];
        while file.write_all(&chunk).is_ok() {}
        let _ = file.flush();
        filler
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

async fn a_database_that_refuses_writes_for_a_while_loses_nothing(backend: Backend) {
    if backend != Backend::Sqlite {
        return; // The SQLite file's own volume; PostgreSQL outages are the connection-kill test.
    }
    let db = TestDatabase::new(backend);
    let Some(volume) = Volume::mount(db.dir().join("volume")) else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let config = db.dir().join("full.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nbind = \"127.0.0.1:0\"\n[database]\nurl = \"sqlite://{}\"\n[health]\nping_interval_ms = 200\n{}",
            volume.path.join("flowd.db").display(),
            six_steps()
        ),
    )
    .unwrap();
    let server = TestServer::start(config);
    let ids: Vec<String> =
        futures_util::future::join_all((0..50).map(|_| create(&server, "six"))).await;
    // The volume is full for two seconds: every commit fails meanwhile.
    let filler = volume.fill();
    let mut saw_unready = false;
    for _ in 0..20 {
        saw_unready |= get(&server, "/readyz").await.status == 503;
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
    std::fs::remove_file(filler).unwrap();
    assert!(
        saw_unready,
        "/readyz turned unready while the database could not write"
    );
    let flows = wait_all_terminal(&server, &ids, Duration::from_secs(60)).await;
    assert_intact(&server, &flows).await;
    assert_eq!(get(&server, "/readyz").await.status, 200);
}

on_both_backends!(
    a_database_that_refuses_writes_for_a_while_loses_nothing,
    hanging_blocking_and_panicking_handlers_end_loudly,
    an_unresponsive_actor_is_restarted_and_a_restart_loop_fails_loudly,
    sigkill_during_batch_commits_loses_nothing,
);
