//! Pix2Pix ResNet generator (pytorch-CycleGAN-and-pix2pix `ResnetGenerator`) and GAN
//! Compression's `MobileResnetGenerator` (separable convs in the residual blocks), as one
//! skeleton with two block kinds: both share the official `model.N` layout, so one module
//! keeps their index arithmetic in one place.
//!
//! Layout (`n` = `n_blocks`): `model.1` stem conv 7x7 (+ `model.2` norm), `model.4`/`model.7`
//! strided convs (+ norms 5/8), `model.10 .. model.{9+n}` residual blocks,
//! `model.{10+n}`/`model.{13+n}` transposed convs (+ norms), `model.{17+n}` output conv.
//!
//! Search space: widths at `stem`, `down1`, `trunk` (the residual stream), one inner width per
//! block (`block{i}.inner`), `up1`, `up2` (n + 5 positions); blocks with index
//! `>= space.min_blocks` can be skipped (identity, since they are residual).

use tch::{Tensor, nn};

use crate::arch::{Arch, ArchConfig, NormKind};
use crate::cost::{self, Cost};
use crate::elastic::{
    ConvOpts, ConvTransposeOpts, ElasticBatchNorm2d, ElasticConv2d, ElasticConvTranspose2d, Mode,
    Norm2d, conv_bias_for, instance_norm, push_named, reflection_pad,
};
use crate::error::NnError;
use crate::generator::{Generator, block_choices, check_input, full_widths, width_choices};
use crate::subnet::{SearchSpace, SubnetConfig};

fn is_mobile(cfg: &ArchConfig) -> bool {
    cfg.arch == Arch::MobileResnet
}

fn derived_widths(ngf: i64, n: i64) -> Vec<i64> {
    let mut v = vec![ngf, 2 * ngf, 4 * ngf];
    v.extend(std::iter::repeat_n(4 * ngf, n as usize));
    v.extend([2 * ngf, ngf]);
    v
}

fn check_cfg(cfg: &ArchConfig) -> Result<Vec<i64>, NnError> {
    if !matches!(cfg.arch, Arch::Pix2PixResnet | Arch::MobileResnet) {
        return Err(NnError::config("arch", cfg.arch, "not a ResNet family"));
    }
    cfg.norm.require_pix2pix("a ResNet generator")?;
    full_widths(cfg, derived_widths(cfg.ngf, cfg.n_blocks))
}

/// Names of the search-space positions, in order.
fn position_names(n: i64) -> Vec<String> {
    let mut v = vec!["stem".to_string(), "down1".into(), "trunk".into()];
    v.extend((0..n).map(|i| format!("block{i}.inner")));
    v.extend(["up1".to_string(), "up2".into()]);
    v
}

/// The search space of a ResNet-family config.
pub fn search_space(cfg: &ArchConfig) -> Result<SearchSpace, NnError> {
    let full = check_cfg(cfg)?;
    Ok(SearchSpace {
        widths: width_choices(
            cfg,
            position_names(cfg.n_blocks).into_iter().zip(full).collect(),
        ),
        blocks: block_choices(cfg, cfg.n_blocks),
    })
}

/// Active widths of a sub-net, by role.
struct Widths<'a> {
    stem: i64,
    down1: i64,
    trunk: i64,
    inner: &'a [i64],
    up1: i64,
    up2: i64,
}

fn widths(sub: &SubnetConfig, n: usize) -> Widths<'_> {
    let w = &sub.widths;
    Widths {
        stem: w[0],
        down1: w[1],
        trunk: w[2],
        inner: &w[3..3 + n],
        up1: w[3 + n],
        up2: w[4 + n],
    }
}

