//! The runtime handle: what HTTP handlers, the CLI and embedding programs hold. It starts the
//! actors and turns requests into messages, mailbox failures into [`RuntimeError`]s.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::broadcast;

use crate::child_flows::{ChildFlowsHandler, FlowStarter};
use crate::definition::FlowType;
use crate::error::RuntimeError;
use crate::events::tail::EventTail;
use crate::events::{CommittedEvent, EventFanout, FlowEvent, KeyedReceiver};
use crate::external::{ExternalHandler, TaskQueue};
#[cfg(feature = "faults")]
use crate::faults::FaultPlan;
use crate::flow::ControlCommand;
use crate::handler::HandlerSet;
use crate::handler_pool::HandlerPool;
use crate::health::{GetHealthStats, HealthActor, HealthStats};
use crate::ids::{FlowId, Tenant};
use crate::limits::Limits;
use crate::metrics::{Gauges, RuntimeMetrics};
use crate::model::{FailureRecord, FlowState, FlowStatus, NewFlow, PhaseStatus};
use crate::persistence::{GetStats, PersistenceActor, PersistenceStats};
use crate::queue::{
    GetQueueDetails, GetQueueStats, Lease, Poll, QueueActor, QueueDetail, QueueError, QueueStats,
    Report, ReportTask, SharedTaskRows, TasksNotified,
};
use crate::registry::{GetFlowType, ListFlowTypes, RegisterFlowType, Registry};
use crate::status_reason::{ReasonFacts, StatusReason, status_reason};
use crate::store::{FlowQuery, FlowStore};
use crate::supervisor::{
    ControlFlow, CreateFlow, CreatedFlow, LiveFlows, RecoverFlows, RestartIntensity, Supervisor,
    SupervisorParts,
};
use crate::task::{TaskId, TaskRecord};

/// Tuning of the runtime; the application fills it from its configuration.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Deadline of a phase attempt whose phase names no `timeout_s`.
    pub default_phase_timeout: Duration,
    /// Arbiters (threads) that flow actors are spread over; one per core by default.
    pub flow_arbiters: usize,
    /// Threads that run phase handlers, apart from the arbiters; one per core by default.
    pub handler_threads: usize,
    /// Most writes in one transaction.
    pub max_batch: usize,
    /// Events a subscriber may fall behind before it must catch up from the database.
    pub event_buffer: usize,
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    /// How often the database is swept for non-terminal flows with no live actor.
    pub stored_sweep_interval: Duration,
    pub restart_intensity: RestartIntensity,
    /// Bounds on definitions and on what one flow may do.
    pub limits: Limits,
    /// Most distinct label sets per metric family (flow type × phase, failure kind).
    pub max_metric_series: usize,
    /// Set when other processes commit events into the same database (cluster mode on
    /// PostgreSQL): streams then carry their events too, read by the [`EventTail`], with a
    /// backstop read this often. `None` (one node): the fan-out publishes own events only.
    pub cluster_events: Option<Duration>,
    /// Set in cluster mode on PostgreSQL: the task rows every node shares, so that external
    /// workers may lease and report on any node. `None`: the queue is this process's alone.
    pub shared_tasks: Option<SharedTaskRows>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            default_phase_timeout: Duration::from_secs(300),
            flow_arbiters: std::thread::available_parallelism().map_or(2, usize::from),
            handler_threads: std::thread::available_parallelism().map_or(2, usize::from),
            max_batch: 4096,
            event_buffer: 16_384,
            ping_interval: Duration::from_secs(1),
            ping_timeout: Duration::from_secs(5),
            stored_sweep_interval: Duration::from_secs(30),
            restart_intensity: RestartIntensity {
                max_restarts: 3,
                window: Duration::from_secs(60),
            },
            limits: Limits::default(),
            max_metric_series: 200,
            cluster_events: None,
            shared_tasks: None,
        }
    }
}

/// Registers `flow_types` so that a child type comes before the types that fan out to it,
/// whatever order the configuration lists them in (the registry refuses unknown child types).
async fn register_in_order(
    registry: &Addr<Registry>,
    flow_types: Vec<FlowType>,
) -> Result<(), RuntimeError> {
    for definition in children_first(flow_types) {
        registry.send(RegisterFlowType(definition)).await??;
    }
    Ok(())
}

