//! The queue actor: hands the tasks of `external` phases to remote workers. Workers long-poll a
//! named queue and get the oldest task with a lease; they heartbeat to keep it and quote it to
//! complete or fail the task. An expired lease ends the attempt as a failure (the phase's retry
//! policy queues a new task); a result under a stale lease is refused.
//!
//! Every change of a task is committed through the persistence actor before anyone is told
//! about it, so a restart loses no task and no result. After a restart the flows re-run their
//! interrupted attempts, which re-attach to their stored tasks; leases survive with them.

pub mod messages;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::handler::{ErrorClass, HandlerError, NextPhase, PhaseOutput, PhaseResult};
use crate::ids::Tenant;
use crate::model::now;
use crate::persistence::{Persist, PersistenceActor};
use crate::store::{FlowStore, Write};
use crate::task::{TaskId, TaskRecord, TaskStatus};
pub use messages::{
    Attached, Detach, GetQueueStats, Lease, Poll, QueueError, QueueStats, Report, ReportTask,
    Submit,
};

/// How often leases are checked for expiry.
const LEASE_SWEEP: Duration = Duration::from_millis(200);
/// How long a finished task's outcome is kept for an attempt that re-attaches late.
const FINISHED_TTL: Duration = Duration::from_secs(300);

type QueueKey = (Tenant, String);

struct LiveTask {
    record: TaskRecord,
    waiter: Option<(u64, oneshot::Sender<PhaseResult>)>,
    /// The payload as JSON text once the row is stored: a parked task holds a few hundred
    /// bytes instead of a JSON tree (`record.payload` is then null; upserts never change it).
    payload: Option<Box<str>>,
}

impl LiveTask {
    fn new(record: TaskRecord) -> Box<Self> {
        Box::new(Self {
            record,
            waiter: None,
            payload: None,
        })
    }

    /// Called once the row is committed, so every later write of the task is an update.
    fn compact(&mut self) {
        if self.payload.is_none() && !self.record.payload.is_null() {
            self.payload = serde_json::to_string(&self.record.payload)
                .ok()
                .map(String::into_boxed_str);
            self.record.payload = Value::Null;
        }
    }

    fn payload(&self) -> Value {
        match &self.payload {
            Some(text) => serde_json::from_str(text).unwrap_or(Value::Null),
            None => self.record.payload.clone(),
        }
    }
}

struct Poller {
    worker_id: Option<String>,
    lease: Duration,
    reply: oneshot::Sender<Result<Option<Lease>, QueueError>>,
}

/// Owns the queued and leased tasks of this server.
pub struct QueueActor {
    store: Arc<dyn FlowStore>,
    persistence: Addr<PersistenceActor>,
    tasks: HashMap<TaskId, Box<LiveTask>>,
    /// Queued tasks per queue, oldest (smallest time-ordered id) first.
    ready: HashMap<QueueKey, BTreeSet<TaskId>>,
    pollers: HashMap<QueueKey, VecDeque<Poller>>,
    last_poll: HashMap<QueueKey, Instant>,
    /// Lease expiry index; entries whose task moved on are skipped when they come up.
    leases: BTreeSet<(DateTime<Utc>, TaskId)>,
    /// Outcomes of recently finished tasks, for an attempt that re-attaches after they finished.
    finished: HashMap<TaskId, (Instant, PhaseResult)>,
    pruned_at: Instant,
    next_token: u64,
}

impl QueueActor {
    /// An empty queue; tasks arrive as their flows submit (or re-submit, at boot) them.
    pub fn new(store: Arc<dyn FlowStore>, persistence: Addr<PersistenceActor>) -> Self {
        Self {
            store,
            persistence,
            tasks: HashMap::new(),
            ready: HashMap::new(),
            pollers: HashMap::new(),
            last_poll: HashMap::new(),
            leases: BTreeSet::new(),
            finished: HashMap::new(),
            pruned_at: Instant::now(),
            next_token: 0,
        }
    }

    /// Commits the task's current row; nobody hears of a change before this succeeds.
    fn persist(&self, record: &TaskRecord) -> impl Future<Output = Result<(), QueueError>> + use<> {
        let commit = self
            .persistence
            .send(Persist::unfenced(Write::Task(Box::new(record.clone()))));
        async move {
            commit
                .await
                .map_err(|e| QueueError::Unavailable(e.to_string()))?
                .map_err(|e| QueueError::Unavailable(e.to_string()))
        }
    }

