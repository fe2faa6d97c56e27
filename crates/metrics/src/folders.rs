//! The metrics of `ugc-pipe metrics` on image folders, each with the reference tool's
//! conventions (docs/metrics.md): FID and its `.npz` statistics as pytorch-fid, KID on the
//! same features with clean-fid's estimator, PSNR/SSIM as scikit-image, LPIPS as the
//! `lpips` package, mIoU as GAN Compression's DRN protocol and cityscapesScripts.
//! Images are read in batches; `Progress` reports each batch.

use std::path::{Path, PathBuf};

use serde::Serialize;
use tch::{Kind, Tensor};

use crate::cityscapes::{IGNORE_TRAIN_ID, NUM_TRAIN_IDS};
use crate::cityscapes_tree::{index_gtfine, match_to_gt};
use crate::drn::DrnSeg;
use crate::error::{MetricsError, Result};
use crate::folder::{Rgb8, batch_tensor, list_images, pair_by_name, read_pair, read_rgb8};
use crate::frechet::{DEFAULT_EPS, GaussianStats, frechet_distance};
use crate::image_metrics::{SsimConfig, psnr, ssim};
use crate::inception::FidInception;
use crate::kid::{KidConfig, KidResult, kernel_inception_distance};
use crate::lpips::{Lpips, lpips_input};
use crate::miou::{ConfusionMatrix, MiouReport};
use crate::npz::read_fid_stats;

/// Progress of a long computation (a bar on stderr in the CLI).
pub trait Progress {
    /// A new phase of `total` images.
    fn start(&mut self, what: &str, total: u64);
    /// `n` more images done.
    fn advance(&mut self, n: u64);
    /// The phase is over.
    fn finish(&mut self);
}

/// No progress output.
#[derive(Debug, Default)]
pub struct Silent;

impl Progress for Silent {
    fn start(&mut self, _: &str, _: u64) {}
    fn advance(&mut self, _: u64) {}
    fn finish(&mut self) {}
}

fn batch_size_ok(batch_size: i64) -> Result<usize> {
    usize::try_from(batch_size)
        .ok()
        .filter(|&b| b >= 1)
        .ok_or_else(|| {
            MetricsError::InvalidParam(format!("--batch-size must be >= 1, got {batch_size}"))
        })
}

/// pytorch-fid's `get_activations`: `N x dims` float64 activations of the images of `dir`
/// in its file order, `batch_size` at a time (the last batch may be smaller).
pub fn fid_activations(
    model: &FidInception,
    dir: &Path,
    batch_size: i64,
    dims: i64,
    progress: &mut dyn Progress,
) -> Result<Tensor> {
    let files = list_images(dir)?;
    let bs = batch_size_ok(batch_size)?.min(files.len());
    progress.start(
        &format!("Inception features of {}", dir.display()),
        files.len() as u64,
    );
    let mut out = Vec::new();
    for chunk in files.chunks(bs) {
        let imgs: Vec<(PathBuf, Rgb8)> = chunk
            .iter()
            .map(|p| Ok((p.clone(), read_rgb8(p)?)))
            .collect::<Result<_>>()?;
        let x = batch_tensor(&imgs)?;
        out.push(model.features_dims(&x, dims)?.to_kind(Kind::Double));
        progress.advance(chunk.len() as u64);
    }
    progress.finish();
    Ok(Tensor::cat(&out, 0))
}

/// Statistics of one side of `fid`: a pytorch-fid `.npz` (by its name's ending, as
/// pytorch-fid decides) or a folder of images.
pub fn fid_stats_of_path(
    model: &FidInception,
    path: &Path,
    batch_size: i64,
    dims: i64,
    progress: &mut dyn Progress,
) -> Result<GaussianStats> {
    if path.to_string_lossy().ends_with(".npz") {
        let s = read_fid_stats(path)?;
        if s.dim() != dims {
            return Err(MetricsError::Mismatch(format!(
                "{} holds {}-d statistics but --dims is {dims}",
                path.display(),
                s.dim()
            )));
        }
        return Ok(s);
    }
    let act = fid_activations(model, path, batch_size, dims, progress)?;
    GaussianStats::from_features(&act).map_err(|e| match e {
        MetricsError::InvalidParam(m) => {
            MetricsError::InvalidParam(format!("{}: {m}", path.display()))
        }
        e => e,
    })
}

/// An FID value and how it was obtained.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FidReport {
    pub value: f64,
    pub dims: i64,
    /// Images per side (`null` for a side read from `.npz`).
    pub n_a: Option<usize>,
    pub n_b: Option<usize>,
    /// True when the covariance product was singular and `1e-6 I` was added (as
    /// pytorch-fid does, with the same message).
    pub offset_applied: bool,
}

