//! flowd-actors: the flowd runtime, free of HTTP and SQL.
//!
//! - [`ids`]: flow and tenant identifiers.
//! - [`definition`]: flow types, their phases and validation.
//! - [`model`]: flow and phase state, as stored and served.
//! - [`machine`]: the pure state machine of a flow's lifecycle; [`status_reason`]: why a
//!   non-terminal flow is not progressing, derived from what is stored.
//! - [`limits`]: bounds on definitions and flows; which JSON values every store can keep.
//! - [`handler`]: the phase handler trait; [`builtin`]: `noop`, `sleep`, `fail`;
//!   [`external`] and [`child_flows`]: the kinds that need the runtime itself;
//!   [`handler_pool`]: the threads handlers run on.
//! - [`events`]: flow events and their fan-out to subscribers.
//! - [`store`]: the storage contract; [`memory_store`]: an in-memory store for tests.
//! - [`task`]: external tasks that remote workers lease from queues.
//! - [`error`]: the runtime's errors; [`faults`]: test-only fault injection.
//! - Actors, one folder each with its messages: [`supervisor`], [`flow`], [`registry`],
//!   [`persistence`], [`health`], [`queue`] (external tasks).
//! - [`runtime`]: the handle that starts the actors and that callers hold.
pub mod builtin;
pub mod child_flows;
pub mod definition;
pub mod error;
pub mod events;
pub mod external;
pub mod faults;
pub mod flow;
pub mod handler;
pub mod handler_pool;
pub mod health;
pub mod ids;
pub mod limits;
pub mod machine;
pub mod memory_store;
pub mod model;
pub mod persistence;
pub mod queue;
pub mod registry;
pub mod runtime;
pub mod status_reason;
pub mod store;
pub mod supervisor;
pub mod task;

pub use runtime::{Runtime, RuntimeConfig};
pub mod metrics;