/// Analytic cost (torchprofile convention) of sub-net `sub` on a `[C, H, W]` input.
pub fn cost(cfg: &ArchConfig, sub: &SubnetConfig, input_chw: [i64; 3]) -> Result<Cost, NnError> {
    search_space(cfg)?.check(sub)?;
    let n = cfg.n_blocks as usize;
    let w = widths(sub, n);
    let bias = conv_bias_for(cfg.norm);
    let affine = cfg.norm == NormKind::Batch;
    let [_, h, wd] = input_chw;
    let mut c = Cost::default();
    c += cost::conv2d(cfg.input_nc, w.stem, [7, 7], 1, [h, wd], bias)
        + cost::norm(w.stem, [h, wd], affine);
    let (h1, w1) = (
        cost::conv_out(h, 3, 2, 1, 1),
        cost::conv_out(wd, 3, 2, 1, 1),
    );
    c += cost::conv2d(w.stem, w.down1, [3, 3], 1, [h1, w1], bias)
        + cost::norm(w.down1, [h1, w1], affine);
    let (h2, w2) = (
        cost::conv_out(h1, 3, 2, 1, 1),
        cost::conv_out(w1, 3, 2, 1, 1),
    );
    let hw2 = [h2, w2];
    c += cost::conv2d(w.down1, w.trunk, [3, 3], 1, hw2, bias) + cost::norm(w.trunk, hw2, affine);
    for (i, &inner) in w.inner.iter().enumerate() {
        if !sub.block_present(i) {
            continue;
        }
        c += if is_mobile(cfg) {
            // SeparableConv2d: depthwise 3x3 (bias), internal instance norm (free), pointwise 1x1 (bias).
            cost::conv2d(w.trunk, w.trunk, [3, 3], w.trunk, hw2, true)
                + cost::conv2d(w.trunk, inner, [1, 1], 1, hw2, true)
                + cost::norm(inner, hw2, affine)
                + cost::conv2d(inner, inner, [3, 3], inner, hw2, true)
                + cost::conv2d(inner, w.trunk, [1, 1], 1, hw2, true)
                + cost::norm(w.trunk, hw2, affine)
        } else {
            cost::conv2d(w.trunk, inner, [3, 3], 1, hw2, bias)
                + cost::norm(inner, hw2, affine)
                + cost::conv2d(inner, w.trunk, [3, 3], 1, hw2, bias)
                + cost::norm(w.trunk, hw2, affine)
        };
    }
    let up = |x: i64| cost::conv_transpose_out(x, 3, 2, 1, 1, 1);
    let hw3 = [up(h2), up(w2)];
    c += cost::conv_transpose2d(w.trunk, w.up1, [3, 3], 1, hw3, bias)
        + cost::norm(w.up1, hw3, affine);
    let hw4 = [up(hw3[0]), up(hw3[1])];
    c +=
        cost::conv_transpose2d(w.up1, w.up2, [3, 3], 1, hw4, bias) + cost::norm(w.up2, hw4, affine);
    c += cost::conv2d(w.up2, cfg.output_nc, [7, 7], 1, hw4, true);
    Ok(c)
}

/// One residual block: plain (two 3x3 convs) or mobile (two separable convs).
enum Block {
    Plain {
        conv1: ElasticConv2d,
        norm1: Norm2d,
        conv2: ElasticConv2d,
        norm2: Norm2d,
        /// Index of the second conv inside `conv_block` (5, or 6 with dropout).
        second: i64,
    },
    Mobile {
        dw1: ElasticConv2d,
        pw1: ElasticConv2d,
        norm1: Norm2d,
        dw2: ElasticConv2d,
        pw2: ElasticConv2d,
        norm2: Norm2d,
    },
}

