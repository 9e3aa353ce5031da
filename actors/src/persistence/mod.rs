//! The persistence actor: the only writer. It drains its mailbox into one transaction per batch
//! (group commit), so throughput rises with load while every writer still waits for its own
//! commit. Event ids are numbered here, in commit order, which makes them rise across all flows;
//! a store that numbers them inside its commit (PostgreSQL, where the nodes of a cluster share
//! one sequence) returns the ids it gave, and those are the ones published.
//!
//! A transition whose flow another node took over is fenced by the store: it commits nothing,
//! fails alone (its batch commits) and its flow actor is answered [`PersistError::Fenced`].

pub mod messages;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::oneshot;
use tracing::{error, warn};

use crate::error::PersistError;
use crate::events::EventFanout;
use crate::ids::FlowId;
use crate::metrics::RuntimeMetrics;
use crate::store::{CommitReceipt, FlowStore, StoreError, Write};
pub use messages::{Fence, GetStats, Persist, PersistenceStats, Release};

/// First wait before a batch is tried again while the database is unavailable; it doubles up to
/// [`OUTAGE_BACKOFF_MAX`] and the batch is tried for as long as the outage lasts.
const OUTAGE_BACKOFF_START: Duration = Duration::from_millis(50);
/// How long the writer must have had nothing to commit before the store is told to give back
/// memory it keeps for speed.
const IDLE_BEFORE_RELEASE: Duration = Duration::from_secs(2);
/// Longest wait between two tries of a batch during an outage.
const OUTAGE_BACKOFF_MAX: Duration = Duration::from_secs(2);

struct Pending {
    write: Write,
    /// The writing flow actor's generation (`None`: the supervisor, the registry, the queue).
    writer: Option<u64>,
    /// A flow actor's write holds finished work: it waits out an outage. Anyone else's (a
    /// create, a registration, a task report) is answered "unavailable" and may try again.
    waits_out_outage: bool,
    ack: oneshot::Sender<Result<(), PersistError>>,
}

/// Serializes every database write of the runtime.
pub struct PersistenceActor {
    store: Arc<dyn FlowStore>,
    fanout: EventFanout,
    queue: Vec<Pending>,
    committing: bool,
    /// Batches committed but not yet synced (see [`FlowStore::commits_need_sync`]).
    unsynced: Vec<Settled>,
    /// Whether a sync is in flight.
    syncing: bool,
    last_event_id: i64,
    max_batch: usize,
    stats: PersistenceStats,
    metrics: Arc<RuntimeMetrics>,
    /// Per live flow, which actor generation may write (see [`Fence`]).
    fences: HashMap<FlowId, Option<u64>>,
    /// Failed tries of the batch being committed while the database is unavailable; 0 when
    /// the last try reached it. Shared with the commit task, read by [`GetStats`].
    outage_tries: Arc<AtomicU64>,
}

