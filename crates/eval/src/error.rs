//! Typed errors of the evaluation stages. Every variant names the file, parameter or value
//! at fault; they convert into [`StageError`] so the engine can report them.

use std::path::PathBuf;

use ugc_data::DataError;
use ugc_engine::StageError;
use ugc_metrics::MetricsError;
use ugc_nn::NnError;

/// Why an evaluation stage could not produce its output.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A parameter value outside its valid range.
    #[error("parameter `{param}` = {value}: {reason}")]
    Param {
        param: String,
        value: String,
        reason: String,
    },
    /// A required upstream output is absent or ambiguous.
    #[error("{0}")]
    Input(String),
    /// A file that should exist does not, or is not what it claims to be.
    #[error("{path}: {reason}")]
    BadFile { path: PathBuf, reason: String },
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error(transparent)]
    Nn(#[from] NnError),
    #[error("torch error while {context}: {source}")]
    Torch {
        context: String,
        #[source]
        source: tch::TchError,
    },
    /// A check the stage makes on its own result failed (e.g. an exported model that does not
    /// reproduce its source).
    #[error("{0}")]
    Check(String),
    #[error("cancelled")]
    Cancelled,
}

pub type Result<T, E = EvalError> = std::result::Result<T, E>;

impl EvalError {
    pub fn param(param: &str, value: impl ToString, reason: impl Into<String>) -> Self {
        EvalError::Param {
            param: param.into(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        EvalError::Io {
            path: path.into(),
            source,
        }
    }

    pub fn bad(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        EvalError::BadFile {
            path: path.into(),
            reason: reason.into(),
        }
    }

    pub fn torch(context: impl Into<String>, source: tch::TchError) -> Self {
        EvalError::Torch {
            context: context.into(),
            source,
        }
    }
}

/// The training core's errors as the evaluator's: a cancel stays a cancel, a bad
/// checkpoint is a bad file, a non-finite loss a failed check.
impl From<ugc_train::TrainError> for EvalError {
    fn from(e: ugc_train::TrainError) -> Self {
        use ugc_train::TrainError as T;
        match e {
            T::Param {
                param,
                value,
                reason,
            } => EvalError::Param {
                param,
                value,
                reason,
            },
            T::Checkpoint { path, reason } => EvalError::BadFile { path, reason },
            T::Io { path, source } => EvalError::Io { path, source },
            T::Json { path, source } => EvalError::BadFile {
                path,
                reason: format!("invalid JSON: {source}"),
            },
            T::Torch { context, source } => EvalError::Torch { context, source },
            T::Data(d) => EvalError::Data(d),
            T::Numeric(m) => EvalError::Check(m),
            T::Cancelled => EvalError::Cancelled,
        }
    }
}

impl From<EvalError> for StageError {
    fn from(e: EvalError) -> Self {
        match e {
            EvalError::Param { .. } | EvalError::Input(_) => StageError::Config(e.to_string()),
            EvalError::BadFile { .. } => StageError::Data(e.to_string()),
            EvalError::Io { path, source } => StageError::io(path.display().to_string(), source),
            EvalError::Data(d) => d.into(),
            EvalError::Metrics(MetricsError::WeightsFile { .. })
            | EvalError::Metrics(MetricsError::WeightsMismatch { .. }) => {
                StageError::Config(e.to_string())
            }
            EvalError::Cancelled => StageError::Cancelled,
            EvalError::Metrics(_)
            | EvalError::Nn(_)
            | EvalError::Torch { .. }
            | EvalError::Check(_) => StageError::Failed(e.to_string()),
        }
    }
}
