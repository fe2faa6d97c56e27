//! Multi-scale PatchGAN discriminator (pix2pixHD / GauGAN), with SPADE's naming.
//!
//! SPADE's `MultiscaleDiscriminator` holds `discriminator_0..num_d-1`, each an
//! `NLayerDiscriminator` whose layer groups are `model0..model{n_layers}` (one submodule per
//! group, so intermediate features come out for the feature-matching loss). Between scales
//! the input is average-pooled (3x3, stride 2, padding 1, `count_include_pad=False`).
//! pix2pixHD's `scaleS_layerL` names (`getIntermFeat`) describe the same network; we pick
//! SPADE's names because GauGAN checkpoints are the ones users bring, and pix2pixHD's
//! discriminator is not needed to run a trained generator.
//!
//! Layer groups (kernel 4, padding 2): `model0` conv (stride 2, bias) + LeakyReLU(0.2);
//! `model1..n_layers-1` conv (stride 2, the last of them stride 1; width doubles up to 512),
//! norm and LeakyReLU, named `modelN.0.0` (conv) and `modelN.0.1` (norm) as SPADE's
//! `get_nonspade_norm_layer` nests them, or `modelN.0` without a norm; the last group is a
//! conv to one channel. With a norm the conv has no bias (SPADE deletes it).
//!
//! Spectral norm (`spectralinstance`, SPADE's default `norm_D`) is implemented, since it
//! matters for discriminator training: `weight_orig` is the parameter, `weight_u`,
//! `weight_v` the power-iteration buffers (official names); one power iteration runs per
//! training forward, as `torch.nn.utils.spectral_norm` does.

use tch::{Kind, Tensor, nn};

use crate::arch::NormKind;
use crate::disc::{DiscArch, DiscConfig, Discriminator};
use crate::elastic::leaky_relu;
use crate::elastic::{Mode, Norm2d};
use crate::error::NnError;

const KERNEL: i64 = 4;
const PAD: i64 = 2;
const MAX_NF: i64 = 512;
const LEAKY_SLOPE: f64 = 0.2;

/// `x / max(||x||, 1e-12)` (`F.normalize(dim=0)` as spectral norm uses it).
fn normalize(x: &Tensor) -> Tensor {
    let n = x.norm().clamp_min(1e-12);
    x / n
}

/// A conv whose effective weight may be spectrally normalised.
#[derive(Debug)]
struct Conv {
    /// `weight`, or `weight_orig` under spectral norm.
    weight: Tensor,
    /// `(weight_u, weight_v)` under spectral norm.
    uv: Option<(Tensor, Tensor)>,
    bias: Option<Tensor>,
    stride: i64,
}

impl Conv {
    fn new(p: &nn::Path, c_in: i64, c_out: i64, stride: i64, bias: bool, spectral: bool) -> Self {
        let dims = [c_out, c_in, KERNEL, KERNEL];
        let init = nn::Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        let (weight, uv) = if spectral {
            let w = p.var("weight_orig", &dims, init);
            let u0 = normalize(&Tensor::randn([c_out], (Kind::Float, p.device())));
            let v0 = normalize(&Tensor::randn(
                [c_in * KERNEL * KERNEL],
                (Kind::Float, p.device()),
            ));
            let u = p.add("weight_u", u0, false);
            let v = p.add("weight_v", v0, false);
            (w, Some((u, v)))
        } else {
            (p.var("weight", &dims, init), None)
        };
        Conv {
            weight,
            uv,
            bias: bias.then(|| p.zeros("bias", &[c_out])),
            stride,
        }
    }

    /// The weight the conv applies: `weight_orig / sigma` under spectral norm, after one
    /// power iteration that updates `u`, `v` in place when training.
    fn effective_weight(&self, mode: Mode) -> Tensor {
        let Some((u, v)) = &self.uv else {
            return self.weight.shallow_clone();
        };
        let rows = self.weight.size()[0];
        let mat = self.weight.reshape([rows, -1]);
        if mode == Mode::Train {
            tch::no_grad(|| {
                let m = mat.detach();
                let nv = normalize(&m.tr().mv(u));
                let nu = normalize(&m.mv(&nv));
                v.shallow_clone().copy_(&nv);
                u.shallow_clone().copy_(&nu);
            });
        }
        let sigma = u.detach().dot(&mat.mv(&v.detach()));
        &self.weight / sigma
    }

    fn forward(&self, x: &Tensor, mode: Mode) -> Tensor {
        x.conv2d(
            &self.effective_weight(mode),
            self.bias.as_ref(),
            [self.stride, self.stride],
            [PAD, PAD],
            [1, 1],
            1,
        )
    }
}

/// One layer group `modelN`: conv, optional norm, optional LeakyReLU.
#[derive(Debug)]
struct Group {
    conv: Conv,
    norm: Norm2d,
    act: bool,
}

