use std::path::Path;

use image::{Rgb, RgbImage};
use ugc_data::dataset::{DatasetSpec, Direction, Format};
use ugc_data::image_io::{png_rgb, write};
use ugc_data::{SynthConfig, SynthTask, synth_with};

/// An aligned A|B image whose left half is `a` and right half `b` everywhere.
pub fn ab_image(w: u32, h: u32, a: [u8; 3], b: [u8; 3]) -> RgbImage {
    RgbImage::from_fn(w, h, |x, _| if x < w / 2 { Rgb(a) } else { Rgb(b) })
}

/// `n_train` + `n_test` aligned images; image i has A = (i, 0, 0), B = (0, i, 200).
pub fn aligned_dataset(root: &Path, n_train: usize, n_test: usize) {
    for (split, n) in [("train", n_train), ("val", n_test)] {
        for i in 0..n {
            let im = ab_image(16, 8, [i as u8, 0, 0], [0, i as u8, 200]);
            write(&root.join(split).join(format!("{i:03}.png")), &png_rgb(&im)).unwrap();
        }
    }
}

pub fn aligned_spec(root: &Path) -> DatasetSpec {
    DatasetSpec {
        format: Format::Aligned,
        root: root.to_path_buf(),
        direction: Direction::AtoB,
        train_split: "train".into(),
        test_split: "val".into(),
        extra_unlabeled: None,
    }
}

pub fn cityscapes_spec(root: &Path) -> DatasetSpec {
    DatasetSpec {
        format: Format::Cityscapes,
        ..aligned_spec(root)
    }
}

pub fn synth(root: &Path, task: SynthTask, n: usize, n_test: usize, size: u32) {
    let cfg = SynthConfig {
        n_test,
        ..SynthConfig::new(task, n, size, 7)
    };
    synth_with(&cfg, root, 2).unwrap();
}

pub fn params(label_ratio: f64, holdout: f64, seed: u64) -> ugc_data::SplitParams {
    ugc_data::SplitParams {
        label_ratio,
        holdout,
        seed,
        skip_bad: false,
        threads: 2,
    }
}
