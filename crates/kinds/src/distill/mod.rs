//! The `distill` kind: its schema (`schema.yaml`) and typed parameters.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// PLACEHOLDER until the kind's typed parameters move here (issue 12): accepts anything,
/// so the drift test fails for this kind.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct Params(pub serde_json::Value);

impl crate::KindParams for Params {}
