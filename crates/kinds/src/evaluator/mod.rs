//! The `evaluator` kind: its schema (`schema.yaml`) and typed parameters.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How an `evaluator` stage trains its segmentation network (ranges in `schema.yaml`).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Channels of the first level.
    pub width: i64,
    pub steps: u64,
    pub batch_size: usize,
    pub lr: f64,
    pub seed: u64,
    /// Aligned data only: darkest-channel value below which a real pixel is foreground.
    pub foreground_threshold: i64,
    /// Steps between checkpoints into scratch (0 = never).
    pub checkpoint_every: u64,
    /// Loader worker threads.
    pub threads: usize,
    /// libtorch intra-op threads (0 = libtorch's default, one per core). Process-wide.
    pub torch_threads: i32,
}

impl crate::KindParams for Params {}
