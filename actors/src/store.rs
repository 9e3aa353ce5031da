//! The storage contract the runtime needs, and the writes it sends through the persistence actor.
//! The diesel stores (SQLite, PostgreSQL) live in the `flowd` package; [`crate::memory_store`] is
//! the in-memory one for actor tests.

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;

use crate::definition::FlowType;
use crate::events::FlowEvent;
use crate::ids::{FlowId, Tenant};
use crate::model::{FailureRecord, FlowState, FlowStatus, PhaseState};
use crate::task::{TaskId, TaskRecord};

/// Storage failures, split by what the caller can do about them.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or the connection broke: try again later.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A uniqueness rule was broken (e.g. an idempotency key raced): the write is refused.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The database refused the statement for the values it holds (out of range for a column,
    /// a character it cannot store): this write fails, retrying it as it is cannot succeed.
    #[error("value refused by the database: {0}")]
    Rejected(String),
    /// Stored data could not be read back (a bug or a manual edit): do not retry.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
}

/// The columns of a flow row that a transition changes.
#[derive(Clone, Debug, PartialEq)]
pub struct FlowUpdate {
    pub status: FlowStatus,
    pub current_phase: Option<String>,
    pub next_phase: Option<String>,
    pub progress_percentage: f64,
    pub last_seq: u64,
    pub updated_at: DateTime<Utc>,
    /// The epoch under which the writer owns the flow: the update (and with it the whole
    /// transition) commits only while the stored row still holds it (docs/cluster.md, 2.2).
    /// Not a changed column: it is the fence.
    pub owner_epoch: u64,
}

impl FlowUpdate {
    /// The changed columns of `flow` after a transition.
    pub fn of(flow: &FlowState) -> Self {
        Self {
            status: flow.status,
            current_phase: flow.current_phase.clone(),
            next_phase: flow.next_phase.clone(),
            progress_percentage: flow.progress_percentage,
            last_seq: flow.last_seq,
            updated_at: flow.updated_at,
            owner_epoch: flow.owner_epoch,
        }
    }
}

/// One transition of one flow. Its flow row, phase rows, events and failure row commit together.
#[derive(Clone, Debug)]
pub struct TransitionWrite {
    pub flow_id: FlowId,
    /// Set for the first write of a flow: insert the flow row and every phase row.
    pub create: Option<Box<FlowState>>,
    /// The flow row after the transition (for `create`, equal to its row).
    pub flow: FlowUpdate,
    /// Phase rows the transition changed, by position in the definition.
    pub phases: Vec<(usize, PhaseState)>,
    /// Events in `seq` order; their `id`s are assigned by the persistence actor before commit.
    pub events: Vec<FlowEvent>,
    pub failure: Option<FailureRecord>,
}

/// Everything the persistence actor writes. One batch of these commits in one transaction.
// Transitions are the hot variant; boxing them would cost an allocation per transition.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Write {
    Transition(TransitionWrite),
    /// Stores a flow type version; an existing (name, version) is left as it is.
    FlowType(FlowType),
    /// Inserts an external task, or updates its status, lease and result (by id).
    Task(Box<TaskRecord>),
}

/// What became of a committed batch, write by write: which transitions were fenced off, and
/// the ids of the events the store numbered itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommitReceipt {
    /// Positions in the batch of the transition writes whose flow this node no longer owns
    /// under the write's epoch (another node took it over): they committed nothing, not even
    /// their events; every other write of the batch committed. Ascending.
    pub fenced: Vec<usize>,
    /// Set by a store that numbers events inside the commit (PostgreSQL: ids unique and in
    /// commit order across the nodes of a cluster): the id of the first committed event. The
    /// committed events (those of writes not fenced, in batch order) have the ids from here
    /// on, without a gap. `None`: the ids the writer set are the stored ones.
    pub first_event_id: Option<i64>,
}

impl CommitReceipt {
    /// Whether the write at `position` of the batch was fenced off.
    pub fn is_fenced(&self, position: usize) -> bool {
        self.fenced.binary_search(&position).is_ok()
    }
}

