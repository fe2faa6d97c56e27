//! A trained segmentation evaluator: its record (`evaluator.json`), loading it from an
//! `evaluator` stage output, and using it for mIoU and `seg_fd` features.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{Device, Tensor, nn};
use ugc_data::{Loader, LoaderConfig, SplitManifest, Subset};
use ugc_metrics::weights::WeightsInfo;
use ugc_metrics::{ConfusionMatrix, EvaluatorIdentity, FeatureExtractor, MiouReport};

use crate::error::{EvalError, Result};
use crate::labels::{IGNORE, LabelSpec, real_to_unit, unit_to_signed};
use crate::segnet::{SegNet, SegNetConfig};
use crate::util::{file_digest, read_json};

/// Folder of the evaluator inside an `evaluator` stage output.
pub const EVALUATOR_DIR: &str = "evaluator";
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const META_FILE: &str = "evaluator.json";
const FORMAT: &str = "ugc-eval-segnet";
const VERSION: u32 = 1;

/// How the evaluator was trained (the provenance part of `evaluator.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingRecord {
    pub steps: u64,
    pub batch_size: usize,
    pub lr: f64,
    pub seed: u64,
    /// Labeled training photos used (real images only, never generated ones).
    pub n_images: usize,
    /// BLAKE3 over the sorted `path digest` lines of every labeled file of the split.
    pub data_digest: String,
    /// Label ratio of the split the photos came from.
    pub label_ratio: f64,
    /// Mean cross-entropy of the last 10% of steps.
    pub final_loss: f64,
}

/// The evaluator's own segmentation quality on the real test photos: the upper bound
/// of any generator's mIoU under this evaluator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestRecord {
    pub miou: f64,
    pub pixel_accuracy: f64,
    pub per_class_iou: Vec<Option<f64>>,
    pub n_images: usize,
}

/// `evaluator.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluatorMeta {
    pub format: String,
    pub version: u32,
    pub architecture: SegNetConfig,
    pub labels: LabelSpec,
    pub class_names: Vec<String>,
    /// Input convention.
    pub input: String,
    pub training: TrainingRecord,
    /// `None` only while the `evaluator` stage is measuring it; a saved `evaluator.json`
    /// always has it ([`Evaluator::load`] refuses one without).
    pub test: Option<TestRecord>,
}

impl EvaluatorMeta {
    pub fn new(
        architecture: SegNetConfig,
        labels: LabelSpec,
        training: TrainingRecord,
        test: Option<TestRecord>,
    ) -> Self {
        EvaluatorMeta {
            format: FORMAT.into(),
            version: VERSION,
            class_names: labels.class_names(),
            architecture,
            labels,
            input: INPUT_CONVENTION.into(),
            training,
            test,
        }
    }
}

const INPUT_CONVENTION: &str =
    "RGB, 8-bit values k/255 mapped to 2x-1; H and W multiples of 4; no resizing";

/// A segmentation network with its weights (frozen) and record.
pub struct Evaluator {
    vs: nn::VarStore,
    net: SegNet,
    pub meta: EvaluatorMeta,
    weights: WeightsInfo,
}

impl std::fmt::Debug for Evaluator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Evaluator")
            .field("meta", &self.meta)
            .field("weights", &self.weights)
            .finish()
    }
}

/// BLAKE3 over the sorted `path digest` lines of the labeled files of a split: identifies
/// exactly which real photos (and label maps) trained an evaluator.
pub fn labeled_data_digest(manifest: &SplitManifest) -> String {
    let mut lines: Vec<String> = manifest
        .files
        .iter()
        .filter(|f| f.role == ugc_data::manifest::Role::Labeled)
        .map(|f| format!("{} {}\n", f.path.display(), f.digest))
        .collect();
    lines.sort();
    blake3::hash(lines.concat().as_bytes()).to_hex().to_string()
}

impl Evaluator {
    /// Wraps a network whose weights were written to `weights_path` (its digest is taken
    /// from the file, so the identity always names the bytes on disk).
    pub fn from_parts(
        vs: nn::VarStore,
        net: SegNet,
        meta: EvaluatorMeta,
        weights_path: &Path,
    ) -> Result<Self> {
        let weights = WeightsInfo {
            path: weights_path.to_path_buf(),
            blake3: file_digest(weights_path)?,
            loaded: vs.variables().len(),
            ignored: Vec::new(),
        };
        Ok(Evaluator {
            vs,
            net,
            meta,
            weights,
        })
    }

