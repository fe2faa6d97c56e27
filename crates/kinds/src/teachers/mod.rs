//! The `teachers` kind: its schema (`schema.yaml`) and typed parameters.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Which teachers to export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    Largest,
    Wide,
    Deep,
    /// Wide + deep, structurally complementary (UGC's choice).
    Multi,
}

/// A teacher's role; also its folder name under `teachers/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Largest,
    Wide,
    Deep,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Largest => "largest",
            Role::Wide => "wide",
            Role::Deep => "deep",
        }
    }
}

impl Strategy {
    /// The roles a strategy uses, in a fixed order.
    pub fn roles(self) -> Vec<Role> {
        match self {
            Strategy::Largest => vec![Role::Largest],
            Strategy::Wide => vec![Role::Wide],
            Strategy::Deep => vec![Role::Deep],
            Strategy::Multi => vec![Role::Wide, Role::Deep],
        }
    }
}

/// `teachers` parameters.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    pub strategy: Strategy,
    pub batch_size: usize,
    pub calib_batches: usize,
    pub image_size: Option<u32>,
}

impl crate::KindParams for Params {}
