//! Single-image inference with the official pix2pix pre/post-processing: RGB (or grey for
//! one input channel) scaled to [-1, 1] (`Normalize(0.5, 0.5)`); output mapped back with
//! `(x + 1) / 2 * 255` and truncated to 8 bits, as `util.tensor2im` does. Label-map families
//! (`pix2pixhd`, `gaugan`) read a single-channel image of class ids and one-hot encode it;
//! with `label_nc` set (or an instance map given) they build the official input: one-hot of
//! `label_nc` classes (+1 for SPADE's `contain_dontcare_label`, which label 255 maps to),
//! then the instance-edge channel of pix2pixHD's / SPADE's `get_edges` ([`instance_edges`]).
//!
//! Mode: eval by default (running BN statistics, no dropout), as SPADE's and GAN
//! Compression's test scripts run. pytorch-CycleGAN-and-pix2pix's `test.py` calls
//! `model.eval()` only with `--eval`, so its default run is train mode (batch statistics,
//! dropout on): [`InferOptions::mode`] `Mode::Train` reproduces it (`--train-mode`).

use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use crate::arch::{Arch, ArchConfig};
use crate::elastic::Mode;
use crate::error::NnError;
use crate::export::{load_model, load_weights};
use crate::subnet::SubnetConfig;

/// Optional preprocessing and the forward mode.
#[derive(Debug, Clone)]
pub struct InferOptions {
    /// Resize the input to `load_size x load_size` first (official test: 256, bicubic;
    /// nearest for label maps). `None` keeps the input size.
    pub load_size: Option<u32>,
    /// Instance map of a label-map input (e.g. Cityscapes `*_instanceIds.png`, 8 or 16 bit):
    /// its edges are the last input channel.
    pub instance: Option<PathBuf>,
    /// `Mode::Eval` (the default) or `Mode::Train` (pix2pix `test.py` without `--eval`).
    pub mode: Mode,
}

impl Default for InferOptions {
    fn default() -> Self {
        InferOptions {
            load_size: None,
            instance: None,
            mode: Mode::Eval,
        }
    }
}

/// How a label-map family's input channels are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LabelEncoding {
    /// One-hot channels (label ids `0..classes`).
    pub classes: i64,
    /// The channel label 255 goes to (SPADE's `contain_dontcare_label`: `label_nc`).
    pub dontcare: Option<i64>,
    /// Whether the instance-edge channel follows the one-hot channels.
    pub edges: bool,
}

/// The encoding of `cfg`'s input: from `label_nc` / `contain_dontcare_label` /
/// `no_instance` when `label_nc` is set; else every input channel is a class, or, when an
/// instance map is given, all but the last (the edges). An instance map that the config
/// has no channel for, or a missing one it needs, is an error naming the option.
pub fn label_encoding(cfg: &ArchConfig, has_instance: bool) -> Result<LabelEncoding, NnError> {
    match cfg.label_nc {
        Some(n) => {
            let edges = !cfg.no_instance;
            if edges && !has_instance {
                return Err(NnError::config(
                    "instance",
                    "none",
                    format!(
                        "{} with label_nc {n} and instance edges (no_instance unset) needs an instance map (--instance)",
                        cfg.arch
                    ),
                ));
            }
            if !edges && has_instance {
                return Err(NnError::config(
                    "instance",
                    "given",
                    "no_instance is set, so the network has no edge channel; drop the instance map",
                ));
            }
            Ok(LabelEncoding {
                classes: n + i64::from(cfg.contain_dontcare_label),
                dontcare: cfg.contain_dontcare_label.then_some(n),
                edges,
            })
        }
        None if has_instance => {
            if cfg.input_nc < 2 {
                return Err(NnError::config(
                    "input_nc",
                    cfg.input_nc,
                    "an instance map needs one edge channel besides the label channels",
                ));
            }
            Ok(LabelEncoding {
                classes: cfg.input_nc - 1,
                dontcare: None,
                edges: true,
            })
        }
        None => Ok(LabelEncoding {
            classes: cfg.input_nc,
            dontcare: None,
            edges: false,
        }),
    }
}