    fn key(record: &TaskRecord) -> QueueKey {
        (record.tenant(), record.queue.clone())
    }

    fn enqueue(&mut self, id: TaskId) {
        if let Some(task) = self.tasks.get(&id) {
            let key = Self::key(&task.record);
            self.ready.entry(key.clone()).or_default().insert(id);
        }
    }

    fn unqueue(&mut self, record: &TaskRecord) {
        let key = Self::key(record);
        if let Some(ready) = self.ready.get_mut(&key) {
            ready.remove(&record.id);
            if ready.is_empty() {
                self.ready.remove(&key);
            }
        }
    }

    /// Whether a worker showed up on `key` within `window`, or is waiting on it now.
    fn worker_seen(&self, key: &QueueKey, window: Duration) -> bool {
        self.pollers
            .get(key)
            .is_some_and(|p| p.iter().any(|p| !p.reply.is_closed()))
            || self
                .last_poll
                .get(key)
                .is_some_and(|at| at.elapsed() <= window)
    }

    /// Hands queued tasks of `key` to waiting pollers, oldest task to longest-waiting poller.
    fn dispatch(&mut self, key: &QueueKey, ctx: &mut Context<Self>) {
        loop {
            let Some(pollers) = self.pollers.get_mut(key) else {
                return;
            };
            while pollers.front().is_some_and(|p| p.reply.is_closed()) {
                pollers.pop_front();
            }
            if pollers.is_empty() {
                self.pollers.remove(key);
                return;
            }
            let Some(task_id) = self.ready.get(key).and_then(|r| r.first().copied()) else {
                return;
            };
            if self
                .tasks
                .get(&task_id)
                .is_none_or(|t| t.record.status != TaskStatus::Queued)
            {
                // Not queued any more (finished or leased meanwhile): never hand it out.
                if let Some(ready) = self.ready.get_mut(key) {
                    ready.remove(&task_id);
                }
                continue;
            }
            let Some(poller) = self.pollers.get_mut(key).and_then(VecDeque::pop_front) else {
                return;
            };
            self.lease_to(task_id, poller, ctx);
        }
    }

    fn lease_to(&mut self, task_id: TaskId, poller: Poller, ctx: &mut Context<Self>) {
        let Some(task) = self.tasks.get_mut(&task_id) else {
            return;
        };
        let at = now();
        let expires_at = at + chrono::Duration::from_std(poller.lease).unwrap_or_default();
        let record = &mut task.record;
        record.status = TaskStatus::Leased;
        record.lease_id = Some(Uuid::new_v4());
        record.worker_id = poller.worker_id.clone();
        record.lease_expires_at = Some(expires_at);
        record.updated_at = at;
        let record = record.clone();
        self.unqueue(&record);
        self.leases.insert((expires_at, task_id));
        let commit = self.persist(&record);
        ctx.spawn(commit.into_actor(self).map(move |result, act, ctx| {
            let lease_id = record.lease_id.unwrap_or_default();
            let still_ours = act
                .tasks
                .get(&task_id)
                .is_some_and(|t| t.record.lease_id == Some(lease_id));
            let payload = act.tasks.get(&task_id).map(|t| t.payload());
            match (result, payload) {
                (Ok(()), Some(payload)) if still_ours => {
                    let lease = Lease {
                        task_id,
                        lease_id,
                        expires_at,
                        flow_id: record.flow_id,
                        phase: record.phase.clone(),
                        attempt: record.attempt,
                        payload,
                    };
                    if poller.reply.send(Ok(Some(lease))).is_err() {
                        // The worker gave up waiting before the lease was committed.
                        act.requeue(task_id, ctx);
                    } else {
                        debug!(flow_id = %record.flow_id, phase = %record.phase, task_id = %task_id, "task leased");
                    }
                }
                (Ok(()), _) => {
                    let _ = poller.reply.send(Ok(None));
                }
                (Err(error), _) => {
                    warn!(%error, task_id = %task_id, "lease not committed; task stays queued");
                    if still_ours {
                        act.requeue_in_memory(task_id);
                    }
                    let _ = poller.reply.send(Err(error));
                }
            }
        }));
    }