/// `types` ordered depth-first so that every type follows the types it starts as children.
/// A cycle is left in some order: the registry refuses it.
fn children_first(types: Vec<FlowType>) -> Vec<FlowType> {
    let mut by_name: HashMap<&str, Vec<usize>> = HashMap::new();
    for (index, definition) in types.iter().enumerate() {
        by_name.entry(&definition.name).or_default().push(index);
    }
    fn visit(
        index: usize,
        types: &[FlowType],
        by_name: &HashMap<&str, Vec<usize>>,
        seen: &mut [bool],
        order: &mut Vec<usize>,
    ) {
        if seen[index] {
            return;
        }
        seen[index] = true;
        for child in types[index].child_types() {
            for &next in by_name.get(child).map_or(&[][..], Vec::as_slice) {
                visit(next, types, by_name, seen, order);
            }
        }
        order.push(index);
    }
    let mut seen = vec![false; types.len()];
    let mut order = Vec::with_capacity(types.len());
    for index in 0..types.len() {
        visit(index, &types, &by_name, &mut seen, &mut order);
    }
    let mut slots: Vec<Option<FlowType>> = types.into_iter().map(Some).collect();
    order
        .into_iter()
        .filter_map(|index| slots[index].take())
        .collect()
}

/// A cheap-to-clone handle on a running runtime.
#[derive(Clone)]
pub struct Runtime {
    supervisor: Addr<Supervisor>,
    registry: Addr<Registry>,
    persistence: Addr<PersistenceActor>,
    health: Addr<HealthActor>,
    queue: Addr<QueueActor>,
    store: Arc<dyn FlowStore>,
    fanout: EventFanout,
    /// Cluster mode only: reads other nodes' events into the fan-out.
    tail: Option<EventTail>,
    /// Cluster mode only: controls routed to and from other nodes ([`Runtime::route_controls`]).
    remote: Arc<std::sync::OnceLock<crate::controls::RemoteControls>>,
    metrics: Arc<RuntimeMetrics>,
    #[cfg(feature = "faults")]
    faults: Arc<FaultPlan>,
    limits: Limits,
}

impl Runtime {
    /// Starts every actor, registers `flow_types` (config or code), and resumes every stored
    /// non-terminal flow before returning. Must be called inside an actix `System`.
    pub async fn start(
        config: RuntimeConfig,
        store: Arc<dyn FlowStore>,
        handlers: HandlerSet,
        flow_types: Vec<FlowType>,
    ) -> Result<Self, RuntimeError> {
        let metrics = Arc::new(RuntimeMetrics::with_max_series(config.max_metric_series));
        #[cfg(feature = "faults")]
        let faults = Arc::new(FaultPlan::default());
        let last_event_id = store.max_event_id().await?;
        let (fanout, tail) = match config.cluster_events {
            Some(backstop) => {
                let fanout = EventFanout::for_cluster(config.event_buffer, last_event_id);
                let tail = EventTail::start(fanout.clone(), store.clone(), backstop);
                (fanout, Some(tail))
            }
            None => (
                EventFanout::starting_after(config.event_buffer, last_event_id),
                None,
            ),
        };
        let persistence = {
            let store = store.clone();
            let fanout = fanout.clone();
            let max_batch = config.max_batch;
            let metrics = metrics.clone();
            PersistenceActor::start_in_arbiter(&Arbiter::new().handle(), move |_| {
                PersistenceActor::new(store, fanout, last_event_id, max_batch, metrics)
            })
        };
        let queue = QueueActor::new(store.clone(), persistence.clone())
            .with_shared(config.shared_tasks.clone().map(|rows| rows.0))
            .start();
        let stored = store.load_flow_types().await?;
        let arbiters = (0..config.flow_arbiters.max(1))
            .map(|_| Arbiter::new().handle())
            .collect();
        let handler_pool = HandlerPool::new(config.handler_threads)
            .map_err(|e| RuntimeError::Unavailable(format!("handler threads: {e}")))?;
        // The `child_flows` kind creates flows through the supervisor it runs under, so the
        // supervisor's address exists before the supervisor starts: the handler set is
        // completed with it, and the registry validates definitions against that set.
        let supervisor_context = Context::<Supervisor>::new();
        let address = supervisor_context.address();
        let mut handlers = handlers;
        handlers.register(
            "child_flows",
            ChildFlowsHandler::new(
                FlowStarter {
                    create: address.clone().recipient(),
                    control: address.recipient(),
                },
                store.clone(),
                fanout.clone(),
                config.limits.max_children,
            ),
        );
        handlers.register(
            "external",
            ExternalHandler::new(
                TaskQueue {
                    submit: queue.clone().recipient(),
                    detach: queue.clone().recipient(),
                },
                store.clone(),
            ),
        );
        let handlers = Arc::new(handlers);
        let registry = Registry::new(
            stored,
            handlers.clone(),
            persistence.clone(),
            config.limits.clone(),
        )
        .start();
        let supervisor = supervisor_context.run(Supervisor::new(SupervisorParts {
            arbiters,
            handlers: handlers.clone(),
            persistence: persistence.clone(),
            registry: registry.clone(),
            store: store.clone(),
            default_timeout: config.default_phase_timeout,
            max_transitions: config.limits.max_transitions_per_flow,
            intensity: config.restart_intensity,
            handler_pool: handler_pool.clone(),
            metrics: metrics.clone(),
            #[cfg(feature = "faults")]
            faults: faults.clone(),
        }));
        register_in_order(&registry, flow_types).await?;
        supervisor.send(RecoverFlows::all()).await??;
        let health = HealthActor::new(
            supervisor.clone(),
            config.ping_interval,
            config.ping_timeout,
            config.stored_sweep_interval,
            metrics.clone(),
        )
        .start();
        Ok(Self {
            supervisor,
            registry,
            persistence,
            health,
            queue,
            store,
            fanout,
            tail,
            remote: Arc::default(),
            metrics,
            #[cfg(feature = "faults")]
            faults,
            limits: config.limits.clone(),
        })
    }

