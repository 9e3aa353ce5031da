//! The queue's jobs when the task rows are shared by the nodes of a cluster ([`SharedTasks`]):
//! every transition is a conditional statement on the row, and memory follows what the row
//! says. Workers polling this node get this node's tasks from memory (a conditional lease on
//! the row) and, when there are none, the oldest queued task of another node's flow; a result
//! taken by another node reaches the attempt waiting here by a notification or, if that is
//! lost, by the backstop read.

use futures_util::FutureExt as _;

use super::shared::LeaseRequest;
use super::*;

/// How often waiting workers are offered other nodes' tasks without being told of any.
const FETCH_EVERY: Duration = Duration::from_millis(250);
/// How often the rows of the tasks waited for here are read, in case a notification was lost
/// (at once after the listener reconnects): every second for up to [`SETTLED_PER_READ`]
/// tasks, a second more for each such share, so that many parked attempts cost one bounded
/// read a second on average.
const SETTLED_EVERY: Duration = Duration::from_secs(1);
const SETTLED_PER_READ: usize = 5_000;
/// How often this node records that workers poll or wait on a queue (`queue_polls`).
const TELL_POLLED_EVERY: Duration = Duration::from_secs(1);

impl QueueActor {
    /// Takes a row as it now stands (returned by a transition or read back after losing a
    /// race): memory follows it, and a finished task's outcome goes to its waiting attempt,
    /// once (the task leaves memory with it).
    pub(super) fn settle(&mut self, mut record: TaskRecord) {
        let task_id = record.id;
        let Some(task) = self.tasks.get_mut(&task_id) else {
            return;
        };
        if task.payload.is_some() {
            record.payload = Value::Null;
        }
        task.record = record;
        match task.record.status {
            TaskStatus::Queued => self.enqueue(task_id),
            TaskStatus::Leased => {
                let record = task.record.clone();
                self.unqueue(&record);
            }
            TaskStatus::Withdrawn => {
                if let Some(task) = self.tasks.remove(&task_id) {
                    self.unqueue(&task.record);
                }
            }
            TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Expired => {
                let Some(task) = self.tasks.remove(&task_id) else {
                    return;
                };
                self.unqueue(&task.record);
                if let Some(outcome) = lease_machine::attempt_result(&task.record) {
                    debug!(flow_id = %task.record.flow_id, phase = %task.record.phase, task_id = %task_id, status = %task.record.status, "task settled");
                    self.finished
                        .insert(task_id, (Instant::now(), outcome.clone()));
                    if let Some((_, waiter)) = task.waiter {
                        let _ = waiter.send(outcome);
                    }
                }
            }
        }
    }

    /// Reads a task's row after a transition on it matched nothing, and takes it as it stands.
    fn reread(&mut self, task_id: TaskId, ctx: &mut Context<Self>) {
        let store = self.store.clone();
        ctx.spawn(
            async move { store.load_task(task_id).await }
                .into_actor(self)
                .map(move |loaded, act, ctx| match loaded {
                    Ok(Some(record)) => {
                        let key = Self::key(&record);
                        act.settle(record);
                        act.dispatch(&key, ctx);
                    }
                    Ok(None) => {}
                    Err(error) => warn!(%error, task_id = %task_id, "task row not read"),
                }),
        );
    }

    /// Leases a task of this node's flows, handed out from memory, if its row is still queued.
    pub(super) fn lease_shared(
        &mut self,
        shared: Arc<dyn SharedTasks>,
        task_id: TaskId,
        poller: Poller,
        ctx: &mut Context<Self>,
    ) {
        let Some(task) = self.tasks.get(&task_id) else {
            return;
        };
        let key = Self::key(&task.record);
        let record = task.record.clone();
        // Out of the queue while the statement runs, so the next worker gets the next task.
        self.unqueue(&record);
        let lease_id = Uuid::new_v4();
        let (worker_id, length) = (poller.worker_id.clone(), poller.lease);
        let take = async move {
            let request = LeaseRequest {
                worker_id: worker_id.as_deref(),
                length,
                lease_id,
            };
            shared.lease(task_id, request).await
        };
        ctx.spawn(
            take.into_actor(self)
                .map(move |result, act, ctx| match result {
                    Ok(Some(leased)) => {
                        let payload = act
                            .tasks
                            .get(&task_id)
                            .map_or_else(|| leased.payload.clone(), |t| t.payload());
                        act.settle(leased.clone());
                        act.hand_over(leased, payload, poller, ctx);
                    }
                    Ok(None) => {
                        // Leased, withdrawn or finished meanwhile: the row says which.
                        act.pollers
                            .entry(key.clone())
                            .or_default()
                            .push_front(poller);
                        act.reread(task_id, ctx);
                    }
                    Err(error) => {
                        warn!(%error, task_id = %task_id, "lease not taken; task stays queued");
                        act.enqueue(task_id);
                        let _ = poller
                            .reply
                            .send(Err(QueueError::Unavailable(error.to_string())));
                    }
                }),
        );
    }