    fn requeue_in_memory(&mut self, task_id: TaskId) {
        if let Some(task) = self.tasks.get_mut(&task_id) {
            back_on_queue(&mut task.record);
            self.enqueue(task_id);
        }
    }

    /// Puts a task back on its queue (durably) and offers it to waiting workers.
    fn requeue(&mut self, task_id: TaskId, ctx: &mut Context<Self>) {
        self.requeue_in_memory(task_id);
        let Some(task) = self.tasks.get(&task_id) else {
            return;
        };
        let key = Self::key(&task.record);
        let commit = self.persist(&task.record);
        ctx.spawn(commit.into_actor(self).map(move |result, act, ctx| {
            if let Err(error) = result {
                warn!(%error, task_id = %task_id, "requeue not committed; the stored lease will expire");
            }
            act.dispatch(&key, ctx);
        }));
    }

    /// Ends a task with `status`, commits it, then tells the attempt waiting for it.
    fn finish(
        &mut self,
        task_id: TaskId,
        status: TaskStatus,
        result: Option<Value>,
        ctx: &mut Context<Self>,
    ) -> Option<impl Future<Output = Result<TaskRecord, QueueError>> + use<>> {
        let task = self.tasks.get_mut(&task_id)?;
        let previous = task.record.clone();
        let stamp = now();
        task.record.status = status;
        task.record.result = result;
        task.record.updated_at = stamp;
        let record = task.record.clone();
        self.unqueue(&record);
        let commit = self.persist(&record);
        let (done, answer) = oneshot::channel();
        ctx.spawn(
            commit
                .into_actor(self)
                .map(move |result, act, _| match result {
                    Ok(()) => {
                        // Unless it was revived meanwhile (a withdrawn task re-submitted by its
                        // attempt), the finished task leaves memory; the store has it.
                        let unchanged = act.tasks.get(&task_id).is_some_and(|t| {
                            t.record.status == status && t.record.updated_at == stamp
                        });
                        if unchanged
                            && let Some(task) = act.tasks.remove(&task_id)
                            && let Some(outcome) = outcome_of(&task.record)
                        {
                            act.finished
                                .insert(task_id, (Instant::now(), outcome.clone()));
                            if let Some((_, waiter)) = task.waiter {
                                let _ = waiter.send(outcome);
                            }
                        }
                        let _ = done.send(Ok(record));
                    }
                    Err(error) => {
                        if let Some(task) = act.tasks.get_mut(&task_id) {
                            task.record = previous;
                        }
                        let _ = done.send(Err(error));
                    }
                }),
        );
        Some(async move {
            answer
                .await
                .unwrap_or_else(|_| Err(QueueError::Unavailable("queue actor stopped".into())))
        })
    }

    fn expire_leases(&mut self, ctx: &mut Context<Self>) {
        let at = now();
        while let Some(&(expires_at, task_id)) = self.leases.first() {
            if expires_at > at {
                break;
            }
            self.leases.pop_first();
            let current = self.tasks.get(&task_id).is_some_and(|t| {
                t.record.status == TaskStatus::Leased
                    && t.record.lease_expires_at == Some(expires_at)
            });
            if current {
                info!(task_id = %task_id, "lease expired; the attempt fails");
                if let Some(commit) = self.finish(task_id, TaskStatus::Expired, None, ctx) {
                    ctx.spawn(fut::wrap_future(async move {
                        if let Err(error) = commit.await {
                            warn!(%error, "expiry not committed; retried at the next sweep");
                        }
                    }));
                }
            }
        }
        if self.pruned_at.elapsed() >= FINISHED_TTL / 10 {
            self.pruned_at = Instant::now();
            self.finished
                .retain(|_, (at, _)| at.elapsed() < FINISHED_TTL);
        }
    }

