//! The `distill` kind: its schema (`schema.yaml`) and typed parameters.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use ugc_engine::ParamProblem;

use crate::common::{AmpDtype, DistillWeights};

/// `distill` parameters.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    pub steps: u64,
    /// The dep whose final state (`state/`) this stage continues from; null: from scratch.
    pub init_from: Option<String>,
    /// Commit the final state under `state/` for a continuation.
    pub keep_state: bool,
    pub batch_size: usize,
    pub unlabeled_batch_size: usize,
    pub lr: f64,
    pub beta1: f64,
    pub lr_decay_steps: u64,
    pub lambda_gan: f64,
    pub lambda_l1: f64,
    pub distill_weights: DistillWeights,
    pub vgg_weights: Option<PathBuf>,
    pub adf_every: u64,
    pub image_size: Option<u32>,
    pub crop: Option<u32>,
    pub flip: bool,
    pub amp: bool,
    pub amp_dtype: AmpDtype,
    pub channels_last: bool,
    pub checkpoint_every: u64,
    pub sample_every: u64,
    pub torch_threads: i32,
    pub threads: usize,
    pub seed: u64,
}

impl crate::KindParams for Params {
    fn check(&self) -> Vec<ParamProblem> {
        let mut out = Vec::new();
        // With every weight at zero the student gets no gradient: steps would be spent for
        // a copy of its initialisation.
        if self.lambda_gan == 0.0 && self.lambda_l1 == 0.0 && self.distill_weights.all_zero() {
            out.push(ParamProblem::new(
                "lambda_gan",
                "lambda_gan, lambda_l1 and every distill_weights term are 0: the student would learn nothing",
            ));
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
    fn a_student_without_any_loss_is_refused() {
        assert_refused(
            Kind::Distill,
            json!({
                "lambda_gan": 0.0,
                "lambda_l1": 0.0,
                "distill_weights": {"ssim": 0.0, "style": 0.0, "feature": 0.0, "tv": 0.0},
            }),
            "lambda_gan",
        );
    }
}
