//! Cluster mode: the task rows are shared by every node, so a lease, a heartbeat and a result
//! are each one conditional statement on the row ([`SharedTasks`]), whichever node a worker
//! talks to. The statements carry the lease machine's preconditions (`lease_machine::grant`,
//! `report`, `expire`, `withdraw`, `requeue`, `resubmit`) into SQL: a transition whose
//! precondition no longer holds in the database matches no row, so two nodes never both win a
//! race for one task. Lease expiry is judged by the database's clock, as node liveness is.
//!
//! The queue actor keeps its memory as a view of the tasks its own flows wait for (the fast
//! path for workers polling the owner), never as the truth: every transition goes through the
//! row, and a transition that loses a race reads the row back and takes it as it stands.
//! SQLite and the in-memory store are single-node: no [`SharedTasks`], the actor commits
//! through the persistence actor as before.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use uuid::Uuid;

use super::messages::Report;
use crate::ids::Tenant;
use crate::store::StoreError;
use crate::task::{TaskId, TaskRecord};

/// A lease to take: who asks, for how long, and the fresh id results must quote.
#[derive(Clone, Debug)]
pub struct LeaseRequest<'a> {
    pub worker_id: Option<&'a str>,
    pub length: Duration,
    pub lease_id: Uuid,
}

/// The task rows as every node of a cluster shares them. Each method is one statement (or one
/// short transaction) whose condition is the lease machine's precondition; `None` or `false`:
/// the row was not in the state the transition needs (another node got there first).
pub trait SharedTasks: Send + Sync {
    /// Leases the oldest queued task of `queue` whose flow another node owns (`FOR UPDATE SKIP
    /// LOCKED`: pollers on several nodes take different tasks). Tasks of this node's flows are
    /// handed out from the queue actor's memory, never here, so the two paths do not race.
    fn lease_next<'a>(
        &'a self,
        tenant: &'a Tenant,
        queue: &'a str,
        lease: LeaseRequest<'a>,
    ) -> BoxFuture<'a, Result<Option<TaskRecord>, StoreError>>;

    /// Leases one task, if it is still queued.
    fn lease<'a>(
        &'a self,
        task_id: TaskId,
        lease: LeaseRequest<'a>,
    ) -> BoxFuture<'a, Result<Option<TaskRecord>, StoreError>>;

    /// Applies a worker's report if `lease_id` is the task's live lease (leased, not expired by
    /// the database's clock, `tenant`'s). A result of a task whose flow another node owns
    /// notifies that node, at commit.
    fn report<'a>(
        &'a self,
        tenant: &'a Tenant,
        task_id: TaskId,
        lease_id: Uuid,
        report: &'a Report,
    ) -> BoxFuture<'a, Result<Option<TaskRecord>, StoreError>>;

    /// Puts a lease its worker never received back on the queue.
    fn requeue(&self, task_id: TaskId, lease_id: Uuid) -> BoxFuture<'_, Result<bool, StoreError>>;

    /// Withdraws a task not yet finished (only a queued one with `only_queued`); the row after.
    fn withdraw(
        &self,
        task_id: TaskId,
        only_queued: bool,
    ) -> BoxFuture<'_, Result<Option<TaskRecord>, StoreError>>;

    /// Queues a withdrawn task again for the attempt that re-submits it.
    fn resubmit(&self, task_id: TaskId) -> BoxFuture<'_, Result<Option<TaskRecord>, StoreError>>;

    /// Expires the leases that ran out of tasks whose flows this node owns; the expired rows.
    fn expire_due(&self) -> BoxFuture<'_, Result<Vec<TaskRecord>, StoreError>>;

    /// Records that a worker polled (or waits on) `queue` on this node now.
    fn polled<'a>(
        &'a self,
        tenant: &'a Tenant,
        queue: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Whether a worker polled `queue` on any node within `window`.
    fn polled_within<'a>(
        &'a self,
        tenant: &'a Tenant,
        queue: &'a str,
        window: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// The rows among `ids` that are no longer queued or leased: finished elsewhere.
    fn settled<'a>(
        &'a self,
        ids: &'a [TaskId],
    ) -> BoxFuture<'a, Result<Vec<TaskRecord>, StoreError>>;
}

/// [`SharedTasks`] as the runtime's configuration carries it.
#[derive(Clone)]
pub struct SharedTaskRows(pub Arc<dyn SharedTasks>);

impl std::fmt::Debug for SharedTaskRows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedTaskRows")
    }
}
