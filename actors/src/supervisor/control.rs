//! Lifecycle requests (pause, resume, cancel, retry): routed to the flow's actor, started for
//! it if need be; a finished flow without one is answered by the machine. Cancelling a flow
//! cancels its children, and theirs.
//!
//! In a cluster ([`UseRemoteControls`]), a live flow another node owns is controlled by that
//! node, through the database ([`crate::controls`]): this node starts no actor for it. A
//! failed flow another node owns is adopted (a new epoch) before a retry runs it here, so
//! two nodes never run it. Flows this node owns, and every flow on a single node, take the
//! local path as before.

use std::sync::Arc;

use actix::prelude::*;

use super::spawn::definition_of;
use super::{ControlFlow, Supervisor, UseRemoteControls};
use crate::controls::RemoteControls;
use crate::definition::FlowType;
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

/// Where a control of a flow, as read, is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    /// Here: this node owns the flow, or the flow is finished and the machine answers from
    /// the row (nothing is written), or there is no cluster.
    Local,
    /// By the owner: a live flow another node owns.
    Owner,
    /// A retry of a failed flow another node owns: adopt it, then here.
    AdoptThenLocal,
}

/// The routing rule, pure: `owns` is whether this node's store owns the flow as read,
/// `clustered` whether controls can reach other nodes at all.
fn route(flow: &FlowState, command: ControlCommand, owns: bool, clustered: bool) -> Route {
    if !clustered || owns {
        return Route::Local;
    }
    // Also a failed flow left without an owner by an older version.
    if command == ControlCommand::Retry && flow.status == FlowStatus::Failed {
        return Route::AdoptThenLocal;
    }
    // A live flow without an owner was left by an older version: boot adopts those.
    if flow.status.is_terminal() || flow.owner_node.is_none() {
        return Route::Local;
    }
    Route::Owner
}

impl Handler<UseRemoteControls> for Supervisor {
    type Result = ();

    fn handle(&mut self, message: UseRemoteControls, _: &mut Self::Context) {
        self.remote = Some(message.0);
    }
}

type Answer = ResponseActFuture<Supervisor, Result<FlowState, RuntimeError>>;

impl Handler<ControlFlow> for Supervisor {
    type Result = Answer;

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
            let routed: Answer = match loaded {
                Err(error) => Box::pin(fut::ready(Err(error))),
                // Its actor stopped while the flow was read: what was read may be stale, so
                // read it again rather than start an actor from it.
                Ok((flow, _)) if stale && !act.flows.contains_key(&flow_id) => {
                    act.read_again(flow, command, ctx)
                }
                Ok((flow, definition)) => {
                    let owns = act.store.owns(&flow);
                    match (
                        route(&flow, command, owns, act.remote.is_some()),
                        act.remote.clone(),
                    ) {
                        (Route::Owner, Some(remote)) => {
                            let owner = flow.owner_node.clone().unwrap_or_default();
                            let tenant = flow.tenant();
                            Box::pin(
                                async move { remote.request(flow_id, tenant, command, owner).await }
                                    .into_actor(act),
                            )
                        }
                        (Route::AdoptThenLocal, Some(remote)) => {
                            let adopting = remote.clone();
                            Box::pin(
                                async move {
                                    let adopted = adopting.adopt_failed(&flow).await;
                                    (adopted, flow, adopting.node_id().to_owned())
                                }
                                .into_actor(act)
                                .then(
                                    move |(adopted, mut flow, node), act, ctx| match adopted {
                                        Err(error) => Box::pin(fut::ready(Err(error))) as Answer,
                                        // Changed meanwhile (retried, or adopted by another node).
                                        Ok(None) => {
                                            act.after_lost_adoption(flow, command, remote, ctx)
                                        }
                                        Ok(Some(epoch)) => {
                                            // An actor of an earlier ownership would write under the
                                            // old epoch.
                                            act.retire(
                                                flow_id,
                                                "adopted again under a newer epoch",
                                            );
                                            flow.owner_node = Some(node);
                                            flow.owner_epoch = epoch;
                                            act.control_here(flow, definition, command, ctx)
                                        }
                                    },
                                ),
                            )
                        }
                        _ => act.control_here(flow, definition, command, ctx),
                    }
                }
            };
            routed
        }))
    }
}

impl Supervisor {
    /// The same request again, from a fresh read.
    fn read_again(
        &mut self,
        flow: FlowState,
        command: ControlCommand,
        ctx: &mut Context<Self>,
    ) -> Answer {
        let again = ctx.address().send(ControlFlow {
            flow_id: flow.id,
            tenant: flow.tenant(),
            command,
        });
        Box::pin(async move { again.await? }.into_actor(self))
    }

