//! The state of a flow and its phases, as stored and as served: the field names are the v1 contract.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::definition::FlowType;
use crate::ids::{FlowId, Tenant};

/// The current time, truncated to microseconds so SQLite and PostgreSQL store the same value.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// Error for a status string that is not one of the contract's names.
#[derive(Debug, thiserror::Error)]
#[error("unknown status `{0}`")]
pub struct UnknownStatus(pub String);

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            /// The contract's name for this value.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownStatus;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s { $($text => Ok(Self::$variant),)+ other => Err(UnknownStatus(other.to_owned())) }
            }
        }
    };
}

string_enum! {
    /// Where a flow is in its lifecycle: `initialized → running → completed | failed | cancelled`,
    /// `running ⇄ paused`, `failed → running` on retry.
    FlowStatus {
        Initialized => "initialized",
        Running => "running",
        Paused => "paused",
        Completed => "completed",
        Failed => "failed",
        Cancelled => "cancelled",
    }
}

impl FlowStatus {
    /// Terminal flows own no actor; everything else is resumed at boot.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }
}

string_enum! {
    /// Where one phase is: `pending → running → succeeded | failed | skipped`.
    PhaseStatus {
        Pending => "pending",
        Running => "running",
        Succeeded => "succeeded",
        Failed => "failed",
        Skipped => "skipped",
    }
}

impl PhaseStatus {
    /// Finished phases count towards `progress_percentage`.
    pub fn is_done(self) -> bool {
        matches!(self, Self::Succeeded | Self::Skipped)
    }
}

/// One phase of one flow: its latest attempt and result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PhaseState {
    pub name: String,
    pub status: PhaseStatus,
    /// Attempts started so far (0 while pending).
    pub attempt: u32,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub output: Option<Value>,
    pub error: Option<String>,
}

impl PhaseState {
    /// A phase nothing has happened to yet.
    pub fn pending(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            status: PhaseStatus::Pending,
            attempt: 0,
            started_at: None,
            finished_at: None,
            output: None,
            error: None,
        }
    }
}

/// One flow as the database holds it and the API serves it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FlowState {
    pub id: FlowId,
    pub flow_type: String,
    pub flow_type_version: u32,
    pub status: FlowStatus,
    pub current_phase: Option<String>,
    pub next_phase: Option<String>,
    /// 0–100, by phase weight; never decreases within a run.
    pub progress_percentage: f64,
    pub phases: Vec<PhaseState>,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub input: Arc<Value>,
    pub parent_flow_id: Option<FlowId>,
    /// The root of the flow tree; a flow without a parent is its own master.
    pub master_flow_id: FlowId,
    pub client_account_id: String,
    pub engagement_id: String,
    pub created_by: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The last event `seq` written for this flow; the next event gets `last_seq + 1`.
    #[serde(skip)]
    pub last_seq: u64,
    /// The `Idempotency-Key` the flow was created with, if any.
    #[serde(skip)]
    pub idempotency_key: Option<String>,
    /// The cluster node that owns the flow as stored (`None`: not yet stored, or stored by a
    /// single-node store or an older version). Only its owner may write it (docs/cluster.md).
    #[serde(skip)]
    pub owner_node: Option<String>,
    /// The owner's lease epoch: every transition write is conditional on it, so a node that
    /// lost the flow (a takeover bumped the epoch) commits nothing.
    #[serde(skip)]
    pub owner_epoch: u64,
}

impl FlowState {
    /// The owning tenant.
    pub fn tenant(&self) -> Tenant {
        Tenant {
            client_account_id: self.client_account_id.clone(),
            engagement_id: self.engagement_id.clone(),
        }
    }

    /// Index of a phase by name.
    pub fn phase_index(&self, name: &str) -> Option<usize> {
        self.phases.iter().position(|p| p.name == name)
    }

    /// The phase named by `current_phase`, if any.
    pub fn current(&self) -> Option<(usize, &PhaseState)> {
        let name = self.current_phase.as_deref()?;
        let index = self.phase_index(name)?;
        Some((index, &self.phases[index]))
    }

    /// A flow row for a new flow of `definition`, with every phase pending and status `initialized`.
    pub fn new_initialized(definition: &FlowType, request: NewFlow) -> Self {
        let at = now();
        let id = FlowId::new();
        Self {
            id,
            flow_type: definition.name.clone(),
            flow_type_version: definition.version,
            status: FlowStatus::Initialized,
            current_phase: definition.phases.first().map(|p| p.name.clone()),
            next_phase: definition.phases.get(1).map(|p| p.name.clone()),
            progress_percentage: 0.0,
            phases: definition
                .phases
                .iter()
                .map(|p| PhaseState::pending(&p.name))
                .collect(),
            input: Arc::new(request.input),
            parent_flow_id: request.parent_flow_id,
            master_flow_id: request.master_flow_id.unwrap_or(id),
            client_account_id: request.tenant.client_account_id,
            engagement_id: request.tenant.engagement_id,
            created_by: request.created_by,
            created_at: at,
            updated_at: at,
            last_seq: 0,
            idempotency_key: request.idempotency_key,
            owner_node: None,
            owner_epoch: 1,
        }
    }
}

/// What a caller asks for when it creates a flow.
#[derive(Clone, Debug)]
pub struct NewFlow {
    pub flow_type: String,
    pub input: Value,
    pub parent_flow_id: Option<FlowId>,
    /// Set by the runtime from the parent; callers leave it `None`.
    pub master_flow_id: Option<FlowId>,
    pub tenant: Tenant,
    pub created_by: Option<String>,
    pub idempotency_key: Option<String>,
}

/// One row of the failure journal: every failed attempt, with enough to diagnose it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FailureRecord {
    /// Assigned by the store; 0 before it is written.
    pub id: i64,
    pub flow_id: FlowId,
    pub master_flow_id: FlowId,
    pub phase: Option<String>,
    pub attempt: u32,
    /// A stable machine-readable kind: `handler_error`, `timeout`, `panic`, ….
    pub error_kind: String,
    pub message: String,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub diagnostic: Value,
    pub at: DateTime<Utc>,
}