    /// Joins this runtime to the takeover of `cluster`: flows claimed from dead nodes are
    /// resumed by the supervisor as at boot, and a node back from a long silence stops the
    /// actors of flows taken over meanwhile.
    pub fn attach_to(&self, cluster: &crate::cluster::Cluster) {
        cluster.attach(
            self.supervisor.clone().recipient(),
            self.supervisor.clone().recipient(),
        );
    }

    /// Routes controls of flows other nodes own through `store` (cluster mode on PostgreSQL,
    /// docs/cluster.md 2.6), and applies here the controls other nodes send for flows this
    /// node owns. The handle is for the listener that wakes it. Without this call every
    /// control is applied on this node, as on a single node.
    pub fn route_controls(
        &self,
        store: Arc<dyn crate::controls::ControlStore>,
        settings: crate::controls::ControlSettings,
    ) -> crate::controls::RemoteControls {
        let remote = crate::controls::RemoteControls::start(
            store,
            settings,
            self.supervisor.clone().recipient(),
        );
        self.supervisor
            .do_send(crate::supervisor::UseRemoteControls(remote.clone()));
        let _ = self.remote.set(remote.clone());
        remote
    }

    /// Counts of the controls routed to and from other nodes; `None` without a cluster.
    pub fn control_stats(&self) -> Option<crate::controls::ControlStats> {
        self.remote
            .get()
            .map(crate::controls::RemoteControls::stats)
    }

    /// Creates a flow; it is `running` when this returns.
    pub async fn create_flow(&self, request: NewFlow) -> Result<CreatedFlow, RuntimeError> {
        self.supervisor.send(CreateFlow(request)).await?
    }

    /// Pause, resume, cancel or retry a flow of `tenant`.
    pub async fn control(
        &self,
        tenant: Tenant,
        flow_id: FlowId,
        command: ControlCommand,
    ) -> Result<FlowState, RuntimeError> {
        self.supervisor
            .send(ControlFlow {
                flow_id,
                tenant,
                command,
            })
            .await?
    }

    /// A flow of `tenant`, as stored.
    pub async fn flow(&self, tenant: &Tenant, flow_id: FlowId) -> Result<FlowState, RuntimeError> {
        self.store
            .load_flow(flow_id)
            .await?
            .filter(|flow| flow.tenant() == *tenant)
            .ok_or(RuntimeError::FlowNotFound(flow_id))
    }

