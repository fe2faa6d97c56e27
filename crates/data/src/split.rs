//! The label-ratio split: validated, deterministic, materialised into the stage output.
//!
//! Order of operations for a seed: the valid training examples (sorted by id) are shuffled
//! once; the first `round(holdout * n)` become the search hold-out, the next
//! `round(label_ratio * rest)` the labeled pairs, the remainder unlabeled inputs. Because
//! the permutation does not depend on `label_ratio`, the hold-out is identical across ratios
//! and the labeled sets are nested (10% within 25% within 50%), so an ablation over ratios
//! compares like with like.
//!
//! Every file a later stage may read is copied into the output folder (`data/<role>/...`)
//! and listed in the manifest with its blake3 digest: the committed split is then
//! self-contained and immutable, and targets of unlabeled examples never enter it.

use std::path::{Path, PathBuf};

use ugc_engine::Progress;

use crate::dataset::{DatasetIndex, Direction, ExtraInput, Half, Sample, SampleFiles, halves};
use crate::error::{DataError, FileProblem, Result};
use crate::image_io::{decode_rgb, digest, png_rgb, read, write};
use crate::manifest::{
    Counts, FileEntry, InputRef, LabeledPair, Role, SCHEMA_VERSION, SkippedFile, SplitManifest,
    TargetRef, UnlabeledInput, UnlabeledRef,
};
use crate::validate::{par_map, validate_extra, validate_sample};

/// Stream id of the split permutation (kept apart from other uses of the same seed).
const SPLIT_STREAM: u64 = 0x0053_504c_4954;

/// Parameters of a split, validated by [`SplitParams::check`].
#[derive(Debug, Clone)]
pub struct SplitParams {
    /// Fraction of the training pool (after the hold-out) that keeps its targets, in (0, 1].
    pub label_ratio: f64,
    /// Fraction of the training set reserved for scoring search candidates, in [0, 1).
    pub holdout: f64,
    pub seed: u64,
    /// Skip (and report) bad files instead of refusing the dataset.
    pub skip_bad: bool,
    pub threads: usize,
}

impl SplitParams {
    pub fn check(&self) -> Result<()> {
        if !(self.label_ratio > 0.0 && self.label_ratio <= 1.0) {
            return Err(DataError::param(
                "label_ratio",
                format!("must be in (0, 1], got {}", self.label_ratio),
            ));
        }
        if !(0.0..1.0).contains(&self.holdout) {
            return Err(DataError::param(
                "holdout",
                format!("must be in [0, 1), got {}", self.holdout),
            ));
        }
        Ok(())
    }
}

/// Sizes of the three parts of a training set of `n` examples.
pub fn split_sizes(n: usize, label_ratio: f64, holdout: f64) -> Result<(usize, usize, usize)> {
    let n_hold = (holdout * n as f64).round() as usize;
    if n_hold >= n {
        return Err(DataError::param(
            "holdout",
            format!("{holdout} of {n} training examples leaves none to train on"),
        ));
    }
    let pool = n - n_hold;
    let n_lab = ((label_ratio * pool as f64).round() as usize).clamp(1, pool);
    Ok((n_hold, n_lab, pool - n_lab))
}

fn validate_all(
    index: &DatasetIndex,
    threads: usize,
    progress: &dyn Progress,
) -> (Vec<bool>, Vec<bool>, Vec<bool>, Vec<FileProblem>) {
    let classes = index.classes.as_ref();
    let total = (index.train.len() + index.test.len() + index.extra.len()) as u64;
    progress.start("validate", total);
    let mut problems = Vec::new();
    let mut keep = |r: Vec<Result<(), FileProblem>>| -> Vec<bool> {
        r.into_iter()
            .map(|r| r.map_err(|p| problems.push(p)).is_ok())
            .collect()
    };
    let train = keep(par_map(&index.train, threads, |s| {
        validate_sample(s, classes)
    }));
    progress.set(index.train.len() as u64);
    let test = keep(par_map(&index.test, threads, |s| {
        validate_sample(s, classes)
    }));
    let extra = keep(par_map(&index.extra, threads, |e| {
        validate_extra(e, classes)
    }));
    progress.set(total);
    (train, test, extra, problems)
}

fn ext_of(p: &Path) -> String {
    p.extension()
        .and_then(|e| e.to_str())
        .unwrap_or("png")
        .to_ascii_lowercase()
}

fn copy_in(src: &Path, out: &Path, rel: PathBuf, role: Role) -> Result<FileEntry> {
    let bytes = read(src)?;
    write(&out.join(&rel), &bytes)?;
    Ok(FileEntry {
        path: rel,
        digest: digest(&bytes),
        role,
    })
}

