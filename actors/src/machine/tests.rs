use serde_json::json;

use super::*;
use crate::definition::PhaseDefinition;
use crate::ids::Tenant;
use crate::model::{NewFlow, now};

fn phase(name: &str, retries: u32, weight: u32) -> PhaseDefinition {
    PhaseDefinition {
        retries,
        retry_backoff_ms: Some(10),
        weight,
        ..PhaseDefinition::new(name, "noop")
    }
}

fn definition() -> FlowType {
    FlowType {
        name: "t".into(),
        version: 1,
        phases: vec![phase("a", 0, 1), phase("b", 2, 2), phase("c", 0, 1)],
    }
}

fn new_flow(definition: &FlowType) -> FlowState {
    FlowState::new_initialized(
        definition,
        NewFlow {
            flow_type: definition.name.clone(),
            input: json!({}),
            parent_flow_id: None,
            master_flow_id: None,
            tenant: Tenant::default_tenant(),
            created_by: None,
            idempotency_key: None,
        },
    )
}

fn ok(output: serde_json::Value) -> PhaseOutput {
    PhaseOutput::new(output)
}

/// An accepted `phase_finished` with no transition limit.
fn finish(
    flow: &mut FlowState,
    definition: &FlowType,
    attempt: (&str, u32, bool),
    result: PhaseResult,
) -> Step {
    phase_finished(flow, definition, attempt, result, u32::MAX, now()).unwrap()
}

fn statuses(step: &Step) -> Vec<(EventKind, FlowStatus, u64)> {
    step.events
        .iter()
        .map(|e| (e.kind, e.status, e.seq))
        .collect()
}

#[test]
fn start_records_initialized_then_running_and_runs_the_first_phase() {
    let def = definition();
    let mut flow = new_flow(&def);
    let step = start(&mut flow, &def, now());
    assert_eq!(
        statuses(&step),
        vec![
            (EventKind::FlowInitialized, FlowStatus::Initialized, 1),
            (EventKind::FlowStarted, FlowStatus::Running, 2),
            (EventKind::PhaseStarted, FlowStatus::Running, 3),
        ]
    );
    assert_eq!(flow.status, FlowStatus::Running);
    assert_eq!(flow.current_phase.as_deref(), Some("a"));
    assert_eq!(flow.next_phase.as_deref(), Some("b"));
    assert_eq!(
        step.effect,
        Effect::RunPhase {
            phase: "a".into(),
            attempt: 1
        }
    );
}

#[test]
fn a_full_run_completes_with_progress_by_weight() {
    let def = definition();
    let mut flow = new_flow(&def);
    start(&mut flow, &def, now());
    let step = phase_succeeded(&mut flow, &def, "a", 1, ok(json!(1)), now()).unwrap();
    assert_eq!(
        step.events[0].next_phase.as_deref(),
        Some("b"),
        "a phase result carries next_phase"
    );
    assert_eq!(flow.progress_percentage, 25.0);
    phase_succeeded(&mut flow, &def, "b", 1, ok(json!(2)), now()).unwrap();
    assert_eq!(flow.progress_percentage, 75.0);
    let step = phase_succeeded(&mut flow, &def, "c", 1, ok(json!(3)), now()).unwrap();
    assert_eq!(flow.status, FlowStatus::Completed);
    assert_eq!(flow.progress_percentage, 100.0);
    assert_eq!(flow.next_phase, None);
    assert_eq!(step.effect, Effect::Stop);
    assert!(
        flow.phases
            .iter()
            .all(|p| p.status == PhaseStatus::Succeeded)
    );
    let last = step.events.last().unwrap();
    assert_eq!(
        (last.kind, last.seq),
        (EventKind::FlowCompleted, flow.last_seq)
    );
}

