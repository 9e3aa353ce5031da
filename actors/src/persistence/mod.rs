//! The persistence actor: the only writer. It drains its mailbox into one transaction per batch
//! (group commit), so throughput rises with load while every writer still waits for its own
//! commit. Event ids are numbered here, in commit order, which makes them rise across all flows.

pub mod messages;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::oneshot;
use tracing::{error, warn};

use crate::error::PersistError;
use crate::events::EventFanout;
use crate::ids::FlowId;
use crate::metrics::RuntimeMetrics;
use crate::store::{FlowStore, StoreError, Write};
pub use messages::{Fence, GetStats, Persist, PersistenceStats, Release};

/// Attempts of one batch while the database is unavailable, before its writers are told it failed.
const COMMIT_ATTEMPTS: u32 = 5;

struct Pending {
    write: Write,
    ack: oneshot::Sender<Result<(), PersistError>>,
}

/// Serializes every database write of the runtime.
pub struct PersistenceActor {
    store: Arc<dyn FlowStore>,
    fanout: EventFanout,
    queue: Vec<Pending>,
    committing: bool,
    last_event_id: i64,
    max_batch: usize,
    stats: PersistenceStats,
    metrics: Arc<RuntimeMetrics>,
    /// Per live flow, which actor generation may write (see [`Fence`]).
    fences: HashMap<FlowId, Option<u64>>,
}

impl PersistenceActor {
    /// `last_event_id` is the highest event id already stored; numbering continues after it.
    pub fn new(
        store: Arc<dyn FlowStore>,
        fanout: EventFanout,
        last_event_id: i64,
        max_batch: usize,
        metrics: Arc<RuntimeMetrics>,
    ) -> Self {
        Self {
            store,
            fanout,
            queue: Vec::new(),
            committing: false,
            last_event_id,
            max_batch: max_batch.max(1),
            stats: PersistenceStats::default(),
            metrics,
            fences: HashMap::new(),
        }
    }

    /// Starts the next batch unless one is committing. Everything queued meanwhile waits for it.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.committing || self.queue.is_empty() {
            return;
        }
        self.committing = true;
        let take = self.queue.len().min(self.max_batch);
        let first_event_id = self.last_event_id;
        let mut writes = Vec::with_capacity(take);
        let mut acks = Vec::with_capacity(take);
        for Pending { mut write, ack } in self.queue.drain(..take) {
            if let Write::Transition(transition) = &mut write {
                for event in &mut transition.events {
                    self.last_event_id += 1;
                    event.id = self.last_event_id;
                }
            }
            writes.push(write);
            acks.push(ack);
        }
        let store = self.store.clone();
        let commit = async move {
            let started = Instant::now();
            let result = commit_with_retry(store.as_ref(), &writes).await;
            (result, writes, started.elapsed())
        };
        ctx.spawn(
            commit
                .into_actor(self)
                .map(move |(result, writes, took), act, ctx| {
                    act.committing = false;
                    act.stats.batches += 1;
                    act.stats.commit_micros += took.as_micros() as u64;
                    match result {
                        Ok(()) => {
                            act.stats.consecutive_failures = 0;
                            act.stats.writes += writes.len() as u64;
                            act.stats.largest_batch =
                                act.stats.largest_batch.max(writes.len() as u64);
                            let events = writes.into_iter().flat_map(|write| match write {
                                Write::Transition(t) => t.events,
                                Write::FlowType(_) | Write::Task(_) => Vec::new(),
                            });
                            let events: Vec<_> = events.collect();
                            act.stats.events += events.len() as u64;
                            act.metrics.batch_committed(
                                acks.len(),
                                events.len(),
                                took.as_secs_f64(),
                            );
                            // Acked only after commit; published only after commit.
                            for ack in acks {
                                let _ = ack.send(Ok(()));
                            }
                            act.fanout.publish(events);
                        }
                        Err(error) => {
                            error!(%error, writes = writes.len(), "batch commit failed");
                            act.stats.failed_batches += 1;
                            act.stats.consecutive_failures += 1;
                            act.last_event_id = first_event_id;
                            let error = PersistError::CommitFailed(error.to_string());
                            for ack in acks {
                                let _ = ack.send(Err(error.clone()));
                            }
                        }
                    }
                    act.flush(ctx);
                }),
        );
    }
}

/// Retries a batch while the database is unavailable; conflicts and corruption fail at once.
async fn commit_with_retry(store: &dyn FlowStore, writes: &[Write]) -> Result<(), StoreError> {
    let mut delay = Duration::from_millis(50);
    let mut attempt = 1;
    loop {
        match store.commit(writes).await {
            Err(StoreError::Unavailable(message)) if attempt < COMMIT_ATTEMPTS => {
                warn!(%message, attempt, "database unavailable; retrying the batch");
                tokio::time::sleep(delay).await;
                delay *= 2;
                attempt += 1;
            }
            other => return other,
        }
    }
}

impl Actor for PersistenceActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Writers wait for their ack anyway; a deep mailbox lets whole waves join one batch.
        ctx.set_mailbox_capacity(1 << 20);
    }
}

impl Handler<Persist> for PersistenceActor {
    type Result = ResponseFuture<Result<(), PersistError>>;

    fn handle(&mut self, message: Persist, ctx: &mut Self::Context) -> Self::Result {
        if let (Some(writer), Write::Transition(transition)) = (message.writer, &message.write)
            && self.fences.get(&transition.flow_id).copied().flatten() != Some(writer)
        {
            warn!(flow_id = %transition.flow_id, writer, "write from a replaced flow actor refused");
            return Box::pin(async { Err(PersistError::Fenced) });
        }
        let (ack, committed) = oneshot::channel();
        self.queue.push(Pending {
            write: message.write,
            ack,
        });
        self.flush(ctx);
        Box::pin(async move { committed.await.unwrap_or(Err(PersistError::Stopped)) })
    }
}

impl Handler<Fence> for PersistenceActor {
    type Result = ();

    fn handle(&mut self, fence: Fence, _: &mut Self::Context) {
        self.fences.insert(fence.flow_id, fence.writer);
    }
}

impl Handler<Release> for PersistenceActor {
    type Result = ();

    fn handle(&mut self, Release(flow_id): Release, _: &mut Self::Context) {
        self.fences.remove(&flow_id);
    }
}

impl Handler<GetStats> for PersistenceActor {
    type Result = MessageResult<GetStats>;

    fn handle(&mut self, _: GetStats, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.stats)
    }
}
