//! A job: everything needed to run one stage by its cache key, written by the head into
//! `<cache>/jobs/<run>/<key>.json` and read by `ugc-pipe exec --key KEY --run RUN`
//! (`<cache>/jobs/<key>.json` and no `--run` for a job outside any registry run). Keeping the
//! job on disk (not on a command line) is what lets a cluster executor run the same command
//! elsewhere against a shared cache. A job file belongs to one run: two heads running the
//! same pipeline on one cache write the same key with their own run id (and GPU), so a
//! shared file per key would let one head's stage process record its work under the other's
//! run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cache::{CacheKey, KeyMaterial};
use crate::spec::Resources;
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
    /// The registry run this job belongs to; also names its directory under `jobs/`.
    pub run_id: Option<i64>,
    /// The stage's `resources:`; absent from the file when they are the defaults (one
    /// process), so such job files read and write as before resources existed.
    #[serde(default, skip_serializing_if = "Resources::is_default")]
    pub resources: Resources,
    /// The GPUs the head assigned to a data-parallel stage on CUDA, one per rank (`device`
    /// is the first); empty on the CPU, for one process, and for ranks started elsewhere
    /// (torchrun, `srun`), whose device is `cuda:LOCAL_RANK`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<usize>,
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
    /// A job of a parameterless `touch` kind, for the engine's unit tests.
    #[cfg(test)]
    pub(crate) fn for_test(run_id: Option<i64>, device: DeviceKind) -> Job {
        let material = crate::cache::KeyMaterial::new("touch", 1, serde_json::json!({}));
        Job {
            schema: JOB_SCHEMA_VERSION,
            key: material.key().to_string(),
            material,
            pipeline: "p.yaml".into(),
            node: "t".into(),
            stage: "t".into(),
            kind: "touch".into(),
            params: serde_json::json!({}),
            inputs: vec![],
            device,
            env: BTreeMap::new(),
            run_id,
            resources: Resources::default(),
            gpus: Vec::new(),
        }
    }

    /// `jobs/<run>/<key>.json`, or `jobs/<key>.json` for a job of no run.
    pub fn path(cache_root: &Path, key: &str, run_id: Option<i64>) -> PathBuf {
        let jobs = cache_root.join("jobs");
        let dir = match run_id {
            Some(run) => jobs.join(run.to_string()),
            None => jobs,
        };
        dir.join(format!("{key}.json"))
    }

    /// Writes the job atomically (temp file + rename), so a reader never sees half a job.
    pub fn write(&self, cache_root: &Path) -> Result<PathBuf, JobError> {
        let path = Self::path(cache_root, &self.key, self.run_id);
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

    /// Reads and checks the job of `key` in run `run_id`: the key must be the digest of its
    /// key material, so a job file edited by hand cannot commit outputs under someone
    /// else's key, and the file must name the run it is filed under.
    pub fn read(cache_root: &Path, key: &str, run_id: Option<i64>) -> Result<Job, JobError> {
        let path = Self::path(cache_root, key, run_id);
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
        if job.run_id != run_id {
            return Err(JobError::Invalid {
                path,
                msg: format!(
                    "job of run {} filed under run {}",
                    fmt_run(job.run_id),
                    fmt_run(run_id)
                ),
            });
        }
        Ok(job)
    }

    pub fn cache_key(&self) -> CacheKey {
        self.material.key()
    }

    /// The device of the rank with local rank `local_rank`: with CUDA, the head's
    /// `local_rank`-th assigned GPU when it assigned some (`None` past their end), else
    /// `cuda:local_rank` (ranks started by torchrun or `srun`); the CPU otherwise.
    pub fn rank_device(&self, local_rank: usize) -> Option<DeviceKind> {
        match self.device {
            DeviceKind::Cpu => Some(DeviceKind::Cpu),
            DeviceKind::Cuda(_) if self.gpus.is_empty() => Some(DeviceKind::Cuda(local_rank)),
            DeviceKind::Cuda(_) => self.gpus.get(local_rank).copied().map(DeviceKind::Cuda),
        }
    }
}

fn fmt_run(run: Option<i64>) -> String {
    run.map(|r| r.to_string()).unwrap_or_else(|| "none".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(run_id: Option<i64>, device: DeviceKind) -> Job {
        Job::for_test(run_id, device)
    }

    #[test]
    fn two_runs_of_one_key_keep_their_own_job_files() {
        let dir = tempfile::tempdir().unwrap();
        let a = job(Some(1), DeviceKind::Cuda(0));
        let b = job(Some(2), DeviceKind::Cuda(1));
        a.write(dir.path()).unwrap();
        b.write(dir.path()).unwrap();
        let ra = Job::read(dir.path(), &a.key, Some(1)).unwrap();
        let rb = Job::read(dir.path(), &a.key, Some(2)).unwrap();
        assert_eq!((ra.run_id, ra.device), (Some(1), DeviceKind::Cuda(0)));
        assert_eq!((rb.run_id, rb.device), (Some(2), DeviceKind::Cuda(1)));
        // No job of this key outside a run was written.
        assert!(matches!(
            Job::read(dir.path(), &a.key, None),
            Err(JobError::Io { .. })
        ));
    }

    #[test]
    fn resources_and_gpus_round_trip_and_one_process_jobs_do_not_name_them() {
        let dir = tempfile::tempdir().unwrap();
        let plain = job(Some(1), DeviceKind::Cuda(0));
        let path = plain.write(dir.path()).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        // A job of one process is the file it was before resources existed.
        assert!(
            !text.contains("resources") && !text.contains("gpus"),
            "{text}"
        );
        let mut dp = job(Some(2), DeviceKind::Cuda(3));
        dp.resources.devices = 2;
        dp.resources.dist_timeout = std::time::Duration::from_secs(30);
        dp.gpus = vec![3, 1];
        dp.write(dir.path()).unwrap();
        let back = Job::read(dir.path(), &dp.key, Some(2)).unwrap();
        assert_eq!(back.resources, dp.resources);
        assert_eq!(back.gpus, vec![3, 1]);
        assert_eq!(back.rank_device(1), Some(DeviceKind::Cuda(1)));
        assert_eq!(back.rank_device(2), None);
        assert_eq!(
            job(None, DeviceKind::Cpu).rank_device(5),
            Some(DeviceKind::Cpu)
        );
        // Ranks started by hand or by `srun`: no GPU list, the local rank's own GPU.
        assert_eq!(
            job(None, DeviceKind::Cuda(0)).rank_device(3),
            Some(DeviceKind::Cuda(3))
        );
    }

    #[test]
    fn a_job_file_written_before_resources_existed_reads_with_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let a = job(Some(1), DeviceKind::Cpu);
        let path = a.write(dir.path()).unwrap();
        let mut v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let obj = v.as_object_mut().unwrap();
        assert!(obj.remove("resources").is_none() && obj.remove("gpus").is_none());
        std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
        let back = Job::read(dir.path(), &a.key, Some(1)).unwrap();
        assert!(back.resources.is_default() && back.gpus.is_empty());
    }

    #[test]
    fn a_job_filed_under_another_run_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = job(Some(1), DeviceKind::Cpu);
        a.write(dir.path()).unwrap();
        std::fs::create_dir_all(dir.path().join("jobs/7")).unwrap();
        std::fs::copy(
            Job::path(dir.path(), &a.key, Some(1)),
            Job::path(dir.path(), &a.key, Some(7)),
        )
        .unwrap();
        let err = Job::read(dir.path(), &a.key, Some(7))
            .unwrap_err()
            .to_string();
        assert!(err.contains("job of run 1 filed under run 7"), "{err}");
    }
}
