//! Leases: a polling worker gets the oldest queued task with a lease; an expired lease puts
//! the attempt's end in motion; a task no worker claims within its window is withdrawn.

use super::lease_machine::{LeaseTerms, Unclaimed};
use super::*;

impl QueueActor {
    /// Whether a worker showed up on `key` within `window`, or is waiting on it now.
    pub(super) fn worker_seen(&self, key: &QueueKey, window: Duration) -> bool {
        self.pollers
            .get(key)
            .is_some_and(|p| p.iter().any(|p| !p.reply.is_closed()))
            || self
                .last_poll
                .get(key)
                .is_some_and(|at| at.elapsed() <= window)
    }

    /// Hands queued tasks of `key` to waiting pollers, oldest task to longest-waiting poller.
    pub(super) fn dispatch(&mut self, key: &QueueKey, ctx: &mut Context<Self>) {
        loop {
            let Some(pollers) = self.pollers.get_mut(key) else {
                return;
            };
            while pollers.front().is_some_and(|p| p.reply.is_closed()) {
                pollers.pop_front();
            }
            if pollers.is_empty() {
                self.pollers.remove(key);
                return;
            }
            let Some(task_id) = self.ready.get(key).and_then(|r| r.first().copied()) else {
                return;
            };
            if self
                .tasks
                .get(&task_id)
                .is_none_or(|t| t.record.status != TaskStatus::Queued)
            {
                // Not queued any more (finished or leased meanwhile): never hand it out.
                if let Some(ready) = self.ready.get_mut(key) {
                    ready.remove(&task_id);
                }
                continue;
            }
            let Some(poller) = self.pollers.get_mut(key).and_then(VecDeque::pop_front) else {
                return;
            };
            self.lease_to(task_id, poller, ctx);
        }
    }

    pub(super) fn lease_to(&mut self, task_id: TaskId, poller: Poller, ctx: &mut Context<Self>) {
        if let Some(shared) = self.shared.clone() {
            return self.lease_shared(shared, task_id, poller, ctx);
        }
        let Some(task) = self.tasks.get_mut(&task_id) else {
            return;
        };
        let terms = LeaseTerms {
            worker_id: poller.worker_id.clone(),
            length: poller.lease,
            lease_id: Uuid::new_v4(),
        };
        let Some(expires_at) = lease_machine::grant(&mut task.record, terms, now()) else {
            // Not queued (the caller checked): the poller waits on for another task.
            let key = Self::key(&task.record);
            self.pollers.entry(key).or_default().push_front(poller);
            return;
        };
        let record = task.record.clone();
        self.unqueue(&record);
        self.leases.insert((expires_at, task_id));
        let commit = self.persist(&record);
        ctx.spawn(commit.into_actor(self).map(move |result, act, ctx| {
            let lease_id = record.lease_id.unwrap_or_default();
            let still_ours = act
                .tasks
                .get(&task_id)
                .is_some_and(|t| t.record.lease_id == Some(lease_id));
            let payload = act.tasks.get(&task_id).map(|t| t.payload());
            match (result, payload) {
                (Ok(()), Some(payload)) if still_ours => {
                    let lease = Lease {
                        task_id,
                        lease_id,
                        expires_at,
                        flow_id: record.flow_id,
                        phase: record.phase.clone(),
                        attempt: record.attempt,
                        payload,
                    };
                    if poller.reply.send(Ok(Some(lease))).is_err() {
                        // The worker gave up waiting before the lease was committed.
                        act.requeue(task_id, ctx);
                    } else {
                        debug!(flow_id = %record.flow_id, phase = %record.phase, task_id = %task_id, "task leased");
                    }
                }
                (Ok(()), _) => {
                    let _ = poller.reply.send(Ok(None));
                }
                (Err(error), _) => {
                    warn!(%error, task_id = %task_id, "lease not committed; task stays queued");
                    if still_ours {
                        act.requeue_in_memory(task_id);
                    }
                    let _ = poller.reply.send(Err(error));
                }
            }
        }));
    }

    /// Takes back a lease its worker never received; `false` when the task was not leased.
    pub(super) fn requeue_in_memory(&mut self, task_id: TaskId) -> bool {
        let requeued = self
            .tasks
            .get_mut(&task_id)
            .is_some_and(|task| lease_machine::requeue(&mut task.record, now()));
        if requeued {
            self.enqueue(task_id);
        }
        requeued
    }

