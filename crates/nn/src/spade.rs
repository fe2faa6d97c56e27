//! SPADE (NVIDIA SPADE, `models/networks/normalization.py` and `architecture.py`) as
//! elastic layers: the spatially-adaptive norm and the SPADE residual block GauGAN stacks.
//!
//! SPADE normalises with a *parameter-free* batch norm (`SynchronizedBatchNorm2d(affine=False)`
//! in the original; on one device that is plain batch norm), or instance norm for
//! `norm_G spadeinstance3x3` (no tensors), and modulates the result with
//! `gamma`, `beta` predicted from the segmentation map: `x_norm * (1 + gamma) + beta`.
//! Its running statistics are shared by every sub-net of a supernet, so they must be
//! recalibrated per sub-net before evaluation ([`crate::elastic::Mode::Calibrate`]).
//!
//! Spectral norm: the official generator wraps `conv_0`/`conv_1`/`conv_s` in spectral norm.
//! Like GAN Compression's compressed GauGAN generators, our generator does not: weights are
//! plain `weight` tensors. An official checkpoint stores `weight_orig`, `weight_u`,
//! `weight_v` instead; [`fold_spectral_norm`] turns those into the exact eval-mode `weight`
//! (`weight_orig / sigma`, `sigma = u^T W v`) so such a checkpoint loads by its own names.
//!
//! Elastic widths (all first-k): a block's `middle` width (`conv_0` output), its `out` width
//! (only for blocks with a learned shortcut; otherwise the output width is the input width)
//! and its SPADE `hidden` width (`nhidden`, 128 in the original), shared by the block's norms.

use std::path::Path;

use tch::{Kind, Tensor, nn};

use crate::cost::{self, Cost};
use crate::elastic::{
    ConvOpts, ElasticBatchNorm2d, ElasticConv2d, Mode, instance_norm, leaky_relu, push_named,
};
use crate::error::NnError;

/// SPADE's leaky-ReLU slope (`actvn` in `SPADEResnetBlock`).
const LEAKY_SLOPE: f64 = 0.2;

fn conv3x3(p: &nn::Path, c_in: i64, c_out: i64) -> ElasticConv2d {
    ElasticConv2d::new(
        p,
        c_in,
        c_out,
        3,
        ConvOpts {
            padding: 1,
            ..Default::default()
        },
    )
}

/// Nearest-neighbour resize (PyTorch `F.interpolate(mode="nearest")` with a target size).
pub fn resize_nearest(x: &Tensor, hw: [i64; 2]) -> Tensor {
    let s = x.size();
    if s[2] == hw[0] && s[3] == hw[1] {
        x.shallow_clone()
    } else {
        x.upsample_nearest2d(hw, None, None)
    }
}

/// Nearest-neighbour 2x upsampling (`nn.Upsample(scale_factor=2)`).
pub fn up2(x: &Tensor) -> Tensor {
    let s = x.size();
    x.upsample_nearest2d([s[2] * 2, s[3] * 2], 2.0, 2.0)
}

/// One SPADE layer (`norm_0`, `norm_1`, `norm_s` in a block).
#[derive(Debug)]
pub struct Spade {
    /// `param_free_norm`: batch norm without affine parameters (running stats only), or
    /// `None` for instance norm (`spadeinstance3x3`: `InstanceNorm2d(affine=False)`, no
    /// tensors, the same in train and eval).
    pub param_free_norm: Option<ElasticBatchNorm2d>,
    /// `mlp_shared.0`: label map -> hidden features (followed by ReLU).
    pub mlp_shared: ElasticConv2d,
    pub mlp_gamma: ElasticConv2d,
    pub mlp_beta: ElasticConv2d,
    /// Channels of the segmentation map (never elastic).
    pub label_nc: i64,
}

impl Spade {
    /// Full-size layer normalising `norm_nc` channels with `nhidden` hidden features; its
    /// parameter-free norm is instance norm when `instance`, else batch norm.
    pub fn new(p: &nn::Path, norm_nc: i64, label_nc: i64, nhidden: i64, instance: bool) -> Self {
        Spade {
            param_free_norm: (!instance)
                .then(|| ElasticBatchNorm2d::new(&(p / "param_free_norm"), norm_nc, false)),
            mlp_shared: conv3x3(&(p / "mlp_shared" / "0"), label_nc, nhidden),
            mlp_gamma: conv3x3(&(p / "mlp_gamma"), nhidden, norm_nc),
            mlp_beta: conv3x3(&(p / "mlp_beta"), nhidden, norm_nc),
            label_nc,
        }
    }

