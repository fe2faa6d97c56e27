//! GauGAN generator (NVIDIA SPADE `SPADEGenerator`, no VAE encoder) as an elastic supernet.
//!
//! The segmentation map is the input: it is resized (nearest) to the latent grid
//! `H / 2^n_up x W / 2^n_up` (`n_up` = 5 for `normal`, 6 for `more`, 7 for `most`
//! upsampling) and mapped by the 3x3 conv `fc` to the trunk width (`16 ngf`). Then `head_0`,
//! 2x up, `G_middle_0`, (2x up for `more` and `most`), `G_middle_1..`, and `up_0..up_3` (and
//! `up_4`, `ngf -> ngf / 2`, for `most`) each after a 2x up, leaky ReLU, `conv_img`, tanh. Every block is a [`SpadeResBlock`]; `up_k` halve the width and have a
//! learned shortcut. Names are the official ones (`fc`, `head_0.conv_0`, `up_2.norm_s.mlp_gamma`,
//! ...). Spectral norm is not used (GAN Compression's choice); [`crate::spade::fold_spectral_norm`]
//! converts official checkpoints that have it. `ArchConfig::norm` is ignored; `norm_g`
//! (SPADE's `--norm_G`) chooses the SPADE layers' parameter-free norm: batch norm
//! (`spectralspadesyncbatch3x3`, the default, and `..batch3x3`) or instance norm
//! (`..instance3x3`, no running statistics).
//!
//! `n_blocks` is the number of `G_middle` blocks (2 in the official model). `G_middle_0`
//! runs before the extra `more` upsampling and is always present; `G_middle_J` (J >= 1) runs
//! after it and may be skipped when `J >= space.min_blocks`, so any subset of them compacts
//! to a model with fewer (renumbered) blocks.
//!
//! Elastic positions (search-space order): `fc` (trunk width), `head_0.middle`,
//! `head_0.hidden`, `G_middle_J.middle`, `G_middle_J.hidden`, then for each `up_k`:
//! `up_k.middle`, `up_k.out`, `up_k.hidden` (`k` up to 3, or 4 for `most`). `middle` is `conv_0`'s output width, `hidden`
//! the SPADE hidden width (128 in the original) of all norms of the block.

use tch::{Tensor, nn};

use crate::arch::{Arch, ArchConfig, Upsampling};
use crate::cost::{self, Cost};
use crate::elastic::leaky_relu;
use crate::elastic::{ConvOpts, ElasticBatchNorm2d, ElasticConv2d, Mode, push_named};
use crate::error::NnError;
use crate::generator::{Generator, check_batch};
use crate::spade::{BlockWidths, SpadeOpts, SpadeResBlock, block_cost, resize_nearest, up2};
use crate::subnet::{BlockChoice, SearchSpace, SubnetConfig};

/// SPADE's hidden width in the official model (`nhidden = 128` in `SPADE.__init__`).
pub const OFFICIAL_NHIDDEN: i64 = 128;

/// Number of `up_k` blocks: 4, and `up_4` for the `most` schedule.
fn n_up_blocks(u: Upsampling) -> usize {
    match u {
        Upsampling::Normal | Upsampling::More => 4,
        Upsampling::Most => 5,
    }
}

/// Full widths of one block position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Full {
    middle: i64,
    out: i64,
    hidden: i64,
}

/// Full widths resolved from `ngf` or from explicit `channels`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Layout {
    trunk: i64,
    head: Full,
    middles: Vec<Full>,
    ups: Vec<Full>,
    n_up: u32,
}

