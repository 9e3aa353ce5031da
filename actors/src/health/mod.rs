//! The health actor: pings every flow actor each interval. One whose mailbox does not answer
//! in time (blocked, hung or dead) is restarted by the supervisor from stored state; the
//! supervisor's restart intensity turns a restart loop into a failed flow with a journal row.

pub mod messages;

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures_util::future::join_all;
use tracing::warn;

use crate::flow::Ping;
use crate::metrics::RuntimeMetrics;
use crate::supervisor::{LiveFlows, RecoverFlows, RestartFlow, Supervisor};
pub use messages::{GetHealthStats, HealthStats};

/// Pings flow actors and reports the silent ones.
pub struct HealthActor {
    supervisor: Addr<Supervisor>,
    interval: Duration,
    timeout: Duration,
    sweeping: bool,
    stats: HealthStats,
    metrics: Arc<RuntimeMetrics>,
    stored_sweep: Duration,
}

impl HealthActor {
    /// A health actor that pings every `interval` and waits `timeout` for each answer.
    /// Every `stored_sweep`, stored non-terminal flows without a live actor are re-adopted.
    pub fn new(
        supervisor: Addr<Supervisor>,
        interval: Duration,
        timeout: Duration,
        stored_sweep: Duration,
        metrics: Arc<RuntimeMetrics>,
    ) -> Self {
        Self {
            supervisor,
            interval,
            timeout,
            sweeping: false,
            stats: HealthStats::default(),
            metrics,
            stored_sweep,
        }
    }

    fn sweep(&mut self, ctx: &mut Context<Self>) {
        if self.sweeping {
            return;
        }
        self.sweeping = true;
        let supervisor = self.supervisor.clone();
        let timeout = self.timeout;
        let pings = async move {
            let flows = supervisor.send(LiveFlows).await.unwrap_or_default();
            let answers = join_all(flows.into_iter().map(|live| async move {
                let answer = live.addr.send(Ping).timeout(timeout).await;
                (live.flow_id, live.generation, answer)
            }))
            .await;
            let total = answers.len() as u64;
            let silent: Vec<_> = answers
                .into_iter()
                .filter_map(|(flow_id, generation, answer)| match answer {
                    // Stopped on its own since the list was taken: the supervisor has its
                    // stop notice and acts on it; nothing is silent.
                    Err(MailboxError::Closed) | Ok(_) => None,
                    Err(MailboxError::Timeout) => Some((flow_id, generation)),
                })
                .collect();
            (total, silent)
        };
        ctx.spawn(pings.into_actor(self).map(|(total, silent), act, _| {
            act.sweeping = false;
            act.stats.sweeps += 1;
            act.stats.pings += total;
            act.stats.pings_missed += silent.len() as u64;
            for (flow_id, generation) in silent {
                warn!(flow_id = %flow_id, "flow actor did not answer its ping");
                act.metrics.ping_missed();
                act.stats.restarts_requested += 1;
                act.supervisor.do_send(RestartFlow {
                    flow_id,
                    generation,
                    reason: format!("no answer to ping within {:?}", act.timeout),
                });
            }
        }));
    }
}

impl Actor for HealthActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.interval, |act, ctx| act.sweep(ctx));
        // The database is the truth: a flow `running` there with no live actor (lost by a
        // bug, or its restart given up while the database was away) is found and resumed.
        ctx.run_interval(self.stored_sweep, |act, _| {
            let supervisor = act.supervisor.clone();
            // A flow written within the last sweep interval is not orphaned: busy flows are
            // never even read.
            let quiet_for = act.stored_sweep;
            actix::spawn(async move {
                match supervisor.send(RecoverFlows::quiet_for(quiet_for)).await {
                    Ok(Ok(0)) => {}
                    Ok(Ok(adopted)) => {
                        warn!(adopted, "stored flows without a live actor re-adopted")
                    }
                    Ok(Err(error)) => warn!(%error, "stored-flow sweep failed"),
                    Err(error) => warn!(%error, "stored-flow sweep: supervisor unreachable"),
                }
            });
        });
    }
}

impl Handler<GetHealthStats> for HealthActor {
    type Result = MessageResult<GetHealthStats>;

    fn handle(&mut self, _: GetHealthStats, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.stats)
    }
}