    /// Withdraws a queued task whose queue no worker polled within `window`, and ends its
    /// attempt as unavailable; checks again later while workers are around but busy.
    fn check_unclaimed(
        &mut self,
        task_id: TaskId,
        token: u64,
        window: Duration,
        ctx: &mut Context<Self>,
    ) {
        let Some(task) = self.tasks.get(&task_id) else {
            return;
        };
        if task.record.status != TaskStatus::Queued
            || task.waiter.as_ref().map(|(t, _)| *t) != Some(token)
        {
            return;
        }
        let key = Self::key(&task.record);
        if self.worker_seen(&key, window) {
            ctx.run_later(window, move |act, ctx| {
                act.check_unclaimed(task_id, token, window, ctx)
            });
            return;
        }
        let queue = task.record.queue.clone();
        let waiter = self.tasks.get_mut(&task_id).and_then(|t| t.waiter.take());
        info!(task_id = %task_id, %queue, "no worker polled the queue; task withdrawn");
        let error = HandlerError::unavailable(format!(
            "no worker polled queue `{queue}` within {}s",
            window.as_secs_f64()
        ))
        .with_diagnostic(json!({ "queue": queue, "task_id": task_id }));
        if let Some(commit) = self.finish(task_id, TaskStatus::Withdrawn, None, ctx) {
            ctx.spawn(fut::wrap_future(async move {
                let committed = commit.await;
                if let Some((_, waiter)) = waiter {
                    let _ = waiter.send(match committed {
                        Ok(_) => Err(error),
                        Err(e) => Err(HandlerError::retryable("queue_unavailable", e.to_string())),
                    });
                }
            }));
        }
    }
}

/// Queued again, with no lease: a worker's report under the old lease is stale from now on.
fn back_on_queue(record: &mut TaskRecord) {
    record.status = TaskStatus::Queued;
    record.lease_id = None;
    record.worker_id = None;
    record.lease_expires_at = None;
    record.updated_at = now();
}

/// What a finished task means for its attempt; `None` while it is not finished.
fn outcome_of(record: &TaskRecord) -> Option<PhaseResult> {
    let result = record.result.as_ref();
    match record.status {
        TaskStatus::Completed => {
            let output = result
                .and_then(|r| r.get("output"))
                .cloned()
                .unwrap_or(Value::Null);
            let next_phase = match result.and_then(|r| r.get("next_phase")) {
                None => NextPhase::ByDefinition,
                Some(Value::String(name)) => NextPhase::Named(name.clone()),
                Some(_) => NextPhase::Finish,
            };
            Some(Ok(PhaseOutput { output, next_phase }))
        }
        TaskStatus::Failed => {
            let message = result
                .and_then(|r| r.get("error"))
                .and_then(Value::as_str)
                .unwrap_or("the worker reported a failure")
                .to_owned();
            let retryable = result
                .and_then(|r| r.get("retryable"))
                .and_then(Value::as_bool)
                .unwrap_or(true);
            let error = HandlerError {
                kind: "worker_failed".into(),
                message,
                class: if retryable {
                    ErrorClass::Retryable
                } else {
                    ErrorClass::Fatal
                },
                diagnostic: json!({ "task_id": record.id, "worker_id": record.worker_id }),
            };
            Some(Err(error))
        }
        TaskStatus::Expired => Some(Err(HandlerError::retryable(
            "lease_expired",
            format!(
                "worker {} stopped heartbeating task {}; its lease expired",
                record.worker_id.as_deref().unwrap_or("(unnamed)"),
                record.id
            ),
        )
        .with_diagnostic(json!({ "task_id": record.id, "worker_id": record.worker_id })))),
        TaskStatus::Queued | TaskStatus::Leased | TaskStatus::Withdrawn => None,
    }
}

impl Actor for QueueActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(1 << 16);
        ctx.run_interval(LEASE_SWEEP, |act, ctx| act.expire_leases(ctx));
    }
}

impl Handler<Submit> for QueueActor {
    type Result = ResponseActFuture<Self, Result<Attached, QueueError>>;

