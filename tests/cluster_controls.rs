//! Cluster mode, controls (docs/cluster.md, 2.6): pause, resume, cancel and retry of a flow
//! owned by another node work on any node, with the replies one node gives. The node that
//! receives a control of a live flow it does not own starts no actor for it: the owner applies
//! it (the flow's owner and epoch do not change, nothing is fenced); a failed flow is adopted
//! by the node that retries it, and runs there once. A control sent to a node that dies is
//! applied by the node taking the flow over; one its requester stopped waiting for is never
//! applied.

#[cfg(flowd_postgres_tests)]
mod common;

#[cfg(flowd_postgres_tests)]
mod postgres {
    use std::process::Command;
    use std::time::{Duration, Instant};

    use serde_json::{Value, json};

    use super::common::{self, Backend, TestDatabase, TestServer, config_for, wait_for_flow};

    /// Heartbeats every 100 ms; silent for 1 s is dead.
    const CLUSTER: &str = "[cluster]\nheartbeat_ms = 100\nnode_timeout_ms = 1000\n";
    const SETTLE: Duration = Duration::from_secs(30);

    /// `steps`: four phases sleeping `ms` each; `flaky`: a phase that fails its first attempt
    /// (no retries, so the flow fails), then a short one.
    fn types(ms: u64) -> String {
        let mut toml = String::from("[[flow_types]]\nname = \"steps\"\nversion = 1\n");
        for name in ["one", "two", "three", "four"] {
            toml.push_str(&format!(
                "[[flow_types.phases]]\nname = \"{name}\"\nhandler = \"sleep\"\n\
                 params = {{ ms = {ms} }}\n"
            ));
        }
        toml.push_str(
            "[[flow_types]]\nname = \"flaky\"\nversion = 1\n\
             [[flow_types.phases]]\nname = \"shaky\"\nhandler = \"fail\"\nparams = { times = 1 }\n\
             [[flow_types.phases]]\nname = \"after\"\nhandler = \"sleep\"\nparams = { ms = 100 }\n",
        );
        toml
    }

    /// Three nodes on one fresh database, all with `cluster` settings.
    fn three(db: &TestDatabase, cluster: &str, ms: u64) -> (TestServer, TestServer, TestServer) {
        let config = config_for(db, &format!("{cluster}{}", types(ms)));
        (
            TestServer::start(config.clone()),
            TestServer::start(config.clone()),
            TestServer::start(config),
        )
    }

    /// `owner_node|owner_epoch` of a flow.
    fn owner(db: &TestDatabase, id: &str) -> String {
        db.sql(&format!(
            "SELECT owner_node || '|' || owner_epoch FROM flows WHERE id = '{id}'"
        ))
    }

    /// Rows of the failure journal written because a node lost a flow it wrote.
    fn fenced(db: &TestDatabase) -> String {
        db.sql("SELECT count(*) FROM failures WHERE error_kind = 'fenced'")
    }

    async fn node_id(server: &TestServer) -> String {
        let reply = common::get(server, "/v1/cluster/nodes").await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        reply.body["this_node"]
            .as_str()
            .expect("this_node")
            .to_owned()
    }

    /// A counter of `server`'s `/metrics`.
    async fn metric(server: &TestServer, name: &str) -> Option<f64> {
        let mut response = common::client()
            .get(server.url("/metrics"))
            .send()
            .await
            .expect("GET /metrics");
        let text = response.body().await.expect("body");
        let prefix = format!("{name} ");
        String::from_utf8_lossy(&text)
            .lines()
            .find_map(|line| line.strip_prefix(prefix.as_str()))
            .and_then(|value| value.trim().parse().ok())
    }

    async fn create(server: &TestServer, flow_type: &str) -> String {
        let reply = common::post(server, "/v1/flows", &json!({ "flow_type": flow_type })).await;
        assert_eq!(reply.status, 201, "{:?}", reply.body);
        reply.body["id"].as_str().expect("id").to_owned()
    }

    async fn control(server: &TestServer, id: &str, command: &str) -> common::Reply {
        common::post(server, &format!("/v1/flows/{id}/{command}"), &json!({})).await
    }

    async fn events(server: &TestServer, id: &str) -> Vec<Value> {
        let reply = common::get(server, &format!("/v1/flows/{id}/events")).await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        reply.body["events"].as_array().expect("events").clone()
    }

