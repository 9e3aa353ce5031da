//! Cluster mode, the read side (docs/cluster.md, 2.5): on PostgreSQL the streams of every node
//! carry the events every node commits, in id order and once each, and a client that
//! reconnects to another node with its last `id` (tenant stream) or `seq` (flow stream) misses
//! nothing and gets nothing twice.
//!
//! "Another node" is played two ways: by SQL that commits a flow's rows and events the way a
//! node's writer does (ids from the `event_ids` counter when the database has one, the
//! notification at commit), and by a second real server on the same database.

#[cfg(flowd_postgres_tests)]
mod common;

#[cfg(flowd_postgres_tests)]
mod postgres {
    use std::time::{Duration, Instant};

    use serde_json::{Value, json};

    use super::common::{
        self, Backend, EventSocket, TestDatabase, TestServer, config_for, flow_type_toml,
        is_terminal, wait_for_flow,
    };

    const CLUSTER: &str = "[cluster]\nheartbeat_ms = 200\nnode_timeout_ms = 2000\n";
    /// Long enough for the backstop read (1 s) several times over on a loaded machine.
    const DELIVERY: Duration = Duration::from_secs(15);

    /// Every stored event id, in order.
    fn stored_ids(db: &TestDatabase) -> Vec<i64> {
        db.sql("SELECT id FROM events ORDER BY id")
            .lines()
            .map(|line| line.parse().expect("an id"))
            .collect()
    }

    /// What another node's writer commits for `flow`: its row (inserted, or moved on; stored
    /// as ended, so that no node adopts a flow of a type it does not know) and its
    /// events `seqs`, in one transaction. Ids come from the `event_ids` counter when the
    /// database has one (the cluster's writers number there); otherwise (writers that number
    /// in memory) from `first_id`, which the test keeps clear of the server's own. With
    /// `notify`, the notification the writers send at commit. Returns the ids used.
    fn commit_as_other_node(
        db: &TestDatabase,
        flow: &str,
        seqs: std::ops::RangeInclusive<i64>,
        first_id: i64,
        notify: bool,
    ) -> Vec<i64> {
        let (first_seq, last_seq) = (*seqs.start(), *seqs.end());
        let n = last_seq - first_seq + 1;
        let notify = if notify {
            format!("PERFORM pg_notify('flowd_events', (first_id + {n} - 1)::text);")
        } else {
            String::new()
        };
        let ids = db.sql(&format!(
                "DO $$
                DECLARE first_id BIGINT;
                BEGIN
                    IF to_regclass('event_ids') IS NOT NULL THEN
                        EXECUTE 'UPDATE event_ids SET last = last + {n} RETURNING last - {n} + 1'
                            INTO first_id;
                    ELSE
                        first_id := {first_id};
                    END IF;
                    INSERT INTO flows (id, flow_type, flow_type_version, status, progress_percentage,
                        input, master_flow_id, client_account_id, engagement_id, last_seq,
                        created_at, updated_at)
                    VALUES ('{flow}', 'elsewhere', 1, 'completed', 0, '{{}}', '{flow}', 'default',
                        'default', {last_seq}, now(), now())
                    ON CONFLICT (id) DO UPDATE SET last_seq = EXCLUDED.last_seq,
                        updated_at = EXCLUDED.updated_at;
                    INSERT INTO events (id, flow_id, seq, master_flow_id, client_account_id,
                        engagement_id, flow_type, kind, status, progress_percentage, at)
                    SELECT first_id + g - {first_seq}, '{flow}', g, '{flow}', 'default', 'default',
                        'elsewhere', 'phase_progress', 'running', 0, now()
                    FROM generate_series({first_seq}, {last_seq}) AS g;
                    {notify}
                END $$;
                SELECT id FROM events WHERE flow_id = '{flow}' AND seq >= {first_seq} ORDER BY id"
            ),
        );
        ids.lines().map(|l| l.parse().expect("an id")).collect()
    }

