//! The `child_flows` handler: fan-out and fan-in. It starts one child flow per input, each with
//! `parent_flow_id` = this flow and `master_flow_id` = the root of the tree, waits until every
//! child is terminal, and succeeds or fails by the phase's policy. While it waits, the master's
//! progress moves with its children's.
//!
//! Children are created with the idempotency key `{flow_id}:{phase}:child:{index}`, so an
//! attempt re-run after a crash finds the children it already started instead of starting them
//! twice, and a retried attempt re-attaches to them (retrying the failed ones).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Recipient;
use futures_util::StreamExt as _;
use futures_util::future::BoxFuture;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::sync::broadcast::error::RecvError;
use tracing::{debug, info};

use crate::error::RuntimeError;
use crate::events::EventFanout;
use crate::flow::ControlCommand;
use crate::handler::{HandlerError, PhaseContext, PhaseHandler, PhaseOutput, PhaseResult};
use crate::ids::FlowId;
use crate::model::{FlowStatus, NewFlow, PhaseStatus};
use crate::store::FlowStore;
use crate::supervisor::{ControlFlow, CreateFlow};

/// Children created concurrently.
const CREATE_CONCURRENCY: usize = 32;
/// Without any event for this long, the children are re-read from the store.
const RESYNC_EVERY: Duration = Duration::from_secs(5);
/// Progress reports at most this often (each one is a committed transition of the master).
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// What a `child_flows` phase may ask of the supervisor: create flows and control them. Nothing
/// else of the supervisor is reachable from a handler.
#[derive(Clone)]
pub struct FlowStarter {
    pub create: Recipient<CreateFlow>,
    pub control: Recipient<ControlFlow>,
}

/// Runs `child_flows` phases through the supervisor.
pub struct ChildFlowsHandler {
    supervisor: FlowStarter,
    store: Arc<dyn FlowStore>,
    fanout: EventFanout,
    max_children: usize,
}

