//! The `command` kind: its schema (`schema.yaml`) and typed parameters.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use ugc_engine::ParamProblem;

/// A user shell command as a cached stage.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Run with `sh -c` in the output directory.
    pub cmd: String,
    /// Files or folders the command reads; their content enters the cache key.
    pub inputs: Vec<PathBuf>,
    /// Paths, relative to the output directory, that must exist afterwards.
    pub outputs: Vec<String>,
    /// Extra environment variables. A non-string value is passed as its JSON text
    /// (`3` -> `3`), as it always was.
    pub env: BTreeMap<String, Value>,
}

/// The text a value of `env` is passed as.
pub fn env_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Why `name` cannot be an environment variable's name, if it cannot.
fn bad_env_name(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("is empty")
    } else if name.contains('=') {
        Some("contains `=`, which ends a variable's name")
    } else if name.contains('\0') {
        Some("contains a NUL byte")
    } else {
        None
    }
}

impl crate::KindParams for Params {
    fn check(&self) -> Vec<ParamProblem> {
        let mut out = Vec::new();
        if self.cmd.trim().is_empty() {
            out.push(ParamProblem::new("cmd", "is empty: there is nothing to run"));
        }
        if self.cmd.contains('\0') {
            out.push(ParamProblem::new("cmd", "contains a NUL byte"));
        }
        for (i, o) in self.outputs.iter().enumerate() {
            let p = Path::new(o);
            let escapes = p
                .components()
                .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir));
            if o.is_empty() || escapes {
                out.push(ParamProblem::new(
                    format!("outputs.{i}"),
                    format!(
                        "`{o}` must be a path inside the output directory (relative, without `..`)"
                    ),
                ));
            }
        }
        for (name, v) in &self.env {
            // An empty key has no position of its own: point at the map.
            let at = if name.is_empty() {
                "env".to_string()
            } else {
                format!("env.{name}")
            };
            if let Some(why) = bad_env_name(name) {
                out.push(ParamProblem::new(
                    at.clone(),
                    format!("`{name}` cannot name an environment variable: it {why}"),
                ));
            }
            if env_value(v).contains('\0') {
                out.push(ParamProblem::new(
                    at,
                    "the value contains a NUL byte",
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::Kind;
    use crate::testing::assert_refused;

    #[test]
    fn an_empty_command_is_refused() {
        assert_refused(Kind::Command, json!({"cmd": "  "}), "cmd");
    }

    #[test]
    fn outputs_must_stay_inside_the_output_directory() {
        for bad in ["/etc/passwd", "../sibling", "a/../../b", ""] {
            assert_refused(Kind::Command, json!({"outputs": ["ok.txt", bad]}), "outputs.1");
        }
        let (_, r) = crate::testing::plan(
            Kind::Command,
            json!({"outputs": ["a/b.txt", "./c"]}).as_object().unwrap(),
            &[],
        );
        assert!(r.is_ok(), "{:?}", r.err().map(|e| e.to_string()));
    }

    #[test]
    fn env_names_must_be_usable() {
        assert_refused(Kind::Command, json!({"env": {"A=B": "x"}}), "env.A=B");
        assert_refused(Kind::Command, json!({"env": {"": "x"}}), "env");
    }

    #[test]
    fn env_values_keep_their_json_text() {
        assert_eq!(super::env_value(&json!("s")), "s");
        assert_eq!(super::env_value(&json!(3)), "3");
        assert_eq!(super::env_value(&json!(true)), "true");
    }
}
