//! Workers' reports under their lease: heartbeat, complete, fail. A report under a stale lease
//! is refused.

use super::lease_machine::Reported;
use super::*;

impl Handler<ReportTask> for QueueActor {
    type Result = ResponseActFuture<Self, Result<TaskRecord, QueueError>>;

    fn handle(&mut self, report: ReportTask, _: &mut Self::Context) -> Self::Result {
        if let Some(shared) = self.shared.clone() {
            return self.report_shared(shared, report);
        }
        let task_id = report.task_id;
        let store = self.store.clone();
        let load = async move {
            match store.load_task(task_id).await {
                Ok(found) => Ok(found),
                Err(error) => Err(QueueError::Unavailable(error.to_string())),
            }
        };
        // Tasks not in memory (e.g. just after a restart, before their flow re-attached) are
        // read from the store, so a worker's result is never lost to timing.
        let known = self.tasks.contains_key(&task_id);
        Box::pin(
            async move { if known { Ok(None) } else { load.await } }
                .into_actor(self)
                .then(move |loaded, act, ctx| {
                    let answer = act.apply_report(report, loaded, ctx);
                    fut::wrap_future(answer)
                }),
        )
    }
}

impl QueueActor {
    pub(super) fn apply_report(
        &mut self,
        report: ReportTask,
        loaded: Result<Option<TaskRecord>, QueueError>,
        ctx: &mut Context<Self>,
    ) -> futures_util::future::BoxFuture<'static, Result<TaskRecord, QueueError>> {
        use futures_util::FutureExt as _;
        let task_id = report.task_id;
        let at = now();
        let ready = |result| async move { result }.boxed();
        if !self.tasks.contains_key(&task_id) {
            match loaded {
                Err(error) => return ready(Err(error)),
                Ok(None) => return ready(Err(QueueError::NotFound(task_id))),
                Ok(Some(record)) if record.status == TaskStatus::Leased => {
                    if let Some(expires_at) = record.lease_expires_at {
                        self.leases.insert((expires_at, task_id));
                    }
                    let mut task = LiveTask::new(record);
                    task.compact();
                    self.tasks.insert(task_id, task);
                }
                Ok(Some(record)) => {
                    // Not leased: the machine refuses any report on it.
                    let refused =
                        lease_machine::admit(&record, &report.tenant, report.lease_id, at).err();
                    return ready(Err(refused.unwrap_or(QueueError::NotFound(task_id))));
                }
            }
        }
        let Some(task) = self.tasks.get_mut(&task_id) else {
            return ready(Err(QueueError::NotFound(task_id)));
        };
        let previous = task.record.clone();
        let reported = lease_machine::report(
            &mut task.record,
            &report.tenant,
            report.lease_id,
            report.report,
            at,
        );
        match reported {
            Err(refused) => ready(Err(refused)),
            Ok(Reported::Extended { expires_at }) => {
                self.leases.insert((expires_at, task_id));
                let record = task.record.clone();
                let commit = self.persist(&record);
                async move {
                    commit.await?;
                    Ok(record)
                }
                .boxed()
            }
            Ok(Reported::Finished) => match self.finish(task_id, previous, ctx) {
                Some(commit) => commit.boxed(),
                None => ready(Err(QueueError::NotFound(task_id))),
            },
        }
    }
}
