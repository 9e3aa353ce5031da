//! What every backend can store. PostgreSQL's `jsonb` and `text` refuse the NUL character that
//! JSON and Rust strings allow; a value holding one would be refused at commit, so it is caught
//! before it reaches the writer: at the API's door, and on a phase handler's output.

use serde_json::Value;

/// Why a value cannot be stored, naming where in it the problem is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{path} holds a NUL character (\\u0000), which the database cannot store")]
pub struct NotStorable {
    /// A JSON-pointer-like path to the offending string or key (`/` for the value itself).
    pub path: String,
}

/// Checks a string for what no backend can store.
pub fn check_text(text: &str, path: &str) -> Result<(), NotStorable> {
    if text.contains('\0') {
        return Err(NotStorable {
            path: if path.is_empty() {
                "/".into()
            } else {
                path.into()
            },
        });
    }
    Ok(())
}

/// Makes a text storable by writing each NUL as the six characters `\u0000`: for texts flowd
/// keeps for people to read (error messages), where refusing them would lose the failure.
pub fn escape_nul(text: &mut String) {
    if text.contains('\0') {
        *text = text.replace('\0', "\\u0000");
    }
}

/// Checks every string and object key in a JSON value.
pub fn check_json(value: &Value) -> Result<(), NotStorable> {
    // Iterative: a hostile value may be deeper than the stack allows recursion.
    let mut pending: Vec<(&Value, String)> = vec![(value, String::new())];
    while let Some((value, path)) = pending.pop() {
        match value {
            Value::String(text) => check_text(text, &path)?,
            Value::Array(items) => {
                for (index, item) in items.iter().enumerate() {
                    pending.push((item, format!("{path}/{index}")));
                }
            }
            Value::Object(fields) => {
                for (key, item) in fields {
                    let item_path = format!("{path}/{}", key.replace('\0', "\\u0000"));
                    check_text(key, &item_path)?;
                    pending.push((item, item_path));
                }
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn plain_values_are_storable() {
        assert_eq!(
            check_json(&json!({"a": ["b", 1, null, {"c": "ünï"}]})),
            Ok(())
        );
    }

    #[test]
    fn a_nul_anywhere_is_found_with_its_path() {
        let error = check_json(&json!({"a": [1, "x\u{0}y"]})).expect_err("NUL in a string");
        assert_eq!(error.path, "/a/1");
        let error = check_json(&json!({"k\u{0}": 1})).expect_err("NUL in a key");
        assert_eq!(error.path, "/k\\u0000");
        assert!(check_json(&json!("\u{0}")).is_err());
    }

    #[test]
    fn escaped_text_is_storable() {
        let mut text = "a\u{0}b".to_owned();
        escape_nul(&mut text);
        assert_eq!(text, "a\\u0000b");
        assert_eq!(check_text(&text, ""), Ok(()));
    }
}
