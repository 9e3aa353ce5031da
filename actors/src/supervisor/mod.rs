//! The supervisor: owns one flow actor per live flow, spread over one arbiter per core. It
//! creates flows, resumes every non-terminal flow at boot, and restarts flow actors that stop
//! abnormally — from stored state, within a restart intensity limit (OTP's intensity and period),
//! past which the flow fails loudly instead of looping.

pub mod messages;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::oneshot;
use tracing::{error, info, warn};

use crate::definition::FlowType;
use crate::error::RuntimeError;
use crate::faults::FaultPlan;
use crate::flow::{Control, ControlCommand, FlowActor, FlowEnv, StartMode, StopFlow};
use crate::handler::HandlerSet;
use crate::handler_pool::HandlerPool;
use crate::ids::{FlowId, Tenant};
use crate::machine;
use crate::metrics::RuntimeMetrics;
use crate::model::{FlowState, FlowStatus, now};
use crate::persistence::{Fence, Persist, PersistenceActor, Release};
use crate::registry::{GetFlowType, Registry};
use crate::store::{FlowQuery, FlowStore, Write};
pub use messages::{
    ControlFlow, CreateFlow, CreatedFlow, FlowStopped, LiveFlow, LiveFlows, RecoverFlows,
    RestartFlow, StopCause,
};

/// Most flows one stored-flow sweep adopts; the next sweep takes the rest.
const SWEEP_LIMIT: u32 = 1000;

/// How often a flow may be restarted before it is failed instead.
#[derive(Clone, Copy, Debug)]
pub struct RestartIntensity {
    pub max_restarts: usize,
    pub window: Duration,
}

struct Live {
    addr: Addr<FlowActor>,
    generation: u64,
}

/// Guards against reviving a flow from a stale read. A read of stored flows (the sweep, a
/// restart, a control request) can see a flow as running while a live actor finishes it; by
/// the time the read returns that actor may have committed `completed` and stopped. Every
/// stop is numbered; a read remembers the number it began at, and a flow whose actor stopped
/// after that is not started from that read. Stops are kept only while a read that could need
/// them is in flight, so nothing per flow outlives its flow.
#[derive(Default)]
struct StaleReads {
    stops: u64,
    /// The stop number at which each flow's actor last stopped, while reads are in flight.
    stopped_at: HashMap<FlowId, u64>,
    /// Reads in flight, by the stop number they began at.
    reads: std::collections::BTreeMap<u64, usize>,
}

impl StaleReads {
    /// A read of stored flows begins; pass the answer to [`Self::is_stale`] and [`Self::end`].
    fn begin(&mut self) -> u64 {
        *self.reads.entry(self.stops).or_default() += 1;
        self.stops
    }

    /// A flow's actor stopped (or was stopped).
    fn stopped(&mut self, flow_id: FlowId) {
        self.stops += 1;
        if !self.reads.is_empty() {
            self.stopped_at.insert(flow_id, self.stops);
        }
    }

    /// Whether what a read that began at `began` saw of this flow may predate its last stop.
    fn is_stale(&self, flow_id: FlowId, began: u64) -> bool {
        self.stopped_at.get(&flow_id).is_some_and(|at| *at > began)
    }

    /// A read is over; forgets the stops no read in flight can need.
    fn end(&mut self, began: u64) {
        if let Some(count) = self.reads.get_mut(&began) {
            *count -= 1;
            if *count == 0 {
                self.reads.remove(&began);
            }
        }
        match self.reads.keys().next() {
            None => self.stopped_at.clear(),
            Some(&oldest) => self.stopped_at.retain(|_, at| *at > oldest),
        }
    }
}

type Waiter = oneshot::Sender<Result<CreatedFlow, RuntimeError>>;

