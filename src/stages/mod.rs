//! The stage kinds this binary knows, each with its schema from `stages/<kind>.yaml`
//! (embedded at build time so the binary works from any directory).

mod command;

use std::sync::Arc;

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

fn schema(kind: &str) -> KindSchema {
    let text = SCHEMAS
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, t)| *t)
        .unwrap_or_else(|| panic!("no embedded schema for kind `{kind}`"));
    // Embedded files are checked by the `schemas_parse` test; a failure here is a build bug.
    KindSchema::from_yaml(text).unwrap_or_else(|e| panic!("stages/{kind}.yaml: {e}"))
}

/// All built-in stage kinds.
pub fn registry() -> KindRegistry {
    let mut reg = KindRegistry::new();
    reg.register(Arc::new(command::CommandStage::new(schema("command"))));
    reg.register(Arc::new(ugc_data::SynthStage::new(schema("synth"))));
    reg.register(Arc::new(ugc_data::SplitStage::new(schema("split"))));
    reg.register(Arc::new(ugc_method::supernet::SupernetStage::new(schema(
        "supernet",
    ))));
    reg.register(Arc::new(ugc_method::search::SearchStage::new(schema(
        "search",
    ))));
    reg.register(Arc::new(ugc_method::teachers::TeachersStage::new(schema(
        "teachers",
    ))));
    reg.register(Arc::new(ugc_method::adf::AdfStage::new(schema("adf"))));
    reg.register(Arc::new(ugc_method::distill::DistillStage::new(schema(
        "distill",
    ))));
    reg.register(Arc::new(ugc_method::train::TrainStage::new(schema(
        "train",
    ))));
    reg.register(Arc::new(ugc_eval::EvaluatorStage::new(schema("evaluator"))));
    reg.register(Arc::new(ugc_eval::EvaluateStage::new(schema("evaluate"))));
    reg.register(Arc::new(ugc_eval::ExportStage::new(schema("export"))));
    reg.register(Arc::new(ugc_report::ReportStage::new(schema("report"))));
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
        assert!(registry().get("command").is_some());
    }
}
