//! What routing controls across nodes needs from a database: the `flow_controls` rows
//! (docs/cluster.md, 2.6). Kept apart from [`crate::store::FlowStore`]: a control row is not
//! flow state and does not go through the persistence actor; the transition a control causes
//! does, on the owner, exactly as a local control's.

use futures_util::future::BoxFuture;
use uuid::Uuid;

use super::ControlReply;
use crate::flow::ControlCommand;
use crate::ids::{FlowId, Tenant};
use crate::store::StoreError;

/// A control for a flow another node owns, as the requesting node stores it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlRequest {
    pub id: Uuid,
    pub flow_id: FlowId,
    pub tenant: Tenant,
    pub command: ControlCommand,
    /// The owner when the flow was read: whom the notification wakes. Whoever owns the flow
    /// when the row is taken applies it (a takeover in between hands it to the new owner).
    pub owner: String,
    pub requested_by: String,
}

/// A control this node took to apply, because it owns the flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TakenControl {
    pub id: Uuid,
    pub flow_id: FlowId,
    pub tenant: Tenant,
    pub command: ControlCommand,
}

/// What became of a control its requester stopped waiting for.
#[derive(Clone, Debug, PartialEq)]
pub enum Withdrawal {
    /// Nobody had taken it: it was not applied, and now never will be.
    NotApplied,
    /// `node` had taken it and not replied: it may have been applied (its reply, if any, is
    /// refused from now on).
    Unknown { node: String },
    /// The reply arrived first.
    Replied(ControlReply),
}

/// The `flow_controls` table. Every method is one statement on a pooled connection.
pub trait ControlStore: Send + Sync + 'static {
    /// Stores `request` and notifies its owner (`NOTIFY flowd_controls`), in one transaction.
    fn request_control<'a>(
        &'a self,
        request: &'a ControlRequest,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// The reply to control `id`, once its owner wrote one.
    fn control_reply(&self, id: Uuid) -> BoxFuture<'_, Result<Option<ControlReply>, StoreError>>;

    /// The requester gives up on control `id`: from now on nobody applies it or replies to it.
    fn withdraw_control(&self, id: Uuid) -> BoxFuture<'_, Result<Withdrawal, StoreError>>;

    /// Deletes control `id` (its requester has answered).
    fn forget_control(&self, id: Uuid) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Takes, oldest first, at most `limit` controls not yet answered of flows `node` owns now
    /// and nobody has taken, or that a node which no longer owns the flow took and never
    /// answered (it died: the new owner applies them).
    fn take_controls<'a>(
        &'a self,
        node: &'a str,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<TakenControl>, StoreError>>;

    /// Writes the reply of control `id` taken by `node` and notifies its requester. `false`:
    /// the requester withdrew it, or another node took it over meanwhile.
    fn reply_control<'a>(
        &'a self,
        id: Uuid,
        node: &'a str,
        reply: &'a ControlReply,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Deletes rows requested longer ago than `older_than` (their requester crashed).
    fn forget_old_controls(
        &self,
        older_than: std::time::Duration,
    ) -> BoxFuture<'_, Result<u64, StoreError>>;

    /// Makes `node` the owner of failed flow `flow_id` under a new epoch, if it is still failed
    /// and still owned by `owner` (`None`: nobody, a flow of an older version) under `epoch`
    /// (read before): a retry from any node then runs the flow there, and a retry the old
    /// owner applies at the same moment is fenced off. The new epoch, or `None` if the row
    /// changed meanwhile.
    fn adopt_failed<'a>(
        &'a self,
        flow_id: FlowId,
        owner: Option<&'a str>,
        epoch: u64,
        node: &'a str,
    ) -> BoxFuture<'a, Result<Option<u64>, StoreError>>;
}
