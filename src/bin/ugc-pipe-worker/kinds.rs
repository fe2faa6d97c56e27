//! Every built-in stage kind with its code. The kinds come from the one list in
//! `ugc-kinds`; the exhaustive `match` makes a kind without code a compile error.

use std::sync::Arc;

use ugc_engine::{KindRegistry, StageKind};
use ugc_kinds::Kind;

use crate::command::CommandStage;

/// The code of `kind`, under its schema.
fn code(kind: Kind) -> Arc<dyn StageKind> {
    let schema = kind.schema();
    match kind {
        Kind::Command => Arc::new(CommandStage::new(schema)),
        Kind::Synth => Arc::new(ugc_data::SynthStage::new(schema)),
        Kind::Split => Arc::new(ugc_data::SplitStage::new(schema)),
        Kind::Supernet => Arc::new(ugc_method::supernet::SupernetStage::new(schema)),
        Kind::Search => Arc::new(ugc_method::search::SearchStage::new(schema)),
        Kind::Teachers => Arc::new(ugc_method::teachers::TeachersStage::new(schema)),
        Kind::Adf => Arc::new(ugc_method::adf::AdfStage::new(schema)),
        Kind::Distill => Arc::new(ugc_method::distill::DistillStage::new(schema)),
        Kind::Train => Arc::new(ugc_method::train::TrainStage::new(schema)),
        Kind::Evaluator => Arc::new(ugc_eval::EvaluatorStage::new(schema)),
        Kind::Evaluate => Arc::new(ugc_eval::EvaluateStage::new(schema)),
        Kind::Export => Arc::new(ugc_eval::ExportStage::new(schema)),
        Kind::Report => Arc::new(ugc_report::ReportStage::new(schema)),
    }
}

/// All built-in stage kinds, runnable in this process, with the same checks as the head.
pub fn registry() -> KindRegistry {
    let mut reg = KindRegistry::new();
    for &kind in Kind::ALL {
        reg.register(code(kind));
        reg.register_check(kind.name(), kind.check());
    }
    reg
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_kind_has_code_under_its_name() {
        let reg = super::registry();
        for kind in ugc_kinds::Kind::ALL {
            let code = reg.get(kind.name()).expect("registered");
            assert_eq!(code.schema().kind, kind.name());
        }
    }
}