#[test]
fn retryable_failures_retry_with_backoff_then_fail_the_flow() {
    let def = definition();
    let mut flow = new_flow(&def);
    start(&mut flow, &def, now());
    phase_succeeded(&mut flow, &def, "a", 1, ok(json!(null)), now()).unwrap();
    for attempt in 1..=2 {
        let step = phase_failed(
            &mut flow,
            &def,
            "b",
            attempt,
            HandlerError::retryable("x", "boom"),
            now(),
        )
        .unwrap();
        assert_eq!(step.failure.as_ref().unwrap().attempt, attempt);
        assert_eq!(
            step.effect,
            Effect::RetryAfter {
                phase: "b".into(),
                delay: backoff(10, attempt)
            }
        );
        let step = retry_due(&mut flow, &def, "b", now()).unwrap();
        assert_eq!(
            step.effect,
            Effect::RunPhase {
                phase: "b".into(),
                attempt: attempt + 1
            }
        );
    }
    let step = phase_failed(
        &mut flow,
        &def,
        "b",
        3,
        HandlerError::retryable("x", "boom"),
        now(),
    )
    .unwrap();
    assert_eq!(flow.status, FlowStatus::Failed);
    assert_eq!(step.effect, Effect::Stop);
    assert!(step.failure.is_some());
    assert_eq!(step.events.last().unwrap().kind, EventKind::FlowFailed);
}

#[test]
fn fatal_errors_do_not_retry() {
    let def = definition();
    let mut flow = new_flow(&def);
    start(&mut flow, &def, now());
    phase_succeeded(&mut flow, &def, "a", 1, ok(json!(null)), now()).unwrap();
    phase_failed(
        &mut flow,
        &def,
        "b",
        1,
        HandlerError::fatal("x", "no"),
        now(),
    )
    .unwrap();
    assert_eq!(flow.status, FlowStatus::Failed);
}

#[test]
fn stale_results_are_fenced_off() {
    let def = definition();
    let mut flow = new_flow(&def);
    start(&mut flow, &def, now());
    let before = flow.clone();
    assert!(matches!(
        phase_succeeded(&mut flow, &def, "a", 2, ok(json!(null)), now()),
        Err(Rejected::Stale { .. })
    ));
    assert!(matches!(
        phase_succeeded(&mut flow, &def, "b", 1, ok(json!(null)), now()),
        Err(Rejected::Stale { .. })
    ));
    assert_eq!(flow, before, "a rejected input changes nothing");
}

#[test]
fn pause_holds_at_the_phase_boundary_and_resume_continues() {
    let def = definition();
    let mut flow = new_flow(&def);
    start(&mut flow, &def, now());
    pause(&mut flow, now()).unwrap();
    assert!(
        pause(&mut flow, now()).unwrap().is_empty(),
        "pause is idempotent"
    );
    let step = phase_succeeded(&mut flow, &def, "a", 1, ok(json!(null)), now()).unwrap();
    assert_eq!(step.effect, Effect::None, "no phase starts while paused");
    assert_eq!(flow.current_phase.as_deref(), Some("b"));
    assert_eq!(flow.phases[1].status, PhaseStatus::Pending);
    let step = resume(&mut flow, &def, false, now()).unwrap();
    assert_eq!(step.events[0].kind, EventKind::FlowResumed);
    assert_eq!(
        step.effect,
        Effect::RunPhase {
            phase: "b".into(),
            attempt: 1
        }
    );
}

#[test]
fn resume_does_not_restart_a_phase_still_in_flight() {
    let def = definition();
    let mut flow = new_flow(&def);
    start(&mut flow, &def, now());
    pause(&mut flow, now()).unwrap();
    let step = resume(&mut flow, &def, true, now()).unwrap();
    assert_eq!(step.effect, Effect::None);
}

#[test]
fn cancel_is_terminal_and_idempotent() {
    let def = definition();
    let mut flow = new_flow(&def);
    start(&mut flow, &def, now());
    let step = cancel(&mut flow, now()).unwrap();
    assert_eq!(step.effect, Effect::Stop);
    assert_eq!(flow.status, FlowStatus::Cancelled);
    assert_eq!(flow.phases[0].status, PhaseStatus::Failed);
    assert!(cancel(&mut flow, now()).unwrap().is_empty());
    assert_eq!(
        resume(&mut flow, &def, false, now()),
        Err(Rejected::IllegalTransition(FlowStatus::Cancelled))
    );
    assert!(matches!(
        phase_succeeded(&mut flow, &def, "a", 1, ok(json!(null)), now()),
        Err(Rejected::Stale { .. })
    ));
}

