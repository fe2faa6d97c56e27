//! Cityscapes mIoU of generated images by DRN-D-105 (GAN Compression's and UGC's protocol):
//! the pretrained `DRNSeg` segments each generated photo and its prediction is compared
//! with the true label map in the 19 Cityscapes training classes (label ids mapped to train
//! ids, everything else ignored). The weights are user-supplied (`drn_weights`); nothing is
//! downloaded.
//!
//! Difference from GAN Compression (`ugc-pipe metrics miou --drn` follows it exactly): it
//! runs DRN on the generated image and resizes the log-probabilities to the 2048x1024
//! label maps with Pillow's bilinear filter; here the label maps come at the split's test
//! resolution, the generated images have that size, and the prediction is the argmax of
//! DRN's logits at that resolution (`DrnSeg::predict_at_input_size`).

use std::path::Path;

use serde_json::{Value, json};
use tch::{Device, Kind, Tensor};
use ugc_data::{Batch, SplitManifest};
use ugc_metrics::cityscapes::label_id_lut;
use ugc_metrics::drn::{DrnConfig, DrnSeg};
use ugc_metrics::{ConfusionMatrix, MiouReport};

use crate::error::{EvalError, Result};

/// DRN's 19 Cityscapes training classes.
pub const TRAIN_CLASSES: i64 = 19;
/// The ignore value of train-id maps.
pub const IGNORE: u32 = 255;

/// DRN-D-105 and the confusion matrix it fills over a test set.
pub struct DrnMiou {
    drn: DrnSeg,
    cm: ConfusionMatrix,
}

impl DrnMiou {
    /// Loads `DRNSeg` weights (safetensors, or a `.pth` as `torch.save` wrote it) for the
    /// 19-class head.
    pub fn load(path: &Path, device: Device) -> Result<Self> {
        Self::new(DrnSeg::load(path, &DrnConfig::d105(TRAIN_CLASSES), device)?)
    }

    pub fn new(drn: DrnSeg) -> Result<Self> {
        let cm = ConfusionMatrix::new(drn.config.num_classes as usize, Some(IGNORE))?;
        Ok(DrnMiou { drn, cm })
    }

    /// Refuses a split whose labels are not Cityscapes label ids (DRN knows nothing else).
    pub fn check_split(manifest: &SplitManifest) -> Result<()> {
        match &manifest.classes {
            Some(t) if t.name == "cityscapes" => Ok(()),
            other => Err(EvalError::param(
                "drn_weights",
                "(set)",
                format!(
                    "DRN-D-105 scores Cityscapes label maps, but the split has {}",
                    other
                        .as_ref()
                        .map_or("no class table".to_string(), |t| format!(
                            "class table `{}`",
                            t.name
                        ))
                ),
            )),
        }
    }

    /// Segments `images` (`N x 3 x H x W` in [0, 1]) and adds them to the matrix against the
    /// batch's label maps.
    pub fn accumulate(&mut self, images: &Tensor, batch: &Batch) -> Result<()> {
        let ids = batch.labels.as_ref().ok_or_else(|| {
            EvalError::Input(format!(
                "batch {:?} has no label maps for the DRN mIoU",
                batch.ids
            ))
        })?;
        let gt =
            train_ids(ids).map_err(|e| EvalError::Input(format!("{e} (batch {:?})", batch.ids)))?;
        self.drn.update_confusion(&mut self.cm, images, &gt)?;
        Ok(())
    }

    pub fn report(&self, num_images: usize) -> Result<MiouReport> {
        Ok(MiouReport::from_matrix(&self.cm, num_images)?)
    }

    /// What computed the value, for eval.json.
    pub fn identity(&self) -> Value {
        json!({
            "name": "drn-d-105",
            "classes": self.drn.config.num_classes,
            "weights": self.drn.weights,
            "protocol": "Cityscapes train ids (19 classes, other ids ignored), DRN at the test resolution",
        })
    }
}

/// Cityscapes label ids (`N x H x W`, any integer kind) to train ids on the CPU (int64),
/// [`IGNORE`] for classes outside the 19.
pub fn train_ids(label_ids: &Tensor) -> std::result::Result<Tensor, String> {
    let flat = label_ids
        .flatten(0, -1)
        .to_device(Device::Cpu)
        .to_kind(Kind::Int64);
    if flat.numel() > 0 {
        let (lo, hi) = (flat.min().int64_value(&[]), flat.max().int64_value(&[]));
        if lo < 0 || hi > 255 {
            return Err(format!("label ids {lo}..{hi} are outside 0..255"));
        }
    }
    let lut: Vec<i64> = label_id_lut().iter().map(|&v| i64::from(v)).collect();
    Ok(Tensor::from_slice(&lut)
        .index_select(0, &flat)
        .view(label_ids.size().as_slice()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_ids_map_to_train_ids_with_ignore() {
        // 7 road -> 0, 26 car -> 13, 0 unlabeled -> ignore, 33 bicycle -> 18.
        let ids = Tensor::from_slice(&[7i64, 26, 0, 33]).view([1, 2, 2]);
        let t = train_ids(&ids).unwrap();
        assert_eq!(
            Vec::<i64>::try_from(t.flatten(0, -1)).unwrap(),
            vec![0, 13, 255, 18]
        );
        assert!(train_ids(&Tensor::from_slice(&[-1i64]).view([1, 1, 1])).is_err());
    }

    #[test]
    fn a_batch_fills_the_matrix_and_reports_a_miou() {
        tch::manual_seed(0);
        let drn = DrnSeg::random(&DrnConfig::d105(TRAIN_CLASSES), Device::Cpu).unwrap();
        let mut m = DrnMiou::new(drn).unwrap();
        let batch = Batch {
            ids: vec!["a".into()],
            input: Tensor::zeros([1, 3, 16, 32], (Kind::Float, Device::Cpu)),
            target: None,
            labels: Some(Tensor::full([1, 16, 32], 7, (Kind::Int64, Device::Cpu))),
        };
        let img = Tensor::rand([1, 3, 16, 32], (Kind::Float, Device::Cpu));
        m.accumulate(&img, &batch).unwrap();
        let r = m.report(1).unwrap();
        assert!((0.0..=1.0).contains(&r.value), "{r:?}");
        assert_eq!(m.identity()["name"], "drn-d-105");
        let no_labels = Batch {
            labels: None,
            ..batch
        };
        assert!(m.accumulate(&img, &no_labels).is_err());
    }
}
