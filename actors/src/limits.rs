//! Bounds on what a definition may ask for and what a flow may do, and the check that a JSON
//! value can be stored by every backend. Both exist so that no definition or handler output can
//! make the runtime spin, grow without bound, or poison a commit.

use serde_json::Value;

/// Operator-set bounds, checked when a flow type is registered and while a flow runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most phases in one flow type.
    pub max_phases: usize,
    /// Most `retries` of one phase.
    pub max_retries: u32,
    /// Most children one `child_flows` phase may start (`count` or `inputs`).
    pub max_children: usize,
    /// Deepest chain of flow types starting children of other flow types (a type whose
    /// children start children counts 2); a chain that reaches its own start is refused.
    pub max_child_depth: usize,
    /// Phase attempts one flow may start in all (retries and `next_phase` loops included);
    /// past it the flow fails with a journal row instead of looping forever.
    pub max_transitions_per_flow: u32,
    /// Longest `timeout_s`, `heartbeat_timeout_s`, `fallback_after_s` (seconds).
    pub max_duration_s: u64,
    /// Longest `retry_backoff_ms` and `sleep` `ms` (milliseconds).
    pub max_delay_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_phases: 100,
            max_retries: 100,
            max_children: 10_000,
            max_child_depth: 4,
            max_transitions_per_flow: 10_000,
            max_duration_s: 7 * 24 * 3600,
            max_delay_ms: 24 * 3600 * 1000,
        }
    }
}

/// Highest flow-type version: stores keep it in a 32-bit signed column.
pub const MAX_VERSION: u32 = i32::MAX as u32;

/// Why a JSON value cannot be stored, with a pointer to the offending place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct NotStorable {
    /// A JSON pointer (`/a/0/b`); empty for the value itself.
    pub path: String,
    pub message: String,
}

/// Nesting deeper than this is refused: stores and parsers recurse over it.
const MAX_DEPTH: usize = 64;

/// Whether every backend can store `value`: PostgreSQL `jsonb` refuses `\u0000` in any string
/// or key, and deep nesting risks the parsers' recursion limits. Checked at the API door and on
/// handler output before it is written, so a bad value fails alone instead of poisoning a batch.
pub fn json_storable(value: &Value) -> Result<(), NotStorable> {
    check(value, &mut String::new(), 0)
}

fn check(value: &Value, path: &mut String, depth: usize) -> Result<(), NotStorable> {
    if depth > MAX_DEPTH {
        return Err(NotStorable {
            path: path.clone(),
            message: format!("nested deeper than {MAX_DEPTH} levels"),
        });
    }
    let nul = |path: &str| NotStorable {
        path: path.to_owned(),
        message: "contains a NUL character (\\u0000), which cannot be stored".into(),
    };
    match value {
        Value::String(text) if text.contains('\0') => Err(nul(path)),
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("/{index}"));
                check(item, path, depth + 1)?;
                path.truncate(len);
            }
            Ok(())
        }
        Value::Object(map) => {
            for (key, item) in map {
                let len = path.len();
                path.push('/');
                path.push_str(&key.replace('~', "~0").replace('/', "~1"));
                if key.contains('\0') {
                    return Err(nul(path));
                }
                check(item, path, depth + 1)?;
                path.truncate(len);
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// `text` with every NUL replaced by U+FFFD, for messages that must be stored whatever a
/// handler wrote (stderr excerpts, error messages).
pub fn storable_text(text: &str) -> String {
    text.replace('\0', "\u{FFFD}")
}

/// `value` with every NUL in its strings and keys replaced by U+FFFD (see [`storable_text`]).
pub fn make_storable(value: Value) -> Value {
    match value {
        Value::String(text) if text.contains('\0') => Value::String(storable_text(&text)),
        Value::Array(items) => Value::Array(items.into_iter().map(make_storable).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(key, item)| (storable_text(&key), make_storable(item)))
                .collect(),
        ),
        other => other,
    }
}

/// Whether `text` can be stored in a text column of every backend.
pub fn text_storable(text: &str) -> bool {
    !text.contains('\0')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nul_anywhere_is_refused_with_its_path() {
        assert!(json_storable(&json!({ "a": [1, "ok", { "b": null }] })).is_ok());
        let error = json_storable(&json!({ "a": [1, { "b": "x\u{0}y" }] })).unwrap_err();
        assert_eq!(error.path, "/a/1/b");
        let error = json_storable(&json!({ "k\u{0}": 1 })).unwrap_err();
        assert_eq!(error.path, "/k\u{0}");
        assert!(json_storable(&json!("\u{0}")).is_err());
    }

    #[test]
    fn deep_nesting_is_refused() {
        let mut value = json!(1);
        for _ in 0..100 {
            value = json!([value]);
        }
        assert!(json_storable(&value).is_err());
    }
}
