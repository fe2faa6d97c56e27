//! Typed errors of the crate. Every variant names the file, field or token at fault.

use std::path::PathBuf;

/// Errors of `ugc-nn`.
#[derive(Debug, thiserror::Error)]
pub enum NnError {
    /// An architecture field has a value this crate cannot build.
    #[error("invalid architecture config: {field} = {value}: {reason}")]
    InvalidConfig {
        field: String,
        value: String,
        reason: String,
    },
    /// An unknown architecture name (CLI `--arch`, `model.json`).
    #[error(
        "unknown architecture `{0}` (expected one of pix2pix-resnet, mobile-resnet, pix2pix-unet, pix2pixhd, gaugan)"
    )]
    UnknownArch(String),
    /// A sub-net config string could not be parsed; `token` is the offending part.
    #[error("invalid sub-net config string at `{token}`: {reason}")]
    ConfigString { token: String, reason: String },
    /// A sub-net config does not belong to the search space of the model it is used with.
    #[error("sub-net config `{config}` is not in the search space: {reason}")]
    NotInSpace { config: String, reason: String },
    /// An input tensor or image has a shape the model cannot take.
    #[error("bad input shape {shape:?}: {reason}")]
    BadInput { shape: Vec<i64>, reason: String },
    /// A feature that this crate does not implement (e.g. an architecture whose module is missing).
    #[error("not supported: {0}")]
    Unsupported(String),
    /// A weights file does not match the architecture; `summary` lists every bad tensor by name.
    #[error("weights file {path} does not match the architecture:\n{summary}")]
    WeightsMismatch { path: PathBuf, summary: String },
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
    /// An error raised by libtorch; `context` says what was being done (and on which file).
    #[error("torch error while {context}: {source}")]
    Torch {
        context: String,
        #[source]
        source: tch::TchError,
    },
    #[error("image error on {path}: {reason}")]
    Image { path: PathBuf, reason: String },
    /// A weights file that cannot be read (safetensors or torch.save), or holds no state dict.
    #[error("weights file {path}: {reason}")]
    Weights { path: PathBuf, reason: String },
}

impl NnError {
    /// Shorthand for [`NnError::InvalidConfig`].
    pub fn config(field: &str, value: impl ToString, reason: impl Into<String>) -> Self {
        NnError::InvalidConfig {
            field: field.to_string(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }

    /// Shorthand for [`NnError::Torch`].
    pub fn torch(context: impl Into<String>, source: tch::TchError) -> Self {
        NnError::Torch {
            context: context.into(),
            source,
        }
    }
}
