//! The split manifest: what each later stage may read, by role, with content digests.
//!
//! Targets of unlabeled examples are withheld *by type*: [`UnlabeledInput`] holds an
//! [`UnlabeledRef`], which has no target field and no variant that points at a file
//! containing a target (aligned `A|B` images are cut to their input half by the split).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::classes::ClassTable;
use crate::dataset::{Direction, Format, Half};
use crate::error::{DataError, FileProblem, Result};

pub const MANIFEST_FILE: &str = "manifest.json";
/// Bumped when the manifest layout changes.
pub const SCHEMA_VERSION: u32 = 1;

/// Where the input of an example is (paths relative to the split's output folder).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum InputRef {
    Rgb {
        path: PathBuf,
    },
    AlignedHalf {
        path: PathBuf,
        half: Half,
    },
    Semantic {
        label_ids: PathBuf,
        instance_ids: Option<PathBuf>,
        color: Option<PathBuf>,
    },
}

/// Where the ground-truth output of a labeled example is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum TargetRef {
    Rgb { path: PathBuf },
    AlignedHalf { path: PathBuf, half: Half },
}

/// Input of an unlabeled example. Deliberately no `AlignedHalf`: every file it names holds
/// the input only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum UnlabeledRef {
    Rgb {
        path: PathBuf,
    },
    Semantic {
        label_ids: PathBuf,
        instance_ids: Option<PathBuf>,
        color: Option<PathBuf>,
    },
}

impl From<UnlabeledRef> for InputRef {
    fn from(u: UnlabeledRef) -> Self {
        match u {
            UnlabeledRef::Rgb { path } => InputRef::Rgb { path },
            UnlabeledRef::Semantic {
                label_ids,
                instance_ids,
                color,
            } => InputRef::Semantic {
                label_ids,
                instance_ids,
                color,
            },
        }
    }
}

/// An example with its target: labeled training pairs, search hold-out and test.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabeledPair {
    pub id: String,
    pub input: InputRef,
    pub target: TargetRef,
}

/// An example whose target is withheld from every later stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnlabeledInput {
    pub id: String,
    pub input: UnlabeledRef,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Labeled,
    Unlabeled,
    ExtraUnlabeled,
    Holdout,
    Test,
}

impl Role {
    pub fn dir(self) -> &'static str {
        match self {
            Role::Labeled => "labeled",
            Role::Unlabeled => "unlabeled",
            Role::ExtraUnlabeled => "extra",
            Role::Holdout => "holdout",
            Role::Test => "test",
        }
    }
}

/// One file of the split output with its blake3 digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub path: PathBuf,
    pub digest: String,
    pub role: Role,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Counts {
    /// Valid training examples before the split (hold-out + labeled + unlabeled).
    pub train_total: usize,
    pub labeled: usize,
    pub unlabeled: usize,
    pub extra_unlabeled: usize,
    pub holdout: usize,
    pub test: usize,
    pub skipped: usize,
}

/// `manifest.json` of a split output folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitManifest {
    pub schema_version: u32,
    pub format: Format,
    pub direction: Direction,
    pub classes: Option<ClassTable>,
    pub label_ratio: f64,
    pub holdout_ratio: f64,
    pub seed: u64,
    pub counts: Counts,
    pub(crate) labeled: Vec<LabeledPair>,
    pub(crate) unlabeled: Vec<UnlabeledInput>,
    pub(crate) holdout: Vec<LabeledPair>,
    pub(crate) test: Vec<LabeledPair>,
    pub files: Vec<FileEntry>,
    /// Files refused by validation and skipped because of `skip_bad: true`.
    pub skipped: Vec<SkippedFile>,
}

/// A file skipped under `skip_bad`, named relative to the folder it was found in, so the
/// manifest (and every key downstream) does not depend on where the dataset, or the
/// `synth` output in the cache, lies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SkippedFile {
    /// The parameter naming that folder: `dataset.root` or `dataset.extra_unlabeled`.
    #[serde(default = "root_param")]
    pub folder: String,
    pub path: PathBuf,
    /// Paths inside the reason are relative to the same folder.
    pub reason: String,
}

fn root_param() -> String {
    ROOT_PARAM.into()
}

const ROOT_PARAM: &str = "dataset.root";
const EXTRA_PARAM: &str = "dataset.extra_unlabeled";

impl SkippedFile {
    /// `p` relative to the extra-inputs folder when it lies there, else to the dataset root
    /// (a path under neither is kept as it is).
    pub fn new(p: &FileProblem, root: &Path, extra: Option<&Path>) -> Self {
        // The extra folder may lie inside the root: the deeper base wins.
        let (folder, base) = match extra {
            Some(e) if p.path.starts_with(e) => (EXTRA_PARAM, e),
            _ => (ROOT_PARAM, root),
        };
        let prefix = format!("{}/", base.display());
        SkippedFile {
            folder: folder.into(),
            path: p.path.strip_prefix(base).unwrap_or(&p.path).to_path_buf(),
            reason: p.reason.replace(&prefix, ""),
        }
    }
}

impl std::fmt::Display for SkippedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.folder == ROOT_PARAM {
            write!(f, "{}: {}", self.path.display(), self.reason)
        } else {
            write!(
                f,
                "{} (in `{}`): {}",
                self.path.display(),
                self.folder,
                self.reason
            )
        }
    }
}

impl SplitManifest {
    /// Labeled training pairs (`label_ratio` of the training pool).
    pub fn labeled(&self) -> &[LabeledPair] {
        &self.labeled
    }
    /// Unlabeled inputs (rest of the pool, then extra inputs); no targets reachable.
    pub fn unlabeled(&self) -> &[UnlabeledInput] {
        &self.unlabeled
    }
    /// Search hold-out taken from the training set; for scoring candidates, never training.
    pub fn holdout(&self) -> &[LabeledPair] {
        &self.holdout
    }
    pub fn test(&self) -> &[LabeledPair] {
        &self.test
    }

    /// Reads `dir/manifest.json` and checks its schema version.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| DataError::io(&path, e))?;
        let m: SplitManifest = serde_json::from_str(&text).map_err(|e| DataError::Manifest {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if m.schema_version != SCHEMA_VERSION {
            return Err(DataError::Manifest {
                path,
                reason: format!(
                    "schema version {} (this build reads {SCHEMA_VERSION}); re-run the split",
                    m.schema_version
                ),
            });
        }
        Ok(m)
    }

    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = dir.join(MANIFEST_FILE);
        let text = serde_json::to_string_pretty(self).expect("manifest serializes");
        std::fs::write(&path, text).map_err(|e| DataError::io(&path, e))
    }

    /// Re-hashes every file and reports the first one whose content changed.
    pub fn verify(&self, dir: &Path) -> Result<()> {
        for f in &self.files {
            let p = dir.join(&f.path);
            let d = crate::image_io::digest(&crate::image_io::read(&p)?);
            if d != f.digest {
                return Err(DataError::bad(
                    &p,
                    "content differs from the digest in the manifest",
                ));
            }
        }
        Ok(())
    }
}
