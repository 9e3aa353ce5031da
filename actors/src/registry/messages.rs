//! Messages of the registry actor.

use std::sync::Arc;

use actix::Message;

use crate::definition::FlowType;
use crate::error::RuntimeError;

/// Adds a flow type version. Re-registering an identical version is a no-op; a different
/// definition under an existing version is refused, because running flows pin versions.
#[derive(Message)]
#[rtype(result = "Result<Arc<FlowType>, RuntimeError>")]
pub struct RegisterFlowType(pub FlowType);

/// A definition: the given version, or the latest when `version` is `None`.
#[derive(Message)]
#[rtype(result = "Option<Arc<FlowType>>")]
pub struct GetFlowType {
    pub name: String,
    pub version: Option<u32>,
}

/// The latest version of every flow type, by name.
#[derive(Message)]
#[rtype(result = "Vec<Arc<FlowType>>")]
pub struct ListFlowTypes;