/// Owns every live flow actor.
pub struct Supervisor {
    flows: HashMap<FlowId, Live>,
    stale_reads: StaleReads,
    arbiters: Vec<ArbiterHandle>,
    next_arbiter: usize,
    generation: u64,
    handlers: Arc<HandlerSet>,
    persistence: Addr<PersistenceActor>,
    registry: Addr<Registry>,
    store: Arc<dyn FlowStore>,
    default_timeout: Duration,
    max_transitions: u32,
    intensity: RestartIntensity,
    handler_pool: Arc<HandlerPool>,
    metrics: Arc<RuntimeMetrics>,
    faults: Arc<FaultPlan>,
    restarts: HashMap<FlowId, VecDeque<Instant>>,
    /// Consecutive restarts waiting for the database, per flow: they back off, uncounted.
    store_retries: HashMap<FlowId, u32>,
    /// Creates in flight per (tenant, idempotency key): later identical requests wait for the first.
    creating: HashMap<(Tenant, String), Vec<Waiter>>,
    flow_env: Option<Arc<FlowEnv>>,
}

/// What the supervisor needs to run flows.
pub struct SupervisorParts {
    pub arbiters: Vec<ArbiterHandle>,
    pub handlers: Arc<HandlerSet>,
    pub persistence: Addr<PersistenceActor>,
    pub registry: Addr<Registry>,
    pub store: Arc<dyn FlowStore>,
    pub default_timeout: Duration,
    /// Phase attempts one flow may start in all; see [`crate::limits::Limits`].
    pub max_transitions: u32,
    pub intensity: RestartIntensity,
    pub handler_pool: Arc<HandlerPool>,
    pub metrics: Arc<RuntimeMetrics>,
    pub faults: Arc<FaultPlan>,
}

impl Supervisor {
    /// A supervisor with no live flows yet; send [`RecoverFlows`] to resume stored ones.
    pub fn new(parts: SupervisorParts) -> Self {
        Self {
            flows: HashMap::new(),
            stale_reads: StaleReads::default(),
            arbiters: parts.arbiters,
            next_arbiter: 0,
            generation: 0,
            handlers: parts.handlers,
            persistence: parts.persistence,
            registry: parts.registry,
            store: parts.store,
            default_timeout: parts.default_timeout,
            max_transitions: parts.max_transitions,
            intensity: parts.intensity,
            handler_pool: parts.handler_pool,
            metrics: parts.metrics,
            faults: parts.faults,
            restarts: HashMap::new(),
            store_retries: HashMap::new(),
            creating: HashMap::new(),
            flow_env: None,
        }
    }

    fn spawn_flow(
        &mut self,
        flow: FlowState,
        definition: Arc<FlowType>,
        mode: StartMode,
        ctx: &mut Context<Self>,
    ) -> Addr<FlowActor> {
        // One actor per flow, whoever asks (a create, the database sweep, a restart).
        if let Some(live) = self.flows.get(&flow.id) {
            return live.addr.clone();
        }
        self.store_retries.remove(&flow.id);
        // One environment shared by every flow actor: a parked flow costs one pointer for it.
        let env = self
            .flow_env
            .get_or_insert_with(|| {
                Arc::new(FlowEnv {
                    handlers: self.handlers.clone(),
                    persistence: self.persistence.clone(),
                    stopped: ctx.address().recipient(),
                    default_timeout: self.default_timeout,
                    max_transitions: self.max_transitions,
                    handler_pool: self.handler_pool.clone(),
                    metrics: self.metrics.clone(),
                    faults: self.faults.clone(),
                })
            })
            .clone();
        self.generation += 1;
        let generation = self.generation;
        let flow_id = flow.id;
        // Sent before the actor exists, so it precedes every write the actor can make.
        self.persistence.do_send(Fence {
            flow_id,
            writer: Some(generation),
        });
        let addr = if self.arbiters.is_empty() {
            FlowActor::new(flow, definition, env, mode, generation).start()
        } else {
            let arbiter = &self.arbiters[self.next_arbiter % self.arbiters.len()];
            self.next_arbiter = self.next_arbiter.wrapping_add(1);
            FlowActor::start_in_arbiter(arbiter, move |_| {
                FlowActor::new(flow, definition, env, mode, generation)
            })
        };
        self.flows.insert(
            flow_id,
            Live {
                addr: addr.clone(),
                generation,
            },
        );
        addr
    }