impl ChildFlowsHandler {
    /// Children are created by `supervisor` and watched on `fanout`, with `store` as the truth;
    /// one phase starts at most `max_children`.
    pub fn new(
        supervisor: FlowStarter,
        store: Arc<dyn FlowStore>,
        fanout: EventFanout,
        max_children: usize,
    ) -> Self {
        Self {
            supervisor,
            store,
            fanout,
            max_children,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChildParams {
    flow_type: String,
    #[serde(default)]
    inputs: Option<Vec<Value>>,
    /// `phase` or `phase/json/pointer`: an earlier phase's output (or a part of it), an array.
    #[serde(default)]
    inputs_from: Option<String>,
    /// `count` children, each with input `{"index": i}`.
    #[serde(default)]
    count: Option<usize>,
    #[serde(default)]
    policy: Policy,
}

/// When the fan-out phase succeeds.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum Policy {
    /// Every child must complete.
    #[default]
    All,
    /// At least one child must complete.
    Any,
}

struct Child {
    index: usize,
    status: FlowStatus,
    progress: f64,
}

fn bad_params(message: impl Into<String>) -> HandlerError {
    HandlerError::fatal("bad_params", message)
}

fn unavailable(error: impl std::fmt::Display) -> HandlerError {
    HandlerError::retryable("runtime_unavailable", error.to_string())
}

/// The children's inputs, from the params or from an earlier phase's output. The count is
/// checked against `max` before any input is built, so a huge fan-out costs nothing.
fn child_inputs(
    params: &ChildParams,
    ctx: &PhaseContext,
    max: usize,
) -> Result<Vec<Value>, HandlerError> {
    let too_many = |asked: usize| bad_params(format!("{asked} children asked for; at most {max}"));
    let asked = match &params.inputs {
        Some(inputs) => inputs.len(),
        None => params.count.unwrap_or_default(),
    };
    if asked > max {
        return Err(too_many(asked));
    }
    let inputs = if let Some(inputs) = &params.inputs {
        inputs.clone()
    } else if let Some(source) = &params.inputs_from {
        let (phase, pointer) = match source.split_once('/') {
            Some((phase, rest)) => (phase, format!("/{rest}")),
            None => (source.as_str(), String::new()),
        };
        let output = ctx.outputs.get(phase).ok_or_else(|| {
            bad_params(format!(
                "`inputs_from`: phase `{phase}` has no output (yet)"
            ))
        })?;
        match output.pointer(&pointer) {
            Some(Value::Array(items)) if items.len() > max => return Err(too_many(items.len())),
            Some(Value::Array(items)) => items.clone(),
            _ => {
                return Err(bad_params(format!(
                    "`inputs_from`: `{source}` is not an array"
                )));
            }
        }
    } else if let Some(count) = params.count {
        (0..count).map(|index| json!({ "index": index })).collect()
    } else {
        return Err(bad_params("give one of `inputs`, `inputs_from` or `count`"));
    };
    Ok(inputs)
}

impl PhaseHandler for ChildFlowsHandler {
    fn run(&self, ctx: PhaseContext) -> BoxFuture<'static, PhaseResult> {
        let supervisor = self.supervisor.clone();
        let store = self.store.clone();
        let fanout = self.fanout.clone();
        let max_children = self.max_children;
        Box::pin(async move {
            let params: ChildParams = serde_json::from_value(ctx.params.clone())
                .map_err(|e| bad_params(format!("invalid `child_flows` params: {e}")))?;
            if params.flow_type == ctx.flow_type {
                // Registration refuses this; a definition stored before that rule still must
                // not fan out forever.
                return Err(bad_params(format!(
                    "`{}` cannot start children of its own type",
                    ctx.flow_type
                )));
            }
            let inputs = child_inputs(&params, &ctx, max_children)?;
            // Subscribed before the children exist, so none of their events is missed. The
            // children are in this flow's tree: only the tree's commits wake the attempt, not
            // every commit of the runtime.
            let (mut events, _) =
                fanout.subscribe_tree(ctx.master_flow_id, fanout.published_through());
            let mut children = start_children(&supervisor, &ctx, &params.flow_type, inputs).await?;
            if ctx.attempt > 1 {
                retry_failed(&supervisor, &ctx, &mut children).await?;
            }
            info!(
                children = children.len(),
                "children started; waiting for them"
            );
            let mut last_report: Option<(Instant, f64)> = None;
            loop {
                let fraction = if children.is_empty() {
                    1.0
                } else {
                    children.values().map(|c| c.progress).sum::<f64>()
                        / (100.0 * children.len() as f64)
                };
                let due = last_report.is_none_or(|(at, reported)| {
                    fraction > reported && at.elapsed() >= PROGRESS_EVERY
                });
                if due {
                    ctx.progress.report(fraction);
                    last_report = Some((Instant::now(), fraction));
                }
                if children.values().all(|c| c.status.is_terminal()) {
                    break;
                }
                let wait = if last_report.is_some_and(|(_, reported)| fraction > reported) {
                    PROGRESS_EVERY
                } else {
                    RESYNC_EVERY
                };
                match tokio::time::timeout(wait, events.recv()).await {
                    Ok(Ok(batch)) => {
                        for event in batch.iter() {
                            if let Some(child) = children.get_mut(&event.flow_id) {
                                child.status = event.status;
                                child.progress = child.progress.max(event.progress_percentage);
                            }
                        }
                    }
                    Ok(Err(RecvError::Lagged(missed))) => {
                        debug!(missed, "fell behind the event fan-out; re-reading children");
                        resync(&store, &mut children).await?;
                    }
                    Ok(Err(RecvError::Closed)) => return Err(unavailable("event fan-out closed")),
                    Err(_) if wait == RESYNC_EVERY => resync(&store, &mut children).await?,
                    Err(_) => {}
                }
            }
            fan_in(&store, params.policy, &children).await
        })
    }
}

/// Creates (or finds, by idempotency key) every child.
async fn start_children(
    supervisor: &FlowStarter,
    ctx: &PhaseContext,
    flow_type: &str,
    inputs: Vec<Value>,
) -> Result<HashMap<FlowId, Child>, HandlerError> {
    let creates = inputs.into_iter().enumerate().map(|(index, input)| {
        let request = NewFlow {
            flow_type: flow_type.to_owned(),
            input,
            parent_flow_id: Some(ctx.flow_id),
            master_flow_id: None,
            tenant: ctx.tenant.clone(),
            created_by: None,
            idempotency_key: Some(format!("{}:{}:child:{index}", ctx.flow_id, ctx.phase)),
        };
        let create = supervisor.create.clone();
        async move { (index, create.send(CreateFlow(request)).await) }
    });
    let mut created = futures_util::stream::iter(creates).buffer_unordered(CREATE_CONCURRENCY);
    let mut children = HashMap::new();
    while let Some((index, result)) = created.next().await {
        let created = match result.map_err(unavailable)? {
            Ok(created) => created,
            Err(RuntimeError::UnknownFlowType(name)) => {
                return Err(bad_params(format!(
                    "children's flow type `{name}` is not registered"
                )));
            }
            Err(RuntimeError::IdempotencyMismatch(key)) => {
                return Err(HandlerError::fatal(
                    "child_conflict",
                    format!("child {key} exists with another input; the fan-out's inputs changed"),
                ));
            }
            Err(error) => return Err(unavailable(error)),
        };
        let flow = created.flow;
        let progress = if flow.status == FlowStatus::Completed {
            100.0
        } else {
            flow.progress_percentage
        };
        children.insert(
            flow.id,
            Child {
                index,
                status: flow.status,
                progress,
            },
        );
    }
    Ok(children)
}

/// A retried fan-out gives its failed children another run too.
async fn retry_failed(
    supervisor: &FlowStarter,
    ctx: &PhaseContext,
    children: &mut HashMap<FlowId, Child>,
) -> Result<(), HandlerError> {
    for (id, child) in children.iter_mut() {
        if child.status != FlowStatus::Failed {
            continue;
        }
        let retried = supervisor
            .control
            .send(ControlFlow {
                flow_id: *id,
                tenant: ctx.tenant.clone(),
                command: ControlCommand::Retry,
            })
            .await
            .map_err(unavailable)?;
        match retried {
            Ok(flow) => child.status = flow.status,
            Err(RuntimeError::IllegalTransition { status }) => child.status = status,
            Err(error) => return Err(unavailable(error)),
        }
    }
    Ok(())
}

/// Re-reads the children that are not known to be terminal.
async fn resync(
    store: &Arc<dyn FlowStore>,
    children: &mut HashMap<FlowId, Child>,
) -> Result<(), HandlerError> {
    for (id, child) in children.iter_mut() {
        if child.status.is_terminal() {
            continue;
        }
        if let Some(flow) = store.load_flow(*id).await.map_err(unavailable)? {
            child.status = flow.status;
            child.progress = child.progress.max(flow.progress_percentage);
        }
    }
    Ok(())
}

/// The phase's output: every child's id, status and phase outputs, in input order.
async fn fan_in(
    store: &Arc<dyn FlowStore>,
    policy: Policy,
    children: &HashMap<FlowId, Child>,
) -> PhaseResult {
    let mut ordered: Vec<_> = children.iter().collect();
    ordered.sort_by_key(|(_, c)| c.index);
    let mut listed = Vec::with_capacity(ordered.len());
    let mut completed = 0;
    let mut unsuccessful = Vec::new();
    for (id, child) in ordered {
        let outputs: Map<String, Value> = match store.load_flow(*id).await.map_err(unavailable)? {
            Some(flow) => flow
                .phases
                .into_iter()
                .filter(|p| p.status == PhaseStatus::Succeeded)
                .filter_map(|p| Some((p.name, p.output?)))
                .collect(),
            None => Map::new(),
        };
        if child.status == FlowStatus::Completed {
            completed += 1;
        } else {
            unsuccessful.push(json!({ "flow_id": id, "status": child.status }));
        }
        listed.push(json!({
            "flow_id": id,
            "index": child.index,
            "status": child.status,
            "outputs": outputs,
        }));
    }
    let total = listed.len();
    let output = json!({
        "children": listed,
        "completed": completed,
        "unsuccessful": unsuccessful.len(),
    });
    let succeeded = match policy {
        Policy::All => unsuccessful.is_empty(),
        Policy::Any => completed > 0 || total == 0,
    };
    if succeeded {
        Ok(PhaseOutput::new(output))
    } else {
        let message = format!(
            "{} of {total} children did not complete (policy `{}`)",
            unsuccessful.len(),
            if policy == Policy::All { "all" } else { "any" }
        );
        Err(HandlerError::retryable("children_failed", message)
            .with_diagnostic(json!({ "unsuccessful": unsuccessful })))
    }
}
