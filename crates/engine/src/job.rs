//! A job: everything needed to run one stage by its cache key, written by the head into
//! `<cache>/jobs/<key>.json` and read by `ugc-pipe exec --key KEY`. Keeping the job on disk
//! (not on a command line) is what lets a cluster executor run the same command elsewhere
//! against a shared cache.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cache::{CacheKey, KeyMaterial};
use crate::stage::{DeviceKind, StageInput};

/// Version of the job file format.
pub const JOB_SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    pub schema: u32,
    pub key: String,
    pub material: KeyMaterial,
    /// Canonical path of the pipeline file (for the registry and logs).
    pub pipeline: String,
    pub node: String,
    pub stage: String,
    pub kind: String,
    pub params: Value,
    pub inputs: Vec<StageInput>,
    pub device: DeviceKind,
    /// Environment passed to user commands the stage starts.
    pub env: BTreeMap<String, String>,
    pub run_id: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("job file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("job file {path}: {msg}")]
    Invalid { path: PathBuf, msg: String },
}

impl Job {
    pub fn path(cache_root: &Path, key: &str) -> PathBuf {
        cache_root.join("jobs").join(format!("{key}.json"))
    }

    /// Writes the job atomically (temp file + rename), so a reader never sees half a job.
    pub fn write(&self, cache_root: &Path) -> Result<PathBuf, JobError> {
        let path = Self::path(cache_root, &self.key);
        let io = |source| JobError::Io {
            path: path.clone(),
            source,
        };
        let dir = path.parent().expect("job path has a parent");
        std::fs::create_dir_all(dir).map_err(io)?;
        let text = serde_json::to_vec_pretty(self).map_err(|e| JobError::Invalid {
            path: path.clone(),
            msg: e.to_string(),
        })?;
        let tmp = dir.join(format!(".{}.{}.tmp", self.key, std::process::id()));
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        Ok(path)
    }

    /// Reads and checks a job: the key must be the digest of its key material, so a job
    /// file edited by hand cannot commit outputs under someone else's key.
    pub fn read(cache_root: &Path, key: &str) -> Result<Job, JobError> {
        let path = Self::path(cache_root, key);
        let text = std::fs::read(&path).map_err(|source| JobError::Io {
            path: path.clone(),
            source,
        })?;
        let job: Job = serde_json::from_slice(&text).map_err(|e| JobError::Invalid {
            path: path.clone(),
            msg: e.to_string(),
        })?;
        if job.schema != JOB_SCHEMA_VERSION {
            return Err(JobError::Invalid {
                path,
                msg: format!(
                    "job schema {} (this ugc-pipe reads {JOB_SCHEMA_VERSION})",
                    job.schema
                ),
            });
        }
        let expected = job.material.key();
        if expected.as_str() != job.key || job.key != key {
            return Err(JobError::Invalid {
                path,
                msg: format!(
                    "key {} does not match its key material ({expected})",
                    job.key
                ),
            });
        }
        Ok(job)
    }

    pub fn cache_key(&self) -> CacheKey {
        self.material.key()
    }
}
