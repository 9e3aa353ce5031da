//! The pure state machine of a flow: (state, input) → transition. No actors, no I/O, no clock
//! (the caller passes `now`), so every rule of the lifecycle is unit-tested here.
//!
//! Each function validates first and mutates only when the input is accepted; an accepted input
//! yields a [`Step`]: the events to commit (with their `seq`), the phase rows it touched, a
//! failure-journal row, and the one [`Effect`] the actor carries out after the commit.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::definition::FlowType;
use crate::events::{EventKind, FlowEvent};
use crate::handler::{HandlerError, NextPhase, PhaseOutput, PhaseResult};
use crate::limits::{json_storable, make_storable, storable_text};
use crate::model::{FailureRecord, FlowState, FlowStatus, PhaseStatus};
use crate::store::{FlowUpdate, TransitionWrite};

/// Longest pause between two attempts of a phase.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// First retry delay when a phase names none.
pub const DEFAULT_BACKOFF_MS: u64 = 100;

/// What the actor does once the step's writes have committed.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// Nothing to run (paused, or a no-op input).
    None,
    /// Run `attempt` of `phase`.
    RunPhase { phase: String, attempt: u32 },
    /// Run `attempt` of `phase` with its fallback handler: the primary was unavailable.
    RunFallback { phase: String, attempt: u32 },
    /// Start the next attempt of `phase` after `delay`.
    RetryAfter { phase: String, delay: Duration },
    /// The flow is terminal; its actor stops.
    Stop,
}

/// An accepted input: what to commit and what to do after.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub events: Vec<FlowEvent>,
    /// Positions of phase rows that changed.
    pub touched: Vec<usize>,
    pub failure: Option<FailureRecord>,
    pub effect: Effect,
}

impl Step {
    fn new() -> Self {
        Self {
            events: Vec::new(),
            touched: Vec::new(),
            failure: None,
            effect: Effect::None,
        }
    }

    /// The write that commits this step for `flow` (the state it left), and the effect that
    /// follows the commit.
    pub fn into_write(self, flow: &FlowState) -> (TransitionWrite, Effect) {
        let write = TransitionWrite {
            flow_id: flow.id,
            create: None,
            flow: FlowUpdate::of(flow),
            phases: self
                .touched
                .iter()
                .map(|&i| (i, flow.phases[i].clone()))
                .collect(),
            events: self.events,
            failure: self.failure,
        };
        (write, self.effect)
    }

    /// The write that creates `flow` (the state its first step left) and commits the step's
    /// events with it, and the effect that follows the commit.
    fn into_create_write(self, flow: &FlowState) -> (TransitionWrite, Effect) {
        let write = TransitionWrite {
            flow_id: flow.id,
            create: Some(Box::new(flow.clone())),
            flow: FlowUpdate::of(flow),
            // The created row carries every phase as it is.
            phases: Vec::new(),
            events: self.events,
            failure: self.failure,
        };
        (write, self.effect)
    }

    /// Whether anything must be written (idempotent no-ops write nothing).
    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.touched.is_empty() && self.failure.is_none()
    }

    fn emit(
        &mut self,
        flow: &mut FlowState,
        kind: EventKind,
        error: Option<String>,
        now: DateTime<Utc>,
    ) {
        flow.last_seq += 1;
        flow.updated_at = now;
        self.events.push(FlowEvent::of(flow, kind, error));
    }

    fn touch(&mut self, index: usize) {
        if !self.touched.contains(&index) {
            self.touched.push(index);
        }
    }
}

/// A lifecycle request from a user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlCommand {
    Pause,
    Resume,
    Cancel,
    Retry,
}

/// Why an input was refused; nothing changed.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Rejected {
    /// The lifecycle forbids this input in the flow's current status.
    #[error("a {0} flow cannot do that")]
    IllegalTransition(FlowStatus),
    /// A result or timer for an attempt that is no longer the current one (fencing).
    #[error("stale result for {phase} attempt {attempt}")]
    Stale { phase: String, attempt: u32 },
}

