//! The generator contract every family implements, and dispatch by [`Arch`].
//!
//! A family module `F` (e.g. `resnet`, `pix2pixhd`) provides:
//! - `pub fn search_space(cfg: &ArchConfig) -> Result<SearchSpace, NnError>`
//! - `pub fn cost(cfg: &ArchConfig, sub: &SubnetConfig, input_chw: [i64; 3]) -> Result<Cost, NnError>`
//!   (analytic, no tensors allocated, so `profile` works for any size);
//! - a struct with `pub fn new(p: &nn::Path, cfg: &ArchConfig) -> Result<Self, NnError>` that
//!   creates the full supernet's tensors under `p` with the official state-dict names, and
//!   implements [`Generator`].
//!
//! It is wired in by one arm in each of [`build_generator`], [`search_space`] and [`profile`].

use tch::{Tensor, nn};

use crate::arch::{Arch, ArchConfig};
use crate::cost::Cost;
use crate::elastic::{ElasticBatchNorm2d, Mode};
use crate::error::NnError;
use crate::subnet::{SearchSpace, SubnetConfig};

/// A weight-sharing generator supernet. Object safe; the active sub-net is always an
/// argument.
pub trait Generator: Send {
    /// The architecture the tensors were created for.
    fn arch(&self) -> &ArchConfig;

    /// The sub-nets this supernet contains (same as the free [`search_space`] of its config).
    fn search_space(&self) -> SearchSpace;

    /// Forward of sub-net `sub` (the full model when `sub` is `search_space().largest()`).
    /// Errors when `sub` is not in the search space or `x` has the wrong channel count.
    fn forward(&self, x: &Tensor, sub: &SubnetConfig, mode: Mode) -> Result<Tensor, NnError>;

    /// Analytic cost of `sub` on a batch-1 input of shape `[C, H, W]`; runs nothing.
    fn cost(&self, sub: &SubnetConfig, input_chw: [i64; 3]) -> Result<Cost, NnError> {
        crate::generator::profile(self.arch(), Some(sub), input_chw)
    }

    /// The config of the standalone compact model equal to `sub`: same family, `channels`
    /// set to `sub`'s widths, skipped blocks removed.
    fn compact_config(&self, sub: &SubnetConfig) -> Result<ArchConfig, NnError>;

    /// The compact model's tensors (names as that model creates them, contiguous copies):
    /// a generator built from `compact_config(sub)` and loaded with these tensors computes,
    /// with its largest sub-net, the same output as `forward(x, sub)` here.
    fn extract(&self, sub: &SubnetConfig) -> Result<Vec<(String, Tensor)>, NnError>;

    /// Every batch-norm layer (for recalibration); empty for BN-free families.
    fn batch_norms(&self) -> Vec<&ElasticBatchNorm2d> {
        Vec::new()
    }
}

/// Builds the supernet of `cfg` under `vs` (official parameter names relative to `vs`).
pub fn build_generator(vs: &nn::Path, cfg: &ArchConfig) -> Result<Box<dyn Generator>, NnError> {
    cfg.validate()?;
    match cfg.arch {
        Arch::Pix2PixResnet | Arch::MobileResnet => {
            Ok(Box::new(crate::resnet::ResnetGenerator::new(vs, cfg)?))
        }
        Arch::Pix2PixUnet => Ok(Box::new(crate::unet::UnetGenerator::new(vs, cfg)?)),
        Arch::Pix2PixHd => Ok(Box::new(crate::pix2pixhd::Pix2PixHd::new(vs, cfg)?)),
        Arch::Gaugan => Ok(Box::new(crate::gaugan::Gaugan::new(vs, cfg)?)),
    }
}

/// The search space of `cfg` without building any tensors.
pub fn search_space(cfg: &ArchConfig) -> Result<SearchSpace, NnError> {
    cfg.validate()?;
    match cfg.arch {
        Arch::Pix2PixResnet | Arch::MobileResnet => crate::resnet::search_space(cfg),
        Arch::Pix2PixUnet => crate::unet::search_space(cfg),
        Arch::Pix2PixHd => crate::pix2pixhd::search_space(cfg),
        Arch::Gaugan => crate::gaugan::search_space(cfg),
    }
}

