//! LPIPS (Zhang et al. 2018) exactly as the `lpips` package (v0.1) computes it: the scaling
//! layer, AlexNet or VGG-16 features at five ReLUs (torchvision's layers, the package's
//! `slice1..slice5`), each unit-normalised over channels (`x / (|x| + 1e-10)`), squared
//! difference, the 1x1 `lin` layer, spatial mean, and the sum over the five layers.
//!
//! Weights are the user's, in the package's layout: a state dict of `lpips.LPIPS(net=..)`
//! (`net.sliceS.I.*` + `linK.model.1.weight`), or the package's own `weights/v0.1/alex.pth`
//! (the `lin` layers only) together with torchvision's backbone file (`features.I.*`).

use std::collections::BTreeMap;
use std::path::Path;

use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

use crate::error::{MetricsError, Result};
use crate::weights::{Extra, WeightsInfo, load_named, read_weights};

/// The backbone of an LPIPS model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LpipsBackbone {
    Alex,
    Vgg,
}

/// One conv of the torchvision `features` list: (index, c_in, c_out, kernel, stride, pad).
type ConvSpec = (usize, i64, i64, i64, i64, i64);

/// One layer of a slice, in torchvision's order.
#[derive(Debug, Clone, Copy)]
enum Op {
    Conv(ConvSpec),
    Relu,
    /// Max pool (kernel, stride).
    Pool(i64, i64),
}

impl LpipsBackbone {
    /// The five slices as the package cuts torchvision's `features`.
    fn slices(self) -> Vec<Vec<Op>> {
        use Op::*;
        match self {
            LpipsBackbone::Alex => vec![
                vec![Conv((0, 3, 64, 11, 4, 2)), Relu],
                vec![Pool(3, 2), Conv((3, 64, 192, 5, 1, 2)), Relu],
                vec![Pool(3, 2), Conv((6, 192, 384, 3, 1, 1)), Relu],
                vec![Conv((8, 384, 256, 3, 1, 1)), Relu],
                vec![Conv((10, 256, 256, 3, 1, 1)), Relu],
            ],
            LpipsBackbone::Vgg => {
                let c = |i, a, b| Conv((i, a, b, 3, 1, 1));
                vec![
                    vec![c(0, 3, 64), Relu, c(2, 64, 64), Relu],
                    vec![Pool(2, 2), c(5, 64, 128), Relu, c(7, 128, 128), Relu],
                    vec![
                        Pool(2, 2),
                        c(10, 128, 256),
                        Relu,
                        c(12, 256, 256),
                        Relu,
                        c(14, 256, 256),
                        Relu,
                    ],
                    vec![
                        Pool(2, 2),
                        c(17, 256, 512),
                        Relu,
                        c(19, 512, 512),
                        Relu,
                        c(21, 512, 512),
                        Relu,
                    ],
                    vec![
                        Pool(2, 2),
                        c(24, 512, 512),
                        Relu,
                        c(26, 512, 512),
                        Relu,
                        c(28, 512, 512),
                        Relu,
                    ],
                ]
            }
        }
    }

    /// Channels of the five feature maps (`chns` in the package).
    pub fn channels(self) -> [i64; 5] {
        match self {
            LpipsBackbone::Alex => [64, 192, 384, 256, 256],
            LpipsBackbone::Vgg => [64, 128, 256, 512, 512],
        }
    }

    /// Which slice holds torchvision's `features.<index>`.
    fn slice_of(self, index: usize) -> Option<usize> {
        self.slices().iter().position(|s| {
            s.iter()
                .any(|op| matches!(op, Op::Conv((i, ..)) if *i == index))
        })
    }
}

/// The package's `ScalingLayer` constants (inputs in [-1, 1]).
const SHIFT: [f64; 3] = [-0.030, -0.088, -0.188];
const SCALE: [f64; 3] = [0.458, 0.448, 0.450];

enum Layer {
    Conv(nn::Conv2D),
    Relu,
    Pool(i64, i64),
}

/// An LPIPS model with loaded weights.
pub struct Lpips {
    vs: nn::VarStore,
    slices: Vec<Vec<Layer>>,
    lins: Vec<Tensor>,
    backbone: LpipsBackbone,
    weights: Vec<WeightsInfo>,
}