impl Block {
    fn new(p: &nn::Path, cfg: &ArchConfig, trunk: i64, inner: i64) -> Self {
        let bias = conv_bias_for(cfg.norm);
        let cb = p / "conv_block";
        if is_mobile(cfg) {
            let k3 = |c: i64| ConvOpts {
                groups: c,
                bias: true,
                ..Default::default()
            };
            let k1 = ConvOpts::default();
            Block::Mobile {
                dw1: ElasticConv2d::new(&(&cb / 1 / "conv" / 0), trunk, trunk, 3, k3(trunk)),
                pw1: ElasticConv2d::new(&(&cb / 1 / "conv" / 2), trunk, inner, 1, k1),
                norm1: Norm2d::new(&(&cb / 2), cfg.norm, inner),
                dw2: ElasticConv2d::new(&(&cb / 6 / "conv" / 0), inner, inner, 3, k3(inner)),
                pw2: ElasticConv2d::new(&(&cb / 6 / "conv" / 2), inner, trunk, 1, k1),
                norm2: Norm2d::new(&(&cb / 7), cfg.norm, trunk),
            }
        } else {
            let o = ConvOpts {
                bias,
                ..Default::default()
            };
            let second = if cfg.use_dropout { 6 } else { 5 };
            Block::Plain {
                conv1: ElasticConv2d::new(&(&cb / 1), trunk, inner, 3, o),
                norm1: Norm2d::new(&(&cb / 2), cfg.norm, inner),
                conv2: ElasticConv2d::new(&(&cb / second), inner, trunk, 3, o),
                norm2: Norm2d::new(&(&cb / (second + 1)), cfg.norm, trunk),
                second,
            }
        }
    }

    /// The residual branch `conv_block(x)`.
    fn forward(&self, x: &Tensor, inner: i64, dropout: Option<f64>, mode: Mode) -> Tensor {
        let trunk = x.size()[1];
        match self {
            Block::Plain {
                conv1,
                norm1,
                conv2,
                norm2,
                ..
            } => {
                let h = norm1
                    .forward(&conv1.forward(&reflection_pad(x, 1), inner), mode)
                    .relu();
                let h = match dropout {
                    Some(p) => h.dropout(p, mode.dropout()),
                    None => h,
                };
                norm2.forward(&conv2.forward(&reflection_pad(&h, 1), trunk), mode)
            }
            Block::Mobile {
                dw1,
                pw1,
                norm1,
                dw2,
                pw2,
                norm2,
            } => {
                let sep = |dw: &ElasticConv2d, pw: &ElasticConv2d, x: &Tensor, c_out: i64| {
                    let c = x.size()[1];
                    pw.forward(&instance_norm(&dw.forward(&reflection_pad(x, 1), c)), c_out)
                };
                let h = norm1.forward(&sep(dw1, pw1, x, inner), mode).relu();
                let h = match dropout {
                    Some(p) => h.dropout(p, mode.dropout()),
                    None => h,
                };
                norm2.forward(&sep(dw2, pw2, &h, trunk), mode)
            }
        }
    }

    fn extract(&self, prefix: &str, trunk: i64, inner: i64) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        match self {
            Block::Plain {
                conv1,
                norm1,
                conv2,
                norm2,
                second,
            } => {
                push_named(
                    &mut out,
                    &format!("{prefix}.conv_block.1"),
                    conv1.extract(trunk, inner),
                );
                push_named(
                    &mut out,
                    &format!("{prefix}.conv_block.2"),
                    norm1.extract(inner),
                );
                push_named(
                    &mut out,
                    &format!("{prefix}.conv_block.{second}"),
                    conv2.extract(inner, trunk),
                );
                push_named(
                    &mut out,
                    &format!("{prefix}.conv_block.{}", second + 1),
                    norm2.extract(trunk),
                );
            }
            Block::Mobile {
                dw1,
                pw1,
                norm1,
                dw2,
                pw2,
                norm2,
            } => {
                push_named(
                    &mut out,
                    &format!("{prefix}.conv_block.1.conv.0"),
                    dw1.extract(trunk, trunk),
                );
                push_named(
                    &mut out,
                    &format!("{prefix}.conv_block.1.conv.2"),
                    pw1.extract(trunk, inner),
                );
                push_named(
                    &mut out,
                    &format!("{prefix}.conv_block.2"),
                    norm1.extract(inner),
                );
                push_named(
                    &mut out,
                    &format!("{prefix}.conv_block.6.conv.0"),
                    dw2.extract(inner, inner),
                );
                push_named(
                    &mut out,
                    &format!("{prefix}.conv_block.6.conv.2"),
                    pw2.extract(inner, trunk),
                );
                push_named(
                    &mut out,
                    &format!("{prefix}.conv_block.7"),
                    norm2.extract(trunk),
                );
            }
        }
        out
    }

    fn norms(&self) -> [&Norm2d; 2] {
        match self {
            Block::Plain { norm1, norm2, .. } | Block::Mobile { norm1, norm2, .. } => {
                [norm1, norm2]
            }
        }
    }
}

