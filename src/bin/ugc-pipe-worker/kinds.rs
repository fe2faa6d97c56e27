//! Every built-in stage kind with its code, under the schemas the head plans with.

use std::sync::Arc;

use ugc_engine::KindRegistry;
use ugc_pipe::stages::{SCHEMAS, schema};

use crate::command::CommandStage;

/// All built-in stage kinds, runnable in this process.
pub fn registry() -> KindRegistry {
    let mut reg = KindRegistry::new();
    reg.register(Arc::new(CommandStage::new(schema("command"))));
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
    debug_assert_eq!(reg.names().count(), SCHEMAS.len());
    reg
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_schema_has_code() {
        let reg = super::registry();
        for (kind, _) in super::SCHEMAS {
            assert!(
                reg.get(kind).is_some(),
                "no code registered for kind `{kind}`"
            );
        }
    }
}