impl std::fmt::Debug for Lpips {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lpips")
            .field("backbone", &self.backbone)
            .field("weights", &self.weights)
            .finish()
    }
}

/// Maps a tensor name of the user's file(s) to the package's state-dict name, or `None`
/// for names that are not part of the metric (torchvision's `classifier.*`).
fn canonical_name(backbone: LpipsBackbone, name: &str) -> Option<String> {
    if let Some(rest) = name.strip_prefix("features.") {
        let (idx, leaf) = rest.split_once('.')?;
        let slice = backbone.slice_of(idx.parse().ok()?)?;
        return Some(format!("net.slice{}.{idx}.{leaf}", slice + 1));
    }
    if name.starts_with("classifier.") {
        return None;
    }
    // The package's state dict holds each lin twice: `linK` and the `lins.K` ModuleList
    // alias. NetLinLayer without dropout puts its conv at index 0; with it (the default),
    // at 1.
    let name = match name.strip_prefix("lins.") {
        Some(rest) => format!("lin{rest}"),
        None => name.to_string(),
    };
    for k in 0..5 {
        if name == format!("lin{k}.model.0.weight") {
            return Some(format!("lin{k}.model.1.weight"));
        }
    }
    Some(name)
}

impl Lpips {
    /// Builds the network and loads `weights` (and `backbone_file`, torchvision's
    /// `alexnet`/`vgg16` state dict, when `weights` holds only the `lin` layers).
    pub fn load(
        backbone: LpipsBackbone,
        weights: &Path,
        backbone_file: Option<&Path>,
        device: Device,
    ) -> Result<Self> {
        let arch = match backbone {
            LpipsBackbone::Alex => "LPIPS (AlexNet, lpips v0.1)",
            LpipsBackbone::Vgg => "LPIPS (VGG-16, lpips v0.1)",
        };
        let mut vs = nn::VarStore::new(device);
        let root = vs.root();
        let slices: Vec<Vec<Layer>> = backbone
            .slices()
            .iter()
            .enumerate()
            .map(|(s, ops)| {
                ops.iter()
                    .map(|op| match *op {
                        Op::Conv((i, ci, co, k, st, pad)) => Layer::Conv(nn::conv2d(
                            &root / "net" / format!("slice{}", s + 1) / i.to_string(),
                            ci,
                            co,
                            k,
                            nn::ConvConfig {
                                stride: st,
                                padding: pad,
                                ..Default::default()
                            },
                        )),
                        Op::Relu => Layer::Relu,
                        Op::Pool(k, st) => Layer::Pool(k, st),
                    })
                    .collect()
            })
            .collect();
        let lins: Vec<Tensor> = backbone
            .channels()
            .iter()
            .enumerate()
            .map(|(k, &c)| {
                (&root / format!("lin{k}") / "model" / "1").var(
                    "weight",
                    &[1, c, 1, 1],
                    nn::Init::Const(0.0),
                )
            })
            .collect();
        let mut files = vec![(weights.to_path_buf(), read_weights(weights, arch)?)];
        if let Some(b) = backbone_file {
            files.push((b.to_path_buf(), read_weights(b, arch)?));
        }
        let mut merged: BTreeMap<String, Tensor> = BTreeMap::new();
        let mut digests = Vec::new();
        for (path, (tensors, digest)) in &files {
            for (name, t) in tensors {
                let Some(canon) = canonical_name(backbone, name) else {
                    continue;
                };
                if let Some(prev) = merged.get(&canon) {
                    // The same tensor under its alias (`lins.K` for `linK`) is no conflict.
                    if prev.size() == t.size() && prev.equal(t) {
                        continue;
                    }
                    return Err(MetricsError::WeightsFile {
                        path: path.clone(),
                        arch: arch.into(),
                        reason: format!("`{canon}` is given twice with different values"),
                    });
                }
                merged.insert(canon, t.shallow_clone());
            }
            digests.push((path.clone(), digest.clone()));
        }
        let scaling = |name: &str, shape: &[i64]| -> Extra {
            if (name == "scaling_layer.shift" || name == "scaling_layer.scale")
                && shape == [1, 3, 1, 1]
            {
                Extra::Ignore
            } else {
                Extra::Unexpected
            }
        };
        // The message names the first file; with a backbone file both are named.
        let shown = if files.len() == 2 {
            std::path::PathBuf::from(format!(
                "{} + {}",
                files[0].0.display(),
                files[1].0.display()
            ))
        } else {
            files[0].0.clone()
        };
        let info = load_named(
            &mut vs,
            &shown,
            arch,
            &merged,
            digests[0].1.clone(),
            scaling,
        )?;
        let mut infos = vec![WeightsInfo {
            path: digests[0].0.clone(),
            ..info
        }];
        if let Some((p, d)) = digests.get(1) {
            infos.push(WeightsInfo {
                path: p.clone(),
                blake3: d.clone(),
                loaded: 0,
                ignored: vec![],
            });
        }
        vs.freeze();
        Ok(Lpips {
            vs,
            slices,
            lins,
            backbone,
            weights: infos,
        })
    }

