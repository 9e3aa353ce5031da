//! flowd-actors: the flowd runtime, free of HTTP and SQL.
//!
//! - [`ids`]: flow and tenant identifiers.
//! - [`definition`]: flow types, their phases and validation.
//! - [`model`]: flow and phase state, as stored and served.
//! - [`events`]: flow events and their fan-out to subscribers.
//! - [`store`]: the storage contract the runtime writes through.
pub mod builtin;
pub mod definition;
pub mod events;
pub mod handler;
pub mod ids;
pub mod machine;
pub mod model;
pub mod store;
