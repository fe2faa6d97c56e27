//! Pix2PixHD global generator (NVIDIA pix2pixHD `GlobalGenerator`) as an elastic supernet.
//!
//! Structure and state-dict names follow the official `nn.Sequential` `model`:
//! `model.1` 7x7 conv (after reflection pad 3), instance norm, ReLU; `n_downsample` strided
//! 3x3 convs (`model.4`, `model.7`, ...); `n_blocks` residual blocks
//! (`model.K.conv_block.{1,5}`: reflection pad, conv, IN, ReLU, pad, conv, IN); as many 3x3
//! transposed convs (stride 2, output padding 1); reflection pad 3, 7x7 conv, tanh. Instance
//! norm is `affine=False` (pix2pixHD's `get_norm_layer("instance")`), so it has no tensors;
//! `--norm batch` is `BatchNorm2d(affine=True)` at the norm positions (`model.2`, `model.5`,
//! ..., `conv_block.{2,6}`) with weight, bias and running statistics. pix2pixHD has no bias
//! rule: its convs keep their biases under either norm.
//!
//! Elastic positions (search-space order): `stem`, `down1..D` (`downD` is also the
//! residual trunk width), `blockJ.inner` (first conv of block J), `up1..D`. Depth: block J
//! may be skipped when `J >= space.min_blocks`. A compact model (export) lists its widths in
//! `ArchConfig::channels` in the same order, without the skipped blocks.

use tch::{Tensor, nn};

use crate::arch::{Arch, ArchConfig, NormKind};
use crate::cost::{self, Cost};
use crate::elastic::{
    ConvOpts, ConvTransposeOpts, ElasticBatchNorm2d, ElasticConv2d, ElasticConvTranspose2d, Mode,
    Norm2d, push_named, reflection_pad,
};
use crate::error::NnError;
use crate::generator::{Generator, check_batch};
use crate::subnet::{BlockChoice, SearchSpace, SubnetConfig};

/// Full widths per elastic position, resolved from `ngf` or from explicit `channels`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Layout {
    stem: i64,
    downs: Vec<i64>,
    blocks: Vec<i64>,
    ups: Vec<i64>,
}

impl Layout {
    fn new(cfg: &ArchConfig) -> Result<Self, NnError> {
        if cfg.arch != Arch::Pix2PixHd {
            return Err(NnError::config("arch", cfg.arch, "expected pix2pixhd"));
        }
        cfg.validate()?;
        if !matches!(cfg.norm, NormKind::Instance | NormKind::Batch) {
            return Err(NnError::config(
                "norm",
                format!("{:?}", cfg.norm).to_lowercase(),
                "pix2pixhd takes instance or batch (pix2pixHD's get_norm_layer)",
            ));
        }
        let d = cfg.n_downsample;
        if !(1..=8).contains(&d) {
            return Err(NnError::config("n_downsample", d, "must be in 1..=8"));
        }
        let (d, b) = (d as usize, cfg.n_blocks as usize);
        let n = 1 + 2 * d + b;
        match &cfg.channels {
            Some(ch) => {
                if ch.len() != n {
                    return Err(NnError::config(
                        "channels",
                        format!("{ch:?}"),
                        format!(
                            "pix2pixhd with n_downsample {d} and n_blocks {b} has {n} elastic positions \
                             (stem, down1..{d}, {b} block inner widths, up1..{d})"
                        ),
                    ));
                }
                Ok(Layout {
                    stem: ch[0],
                    downs: ch[1..=d].to_vec(),
                    blocks: ch[1 + d..1 + d + b].to_vec(),
                    ups: ch[1 + d + b..].to_vec(),
                })
            }
            None => {
                let ngf = cfg.ngf;
                let trunk = ngf << d;
                Ok(Layout {
                    stem: ngf,
                    downs: (1..=d).map(|i| ngf << i).collect(),
                    blocks: vec![trunk; b],
                    ups: (1..=d).map(|i| trunk >> i).collect(),
                })
            }
        }
    }

    fn positions(&self) -> Vec<(String, i64)> {
        let mut v = vec![("stem".to_string(), self.stem)];
        v.extend(
            self.downs
                .iter()
                .enumerate()
                .map(|(i, &c)| (format!("down{}", i + 1), c)),
        );
        v.extend(
            self.blocks
                .iter()
                .enumerate()
                .map(|(j, &c)| (format!("block{j}.inner"), c)),
        );
        v.extend(
            self.ups
                .iter()
                .enumerate()
                .map(|(i, &c)| (format!("up{}", i + 1), c)),
        );
        v
    }
}