    /// Flows of `tenant` matching `query`, newest first. Like [`Self::flow`], a caller sees
    /// only its own tenant's flows, whatever `query.tenant` says.
    pub async fn list_flows(
        &self,
        tenant: &Tenant,
        query: FlowQuery,
    ) -> Result<Vec<FlowState>, RuntimeError> {
        let query = FlowQuery {
            tenant: Some(tenant.clone()),
            ..query
        };
        Ok(self.store.list_flows(&query).await?)
    }

    /// A flow's stored events after `after`.
    pub async fn events(
        &self,
        tenant: &Tenant,
        flow_id: FlowId,
        after: u64,
        limit: u32,
    ) -> Result<Vec<FlowEvent>, RuntimeError> {
        self.flow(tenant, flow_id).await?;
        Ok(self.store.flow_events(flow_id, after, limit).await?)
    }

    /// A flow's failure journal.
    pub async fn failures(
        &self,
        tenant: &Tenant,
        flow_id: FlowId,
    ) -> Result<Vec<FailureRecord>, RuntimeError> {
        self.flow(tenant, flow_id).await?;
        Ok(self.store.failures(flow_id).await?)
    }

    /// Adds a flow type version (validated against this runtime's handlers).
    pub async fn register_flow_type(
        &self,
        definition: FlowType,
    ) -> Result<Arc<FlowType>, RuntimeError> {
        self.registry.send(RegisterFlowType(definition)).await?
    }

    /// A flow type: the given version, or the latest.
    pub async fn flow_type(
        &self,
        name: &str,
        version: Option<u32>,
    ) -> Result<Option<Arc<FlowType>>, RuntimeError> {
        Ok(self
            .registry
            .send(GetFlowType {
                name: name.to_owned(),
                version,
            })
            .await?)
    }

    /// The phase names of the flow type version that `task_id`'s flow runs, so a worker's
    /// `next_phase` is checked when it reports instead of failing the flow later; `None` when
    /// `tenant` has no such task.
    pub async fn task_phases(
        &self,
        tenant: &Tenant,
        task_id: TaskId,
    ) -> Result<Option<Vec<String>>, RuntimeError> {
        let Some(task) = self.store.load_task(task_id).await? else {
            return Ok(None);
        };
        if task.tenant() != *tenant {
            return Ok(None);
        }
        let flow = self.flow(tenant, task.flow_id).await?;
        let definition = self
            .flow_type(&flow.flow_type, Some(flow.flow_type_version))
            .await?;
        Ok(definition.map(|d| d.phases.iter().map(|p| p.name.clone()).collect()))
    }

    /// The latest version of every flow type.
    pub async fn flow_types(&self) -> Result<Vec<Arc<FlowType>>, RuntimeError> {
        Ok(self.registry.send(ListFlowTypes).await?)
    }

    /// Waits up to `wait` for a task on `queue` of `tenant` and leases it for `lease`.
    pub async fn poll_task(
        &self,
        tenant: Tenant,
        queue: String,
        worker_id: Option<String>,
        wait: Duration,
        lease: Duration,
    ) -> Result<Option<Lease>, QueueError> {
        self.queue
            .send(Poll {
                tenant,
                queue,
                worker_id,
                wait,
                lease,
            })
            .await
            .map_err(|e| QueueError::Unavailable(e.to_string()))?
    }

    /// A worker's heartbeat, completion or failure of the task it leased.
    pub async fn report_task(
        &self,
        tenant: Tenant,
        task_id: TaskId,
        lease_id: uuid::Uuid,
        report: Report,
    ) -> Result<TaskRecord, QueueError> {
        self.queue
            .send(ReportTask {
                tenant,
                task_id,
                lease_id,
                report,
            })
            .await
            .map_err(|e| QueueError::Unavailable(e.to_string()))?
    }

    /// Where a listener hands notifications that another node changed a task row (cluster
    /// mode): the queue reads the row back if an attempt here waits on it.
    pub fn task_notifications(&self) -> Recipient<TasksNotified> {
        self.queue.clone().recipient()
    }