fn rel(role: Role, id: &str, suffix: &str, src: &Path) -> PathBuf {
    PathBuf::from("data")
        .join(role.dir())
        .join(format!("{id}{suffix}.{}", ext_of(src)))
}

type Copied<T> = Result<(T, Vec<FileEntry>)>;

fn copy_semantic_inputs(
    role: Role,
    id: &str,
    label_ids: &Path,
    instance_ids: Option<&Path>,
    color: Option<&Path>,
    out: &Path,
) -> Copied<(PathBuf, Option<PathBuf>, Option<PathBuf>)> {
    let mut files = vec![copy_in(
        label_ids,
        out,
        rel(role, id, "_labelIds", label_ids),
        role,
    )?];
    let mut opt = |p: Option<&Path>, suffix: &str| -> Result<Option<PathBuf>> {
        p.map(|p| {
            let e = copy_in(p, out, rel(role, id, suffix, p), role)?;
            let path = e.path.clone();
            files.push(e);
            Ok(path)
        })
        .transpose()
    };
    let inst = opt(instance_ids, "_instanceIds")?;
    let col = opt(color, "_color")?;
    let lab = files[0].path.clone();
    Ok(((lab, inst, col), files))
}

fn copy_pair(s: &Sample, role: Role, direction: Direction, out: &Path) -> Copied<LabeledPair> {
    match &s.files {
        SampleFiles::Aligned { file } => {
            let e = copy_in(file, out, rel(role, &s.id, "", file), role)?;
            let (ih, th) = halves(direction);
            let pair = LabeledPair {
                id: s.id.clone(),
                input: InputRef::AlignedHalf {
                    path: e.path.clone(),
                    half: ih,
                },
                target: TargetRef::AlignedHalf {
                    path: e.path.clone(),
                    half: th,
                },
            };
            Ok((pair, vec![e]))
        }
        SampleFiles::Semantic {
            photo,
            label_ids,
            instance_ids,
            color,
        } => {
            let ((label_ids, instance_ids, color), mut files) = copy_semantic_inputs(
                role,
                &s.id,
                label_ids,
                instance_ids.as_deref(),
                color.as_deref(),
                out,
            )?;
            let p = copy_in(photo, out, rel(role, &s.id, "_photo", photo), role)?;
            let pair = LabeledPair {
                id: s.id.clone(),
                input: InputRef::Semantic {
                    label_ids,
                    instance_ids,
                    color,
                },
                target: TargetRef::Rgb {
                    path: p.path.clone(),
                },
            };
            files.push(p);
            Ok((pair, files))
        }
    }
}

/// Crops one half of an aligned image.
pub fn crop_half(im: &image::RgbImage, half: Half) -> image::RgbImage {
    let w = im.width() / 2;
    let x0 = match half {
        Half::Left => 0,
        Half::Right => w,
    };
    image::imageops::crop_imm(im, x0, 0, w, im.height()).to_image()
}

fn copy_unlabeled(s: &Sample, direction: Direction, out: &Path) -> Copied<UnlabeledInput> {
    let role = Role::Unlabeled;
    match &s.files {
        SampleFiles::Aligned { file } => {
            // Only the input half is written: the target half never enters the split output.
            let im = decode_rgb(file, &read(file)?)?;
            let bytes = png_rgb(&crop_half(&im, halves(direction).0));
            let r = PathBuf::from("data")
                .join(role.dir())
                .join(format!("{}.png", s.id));
            write(&out.join(&r), &bytes)?;
            let e = FileEntry {
                path: r.clone(),
                digest: digest(&bytes),
                role,
            };
            let u = UnlabeledInput {
                id: s.id.clone(),
                input: UnlabeledRef::Rgb { path: r },
            };
            Ok((u, vec![e]))
        }
        SampleFiles::Semantic {
            label_ids,
            instance_ids,
            color,
            photo: _withheld,
        } => {
            let ((label_ids, instance_ids, color), files) = copy_semantic_inputs(
                role,
                &s.id,
                label_ids,
                instance_ids.as_deref(),
                color.as_deref(),
                out,
            )?;
            let u = UnlabeledInput {
                id: s.id.clone(),
                input: UnlabeledRef::Semantic {
                    label_ids,
                    instance_ids,
                    color,
                },
            };
            Ok((u, files))
        }
    }
}

fn copy_extra(e: &ExtraInput, out: &Path) -> Copied<UnlabeledInput> {
    let role = Role::ExtraUnlabeled;
    match e {
        ExtraInput::Rgb { id, path } => {
            let f = copy_in(path, out, rel(role, id, "", path), role)?;
            let u = UnlabeledInput {
                id: format!("extra__{id}"),
                input: UnlabeledRef::Rgb {
                    path: f.path.clone(),
                },
            };
            Ok((u, vec![f]))
        }
        ExtraInput::Semantic {
            id,
            label_ids,
            instance_ids,
        } => {
            let ((label_ids, instance_ids, color), files) =
                copy_semantic_inputs(role, id, label_ids, instance_ids.as_deref(), None, out)?;
            let u = UnlabeledInput {
                id: format!("extra__{id}"),
                input: UnlabeledRef::Semantic {
                    label_ids,
                    instance_ids,
                    color,
                },
            };
            Ok((u, files))
        }
    }
}