impl PersistenceActor {
    /// `last_event_id` is the highest event id already stored; numbering continues after it.
    pub fn new(
        store: Arc<dyn FlowStore>,
        fanout: EventFanout,
        last_event_id: i64,
        max_batch: usize,
        metrics: Arc<RuntimeMetrics>,
    ) -> Self {
        Self {
            store,
            fanout,
            queue: Vec::new(),
            committing: false,
            unsynced: Vec::new(),
            syncing: false,
            last_event_id,
            max_batch: max_batch.max(1),
            stats: PersistenceStats::default(),
            metrics,
            fences: HashMap::new(),
            outage_tries: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Once the writer has been idle for [`IDLE_BEFORE_RELEASE`] after a batch, lets the store
    /// give back memory it holds for speed: memory returns near its idle level after a backlog.
    fn release_when_idle(&mut self, ctx: &mut Context<Self>) {
        let batches = self.stats.batches;
        ctx.run_later(IDLE_BEFORE_RELEASE, move |act, ctx| {
            if act.stats.batches == batches && !act.committing && !act.syncing {
                let store = act.store.clone();
                ctx.spawn(async move { store.release_memory().await }.into_actor(act));
            }
        });
    }

    /// Starts the next batch unless one is committing. Everything queued meanwhile waits for it.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.committing {
            return;
        }
        if self.queue.is_empty() {
            self.release_when_idle(ctx);
            return;
        }
        self.committing = true;
        let take = self.queue.len().min(self.max_batch);
        let mut writes = Vec::with_capacity(take);
        let mut acks = Vec::with_capacity(take);
        let mut waits = Vec::with_capacity(take);
        let mut writers = Vec::with_capacity(take);
        for Pending {
            mut write,
            writer,
            waits_out_outage,
            ack,
        } in self.queue.drain(..take)
        {
            if let Write::Transition(transition) = &mut write {
                for event in &mut transition.events {
                    self.last_event_id += 1;
                    event.id = self.last_event_id;
                }
            }
            writes.push(write);
            acks.push(ack);
            waits.push(waits_out_outage);
            writers.push(writer);
        }
        // Nothing queued behind this batch and no sync in flight: its commit syncs on the way
        // (one trip, the lowest latency). Otherwise the sync runs beside the next batch.
        let synced_inline = self.store.commits_need_sync()
            && self.queue.is_empty()
            && self.unsynced.is_empty()
            && !self.syncing;
        let store = self.store.clone();
        let outage_tries = self.outage_tries.clone();
        let commit = async move {
            let started = Instant::now();
            let outcome = commit_isolating(
                store.as_ref(),
                &writes,
                &waits,
                synced_inline,
                &outage_tries,
            )
            .await;
            (outcome, writes, started.elapsed())
        };
        ctx.spawn(
            commit
                .into_actor(self)
                .map(move |(outcome, writes, took), act, ctx| {
                    let Committed {
                        outcomes,
                        outage_tries,
                    } = outcome;
                    act.committing = false;
                    if outage_tries > 0 {
                        act.stats.failed_batches += 1;
                    }
                    act.stats.batches += 1;
                    act.stats.commit_micros += took.as_micros() as u64;
                    let settled = Settled {
                        writes,
                        writers,
                        acks,
                        outcomes,
                        took,
                    };
                    let any_committed = settled
                        .outcomes
                        .iter()
                        .any(|outcome| matches!(outcome, Outcome::Committed { .. }));
                    if any_committed && act.store.commits_need_sync() && !synced_inline {
                        // The next batch commits while this one's sync is in flight.
                        act.unsynced.push(settled);
                        act.sync(ctx);
                    } else {
                        act.answer(settled);
                    }
                    act.flush(ctx);
                }),
        );
    }

    /// Syncs every batch committed so far unless a sync is in flight; the batches that commit
    /// meanwhile wait for the next one, so each sync covers as many batches as it can.
    fn sync(&mut self, ctx: &mut Context<Self>) {
        if self.syncing || self.unsynced.is_empty() {
            return;
        }
        self.syncing = true;
        // Taken now: every batch in it returned from its commit before the sync starts.
        let batches = std::mem::take(&mut self.unsynced);
        let store = self.store.clone();
        let sync = async move {
            let started = Instant::now();
            (store.sync_commits().await, started.elapsed())
        };
        ctx.spawn(sync.into_actor(self).map(move |(synced, took), act, ctx| {
            act.syncing = false;
            if let Err(error) = synced {
                // After a failed fsync the kernel may have dropped the unwritten pages and a
                // second fsync may falsely succeed (PostgreSQL's "fsyncgate"): what is on
                // disk is unknown, so nothing more may be acked. Recovery starts from the
                // disk, as after any crash.
                error!(%error, "syncing committed writes failed; stopping the process");
                std::process::abort();
            }
            act.stats.syncs += 1;
            act.stats.sync_micros += took.as_micros() as u64;
            for settled in batches {
                act.answer(settled);
            }
            act.sync(ctx);
            act.flush(ctx);
        }));
    }