/// pix2pixHD's / SPADE's `get_edges` of an id map `[N, 1, H, W]`: a pixel is an edge (1.0)
/// when its id differs from its right, left, lower or upper neighbour.
pub fn instance_edges(t: &Tensor) -> Tensor {
    let s = t.size();
    let (h, w) = (s[2], s[3]);
    let mut e = Tensor::zeros(s.as_slice(), (Kind::Bool, t.device()));
    if w > 1 {
        let d = t.narrow(3, 1, w - 1).ne_tensor(&t.narrow(3, 0, w - 1));
        e = e
            .logical_or(&d.constant_pad_nd([1, 0, 0, 0]))
            .logical_or(&d.constant_pad_nd([0, 1, 0, 0]));
    }
    if h > 1 {
        let d = t.narrow(2, 1, h - 1).ne_tensor(&t.narrow(2, 0, h - 1));
        e = e
            .logical_or(&d.constant_pad_nd([0, 0, 1, 0]))
            .logical_or(&d.constant_pad_nd([0, 0, 0, 1]));
    }
    e.to_kind(Kind::Float)
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
    /// `eval` or `train` (see [`InferOptions::mode`]).
    pub mode: &'static str,
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
    if let Some(s) = opts.load_size
        && s == 0
    {
        return Err(NnError::config("load_size", s, "must be positive"));
    }
    let label = is_label_arch(cfg.arch);
    let resize = |img: image::DynamicImage, nearest: bool| match opts.load_size {
        Some(s) => img.resize_exact(
            s,
            s,
            if nearest {
                FilterType::Nearest
            } else {
                FilterType::CatmullRom
            },
        ),
        None => img,
    };
    let img = resize(image::open(path).map_err(|e| img_err(path, e))?, label);
    let (w, h) = (img.width() as i64, img.height() as i64);
    if label {
        let enc = label_encoding(cfg, opts.instance.is_some())?;
        let mut ids: Vec<i64> = img
            .to_luma8()
            .into_raw()
            .into_iter()
            .map(i64::from)
            .collect();
        if let Some(d) = enc.dontcare {
            // SPADE: label_tensor[label_tensor == 255] = label_nc.
            for v in ids.iter_mut().filter(|v| **v == 255) {
                *v = d;
            }
        }
        if let Some(&bad) = ids.iter().find(|&&v| v >= enc.classes) {
            let why = match cfg.label_nc {
                Some(n) if bad == 255 => format!(
                    "label id 255 (`unknown`) has no channel: label_nc {n} without contain_dontcare_label"
                ),
                Some(n) => format!("label id {bad} is out of range for label_nc {n}"),
                None if enc.edges => format!(
                    "label id {bad} is out of range for {} label channels (input_nc {} less the edge channel)",
                    enc.classes, cfg.input_nc
                ),
                None => format!(
                    "label id {bad} is out of range for input_nc {}",
                    cfg.input_nc
                ),
            };
            return Err(img_err(path, why));
        }
        let onehot = Tensor::from_slice(&ids)
            .view([1, h, w])
            .one_hot(enc.classes)
            .permute([0, 3, 1, 2])
            .to_kind(Kind::Float);
        if !enc.edges {
            return Ok(onehot);
        }
        let ipath = opts.instance.as_deref().expect("label_encoding checked it");
        let inst = resize(image::open(ipath).map_err(|e| img_err(ipath, e))?, true);
        if (inst.width() as i64, inst.height() as i64) != (w, h) {
            return Err(img_err(
                ipath,
                format!(
                    "the instance map is {}x{}, the label map {} is {w}x{h}",
                    inst.width(),
                    inst.height(),
                    path.display()
                ),
            ));
        }
        let inst: Vec<i32> = inst
            .to_luma16()
            .into_raw()
            .into_iter()
            .map(i32::from)
            .collect();
        let edges = instance_edges(&Tensor::from_slice(&inst).view([1, 1, h, w]));
        return Ok(Tensor::cat(&[onehot, edges], 1));
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
/// `torch.save` `.pth`, see [`crate::pth`]; GauGAN's spectral norm is folded as `import`
/// folds it, [`crate::export::read_checkpoint`]), or an exported
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
    let y = tch::no_grad(|| g.forward(&x, &sub, opts.mode)).map_err(|e| match e {
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
        mode: if opts.mode == Mode::Train {
            "train"
        } else {
            "eval"
        },
    })
}
