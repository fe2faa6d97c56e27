//! Errors of loading a pipeline: each one says where (file:line:column) and what.

use std::fmt;
use std::path::{Path, PathBuf};

use super::suggest::did_you_mean;

/// A position in a pipeline file (1-based line and column). For a `--set` flag the "file"
/// is the flag itself, so messages still read `where: what`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourcePos {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
}

impl SourcePos {
    pub fn new(file: &Path, line: usize, col: usize) -> Self {
        SourcePos {
            file: file.to_path_buf(),
            line,
            col,
        }
    }
}

impl fmt::Display for SourcePos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.col)
    }
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_string()
    } else {
        items.join(", ")
    }
}

/// Why a pipeline could not be loaded or expanded.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: file is {size} bytes, more than the limit of {max} bytes", path.display())]
    TooLarge {
        path: PathBuf,
        size: u64,
        max: usize,
    },
    /// The text is not valid YAML.
    #[error("{pos}: YAML syntax: {message}")]
    Yaml { pos: SourcePos, message: String },
    /// A resource limit (nesting depth, node count, alias expansion) was exceeded.
    #[error("{pos}: refused: {message}")]
    Limit { pos: SourcePos, message: String },
    #[error("{pos}: unknown key `{key}` in {section}{} (valid: {})", did_you_mean(.key, .valid), list(.valid))]
    UnknownKey {
        pos: SourcePos,
        key: String,
        section: String,
        valid: Vec<String>,
    },
    #[error("{pos}: {section} is missing the required key `{key}`")]
    MissingKey {
        pos: SourcePos,
        key: String,
        section: String,
    },
    #[error("{pos}: stage `{stage}` has no parameter `{param}`{} (valid: {})", did_you_mean(.param, .valid), list(.valid))]
    UnknownParam {
        pos: SourcePos,
        stage: String,
        param: String,
        valid: Vec<String>,
    },
    #[error("{pos}: stage `{stage}` is missing the required parameter `{param}`")]
    MissingParam {
        pos: SourcePos,
        stage: String,
        param: String,
    },
    #[error("{pos}: {what}: expected {expected}, got {got}")]
    WrongType {
        pos: SourcePos,
        what: String,
        expected: String,
        got: String,
    },
    #[error("{pos}: {what}: value `{value}` is not allowed (allowed: {})", list(.allowed))]
    NotAllowed {
        pos: SourcePos,
        what: String,
        value: String,
        allowed: Vec<String>,
    },
    #[error("{pos}: unknown stage kind `{kind}`{} (known: {})", did_you_mean(.kind, .known), list(.known))]
    UnknownKind {
        pos: SourcePos,
        kind: String,
        known: Vec<String>,
    },
    #[error("{pos}: stage `{stage}` depends on `{dep}`, which is not a stage of this pipeline{}", did_you_mean(.dep, .known))]
    UnknownDep {
        pos: SourcePos,
        stage: String,
        dep: String,
        /// The pipeline's stage names, for the suggestion.
        known: Vec<String>,
    },
    #[error("{pos}: duplicate stage name `{name}` (first defined at {first})")]
    DuplicateStage {
        pos: SourcePos,
        name: String,
        first: SourcePos,
    },
    /// `stages` names every stage on the cycle in data-flow order, the first one repeated last.
    #[error("{pos}: cycle: {}", .stages.join(" -> "))]
    Cycle { pos: SourcePos, stages: Vec<String> },
    #[error("{pos}: unknown reference `${{{name}}}` ({hint})")]
    UnknownRef {
        pos: SourcePos,
        name: String,
        hint: String,
    },
    /// A `--set` flag that cannot be applied.
    #[error("--set {flag}: {message}")]
    Override { flag: String, message: String },
    /// Any other malformed value, with its position.
    #[error("{pos}: {message}")]
    Invalid { pos: SourcePos, message: String },
    /// Every problem found in one pass (two or more), in file order, one per line.
    #[error("{} problems:\n{}", .0.len(), .0.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
    Several(Vec<SpecError>),
}

impl SpecError {
    /// One error for a list of problems: flattened, deduplicated (a stage at several matrix
    /// points repeats its problems), sorted by position; a single problem stays itself.
    ///
    /// # Panics
    /// If `errors` is empty (a caller bug).
    pub fn several(errors: Vec<SpecError>) -> SpecError {
        let mut flat = Vec::new();
        for e in errors {
            match e {
                SpecError::Several(inner) => flat.extend(inner),
                other => flat.push(other),
            }
        }
        let mut seen = std::collections::HashSet::new();
        flat.retain(|e| seen.insert(e.to_string()));
        flat.sort_by(|a, b| a.pos().cmp(&b.pos()));
        assert!(!flat.is_empty(), "SpecError::several of no error");
        if flat.len() == 1 {
            flat.pop().expect("one error")
        } else {
            SpecError::Several(flat)
        }
    }

    /// Every single problem this error stands for.
    pub fn problems(&self) -> Vec<&SpecError> {
        match self {
            SpecError::Several(all) => all.iter().collect(),
            other => vec![other],
        }
    }

    /// The position the error points at, where it has one.
    pub fn pos(&self) -> Option<&SourcePos> {
        match self {
            SpecError::Io { .. } | SpecError::TooLarge { .. } | SpecError::Override { .. } => None,
            SpecError::Several(all) => all.first().and_then(SpecError::pos),
            SpecError::Yaml { pos, .. }
            | SpecError::Limit { pos, .. }
            | SpecError::UnknownKey { pos, .. }
            | SpecError::MissingKey { pos, .. }
            | SpecError::UnknownParam { pos, .. }
            | SpecError::MissingParam { pos, .. }
            | SpecError::WrongType { pos, .. }
            | SpecError::NotAllowed { pos, .. }
            | SpecError::UnknownKind { pos, .. }
            | SpecError::UnknownDep { pos, .. }
            | SpecError::DuplicateStage { pos, .. }
            | SpecError::Cycle { pos, .. }
            | SpecError::UnknownRef { pos, .. }
            | SpecError::Invalid { pos, .. } => Some(pos),
        }
    }
}
