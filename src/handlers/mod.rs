//! Phase handlers that reach outside the process: `command` (a subprocess) and `http` (a POST).
//!
//! Both speak the same wire contract, so a phase can move between them without changing its
//! code: the phase context goes out as one JSON object, and the reply is either
//! `{"output": …, "next_phase": …}` or any other JSON value, taken whole as the output.

mod command;
mod http_call;
pub mod targets;

use std::sync::Arc;

use flowd_actors::handler::{HandlerError, HandlerSet, NextPhase, PhaseContext, PhaseOutput};
use serde_json::{Map, Value, json};

use crate::configuration::SecuritySettings;
use targets::TargetPolicy;

/// Adds `command` and `http` to `set`: called by `Application::build`, so every flowd server
/// knows them; embedding programs that build their own set can call it too. `http` targets
/// are held to `security.http_allow` (entries are checked when the configuration is loaded;
/// one that is not understood here allows nothing).
pub fn register(set: &mut HandlerSet, security: &SecuritySettings) {
    let entries: Vec<String> = security
        .http_allow
        .iter()
        .filter(|entry| {
            let ok = TargetPolicy::new(std::slice::from_ref(*entry)).is_ok();
            if !ok {
                tracing::error!(%entry, "ignoring an [security] http_allow entry");
            }
            ok
        })
        .cloned()
        .collect();
    let policy = TargetPolicy::new(&entries).unwrap_or_default();
    set.register("command", command::run);
    set.register("http", http_call::HttpHandler::new(Arc::new(policy)));
}

/// Default bound on a reply (stdout or HTTP body): a phase output is meant to be a small
/// document, and the failure journal must never hold an unbounded blob.
pub(crate) const DEFAULT_MAX_OUTPUT_BYTES: usize = 1 << 20;

/// How much of a bad reply goes into the diagnostic: enough to see what went wrong.
const EXCERPT_BYTES: usize = 2048;

/// Serializes the context sent to a `command`'s stdin or an `http` target's request body.
pub(crate) fn context_body(ctx: &PhaseContext) -> Result<Vec<u8>, HandlerError> {
    serde_json::to_vec(&ctx.to_wire()).map_err(|error| {
        HandlerError::fatal(
            "bad_context",
            format!("the phase context is not serializable: {error}"),
        )
    })
}

/// Turns a reply's bytes into the phase's output: `{"output": …, "next_phase": …}` or the
/// whole JSON value. `diagnostic` is extra context for a `bad_output` error.
pub(crate) fn parse_reply(
    bytes: &[u8],
    diagnostic: Map<String, Value>,
) -> Result<PhaseOutput, HandlerError> {
    let bad_output = |message: String| {
        let mut diagnostic = diagnostic.clone();
        diagnostic.insert("output_excerpt".into(), Value::String(excerpt(bytes)));
        HandlerError::retryable("bad_output", message).with_diagnostic(Value::Object(diagnostic))
    };
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|error| bad_output(format!("the reply is not valid JSON: {error}")))?;
    let Value::Object(mut object) = value else {
        return Ok(PhaseOutput::new(value));
    };
    let Some(output) = object.remove("output") else {
        return Ok(PhaseOutput::new(Value::Object(object)));
    };
    let next_phase = match object.remove("next_phase") {
        None => NextPhase::ByDefinition,
        Some(Value::Null) => NextPhase::Finish,
        Some(Value::String(name)) => NextPhase::Named(name),
        Some(other) => {
            return Err(bad_output(format!(
                "`next_phase` must be a phase name or null, not {other}"
            )));
        }
    };
    Ok(PhaseOutput { output, next_phase })
}

/// The start of `bytes` as text, for diagnostics.
pub(crate) fn excerpt(bytes: &[u8]) -> String {
    let end = bytes.len().min(EXCERPT_BYTES);
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// A `bad_params` error: the definition is wrong, so no retry can help.
pub(crate) fn bad_params(handler: &str, error: impl std::fmt::Display) -> HandlerError {
    HandlerError::fatal("bad_params", format!("invalid `{handler}` params: {error}"))
        .with_diagnostic(json!({ "handler": handler }))
}

/// Reads the phase's `params` into `T`; absent params are an empty table.
pub(crate) fn params<T: serde::de::DeserializeOwned>(
    handler: &str,
    ctx: &PhaseContext,
) -> Result<T, HandlerError> {
    let params = match &ctx.params {
        Value::Null => Value::Object(Map::new()),
        other => other.clone(),
    };
    serde_json::from_value(params).map_err(|error| bad_params(handler, error))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<PhaseOutput, HandlerError> {
        parse_reply(text.as_bytes(), Map::new())
    }

    #[test]
    fn an_output_key_carries_the_output_and_next_phase() {
        let reply = parse(r#"{"output": {"n": 1}, "next_phase": "b"}"#).unwrap();
        assert_eq!(reply.output, json!({ "n": 1 }));
        assert_eq!(reply.next_phase, NextPhase::Named("b".into()));
        let reply = parse(r#"{"output": 2, "next_phase": null}"#).unwrap();
        assert_eq!(reply.next_phase, NextPhase::Finish);
        let reply = parse(r#"{"output": 2}"#).unwrap();
        assert_eq!(reply.next_phase, NextPhase::ByDefinition);
    }

    #[test]
    fn any_other_json_is_the_whole_output() {
        assert_eq!(parse(r#"{"n": 1}"#).unwrap().output, json!({ "n": 1 }));
        assert_eq!(parse("[1, 2]").unwrap().output, json!([1, 2]));
    }

    #[test]
    fn bad_replies_are_bad_output() {
        let error = parse("not json").unwrap_err();
        assert_eq!(error.kind, "bad_output");
        assert!(error.is_retryable());
        assert_eq!(error.diagnostic["output_excerpt"], "not json");
        assert_eq!(
            parse(r#"{"output": 1, "next_phase": 3}"#).unwrap_err().kind,
            "bad_output"
        );
    }
}
