//! Typed errors of the data layer. Every variant names the file or parameter at fault so a
//! user can fix bad data before hours of training are spent on it.

use std::path::{Path, PathBuf};

use ugc_engine::StageError;

/// One file that failed validation, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileProblem {
    pub path: PathBuf,
    pub reason: String,
}

impl std::fmt::Display for FileProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.reason)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file that exists but is not usable (undecodable, wrong geometry, bad label ids).
    #[error("{0}")]
    BadFile(FileProblem),
    /// Validation found bad files; all of them are listed so one run reports everything.
    #[error("{} bad file(s) in the dataset (set `skip_bad: true` to skip them):\n{}", .0.len(), list_problems(.0))]
    BadFiles(Vec<FileProblem>),
    #[error("parameter `{param}`: {reason}")]
    Param { param: String, reason: String },
    #[error("folder {} (parameter `{param}`) does not exist", path.display())]
    MissingRoot { param: String, path: PathBuf },
    /// The dataset root exists but lacks a split folder (`train/`, `val/`, ...).
    #[error(
        "dataset root {} has no split folder `{}/` (split names: `dataset.train_split`, \
         `dataset.test_split`, default train and val); expected layout: {layout}",
        root.display(),
        folder.display()
    )]
    MissingSplit {
        root: PathBuf,
        folder: PathBuf,
        layout: &'static str,
    },
    #[error("{what}: no usable images under {}", path.display())]
    Empty { what: String, path: PathBuf },
    #[error("manifest {}: {reason}", path.display())]
    Manifest { path: PathBuf, reason: String },
    #[error("tensor: {0}")]
    Tensor(#[from] tch::TchError),
    #[error("loader worker: {0}")]
    Worker(String),
}

fn list_problems(p: &[FileProblem]) -> String {
    const SHOWN: usize = 20;
    let mut s: Vec<String> = p.iter().take(SHOWN).map(|p| format!("  {p}")).collect();
    if p.len() > SHOWN {
        s.push(format!("  ... and {} more", p.len() - SHOWN));
    }
    s.join("\n")
}

impl DataError {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }
    pub fn bad(path: impl AsRef<Path>, reason: impl Into<String>) -> Self {
        DataError::BadFile(FileProblem {
            path: path.as_ref().to_path_buf(),
            reason: reason.into(),
        })
    }
    pub fn param(param: impl Into<String>, reason: impl Into<String>) -> Self {
        DataError::Param {
            param: param.into(),
            reason: reason.into(),
        }
    }
}

impl From<DataError> for StageError {
    fn from(e: DataError) -> Self {
        match e {
            DataError::Io { path, source } => StageError::io(path.display().to_string(), source),
            DataError::Param { .. }
            | DataError::MissingRoot { .. }
            | DataError::MissingSplit { .. }
            | DataError::Empty { .. } => StageError::Config(e.to_string()),
            DataError::BadFile(_) | DataError::BadFiles(_) | DataError::Manifest { .. } => {
                StageError::Data(e.to_string())
            }
            DataError::Tensor(_) | DataError::Worker(_) => StageError::Failed(e.to_string()),
        }
    }
}

pub type Result<T, E = DataError> = std::result::Result<T, E>;