    /// Counts a restart; false once the flow exceeded its restart intensity.
    fn allow_restart(&mut self, flow_id: FlowId) -> bool {
        let window = self.intensity.window;
        let history = self.restarts.entry(flow_id).or_default();
        let now = Instant::now();
        while history
            .front()
            .is_some_and(|at| now.duration_since(*at) > window)
        {
            history.pop_front();
        }
        history.push_back(now);
        history.len() <= self.intensity.max_restarts
    }

    /// Loads the flow and starts a fresh actor for it. Faults count toward the restart
    /// intensity, past which the flow fails; database outages are only waited out.
    fn restart(&mut self, flow_id: FlowId, cause: StopCause, ctx: &mut Context<Self>) {
        let (exceeded, delay, reason) = match cause {
            StopCause::Fault(reason) => {
                let exceeded = !self.allow_restart(flow_id);
                let attempts = self.restarts.get(&flow_id).map_or(0, VecDeque::len) as u32;
                (
                    exceeded,
                    crate::machine::backoff(50, attempts.max(1)),
                    reason,
                )
            }
            StopCause::StoreUnavailable(reason) => {
                let waits = self.store_retries.entry(flow_id).or_default();
                *waits += 1;
                (false, crate::machine::backoff(100, *waits), reason)
            }
            StopCause::Finished | StopCause::Replaced => return,
        };
        let store = self.store.clone();
        let registry = self.registry.clone();
        let persistence = self.persistence.clone();
        let metrics = self.metrics.clone();
        ctx.run_later(delay, move |act, ctx| {
            let began = act.stale_reads.begin();
            let load = async move {
                let Some(mut flow) = store.load_flow(flow_id).await? else {
                    return Ok(None);
                };
                if flow.status.is_terminal() {
                    return Ok(None);
                }
                if exceeded {
                    let message = format!("restarted too often; last cause: {reason}");
                    if let Ok(step) =
                        machine::abort(&mut flow, "restart_intensity_exceeded", &message, now())
                    {
                        persist_step(&persistence, &flow, step).await?;
                        metrics.failure("restart_intensity_exceeded");
                    }
                    error!(flow_id = %flow_id, %message, "flow failed: restart intensity exceeded");
                    return Ok(None);
                }
                let definition = definition_of(&registry, &flow).await?;
                Ok::<_, RuntimeError>(Some((flow, definition)))
            };
            ctx.spawn(load.into_actor(act).map(move |result, act, ctx| {
                let stale = act.stale_reads.is_stale(flow_id, began);
                act.stale_reads.end(began);
                match result {
                    _ if act.flows.contains_key(&flow_id) => {}
                    // Another life ran and stopped while this one was read: read it again.
                    Ok(_) if stale => act.restart(
                        flow_id,
                        StopCause::StoreUnavailable("stale read".into()),
                        ctx,
                    ),
                    Ok(Some((flow, definition))) => {
                        info!(flow_id = %flow_id, "flow actor restarted from stored state");
                        act.metrics.actor_restart();
                        act.spawn_flow(flow, definition, StartMode::Recover, ctx);
                    }
                    // Ended: nothing of it is kept.
                    Ok(None) => act.forget(flow_id),
                    Err(error) => {
                        warn!(flow_id = %flow_id, %error, "restart failed; trying again");
                        act.restart(flow_id, StopCause::StoreUnavailable(error.to_string()), ctx);
                    }
                }
            }));
        });
    }

    /// Drops every entry kept for a flow that has ended or has no actor to come.
    fn forget(&mut self, flow_id: FlowId) {
        self.restarts.remove(&flow_id);
        self.store_retries.remove(&flow_id);
        self.persistence.do_send(Release(flow_id));
    }
}

async fn definition_of(
    registry: &Addr<Registry>,
    flow: &FlowState,
) -> Result<Arc<FlowType>, RuntimeError> {
    registry
        .send(GetFlowType {
            name: flow.flow_type.clone(),
            version: Some(flow.flow_type_version),
        })
        .await?
        .ok_or_else(|| {
            RuntimeError::UnknownFlowType(format!("{} v{}", flow.flow_type, flow.flow_type_version))
        })
}

async fn persist_step(
    persistence: &Addr<PersistenceActor>,
    flow: &FlowState,
    step: machine::Step,
) -> Result<(), RuntimeError> {
    let (write, _) = step.into_write(flow);
    persistence
        .send(Persist::unfenced(Write::Transition(write)))
        .await??;
    Ok(())
}

