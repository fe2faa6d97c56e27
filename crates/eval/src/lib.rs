//! ugc-eval: the stage kinds that measure and ship models.
//!
//! - `evaluator` ([`EvaluatorStage`]): trains a compact segmentation network ([`segnet`]) on
//!   a split's real labeled photos; synthetic tasks have no pretrained evaluator.
//! - `evaluate` ([`EvaluateStage`]): PSNR/SSIM, evaluator mIoU and `seg_fd` (a Fréchet
//!   distance on the evaluator's features, never called FID), FID only with configured
//!   Inception weights, MACs/params, latency; `metrics.json` + `eval.json` + samples.
//! - `export` ([`ExportStage`]): a standalone compact model dir, checked against its source.
//!
//! Protocol and reasons: `docs/evaluation.md`.

pub mod drn_miou;
pub mod error;
pub mod evaluator;
pub mod labels;
pub mod model_source;
pub mod samples;
pub mod segnet;
pub mod stages;
pub mod util;

pub use error::{EvalError, Result};
pub use evaluator::{Evaluator, EvaluatorMeta};
pub use labels::LabelSpec;
pub use segnet::{SegNet, SegNetConfig};
pub use stages::{EvaluateStage, EvaluatorStage, ExportStage};
