//! Architecture names and configs: *what* network to build, kept apart from its weights.
//!
//! An [`ArchConfig`] fully determines the set of tensors (names and shapes) a generator
//! creates, so it is what `model.json` stores next to `model.safetensors`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::NnError;

/// Generator families. CLI / JSON names: `pix2pix-resnet`, `mobile-resnet`, `pix2pix-unet`,
/// `pix2pixhd`, `gaugan`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Arch {
    #[serde(rename = "pix2pix-resnet")]
    Pix2PixResnet,
    #[serde(rename = "mobile-resnet")]
    MobileResnet,
    #[serde(rename = "pix2pix-unet")]
    Pix2PixUnet,
    #[serde(rename = "pix2pixhd")]
    Pix2PixHd,
    #[serde(rename = "gaugan")]
    Gaugan,
}

impl Arch {
    /// Every family, in CLI order.
    pub const ALL: [Arch; 5] = [
        Arch::Pix2PixResnet,
        Arch::MobileResnet,
        Arch::Pix2PixUnet,
        Arch::Pix2PixHd,
        Arch::Gaugan,
    ];

    /// The CLI name.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Pix2PixResnet => "pix2pix-resnet",
            Arch::MobileResnet => "mobile-resnet",
            Arch::Pix2PixUnet => "pix2pix-unet",
            Arch::Pix2PixHd => "pix2pixhd",
            Arch::Gaugan => "gaugan",
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Arch {
    type Err = NnError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Arch::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| NnError::UnknownArch(s.to_string()))
    }
}

/// Normalisation layer kind, named as in the official code's `--norm` / `--norm_G` options.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NormKind {
    /// `nn.InstanceNorm2d(affine=False, track_running_stats=False)`: no tensors.
    Instance,
    /// `nn.BatchNorm2d(affine=True)`: weight, bias, running stats.
    Batch,
    /// No normalisation.
    None,
    /// Spectral-normalised conv followed by instance norm (SPADE's `spectralinstance`).
    SpectralInstance,
    /// Spectral-normalised conv followed by batch norm (SPADE's `spectralbatch`).
    SpectralBatch,
}

impl NormKind {
    /// The pix2pix models (`--norm`) take only instance, batch or none; `model` names the
    /// network in the error.
    pub fn require_pix2pix(self, model: &str) -> Result<(), NnError> {
        if matches!(self, NormKind::Instance | NormKind::Batch | NormKind::None) {
            Ok(())
        } else {
            Err(NnError::config(
                "norm",
                format!("{self:?}"),
                format!("{model} takes instance, batch or none"),
            ))
        }
    }
}

/// Upsampling schedule of GauGAN (`--num_upsampling_layers` in SPADE).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Upsampling {
    Normal,
    More,
}

/// How the search space of a supernet is derived from the architecture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpaceSpec {
    /// Width candidates at every elastic position, as fractions of the position's full width
    /// (rounded to the nearest integer, at least 1, deduplicated). GAN Compression's
    /// ngf-64 supernets use 16/24/32/48/64, i.e. the default ratios.
    #[serde(default = "default_ratios")]
    pub width_ratios: Vec<f64>,
    /// Depth-elastic blocks with index `>= min_blocks` may be skipped; the first
    /// `min_blocks` are always present, so the smallest sub-net stays a usable network.
    #[serde(default = "default_min_blocks")]
    pub min_blocks: i64,
}

fn default_ratios() -> Vec<f64> {
    vec![0.25, 0.375, 0.5, 0.75, 1.0]
}

fn default_min_blocks() -> i64 {
    3
}

impl Default for SpaceSpec {
    fn default() -> Self {
        SpaceSpec {
            width_ratios: default_ratios(),
            min_blocks: default_min_blocks(),
        }
    }
}

impl SpaceSpec {
    /// Width candidates for a position whose full width is `full`, ascending.
    pub fn candidates(&self, full: i64) -> Vec<i64> {
        let mut v: Vec<i64> = self
            .width_ratios
            .iter()
            .map(|r| ((full as f64) * r).round().max(1.0) as i64)
            .filter(|&c| c <= full)
            .collect();
        v.push(full);
        v.sort_unstable();
        v.dedup();
        v
    }
}

