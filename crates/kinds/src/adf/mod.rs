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
}

impl crate::KindParams for Params {}
