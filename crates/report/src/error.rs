//! Errors of the report stage. Every message names the input node, file or parameter at fault.

use std::path::PathBuf;

use ugc_engine::StageError;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Bad or inconsistent parameters (names the parameter).
    #[error("report parameter `{param}`: {msg}")]
    Param { param: String, msg: String },
    /// An upstream `evaluate` output lacks a number a table needs.
    #[error(
        "evaluate input `{node}` has no `{key}` in {} (it has: {have})",
        file.display()
    )]
    MissingMetric {
        node: String,
        key: String,
        file: PathBuf,
        have: String,
    },
    /// An upstream file is missing or malformed.
    #[error("evaluate input `{node}`: {} : {msg}", file.display())]
    BadInput {
        node: String,
        file: PathBuf,
        msg: String,
    },
    /// The inputs cannot make the requested table or figure.
    #[error("{0}")]
    Inputs(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// Rendering failed (plot backend or image encoder).
    #[error("drawing {what}: {msg}")]
    Draw { what: String, msg: String },
}

impl ReportError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ReportError::Io {
            context: context.into(),
            source,
        }
    }
}

impl From<ReportError> for StageError {
    fn from(e: ReportError) -> Self {
        match e {
            ReportError::Param { .. } | ReportError::Inputs(_) => StageError::Config(e.to_string()),
            ReportError::MissingMetric { .. } | ReportError::BadInput { .. } => {
                StageError::Data(e.to_string())
            }
            ReportError::Io { context, source } => StageError::Io { context, source },
            ReportError::Draw { .. } => StageError::Failed(e.to_string()),
        }
    }
}
