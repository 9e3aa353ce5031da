//! Resuming stored flows: every non-terminal one at boot, and in the periodic sweep those
//! without a live actor that have been quiet for an interval.

use std::collections::HashMap;
use std::sync::Arc;

use actix::prelude::*;
use tracing::{info, warn};

use super::spawn::definition_of;
use super::{ControlFlow, ReconcileOwnership, RecoverFlows, Supervisor};
use crate::definition::FlowType;
use crate::error::RuntimeError;
use crate::flow::StopFlow;
use crate::flow::{ControlCommand, StartMode};
use crate::ids::FlowId;
use crate::model::{FlowState, FlowStatus, now};
use crate::persistence::Fence;
use crate::registry::Registry;
use crate::store::FlowStore;

/// Most flows one stored-flow sweep adopts; the next sweep takes the rest.
const SWEEP_LIMIT: u32 = 1000;

impl Handler<RecoverFlows> for Supervisor {
    type Result = ResponseActFuture<Self, Result<usize, RuntimeError>>;

    fn handle(&mut self, message: RecoverFlows, _: &mut Self::Context) -> Self::Result {
        let began = self.stale_reads.begin();
        let store = self.store.clone();
        let claimed = message.claimed.is_some();
        if let Some(ids) = &message.claimed {
            // Claimed under a new epoch: an actor still live here belongs to an earlier
            // ownership of this node, and its writes would be fenced.
            for id in ids {
                self.retire(*id, "claimed again under a newer epoch");
            }
        }
        let candidates = async move {
            if let Some(ids) = message.claimed {
                return Ok(Some(ids));
            }
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
                    if claimed && let Ok(started) = &result {
                        info!(flows = started, "flows taken over from a dead node resumed");
                        // Controls sent to the dead owner wait for this node now.
                        if let Some(remote) = &act.remote {
                            remote.wake();
                        }
                    }
                    result
                }),
        )
    }
}

impl Handler<ReconcileOwnership> for Supervisor {
    type Result = ResponseActFuture<Self, Result<usize, RuntimeError>>;

    fn handle(&mut self, _: ReconcileOwnership, _: &mut Self::Context) -> Self::Result {
        let live: Vec<FlowId> = self.flows.keys().copied().collect();
        let store = self.store.clone();
        let lost = async move { store.not_owned(&live).await };
        Box::pin(lost.into_actor(self).map(|lost, act, _| {
            let lost = lost?;
            let mut stopped = 0;
            for id in lost {
                if act.retire(id, "another node owns the flow now") {
                    stopped += 1;
                }
            }
            if stopped > 0 {
                warn!(
                    flows = stopped,
                    "actors of flows taken over by other nodes stopped"
                );
            }
            Ok(stopped)
        }))
    }
}

impl Supervisor {
    /// Stops the live actor of `flow_id`, if any, without a restart: from now on none of its
    /// writes are taken. Whether there was one.
    pub(super) fn retire(&mut self, flow_id: FlowId, reason: &str) -> bool {
        let Some(live) = self.flows.remove(&flow_id) else {
            return false;
        };
        self.stale_reads.stopped(flow_id);
        self.persistence.do_send(Fence {
            flow_id,
            writer: None,
        });
        // Its late stop notice matches no live generation.
        live.addr.do_send(StopFlow);
        warn!(flow_id = %flow_id, reason, "flow actor stopped: this node no longer runs the flow");
        true
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
            if !self.store.owns(&flow) {
                // Another node took it over since it was listed: its owner runs it.
                info!(flow_id = %flow_id, owner = ?flow.owner_node, "flow owned by another node; not revived");
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