    /// How many external tasks are queued and leased now.
    pub async fn queue_stats(&self) -> Result<QueueStats, RuntimeError> {
        Ok(self.queue.send(GetQueueStats).await?)
    }

    /// One tenant's queues: depth, oldest task, leases, pollers.
    pub async fn queue_details(&self, tenant: Tenant) -> Result<Vec<QueueDetail>, RuntimeError> {
        Ok(self.queue.send(GetQueueDetails(tenant)).await?)
    }

    /// The id of the last committed event: a stream cursor (`after`) that skips the history.
    pub async fn last_event_id(&self) -> Result<i64, RuntimeError> {
        Ok(self.store.max_event_id().await?)
    }

    /// How many flows of `tenant` are in each status.
    pub async fn count_by_status(
        &self,
        tenant: &Tenant,
    ) -> Result<Vec<(FlowStatus, u64)>, RuntimeError> {
        Ok(self.store.count_by_status_of(tenant).await?)
    }

    /// Why `flow` is not progressing (`None` once it is terminal). Reads at most one indexed
    /// row for a running external attempt (its task), a failed phase (its journal) or, with
    /// `count_children`, the flow's last event when memory no longer holds it; with
    /// `count_children` a fan-out phase also lists the flow's children (one flow's read, not a
    /// listing's: without it such a phase reads as `running`).
    pub async fn status_reason(
        &self,
        flow: &FlowState,
        count_children: bool,
    ) -> Result<Option<StatusReason>, RuntimeError> {
        if flow.status.is_terminal() {
            return Ok(None);
        }
        // A restart after a missed ping is the reason until the flow's next transition: its
        // event is the flow's last one (from memory; one flow's read also asks the store).
        let last = match self.fanout.any_recent_event(flow.id) {
            Some(event) => event
                .status_reason
                .clone()
                .filter(|_| event.seq == flow.last_seq),
            None if count_children && flow.last_seq > 0 => self
                .store
                .flow_events(flow.id, flow.last_seq - 1, 1)
                .await?
                .pop()
                .and_then(|event| event.status_reason),
            None => None,
        };
        if let Some(reason) =
            last.filter(|r| matches!(***r, StatusReason::RestartedByHealth { .. }))
        {
            return Ok(Some((**reason).clone()));
        }
        let definition = self
            .flow_type(&flow.flow_type, Some(flow.flow_type_version))
            .await?;
        let mut facts = ReasonFacts {
            definition: definition.as_deref(),
            ..ReasonFacts::default()
        };
        let (mut task, mut failure, mut children) = (None, None, None);
        if let Some((_, phase)) = flow.current() {
            let handler = definition
                .as_deref()
                .and_then(|d| d.phase(&phase.name))
                .map(|d| d.handler.as_str());
            match phase.status {
                PhaseStatus::Running if handler == Some("child_flows") && count_children => {
                    let listed = self
                        .store
                        .list_flows(&FlowQuery {
                            tenant: Some(flow.tenant()),
                            parent_flow_id: Some(flow.id),
                            limit: self.limits.max_children.try_into().unwrap_or(u32::MAX),
                            ..FlowQuery::default()
                        })
                        .await?;
                    let done = listed.iter().filter(|c| c.status.is_terminal()).count();
                    children = Some((done as u64, listed.len() as u64));
                }
                PhaseStatus::Running if handler == Some("external") => {
                    task = self
                        .store
                        .find_task(flow.id, &phase.name, phase.attempt)
                        .await?;
                }
                PhaseStatus::Failed => {
                    failure = self
                        .store
                        .failures(flow.id)
                        .await?
                        .into_iter()
                        .rev()
                        .find(|f| f.phase.as_deref() == Some(phase.name.as_str()))
                        .map(|f| f.error_kind);
                }
                _ => {}
            }
        }
        facts.task = task.as_ref();
        facts.last_failure_kind = failure.as_deref();
        facts.children = children;
        Ok(status_reason(flow, &facts))
    }

