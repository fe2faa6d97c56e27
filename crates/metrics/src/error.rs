//! Typed errors of the metrics library. Every variant names the file, parameter or value
//! that caused it, so a CLI user can act on the message without a backtrace.

use std::path::PathBuf;

/// Why a metric could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A `.npy` file that is not a 2-D little-endian float/int array in C order.
    #[error("{path}: not a usable .npy array: {reason}")]
    Npy { path: PathBuf, reason: String },
    /// A label/prediction image that cannot be used for mIoU.
    #[error("{path}: {reason}")]
    LabelImage { path: PathBuf, reason: String },
    /// Two inputs that must agree (feature dims, image sizes, file sets) do not.
    #[error("mismatched inputs: {0}")]
    Mismatch(String),
    /// A parameter value outside its valid range (named in the message).
    #[error("invalid parameter: {0}")]
    InvalidParam(String),
    /// The numerical computation failed (non-finite statistics, large imaginary part, ...).
    #[error("numerical failure: {0}")]
    Numerical(String),
    /// A weights file that does not fit the architecture: lists missing, mis-shaped and
    /// unexpected tensors by name.
    #[error("weights file {path} does not match {arch}: {details}")]
    WeightsMismatch {
        path: PathBuf,
        arch: String,
        details: String,
    },
    /// A weights file that is absent or not a safetensors file.
    #[error("cannot load weights for {arch} from {path}: {reason}")]
    WeightsFile {
        path: PathBuf,
        arch: String,
        reason: String,
    },
    #[error("torch error: {0}")]
    Torch(#[from] tch::TchError),
}

/// Result alias of this crate.
pub type Result<T, E = MetricsError> = std::result::Result<T, E>;

impl MetricsError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        MetricsError::Io {
            path: path.into(),
            source,
        }
    }
}
