//! The flow actor: owns one live flow. Its mailbox drives phase execution; handlers run as their
//! own tasks and report back with [`PhaseFinished`], so the mailbox never blocks on phase work.
//! Every transition is committed (and acked) before its effect — the next phase — is carried out.

pub mod messages;

use std::any::Any;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use serde_json::Map;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::definition::FlowType;
use crate::error::RuntimeError;
#[cfg(feature = "faults")]
use crate::faults::FaultPlan;
use crate::handler::{
    ErrorClass, HandlerError, HandlerSet, Heartbeat, PhaseContext, ProgressReporter,
};
use crate::handler_pool::HandlerPool;
use crate::machine::{self, Effect, Rejected, Step};
use crate::metrics::RuntimeMetrics;
use crate::model::{FlowState, PhaseStatus, now};
use crate::persistence::{Persist, PersistenceActor};
use crate::status_reason;
use crate::store::{TransitionWrite, Write};
pub use messages::{
    Control, ControlCommand, FlowStopped, PhaseFinished, PhaseProgress, Ping, Pong, StopCause,
    StopFlow,
};

/// What every flow actor shares: handlers, the writer, and whom to tell when it stops.
#[derive(Clone)]
pub struct FlowEnv {
    pub handlers: Arc<HandlerSet>,
    pub persistence: Addr<PersistenceActor>,
    pub stopped: Recipient<FlowStopped>,
    /// Deadline of an attempt whose phase names no `timeout_s`.
    pub default_timeout: Duration,
    /// Phase attempts one flow may start in all: a `next_phase` loop fails the flow past it.
    pub max_transitions: u32,
    /// Where handler tasks run: never on a flow actor's arbiter.
    pub handler_pool: Arc<HandlerPool>,
    pub metrics: Arc<RuntimeMetrics>,
    /// Test-only fault injection (cargo feature `faults`).
    #[cfg(feature = "faults")]
    pub faults: Arc<FaultPlan>,
}

/// How a new actor begins.
pub enum StartMode {
    /// The creating transition is committed already; carry out its effect.
    Run(Effect),
    /// Rebuild from the stored state: after a crash, a restart or at boot.
    Recover,
    /// [`StartMode::Recover`] after the health actor found the previous life silent: the
    /// restart (what it saw) is journaled and streamed first, in the same write.
    RestartedSilent(String),
    /// Do nothing until told (a terminal flow woken up for `retry`).
    Idle,
}

struct RunningAttempt {
    phase: String,
    attempt: u32,
    fallback: bool,
    started: std::time::Instant,
    cancellation: CancellationToken,
    abort: tokio::task::AbortHandle,
    heartbeat: Heartbeat,
}

impl RunningAttempt {
    /// Ends the attempt: the handler is told (its work is void) and its task aborted.
    fn stop(&self) {
        self.cancellation.cancel();
        self.abort.abort();
    }

    /// Drops the attempt without ending it: the actor stops, and its next life runs the same
    /// attempt again (e.g. re-attaches to the same external task).
    fn abandon(&self) {
        self.abort.abort();
    }
}

type Reply = oneshot::Sender<Result<FlowState, RuntimeError>>;

struct Outgoing {
    write: TransitionWrite,
    effect: Effect,
    /// For control requests: the caller and the flow as this transition left it.
    reply: Option<(Reply, FlowState)>,
}

/// One live flow.
pub struct FlowActor {
    flow: FlowState,
    definition: Arc<FlowType>,
    env: Arc<FlowEnv>,
    start: Option<StartMode>,
    generation: u64,
    in_flight: Option<RunningAttempt>,
    /// Transitions waiting for the write ahead of them: one write in flight keeps the stored
    /// history a prefix of the in-memory one, whatever fails.
    outbox: VecDeque<Outgoing>,
    writing: bool,
    /// Told to the supervisor on stop; a stop nobody explained is a fault.
    stop_cause: StopCause,
    /// Rebuilt from the store: the next attempt it runs may have run before.
    resuming: bool,
}

