//! Cityscapes files as they lie on disk: `gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png`
//! (and `_gtFine_trainIds.png`), matched to predictions or generated images by the
//! `<city>_<seq>_<frame>` id in their names; label ids become train ids through
//! cityscapesScripts' table ([`crate::cityscapes`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::cityscapes::{IGNORE_TRAIN_ID, LABELS, NUM_TRAIN_IDS, label_id_lut};
use crate::error::{MetricsError, Result};
use crate::miou::{ConfusionMatrix, MiouReport, read_label_png};

/// The `<city>_<6 digits>_<6 digits>` id in a file name (`frankfurt_000000_000294`), the
/// last one when several match.
pub fn cityscapes_id(name: &str) -> Option<String> {
    let parts: Vec<&str> = name.split(['_', '.']).collect();
    let digits6 = |s: &str| s.len() == 6 && s.bytes().all(|b| b.is_ascii_digit());
    let city = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'-');
    (0..parts.len().saturating_sub(2))
        .rev()
        .find(|&i| city(parts[i]) && digits6(parts[i + 1]) && digits6(parts[i + 2]))
        .map(|i| format!("{}_{}_{}", parts[i], parts[i + 1], parts[i + 2]))
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let rd = std::fs::read_dir(dir).map_err(|e| MetricsError::io(dir, e))?;
    for entry in rd {
        let entry = entry.map_err(|e| MetricsError::io(dir, e))?;
        let p = entry.path();
        if p.is_dir() {
            walk(&p, out)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
}

/// Every PNG under `dir` (recursively) whose name holds a Cityscapes id and ends with
/// `suffix`, by id. Two files with one id are an error naming both.
pub fn index_by_id(dir: &Path, suffix: &str) -> Result<BTreeMap<String, PathBuf>> {
    if !dir.is_dir() {
        return Err(MetricsError::InvalidParam(format!(
            "{}: not a folder",
            dir.display()
        )));
    }
    let mut files = Vec::new();
    walk(dir, &mut files)?;
    files.sort();
    let mut by_id: BTreeMap<String, PathBuf> = BTreeMap::new();
    for f in files {
        let name = f
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if !name.ends_with(suffix) {
            continue;
        }
        let Some(id) = cityscapes_id(&name) else {
            continue;
        };
        if let Some(prev) = by_id.insert(id.clone(), f.clone()) {
            return Err(MetricsError::Mismatch(format!(
                "{} and {} have the same Cityscapes id {id}",
                prev.display(),
                f.display()
            )));
        }
    }
    Ok(by_id)
}

/// A ground-truth file of a `gtFine` tree: label ids (mapped to train ids) or train ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GtFile {
    LabelIds(PathBuf),
    TrainIds(PathBuf),
}

impl GtFile {
    pub fn path(&self) -> &Path {
        match self {
            GtFile::LabelIds(p) | GtFile::TrainIds(p) => p,
        }
    }

    /// `(width, height, train ids)`; a label id outside cityscapesScripts' table is an error
    /// naming the file.
    pub fn read_train_ids(&self) -> Result<(u32, u32, Vec<u32>)> {
        let (w, h, v) = read_label_png(self.path())?;
        match self {
            GtFile::TrainIds(_) => Ok((w, h, v)),
            GtFile::LabelIds(p) => Ok((w, h, label_ids_to_train_ids(p, &v)?)),
        }
    }
}

/// Maps label ids to train ids (255 for the ids cityscapesScripts does not evaluate); an id
/// that is not in the table (cityscapesScripts' "Unknown label with id") names the file.
pub fn label_ids_to_train_ids(path: &Path, ids: &[u32]) -> Result<Vec<u32>> {
    let lut = label_id_lut();
    let known = |v: u32| LABELS.iter().any(|l| l.id >= 0 && l.id as u32 == v);
    ids.iter()
        .enumerate()
        .map(|(i, &v)| {
            if known(v) {
                Ok(lut[v as usize] as u32)
            } else {
                Err(MetricsError::LabelImage {
                    path: path.to_path_buf(),
                    reason: format!(
                        "value {v} at pixel {i} is not a Cityscapes label id (0..=33); \
                         is this a train-id or colour image?"
                    ),
                })
            }
        })
        .collect()
}