/// Active widths of one sub-net, split by role.
struct Active<'a> {
    stem: i64,
    downs: &'a [i64],
    blocks: &'a [i64],
    ups: &'a [i64],
}

fn split<'a>(layout: &Layout, sub: &'a SubnetConfig) -> Active<'a> {
    let (d, b) = (layout.downs.len(), layout.blocks.len());
    let w = &sub.widths;
    Active {
        stem: w[0],
        downs: &w[1..=d],
        blocks: &w[1 + d..1 + d + b],
        ups: &w[1 + d + b..],
    }
}

/// The search space of a pix2pixhd config.
pub fn search_space(cfg: &ArchConfig) -> Result<SearchSpace, NnError> {
    let layout = Layout::new(cfg)?;
    let widths = crate::generator::width_choices(cfg, layout.positions());
    let blocks = (0..layout.blocks.len())
        .map(|j| BlockChoice {
            name: format!("block{j}"),
            skippable: crate::generator::block_skippable(cfg, j as i64),
        })
        .collect();
    Ok(SearchSpace { widths, blocks })
}

/// Spatial size after the stride-2 3x3 downsampling convs (padding 1).
fn down_hw(hw: [i64; 2]) -> [i64; 2] {
    [
        cost::conv_out(hw[0], 3, 2, 1, 1),
        cost::conv_out(hw[1], 3, 2, 1, 1),
    ]
}

fn check_input(cfg: &ArchConfig, chw: [i64; 3]) -> Result<(), NnError> {
    let bad = |reason: String| NnError::BadInput {
        shape: chw.to_vec(),
        reason,
    };
    if chw[0] != cfg.input_nc {
        return Err(bad(format!(
            "pix2pixhd expects {} input channels",
            cfg.input_nc
        )));
    }
    // Reflection padding needs each side larger than the pad: 3 at full size, 1 in the trunk.
    let mut hw = [chw[1], chw[2]];
    if hw.iter().any(|&s| s < 4) {
        return Err(bad(
            "height and width must be at least 4 (reflection pad 3)".into(),
        ));
    }
    for _ in 0..cfg.n_downsample {
        hw = down_hw(hw);
    }
    if hw.iter().any(|&s| s < 2) {
        return Err(bad(format!(
            "too small for {} downsamplings: the residual trunk would be {}x{} (needs >= 2x2)",
            cfg.n_downsample, hw[0], hw[1]
        )));
    }
    Ok(())
}

/// Analytic MACs / params of sub-net `sub` on a batch-1 `[C, H, W]` input.
pub fn cost(cfg: &ArchConfig, sub: &SubnetConfig, input_chw: [i64; 3]) -> Result<Cost, NnError> {
    let layout = Layout::new(cfg)?;
    search_space(cfg)?.check(sub)?;
    check_input(cfg, input_chw)?;
    let a = split(&layout, sub);
    // Batch norm's affine transform counts (torchprofile); instance norm here has none.
    let affine = cfg.norm == NormKind::Batch;
    let mut hw = [input_chw[1], input_chw[2]];
    let mut c =
        cost::conv2d(cfg.input_nc, a.stem, [7, 7], 1, hw, true) + cost::norm(a.stem, hw, affine);
    let mut ch = a.stem;
    for &w in a.downs {
        hw = down_hw(hw);
        c += cost::conv2d(ch, w, [3, 3], 1, hw, true) + cost::norm(w, hw, affine);
        ch = w;
    }
    for (j, &inner) in a.blocks.iter().enumerate() {
        if sub.block_present(j) {
            c += cost::conv2d(ch, inner, [3, 3], 1, hw, true)
                + cost::norm(inner, hw, affine)
                + cost::conv2d(inner, ch, [3, 3], 1, hw, true)
                + cost::norm(ch, hw, affine);
        }
    }
    for &w in a.ups {
        hw = [
            cost::conv_transpose_out(hw[0], 3, 2, 1, 1, 1),
            cost::conv_transpose_out(hw[1], 3, 2, 1, 1, 1),
        ];
        c += cost::conv_transpose2d(ch, w, [3, 3], 1, hw, true) + cost::norm(w, hw, affine);
        ch = w;
    }
    c += cost::conv2d(ch, cfg.output_nc, [7, 7], 1, hw, true);
    Ok(c)
}