    /// Gives a leased row to its worker; a worker that stopped waiting gives the lease back.
    fn hand_over(
        &mut self,
        leased: TaskRecord,
        payload: Value,
        poller: Poller,
        ctx: &mut Context<Self>,
    ) {
        let (Some(lease_id), Some(expires_at)) = (leased.lease_id, leased.lease_expires_at) else {
            let _ = poller.reply.send(Ok(None));
            return;
        };
        let lease = Lease {
            task_id: leased.id,
            lease_id,
            expires_at,
            flow_id: leased.flow_id,
            phase: leased.phase.clone(),
            attempt: leased.attempt,
            payload,
        };
        if poller.reply.send(Ok(Some(lease))).is_ok() {
            debug!(flow_id = %leased.flow_id, phase = %leased.phase, task_id = %leased.id, "task leased");
            return;
        }
        self.give_back(leased.id, lease_id, ctx);
    }

    /// Puts a lease no worker received back on its queue.
    fn give_back(&mut self, task_id: TaskId, lease_id: Uuid, ctx: &mut Context<Self>) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        ctx.spawn(
            async move { shared.requeue(task_id, lease_id).await }
                .into_actor(self)
                .map(move |result, act, ctx| {
                    if let Err(error) = result {
                        warn!(%error, task_id = %task_id, "requeue not committed; the lease will expire");
                    }
                    act.reread(task_id, ctx);
                }),
        );
    }

    /// Offers the longest-waiting worker of `key` the oldest queued task of another node's
    /// flows, when this node has none for it. The worker keeps waiting meanwhile: a task of
    /// this node that comes first is handed to it from memory, as on one node, and the lease
    /// taken for it elsewhere goes back to its queue.
    pub(super) fn fetch_elsewhere(&mut self, key: &QueueKey, ctx: &mut Context<Self>) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        if self.fetching.contains(key) || self.ready.get(key).is_some_and(|r| !r.is_empty()) {
            return;
        }
        let Some(poller) = self
            .pollers
            .get(key)
            .and_then(|p| p.iter().find(|p| !p.reply.is_closed()))
        else {
            return;
        };
        self.fetching.insert(key.clone());
        let lease_id = Uuid::new_v4();
        let (poller_id, worker_id, length) = (poller.id, poller.worker_id.clone(), poller.lease);
        let (tenant, queue) = key.clone();
        let take = async move {
            let request = LeaseRequest {
                worker_id: worker_id.as_deref(),
                length,
                lease_id,
            };
            shared.lease_next(&tenant, &queue, request).await
        };
        let key = key.clone();
        ctx.spawn(take.into_actor(self).map(move |result, act, ctx| {
            act.fetching.remove(&key);
            match result {
                Ok(Some(leased)) => {
                    let poller = act.pollers.get_mut(&key).and_then(|pollers| {
                        let at = pollers.iter().position(|p| p.id == poller_id)?;
                        pollers.remove(at)
                    });
                    let payload = leased.payload.clone();
                    match poller {
                        Some(poller) => act.hand_over(leased, payload, poller, ctx),
                        None => act.give_back(leased.id, lease_id, ctx),
                    }
                    // There may be more for the workers still waiting.
                    act.fetch_elsewhere(&key, ctx);
                }
                Ok(None) => {}
                Err(error) => warn!(%error, queue = %key.1, "other nodes' tasks not read"),
            }
        }));
    }

    /// Records, at most once a second per queue, that a worker polls or waits on `key` here,
    /// so that the owners of its tasks on other nodes know workers are around.
    pub(super) fn tell_polled(&mut self, key: &QueueKey, ctx: &mut Context<Self>) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        if self
            .polls_told
            .get(key)
            .is_some_and(|at| at.elapsed() < TELL_POLLED_EVERY)
        {
            return;
        }
        self.polls_told.insert(key.clone(), Instant::now());
        let (tenant, queue) = key.clone();
        ctx.spawn(fut::wrap_future(async move {
            if let Err(error) = shared.polled(&tenant, &queue).await {
                warn!(%error, queue = %queue, "poll not recorded");
            }
        }));
    }

    /// The unclaimed-task rule with every node's workers: a task whose queue no worker polled
    /// on any node within `window` is withdrawn, if its row is still queued; otherwise it is
    /// looked at again after another window.
    pub(super) fn check_unclaimed_shared(
        &mut self,
        shared: Arc<dyn SharedTasks>,
        task_id: TaskId,
        token: u64,
        window: Duration,
        error: HandlerError,
        ctx: &mut Context<Self>,
    ) {
        let Some(task) = self.tasks.get(&task_id) else {
            return;
        };
        let (tenant, queue) = Self::key(&task.record);
        // Polls are recorded at most once a period: a poll within the window may show one
        // period older.
        let span = window + TELL_POLLED_EVERY;
        let rows = shared.clone();
        let seen = async move { rows.polled_within(&tenant, &queue, span).await };
        ctx.spawn(seen.into_actor(self).map(move |seen, act, ctx| {
            if !matches!(seen, Ok(false)) {
                if let Err(error) = seen {
                    warn!(%error, task_id = %task_id, "polls not read; the task stays queued");
                }
                ctx.run_later(window, move |act, ctx| {
                    act.check_unclaimed(task_id, token, window, ctx)
                });
                return;
            }
            let Some(task) = act.tasks.get_mut(&task_id) else {
                return;
            };
            if task.waiter.as_ref().map(|(t, _)| *t) != Some(token)
                || task.record.status != TaskStatus::Queued
            {
                return;
            }
            let waiter = task.waiter.take();
            info!(task_id = %task_id, queue = %task.record.queue, "no worker polled the queue on any node; task withdrawn");
            let withdrawn = act.withdraw_shared(shared, task_id, true, ctx);
            ctx.spawn(
                fut::wrap_future::<_, Self>(withdrawn).map(move |result, act, _| {
                    let Some((token, waiter)) = waiter else {
                        return;
                    };
                    match result {
                        Ok(Some(_)) => {
                            let _ = waiter.send(Err(error));
                        }
                        Ok(None) => {
                            // Leased meanwhile: the attempt waits for its worker.
                            if let Some(task) = act.tasks.get_mut(&task_id) {
                                task.waiter = Some((token, waiter));
                            }
                        }
                        Err(e) => {
                            let _ = waiter.send(Err(HandlerError::retryable(
                                "queue_unavailable",
                                e.to_string(),
                            )));
                        }
                    }
                }),
            );
        }));
    }

    /// Cluster mode's share of the lease sweep: expires the leases of this node's flows that
    /// ran out by the database's clock, offers waiting workers other nodes' tasks, and reads
    /// back tasks waited for here that were finished elsewhere.
    pub(super) fn sweep_shared(&mut self, ctx: &mut Context<Self>) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        if self.fetched_at.elapsed() >= FETCH_EVERY {
            self.fetched_at = Instant::now();
            let keys: Vec<QueueKey> = self
                .pollers
                .iter()
                .filter(|(_, p)| p.iter().any(|p| !p.reply.is_closed()))
                .map(|(key, _)| key.clone())
                .collect();
            for key in keys {
                self.fetch_elsewhere(&key, ctx);
                self.tell_polled(&key, ctx);
            }
        }
        if self.sweeping || self.tasks.is_empty() {
            return;
        }
        self.sweeping = true;
        let every = self.settled_every();
        let ids: Option<Vec<TaskId>> = (self.settled_at.elapsed() >= every).then(|| {
            self.settled_at = Instant::now();
            self.tasks.keys().copied().collect()
        });
        let sweep = async move {
            let expired = shared.expire_due().await?;
            let settled = match ids {
                Some(ids) => shared.settled(&ids).await?,
                None => Vec::new(),
            };
            Ok::<_, crate::store::StoreError>((expired, settled))
        };
        ctx.spawn(sweep.into_actor(self).map(|result, act, _| {
            act.sweeping = false;
            match result {
                Ok((expired, settled)) => {
                    for record in expired {
                        info!(task_id = %record.id, flow_id = %record.flow_id, "lease expired; the attempt fails");
                        act.settle(record);
                    }
                    for record in settled {
                        act.settle(record);
                    }
                }
                Err(error) => warn!(%error, "shared task rows not swept"),
            }
        }));
    }

    /// A worker's report, applied to the shared row whichever node leased the task.
    pub(super) fn report_shared(
        &mut self,
        shared: Arc<dyn SharedTasks>,
        report: ReportTask,
    ) -> ResponseActFuture<Self, Result<TaskRecord, QueueError>> {
        let store = self.store.clone();
        let ReportTask {
            tenant,
            task_id,
            lease_id,
            report,
        } = report;
        let apply = async move {
            let unavailable = |e: crate::store::StoreError| QueueError::Unavailable(e.to_string());
            if let Some(record) = shared
                .report(&tenant, task_id, lease_id, &report)
                .await
                .map_err(unavailable)?
            {
                return Ok(record);
            }
            // Refused: the row says why, as the lease machine would have.
            let Some(row) = store.load_task(task_id).await.map_err(unavailable)? else {
                return Err(QueueError::NotFound(task_id));
            };
            Err(
                lease_machine::admit(&row, &tenant, lease_id, now()).map_or_else(
                    |refused| refused,
                    |()| QueueError::StaleLease {
                        task_id,
                        status: row.status,
                        detail: " and its lease expired",
                    },
                ),
            )
        };
        Box::pin(apply.into_actor(self).map(|result, act, _| {
            if let Ok(record) = &result {
                act.settle(record.clone());
            }
            result
        }))
    }

    /// Withdraws a task on the shared row (only a queued one with `only_queued`); the row
    /// after, or `None` when it had moved on (then read back and taken as it stands).
    pub(super) fn withdraw_shared(
        &mut self,
        shared: Arc<dyn SharedTasks>,
        task_id: TaskId,
        only_queued: bool,
        ctx: &mut Context<Self>,
    ) -> impl Future<Output = Result<Option<TaskRecord>, QueueError>> + use<> {
        if let Some(task) = self.tasks.get(&task_id) {
            let record = task.record.clone();
            self.unqueue(&record);
        }
        let (done, answer) = oneshot::channel();
        ctx.spawn(
            async move { shared.withdraw(task_id, only_queued).await }
                .into_actor(self)
                .map(move |result, act, ctx| {
                    let result = match result {
                        Ok(Some(record)) => {
                            act.settle(record.clone());
                            Ok(Some(record))
                        }
                        Ok(None) => {
                            act.reread(task_id, ctx);
                            Ok(None)
                        }
                        Err(error) => {
                            act.enqueue_if_queued(task_id);
                            Err(QueueError::Unavailable(error.to_string()))
                        }
                    };
                    let _ = done.send(result);
                }),
        );
        answer.map(|answer| {
            answer.unwrap_or_else(|_| Err(QueueError::Unavailable("queue actor stopped".into())))
        })
    }

    pub(super) fn enqueue_if_queued(&mut self, task_id: TaskId) {
        if self
            .tasks
            .get(&task_id)
            .is_some_and(|t| t.record.status == TaskStatus::Queued)
        {
            self.enqueue(task_id);
        }
    }
}

impl QueueActor {
    /// The backstop's period for as many tasks as are waited for now ([`SETTLED_EVERY`]).
    fn settled_every(&self) -> Duration {
        let shares = self.tasks.len().div_ceil(SETTLED_PER_READ).max(1);
        SETTLED_EVERY.saturating_mul(u32::try_from(shares).unwrap_or(u32::MAX))
    }
}

impl Handler<TasksNotified> for QueueActor {
    type Result = ();

    fn handle(&mut self, TasksNotified(task_id): TasksNotified, ctx: &mut Self::Context) {
        match task_id {
            Some(task_id) if self.tasks.contains_key(&task_id) => self.reread(task_id, ctx),
            Some(_) => {}
            None => {
                // Read everything waited for at the next sweep.
                let every = self.settled_every();
                self.settled_at = Instant::now().checked_sub(every).unwrap_or(self.settled_at);
            }
        }
    }
}