/// Cancelling a flow cancels its children, and theirs: no orphan keeps running.
struct Cascade {
    supervisor: Addr<Supervisor>,
    store: Arc<dyn FlowStore>,
    tenant: Tenant,
    parent: FlowId,
}

impl Cascade {
    async fn cancel_children(self) -> Result<(), RuntimeError> {
        let mut query = FlowQuery {
            tenant: Some(self.tenant.clone()),
            parent_flow_id: Some(self.parent),
            limit: 500,
            ..FlowQuery::default()
        };
        loop {
            let page = self.store.list_flows(&query).await?;
            for child in &page {
                if child.status.is_terminal() {
                    continue;
                }
                let cancelled = self
                    .supervisor
                    .send(ControlFlow {
                        flow_id: child.id,
                        tenant: self.tenant.clone(),
                        command: ControlCommand::Cancel,
                    })
                    .await?;
                match cancelled {
                    Ok(_) | Err(RuntimeError::IllegalTransition { .. }) => {}
                    Err(error) => return Err(error),
                }
            }
            match page.last() {
                Some(last) if page.len() == query.limit as usize => query.before = Some(last.id),
                _ => return Ok(()),
            }
        }
    }
}

/// Whether `flow` is what `request` asks for: an idempotency key names one request, and a
/// different one under the same key is refused, not answered with the other's flow.
fn is_same_request(flow: &FlowState, request: &crate::model::NewFlow) -> bool {
    flow.flow_type == request.flow_type
        && *flow.input == request.input
        && flow.parent_flow_id == request.parent_flow_id
}

/// Checks, builds and commits a new flow; the caller starts its actor.
async fn create(
    request: crate::model::NewFlow,
    store: Arc<dyn FlowStore>,
    registry: Addr<Registry>,
    persistence: Addr<PersistenceActor>,
) -> Result<(CreatedFlow, Option<(Arc<FlowType>, machine::Effect)>), RuntimeError> {
    if let Some(key) = &request.idempotency_key
        && let Some(existing) = store.find_by_idempotency_key(&request.tenant, key).await?
    {
        if !is_same_request(&existing, &request) {
            return Err(RuntimeError::IdempotencyMismatch(key.clone()));
        }
        return Ok((
            CreatedFlow {
                flow: existing,
                created: false,
            },
            None,
        ));
    }
    let definition = registry
        .send(GetFlowType {
            name: request.flow_type.clone(),
            version: None,
        })
        .await?
        .ok_or_else(|| RuntimeError::UnknownFlowType(request.flow_type.clone()))?;
    let mut request = request;
    if let Some(parent_id) = request.parent_flow_id {
        let parent = store
            .load_flow(parent_id)
            .await?
            .filter(|parent| parent.tenant() == request.tenant)
            .ok_or(RuntimeError::ParentNotFound(parent_id))?;
        if parent.status == FlowStatus::Cancelled {
            // A fan-out racing its master's cancel must not leave a running orphan behind.
            return Err(RuntimeError::IllegalTransition {
                status: parent.status,
            });
        }
        request.master_flow_id = Some(parent.master_flow_id);
    }
    let mut flow = FlowState::new_initialized(&definition, request);
    let (write, effect) = machine::create(&mut flow, &definition, now());
    persistence
        .send(Persist::unfenced(Write::Transition(write)))
        .await??;
    info!(flow_id = %flow.id, flow_type = %flow.flow_type, "flow created");
    Ok((
        CreatedFlow {
            flow,
            created: true,
        },
        Some((definition, effect)),
    ))
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(1 << 16);
    }
}

impl Handler<CreateFlow> for Supervisor {
    type Result = ResponseActFuture<Self, Result<CreatedFlow, RuntimeError>>;