    /// Events from `socket` until `done` holds for what arrived, failing after [`DELIVERY`].
    async fn receive_until(
        socket: &mut EventSocket,
        received: &mut Vec<Value>,
        what: &str,
        done: impl Fn(&[Value]) -> bool,
    ) {
        let deadline = Instant::now() + DELIVERY;
        while !done(received) {
            let left = deadline.saturating_duration_since(Instant::now());
            match socket.next_event(left).await {
                Some(event) => received.push(event),
                None => panic!(
                    "timed out waiting for {what}; received ids {:?}",
                    ids_of(received)
                ),
            }
        }
    }

    fn ids_of(events: &[Value]) -> Vec<i64> {
        events
            .iter()
            .map(|e| e["id"].as_i64().expect("id"))
            .collect()
    }

    fn seqs_of(events: &[Value]) -> Vec<u64> {
        events
            .iter()
            .map(|e| e["seq"].as_u64().expect("seq"))
            .collect()
    }

    /// Creates a flow of `flow_type` on `server` and waits for its end; its events.
    async fn run_flow(server: &TestServer, flow_type: &str) -> (String, Vec<Value>) {
        let created = common::post(server, "/v1/flows", &json!({ "flow_type": flow_type })).await;
        assert_eq!(created.status, 201, "{:?}", created.body);
        let id = created.body["id"].as_str().expect("id").to_owned();
        wait_for_flow(server, &id, Duration::from_secs(20), is_terminal).await;
        let events = common::get(server, &format!("/v1/flows/{id}/events")).await;
        let events = events.body["events"].as_array().expect("events").clone();
        (id, events)
    }

    /// Node A's tenant stream and a flow stream carry, in id order and once each, A's own
    /// flows' events and those another node commits (notified, or found by the backstop read
    /// alone); a client that moves to node B with its last `id`, or its last `seq` on a flow
    /// stream, gets exactly the rest; and A's stream carries B's flows too.
    #[actix_web::test]
    async fn streams_carry_every_nodes_events_once_in_order_across_nodes() {
        let db = TestDatabase::new(Backend::Postgres);
        let config = config_for(
            &db,
            &format!(
                "{}{CLUSTER}",
                flow_type_toml("two", &[("a", "noop", "{}", 0), ("b", "noop", "{}", 0)])
            ),
        );
        let a = TestServer::start(&config);
        let mut tenant_a = EventSocket::connect(&a, "/v1/events/ws", None).await;
        let mut on_a = Vec::new();

        let (_, first) = run_flow(&a, "two").await;
        let per_flow = first.len() as i64;
        let last_own = ids_of(&first).last().copied().expect("events");
        // Another node commits the first half of flow X. A writer that numbers in memory (no
        // `event_ids`) would take the ids right after A's; the test leaves A's next flow's ids
        // free below it, so the node must hold X back until A's own commit fills the gap.
        let x = uuid::Uuid::new_v4().to_string();
        let x_first = commit_as_other_node(&db, &x, 1..=2, last_own + per_flow + 1, true);
        let (second_id, second) = run_flow(&a, "two").await;
        assert_eq!(second.len() as i64, per_flow);
        // X's stream on A, opened between its two commits, from its start.
        let mut x_stream = EventSocket::connect(&a, &format!("/v1/flows/{x}/ws"), None).await;
        let next = x_first.last().copied().expect("ids") + 1;
        let x_second = commit_as_other_node(&db, &x, 3..=4, next, true);
        // Flow Y commits without a notification: only the backstop read finds it.
        let y = uuid::Uuid::new_v4().to_string();
        let next = x_second.last().copied().expect("ids") + 1;
        commit_as_other_node(&db, &y, 1..=3, next, false);

        let stored = stored_ids(&db);
        receive_until(&mut tenant_a, &mut on_a, "every stored event on A", |got| {
            got.len() >= stored.len()
        })
        .await;
        assert_eq!(
            ids_of(&on_a),
            stored,
            "A's tenant stream: every event once, by id"
        );
        let mut x_events = Vec::new();
        receive_until(&mut x_stream, &mut x_events, "X's events", |got| {
            got.len() >= 4
        })
        .await;
        assert_eq!(seqs_of(&x_events), [1, 2, 3, 4], "X's stream on A");
        assert!(
            x_stream
                .next_event(Duration::from_millis(300))
                .await
                .is_none(),
            "nothing twice on X's stream"
        );

        // Node B joins; A's client moves to it with the id of the event it saw third.
        let b = TestServer::start(&config);
        let resume_at = ids_of(&on_a)[2];
        let mut tenant_b =
            EventSocket::connect(&b, &format!("/v1/events/ws?after={resume_at}"), None).await;
        let mut on_b = Vec::new();
        let rest: Vec<i64> = stored
            .iter()
            .copied()
            .filter(|&id| id > resume_at)
            .collect();
        receive_until(&mut tenant_b, &mut on_b, "the rest on B", |got| {
            got.len() >= rest.len()
        })
        .await;
        assert_eq!(ids_of(&on_b), rest, "B: exactly what came after the cursor");
        // A flow stream moves to B with its last `seq`.
        let mut second_on_b =
            EventSocket::connect(&b, &format!("/v1/flows/{second_id}/ws?after=2"), None).await;
        let mut resumed = Vec::new();
        receive_until(
            &mut second_on_b,
            &mut resumed,
            "the flow's rest on B",
            |got| got.len() as i64 >= per_flow - 2,
        )
        .await;
        assert_eq!(
            seqs_of(&resumed),
            (3..=per_flow as u64).collect::<Vec<_>>(),
            "the flow stream resumes after seq 2"
        );

        // B runs a flow: A's stream carries it, and so does B's.
        let (_, on_other_node) = run_flow(&b, "two").await;
        let stored = stored_ids(&db);
        receive_until(&mut tenant_a, &mut on_a, "B's flow on A", |got| {
            got.len() >= stored.len()
        })
        .await;
        assert_eq!(ids_of(&on_a), stored, "A carries B's flow, in order, once");
        receive_until(&mut tenant_b, &mut on_b, "B's own flow on B", |got| {
            ids_of(got).last() == ids_of(&on_other_node).last()
        })
        .await;
        let rest: Vec<i64> = stored
            .iter()
            .copied()
            .filter(|&id| id > resume_at)
            .collect();
        assert_eq!(ids_of(&on_b), rest);
        for socket in [&mut tenant_a, &mut tenant_b] {
            assert!(
                socket
                    .next_event(Duration::from_millis(300))
                    .await
                    .is_none(),
                "nothing twice"
            );
        }
    }

