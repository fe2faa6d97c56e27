//! Architecture names and configs: *what* network to build, kept apart from its weights.
//!
//! An [`ArchConfig`] fully determines the set of tensors (names and shapes) a generator
//! creates, so it is what `model.json` stores next to `model.safetensors`. Free of libtorch
//! and kept here (re-exported by `ugc-nn` as `ugc_nn::arch`) so that the head checks a
//! stage's `arch` map at plan time exactly as the worker reads it ([`check_arch_param`]).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use ugc_engine::ParamProblem;

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
    type Err = ArchError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Arch::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| ArchError::UnknownArch(s.to_string()))
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
    pub fn require_pix2pix(self, model: &str) -> Result<(), ArchError> {
        if matches!(self, NormKind::Instance | NormKind::Batch | NormKind::None) {
            Ok(())
        } else {
            Err(ArchError::config(
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
    pub fn validate(&self) -> Result<(), ArchError> {
        for (field, v) in [
            ("input_nc", self.input_nc),
            ("output_nc", self.output_nc),
            ("ngf", self.ngf),
        ] {
            if v < 1 {
                return Err(ArchError::config(field, v, "must be at least 1"));
            }
        }
        if self.n_blocks < 0 {
            return Err(ArchError::config("n_blocks", self.n_blocks, "must be >= 0"));
        }
        if self.space.width_ratios.is_empty()
            || self
                .space
                .width_ratios
                .iter()
                .any(|r| !(r.is_finite() && *r > 0.0 && *r <= 1.0))
        {
            return Err(ArchError::config(
                "space.width_ratios",
                format!("{:?}", self.space.width_ratios),
                "must be a non-empty list of numbers in (0, 1]",
            ));
        }
        if self.space.min_blocks < 0 {
            return Err(ArchError::config(
                "space.min_blocks",
                self.space.min_blocks,
                "must be >= 0",
            ));
        }
        if let Some(ch) = &self.channels
            && let Some(bad) = ch.iter().find(|&&c| c < 1)
        {
            return Err(ArchError::config(
                "channels",
                bad,
                "every width must be >= 1",
            ));
        }
        Ok(())
    }

    /// Reads a config from JSON text (`model.json`'s `arch` object).
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }
}

/// Why an architecture config is refused (converted into `ugc_nn::NnError` by `?`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArchError {
    /// An architecture field has a value no family can build.
    #[error("invalid architecture config: {field} = {value}: {reason}")]
    InvalidConfig {
        field: String,
        value: String,
        reason: String,
    },
    /// An unknown architecture name (CLI `--arch`, `model.json`, a stage's `arch.arch`).
    #[error(
        "unknown architecture `{0}` (expected one of pix2pix-resnet, mobile-resnet, pix2pix-unet, pix2pixhd, gaugan)"
    )]
    UnknownArch(String),
}

impl ArchError {
    /// Shorthand for [`ArchError::InvalidConfig`].
    pub fn config(field: &str, value: impl ToString, reason: impl Into<String>) -> Self {
        ArchError::InvalidConfig {
            field: field.to_string(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}

/// The family's official config ([`ArchConfig::new`]) as JSON with every written field of
/// `map` over it, the `space` map merged field by field.
fn merged(family: Arch, map: &Map<String, Value>) -> Value {
    let mut base = serde_json::to_value(ArchConfig::new(family)).unwrap_or(Value::Null);
    if let Some(obj) = base.as_object_mut() {
        for (k, val) in map {
            if k == "space"
                && let (Some(sp), Some(valo)) = (
                    obj.get_mut("space").and_then(Value::as_object_mut),
                    val.as_object(),
                )
            {
                for (sk, sv) in valo {
                    sp.insert(sk.clone(), sv.clone());
                }
                continue;
            }
            obj.insert(k.clone(), val.clone());
        }
    }
    base
}

/// The config a stage's `arch` parameter map describes, before the split is known: the
/// family's official config with every written field over it (as
/// `ugc_method::setup::arch_from_param` reads it; that one also sets a one-hot family's
/// default `input_nc` from the split's class table, which does not change what is valid).
///
/// # Errors
/// The problem names the dotted parameter at fault (`<param>.arch`, `<param>.ngf`, ...).
pub fn arch_from_map(param: &str, v: &Value) -> Result<ArchConfig, ParamProblem> {
    let at = |field: &str| format!("{param}.{field}");
    let map = v
        .as_object()
        .ok_or_else(|| ParamProblem::new(param, "must be a map with at least `arch`"))?;
    let name = map
        .get("arch")
        .and_then(Value::as_str)
        .ok_or_else(|| ParamProblem::new(at("arch"), "is required: the family name"))?;
    let family: Arch = name
        .parse()
        .map_err(|e: ArchError| ParamProblem::new(at("arch"), e.to_string()))?;
    let cfg: ArchConfig = serde_json::from_value(merged(family, map)).map_err(|e| {
        // serde's message does not always name the field: find the written one at fault.
        let fits = |k: &String| {
            let one: Map<String, Value> = [(k.clone(), map[k].clone())].into_iter().collect();
            serde_json::from_value::<ArchConfig>(merged(family, &one)).is_ok()
        };
        let path = map
            .keys()
            .find(|k| !fits(k))
            .map_or(param.to_string(), |k| at(k));
        ParamProblem::new(path, e.to_string())
    })?;
    cfg.validate().map_err(|e| {
        let field = match &e {
            ArchError::InvalidConfig { field, .. } => field.clone(),
            ArchError::UnknownArch(_) => "arch".into(),
        };
        ParamProblem::new(at(&field), e.to_string())
    })?;
    Ok(cfg)
}

/// The plan-time check of an `arch` parameter map: empty when [`arch_from_map`] accepts it.
pub fn check_arch_param(param: &str, v: &Value) -> Vec<ParamProblem> {
    arch_from_map(param, v).err().into_iter().collect()
}