impl FlowActor {
    /// `generation` tells the supervisor which life of the flow a stop notice is about.
    pub fn new(
        flow: FlowState,
        definition: Arc<FlowType>,
        env: Arc<FlowEnv>,
        start: StartMode,
        generation: u64,
    ) -> Self {
        Self {
            flow,
            definition,
            env,
            start: Some(start),
            generation,
            in_flight: None,
            outbox: VecDeque::new(),
            writing: false,
            stop_cause: StopCause::Fault("stopped unexpectedly".into()),
            resuming: false,
        }
    }

    /// Queues a step's writes; its effect follows their commit. Empty steps act at once.
    fn apply(&mut self, mut step: Step, reply: Option<Reply>, ctx: &mut Context<Self>) {
        if step.is_empty() && self.outbox.is_empty() && !self.writing {
            if let Some(reply) = reply {
                let _ = reply.send(Ok(self.flow.clone()));
            }
            self.carry_out(step.effect, ctx);
            return;
        }
        // From what this actor holds: no read on the way to the commit.
        status_reason::stamp(
            &mut step.events,
            &self.flow,
            &self.definition,
            step.failure.as_ref(),
        );
        let (write, effect) = step.into_write(&self.flow);
        let reply = reply.map(|reply| (reply, self.flow.clone()));
        self.outbox.push_back(Outgoing {
            write,
            effect,
            reply,
        });
        self.pump(ctx);
    }

    fn pump(&mut self, ctx: &mut Context<Self>) {
        if self.writing || matches!(self.stop_cause, StopCause::Finished | StopCause::Replaced) {
            return;
        }
        let Some(outgoing) = self.outbox.pop_front() else {
            return;
        };
        self.writing = true;
        let Outgoing {
            write,
            effect,
            reply,
        } = outgoing;
        let failure_kind = write.failure.as_ref().map(|f| f.error_kind.clone());
        let commit = self.env.persistence.send(Persist {
            write: Write::Transition(write),
            writer: Some(self.generation),
        });
        ctx.spawn(commit.into_actor(self).map(move |result, act, ctx| {
            act.writing = false;
            let result = result.map_err(RuntimeError::from).and_then(|r| r.map_err(RuntimeError::from));
            match result {
                Ok(()) => {
                    if let Some(kind) = failure_kind {
                        act.env.metrics.failure(&kind);
                    }
                    if matches!(effect, Effect::RetryAfter { .. }) {
                        act.env.metrics.retry();
                    }
                    if let Some((reply, flow)) = reply {
                        let _ = reply.send(Ok(flow));
                    }
                    act.carry_out(effect, ctx);
                    act.pump(ctx);
                }
                Err(RuntimeError::Fenced) => {
                    // A newer life of this flow owns it now: leave without writing or restarting.
                    warn!(flow_id = %act.flow.id, "replaced by a newer actor; stopping");
                    act.stop_cause = StopCause::Replaced;
                    ctx.stop();
                }
                Err(error) => {
                    act.stop_cause = match &error {
                        // Refused for what it holds: the same write would be refused again, so
                        // the restart counts toward the flow's restart intensity (no loop).
                        RuntimeError::WriteRefused(reason) => StopCause::Fault(format!("write refused: {reason}")),
                        _ => StopCause::StoreUnavailable(error.to_string()),
                    };
                    // The stored state is the truth: stop and let the supervisor rebuild from it.
                    error!(flow_id = %act.flow.id, %error, "transition not committed; restarting from stored state");
                    if let Some((reply, _)) = reply {
                        let _ = reply.send(Err(error));
                    }
                    for pending in act.outbox.drain(..) {
                        if let Some((reply, _)) = pending.reply {
                            let _ = reply.send(Err(RuntimeError::Unavailable("transition not committed".into())));
                        }
                    }
                    ctx.stop();
                }
            }
        }));
    }

    fn carry_out(&mut self, effect: Effect, ctx: &mut Context<Self>) {
        match effect {
            Effect::None => {}
            Effect::RunPhase { phase, attempt } => self.run_attempt(phase, attempt, false, ctx),
            Effect::RunFallback { phase, attempt } => self.run_attempt(phase, attempt, true, ctx),
            Effect::RetryAfter { phase, delay } => {
                ctx.run_later(delay, move |act, ctx| {
                    match machine::retry_due(&mut act.flow, &act.definition, &phase, now()) {
                        Ok(step) => act.apply(step, None, ctx),
                        Err(rejected) => {
                            debug!(flow_id = %act.flow.id, %rejected, "retry no longer due")
                        }
                    }
                });
            }
            Effect::Stop => {
                info!(flow_id = %self.flow.id, status = %self.flow.status, "flow finished");
                self.stop_cause = StopCause::Finished;
                ctx.stop();
            }
        }
    }

