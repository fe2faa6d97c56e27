//! Dataset readers: find the examples of an on-disk dataset without decoding them.
//!
//! - `aligned`: pix2pix layout `root/{train,val}/*.{jpg,png}`, each image `A|B` side by side.
//! - `cityscapes`: `root/leftImg8bit/{train,val}/<city>/<x>_leftImg8bit.png` with
//!   `root/gtFine/{train,val}/<city>/<x>_gtFine_{labelIds,instanceIds,color}.png`.
//! - a plain folder of extra inputs without targets (more unlabeled data).
//!
//! Decoding and checking happens in [`crate::validate`], so listing stays cheap.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::classes::ClassTable;
use crate::error::{DataError, FileProblem, Result};
use crate::image_io::list_images;

/// The layout and direction enums live with the `split` kind's typed parameters
/// (`ugc-kinds`), whose `dataset.format` / `dataset.direction` they are.
pub use ugc_kinds::split::{Direction, Format};

/// Left or right half of an aligned image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Half {
    Left,
    Right,
}

/// (input half, target half) of an aligned image read in `direction`.
pub fn halves(direction: Direction) -> (Half, Half) {
    match direction {
        Direction::AtoB => (Half::Left, Half::Right),
        Direction::BtoA => (Half::Right, Half::Left),
    }
}

/// The files of one paired example.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SampleFiles {
    /// One `A|B` image holding input and target.
    Aligned { file: PathBuf },
    /// A photo (target) with its label map, optional instance map and colour map (inputs).
    Semantic {
        photo: PathBuf,
        label_ids: PathBuf,
        instance_ids: Option<PathBuf>,
        color: Option<PathBuf>,
    },
}

/// One paired example; `id` is unique within its split and stable across machines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub id: String,
    pub files: SampleFiles,
}

/// An extra input with no target anywhere (from the plain-folder reader).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtraInput {
    Rgb {
        id: String,
        path: PathBuf,
    },
    Semantic {
        id: String,
        label_ids: PathBuf,
        instance_ids: Option<PathBuf>,
    },
}

/// Everything a split needs to know about a dataset, before validation.
#[derive(Debug, Clone)]
pub struct DatasetIndex {
    pub format: Format,
    pub direction: Direction,
    pub classes: Option<ClassTable>,
    pub train: Vec<Sample>,
    pub test: Vec<Sample>,
    pub extra: Vec<ExtraInput>,
    /// Files the readers found but could not use (a Cityscapes photo without its label
    /// map): refused, or skipped under `skip_bad`, like files that fail validation.
    pub problems: Vec<FileProblem>,
    /// Where the dataset lies (`dataset.root`) and the extra inputs' folder: the manifest
    /// names skipped files relative to these, so it does not depend on the location.
    pub root: PathBuf,
    pub extra_root: Option<PathBuf>,
}

/// Describes a dataset folder written by `synth` (and optionally by users), so a split can
/// pick the right reader without being told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetInfo {
    pub format: Format,
    #[serde(default)]
    pub direction: Direction,
    #[serde(default)]
    pub task: Option<String>,
    #[serde(default)]
    pub test_split: Option<String>,
}

pub const DATASET_INFO_FILE: &str = "dataset.json";

impl DatasetInfo {
    pub fn load(root: &Path) -> Result<Option<Self>> {
        let p = root.join(DATASET_INFO_FILE);
        if !p.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&p).map_err(|e| DataError::io(&p, e))?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| DataError::bad(&p, e.to_string()))
    }
}

fn id_of(base: &Path, p: &Path) -> String {
    let rel = p.strip_prefix(base).unwrap_or(p).with_extension("");
    rel.to_string_lossy().replace(['/', '\\'], "__")
}

fn require_dir(path: &Path, param: &str) -> Result<()> {
    if path.is_dir() {
        Ok(())
    } else {
        Err(DataError::MissingRoot {
            param: param.into(),
            path: path.to_path_buf(),
        })
    }
}

const ALIGNED_LAYOUT: &str = "<root>/<split>/*.png (or .jpg), each image input|target side by side";
const CITYSCAPES_LAYOUT: &str = "<root>/leftImg8bit/<split>/<city>/*_leftImg8bit.png with \
     <root>/gtFine/<split>/<city>/*_gtFine_labelIds.png beside them";

/// The split folder `folder` (relative to `root`) must exist; a missing one is named as a
/// folder of the dataset root (the root itself was found), with the expected layout.
fn require_split_dir(root: &Path, folder: &Path, layout: &'static str) -> Result<PathBuf> {
    require_dir(root, "dataset.root")?;
    let dir = root.join(folder);
    if dir.is_dir() {
        Ok(dir)
    } else {
        Err(DataError::MissingSplit {
            root: root.to_path_buf(),
            folder: folder.to_path_buf(),
            layout,
        })
    }
}

/// Lists the images of one split of an aligned dataset (`root/<split>/*`).
pub fn read_aligned_split(root: &Path, split: &str) -> Result<Vec<Sample>> {
    let dir = require_split_dir(root, Path::new(split), ALIGNED_LAYOUT)?;
    let files = list_images(&dir, false)?;
    if files.is_empty() {
        return Err(DataError::Empty {
            what: format!("aligned split `{split}`"),
            path: dir,
        });
    }
    Ok(files
        .into_iter()
        .map(|f| Sample {
            id: id_of(&dir, &f),
            files: SampleFiles::Aligned { file: f },
        })
        .collect())
}