    /// The listening connection is killed: the node connects again and listens, and events
    /// committed meanwhile and after reach its streams.
    #[actix_web::test]
    async fn the_listener_reconnects_after_its_connection_is_killed() {
        let db = TestDatabase::new(Backend::Postgres);
        let config = config_for(&db, CLUSTER);
        let server = TestServer::start(&config);
        let mut tenant = EventSocket::connect(&server, "/v1/events/ws", None).await;
        let listener = |db: &TestDatabase| {
            db.sql(&format!(
                "SELECT pid FROM pg_stat_activity WHERE application_name = \
                     'flowd-events-listener' AND datname = '{}'",
                db.postgres_name().expect("PostgreSQL")
            ))
        };
        let deadline = Instant::now() + DELIVERY;
        let first = loop {
            let pid = listener(&db);
            if !pid.is_empty() {
                break pid;
            }
            assert!(Instant::now() < deadline, "the node never listened");
            actix_web::rt::time::sleep(Duration::from_millis(50)).await;
        };
        db.sql(&format!("SELECT pg_terminate_backend({first})"));
        let flow = uuid::Uuid::new_v4().to_string();
        commit_as_other_node(&db, &flow, 1..=2, 1, true);
        let deadline = Instant::now() + DELIVERY;
        loop {
            let pid = listener(&db);
            if !pid.is_empty() && pid != first {
                break;
            }
            assert!(Instant::now() < deadline, "the listener did not come back");
            actix_web::rt::time::sleep(Duration::from_millis(50)).await;
        }
        commit_as_other_node(&db, &flow, 3..=4, 3, true);
        let mut received = Vec::new();
        receive_until(&mut tenant, &mut received, "4 events", |got| got.len() >= 4).await;
        assert_eq!(ids_of(&received), stored_ids(&db));
        assert_eq!(seqs_of(&received), [1, 2, 3, 4]);
    }
}
