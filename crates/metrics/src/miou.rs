//! Confusion-matrix mean IoU with an ignore index, as the GAN-compression Cityscapes
//! evaluation computes it (`fast_hist` + `per_class_iu` + `nanmean`): pixels whose ground
//! truth is the ignore value are skipped, per-class IoU = TP / (TP + FP + FN), and classes
//! absent from both prediction and ground truth are left out of the mean.
//!
//! Stricter than the reference: a ground-truth value that is neither a class nor the
//! ignore value, or a prediction outside the classes, is an error (it usually means
//! label ids were given instead of train ids, or the wrong `num_classes`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Serialize;
use tch::{Device, Kind, Tensor};

use crate::error::{MetricsError, Result};

/// Accumulated `num_classes x num_classes` counts; rows are ground truth, columns prediction.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfusionMatrix {
    num_classes: usize,
    ignore: Option<u32>,
    counts: Vec<u64>,
    /// Per ground-truth class: pixels predicted as no class at all (a Cityscapes label id
    /// without a train id). cityscapesScripts counts them as misses (FN) and not as anyone's
    /// false positive; always zero for [`ConfusionMatrix::update`].
    missed: Vec<u64>,
    ignored_pixels: u64,
}

impl ConfusionMatrix {
    pub fn new(num_classes: usize, ignore: Option<u32>) -> Result<Self> {
        if num_classes == 0 || num_classes > 65536 {
            return Err(MetricsError::InvalidParam(format!(
                "num_classes must be in 1..=65536, got {num_classes}"
            )));
        }
        if let Some(i) = ignore
            && (i as usize) < num_classes
        {
            return Err(MetricsError::InvalidParam(format!(
                "ignore index {i} is one of the {num_classes} classes; it must be >= num_classes"
            )));
        }
        Ok(ConfusionMatrix {
            num_classes,
            ignore,
            counts: vec![0; num_classes * num_classes],
            missed: vec![0; num_classes],
            ignored_pixels: 0,
        })
    }

    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// Adds one image (flattened label maps of equal length). The error is a reason
    /// without the file name; callers add it.
    pub fn update(&mut self, pred: &[u32], gt: &[u32]) -> std::result::Result<(), String> {
        self.add(pred, gt, None)
    }

    /// Like [`ConfusionMatrix::update`], but a prediction equal to `void` is a miss of the
    /// ground-truth class (cityscapesScripts' rule for predicted ids that are not evaluated).
    pub fn update_with_void(
        &mut self,
        pred: &[u32],
        gt: &[u32],
        void: u32,
    ) -> std::result::Result<(), String> {
        self.add(pred, gt, Some(void))
    }

    fn add(
        &mut self,
        pred: &[u32],
        gt: &[u32],
        void: Option<u32>,
    ) -> std::result::Result<(), String> {
        if pred.len() != gt.len() {
            return Err(format!(
                "prediction has {} pixels, ground truth {}",
                pred.len(),
                gt.len()
            ));
        }
        let n = self.num_classes;
        for (i, (&p, &g)) in pred.iter().zip(gt).enumerate() {
            if Some(g) == self.ignore {
                self.ignored_pixels += 1;
                continue;
            }
            if g as usize >= n {
                return Err(format!(
                    "ground-truth value {g} at pixel {i} is neither a class (< {n}) nor the ignore index {}",
                    self.ignore.map_or("(none)".to_string(), |v| v.to_string())
                ));
            }
            if Some(p) == void {
                self.missed[g as usize] += 1;
                continue;
            }
            if p as usize >= n {
                return Err(format!(
                    "predicted value {p} at pixel {i} is not a class (< {n})"
                ));
            }
            self.counts[g as usize * n + p as usize] += 1;
        }
        Ok(())
    }

    /// Adds label maps held in tensors of equal shape (any integer kind, any device), e.g.
    /// `DrnSeg::predict` output against ground truth loaded by the data crate.
    pub fn update_tensors(
        &mut self,
        pred: &Tensor,
        gt: &Tensor,
    ) -> std::result::Result<(), String> {
        if pred.size() != gt.size() {
            return Err(format!(
                "prediction of shape {:?} vs ground truth of shape {:?}",
                pred.size(),
                gt.size()
            ));
        }
        let to_vec = |t: &Tensor, what: &str| -> std::result::Result<Vec<u32>, String> {
            let v: Vec<i64> =
                Vec::try_from(&t.to_device(Device::Cpu).to_kind(Kind::Int64).flatten(0, -1))
                    .map_err(|e: tch::TchError| e.to_string())?;
            v.into_iter()
                .map(|x| u32::try_from(x).map_err(|_| format!("{what} value {x} is negative")))
                .collect()
        };
        let p = to_vec(pred, "predicted")?;
        let g = to_vec(gt, "ground-truth")?;
        self.update(&p, &g)
    }