const LEFT_SUFFIX: &str = "_leftImg8bit";

/// Lists one split of a Cityscapes-layout dataset, and the photos without their `labelIds`
/// map as problems naming the expected file (refused, or skipped under `skip_bad`, by the
/// split like any bad file); instance and colour maps are optional.
pub fn read_cityscapes_split(root: &Path, split: &str) -> Result<(Vec<Sample>, Vec<FileProblem>)> {
    let img_dir = require_split_dir(
        root,
        &Path::new("leftImg8bit").join(split),
        CITYSCAPES_LAYOUT,
    )?;
    let gt_dir = require_split_dir(root, &Path::new("gtFine").join(split), CITYSCAPES_LAYOUT)?;
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for photo in list_images(&img_dir, true)? {
        let stem = photo
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        let Some(base) = stem.strip_suffix(LEFT_SUFFIX) else {
            continue;
        };
        let city_rel = photo
            .parent()
            .and_then(|p| p.strip_prefix(&img_dir).ok())
            .unwrap_or(Path::new(""));
        let gt = |what: &str| {
            gt_dir
                .join(city_rel)
                .join(format!("{base}_gtFine_{what}.png"))
        };
        let label_ids = gt("labelIds");
        if !label_ids.is_file() {
            problems.push(FileProblem {
                reason: format!("no label map: expected {}", label_ids.display()),
                path: photo,
            });
            continue;
        }
        let opt = |p: PathBuf| p.is_file().then_some(p);
        out.push(Sample {
            id: base.to_string(),
            files: SampleFiles::Semantic {
                instance_ids: opt(gt("instanceIds")),
                color: opt(gt("color")),
                label_ids,
                photo,
            },
        });
    }
    if out.is_empty() && !problems.is_empty() {
        // Not one usable photo: skipping them all would only fail later, less clearly.
        return Err(DataError::BadFiles(problems));
    }
    if out.is_empty() {
        return Err(DataError::Empty {
            what: format!("cityscapes split `{split}` (*{LEFT_SUFFIX}.png)"),
            path: img_dir,
        });
    }
    Ok((out, problems))
}

/// Lists a plain folder of extra inputs. For aligned datasets every image is an input; for
/// Cityscapes-layout datasets the inputs are `*labelIds.png` (with `*instanceIds.png` beside
/// them when present), since there the label map is what the generator reads.
pub fn read_folder(dir: &Path, format: Format, param: &str) -> Result<Vec<ExtraInput>> {
    require_dir(dir, param)?;
    let files = list_images(dir, true)?;
    let out: Vec<ExtraInput> = match format {
        Format::Aligned => files
            .into_iter()
            .map(|p| ExtraInput::Rgb {
                id: id_of(dir, &p),
                path: p,
            })
            .collect(),
        Format::Cityscapes => files
            .iter()
            .filter_map(|p| {
                let name = p.file_name()?.to_str()?;
                let base = name.strip_suffix("labelIds.png")?;
                let inst = p.with_file_name(format!("{base}instanceIds.png"));
                Some(ExtraInput::Semantic {
                    id: id_of(dir, p),
                    label_ids: p.clone(),
                    instance_ids: inst.is_file().then_some(inst),
                })
            })
            .collect(),
    };
    if out.is_empty() {
        return Err(DataError::Empty {
            what: format!("extra unlabeled folder (parameter `{param}`)"),
            path: dir.to_path_buf(),
        });
    }
    Ok(out)
}

/// How to read a dataset (the `dataset` parameter of the split stage, resolved).
#[derive(Debug, Clone)]
pub struct DatasetSpec {
    pub format: Format,
    pub root: PathBuf,
    pub direction: Direction,
    pub train_split: String,
    pub test_split: String,
    pub extra_unlabeled: Option<PathBuf>,
}

/// Lists train, test and extra inputs; loads the class table (`classes.json` in the root,
/// else the Cityscapes table for the Cityscapes layout).
pub fn read_dataset(spec: &DatasetSpec) -> Result<DatasetIndex> {
    require_dir(&spec.root, "dataset.root")?;
    let mut problems = Vec::new();
    let (train, test, classes) = match spec.format {
        Format::Aligned => (
            read_aligned_split(&spec.root, &spec.train_split)?,
            read_aligned_split(&spec.root, &spec.test_split)?,
            ClassTable::load_from_root(&spec.root)?,
        ),
        Format::Cityscapes => {
            let (train, p_train) = read_cityscapes_split(&spec.root, &spec.train_split)?;
            let (test, p_test) = read_cityscapes_split(&spec.root, &spec.test_split)?;
            problems.extend(p_train);
            problems.extend(p_test);
            let classes =
                ClassTable::load_from_root(&spec.root)?.unwrap_or_else(ClassTable::cityscapes);
            (train, test, Some(classes))
        }
    };
    let extra = match &spec.extra_unlabeled {
        Some(d) => read_folder(d, spec.format, "dataset.extra_unlabeled")?,
        None => Vec::new(),
    };
    Ok(DatasetIndex {
        format: spec.format,
        direction: spec.direction,
        classes,
        train,
        test,
        extra,
        problems,
        root: spec.root.clone(),
        extra_root: spec.extra_unlabeled.clone(),
    })
}
