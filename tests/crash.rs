//! A crash loses nothing: SIGKILL the server while 50 flows sit in a 2 s phase, restart it on
//! the same database, and every flow completes without re-running a phase that had finished.

mod common;

use std::time::{Duration, Instant};

use common::{
    Backend, TestDatabase, TestServer, config_for, flow_type_toml, get, is_terminal, post,
    wait_for_flow,
};
use serde_json::{Value, json};

const FLOWS: usize = 50;

async fn all_flows(server: &TestServer) -> Vec<Value> {
    let reply = get(server, "/v1/flows?limit=500").await;
    assert_eq!(reply.status, 200);
    reply.body["flows"].as_array().unwrap().clone()
}

async fn sigkill_mid_phase_resumes_every_flow(backend: Backend) {
    let db = TestDatabase::new(backend);
    let types = flow_type_toml(
        "crashy",
        &[
            ("first", "noop", "{}", 0),
            ("middle", "sleep", "{ ms = 2000 }", 0),
            ("last", "noop", "{}", 0),
        ],
    );
    let server = TestServer::start(config_for(&db, &types));
    let mut ids = Vec::new();
    for i in 0..FLOWS {
        let reply = post(
            &server,
            "/v1/flows",
            &json!({ "flow_type": "crashy", "input": { "i": i } }),
        )
        .await;
        assert_eq!(reply.status, 201);
        ids.push(reply.body["id"].as_str().unwrap().to_owned());
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let flows = all_flows(&server).await;
        let in_middle = flows
            .iter()
            .filter(|f| f["current_phase"] == "middle" && f["phases"][1]["status"] == "running")
            .count();
        if in_middle == FLOWS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {in_middle} flows reached the middle phase"
        );
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
    let config = server.kill();

    let server = TestServer::start(config);
    for id in &ids {
        let flow = wait_for_flow(&server, id, Duration::from_secs(30), is_terminal).await;
        assert_eq!(flow["status"], "completed", "{flow}");
        assert_eq!(
            flow["phases"][0]["attempt"], 1,
            "the finished phase did not run again"
        );
        assert_eq!(
            flow["phases"][1]["attempt"], 1,
            "the interrupted attempt re-ran under its own key"
        );
        let events = get(&server, &format!("/v1/flows/{id}/events")).await.body["events"]
            .as_array()
            .unwrap()
            .clone();
        let count = |kind: &str, phase: &str| {
            events
                .iter()
                .filter(|e| e["kind"] == kind && e["current_phase"] == phase)
                .count()
        };
        assert_eq!(count("phase_started", "first"), 1);
        assert_eq!(count("phase_succeeded", "first"), 1);
        assert_eq!(count("phase_succeeded", "middle"), 1);
        let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, (1..=events.len() as u64).collect::<Vec<_>>());
        let event_ids: Vec<u64> = events.iter().map(|e| e["id"].as_u64().unwrap()).collect();
        assert!(event_ids.windows(2).all(|w| w[0] < w[1]));
    }
}

on_both_backends!(sigkill_mid_phase_resumes_every_flow);