    /// Count of pixels with ground truth `gt` predicted as `pred`.
    pub fn get(&self, gt: usize, pred: usize) -> u64 {
        self.counts[gt * self.num_classes + pred]
    }

    /// Per-class IoU; `None` for a class absent from both prediction and ground truth.
    pub fn iou_per_class(&self) -> Vec<Option<f64>> {
        let n = self.num_classes;
        (0..n)
            .map(|c| {
                let tp = self.get(c, c);
                let gt_total: u64 = (0..n).map(|p| self.get(c, p)).sum::<u64>() + self.missed[c];
                let pred_total: u64 = (0..n).map(|g| self.get(g, c)).sum();
                let union = gt_total + pred_total - tp;
                (union > 0).then(|| tp as f64 / union as f64)
            })
            .collect()
    }

    /// Mean over classes present in prediction or ground truth (`nanmean`), as a fraction.
    pub fn mean_iou(&self) -> Option<f64> {
        let ious: Vec<f64> = self.iou_per_class().into_iter().flatten().collect();
        (!ious.is_empty()).then(|| ious.iter().sum::<f64>() / ious.len() as f64)
    }

    /// Fraction of evaluated (non-ignored) pixels predicted correctly.
    pub fn pixel_accuracy(&self) -> Option<f64> {
        let total = self.evaluated_pixels();
        let correct: u64 = (0..self.num_classes).map(|c| self.get(c, c)).sum();
        (total > 0).then(|| correct as f64 / total as f64)
    }

    pub fn evaluated_pixels(&self) -> u64 {
        self.counts.iter().sum::<u64>() + self.missed.iter().sum::<u64>()
    }

    pub fn ignored_pixels(&self) -> u64 {
        self.ignored_pixels
    }
}

/// Result of an mIoU evaluation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MiouReport {
    /// Mean IoU as a fraction in [0, 1].
    pub value: f64,
    /// IoU per class (`null` where the class appears in neither prediction nor ground truth).
    pub per_class: Vec<Option<f64>>,
    pub pixel_accuracy: f64,
    pub num_images: usize,
    pub evaluated_pixels: u64,
    pub ignored_pixels: u64,
}

impl MiouReport {
    pub fn from_matrix(cm: &ConfusionMatrix, num_images: usize) -> Result<Self> {
        let value = cm.mean_iou().ok_or_else(|| {
            MetricsError::Mismatch(
                "no pixel was evaluated: every ground-truth pixel has the ignore value".into(),
            )
        })?;
        Ok(MiouReport {
            value,
            per_class: cm.iou_per_class(),
            pixel_accuracy: cm.pixel_accuracy().unwrap_or(0.0),
            num_images,
            evaluated_pixels: cm.evaluated_pixels(),
            ignored_pixels: cm.ignored_pixels(),
        })
    }
}

/// Reads a single-channel (8- or 16-bit) label PNG as `(width, height, values)`.
pub fn read_label_png(path: &Path) -> Result<(u32, u32, Vec<u32>)> {
    let bad = |reason: String| MetricsError::LabelImage {
        path: path.to_path_buf(),
        reason,
    };
    let reader = image::ImageReader::open(path)
        .map_err(|e| MetricsError::io(path, e))?
        .with_guessed_format()
        .map_err(|e| MetricsError::io(path, e))?;
    let img = reader
        .decode()
        .map_err(|e| bad(format!("cannot decode image: {e}")))?;
    let (w, h) = (img.width(), img.height());
    let values = match img {
        image::DynamicImage::ImageLuma8(b) => b.into_raw().into_iter().map(u32::from).collect(),
        image::DynamicImage::ImageLuma16(b) => b.into_raw().into_iter().map(u32::from).collect(),
        other => {
            return Err(bad(format!(
                "expected a single-channel label image (8- or 16-bit grayscale), found {:?}; \
                 colour-coded label maps must be converted to class indices first",
                other.color()
            )));
        }
    };
    Ok((w, h, values))
}

fn png_names(dir: &Path) -> Result<BTreeSet<String>> {
    let rd = std::fs::read_dir(dir).map_err(|e| MetricsError::io(dir, e))?;
    let mut names = BTreeSet::new();
    for entry in rd {
        let entry = entry.map_err(|e| MetricsError::io(dir, e))?;
        let path = entry.path();
        let is_png = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("png"));
        if is_png && path.is_file() {
            names.insert(entry.file_name().to_string_lossy().into_owned());
        }
    }
    Ok(names)
}

