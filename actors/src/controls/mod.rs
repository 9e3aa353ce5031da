//! Controls (pause, resume, cancel, retry) of a flow another node of the cluster owns
//! (docs/cluster.md, 2.6): routed through the database, never node to node.
//!
//! The requesting node stores a `flow_controls` row and notifies the owner
//! (`NOTIFY flowd_controls, 'apply:<owner>'`). The owner's listener wakes its applier, which
//! takes the rows of flows it owns now, hands each to its own supervisor exactly as a local
//! control, and writes the local reply (`'reply:<id>'`). The requester waits for that reply
//! (woken by the notification, with a poll as backstop) and answers with it, so the HTTP reply
//! is the owner's. A row whose owner is dead waits: the node that takes the flow over takes
//! the row with it. A requester that waited `timeout` withdraws its row in one conditional
//! update, so that nobody applies it later: its `503` says whether the control was not applied
//! (nobody had taken it) or may have been (a node took it and did not answer).
//!
//! Flows this node owns never come here: their controls stay local, as on a single node.

pub mod store;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actix::Recipient;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tracing::{debug, info, warn};
use uuid::Uuid;

pub use store::{ControlRequest, ControlStore, TakenControl, Withdrawal};

use crate::error::{RuntimeError, with_sources};
use crate::flow::ControlCommand;
use crate::ids::{FlowId, Tenant};
use crate::model::{FlowState, FlowStatus};
use crate::supervisor::ControlFlow;

/// The channel requesters and owners notify on.
pub const CHANNEL: &str = "flowd_controls";
/// Controls taken per read: more are read at once while reads come back full.
const TAKE: u32 = 100;
/// How often the applier reads without a notification (one may have been lost).
const APPLY_BACKSTOP: Duration = Duration::from_secs(1);
/// Rows older than this are deleted: their requester crashed before deleting them.
const FORGET_AFTER: Duration = Duration::from_secs(3600);
const FORGET_EVERY: Duration = Duration::from_secs(60);

/// The owner's reply to a control, as stored in `flow_controls.reply`: the local answer,
/// turned back into the same [`RuntimeError`] on the requesting node, so both answer alike.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ControlReply {
    /// Applied (or nothing to do): the flow as the control left it.
    Applied {
        flow: Box<FlowState>,
    },
    NotFound,
    IllegalTransition {
        status: FlowStatus,
    },
    UnknownFlowType {
        name: String,
    },
    Refused {
        reason: String,
    },
    /// Any other failure: the owner could not apply it now.
    Unavailable {
        detail: String,
    },
}

impl ControlReply {
    /// The stored form of a local control's answer.
    pub fn of(result: &Result<FlowState, RuntimeError>) -> Self {
        match result {
            Ok(flow) => Self::Applied {
                flow: Box::new(flow.clone()),
            },
            Err(RuntimeError::FlowNotFound(_)) => Self::NotFound,
            Err(RuntimeError::IllegalTransition { status }) => {
                Self::IllegalTransition { status: *status }
            }
            Err(RuntimeError::UnknownFlowType(name)) => {
                Self::UnknownFlowType { name: name.clone() }
            }
            Err(RuntimeError::WriteRefused(reason)) => Self::Refused {
                reason: reason.clone(),
            },
            Err(RuntimeError::Unavailable(detail)) => Self::Unavailable {
                detail: detail.clone(),
            },
            Err(other) => Self::Unavailable {
                detail: with_sources(other),
            },
        }
    }

    /// The answer the owner gave, as the requesting node returns it.
    pub fn into_result(self, flow_id: FlowId) -> Result<FlowState, RuntimeError> {
        match self {
            Self::Applied { flow } => Ok(*flow),
            Self::NotFound => Err(RuntimeError::FlowNotFound(flow_id)),
            Self::IllegalTransition { status } => Err(RuntimeError::IllegalTransition { status }),
            Self::UnknownFlowType { name } => Err(RuntimeError::UnknownFlowType(name)),
            Self::Refused { reason } => Err(RuntimeError::WriteRefused(reason)),
            Self::Unavailable { detail } => Err(RuntimeError::Unavailable(detail)),
        }
    }
}

/// The stored name of a command.
pub fn command_name(command: ControlCommand) -> &'static str {
    match command {
        ControlCommand::Pause => "pause",
        ControlCommand::Resume => "resume",
        ControlCommand::Cancel => "cancel",
        ControlCommand::Retry => "retry",
    }
}