/// Everything that determines a generator's tensors. Fields that a family does not use are
/// ignored by it (and keep their defaults). Per-family defaults: [`ArchConfig::new`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchConfig {
    pub arch: Arch,
    /// Input channels (3 for RGB; the number of label channels for pix2pixhd / gaugan).
    pub input_nc: i64,
    pub output_nc: i64,
    /// Base width of the full model.
    pub ngf: i64,
    /// Residual blocks (pix2pix-resnet, mobile-resnet, pix2pixhd).
    pub n_blocks: i64,
    /// UNet levels; 8 for a 256x256 input (pix2pix-unet).
    pub num_downs: i64,
    /// Strided downsamplings of the pix2pixhd global generator.
    pub n_downsample: i64,
    /// GauGAN upsampling schedule.
    pub upsampling: Upsampling,
    pub norm: NormKind,
    /// Dropout in residual / UNet blocks (adds no tensors; off by default as in the
    /// compression repos).
    #[serde(default)]
    pub use_dropout: bool,
    /// Explicit full widths per elastic position (in search-space order) for a *compact*
    /// model produced by export; `None` means "derived from `ngf`", as in the official models.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<Vec<i64>>,
    /// Search-space derivation (width candidates, skippable blocks).
    #[serde(default)]
    pub space: SpaceSpec,
}

impl ArchConfig {
    /// The official full model of a family (DESIGN §3 defaults).
    pub fn new(arch: Arch) -> Self {
        let base = ArchConfig {
            arch,
            input_nc: 3,
            output_nc: 3,
            ngf: 64,
            n_blocks: 9,
            num_downs: 8,
            n_downsample: 4,
            upsampling: Upsampling::More,
            norm: NormKind::Instance,
            use_dropout: false,
            channels: None,
            space: SpaceSpec::default(),
        };
        match arch {
            Arch::Pix2PixResnet | Arch::MobileResnet => base,
            Arch::Pix2PixUnet => ArchConfig {
                norm: NormKind::Batch,
                ..base
            },
            Arch::Pix2PixHd => ArchConfig {
                input_nc: 36,
                ..base
            },
            // SPADEGenerator has two `G_middle` blocks; `G_middle_1` is the skippable one.
            Arch::Gaugan => ArchConfig {
                input_nc: 36,
                norm: NormKind::SpectralInstance,
                n_blocks: 2,
                space: SpaceSpec {
                    min_blocks: 1,
                    ..SpaceSpec::default()
                },
                ..base
            },
        }
    }

    /// Checks ranges shared by all families; families check their own fields on build.
    pub fn validate(&self) -> Result<(), NnError> {
        for (field, v) in [
            ("input_nc", self.input_nc),
            ("output_nc", self.output_nc),
            ("ngf", self.ngf),
        ] {
            if v < 1 {
                return Err(NnError::config(field, v, "must be at least 1"));
            }
        }
        if self.n_blocks < 0 {
            return Err(NnError::config("n_blocks", self.n_blocks, "must be >= 0"));
        }
        if self.space.width_ratios.is_empty()
            || self
                .space
                .width_ratios
                .iter()
                .any(|r| !(r.is_finite() && *r > 0.0 && *r <= 1.0))
        {
            return Err(NnError::config(
                "space.width_ratios",
                format!("{:?}", self.space.width_ratios),
                "must be a non-empty list of numbers in (0, 1]",
            ));
        }
        if self.space.min_blocks < 0 {
            return Err(NnError::config(
                "space.min_blocks",
                self.space.min_blocks,
                "must be >= 0",
            ));
        }
        if let Some(ch) = &self.channels
            && let Some(bad) = ch.iter().find(|&&c| c < 1)
        {
            return Err(NnError::config("channels", bad, "every width must be >= 1"));
        }
        Ok(())
    }

    /// Reads a config from JSON text (`model.json`'s `arch` object).
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pix2pix_models_refuse_spectral_norms_by_name() {
        assert!(NormKind::Batch.require_pix2pix("UNet").is_ok());
        let e = NormKind::SpectralInstance
            .require_pix2pix("UNet")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("norm = SpectralInstance") && e.contains("UNet takes instance"),
            "{e}"
        );
    }

    #[test]
    fn arch_names_round_trip() {
        for a in Arch::ALL {
            assert_eq!(a.to_string().parse::<Arch>().unwrap(), a);
            let j = serde_json::to_string(&a).unwrap();
            assert_eq!(j, format!("\"{}\"", a.name()));
        }
        let e = "resnet".parse::<Arch>().unwrap_err().to_string();
        assert!(e.contains("`resnet`"), "{e}");
    }

    #[test]
    fn candidates_are_sorted_unique_and_include_full() {
        let s = SpaceSpec::default();
        assert_eq!(s.candidates(64), vec![16, 24, 32, 48, 64]);
        assert_eq!(s.candidates(3), vec![1, 2, 3]);
    }

    #[test]
    fn config_json_round_trip_and_validation() {
        let c = ArchConfig::new(Arch::Pix2PixUnet);
        let j = serde_json::to_string(&c).unwrap();
        assert_eq!(ArchConfig::from_json(&j).unwrap(), c);
        let bad = ArchConfig { ngf: 0, ..c };
        assert!(bad.validate().unwrap_err().to_string().contains("ngf"));
    }
}
