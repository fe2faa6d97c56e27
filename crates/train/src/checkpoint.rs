//! Resumable checkpoints in a stage's scratch directory.
//!
//! A checkpoint is every named tensor of a training run (generator and discriminator
//! weights and buffers, optimiser moments and step counts) plus a small JSON record
//! (`step`, `seed`). Random state needs no saving: the loop reseeds every step from
//! `(seed, step)` ([`crate::step_seed`]). The settings need no fingerprint either: the
//! scratch directory is one per cache key, so a checkpoint found there was written under
//! the same key-relevant settings (a record from before that rule, with a `fingerprint`
//! field, is read and the field ignored).
//!
//! Atomicity: tensors go to `ckpt-<step>.safetensors`, then `latest.json` is written to a
//! temporary file and renamed over the old one. The rename is the commit point: a crash
//! at any moment leaves the previous complete checkpoint in force.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::error::TrainError;

const LATEST: &str = "latest.json";
const FORMAT: &str = "ugc-method-checkpoint";

/// `latest.json`: which tensor file is current, and at which step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointRecord {
    pub format: String,
    /// Steps completed when the checkpoint was taken.
    pub step: u64,
    pub seed: u64,
    /// Written by earlier releases (a digest of the settings); read and ignored, since the
    /// scratch directory is already one per cache key.
    #[serde(default, skip_serializing)]
    pub fingerprint: Option<String>,
    /// Tensor file name, relative to the checkpoint directory.
    pub tensors: String,
}

/// Writes `tensors` as the checkpoint of `step` into `dir` (created if needed), then makes
/// it current atomically and removes older tensor files.
pub fn save(
    dir: &Path,
    step: u64,
    seed: u64,
    tensors: &[(String, Tensor)],
) -> Result<(), TrainError> {
    std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    let name = format!("ckpt-{step}.safetensors");
    let file = dir.join(&name);
    let cpu: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(n, t)| {
            (
                n.clone(),
                t.detach().to_device(tch::Device::Cpu).contiguous(),
            )
        })
        .collect();
    Tensor::write_safetensors(&cpu, &file)
        .map_err(|e| TrainError::torch(format!("writing {}", file.display()), e))?;
    sync_file(&file)?;
    let rec = CheckpointRecord {
        format: FORMAT.into(),
        step,
        seed,
        fingerprint: None,
        tensors: name.clone(),
    };
    let tmp = dir.join(format!("{LATEST}.tmp"));
    let text = serde_json::to_string_pretty(&rec).map_err(|e| TrainError::Json {
        path: tmp.clone(),
        source: e,
    })?;
    std::fs::write(&tmp, text).map_err(|e| TrainError::io(&tmp, e))?;
    sync_file(&tmp)?;
    let latest = dir.join(LATEST);
    std::fs::rename(&tmp, &latest).map_err(|e| TrainError::io(&latest, e))?;
    // Old tensor files are garbage once `latest.json` points elsewhere.
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with("ckpt-") && n.ends_with(".safetensors") && n != name {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    Ok(())
}

fn sync_file(p: &Path) -> Result<(), TrainError> {
    std::fs::File::open(p)
        .and_then(|f| f.sync_all())
        .map_err(|e| TrainError::io(p, e))
}

/// A checkpoint read back from disk.
pub struct Loaded {
    pub record: CheckpointRecord,
    pub tensors: HashMap<String, Tensor>,
    /// The tensor file (for error messages).
    pub path: PathBuf,
}

/// Reads the current checkpoint of `dir`, `None` when there is none.
pub fn load(dir: &Path) -> Result<Option<Loaded>, TrainError> {
    let latest = dir.join(LATEST);
    if !latest.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&latest).map_err(|e| TrainError::io(&latest, e))?;
    let record: CheckpointRecord = serde_json::from_str(&text).map_err(|e| TrainError::Json {
        path: latest.clone(),
        source: e,
    })?;
    if record.format != FORMAT {
        return Err(TrainError::Checkpoint {
            path: latest,
            reason: format!("format `{}`, expected `{FORMAT}`", record.format),
        });
    }
    let path = dir.join(&record.tensors);
    let tensors = Tensor::read_safetensors(&path)
        .map_err(|e| TrainError::Checkpoint {
            path: path.clone(),
            reason: format!("unreadable: {e}"),
        })?
        .into_iter()
        .collect();
    Ok(Some(Loaded {
        record,
        tensors,
        path,
    }))
}

