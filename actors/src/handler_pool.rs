//! The threads phase handlers run on, apart from the actors' arbiters: a handler that blocks
//! its thread (a sync library call, a busy loop) takes one pool worker, never a flow actor's
//! mailbox, so pings, timeouts and every other flow carry on. Handlers that say they only
//! await ([`crate::handler::PhaseHandler::only_awaits`]) run beside their flow actor instead.

use std::sync::Arc;

use tokio::runtime::{Builder, Handle, Runtime};

/// Owns the handler runtime; shuts it down without blocking when the last owner goes.
pub struct HandlerPool {
    runtime: Option<Runtime>,
    handle: Handle,
}

impl HandlerPool {
    /// A pool of `workers` threads (at least 2, so one blocked handler never stalls the rest).
    pub fn new(workers: usize) -> std::io::Result<Arc<Self>> {
        let runtime = Builder::new_multi_thread()
            .worker_threads(workers.max(2))
            .thread_name("flowd-handler")
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        Ok(Arc::new(Self {
            runtime: Some(runtime),
            handle,
        }))
    }

    /// Where handler tasks are spawned.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }
}

impl Drop for HandlerPool {
    fn drop(&mut self) {
        // Dropping a runtime inside another one's async context would panic; this never blocks.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
