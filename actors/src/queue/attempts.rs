//! The attempt side: a phase attempt submits its task and waits; it may detach early. A
//! task's end (completed, failed, expired) becomes the attempt's result.

use super::*;

impl QueueActor {
    /// Ends a task with `status`, commits it, then tells the attempt waiting for it.
    pub(super) fn finish(
        &mut self,
        task_id: TaskId,
        status: TaskStatus,
        result: Option<Value>,
        ctx: &mut Context<Self>,
    ) -> Option<impl Future<Output = Result<TaskRecord, QueueError>> + use<>> {
        let task = self.tasks.get_mut(&task_id)?;
        let previous = task.record.clone();
        let stamp = now();
        task.record.status = status;
        task.record.result = result;
        task.record.updated_at = stamp;
        let record = task.record.clone();
        self.unqueue(&record);
        let commit = self.persist(&record);
        let (done, answer) = oneshot::channel();
        ctx.spawn(
            commit
                .into_actor(self)
                .map(move |result, act, _| match result {
                    Ok(()) => {
                        // Unless it was revived meanwhile (a withdrawn task re-submitted by its
                        // attempt), the finished task leaves memory; the store has it.
                        let unchanged = act.tasks.get(&task_id).is_some_and(|t| {
                            t.record.status == status && t.record.updated_at == stamp
                        });
                        if unchanged
                            && let Some(task) = act.tasks.remove(&task_id)
                            && let Some(outcome) = outcome_of(&task.record)
                        {
                            act.finished
                                .insert(task_id, (Instant::now(), outcome.clone()));
                            if let Some((_, waiter)) = task.waiter {
                                let _ = waiter.send(outcome);
                            }
                        }
                        let _ = done.send(Ok(record));
                    }
                    Err(error) => {
                        if let Some(task) = act.tasks.get_mut(&task_id) {
                            task.record = previous;
                        }
                        let _ = done.send(Err(error));
                    }
                }),
        );
        Some(async move {
            answer
                .await
                .unwrap_or_else(|_| Err(QueueError::Unavailable("queue actor stopped".into())))
        })
    }
}

/// Queued again, with no lease: a worker's report under the old lease is stale from now on.
pub(super) fn back_on_queue(record: &mut TaskRecord) {
    record.status = TaskStatus::Queued;
    record.lease_id = None;
    record.worker_id = None;
    record.lease_expires_at = None;
    record.updated_at = now();
}

/// What a finished task means for its attempt; `None` while it is not finished.
fn outcome_of(record: &TaskRecord) -> Option<PhaseResult> {
    let result = record.result.as_ref();
    match record.status {
        TaskStatus::Completed => {
            let output = result
                .and_then(|r| r.get("output"))
                .cloned()
                .unwrap_or(Value::Null);
            let next_phase = match result.and_then(|r| r.get("next_phase")) {
                None => NextPhase::ByDefinition,
                Some(Value::String(name)) => NextPhase::Named(name.clone()),
                Some(_) => NextPhase::Finish,
            };
            Some(Ok(PhaseOutput { output, next_phase }))
        }
        TaskStatus::Failed => {
            let message = result
                .and_then(|r| r.get("error"))
                .and_then(Value::as_str)
                .unwrap_or("the worker reported a failure")
                .to_owned();
            let retryable = result
                .and_then(|r| r.get("retryable"))
                .and_then(Value::as_bool)
                .unwrap_or(true);
            let error = HandlerError {
                kind: "worker_failed".into(),
                message,
                class: if retryable {
                    ErrorClass::Retryable
                } else {
                    ErrorClass::Fatal
                },
                diagnostic: json!({ "task_id": record.id, "worker_id": record.worker_id }),
            };
            Some(Err(error))
        }
        TaskStatus::Expired => Some(Err(HandlerError::retryable(
            "lease_expired",
            format!(
                "worker {} stopped heartbeating task {}; its lease expired",
                record.worker_id.as_deref().unwrap_or("(unnamed)"),
                record.id
            ),
        )
        .with_diagnostic(json!({ "task_id": record.id, "worker_id": record.worker_id })))),
        TaskStatus::Queued | TaskStatus::Leased | TaskStatus::Withdrawn => None,
    }
}

impl Handler<Submit> for QueueActor {
    type Result = ResponseActFuture<Self, Result<Attached, QueueError>>;

    fn handle(&mut self, submit: Submit, ctx: &mut Self::Context) -> Self::Result {
        let Submit {
            task,
            stored,
            unavailable_after,
        } = submit;
        let task_id = task.id;
        self.next_token += 1;
        let token = self.next_token;
        let (sender, outcome) = oneshot::channel();
        let attached = Attached {
            task_id,
            token,
            outcome,
        };
        if let Some((_, result)) = self.finished.get(&task_id) {
            let _ = sender.send(result.clone());
            return Box::pin(fut::ready(Ok(attached)));
        }
        if let Some(result) = outcome_of(&task) {
            let _ = sender.send(result);
            return Box::pin(fut::ready(Ok(attached)));
        }
        let live = self
            .tasks
            .entry(task_id)
            .or_insert_with(|| LiveTask::new(task));
        live.waiter = Some((token, sender));
        let mut write = !stored;
        match live.record.status {
            TaskStatus::Queued => {}
            TaskStatus::Leased => {
                if let Some(expires_at) = live.record.lease_expires_at {
                    self.leases.insert((expires_at, task_id));
                }
            }
            // Finishing: the pending commit hands the outcome to the waiter just attached.
            TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Expired => {}
            TaskStatus::Withdrawn => {
                // Withdrawn by an earlier life of this attempt: back on the queue.
                back_on_queue(&mut live.record);
                write = true;
            }
        }
        let queued = live.record.status == TaskStatus::Queued;
        let key = Self::key(&live.record);
        let record = live.record.clone();
        let commit = write.then(|| self.persist(&record));
        if queued {
            self.enqueue(task_id);
        }
        if let Some(window) = unavailable_after {
            ctx.run_later(window, move |act, ctx| {
                act.check_unclaimed(task_id, token, window, ctx)
            });
        }
        Box::pin(
            async move {
                match commit {
                    Some(commit) => commit.await,
                    None => Ok(()),
                }
            }
            .into_actor(self)
            .map(move |result, act, ctx| match result {
                Ok(()) => {
                    if let Some(task) = act.tasks.get_mut(&task_id) {
                        task.compact();
                    }
                    act.dispatch(&key, ctx);
                    Ok(attached)
                }
                Err(error) => {
                    if let Some(task) = act.tasks.remove(&task_id) {
                        act.unqueue(&task.record);
                    }
                    Err(error)
                }
            }),
        )
    }
}

impl Handler<Detach> for QueueActor {
    type Result = ();

    fn handle(&mut self, detach: Detach, ctx: &mut Self::Context) {
        let Some(task) = self.tasks.get_mut(&detach.task_id) else {
            return;
        };
        if task.waiter.as_ref().map(|(t, _)| *t) != Some(detach.token) {
            return;
        }
        task.waiter = None;
        if !detach.withdraw {
            return;
        }
        debug!(task_id = %detach.task_id, "attempt stopped waiting; task withdrawn");
        if let Some(commit) = self.finish(detach.task_id, TaskStatus::Withdrawn, None, ctx) {
            ctx.spawn(fut::wrap_future(async move {
                if let Err(error) = commit.await {
                    warn!(%error, "withdrawal not committed");
                }
            }));
        }
    }
}
