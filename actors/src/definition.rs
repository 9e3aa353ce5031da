//! Flow types: named, versioned lists of phases, and their validation.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::limits::{Limits, MAX_VERSION, json_storable};

/// A named, versioned list of phases. A flow pins the version it started with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct FlowType {
    pub name: String,
    pub version: u32,
    pub phases: Vec<PhaseDefinition>,
}

/// One phase of a flow type: which handler runs it and how it is retried.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PhaseDefinition {
    pub name: String,
    /// `noop`, `sleep`, `fail`, or the name of a handler registered by the embedding program.
    pub handler: String,
    #[serde(default = "empty_object")]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub params: Value,
    /// Deadline of one attempt; the runtime's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<u64>,
    /// A handler that calls `heartbeat.beat()` and then stays silent this long counts as stuck:
    /// its attempt is cancelled and retried or failed by policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_timeout_s: Option<u64>,
    /// Attempts after the first, with exponential backoff.
    #[serde(default)]
    pub retries: u32,
    /// First backoff delay; doubles with every further attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_backoff_ms: Option<u64>,
    /// Share of `progress_percentage`.
    #[serde(default = "one")]
    pub weight: u32,
    /// The phase that follows, when not the next in order; handlers may still override it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_phase: Option<String>,
    /// A handler (any kind) that runs the attempt instead when the primary is unavailable: no
    /// worker on its queue, its program missing, its target refusing connections. The flow
    /// degrades instead of stalling; the switch is journaled and sent as a `phase_fallback` event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
    /// The fallback's params; the phase's own `params` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub fallback_params: Option<Value>,
    /// An `external` phase whose queue no worker polled for this long counts as unavailable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_after_s: Option<u64>,
}

impl PhaseDefinition {
    /// A phase run by `handler` with every option at its default: no params, the runtime's
    /// timeout, no retries, weight 1, the next phase in order.
    pub fn new(name: impl Into<String>, handler: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            handler: handler.into(),
            params: empty_object(),
            timeout_s: None,
            heartbeat_timeout_s: None,
            retries: 0,
            retry_backoff_ms: None,
            weight: 1,
            next_phase: None,
            fallback: None,
            fallback_params: None,
            fallback_after_s: None,
        }
    }
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

fn one() -> u32 {
    1
}

/// Why a definition was refused, naming the offending field so an API can answer `422` precisely.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct DefinitionError {
    /// A JSON-path-like pointer such as `phases[2].handler`.
    pub field: String,
    pub message: String,
}

impl DefinitionError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl FlowType {
    /// Checks everything a running flow relies on, so that no flow can fail for a bad definition,
    /// against the default [`Limits`].
    pub fn validate(&self, is_known_handler: impl Fn(&str) -> bool) -> Result<(), DefinitionError> {
        self.validate_with(is_known_handler, &Limits::default())
    }