    /// Puts a task back on its queue (durably) and offers it to waiting workers.
    pub(super) fn requeue(&mut self, task_id: TaskId, ctx: &mut Context<Self>) {
        if !self.requeue_in_memory(task_id) {
            return;
        }
        let Some(task) = self.tasks.get(&task_id) else {
            return;
        };
        let key = Self::key(&task.record);
        let commit = self.persist(&task.record);
        ctx.spawn(commit.into_actor(self).map(move |result, act, ctx| {
            if let Err(error) = result {
                warn!(%error, task_id = %task_id, "requeue not committed; the stored lease will expire");
            }
            act.dispatch(&key, ctx);
        }));
    }

    pub(super) fn expire_leases(&mut self, ctx: &mut Context<Self>) {
        // Cluster mode indexes no leases: their rows expire by the database's clock.
        self.sweep_shared(ctx);
        let at = now();
        while let Some(&(expires_at, task_id)) = self.leases.first() {
            if expires_at > at {
                break;
            }
            self.leases.pop_first();
            let Some(task) = self.tasks.get_mut(&task_id) else {
                continue;
            };
            let previous = task.record.clone();
            // An index entry whose task moved on (a heartbeat, a result) expires nothing.
            if lease_machine::expire(&mut task.record, expires_at, at) {
                info!(task_id = %task_id, "lease expired; the attempt fails");
                if let Some(commit) = self.finish(task_id, previous, ctx) {
                    ctx.spawn(fut::wrap_future(async move {
                        if let Err(error) = commit.await {
                            warn!(%error, "expiry not committed; retried at the next sweep");
                        }
                    }));
                }
            }
        }
        if self.pruned_at.elapsed() >= FINISHED_TTL / 10 {
            self.pruned_at = Instant::now();
            self.finished
                .retain(|_, (at, _)| at.elapsed() < FINISHED_TTL);
        }
    }

    /// Withdraws a queued task whose queue no worker polled within `window`, and ends its
    /// attempt as unavailable; checks again later while workers are around but busy.
    pub(super) fn check_unclaimed(
        &mut self,
        task_id: TaskId,
        token: u64,
        window: Duration,
        ctx: &mut Context<Self>,
    ) {
        let Some(task) = self.tasks.get(&task_id) else {
            return;
        };
        let seen = self.worker_seen(&Self::key(&task.record), window);
        let Some(task) = self.tasks.get_mut(&task_id) else {
            return;
        };
        let attached = task.waiter.as_ref().map(|(t, _)| *t) == Some(token);
        let previous = task.record.clone();
        let error = match lease_machine::unclaimed(&mut task.record, attached, seen, window, now())
        {
            Unclaimed::Moot => return,
            Unclaimed::Wait => {
                ctx.run_later(window, move |act, ctx| {
                    act.check_unclaimed(task_id, token, window, ctx)
                });
                return;
            }
            Unclaimed::Withdraw(error) => error,
        };
        if let Some(shared) = self.shared.clone() {
            // Cluster mode: workers of other nodes count too, and the row decides.
            task.record = previous;
            return self.check_unclaimed_shared(shared, task_id, token, window, error, ctx);
        }
        let waiter = task.waiter.take();
        info!(task_id = %task_id, queue = %task.record.queue, "no worker polled the queue; task withdrawn");
        if let Some(commit) = self.finish(task_id, previous, ctx) {
            ctx.spawn(fut::wrap_future(async move {
                let committed = commit.await;
                if let Some((_, waiter)) = waiter {
                    let _ = waiter.send(match committed {
                        Ok(_) => Err(error),
                        Err(e) => Err(HandlerError::retryable("queue_unavailable", e.to_string())),
                    });
                }
            }));
        }
    }
}

impl Handler<Poll> for QueueActor {
    type Result = ResponseFuture<Result<Option<Lease>, QueueError>>;

    fn handle(&mut self, poll: Poll, ctx: &mut Self::Context) -> Self::Result {
        let key = (poll.tenant, poll.queue);
        self.last_poll.insert(key.clone(), Instant::now());
        self.next_token += 1;
        let (reply, answer) = oneshot::channel();
        self.pollers
            .entry(key.clone())
            .or_default()
            .push_back(Poller {
                id: self.next_token,
                worker_id: poll.worker_id,
                lease: poll.lease,
                reply,
            });
        self.dispatch(&key, ctx);
        self.fetch_elsewhere(&key, ctx);
        self.tell_polled(&key, ctx);
        let wait = poll.wait;
        Box::pin(async move {
            match tokio::time::timeout(wait, answer).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err(QueueError::Unavailable("queue actor stopped".into())),
                Err(_) => Ok(None),
            }
        })
    }
}
