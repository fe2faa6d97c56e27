//! Ground-truth label maps for evaluation, and the conversions between the loader's image
//! tensors and the 8-bit images metrics are defined on.
//!
//! Two sources of labels (recorded in `evaluator.json` as a [`LabelSpec`]):
//! - **class table** (Cityscapes layout, e.g. `labels2photo`): the input label map's ids are
//!   mapped to evaluation ids through the table's `train_id`; ids without one are ignored
//!   (value [`IGNORE`]), as in the Cityscapes protocol.
//! - **foreground** (aligned data, e.g. `edges2photo`): the data has no label maps, so the
//!   segmentation task is object vs background, derived from the *real* photo: `edges2photo`
//!   renders objects on a pure white background and every object pixel has at least one
//!   channel well below 255 (hue saturation >= 0.3 and value <= 0.95 keep one channel at most
//!   ~0.83 even under the specular highlight; the light sole at most ~0.96). A pixel is
//!   foreground (1) when its darkest channel is below `threshold` (default 250), else
//!   background (0). The generated image is then judged by whether the evaluator finds the
//!   object where the real photo has it.

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};
use ugc_data::{Batch, SplitManifest};
use ugc_metrics::features::{Rounding, quantize_8bit};

use crate::error::{EvalError, Result};

/// Value of ignored pixels in evaluation label maps (Cityscapes convention).
pub const IGNORE: i64 = 255;

/// How ground-truth label maps are obtained; part of the evaluator's identity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum LabelSpec {
    ClassTable {
        /// Name of the class table (e.g. `synth-labels2photo-8`, `cityscapes`).
        table: String,
        /// Evaluation class names, indexed by evaluation id.
        classes: Vec<String>,
        /// `label_to_eval[label id]` = evaluation id, or [`IGNORE`].
        label_to_eval: Vec<i64>,
    },
    Foreground {
        /// A pixel is foreground when its darkest channel (0-255) is below this.
        threshold: u8,
    },
}

impl LabelSpec {
    /// The label source for a split: its class table when it has one, else foreground.
    pub fn for_split(manifest: &SplitManifest, fg_threshold: u8) -> Result<Self> {
        let Some(t) = &manifest.classes else {
            if fg_threshold == 0 {
                return Err(EvalError::param(
                    "foreground_threshold",
                    fg_threshold,
                    "must be in 1..=255",
                ));
            }
            return Ok(LabelSpec::Foreground {
                threshold: fg_threshold,
            });
        };
        let mut lut = vec![IGNORE; t.onehot_channels.max(1)];
        let n_eval = t
            .classes
            .iter()
            .filter_map(|c| c.train_id)
            .map(|i| i as usize + 1)
            .max()
            .unwrap_or(0);
        if n_eval < 2 {
            return Err(EvalError::Input(format!(
                "class table `{}` has {n_eval} evaluation class(es) (train_id); mIoU needs at least 2",
                t.name
            )));
        }
        let mut names = vec![String::new(); n_eval];
        for c in &t.classes {
            if let Some(tid) = c.train_id {
                lut[c.id as usize] = tid as i64;
                if names[tid as usize].is_empty() {
                    names[tid as usize] = c.name.clone();
                }
            }
        }
        Ok(LabelSpec::ClassTable {
            table: t.name.clone(),
            classes: names,
            label_to_eval: lut,
        })
    }

    pub fn num_classes(&self) -> usize {
        match self {
            LabelSpec::ClassTable { classes, .. } => classes.len(),
            LabelSpec::Foreground { .. } => 2,
        }
    }

    pub fn class_names(&self) -> Vec<String> {
        match self {
            LabelSpec::ClassTable { classes, .. } => classes.clone(),
            LabelSpec::Foreground { .. } => vec!["background".into(), "foreground".into()],
        }
    }

    /// Evaluation label maps `[N, H, W]` (int64, [`IGNORE`] for ignored pixels) of a batch
    /// that has targets (labeled, hold-out or test).
    pub fn labels_of(&self, batch: &Batch) -> Result<Tensor> {
        match self {
            LabelSpec::ClassTable { label_to_eval, .. } => {
                let ids = batch.labels.as_ref().ok_or_else(|| {
                    EvalError::Input(format!(
                        "batch {:?} has no label maps although the split has a class table",
                        batch.ids
                    ))
                })?;
                let lut = Tensor::from_slice(label_to_eval).to_device(ids.device());
                let flat = ids.flatten(0, -1);
                let max = flat.max().int64_value(&[]);
                if max as usize >= label_to_eval.len() || flat.min().int64_value(&[]) < 0 {
                    return Err(EvalError::Input(format!(
                        "label id {max} in batch {:?} is outside the class table",
                        batch.ids
                    )));
                }
                Ok(lut.index_select(0, &flat).view(ids.size().as_slice()))
            }
            LabelSpec::Foreground { threshold } => {
                let t = batch.target.as_ref().ok_or_else(|| {
                    EvalError::Input(format!(
                        "batch {:?} has no target photos to derive foreground masks from",
                        batch.ids
                    ))
                })?;
                let bytes = real_to_unit(t) * 255.0;
                let darkest = bytes.amin([1i64].as_slice(), false);
                Ok(darkest.lt(f64::from(*threshold)).to_kind(Kind::Int64))
            }
        }
    }
}

/// Real images as loaded (`p / 127.5 - 1` for 8-bit `p`) back to exactly `p / 255` in
/// `[0, 1]` (rounding, so float error never moves a value to the next byte).
pub fn real_to_unit(x: &Tensor) -> Tensor {
    ((x.to_kind(Kind::Float) + 1.0) * 127.5)
        .round()
        .clamp(0.0, 255.0)
        / 255.0
}

/// Generator outputs in `[-1, 1]` to the 8-bit images that pix2pix's `tensor2im` saves
/// (truncation), in `[0, 1]`: metrics are computed on what a user would see.
pub fn generated_to_unit(x: &Tensor) -> Tensor {
    quantize_8bit(x, Rounding::Truncate)
}

/// `[0, 1]` images to the `[-1, 1]` range networks take.
pub fn unit_to_signed(u: &Tensor) -> Tensor {
    u * 2.0 - 1.0
}

/// `[N, 3, H, W]` in `[0, 1]` to 8-bit RGB rows (CPU), for PNG samples.
pub fn unit_to_bytes(u: &Tensor) -> Result<Vec<u8>> {
    let b = (u.to_device(Device::Cpu) * 255.0)
        .round()
        .clamp(0.0, 255.0)
        .to_kind(Kind::Uint8)
        .permute([0, 2, 3, 1])
        .contiguous()
        .flatten(0, -1);
    Vec::<u8>::try_from(&b).map_err(|e| EvalError::torch("copying images to the CPU", e))
}
