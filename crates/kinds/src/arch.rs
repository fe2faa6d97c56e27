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

/// Upsampling schedule of GauGAN (`--num_upsampling_layers` in SPADE): 5, 6 or 7
/// doublings of the latent grid; `most` adds the block `up_4` (`ngf -> ngf / 2`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Upsampling {
    Normal,
    More,
    Most,
}

impl Upsampling {
    /// Doublings from the latent grid to the output (`num_up_layers` in SPADE).
    pub fn doublings(self) -> u32 {
        match self {
            Upsampling::Normal => 5,
            Upsampling::More => 6,
            Upsampling::Most => 7,
        }
    }
}

/// GauGAN's generator normalisation, SPADE's `--norm_G` (`[spectral]spade<norm>3x3`):
/// `spectral` wraps `conv_0`, `conv_1`, `conv_s` of every block in spectral norm (folded
/// into plain weights when a checkpoint is read, see `ugc_nn::spade`), `<norm>` is the
/// SPADE layers' parameter-free norm (`syncbatch` is batch norm synchronised over GPUs: on
/// one device, and in our data-parallel training, plain batch norm with the same tensors).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NormG {
    /// SPADEGenerator's default.
    #[default]
    #[serde(rename = "spectralspadesyncbatch3x3")]
    SpectralSpadeSyncBatch3x3,
    #[serde(rename = "spectralspadebatch3x3")]
    SpectralSpadeBatch3x3,
    #[serde(rename = "spectralspadeinstance3x3")]
    SpectralSpadeInstance3x3,
    #[serde(rename = "spadesyncbatch3x3")]
    SpadeSyncBatch3x3,
    #[serde(rename = "spadebatch3x3")]
    SpadeBatch3x3,
    #[serde(rename = "spadeinstance3x3")]
    SpadeInstance3x3,
}

impl NormG {
    /// Every variant, official names in `--norm_G` order of the docs.
    pub const ALL: [NormG; 6] = [
        NormG::SpectralSpadeSyncBatch3x3,
        NormG::SpectralSpadeBatch3x3,
        NormG::SpectralSpadeInstance3x3,
        NormG::SpadeSyncBatch3x3,
        NormG::SpadeBatch3x3,
        NormG::SpadeInstance3x3,
    ];

    /// The official name (`--norm_G` value).
    pub fn name(self) -> &'static str {
        match self {
            NormG::SpectralSpadeSyncBatch3x3 => "spectralspadesyncbatch3x3",
            NormG::SpectralSpadeBatch3x3 => "spectralspadebatch3x3",
            NormG::SpectralSpadeInstance3x3 => "spectralspadeinstance3x3",
            NormG::SpadeSyncBatch3x3 => "spadesyncbatch3x3",
            NormG::SpadeBatch3x3 => "spadebatch3x3",
            NormG::SpadeInstance3x3 => "spadeinstance3x3",
        }
    }

    /// Whether the official blocks' convs carry spectral norm (`weight_orig/u/v`).
    pub fn spectral(self) -> bool {
        matches!(
            self,
            NormG::SpectralSpadeSyncBatch3x3
                | NormG::SpectralSpadeBatch3x3
                | NormG::SpectralSpadeInstance3x3
        )
    }

    /// Whether SPADE's parameter-free norm is instance norm (no running statistics)
    /// rather than batch norm.
    pub fn instance(self) -> bool {
        matches!(
            self,
            NormG::SpectralSpadeInstance3x3 | NormG::SpadeInstance3x3
        )
    }

    fn is_default(&self) -> bool {
        *self == NormG::default()
    }
}

impl fmt::Display for NormG {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for NormG {
    type Err = ArchError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NormG::ALL
            .into_iter()
            .find(|n| n.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = NormG::ALL.iter().map(|n| n.name()).collect();
                ArchError::config("norm_g", s, format!("expected one of {}", names.join(", ")))
            })
    }
}

/// The official dropout probability (`nn.Dropout(0.5)` in pix2pix's ResnetBlock and UNet).
pub const DEFAULT_DROPOUT_RATE: f64 = 0.5;

fn default_dropout_rate() -> f64 {
    DEFAULT_DROPOUT_RATE
}

fn is_default_dropout_rate(r: &f64) -> bool {
    *r == DEFAULT_DROPOUT_RATE
}