/// A ResNet-family supernet (`pix2pix-resnet` or `mobile-resnet`).
pub struct ResnetGenerator {
    cfg: ArchConfig,
    stem: ElasticConv2d,
    stem_norm: Norm2d,
    down: [(ElasticConv2d, Norm2d); 2],
    blocks: Vec<Block>,
    up: [(ElasticConvTranspose2d, Norm2d); 2],
    last: ElasticConv2d,
}

impl ResnetGenerator {
    /// Creates the full supernet under `p` with the official names.
    pub fn new(p: &nn::Path, cfg: &ArchConfig) -> Result<Self, NnError> {
        cfg.validate()?;
        let full = check_cfg(cfg)?;
        let n = cfg.n_blocks as usize;
        let w = Widths {
            stem: full[0],
            down1: full[1],
            trunk: full[2],
            inner: &full[3..3 + n],
            up1: full[3 + n],
            up2: full[4 + n],
        };
        let bias = conv_bias_for(cfg.norm);
        let m = p / "model";
        let s2 = ConvOpts {
            stride: 2,
            padding: 1,
            bias,
            ..Default::default()
        };
        let t2 = ConvTransposeOpts {
            stride: 2,
            padding: 1,
            output_padding: 1,
            bias,
        };
        let nb = cfg.n_blocks;
        Ok(ResnetGenerator {
            stem: ElasticConv2d::new(
                &(&m / 1),
                cfg.input_nc,
                w.stem,
                7,
                ConvOpts {
                    bias,
                    ..Default::default()
                },
            ),
            stem_norm: Norm2d::new(&(&m / 2), cfg.norm, w.stem),
            down: [
                (
                    ElasticConv2d::new(&(&m / 4), w.stem, w.down1, 3, s2),
                    Norm2d::new(&(&m / 5), cfg.norm, w.down1),
                ),
                (
                    ElasticConv2d::new(&(&m / 7), w.down1, w.trunk, 3, s2),
                    Norm2d::new(&(&m / 8), cfg.norm, w.trunk),
                ),
            ],
            blocks: w
                .inner
                .iter()
                .enumerate()
                .map(|(i, &inner)| Block::new(&(&m / (10 + i)), cfg, w.trunk, inner))
                .collect(),
            up: [
                (
                    ElasticConvTranspose2d::new(&(&m / (10 + nb)), w.trunk, w.up1, 3, t2),
                    Norm2d::new(&(&m / (11 + nb)), cfg.norm, w.up1),
                ),
                (
                    ElasticConvTranspose2d::new(&(&m / (13 + nb)), w.up1, w.up2, 3, t2),
                    Norm2d::new(&(&m / (14 + nb)), cfg.norm, w.up2),
                ),
            ],
            last: ElasticConv2d::new(
                &(&m / (17 + nb)),
                w.up2,
                cfg.output_nc,
                7,
                ConvOpts::default(),
            ),
            cfg: cfg.clone(),
        })
    }
}

impl Generator for ResnetGenerator {
    fn arch(&self) -> &ArchConfig {
        &self.cfg
    }

    fn search_space(&self) -> SearchSpace {
        search_space(&self.cfg).expect("config validated at construction")
    }

