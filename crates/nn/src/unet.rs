//! Pix2Pix UNet generator (pytorch-CycleGAN-and-pix2pix `UnetGenerator`) as a supernet.
//!
//! Levels `l = 0..num_downs` from outermost to innermost; the level-`l` block lives at
//! `model` + `.model.1` (l = 1) + `.model.3` per further level, as the official nested
//! `UnetSkipConnectionBlock`s. Inside a block: outermost `model.0` down-conv, `model.3`
//! up-conv; innermost `model.1` down, `model.3` up, `model.4` up-norm; middle `model.1` down,
//! `model.2` down-norm, `model.5` up, `model.6` up-norm.
//!
//! Search space: one width per level (the down-conv output, `level{l}`; full width
//! `ngf * min(2^l, 8)`); a level's up-conv outputs the width of the level above (the
//! output channels at level 0). No depth-elastic blocks: removing a level changes the
//! bottleneck resolution, which is not a sub-net of the same function.
//!
//! Official quirk kept on purpose: the `LeakyReLU(inplace=True)` that starts every inner
//! block also rewrites the tensor that is concatenated as the skip, so the skip carries
//! `leaky_relu(x)`, not `x`.

use tch::{Tensor, nn};

use crate::arch::{Arch, ArchConfig, NormKind};
use crate::cost::{self, Cost};
use crate::elastic::{
    ConvOpts, ConvTransposeOpts, ElasticBatchNorm2d, ElasticConv2d, ElasticConvTranspose2d, Mode,
    Norm2d, conv_bias_for, leaky_relu, push_named,
};
use crate::error::NnError;
use crate::generator::{Generator, check_input, full_widths, width_choices};
use crate::subnet::{SearchSpace, SubnetConfig};

fn derived_widths(ngf: i64, num_downs: i64) -> Vec<i64> {
    (0..num_downs).map(|l| ngf * (1i64 << l.min(3))).collect()
}

fn check_cfg(cfg: &ArchConfig) -> Result<Vec<i64>, NnError> {
    if cfg.arch != Arch::Pix2PixUnet {
        return Err(NnError::config("arch", cfg.arch, "not pix2pix-unet"));
    }
    if !(5..=12).contains(&cfg.num_downs) {
        return Err(NnError::config(
            "num_downs",
            cfg.num_downs,
            "the official UnetGenerator needs 5..=12 levels (8 for 256x256 inputs)",
        ));
    }
    cfg.norm.require_pix2pix("UNet")?;
    full_widths(cfg, derived_widths(cfg.ngf, cfg.num_downs))
}

/// The search space of a UNet config.
pub fn search_space(cfg: &ArchConfig) -> Result<SearchSpace, NnError> {
    let full = check_cfg(cfg)?;
    Ok(SearchSpace {
        widths: width_choices(
            cfg,
            full.into_iter()
                .enumerate()
                .map(|(l, w)| (format!("level{l}"), w))
                .collect(),
        ),
        blocks: Vec::new(),
    })
}

fn check_size(cfg: &ArchConfig, h: i64, w: i64) -> Result<(), NnError> {
    let m = 1i64 << cfg.num_downs;
    if h % m != 0 || w % m != 0 {
        return Err(NnError::BadInput {
            shape: vec![cfg.input_nc, h, w],
            reason: format!(
                "a UNet with num_downs {} needs height and width divisible by {m}",
                cfg.num_downs
            ),
        });
    }
    Ok(())
}