/// FID between two paths, each a folder of images or a `.npz` statistics file.
pub fn fid_of_paths(
    model: &FidInception,
    a: &Path,
    b: &Path,
    batch_size: i64,
    dims: i64,
    progress: &mut dyn Progress,
) -> Result<FidReport> {
    for p in [a, b] {
        if !p.exists() {
            return Err(MetricsError::InvalidParam(format!(
                "{}: no such folder or .npz file",
                p.display()
            )));
        }
    }
    let sa = fid_stats_of_path(model, a, batch_size, dims, progress)?;
    let sb = fid_stats_of_path(model, b, batch_size, dims, progress)?;
    let r = frechet_distance(&sa, &sb, DEFAULT_EPS)?;
    let n = |s: &GaussianStats| (s.n > 0).then_some(s.n);
    Ok(FidReport {
        value: r.value,
        dims,
        n_a: n(&sa),
        n_b: n(&sb),
        offset_applied: r.offset_applied,
    })
}

/// KID between two folders on the Inception pool3 activations.
pub fn kid_of_dirs(
    model: &FidInception,
    a: &Path,
    b: &Path,
    batch_size: i64,
    cfg: &KidConfig,
    progress: &mut dyn Progress,
) -> Result<KidResult> {
    let fa = fid_activations(model, a, batch_size, crate::inception::POOL3_DIM, progress)?;
    let fb = fid_activations(model, b, batch_size, crate::inception::POOL3_DIM, progress)?;
    kernel_inception_distance(&fa, &fb, cfg)
}

/// Per-image values of a paired metric and their mean.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PairedReport {
    pub value: f64,
    pub n_images: usize,
    /// `(file name, value)` in file-name order.
    pub per_image: Vec<(String, f64)>,
}

impl PairedReport {
    fn new(per_image: Vec<(String, f64)>) -> Self {
        let value = per_image.iter().map(|(_, v)| v).sum::<f64>() / per_image.len() as f64;
        PairedReport {
            value,
            n_images: per_image.len(),
            per_image,
        }
    }
}

/// Which full-reference metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Paired {
    /// scikit-image's `peak_signal_noise_ratio` on 8-bit images (data range 255).
    Psnr,
    /// scikit-image's `structural_similarity(gaussian_weights=True, sigma=1.5,
    /// use_sample_covariance=False, data_range=255, channel_axis=-1)`.
    Ssim,
}