    pub fn backbone(&self) -> LpipsBackbone {
        self.backbone
    }

    /// The weights files and their digests.
    pub fn weights(&self) -> &[WeightsInfo] {
        &self.weights
    }

    fn feature_maps(&self, x: &Tensor) -> Vec<Tensor> {
        let mut h = x.shallow_clone();
        let mut out = Vec::with_capacity(5);
        for slice in &self.slices {
            for layer in slice {
                h = match layer {
                    Layer::Conv(c) => c.forward(&h),
                    Layer::Relu => h.relu(),
                    Layer::Pool(k, s) => h.max_pool2d([*k, *k], [*s, *s], [0, 0], [1, 1], false),
                };
            }
            out.push(h.shallow_clone());
        }
        out
    }

    /// LPIPS per pair of `N x 3 x H x W` images in [-1, 1] (float32, the package's input).
    pub fn distance(&self, x0: &Tensor, x1: &Tensor) -> Result<Vec<f64>> {
        let (s0, s1) = (x0.size(), x1.size());
        if s0.len() != 4 || s0[1] != 3 || s0 != s1 {
            return Err(MetricsError::Mismatch(format!(
                "LPIPS needs two N x 3 x H x W batches of one shape, got {s0:?} and {s1:?}"
            )));
        }
        let dev = self.vs.device();
        let opts = (Kind::Float, dev);
        let shift = Tensor::from_slice(&SHIFT)
            .to_kind(Kind::Float)
            .to_device(dev)
            .view([1, 3, 1, 1]);
        let scale = Tensor::from_slice(&SCALE)
            .to_kind(Kind::Float)
            .to_device(dev)
            .view([1, 3, 1, 1]);
        let d = tch::no_grad(|| {
            let prep = |x: &Tensor| (x.to_device(dev).to_kind(Kind::Float) - &shift) / &scale;
            let f0 = self.feature_maps(&prep(x0));
            let f1 = self.feature_maps(&prep(x1));
            let mut val = Tensor::zeros([s0[0], 1, 1, 1], opts);
            for ((a, b), lin) in f0.iter().zip(&f1).zip(&self.lins) {
                let norm = |t: &Tensor| {
                    let n = t
                        .square()
                        .sum_dim_intlist([1i64].as_slice(), true, Kind::Float)
                        .sqrt();
                    t / (n + 1e-10)
                };
                let diff = (norm(a) - norm(b)).square();
                let r = diff
                    .conv2d(lin, None::<Tensor>, [1, 1], [0, 0], [1, 1], 1)
                    .mean_dim([2i64, 3].as_slice(), true, Kind::Float);
                val += r;
            }
            val
        });
        Ok(Vec::<f64>::try_from(
            &d.to_kind(Kind::Double).to_device(Device::Cpu).view([-1]),
        )?)
    }
}

/// 8-bit RGB `H x W x 3` images as the package's `im2tensor` makes them: `v / 127.5 - 1` in
/// float64, then float32, `N x 3 x H x W`.
pub fn lpips_input(images: &[&[u8]], height: i64, width: i64) -> Tensor {
    let mut v = Vec::with_capacity(images.iter().map(|i| i.len()).sum());
    for img in images {
        v.extend(img.iter().map(|&b| (b as f64 / 127.5 - 1.0) as f32));
    }
    Tensor::from_slice(&v)
        .view([images.len() as i64, height, width, 3])
        .permute([0, 3, 1, 2])
        .contiguous()
}
