//! `${NAME}` in config values. Expanded after parsing, in string values
//! only: a secret holding a quote or a newline stays one string and cannot
//! add keys or tables, and comments never matter.

use toml::{Table, Value};

use super::{join, ConfigErrors};

/// Replaces `${NAME}` in every string value of `table` (inside arrays and
/// inline tables too, never in keys) with that variable, taken literally.
/// Every unset variable is reported with its key path. For other config
/// files of the same family (the client's).
pub fn expand_env(
    table: &mut Table,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(), ConfigErrors> {
    let mut errors = Vec::new();
    expand(table, "", &env, &mut errors);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ConfigErrors(errors))
    }
}

/// [`expand_env`] under `path`, adding to `errors`.
pub(super) fn expand(
    table: &mut Table,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<String>,
) {
    for (key, value) in table.iter_mut() {
        expand_value(value, &join(path, key), env, errors);
    }
}

fn expand_value(
    value: &mut Value,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<String>,
) {
    match value {
        Value::String(text) if text.contains("${") => *text = expand_str(text, path, env, errors),
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                expand_value(item, &format!("{path}[{i}]"), env, errors);
            }
        }
        Value::Table(table) => expand(table, path, env, errors),
        _ => {}
    }
}

/// `text` with each `${NAME}` replaced. What a variable brings in is not
/// scanned again, so a value may itself contain `${`.
fn expand_str(
    text: &str,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<String>,
) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let Some(end) = rest[start..].find('}') else {
            break;
        };
        out.push_str(&rest[..start]);
        let name = &rest[start + 2..start + end];
        match env(name) {
            Some(value) => out.push_str(&value),
            None => errors.push(format!("{path}: environment variable {name} is not set")),
        }
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    out
}
