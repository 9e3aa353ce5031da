//! The lease rules of one external task, pure: which transitions a task may take (lease,
//! heartbeat, result, expiry, withdrawal, re-queue) and what a finished task means for the
//! attempt waiting on it (success, a retry, a fallback, or giving up). No actors, no I/O, no
//! clock: the time and a fresh lease id are passed in, so every rule is unit-tested here.
//!
//! The queue actor only carries the transitions out: it keeps its indexes (queues, the expiry
//! order, waiting pollers), commits each changed row before anyone hears of it, and restores the
//! previous row when a commit fails.
//!
//! A task moves `queued → leased → completed | failed`, `leased → expired`, `leased → queued`
//! (the worker never got its lease), `queued | leased → withdrawn` and `withdrawn → queued` (the
//! same attempt re-submits it). A finished task stays finished.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use uuid::Uuid;

use super::messages::{QueueError, Report};
use crate::handler::{ErrorClass, HandlerError, PhaseOutput, PhaseResult};
use crate::ids::Tenant;
use crate::task::{TaskOutcome, TaskRecord, TaskStatus};

/// A lease about to be granted: who asked, for how long, and the fresh id results must quote.
#[derive(Clone, Debug, PartialEq)]
pub struct LeaseTerms {
    pub worker_id: Option<String>,
    pub length: Duration,
    pub lease_id: Uuid,
}

/// What an accepted report did to its task.
#[derive(Clone, Debug, PartialEq)]
pub enum Reported {
    /// A heartbeat: the lease now runs until `expires_at`.
    Extended { expires_at: DateTime<Utc> },
    /// A result: the task is final, and [`attempt_result`] is what its attempt gets.
    Finished,
}

/// What to do with a queued task whose phase may fall back when no worker shows up.
#[derive(Clone, Debug, PartialEq)]
pub enum Unclaimed {
    /// Nothing: the task moved on, or its attempt stopped waiting for it.
    Moot,
    /// A worker is around, only busy: look again after another window.
    Wait,
    /// The task is withdrawn; its attempt ends with this error (its fallback runs).
    Withdraw(HandlerError),
}

/// `now + length`; a length past chrono's range is taken as none (the edge bounds lengths).
fn after(now: DateTime<Utc>, length: Duration) -> DateTime<Utc> {
    now + chrono::Duration::from_std(length).unwrap_or_default()
}

/// Leases a queued task to a worker; returns when the lease expires. A task that is not queued
/// is never handed out (`None`, unchanged).
pub fn grant(
    record: &mut TaskRecord,
    terms: LeaseTerms,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    if record.status != TaskStatus::Queued {
        return None;
    }
    let expires_at = after(now, terms.length);
    record.status = TaskStatus::Leased;
    record.lease_id = Some(terms.lease_id);
    record.worker_id = terms.worker_id;
    record.lease_expires_at = Some(expires_at);
    record.updated_at = now;
    Some(expires_at)
}

/// Takes a lease back that its worker never received (the lease was not committed, or the
/// worker stopped waiting): the task is queued again with no lease, so a report quoting the
/// old lease is stale from now on. Only a leased task goes back (`false` otherwise).
pub fn requeue(record: &mut TaskRecord, now: DateTime<Utc>) -> bool {
    if record.status != TaskStatus::Leased {
        return false;
    }
    back_on_queue(record, now);
    true
}

/// Queues a task withdrawn by an earlier life of the same attempt, which submits it again
/// (after a restart, or once its fallback gave way). `true` when the row changed and must be
/// written; any other task is left as it is.
pub fn resubmit(record: &mut TaskRecord, now: DateTime<Utc>) -> bool {
    if record.status != TaskStatus::Withdrawn {
        return false;
    }
    back_on_queue(record, now);
    true
}

fn back_on_queue(record: &mut TaskRecord, now: DateTime<Utc>) {
    record.status = TaskStatus::Queued;
    record.lease_id = None;
    record.worker_id = None;
    record.lease_expires_at = None;
    record.updated_at = now;
}

