//! Built-in synthetic tasks (`synth` stage kind and CLI verb): deterministic for a seed,
//! written in the standard on-disk formats so the ordinary readers load them.
//!
//! - `labels2photo` -> Cityscapes layout (`leftImg8bit/`, `gtFine/` with labelIds,
//!   instanceIds, color) plus `classes.json`; the split reads it with `format: cityscapes`.
//! - `edges2photo` -> pix2pix aligned layout (`train/`, `val/`, `A|B` = edges|photo, AtoB).
//!
//! Both write `dataset.json` so a split finds the format without being told. Image `i` of
//! a split depends only on `(seed, split, i)`, so growing `n` keeps the earlier images.
//! `bad.rs`: the bad unlabeled inputs of the filter benchmark (labels2photo).

pub mod bad;
pub mod edges2photo;
pub mod labels2photo;
pub mod paint;

use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::classes::CLASSES_FILE;
use crate::dataset::{DATASET_INFO_FILE, DatasetInfo, Direction, Format};
use crate::error::{DataError, Result};
use crate::image_io::{png_ids, png_rgb, write};
use crate::rng::Rng;
use crate::validate::{default_threads, par_map};

/// The task enum lives with the `synth` kind's typed parameters (`ugc-kinds`).
pub use ugc_kinds::synth::SynthTask;

/// What to generate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SynthConfig {
    pub task: SynthTask,
    /// Training images.
    pub n: usize,
    /// Test (`val`) images.
    pub n_test: usize,
    /// Image side in pixels (square images; aligned files are `2*size x size`).
    pub size: u32,
    pub seed: u64,
    /// `labels2photo` only: number of classes used (3..=8).
    pub classes: usize,
}

/// Smallest image side the renderers support with visible structure.
pub const MIN_SIZE: u32 = 16;

impl SynthConfig {
    /// Defaults for the CLI verb: a quarter of `n` (at least 1) as test images, all classes.
    pub fn new(task: SynthTask, n: usize, size: u32, seed: u64) -> Self {
        SynthConfig {
            task,
            n,
            n_test: n.div_ceil(4).max(1),
            size,
            seed,
            classes: labels2photo::CLASSES.len(),
        }
    }

    pub fn check(&self) -> Result<()> {
        if self.n == 0 {
            return Err(DataError::param("n", "must be at least 1"));
        }
        if self.n_test == 0 {
            return Err(DataError::param("n_test", "must be at least 1"));
        }
        if !(MIN_SIZE..=4096).contains(&self.size) {
            return Err(DataError::param(
                "size",
                format!("must be in {MIN_SIZE}..=4096, got {}", self.size),
            ));
        }
        let k = labels2photo::CLASSES.len();
        if !(labels2photo::MIN_CLASSES..=k).contains(&self.classes) {
            return Err(DataError::param(
                "classes",
                format!(
                    "must be in {}..={k}, got {}",
                    labels2photo::MIN_CLASSES,
                    self.classes
                ),
            ));
        }
        Ok(())
    }
}

/// What was written, and how fast.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SynthReport {
    pub task: SynthTask,
    pub n_train: usize,
    pub n_test: usize,
    pub size: u32,
    pub files: usize,
    pub seconds: f64,
    pub images_per_sec: f64,
}

/// Stream ids keep train and test images independent of each other's counts.
const TRAIN_STREAM: u64 = 1 << 40;
const TEST_STREAM: u64 = 2 << 40;

/// Writes image `i` of `split`; `bad` corrupts it (after rendering the clean scene, so the
/// clean images' random streams are untouched).
fn write_labels2photo(
    cfg: &SynthConfig,
    out: &Path,
    split: &str,
    i: usize,
    bad: Option<bad::Corruption>,
) -> Result<usize> {
    let stream = if split == "train" {
        TRAIN_STREAM
    } else {
        TEST_STREAM
    };
    let mut rng = Rng::derive(cfg.seed, stream + i as u64);
    let mut scene = labels2photo::render(cfg.size, cfg.classes, &mut rng);
    if let Some(c) = bad {
        bad::corrupt(&mut scene, c, cfg.classes, cfg.seed, i);
    }
    let table = labels2photo::class_table(cfg.classes);
    let base = format!("synth_{i:06}_000019");
    let img = out.join("leftImg8bit").join(split).join("synth");
    let gt = out.join("gtFine").join(split).join("synth");
    write(
        &img.join(format!("{base}_leftImg8bit.png")),
        &png_rgb(&scene.photo),
    )?;
    write(
        &gt.join(format!("{base}_gtFine_labelIds.png")),
        &png_ids(&scene.labels, false),
    )?;
    write(
        &gt.join(format!("{base}_gtFine_instanceIds.png")),
        &png_ids(&scene.instances, true),
    )?;
    let color = labels2photo::color_map(&scene.labels, &table);
    write(
        &gt.join(format!("{base}_gtFine_color.png")),
        &png_rgb(&color),
    )?;
    Ok(4)
}