/// A new flow: `initialized`, then at once `running` with its first phase started.
pub fn start(flow: &mut FlowState, definition: &FlowType, now: DateTime<Utc>) -> Step {
    let mut step = Step::new();
    if flow.last_seq == 0 {
        step.emit(flow, EventKind::FlowInitialized, None, now);
    }
    flow.status = FlowStatus::Running;
    step.emit(flow, EventKind::FlowStarted, None, now);
    if let Some(first) = definition.phases.first() {
        begin_attempt(flow, definition, &first.name.clone(), now, &mut step);
    }
    step
}

/// A flow that exists nowhere yet: [`start`] it and give the one write that stores it with its
/// first events; the effect (its first phase) is carried out once that write has committed.
pub fn create(
    flow: &mut FlowState,
    definition: &FlowType,
    now: DateTime<Utc>,
) -> (TransitionWrite, Effect) {
    start(flow, definition, now).into_create_write(flow)
}

/// An actor (re)started for a stored flow: pick up exactly where the database says it is.
/// A phase that was running when the previous actor died runs again with the same attempt
/// number, so its idempotency key is unchanged; nothing that succeeded runs again.
pub fn recover(flow: &mut FlowState, definition: &FlowType, now: DateTime<Utc>) -> Step {
    match flow.status {
        FlowStatus::Initialized => start(flow, definition, now),
        FlowStatus::Running => continue_current(flow, definition, now, false),
        FlowStatus::Paused => Step::new(),
        FlowStatus::Completed | FlowStatus::Failed | FlowStatus::Cancelled => Step {
            effect: Effect::Stop,
            ..Step::new()
        },
    }
}

/// A new actor for a flow whose previous one the health actor found silent: the restart is
/// journaled (`missed_ping`) and on the event stream (`flow_restarted`), and the flow is then
/// recovered as after any restart, in the same write.
pub fn restarted(
    flow: &mut FlowState,
    definition: &FlowType,
    detail: &str,
    now: DateTime<Utc>,
) -> Step {
    if flow.status.is_terminal() {
        return recover(flow, definition, now);
    }
    let mut step = Step::new();
    let (phase, attempt) = flow
        .current()
        .map_or((None, 0), |(_, p)| (Some(p.name.clone()), p.attempt));
    let diagnostic = json!({
        "retryable": true,
        "will_retry": flow.status == FlowStatus::Running,
        "detail": "the flow actor was restarted from the stored state; a running attempt runs again with the same idempotency key",
    });
    step.failure = Some(journal_row(
        flow,
        (phase, attempt),
        (crate::status_reason::MISSED_PING, detail),
        diagnostic,
        now,
    ));
    step.emit(flow, EventKind::FlowRestarted, Some(detail.to_owned()), now);
    merge(step, recover(flow, definition, now))
}

/// A running flow whose current phase is not in flight: start, re-run or retry it.
fn continue_current(
    flow: &mut FlowState,
    definition: &FlowType,
    now: DateTime<Utc>,
    in_flight: bool,
) -> Step {
    let mut step = Step::new();
    let Some((_, phase)) = flow.current() else {
        complete(flow, now, &mut step);
        return step;
    };
    match phase.status {
        PhaseStatus::Running if in_flight => {}
        PhaseStatus::Running => {
            step.effect = Effect::RunPhase {
                phase: phase.name.clone(),
                attempt: phase.attempt.max(1),
            }
        }
        PhaseStatus::Pending | PhaseStatus::Failed => {
            let name = phase.name.clone();
            begin_attempt(flow, definition, &name, now, &mut step);
        }
        PhaseStatus::Succeeded | PhaseStatus::Skipped => {
            let name = phase.name.clone();
            advance(
                flow,
                definition,
                definition.default_next(&name).map(str::to_owned),
                now,
                &mut step,
            );
        }
    }
    step
}

