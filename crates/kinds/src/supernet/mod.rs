//! The `supernet` kind: its schema (`schema.yaml`) and typed parameters.
//!
//! `arch` stays a `type: map` in the schema (its fields depend on the family): its shape is
//! checked by [`Params::check`] with [`crate::arch::arch_from_map`], not by the drift test.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use ugc_engine::ParamProblem;

use crate::arch::check_arch_param;
use crate::common::{CommonParams, DistillWeights};

/// `supernet` parameters.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// The supernet architecture map (`arch` plus overrides), read into an `ArchConfig`
    /// once the split is known (`ugc_method::setup::arch_from_param`).
    pub arch: serde_json::Map<String, Value>,
    #[serde(flatten)]
    pub common: CommonParams,
    pub lambda_distill: f64,
    pub distill_weights: DistillWeights,
    pub unlabeled: bool,
    pub sandwich: bool,
    pub vgg_weights: Option<PathBuf>,
}

impl crate::KindParams for Params {
    fn check(&self) -> Vec<ParamProblem> {
        check_arch_param("arch", &Value::Object(self.arch.clone()))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::Kind;
    use crate::testing::assert_refused;

    #[test]
    fn an_unknown_family_is_refused_naming_arch_arch() {
        assert_refused(
            Kind::Supernet,
            json!({"arch": {"arch": "resnet"}}),
            "arch.arch",
        );
    }

    #[test]
    fn a_missing_family_is_refused_naming_arch_arch() {
        assert_refused(Kind::Supernet, json!({"arch": {"ngf": 8}}), "arch.arch");
    }

    #[test]
    fn an_out_of_range_arch_field_is_refused_naming_it() {
        assert_refused(
            Kind::Supernet,
            json!({"arch": {"arch": "pix2pix-resnet", "ngf": 0}}),
            "arch.ngf",
        );
        let msg = assert_refused(
            Kind::Supernet,
            json!({"arch": {"arch": "pix2pix-resnet", "space": {"width_ratios": [0.5, 2.0]}}}),
            "arch.space.width_ratios",
        );
        assert!(msg.contains("width_ratios"), "{msg}");
    }

    #[test]
    fn an_unknown_or_mistyped_arch_field_is_refused_naming_it() {
        assert_refused(
            Kind::Supernet,
            json!({"arch": {"arch": "pix2pix-unet", "ngff": 8}}),
            "arch.ngff",
        );
        assert_refused(
            Kind::Supernet,
            json!({"arch": {"arch": "pix2pix-unet", "norm": "layer"}}),
            "arch.norm",
        );
    }
}
