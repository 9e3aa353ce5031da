//! Phase handlers: the code a phase runs. Rust programs that embed the runtime register their
//! own; the `builtin` module, built on this one, has the ones every runtime knows
//! (`HandlerSet::with_builtins`).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use chrono::Utc;
use futures_util::future::BoxFuture;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use crate::ids::{FlowId, Tenant};

/// Everything a handler may need about the attempt it runs.
#[derive(Clone, Debug)]
pub struct PhaseContext {
    pub flow_id: FlowId,
    pub master_flow_id: FlowId,
    pub parent_flow_id: Option<FlowId>,
    pub tenant: Tenant,
    pub flow_type: String,
    pub phase: String,
    /// The phase's `params` from its definition.
    pub params: Value,
    /// The flow's input.
    pub input: Arc<Value>,
    /// Outputs of the phases that have succeeded so far, by phase name.
    pub outputs: Map<String, Value>,
    /// 1 for the first attempt; a crash-interrupted attempt runs again with the same number.
    pub attempt: u32,
    /// True when this attempt may have run before (the flow was recovered from the store):
    /// handlers with durable side effects look for them before starting over.
    pub resumed: bool,
    /// `{flow_id}:{phase}:{attempt}`: lets side effects be made exactly-once.
    pub idempotency_key: String,
    /// Fired when the flow is cancelled or the attempt timed out; the task is aborted soon after.
    pub cancellation: CancellationToken,
    /// Long-running handlers call `beat()` so the runtime can tell slow from stuck.
    pub heartbeat: Heartbeat,
    /// Lets a long phase (a fan-out) move the flow's progress within the phase's weight.
    pub progress: ProgressReporter,
    /// Set when the phase has a fallback: how long a primary may wait for a taker (a worker on
    /// its queue) before it gives up as `handler_unavailable` and the fallback runs instead.
    pub unavailable_after: Option<std::time::Duration>,
}

impl PhaseContext {
    /// The context as code outside the process sees it (`command` stdin, `http` body, an
    /// `external` task). The field names are part of the handler contract.
    pub fn to_wire(&self) -> Value {
        serde_json::json!({
            "flow_id": self.flow_id,
            "master_flow_id": self.master_flow_id,
            "parent_flow_id": self.parent_flow_id,
            "client_account_id": self.tenant.client_account_id,
            "engagement_id": self.tenant.engagement_id,
            "flow_type": self.flow_type,
            "phase": self.phase,
            "params": self.params,
            "input": *self.input,
            "outputs": self.outputs,
            "attempt": self.attempt,
            "idempotency_key": self.idempotency_key,
        })
    }
}

/// Reports a running phase's completed fraction (0.0–1.0) to its flow. Reports are advisory:
/// the flow keeps the highest one and ignores those of attempts that are no longer current.
#[derive(Clone, Default)]
pub struct ProgressReporter(Option<Arc<dyn Fn(f64) + Send + Sync>>);

impl ProgressReporter {
    /// A reporter that calls `sink` with every fraction.
    pub fn new(sink: impl Fn(f64) + Send + Sync + 'static) -> Self {
        Self(Some(Arc::new(sink)))
    }

    /// Tells the flow that `fraction` of the phase is done.
    pub fn report(&self, fraction: f64) {
        if let Some(sink) = &self.0
            && fraction.is_finite()
        {
            sink(fraction.clamp(0.0, 1.0));
        }
    }
}

impl std::fmt::Debug for ProgressReporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProgressReporter")
    }
}

/// The last sign of life of a running attempt, in unix milliseconds.
#[derive(Clone, Debug, Default)]
pub struct Heartbeat(Arc<AtomicI64>);

impl Heartbeat {
    /// Records that the handler is still making progress.
    pub fn beat(&self) {
        self.0
            .store(Utc::now().timestamp_millis(), Ordering::Relaxed);
    }

    /// When the handler last called [`Heartbeat::beat`] (0 if never).
    pub fn last_beat_ms(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Where the flow goes after a phase succeeds.
#[derive(Clone, Debug, PartialEq)]
pub enum NextPhase {
    /// The definition decides (its `next_phase`, else the next phase in order).
    ByDefinition,
    /// A phase of the same flow type, chosen by the handler.
    Named(String),
    /// Finish the flow now; remaining phases are skipped.
    Finish,
}

/// A successful attempt's result.
#[derive(Clone, Debug, PartialEq)]
pub struct PhaseOutput {
    pub output: Value,
    pub next_phase: NextPhase,
}

impl PhaseOutput {
    /// An output that lets the definition pick the next phase.
    pub fn new(output: Value) -> Self {
        Self {
            output,
            next_phase: NextPhase::ByDefinition,
        }
    }
}

/// What kind of failure an attempt ended in; the state machine decides retry and fallback by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// It ran and failed; another attempt may succeed. Retried by the phase's policy.
    Retryable,
    /// It ran and failed in a way no retry can fix (bad parameters, a refused request).
    Fatal,
    /// Nobody could run it (no worker on the queue, the program or handler is missing, the
    /// target refuses connections): the phase's fallback takes over; without one the phase
    /// fails, since the same primary would be unavailable again.
    Unavailable,
    /// It ran past its deadline (or stopped heartbeating). Retried by the phase's policy.
    Timeout,
}

impl ErrorClass {
    /// Whether the phase's retry policy applies.
    pub fn is_retryable(self) -> bool {
        matches!(self, Self::Retryable | Self::Timeout)
    }