    /// Another node adopted the failed flow first, to retry it: that node answers (as one
    /// node answers a second retry), rather than this one adopting it back from under it.
    fn after_lost_adoption(
        &mut self,
        flow: FlowState,
        command: ControlCommand,
        remote: RemoteControls,
        ctx: &mut Context<Self>,
    ) -> Answer {
        let store = self.store.clone();
        let me = ctx.address();
        let (flow_id, tenant) = (flow.id, flow.tenant());
        Box::pin(
            async move {
                let fresh = store
                    .load_flow(flow_id)
                    .await?
                    .filter(|flow| flow.tenant() == tenant)
                    .ok_or(RuntimeError::FlowNotFound(flow_id))?;
                match fresh.owner_node {
                    Some(owner)
                        if fresh.status == FlowStatus::Failed && owner != remote.node_id() =>
                    {
                        remote.request(flow_id, tenant, command, owner).await
                    }
                    _ => {
                        me.send(ControlFlow {
                            flow_id,
                            tenant,
                            command,
                        })
                        .await?
                    }
                }
            }
            .into_actor(self),
        )
    }

    /// Applies a control on this node: by the flow's actor (started for it if need be), or
    /// by the machine for a finished flow without one.
    fn control_here(
        &mut self,
        flow: FlowState,
        definition: Arc<FlowType>,
        command: ControlCommand,
        ctx: &mut Context<Self>,
    ) -> Answer {
        let flow_id = flow.id;
        let addr = match self.flows.get(&flow_id) {
            Some(live) => Some(live.addr.clone()),
            None if !flow.status.is_terminal() => {
                Some(self.spawn_flow(flow.clone(), definition.clone(), StartMode::Recover, ctx))
            }
            None if command == ControlCommand::Retry && flow.status == FlowStatus::Failed => {
                Some(self.spawn_flow(flow.clone(), definition.clone(), StartMode::Idle, ctx))
            }
            None => None,
        };
        let cascade = (command == ControlCommand::Cancel).then(|| Cascade {
            supervisor: ctx.address(),
            store: self.store.clone(),
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
                .into_actor(self),
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::{FlowType, PhaseDefinition};
    use crate::model::NewFlow;

    fn flow(status: FlowStatus, owner: Option<&str>) -> FlowState {
        let definition = FlowType {
            name: "t".into(),
            version: 1,
            phases: vec![PhaseDefinition::new("a", "noop")],
        };
        let mut flow = FlowState::new_initialized(
            &definition,
            NewFlow {
                flow_type: "t".into(),
                input: serde_json::json!({}),
                parent_flow_id: None,
                master_flow_id: None,
                tenant: Tenant {
                    client_account_id: "acme".into(),
                    engagement_id: "e1".into(),
                },
                created_by: None,
                idempotency_key: None,
            },
        );
        flow.status = status;
        flow.owner_node = owner.map(str::to_owned);
        flow
    }

    #[test]
    fn a_single_node_and_own_flows_stay_local() {
        for status in [FlowStatus::Running, FlowStatus::Failed, FlowStatus::Paused] {
            for command in [ControlCommand::Pause, ControlCommand::Retry] {
                let other = flow(status, Some("b"));
                assert_eq!(route(&other, command, false, false), Route::Local);
                assert_eq!(route(&other, command, true, true), Route::Local);
            }
        }
        // Left by an older version: a live one is adopted at boot, a failed one by a retry.
        let legacy = flow(FlowStatus::Running, None);
        assert_eq!(
            route(&legacy, ControlCommand::Pause, false, true),
            Route::Local
        );
        let legacy = flow(FlowStatus::Failed, None);
        assert_eq!(
            route(&legacy, ControlCommand::Retry, false, true),
            Route::AdoptThenLocal
        );
    }

    #[test]
    fn live_flows_of_other_nodes_go_to_their_owner() {
        for status in [
            FlowStatus::Initialized,
            FlowStatus::Running,
            FlowStatus::Paused,
        ] {
            for command in [
                ControlCommand::Pause,
                ControlCommand::Resume,
                ControlCommand::Cancel,
                ControlCommand::Retry,
            ] {
                let other = flow(status, Some("b"));
                assert_eq!(route(&other, command, false, true), Route::Owner);
            }
        }
    }

    #[test]
    fn finished_flows_of_other_nodes_are_answered_here_and_a_failed_one_is_adopted_to_retry() {
        let failed = flow(FlowStatus::Failed, Some("b"));
        assert_eq!(
            route(&failed, ControlCommand::Retry, false, true),
            Route::AdoptThenLocal
        );
        assert_eq!(
            route(&failed, ControlCommand::Pause, false, true),
            Route::Local
        );
        for status in [FlowStatus::Completed, FlowStatus::Cancelled] {
            for command in [ControlCommand::Retry, ControlCommand::Cancel] {
                let other = flow(status, Some("b"));
                assert_eq!(route(&other, command, false, true), Route::Local);
            }
        }
    }
}