/// The failure-journal row of a fenced transition: the node that wrote it had lost the flow.
/// Written by the store in the same transaction as the rest of the batch; the journal has no
/// fence, so it records that this node lost the flow while the new owner's history stays as
/// it was (docs/cluster.md, 2.2).
pub fn fenced_failure(
    flow_id: FlowId,
    master_flow_id: FlowId,
    phase: Option<String>,
    node: Option<&str>,
    epoch: u64,
) -> FailureRecord {
    FailureRecord {
        id: 0,
        flow_id,
        master_flow_id,
        phase,
        attempt: 0,
        error_kind: "fenced".into(),
        message: format!(
            "another node owns this flow now; a transition written under epoch {epoch} \
             committed nothing and its actor stopped"
        ),
        diagnostic: serde_json::json!({ "node": node, "epoch": epoch }),
        at: crate::model::now(),
    }
}

/// Filter and page of a flow listing; newest first.
#[derive(Clone, Debug, Default)]
pub struct FlowQuery {
    pub tenant: Option<Tenant>,
    pub status: Option<FlowStatus>,
    pub flow_type: Option<String>,
    pub parent_flow_id: Option<FlowId>,
    /// Only flows older than this one (keyset pagination on the time-ordered id).
    pub before: Option<FlowId>,
    pub limit: u32,
}