    fn handle(&mut self, submit: Submit, ctx: &mut Self::Context) -> Self::Result {
        let Submit {
            task,
            stored,
            unavailable_after,
        } = submit;
        let task_id = task.id;
        self.next_token += 1;
        let token = self.next_token;
        let (sender, outcome) = oneshot::channel();
        let attached = Attached {
            task_id,
            token,
            outcome,
        };
        if let Some((_, result)) = self.finished.get(&task_id) {
            let _ = sender.send(result.clone());
            return Box::pin(fut::ready(Ok(attached)));
        }
        if let Some(result) = outcome_of(&task) {
            let _ = sender.send(result);
            return Box::pin(fut::ready(Ok(attached)));
        }
        let live = self
            .tasks
            .entry(task_id)
            .or_insert_with(|| LiveTask::new(task));
        live.waiter = Some((token, sender));
        let mut write = !stored;
        match live.record.status {
            TaskStatus::Queued => {}
            TaskStatus::Leased => {
                if let Some(expires_at) = live.record.lease_expires_at {
                    self.leases.insert((expires_at, task_id));
                }
            }
            // Finishing: the pending commit hands the outcome to the waiter just attached.
            TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Expired => {}
            TaskStatus::Withdrawn => {
                // Withdrawn by an earlier life of this attempt: back on the queue.
                back_on_queue(&mut live.record);
                write = true;
            }
        }
        let queued = live.record.status == TaskStatus::Queued;
        let key = Self::key(&live.record);
        let record = live.record.clone();
        let commit = write.then(|| self.persist(&record));
        if queued {
            self.enqueue(task_id);
        }
        if let Some(window) = unavailable_after {
            ctx.run_later(window, move |act, ctx| {
                act.check_unclaimed(task_id, token, window, ctx)
            });
        }
        Box::pin(
            async move {
                match commit {
                    Some(commit) => commit.await,
                    None => Ok(()),
                }
            }
            .into_actor(self)
            .map(move |result, act, ctx| match result {
                Ok(()) => {
                    if let Some(task) = act.tasks.get_mut(&task_id) {
                        task.compact();
                    }
                    act.dispatch(&key, ctx);
                    Ok(attached)
                }
                Err(error) => {
                    if let Some(task) = act.tasks.remove(&task_id) {
                        act.unqueue(&task.record);
                    }
                    Err(error)
                }
            }),
        )
    }
}

impl Handler<GetQueueStats> for QueueActor {
    type Result = MessageResult<GetQueueStats>;

    fn handle(&mut self, _: GetQueueStats, _: &mut Self::Context) -> Self::Result {
        let count = |status| {
            self.tasks
                .values()
                .filter(|t| t.record.status == status)
                .count()
        };
        MessageResult(QueueStats {
            queued: count(TaskStatus::Queued),
            leased: count(TaskStatus::Leased),
            waiting_workers: self
                .pollers
                .values()
                .flatten()
                .filter(|p| !p.reply.is_closed())
                .count(),
        })
    }
}

impl Handler<Detach> for QueueActor {
    type Result = ();

    fn handle(&mut self, detach: Detach, ctx: &mut Self::Context) {
        let Some(task) = self.tasks.get_mut(&detach.task_id) else {
            return;
        };
        if task.waiter.as_ref().map(|(t, _)| *t) != Some(detach.token) {
            return;
        }
        task.waiter = None;
        if !detach.withdraw {
            return;
        }
        debug!(task_id = %detach.task_id, "attempt stopped waiting; task withdrawn");
        if let Some(commit) = self.finish(detach.task_id, TaskStatus::Withdrawn, None, ctx) {
            ctx.spawn(fut::wrap_future(async move {
                if let Err(error) = commit.await {
                    warn!(%error, "withdrawal not committed");
                }
            }));
        }
    }
}

impl Handler<Poll> for QueueActor {
    type Result = ResponseFuture<Result<Option<Lease>, QueueError>>;

    fn handle(&mut self, poll: Poll, ctx: &mut Self::Context) -> Self::Result {
        let key = (poll.tenant, poll.queue);
        self.last_poll.insert(key.clone(), Instant::now());
        let (reply, answer) = oneshot::channel();
        self.pollers
            .entry(key.clone())
            .or_default()
            .push_back(Poller {
                worker_id: poll.worker_id,
                lease: poll.lease,
                reply,
            });
        self.dispatch(&key, ctx);
        let wait = poll.wait;
        Box::pin(async move {
            match tokio::time::timeout(wait, answer).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err(QueueError::Unavailable("queue actor stopped".into())),
                Err(_) => Ok(None),
            }
        })
    }
}