fn hwc_to_nchw_f64(img: &Rgb8) -> Tensor {
    Tensor::from_slice(&img.data)
        .view([1, img.height as i64, img.width as i64, 3])
        .permute([0, 3, 1, 2])
        .to_kind(Kind::Double)
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

/// PSNR or SSIM of the images of `a` and `b` paired by file name. Identical images have an
/// infinite PSNR (as scikit-image returns), which makes the mean infinite.
pub fn paired_of_dirs(
    a: &Path,
    b: &Path,
    which: Paired,
    progress: &mut dyn Progress,
) -> Result<PairedReport> {
    let pairs = pair_by_name(a, b)?;
    progress.start("image pairs", pairs.len() as u64);
    let mut per_image = Vec::with_capacity(pairs.len());
    for (pa, pb) in &pairs {
        let (x, y) = read_pair(pa, pb)?;
        let (tx, ty) = (hwc_to_nchw_f64(&x), hwc_to_nchw_f64(&y));
        let v = match which {
            Paired::Psnr => psnr(&tx, &ty, 255.0)?[0],
            Paired::Ssim => ssim(&tx, &ty, 255.0, &SsimConfig::default()).map_err(|e| match e {
                MetricsError::InvalidParam(m) => {
                    MetricsError::InvalidParam(format!("{}: {m}", pa.display()))
                }
                e => e,
            })?[0],
        };
        per_image.push((file_name(pa), v));
        progress.advance(1);
    }
    progress.finish();
    Ok(PairedReport::new(per_image))
}

/// LPIPS of the images of `a` and `b` paired by file name; consecutive pairs of one size
/// share a forward pass, at most `batch_size` at a time.
pub fn lpips_of_dirs(
    model: &Lpips,
    a: &Path,
    b: &Path,
    batch_size: i64,
    progress: &mut dyn Progress,
) -> Result<PairedReport> {
    let bs = batch_size_ok(batch_size)?;
    let pairs = pair_by_name(a, b)?;
    progress.start("image pairs", pairs.len() as u64);
    let mut per_image = Vec::with_capacity(pairs.len());
    let mut pending: Vec<(String, Rgb8, Rgb8)> = Vec::new();
    let flush = |pending: &mut Vec<(String, Rgb8, Rgb8)>,
                 per_image: &mut Vec<(String, f64)>,
                 progress: &mut dyn Progress|
     -> Result<()> {
        if pending.is_empty() {
            return Ok(());
        }
        let (h, w) = (pending[0].1.height as i64, pending[0].1.width as i64);
        let x0: Vec<&[u8]> = pending.iter().map(|p| p.1.data.as_slice()).collect();
        let x1: Vec<&[u8]> = pending.iter().map(|p| p.2.data.as_slice()).collect();
        let d = model.distance(&lpips_input(&x0, h, w), &lpips_input(&x1, h, w))?;
        progress.advance(pending.len() as u64);
        per_image.extend(pending.drain(..).map(|p| p.0).zip(d));
        Ok(())
    };
    for (pa, pb) in &pairs {
        let (x, y) = read_pair(pa, pb)?;
        let same = pending
            .first()
            .is_none_or(|p| (p.1.width, p.1.height) == (x.width, x.height));
        if !same || pending.len() == bs {
            flush(&mut pending, &mut per_image, progress)?;
        }
        pending.push((file_name(pa), x, y));
    }
    flush(&mut pending, &mut per_image, progress)?;
    progress.finish();
    Ok(PairedReport::new(per_image))
}

/// One generated image waiting for the DRN: its path and pixels, the train ids of its
/// ground truth (`width, height, values`) and their file.
type DrnItem = (PathBuf, Rgb8, (u32, u32, Vec<u32>), PathBuf);

/// GAN Compression's Cityscapes mIoU: every generated image of `images` (matched to the
/// `gtFine` tree by the Cityscapes id in its name) is segmented by the DRN at its own
/// resolution, its log-probabilities are resized to its label map's size with Pillow's
/// float32 bilinear filter ([`DrnSeg::predict`]), and the argmax is compared with the train
/// ids (19 classes, 255 ignored) in one confusion matrix over all images.
pub fn drn_miou_of_dirs(
    drn: &DrnSeg,
    images: &Path,
    gt_root: &Path,
    batch_size: i64,
    progress: &mut dyn Progress,
) -> Result<MiouReport> {
    let bs = batch_size_ok(batch_size)?;
    let listed = list_images(images)?;
    let mut by_id = std::collections::BTreeMap::new();
    let mut no_id = Vec::new();
    for f in &listed {
        match crate::cityscapes_tree::cityscapes_id(&file_name(f)) {
            Some(id) => {
                if let Some(prev) = by_id.insert(id.clone(), f.clone()) {
                    return Err(MetricsError::Mismatch(format!(
                        "{} and {} have the same Cityscapes id {id}",
                        prev.display(),
                        f.display()
                    )));
                }
            }
            None => no_id.push(f.display().to_string()),
        }
    }
    if !no_id.is_empty() {
        let n = no_id.len();
        no_id.truncate(5);
        return Err(MetricsError::InvalidParam(format!(
            "{n} image(s) have no Cityscapes id (city_000000_000000) in their names, so no \
             ground truth can be found for them: {}",
            no_id.join(", ")
        )));
    }
    let gt = index_gtfine(gt_root)?;
    let pairs = match_to_gt(&by_id, &gt, gt_root)?;
    let mut cm = ConfusionMatrix::new(NUM_TRAIN_IDS, Some(IGNORE_TRAIN_ID as u32))?;
    progress.start("DRN segmentation", pairs.len() as u64);
    let mut pending: Vec<DrnItem> = Vec::new();
    let mut flush = |pending: &mut Vec<DrnItem>, progress: &mut dyn Progress| -> Result<()> {
        if pending.is_empty() {
            return Ok(());
        }
        let imgs: Vec<(PathBuf, Rgb8)> =
            pending.iter().map(|p| (p.0.clone(), p.1.clone())).collect();
        let x = batch_tensor(&imgs)?;
        let (gw, gh) = (pending[0].2.0 as i64, pending[0].2.1 as i64);
        let gvals: Vec<i64> = pending
            .iter()
            .flat_map(|p| p.2.2.iter().map(|&v| v as i64))
            .collect();
        let g = Tensor::from_slice(&gvals).view([pending.len() as i64, gh, gw]);
        let pred = drn.predict(&x, [gh, gw])?;
        for (i, p) in pending.iter().enumerate() {
            cm.update_tensors(&pred.get(i as i64), &g.get(i as i64))
                .map_err(|r| MetricsError::LabelImage {
                    path: p.3.clone(),
                    reason: r,
                })?;
        }
        progress.advance(pending.len() as u64);
        pending.clear();
        Ok(())
    };
    for (img_path, gt_file) in &pairs {
        let img = read_rgb8(img_path)?;
        let g = gt_file.read_train_ids()?;
        let same = pending.first().is_none_or(|p| {
            (p.1.width, p.1.height) == (img.width, img.height) && (p.2.0, p.2.1) == (g.0, g.1)
        });
        if !same || pending.len() == bs {
            flush(&mut pending, progress)?;
        }
        pending.push((img_path.clone(), img, g, gt_file.path().to_path_buf()));
    }
    flush(&mut pending, progress)?;
    progress.finish();
    MiouReport::from_matrix(&cm, pairs.len())
}