/// MACs and params of sub-net `sub` (the full model when `None`) of `cfg` on a batch-1 input
/// `[C, H, W]`, counted analytically under the torchprofile convention (see [`crate::cost`]).
pub fn profile(
    cfg: &ArchConfig,
    sub: Option<&SubnetConfig>,
    input_chw: [i64; 3],
) -> Result<Cost, NnError> {
    let space = search_space(cfg)?;
    let sub = match sub {
        Some(s) => {
            space.check(s)?;
            s.clone()
        }
        None => space.largest(),
    };
    if input_chw[0] != cfg.input_nc {
        return Err(NnError::BadInput {
            shape: input_chw.to_vec(),
            reason: format!("{} expects {} input channels", cfg.arch, cfg.input_nc),
        });
    }
    match cfg.arch {
        Arch::Pix2PixResnet | Arch::MobileResnet => crate::resnet::cost(cfg, &sub, input_chw),
        Arch::Pix2PixUnet => crate::unet::cost(cfg, &sub, input_chw),
        Arch::Pix2PixHd => crate::pix2pixhd::cost(cfg, &sub, input_chw),
        Arch::Gaugan => crate::gaugan::cost(cfg, &sub, input_chw),
    }
}

/// Recalibrates the batch-norm running statistics of sub-net `sub` on `batches` (GAN
/// Compression's procedure, needed before evaluating a sub-net of a BN family): statistics are
/// reset, then each batch is run in [`Mode::Calibrate`] with momentum `1/(i+1)`, so the
/// running values become the average of the per-batch statistics. No gradients are recorded.
/// A no-op for families without batch norm. Returns the number of batches used.
pub fn recalibrate_bn<'a, I>(
    model: &dyn Generator,
    sub: &SubnetConfig,
    batches: I,
) -> Result<usize, NnError>
where
    I: IntoIterator<Item = &'a Tensor>,
{
    model.search_space().check(sub)?;
    let bns = model.batch_norms();
    if bns.is_empty() {
        return Ok(0);
    }
    for bn in &bns {
        bn.reset_running_stats();
    }
    let mut n = 0usize;
    for x in batches {
        let momentum = 1.0 / (n as f64 + 1.0);
        let _ = tch::no_grad(|| model.forward(x, sub, Mode::Calibrate { momentum }))?;
        n += 1;
    }
    Ok(n)
}

/// Checks that `x` is a `[N, C, H, W]` batch with the channel count of `cfg`.
pub fn check_input(x: &Tensor, cfg: &ArchConfig) -> Result<(), NnError> {
    let s = x.size();
    if s.len() != 4 || s[1] != cfg.input_nc {
        return Err(NnError::BadInput {
            shape: s,
            reason: format!("{} expects a [N, {}, H, W] batch", cfg.arch, cfg.input_nc),
        });
    }
    Ok(())
}

/// Checks that `x` is a `[N, C, H, W]` batch, then runs a model's own check of one
/// example's `[C, H, W]` (channels, sizes its strides allow): a failure of that check is
/// reported against the whole batch shape.
pub fn check_batch<T>(
    x: &Tensor,
    check_chw: impl FnOnce([i64; 3]) -> Result<T, NnError>,
) -> Result<T, NnError> {
    let s = x.size();
    if s.len() != 4 {
        return Err(NnError::BadInput {
            shape: s,
            reason: "expected [N, C, H, W]".into(),
        });
    }
    check_chw([s[1], s[2], s[3]]).map_err(|e| match e {
        NnError::BadInput { reason, .. } => NnError::BadInput { shape: s, reason },
        e => e,
    })
}

/// Width choices for named positions with the given full widths, per `cfg.space`. A
/// compact model (`cfg.channels` set, e.g. an exported student) is a fixed architecture:
/// its only choice at every position is its own width.
pub fn width_choices(
    cfg: &ArchConfig,
    positions: Vec<(String, i64)>,
) -> Vec<crate::subnet::WidthChoice> {
    positions
        .into_iter()
        .map(|(name, full)| crate::subnet::WidthChoice {
            choices: if cfg.channels.is_some() {
                vec![full]
            } else {
                cfg.space.candidates(full)
            },
            name,
            full,
        })
        .collect()
}

/// Whether depth-elastic block `i` may be skipped: from index `cfg.space.min_blocks`, and
/// never in a compact (fixed) model.
pub fn block_skippable(cfg: &ArchConfig, i: i64) -> bool {
    cfg.channels.is_none() && i >= cfg.space.min_blocks
}