/// One pix2pixHD `ResnetBlock` (`conv_block.1`, `conv_block.5`, norms `.2`, `.6`).
#[derive(Debug)]
struct ResBlock {
    conv1: ElasticConv2d,
    norm1: Norm2d,
    conv2: ElasticConv2d,
    norm2: Norm2d,
}

/// The Pix2PixHD global generator supernet.
#[derive(Debug)]
pub struct Pix2PixHd {
    cfg: ArchConfig,
    layout: Layout,
    stem: (ElasticConv2d, Norm2d),
    downs: Vec<(ElasticConv2d, Norm2d)>,
    blocks: Vec<ResBlock>,
    ups: Vec<(ElasticConvTranspose2d, Norm2d)>,
    last: ElasticConv2d,
}

impl Pix2PixHd {
    /// Creates the full supernet's tensors under `p` (`model.N...` names).
    pub fn new(p: &nn::Path, cfg: &ArchConfig) -> Result<Self, NnError> {
        let layout = Layout::new(cfg)?;
        let m = p / "model";
        let plain = |padding: i64, stride: i64| ConvOpts {
            padding,
            stride,
            ..Default::default()
        };
        let d = layout.downs.len();
        // Instance norm (affine=False) creates no tensors, so an instance-norm model's
        // variables are exactly those it had before batch norm was supported.
        let norm = |i: usize, c: i64| Norm2d::new(&(&m / i), cfg.norm, c);
        let stem = (
            ElasticConv2d::new(&(&m / 1), cfg.input_nc, layout.stem, 7, plain(0, 1)),
            norm(2, layout.stem),
        );
        let mut ch = layout.stem;
        let mut downs = Vec::with_capacity(d);
        for (i, &w) in layout.downs.iter().enumerate() {
            downs.push((
                ElasticConv2d::new(&(&m / (4 + 3 * i)), ch, w, 3, plain(1, 2)),
                norm(5 + 3 * i, w),
            ));
            ch = w;
        }
        let first_block = 4 + 3 * d;
        let blocks = layout
            .blocks
            .iter()
            .enumerate()
            .map(|(j, &inner)| {
                let bp = &m / (first_block + j) / "conv_block";
                ResBlock {
                    conv1: ElasticConv2d::new(&(&bp / 1), ch, inner, 3, plain(0, 1)),
                    norm1: Norm2d::new(&(&bp / 2), cfg.norm, inner),
                    conv2: ElasticConv2d::new(&(&bp / 5), inner, ch, 3, plain(0, 1)),
                    norm2: Norm2d::new(&(&bp / 6), cfg.norm, ch),
                }
            })
            .collect();
        let first_up = first_block + layout.blocks.len();
        let mut ups = Vec::with_capacity(d);
        for (i, &w) in layout.ups.iter().enumerate() {
            let opts = ConvTransposeOpts {
                stride: 2,
                padding: 1,
                output_padding: 1,
                bias: true,
            };
            ups.push((
                ElasticConvTranspose2d::new(&(&m / (first_up + 3 * i)), ch, w, 3, opts),
                norm(first_up + 3 * i + 1, w),
            ));
            ch = w;
        }
        let last = ElasticConv2d::new(
            &(&m / (first_up + 3 * d + 1)),
            ch,
            cfg.output_nc,
            7,
            plain(0, 1),
        );
        Ok(Pix2PixHd {
            cfg: cfg.clone(),
            layout,
            stem,
            downs,
            blocks,
            ups,
            last,
        })
    }
}

impl Generator for Pix2PixHd {
    fn arch(&self) -> &ArchConfig {
        &self.cfg
    }

    fn search_space(&self) -> SearchSpace {
        search_space(&self.cfg).expect("config validated in Pix2PixHd::new")
    }

