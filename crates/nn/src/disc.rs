//! Discriminators: the contract and dispatch. Discriminators are not elastic: they train
//! alongside the supernet at full width.

use serde::{Deserialize, Serialize};
use tch::{Tensor, nn};

use crate::arch::NormKind;
use crate::elastic::Mode;
use crate::error::NnError;

/// Discriminator families.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiscArch {
    /// pix2pix `NLayerDiscriminator` (names `model.N`).
    Patchgan,
    /// pix2pixHD / SPADE `MultiscaleDiscriminator` of `num_d` PatchGANs.
    Multiscale,
}

/// What discriminator to build.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscConfig {
    pub arch: DiscArch,
    /// Channels of concat(input, output).
    pub input_nc: i64,
    pub ndf: i64,
    pub n_layers: i64,
    /// Number of scales (multiscale only).
    pub num_d: i64,
    pub norm: NormKind,
}

impl DiscConfig {
    /// pix2pix defaults: PatchGAN, 3 layers, batch norm; `ndf` 64 (128 in the compression repos).
    pub fn patchgan(input_nc: i64, ndf: i64) -> Self {
        DiscConfig {
            arch: DiscArch::Patchgan,
            input_nc,
            ndf,
            n_layers: 3,
            num_d: 1,
            norm: NormKind::Batch,
        }
    }

    /// pix2pixHD / GauGAN defaults: 2 scales of 4-layer PatchGANs, instance norm.
    pub fn multiscale(input_nc: i64, ndf: i64) -> Self {
        DiscConfig {
            arch: DiscArch::Multiscale,
            input_nc,
            ndf,
            n_layers: 4,
            num_d: 2,
            norm: NormKind::Instance,
        }
    }
}

/// A discriminator.
pub trait Discriminator: Send {
    fn config(&self) -> &DiscConfig;
    /// Per scale, the intermediate features (for feature matching) followed by the
    /// prediction map as the last element.
    fn forward(&self, x: &Tensor, mode: Mode) -> Vec<Vec<Tensor>>;

    /// Every batch-norm layer (to synchronise over data-parallel ranks); empty when the
    /// norm is not batch norm.
    fn batch_norms(&self) -> Vec<&crate::elastic::ElasticBatchNorm2d> {
        Vec::new()
    }
}

/// Builds a discriminator under `vs` with the official parameter names.
pub fn build_discriminator(
    vs: &nn::Path,
    cfg: &DiscConfig,
) -> Result<Box<dyn Discriminator>, NnError> {
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
    match cfg.arch {
        DiscArch::Patchgan => Ok(Box::new(crate::patchgan::PatchGan::new(vs, cfg)?)),
        DiscArch::Multiscale => Ok(Box::new(crate::multiscale::MultiscaleDiscriminator::new(
            vs, cfg,
        )?)),
    }
}