#[test]
fn retry_resumes_a_failed_flow_at_the_failed_phase() {
    let def = definition();
    let mut flow = new_flow(&def);
    start(&mut flow, &def, now());
    phase_succeeded(&mut flow, &def, "a", 1, ok(json!(null)), now()).unwrap();
    phase_failed(
        &mut flow,
        &def,
        "b",
        1,
        HandlerError::fatal("x", "no"),
        now(),
    )
    .unwrap();
    let step = retry(&mut flow, &def, now()).unwrap();
    assert_eq!(step.events[0].kind, EventKind::FlowRetried);
    assert_eq!(
        step.effect,
        Effect::RunPhase {
            phase: "b".into(),
            attempt: 2
        }
    );
    assert_eq!(
        flow.phases[0].status,
        PhaseStatus::Succeeded,
        "earlier phases are kept"
    );
    assert!(retry(&mut flow, &def, now()).unwrap().is_empty());
}

#[test]
fn recovery_reruns_the_interrupted_attempt_and_nothing_before_it() {
    let def = definition();
    let mut flow = new_flow(&def);
    start(&mut flow, &def, now());
    phase_succeeded(&mut flow, &def, "a", 1, ok(json!(null)), now()).unwrap();
    let stored = flow.clone();
    let mut recovered = stored.clone();
    let step = recover(&mut recovered, &def, now());
    assert!(step.events.is_empty());
    assert_eq!(
        step.effect,
        Effect::RunPhase {
            phase: "b".into(),
            attempt: 1
        }
    );
    assert_eq!(recovered, stored);
}

#[test]
fn handlers_may_jump_or_finish_early() {
    let def = definition();
    let mut flow = new_flow(&def);
    start(&mut flow, &def, now());
    let jump = PhaseOutput {
        output: json!(null),
        next_phase: NextPhase::Named("c".into()),
    };
    let step = phase_succeeded(&mut flow, &def, "a", 1, jump, now()).unwrap();
    assert_eq!(
        step.effect,
        Effect::RunPhase {
            phase: "c".into(),
            attempt: 1
        }
    );
    let finish = PhaseOutput {
        output: json!(null),
        next_phase: NextPhase::Finish,
    };
    phase_succeeded(&mut flow, &def, "c", 1, finish, now()).unwrap();
    assert_eq!(flow.status, FlowStatus::Completed);
    assert_eq!(flow.phases[1].status, PhaseStatus::Skipped);
    assert_eq!(flow.progress_percentage, 100.0);
}

#[test]
fn an_unknown_next_phase_fails_the_phase() {
    let def = definition();
    let mut flow = new_flow(&def);
    start(&mut flow, &def, now());
    let bad = PhaseOutput {
        output: json!(null),
        next_phase: NextPhase::Named("nope".into()),
    };
    let step = phase_succeeded(&mut flow, &def, "a", 1, bad, now()).unwrap();
    assert_eq!(step.failure.unwrap().error_kind, "invalid_next_phase");
    assert_eq!(flow.status, FlowStatus::Failed);
}

#[test]
fn backoff_doubles_and_is_capped() {
    assert_eq!(backoff(100, 1), Duration::from_millis(100));
    assert_eq!(backoff(100, 3), Duration::from_millis(400));
    assert_eq!(backoff(100, 40), MAX_BACKOFF);
}

#[test]
fn abort_fails_the_flow_with_a_journal_row() {
    let def = definition();
    let mut flow = new_flow(&def);
    start(&mut flow, &def, now());
    let step = abort(
        &mut flow,
        "restart_intensity_exceeded",
        "too many restarts",
        now(),
    )
    .unwrap();
    assert_eq!(flow.status, FlowStatus::Failed);
    assert_eq!(
        step.failure.unwrap().error_kind,
        "restart_intensity_exceeded"
    );
    assert_eq!(flow.phases[0].status, PhaseStatus::Failed);
    assert!(abort(&mut flow, "x", "y", now()).is_err());
}

#[test]
fn progress_moves_within_the_running_phase_and_never_back() {
    let def = definition();
    let mut flow = new_flow(&def);
    start(&mut flow, &def, now());
    phase_succeeded(&mut flow, &def, "a", 1, ok(json!(1)), now()).unwrap();
    assert_eq!(flow.progress_percentage, 25.0);
    // `b` weighs 2 of 4: half of it done is another 25 points.
    let step = phase_progress(&mut flow, &def, "b", 1, 0.5, now()).unwrap();
    assert_eq!(flow.progress_percentage, 50.0);
    assert_eq!(step.events.len(), 1);
    assert_eq!(step.events[0].kind, EventKind::PhaseProgress);
    assert!(step.touched.is_empty() && step.effect == Effect::None);
    let back = phase_progress(&mut flow, &def, "b", 1, 0.2, now()).unwrap();
    assert!(back.is_empty(), "a lower report changes nothing");
    assert_eq!(flow.progress_percentage, 50.0);
    phase_progress(&mut flow, &def, "b", 1, 1.0, now()).unwrap();
    assert_eq!(flow.progress_percentage, 75.0);
    assert!(matches!(
        phase_progress(&mut flow, &def, "b", 2, 1.0, now()),
        Err(Rejected::Stale { .. })
    ));
}

