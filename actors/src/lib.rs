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
//!   [`handler_pool`]: the threads handlers run on (but those that only await).
//! - [`events`]: flow events and their fan-out to subscribers.
//! - [`store`]: the storage contract; [`memory_store`]: an in-memory store for tests.
//! - [`task`]: external tasks that remote workers lease from queues.
//! - [`error`]: the runtime's errors; `faults`: test-only fault injection (cargo feature
//!   `faults`, off by default: a default build has no fault code on its actors' paths).
//! - Actors, one folder each with its messages: [`supervisor`], [`flow`], [`registry`],
//!   [`persistence`], [`health`], [`queue`] (external tasks).
//! - [`runtime`]: the handle that starts the actors and that callers hold.
//! - [`cluster`]: this process as a node of its database's cluster (node rows, heartbeats);
//!   [`controls`]: controls of flows another node owns, routed through the database.
//!
//! # Embedding the runtime
//!
//! A program embeds flowd by registering its own phase handlers, declaring flow types that
//! name them, and starting a [`Runtime`] on a store inside an actix `System`. The flowd server
//! does exactly this with its diesel stores (SQLite or PostgreSQL); the
//! [`memory_store::MemoryStore`] below keeps everything in memory, as tests do.
//!
//! A handler is any `Fn(PhaseContext) -> impl Future<Output = Result<PhaseOutput, HandlerError>>`.
//! Its [`handler::PhaseContext`] carries the flow's input, the outputs of earlier phases, the
//! attempt number and an idempotency key `{flow_id}:{phase}:{attempt}`, a cancellation token
//! and a heartbeat. A [`handler::HandlerError`]'s [`handler::ErrorClass`] says whether another
//! attempt may help (`retryable`, `timeout`), cannot (`fatal`), or nobody could run it
//! (`unavailable`: the phase's fallback takes over); the phase's `retries` decide how many
//! attempts it gets.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::{Duration, Instant};
//!
//! use flowd_actors::definition::{FlowType, PhaseDefinition};
//! use flowd_actors::handler::{HandlerError, HandlerSet, PhaseContext, PhaseOutput};
//! use flowd_actors::ids::Tenant;
//! use flowd_actors::memory_store::MemoryStore;
//! use flowd_actors::model::{FlowStatus, NewFlow};
//! use flowd_actors::{Runtime, RuntimeConfig};
//! use serde_json::json;
//!
//! /// A phase of our own: greets whoever the flow's input names.
//! async fn greet(ctx: PhaseContext) -> Result<PhaseOutput, HandlerError> {
//!     let Some(name) = ctx.input["name"].as_str() else {
//!         return Err(HandlerError::fatal("bad_input", "the input names nobody"));
//!     };
//!     Ok(PhaseOutput::new(json!({ "greeting": format!("hello, {name}") })))
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! actix::System::new().block_on(async {
//!     // Built-in handlers (`noop`, `sleep`, `fail`) plus ours.
//!     let mut handlers = HandlerSet::with_builtins();
//!     handlers.register("greet", greet);
//!     // A flow type: named, versioned phases, each naming its handler.
//!     let hello = FlowType {
//!         name: "hello".into(),
//!         version: 1,
//!         phases: vec![
//!             PhaseDefinition { retries: 2, ..PhaseDefinition::new("greet", "greet") },
//!             PhaseDefinition::new("wrap_up", "noop"),
//!         ],
//!     };
//!     let store = Arc::new(MemoryStore::new());
//!     let runtime = Runtime::start(RuntimeConfig::default(), store, handlers, vec![hello]).await?;
//!
//!     let tenant = Tenant::default_tenant();
//!     let created = runtime
//!         .create_flow(NewFlow {
//!             flow_type: "hello".into(),
//!             input: json!({ "name": "flowd" }),
//!             parent_flow_id: None,
//!             master_flow_id: None,
//!             tenant: tenant.clone(),
//!             created_by: None,
//!             idempotency_key: None,
//!         })
//!         .await?;
//!     // `create_flow` answers once the flow is running; it then runs to the end by itself.
//!     assert_eq!(created.flow.status, FlowStatus::Running);
//!
//!     let deadline = Instant::now() + Duration::from_secs(10);
//!     let flow = loop {
//!         let flow = runtime.flow(&tenant, created.flow.id).await?;
//!         if flow.status.is_terminal() || Instant::now() > deadline {
//!             break flow;
//!         }
//!         tokio::time::sleep(Duration::from_millis(10)).await;
//!     };
//!     assert_eq!(flow.status, FlowStatus::Completed);
//!     assert_eq!(flow.progress_percentage, 100.0);
//!     let output = flow.phases[0].output.as_ref().expect("greet's output");
//!     assert_eq!(output["greeting"], "hello, flowd");
//!     Ok::<(), Box<dyn std::error::Error>>(())
//! })?;
//! # Ok(())
//! # }
//! ```
//!
//! Live progress comes from [`Runtime::subscribe`]: every committed event, in commit order.
//! `examples/discovery_flow.rs` runs the same on an embedded SQLite database and prints each
//! transition; `examples/collection_flow.rs` adds child flows.
pub mod builtin;
pub mod child_flows;
pub mod cluster;
pub mod controls;
pub mod definition;
pub mod error;
pub mod events;
pub mod external;
#[cfg(feature = "faults")]
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