    /// Starts an attempt as its own task, with the phase's handler or its fallback; the result
    /// comes back as [`PhaseFinished`].
    fn run_attempt(
        &mut self,
        phase: String,
        attempt: u32,
        fallback: bool,
        ctx: &mut Context<Self>,
    ) {
        let current = self
            .flow
            .current()
            .map(|(_, p)| (p.name.as_str(), p.attempt, p.status));
        if current != Some((phase.as_str(), attempt, PhaseStatus::Running))
            || self.in_flight.is_some()
            || self.flow.status.is_terminal()
        {
            debug!(flow_id = %self.flow.id, %phase, attempt, "attempt no longer current; not started");
            return;
        }
        let Some(definition) = self.definition.phase(&phase) else {
            return;
        };
        let span = info_span!("phase", flow_id = %self.flow.id, phase = %phase, attempt, fallback);
        let (handler_name, params) = match (&definition.fallback, fallback) {
            (Some(name), true) => (
                name.as_str(),
                definition
                    .fallback_params
                    .clone()
                    .unwrap_or_else(|| definition.params.clone()),
            ),
            _ => (definition.handler.as_str(), definition.params.clone()),
        };
        let Some(handler) = self.env.handlers.get(handler_name) else {
            let error = HandlerError::new(
                ErrorClass::Unavailable,
                "handler_missing",
                format!("no handler `{handler_name}` is registered in this runtime"),
            );
            ctx.notify(PhaseFinished {
                phase,
                attempt,
                fallback,
                result: Err(error),
            });
            return;
        };
        let progress = {
            let flow = ctx.address();
            let phase = phase.clone();
            ProgressReporter::new(move |fraction| {
                flow.do_send(PhaseProgress {
                    phase: phase.clone(),
                    attempt,
                    fraction,
                })
            })
        };
        let unavailable_after = match (&definition.fallback, fallback) {
            (Some(_), false) => definition.fallback_after_s.map(Duration::from_secs),
            _ => None,
        };
        let cancellation = CancellationToken::new();
        let heartbeat = Heartbeat::default();
        heartbeat.beat();
        let context = PhaseContext {
            flow_id: self.flow.id,
            master_flow_id: self.flow.master_flow_id,
            parent_flow_id: self.flow.parent_flow_id,
            tenant: self.flow.tenant(),
            flow_type: self.flow.flow_type.clone(),
            phase: phase.clone(),
            params,
            input: self.flow.input.clone(),
            outputs: self.outputs(),
            attempt,
            resumed: std::mem::take(&mut self.resuming),
            idempotency_key: format!("{}:{}:{}", self.flow.id, phase, attempt),
            cancellation: cancellation.clone(),
            heartbeat: heartbeat.clone(),
            progress,
            unavailable_after,
        };
        let timeout = definition
            .timeout_s
            .map_or(self.env.default_timeout, Duration::from_secs);
        // The deadline counts from when the handler starts running, not from when it was
        // queued for a handler thread: a backlog costs latency, never a timed-out attempt.
        let (running, started) = oneshot::channel();
        let queued_at = std::time::Instant::now();
        let run = handler.run(context);
        let attempt_task = async move {
            let _ = running.send(());
            run.await
        }
        .instrument(span.clone());
        let task = if handler.only_awaits() {
            tokio::spawn(attempt_task)
        } else {
            self.env.handler_pool.handle().spawn(attempt_task)
        };
        let abort = task.abort_handle();
        let on_timeout = (cancellation.clone(), task.abort_handle());
        let flow = ctx.address();
        let reported_phase = phase.clone();
        let metrics = self.env.metrics.clone();
        tokio::spawn(
            async move {
                // Dropped unsent only if the task was aborted before it ran; the join says how.
                if started.await.is_ok() {
                    metrics.handler_queued(queued_at.elapsed().as_secs_f64());
                }
                let result = match tokio::time::timeout(timeout, task).await {
                    Ok(Ok(result)) => result,
                    Ok(Err(join)) if join.is_panic() => {
                        let message = panic_message(join.into_panic());
                        error!(%message, "phase handler panicked");
                        Err(HandlerError::retryable("panic", message))
                    }
                    Ok(Err(_)) => Err(HandlerError::fatal("cancelled", "the attempt was aborted")),
                    Err(_) => {
                        on_timeout.0.cancel();
                        on_timeout.1.abort();
                        Err(HandlerError::timeout(
                            "timeout",
                            format!("no result within {}s", timeout.as_secs_f64()),
                        ))
                    }
                };
                flow.do_send(PhaseFinished {
                    phase: reported_phase,
                    attempt,
                    fallback,
                    result,
                });
            }
            .instrument(span),
        );
        self.in_flight = Some(RunningAttempt {
            phase,
            attempt,
            fallback,
            started: std::time::Instant::now(),
            cancellation,
            abort,
            heartbeat,
        });
    }

