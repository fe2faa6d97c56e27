//! The `adf` kind: its schema (`schema.yaml`) and typed parameters.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How pseudo-labels are scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Criterion {
    /// `agreement` with two or more teachers, `discriminator` otherwise.
    Auto,
    Agreement,
    Discriminator,
}

/// The adaptive threshold rule (its parameter is `k` or `bins`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Threshold {
    /// `median - k * 1.4826 * MAD`.
    Mad,
    /// Otsu's threshold on a `bins`-bin histogram.
    Otsu,
}

/// `adf` parameters.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    pub enabled: bool,
    pub criterion: Criterion,
    pub threshold: Threshold,
    pub k: f64,
    pub bins: usize,
    pub batch_size: usize,
    pub write_pseudo: bool,
    pub image_size: Option<u32>,
    pub torch_threads: i32,
    /// Drop exactly the synth dep's bad inputs (the benchmark's upper bound); optional
    /// without a default so that existing adf stages keep their cache keys.
    pub oracle: Option<bool>,
}

impl crate::KindParams for Params {
    fn check(&self) -> Vec<ugc_engine::ParamProblem> {
        if self.oracle == Some(true) && !self.enabled {
            return vec![ugc_engine::ParamProblem::new(
                "oracle",
                "drops the known bad inputs, so it needs `enabled: true`",
            )];
        }
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::Kind;
    use crate::testing::assert_refused;

    #[test]
    fn an_oracle_needs_the_filter_enabled() {
        assert_refused(
            Kind::Adf,
            json!({"enabled": false, "oracle": true}),
            "oracle",
        );
    }
}
