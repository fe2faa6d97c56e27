//! PatchGAN discriminator (pytorch-CycleGAN-and-pix2pix `NLayerDiscriminator`), names
//! `model.N`: conv `model.0`; for each further layer a conv, norm and LeakyReLU(0.2)
//! (`model.2`, `model.3`, ...); a final 4x4 conv to one channel.

use tch::{Tensor, nn};

use crate::arch::NormKind;
use crate::cost::{self, Cost};
use crate::disc::{DiscArch, DiscConfig, Discriminator};
use crate::elastic::{ConvOpts, ElasticConv2d, Mode, Norm2d, conv_bias_for, leaky_relu};
use crate::error::NnError;

struct Layer {
    conv: ElasticConv2d,
    norm: Option<Norm2d>,
}

/// `NLayerDiscriminator`.
pub struct PatchGan {
    cfg: DiscConfig,
    layers: Vec<Layer>,
    last: ElasticConv2d,
}

/// Output width of layer `n` (0-based) of the conv stack: `ndf * min(2^n, 8)`.
fn width(ndf: i64, n: i64) -> i64 {
    ndf * (1i64 << n.min(3))
}

impl PatchGan {
    pub fn new(p: &nn::Path, cfg: &DiscConfig) -> Result<Self, NnError> {
        if cfg.arch != DiscArch::Patchgan {
            return Err(NnError::config(
                "arch",
                format!("{:?}", cfg.arch),
                "not patchgan",
            ));
        }
        cfg.norm.require_pix2pix("PatchGAN")?;
        let bias = conv_bias_for(cfg.norm);
        let m = p / "model";
        let mut layers = vec![Layer {
            conv: ElasticConv2d::new(
                &(&m / 0),
                cfg.input_nc,
                cfg.ndf,
                4,
                ConvOpts {
                    stride: 2,
                    padding: 1,
                    ..Default::default()
                },
            ),
            norm: None,
        }];
        let mut idx = 2i64;
        for n in 1..=cfg.n_layers {
            let stride = if n < cfg.n_layers { 2 } else { 1 };
            let (c_in, c_out) = (width(cfg.ndf, n - 1), width(cfg.ndf, n));
            layers.push(Layer {
                conv: ElasticConv2d::new(
                    &(&m / idx),
                    c_in,
                    c_out,
                    4,
                    ConvOpts {
                        stride,
                        padding: 1,
                        bias,
                        ..Default::default()
                    },
                ),
                norm: Some(Norm2d::new(&(&m / (idx + 1)), cfg.norm, c_out)),
            });
            idx += 3;
        }
        let c_last = width(cfg.ndf, cfg.n_layers);
        let last = ElasticConv2d::new(
            &(&m / idx),
            c_last,
            1,
            4,
            ConvOpts {
                padding: 1,
                ..Default::default()
            },
        );
        Ok(PatchGan {
            cfg: cfg.clone(),
            layers,
            last,
        })
    }

    /// Features after every LeakyReLU, then the patch prediction.
    pub fn features(&self, x: &Tensor, mode: Mode) -> Vec<Tensor> {
        let mut out = Vec::with_capacity(self.layers.len() + 1);
        let mut h = x.shallow_clone();
        for l in &self.layers {
            h = l.conv.forward(&h, l.conv.out_channels);
            if let Some(n) = &l.norm {
                h = n.forward(&h, mode);
            }
            h = leaky_relu(&h, 0.2);
            out.push(h.shallow_clone());
        }
        out.push(self.last.forward(&h, 1));
        out
    }
}

impl Discriminator for PatchGan {
    fn config(&self) -> &DiscConfig {
        &self.cfg
    }

    fn forward(&self, x: &Tensor, mode: Mode) -> Vec<Vec<Tensor>> {
        vec![self.features(x, mode)]
    }

    fn batch_norms(&self) -> Vec<&crate::elastic::ElasticBatchNorm2d> {
        self.layers
            .iter()
            .filter_map(|l| l.norm.as_ref().and_then(Norm2d::batch_norm))
            .collect()
    }
}

/// Analytic cost of a PatchGAN on a `[C, H, W]` input (torchprofile convention).
pub fn cost(cfg: &DiscConfig, input_chw: [i64; 3]) -> Cost {
    let bias = conv_bias_for(cfg.norm);
    let affine = cfg.norm == NormKind::Batch;
    let [c0, mut h, mut w] = input_chw;
    let mut c = Cost::default();
    let mut c_in = c0;
    for n in 0..=cfg.n_layers {
        let stride = if n < cfg.n_layers { 2 } else { 1 };
        h = cost::conv_out(h, 4, stride, 1, 1);
        w = cost::conv_out(w, 4, stride, 1, 1);
        let c_out = width(cfg.ndf, n);
        c += cost::conv2d(c_in, c_out, [4, 4], 1, [h, w], n == 0 || bias);
        if n > 0 {
            c += cost::norm(c_out, [h, w], affine);
        }
        c_in = c_out;
    }
    h = cost::conv_out(h, 4, 1, 1, 1);
    w = cost::conv_out(w, 4, 1, 1, 1);
    c + cost::conv2d(c_in, 1, [4, 4], 1, [h, w], true)
}
