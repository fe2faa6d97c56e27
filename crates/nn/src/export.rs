//! Export of sub-nets as standalone compact models, loading them back, and checking a
//! weights file (e.g. an official checkpoint: safetensors, or a `.pth` as `torch.save`
//! wrote it, told apart by content) against an architecture by tensor name and shape.
//!
//! A model directory holds `model.safetensors` (contiguous tensors, official names) and
//! `model.json`: `{"format": "ugc-nn-model", "version": 1, "arch": <ArchConfig>,
//! "source_subnet": "w=..;d=..", "params": N}`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor, nn::VarStore};

use crate::arch::{Arch, ArchConfig};
use crate::error::NnError;
use crate::generator::{Generator, build_generator};
use crate::pth::{self, WeightsFormat};
use crate::subnet::SubnetConfig;

/// Named tensors, as a weights file holds them.
pub type Tensors = Vec<(String, Tensor)>;

pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const META_FILE: &str = "model.json";
const FORMAT: &str = "ugc-nn-model";
const VERSION: u32 = 1;

/// `model.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelMeta {
    pub format: String,
    pub version: u32,
    pub arch: ArchConfig,
    /// The sub-net of the supernet this model was exported from.
    pub source_subnet: String,
    /// Learnable parameters of the compact model.
    pub params: u64,
}

/// A tensor whose shape differs between file and architecture.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MisShaped {
    pub name: String,
    pub expected: Vec<i64>,
    pub found: Vec<i64>,
}

/// Result of comparing a weights file with an architecture, every problem by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightsReport {
    /// Tensors the architecture needs that the file lacks.
    pub missing: Vec<String>,
    /// Tensors in the file the architecture does not have.
    pub unexpected: Vec<String>,
    pub mis_shaped: Vec<MisShaped>,
    /// Number of tensors that matched by name and shape.
    pub matched: usize,
}

impl WeightsReport {
    pub fn is_ok(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.mis_shaped.is_empty()
    }
}

impl fmt::Display for WeightsReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} tensors match", self.matched)?;
        for n in &self.missing {
            writeln!(f, "missing: {n}")?;
        }
        for n in &self.unexpected {
            writeln!(f, "unexpected: {n}")?;
        }
        for m in &self.mis_shaped {
            writeln!(
                f,
                "mis-shaped: {} expected {:?} found {:?}",
                m.name, m.expected, m.found
            )?;
        }
        Ok(())
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> NnError + '_ {
    move |source| NnError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Names and shapes a generator of `cfg` creates (built on the CPU; nothing is run).
pub fn expected_tensors(cfg: &ArchConfig) -> Result<BTreeMap<String, Vec<i64>>, NnError> {
    let vs = VarStore::new(Device::Cpu);
    let _g = tch::no_grad(|| build_generator(&vs.root(), cfg))?;
    Ok(vs
        .variables()
        .into_iter()
        .map(|(k, v)| (k, v.size()))
        .collect())
}

/// Names and shapes stored in a weights file: a safetensors header, or the pickle of a
/// `torch.save` state dict (see [`crate::pth`]); no tensor data is read.
pub fn file_tensors(file: &Path) -> Result<BTreeMap<String, Vec<i64>>, NnError> {
    if pth::sniff_format(file)? != WeightsFormat::Safetensors {
        return pth::torch_shapes(file);
    }
    let bytes = std::fs::read(file).map_err(io_err(file))?;
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| NnError::Weights {
            path: file.to_path_buf(),
            reason: format!("not a safetensors file: {e}"),
        })?;
    Ok(meta
        .tensors()
        .into_iter()
        .map(|(k, info)| (k, info.shape.iter().map(|&d| d as i64).collect()))
        .collect())
}

/// The tensors of a weights file in any format [`file_tensors`] reads, on the CPU, with the
/// names the architecture uses (a `torch.save` file's `module.` prefix removed).
pub fn read_weights(file: &Path) -> Result<Vec<(String, Tensor)>, NnError> {
    Ok(ugc_torch_ext::pth::read_state_dict(file)?)
}