/// Whether a report quoting `lease_id` from `tenant`'s worker may act on the task now. Another
/// tenant's task does not exist for it; a task no longer leased, leased under another lease, or
/// whose lease ran out refuses the report as stale.
pub fn admit(
    record: &TaskRecord,
    tenant: &Tenant,
    lease_id: Uuid,
    now: DateTime<Utc>,
) -> Result<(), QueueError> {
    if record.client_account_id != tenant.client_account_id
        || record.engagement_id != tenant.engagement_id
    {
        return Err(QueueError::NotFound(record.id));
    }
    let stale = |detail| QueueError::StaleLease {
        task_id: record.id,
        status: record.status,
        detail,
    };
    if record.status != TaskStatus::Leased {
        return Err(stale(""));
    }
    if record.lease_id != Some(lease_id) {
        return Err(stale(" under another lease"));
    }
    if record.lease_expires_at.is_some_and(|at| at <= now) {
        return Err(stale(" and its lease expired"));
    }
    Ok(())
}

/// Applies a worker's report, if [`admit`] lets it: a heartbeat extends the lease by `extend`
/// from now; a completion or failure ends the task with the worker's outcome.
pub fn report(
    record: &mut TaskRecord,
    tenant: &Tenant,
    lease_id: Uuid,
    report: Report,
    now: DateTime<Utc>,
) -> Result<Reported, QueueError> {
    admit(record, tenant, lease_id, now)?;
    let (status, outcome) = match report {
        Report::Heartbeat { extend } => {
            let expires_at = after(now, extend);
            record.lease_expires_at = Some(expires_at);
            record.updated_at = now;
            return Ok(Reported::Extended { expires_at });
        }
        Report::Complete { output, next_phase } => (
            TaskStatus::Completed,
            TaskOutcome::Succeeded { output, next_phase },
        ),
        Report::Fail { error, retryable } => (
            TaskStatus::Failed,
            TaskOutcome::Failed {
                message: error,
                retryable,
            },
        ),
    };
    record.status = status;
    record.result = Some(outcome);
    record.updated_at = now;
    Ok(Reported::Finished)
}

/// Ends a leased task whose lease ran out. `due` is the expiry the caller's index holds: a
/// heartbeat since then moved the lease on, and the task is left alone (`false`), as it is
/// while the lease still runs or when the task is not leased.
pub fn expire(record: &mut TaskRecord, due: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    if record.status != TaskStatus::Leased || record.lease_expires_at != Some(due) || due > now {
        return false;
    }
    record.status = TaskStatus::Expired;
    record.updated_at = now;
    true
}

/// Withdraws a task whose attempt is over (cancelled, timed out, fallen back): it leaves its
/// queue, and a late report under its lease is refused. A finished task stays as it finished
/// (`false`).
pub fn withdraw(record: &mut TaskRecord, now: DateTime<Utc>) -> bool {
    if record.status.is_final() {
        return false;
    }
    record.status = TaskStatus::Withdrawn;
    record.updated_at = now;
    true
}

/// Decides about a queued task no worker has leased within `window` of its submission.
/// `attached`: its attempt is still the one waiting for it. `worker_seen`: a worker polled its
/// queue within the window or waits on it now.
pub fn unclaimed(
    record: &mut TaskRecord,
    attached: bool,
    worker_seen: bool,
    window: Duration,
    now: DateTime<Utc>,
) -> Unclaimed {
    if !attached || record.status != TaskStatus::Queued {
        return Unclaimed::Moot;
    }
    if worker_seen {
        return Unclaimed::Wait;
    }
    withdraw(record, now);
    let error = HandlerError::unavailable(format!(
        "no worker polled queue `{}` within {}s",
        record.queue,
        window.as_secs_f64()
    ))
    .with_diagnostic(json!({ "queue": record.queue, "task_id": record.id }));
    Unclaimed::Withdraw(error)
}

