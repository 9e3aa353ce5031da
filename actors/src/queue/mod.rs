//! The queue actor: hands the tasks of `external` phases to remote workers. Workers long-poll a
//! named queue and get the oldest task with a lease; they heartbeat to keep it and quote it to
//! complete or fail the task. An expired lease ends the attempt as a failure (the phase's retry
//! policy queues a new task); a result under a stale lease is refused.
//!
//! Every change of a task is committed before anyone is told about it (through the persistence
//! actor; in cluster mode as one conditional statement on the shared row, see [`shared`]), so a
//! restart loses no task and no result. After a restart the flows re-run their interrupted
//! attempts, which re-attach to their stored tasks; leases survive with them.
//!
//! The rules (which transitions a task may take, what a finished task means for its attempt)
//! are the pure [`lease_machine`]; this actor only carries them out. One file per job:
//! `attempts` (phase attempts submit and detach their tasks; a task's end becomes the attempt's
//! result), `leases` (polling workers get leases; expired leases and unclaimed tasks), `reports`
//! (workers' heartbeats and results), `cluster` (the same jobs when the task rows are shared
//! by the nodes of a cluster, see [`shared`]).

mod attempts;
mod cluster;
pub mod lease_machine;
mod leases;
pub mod messages;
mod reports;
pub mod shared;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::sync::oneshot;
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::handler::{HandlerError, PhaseResult};
use crate::ids::Tenant;
use crate::model::now;
use crate::persistence::{Persist, PersistenceActor};
use crate::store::{FlowStore, Write};
use crate::task::{TaskId, TaskRecord, TaskStatus};
pub use messages::{
    Attached, Detach, GetQueueDetails, GetQueueStats, Lease, Poll, QueueDetail, QueueError,
    QueueStats, Report, ReportTask, Submit, TasksNotified,
};
pub use shared::{LeaseRequest, SharedTaskRows, SharedTasks};

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
    /// Tells a poller apart while a lease of another node's task is taken for it.
    id: u64,
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
    /// Cluster mode: the task rows every node shares; transitions are conditional statements
    /// on them instead of commits through the persistence actor.
    shared: Option<Arc<dyn SharedTasks>>,
    /// Queues whose waiting workers are being offered another node's task right now.
    fetching: HashSet<QueueKey>,
    /// Cluster mode: a sweep of the shared rows (expiry, results taken elsewhere) is running.
    sweeping: bool,
    /// Cluster mode: when the backstop last read the rows of the tasks waited for here.
    settled_at: Instant,
    /// Cluster mode: when waiting workers were last offered other nodes' tasks.
    fetched_at: Instant,
    /// Cluster mode: when this node last recorded a poll of each queue (`SharedTasks::polled`).
    polls_told: HashMap<QueueKey, Instant>,
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
            shared: None,
            fetching: HashSet::new(),
            sweeping: false,
            settled_at: Instant::now(),
            fetched_at: Instant::now(),
            polls_told: HashMap::new(),
        }
    }

    /// The same queue in cluster mode: leases, reports and expiries are conditional statements
    /// on the shared task rows, so a worker may talk to any node (docs/cluster.md, 2.6).
    pub fn with_shared(mut self, shared: Option<Arc<dyn SharedTasks>>) -> Self {
        self.shared = shared;
        self
    }

    /// Commits the task's current row; nobody hears of a change before this succeeds.
    pub(super) fn persist(
        &self,
        record: &TaskRecord,
    ) -> impl Future<Output = Result<(), QueueError>> + use<> {
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

    pub(super) fn key(record: &TaskRecord) -> QueueKey {
        (record.tenant(), record.queue.clone())
    }

    pub(super) fn enqueue(&mut self, id: TaskId) {
        if let Some(task) = self.tasks.get(&id) {
            let key = Self::key(&task.record);
            self.ready.entry(key.clone()).or_default().insert(id);
        }
    }

    pub(super) fn unqueue(&mut self, record: &TaskRecord) {
        let key = Self::key(record);
        if let Some(ready) = self.ready.get_mut(&key) {
            ready.remove(&record.id);
            if ready.is_empty() {
                self.ready.remove(&key);
            }
        }
    }
}

impl Actor for QueueActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(1 << 16);
        ctx.run_interval(LEASE_SWEEP, |act, ctx| act.expire_leases(ctx));
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

impl Handler<GetQueueDetails> for QueueActor {
    type Result = MessageResult<GetQueueDetails>;

    fn handle(
        &mut self,
        GetQueueDetails(tenant): GetQueueDetails,
        _: &mut Self::Context,
    ) -> Self::Result {
        let mut queues: BTreeMap<String, QueueDetail> = BTreeMap::new();
        let empty = |queue: &str| QueueDetail {
            queue: queue.to_owned(),
            queued: 0,
            leased: 0,
            oldest_queued_at: None,
            next_lease_expiry: None,
            waiting_workers: 0,
            leasing_workers: Vec::new(),
            last_poll_s_ago: None,
        };
        for task in self.tasks.values().map(|t| &t.record) {
            if task.client_account_id != tenant.client_account_id
                || task.engagement_id != tenant.engagement_id
            {
                continue;
            }
            let detail = queues
                .entry(task.queue.clone())
                .or_insert_with(|| empty(&task.queue));
            match task.status {
                TaskStatus::Queued => {
                    detail.queued += 1;
                    if detail
                        .oldest_queued_at
                        .is_none_or(|at| task.created_at < at)
                    {
                        detail.oldest_queued_at = Some(task.created_at);
                    }
                }
                TaskStatus::Leased => {
                    detail.leased += 1;
                    if let Some(expiry) = task.lease_expires_at
                        && detail.next_lease_expiry.is_none_or(|at| expiry < at)
                    {
                        detail.next_lease_expiry = Some(expiry);
                    }
                    if let Some(worker) = &task.worker_id
                        && !detail.leasing_workers.contains(worker)
                    {
                        detail.leasing_workers.push(worker.clone());
                    }
                }
                _ => {}
            }
        }
        for ((owner, queue), pollers) in &self.pollers {
            if *owner == tenant {
                queues
                    .entry(queue.clone())
                    .or_insert_with(|| empty(queue))
                    .waiting_workers = pollers.iter().filter(|p| !p.reply.is_closed()).count();
            }
        }
        for ((owner, queue), at) in &self.last_poll {
            if *owner == tenant {
                queues
                    .entry(queue.clone())
                    .or_insert_with(|| empty(queue))
                    .last_poll_s_ago = Some(at.elapsed().as_secs_f64());
            }
        }
        MessageResult(queues.into_values().collect())
    }
}