    fn handle(&mut self, CreateFlow(request): CreateFlow, _: &mut Self::Context) -> Self::Result {
        let slot = request
            .idempotency_key
            .clone()
            .map(|key| (request.tenant.clone(), key));
        if let Some(slot) = &slot
            && let Some(waiters) = self.creating.get_mut(slot)
        {
            let (waiter, answer) = oneshot::channel();
            waiters.push(waiter);
            let key = slot.1.clone();
            let answer = async move {
                match answer.await {
                    Ok(Ok(created)) if !is_same_request(&created.flow, &request) => {
                        Err(RuntimeError::IdempotencyMismatch(key))
                    }
                    Ok(Ok(created)) => Ok(CreatedFlow {
                        created: false,
                        ..created
                    }),
                    Ok(Err(error)) => Err(error),
                    Err(_) => Err(RuntimeError::Unavailable("create abandoned".into())),
                }
            };
            return Box::pin(answer.into_actor(self));
        }
        if let Some(slot) = &slot {
            self.creating.insert(slot.clone(), Vec::new());
        }
        let work = create(
            request,
            self.store.clone(),
            self.registry.clone(),
            self.persistence.clone(),
        );
        Box::pin(work.into_actor(self).map(move |result, act, ctx| {
            let result = result.map(|(created, start)| {
                if let Some((definition, effect)) = start {
                    act.spawn_flow(
                        created.flow.clone(),
                        definition,
                        StartMode::Run(effect),
                        ctx,
                    );
                }
                created
            });
            if let Some(slot) = slot
                && let Some(waiters) = act.creating.remove(&slot)
            {
                for waiter in waiters {
                    let copy = match &result {
                        Ok(created) => Ok(created.clone()),
                        Err(error) => Err(error.duplicate()),
                    };
                    let _ = waiter.send(copy);
                }
            }
            result
        }))
    }
}

impl Handler<RecoverFlows> for Supervisor {
    type Result = ResponseActFuture<Self, Result<usize, RuntimeError>>;

    fn handle(&mut self, message: RecoverFlows, _: &mut Self::Context) -> Self::Result {
        let began = self.stale_reads.begin();
        let store = self.store.clone();
        let candidates = async move {
            match message.quiet_for {
                None => Ok(None),
                Some(quiet) => {
                    let before = now() - chrono::Duration::from_std(quiet).unwrap_or_default();
                    Ok(Some(store.stale_active_flows(before, SWEEP_LIMIT).await?))
                }
            }
        };
        let store = self.store.clone();
        let registry = self.registry.clone();
        Box::pin(
            candidates
                .into_actor(self)
                .then(move |candidates: Result<_, RuntimeError>, act, _| {
                    // Flows with a live actor are not read at all.
                    let wanted = candidates.map(|ids| {
                        ids.map(|ids: Vec<FlowId>| {
                            ids.into_iter()
                                .filter(|id| !act.flows.contains_key(id))
                                .collect::<Vec<_>>()
                        })
                    });
                    load_recoverable(store, registry, wanted).into_actor(act)
                })
                .map(move |result, act, ctx| {
                    let result = result.map(|ready| act.adopt(ready, began, ctx));
                    act.stale_reads.end(began);
                    result
                }),
        )
    }
}

impl Supervisor {
    /// Starts actors for recovered flows that still have none, unless what was read of a flow
    /// may be stale (see [`StaleReads`]): the next sweep reads it again.
    fn adopt(
        &mut self,
        ready: Vec<(FlowState, Arc<FlowType>, bool)>,
        began: u64,
        ctx: &mut Context<Self>,
    ) -> usize {
        let mut started = 0;
        for (flow, definition, orphaned) in ready {
            let (flow_id, tenant) = (flow.id, flow.tenant());
            if self.stale_reads.is_stale(flow_id, began) {
                info!(flow_id = %flow_id, "flow stopped while it was read; not revived");
                continue;
            }
            if !self.flows.contains_key(&flow_id) {
                self.spawn_flow(flow, definition, StartMode::Recover, ctx);
                started += 1;
            }
            if orphaned {
                // Also catches a child created while its master's cancel was cascading.
                info!(flow_id = %flow_id, "parent was cancelled; cancelling the child");
                ctx.address().do_send(ControlFlow {
                    flow_id,
                    tenant,
                    command: ControlCommand::Cancel,
                });
            }
        }
        if started > 0 {
            info!(flows = started, "non-terminal flows resumed");
        }
        started
    }
}

