//! The built-in stage kinds' schemas (`stages/<kind>.yaml`, embedded at build time so the
//! binaries work from any directory). The head process plans with these; the worker
//! (`ugc-pipe-worker`) registers the same schemas together with the kinds' code.

use ugc_engine::{KindRegistry, KindSchema};

/// `(kind, stages/<kind>.yaml)` for every built-in kind.
pub const SCHEMAS: &[(&str, &str)] = &[
    ("command", include_str!("../../stages/command.yaml")),
    ("synth", include_str!("../../stages/synth.yaml")),
    ("split", include_str!("../../stages/split.yaml")),
    ("supernet", include_str!("../../stages/supernet.yaml")),
    ("search", include_str!("../../stages/search.yaml")),
    ("teachers", include_str!("../../stages/teachers.yaml")),
    ("adf", include_str!("../../stages/adf.yaml")),
    ("distill", include_str!("../../stages/distill.yaml")),
    ("train", include_str!("../../stages/train.yaml")),
    ("evaluator", include_str!("../../stages/evaluator.yaml")),
    ("evaluate", include_str!("../../stages/evaluate.yaml")),
    ("export", include_str!("../../stages/export.yaml")),
    ("report", include_str!("../../stages/report.yaml")),
];

/// The parsed schema of a built-in kind.
///
/// # Panics
/// If `kind` is not built in or its embedded YAML does not parse: both are build bugs,
/// caught by the `schemas_parse` test, never user input.
pub fn schema(kind: &str) -> KindSchema {
    let text = SCHEMAS
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, t)| *t)
        .unwrap_or_else(|| panic!("no embedded schema for kind `{kind}`"));
    KindSchema::from_yaml(text).unwrap_or_else(|e| panic!("stages/{kind}.yaml: {e}"))
}

/// Every built-in kind by its schema: enough to validate, plan and key a pipeline.
pub fn schema_registry() -> KindRegistry {
    let mut reg = KindRegistry::new();
    for (kind, _) in SCHEMAS {
        reg.register_schema(schema(kind));
    }
    reg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemas_parse() {
        for (kind, text) in SCHEMAS {
            let s = KindSchema::from_yaml(text).unwrap_or_else(|e| panic!("{kind}: {e}"));
            assert_eq!(&s.kind, kind);
        }
        let reg = schema_registry();
        assert_eq!(reg.names().count(), SCHEMAS.len());
        // The head holds schemas only: it never runs a stage itself.
        assert!(reg.get("command").is_none());
    }
}
