//! The `search` kind: its schema (`schema.yaml`) and typed parameters.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use ugc_engine::ParamProblem;

/// The hold-out metric a candidate is scored by (higher is better: l1 is negated).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// Mean absolute error in [-1, 1] units; the score is its negation.
    L1,
    /// PSNR in dB on [-1, 1] images (data range 2).
    Psnr,
    /// SSIM (Gaussian window 11, sigma 1.5) on [-1, 1] images (data range 2).
    Ssim,
}

/// `search` parameters.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    pub budget_macs: Option<f64>,
    pub budget_ratio: f64,
    pub wide_budget_ratio: f64,
    pub deep_budget_ratio: f64,
    /// `[C, H, W]` at which MACs are counted.
    pub input_size: Option<Vec<i64>>,
    pub population: usize,
    pub generations: usize,
    pub parent_ratio: f64,
    pub mutation_ratio: f64,
    pub mutate_prob: f64,
    pub metric: Metric,
    pub batch_size: usize,
    pub eval_batches: usize,
    pub calib_batches: usize,
    pub seed: u64,
    pub image_size: Option<u32>,
    pub torch_threads: i32,
}

impl crate::KindParams for Params {
    fn check(&self) -> Vec<ParamProblem> {
        let mut out = Vec::new();
        if let Some(v) = &self.input_size
            && v.len() != 3
        {
            out.push(ParamProblem::new(
                "input_size",
                format!("{v:?}: expected [C, H, W], three positive integers"),
            ));
        }
        // Parents are kept and mutants are added; crossover fills the rest.
        if self.parent_ratio + self.mutation_ratio > 1.0 {
            out.push(ParamProblem::new(
                "mutation_ratio",
                format!(
                    "parent_ratio + mutation_ratio = {} + {} must be at most 1",
                    self.parent_ratio, self.mutation_ratio
                ),
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
    fn input_size_needs_exactly_three_values() {
        assert_refused(
            Kind::Search,
            json!({"input_size": [3, 256, 256, 1]}),
            "input_size",
        );
    }

    #[test]
    fn parents_and_mutants_may_not_exceed_the_population() {
        assert_refused(
            Kind::Search,
            json!({"parent_ratio": 0.6, "mutation_ratio": 0.5}),
            "mutation_ratio",
        );
    }
}