/// Analytic cost (torchprofile convention) of sub-net `sub` on a `[C, H, W]` input.
pub fn cost(cfg: &ArchConfig, sub: &SubnetConfig, input_chw: [i64; 3]) -> Result<Cost, NnError> {
    search_space(cfg)?.check(sub)?;
    let [_, h, wd] = input_chw;
    check_size(cfg, h, wd)?;
    let n = cfg.num_downs as usize;
    let w = &sub.widths;
    let bias = conv_bias_for(cfg.norm);
    let affine = cfg.norm == NormKind::Batch;
    let mut c = Cost::default();
    for l in 0..n {
        let (hin, win) = (h >> l, wd >> l);
        let out_hw = [hin / 2, win / 2];
        let c_in = if l == 0 { cfg.input_nc } else { w[l - 1] };
        let outer = if l == 0 { cfg.output_nc } else { w[l - 1] };
        let innermost = l == n - 1;
        c += cost::conv2d(c_in, w[l], [4, 4], 1, out_hw, bias);
        if l > 0 && !innermost {
            c += cost::norm(w[l], out_hw, affine);
        }
        let up_in = if innermost { w[l] } else { 2 * w[l] };
        c += cost::conv_transpose2d(up_in, outer, [4, 4], 1, [hin, win], l == 0 || bias);
        if l > 0 {
            c += cost::norm(outer, [hin, win], affine);
        }
    }
    Ok(c)
}

struct Level {
    down: ElasticConv2d,
    down_norm: Option<Norm2d>,
    up: ElasticConvTranspose2d,
    up_norm: Option<Norm2d>,
    /// Full down width (offset of the sub-block's half in the up-conv input).
    full: i64,
}

/// The UNet supernet.
pub struct UnetGenerator {
    cfg: ArchConfig,
    levels: Vec<Level>,
}

fn prefix(l: usize) -> String {
    let mut s = "model".to_string();
    for i in 1..=l {
        s.push_str(if i == 1 { ".model.1" } else { ".model.3" });
    }
    s
}

impl UnetGenerator {
    pub fn new(p: &nn::Path, cfg: &ArchConfig) -> Result<Self, NnError> {
        cfg.validate()?;
        let full = check_cfg(cfg)?;
        let n = full.len();
        let bias = conv_bias_for(cfg.norm);
        let down_opts = ConvOpts {
            stride: 2,
            padding: 1,
            bias,
            ..Default::default()
        };
        let mut levels = Vec::with_capacity(n);
        for l in 0..n {
            let b = path_of(p, &format!("{}.model", prefix(l)));
            let c_in = if l == 0 { cfg.input_nc } else { full[l - 1] };
            let outer = if l == 0 { cfg.output_nc } else { full[l - 1] };
            let innermost = l == n - 1;
            let up_in = if innermost { full[l] } else { 2 * full[l] };
            let up_opts = ConvTransposeOpts {
                stride: 2,
                padding: 1,
                output_padding: 0,
                bias: l == 0 || bias,
            };
            let (down_idx, up_idx, up_norm_idx) = match (l, innermost) {
                (0, _) => (0, 3, None),
                (_, true) => (1, 3, Some(4)),
                _ => (1, 5, Some(6)),
            };
            levels.push(Level {
                down: ElasticConv2d::new(&(&b / down_idx), c_in, full[l], 4, down_opts),
                down_norm: (l > 0 && !innermost).then(|| Norm2d::new(&(&b / 2), cfg.norm, full[l])),
                up: ElasticConvTranspose2d::new(&(&b / up_idx), up_in, outer, 4, up_opts),
                up_norm: up_norm_idx.map(|i| Norm2d::new(&(&b / i), cfg.norm, outer)),
                full: full[l],
            });
        }
        Ok(UnetGenerator {
            cfg: cfg.clone(),
            levels,
        })
    }