    fn kinds<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
        events.iter().filter(|e| e["kind"] == kind).collect()
    }

    fn seq_of(event: &Value) -> u64 {
        event["seq"].as_u64().expect("seq")
    }

    /// Completed, `seq` gap-free, each phase succeeded exactly once.
    fn ran_once(flow: &Value, events: &[Value]) {
        assert_eq!(flow["status"], "completed", "{flow}");
        let seqs: Vec<u64> = events.iter().map(seq_of).collect();
        assert_eq!(seqs, (1..=events.len() as u64).collect::<Vec<_>>());
        for phase in flow["phases"].as_array().expect("phases") {
            let name = &phase["name"];
            let successes = kinds(events, "phase_succeeded")
                .into_iter()
                .filter(|e| e["current_phase"] == *name)
                .count();
            assert_eq!(successes, 1, "phase {name} of {flow}");
        }
    }

    fn status(flow: &Value) -> &str {
        flow["status"].as_str().unwrap_or_default()
    }

    /// A pause sent to C stops a flow owned by A (no phase starts after it, and C starts no
    /// actor of its own: the owner and epoch are unchanged, nothing is fenced); a resume sent
    /// to B continues it to completion, each phase once; a cancel from another node ends a
    /// flow; replies (flows, 404, 409 problems) are those of the owner itself.
    #[actix_web::test]
    async fn pause_resume_and_cancel_reach_the_owner_from_any_node() {
        let db = TestDatabase::new(Backend::Postgres);
        let (a, b, c) = three(&db, CLUSTER, 400);
        let a_id = node_id(&a).await;

        let id = create(&a, "steps").await;
        assert_eq!(owner(&db, &id), format!("{a_id}|1"));
        let paused = control(&c, &id, "pause").await;
        assert_eq!(paused.status, 200, "{:?}", paused.body);
        assert_eq!(paused.content_type, "application/json");
        assert_eq!(paused.body["id"], id.as_str());
        assert_eq!(paused.body["status"], "paused", "{:?}", paused.body);
        // Paused again: idempotent, as on one node.
        let again = control(&b, &id, "pause").await;
        assert_eq!(again.status, 200, "{:?}", again.body);
        assert_eq!(again.body["status"], "paused");

        // The phase in flight finishes and is recorded; none starts after the pause.
        let started = Instant::now();
        wait_for_flow(&b, &id, SETTLE, |flow| {
            flow["phases"]
                .as_array()
                .is_some_and(|p| p.iter().all(|p| p["status"] != "running"))
        })
        .await;
        actix_web::rt::time::sleep(Duration::from_millis(600).saturating_sub(started.elapsed()))
            .await;
        let history = events(&c, &id).await;
        let pause_seq = seq_of(kinds(&history, "flow_paused")[0]);
        assert!(
            kinds(&history, "phase_started")
                .iter()
                .all(|e| seq_of(e) < pause_seq),
            "a phase started after the pause: {history:?}"
        );
        assert_eq!(
            status(&common::get(&a, &format!("/v1/flows/{id}")).await.body),
            "paused"
        );
        // Counted: sent by C and B, applied by A, none unanswered.
        assert_eq!(
            metric(&c, "flowd_cluster_controls_sent_total").await,
            Some(1.0)
        );
        assert_eq!(
            metric(&a, "flowd_cluster_controls_applied_total").await,
            Some(2.0)
        );
        assert_eq!(
            metric(&a, "flowd_cluster_controls_sent_total").await,
            Some(0.0)
        );
        assert_eq!(
            metric(&c, "flowd_cluster_controls_unanswered_total").await,
            Some(0.0)
        );
        // C and B applied nothing themselves: same owner, same epoch, no fenced write.
        assert_eq!(owner(&db, &id), format!("{a_id}|1"));
        assert_eq!(fenced(&db), "0");

        let resumed = control(&b, &id, "resume").await;
        assert_eq!(resumed.status, 200, "{:?}", resumed.body);
        assert_eq!(resumed.body["status"], "running");
        let done = wait_for_flow(&c, &id, SETTLE, common::is_terminal).await;
        ran_once(&done, &events(&b, &id).await);
        assert_eq!(owner(&db, &id), format!("{a_id}|1"));

        // An illegal control of a finished flow: the owner's own answer, on every node.
        let on_owner = control(&a, &id, "pause").await;
        assert_eq!(on_owner.status, 409, "{:?}", on_owner.body);
        assert_eq!(on_owner.content_type, "application/problem+json");
        for server in [&b, &c] {
            let elsewhere = control(server, &id, "pause").await;
            assert_eq!(elsewhere.status, on_owner.status);
            assert_eq!(elsewhere.content_type, on_owner.content_type);
            assert_eq!(elsewhere.body, on_owner.body);
        }
        // An unknown flow: 404 everywhere.
        let missing = uuid::Uuid::now_v7();
        let on_a = control(&a, &missing.to_string(), "cancel").await;
        let on_c = control(&c, &missing.to_string(), "cancel").await;
        assert_eq!(on_a.status, 404);
        assert_eq!((on_c.status, on_c.body), (on_a.status, on_a.body));

        // Cancel from another node: ends the flow, no phase after it.
        let id = create(&a, "steps").await;
        let cancelled = control(&b, &id, "cancel").await;
        assert_eq!(cancelled.status, 200, "{:?}", cancelled.body);
        assert_eq!(cancelled.body["status"], "cancelled");
        let done = wait_for_flow(&c, &id, SETTLE, common::is_terminal).await;
        assert_eq!(done["status"], "cancelled");
        actix_web::rt::time::sleep(Duration::from_millis(600)).await;
        let history = events(&a, &id).await;
        let cancel_seq = seq_of(kinds(&history, "flow_cancelled")[0]);
        assert_eq!(
            seq_of(history.last().expect("events")),
            cancel_seq,
            "{history:?}"
        );
        // Resuming a cancelled flow is illegal everywhere alike.
        let on_owner = control(&a, &id, "resume").await;
        let elsewhere = control(&c, &id, "resume").await;
        assert_eq!(on_owner.status, 409);
        assert_eq!(
            (elsewhere.status, elsewhere.body),
            (on_owner.status, on_owner.body)
        );
        assert_eq!(fenced(&db), "0");
    }

    /// A failed flow owned by A, retried from B and C at the same moment: both answered as one
    /// node answers two retries, the flow adopted by one of them under a new epoch, its failed
    /// phase run once more (once), and the flow completes.
    #[actix_web::test]
    async fn a_failed_flow_retried_from_other_nodes_runs_once() {
        let db = TestDatabase::new(Backend::Postgres);
        let (a, b, c) = three(&db, CLUSTER, 100);
        let (a_id, b_id, c_id) = (node_id(&a).await, node_id(&b).await, node_id(&c).await);
        let id = create(&a, "flaky").await;
        let failed = wait_for_flow(&b, &id, SETTLE, common::is_terminal).await;
        assert_eq!(failed["status"], "failed", "{failed}");
        assert_eq!(owner(&db, &id), format!("{a_id}|1"));

        let (on_b, on_c) =
            futures_util::join!(control(&b, &id, "retry"), control(&c, &id, "retry"));
        for reply in [&on_b, &on_c] {
            assert_eq!(reply.status, 200, "{:?}", reply.body);
            assert_ne!(reply.body["status"], "failed", "{:?}", reply.body);
        }
        let done = wait_for_flow(&a, &id, SETTLE, common::is_terminal).await;
        let history = events(&a, &id).await;
        ran_once(&done, &history);
        let shaky_starts = kinds(&history, "phase_started")
            .into_iter()
            .filter(|e| e["current_phase"] == "shaky")
            .count();
        assert_eq!(
            shaky_starts, 2,
            "the first attempt and one retry: {history:?}"
        );
        let (new_owner, epoch) = owner(&db, &id)
            .split_once('|')
            .map(|(o, e)| (o.to_owned(), e.to_owned()))
            .expect("owner|epoch");
        assert!(new_owner == b_id || new_owner == c_id, "{new_owner}");
        assert_ne!(epoch, "1");
        // A retry of a completed flow is illegal everywhere alike.
        let on_owner = control(&a, &id, "retry").await;
        let elsewhere = control(&b, &id, "retry").await;
        assert_eq!(on_owner.status, 409, "{:?}", on_owner.body);
        assert_eq!(
            (elsewhere.status, elsewhere.body),
            (on_owner.status, on_owner.body)
        );
    }

    /// One PostgreSQL node restarted (a new `HOST-PID` node id): a flow that failed before
    /// the restart still names the old node as its owner; a retry adopts it and runs it here
    /// (before, the retry's write was fenced off and answered `503`). So is a failed flow
    /// with no owner (stored by an older version).
    #[actix_web::test]
    async fn a_restarted_single_node_retries_a_flow_that_failed_before() {
        let db = TestDatabase::new(Backend::Postgres);
        let config = config_for(&db, &format!("{CLUSTER}{}", types(100)));
        let first = TestServer::start(config);
        let first_id = node_id(&first).await;
        let id = create(&first, "flaky").await;
        let failed = wait_for_flow(&first, &id, SETTLE, common::is_terminal).await;
        assert_eq!(failed["status"], "failed", "{failed}");
        let second = TestServer::start(first.kill());
        assert_ne!(node_id(&second).await, first_id);
        let retried = control(&second, &id, "retry").await;
        assert_eq!(retried.status, 200, "{:?}", retried.body);
        let done = wait_for_flow(&second, &id, SETTLE, common::is_terminal).await;
        ran_once(&done, &events(&second, &id).await);

        // A failed flow stored by an older version, with no owner at all: adopted the same way.
        let id = create(&second, "flaky").await;
        let failed = wait_for_flow(&second, &id, SETTLE, common::is_terminal).await;
        assert_eq!(failed["status"], "failed", "{failed}");
        db.sql(&format!(
            "UPDATE flows SET owner_node = NULL WHERE id = '{id}'"
        ));
        let retried = control(&second, &id, "retry").await;
        assert_eq!(retried.status, 200, "{:?}", retried.body);
        let done = wait_for_flow(&second, &id, SETTLE, common::is_terminal).await;
        ran_once(&done, &events(&second, &id).await);
        assert_eq!(fenced(&db), "0");
    }

    /// A pause sent to C for a flow whose owner A was just SIGKILLed waits: the node that
    /// takes the flow over applies it and C answers with its reply. The flow then stays paused
    /// until resumed, and completes with each phase once.
    #[actix_web::test]
    async fn a_control_for_a_killed_owner_is_applied_by_the_node_taking_over() {
        let db = TestDatabase::new(Backend::Postgres);
        let (a, b, c) = three(&db, CLUSTER, 600);
        let a_id = node_id(&a).await;
        let id = create(&a, "steps").await;
        actix_web::rt::time::sleep(Duration::from_millis(200)).await;
        a.kill();
        let sent = Instant::now();
        let paused = control(&c, &id, "pause").await;
        assert_eq!(paused.status, 200, "{:?}", paused.body);
        assert_eq!(paused.body["status"], "paused");
        // Not before the takeover: A was silent for the node timeout first.
        assert!(
            sent.elapsed() >= Duration::from_millis(800),
            "{:?}",
            sent.elapsed()
        );
        let (new_owner, _) = owner(&db, &id)
            .split_once('|')
            .map(|(o, e)| (o.to_owned(), e.to_owned()))
            .expect("owner|epoch");
        assert_ne!(new_owner, a_id);
        actix_web::rt::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(
            status(&common::get(&b, &format!("/v1/flows/{id}")).await.body),
            "paused"
        );
        let resumed = control(&b, &id, "resume").await;
        assert_eq!(resumed.status, 200, "{:?}", resumed.body);
        let done = wait_for_flow(&c, &id, SETTLE, common::is_terminal).await;
        ran_once(&done, &events(&c, &id).await);
    }

    /// A requester that stops waiting (its `control_timeout_ms` ran out while the owner was
    /// paused, not yet dead) answers 503 saying the control was not applied, and it is not
    /// applied later: once the owner runs again the flow completes, never paused.
    #[actix_web::test]
    async fn a_control_not_taken_in_time_is_503_and_never_applied() {
        let db = TestDatabase::new(Backend::Postgres);
        // A long node timeout: the owner stays the owner while it is stopped.
        let slow = "[cluster]\nheartbeat_ms = 100\nnode_timeout_ms = 5000\n";
        let config = config_for(&db, &format!("{slow}{}", types(300)));
        let a = TestServer::start(config.clone());
        let impatient = db.dir().join("impatient.toml");
        let text = std::fs::read_to_string(&config)
            .expect("config")
            .replace("[cluster]\n", "[cluster]\ncontrol_timeout_ms = 400\n");
        std::fs::write(&impatient, text).expect("config written");
        let c = TestServer::start(&impatient);
        let id = create(&a, "steps").await;
        let signal = |name: &str| {
            let status = Command::new("kill")
                .args([name, &a.pid().to_string()])
                .status()
                .expect("kill runs");
            assert!(status.success());
        };
        signal("-STOP");
        let paused = control(&c, &id, "pause").await;
        signal("-CONT");
        assert_eq!(paused.status, 503, "{:?}", paused.body);
        assert_eq!(paused.content_type, "application/problem+json");
        let detail = paused.body["detail"].as_str().unwrap_or_default();
        assert!(detail.contains("was not applied"), "{detail}");
        assert_eq!(
            metric(&c, "flowd_cluster_controls_unanswered_total").await,
            Some(1.0)
        );
        let done = wait_for_flow(&c, &id, SETTLE, common::is_terminal).await;
        let history = events(&c, &id).await;
        ran_once(&done, &history);
        assert!(kinds(&history, "flow_paused").is_empty(), "{history:?}");
    }
}