/// The ground truth of a `gtFine` tree (or one split or city of it) by Cityscapes id:
/// `*_gtFine_labelIds.png`, else `*_gtFine_trainIds.png` for ids that have no label-id file.
pub fn index_gtfine(root: &Path) -> Result<BTreeMap<String, GtFile>> {
    let mut out: BTreeMap<String, GtFile> = index_by_id(root, "_gtFine_trainIds.png")?
        .into_iter()
        .map(|(k, p)| (k, GtFile::TrainIds(p)))
        .collect();
    for (k, p) in index_by_id(root, "_gtFine_labelIds.png")? {
        out.insert(k, GtFile::LabelIds(p));
    }
    if out.is_empty() {
        return Err(MetricsError::InvalidParam(format!(
            "{}: no *_gtFine_labelIds.png or *_gtFine_trainIds.png files (a Cityscapes gtFine tree)",
            root.display()
        )));
    }
    Ok(out)
}

/// Pairs files (by their Cityscapes id) with the ground truth; a file without an id, or
/// whose id has no ground truth, is an error naming it.
pub fn match_to_gt(
    files: &BTreeMap<String, PathBuf>,
    gt: &BTreeMap<String, GtFile>,
    gt_root: &Path,
) -> Result<Vec<(PathBuf, GtFile)>> {
    let mut missing = Vec::new();
    let mut pairs = Vec::new();
    for (id, f) in files {
        match gt.get(id) {
            Some(g) => pairs.push((f.clone(), g.clone())),
            None => missing.push(f.display().to_string()),
        }
    }
    if !missing.is_empty() {
        let n = missing.len();
        missing.truncate(5);
        return Err(MetricsError::Mismatch(format!(
            "{n} file(s) have no ground truth under {}: {}",
            gt_root.display(),
            missing.join(", ")
        )));
    }
    Ok(pairs)
}

/// mIoU of predicted label-id PNGs (`*_labelIds.png` under `pred`, any folder layout)
/// against a `gtFine` tree, as cityscapesScripts' `evalPixelLevelSemanticLabeling`:
/// 19 classes, ground truth without a train id skipped, predicted ids without one count
/// as misses of the true class.
pub fn miou_label_ids(pred: &Path, gt_root: &Path) -> Result<MiouReport> {
    let preds = index_by_id(pred, ".png")?;
    if preds.is_empty() {
        return Err(MetricsError::InvalidParam(format!(
            "{}: no PNG whose name holds a Cityscapes id (city_000000_000000)",
            pred.display()
        )));
    }
    let gt = index_gtfine(gt_root)?;
    let pairs = match_to_gt(&preds, &gt, gt_root)?;
    let mut cm = ConfusionMatrix::new(NUM_TRAIN_IDS, Some(IGNORE_TRAIN_ID as u32))?;
    for (p, g) in &pairs {
        let (pw, ph, pv) = read_label_png(p)?;
        let pv = label_ids_to_train_ids(p, &pv)?;
        let (gw, gh, gv) = g.read_train_ids()?;
        if (pw, ph) != (gw, gh) {
            return Err(MetricsError::Mismatch(format!(
                "{} is {pw}x{ph} but its ground truth {} is {gw}x{gh}",
                p.display(),
                g.path().display()
            )));
        }
        cm.update_with_void(&pv, &gv, IGNORE_TRAIN_ID as u32)
            .map_err(|r| MetricsError::LabelImage {
                path: p.clone(),
                reason: r,
            })?;
    }
    MiouReport::from_matrix(&cm, pairs.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_in_names() {
        assert_eq!(
            cityscapes_id("frankfurt_000000_000294_leftImg8bit_fake_B.png").as_deref(),
            Some("frankfurt_000000_000294")
        );
        assert_eq!(
            cityscapes_id("munster_000001_000019_gtFine_labelIds.png").as_deref(),
            Some("munster_000001_000019")
        );
        assert_eq!(cityscapes_id("1_fake_B.png"), None);
        assert_eq!(cityscapes_id("a_12345_123456.png"), None);
    }
}