/// `n` depth-elastic blocks named `block{i}`, skippable per [`block_skippable`].
pub fn block_choices(cfg: &ArchConfig, n: i64) -> Vec<crate::subnet::BlockChoice> {
    (0..n)
        .map(|i| crate::subnet::BlockChoice {
            name: format!("block{i}"),
            skippable: block_skippable(cfg, i),
        })
        .collect()
}

/// The full widths of a family: `cfg.channels` when set (compact models), else `derived`.
pub fn full_widths(cfg: &ArchConfig, derived: Vec<i64>) -> Result<Vec<i64>, NnError> {
    match &cfg.channels {
        Some(ch) if ch.len() != derived.len() => Err(NnError::config(
            "channels",
            format!("{ch:?}"),
            format!("{} expects {} widths here", cfg.arch, derived.len()),
        )),
        Some(ch) => Ok(ch.clone()),
        None => Ok(derived),
    }
}

/// Parses a CLI input shape `CxHxW` (e.g. `3x256x256`); the error names the value.
pub fn parse_input_shape(s: &str) -> Result<[i64; 3], NnError> {
    let parts: Vec<&str> = s.trim().split(['x', 'X']).collect();
    let bad = || {
        NnError::config(
            "input",
            s,
            "expected CxHxW with positive integers, e.g. 3x256x256",
        )
    };
    if parts.len() != 3 {
        return Err(bad());
    }
    let mut out = [0i64; 3];
    for (o, p) in out.iter_mut().zip(parts) {
        *o = p.trim().parse().map_err(|_| bad())?;
        if *o < 1 {
            return Err(bad());
        }
    }
    Ok(out)
}

/// What `ugc-pipe profile --json` prints: at least `macs` and `params`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ProfileReport {
    pub macs: u64,
    pub params: u64,
    pub arch: Arch,
    pub input: [i64; 3],
    /// The profiled sub-net in config-string form (the largest when none was given).
    pub config: String,
}

/// [`profile`] plus the context a report needs.
pub fn profile_report(
    cfg: &ArchConfig,
    sub: Option<&SubnetConfig>,
    input_chw: [i64; 3],
) -> Result<ProfileReport, NnError> {
    let c = profile(cfg, sub, input_chw)?;
    let config = match sub {
        Some(s) => s.to_string(),
        None => search_space(cfg)?.largest().to_string(),
    };
    Ok(ProfileReport {
        macs: c.macs,
        params: c.params,
        arch: cfg.arch,
        input: input_chw,
        config,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_compact_model_is_a_fixed_architecture_in_every_family() {
        for arch in [Arch::Pix2PixResnet, Arch::MobileResnet, Arch::Pix2PixUnet] {
            let mut cfg = ArchConfig::new(arch);
            cfg.ngf = 8;
            let vs = tch::nn::VarStore::new(tch::Device::Cpu);
            let g = build_generator(&vs.root(), &cfg).unwrap();
            let space = g.search_space();
            assert!(space.size() > 1, "{arch}: the supernet has choices");
            // Smallest widths except the first position at its largest: not the shape of
            // any official ngf, so the compact model carries explicit channels. (A compact
            // model shaped like an official one *is* that official model, a supernet.)
            let mut sub = space.smallest();
            sub.widths[0] = space.largest().widths[0];
            let compact = g.compact_config(&sub).unwrap();
            assert!(compact.channels.is_some(), "{arch}");
            let fixed = search_space(&compact).unwrap();
            assert_eq!(fixed.size(), 1, "{arch}: an exported model is fixed");
            assert_eq!(fixed.largest(), fixed.smallest());
        }
    }

    #[test]
    fn input_shape_parsing() {
        assert_eq!(parse_input_shape("3x256x512").unwrap(), [3, 256, 512]);
        for bad in ["3x256", "3x0x4", "axbxc", ""] {
            let e = parse_input_shape(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("input = {bad}")), "{e}");
        }
    }

    #[test]
    fn profile_report_serialises_macs_and_params() {
        let cfg = ArchConfig {
            ngf: 16,
            ..ArchConfig::new(Arch::MobileResnet)
        };
        let r = profile_report(&cfg, None, [3, 256, 256]).unwrap();
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["macs"], 1_407_713_280u64);
        assert_eq!(j["params"], 137_347u64);
        assert_eq!(j["arch"], "mobile-resnet");
    }
}