/// What the runtime and the read API need from a database. Writes come only from the
/// persistence actor; reads may come from anywhere and use their own connections.
pub trait FlowStore: Send + Sync + 'static {
    /// Commits every write of the batch in one transaction, or none of them. A transition
    /// fenced off by its flow's owner commits nothing while the rest commits: use
    /// [`FlowStore::commit_receipted`] to learn which (the persistence actor does).
    fn commit<'a>(&'a self, batch: &'a [Write]) -> BoxFuture<'a, Result<(), StoreError>>;

    /// [`FlowStore::commit`] (or [`FlowStore::commit_synced`] with `synced`), reporting what
    /// became of each write: the fenced ones, and the event ids the store assigned. The
    /// persistence actor commits through this. A store that neither fences nor numbers keeps
    /// the default.
    fn commit_receipted<'a>(
        &'a self,
        batch: &'a [Write],
        synced: bool,
    ) -> BoxFuture<'a, Result<CommitReceipt, StoreError>> {
        Box::pin(async move {
            if synced {
                self.commit_synced(batch).await?;
            } else {
                self.commit(batch).await?;
            }
            Ok(CommitReceipt::default())
        })
    }

    /// Every stored flow type version.
    fn load_flow_types(&self) -> BoxFuture<'_, Result<Vec<FlowType>, StoreError>>;

    /// Every flow that is not terminal and that this node owns, with its phases: what must be
    /// resumed at boot. A store shared by a cluster first takes over the active flows nobody
    /// owns (left by an older version); a single-node store owns every flow.
    fn load_active_flows(&self) -> BoxFuture<'_, Result<Vec<FlowState>, StoreError>>;

    /// Ids of non-terminal flows whose row was last written before `updated_before`, at most
    /// `limit`: the candidates of the stored-flow sweep. Cheap however many flows have ended.
    /// Only flows this node owns: another node's quiet flow is its owner's to resume.
    fn stale_active_flows(
        &self,
        updated_before: DateTime<Utc>,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<FlowId>, StoreError>>;

    /// One flow with its phases.
    fn load_flow(&self, id: FlowId) -> BoxFuture<'_, Result<Option<FlowState>, StoreError>>;

    /// The flow a tenant created with this idempotency key, if any.
    fn find_by_idempotency_key<'a>(
        &'a self,
        tenant: &'a Tenant,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<FlowState>, StoreError>>;

    /// Flows matching the query, newest first, with their phases.
    fn list_flows<'a>(
        &'a self,
        query: &'a FlowQuery,
    ) -> BoxFuture<'a, Result<Vec<FlowState>, StoreError>>;

    /// A flow's events with `seq > after`, in `seq` order.
    fn flow_events(
        &self,
        flow_id: FlowId,
        after: u64,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<FlowEvent>, StoreError>>;

    /// Events of every flow in the tree rooted at `master_flow_id` (the master included) with
    /// `id > after`, in `id` order: the master's stream shows its children's progress.
    fn tree_events(
        &self,
        master_flow_id: FlowId,
        after: i64,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<FlowEvent>, StoreError>>;

    /// One external task.
    fn load_task(&self, id: TaskId) -> BoxFuture<'_, Result<Option<TaskRecord>, StoreError>>;

    /// The task of one attempt of one phase, if it was ever queued.
    fn find_task<'a>(
        &'a self,
        flow_id: FlowId,
        phase: &'a str,
        attempt: u32,
    ) -> BoxFuture<'a, Result<Option<TaskRecord>, StoreError>>;

    /// A tenant's events with `id > after`, in `id` order.
    fn tenant_events<'a>(
        &'a self,
        tenant: &'a Tenant,
        after: i64,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<FlowEvent>, StoreError>>;

    /// Events of every tenant with `id > after`, in `id` order, at most `limit`: how a node of a
    /// cluster reads the events other nodes committed (see [`crate::events::tail`]). Stores
    /// that no other process writes need not answer it.
    fn events_after(
        &self,
        after: i64,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<FlowEvent>, StoreError>> {
        let _ = (after, limit);
        Box::pin(async {
            Err(StoreError::Unavailable(
                "this store does not read events across tenants".into(),
            ))
        })
    }

    /// A flow's failure-journal rows, oldest first.
    fn failures(&self, flow_id: FlowId) -> BoxFuture<'_, Result<Vec<FailureRecord>, StoreError>>;

    /// The highest event id stored (0 if none): where the persistence actor continues numbering.
    fn max_event_id(&self) -> BoxFuture<'_, Result<i64, StoreError>>;

    /// How many flows there are in each status, for metrics.
    fn count_by_status(&self) -> BoxFuture<'_, Result<Vec<(FlowStatus, u64)>, StoreError>>;

    /// How many flows of one tenant there are in each status, for the dashboard's counts.
    /// Stores that cannot say answer `Unavailable`.
    fn count_by_status_of<'a>(
        &'a self,
        tenant: &'a Tenant,
    ) -> BoxFuture<'a, Result<Vec<(FlowStatus, u64)>, StoreError>> {
        let _ = tenant;
        Box::pin(async {
            Err(StoreError::Unavailable(
                "this store does not count flows per tenant".into(),
            ))
        })
    }

    /// Whether this node may run `flow` as it was read: a store shared by a cluster answers
    /// whether the row names this node as its owner; a single-node store owns every flow.
    fn owns(&self, flow: &FlowState) -> bool {
        let _ = flow;
        true
    }

    /// Which of `ids` another node owns now (a takeover claimed them): after a long silence,
    /// the actors this node must stop. A single-node store owns every flow: none.
    fn not_owned<'a>(
        &'a self,
        ids: &'a [FlowId],
    ) -> BoxFuture<'a, Result<Vec<FlowId>, StoreError>> {
        let _ = ids;
        Box::pin(async { Ok(Vec::new()) })
    }

    /// A cheap round trip, for readiness.
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Whether a returned [`FlowStore::commit`] is visible but not yet durable until
    /// [`FlowStore::sync_commits`] returns. A store that says so lets the writer run its next
    /// batch while the last one's sync is in flight (a pipelined group commit); the writer
    /// acks nothing before the sync.
    fn commits_need_sync(&self) -> bool {
        false
    }

    /// [`FlowStore::commit`], durable when it returns even for a store whose commits need a
    /// sync: for a writer with nothing queued behind the batch, one trip instead of a commit
    /// and then a sync. A failed sync after the commit is fatal, as for
    /// [`FlowStore::sync_commits`].
    fn commit_synced<'a>(&'a self, batch: &'a [Write]) -> BoxFuture<'a, Result<(), StoreError>> {
        self.commit(batch)
    }

    /// Makes every commit that returned before this call durable. An error means they may not
    /// be: the process cannot tell which acked state survives and must not go on.
    fn sync_commits(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }

    /// The writer has gone idle: give back memory held only to speed up writes (e.g. an
    /// embedded database's page cache), so a drained backlog does not keep its peak memory.
    fn release_memory(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}