/// Copies `tensors` into the variables of `vs` by name, as `VarStore::load` does (each
/// variable takes the file's dtype, then its values), so a safetensors file loads to the
/// same bits either way. Every variable must be present.
pub fn load_into(
    vs: &mut VarStore,
    tensors: &[(String, Tensor)],
    file: &Path,
) -> Result<(), NnError> {
    let by_name: std::collections::HashMap<&str, &Tensor> =
        tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut vars = vs.variables();
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    let names: Vec<String> = names.into_iter().cloned().collect();
    for name in names {
        let src = by_name
            .get(name.as_str())
            .ok_or_else(|| NnError::WeightsMismatch {
                path: file.to_path_buf(),
                summary: format!("missing: {name}"),
            })?;
        let var = vars.get_mut(&name).expect("a listed variable");
        tch::no_grad(|| {
            var.set_data(&var.to_kind(src.kind()));
            var.f_copy_(src)
        })
        .map_err(|e| NnError::torch(format!("loading `{name}` from {}", file.display()), e))?;
    }
    Ok(())
}

/// Compares `file` with the tensors of `cfg`, reporting every missing, unexpected or
/// mis-shaped tensor by name (names and shapes only: no tensor data is read, and spectral
/// norm is not folded; [`read_checkpoint`] + [`check_tensors`] do both).
pub fn check_weights(cfg: &ArchConfig, file: &Path) -> Result<WeightsReport, NnError> {
    Ok(compare(&expected_tensors(cfg)?, &file_tensors(file)?))
}

/// Compares in-memory `tensors` (e.g. from [`read_checkpoint`]) with the tensors of `cfg`.
pub fn check_tensors(
    cfg: &ArchConfig,
    tensors: &[(String, Tensor)],
) -> Result<WeightsReport, NnError> {
    let have: BTreeMap<String, Vec<i64>> =
        tensors.iter().map(|(n, t)| (n.clone(), t.size())).collect();
    Ok(compare(&expected_tensors(cfg)?, &have))
}

fn compare(want: &BTreeMap<String, Vec<i64>>, have: &BTreeMap<String, Vec<i64>>) -> WeightsReport {
    let mut r = WeightsReport::default();
    for (name, shape) in want {
        match have.get(name) {
            None => r.missing.push(name.clone()),
            Some(s) if s != shape => r.mis_shaped.push(MisShaped {
                name: name.clone(),
                expected: shape.clone(),
                found: s.clone(),
            }),
            Some(_) => r.matched += 1,
        }
    }
    r.unexpected = have
        .keys()
        .filter(|k| !want.contains_key(*k))
        .cloned()
        .collect();
    r
}

/// The tensors of a checkpoint as `cfg` takes them: [`read_weights`], then, for GauGAN
/// with a spectral `norm_g` (the official default), every `weight_orig/u/v` triple folded
/// into its eval-mode `weight` ([`crate::spade::fold_spectral_norm`]), as SPADE's
/// `latest_net_G.pth` comes. Returns the folded layer prefixes too (empty when none).
/// A non-spectral `norm_g` folds nothing, so such a file's triples stay unexpected.
pub fn read_checkpoint(cfg: &ArchConfig, file: &Path) -> Result<(Tensors, Vec<String>), NnError> {
    let mut tensors = read_weights(file)?;
    let folded = if cfg.arch == Arch::Gaugan && cfg.norm_g.spectral() {
        crate::spade::fold_spectral_norm(&mut tensors).map_err(|e| match e {
            NnError::Unsupported(msg) => NnError::Unsupported(format!("{}: {msg}", file.display())),
            e => e,
        })?
    } else {
        Vec::new()
    };
    Ok((tensors, folded))
}

/// A generator with its weights loaded.
pub struct LoadedModel {
    /// Owns the tensors (keep it alive while using `generator`, e.g. to move devices).
    pub vs: VarStore,
    pub generator: Box<dyn Generator>,
}

/// Builds `cfg` on `device` and loads `file` ([`read_checkpoint`]: any format, spectral
/// norm folded for GauGAN) after checking it; a mismatch is an error that lists every bad
/// tensor.
pub fn load_weights(cfg: &ArchConfig, file: &Path, device: Device) -> Result<LoadedModel, NnError> {
    let (tensors, _) = read_checkpoint(cfg, file)?;
    load_tensors(cfg, &tensors, file, device)
}

