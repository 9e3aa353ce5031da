//! Creating a flow: checked, built by the machine, committed, then its actor started. An
//! idempotency key names one request: a repeat gets the same flow, a different request under
//! the same key is refused, and concurrent repeats wait for the first.

use std::sync::Arc;

use actix::prelude::*;
use tokio::sync::oneshot;
use tracing::info;

use super::{CreateFlow, CreatedFlow, Supervisor};
use crate::definition::FlowType;
use crate::error::{PersistError, RuntimeError};
use crate::flow::StartMode;
use crate::machine;
use crate::model::{FlowState, FlowStatus, now};
use crate::persistence::{Persist, PersistenceActor};
use crate::registry::{GetFlowType, Registry};
use crate::store::{FlowStore, Write};

/// Whether `flow` is what `request` asks for: an idempotency key names one request, and a
/// different one under the same key is refused, not answered with the other's flow.
fn is_same_request(flow: &FlowState, request: &crate::model::NewFlow) -> bool {
    flow.flow_type == request.flow_type
        && *flow.input == request.input
        && flow.parent_flow_id == request.parent_flow_id
}

/// The flow stored under `flow`'s idempotency key, if it is the same request; a different one
/// under that key is refused.
async fn find_same(
    store: &Arc<dyn FlowStore>,
    flow: &FlowState,
) -> Result<Option<FlowState>, RuntimeError> {
    let Some(key) = &flow.idempotency_key else {
        return Ok(None);
    };
    let Some(existing) = store.find_by_idempotency_key(&flow.tenant(), key).await? else {
        return Ok(None);
    };
    let same = existing.flow_type == flow.flow_type
        && existing.input == flow.input
        && existing.parent_flow_id == flow.parent_flow_id;
    if !same {
        return Err(RuntimeError::IdempotencyMismatch(key.clone()));
    }
    Ok(Some(existing))
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
    let (mut write, effect) = machine::create(&mut flow, &definition, now());
    crate::status_reason::stamp(
        &mut write.events,
        &flow,
        &definition,
        write.failure.as_ref(),
    );
    match persistence
        .send(Persist::unfenced(Write::Transition(write)))
        .await?
    {
        Ok(()) => {}
        Err(PersistError::Refused(reason)) if flow.idempotency_key.is_some() => {
            // The key's unique index refused it: another node of the cluster (or another
            // process on the database) committed a flow under this key in the meantime. As
            // on one node, a repeat gets that flow and a different request is refused.
            return match find_same(&store, &flow).await? {
                Some(existing) => Ok((
                    CreatedFlow {
                        flow: existing,
                        created: false,
                    },
                    None,
                )),
                None => Err(PersistError::Refused(reason).into()),
            };
        }
        Err(error) => return Err(error.into()),
    }
    info!(flow_id = %flow.id, flow_type = %flow.flow_type, "flow created");
    Ok((
        CreatedFlow {
            flow,
            created: true,
        },
        Some((definition, effect)),
    ))
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
