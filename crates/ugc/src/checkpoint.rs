//! Resumable checkpoints in a stage's scratch directory.
//!
//! A checkpoint is every named tensor of a training run (generator and discriminator
//! weights and buffers, optimiser moments and step counts) plus a small JSON record
//! (`step`, `seed`, a fingerprint of the run's settings). Random state needs no saving: the
//! trainer reseeds every step from `(seed, step)` ([`crate::device::step_seed`]).
//!
//! Atomicity: tensors go to `ckpt-<step>.safetensors`, then `latest.json` is written to a
//! temporary file and renamed over the old one. The rename is the commit point: a crash
//! at any moment leaves the previous complete checkpoint in force.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::error::MethodError;

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
    /// Settings the checkpoint belongs to; resuming under different settings is refused.
    pub fingerprint: String,
    /// Tensor file name, relative to the checkpoint directory.
    pub tensors: String,
}

/// Writes `tensors` as the checkpoint of `step` into `dir` (created if needed), then makes
/// it current atomically and removes older tensor files.
pub fn save(
    dir: &Path,
    step: u64,
    seed: u64,
    fingerprint: &str,
    tensors: &[(String, Tensor)],
) -> Result<(), MethodError> {
    std::fs::create_dir_all(dir).map_err(|e| MethodError::io(dir, e))?;
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
        .map_err(|e| MethodError::torch(format!("writing {}", file.display()), e))?;
    sync_file(&file)?;
    let rec = CheckpointRecord {
        format: FORMAT.into(),
        step,
        seed,
        fingerprint: fingerprint.into(),
        tensors: name.clone(),
    };
    let tmp = dir.join(format!("{LATEST}.tmp"));
    let text = serde_json::to_string_pretty(&rec).map_err(|e| MethodError::Json {
        path: tmp.clone(),
        source: e,
    })?;
    std::fs::write(&tmp, text).map_err(|e| MethodError::io(&tmp, e))?;
    sync_file(&tmp)?;
    let latest = dir.join(LATEST);
    std::fs::rename(&tmp, &latest).map_err(|e| MethodError::io(&latest, e))?;
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

fn sync_file(p: &Path) -> Result<(), MethodError> {
    std::fs::File::open(p)
        .and_then(|f| f.sync_all())
        .map_err(|e| MethodError::io(p, e))
}

/// A checkpoint read back from disk.
pub struct Loaded {
    pub record: CheckpointRecord,
    pub tensors: HashMap<String, Tensor>,
    /// The tensor file (for error messages).
    pub path: PathBuf,
}

/// Reads the current checkpoint of `dir`, `None` when there is none.
pub fn load(dir: &Path) -> Result<Option<Loaded>, MethodError> {
    let latest = dir.join(LATEST);
    if !latest.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&latest).map_err(|e| MethodError::io(&latest, e))?;
    let record: CheckpointRecord = serde_json::from_str(&text).map_err(|e| MethodError::Json {
        path: latest.clone(),
        source: e,
    })?;
    if record.format != FORMAT {
        return Err(MethodError::Checkpoint {
            path: latest,
            reason: format!("format `{}`, expected `{FORMAT}`", record.format),
        });
    }
    let path = dir.join(&record.tensors);
    let tensors = Tensor::read_safetensors(&path)
        .map_err(|e| MethodError::Checkpoint {
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
pub fn restore(loaded: &Loaded, into: &[(String, Tensor)]) -> Result<(), MethodError> {
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
        return Err(MethodError::Checkpoint {
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
                .map_err(|e| MethodError::torch(format!("restoring `{name}`"), e))?;
        }
        Ok(())
    })
}

/// Restores the checkpoint in `dir` into `live` if there is one for this `fingerprint`
/// and `seed`, returning the number of completed steps to continue from (0 when starting).
/// A checkpoint of another fingerprint or seed is an error naming the file, never ignored.
pub fn resume_or_start(
    dir: &Path,
    seed: u64,
    fingerprint: &str,
    live: &[(String, Tensor)],
) -> Result<u64, MethodError> {
    let Some(loaded) = load(dir)? else {
        return Ok(0);
    };
    if loaded.record.fingerprint != fingerprint || loaded.record.seed != seed {
        return Err(MethodError::Checkpoint {
            path: dir.join(LATEST),
            reason: format!(
                "was written by a run with other settings (seed {}, fingerprint {}); \
                 delete the scratch directory to start over",
                loaded.record.seed, loaded.record.fingerprint
            ),
        });
    }
    restore(&loaded, live)?;
    Ok(loaded.record.step)
}