impl Layout {
    fn new(cfg: &ArchConfig) -> Result<Self, NnError> {
        if cfg.arch != Arch::Gaugan {
            return Err(NnError::config("arch", cfg.arch, "expected gaugan"));
        }
        cfg.validate()?;
        if cfg.n_blocks < 1 {
            return Err(NnError::config(
                "n_blocks",
                cfg.n_blocks,
                "gaugan needs at least one G_middle block (the official model has 2)",
            ));
        }
        let n = cfg.n_blocks as usize;
        let n_up = cfg.upsampling.doublings();
        let n_ups = n_up_blocks(cfg.upsampling);
        let expected = 3 + 2 * n + 3 * n_ups;
        match &cfg.channels {
            Some(ch) => {
                if ch.len() != expected {
                    return Err(NnError::config(
                        "channels",
                        format!("{ch:?}"),
                        format!(
                            "gaugan with {n} G_middle blocks has {expected} elastic positions \
                             (fc, head_0 middle/hidden, middle/hidden per G_middle, \
                             middle/out/hidden per up_0..up_{})",
                            n_ups - 1
                        ),
                    ));
                }
                let two = |i: usize| Full {
                    middle: ch[i],
                    out: ch[0],
                    hidden: ch[i + 1],
                };
                let base = 3 + 2 * n;
                Ok(Layout {
                    trunk: ch[0],
                    head: two(1),
                    middles: (0..n).map(|j| two(3 + 2 * j)).collect(),
                    ups: (0..n_ups)
                        .map(|k| Full {
                            middle: ch[base + 3 * k],
                            out: ch[base + 3 * k + 1],
                            hidden: ch[base + 3 * k + 2],
                        })
                        .collect(),
                    n_up,
                })
            }
            None => {
                let trunk = 16 * cfg.ngf;
                let same = Full {
                    middle: trunk,
                    out: trunk,
                    hidden: OFFICIAL_NHIDDEN,
                };
                Ok(Layout {
                    trunk,
                    head: same,
                    middles: vec![same; n],
                    ups: (1..=n_ups as u32)
                        .map(|k| {
                            let out = (trunk >> k).max(1);
                            Full {
                                middle: out,
                                out,
                                hidden: OFFICIAL_NHIDDEN,
                            }
                        })
                        .collect(),
                    n_up,
                })
            }
        }
    }

    fn positions(&self) -> Vec<(String, i64)> {
        let mut v = vec![
            ("fc".to_string(), self.trunk),
            ("head_0.middle".to_string(), self.head.middle),
            ("head_0.hidden".to_string(), self.head.hidden),
        ];
        for (j, f) in self.middles.iter().enumerate() {
            v.push((format!("G_middle_{j}.middle"), f.middle));
            v.push((format!("G_middle_{j}.hidden"), f.hidden));
        }
        for (k, f) in self.ups.iter().enumerate() {
            v.push((format!("up_{k}.middle"), f.middle));
            v.push((format!("up_{k}.out"), f.out));
            v.push((format!("up_{k}.hidden"), f.hidden));
        }
        v
    }
}

/// Active widths of one sub-net.
struct Active {
    trunk: i64,
    head: BlockWidths,
    middles: Vec<BlockWidths>,
    ups: Vec<BlockWidths>,
}

fn split(layout: &Layout, sub: &SubnetConfig) -> Active {
    let w = &sub.widths;
    let trunk = w[0];
    let two = |i: usize| BlockWidths {
        middle: w[i],
        out: trunk,
        hidden: w[i + 1],
    };
    let n = layout.middles.len();
    let base = 3 + 2 * n;
    Active {
        trunk,
        head: two(1),
        middles: (0..n).map(|j| two(3 + 2 * j)).collect(),
        ups: (0..layout.ups.len())
            .map(|k| BlockWidths {
                middle: w[base + 3 * k],
                out: w[base + 3 * k + 1],
                hidden: w[base + 3 * k + 2],
            })
            .collect(),
    }
}

/// Whether `G_middle_j` may be skipped.
fn skippable(cfg: &ArchConfig, j: usize) -> bool {
    // G_middle_0 sits before the extra `more` upsample and always runs.
    j >= 1 && crate::generator::block_skippable(cfg, j as i64)
}

/// The search space of a gaugan config.
pub fn search_space(cfg: &ArchConfig) -> Result<SearchSpace, NnError> {
    let layout = Layout::new(cfg)?;
    let widths = crate::generator::width_choices(cfg, layout.positions());
    let blocks = (0..layout.middles.len())
        .map(|j| BlockChoice {
            name: format!("G_middle_{j}"),
            skippable: skippable(cfg, j),
        })
        .collect();
    Ok(SearchSpace { widths, blocks })
}