/// Reads the flows to recover (`None`: every non-terminal one; otherwise these ids, if still
/// non-terminal) with their definitions, and whether each is a child of a cancelled parent.
async fn load_recoverable(
    store: Arc<dyn FlowStore>,
    registry: Addr<Registry>,
    wanted: Result<Option<Vec<FlowId>>, RuntimeError>,
) -> Result<Vec<(FlowState, Arc<FlowType>, bool)>, RuntimeError> {
    let flows = match wanted? {
        None => store.load_active_flows().await?,
        Some(ids) => {
            let mut flows = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(flow) = store.load_flow(id).await?
                    && !flow.status.is_terminal()
                {
                    flows.push(flow);
                }
            }
            flows
        }
    };
    let active: std::collections::HashSet<FlowId> = flows.iter().map(|f| f.id).collect();
    let mut definitions: HashMap<(String, u32), Arc<FlowType>> = HashMap::new();
    let mut ready = Vec::with_capacity(flows.len());
    let mut cancelled_parents: HashMap<FlowId, bool> = HashMap::new();
    for flow in flows {
        // A crash between a master's cancel and its children's leaves them active:
        // finish the cascade now.
        let orphaned = match flow.parent_flow_id {
            Some(parent) if !active.contains(&parent) => match cancelled_parents.get(&parent) {
                Some(cancelled) => *cancelled,
                None => {
                    let cancelled = store
                        .load_flow(parent)
                        .await?
                        .is_some_and(|p| p.status == FlowStatus::Cancelled);
                    cancelled_parents.insert(parent, cancelled);
                    cancelled
                }
            },
            _ => false,
        };
        let key = (flow.flow_type.clone(), flow.flow_type_version);
        let definition = match definitions.get(&key) {
            Some(definition) => definition.clone(),
            None => {
                let definition = definition_of(&registry, &flow).await?;
                definitions.insert(key, definition.clone());
                definition
            }
        };
        ready.push((flow, definition, orphaned));
    }
    Ok(ready)
}

impl Handler<FlowStopped> for Supervisor {
    type Result = ();

    fn handle(&mut self, message: FlowStopped, ctx: &mut Self::Context) {
        let current = self.flows.get(&message.flow_id).map(|f| f.generation);
        if current != Some(message.generation) {
            return;
        }
        self.flows.remove(&message.flow_id);
        self.stale_reads.stopped(message.flow_id);
        match message.cause {
            StopCause::Finished => self.forget(message.flow_id),
            // Its successor is live (or being restarted) under the fence already set for it.
            StopCause::Replaced => {}
            cause => {
                warn!(flow_id = %message.flow_id, ?cause, "flow actor stopped abnormally");
                self.restart(message.flow_id, cause, ctx);
            }
        }
    }
}

impl Handler<RestartFlow> for Supervisor {
    type Result = ();

    fn handle(&mut self, message: RestartFlow, ctx: &mut Self::Context) {
        // Only the life that was found silent is restarted: one that stopped on its own, or was
        // replaced meanwhile, is left to the stop notice and its successor.
        if self.flows.get(&message.flow_id).map(|f| f.generation) != Some(message.generation) {
            return;
        }
        if let Some(live) = self.flows.remove(&message.flow_id) {
            self.stale_reads.stopped(message.flow_id);
            // The silent life may wake up later: from now on none of its writes are taken.
            self.persistence.do_send(Fence {
                flow_id: message.flow_id,
                writer: None,
            });
            // Stops it once it reads its mailbox; its late stop notice matches no live generation.
            live.addr.do_send(StopFlow);
        }
        warn!(flow_id = %message.flow_id, reason = %message.reason, "restarting flow actor");
        self.restart(message.flow_id, StopCause::Fault(message.reason), ctx);
    }
}

impl Handler<LiveFlows> for Supervisor {
    type Result = MessageResult<LiveFlows>;

    fn handle(&mut self, _: LiveFlows, _: &mut Self::Context) -> Self::Result {
        MessageResult(
            self.flows
                .iter()
                .map(|(id, f)| LiveFlow {
                    flow_id: *id,
                    generation: f.generation,
                    addr: f.addr.clone(),
                })
                .collect(),
        )
    }
}