    /// Level `l`'s `model(x)` (before the skip concatenation of inner levels).
    fn level(&self, l: usize, x: &Tensor, w: &[i64], mode: Mode) -> Tensor {
        let lv = &self.levels[l];
        let outer = if l == 0 { self.cfg.output_nc } else { w[l - 1] };
        let mut h = lv.down.forward(x, w[l]);
        if let Some(n) = &lv.down_norm {
            h = n.forward(&h, mode);
        }
        let h = if l + 1 < self.levels.len() {
            // Child block: leaky ReLU in place, then cat(skip, child(skip)).
            let a = leaky_relu(&h, 0.2);
            let inner = self.level(l + 1, &a, w, mode);
            let cat = Tensor::cat(&[&a, &inner], 1).relu();
            lv.up
                .forward_rows(&cat, &[(0, w[l]), (lv.full, w[l])], outer)
        } else {
            lv.up.forward(&h.relu(), outer)
        };
        match &lv.up_norm {
            Some(n) => {
                let h = n.forward(&h, mode);
                // Officially only the `num_downs - 5` ngf*8 blocks between the innermost
                // and the ngf*4 one (levels 4 .. n-2) have Dropout.
                if self.cfg.use_dropout && l >= 4 && l + 1 < self.levels.len() {
                    h.dropout(self.cfg.dropout_rate, mode.dropout())
                } else {
                    h
                }
            }
            None => h.tanh(),
        }
    }
}

fn path_of<'a>(p: &nn::Path<'a>, dotted: &str) -> nn::Path<'a> {
    let mut parts = dotted.split('.');
    let first = p.sub(parts.next().unwrap_or_default());
    parts.fold(first, |acc, part| acc.sub(part))
}

impl Generator for UnetGenerator {
    fn arch(&self) -> &ArchConfig {
        &self.cfg
    }

    fn search_space(&self) -> SearchSpace {
        search_space(&self.cfg).expect("config validated at construction")
    }

    fn forward(&self, x: &Tensor, sub: &SubnetConfig, mode: Mode) -> Result<Tensor, NnError> {
        check_input(x, &self.cfg)?;
        self.search_space().check(sub)?;
        let s = x.size();
        check_size(&self.cfg, s[2], s[3])?;
        Ok(self.level(0, x, &sub.widths, mode))
    }

    fn compact_config(&self, sub: &SubnetConfig) -> Result<ArchConfig, NnError> {
        self.search_space().check(sub)?;
        let mut cfg = self.cfg.clone();
        if derived_widths(sub.widths[0], cfg.num_downs) == sub.widths {
            cfg.ngf = sub.widths[0];
            cfg.channels = None;
        } else {
            cfg.channels = Some(sub.widths.clone());
        }
        Ok(cfg)
    }

    fn extract(&self, sub: &SubnetConfig) -> Result<Vec<(String, Tensor)>, NnError> {
        self.search_space().check(sub)?;
        let w = &sub.widths;
        let n = self.levels.len();
        let mut out = Vec::new();
        for (l, lv) in self.levels.iter().enumerate() {
            let pre = prefix(l);
            let c_in = if l == 0 { self.cfg.input_nc } else { w[l - 1] };
            let outer = if l == 0 { self.cfg.output_nc } else { w[l - 1] };
            let innermost = l == n - 1;
            let (down_idx, up_idx, up_norm_idx) = match (l, innermost) {
                (0, _) => (0, 3, 0),
                (_, true) => (1, 3, 4),
                _ => (1, 5, 6),
            };
            push_named(
                &mut out,
                &format!("{pre}.model.{down_idx}"),
                lv.down.extract(c_in, w[l]),
            );
            if let Some(nm) = &lv.down_norm {
                push_named(&mut out, &format!("{pre}.model.2"), nm.extract(w[l]));
            }
            let up = if innermost {
                lv.up.extract(w[l], outer)
            } else {
                lv.up.extract_rows(&[(0, w[l]), (lv.full, w[l])], outer)
            };
            push_named(&mut out, &format!("{pre}.model.{up_idx}"), up);
            if let Some(nm) = &lv.up_norm {
                push_named(
                    &mut out,
                    &format!("{pre}.model.{up_norm_idx}"),
                    nm.extract(outer),
                );
            }
        }
        Ok(out)
    }

    fn batch_norms(&self) -> Vec<&ElasticBatchNorm2d> {
        self.levels
            .iter()
            .flat_map(|l| [l.down_norm.as_ref(), l.up_norm.as_ref()])
            .flatten()
            .filter_map(Norm2d::batch_norm)
            .collect()
    }
}