    /// Like [`FlowType::validate`], within `limits`. Child flow types are checked by the
    /// registry, which knows the other types.
    pub fn validate_with(
        &self,
        is_known_handler: impl Fn(&str) -> bool,
        limits: &Limits,
    ) -> Result<(), DefinitionError> {
        if !is_valid_name(&self.name) {
            return Err(DefinitionError::new(
                "name",
                "must be 1–100 characters of letters, digits, `_`, `-` or `.`",
            ));
        }
        if self.version == 0 || self.version > MAX_VERSION {
            return Err(DefinitionError::new(
                "version",
                format!("must be 1–{MAX_VERSION}"),
            ));
        }
        if self.phases.is_empty() {
            return Err(DefinitionError::new(
                "phases",
                "a flow type needs at least one phase",
            ));
        }
        if self.phases.len() > limits.max_phases {
            return Err(DefinitionError::new(
                "phases",
                format!("at most {} phases per flow type", limits.max_phases),
            ));
        }
        let mut names = HashSet::new();
        for (i, phase) in self.phases.iter().enumerate() {
            if !is_valid_name(&phase.name) {
                return Err(DefinitionError::new(
                    format!("phases[{i}].name"),
                    "must be 1–100 characters of letters, digits, `_`, `-` or `.`",
                ));
            }
            if !names.insert(phase.name.as_str()) {
                return Err(DefinitionError::new(
                    format!("phases[{i}].name"),
                    format!("duplicate phase name `{}`", phase.name),
                ));
            }
            if !is_known_handler(&phase.handler) {
                return Err(DefinitionError::new(
                    format!("phases[{i}].handler"),
                    format!("unknown handler `{}`", phase.handler),
                ));
            }
            if !phase.params.is_object() {
                return Err(DefinitionError::new(
                    format!("phases[{i}].params"),
                    "must be an object",
                ));
            }
            if let Err(error) = json_storable(&phase.params) {
                return Err(DefinitionError::new(
                    format!("phases[{i}].params"),
                    error.to_string(),
                ));
            }
            if let Some(Err(error)) = phase.fallback_params.as_ref().map(json_storable) {
                return Err(DefinitionError::new(
                    format!("phases[{i}].fallback_params"),
                    error.to_string(),
                ));
            }
            validate_bounds(i, phase, limits)?;
            validate_kind(i, &phase.handler, &phase.params, "params", limits)?;
            if let Some(fallback) = &phase.fallback {
                if !is_known_handler(fallback) {
                    return Err(DefinitionError::new(
                        format!("phases[{i}].fallback"),
                        format!("unknown handler `{fallback}`"),
                    ));
                }
                let params = phase.fallback_params.as_ref().unwrap_or(&phase.params);
                if !params.is_object() {
                    return Err(DefinitionError::new(
                        format!("phases[{i}].fallback_params"),
                        "must be an object",
                    ));
                }
                if phase.handler == "external" && fallback == "external" {
                    // One attempt has one task: a second queue would need a second task.
                    return Err(DefinitionError::new(
                        format!("phases[{i}].fallback"),
                        "an `external` phase cannot fall back to another `external` queue",
                    ));
                }
                let field = if phase.fallback_params.is_some() {
                    "fallback_params"
                } else {
                    "params"
                };
                validate_kind(i, fallback, params, field, limits)?;
            }
            if phase.fallback_after_s == Some(0) {
                return Err(DefinitionError::new(
                    format!("phases[{i}].fallback_after_s"),
                    "must be at least 1",
                ));
            }
            if phase.fallback_after_s.is_some() && phase.fallback.is_none() {
                return Err(DefinitionError::new(
                    format!("phases[{i}].fallback_after_s"),
                    "only means something with a `fallback` handler",
                ));
            }
        }
        for (i, phase) in self.phases.iter().enumerate() {
            if let Some(next) = &phase.next_phase
                && !names.contains(next.as_str())
            {
                return Err(DefinitionError::new(
                    format!("phases[{i}].next_phase"),
                    format!("no phase named `{next}` in this flow type"),
                ));
            }
        }
        if self.total_weight() == 0 {
            return Err(DefinitionError::new(
                "phases",
                "the phases' weights add up to 0",
            ));
        }
        Ok(())
    }

    /// The flow types this type's phases start as children (primary and fallback handlers).
    pub fn child_types(&self) -> impl Iterator<Item = &str> {
        self.phases.iter().flat_map(|phase| {
            let primary = (phase.handler == "child_flows")
                .then(|| phase.params.get("flow_type").and_then(Value::as_str))
                .flatten();
            let fallback = (phase.fallback.as_deref() == Some("child_flows"))
                .then(|| {
                    phase
                        .fallback_params
                        .as_ref()
                        .unwrap_or(&phase.params)
                        .get("flow_type")
                        .and_then(Value::as_str)
                })
                .flatten();
            primary.into_iter().chain(fallback)
        })
    }

    /// The phase named `name`.
    pub fn phase(&self, name: &str) -> Option<&PhaseDefinition> {
        self.phases.iter().find(|p| p.name == name)
    }

    /// The phase that follows `name` by definition: its `next_phase`, else the next in order.
    pub fn default_next(&self, name: &str) -> Option<&str> {
        let index = self.phases.iter().position(|p| p.name == name)?;
        match &self.phases[index].next_phase {
            Some(next) => Some(next),
            None => self.phases.get(index + 1).map(|p| p.name.as_str()),
        }
    }

    /// Sum of the phase weights; the denominator of `progress_percentage`.
    pub fn total_weight(&self) -> u64 {
        self.phases.iter().map(|p| u64::from(p.weight)).sum()
    }
}