/// The latent grid size; the input must be divisible by `2^n_up` so the output has the
/// input's size (the official model derives it from `crop_size` and `aspect_ratio`).
fn latent_hw(cfg: &ArchConfig, layout: &Layout, chw: [i64; 3]) -> Result<[i64; 2], NnError> {
    let bad = |reason: String| NnError::BadInput {
        shape: chw.to_vec(),
        reason,
    };
    if chw[0] != cfg.input_nc {
        return Err(bad(format!(
            "gaugan expects {} label channels",
            cfg.input_nc
        )));
    }
    let f = 1i64 << layout.n_up;
    if chw[1] < f || chw[2] < f || chw[1] % f != 0 || chw[2] % f != 0 {
        return Err(bad(format!(
            "height and width must be positive multiples of {f} ({:?} upsampling: {} doublings)",
            cfg.upsampling, layout.n_up
        )));
    }
    Ok([chw[1] / f, chw[2] / f])
}

/// Analytic MACs / params of sub-net `sub` on a batch-1 `[C, H, W]` input.
pub fn cost(cfg: &ArchConfig, sub: &SubnetConfig, input_chw: [i64; 3]) -> Result<Cost, NnError> {
    let layout = Layout::new(cfg)?;
    search_space(cfg)?.check(sub)?;
    let mut hw = latent_hw(cfg, &layout, input_chw)?;
    let a = split(&layout, sub);
    let label = cfg.input_nc;
    let mut c = cost::conv2d(label, a.trunk, [3, 3], 1, hw, true);
    c += block_cost(label, a.trunk, a.head, false, hw);
    hw = [hw[0] * 2, hw[1] * 2];
    c += block_cost(label, a.trunk, a.middles[0], false, hw);
    if cfg.upsampling != Upsampling::Normal {
        hw = [hw[0] * 2, hw[1] * 2];
    }
    for (j, w) in a.middles.iter().enumerate().skip(1) {
        if sub.block_present(j) {
            c += block_cost(label, a.trunk, *w, false, hw);
        }
    }
    let mut ch = a.trunk;
    for w in &a.ups {
        hw = [hw[0] * 2, hw[1] * 2];
        c += block_cost(label, ch, *w, true, hw);
        ch = w.out;
    }
    c += cost::conv2d(ch, cfg.output_nc, [3, 3], 1, hw, true);
    Ok(c)
}

/// The GauGAN generator supernet.
#[derive(Debug)]
pub struct Gaugan {
    cfg: ArchConfig,
    layout: Layout,
    fc: ElasticConv2d,
    head: SpadeResBlock,
    middles: Vec<SpadeResBlock>,
    ups: Vec<SpadeResBlock>,
    conv_img: ElasticConv2d,
}

impl Gaugan {
    /// Creates the full supernet's tensors under `p` with the official names.
    pub fn new(p: &nn::Path, cfg: &ArchConfig) -> Result<Self, NnError> {
        let layout = Layout::new(cfg)?;
        let label = cfg.input_nc;
        let pad1 = ConvOpts {
            padding: 1,
            ..Default::default()
        };
        let t = layout.trunk;
        let fc = ElasticConv2d::new(&(p / "fc"), label, t, 3, pad1);
        let opts = |nhidden| SpadeOpts {
            label_nc: label,
            nhidden,
            instance: cfg.norm_g.instance(),
        };
        let same = |name: String, f: Full| {
            SpadeResBlock::new(&(p / name), t, f.middle, t, false, opts(f.hidden))
        };
        let head = same("head_0".into(), layout.head);
        let middles = layout
            .middles
            .iter()
            .enumerate()
            .map(|(j, &f)| same(format!("G_middle_{j}"), f))
            .collect();
        let mut ch = t;
        let mut ups = Vec::with_capacity(layout.ups.len());
        for (k, f) in layout.ups.iter().enumerate() {
            ups.push(SpadeResBlock::new(
                &(p / format!("up_{k}")),
                ch,
                f.middle,
                f.out,
                true,
                opts(f.hidden),
            ));
            ch = f.out;
        }
        let conv_img = ElasticConv2d::new(&(p / "conv_img"), ch, cfg.output_nc, 3, pad1);
        Ok(Gaugan {
            cfg: cfg.clone(),
            layout,
            fc,
            head,
            middles,
            ups,
            conv_img,
        })
    }

    fn blocks(&self) -> impl Iterator<Item = &SpadeResBlock> {
        std::iter::once(&self.head)
            .chain(self.middles.iter())
            .chain(self.ups.iter())
    }
}

