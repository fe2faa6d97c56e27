//! The `export` kind: its schema (`schema.yaml`) and typed parameters.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::teachers::Role;

/// Which model an `export` stage writes and how it checks it (ranges in `schema.yaml`).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// The dep holding the model, when several could.
    pub model: Option<String>,
    /// The teacher of a `teachers` dep.
    pub role: Option<Role>,
    /// Side of the square check input (also the MACs resolution).
    pub size: i64,
    /// Seed of the check input.
    pub seed: u64,
    /// Largest accepted absolute output difference.
    pub tolerance: f64,
}

impl crate::KindParams for Params {}
