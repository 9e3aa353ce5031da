//! The attempt side: a phase attempt submits its task and waits; it may detach early. A
//! task's end (completed, failed, expired) becomes the attempt's result
//! ([`lease_machine::attempt_result`]).

use super::*;

impl QueueActor {
    /// Commits a task the lease machine just finished (from `previous`), then tells the attempt
    /// waiting for it; a failed commit restores `previous`.
    pub(super) fn finish(
        &mut self,
        task_id: TaskId,
        previous: TaskRecord,
        ctx: &mut Context<Self>,
    ) -> Option<impl Future<Output = Result<TaskRecord, QueueError>> + use<>> {
        let record = self.tasks.get(&task_id)?.record.clone();
        let (status, stamp) = (record.status, record.updated_at);
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
                            && let Some(outcome) = lease_machine::attempt_result(&task.record)
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
        if let Some(result) = lease_machine::attempt_result(&task) {
            let _ = sender.send(result);
            return Box::pin(fut::ready(Ok(attached)));
        }
        let live = self
            .tasks
            .entry(task_id)
            .or_insert_with(|| LiveTask::new(task));
        live.waiter = Some((token, sender));
        // Withdrawn by an earlier life of this attempt: back on the queue. A finishing task's
        // pending commit hands the outcome to the waiter just attached.
        let resubmitted = lease_machine::resubmit(&mut live.record, now());
        let write = resubmitted || !stored;
        let shared = self.shared.clone();
        if shared.is_none()
            && live.record.status == TaskStatus::Leased
            && let Some(expires_at) = live.record.lease_expires_at
        {
            self.leases.insert((expires_at, task_id));
        }
        let queued = live.record.status == TaskStatus::Queued;
        let key = Self::key(&live.record);
        let record = live.record.clone();
        type Commit = futures_util::future::BoxFuture<'static, Result<(), QueueError>>;
        let commit: Option<Commit> = match (&shared, resubmitted) {
            // Cluster mode: only a row still withdrawn is queued again.
            (Some(shared), true) => {
                let shared = shared.clone();
                Some(Box::pin(async move {
                    shared
                        .resubmit(task_id)
                        .await
                        .map(drop)
                        .map_err(|e| QueueError::Unavailable(e.to_string()))
                }))
            }
            _ => write.then(|| Box::pin(self.persist(&record)) as Commit),
        };
        // Cluster mode: a row is leased only once it is committed, so it is queued after.
        let enqueue_after = shared.is_some() && write;
        if queued && !enqueue_after {
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
                    if queued && enqueue_after {
                        act.enqueue_if_queued(task_id);
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
        if let Some(shared) = self.shared.clone() {
            if task.record.status.is_final() {
                return;
            }
            debug!(task_id = %detach.task_id, "attempt stopped waiting; task withdrawn");
            let withdrawn = self.withdraw_shared(shared, detach.task_id, false, ctx);
            ctx.spawn(fut::wrap_future(async move {
                if let Err(error) = withdrawn.await {
                    warn!(%error, "withdrawal not committed");
                }
            }));
            return;
        }
        let previous = task.record.clone();
        if !lease_machine::withdraw(&mut task.record, now()) {
            return;
        }
        debug!(task_id = %detach.task_id, "attempt stopped waiting; task withdrawn");
        if let Some(commit) = self.finish(detach.task_id, previous, ctx) {
            ctx.spawn(fut::wrap_future(async move {
                if let Err(error) = commit.await {
                    warn!(%error, "withdrawal not committed");
                }
            }));
        }
    }
}