impl Generator for Gaugan {
    fn arch(&self) -> &ArchConfig {
        &self.cfg
    }

    fn search_space(&self) -> SearchSpace {
        search_space(&self.cfg).expect("config validated in Gaugan::new")
    }

    fn forward(&self, x: &Tensor, sub: &SubnetConfig, mode: Mode) -> Result<Tensor, NnError> {
        self.search_space().check(sub)?;
        let lat = check_batch(x, |chw| latent_hw(&self.cfg, &self.layout, chw))?;
        let s = x.size();
        if self.cfg.norm_g.instance() && lat[0] * lat[1] < 2 {
            return Err(NnError::BadInput {
                shape: s,
                reason: "instance-norm statistics need more than one value per channel at \
                         the latent resolution (use a larger input)"
                    .into(),
            });
        }
        if mode.batch_stats() && s[0] * lat[0] * lat[1] < 2 {
            return Err(NnError::BadInput {
                shape: s,
                reason: "batch-norm statistics need more than one value per channel at the \
                         latent resolution (use a larger batch or input)"
                    .into(),
            });
        }
        let a = split(&self.layout, sub);
        let seg = x;
        let mut h = self.fc.forward(&resize_nearest(seg, lat), a.trunk);
        h = self.head.forward(&h, seg, a.head, mode);
        h = up2(&h);
        h = self.middles[0].forward(&h, seg, a.middles[0], mode);
        if self.cfg.upsampling != Upsampling::Normal {
            h = up2(&h);
        }
        for (j, (blk, w)) in self.middles.iter().zip(&a.middles).enumerate().skip(1) {
            if sub.block_present(j) {
                h = blk.forward(&h, seg, *w, mode);
            }
        }
        for (blk, w) in self.ups.iter().zip(&a.ups) {
            h = blk.forward(&up2(&h), seg, *w, mode);
        }
        Ok(self
            .conv_img
            .forward(&leaky_relu(&h, 0.2), self.cfg.output_nc)
            .tanh())
    }

    fn compact_config(&self, sub: &SubnetConfig) -> Result<ArchConfig, NnError> {
        self.search_space().check(sub)?;
        let a = split(&self.layout, sub);
        let mut channels = vec![a.trunk, a.head.middle, a.head.hidden];
        let mut n_blocks = 0;
        for (j, w) in a.middles.iter().enumerate() {
            if j == 0 || sub.block_present(j) {
                channels.extend([w.middle, w.hidden]);
                n_blocks += 1;
            }
        }
        for w in &a.ups {
            channels.extend([w.middle, w.out, w.hidden]);
        }
        Ok(ArchConfig {
            n_blocks,
            channels: Some(channels),
            ..self.cfg.clone()
        })
    }

    fn extract(&self, sub: &SubnetConfig) -> Result<Vec<(String, Tensor)>, NnError> {
        self.search_space().check(sub)?;
        let a = split(&self.layout, sub);
        let mut out = Vec::new();
        let mut nested = |prefix: &str, items: Vec<(String, Tensor)>| {
            out.extend(items.into_iter().map(|(n, t)| (format!("{prefix}.{n}"), t)));
        };
        nested("head_0", self.head.extract(a.trunk, a.head));
        let mut kept = 0;
        for (j, (blk, w)) in self.middles.iter().zip(&a.middles).enumerate() {
            if j == 0 || sub.block_present(j) {
                nested(&format!("G_middle_{kept}"), blk.extract(a.trunk, *w));
                kept += 1;
            }
        }
        let mut ch = a.trunk;
        for (k, (blk, w)) in self.ups.iter().zip(&a.ups).enumerate() {
            nested(&format!("up_{k}"), blk.extract(ch, *w));
            ch = w.out;
        }
        push_named(&mut out, "fc", self.fc.extract(self.cfg.input_nc, a.trunk));
        push_named(
            &mut out,
            "conv_img",
            self.conv_img.extract(ch, self.cfg.output_nc),
        );
        Ok(out)
    }

    fn batch_norms(&self) -> Vec<&ElasticBatchNorm2d> {
        self.blocks().flat_map(SpadeResBlock::batch_norms).collect()
    }
}