#[test]
fn an_unavailable_primary_switches_to_the_fallback_in_the_same_attempt() {
    let mut def = definition();
    def.phases[0].fallback = Some("sleep".into());
    let mut flow = new_flow(&def);
    start(&mut flow, &def, now());
    let error = HandlerError::unavailable("nobody home");
    let step = phase_fallback(&mut flow, &def, "a", 1, error, now()).unwrap();
    assert_eq!(step.events[0].kind, EventKind::PhaseFallback);
    let failure = step.failure.as_ref().expect("the switch is journaled");
    assert_eq!(failure.error_kind, "handler_unavailable");
    assert_eq!(failure.diagnostic["fallback"], "sleep");
    assert_eq!(
        step.effect,
        Effect::RunFallback {
            phase: "a".into(),
            attempt: 1
        }
    );
    assert_eq!(flow.phases[0].status, PhaseStatus::Running);
    // The fallback's result completes the same attempt.
    phase_succeeded(&mut flow, &def, "a", 1, ok(json!("fallback")), now()).unwrap();
    assert_eq!(flow.phases[0].status, PhaseStatus::Succeeded);
}

#[test]
fn without_a_fallback_an_unavailable_primary_is_a_failure() {
    let def = definition();
    let mut flow = new_flow(&def);
    start(&mut flow, &def, now());
    let error = HandlerError::unavailable("nobody home");
    let step = phase_fallback(&mut flow, &def, "a", 1, error, now()).unwrap();
    assert_eq!(step.effect, Effect::Stop);
    assert_eq!(flow.status, FlowStatus::Failed);
}

#[test]
fn a_next_phase_loop_fails_the_flow_at_the_transition_cap() {
    let mut a = PhaseDefinition::new("a", "noop");
    a.next_phase = Some("b".into());
    let mut b = PhaseDefinition::new("b", "noop");
    b.next_phase = Some("a".into());
    let def = FlowType {
        name: "loop".into(),
        version: 1,
        phases: vec![a, b],
    };
    let mut flow = new_flow(&def);
    start(&mut flow, &def, now());
    let mut finished = 0;
    for _ in 0..100 {
        let (phase, attempt) = {
            let (_, row) = flow.current().expect("a current phase");
            (row.name.clone(), row.attempt)
        };
        let step =
            phase_succeeded_within(&mut flow, &def, (&phase, attempt), ok(json!({})), 10, now())
                .expect("accepted");
        finished += 1;
        if flow.status == FlowStatus::Failed {
            assert_eq!(step.effect, Effect::Stop);
            let failure = step.failure.expect("journaled");
            assert_eq!(failure.error_kind, "too_many_transitions");
            break;
        }
    }
    assert_eq!(flow.status, FlowStatus::Failed);
    assert_eq!(finished, 10, "stopped at the cap");
}

#[test]
fn an_unstorable_output_fails_the_attempt_instead_of_being_written() {
    let def = definition();
    let mut flow = new_flow(&def);
    start(&mut flow, &def, now());
    let step = phase_succeeded(
        &mut flow,
        &def,
        "a",
        1,
        ok(json!({ "s": "a\u{0}b" })),
        now(),
    )
    .expect("accepted");
    let failure = step.failure.expect("journaled");
    assert_eq!(failure.error_kind, "bad_output");
    assert!(flow.phases[0].output.is_none());
    assert_eq!(flow.status, FlowStatus::Failed, "no retries left on `a`");
}

#[test]
fn create_writes_the_new_flow_with_its_first_events_and_then_runs_the_first_phase() {
    let def = definition();
    let mut flow = new_flow(&def);
    let (write, effect) = create(&mut flow, &def, now());
    let created = write.create.as_deref().expect("the write creates the flow");
    assert_eq!(created, &flow);
    assert_eq!(created.status, FlowStatus::Running);
    assert_eq!(created.phases[0].status, PhaseStatus::Running);
    assert!(
        write.phases.is_empty(),
        "the created row carries its phases"
    );
    assert!(write.failure.is_none());
    let kinds: Vec<_> = write.events.iter().map(|e| (e.kind, e.seq)).collect();
    assert_eq!(
        kinds,
        vec![
            (EventKind::FlowInitialized, 1),
            (EventKind::FlowStarted, 2),
            (EventKind::PhaseStarted, 3),
        ]
    );
    assert_eq!(
        effect,
        Effect::RunPhase {
            phase: "a".into(),
            attempt: 1
        }
    );
}

