//! Cluster mode (issue 18): a rolling restart of all three nodes under a steady load. Each
//! node in turn is stopped with SIGTERM (a goodbye: the others take its flows over at once)
//! and started again (a new `HOST-PID` node id), while flows keep being created on the nodes
//! that are up. Every flow completes, each phase succeeds once, `seq` stays gap-free.

#[cfg(flowd_postgres_tests)]
mod common;

#[cfg(flowd_postgres_tests)]
mod postgres {
    use std::process::Command;
    use std::time::{Duration, Instant};

    use futures_util::future::join_all;
    use serde_json::{Value, json};

    use super::common::{self, Backend, TestDatabase, TestServer, config_for};

    const CLUSTER: &str = "[cluster]\nheartbeat_ms = 100\nnode_timeout_ms = 1000\n";

    /// `steps`: four phases of 150 ms, so that flows are in flight at every restart.
    fn config(db: &TestDatabase) -> std::path::PathBuf {
        let mut toml = format!("{CLUSTER}[[flow_types]]\nname = \"steps\"\nversion = 1\n");
        for name in ["one", "two", "three", "four"] {
            toml.push_str(&format!(
                "[[flow_types.phases]]\nname = \"{name}\"\nhandler = \"sleep\"\n\
                 params = {{ ms = 150 }}\n"
            ));
        }
        config_for(db, &toml)
    }

    /// `count` flows spread over `servers`; their ids.
    async fn load(servers: &[&TestServer], count: usize) -> Vec<String> {
        let posts = (0..count).map(|i| {
            let server = servers[i % servers.len()];
            async move {
                let reply = common::post(
                    server,
                    "/v1/flows",
                    &json!({ "flow_type": "steps", "input": { "n": i } }),
                )
                .await;
                assert_eq!(reply.status, 201, "{:?}", reply.body);
                reply.body["id"].as_str().expect("id").to_owned()
            }
        });
        join_all(posts).await
    }

    async fn node_id(server: &TestServer) -> String {
        let reply = common::get(server, "/v1/cluster/nodes").await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        reply.body["this_node"]
            .as_str()
            .expect("this_node")
            .to_owned()
    }

    /// Waits until `observer` lists `node` as `status`.
    async fn until_status(observer: &TestServer, node: &str, status: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let list = common::get(observer, "/v1/cluster/nodes").await.body;
            let now = list["nodes"]
                .as_array()
                .and_then(|nodes| nodes.iter().find(|n| n["node_id"] == node))
                .and_then(|n| n["status"].as_str())
                .map(str::to_owned);
            if now.as_deref() == Some(status) {
                return;
            }
            assert!(Instant::now() < deadline, "{node} never {status}: {list}");
            actix_web::rt::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Completed, `seq` gap-free, each phase succeeded exactly once.
    async fn ran_once(server: &TestServer, id: &str, flow: &Value) {
        assert_eq!(flow["status"], "completed", "{flow}");
        let reply = common::get(server, &format!("/v1/flows/{id}/events")).await;
        let events = reply.body["events"].as_array().expect("events").clone();
        let seqs: Vec<u64> = events.iter().filter_map(|e| e["seq"].as_u64()).collect();
        assert_eq!(seqs, (1..=events.len() as u64).collect::<Vec<_>>(), "{id}");
        for phase in ["one", "two", "three", "four"] {
            let successes = events
                .iter()
                .filter(|e| e["kind"] == "phase_succeeded" && e["current_phase"] == phase)
                .count();
            assert_eq!(successes, 1, "flow {id}, phase {phase}: {events:?}");
        }
    }

    #[actix_web::test]
    async fn a_rolling_restart_under_load_completes_every_flow_once() {
        let db = TestDatabase::new(Backend::Postgres);
        let config = config(&db);
        let mut nodes: Vec<TestServer> = (0..3).map(|_| TestServer::start(&config)).collect();
        let mut ids = load(&nodes.iter().collect::<Vec<_>>(), 60).await;
        for turn in 0..3 {
            let id = node_id(&nodes[turn]).await;
            let status = Command::new("kill")
                .args(["-TERM", &nodes[turn].pid().to_string()])
                .status()
                .expect("kill runs");
            assert!(status.success());
            let others: Vec<&TestServer> = nodes
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != turn)
                .map(|(_, n)| n)
                .collect();
            // The load goes on while the node is away.
            ids.extend(load(&others, 30).await);
            until_status(others[0], &id, "stopped").await;
            ids.extend(load(&others, 30).await);
            nodes[turn] = TestServer::start(&config);
            ids.extend(load(&nodes.iter().collect::<Vec<_>>(), 30).await);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        for id in &ids {
            let flow = loop {
                let reply = common::get(&nodes[0], &format!("/v1/flows/{id}")).await;
                assert_eq!(reply.status, 200, "{:?}", reply.body);
                if common::is_terminal(&reply.body) {
                    break reply.body;
                }
                assert!(
                    Instant::now() < deadline,
                    "flow {id} never finished: {}",
                    reply.body
                );
                actix_web::rt::time::sleep(Duration::from_millis(50)).await;
            };
            ran_once(&nodes[1], id, &flow).await;
        }
        assert_eq!(ids.len(), 60 + 3 * 90);
        // The restarts did interrupt flows: some were taken over (a new epoch).
        let output = Command::new("psql")
            .args([
                &db.url,
                "-qAt",
                "-c",
                "SELECT count(*) FROM flows WHERE owner_epoch > 1",
            ])
            .output()
            .expect("psql runs");
        let taken_over: u64 = String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .expect("a count");
        assert!(taken_over > 0, "no flow was in flight at a restart");
    }
}