impl Handler<ReportTask> for QueueActor {
    type Result = ResponseActFuture<Self, Result<TaskRecord, QueueError>>;

    fn handle(&mut self, report: ReportTask, _: &mut Self::Context) -> Self::Result {
        let task_id = report.task_id;
        let store = self.store.clone();
        let load = async move {
            match store.load_task(task_id).await {
                Ok(found) => Ok(found),
                Err(error) => Err(QueueError::Unavailable(error.to_string())),
            }
        };
        // Tasks not in memory (e.g. just after a restart, before their flow re-attached) are
        // read from the store, so a worker's result is never lost to timing.
        let known = self.tasks.contains_key(&task_id);
        Box::pin(
            async move { if known { Ok(None) } else { load.await } }
                .into_actor(self)
                .then(move |loaded, act, ctx| {
                    let answer = act.apply_report(report, loaded, ctx);
                    fut::wrap_future(answer)
                }),
        )
    }
}

impl QueueActor {
    fn apply_report(
        &mut self,
        report: ReportTask,
        loaded: Result<Option<TaskRecord>, QueueError>,
        ctx: &mut Context<Self>,
    ) -> futures_util::future::BoxFuture<'static, Result<TaskRecord, QueueError>> {
        use futures_util::FutureExt as _;
        let task_id = report.task_id;
        let ready = |result| async move { result }.boxed();
        if !self.tasks.contains_key(&task_id) {
            match loaded {
                Err(error) => return ready(Err(error)),
                Ok(None) => return ready(Err(QueueError::NotFound(task_id))),
                Ok(Some(record)) if record.status == TaskStatus::Leased => {
                    if let Some(expires_at) = record.lease_expires_at {
                        self.leases.insert((expires_at, task_id));
                    }
                    let mut task = LiveTask::new(record);
                    task.compact();
                    self.tasks.insert(task_id, task);
                }
                Ok(Some(record)) => {
                    if record.tenant() != report.tenant {
                        return ready(Err(QueueError::NotFound(task_id)));
                    }
                    return ready(Err(QueueError::StaleLease {
                        task_id,
                        status: record.status,
                        detail: "",
                    }));
                }
            }
        }
        let Some(task) = self.tasks.get_mut(&task_id) else {
            return ready(Err(QueueError::NotFound(task_id)));
        };
        let record = &task.record;
        if record.tenant() != report.tenant {
            return ready(Err(QueueError::NotFound(task_id)));
        }
        let stale = |detail| QueueError::StaleLease {
            task_id,
            status: record.status,
            detail,
        };
        if record.status != TaskStatus::Leased {
            return ready(Err(stale("")));
        }
        if record.lease_id != Some(report.lease_id) {
            return ready(Err(stale(" under another lease")));
        }
        if record.lease_expires_at.is_some_and(|at| at <= now()) {
            return ready(Err(stale(" and its lease expired")));
        }
        match report.report {
            Report::Heartbeat { extend } => {
                let expires_at = now() + chrono::Duration::from_std(extend).unwrap_or_default();
                task.record.lease_expires_at = Some(expires_at);
                task.record.updated_at = now();
                self.leases.insert((expires_at, task_id));
                let record = task.record.clone();
                let commit = self.persist(&record);
                async move {
                    commit.await?;
                    Ok(record)
                }
                .boxed()
            }
            Report::Complete { output, next_phase } => {
                let mut result = json!({ "output": output });
                match next_phase {
                    NextPhase::ByDefinition => {}
                    NextPhase::Finish => result["next_phase"] = Value::Null,
                    NextPhase::Named(name) => result["next_phase"] = Value::String(name),
                }
                match self.finish(task_id, TaskStatus::Completed, Some(result), ctx) {
                    Some(commit) => commit.boxed(),
                    None => ready(Err(QueueError::NotFound(task_id))),
                }
            }
            Report::Fail { error, retryable } => {
                let result = json!({ "error": error, "retryable": retryable });
                match self.finish(task_id, TaskStatus::Failed, Some(result), ctx) {
                    Some(commit) => commit.boxed(),
                    None => ready(Err(QueueError::NotFound(task_id))),
                }
            }
        }
    }
}
