//! Identifiers that cross every layer: flows and tenants.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A flow's id. Time-ordered (UUIDv7) so the newest-first listing is an index scan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(transparent)]
pub struct FlowId(pub Uuid);

impl FlowId {
    /// A fresh, time-ordered id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }
}

impl Default for FlowId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for FlowId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for FlowId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

/// Who owns a flow. Every read and every stream is scoped by it, so one tenant never sees another's flows.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Tenant {
    /// The client account the flow belongs to.
    pub client_account_id: String,
    /// The engagement within that account.
    pub engagement_id: String,
}

impl Tenant {
    /// The tenant everything belongs to when authentication is off.
    pub fn default_tenant() -> Self {
        Self {
            client_account_id: "default".into(),
            engagement_id: "default".into(),
        }
    }
}