/// A command from its stored name.
pub fn parse_command(name: &str) -> Option<ControlCommand> {
    match name {
        "pause" => Some(ControlCommand::Pause),
        "resume" => Some(ControlCommand::Resume),
        "cancel" => Some(ControlCommand::Cancel),
        "retry" => Some(ControlCommand::Retry),
        _ => None,
    }
}

/// A notification on [`CHANNEL`], from its payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// New controls for flows `node` owns.
    Apply { node: String },
    /// The owner replied to control `id`.
    Replied { id: Uuid },
}

impl Notice {
    /// The payload a notice is sent as.
    pub fn payload(&self) -> String {
        match self {
            Self::Apply { node } => format!("apply:{node}"),
            Self::Replied { id } => format!("reply:{id}"),
        }
    }

    /// `None` for a payload no version of flowd sends.
    pub fn parse(payload: &str) -> Option<Self> {
        if let Some(node) = payload.strip_prefix("apply:") {
            return Some(Self::Apply {
                node: node.to_owned(),
            });
        }
        let id = payload.strip_prefix("reply:")?.parse().ok()?;
        Some(Self::Replied { id })
    }
}

/// Tuning of [`RemoteControls`].
#[derive(Clone, Debug)]
pub struct ControlSettings {
    /// This node's id, as its store writes it into the flows it owns.
    pub node_id: String,
    /// How long a requester waits for the owner's reply before answering `503`.
    pub timeout: Duration,
    /// How often a waiting requester reads its reply without a notification.
    pub poll: Duration,
}

/// Counts of the routing on this node, for `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ControlStats {
    /// Controls this node sent to another node.
    pub sent: u64,
    /// Of those, answered `503` because no reply came in time.
    pub unanswered: u64,
    /// Controls other nodes sent that this node applied and answered.
    pub applied: u64,
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    unanswered: AtomicU64,
    applied: AtomicU64,
}

/// This node's end of the routing: it sends controls of other nodes' flows and applies the
/// controls other nodes sent for flows it owns. Cheap to clone.
#[derive(Clone)]
pub struct RemoteControls {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn ControlStore>,
    settings: ControlSettings,
    /// Requests waiting for their reply, woken by its notification.
    waiters: Mutex<HashMap<Uuid, Arc<Notify>>>,
    /// Wakes the applier.
    inbox: Notify,
    counters: Arc<Counters>,
}

/// Removes a waiter however its request ends.
struct Waiting<'a> {
    inner: &'a Inner,
    id: Uuid,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.inner.waiters.lock().remove(&self.id);
    }
}

impl RemoteControls {
    /// Starts the applier on the current arbiter: controls of flows this node owns are handed
    /// to `supervisor` as local ones.
    pub fn start(
        store: Arc<dyn ControlStore>,
        settings: ControlSettings,
        supervisor: Recipient<ControlFlow>,
    ) -> Self {
        let controls = Self {
            inner: Arc::new(Inner {
                store,
                settings,
                waiters: Mutex::new(HashMap::new()),
                inbox: Notify::new(),
                counters: Arc::default(),
            }),
        };
        actix::spawn(controls.clone().apply_loop(supervisor));
        controls
    }

    /// Controls sent, unanswered and applied so far.
    pub fn stats(&self) -> ControlStats {
        let counters = &self.inner.counters;
        ControlStats {
            sent: counters.sent.load(Ordering::Relaxed),
            unanswered: counters.unanswered.load(Ordering::Relaxed),
            applied: counters.applied.load(Ordering::Relaxed),
        }
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.inner.settings.node_id
    }

    /// A notification on [`CHANNEL`] (the listener calls this).
    pub fn notified(&self, payload: &str) {
        match Notice::parse(payload) {
            Some(Notice::Apply { node }) if node == self.inner.settings.node_id => {
                self.inner.inbox.notify_one();
            }
            Some(Notice::Apply { .. }) => {}
            Some(Notice::Replied { id }) => {
                if let Some(waiter) = self.inner.waiters.lock().get(&id) {
                    waiter.notify_one();
                }
            }
            None => debug!(payload, "a control notification flowd does not send"),
        }
    }