/// What a finished task means for the attempt that waits on it; `None` while the task is not
/// finished (or was withdrawn: its attempt ended otherwise). A worker's failure is retried by
/// the phase's policy only if the worker said it may be; an expired lease always may.
pub fn attempt_result(record: &TaskRecord) -> Option<PhaseResult> {
    let diagnostic = || json!({ "task_id": record.id, "worker_id": record.worker_id });
    match record.status {
        TaskStatus::Completed => Some(Ok(match &record.result {
            Some(TaskOutcome::Succeeded { output, next_phase }) => PhaseOutput {
                output: output.clone(),
                next_phase: next_phase.clone(),
            },
            _ => PhaseOutput::new(Value::Null),
        })),
        TaskStatus::Failed => {
            let (message, retryable) = match &record.result {
                Some(TaskOutcome::Failed { message, retryable }) => (message.as_str(), *retryable),
                _ => ("the worker reported a failure", true),
            };
            let class = if retryable {
                ErrorClass::Retryable
            } else {
                ErrorClass::Fatal
            };
            Some(Err(
                HandlerError::new(class, "worker_failed", message).with_diagnostic(diagnostic())
            ))
        }
        TaskStatus::Expired => Some(Err(HandlerError::retryable(
            "lease_expired",
            format!(
                "worker {} stopped heartbeating task {}; its lease expired",
                record.worker_id.as_deref().unwrap_or("(unnamed)"),
                record.id
            ),
        )
        .with_diagnostic(diagnostic()))),
        TaskStatus::Queued | TaskStatus::Leased | TaskStatus::Withdrawn => None,
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::handler::NextPhase;
    use crate::ids::FlowId;
    use crate::task::TaskId;

    fn at(seconds: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + seconds, 0)
            .single()
            .expect("a valid time")
    }

    fn tenant() -> Tenant {
        Tenant {
            client_account_id: "acme".into(),
            engagement_id: "e1".into(),
        }
    }

    fn queued() -> TaskRecord {
        TaskRecord {
            id: TaskId::new(),
            queue: "crew".into(),
            flow_id: FlowId::new(),
            master_flow_id: FlowId::new(),
            phase: "analyze".into(),
            attempt: 2,
            client_account_id: "acme".into(),
            engagement_id: "e1".into(),
            payload: json!({ "input": 1 }),
            status: TaskStatus::Queued,
            lease_id: None,
            worker_id: None,
            lease_expires_at: None,
            result: None,
            created_at: at(0),
            updated_at: at(0),
        }
    }

    fn terms(lease_id: Uuid, seconds: u64) -> LeaseTerms {
        LeaseTerms {
            worker_id: Some("w1".into()),
            length: Duration::from_secs(seconds),
            lease_id,
        }
    }

    /// A task leased at 10 s for 30 s, and its lease id.
    fn leased() -> (TaskRecord, Uuid) {
        let mut record = queued();
        let lease = Uuid::new_v4();
        grant(&mut record, terms(lease, 30), at(10)).expect("granted");
        (record, lease)
    }

    fn complete(output: Value) -> Report {
        Report::Complete {
            output,
            next_phase: NextPhase::ByDefinition,
        }
    }

    fn heartbeat(seconds: u64) -> Report {
        Report::Heartbeat {
            extend: Duration::from_secs(seconds),
        }
    }

    fn stale_detail(result: Result<Reported, QueueError>) -> (TaskStatus, &'static str) {
        match result {
            Err(QueueError::StaleLease { status, detail, .. }) => (status, detail),
            other => panic!("expected a stale lease, got {other:?}"),
        }
    }

    #[test]
    fn a_queued_task_is_leased_once() {
        let mut record = queued();
        let lease = Uuid::new_v4();
        let expires_at = grant(&mut record, terms(lease, 30), at(10));
        assert_eq!(expires_at, Some(at(40)));
        assert_eq!(record.status, TaskStatus::Leased);
        assert_eq!(record.lease_id, Some(lease));
        assert_eq!(record.worker_id.as_deref(), Some("w1"));
        assert_eq!(record.lease_expires_at, Some(at(40)));
        assert_eq!(record.updated_at, at(10));

        let before = record.clone();
        assert_eq!(grant(&mut record, terms(Uuid::new_v4(), 30), at(11)), None);
        assert_eq!(record, before, "a leased task is not handed out again");
        for status in [
            TaskStatus::Completed,
            TaskStatus::Failed,
            TaskStatus::Expired,
            TaskStatus::Withdrawn,
        ] {
            let mut done = queued();
            done.status = status;
            assert_eq!(grant(&mut done, terms(Uuid::new_v4(), 30), at(1)), None);
            assert_eq!(done.status, status);
        }
    }

    #[test]
    fn a_heartbeat_extends_the_lease_from_now() {
        let (mut record, lease) = leased();
        let reported = report(&mut record, &tenant(), lease, heartbeat(60), at(35));
        assert_eq!(reported, Ok(Reported::Extended { expires_at: at(95) }));
        assert_eq!(record.status, TaskStatus::Leased);
        assert_eq!(record.lease_expires_at, Some(at(95)));
        assert_eq!(record.updated_at, at(35));
        // The old expiry no longer ends it; the new one does.
        assert!(!expire(&mut record, at(40), at(50)));
        assert_eq!(record.status, TaskStatus::Leased);
        assert!(expire(&mut record, at(95), at(95)));
        assert_eq!(record.status, TaskStatus::Expired);
    }

    #[test]
    fn a_completion_becomes_the_attempts_output() {
        let (mut record, lease) = leased();
        let done = Report::Complete {
            output: json!({ "rows": 3 }),
            next_phase: NextPhase::Named("report".into()),
        };
        assert_eq!(
            report(&mut record, &tenant(), lease, done, at(20)),
            Ok(Reported::Finished)
        );
        assert_eq!(record.status, TaskStatus::Completed);
        assert_eq!(record.updated_at, at(20));
        assert_eq!(
            attempt_result(&record),
            Some(Ok(PhaseOutput {
                output: json!({ "rows": 3 }),
                next_phase: NextPhase::Named("report".into()),
            }))
        );
    }

    #[test]
    fn a_workers_failure_is_retried_only_if_it_says_so() {
        for (retryable, class) in [(true, ErrorClass::Retryable), (false, ErrorClass::Fatal)] {
            let (mut record, lease) = leased();
            let fail = Report::Fail {
                error: "no credentials".into(),
                retryable,
            };
            assert_eq!(
                report(&mut record, &tenant(), lease, fail, at(20)),
                Ok(Reported::Finished)
            );
            assert_eq!(record.status, TaskStatus::Failed);
            let Some(Err(error)) = attempt_result(&record) else {
                panic!("a failed task fails its attempt");
            };
            assert_eq!(error.class, class);
            assert_eq!(error.kind, "worker_failed");
            assert_eq!(error.message, "no credentials");
            assert_eq!(error.diagnostic["worker_id"], "w1");
        }
    }

    #[test]
    fn an_expired_lease_ends_the_attempt_as_retryable() {
        let (mut record, _) = leased();
        assert!(!expire(&mut record, at(40), at(39)), "not due yet");
        assert_eq!(record.status, TaskStatus::Leased);
        assert!(expire(&mut record, at(40), at(41)));
        assert_eq!(record.status, TaskStatus::Expired);
        assert_eq!(record.updated_at, at(41));
        let Some(Err(error)) = attempt_result(&record) else {
            panic!("an expired task fails its attempt");
        };
        assert_eq!(error.kind, "lease_expired");
        assert!(error.is_retryable());
        assert!(!expire(&mut record, at(40), at(42)), "expires once");
    }

    #[test]
    fn only_leased_tasks_expire() {
        for status in [
            TaskStatus::Queued,
            TaskStatus::Completed,
            TaskStatus::Failed,
            TaskStatus::Withdrawn,
        ] {
            let (mut record, _) = leased();
            record.status = status;
            assert!(!expire(&mut record, at(40), at(100)), "{status}");
            assert_eq!(record.status, status);
        }
    }

    #[test]
    fn a_report_after_expiry_is_stale() {
        let (mut record, lease) = leased();
        // Past the lease but before the sweep got to it: refused all the same.
        let late = report(&mut record, &tenant(), lease, complete(json!(1)), at(40));
        assert_eq!(
            stale_detail(late),
            (TaskStatus::Leased, " and its lease expired")
        );
        assert_eq!(record.status, TaskStatus::Leased);
        assert_eq!(record.result, None);
        // After the sweep.
        assert!(expire(&mut record, at(40), at(41)));
        let late = report(&mut record, &tenant(), lease, complete(json!(1)), at(42));
        assert_eq!(stale_detail(late), (TaskStatus::Expired, ""));
        assert_eq!(record.result, None);
    }

    #[test]
    fn a_heartbeat_after_expiry_does_not_revive_the_lease() {
        let (mut record, lease) = leased();
        let late = report(&mut record, &tenant(), lease, heartbeat(30), at(45));
        assert_eq!(
            stale_detail(late),
            (TaskStatus::Leased, " and its lease expired")
        );
        assert_eq!(record.lease_expires_at, Some(at(40)));
        assert!(expire(&mut record, at(40), at(45)), "it still expires");
        let late = report(&mut record, &tenant(), lease, heartbeat(30), at(46));
        assert_eq!(stale_detail(late), (TaskStatus::Expired, ""));
    }

    #[test]
    fn a_report_under_another_lease_is_stale() {
        let (mut record, _) = leased();
        let before = record.clone();
        for hostile in [heartbeat(30), complete(json!("mine"))] {
            let refused = report(&mut record, &tenant(), Uuid::new_v4(), hostile, at(20));
            assert_eq!(
                stale_detail(refused),
                (TaskStatus::Leased, " under another lease")
            );
        }
        assert_eq!(record, before);
    }

    #[test]
    fn another_tenants_worker_does_not_see_the_task() {
        let (mut record, lease) = leased();
        let before = record.clone();
        let stranger = Tenant {
            client_account_id: "acme".into(),
            engagement_id: "other".into(),
        };
        let refused = report(&mut record, &stranger, lease, complete(json!(1)), at(20));
        assert_eq!(refused, Err(QueueError::NotFound(record.id)));
        assert_eq!(record, before);
    }

    #[test]
    fn a_second_report_is_refused_and_the_first_stands() {
        let (mut record, lease) = leased();
        report(&mut record, &tenant(), lease, complete(json!(1)), at(20)).expect("first");
        let first = record.clone();
        let again = Report::Fail {
            error: "changed my mind".into(),
            retryable: false,
        };
        let refused = report(&mut record, &tenant(), lease, again, at(21));
        assert_eq!(stale_detail(refused), (TaskStatus::Completed, ""));
        let refused = report(&mut record, &tenant(), lease, complete(json!(2)), at(21));
        assert_eq!(stale_detail(refused), (TaskStatus::Completed, ""));
        let refused = report(&mut record, &tenant(), lease, heartbeat(30), at(21));
        assert_eq!(stale_detail(refused), (TaskStatus::Completed, ""));
        assert_eq!(record, first);
    }

    #[test]
    fn a_report_on_a_queued_task_is_stale() {
        let mut record = queued();
        let refused = report(
            &mut record,
            &tenant(),
            Uuid::new_v4(),
            complete(json!(1)),
            at(1),
        );
        assert_eq!(stale_detail(refused), (TaskStatus::Queued, ""));
    }

    #[test]
    fn a_requeued_task_refuses_the_old_lease_and_leases_again() {
        let (mut record, lease) = leased();
        assert!(requeue(&mut record, at(12)));
        assert_eq!(record.status, TaskStatus::Queued);
        assert_eq!(
            (record.lease_id, &record.worker_id, record.lease_expires_at),
            (None, &None, None)
        );
        let late = report(&mut record, &tenant(), lease, complete(json!(1)), at(13));
        assert_eq!(stale_detail(late), (TaskStatus::Queued, ""));
        let next = Uuid::new_v4();
        assert_eq!(grant(&mut record, terms(next, 5), at(14)), Some(at(19)));
        assert_eq!(record.lease_id, Some(next));
        // Only a leased task goes back on its queue.
        record.status = TaskStatus::Completed;
        assert!(!requeue(&mut record, at(15)));
        assert_eq!(record.status, TaskStatus::Completed);
    }

    #[test]
    fn a_withdrawn_task_refuses_its_worker_and_gives_the_attempt_nothing() {
        let (mut record, lease) = leased();
        assert!(withdraw(&mut record, at(20)));
        assert_eq!(record.status, TaskStatus::Withdrawn);
        assert_eq!(attempt_result(&record), None);
        let late = report(&mut record, &tenant(), lease, complete(json!(1)), at(21));
        assert_eq!(stale_detail(late), (TaskStatus::Withdrawn, ""));
        assert!(!expire(&mut record, at(40), at(41)));
    }

    #[test]
    fn a_finished_task_is_not_withdrawn() {
        let (mut record, lease) = leased();
        report(&mut record, &tenant(), lease, complete(json!(1)), at(20)).expect("completed");
        assert!(!withdraw(&mut record, at(21)));
        assert_eq!(record.status, TaskStatus::Completed);
        assert!(matches!(attempt_result(&record), Some(Ok(_))));
    }

    #[test]
    fn a_resubmitted_withdrawn_task_is_queued_afresh() {
        let (mut record, _) = leased();
        withdraw(&mut record, at(20));
        assert!(resubmit(&mut record, at(30)));
        assert_eq!(record.status, TaskStatus::Queued);
        assert_eq!((record.lease_id, record.lease_expires_at), (None, None));
        assert_eq!(record.updated_at, at(30));
        // Anything else is taken as it stands.
        let (mut leased, _) = leased();
        let before = leased.clone();
        assert!(!resubmit(&mut leased, at(31)));
        assert_eq!(leased, before);
        let mut fresh = queued();
        assert!(!resubmit(&mut fresh, at(31)));
    }

    #[test]
    fn an_unclaimed_task_is_withdrawn_only_when_no_worker_came() {
        let window = Duration::from_secs(5);
        let mut record = queued();
        assert_eq!(
            unclaimed(&mut record, true, true, window, at(5)),
            Unclaimed::Wait
        );
        assert_eq!(record.status, TaskStatus::Queued);
        assert_eq!(
            unclaimed(&mut record, false, false, window, at(5)),
            Unclaimed::Moot,
            "its attempt no longer waits"
        );
        assert_eq!(record.status, TaskStatus::Queued);
        let Unclaimed::Withdraw(error) = unclaimed(&mut record, true, false, window, at(5)) else {
            panic!("withdrawn");
        };
        assert_eq!(record.status, TaskStatus::Withdrawn);
        assert_eq!(error.class, ErrorClass::Unavailable);
        assert_eq!(error.kind, "handler_unavailable");
        assert!(
            error.message.contains("`crew` within 5s"),
            "{}",
            error.message
        );
        // A task a worker leased meanwhile is not withdrawn under it.
        let (mut leased, _) = leased();
        assert_eq!(
            unclaimed(&mut leased, true, false, window, at(15)),
            Unclaimed::Moot
        );
        assert_eq!(leased.status, TaskStatus::Leased);
    }

    #[test]
    fn unfinished_tasks_give_no_result() {
        let (leased, _) = leased();
        assert_eq!(attempt_result(&queued()), None);
        assert_eq!(attempt_result(&leased), None);
    }

    #[test]
    fn a_stored_task_without_its_outcome_takes_the_defaults() {
        let mut record = queued();
        record.status = TaskStatus::Completed;
        assert_eq!(
            attempt_result(&record),
            Some(Ok(PhaseOutput::new(Value::Null)))
        );
        record.status = TaskStatus::Failed;
        let Some(Err(error)) = attempt_result(&record) else {
            panic!("failed");
        };
        assert_eq!(error.class, ErrorClass::Retryable);
    }
}