    /// Normalises the first `x.size()[1]` channels of `x` and modulates them from `seg`
    /// (resized here to `x`'s resolution) through `hidden` hidden features.
    pub fn forward(&self, x: &Tensor, seg: &Tensor, hidden: i64, mode: Mode) -> Tensor {
        let s = x.size();
        let c = s[1];
        let normalized = match &self.param_free_norm {
            Some(bn) => bn.forward(x, mode),
            None => instance_norm(x),
        };
        let seg = resize_nearest(seg, [s[2], s[3]]);
        let actv = self.mlp_shared.forward(&seg, hidden).relu();
        let gamma = self.mlp_gamma.forward(&actv, c);
        let beta = self.mlp_beta.forward(&actv, c);
        normalized * (gamma + 1.0) + beta
    }

    /// The compact layer's tensors (official names relative to this layer).
    pub fn extract(&self, c: i64, hidden: i64) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        if let Some(bn) = &self.param_free_norm {
            push_named(&mut out, "param_free_norm", bn.extract(c));
        }
        push_named(
            &mut out,
            "mlp_shared.0",
            self.mlp_shared.extract(self.label_nc, hidden),
        );
        push_named(&mut out, "mlp_gamma", self.mlp_gamma.extract(hidden, c));
        push_named(&mut out, "mlp_beta", self.mlp_beta.extract(hidden, c));
        out
    }
}

/// MACs / params of one SPADE layer with `c` normalised channels and `hidden` features at
/// resolution `hw`: three 3x3 convs and the `x_norm * (1 + gamma)` multiply; the param-free
/// norm, the `+ beta` add, ReLU and the resize count nothing (torchprofile convention).
pub fn spade_cost(label_nc: i64, c: i64, hidden: i64, hw: [i64; 2]) -> Cost {
    cost::conv2d(label_nc, hidden, [3, 3], 1, hw, true)
        + cost::conv2d(hidden, c, [3, 3], 1, hw, true)
        + cost::conv2d(hidden, c, [3, 3], 1, hw, true)
        + cost::mul(c * hw[0] * hw[1])
}

/// MACs / params of one [`SpadeResBlock`] on `c_in` active input channels at resolution
/// `hw` (computed from widths alone, so profiling allocates no tensors).
pub fn block_cost(label_nc: i64, c_in: i64, w: BlockWidths, learned: bool, hw: [i64; 2]) -> Cost {
    let c_out = if learned { w.out } else { c_in };
    let mut c = spade_cost(label_nc, c_in, w.hidden, hw)
        + cost::conv2d(c_in, w.middle, [3, 3], 1, hw, true)
        + spade_cost(label_nc, w.middle, w.hidden, hw)
        + cost::conv2d(w.middle, c_out, [3, 3], 1, hw, true);
    if learned {
        c += spade_cost(label_nc, c_in, w.hidden, hw)
            + cost::conv2d(c_in, c_out, [1, 1], 1, hw, false);
    }
    c
}

/// Active widths of one [`SpadeResBlock`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockWidths {
    /// `conv_0` output width (`fmiddle`).
    pub middle: i64,
    /// Output width; must equal the input width for blocks without a learned shortcut.
    pub out: i64,
    /// SPADE hidden width used by every norm of the block.
    pub hidden: i64,
}

/// What every SPADE layer of a block shares: the segmentation map's channels, the hidden
/// width and the parameter-free norm (instance when `instance`, else batch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpadeOpts {
    pub label_nc: i64,
    pub nhidden: i64,
    pub instance: bool,
}

/// `SPADEResnetBlock(fin, fout)`: `x_s + conv_1(act(norm_1(conv_0(act(norm_0(x))))))`, with
/// a learned 1x1 shortcut `conv_s(norm_s(x))` when `fin != fout`.
#[derive(Debug)]
pub struct SpadeResBlock {
    pub conv_0: ElasticConv2d,
    pub conv_1: ElasticConv2d,
    pub conv_s: Option<ElasticConv2d>,
    pub norm_0: Spade,
    pub norm_1: Spade,
    pub norm_s: Option<Spade>,
    /// Full widths the block was built with.
    pub fin: i64,
    pub fmiddle: i64,
    pub fout: i64,
    pub nhidden: i64,
}

