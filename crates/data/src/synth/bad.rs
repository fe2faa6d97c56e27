//! Bad unlabeled inputs for the Adaptive Data Filter benchmark (`bad_unlabeled_fraction`
//! of the `synth` kind; docs/data.md, "Bad unlabeled inputs").
//!
//! A known fraction of the inputs a split will leave unlabeled are replaced by label maps
//! the teachers have never seen the like of, so their pseudo-labels are unreliable there:
//! - `flip`: the scene upside down (sky under the road, cars hanging from the horizon): an
//!   out-of-distribution layout made only of valid class regions;
//! - `blocks`: a quarter of the cells of a grid (cell side `size / 8`, at least 2 px) set to
//!   uniformly random classes: corrupted maps with class combinations no scene has (a car
//!   pixel inside the sky, water in a wall).
//!
//! Which ids are unlabeled is the split's rule, replayed here (`unlabeled_ids`): the synth
//! stage runs before any split, and the ids must be the ones the split gives the
//! unlabeled set. A test runs the real split on the output and checks every bad id is
//! unlabeled. The ids and their corruption go to `bad_unlabeled.json`, the ground truth the
//! `adf` stage scores its decisions against.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::image_io::IdMap;
use crate::rng::Rng;

pub use ugc_kinds::synth::BadUnlabeled;

use super::labels2photo::{CLASSES, Scene};

/// File of the ground truth in a synth output.
pub const BAD_UNLABELED_FILE: &str = "bad_unlabeled.json";

/// The split's permutation stream (`crate::split`, `SPLIT_STREAM`): replayed to know which
/// ids the split leaves unlabeled.
const SPLIT_STREAM: u64 = 0x0053_504c_4954;
/// Stream choosing the bad ids among the unlabeled ones.
const CHOOSE_STREAM: u64 = 3 << 40;
/// Per-image stream of the corruption (`+ i`), independent of the clean scene's stream.
const CORRUPT_STREAM: u64 = 4 << 40;

/// How a bad input was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Corruption {
    /// The layout upside down.
    Flip,
    /// A quarter of the grid cells set to random classes.
    Blocks,
}

impl Corruption {
    pub fn name(self) -> &'static str {
        match self {
            Corruption::Flip => "flip",
            Corruption::Blocks => "blocks",
        }
    }
}

/// One bad input: its split id (`synth_<i>_000019`) and its corruption.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BadInput {
    pub id: String,
    pub corruption: Corruption,
}

/// `bad_unlabeled.json`: the settings, how many unlabeled inputs the split will have, and
/// the bad ones (sorted by id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BadUnlabeledList {
    pub settings: BadUnlabeled,
    /// Unlabeled inputs of the split the settings describe.
    pub unlabeled: usize,
    pub bad: Vec<BadInput>,
}

impl BadUnlabeledList {
    /// Reads `<dir>/bad_unlabeled.json`; `Ok(None)` when the dataset has none (clean).
    pub fn load(dir: &Path) -> Result<Option<Self>> {
        let p = dir.join(BAD_UNLABELED_FILE);
        if !p.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&p).map_err(|e| DataError::io(&p, e))?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| DataError::param(p.display().to_string(), e.to_string()))
    }
}

/// The split id of training image `i` of a synthetic Cityscapes-layout dataset.
pub fn train_id(i: usize) -> String {
    format!("synth_{i:06}_000019")
}

/// Indices (into the `n` training images, which the split sees sorted by id = by index)
/// that a split with these settings leaves unlabeled, in ascending order.
pub fn unlabeled_indices(n: usize, label_ratio: f64, holdout: f64, split_seed: u64) -> Vec<usize> {
    let Some(unl) = ugc_kinds::synth::unlabeled_count(n, label_ratio, holdout) else {
        return Vec::new();
    };
    let mut order: Vec<usize> = (0..n).collect();
    Rng::derive(split_seed, SPLIT_STREAM).shuffle(&mut order);
    let mut out = order[n - unl..].to_vec();
    out.sort_unstable();
    out
}