#[test]
fn phase_finished_hands_an_unavailable_primary_to_the_fallback() {
    let mut def = definition();
    def.phases[0].fallback = Some("sleep".into());
    let mut flow = new_flow(&def);
    start(&mut flow, &def, now());
    let step = finish(
        &mut flow,
        &def,
        ("a", 1, false),
        Err(HandlerError::unavailable("nobody home")),
    );
    assert_eq!(
        step.effect,
        Effect::RunFallback {
            phase: "a".into(),
            attempt: 1
        }
    );
    // The fallback itself unavailable: an ordinary failure, no second switch.
    let step = finish(
        &mut flow,
        &def,
        ("a", 1, true),
        Err(HandlerError::unavailable("nobody home either")),
    );
    assert_eq!(step.effect, Effect::Stop);
    assert_eq!(flow.status, FlowStatus::Failed);
}

#[test]
fn phase_finished_retries_by_class_not_by_label() {
    let def = definition();
    let mut flow = new_flow(&def);
    start(&mut flow, &def, now());
    phase_succeeded(&mut flow, &def, "a", 1, ok(json!(1)), now()).unwrap();
    // "b" has retries = 2: a timeout is retried, whatever its label.
    let step = finish(
        &mut flow,
        &def,
        ("b", 1, false),
        Err(HandlerError::timeout("heartbeat_timeout", "silent")),
    );
    assert!(matches!(step.effect, Effect::RetryAfter { .. }), "{step:?}");
    retry_due(&mut flow, &def, "b", now()).unwrap();
    // An unavailable primary without a fallback is not retried: it would be unavailable again.
    let step = finish(
        &mut flow,
        &def,
        ("b", 2, false),
        Err(HandlerError::unavailable("refused")),
    );
    assert_eq!(step.effect, Effect::Stop);
    let failure = step.failure.expect("journaled");
    assert_eq!(failure.error_kind, "handler_unavailable");
    assert_eq!(failure.diagnostic["retryable"], false);
}

#[test]
fn phase_finished_with_an_output_is_a_success() {
    let def = definition();
    let mut flow = new_flow(&def);
    start(&mut flow, &def, now());
    let step = finish(&mut flow, &def, ("a", 1, false), Ok(ok(json!(1))));
    assert_eq!(step.events[0].kind, EventKind::PhaseSucceeded);
    assert_eq!(flow.phases[0].status, PhaseStatus::Succeeded);
}

#[test]
fn control_routes_each_command_to_its_transition() {
    let def = definition();
    let mut flow = new_flow(&def);
    start(&mut flow, &def, now());
    control(&mut flow, &def, ControlCommand::Pause, true, now()).unwrap();
    assert_eq!(flow.status, FlowStatus::Paused);
    control(&mut flow, &def, ControlCommand::Resume, true, now()).unwrap();
    assert_eq!(flow.status, FlowStatus::Running);
    control(&mut flow, &def, ControlCommand::Cancel, true, now()).unwrap();
    assert_eq!(flow.status, FlowStatus::Cancelled);
    assert_eq!(
        control(&mut flow, &def, ControlCommand::Retry, false, now()),
        Err(Rejected::IllegalTransition(FlowStatus::Cancelled))
    );
}

#[test]
fn check_control_answers_for_a_finished_flow_without_changing_it() {
    let def = definition();
    let mut flow = new_flow(&def);
    start(&mut flow, &def, now());
    cancel(&mut flow, now()).unwrap();
    let before = flow.clone();
    assert_eq!(
        check_control(&flow, &def, ControlCommand::Cancel, now()),
        Ok(()),
        "cancel is idempotent"
    );
    for command in [
        ControlCommand::Pause,
        ControlCommand::Resume,
        ControlCommand::Retry,
    ] {
        assert_eq!(
            check_control(&flow, &def, command, now()),
            Err(Rejected::IllegalTransition(FlowStatus::Cancelled)),
            "{command:?}"
        );
    }
    assert_eq!(flow, before);
}