fn write_edges2photo(cfg: &SynthConfig, out: &Path, split: &str, i: usize) -> Result<usize> {
    let stream = if split == "train" {
        TRAIN_STREAM
    } else {
        TEST_STREAM
    };
    let mut rng = Rng::derive(cfg.seed, stream + i as u64);
    let pair = edges2photo::render(cfg.size, &mut rng);
    let s = cfg.size;
    let mut ab = image::RgbImage::new(2 * s, s);
    image::imageops::replace(&mut ab, &pair.edges, 0, 0);
    image::imageops::replace(&mut ab, &pair.photo, s as i64, 0);
    write(&out.join(split).join(format!("{i:06}.png")), &png_rgb(&ab))?;
    Ok(1)
}

/// Generates the dataset of `cfg` into `out` on `threads` threads.
pub fn synth_with(cfg: &SynthConfig, out: &Path, threads: usize) -> Result<SynthReport> {
    synth_bad_with(cfg, None, out, threads)
}

/// [`synth_with`], with `bad` unlabeled inputs (labels2photo only) and their list in
/// `bad_unlabeled.json`; `None` writes exactly what [`synth_with`] writes.
pub fn synth_bad_with(
    cfg: &SynthConfig,
    bad: Option<&bad::BadUnlabeled>,
    out: &Path,
    threads: usize,
) -> Result<SynthReport> {
    cfg.check()?;
    let chosen = match bad {
        None => Vec::new(),
        Some(_) if cfg.task != SynthTask::Labels2photo => {
            return Err(DataError::param(
                "bad_unlabeled_fraction",
                format!(
                    "bad unlabeled inputs exist for labels2photo only, not {}",
                    cfg.task
                ),
            ));
        }
        Some(b) => {
            let c = bad::choose(b, cfg.n, cfg.seed);
            if c.is_empty() {
                return Err(DataError::param(
                    "bad_unlabeled_fraction",
                    format!(
                        "{} of the unlabeled inputs of n = {} is none",
                        b.fraction, cfg.n
                    ),
                ));
            }
            c
        }
    };
    let mut corruption = vec![None; cfg.n];
    for &(i, c) in &chosen {
        corruption[i] = Some(c);
    }
    let start = Instant::now();
    std::fs::create_dir_all(out).map_err(|e| DataError::io(out, e))?;
    let jobs: Vec<(&str, usize)> = (0..cfg.n)
        .map(|i| ("train", i))
        .chain((0..cfg.n_test).map(|i| ("val", i)))
        .collect();
    let results = par_map(&jobs, threads, |&(split, i)| match cfg.task {
        SynthTask::Labels2photo => {
            let c = if split == "train" {
                corruption[i]
            } else {
                None
            };
            write_labels2photo(cfg, out, split, i, c)
        }
        SynthTask::Edges2photo => write_edges2photo(cfg, out, split, i),
    });
    let mut files = 0;
    for r in results {
        files += r?;
    }
    if let Some(b) = bad {
        let list = bad::BadUnlabeledList {
            settings: *b,
            unlabeled: ugc_kinds::synth::unlabeled_count(cfg.n, b.label_ratio, b.holdout)
                .unwrap_or(0),
            bad: chosen
                .iter()
                .map(|&(i, corruption)| bad::BadInput {
                    id: bad::train_id(i),
                    corruption,
                })
                .collect(),
        };
        let text = serde_json::to_string_pretty(&list).expect("bad list serializes");
        write(&out.join(bad::BAD_UNLABELED_FILE), text.as_bytes())?;
        files += 1;
    }
    let (format, direction) = match cfg.task {
        SynthTask::Labels2photo => {
            let t = labels2photo::class_table(cfg.classes);
            let text = serde_json::to_string_pretty(&t).expect("class table serializes");
            write(&out.join(CLASSES_FILE), text.as_bytes())?;
            files += 1;
            (Format::Cityscapes, Direction::AtoB)
        }
        SynthTask::Edges2photo => (Format::Aligned, Direction::AtoB),
    };
    let info = DatasetInfo {
        format,
        direction,
        task: Some(cfg.task.to_string()),
        test_split: Some("val".into()),
    };
    let text = serde_json::to_string_pretty(&info).expect("dataset info serializes");
    write(&out.join(DATASET_INFO_FILE), text.as_bytes())?;
    files += 1;
    let seconds = start.elapsed().as_secs_f64();
    Ok(SynthReport {
        task: cfg.task,
        n_train: cfg.n,
        n_test: cfg.n_test,
        size: cfg.size,
        files,
        seconds,
        images_per_sec: (cfg.n + cfg.n_test) as f64 / seconds.max(1e-9),
    })
}

/// The `ugc-pipe synth` verb: `n` training images (+ `ceil(n/4)` test images) of `task`
/// at `size x size` into `out`, on all cores.
pub fn synth_to_dir(
    task: SynthTask,
    n: usize,
    size: u32,
    out: &Path,
    seed: u64,
) -> Result<SynthReport> {
    synth_with(
        &SynthConfig::new(task, n, size, seed),
        out,
        default_threads(),
    )
}