    /// Whether the phase's fallback (if it names one) runs the attempt instead.
    pub fn is_unavailable(self) -> bool {
        self == Self::Unavailable
    }
}

/// A failed attempt. Its `class` decides retry and fallback; `kind` is only the label the
/// failure journal and metrics show.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct HandlerError {
    /// Stable, machine-readable label: `handler_error`, `timeout`, `panic`, `bad_params`, ….
    pub kind: String,
    pub message: String,
    pub class: ErrorClass,
    /// Anything that helps diagnose the failure; lands in the failure journal.
    pub diagnostic: Value,
}

impl HandlerError {
    /// A failure of `class`, journaled as `kind`.
    pub fn new(class: ErrorClass, kind: &str, message: impl Into<String>) -> Self {
        Self {
            kind: kind.to_owned(),
            message: message.into(),
            class,
            diagnostic: Value::Null,
        }
    }

    /// A failure worth another attempt.
    pub fn retryable(kind: &str, message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Retryable, kind, message)
    }

    /// A failure no retry can fix (bad parameters, a refused request).
    pub fn fatal(kind: &str, message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Fatal, kind, message)
    }

    /// Nobody could run the attempt; journaled as `handler_unavailable`.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Unavailable, "handler_unavailable", message)
    }

    /// The attempt ran past its deadline, journaled as `kind` (`timeout`, `heartbeat_timeout`).
    pub fn timeout(kind: &str, message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Timeout, kind, message)
    }

    /// Whether the phase's retry policy applies.
    pub fn is_retryable(&self) -> bool {
        self.class.is_retryable()
    }

    /// Adds diagnostic data for the journal.
    pub fn with_diagnostic(mut self, diagnostic: Value) -> Self {
        self.diagnostic = diagnostic;
        self
    }
}

/// Result of one attempt.
pub type PhaseResult = Result<PhaseOutput, HandlerError>;

/// Code that runs a phase. It runs as its own task, never inside an actor's message handling.
pub trait PhaseHandler: Send + Sync + 'static {
    /// Runs one attempt.
    fn run(&self, context: PhaseContext) -> BoxFuture<'static, PhaseResult>;

    /// Whether an attempt only awaits: it never blocks its thread nor computes for long. Such
    /// an attempt runs beside its flow actor, on the actor's thread, which spares it two
    /// thread hops; any other runs on the handler pool, where blocking stalls no actor.
    fn only_awaits(&self) -> bool {
        false
    }
}

/// Marks a handler whose attempts only await (see [`PhaseHandler::only_awaits`]).
pub struct Awaiting<H>(pub H);

impl<H: PhaseHandler> PhaseHandler for Awaiting<H> {
    fn run(&self, context: PhaseContext) -> BoxFuture<'static, PhaseResult> {
        self.0.run(context)
    }

    fn only_awaits(&self) -> bool {
        true
    }
}

impl<F, Fut> PhaseHandler for F
where
    F: Fn(PhaseContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = PhaseResult> + Send + 'static,
{
    fn run(&self, context: PhaseContext) -> BoxFuture<'static, PhaseResult> {
        Box::pin(self(context))
    }
}

/// The handlers a runtime knows, by name. Built before the runtime starts and shared read-only;
/// `with_builtins` (in the `builtin` module, which depends on this one and not the other way)
/// starts one with the built-ins.
#[derive(Clone, Default)]
pub struct HandlerSet {
    handlers: HashMap<String, Arc<dyn PhaseHandler>>,
}

impl HandlerSet {
    /// Adds or replaces the handler called `name`.
    pub fn register(&mut self, name: impl Into<String>, handler: impl PhaseHandler) -> &mut Self {
        self.handlers.insert(name.into(), Arc::new(handler));
        self
    }

    /// The handler called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<dyn PhaseHandler>> {
        self.handlers.get(name).cloned()
    }

    /// Whether a definition may name `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.handlers.contains_key(name)
    }

    /// Names of all handlers, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<_> = self.handlers.keys().cloned().collect();
        names.sort();
        names
    }
}
