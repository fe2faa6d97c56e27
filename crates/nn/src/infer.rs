//! Single-image inference with the official pix2pix pre/post-processing: RGB (or grey for
//! one input channel) scaled to [-1, 1] (`Normalize(0.5, 0.5)`); output mapped back with
//! `(x + 1) / 2 * 255` and truncated to 8 bits, as `util.tensor2im` does. Label-map families
//! (`pix2pixhd`, `gaugan`) read a single-channel image of class ids and one-hot encode it
//! into `input_nc` channels.

use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use crate::arch::{Arch, ArchConfig};
use crate::elastic::Mode;
use crate::error::NnError;
use crate::export::{load_model, load_weights};
use crate::subnet::SubnetConfig;

/// Optional preprocessing.
#[derive(Debug, Clone, Default)]
pub struct InferOptions {
    /// Resize the input to `load_size x load_size` first (official test: 256, bicubic;
    /// nearest for label maps). `None` keeps the input size.
    pub load_size: Option<u32>,
}

/// What `infer_image` did (serialisable for `--json`).
#[derive(Debug, Clone, Serialize)]
pub struct InferReport {
    pub input: PathBuf,
    pub output: PathBuf,
    pub arch: Arch,
    pub subnet: String,
    /// `[height, width]` fed to the network.
    pub size: [u32; 2],
    pub device: String,
}

fn img_err(path: &Path, reason: impl ToString) -> NnError {
    NnError::Image {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn is_label_arch(arch: Arch) -> bool {
    matches!(arch, Arch::Pix2PixHd | Arch::Gaugan)
}

/// Reads and preprocesses `path` into a `[1, C, H, W]` tensor for `cfg`.
pub fn load_input(cfg: &ArchConfig, path: &Path, opts: &InferOptions) -> Result<Tensor, NnError> {
    let mut img = image::open(path).map_err(|e| img_err(path, e))?;
    if let Some(s) = opts.load_size {
        if s == 0 {
            return Err(NnError::config("load_size", s, "must be positive"));
        }
        let filter = if is_label_arch(cfg.arch) {
            FilterType::Nearest
        } else {
            FilterType::CatmullRom
        };
        img = img.resize_exact(s, s, filter);
    }
    let (w, h) = (img.width() as i64, img.height() as i64);
    if is_label_arch(cfg.arch) {
        let ids = img.to_luma8().into_raw();
        if let Some(&bad) = ids.iter().find(|&&v| i64::from(v) >= cfg.input_nc) {
            return Err(img_err(
                path,
                format!(
                    "label id {bad} is out of range for input_nc {}",
                    cfg.input_nc
                ),
            ));
        }
        let t = Tensor::from_slice(&ids)
            .to_kind(Kind::Int64)
            .view([1, h, w]);
        return Ok(t
            .one_hot(cfg.input_nc)
            .permute([0, 3, 1, 2])
            .to_kind(Kind::Float));
    }
    let (raw, c) = match cfg.input_nc {
        3 => (img.to_rgb8().into_raw(), 3),
        1 => (img.to_luma8().into_raw(), 1),
        n => {
            return Err(NnError::config(
                "input_nc",
                n,
                "image inference needs 1 (grey) or 3 (RGB) input channels",
            ));
        }
    };
    let t = Tensor::from_slice(&raw)
        .view([h, w, c])
        .permute([2, 0, 1])
        .unsqueeze(0);
    Ok(t.to_kind(Kind::Float) / 255.0 * 2.0 - 1.0)
}

/// Writes a `[1, C, H, W]` output in [-1, 1] as an 8-bit image (C = 1 or 3).
pub fn save_output(y: &Tensor, path: &Path) -> Result<(), NnError> {
    let s = y.size();
    if s.len() != 4 || s[0] != 1 || !(s[1] == 1 || s[1] == 3) {
        return Err(img_err(
            path,
            format!("cannot write an output of shape {s:?}"),
        ));
    }
    let (c, h, w) = (s[1], s[2] as u32, s[3] as u32);
    let v = ((y.get(0).to_device(Device::Cpu) + 1.0) / 2.0 * 255.0)
        .clamp(0.0, 255.0)
        .to_kind(Kind::Uint8) // truncates, as numpy's astype(uint8)
        .permute([1, 2, 0])
        .contiguous()
        .view([-1]);
    let bytes = Vec::<u8>::try_from(&v).map_err(|e| img_err(path, e))?;
    let res = if c == 3 {
        image::RgbImage::from_raw(w, h, bytes).map(|i| i.save(path))
    } else {
        image::GrayImage::from_raw(w, h, bytes).map(|i| i.save(path))
    };
    match res {
        Some(Ok(())) => Ok(()),
        Some(Err(e)) => Err(img_err(path, e)),
        None => Err(img_err(path, "output buffer size mismatch")),
    }
}

/// Runs sub-net `sub` (the full model when `None`) of `cfg` with `weights` on one image.
/// `weights` is a weights file with the architecture's tensor names (safetensors or a
/// `torch.save` `.pth`, see [`crate::pth`]), or an exported
/// model directory (then its `model.json` must name the same family, and `sub` must be
/// `None`: the compact model is run whole).
pub fn infer_image(
    cfg: &ArchConfig,
    sub: Option<&SubnetConfig>,
    weights: &Path,
    input: &Path,
    output: &Path,
    device: Device,
    opts: &InferOptions,
) -> Result<InferReport, NnError> {
    let (cfg, model) = if weights.is_dir() {
        let (meta, model) = load_model(weights, device)?;
        if meta.arch.arch != cfg.arch {
            return Err(NnError::config(
                "arch",
                cfg.arch,
                format!("{} holds a {} model", weights.display(), meta.arch.arch),
            ));
        }
        if sub.is_some() {
            return Err(NnError::config(
                "config",
                sub.map(|s| s.to_string()).unwrap_or_default(),
                "an exported model runs whole; drop --config",
            ));
        }
        (meta.arch, model)
    } else {
        (cfg.clone(), load_weights(cfg, weights, device)?)
    };
    let g = &model.generator;
    let sub = match sub {
        Some(s) => s.clone(),
        None => g.search_space().largest(),
    };
    let x = load_input(&cfg, input, opts)?.to_device(device);
    let y = tch::no_grad(|| g.forward(&x, &sub, Mode::Eval)).map_err(|e| match e {
        NnError::BadInput { reason, .. } => img_err(input, reason),
        e => e,
    })?;
    save_output(&y, output)?;
    let s = x.size();
    Ok(InferReport {
        input: input.to_path_buf(),
        output: output.to_path_buf(),
        arch: cfg.arch,
        subnet: sub.to_string(),
        size: [s[2] as u32, s[3] as u32],
        device: format!("{device:?}"),
    })
}
