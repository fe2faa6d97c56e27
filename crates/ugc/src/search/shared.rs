//! Inputs shared by the stage kinds of this module family (search, teachers, adf, distill).

use std::path::Path;

use serde::Serialize;
use tch::{Device, nn::VarStore};
use ugc_data::{InputEncoding, Loader, LoaderConfig, SplitManifest, Subset};
use ugc_engine::StageError;
use ugc_nn::{ArchConfig, Generator, build_generator};

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StageError + '_ {
    move |e| StageError::io(path.display().to_string(), e)
}

pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, StageError> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    serde_json::from_str(&text).map_err(|e| StageError::Data(format!("{}: {e}", path.display())))
}

pub(crate) fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<(), StageError> {
    let text = serde_json::to_string_pretty(v)
        .map_err(|e| StageError::Failed(format!("serialising {}: {e}", path.display())))?;
    std::fs::write(path, text).map_err(io_err(path))
}

pub(crate) fn nn_err(
    context: impl std::fmt::Display,
) -> impl FnOnce(ugc_nn::NnError) -> StageError {
    move |e| StageError::Failed(format!("{context}: {e}"))
}

pub(crate) fn data_err(
    context: impl std::fmt::Display,
) -> impl FnOnce(ugc_data::DataError) -> StageError {
    move |e| StageError::Data(format!("{context}: {e}"))
}

/// A supernet stage's weights, loaded: `supernet/arch.json` + `supernet/generator.safetensors`.
pub struct LoadedSupernet {
    pub arch: ArchConfig,
    pub vs: VarStore,
    pub generator: Box<dyn Generator>,
}

/// Loads the generator supernet from a `supernet` stage output folder.
pub fn load_supernet(dir: &Path, device: Device) -> Result<LoadedSupernet, StageError> {
    let arch: ArchConfig = read_json(&dir.join("supernet/arch.json"))?;
    let mut vs = VarStore::new(device);
    let generator = build_generator(&vs.root(), &arch).map_err(nn_err(format!(
        "{}",
        dir.join("supernet/arch.json").display()
    )))?;
    let w = dir.join("supernet/generator.safetensors");
    vs.load(&w)
        .map_err(|e| StageError::Data(format!("{}: {e}", w.display())))?;
    Ok(LoadedSupernet {
        arch,
        vs,
        generator,
    })
}

/// How a split's inputs are encoded for a generator of `arch`.
pub fn input_encoding(arch: &ArchConfig, m: &SplitManifest) -> Result<InputEncoding, StageError> {
    // The same rule the supernet stage trained with (`setup::encoding_for`).
    Ok(crate::setup::encoding_for(arch, m)?)
}

/// How evaluation batches are prepared: the generator's input encoding, an optional square
/// resize (as the supernet trained), and the device.
#[derive(Debug, Clone, Copy)]
pub struct EvalSpec {
    pub encoding: InputEncoding,
    pub image_size: Option<u32>,
    pub device: Device,
}

/// Reads up to `max_batches` batches of a subset (fixed order, no augmentation) into memory.
pub fn read_batches(
    manifest: &SplitManifest,
    split_dir: &Path,
    subset: Subset,
    batch_size: usize,
    max_batches: usize,
    spec: &EvalSpec,
) -> Result<Vec<ugc_data::Batch>, StageError> {
    let mut cfg = LoaderConfig {
        encoding: spec.encoding,
        device: spec.device,
        threads: 1,
        ..LoaderConfig::eval(batch_size)
    };
    cfg.augment.load_size = spec.image_size.map(|s| (s, s));
    let loader = Loader::new(manifest, split_dir, subset, cfg).map_err(data_err(format!(
        "{subset:?} loader of {}",
        split_dir.display()
    )))?;
    let mut out = Vec::new();
    for b in loader.epoch(0).take(max_batches) {
        out.push(b.map_err(data_err(format!(
            "{subset:?} batch of {}",
            split_dir.display()
        )))?);
    }
    Ok(out)
}
