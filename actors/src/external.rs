//! The `external` handler: an attempt becomes a task on a named queue, run by a remote worker
//! (any language, any host) that leases it over HTTP. The attempt waits for the worker's result;
//! the queue actor keeps the task durable, expires dead workers' leases and, when the phase has a
//! fallback, gives up on a queue no worker polls.

use std::sync::Arc;

use actix::Recipient;
use futures_util::future::BoxFuture;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::handler::{HandlerError, PhaseContext, PhaseHandler, PhaseResult};
use crate::model::now;
use crate::queue::{Detach, Submit};
use crate::store::FlowStore;
use crate::task::{TaskId, TaskRecord, TaskStatus};

/// What an `external` attempt may ask of the queue actor: put its task on a queue and wait for
/// the result, or stop waiting. Nothing else of the queue is reachable from a handler.
#[derive(Clone)]
pub struct TaskQueue {
    pub submit: Recipient<Submit>,
    pub detach: Recipient<Detach>,
}

/// Runs `external` phases through the queue actor.
pub struct ExternalHandler {
    queue: TaskQueue,
    store: Arc<dyn FlowStore>,
}

impl ExternalHandler {
    /// A handler whose tasks go to `queue`; `store` finds the task of a re-run attempt.
    pub fn new(queue: TaskQueue, store: Arc<dyn FlowStore>) -> Self {
        Self { queue, store }
    }
}

#[derive(Deserialize)]
struct ExternalParams {
    queue: String,
}

fn unavailable(error: impl std::fmt::Display) -> HandlerError {
    HandlerError::retryable("queue_unavailable", error.to_string())
}

/// Tells the queue when the attempt stops waiting early, so the task does not linger.
struct DetachOnDrop {
    queue: Recipient<Detach>,
    task_id: TaskId,
    token: u64,
    cancellation: CancellationToken,
    armed: bool,
}

impl Drop for DetachOnDrop {
    fn drop(&mut self) {
        if self.armed {
            self.queue.do_send(Detach {
                task_id: self.task_id,
                token: self.token,
                withdraw: self.cancellation.is_cancelled(),
            });
        }
    }
}

impl PhaseHandler for ExternalHandler {
    fn run(&self, ctx: PhaseContext) -> BoxFuture<'static, PhaseResult> {
        let queue = self.queue.clone();
        let store = self.store.clone();
        Box::pin(async move {
            let params: ExternalParams =
                serde_json::from_value(ctx.params.clone()).map_err(|e| {
                    HandlerError::fatal("bad_params", format!("invalid `external` params: {e}"))
                })?;
            // Only an attempt that may have run before can have a task already.
            let stored = if ctx.resumed {
                store
                    .find_task(ctx.flow_id, &ctx.phase, ctx.attempt)
                    .await
                    .map_err(unavailable)?
            } else {
                None
            };
            let (task, is_stored) = match stored {
                Some(task) => (task, true),
                None => {
                    let at = now();
                    let task = TaskRecord {
                        id: TaskId::new(),
                        queue: params.queue,
                        flow_id: ctx.flow_id,
                        master_flow_id: ctx.master_flow_id,
                        phase: ctx.phase.clone(),
                        attempt: ctx.attempt,
                        client_account_id: ctx.tenant.client_account_id.clone(),
                        engagement_id: ctx.tenant.engagement_id.clone(),
                        payload: ctx.to_wire(),
                        status: TaskStatus::Queued,
                        lease_id: None,
                        worker_id: None,
                        lease_expires_at: None,
                        result: None,
                        created_at: at,
                        updated_at: at,
                    };
                    (task, false)
                }
            };
            let attached = queue
                .submit
                .send(Submit {
                    task,
                    stored: is_stored,
                    unavailable_after: ctx.unavailable_after,
                })
                .await
                .map_err(unavailable)?
                .map_err(unavailable)?;
            let mut guard = DetachOnDrop {
                queue: queue.detach,
                task_id: attached.task_id,
                token: attached.token,
                cancellation: ctx.cancellation.clone(),
                armed: true,
            };
            // A parked attempt may wait for days: keep only what the wait needs.
            drop((ctx, store));
            let outcome = attached.outcome.await;
            guard.armed = false;
            outcome.unwrap_or_else(|_| Err(unavailable("the queue dropped the task")))
        })
    }

    /// It only awaits the queue actor and the store.
    fn only_awaits(&self) -> bool {
        true
    }
}
