//! Lifecycle requests (pause, resume, cancel, retry): routed to the flow's actor, started for
//! it if need be; a finished flow without one is answered by the machine. Cancelling a flow
//! cancels its children, and theirs.

use std::sync::Arc;

use actix::prelude::*;

use super::spawn::definition_of;
use super::{ControlFlow, Supervisor};
use crate::error::RuntimeError;
use crate::flow::{Control, ControlCommand, StartMode};
use crate::ids::{FlowId, Tenant};
use crate::machine;
use crate::model::{FlowState, FlowStatus, now};
use crate::store::{FlowQuery, FlowStore};

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
