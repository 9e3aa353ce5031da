//! Built-in handlers for demos and tests: `noop`, `sleep {ms}`, `fail {times}`.

use std::time::Duration;

use serde_json::{Value, json};

use crate::handler::{Awaiting, HandlerError, HandlerSet, PhaseContext, PhaseOutput, PhaseResult};

impl HandlerSet {
    /// The built-ins (`noop`, `sleep`, `fail`) and nothing else.
    pub fn with_builtins() -> Self {
        let mut set = Self::default();
        register(&mut set);
        set
    }
}

/// Adds the built-ins to `set`.
pub fn register(set: &mut HandlerSet) {
    set.register(
        "noop",
        Awaiting(|_ctx: PhaseContext| async { Ok(PhaseOutput::new(json!({}))) }),
    );
    set.register("sleep", Awaiting(sleep));
    set.register("fail", Awaiting(fail));
}

fn u64_param(ctx: &PhaseContext, name: &str) -> Result<u64, HandlerError> {
    match ctx.params.get(name) {
        None | Some(Value::Null) => Ok(0),
        Some(value) => value.as_u64().ok_or_else(|| {
            HandlerError::fatal(
                "bad_params",
                format!("`{name}` must be a non-negative integer"),
            )
        }),
    }
}

async fn sleep(ctx: PhaseContext) -> PhaseResult {
    let ms = u64_param(&ctx, "ms")?;
    tokio::select! {
        () = tokio::time::sleep(Duration::from_millis(ms)) => Ok(PhaseOutput::new(json!({ "slept_ms": ms }))),
        () = ctx.cancellation.cancelled() => Err(HandlerError::fatal("cancelled", "sleep cancelled")),
    }
}

/// Adds the fault-injection handlers: `panic` (panics with `message` for the first `times`
/// attempts, default all) and `block` (blocks its
/// thread for `ms`, as a handler calling a synchronous library would). For chaos runs and fault
/// tests only (cargo feature `faults`): a runtime registers them only when told to.
#[cfg(feature = "faults")]
pub fn register_faults(set: &mut HandlerSet) {
    set.register("panic", |ctx: PhaseContext| async move {
        let times = match ctx.params.get("times") {
            None => u64::MAX,
            Some(_) => u64_param(&ctx, "times")?,
        };
        if u64::from(ctx.attempt) <= times {
            let message = ctx.params["message"].as_str().unwrap_or("injected panic");
            panic!("{message} (attempt {})", ctx.attempt);
        }
        Ok(PhaseOutput::new(json!({ "panicked_before": times })))
    });
    set.register("block", |ctx: PhaseContext| async move {
        let ms = u64_param(&ctx, "ms")?;
        // Deliberately blocking: this handler exists to show that blocking stalls nothing else.
        std::thread::sleep(Duration::from_millis(ms));
        Ok(PhaseOutput::new(json!({ "blocked_ms": ms })))
    });
}

/// Fails the first `times` attempts, then succeeds: retry policies made visible.
async fn fail(ctx: PhaseContext) -> PhaseResult {
    let times = u64_param(&ctx, "times")?;
    if u64::from(ctx.attempt) <= times {
        Err(HandlerError::retryable(
            "handler_error",
            format!("planned failure {} of {times}", ctx.attempt),
        )
        .with_diagnostic(json!({ "attempt": ctx.attempt, "times": times })))
    } else {
        Ok(PhaseOutput::new(json!({ "failed_before": times })))
    }
}