/// An attempt of `phase` ended, with its handler's result. `fallback` says whether the phase's
/// fallback ran it. The error's class decides: a primary that was unavailable hands the attempt
/// to the phase's fallback (if it names one); any other error is a failure, retried while the
/// class and the policy allow.
pub fn phase_finished(
    flow: &mut FlowState,
    definition: &FlowType,
    (phase, attempt, fallback): (&str, u32, bool),
    result: PhaseResult,
    max_transitions: u32,
    now: DateTime<Utc>,
) -> Result<Step, Rejected> {
    match result {
        Ok(output) => phase_succeeded_within(
            flow,
            definition,
            (phase, attempt),
            output,
            max_transitions,
            now,
        ),
        Err(error) if !fallback && error.class.is_unavailable() => {
            phase_fallback(flow, definition, phase, attempt, error, now)
        }
        Err(error) => phase_failed(flow, definition, phase, attempt, error, now),
    }
}

/// The handler of `phase` returned successfully.
pub fn phase_succeeded(
    flow: &mut FlowState,
    definition: &FlowType,
    phase: &str,
    attempt: u32,
    result: PhaseOutput,
    now: DateTime<Utc>,
) -> Result<Step, Rejected> {
    phase_succeeded_within(flow, definition, (phase, attempt), result, u32::MAX, now)
}

/// Like [`phase_succeeded`], failing the flow instead of starting another attempt once the flow
/// has started `max_transitions` attempts in all (a `next_phase` loop), and failing the attempt
/// when its output cannot be stored.
pub fn phase_succeeded_within(
    flow: &mut FlowState,
    definition: &FlowType,
    (phase, attempt): (&str, u32),
    result: PhaseOutput,
    max_transitions: u32,
    now: DateTime<Utc>,
) -> Result<Step, Rejected> {
    let index = check_current_attempt(flow, phase, attempt)?;
    if let Err(error) = json_storable(&result.output) {
        // Never written, so it cannot fail a whole commit; retried by the phase's policy.
        let error = HandlerError::retryable(
            "bad_output",
            format!("the output cannot be stored: {error}"),
        );
        return phase_failed(flow, definition, phase, attempt, error, now);
    }
    let next = match result.next_phase {
        NextPhase::ByDefinition => definition.default_next(phase).map(str::to_owned),
        NextPhase::Finish => None,
        NextPhase::Named(name) if definition.phase(&name).is_some() => Some(name),
        NextPhase::Named(name) => {
            let error = HandlerError::fatal(
                "invalid_next_phase",
                format!(
                    "handler returned next_phase `{name}`, which is not a phase of {}",
                    definition.name
                ),
            );
            return phase_failed(flow, definition, phase, attempt, error, now);
        }
    };
    let mut step = Step::new();
    let row = &mut flow.phases[index];
    row.status = PhaseStatus::Succeeded;
    row.finished_at = Some(now);
    row.output = Some(result.output);
    row.error = None;
    step.touch(index);
    flow.next_phase = next.clone();
    update_progress(flow, definition);
    step.emit(flow, EventKind::PhaseSucceeded, None, now);
    let started: u64 = flow.phases.iter().map(|p| u64::from(p.attempt)).sum();
    if next.is_some() && started >= u64::from(max_transitions) {
        // The loop guard: a flow cycling through `next_phase` ends here, journaled.
        let message = format!(
            "the flow started {started} phase attempts, the most one flow may (limits.max_transitions_per_flow); a next_phase loop?"
        );
        let rest = abort(flow, "too_many_transitions", &message, now)?;
        return Ok(merge(step, rest));
    }
    advance(flow, definition, next, now, &mut step);
    Ok(step)
}

