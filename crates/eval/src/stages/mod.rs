//! The stage kinds of this crate. The lead registers them with their embedded
//! `stages/<kind>.yaml` schemas.

pub mod evaluate;
pub mod evaluator;
pub mod export;

pub use evaluate::EvaluateStage;
pub use evaluator::EvaluatorStage;
pub use export::ExportStage;
