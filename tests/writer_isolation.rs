//! The persistence actor on a real database: a write the database refuses fails alone, and
//! every other write of its group-commit batch commits.

mod common;

use std::sync::Arc;

use flowd::store::DbStore;
use flowd_actors::definition::{FlowType, PhaseDefinition};
use flowd_actors::error::PersistError;
use flowd_actors::events::EventFanout;
use flowd_actors::ids::Tenant;
use flowd_actors::machine;
use flowd_actors::metrics::RuntimeMetrics;
use flowd_actors::model::{FlowState, NewFlow, now};
use flowd_actors::persistence::{GetStats, Persist, PersistenceActor};
use flowd_actors::store::{FlowStore, FlowUpdate, TransitionWrite, Write};
use serde_json::json;

use actix::Actor;
use common::{Backend, TestDatabase};

fn definition() -> FlowType {
    FlowType {
        name: "isolated".into(),
        version: 1,
        phases: vec![PhaseDefinition::new("only", "noop")],
    }
}

/// The write that creates one new flow, as the supervisor makes it.
fn create_write(definition: &FlowType) -> TransitionWrite {
    let mut flow = FlowState::new_initialized(
        definition,
        NewFlow {
            flow_type: definition.name.clone(),
            input: json!({"n": 1}),
            parent_flow_id: None,
            master_flow_id: None,
            tenant: Tenant::default_tenant(),
            created_by: None,
            idempotency_key: None,
        },
    );
    let step = machine::start(&mut flow, definition, now());
    TransitionWrite {
        flow_id: flow.id,
        create: Some(Box::new(flow.clone())),
        flow: FlowUpdate::of(&flow),
        phases: Vec::new(),
        events: step.events,
        failure: None,
    }
}

async fn a_refused_write_fails_alone(backend: Backend) {
    let db = TestDatabase::new(backend);
    let store = DbStore::connect(&db.url, 4).await.expect("connect");
    let definition = definition();
    let store: Arc<dyn FlowStore> = Arc::new(store);
    let persistence = PersistenceActor::new(
        store.clone(),
        EventFanout::new(1024),
        0,
        10_000,
        Arc::new(RuntimeMetrics::default()),
    )
    .start();

    // One flow committed first; its creating write sent again is a duplicate of its row and
    // of its events' (flow_id, seq): the poison.
    let first = create_write(&definition);
    persistence
        .send(Persist::unfenced(Write::Transition(first.clone())))
        .await
        .expect("mailbox")
        .expect("the first flow commits");

    // Sent without waiting: while the first of them commits, the rest queue up and go in one
    // batch together, the poison in the middle.
    let mut pending = Vec::new();
    let mut flow_ids = Vec::new();
    for index in 0..101 {
        let write = if index == 50 {
            first.clone()
        } else {
            let write = create_write(&definition);
            flow_ids.push(write.flow_id);
            write
        };
        pending.push(persistence.send(Persist::unfenced(Write::Transition(write))));
    }
    let mut refused = 0;
    for (index, answer) in futures_util::future::join_all(pending)
        .await
        .into_iter()
        .enumerate()
    {
        match answer.expect("mailbox") {
            Ok(()) => assert_ne!(index, 50, "the duplicate write was taken"),
            Err(PersistError::Refused(_)) => {
                assert_eq!(index, 50, "write {index} was refused");
                refused += 1;
            }
            Err(other) => panic!("write {index} failed: {other}"),
        }
    }
    assert_eq!(refused, 1);
    for id in flow_ids {
        let flow = store.load_flow(id).await.expect("read").expect("stored");
        let events = store.flow_events(id, 0, 100).await.expect("events");
        assert_eq!(events.len() as u64, flow.last_seq, "flow {id} lost events");
        assert_eq!(events.len(), first.events.len(), "flow {id} lost events");
    }
    let stats = persistence.send(GetStats).await.expect("stats");
    assert_eq!(stats.refused_writes, 1);
    assert_eq!(stats.consecutive_failures, 0, "a refusal is no outage");
    assert!(
        stats.largest_batch >= 50,
        "the writes were not batched together: largest batch {}",
        stats.largest_batch
    );
}

on_both_backends!(a_refused_write_fails_alone);