/// Builds `cfg` on `device` and loads `tensors` (read from `file`, named in errors) after
/// checking them against it.
pub fn load_tensors(
    cfg: &ArchConfig,
    tensors: &[(String, Tensor)],
    file: &Path,
    device: Device,
) -> Result<LoadedModel, NnError> {
    let report = check_tensors(cfg, tensors)?;
    if !report.is_ok() {
        return Err(NnError::WeightsMismatch {
            path: file.to_path_buf(),
            summary: report.to_string(),
        });
    }
    let mut vs = VarStore::new(device);
    let generator = build_generator(&vs.root(), cfg)?;
    load_into(&mut vs, tensors, file)?;
    Ok(LoadedModel { vs, generator })
}

/// Writes sub-net `sub` of `gen` as a compact model into `dir` (created if needed).
pub fn export_subnet(
    gen_: &dyn Generator,
    sub: &SubnetConfig,
    dir: &Path,
) -> Result<ModelMeta, NnError> {
    let cfg = gen_.compact_config(sub)?;
    let tensors: Vec<(String, Tensor)> = gen_
        .extract(sub)?
        .into_iter()
        .map(|(n, t)| (n, t.to_device(Device::Cpu)))
        .collect();
    // Guard the contract: the compact architecture must have exactly these tensors.
    let want = expected_tensors(&cfg)?;
    let got: BTreeMap<String, Vec<i64>> =
        tensors.iter().map(|(n, t)| (n.clone(), t.size())).collect();
    if want != got {
        return Err(NnError::Unsupported(format!(
            "internal: extracted tensors of {} do not match its compact architecture",
            cfg.arch
        )));
    }
    let params = tensors
        .iter()
        .filter(|(n, t)| {
            t.kind() != Kind::Int64 && !n.ends_with("running_mean") && !n.ends_with("running_var")
        })
        .map(|(_, t)| t.numel() as u64)
        .sum();
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let wpath = dir.join(WEIGHTS_FILE);
    Tensor::write_safetensors(&tensors, &wpath)
        .map_err(|e| NnError::torch(format!("writing {}", wpath.display()), e))?;
    let meta = ModelMeta {
        format: FORMAT.into(),
        version: VERSION,
        arch: cfg,
        source_subnet: sub.to_string(),
        params,
    };
    let mpath = dir.join(META_FILE);
    let text = serde_json::to_string_pretty(&meta).map_err(|e| NnError::Json {
        path: mpath.clone(),
        source: e,
    })?;
    std::fs::write(&mpath, text).map_err(io_err(&mpath))?;
    Ok(meta)
}

/// Reads `dir/model.json`.
pub fn read_meta(dir: &Path) -> Result<ModelMeta, NnError> {
    let mpath: PathBuf = dir.join(META_FILE);
    let text = std::fs::read_to_string(&mpath).map_err(io_err(&mpath))?;
    let meta: ModelMeta = serde_json::from_str(&text).map_err(|e| NnError::Json {
        path: mpath.clone(),
        source: e,
    })?;
    if meta.format != FORMAT || meta.version != VERSION {
        return Err(NnError::config(
            "format",
            format!("{} v{}", meta.format, meta.version),
            format!("{} expects {FORMAT} v{VERSION}", mpath.display()),
        ));
    }
    Ok(meta)
}

/// Loads an exported model directory; run it with `generator.search_space().largest()`.
pub fn load_model(dir: &Path, device: Device) -> Result<(ModelMeta, LoadedModel), NnError> {
    let meta = read_meta(dir)?;
    let model = load_weights(&meta.arch, &dir.join(WEIGHTS_FILE), device)?;
    Ok((meta, model))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_is_not_safetensors_is_a_weights_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("g.safetensors");
        std::fs::write(&f, b"garbage").unwrap();
        let e = file_tensors(&f).unwrap_err();
        assert!(matches!(e, NnError::Weights { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!("weights file {}", f.display())),
            "{msg}"
        );
    }
}
