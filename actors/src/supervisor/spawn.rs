//! One actor per flow, whoever asks for it, and the restart policy: faults count toward the
//! flow's restart intensity, database outages are only waited out.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use tracing::{error, info, warn};

use super::{FlowStopped, Live, RestartFlow, StopCause, Supervisor};
use crate::definition::FlowType;
use crate::error::RuntimeError;
use crate::flow::{FlowActor, FlowEnv, StartMode, StopFlow};
use crate::ids::FlowId;
use crate::machine;
use crate::model::{FlowState, now};
use crate::persistence::{Fence, Persist, PersistenceActor, Release};
use crate::registry::{GetFlowType, Registry};
use crate::store::Write;

impl Supervisor {
    pub(super) fn spawn_flow(
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
                    #[cfg(feature = "faults")]
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
    pub(super) fn restart(&mut self, flow_id: FlowId, cause: StopCause, ctx: &mut Context<Self>) {
        // A silent actor's successor journals the restart and shows it as the flow's reason.
        let silent = matches!(cause, StopCause::Silent(_));
        let (exceeded, delay, reason) = match cause {
            StopCause::Fault(reason) | StopCause::Silent(reason) => {
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
        let mode = if silent {
            StartMode::RestartedSilent(reason.clone())
        } else {
            StartMode::Recover
        };
        ctx.run_later(delay, move |act, ctx| {
            let began = act.stale_reads.begin();
            let load = async move {
                let Some(mut flow) = store.load_flow(flow_id).await? else {
                    return Ok(None);
                };
                if flow.status.is_terminal() {
                    return Ok(None);
                }
                if !store.owns(&flow) {
                    // Taken over by another node: its owner runs it; this one must not.
                    info!(flow_id = %flow_id, owner = ?flow.owner_node, "flow owned by another node; not restarted");
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
                        act.spawn_flow(flow, definition, mode, ctx);
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
    pub(super) fn forget(&mut self, flow_id: FlowId) {
        self.restarts.remove(&flow_id);
        self.store_retries.remove(&flow_id);
        self.persistence.do_send(Release(flow_id));
    }
}

pub(super) async fn definition_of(
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
        self.restart(message.flow_id, StopCause::Silent(message.reason), ctx);
    }
}