    /// Acks each write of a finished batch and publishes the events of those that committed,
    /// in batch order, under the ids the store gave them when it numbers them (commit order
    /// across a cluster). A write that did not commit is answered alone: the rest of its
    /// batch committed. A fenced write's flow actor is told so and stops.
    fn answer(&mut self, settled: Settled) {
        let Settled {
            writes,
            writers,
            acks,
            outcomes,
            took,
        } = settled;
        let mut committed = 0;
        let mut events = Vec::new();
        for (((write, writer), ack), outcome) in
            writes.into_iter().zip(writers).zip(acks).zip(outcomes)
        {
            let answer = match outcome {
                Outcome::Committed { first_event_id } => {
                    committed += 1;
                    if let Write::Transition(mut t) = write {
                        if let Some(first) = first_event_id {
                            for (id, event) in (first..).zip(&mut t.events) {
                                event.id = id;
                            }
                        }
                        events.extend(t.events);
                    }
                    Ok(())
                }
                Outcome::Fenced => {
                    self.stats.fenced_writes += 1;
                    self.metrics.fenced_write();
                    if let Write::Transition(t) = &write {
                        warn!(
                            flow_id = %t.flow_id,
                            epoch = t.flow.owner_epoch,
                            "transition fenced off: another node owns the flow now; nothing \
                             committed, its actor stops"
                        );
                        // The actor that wrote it stops; a successor started meanwhile keeps
                        // its own fence.
                        if writer.is_some()
                            && self.fences.get(&t.flow_id).copied().flatten() == writer
                        {
                            self.fences.remove(&t.flow_id);
                        }
                    }
                    Err(PersistError::Fenced)
                }
                Outcome::Refused(error) => {
                    self.stats.refused_writes += 1;
                    Err(PersistError::Refused(error.to_string()))
                }
                Outcome::Unavailable(message) => Err(PersistError::Unavailable(message)),
            };
            let _ = ack.send(answer);
        }
        self.stats.writes += committed as u64;
        self.stats.largest_batch = self.stats.largest_batch.max(committed as u64);
        self.stats.events += events.len() as u64;
        self.metrics
            .batch_committed(committed, events.len(), took.as_secs_f64());
        self.fanout.publish(events);
    }
}

/// A batch back from its commit, waiting to be answered (after its sync, when the store needs
/// one).
struct Settled {
    writes: Vec<Write>,
    writers: Vec<Option<u64>>,
    acks: Vec<oneshot::Sender<Result<(), PersistError>>>,
    outcomes: Vec<Outcome>,
    /// How long its commit held the writer (a sync it waits for runs beside the writer).
    took: Duration,
}

/// What became of one write of a batch.
enum Outcome {
    /// With the id of its first event when the store numbered the events itself.
    Committed { first_event_id: Option<i64> },
    /// Its flow is owned by another node now (or under a newer epoch): nothing committed.
    Fenced,
    /// The database refused this write for its content; its neighbours committed.
    Refused(StoreError),
    /// The database was down and the writer of this write was told to try again itself.
    Unavailable(String),
}

/// What became of one batch.
struct Committed {
    /// One per write, in batch order.
    outcomes: Vec<Outcome>,
    /// Tries that found the database unavailable.
    outage_tries: u64,
}

/// One commit of `batch`, synced on the way when `synced` says so.
async fn commit_once(
    store: &dyn FlowStore,
    batch: &[Write],
    synced: bool,
) -> Result<CommitReceipt, StoreError> {
    store.commit_receipted(batch, synced).await
}

/// Events a write carries (only transitions carry any).
fn event_count(write: &Write) -> i64 {
    match write {
        Write::Transition(t) => t.events.len() as i64,
        _ => 0,
    }
}