    /// Loads `<dir>/evaluator/{model.safetensors, evaluator.json}` (an `evaluator` stage
    /// output) onto `device`.
    pub fn load(stage_dir: &Path, device: Device) -> Result<Self> {
        let dir: PathBuf = stage_dir.join(EVALUATOR_DIR);
        let mpath = dir.join(META_FILE);
        let wpath = dir.join(WEIGHTS_FILE);
        for p in [&mpath, &wpath] {
            if !p.is_file() {
                return Err(EvalError::bad(
                    p,
                    "missing: not the output of an `evaluator` stage",
                ));
            }
        }
        let meta: EvaluatorMeta = read_json(&mpath)?;
        if meta.format != FORMAT || meta.version != VERSION {
            return Err(EvalError::bad(
                &mpath,
                format!(
                    "format {} v{}; this build reads {FORMAT} v{VERSION}",
                    meta.format, meta.version
                ),
            ));
        }
        if meta.test.is_none() {
            return Err(EvalError::bad(
                &mpath,
                "has no `test` record (the evaluator stage did not finish)",
            ));
        }
        let mut vs = nn::VarStore::new(device);
        let net = SegNet::new(&vs.root(), &meta.architecture)?;
        vs.load(&wpath)
            .map_err(|e| EvalError::torch(format!("loading {}", wpath.display()), e))?;
        vs.freeze();
        Self::from_parts(vs, net, meta, &wpath)
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    pub fn weights(&self) -> &WeightsInfo {
        &self.weights
    }

    /// Segments images given in `[0, 1]` (8-bit values): class ids `[N, H, W]` on the CPU.
    pub fn segment(&self, unit: &Tensor) -> Result<Tensor> {
        let x = unit_to_signed(&unit.to_device(self.device()));
        Ok(self.net.predict(&x)?.to_device(Device::Cpu))
    }

    /// The evaluator's own mIoU on the real test photos (the upper bound).
    pub fn own_test_miou(&self) -> Option<f64> {
        self.meta.test.as_ref().map(|t| t.miou)
    }

    /// Adds the segmentation of `unit` images against `labels` (`[N, H, W]`, [`IGNORE`]d
    /// pixels skipped) to `cm`.
    pub fn accumulate(
        &self,
        cm: &mut ConfusionMatrix,
        unit: &Tensor,
        labels: &Tensor,
    ) -> Result<()> {
        let pred = self.segment(unit)?;
        cm.update_tensors(&pred, &labels.to_device(Device::Cpu))
            .map_err(|e| EvalError::Check(format!("mIoU: {e}")))
    }

    /// An empty confusion matrix for this evaluator's classes.
    pub fn confusion(&self) -> Result<ConfusionMatrix> {
        Ok(ConfusionMatrix::new(
            self.meta.labels.num_classes(),
            Some(IGNORE as u32),
        )?)
    }
}

impl FeatureExtractor for Evaluator {
    fn identity(&self) -> EvaluatorIdentity {
        let a = &self.meta.architecture;
        EvaluatorIdentity {
            name: format!("ugc-segnet-w{}-c{}", a.width, a.num_classes),
            metric_name: "seg_fd".into(),
            weights: Some(self.weights.clone()),
            input: format!(
                "{INPUT_CONVENTION}; features = global mean of the bottleneck ++ mean class probabilities"
            ),
        }
    }

    fn feature_dim(&self) -> i64 {
        self.meta.architecture.feature_dim()
    }

    fn features(&self, images: &Tensor) -> ugc_metrics::Result<Tensor> {
        let x = unit_to_signed(&images.to_device(self.device()));
        self.net
            .features(&x)
            .map(|f| f.to_device(Device::Cpu))
            .map_err(|e| ugc_metrics::MetricsError::InvalidParam(e.to_string()))
    }
}

/// Segmentation quality of `eval` on the real photos of the split's test set.
pub fn test_miou(
    eval: &Evaluator,
    manifest: &SplitManifest,
    split_dir: &Path,
    batch_size: usize,
) -> Result<MiouReport> {
    let cfg = LoaderConfig {
        threads: 1,
        ..LoaderConfig::eval(batch_size)
    };
    let loader = Loader::new(manifest, split_dir, Subset::Test, cfg)?;
    if loader.is_empty() {
        return Err(EvalError::Input(format!(
            "split {} has no test images",
            split_dir.display()
        )));
    }
    let mut cm = eval.confusion()?;
    let mut n = 0;
    for b in loader.epoch(0) {
        let b = b?;
        let labels = eval.meta.labels.labels_of(&b)?;
        let target = b.target.as_ref().expect("test pairs have targets");
        eval.accumulate(&mut cm, &real_to_unit(target), &labels)?;
        n += b.ids.len();
    }
    Ok(MiouReport::from_matrix(&cm, n)?)
}