/// Numbers that would make a flow spin, wait forever or overflow a column.
fn validate_bounds(
    index: usize,
    phase: &PhaseDefinition,
    limits: &Limits,
) -> Result<(), DefinitionError> {
    let at = |key: &str| format!("phases[{index}].{key}");
    let seconds = |key: &str, value: Option<u64>| match value {
        Some(s) if s == 0 || s > limits.max_duration_s => Err(DefinitionError::new(
            at(key),
            format!("must be 1–{} seconds", limits.max_duration_s),
        )),
        _ => Ok(()),
    };
    seconds("timeout_s", phase.timeout_s)?;
    seconds("heartbeat_timeout_s", phase.heartbeat_timeout_s)?;
    seconds("fallback_after_s", phase.fallback_after_s)?;
    if phase.retries > limits.max_retries {
        return Err(DefinitionError::new(
            at("retries"),
            format!("at most {}", limits.max_retries),
        ));
    }
    if phase
        .retry_backoff_ms
        .is_some_and(|ms| ms > limits.max_delay_ms)
    {
        return Err(DefinitionError::new(
            at("retry_backoff_ms"),
            format!("at most {} ms", limits.max_delay_ms),
        ));
    }
    if phase.weight > 1_000_000 {
        return Err(DefinitionError::new(at("weight"), "at most 1000000"));
    }
    Ok(())
}

/// An optional integer param within `0..=max`.
fn integer_param(params: &Value, key: &str, max: u64, at: &str) -> Result<(), DefinitionError> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(()),
        Some(value) if value.as_u64().is_some_and(|n| n <= max) => Ok(()),
        Some(_) => Err(DefinitionError::new(
            at,
            format!("must be an integer 0–{max}"),
        )),
    }
}

/// A param that must be absent or an object whose values are strings (or, for `http`
/// headers, `{"env": "NAME"}` references).
fn string_map_param(
    params: &Value,
    key: &str,
    allow_env_refs: bool,
    at: &str,
) -> Result<(), DefinitionError> {
    let Some(value) = params.get(key) else {
        return Ok(());
    };
    let ok = value.as_object().is_some_and(|map| {
        map.values().all(|v| {
            v.is_string()
                || (allow_env_refs
                    && v.as_object().is_some_and(|r| {
                        r.len() == 1 && r.get("env").and_then(Value::as_str).is_some()
                    }))
        })
    });
    if ok {
        Ok(())
    } else if allow_env_refs {
        Err(DefinitionError::new(
            at,
            "must map names to strings or to `{\"env\": \"NAME\"}` references",
        ))
    } else {
        Err(DefinitionError::new(at, "must map names to strings"))
    }
}

/// Rejects keys a kind does not know, so a typo is a 422 and not a surprise at run time.
fn known_keys(
    params: &Value,
    keys: &[&str],
    at: impl Fn(&str) -> String,
) -> Result<(), DefinitionError> {
    if let Some(map) = params.as_object()
        && let Some(unknown) = map.keys().find(|k| !keys.contains(&k.as_str()))
    {
        return Err(DefinitionError::new(
            at(unknown),
            format!("unknown param; expected one of {}", keys.join(", ")),
        ));
    }
    Ok(())
}