/// The handler of `phase` failed (an error, a timeout, a panic). Journaled always; retried while
/// the policy allows and the error is retryable; otherwise the flow fails.
pub fn phase_failed(
    flow: &mut FlowState,
    definition: &FlowType,
    phase: &str,
    attempt: u32,
    error: HandlerError,
    now: DateTime<Utc>,
) -> Result<Step, Rejected> {
    let index = check_current_attempt(flow, phase, attempt)?;
    let error = storable_error(error);
    let policy = definition.phase(phase);
    let retries = policy.map_or(0, |p| p.retries);
    let mut step = Step::new();
    let message = error.to_string();
    let row = &mut flow.phases[index];
    row.status = PhaseStatus::Failed;
    row.finished_at = Some(now);
    row.error = Some(message.clone());
    step.touch(index);
    let will_retry = error.is_retryable() && attempt <= retries;
    step.failure = Some(FailureRecord {
        id: 0,
        flow_id: flow.id,
        master_flow_id: flow.master_flow_id,
        phase: Some(phase.to_owned()),
        attempt,
        error_kind: error.kind.clone(),
        message: error.message.clone(),
        diagnostic: json!({
            "retryable": error.is_retryable(),
            "will_retry": will_retry,
            "max_attempts": retries + 1,
            "detail": error.diagnostic,
        }),
        at: now,
    });
    step.emit(flow, EventKind::PhaseFailed, Some(message.clone()), now);
    if will_retry {
        if flow.status == FlowStatus::Running {
            let base = policy
                .and_then(|p| p.retry_backoff_ms)
                .unwrap_or(DEFAULT_BACKOFF_MS);
            step.effect = Effect::RetryAfter {
                phase: phase.to_owned(),
                delay: backoff(base, attempt),
            };
        }
    } else {
        flow.status = FlowStatus::Failed;
        step.emit(flow, EventKind::FlowFailed, Some(message), now);
        step.effect = Effect::Stop;
    }
    Ok(step)
}

/// A running attempt reports that `fraction` of its phase is done: progress moves within the
/// phase's weight, never backwards. Reports that change nothing write nothing.
pub fn phase_progress(
    flow: &mut FlowState,
    definition: &FlowType,
    phase: &str,
    attempt: u32,
    fraction: f64,
    now: DateTime<Utc>,
) -> Result<Step, Rejected> {
    check_current_attempt(flow, phase, attempt)?;
    let mut step = Step::new();
    let total = definition.total_weight();
    let weight = definition.phase(phase).map_or(0, |p| u64::from(p.weight));
    if total == 0 || weight == 0 {
        return Ok(step);
    }
    let done = done_weight(flow, definition) as f64 + weight as f64 * fraction.clamp(0.0, 1.0);
    // Only a finished flow shows 100.
    let percentage = (((done / total as f64) * 10_000.0).round() / 100.0).min(99.99);
    if percentage > flow.progress_percentage {
        flow.progress_percentage = percentage;
        step.emit(flow, EventKind::PhaseProgress, None, now);
    }
    Ok(step)
}

/// The primary handler of `phase` is unavailable and the phase names a `fallback`: the same
/// attempt runs again with the fallback. The switch is journaled (with the primary's error) and
/// sent as a `phase_fallback` event; without a fallback, this is an ordinary failure.
pub fn phase_fallback(
    flow: &mut FlowState,
    definition: &FlowType,
    phase: &str,
    attempt: u32,
    error: HandlerError,
    now: DateTime<Utc>,
) -> Result<Step, Rejected> {
    let Some(fallback) = definition.phase(phase).and_then(|p| p.fallback.clone()) else {
        return phase_failed(flow, definition, phase, attempt, error, now);
    };
    check_current_attempt(flow, phase, attempt)?;
    let error = storable_error(error);
    let mut step = Step::new();
    let primary = definition.phase(phase).map_or("", |p| p.handler.as_str());
    let message = format!("{primary} unavailable, falling back to {fallback}: {error}");
    step.failure = Some(FailureRecord {
        id: 0,
        flow_id: flow.id,
        master_flow_id: flow.master_flow_id,
        phase: Some(phase.to_owned()),
        attempt,
        error_kind: error.kind.clone(),
        message: error.message.clone(),
        diagnostic: json!({
            "retryable": error.is_retryable(),
            "will_retry": false,
            "fallback": fallback,
            "primary": primary,
            "detail": error.diagnostic,
        }),
        at: now,
    });
    step.emit(flow, EventKind::PhaseFallback, Some(message), now);
    if flow.status == FlowStatus::Running {
        step.effect = Effect::RunFallback {
            phase: phase.to_owned(),
            attempt,
        };
    }
    Ok(step)
}