/// SPADE's `NLayerDiscriminator` (one scale).
#[derive(Debug)]
pub struct NLayerDiscriminator {
    groups: Vec<Group>,
}

impl NLayerDiscriminator {
    /// Builds `model0..model{n_layers}` under `p`.
    pub fn new(p: &nn::Path, cfg: &DiscConfig) -> Self {
        let spectral = matches!(
            cfg.norm,
            NormKind::SpectralInstance | NormKind::SpectralBatch
        );
        let has_norm = cfg.norm != NormKind::None;
        let mut groups = Vec::new();
        let first = p / "model0" / 0;
        groups.push(Group {
            conv: Conv::new(&first, cfg.input_nc, cfg.ndf, 2, true, false),
            norm: Norm2d::Identity,
            act: true,
        });
        let mut nf = cfg.ndf;
        for n in 1..cfg.n_layers {
            let prev = nf;
            nf = (nf * 2).min(MAX_NF);
            let stride = if n == cfg.n_layers - 1 { 1 } else { 2 };
            let gp = p / format!("model{n}") / 0;
            let (conv, norm) = if has_norm {
                (
                    Conv::new(&(&gp / 0), prev, nf, stride, false, spectral),
                    Norm2d::new(&(&gp / 1), cfg.norm, nf),
                )
            } else {
                (
                    Conv::new(&gp, prev, nf, stride, true, false),
                    Norm2d::Identity,
                )
            };
            groups.push(Group {
                conv,
                norm,
                act: true,
            });
        }
        let last = p / format!("model{}", cfg.n_layers) / 0;
        groups.push(Group {
            conv: Conv::new(&last, nf, 1, 1, true, false),
            norm: Norm2d::Identity,
            act: false,
        });
        NLayerDiscriminator { groups }
    }

    /// The output of every layer group; the last is the patch prediction map.
    pub fn forward(&self, x: &Tensor, mode: Mode) -> Vec<Tensor> {
        let mut out: Vec<Tensor> = Vec::with_capacity(self.groups.len());
        for g in &self.groups {
            let h = g.conv.forward(out.last().unwrap_or(x), mode);
            let h = g.norm.forward(&h, mode);
            out.push(if g.act {
                leaky_relu(&h, LEAKY_SLOPE)
            } else {
                h
            });
        }
        out
    }
}

/// `MultiscaleDiscriminator`: `num_d` PatchGANs on successively halved inputs.
#[derive(Debug)]
pub struct MultiscaleDiscriminator {
    cfg: DiscConfig,
    scales: Vec<NLayerDiscriminator>,
}

impl MultiscaleDiscriminator {
    /// Builds `discriminator_0..` under `p`. Every norm kind is accepted: `instance` /
    /// `spectralinstance` (GauGAN default) / `batch` / `spectralbatch` / `none`.
    pub fn new(p: &nn::Path, cfg: &DiscConfig) -> Result<Self, NnError> {
        if cfg.arch != DiscArch::Multiscale {
            return Err(NnError::config(
                "arch",
                format!("{:?}", cfg.arch),
                "expected multiscale",
            ));
        }
        for (field, v) in [
            ("input_nc", cfg.input_nc),
            ("ndf", cfg.ndf),
            ("n_layers", cfg.n_layers),
            ("num_d", cfg.num_d),
        ] {
            if v < 1 {
                return Err(NnError::config(field, v, "must be at least 1"));
            }
        }
        let scales = (0..cfg.num_d)
            .map(|i| NLayerDiscriminator::new(&(p / format!("discriminator_{i}")), cfg))
            .collect();
        Ok(MultiscaleDiscriminator {
            cfg: cfg.clone(),
            scales,
        })
    }
}

/// SPADE's between-scale downsampling.
fn downsample(x: &Tensor) -> Tensor {
    x.avg_pool2d([3, 3], [2, 2], [1, 1], false, false, None::<i64>)
}

impl Discriminator for MultiscaleDiscriminator {
    fn config(&self) -> &DiscConfig {
        &self.cfg
    }

    fn batch_norms(&self) -> Vec<&crate::elastic::ElasticBatchNorm2d> {
        self.scales
            .iter()
            .flat_map(|d| d.groups.iter().filter_map(|g| g.norm.batch_norm()))
            .collect()
    }

    fn forward(&self, x: &Tensor, mode: Mode) -> Vec<Vec<Tensor>> {
        let mut input = x.shallow_clone();
        let mut out = Vec::with_capacity(self.scales.len());
        for (i, d) in self.scales.iter().enumerate() {
            out.push(d.forward(&input, mode));
            if i + 1 < self.scales.len() {
                input = downsample(&input);
            }
        }
        out
    }
}