impl SpadeResBlock {
    /// Full-size block. The official model has `fmiddle = min(fin, fout)` and a learned
    /// shortcut exactly when `fin != fout`; a compact (exported) block keeps the shortcut of
    /// its position even if its widths happen to be equal, and may have any middle width.
    pub fn new(
        p: &nn::Path,
        fin: i64,
        fmiddle: i64,
        fout: i64,
        learned: bool,
        spade: SpadeOpts,
    ) -> Self {
        let SpadeOpts {
            label_nc,
            nhidden,
            instance,
        } = spade;
        let conv_s = learned.then(|| {
            ElasticConv2d::new(
                &(p / "conv_s"),
                fin,
                fout,
                1,
                ConvOpts {
                    bias: false,
                    ..Default::default()
                },
            )
        });
        SpadeResBlock {
            conv_0: conv3x3(&(p / "conv_0"), fin, fmiddle),
            conv_1: conv3x3(&(p / "conv_1"), fmiddle, fout),
            conv_s,
            norm_0: Spade::new(&(p / "norm_0"), fin, label_nc, nhidden, instance),
            norm_1: Spade::new(&(p / "norm_1"), fmiddle, label_nc, nhidden, instance),
            norm_s: learned.then(|| Spade::new(&(p / "norm_s"), fin, label_nc, nhidden, instance)),
            fin,
            fmiddle,
            fout,
            nhidden,
        }
    }

    /// Whether the block has `conv_s` / `norm_s` (its output width is then elastic).
    pub fn learned_shortcut(&self) -> bool {
        self.conv_s.is_some()
    }

    /// Runs the block on `x` (any active input width) with widths `w`. For a block without
    /// a learned shortcut `w.out` is ignored: the output has `x`'s width.
    pub fn forward(&self, x: &Tensor, seg: &Tensor, w: BlockWidths, mode: Mode) -> Tensor {
        let c_in = x.size()[1];
        let x_s = match (&self.conv_s, &self.norm_s) {
            (Some(conv), Some(norm)) => conv.forward(&norm.forward(x, seg, w.hidden, mode), w.out),
            _ => x.shallow_clone(),
        };
        let c_out = if self.learned_shortcut() { w.out } else { c_in };
        let dx = self.conv_0.forward(
            &leaky_relu(&self.norm_0.forward(x, seg, w.hidden, mode), LEAKY_SLOPE),
            w.middle,
        );
        let dx = self.conv_1.forward(
            &leaky_relu(&self.norm_1.forward(&dx, seg, w.hidden, mode), LEAKY_SLOPE),
            c_out,
        );
        x_s + dx
    }

    /// The compact block's tensors (official names relative to the block).
    pub fn extract(&self, c_in: i64, w: BlockWidths) -> Vec<(String, Tensor)> {
        let c_out = if self.learned_shortcut() { w.out } else { c_in };
        let mut out = Vec::new();
        push_named(&mut out, "conv_0", self.conv_0.extract(c_in, w.middle));
        push_named(&mut out, "conv_1", self.conv_1.extract(w.middle, c_out));
        if let Some(conv_s) = &self.conv_s {
            push_named(&mut out, "conv_s", conv_s.extract(c_in, c_out));
        }
        let mut nested = |name: &str, items: Vec<(String, Tensor)>| {
            out.extend(items.into_iter().map(|(n, t)| (format!("{name}.{n}"), t)));
        };
        nested("norm_0", self.norm_0.extract(c_in, w.hidden));
        nested("norm_1", self.norm_1.extract(w.middle, w.hidden));
        if let Some(norm_s) = &self.norm_s {
            nested("norm_s", norm_s.extract(c_in, w.hidden));
        }
        out
    }