    /// A running attempt whose handler stopped heartbeating past its phase's
    /// `heartbeat_timeout_s` is stuck: cancel it and fail the attempt (retryable).
    fn check_heartbeat(&mut self, ctx: &mut Context<Self>) {
        let Some(attempt) = &self.in_flight else {
            return;
        };
        let Some(limit_s) = self
            .definition
            .phase(&attempt.phase)
            .and_then(|p| p.heartbeat_timeout_s)
        else {
            return;
        };
        let silent_ms = chrono::Utc::now().timestamp_millis() - attempt.heartbeat.last_beat_ms();
        if silent_ms <= (limit_s as i64).saturating_mul(1000) {
            return;
        }
        let Some(stuck) = self.in_flight.take() else {
            return;
        };
        stuck.stop();
        warn!(flow_id = %self.flow.id, phase = %stuck.phase, attempt = stuck.attempt, silent_ms, "attempt stopped heartbeating");
        ctx.notify(PhaseFinished {
            phase: stuck.phase,
            attempt: stuck.attempt,
            fallback: stuck.fallback,
            result: Err(HandlerError::timeout(
                "heartbeat_timeout",
                format!(
                    "no heartbeat for {:.1}s (limit {limit_s}s)",
                    silent_ms as f64 / 1000.0
                ),
            )),
        });
    }

    /// Test-only: stops handling the mailbox for a while, as a stuck actor would.
    #[cfg(feature = "faults")]
    fn freeze_if_planned(&mut self, ctx: &mut Context<Self>) {
        if let Some(duration) = self.env.faults.take_freeze(self.flow.id) {
            warn!(flow_id = %self.flow.id, ?duration, "fault injection: mailbox frozen");
            ctx.wait(actix::clock::sleep(duration).into_actor(self));
        }
    }

    fn outputs(&self) -> Map<String, serde_json::Value> {
        self.flow
            .phases
            .iter()
            .filter(|p| p.status == PhaseStatus::Succeeded)
            .filter_map(|p| Some((p.name.clone(), p.output.clone()?)))
            .collect()
    }
}

fn panic_message(payload: Box<dyn Any + Send>) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}

impl Actor for FlowActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        #[cfg(feature = "faults")]
        self.freeze_if_planned(ctx);
        match self.start.take() {
            Some(StartMode::Run(effect)) => self.carry_out(effect, ctx),
            Some(StartMode::Recover) => {
                self.resuming = true;
                let step = machine::recover(&mut self.flow, &self.definition, now());
                debug!(flow_id = %self.flow.id, status = %self.flow.status, "flow recovered");
                self.apply(step, None, ctx);
            }
            Some(StartMode::RestartedSilent(detail)) => {
                self.resuming = true;
                let step = machine::restarted(&mut self.flow, &self.definition, &detail, now());
                info!(flow_id = %self.flow.id, %detail, "flow restarted after a missed ping");
                self.apply(step, None, ctx);
            }
            Some(StartMode::Idle) | None => {}
        }
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        if let Some(attempt) = self.in_flight.take() {
            if self.flow.status.is_terminal() {
                attempt.stop();
            } else {
                attempt.abandon();
            }
        }
        self.env.stopped.do_send(FlowStopped {
            flow_id: self.flow.id,
            generation: self.generation,
            cause: self.stop_cause.clone(),
        });
    }
}