/// mIoU between label PNGs of `pred` and `gt` with identical file names
/// (`ugc-pipe metrics miou --pred DIR --gt DIR --num-classes N --ignore I`).
pub fn miou_from_dirs(
    pred: &Path,
    gt: &Path,
    num_classes: usize,
    ignore: Option<u32>,
) -> Result<MiouReport> {
    let mut cm = ConfusionMatrix::new(num_classes, ignore)?;
    let pred_names = png_names(pred)?;
    let gt_names = png_names(gt)?;
    if pred_names.is_empty() {
        return Err(MetricsError::Mismatch(format!(
            "no .png files in prediction folder {}",
            pred.display()
        )));
    }
    let missing_gt: Vec<&String> = pred_names.difference(&gt_names).take(5).collect();
    let missing_pred: Vec<&String> = gt_names.difference(&pred_names).take(5).collect();
    if !missing_gt.is_empty() || !missing_pred.is_empty() {
        return Err(MetricsError::Mismatch(format!(
            "prediction folder {} and ground-truth folder {} must hold the same file names; \
             without ground truth: {missing_gt:?}; without prediction: {missing_pred:?}",
            pred.display(),
            gt.display()
        )));
    }
    for name in &pred_names {
        let (pp, gp): (PathBuf, PathBuf) = (pred.join(name), gt.join(name));
        let (pw, ph, pv) = read_label_png(&pp)?;
        let (gw, gh, gv) = read_label_png(&gp)?;
        if (pw, ph) != (gw, gh) {
            return Err(MetricsError::Mismatch(format!(
                "{} is {pw}x{ph} but {} is {gw}x{gh}",
                pp.display(),
                gp.display()
            )));
        }
        cm.update(&pv, &gv)
            .map_err(|reason| MetricsError::LabelImage {
                path: format!("{} / {}", pp.display(), gp.display()).into(),
                reason,
            })?;
    }
    MiouReport::from_matrix(&cm, pred_names.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_iou() {
        // gt:   0 0 1 1 255
        // pred: 0 1 1 1 0
        let mut cm = ConfusionMatrix::new(3, Some(255)).unwrap();
        cm.update(&[0, 1, 1, 1, 0], &[0, 0, 1, 1, 255]).unwrap();
        let iou = cm.iou_per_class();
        assert_eq!(iou[0], Some(0.5));
        assert_eq!(iou[1], Some(2.0 / 3.0));
        assert_eq!(iou[2], None);
        // Two divisions and a mean of two, in float64: a few roundings of values <= 1.
        assert!((cm.mean_iou().unwrap() - (0.5 + 2.0 / 3.0) / 2.0).abs() <= 4.0 * f64::EPSILON);
        assert_eq!(cm.ignored_pixels(), 1);
        assert_eq!(cm.pixel_accuracy(), Some(0.75));
    }

    #[test]
    fn rejects_out_of_range_values_and_bad_ignore() {
        let mut cm = ConfusionMatrix::new(3, Some(255)).unwrap();
        assert!(
            cm.update(&[0], &[7])
                .unwrap_err()
                .contains("ground-truth value 7")
        );
        assert!(
            cm.update(&[9], &[0])
                .unwrap_err()
                .contains("predicted value 9")
        );
        assert!(ConfusionMatrix::new(3, Some(2)).is_err());
        assert!(ConfusionMatrix::new(0, None).is_err());
    }

    #[test]
    fn tensor_update_equals_slice_update() {
        let gt = Tensor::from_slice(&[0i64, 0, 1, 1, 255, 2]).view([1, 2, 3]);
        let pred = Tensor::from_slice(&[0i64, 1, 1, 1, 0, 2]).view([1, 2, 3]);
        let mut a = ConfusionMatrix::new(3, Some(255)).unwrap();
        a.update_tensors(&pred, &gt).unwrap();
        let mut b = ConfusionMatrix::new(3, Some(255)).unwrap();
        b.update(&[0, 1, 1, 1, 0, 2], &[0, 0, 1, 1, 255, 2])
            .unwrap();
        assert_eq!(a, b);
        let neg = Tensor::from_slice(&[-1i64, 0, 0, 0, 0, 0]).view([1, 2, 3]);
        assert!(
            a.update_tensors(&neg, &gt)
                .unwrap_err()
                .contains("negative")
        );
        assert!(a.update_tensors(&pred.view([6]), &gt).is_err());
    }
}