/// Copies saved values into the live tensors `into`, in place and without recording
/// gradients. Every live tensor must be present with the same shape; extra saved tensors
/// are refused too, since they mean the checkpoint belongs to another setup.
pub fn restore(loaded: &Loaded, into: &[(String, Tensor)]) -> Result<(), TrainError> {
    let mut problems = Vec::new();
    for (name, live) in into {
        match loaded.tensors.get(name) {
            None => problems.push(format!("missing: {name}")),
            Some(t) if t.size() != live.size() => problems.push(format!(
                "mis-shaped: {name} expected {:?} found {:?}",
                live.size(),
                t.size()
            )),
            Some(_) => {}
        }
    }
    let live_names: std::collections::HashSet<&str> =
        into.iter().map(|(n, _)| n.as_str()).collect();
    let mut extra: Vec<&String> = loaded
        .tensors
        .keys()
        .filter(|k| !live_names.contains(k.as_str()))
        .collect();
    extra.sort();
    problems.extend(extra.into_iter().map(|n| format!("unexpected: {n}")));
    if !problems.is_empty() {
        return Err(TrainError::Checkpoint {
            path: loaded.path.clone(),
            reason: format!(
                "does not match this run (delete the scratch directory to start over):\n{}",
                problems.join("\n")
            ),
        });
    }
    tch::no_grad(|| {
        for (name, live) in into {
            let src = &loaded.tensors[name];
            let mut dst = live.shallow_clone();
            dst.f_copy_(&src.to_device(live.device()).to_kind(live.kind()))
                .map_err(|e| TrainError::torch(format!("restoring `{name}`"), e))?;
        }
        Ok(())
    })
}

/// Restores the checkpoint in `dir` into `live` if there is one, returning the number of
/// completed steps to continue from (0 when starting). A checkpoint of another `seed` is an
/// error naming the file, never ignored (the seed is in the cache key, so this means the
/// scratch directory was tampered with).
pub fn resume_or_start(
    dir: &Path,
    seed: u64,
    live: &[(String, Tensor)],
) -> Result<u64, TrainError> {
    let Some(loaded) = load(dir)? else {
        return Ok(0);
    };
    if loaded.record.seed != seed {
        return Err(TrainError::Checkpoint {
            path: dir.join(LATEST),
            reason: format!(
                "was written by a run with seed {}, this run has seed {seed}; \
                 delete the scratch directory to start over",
                loaded.record.seed
            ),
        });
    }
    restore(&loaded, live)?;
    Ok(loaded.record.step)
}

/// Every variable of a var store (weights and buffers: a batch norm's running statistics
/// must survive a crash too), named `{prefix}.<name>`, for [`crate::TrainTask::state`].
pub fn store_state(prefix: &str, vs: &tch::nn::VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(n, t)| (format!("{prefix}.{n}"), t))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[cfg(test)]
mod tests {
    use tch::Kind;

    use super::*;

    #[test]
    fn a_record_from_before_fingerprints_were_dropped_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let w = Tensor::from_slice(&[1.0f32, 2.0]);
        save(dir.path(), 3, 9, &[("w".into(), w.shallow_clone())]).unwrap();
        let latest = dir.path().join(LATEST);
        let now: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&latest).unwrap()).unwrap();
        assert!(now.get("fingerprint").is_none(), "{now}");
        // What an earlier release wrote: the same record with a settings digest.
        let old = serde_json::json!({
            "format": FORMAT, "step": 3, "seed": 9,
            "fingerprint": "0123456789abcdef", "tensors": "ckpt-3.safetensors",
        });
        std::fs::write(&latest, old.to_string()).unwrap();
        let live = Tensor::zeros([2], (Kind::Float, tch::Device::Cpu));
        let step = resume_or_start(dir.path(), 9, &[("w".into(), live.shallow_clone())]).unwrap();
        assert_eq!(step, 3);
        assert!(live.equal(&w));
    }

    #[test]
    fn a_torn_record_is_an_error_naming_the_file_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(LATEST), "{\"format\": ").unwrap();
        let e = resume_or_start(dir.path(), 0, &[]).unwrap_err().to_string();
        assert!(e.contains(LATEST), "{e}");
    }
}
