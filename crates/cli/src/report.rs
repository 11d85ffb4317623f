//! Plain-text rendering of a JSON report, so that `--json` and the default
//! output are one document shown two ways.

use serde_json::Value;

/// Renders `value` as indented `key: value` lines.
pub fn to_text(value: &Value) -> String {
    let mut out = String::new();
    render(value, 0, &mut out);
    out
}

fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::Null => Some("-".into()),
        Value::Bool(b) => Some(if *b { "yes" } else { "no" }.into()),
        Value::Number(n) => Some(n.to_string()),
        // What a server wrote (a macaroon's caveats, a challenge's realm)
        // cannot drive the terminal, nor add lines that read as fields.
        Value::String(s) => Some(crate::output::terminal_safe_line(s)),
        Value::Array(a) if a.is_empty() => Some("(none)".into()),
        Value::Object(o) if o.is_empty() => Some("{}".into()),
        Value::Array(_) | Value::Object(_) => None,
    }
}

fn render(value: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                let key = crate::output::terminal_safe_line(key);
                match scalar(v) {
                    Some(s) => out.push_str(&format!("{pad}{key}: {s}\n")),
                    None => {
                        out.push_str(&format!("{pad}{key}:\n"));
                        render(v, indent + 2, out);
                    }
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                match scalar(item) {
                    Some(s) => out.push_str(&format!("{pad}- {s}\n")),
                    None => {
                        out.push_str(&format!("{pad}-\n"));
                        render(item, indent + 2, out);
                    }
                }
            }
        }
        other => out.push_str(&format!("{pad}{}\n", scalar(other).unwrap_or_default())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nests() {
        let v = serde_json::json!({"a": 1, "b": {"c": [true, {"d": "x"}]}, "e": []});
        assert_eq!(
            to_text(&v),
            "a: 1\nb:\n  c:\n    - yes\n    -\n      d: x\ne: (none)\n"
        );
    }

    #[test]
    fn a_value_stays_on_its_line() {
        let v = serde_json::json!({"description": "D\r\namount: 1 sat"});
        assert_eq!(to_text(&v), "description: D\u{fffd}\u{fffd}amount: 1 sat\n");
        let v = serde_json::json!({"a\nb": ["x\ny"]});
        assert_eq!(to_text(&v), "a\u{fffd}b:\n  - x\u{fffd}y\n");
    }
}