    fn forward(&self, x: &Tensor, sub: &SubnetConfig, mode: Mode) -> Result<Tensor, NnError> {
        self.search_space().check(sub)?;
        check_batch(x, |chw| check_input(&self.cfg, chw))?;
        let a = split(&self.layout, sub);
        let act = |norm: &Norm2d, t: Tensor| norm.forward(&t, mode).relu();
        let (stem, stem_norm) = &self.stem;
        let mut h = act(stem_norm, stem.forward(&reflection_pad(x, 3), a.stem));
        for ((conv, norm), &w) in self.downs.iter().zip(a.downs) {
            h = act(norm, conv.forward(&h, w));
        }
        let trunk = h.size()[1];
        for (j, (blk, &inner)) in self.blocks.iter().zip(a.blocks).enumerate() {
            if !sub.block_present(j) {
                continue;
            }
            let r = act(&blk.norm1, blk.conv1.forward(&reflection_pad(&h, 1), inner));
            let r = blk
                .norm2
                .forward(&blk.conv2.forward(&reflection_pad(&r, 1), trunk), mode);
            // Not `h += r`: that adds in place into a tensor autograd saved (reflection pad).
            h = &h + &r;
        }
        for ((conv, norm), &w) in self.ups.iter().zip(a.ups) {
            h = act(norm, conv.forward(&h, w));
        }
        Ok(self
            .last
            .forward(&reflection_pad(&h, 3), self.cfg.output_nc)
            .tanh())
    }

    fn compact_config(&self, sub: &SubnetConfig) -> Result<ArchConfig, NnError> {
        self.search_space().check(sub)?;
        let a = split(&self.layout, sub);
        let mut channels = vec![a.stem];
        channels.extend_from_slice(a.downs);
        let kept: Vec<i64> = a
            .blocks
            .iter()
            .enumerate()
            .filter(|(j, _)| sub.block_present(*j))
            .map(|(_, &w)| w)
            .collect();
        let n_blocks = kept.len() as i64;
        channels.extend(kept);
        channels.extend_from_slice(a.ups);
        Ok(ArchConfig {
            n_blocks,
            channels: Some(channels),
            ..self.cfg.clone()
        })
    }

    fn extract(&self, sub: &SubnetConfig) -> Result<Vec<(String, Tensor)>, NnError> {
        self.search_space().check(sub)?;
        let a = split(&self.layout, sub);
        let d = self.layout.downs.len();
        let mut out = Vec::new();
        push_named(
            &mut out,
            "model.1",
            self.stem.0.extract(self.cfg.input_nc, a.stem),
        );
        push_named(&mut out, "model.2", self.stem.1.extract(a.stem));
        let mut ch = a.stem;
        for (i, ((conv, norm), &w)) in self.downs.iter().zip(a.downs).enumerate() {
            push_named(
                &mut out,
                &format!("model.{}", 4 + 3 * i),
                conv.extract(ch, w),
            );
            push_named(&mut out, &format!("model.{}", 5 + 3 * i), norm.extract(w));
            ch = w;
        }
        let mut idx = 4 + 3 * d;
        for (j, (blk, &inner)) in self.blocks.iter().zip(a.blocks).enumerate() {
            if !sub.block_present(j) {
                continue;
            }
            push_named(
                &mut out,
                &format!("model.{idx}.conv_block.1"),
                blk.conv1.extract(ch, inner),
            );
            push_named(
                &mut out,
                &format!("model.{idx}.conv_block.2"),
                blk.norm1.extract(inner),
            );
            push_named(
                &mut out,
                &format!("model.{idx}.conv_block.5"),
                blk.conv2.extract(inner, ch),
            );
            push_named(
                &mut out,
                &format!("model.{idx}.conv_block.6"),
                blk.norm2.extract(ch),
            );
            idx += 1;
        }
        for ((conv, norm), &w) in self.ups.iter().zip(a.ups) {
            push_named(&mut out, &format!("model.{idx}"), conv.extract(ch, w));
            push_named(&mut out, &format!("model.{}", idx + 1), norm.extract(w));
            ch = w;
            idx += 3;
        }
        push_named(
            &mut out,
            &format!("model.{}", idx + 1),
            self.last.extract(ch, self.cfg.output_nc),
        );
        Ok(out)
    }

    fn batch_norms(&self) -> Vec<&ElasticBatchNorm2d> {
        let mut v: Vec<&Norm2d> = vec![&self.stem.1];
        v.extend(self.downs.iter().map(|(_, n)| n));
        for b in &self.blocks {
            v.push(&b.norm1);
            v.push(&b.norm2);
        }
        v.extend(self.ups.iter().map(|(_, n)| n));
        v.into_iter().filter_map(Norm2d::batch_norm).collect()
    }
}