/// The backoff timer of `phase` fired: start its next attempt if it is still due.
pub fn retry_due(
    flow: &mut FlowState,
    definition: &FlowType,
    phase: &str,
    now: DateTime<Utc>,
) -> Result<Step, Rejected> {
    let due = flow.status == FlowStatus::Running
        && flow
            .current()
            .is_some_and(|(_, p)| p.name == phase && p.status == PhaseStatus::Failed);
    if !due {
        let attempt = flow.current().map_or(0, |(_, p)| p.attempt);
        return Err(Rejected::Stale {
            phase: phase.to_owned(),
            attempt,
        });
    }
    let mut step = Step::new();
    begin_attempt(flow, definition, phase, now, &mut step);
    Ok(step)
}

/// A lifecycle request. `in_flight` says whether the current phase's handler is still running
/// in this actor (see [`resume`]).
pub fn control(
    flow: &mut FlowState,
    definition: &FlowType,
    command: ControlCommand,
    in_flight: bool,
    now: DateTime<Utc>,
) -> Result<Step, Rejected> {
    match command {
        ControlCommand::Pause => pause(flow, now),
        ControlCommand::Resume => resume(flow, definition, in_flight, now),
        ControlCommand::Cancel => cancel(flow, now),
        ControlCommand::Retry => retry(flow, definition, now),
    }
}

/// Whether `flow` would accept `command`, changing nothing: the answer for a stored flow that
/// has no actor to carry a transition out (a finished one).
pub fn check_control(
    flow: &FlowState,
    definition: &FlowType,
    command: ControlCommand,
    now: DateTime<Utc>,
) -> Result<(), Rejected> {
    control(&mut flow.clone(), definition, command, false, now).map(|_| ())
}

/// Stop starting phases. The phase in flight finishes and is recorded; idempotent.
pub fn pause(flow: &mut FlowState, now: DateTime<Utc>) -> Result<Step, Rejected> {
    let mut step = Step::new();
    match flow.status {
        FlowStatus::Paused => Ok(step),
        FlowStatus::Running => {
            flow.status = FlowStatus::Paused;
            step.emit(flow, EventKind::FlowPaused, None, now);
            Ok(step)
        }
        other => Err(Rejected::IllegalTransition(other)),
    }
}

/// Continue a paused flow where it stopped; idempotent. `in_flight` says whether the current
/// phase's handler is still running in this actor (then it is not started again).
pub fn resume(
    flow: &mut FlowState,
    definition: &FlowType,
    in_flight: bool,
    now: DateTime<Utc>,
) -> Result<Step, Rejected> {
    match flow.status {
        FlowStatus::Running => Ok(Step::new()),
        FlowStatus::Paused => {
            let mut first = Step::new();
            flow.status = FlowStatus::Running;
            first.emit(flow, EventKind::FlowResumed, None, now);
            let rest = continue_current(flow, definition, now, in_flight);
            Ok(merge(first, rest))
        }
        other => Err(Rejected::IllegalTransition(other)),
    }
}