    /// The batch norms of the block's SPADE layers (none with instance norm).
    pub fn batch_norms(&self) -> Vec<&ElasticBatchNorm2d> {
        [Some(&self.norm_0), Some(&self.norm_1), self.norm_s.as_ref()]
            .into_iter()
            .flatten()
            .filter_map(|n| n.param_free_norm.as_ref())
            .collect()
    }

    /// Resets the running statistics of every SPADE norm in the block.
    pub fn reset_running_stats(&self) {
        for bn in self.batch_norms() {
            bn.reset_running_stats();
        }
    }
}

/// Replaces every spectral-norm triple `P.weight_orig`, `P.weight_u`, `P.weight_v` of an
/// official checkpoint by the weight the official model uses in eval mode,
/// `P.weight = weight_orig / (u . (W v))` with `W = weight_orig` reshaped to `[out, -1]`
/// (`torch.nn.utils.spectral_norm`, `dim = 0`, as SPADE applies it to `Conv2d`).
///
/// Returns the prefixes `P` that were folded. A triple with a missing part, or with shapes
/// that do not fit together, is an error naming the tensor.
pub fn fold_spectral_norm(tensors: &mut Vec<(String, Tensor)>) -> Result<Vec<String>, NnError> {
    let prefixes: Vec<String> = tensors
        .iter()
        .filter_map(|(n, _)| n.strip_suffix(".weight_orig").map(str::to_string))
        .collect();
    let orphan = tensors.iter().find_map(|(n, _)| {
        let p = n
            .strip_suffix(".weight_u")
            .or_else(|| n.strip_suffix(".weight_v"))?;
        (!prefixes.iter().any(|q| q == p)).then(|| n.clone())
    });
    if let Some(n) = orphan {
        return Err(NnError::Unsupported(format!(
            "spectral-norm tensor `{n}` has no matching `.weight_orig`"
        )));
    }
    for prefix in &prefixes {
        let take = |tensors: &mut Vec<(String, Tensor)>, suffix: &str| {
            let name = format!("{prefix}.{suffix}");
            match tensors.iter().position(|(n, _)| *n == name) {
                Some(i) => Ok(tensors.swap_remove(i).1),
                None => Err(NnError::Unsupported(format!(
                    "spectral-norm layer `{prefix}` lacks `{name}` (needs weight_orig, weight_u, weight_v)"
                ))),
            }
        };
        let w = take(tensors, "weight_orig")?;
        let u = take(tensors, "weight_u")?;
        let v = take(tensors, "weight_v")?;
        let rows = w.size()[0];
        let mat = w.reshape([rows, -1]).to_kind(Kind::Double);
        if u.size() != [rows] || v.size() != [mat.size()[1]] {
            return Err(NnError::Unsupported(format!(
                "spectral-norm layer `{prefix}`: weight_orig {:?}, weight_u {:?}, weight_v {:?} do not fit (expected u [{rows}], v [{}])",
                w.size(),
                u.size(),
                v.size(),
                mat.size()[1]
            )));
        }
        let sigma = u
            .to_kind(Kind::Double)
            .dot(&mat.mv(&v.to_kind(Kind::Double)))
            .double_value(&[]);
        if !(sigma.is_finite() && sigma != 0.0) {
            return Err(NnError::Unsupported(format!(
                "spectral-norm layer `{prefix}`: sigma = {sigma} cannot be divided by"
            )));
        }
        tensors.push((format!("{prefix}.weight"), (&w / sigma).to_kind(w.kind())));
    }
    Ok(prefixes)
}

/// Converts an official spectral-norm checkpoint (safetensors or `torch.save`) at `src` into one with plain
/// `weight` tensors at `dst` (see [`fold_spectral_norm`]); every other tensor is copied
/// unchanged. Returns the folded layer prefixes (empty if `src` had no spectral norm).
/// Errors name the file.
pub fn fold_spectral_norm_file(src: &Path, dst: &Path) -> Result<Vec<String>, NnError> {
    let mut tensors = crate::export::read_weights(src)?;
    let folded = fold_spectral_norm(&mut tensors).map_err(|e| match e {
        NnError::Unsupported(msg) => NnError::Unsupported(format!("{}: {msg}", src.display())),
        e => e,
    })?;
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    Tensor::write_safetensors(&tensors, dst)
        .map_err(|e| NnError::torch(format!("writing {}", dst.display()), e))?;
    Ok(folded)
}