    /// Read everything now: notifications may have been lost (the listener reconnected), or
    /// this node has just taken flows over and their pending controls are its own now.
    pub fn wake(&self) {
        self.inner.inbox.notify_one();
        for waiter in self.inner.waiters.lock().values() {
            waiter.notify_one();
        }
    }

    /// Sends `command` for `flow_id`, owned by `owner`, and waits for the owner's reply.
    pub async fn request(
        &self,
        flow_id: FlowId,
        tenant: Tenant,
        command: ControlCommand,
        owner: String,
    ) -> Result<FlowState, RuntimeError> {
        let inner = &*self.inner;
        let id = Uuid::now_v7();
        let notify = Arc::new(Notify::new());
        inner.waiters.lock().insert(id, notify.clone());
        let _waiting = Waiting { inner, id };
        let request = ControlRequest {
            id,
            flow_id,
            tenant,
            command,
            owner: owner.clone(),
            requested_by: inner.settings.node_id.clone(),
        };
        inner.store.request_control(&request).await?;
        inner.counters.sent.fetch_add(1, Ordering::Relaxed);
        debug!(flow_id = %flow_id, %owner, command = command_name(command), "control sent to the owner");
        let deadline = Instant::now() + inner.settings.timeout;
        loop {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let wait = inner.settings.poll.min(deadline - now);
            let _ = tokio::time::timeout(wait, notify.notified()).await;
            match inner.store.control_reply(id).await {
                Ok(Some(reply)) => return self.answered(id, flow_id, reply),
                Ok(None) => {}
                Err(error) => debug!(%error, "reading a control's reply failed; trying again"),
            }
        }
        let timeout = inner.settings.timeout;
        let name = command_name(command);
        let withdrawn = inner.store.withdraw_control(id).await;
        let detail = match withdrawn {
            Ok(Withdrawal::Replied(reply)) => return self.answered(id, flow_id, reply),
            Ok(Withdrawal::NotApplied) => format!(
                "node `{owner}` owns flow {flow_id} and did not take the {name} within {timeout:?} \
                 (it may be down and not yet taken over); the {name} was not applied: try again"
            ),
            Ok(Withdrawal::Unknown { node }) => format!(
                "node `{node}` took the {name} of flow {flow_id} but did not answer within \
                 {timeout:?}; it may have been applied: read the flow before sending it again"
            ),
            Err(error) => format!(
                "no answer to the {name} of flow {flow_id} from node `{owner}` within {timeout:?}, \
                 and it could not be withdrawn ({error}); it may have been applied"
            ),
        };
        warn!(flow_id = %flow_id, %owner, command = name, "control not answered by the owner");
        inner.counters.unanswered.fetch_add(1, Ordering::Relaxed);
        self.forget(id);
        Err(RuntimeError::Unavailable(detail))
    }

    fn answered(
        &self,
        id: Uuid,
        flow_id: FlowId,
        reply: ControlReply,
    ) -> Result<FlowState, RuntimeError> {
        self.forget(id);
        reply.into_result(flow_id)
    }

    /// Deletes an answered row, off the reply's path.
    fn forget(&self, id: Uuid) {
        let store = self.inner.store.clone();
        actix::spawn(async move {
            if let Err(error) = store.forget_control(id).await {
                debug!(%error, "deleting an answered control failed; the hourly sweep will");
            }
        });
    }

    /// Makes this node the owner of a failed flow another node owns, for a retry: the new
    /// epoch, or `None` if the flow changed meanwhile (read it again).
    pub async fn adopt_failed(&self, flow: &FlowState) -> Result<Option<u64>, RuntimeError> {
        let owner = flow.owner_node.as_deref();
        let adopted = self
            .inner
            .store
            .adopt_failed(
                flow.id,
                owner,
                flow.owner_epoch,
                &self.inner.settings.node_id,
            )
            .await?;
        if adopted.is_some() {
            info!(flow_id = %flow.id, from = ?owner, "failed flow adopted from another node for a retry");
        }
        Ok(adopted)
    }