/// End the flow; no later phase runs. Idempotent.
pub fn cancel(flow: &mut FlowState, now: DateTime<Utc>) -> Result<Step, Rejected> {
    let mut step = Step::new();
    match flow.status {
        FlowStatus::Cancelled => Ok(step),
        FlowStatus::Completed | FlowStatus::Failed => Err(Rejected::IllegalTransition(flow.status)),
        FlowStatus::Initialized | FlowStatus::Running | FlowStatus::Paused => {
            if let Some((index, phase)) = flow.current()
                && phase.status == PhaseStatus::Running
            {
                let row = &mut flow.phases[index];
                row.status = PhaseStatus::Failed;
                row.finished_at = Some(now);
                row.error = Some("cancelled".into());
                step.touch(index);
            }
            flow.status = FlowStatus::Cancelled;
            flow.next_phase = None;
            step.emit(flow, EventKind::FlowCancelled, None, now);
            step.effect = Effect::Stop;
            Ok(step)
        }
    }
}

/// A failed flow runs again from its failed phase, with a fresh attempt. Idempotent while running.
pub fn retry(
    flow: &mut FlowState,
    definition: &FlowType,
    now: DateTime<Utc>,
) -> Result<Step, Rejected> {
    match flow.status {
        FlowStatus::Running | FlowStatus::Paused => Ok(Step::new()),
        FlowStatus::Failed => {
            let mut first = Step::new();
            flow.status = FlowStatus::Running;
            first.emit(flow, EventKind::FlowRetried, None, now);
            let rest = continue_current(flow, definition, now, false);
            Ok(merge(first, rest))
        }
        other => Err(Rejected::IllegalTransition(other)),
    }
}

/// The runtime gives up on the flow (e.g. it crashed too often): fail it loudly, with a journal row.
pub fn abort(
    flow: &mut FlowState,
    error_kind: &str,
    message: &str,
    now: DateTime<Utc>,
) -> Result<Step, Rejected> {
    if flow.status.is_terminal() {
        return Err(Rejected::IllegalTransition(flow.status));
    }
    let mut step = Step::new();
    let mut phase = None;
    let mut attempt = 0;
    if let Some((index, row)) = flow.current() {
        phase = Some(row.name.clone());
        attempt = row.attempt;
        if row.status == PhaseStatus::Running {
            let row = &mut flow.phases[index];
            row.status = PhaseStatus::Failed;
            row.finished_at = Some(now);
            row.error = Some(message.to_owned());
            step.touch(index);
        }
    }
    step.failure = Some(journal_row(
        flow,
        (phase, attempt),
        (error_kind, message),
        json!({}),
        now,
    ));
    flow.status = FlowStatus::Failed;
    step.emit(
        flow,
        EventKind::FlowFailed,
        Some(format!("{error_kind}: {message}")),
        now,
    );
    step.effect = Effect::Stop;
    Ok(step)
}

/// Whatever a handler wrote, its journal row must be storable by every backend: NULs in the
/// kind, message and diagnostic are replaced.
fn storable_error(mut error: HandlerError) -> HandlerError {
    error.kind = storable_text(&error.kind);
    error.message = storable_text(&error.message);
    error.diagnostic = make_storable(std::mem::take(&mut error.diagnostic));
    error
}

/// A failure-journal row of `flow`: `(phase, attempt)` it is about, `(kind, message)`.
fn journal_row(
    flow: &FlowState,
    (phase, attempt): (Option<String>, u32),
    (error_kind, message): (&str, &str),
    diagnostic: serde_json::Value,
    now: DateTime<Utc>,
) -> FailureRecord {
    FailureRecord {
        id: 0,
        flow_id: flow.id,
        master_flow_id: flow.master_flow_id,
        phase,
        attempt,
        error_kind: error_kind.to_owned(),
        message: message.to_owned(),
        diagnostic,
        at: now,
    }
}

fn merge(mut first: Step, rest: Step) -> Step {
    first.events.extend(rest.events);
    for index in rest.touched {
        first.touch(index);
    }
    first.failure = first.failure.or(rest.failure);
    first.effect = rest.effect;
    first
}