fn is_false(b: &bool) -> bool {
    !*b
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
    /// Dropout in residual / UNet blocks: pix2pix without `--no_dropout`. Adds no tensors
    /// but shifts the ResNet block's second conv to `conv_block.6` (as in gan-compression's
    /// `resnet_9blocks`, which always has its Dropout layer). Off by default as in the
    /// compression repos.
    #[serde(default)]
    pub use_dropout: bool,
    /// Dropout probability when `use_dropout` (0.5 in pix2pix; gan-compression's
    /// `--dropout_rate`, default 0, keeps the layer but drops nothing).
    #[serde(
        default = "default_dropout_rate",
        skip_serializing_if = "is_default_dropout_rate"
    )]
    pub dropout_rate: f64,
    /// Label-map families: the label classes of the official `--label_nc`. When set,
    /// `input_nc` is `label_nc + contain_dontcare_label + (1 unless no_instance)` (the
    /// official `semantic_nc`), and `infer` builds that input from a label map and an
    /// instance map as the official data loaders do. Unset: every input channel is a label
    /// class (the input is one-hot only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_nc: Option<i64>,
    /// SPADE's `--contain_dontcare_label`: one more one-hot channel, for label 255.
    #[serde(default, skip_serializing_if = "is_false")]
    pub contain_dontcare_label: bool,
    /// The official `--no_instance`: no instance-edge channel.
    #[serde(default, skip_serializing_if = "is_false")]
    pub no_instance: bool,
    /// GauGAN's `--norm_G` (see [`NormG`]); other families ignore it.
    #[serde(default, skip_serializing_if = "NormG::is_default")]
    pub norm_g: NormG,
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
            dropout_rate: DEFAULT_DROPOUT_RATE,
            label_nc: None,
            contain_dontcare_label: false,
            no_instance: false,
            norm_g: NormG::default(),
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
        if !(self.dropout_rate.is_finite() && (0.0..1.0).contains(&self.dropout_rate)) {
            return Err(ArchError::config(
                "dropout_rate",
                self.dropout_rate,
                "must be in [0, 1)",
            ));
        }
        let label_family = matches!(self.arch, Arch::Pix2PixHd | Arch::Gaugan);
        if !label_family {
            for (field, value) in [
                ("label_nc", self.label_nc.map(|n| n.to_string())),
                (
                    "contain_dontcare_label",
                    self.contain_dontcare_label.then(|| "true".to_string()),
                ),
                ("no_instance", self.no_instance.then(|| "true".to_string())),
            ] {
                if let Some(value) = value {
                    return Err(ArchError::config(
                        field,
                        value,
                        format!(
                            "only the label-map families (pix2pixhd, gaugan) take it; {} reads images",
                            self.arch
                        ),
                    ));
                }
            }
        }
        if self.arch == Arch::Pix2PixHd && self.contain_dontcare_label {
            return Err(ArchError::config(
                "contain_dontcare_label",
                true,
                "pix2pixhd has no such option (it is SPADE's); count the class in label_nc",
            ));
        }
        // pix2pixHD's get_norm_layer knows batch and instance only (ugc_nn checks the
        // same on build; here it is refused at plan time, naming the field).
        if self.arch == Arch::Pix2PixHd
            && !matches!(self.norm, NormKind::Instance | NormKind::Batch)
        {
            return Err(ArchError::config(
                "norm",
                format!("{:?}", self.norm).to_lowercase(),
                "pix2pixhd takes instance or batch (pix2pixHD's get_norm_layer)",
            ));
        }
        if self.arch != Arch::Gaugan && self.norm_g != NormG::default() {
            return Err(ArchError::config(
                "norm_g",
                self.norm_g,
                "only gaugan takes norm_g (the pix2pix families and pix2pixhd take `norm`)",
            ));
        }
        if self.arch != Arch::Gaugan && self.upsampling == Upsampling::Most {
            return Err(ArchError::config(
                "upsampling",
                "most",
                "only gaugan has upsampling schedules",
            ));
        }
        if let Some(want) = self.label_input_nc()?
            && want != self.input_nc
        {
            return Err(ArchError::config(
                "input_nc",
                self.input_nc,
                format!(
                    "label_nc {} + contain_dontcare_label {} + instance edges {} make {want} input channels",
                    self.label_nc.unwrap_or_default(),
                    u8::from(self.contain_dontcare_label),
                    u8::from(!self.no_instance),
                ),
            ));
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

    /// The input channels `label_nc`, `contain_dontcare_label` and `no_instance` make (the
    /// official `semantic_nc`), or `None` when `label_nc` is unset.
    pub fn label_input_nc(&self) -> Result<Option<i64>, ArchError> {
        match self.label_nc {
            None => Ok(None),
            Some(n) if n < 1 => Err(ArchError::config(
                "label_nc",
                n,
                "must be at least 1 (label_nc 0, the official \"images, not labels\", is not a label-map input)",
            )),
            Some(n) => Ok(Some(
                n + i64::from(self.contain_dontcare_label) + i64::from(!self.no_instance),
            )),
        }
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
        if !map.contains_key("input_nc")
            && let Some(n) = label_channels(map)
        {
            obj.insert("input_nc".into(), Value::from(n));
        }
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

/// The input channels a map's `label_nc`, `contain_dontcare_label`, `no_instance` make,
/// when `label_nc` is an integer (anything else is left to serde to refuse by name).
pub fn label_channels(map: &Map<String, Value>) -> Option<i64> {
    let n = map.get("label_nc")?.as_i64()?;
    let flag = |k: &str| map.get(k).and_then(Value::as_bool).unwrap_or(false);
    Some(n + i64::from(flag("contain_dontcare_label")) + i64::from(!flag("no_instance")))
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

#[cfg(test)]
mod plan_time_tests {
    use super::*;

    #[test]
    fn pix2pixhd_norms_are_checked_at_plan_time_naming_the_field() {
        let at = |norm: &str| {
            check_arch_param(
                "arch",
                &serde_json::json!({"arch": "pix2pixhd", "norm": norm, "ngf": 4}),
            )
        };
        assert!(at("instance").is_empty() && at("batch").is_empty());
        let p = at("none");
        assert_eq!(p.len(), 1, "{p:?}");
        let text = format!("{p:?}");
        assert!(
            text.contains("arch.norm") && text.contains("instance or batch"),
            "{text}"
        );
    }
}