/// The params the runtime's own kinds cannot run without, checked up front so that a flow
/// never fails for a typo in its definition.
fn validate_kind(
    index: usize,
    handler: &str,
    params: &Value,
    field: &str,
    limits: &Limits,
) -> Result<(), DefinitionError> {
    let at = |key: &str| format!("phases[{index}].{field}.{key}");
    match handler {
        "sleep" => integer_param(params, "ms", limits.max_delay_ms, &at("ms")),
        "fail" => integer_param(
            params,
            "times",
            u64::from(limits.max_retries) + 1,
            &at("times"),
        ),
        "command" => {
            known_keys(
                params,
                &["program", "args", "env", "cwd", "max_output_bytes"],
                at,
            )?;
            if params
                .get("program")
                .and_then(Value::as_str)
                .is_none_or(|p| p.trim().is_empty())
            {
                return Err(DefinitionError::new(
                    at("program"),
                    "a `command` phase names the program to run",
                ));
            }
            if params.get("args").is_some_and(|args| {
                !args
                    .as_array()
                    .is_some_and(|items| items.iter().all(Value::is_string))
            }) {
                return Err(DefinitionError::new(
                    at("args"),
                    "must be an array of strings",
                ));
            }
            string_map_param(params, "env", false, &at("env"))?;
            if params.get("cwd").is_some_and(|cwd| !cwd.is_string()) {
                return Err(DefinitionError::new(at("cwd"), "must be a path"));
            }
            integer_param(
                params,
                "max_output_bytes",
                64 << 20,
                &at("max_output_bytes"),
            )
        }
        "http" => {
            known_keys(
                params,
                &["url", "timeout_ms", "headers", "max_output_bytes"],
                at,
            )?;
            let url = params.get("url").and_then(Value::as_str).unwrap_or("");
            let scheme_ok = url.split_once("://").is_some_and(|(scheme, rest)| {
                matches!(scheme.to_ascii_lowercase().as_str(), "http" | "https") && !rest.is_empty()
            });
            if !scheme_ok {
                return Err(DefinitionError::new(
                    at("url"),
                    "an `http` phase needs an http:// or https:// URL",
                ));
            }
            integer_param(params, "timeout_ms", 600_000, &at("timeout_ms"))?;
            integer_param(
                params,
                "max_output_bytes",
                64 << 20,
                &at("max_output_bytes"),
            )?;
            string_map_param(params, "headers", true, &at("headers"))
        }
        "external" => match params.get("queue").and_then(Value::as_str) {
            Some(queue) if is_valid_name(queue) => Ok(()),
            _ => Err(DefinitionError::new(
                at("queue"),
                "an `external` phase needs a queue name (letters, digits, `_`, `-`, `.`)",
            )),
        },
        "child_flows" => {
            if !params
                .get("flow_type")
                .and_then(Value::as_str)
                .is_some_and(is_valid_name)
            {
                return Err(DefinitionError::new(
                    at("flow_type"),
                    "a `child_flows` phase names the flow type of its children",
                ));
            }
            let sources = ["inputs", "inputs_from", "count"]
                .iter()
                .filter(|key| params.get(**key).is_some())
                .count();
            if sources != 1 {
                return Err(DefinitionError::new(
                    at("inputs"),
                    "give exactly one of `inputs` (an array), `inputs_from` (a phase name) or `count`",
                ));
            }
            if params.get("inputs").is_some_and(|v| !v.is_array()) {
                return Err(DefinitionError::new(at("inputs"), "must be an array"));
            }
            if params.get("inputs_from").is_some_and(|v| !v.is_string()) {
                return Err(DefinitionError::new(
                    at("inputs_from"),
                    "must name an earlier phase",
                ));
            }
            if params
                .get("count")
                .is_some_and(|v| v.as_u64().is_none_or(|n| n > limits.max_children as u64))
            {
                return Err(DefinitionError::new(
                    at("count"),
                    format!("must be an integer 0–{}", limits.max_children),
                ));
            }
            if params
                .get("inputs")
                .and_then(Value::as_array)
                .is_some_and(|inputs| inputs.len() > limits.max_children)
            {
                return Err(DefinitionError::new(
                    at("inputs"),
                    format!("at most {} children", limits.max_children),
                ));
            }
            match params.get("policy").map(Value::as_str) {
                None | Some(Some("all" | "any")) => Ok(()),
                Some(_) => Err(DefinitionError::new(at("policy"), "must be `all` or `any`")),
            }
        }
        _ => Ok(()),
    }
}

fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase(name: &str, handler: &str) -> PhaseDefinition {
        PhaseDefinition::new(name, handler)
    }

    fn flow_type(phases: Vec<PhaseDefinition>) -> FlowType {
        FlowType {
            name: "t".into(),
            version: 1,
            phases,
        }
    }

    fn known(h: &str) -> bool {
        h == "noop"
    }

    #[test]
    fn accepts_a_plain_definition() {
        assert!(
            flow_type(vec![phase("a", "noop"), phase("b", "noop")])
                .validate(known)
                .is_ok()
        );
    }

    #[test]
    fn names_the_field_of_each_error() {
        let dup = flow_type(vec![phase("a", "noop"), phase("a", "noop")]);
        assert_eq!(dup.validate(known).unwrap_err().field, "phases[1].name");
        let unknown = flow_type(vec![phase("a", "nope")]);
        assert_eq!(
            unknown.validate(known).unwrap_err().field,
            "phases[0].handler"
        );
        let mut jump = phase("a", "noop");
        jump.next_phase = Some("zzz".into());
        assert_eq!(
            flow_type(vec![jump]).validate(known).unwrap_err().field,
            "phases[0].next_phase"
        );
        assert_eq!(
            flow_type(vec![]).validate(known).unwrap_err().field,
            "phases"
        );
        let mut weightless = phase("a", "noop");
        weightless.weight = 0;
        assert_eq!(
            flow_type(vec![weightless])
                .validate(known)
                .unwrap_err()
                .field,
            "phases"
        );
    }

    #[test]
    fn the_runtime_kinds_and_fallbacks_are_checked_up_front() {
        let known = |h: &str| matches!(h, "noop" | "external" | "child_flows");
        let with = |handler: &str, params: Value| {
            flow_type(vec![PhaseDefinition {
                params,
                ..phase("p", handler)
            }])
        };
        let field = |t: FlowType| t.validate(known).unwrap_err().field;
        assert_eq!(
            field(with("external", serde_json::json!({}))),
            "phases[0].params.queue"
        );
        assert!(
            with("external", serde_json::json!({ "queue": "q" }))
                .validate(known)
                .is_ok()
        );
        assert_eq!(
            field(with("child_flows", serde_json::json!({ "count": 2 }))),
            "phases[0].params.flow_type"
        );
        assert_eq!(
            field(with("child_flows", serde_json::json!({ "flow_type": "c" }))),
            "phases[0].params.inputs"
        );
        assert_eq!(
            field(with(
                "child_flows",
                serde_json::json!({ "flow_type": "c", "count": 2, "policy": "most" })
            )),
            "phases[0].params.policy"
        );
        let mut fallback = phase("p", "noop");
        fallback.fallback = Some("nope".into());
        assert_eq!(
            field(flow_type(vec![fallback.clone()])),
            "phases[0].fallback"
        );
        fallback.fallback = Some("external".into());
        assert_eq!(
            field(flow_type(vec![fallback.clone()])),
            "phases[0].params.queue"
        );
        fallback.fallback_params = Some(serde_json::json!({ "queue": "q" }));
        assert!(flow_type(vec![fallback]).validate(known).is_ok());
        let mut orphan_delay = phase("p", "noop");
        orphan_delay.fallback_after_s = Some(5);
        assert_eq!(
            field(flow_type(vec![orphan_delay])),
            "phases[0].fallback_after_s"
        );
    }

    #[test]
    fn runaway_numbers_and_params_are_refused_naming_the_field() {
        let known = |h: &str| {
            matches!(
                h,
                "noop" | "sleep" | "fail" | "command" | "http" | "child_flows"
            )
        };
        let field = |t: FlowType| t.validate(known).unwrap_err().field;
        let with = |handler: &str, params: Value| {
            flow_type(vec![PhaseDefinition {
                params,
                ..phase("p", handler)
            }])
        };
        let mut t = flow_type(vec![phase("a", "noop")]);
        t.version = MAX_VERSION + 1;
        assert_eq!(field(t), "version");
        let mut retries = phase("p", "noop");
        retries.retries = 4_000_000_000;
        assert_eq!(field(flow_type(vec![retries])), "phases[0].retries");
        let mut heartbeat = phase("p", "noop");
        heartbeat.heartbeat_timeout_s = Some(1 << 63);
        assert_eq!(
            field(flow_type(vec![heartbeat])),
            "phases[0].heartbeat_timeout_s"
        );
        let many = (0..101).map(|i| phase(&format!("p{i}"), "noop")).collect();
        assert_eq!(field(flow_type(many)), "phases");
        for ms in [
            serde_json::json!(-1),
            serde_json::json!(1e30),
            serde_json::json!("abc"),
        ] {
            assert_eq!(
                field(with("sleep", serde_json::json!({ "ms": ms }))),
                "phases[0].params.ms"
            );
        }
        assert_eq!(
            field(with("fail", serde_json::json!({ "times": 1e30 }))),
            "phases[0].params.times"
        );
        assert_eq!(
            field(with("command", serde_json::json!({ "args": [] }))),
            "phases[0].params.program"
        );
        assert_eq!(
            field(with("http", serde_json::json!({ "url": "ftp://x/y" }))),
            "phases[0].params.url"
        );
        assert_eq!(
            field(with(
                "child_flows",
                serde_json::json!({ "flow_type": "c", "count": 100_000_000_000u64 })
            )),
            "phases[0].params.count"
        );
        assert_eq!(
            field(with("noop", serde_json::json!({ "k": "a\u{0}b" }))),
            "phases[0].params"
        );
        assert!(
            with("http", serde_json::json!({ "url": "https://x.example/y", "headers": { "A": { "env": "TOKEN" } } }))
                .validate(known)
                .is_ok()
        );
    }

    #[test]
    fn default_next_follows_order_unless_overridden() {
        let mut a = phase("a", "noop");
        a.next_phase = Some("c".into());
        let t = flow_type(vec![a, phase("b", "noop"), phase("c", "noop")]);
        assert_eq!(t.default_next("a"), Some("c"));
        assert_eq!(t.default_next("b"), Some("c"));
        assert_eq!(t.default_next("c"), None);
    }
}