    /// Takes the controls of flows this node owns and applies them, when notified and every
    /// [`APPLY_BACKSTOP`]; deletes rows left by crashed requesters now and then.
    async fn apply_loop(self, supervisor: Recipient<ControlFlow>) {
        let inner = &*self.inner;
        let mut backstop = tokio::time::interval(APPLY_BACKSTOP);
        backstop.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut forgotten = Instant::now();
        loop {
            tokio::select! {
                () = inner.inbox.notified() => {}
                _ = backstop.tick() => {}
            }
            loop {
                match inner
                    .store
                    .take_controls(&inner.settings.node_id, TAKE)
                    .await
                {
                    Ok(taken) => {
                        let full = taken.len() == TAKE as usize;
                        for control in taken {
                            // Each on its own: a cancel that cascades to children owned
                            // elsewhere waits for them, and must not hold the others up.
                            actix::spawn(apply(
                                inner.store.clone(),
                                inner.settings.node_id.clone(),
                                supervisor.clone(),
                                control,
                                inner.counters.clone(),
                            ));
                        }
                        if !full {
                            break;
                        }
                    }
                    Err(error) => {
                        debug!(%error, "taking controls failed; trying again later");
                        break;
                    }
                }
            }
            if forgotten.elapsed() >= FORGET_EVERY {
                forgotten = Instant::now();
                if let Err(error) = inner.store.forget_old_controls(FORGET_AFTER).await {
                    debug!(%error, "deleting old controls failed");
                }
            }
        }
    }
}

/// Applies one taken control as a local one and writes the reply.
async fn apply(
    store: Arc<dyn ControlStore>,
    node: String,
    supervisor: Recipient<ControlFlow>,
    control: TakenControl,
    counters: Arc<Counters>,
) {
    let TakenControl {
        id,
        flow_id,
        tenant,
        command,
    } = control;
    let result = match supervisor
        .send(ControlFlow {
            flow_id,
            tenant,
            command,
        })
        .await
    {
        Ok(result) => result,
        Err(mailbox) => Err(RuntimeError::from(mailbox)),
    };
    let reply = ControlReply::of(&result);
    match store.reply_control(id, &node, &reply).await {
        Ok(true) => {
            counters.applied.fetch_add(1, Ordering::Relaxed);
            info!(flow_id = %flow_id, command = command_name(command), "control from another node applied")
        }
        Ok(false) => {
            warn!(flow_id = %flow_id, command = command_name(command), "control applied after its requester withdrew it, or taken over by another node")
        }
        Err(error) => {
            warn!(flow_id = %flow_id, %error, "the reply to a control could not be written; its requester will answer 503")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_round_trip_and_unknown_payloads_are_none() {
        let id = Uuid::now_v7();
        for notice in [
            Notice::Apply {
                node: "host-12".into(),
            },
            Notice::Replied { id },
        ] {
            assert_eq!(Notice::parse(&notice.payload()), Some(notice));
        }
        assert_eq!(Notice::parse("reply:not-a-uuid"), None);
        assert_eq!(Notice::parse("42"), None);
    }

    #[test]
    fn commands_round_trip_by_name() {
        for command in [
            ControlCommand::Pause,
            ControlCommand::Resume,
            ControlCommand::Cancel,
            ControlCommand::Retry,
        ] {
            assert_eq!(parse_command(command_name(command)), Some(command));
        }
        assert_eq!(parse_command("stop"), None);
    }

    /// The requesting node answers with the same error as the owner did: same HTTP status,
    /// same problem.
    #[test]
    fn replies_become_the_owners_errors_again() {
        let flow_id = FlowId::new();
        let cases = [
            RuntimeError::FlowNotFound(flow_id),
            RuntimeError::IllegalTransition {
                status: FlowStatus::Completed,
            },
            RuntimeError::WriteRefused("too big".into()),
            RuntimeError::Unavailable("flow actor stopped".into()),
        ];
        for error in cases {
            let stored = serde_json::to_value(ControlReply::of(&Err(error))).expect("json");
            let reply: ControlReply = serde_json::from_value(stored).expect("reply");
            let again = reply.into_result(flow_id).expect_err("an error");
            match again {
                RuntimeError::FlowNotFound(id) => assert_eq!(id, flow_id),
                RuntimeError::IllegalTransition { status } => {
                    assert_eq!(status, FlowStatus::Completed)
                }
                RuntimeError::WriteRefused(reason) => assert_eq!(reason, "too big"),
                RuntimeError::Unavailable(detail) => assert_eq!(detail, "flow actor stopped"),
                other => panic!("{other:?}"),
            }
        }
    }
}
