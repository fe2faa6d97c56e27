//! Typed errors of the method crate; every variant names the file, parameter or value.

use std::path::PathBuf;

use ugc_engine::StageError;

/// Errors of `ugc-method`.
#[derive(Debug, thiserror::Error)]
pub enum MethodError {
    /// A stage parameter has a value the method cannot use.
    #[error("invalid parameter {param} = {value}: {reason}")]
    Param {
        param: String,
        value: String,
        reason: String,
    },
    /// A weights file (VGG16, a model directory) is missing, unreadable or does not match.
    #[error("weights file {path}: {reason}")]
    Weights { path: PathBuf, reason: String },
    /// A checkpoint in the scratch directory cannot be used.
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
    Nn(#[from] ugc_nn::NnError),
    /// A network error, with what was being done (which model, which file).
    #[error("{context}: {source}")]
    NnAt {
        context: String,
        #[source]
        source: ugc_nn::NnError,
    },
    #[error(transparent)]
    Data(#[from] ugc_data::DataError),
    /// A data error, with what was being read (which split, which loader).
    #[error("{context}: {source}")]
    DataAt {
        context: String,
        #[source]
        source: ugc_data::DataError,
    },
    /// A loss became NaN/inf, a shape did not fit, etc.
    #[error("{0}")]
    Numeric(String),
    /// The cancel token was seen; a checkpoint was written first.
    #[error("cancelled")]
    Cancelled,
}

impl MethodError {
    /// Shorthand for [`MethodError::Param`].
    pub fn param(param: &str, value: impl ToString, reason: impl Into<String>) -> Self {
        MethodError::Param {
            param: param.to_string(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }

    /// Shorthand for [`MethodError::Io`].
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        MethodError::Io {
            path: path.into(),
            source,
        }
    }

    /// A `map_err` adapter giving a [`ugc_nn::NnError`] its context ([`MethodError::NnAt`]).
    pub fn nn_at(context: impl std::fmt::Display) -> impl FnOnce(ugc_nn::NnError) -> Self {
        move |source| MethodError::NnAt {
            context: context.to_string(),
            source,
        }
    }

    /// A `map_err` adapter giving a [`ugc_data::DataError`] its context
    /// ([`MethodError::DataAt`]).
    pub fn data_at(context: impl std::fmt::Display) -> impl FnOnce(ugc_data::DataError) -> Self {
        move |source| MethodError::DataAt {
            context: context.to_string(),
            source,
        }
    }

    /// Shorthand for [`MethodError::Torch`].
    pub fn torch(context: impl Into<String>, source: tch::TchError) -> Self {
        MethodError::Torch {
            context: context.into(),
            source,
        }
    }
}

/// The training core's errors as the method's, variant for variant (a cancel stays
/// [`MethodError::Cancelled`]).
impl From<ugc_train::TrainError> for MethodError {
    fn from(e: ugc_train::TrainError) -> Self {
        use ugc_train::TrainError as T;
        match e {
            T::Param {
                param,
                value,
                reason,
            } => MethodError::Param {
                param,
                value,
                reason,
            },
            T::Checkpoint { path, reason } => MethodError::Checkpoint { path, reason },
            T::Io { path, source } => MethodError::Io { path, source },
            T::Json { path, source } => MethodError::Json { path, source },
            T::Torch { context, source } => MethodError::Torch { context, source },
            T::Data(d) => MethodError::Data(d),
            T::Numeric(m) => MethodError::Numeric(m),
            T::Cancelled => MethodError::Cancelled,
        }
    }
}

impl From<MethodError> for StageError {
    fn from(e: MethodError) -> Self {
        match e {
            MethodError::Cancelled => StageError::Cancelled,
            e @ MethodError::Param { .. } => StageError::Config(e.to_string()),
            e @ (MethodError::Weights { .. }
            | MethodError::Checkpoint { .. }
            | MethodError::Json { .. }
            | MethodError::Data(_)
            | MethodError::DataAt { .. }) => StageError::Data(e.to_string()),
            MethodError::Io { path, source } => StageError::io(path.display().to_string(), source),
            e => StageError::Failed(e.to_string()),
        }
    }
}