/// Which training images are bad, with their corruption (ascending index): `count(n)` of
/// the unlabeled ones, chosen by `seed`; corruptions alternate flip, blocks in index order
/// so both kinds are equally represented.
pub fn choose(bad: &BadUnlabeled, n: usize, seed: u64) -> Vec<(usize, Corruption)> {
    let mut unl = unlabeled_indices(n, bad.label_ratio, bad.holdout, bad.split_seed);
    Rng::derive(seed, CHOOSE_STREAM).shuffle(&mut unl);
    let mut picked = unl[..bad.count(n).min(unl.len())].to_vec();
    picked.sort_unstable();
    picked
        .into_iter()
        .enumerate()
        .map(|(rank, i)| {
            let c = if rank % 2 == 0 {
                Corruption::Flip
            } else {
                Corruption::Blocks
            };
            (i, c)
        })
        .collect()
}

fn flip_ids(m: &mut IdMap) {
    let (w, h) = (m.width as usize, m.height as usize);
    for y in 0..h / 2 {
        for x in 0..w {
            m.data.swap(y * w + x, (h - 1 - y) * w + x);
        }
    }
}

/// Applies `c` to the scene of training image `i` (`classes` classes in use).
pub fn corrupt(scene: &mut Scene, c: Corruption, classes: usize, seed: u64, i: usize) {
    match c {
        Corruption::Flip => {
            flip_ids(&mut scene.labels);
            flip_ids(&mut scene.instances);
            image::imageops::flip_vertical_in_place(&mut scene.photo);
        }
        Corruption::Blocks => {
            let mut rng = Rng::derive(seed, CORRUPT_STREAM + i as u64);
            let (w, h) = (scene.labels.width, scene.labels.height);
            let cell = (w / 8).max(2);
            for cy in (0..h).step_by(cell as usize) {
                for cx in (0..w).step_by(cell as usize) {
                    if !rng.coin(0.25) {
                        continue;
                    }
                    let class = rng.below(classes) as u16;
                    // Instance classes get an id no rendered object has (`j` = 999).
                    let inst = if CLASSES[class as usize].2 {
                        class * 1000 + 999
                    } else {
                        class
                    };
                    for y in cy..(cy + cell).min(h) {
                        for x in cx..(cx + cell).min(w) {
                            let k = (y * w + x) as usize;
                            scene.labels.data[k] = class;
                            scene.instances.data[k] = inst;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::{DatasetSpec, Direction, Format, read_dataset};
    use crate::split::{SplitParams, split_dataset, split_sizes};
    use crate::synth::{SynthConfig, SynthTask, synth_bad_with, synth_with};
    use std::collections::BTreeSet;

    #[test]
    fn unlabeled_count_is_the_splits_rule() {
        for n in [1usize, 2, 7, 40, 200, 333] {
            for ratio in [0.01, 0.1, 0.25, 0.5, 1.0] {
                for holdout in [0.0, 0.1, 0.35, 0.9] {
                    let ours = ugc_kinds::synth::unlabeled_count(n, ratio, holdout);
                    let split = split_sizes(n, ratio, holdout).ok().map(|(_, _, u)| u);
                    assert_eq!(ours, split, "n {n} ratio {ratio} holdout {holdout}");
                }
            }
        }
    }

    fn split_of(root: &Path, out: &Path, label_ratio: f64, holdout: f64, seed: u64) -> Vec<String> {
        let index = read_dataset(&DatasetSpec {
            format: Format::Cityscapes,
            root: root.to_path_buf(),
            direction: Direction::AtoB,
            train_split: "train".into(),
            test_split: "val".into(),
            extra_unlabeled: None,
        })
        .unwrap();
        let p = SplitParams {
            label_ratio,
            holdout,
            seed,
            skip_bad: false,
            threads: 2,
        };
        let m = split_dataset(&index, &p, out, &ugc_engine::NullProgress).unwrap();
        m.unlabeled().iter().map(|u| u.id.clone()).collect()
    }

    /// The real split of the written dataset leaves every bad id unlabeled, at the ratio
    /// given and at a smaller one (nested labeled sets), and the fraction is the asked one.
    #[test]
    fn bad_ids_are_unlabeled_in_the_real_split_and_clean_images_are_unchanged() {
        let (clean, bad_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let cfg = SynthConfig {
            n_test: 2,
            ..SynthConfig::new(SynthTask::Labels2photo, 40, 16, 5)
        };
        let bad = BadUnlabeled {
            fraction: 0.3,
            label_ratio: 0.25,
            holdout: 0.1,
            split_seed: 2,
        };
        synth_with(&cfg, clean.path(), 2).unwrap();
        synth_bad_with(&cfg, Some(&bad), bad_dir.path(), 2).unwrap();
        let list = BadUnlabeledList::load(bad_dir.path()).unwrap().unwrap();
        // 40 -> hold-out 4, pool 36, labeled 9, unlabeled 27; round(0.3 * 27) = 8.
        assert_eq!((list.unlabeled, list.bad.len()), (27, 8));
        assert!(BadUnlabeledList::load(clean.path()).unwrap().is_none());
        let flips = list
            .bad
            .iter()
            .filter(|b| b.corruption == Corruption::Flip)
            .count();
        assert_eq!(flips, 4);
        for ratio in [0.25, 0.1] {
            let out = tempfile::tempdir().unwrap();
            let unl: BTreeSet<String> = split_of(bad_dir.path(), out.path(), ratio, 0.1, 2)
                .into_iter()
                .collect();
            for b in &list.bad {
                assert!(
                    unl.contains(&b.id),
                    "ratio {ratio}: {} is not unlabeled",
                    b.id
                );
            }
        }
        // Every file of a clean image (and every test image) is byte-identical; each bad
        // image's label map differs from the clean one.
        let bad_ids: BTreeSet<&str> = list.bad.iter().map(|b| b.id.as_str()).collect();
        for split in ["train", "val"] {
            let n = if split == "train" { 40 } else { 2 };
            for i in 0..n {
                let id = train_id(i);
                let rel = format!("gtFine/{split}/synth/{id}_gtFine_labelIds.png");
                let a = std::fs::read(clean.path().join(&rel)).unwrap();
                let b = std::fs::read(bad_dir.path().join(&rel)).unwrap();
                let is_bad = split == "train" && bad_ids.contains(id.as_str());
                assert_eq!(a != b, is_bad, "{rel}");
            }
        }
    }

    #[test]
    fn corruptions_keep_valid_ids_and_change_the_layout() {
        let mut rng = Rng::derive(1, 7);
        let clean = super::super::labels2photo::render(32, 8, &mut rng);
        let mut rng = Rng::derive(1, 7);
        let mut flipped = super::super::labels2photo::render(32, 8, &mut rng);
        corrupt(&mut flipped, Corruption::Flip, 8, 1, 0);
        for y in 0..32 {
            for x in 0..32 {
                assert_eq!(flipped.labels.get(x, y), clean.labels.get(x, 31 - y));
            }
        }
        let mut rng = Rng::derive(1, 7);
        let mut blocks = super::super::labels2photo::render(32, 8, &mut rng);
        corrupt(&mut blocks, Corruption::Blocks, 8, 1, 0);
        let changed = (0..clean.labels.data.len())
            .filter(|&k| blocks.labels.data[k] != clean.labels.data[k])
            .count();
        // 64 cells of 16 px, each replaced with probability 1/4 by one of 8 classes (7 of 8
        // differ from a one-class cell): about 14 cells = 224 px change; a binomial
        // spread of sqrt(64 * 0.25 * 0.75) = 3.5 cells makes 48..448 px a > 4-sigma band.
        assert!((48..=448).contains(&changed), "{changed} px changed");
        for (&l, &inst) in blocks.labels.data.iter().zip(&blocks.instances.data) {
            assert!(l < 8);
            let class = if inst >= 1000 { inst / 1000 } else { inst };
            assert_eq!(class, l);
        }
    }
}