fn check_current_attempt(flow: &FlowState, phase: &str, attempt: u32) -> Result<usize, Rejected> {
    let stale = || Rejected::Stale {
        phase: phase.to_owned(),
        attempt,
    };
    if !matches!(flow.status, FlowStatus::Running | FlowStatus::Paused) {
        return Err(stale());
    }
    match flow.current() {
        Some((index, p))
            if p.name == phase && p.attempt == attempt && p.status == PhaseStatus::Running =>
        {
            Ok(index)
        }
        _ => Err(stale()),
    }
}

/// Moves to `next` (running it unless paused) or completes the flow.
fn advance(
    flow: &mut FlowState,
    definition: &FlowType,
    next: Option<String>,
    now: DateTime<Utc>,
    step: &mut Step,
) {
    match next {
        None => complete(flow, now, step),
        Some(name) if flow.status == FlowStatus::Running => {
            begin_attempt(flow, definition, &name, now, step)
        }
        Some(name) => {
            // Paused: the next phase waits, pending, for `resume`.
            flow.next_phase = definition.default_next(&name).map(str::to_owned);
            if let Some(index) = flow.phase_index(&name)
                && flow.phases[index].status != PhaseStatus::Pending
            {
                flow.phases[index].status = PhaseStatus::Pending;
                step.touch(index);
            }
            flow.current_phase = Some(name);
        }
    }
}

/// `completed` iff no next phase and every phase succeeded or was skipped.
fn complete(flow: &mut FlowState, now: DateTime<Utc>, step: &mut Step) {
    for (index, phase) in flow.phases.iter_mut().enumerate() {
        if phase.status == PhaseStatus::Pending {
            phase.status = PhaseStatus::Skipped;
            step.touch(index);
        }
    }
    flow.current_phase = None;
    flow.next_phase = None;
    if flow.phases.iter().all(|p| p.status.is_done()) {
        flow.status = FlowStatus::Completed;
        flow.progress_percentage = 100.0;
        step.emit(flow, EventKind::FlowCompleted, None, now);
    } else {
        flow.status = FlowStatus::Failed;
        step.emit(
            flow,
            EventKind::FlowFailed,
            Some("flow ended with unfinished phases".into()),
            now,
        );
    }
    step.effect = Effect::Stop;
}

fn begin_attempt(
    flow: &mut FlowState,
    definition: &FlowType,
    name: &str,
    now: DateTime<Utc>,
    step: &mut Step,
) {
    let Some(index) = flow.phase_index(name) else {
        return;
    };
    let row = &mut flow.phases[index];
    row.status = PhaseStatus::Running;
    row.attempt += 1;
    row.started_at = Some(now);
    row.finished_at = None;
    row.error = None;
    let attempt = row.attempt;
    step.touch(index);
    flow.current_phase = Some(name.to_owned());
    flow.next_phase = definition.default_next(name).map(str::to_owned);
    step.emit(flow, EventKind::PhaseStarted, None, now);
    step.effect = Effect::RunPhase {
        phase: name.to_owned(),
        attempt,
    };
}

fn done_weight(flow: &FlowState, definition: &FlowType) -> u64 {
    flow.phases
        .iter()
        .filter(|p| p.status.is_done())
        .filter_map(|p| definition.phase(&p.name))
        .map(|p| u64::from(p.weight))
        .sum()
}

fn update_progress(flow: &mut FlowState, definition: &FlowType) {
    let total = definition.total_weight();
    if total == 0 {
        return;
    }
    let done = done_weight(flow, definition);
    let percentage = ((done as f64 / total as f64) * 10_000.0).round() / 100.0;
    flow.progress_percentage = flow.progress_percentage.max(percentage);
}

/// Exponential backoff: `base`, `2·base`, `4·base`, … capped at `MAX_BACKOFF` (60 s).
pub fn backoff(base_ms: u64, failed_attempt: u32) -> Duration {
    let factor = 1u64 << failed_attempt.saturating_sub(1).min(20);
    Duration::from_millis(base_ms.saturating_mul(factor)).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests;