    fn forward(&self, x: &Tensor, sub: &SubnetConfig, mode: Mode) -> Result<Tensor, NnError> {
        check_input(x, &self.cfg)?;
        self.search_space().check(sub)?;
        let w = widths(sub, self.blocks.len());
        let dropout = self.cfg.use_dropout.then_some(self.cfg.dropout_rate);
        let mut h = self
            .stem_norm
            .forward(&self.stem.forward(&reflection_pad(x, 3), w.stem), mode)
            .relu();
        for ((conv, norm), c) in self.down.iter().zip([w.down1, w.trunk]) {
            h = norm.forward(&conv.forward(&h, c), mode).relu();
        }
        for (i, (block, &inner)) in self.blocks.iter().zip(w.inner).enumerate() {
            if sub.block_present(i) {
                h = &h + block.forward(&h, inner, dropout, mode);
            }
        }
        for ((conv, norm), c) in self.up.iter().zip([w.up1, w.up2]) {
            h = norm.forward(&conv.forward(&h, c), mode).relu();
        }
        Ok(self
            .last
            .forward(&reflection_pad(&h, 3), self.cfg.output_nc)
            .tanh())
    }

    fn compact_config(&self, sub: &SubnetConfig) -> Result<ArchConfig, NnError> {
        self.search_space().check(sub)?;
        let n = self.blocks.len();
        let w = widths(sub, n);
        let present: Vec<i64> = (0..n)
            .filter(|&i| sub.block_present(i))
            .map(|i| w.inner[i])
            .collect();
        let nb = present.len() as i64;
        let mut ch = vec![w.stem, w.down1, w.trunk];
        ch.extend(&present);
        ch.extend([w.up1, w.up2]);
        let mut cfg = self.cfg.clone();
        cfg.n_blocks = nb;
        cfg.space.min_blocks = cfg.space.min_blocks.min(nb);
        if derived_widths(w.stem, nb) == ch {
            cfg.ngf = w.stem;
            cfg.channels = None;
        } else {
            cfg.channels = Some(ch);
        }
        Ok(cfg)
    }

    fn extract(&self, sub: &SubnetConfig) -> Result<Vec<(String, Tensor)>, NnError> {
        self.search_space().check(sub)?;
        let w = widths(sub, self.blocks.len());
        // Indices of the official `nn.Sequential` (`model.N`); layers after the residual
        // blocks shift by the number of blocks the sub-net keeps.
        let mut out = Vec::new();
        let head = [
            (1, self.stem.extract(self.cfg.input_nc, w.stem)),
            (2, self.stem_norm.extract(w.stem)),
            (4, self.down[0].0.extract(w.stem, w.down1)),
            (5, self.down[0].1.extract(w.down1)),
            (7, self.down[1].0.extract(w.down1, w.trunk)),
            (8, self.down[1].1.extract(w.trunk)),
        ];
        for (i, items) in head {
            push_named(&mut out, &format!("model.{i}"), items);
        }
        let mut j = 0i64;
        for (i, (block, &inner)) in self.blocks.iter().zip(w.inner).enumerate() {
            if sub.block_present(i) {
                out.extend(block.extract(&format!("model.{}", 10 + j), w.trunk, inner));
                j += 1;
            }
        }
        let tail = [
            (10, self.up[0].0.extract(w.trunk, w.up1)),
            (11, self.up[0].1.extract(w.up1)),
            (13, self.up[1].0.extract(w.up1, w.up2)),
            (14, self.up[1].1.extract(w.up2)),
            (17, self.last.extract(w.up2, self.cfg.output_nc)),
        ];
        for (i, items) in tail {
            push_named(&mut out, &format!("model.{}", i + j), items);
        }
        Ok(out)
    }

    fn batch_norms(&self) -> Vec<&ElasticBatchNorm2d> {
        let mut v: Vec<&Norm2d> = vec![&self.stem_norm];
        v.extend(self.down.iter().map(|(_, n)| n));
        for b in &self.blocks {
            v.extend(b.norms());
        }
        v.extend(self.up.iter().map(|(_, n)| n));
        v.into_iter().filter_map(Norm2d::batch_norm).collect()
    }
}