/// Whether a write the database refused, after a commit of it failed unavailable, is one it
/// holds already: when the connection dies after the database committed a batch but before
/// its reply arrived, the batch is tried again and conflicts with itself. Its first event is
/// then found stored under its `(flow_id, seq)` with the same kind and time (to the
/// microsecond), or, for a create without events, its flow row with the same creation time.
/// Another writer of that seq (a successor actor, the node that took the flow over) stamps
/// its own time, and a write of a flow taken over is fenced before it gets here. Some with the
/// stored id of its first event (`None`: it has none).
///
/// "Stored" means visible to this node's reads: with PostgreSQL's synchronous replication, a
/// commit whose connection died while it waited for the standby is visible on the primary
/// before the standby has it, as it is to any client of PostgreSQL.
async fn stored_already(store: &dyn FlowStore, write: &Write) -> Option<Option<i64>> {
    let Write::Transition(transition) = write else {
        return None;
    };
    let Some(first) = transition.events.first() else {
        let created = transition.create.as_ref()?;
        let stored = store.load_flow(transition.flow_id).await.ok()??;
        return (stored.created_at == created.created_at).then_some(None);
    };
    let stored = store
        .flow_events(transition.flow_id, first.seq.saturating_sub(1), 1)
        .await
        .ok()?
        .into_iter()
        .next()?;
    (stored.seq == first.seq && stored.kind == first.kind && stored.at == first.at)
        .then_some(Some(stored.id))
}

/// Commits `writes`, isolating the ones the database refuses: a group that fails for a reason
/// other than an unavailable database is split in halves until each refused write stands
/// alone, so one bad or conflicting write never fails its neighbours. While the database is
/// unavailable, the writes that `waits` marks are tried again with capped backoff for as long
/// as the outage lasts (no finished work is thrown away); the others are answered at once.
/// With `synced`, each commit is also durable when it returns ([`FlowStore::commit_synced`]).
async fn commit_isolating(
    store: &dyn FlowStore,
    writes: &[Write],
    waits: &[bool],
    synced: bool,
    outage_tries: &AtomicU64,
) -> Committed {
    let mut outcomes: Vec<Option<Outcome>> = writes.iter().map(|_| None).collect();
    let mut waited = 0;
    // Set once a commit failed unavailable: it may have committed all the same (the
    // connection died after COMMIT, before the reply), so a refusal may be the retry meeting
    // its own rows (see `stored_already`).
    let mut reply_lost_maybe = false;
    // Depth first, left half before right: writes commit in the order they were queued.
    let mut pending: Vec<Vec<usize>> = vec![(0..writes.len()).collect()];
    while let Some(mut group) = pending.pop() {
        let mut delay = OUTAGE_BACKOFF_START;
        let mut refusals = 0;
        let mut unavailable = 0;
        while !group.is_empty() {
            let result = if group.len() == writes.len() {
                commit_once(store, writes, synced).await
            } else {
                let subset: Vec<Write> = group.iter().map(|&i| writes[i].clone()).collect();
                commit_once(store, &subset, synced).await
            };
            let message = match result {
                Ok(receipt) => {
                    outage_tries.store(0, Ordering::Relaxed);
                    // A fenced write fails alone, without a retry or a split: nothing of it
                    // committed, and it would be fenced again.
                    let mut next_id = receipt.first_event_id;
                    for (position, &i) in group.iter().enumerate() {
                        outcomes[i] = Some(if receipt.is_fenced(position) {
                            Outcome::Fenced
                        } else {
                            let first_event_id = next_id;
                            next_id = next_id.map(|id| id + event_count(&writes[i]));
                            Outcome::Committed { first_event_id }
                        });
                    }
                    break;
                }
                Err(StoreError::Unavailable(message)) => {
                    reply_lost_maybe = true;
                    message
                }
                Err(refusal) if group.len() > 1 => {
                    warn!(error = %refusal, writes = group.len(), "batch refused; splitting it to find the bad write");
                    let right = group.split_off(group.len() / 2);
                    pending.push(right);
                    pending.push(group);
                    break;
                }
                // A connection killed mid-commit can look like a refusal: a lone write is
                // failed for its content only once its refusal repeats and the database
                // answers a ping.
                Err(refusal) => match store.ping().await {
                    Err(down) => down.to_string(),
                    Ok(()) if refusals == 0 => {
                        refusals += 1;
                        continue;
                    }
                    Ok(()) => {
                        if reply_lost_maybe
                            && let Some(first_event_id) =
                                stored_already(store, &writes[group[0]]).await
                        {
                            warn!(
                                "a write refused as a duplicate is stored already: the reply to its earlier commit was lost; it is answered as committed"
                            );
                            outage_tries.store(0, Ordering::Relaxed);
                            outcomes[group[0]] = Some(Outcome::Committed { first_event_id });
                            break;
                        }
                        warn!(error = %refusal, "write refused by the database; the rest of its batch goes on");
                        outage_tries.store(0, Ordering::Relaxed);
                        outcomes[group[0]] = Some(Outcome::Refused(refusal));
                        break;
                    }
                },
            };
            unavailable += 1;
            if unavailable == 1 {
                // A connection the server closed fails once; a fresh one may work right away.
                continue;
            }
            group.retain(|&i| {
                if !waits[i] {
                    outcomes[i] = Some(Outcome::Unavailable(message.clone()));
                }
                waits[i]
            });
            waited += 1;
            let tries = outage_tries.fetch_add(1, Ordering::Relaxed) + 1;
            if group.is_empty() {
                break;
            }
            if tries == 1 || tries.is_power_of_two() {
                warn!(%message, tries, writes = group.len(), "database unavailable; flow transitions wait and are tried again");
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(OUTAGE_BACKOFF_MAX);
        }
    }
    Committed {
        outcomes: outcomes
            .into_iter()
            .map(|outcome| outcome.unwrap_or(Outcome::Unavailable("not committed".into())))
            .collect(),
        outage_tries: waited,
    }
}

impl Actor for PersistenceActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Writers wait for their ack anyway; a deep mailbox lets whole waves join one batch.
        ctx.set_mailbox_capacity(1 << 20);
    }
}

