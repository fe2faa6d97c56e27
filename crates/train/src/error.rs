//! The one error type of the training core. Stage crates convert it into their own error
//! (`From<TrainError>`), keeping `Cancelled` a cancel and a bad checkpoint a data problem.

use std::path::PathBuf;

/// Why the training core could not go on.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A setting the core cannot use (e.g. `steps` = 0, `beta1` outside [0, 1)).
    #[error("invalid parameter {param} = {value}: {reason}")]
    Param {
        param: String,
        value: String,
        reason: String,
    },
    /// A checkpoint or log in the scratch directory cannot be used.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint { path: PathBuf, reason: String },
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid JSON in {path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("torch error while {context}: {source}")]
    Torch {
        context: String,
        #[source]
        source: tch::TchError,
    },
    #[error(transparent)]
    Data(#[from] ugc_data::DataError),
    /// A loss or a parameter became NaN/inf.
    #[error("{0}")]
    Numeric(String),
    /// The cancel token was seen; a checkpoint was written first.
    #[error("cancelled")]
    Cancelled,
}

impl TrainError {
    /// Shorthand for [`TrainError::Param`].
    pub fn param(param: &str, value: impl ToString, reason: impl Into<String>) -> Self {
        TrainError::Param {
            param: param.to_string(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }

    /// Shorthand for [`TrainError::Io`].
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TrainError::Io {
            path: path.into(),
            source,
        }
    }

    /// Shorthand for [`TrainError::Torch`].
    pub fn torch(context: impl Into<String>, source: tch::TchError) -> Self {
        TrainError::Torch {
            context: context.into(),
            source,
        }
    }
}
