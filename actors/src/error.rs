//! The runtime's error type, by what the caller should do.

use crate::definition::DefinitionError;
use crate::ids::FlowId;
use crate::model::FlowStatus;
use crate::store::StoreError;

/// Why a runtime request failed. Each variant maps to one HTTP status in the API layer.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// No flow type by that name (or version) is registered.
    #[error("unknown flow type `{0}`")]
    UnknownFlowType(String),
    /// No such flow for this tenant.
    #[error("flow {0} not found")]
    FlowNotFound(FlowId),
    /// The named parent flow does not exist for this tenant.
    #[error("parent flow {0} not found")]
    ParentNotFound(FlowId),
    /// The lifecycle forbids the request in the flow's current status.
    #[error("the flow is {status}; that transition is not allowed")]
    IllegalTransition { status: FlowStatus },
    /// The idempotency key was used before with a different request.
    #[error("idempotency key `{0}` was used for a different request")]
    IdempotencyMismatch(String),
    /// A definition failed validation.
    #[error("invalid flow type: {0}")]
    InvalidDefinition(#[from] DefinitionError),
    /// That (name, version) exists with different content; versions are immutable, so the
    /// change needs a new `version`.
    #[error(
        "flow type `{name}` version {version} is already registered with a different definition \
         ({difference}); versions are immutable: bump `version` to register the change"
    )]
    VersionConflict {
        name: String,
        version: u32,
        /// What differs, e.g. "phase `data_import`: `params` differs".
        difference: String,
    },
    /// The caller is a replaced life of a flow actor; it must stop.
    #[error("this flow actor was replaced by a newer one")]
    Fenced,
    /// The database refused the write for what it holds; the same request will fail again.
    #[error("the database refused the write: {0}")]
    WriteRefused(String),
    /// The database or an actor is unavailable; the request may be retried.
    #[error("runtime unavailable: {0}")]
    Unavailable(String),
    /// The database could not be reached; the request may be retried.
    #[error("runtime unavailable")]
    StoreUnavailable(#[source] StoreError),
    /// The store refused a write that conflicts with one already stored (a uniqueness rule):
    /// the same request conflicts again.
    #[error("the request conflicts with stored data")]
    Conflict(#[source] StoreError),
    /// Stored data could not be read back (a bug or a manual edit): retrying cannot help.
    #[error("stored data cannot be read")]
    Corrupt(#[source] StoreError),
}

impl RuntimeError {
    /// The same error for another caller waiting on the same request (a repeated create).
    pub fn duplicate(&self) -> Self {
        match self {
            Self::IdempotencyMismatch(key) => Self::IdempotencyMismatch(key.clone()),
            Self::StoreUnavailable(error) => Self::StoreUnavailable(error.clone()),
            Self::Conflict(error) => Self::Conflict(error.clone()),
            Self::Corrupt(error) => Self::Corrupt(error.clone()),
            other => Self::Unavailable(other.to_string()),
        }
    }
}

impl From<StoreError> for RuntimeError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Unavailable(_) => Self::StoreUnavailable(error),
            StoreError::Conflict(_) => Self::Conflict(error),
            StoreError::Corrupt(_) => Self::Corrupt(error),
            StoreError::Rejected(_) => Self::WriteRefused(error.to_string()),
        }
    }
}

impl From<actix::MailboxError> for RuntimeError {
    fn from(error: actix::MailboxError) -> Self {
        Self::Unavailable(format!("actor mailbox: {error}"))
    }
}

/// An error and its sources, outermost first (`a: b: c`): what a log line or an API answer
/// shows, since many errors' own message is vague without its causes.
pub fn with_sources(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A commit that did not happen; the writer must not act as if it had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PersistError {
    /// The database refused this write for its content (a conflict, a value it cannot store).
    /// Only this write failed; retrying it as it is cannot succeed.
    #[error("write refused by the database: {0}")]
    Refused(String),
    /// The database was unavailable; nothing was written and the caller may try again.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The persistence actor stopped before answering.
    #[error("persistence actor stopped")]
    Stopped,
    /// The writer is a replaced life of the flow's actor; nothing was written.
    #[error("stale writer: this flow actor was replaced")]
    Fenced,
}

impl From<PersistError> for RuntimeError {
    fn from(error: PersistError) -> Self {
        match error {
            PersistError::Fenced => Self::Fenced,
            PersistError::Refused(reason) => Self::WriteRefused(reason),
            PersistError::Stopped | PersistError::Unavailable(_) => {
                Self::Unavailable(error.to_string())
            }
        }
    }
}
