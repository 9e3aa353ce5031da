//! A user's view of the runtime core: create a flow over HTTP and watch it run to the end.

mod common;

use std::time::Duration;

use common::{
    Backend, TestDatabase, TestServer, config_for, flow_type_toml, get, is_terminal, post,
    wait_for_flow,
};
use serde_json::{Value, json};

fn types() -> String {
    [
        flow_type_toml(
            "discovery",
            &[
                ("data_import", "sleep", "{ ms = 20 }", 0),
                ("field_mapping", "noop", "{}", 0),
                ("data_cleansing", "sleep", "{ ms = 20 }", 0),
                ("asset_inventory", "noop", "{}", 0),
                ("dependency_analysis", "noop", "{}", 0),
                ("tech_debt_assessment", "noop", "{}", 0),
            ],
        ),
        flow_type_toml(
            "recovers",
            &[
                ("prepare", "noop", "{}", 0),
                ("flaky", "fail", "{ times = 2 }", 2),
            ],
        ),
        flow_type_toml(
            "gives_up",
            &[
                ("prepare", "noop", "{}", 0),
                ("flaky", "fail", "{ times = 2 }", 1),
            ],
        ),
    ]
    .concat()
}

async fn create(server: &TestServer, flow_type: &str) -> Value {
    let reply = post(
        server,
        "/v1/flows",
        &json!({ "flow_type": flow_type, "input": { "source": "cmdb.csv" } }),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    reply.body
}

async fn a_created_flow_is_running_at_once_and_completes(backend: Backend) {
    let db = TestDatabase::new(backend);
    let server = TestServer::start(config_for(&db, &types()));
    let created = create(&server, "discovery").await;
    assert_eq!(
        created["status"], "running",
        "create answers with the flow past initialized"
    );
    for field in [
        "id",
        "flow_type",
        "flow_type_version",
        "status",
        "current_phase",
        "next_phase",
        "progress_percentage",
        "phases",
        "input",
        "parent_flow_id",
        "master_flow_id",
        "client_account_id",
        "engagement_id",
        "created_by",
        "created_at",
        "updated_at",
    ] {
        assert!(
            created.get(field).is_some(),
            "flow JSON lacks `{field}`: {created}"
        );
    }
    assert_eq!(
        created["master_flow_id"], created["id"],
        "a root flow is its own master"
    );
    assert!(
        created.get("progress").is_none(),
        "only progress_percentage exists"
    );
    let id = created["id"].as_str().unwrap().to_owned();
    let mut seen_initialized = false;
    let flow = wait_for_flow(&server, &id, Duration::from_secs(20), |flow| {
        seen_initialized |= flow["status"] == "initialized";
        is_terminal(flow)
    })
    .await;
    assert!(!seen_initialized, "no read shows `initialized`");
    assert_eq!(flow["status"], "completed");
    assert_eq!(flow["progress_percentage"], 100.0);
    assert_eq!(flow["next_phase"], Value::Null);
    let phases = flow["phases"].as_array().unwrap();
    assert_eq!(phases.len(), 6);
    assert!(
        phases
            .iter()
            .all(|p| p["status"] == "succeeded" && p["attempt"] == 1),
        "{phases:?}"
    );

    let events = get(&server, &format!("/v1/flows/{id}/events")).await.body["events"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(events[0]["status"], "initialized");
    assert_eq!(events[1]["status"], "running");
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=events.len() as u64).collect::<Vec<_>>(),
        "seq is gap-free"
    );
    let mut progress = 0.0;
    for event in &events {
        let p = event["progress_percentage"].as_f64().unwrap();
        assert!(p >= progress, "progress never decreases");
        progress = p;
        assert_eq!(event["master_flow_id"], json!(id));
        if event["kind"] == "phase_succeeded" {
            assert!(
                event.get("next_phase").is_some(),
                "every phase result carries next_phase"
            );
        }
    }
    assert_eq!(events.last().unwrap()["kind"], "flow_completed");
    let after = get(&server, &format!("/v1/flows/{id}/events?after=2"))
        .await
        .body["events"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(after, events.len() - 2);
}

async fn a_failing_phase_succeeds_on_its_third_attempt(backend: Backend) {
    let db = TestDatabase::new(backend);
    let server = TestServer::start(config_for(&db, &types()));
    let id = create(&server, "recovers").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let flow = wait_for_flow(&server, &id, Duration::from_secs(20), is_terminal).await;
    assert_eq!(flow["status"], "completed");
    assert_eq!(flow["phases"][1]["attempt"], 3);
    let failures = get(&server, &format!("/v1/flows/{id}/failures")).await.body["failures"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(failures.len(), 2);
    for (failure, attempt) in failures.iter().zip([1, 2]) {
        assert_eq!(failure["phase"], "flaky");
        assert_eq!(failure["attempt"], attempt);
        assert_eq!(failure["error_kind"], "handler_error");
        assert!(
            failure["message"]
                .as_str()
                .unwrap()
                .contains("planned failure")
        );
        assert!(failure["diagnostic"].is_object());
    }
}

async fn a_phase_out_of_retries_fails_the_flow_visibly(backend: Backend) {
    let db = TestDatabase::new(backend);
    let server = TestServer::start(config_for(&db, &types()));
    let id = create(&server, "gives_up").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let flow = wait_for_flow(&server, &id, Duration::from_secs(20), is_terminal).await;
    assert_eq!(flow["status"], "failed");
    assert_eq!(flow["phases"][1]["status"], "failed");
    assert!(
        flow["phases"][1]["error"]
            .as_str()
            .unwrap()
            .contains("planned failure")
    );
    let failures = get(&server, &format!("/v1/flows/{id}/failures")).await.body["failures"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(failures, 2);
    let events = get(&server, &format!("/v1/flows/{id}/events")).await.body["events"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(events.last().unwrap()["kind"], "flow_failed");
    assert!(events.last().unwrap()["error"].is_string());
}

async fn listing_filters_by_status_and_flow_type(backend: Backend) {
    let db = TestDatabase::new(backend);
    let server = TestServer::start(config_for(&db, &types()));
    let done = create(&server, "recovers").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let failed = create(&server, "gives_up").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_for_flow(&server, &done, Duration::from_secs(20), is_terminal).await;
    wait_for_flow(&server, &failed, Duration::from_secs(20), is_terminal).await;
    let listed = get(&server, "/v1/flows?status=failed").await.body;
    let ids: Vec<&str> = listed["flows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![failed.as_str()]);
    let listed = get(&server, "/v1/flows?flow_type=recovers").await.body;
    assert_eq!(listed["flows"][0]["id"], json!(done));
    let all = get(&server, "/v1/flows").await.body;
    let ids: Vec<&str> = all["flows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![failed.as_str(), done.as_str()], "newest first");
    let page = get(&server, "/v1/flows?limit=1").await.body;
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    let next = get(&server, &format!("/v1/flows?limit=1&cursor={cursor}"))
        .await
        .body;
    assert_eq!(next["flows"][0]["id"], json!(done));
}

on_both_backends!(
    a_created_flow_is_running_at_once_and_completes,
    a_failing_phase_succeeds_on_its_third_attempt,
    a_phase_out_of_retries_fails_the_flow_visibly,
    listing_filters_by_status_and_flow_type,
);