impl Handler<PhaseFinished> for FlowActor {
    type Result = ();

    fn handle(&mut self, message: PhaseFinished, ctx: &mut Self::Context) {
        let PhaseFinished {
            phase,
            attempt,
            fallback,
            result,
        } = message;
        if self
            .in_flight
            .as_ref()
            .is_some_and(|r| r.phase == phase && r.attempt == attempt)
            && let Some(finished) = self.in_flight.take()
        {
            let seconds = finished.started.elapsed().as_secs_f64();
            self.env
                .metrics
                .phase_finished(&self.flow.flow_type, &phase, seconds);
        }
        if let Err(error) = &result {
            warn!(flow_id = %self.flow.id, %phase, attempt, fallback, kind = %error.kind, class = ?error.class, message = %error.message, "phase attempt failed");
        }
        let step = machine::phase_finished(
            &mut self.flow,
            &self.definition,
            (&phase, attempt, fallback),
            result,
            self.env.max_transitions,
            now(),
        );
        match step {
            Ok(step) => self.apply(step, None, ctx),
            Err(rejected) => debug!(flow_id = %self.flow.id, %rejected, "late result ignored"),
        }
    }
}

impl Handler<PhaseProgress> for FlowActor {
    type Result = ();

    fn handle(&mut self, message: PhaseProgress, ctx: &mut Self::Context) {
        let step = machine::phase_progress(
            &mut self.flow,
            &self.definition,
            &message.phase,
            message.attempt,
            message.fraction,
            now(),
        );
        match step {
            Ok(step) => self.apply(step, None, ctx),
            Err(rejected) => debug!(flow_id = %self.flow.id, %rejected, "late progress ignored"),
        }
    }
}

impl Handler<Control> for FlowActor {
    type Result = ResponseFuture<Result<FlowState, RuntimeError>>;

    fn handle(&mut self, Control(command): Control, ctx: &mut Self::Context) -> Self::Result {
        let now = now();
        let in_flight = self.in_flight.is_some();
        let result = machine::control(&mut self.flow, &self.definition, command, in_flight, now);
        match result {
            Ok(step) => {
                info!(flow_id = %self.flow.id, ?command, status = %self.flow.status, "lifecycle request applied");
                if command == ControlCommand::Cancel
                    && let Some(attempt) = self.in_flight.take()
                {
                    attempt.stop();
                }
                let (reply, answer) = oneshot::channel();
                self.apply(step, Some(reply), ctx);
                Box::pin(async move {
                    answer.await.unwrap_or_else(|_| {
                        Err(RuntimeError::Unavailable("flow actor stopped".into()))
                    })
                })
            }
            Err(Rejected::IllegalTransition(status)) => {
                Box::pin(async move { Err(RuntimeError::IllegalTransition { status }) })
            }
            Err(rejected @ Rejected::Stale { .. }) => {
                Box::pin(async move { Err(RuntimeError::Unavailable(rejected.to_string())) })
            }
        }
    }
}

impl Handler<Ping> for FlowActor {
    type Result = MessageResult<Ping>;

    fn handle(&mut self, _: Ping, ctx: &mut Self::Context) -> Self::Result {
        #[cfg(feature = "faults")]
        self.freeze_if_planned(ctx);
        self.check_heartbeat(ctx);
        MessageResult(Pong {
            flow_id: self.flow.id,
            status: self.flow.status,
            in_flight: self
                .in_flight
                .as_ref()
                .map(|r| (r.phase.clone(), r.attempt)),
            last_heartbeat_ms: self.in_flight.as_ref().map(|r| r.heartbeat.last_beat_ms()),
        })
    }
}

impl Handler<StopFlow> for FlowActor {
    type Result = ();

    fn handle(&mut self, _: StopFlow, ctx: &mut Self::Context) {
        ctx.stop();
    }
}
