//! The `evaluate` kind: its schema (`schema.yaml`) and typed parameters.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use ugc_engine::ParamProblem;

use crate::teachers::Role;

/// What an `evaluate` stage measures and how (ranges in `schema.yaml`).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// The dep holding the model, when several could.
    pub model: Option<String>,
    /// The teacher of a `teachers` dep.
    pub role: Option<Role>,
    /// Evaluate the ground truth itself (no model).
    pub reference: bool,
    /// The images scored: the test set unless `holdout` is asked for (tuning).
    pub subset: Option<EvalSubset>,
    pub batch_size: usize,
    pub n_samples: usize,
    /// Per-image PSNR ceiling (dB).
    pub psnr_cap_db: f64,
    pub fid_inception_weights: Option<PathBuf>,
    pub drn_weights: Option<PathBuf>,
    pub latency: bool,
    pub latency_warmup: usize,
    pub latency_runs: usize,
    /// Loader worker threads.
    pub threads: usize,
}

/// Which images of the split an `evaluate` stage scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EvalSubset {
    /// The split's test images: the results.
    Test,
    /// The hold-out carved from the training images: for choosing hyper-parameters.
    Holdout,
}

impl EvalSubset {
    pub fn name(self) -> &'static str {
        match self {
            EvalSubset::Test => "test",
            EvalSubset::Holdout => "holdout",
        }
    }
}

impl crate::KindParams for Params {
    fn check(&self) -> Vec<ParamProblem> {
        let mut out = Vec::new();
        if self.latency && self.latency_runs == 0 {
            out.push(ParamProblem::new(
                "latency_runs",
                "must be at least 1 while `latency` is true (set `latency: false` to skip timing)",
            ));
        }
        // `reference: true` evaluates the ground truth: a model choice would be ignored.
        if self.reference {
            if let Some(m) = &self.model {
                out.push(ParamProblem::new(
                    "model",
                    format!("names `{m}`, but `reference: true` evaluates no model: remove one"),
                ));
            }
            if let Some(r) = self.role {
                out.push(ParamProblem::new(
                    "role",
                    format!(
                        "is `{}`, but `reference: true` evaluates no model: remove one",
                        r.name()
                    ),
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
    fn latency_runs_must_be_positive_while_timing() {
        assert_refused(Kind::Evaluate, json!({"latency_runs": 0}), "latency_runs");
        let (_, r) = crate::testing::plan(
            Kind::Evaluate,
            json!({"latency": false, "latency_runs": 0})
                .as_object()
                .unwrap(),
            &[],
        );
        assert!(r.is_ok(), "{:?}", r.err().map(|e| e.to_string()));
    }

    #[test]
    fn a_reference_evaluation_takes_no_model_or_role() {
        assert_refused(
            Kind::Evaluate,
            json!({"reference": true, "model": "train"}),
            "model",
        );
        let msg = assert_refused(
            Kind::Evaluate,
            json!({"reference": true, "model": "train", "role": "wide"}),
            "role",
        );
        assert!(msg.contains("`model`"), "both problems at once:\n{msg}");
    }
}
