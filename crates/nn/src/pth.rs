//! PyTorch checkpoints as `torch.save` writes them (zip and legacy), read without Python.
//!
//! The reader lives in [`ugc_torch_ext::pth`] so that crates without `ugc-nn` (the
//! perceptual loss's VGG16, the metrics' Inception and DRN) share it; this module keeps
//! `ugc-nn`'s API on top of it, with its errors as [`NnError`]s (same messages).

use std::collections::BTreeMap;
use std::path::Path;

use tch::Tensor;
pub use ugc_torch_ext::pth::{PthError, WeightsFormat};

use crate::error::NnError;

impl From<PthError> for NnError {
    fn from(e: PthError) -> Self {
        match e {
            PthError::Io { path, source } => NnError::Io { path, source },
            PthError::Weights { path, reason } => NnError::Weights { path, reason },
            PthError::Torch { context, source } => NnError::Torch { context, source },
        }
    }
}

/// Tells the format of `path` by content (see [`ugc_torch_ext::pth::sniff_format`]).
pub fn sniff_format(path: &Path) -> Result<WeightsFormat, NnError> {
    Ok(ugc_torch_ext::pth::sniff_format(path)?)
}

/// The state dict of a `torch.save` file at `path`, names as in the file less a
/// DataParallel `module.` prefix.
pub fn read_torch(path: &Path) -> Result<Vec<(String, Tensor)>, NnError> {
    Ok(ugc_torch_ext::pth::read_torch(path)?)
}

/// Names and shapes of the state dict of a `torch.save` file (no tensor bytes are read).
pub fn torch_shapes(path: &Path) -> Result<BTreeMap<String, Vec<i64>>, NnError> {
    Ok(ugc_torch_ext::pth::torch_shapes(path)?)
}