impl Handler<ControlFlow> for Supervisor {
    type Result = ResponseActFuture<Self, Result<FlowState, RuntimeError>>;

    fn handle(&mut self, message: ControlFlow, _: &mut Self::Context) -> Self::Result {
        let began = self.stale_reads.begin();
        let store = self.store.clone();
        let registry = self.registry.clone();
        let ControlFlow {
            flow_id,
            tenant,
            command,
        } = message;
        let load = async move {
            let flow = store
                .load_flow(flow_id)
                .await?
                .filter(|flow| flow.tenant() == tenant)
                .ok_or(RuntimeError::FlowNotFound(flow_id))?;
            let definition = definition_of(&registry, &flow).await?;
            Ok::<_, RuntimeError>((flow, definition))
        };
        Box::pin(load.into_actor(self).then(move |loaded, act, ctx| {
            let stale = act.stale_reads.is_stale(flow_id, began);
            act.stale_reads.end(began);
            let routed: ResponseActFuture<Self, Result<FlowState, RuntimeError>> = match loaded {
                Err(error) => Box::pin(fut::ready(Err(error))),
                // Its actor stopped while the flow was read: what was read may be stale, so
                // read it again rather than start an actor from it.
                Ok((flow, _)) if stale && !act.flows.contains_key(&flow_id) => {
                    let again = ctx.address().send(ControlFlow {
                        flow_id,
                        tenant: flow.tenant(),
                        command,
                    });
                    Box::pin(async move { again.await? }.into_actor(act))
                }
                Ok((flow, definition)) => {
                    let addr = match act.flows.get(&flow_id) {
                        Some(live) => Some(live.addr.clone()),
                        None if !flow.status.is_terminal() => Some(act.spawn_flow(
                            flow.clone(),
                            definition.clone(),
                            StartMode::Recover,
                            ctx,
                        )),
                        None if command == ControlCommand::Retry
                            && flow.status == FlowStatus::Failed =>
                        {
                            Some(act.spawn_flow(
                                flow.clone(),
                                definition.clone(),
                                StartMode::Idle,
                                ctx,
                            ))
                        }
                        None => None,
                    };
                    let cascade = (command == ControlCommand::Cancel).then(|| Cascade {
                        supervisor: ctx.address(),
                        store: act.store.clone(),
                        tenant: flow.tenant(),
                        parent: flow_id,
                    });
                    match addr {
                        Some(addr) => Box::pin(
                            async move {
                                let flow = addr.send(Control(command)).await??;
                                if let Some(cascade) = cascade {
                                    cascade.cancel_children().await?;
                                }
                                Ok(flow)
                            }
                            .into_actor(act),
                        ),
                        None => {
                            // A terminal flow with no actor: the machine answers, nothing changes.
                            let answer = machine::check_control(&flow, &definition, command, now());
                            let result = match answer {
                                Ok(_) => Ok(flow),
                                Err(machine::Rejected::IllegalTransition(status)) => {
                                    Err(RuntimeError::IllegalTransition { status })
                                }
                                Err(other) => Err(RuntimeError::Unavailable(other.to_string())),
                            };
                            Box::pin(fut::ready(result))
                        }
                    }
                }
            };
            routed
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_during_a_read_makes_that_read_stale_for_that_flow_only() {
        let mut reads = StaleReads::default();
        let (finished, other) = (FlowId::new(), FlowId::new());
        let began = reads.begin();
        reads.stopped(finished);
        assert!(reads.is_stale(finished, began));
        assert!(!reads.is_stale(other, began));
        // A read that begins after the stop sees the committed end: it is not stale.
        let later = reads.begin();
        assert!(!reads.is_stale(finished, later));
        reads.end(began);
        reads.end(later);
        assert!(reads.stopped_at.is_empty(), "nothing outlives the reads");
        assert!(reads.reads.is_empty());
    }

    #[test]
    fn stops_with_no_read_in_flight_are_not_kept() {
        let mut reads = StaleReads::default();
        reads.stopped(FlowId::new());
        assert!(reads.stopped_at.is_empty());
    }
}