    /// Every event committed from now on (filter by tenant yourself).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<CommittedEvent>> {
        self.fanout.subscribe()
    }

    /// The master flow of `flow_id` if it belongs to `tenant`: what a stream of the flow
    /// follows. Answered from recent events in memory when they hold the flow.
    pub async fn stream_master(
        &self,
        tenant: &Tenant,
        flow_id: FlowId,
    ) -> Result<FlowId, RuntimeError> {
        if let Some(event) = self.fanout.any_recent_event(flow_id) {
            return if event.client_account_id == tenant.client_account_id
                && event.engagement_id == tenant.engagement_id
            {
                Ok(event.master_flow_id)
            } else {
                Err(RuntimeError::FlowNotFound(flow_id))
            };
        }
        Ok(self.flow(tenant, flow_id).await?.master_flow_id)
    }

    /// The id of a flow's event `seq` (0 for 0); for a `seq` past its history, the highest
    /// event id stored, so that a stream from there carries only what is committed later.
    pub async fn event_id_of(&self, flow_id: FlowId, seq: u64) -> Result<i64, RuntimeError> {
        if seq == 0 {
            return Ok(0);
        }
        if let Some(events) = self.fanout.recent_flow_events(flow_id, seq - 1)
            && let Some(event) = events.first()
            && event.seq == seq
        {
            return Ok(event.id);
        }
        match self.store.flow_events(flow_id, seq - 1, 1).await?.first() {
            Some(event) => Ok(event.id),
            None => Ok(self.store.max_event_id().await?),
        }
    }

    /// Up to `limit` of a flow's committed events with `seq > after_seq`, in order: from
    /// memory when it holds them all, else from the database.
    pub async fn flow_events_after(
        &self,
        flow_id: FlowId,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<Arc<CommittedEvent>>, RuntimeError> {
        if let Some(mut events) = self.fanout.recent_flow_events(flow_id, after_seq) {
            events.truncate(limit as usize);
            return Ok(events);
        }
        let stored = self.store.flow_events(flow_id, after_seq, limit).await?;
        Ok(self.published(stored))
    }

    /// Up to `limit` events of the tree under `master_flow_id` (itself included) with
    /// `id > after_id`, in order: from memory when it holds them all, else from the database.
    pub async fn tree_events_after(
        &self,
        master_flow_id: FlowId,
        after_id: i64,
        limit: u32,
    ) -> Result<Vec<Arc<CommittedEvent>>, RuntimeError> {
        if let Some(mut events) = self.fanout.recent_tree_events(master_flow_id, after_id) {
            events.truncate(limit as usize);
            return Ok(events);
        }
        let stored = self
            .store
            .tree_events(master_flow_id, after_id, limit)
            .await?;
        Ok(self.published(stored))
    }

    /// Up to `limit` of `tenant`'s events with `id > after_id`, in order: from memory when
    /// it holds them all, else from the database.
    pub async fn tenant_events_after(
        &self,
        tenant: &Tenant,
        after_id: i64,
        limit: u32,
    ) -> Result<Vec<Arc<CommittedEvent>>, RuntimeError> {
        if let Some(events) = self
            .fanout
            .recent_tenant_events(tenant, after_id, limit as usize)
        {
            return Ok(events);
        }
        let stored = self.store.tenant_events(tenant, after_id, limit).await?;
        Ok(self.published(stored))
    }

    /// Stored events in the fan-out's form, so a stream sends both kinds alike, up to the
    /// last published one: an event the writer has committed but not yet acked (its sync may
    /// be in flight) reaches streams when it is published, never before.
    fn published(&self, events: Vec<FlowEvent>) -> Vec<Arc<CommittedEvent>> {
        let through = self.fanout.published_through();
        events
            .into_iter()
            .take_while(|event| event.id <= through)
            .map(|event| Arc::new(CommittedEvent::new(event)))
            .collect()
    }

    /// `flow_id`'s events committed from now on, and those after `after_seq` if memory still
    /// holds them all (else read them with [`Runtime::flow_events_after`]). Only this flow's
    /// commits wake the receiver.
    pub fn subscribe_flow(
        &self,
        flow_id: FlowId,
        after_seq: u64,
    ) -> (KeyedReceiver, Option<Vec<Arc<CommittedEvent>>>) {
        self.fanout.subscribe_flow(flow_id, after_seq)
    }

    /// The events of the tree under `master_flow_id` committed from now on, and those after
    /// `after_id` if memory still holds them all. Only this tree's commits wake the receiver.
    pub fn subscribe_tree(
        &self,
        master_flow_id: FlowId,
        after_id: i64,
    ) -> (KeyedReceiver, Option<Vec<Arc<CommittedEvent>>>) {
        self.fanout.subscribe_tree(master_flow_id, after_id)
    }

    /// Every event committed from now on (filter by tenant yourself), and `tenant`'s events
    /// after `after_id` if memory still holds them all.
    pub fn subscribe_tenant(
        &self,
        tenant: &Tenant,
        after_id: i64,
    ) -> (
        broadcast::Receiver<Arc<CommittedEvent>>,
        Option<Vec<Arc<CommittedEvent>>>,
    ) {
        self.fanout.subscribe_tenant(tenant, after_id)
    }

    /// The tail that reads other nodes' events (cluster mode only): what a database
    /// notification listener wakes.
    pub fn event_tail(&self) -> Option<&EventTail> {
        self.tail.as_ref()
    }

    /// The bounds this runtime was started with.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Counters of the persistence actor.
    pub async fn persistence_stats(&self) -> Result<PersistenceStats, RuntimeError> {
        Ok(self.persistence.send(GetStats).await?)
    }

    /// Whether the runtime can write now: the database answers and the last batch committed.
    pub async fn is_writable(&self) -> Result<bool, RuntimeError> {
        self.store.ping().await?;
        Ok(self.persistence_stats().await?.consecutive_failures == 0)
    }

    /// Counters of the health actor.
    pub async fn health_stats(&self) -> Result<HealthStats, RuntimeError> {
        Ok(self.health.send(GetHealthStats).await?)
    }

    /// How many flow actors are live.
    pub async fn live_flows(&self) -> Result<usize, RuntimeError> {
        Ok(self.supervisor.send(LiveFlows).await?.len())
    }

    /// The Prometheus text exposition of the runtime's metrics, with current gauges.
    pub async fn render_metrics(&self) -> Result<String, RuntimeError> {
        // During an outage the metrics still answer, without the counts only the database has.
        let flows_by_status = match self.store.count_by_status().await {
            Ok(counts) => counts
                .into_iter()
                .map(|(status, count)| (status.as_str().to_owned(), count))
                .collect(),
            Err(error) => {
                tracing::warn!(%error, "flow counts left out of the metrics");
                Vec::new()
            }
        };
        let tasks = self.queue_stats().await?;
        let writer = self.persistence_stats().await?;
        let gauges = Gauges {
            flows_by_status,
            live_flow_actors: self.live_flows().await?,
            event_subscribers: self.subscriber_count(),
            queued_tasks: tasks.queued,
            leased_tasks: tasks.leased,
            commit_outage_tries: writer.consecutive_failures,
            refused_writes: writer.refused_writes,
        };
        Ok(self.metrics.render(&gauges))
    }

    /// The runtime's counters, for tests and embedding programs.
    pub fn metrics(&self) -> &RuntimeMetrics {
        &self.metrics
    }

    /// Test-only fault injection (cargo feature `faults`; the API exposes it only with
    /// `[faults] enabled = true`).
    #[cfg(feature = "faults")]
    pub fn faults(&self) -> &FaultPlan {
        &self.faults
    }

    /// Live event subscribers.
    pub fn subscriber_count(&self) -> usize {
        self.fanout.subscriber_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::PhaseDefinition;

    fn fan_out(name: &str, child: Option<&str>) -> FlowType {
        let phase = match child {
            Some(child) => PhaseDefinition {
                params: serde_json::json!({ "flow_type": child, "count": 1 }),
                ..PhaseDefinition::new("p", "child_flows")
            },
            None => PhaseDefinition::new("p", "noop"),
        };
        FlowType {
            name: name.into(),
            version: 1,
            phases: vec![phase],
        }
    }

    #[test]
    fn children_are_registered_before_their_parents() {
        let types = vec![
            fan_out("top", Some("mid")),
            fan_out("mid", Some("leaf")),
            fan_out("leaf", None),
            fan_out("alone", None),
        ];
        let names: Vec<String> = children_first(types).into_iter().map(|t| t.name).collect();
        assert_eq!(names, ["leaf", "mid", "top", "alone"]);
    }
}
