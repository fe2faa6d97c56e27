//! The `train` kind: its schema (`schema.yaml`) and typed parameters.
//!
//! `arch` stays a `type: map` in the schema (its fields depend on the family): its shape is
//! checked by [`Params::check`] with [`crate::arch::arch_from_map`], not by the drift test.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use ugc_engine::ParamProblem;

use crate::arch::check_arch_param;
use crate::common::CommonParams;

/// `train` parameters.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Architecture map (as `supernet.arch`); absent when `from_dep` is given.
    pub arch: Option<serde_json::Map<String, Value>>,
    /// A sub-net config string of `arch`: the model trained is that sub-net as a standalone
    /// compact network.
    pub config: Option<String>,
    /// Name of a dep whose `model/` directory supplies the architecture.
    pub from_dep: Option<String>,
    /// Start from `from_dep`'s weights instead of a fresh initialisation.
    pub init_weights: bool,
    #[serde(flatten)]
    pub common: CommonParams,
}

impl crate::KindParams for Params {
    /// The architecture comes from `arch` (+ `config`) or from `from_dep`, never both.
    /// Giving neither is refused by the stage when it runs: the schema's baseline (every
    /// default) has neither, and `arch: null` must stay its default for the cache keys.
    fn check(&self) -> Vec<ParamProblem> {
        let mut out = Vec::new();
        if self.from_dep.is_some() && (self.arch.is_some() || self.config.is_some()) {
            out.push(ParamProblem::new(
                "from_dep",
                "give either `from_dep` or `arch` (+ `config`), not both",
            ));
        }
        if self.init_weights && self.from_dep.is_none() {
            out.push(ParamProblem::new(
                "init_weights",
                "needs `from_dep` (a dep with a model/ directory)",
            ));
        }
        if self.config.is_some() && self.arch.is_none() && self.from_dep.is_none() {
            out.push(ParamProblem::new(
                "config",
                "is a sub-net of `arch`: give `arch`",
            ));
        } else if self.arch.is_none() && self.from_dep.is_none() {
            // Nothing says what to train: found now, not after the upstream stages ran.
            out.push(ParamProblem::new(
                "arch",
                "give `arch` (an architecture map) or `from_dep` (a dep with a model/ directory)",
            ));
        }
        if let Some(arch) = &self.arch {
            out.extend(check_arch_param("arch", &Value::Object(arch.clone())));
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
    fn from_dep_and_arch_together_are_refused() {
        assert_refused(
            Kind::Train,
            json!({"from_dep": "search", "arch": {"arch": "pix2pix-resnet"}}),
            "from_dep",
        );
    }

    #[test]
    fn init_weights_without_from_dep_is_refused() {
        assert_refused(
            Kind::Train,
            json!({"arch": {"arch": "pix2pix-resnet"}, "init_weights": true}),
            "init_weights",
        );
    }

    #[test]
    fn config_without_arch_is_refused() {
        assert_refused(
            Kind::Train,
            json!({"arch": null, "config": "w=8;d=1"}),
            "config",
        );
    }

    #[test]
    fn neither_arch_nor_from_dep_is_refused() {
        assert_refused(Kind::Train, json!({"arch": null}), "arch");
    }

    #[test]
    fn a_bad_arch_is_refused_naming_its_field() {
        assert_refused(
            Kind::Train,
            json!({"arch": {"arch": "gaugan", "n_blocks": -1}}),
            "arch.n_blocks",
        );
    }
}
