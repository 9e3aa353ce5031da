//! The supervisor: owns one flow actor per live flow, spread over one arbiter per core. It
//! creates flows, resumes every non-terminal flow at boot, and restarts flow actors that stop
//! abnormally — from stored state, within a restart intensity limit (OTP's intensity and period),
//! past which the flow fails loudly instead of looping.
//!
//! One file per job: `spawn` (one actor per flow, the restart policy), `create` (new flows,
//! with idempotency), `recovery` (resuming stored flows at boot and in the sweep), `control`
//! (lifecycle requests, routed to the owner node when another node owns the flow, and the
//! cancel cascade to children), `stale_reads` (not reviving a flow
//! from a read that predates its end).

mod control;
mod create;
pub mod messages;
mod recovery;
mod spawn;
mod stale_reads;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::oneshot;

use crate::error::RuntimeError;
#[cfg(feature = "faults")]
use crate::faults::FaultPlan;
use crate::flow::{FlowActor, FlowEnv};
use crate::handler::HandlerSet;
use crate::handler_pool::HandlerPool;
use crate::ids::{FlowId, Tenant};
use crate::metrics::RuntimeMetrics;
use crate::persistence::PersistenceActor;
use crate::registry::Registry;
use crate::store::FlowStore;
pub use messages::{
    ControlFlow, CreateFlow, CreatedFlow, FlowStopped, LiveFlow, LiveFlows, ReconcileOwnership,
    RecoverFlows, RestartFlow, StopCause, UseRemoteControls,
};
use stale_reads::StaleReads;

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
    #[cfg(feature = "faults")]
    faults: Arc<FaultPlan>,
    restarts: HashMap<FlowId, VecDeque<Instant>>,
    /// Consecutive restarts waiting for the database, per flow: they back off, uncounted.
    store_retries: HashMap<FlowId, u32>,
    /// Creates in flight per (tenant, idempotency key): later identical requests wait for the first.
    creating: HashMap<(Tenant, String), Vec<Waiter>>,
    flow_env: Option<Arc<FlowEnv>>,
    /// Cluster mode: how controls of flows other nodes own reach them.
    remote: Option<crate::controls::RemoteControls>,
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
    /// Test-only fault injection (cargo feature `faults`).
    #[cfg(feature = "faults")]
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
            #[cfg(feature = "faults")]
            faults: parts.faults,
            restarts: HashMap::new(),
            store_retries: HashMap::new(),
            creating: HashMap::new(),
            flow_env: None,
            remote: None,
        }
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(1 << 16);
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
