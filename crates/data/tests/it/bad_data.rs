use ugc_data::image_io::{IdMap, jpeg_rgb, png_ids, png_rgb, write};
use ugc_data::{DataError, SynthTask, read_dataset, split_dataset};
use ugc_engine::NullProgress;

use crate::common::*;

fn split_err(spec: &ugc_data::DatasetSpec, p: &ugc_data::SplitParams) -> DataError {
    let out = tempfile::tempdir().unwrap();
    match read_dataset(spec) {
        Err(e) => e,
        Ok(idx) => split_dataset(&idx, p, out.path(), &NullProgress).unwrap_err(),
    }
}

#[test]
fn corrupt_and_truncated_images_are_named_and_skip_bad_reports_them() {
    let d = tempfile::tempdir().unwrap();
    aligned_dataset(d.path(), 6, 2);
    std::fs::write(d.path().join("train/002.png"), b"definitely not a png").unwrap();
    let jpg = jpeg_rgb(&ab_image(16, 8, [1, 2, 3], [4, 5, 6]), 90);
    std::fs::write(d.path().join("train/009.jpg"), &jpg[..jpg.len() / 3]).unwrap();
    let spec = aligned_spec(d.path());
    let e = split_err(&spec, &params(0.5, 0.0, 0));
    let msg = e.to_string();
    assert!(
        matches!(&e, DataError::BadFiles(p) if p.len() == 2),
        "{msg}"
    );
    assert!(msg.contains("002.png") && msg.contains("009.jpg"), "{msg}");
    assert!(msg.contains("skip_bad"), "{msg}");

    let out = tempfile::tempdir().unwrap();
    let p = ugc_data::SplitParams {
        skip_bad: true,
        ..params(0.5, 0.0, 0)
    };
    let m = split_dataset(&read_dataset(&spec).unwrap(), &p, out.path(), &NullProgress).unwrap();
    assert_eq!(m.counts.skipped, 2);
    assert_eq!(m.counts.train_total, 5);
    assert!(m.skipped.iter().any(|s| s.path.ends_with("train/002.png")));
}

#[test]
fn skip_bad_skips_a_cityscapes_photo_without_label_map_and_reports_it() {
    let d = tempfile::tempdir().unwrap();
    synth(d.path(), SynthTask::Labels2photo, 4, 2, 16);
    std::fs::remove_file(
        d.path()
            .join("gtFine/train/synth/synth_000002_000019_gtFine_labelIds.png"),
    )
    .unwrap();
    let spec = cityscapes_spec(d.path());
    let e = split_err(&spec, &params(1.0, 0.0, 0));
    let msg = e.to_string();
    assert!(
        matches!(&e, DataError::BadFiles(p) if p.len() == 1),
        "{msg}"
    );
    assert!(
        msg.contains("synth_000002_000019_leftImg8bit.png")
            && msg.contains("no label map")
            && msg.contains("skip_bad"),
        "{msg}"
    );

    let out = tempfile::tempdir().unwrap();
    let p = ugc_data::SplitParams {
        skip_bad: true,
        ..params(1.0, 0.0, 0)
    };
    let m = split_dataset(&read_dataset(&spec).unwrap(), &p, out.path(), &NullProgress).unwrap();
    assert_eq!((m.counts.skipped, m.counts.train_total), (1, 3));
    assert_eq!(m.skipped.len(), 1);
    let s = &m.skipped[0];
    // Named relative to the dataset root, also inside the reason.
    assert_eq!(s.folder, "dataset.root");
    assert_eq!(
        s.path,
        std::path::Path::new("leftImg8bit/train/synth/synth_000002_000019_leftImg8bit.png")
    );
    assert!(
        s.reason
            .contains("expected gtFine/train/synth/synth_000002_000019_gtFine_labelIds.png"),
        "{}",
        s.reason
    );
    let text = std::fs::read_to_string(out.path().join("manifest.json")).unwrap();
    assert!(!text.contains(&d.path().display().to_string()), "{text}");
}

#[test]
fn aligned_image_of_odd_width_is_refused() {
    let d = tempfile::tempdir().unwrap();
    aligned_dataset(d.path(), 4, 1);
    let im = image::RgbImage::new(15, 8);
    write(&d.path().join("val/odd.png"), &png_rgb(&im)).unwrap();
    let msg = split_err(&aligned_spec(d.path()), &params(1.0, 0.0, 0)).to_string();
    assert!(
        msg.contains("odd.png") && msg.contains("odd width 15"),
        "{msg}"
    );
}

#[test]
fn label_map_of_another_size_is_refused() {
    let d = tempfile::tempdir().unwrap();
    synth(d.path(), SynthTask::Labels2photo, 3, 1, 16);
    let lab = d
        .path()
        .join("gtFine/train/synth/synth_000001_000019_gtFine_labelIds.png");
    write(&lab, &png_ids(&IdMap::new(16, 12), false)).unwrap();
    let msg = split_err(&cityscapes_spec(d.path()), &params(1.0, 0.0, 0)).to_string();
    assert!(
        msg.contains("synth_000001_000019_gtFine_labelIds.png"),
        "{msg}"
    );
    assert!(msg.contains("16x12 differs from 16x16"), "{msg}");
}

#[test]
fn label_ids_outside_the_class_table_are_refused() {
    let d = tempfile::tempdir().unwrap();
    synth(d.path(), SynthTask::Labels2photo, 3, 1, 16);
    let lab = d
        .path()
        .join("gtFine/val/synth/synth_000000_000019_gtFine_labelIds.png");
    let mut m = IdMap::new(16, 16);
    m.data[5] = 50;
    write(&lab, &png_ids(&m, false)).unwrap();
    let msg = split_err(&cityscapes_spec(d.path()), &params(1.0, 0.0, 0)).to_string();
    assert!(
        msg.contains("synth_000000_000019_gtFine_labelIds.png"),
        "{msg}"
    );
    assert!(
        msg.contains("label id(s) outside the class table") && msg.contains("50"),
        "{msg}"
    );
}

#[test]
fn empty_dataset_and_missing_root_name_the_path_or_parameter() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("train")).unwrap();
    std::fs::create_dir_all(d.path().join("val")).unwrap();
    let msg = split_err(&aligned_spec(d.path()), &params(1.0, 0.0, 0)).to_string();
    assert!(
        msg.contains("no usable images") && msg.contains("train"),
        "{msg}"
    );

    let missing = d.path().join("nope");
    let e = split_err(&aligned_spec(&missing), &params(1.0, 0.0, 0));
    assert!(matches!(e, DataError::MissingRoot { .. }));
    let msg = e.to_string();
    assert!(
        msg.contains("dataset.root") && msg.contains("nope"),
        "{msg}"
    );
}

#[test]
fn label_ratio_outside_unit_interval_is_refused() {
    let d = tempfile::tempdir().unwrap();
    aligned_dataset(d.path(), 4, 1);
    for bad in [0.0, -0.1, 1.5, f64::NAN] {
        let msg = split_err(&aligned_spec(d.path()), &params(bad, 0.0, 0)).to_string();
        assert!(
            msg.contains("label_ratio") && msg.contains("(0, 1]"),
            "{msg}"
        );
    }
    let msg = split_err(&aligned_spec(d.path()), &params(0.5, 1.0, 0)).to_string();
    assert!(msg.contains("holdout"), "{msg}");
}
