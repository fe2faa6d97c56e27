//! The `split` kind: its schema (`schema.yaml`) and typed parameters.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// On-disk layout of a paired dataset (also `dataset.json`'s `format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// pix2pix: `A|B` images side by side.
    Aligned,
    /// Photos in `leftImg8bit/`, label maps in `gtFine/`.
    Cityscapes,
}

/// Which half of an aligned `A|B` image is the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub enum Direction {
    #[default]
    AtoB,
    BtoA,
}

/// Where the data is (`dataset:`); every key may be left out, the code then takes it from
/// the root's `dataset.json` or a `synth` dep.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Dataset {
    pub format: Option<Format>,
    pub root: Option<PathBuf>,
    pub direction: Option<Direction>,
    pub train_split: Option<String>,
    pub test_split: Option<String>,
    pub extra_unlabeled: Option<PathBuf>,
}

/// How a `split` stage divides its dataset (ranges in `schema.yaml`).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// `null` means the same as `{}`.
    pub dataset: Option<Dataset>,
    pub label_ratio: f64,
    pub holdout: f64,
    pub seed: u64,
    pub skip_bad: bool,
}

impl crate::KindParams for Params {}
