//! Loading user-supplied weights into a [`VarStore`] by name: safetensors, or a `.pth` as
//! `torch.save` wrote it (the official `pt_inception-2015-12-05-6726825d.pth`, DRN and LPIPS
//! files load as they come), told apart by content through `ugc_torch_ext::pth`.
//!
//! Pretrained evaluators cannot be downloaded here, so the file is the user's; a wrong file
//! must be refused with the names of the missing, mis-shaped and unexpected tensors rather
//! than producing silently wrong metrics. The file's BLAKE3 digest identifies the evaluator
//! in `metrics.json`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Serialize;
use tch::Tensor;
use tch::nn::VarStore;

use crate::error::{MetricsError, Result};

/// Identity of a loaded weights file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WeightsInfo {
    /// Serialised as the file name only: the digest identifies the bytes, and a full path
    /// in a stage output would make identical results differ by where the file (or the
    /// cache holding it) lies.
    #[serde(serialize_with = "file_name_only")]
    pub path: PathBuf,
    /// Hex BLAKE3 digest of the file's bytes.
    pub blake3: String,
    /// Tensors copied into the model.
    pub loaded: usize,
    /// Tensors present in the file but not used (e.g. a classifier head).
    pub ignored: Vec<String>,
}

fn file_name_only<S: serde::Serializer>(p: &Path, s: S) -> std::result::Result<S::Ok, S::Error> {
    let name = p.file_name().unwrap_or(p.as_os_str());
    s.serialize_str(&name.to_string_lossy())
}

/// What to do with a tensor of the file that the model does not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Extra {
    /// Known and harmless (e.g. `num_batches_tracked`, an unused head of the right shape).
    Ignore,
    /// Not part of this architecture: the file is refused.
    Unexpected,
    /// Known name with a wrong shape: the file is refused with this reason.
    Wrong(String),
}

const MAX_LISTED: usize = 12;

fn list(items: &[String]) -> String {
    let shown: Vec<&str> = items.iter().take(MAX_LISTED).map(String::as_str).collect();
    if items.len() > MAX_LISTED {
        format!(
            "{} (and {} more)",
            shown.join(", "),
            items.len() - MAX_LISTED
        )
    } else {
        shown.join(", ")
    }
}

/// Reads a weights file (safetensors or torch.save, by content) with the file's BLAKE3
/// digest. A leading `module.` on every name (`nn.DataParallel`) is removed.
pub fn read_weights(path: &Path, arch: &str) -> Result<(BTreeMap<String, Tensor>, String)> {
    let file_err = |reason: String| MetricsError::WeightsFile {
        path: path.to_path_buf(),
        arch: arch.to_string(),
        reason,
    };
    if !path.is_file() {
        return Err(file_err("the file does not exist".into()));
    }
    let bytes = std::fs::read(path).map_err(|e| file_err(e.to_string()))?;
    let digest = blake3::hash(&bytes).to_hex().to_string();
    drop(bytes);
    let tensors = ugc_torch_ext::pth::read_state_dict(path).map_err(|e| {
        file_err(format!(
            "not a readable safetensors or torch.save state dict ({e})"
        ))
    })?;
    let strip = !tensors.is_empty() && tensors.iter().all(|(n, _)| n.starts_with("module."));
    let file = tensors
        .into_iter()
        .map(|(n, t)| {
            let n = if strip {
                n["module.".len()..].to_string()
            } else {
                n
            };
            (n, t)
        })
        .collect();
    Ok((file, digest))
}

/// Loads `path` (safetensors or torch.save) into every variable of `vs`. `extra`
/// classifies tensors the model does not have. On any mismatch nothing is copied.
pub fn load_weights(
    vs: &mut VarStore,
    path: &Path,
    arch: &str,
    extra: impl Fn(&str, &[i64]) -> Extra,
) -> Result<WeightsInfo> {
    let (file, digest) = read_weights(path, arch)?;
    load_named(vs, path, arch, &file, digest, extra)
}

/// Copies the named tensors `file` (read from `path`, whose digest is `digest`) into every
/// variable of `vs`, refusing missing, mis-shaped and unexpected tensors by name.
pub fn load_named(
    vs: &mut VarStore,
    path: &Path,
    arch: &str,
    file: &BTreeMap<String, Tensor>,
    digest: String,
    extra: impl Fn(&str, &[i64]) -> Extra,
) -> Result<WeightsInfo> {
    let vars = vs.variables();
    let mut missing = Vec::new();
    let mut misshaped = Vec::new();
    for (name, var) in &vars {
        match file.get(name) {
            None => missing.push(name.clone()),
            Some(t) if t.size() != var.size() => misshaped.push(format!(
                "{name}: model {:?}, file {:?}",
                var.size(),
                t.size()
            )),
            Some(_) => {}
        }
    }
    let mut unexpected = Vec::new();
    let mut ignored = Vec::new();
    let model_names: BTreeSet<String> = vars.keys().cloned().collect();
    for (name, t) in file {
        if model_names.contains(name) {
            continue;
        }
        match extra(name, &t.size()) {
            Extra::Ignore => ignored.push(name.clone()),
            Extra::Unexpected => unexpected.push(name.clone()),
            Extra::Wrong(reason) => misshaped.push(format!("{name}: {reason}")),
        }
    }
    missing.sort();
    misshaped.sort();
    if !(missing.is_empty() && misshaped.is_empty() && unexpected.is_empty()) {
        let mut parts = Vec::new();
        if !missing.is_empty() {
            parts.push(format!(
                "{} missing tensors: {}",
                missing.len(),
                list(&missing)
            ));
        }
        if !misshaped.is_empty() {
            parts.push(format!(
                "{} mis-shaped tensors: {}",
                misshaped.len(),
                list(&misshaped)
            ));
        }
        if !unexpected.is_empty() {
            parts.push(format!(
                "{} unexpected tensors: {}",
                unexpected.len(),
                list(&unexpected)
            ));
        }
        return Err(MetricsError::WeightsMismatch {
            path: path.to_path_buf(),
            arch: arch.to_string(),
            details: parts.join("; "),
        });
    }
    tch::no_grad(|| -> Result<()> {
        for (name, mut var) in vars {
            let src = &file[&name];
            var.f_copy_(&src.to_kind(var.kind()).to_device(var.device()))?;
        }
        Ok(())
    })?;
    Ok(WeightsInfo {
        path: path.to_path_buf(),
        blake3: digest,
        loaded: model_names.len(),
        ignored,
    })
}