fn collect<T>(r: Vec<Copied<T>>, files: &mut Vec<FileEntry>) -> Result<Vec<T>> {
    let mut out = Vec::with_capacity(r.len());
    for x in r {
        let (t, f) = x?;
        files.extend(f);
        out.push(t);
    }
    Ok(out)
}

/// Validates `index`, splits it and writes `out_dir/manifest.json` plus the data files.
pub fn split_dataset(
    index: &DatasetIndex,
    params: &SplitParams,
    out_dir: &Path,
    progress: &dyn Progress,
) -> Result<SplitManifest> {
    params.check()?;
    let (ok_train, ok_test, ok_extra, bad) = validate_all(index, params.threads, progress);
    let mut problems = index.problems.clone();
    problems.extend(bad);
    if !problems.is_empty() && !params.skip_bad {
        return Err(DataError::BadFiles(problems));
    }
    if !problems.is_empty() {
        progress.message(&format!(
            "skip_bad: skipping {} bad file(s)",
            problems.len()
        ));
    }
    let keep = |v: &[Sample], ok: &[bool]| -> Vec<Sample> {
        v.iter()
            .zip(ok)
            .filter(|(_, k)| **k)
            .map(|(s, _)| s.clone())
            .collect()
    };
    let train = keep(&index.train, &ok_train);
    let test = keep(&index.test, &ok_test);
    let extra: Vec<ExtraInput> = index
        .extra
        .iter()
        .zip(&ok_extra)
        .filter(|(_, k)| **k)
        .map(|(e, _)| e.clone())
        .collect();
    if train.is_empty() {
        return Err(DataError::param(
            "dataset.root",
            "no valid training examples remain after validation",
        ));
    }
    if test.is_empty() {
        return Err(DataError::param(
            "dataset.test_split",
            "no valid test examples remain after validation",
        ));
    }

    let (n_hold, n_lab, n_unl) = split_sizes(train.len(), params.label_ratio, params.holdout)?;
    let mut order: Vec<usize> = (0..train.len()).collect();
    crate::rng::Rng::derive(params.seed, SPLIT_STREAM).shuffle(&mut order);
    let pick = |r: std::ops::Range<usize>| -> Vec<Sample> {
        let mut idx = order[r].to_vec();
        idx.sort_unstable();
        idx.into_iter().map(|i| train[i].clone()).collect()
    };
    let hold = pick(0..n_hold);
    let lab = pick(n_hold..n_hold + n_lab);
    let unl = pick(n_hold + n_lab..train.len());

    let t = params.threads;
    let d = index.direction;
    progress.start("copy", 4);
    let mut files = Vec::new();
    let labeled = collect(
        par_map(&lab, t, |s| copy_pair(s, Role::Labeled, d, out_dir)),
        &mut files,
    )?;
    progress.set(1);
    let mut unlabeled = collect(
        par_map(&unl, t, |s| copy_unlabeled(s, d, out_dir)),
        &mut files,
    )?;
    unlabeled.extend(collect(
        par_map(&extra, t, |e| copy_extra(e, out_dir)),
        &mut files,
    )?);
    progress.set(2);
    let holdout = collect(
        par_map(&hold, t, |s| copy_pair(s, Role::Holdout, d, out_dir)),
        &mut files,
    )?;
    progress.set(3);
    let test_pairs = collect(
        par_map(&test, t, |s| copy_pair(s, Role::Test, d, out_dir)),
        &mut files,
    )?;
    progress.set(4);

    let manifest = SplitManifest {
        schema_version: SCHEMA_VERSION,
        format: index.format,
        direction: index.direction,
        classes: index.classes.clone(),
        label_ratio: params.label_ratio,
        holdout_ratio: params.holdout,
        seed: params.seed,
        counts: Counts {
            train_total: train.len(),
            labeled: n_lab,
            unlabeled: n_unl,
            extra_unlabeled: extra.len(),
            holdout: n_hold,
            test: test_pairs.len(),
            skipped: problems.len(),
        },
        labeled,
        unlabeled,
        holdout,
        test: test_pairs,
        files,
        skipped: problems
            .iter()
            .map(|p| SkippedFile::new(p, &index.root, index.extra_root.as_deref()))
            .collect(),
    };
    manifest.save(out_dir)?;
    Ok(manifest)
}
