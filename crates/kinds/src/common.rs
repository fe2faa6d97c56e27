//! Parameters and enumerations shared by several method kinds: the GAN training settings
//! of `supernet` and `train`, the OMGD loss weights of `supernet` and `distill`, and the
//! discriminator / autocast choices. Shared so that each is written once; every kind's
//! `schema.yaml` still declares its own copy, and the drift test ties the two.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The discriminator of a GAN training stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Disc {
    /// 3-layer PatchGAN for the pix2pix families, 2x4-layer multi-scale for pix2pixhd / gaugan.
    Auto,
    Patchgan,
    Multiscale,
}

/// The autocast dtype of mixed precision (`amp: true`, CUDA only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AmpDtype {
    /// bfloat16: float32's range, needs no loss scaling.
    Bf16,
    Fp16,
}

impl AmpDtype {
    /// The name as written in pipelines (`bf16`, `fp16`).
    pub fn as_str(self) -> &'static str {
        match self {
            AmpDtype::Bf16 => "bf16",
            AmpDtype::Fp16 => "fp16",
        }
    }
}

/// Weights of the OMGD student loss against one teacher (DESIGN §2 defaults). A written
/// map replaces the default whole, so a key it leaves out takes its own default here.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DistillWeights {
    /// On `1 - SSIM(student, teacher)`.
    pub ssim: f64,
    /// On the Gram-matrix L1 of perceptual features.
    pub style: f64,
    /// On the feature L1 of perceptual features.
    pub feature: f64,
    /// On the total variation of the student output.
    pub tv: f64,
}

impl Default for DistillWeights {
    fn default() -> Self {
        DistillWeights {
            ssim: 10.0,
            style: 1e4,
            feature: 10.0,
            tv: 1e-5,
        }
    }
}

impl DistillWeights {
    /// Whether every term is switched off.
    pub fn all_zero(&self) -> bool {
        [self.ssim, self.style, self.feature, self.tv]
            .iter()
            .all(|&w| w == 0.0)
    }
}

/// The GAN training settings shared by `supernet` and `train` (flattened into each kind's
/// `Params`; the outer struct refuses unknown keys).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct CommonParams {
    pub steps: u64,
    /// The dep whose final state (`state/`) this stage continues from; null: from scratch.
    pub init_from: Option<String>,
    /// Commit the final state under `state/` for a continuation.
    pub keep_state: bool,
    pub batch_size: usize,
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub lr_decay_steps: u64,
    pub image_size: Option<u32>,
    pub crop: Option<u32>,
    pub flip: bool,
    pub lambda_l1: f64,
    pub disc: Disc,
    pub ndf: i64,
    pub checkpoint_every: u64,
    pub sample_every: u64,
    pub seed: u64,
    pub amp: bool,
    /// Autocast dtype when `amp` is on.
    pub amp_dtype: AmpDtype,
    /// Channels-last (NHWC) weights and inputs on CUDA.
    pub channels_last: bool,
    pub threads: usize,
    /// libtorch intra-op threads (0 = libtorch's default). Process-wide.
    pub torch_threads: i32,
}