impl Handler<Persist> for PersistenceActor {
    type Result = ResponseFuture<Result<(), PersistError>>;

    fn handle(&mut self, message: Persist, ctx: &mut Self::Context) -> Self::Result {
        if let (Some(writer), Write::Transition(transition)) = (message.writer, &message.write)
            && self.fences.get(&transition.flow_id).copied().flatten() != Some(writer)
        {
            warn!(flow_id = %transition.flow_id, writer, "write from a replaced flow actor refused");
            return Box::pin(async { Err(PersistError::Fenced) });
        }
        let (ack, committed) = oneshot::channel();
        self.queue.push(Pending {
            write: message.write,
            writer: message.writer,
            waits_out_outage: message.writer.is_some(),
            ack,
        });
        self.flush(ctx);
        Box::pin(async move { committed.await.unwrap_or(Err(PersistError::Stopped)) })
    }
}

impl Handler<Fence> for PersistenceActor {
    type Result = ();

    fn handle(&mut self, fence: Fence, _: &mut Self::Context) {
        self.fences.insert(fence.flow_id, fence.writer);
    }
}

impl Handler<Release> for PersistenceActor {
    type Result = ();

    fn handle(&mut self, Release(flow_id): Release, _: &mut Self::Context) {
        self.fences.remove(&flow_id);
    }
}

impl Handler<GetStats> for PersistenceActor {
    type Result = MessageResult<GetStats>;

    fn handle(&mut self, _: GetStats, _: &mut Self::Context) -> Self::Result {
        MessageResult(PersistenceStats {
            consecutive_failures: self.outage_tries.load(Ordering::Relaxed),
            ..self.stats
        })
    }
}

#[cfg(test)]
mod tests;
