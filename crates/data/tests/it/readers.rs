use ugc_data::dataset::{
    ExtraInput, Format, SampleFiles, read_aligned_split, read_cityscapes_split, read_folder,
};
use ugc_data::{SynthTask, read_dataset};

use crate::common::*;

#[test]
fn aligned_reader_lists_each_split_sorted() {
    let d = tempfile::tempdir().unwrap();
    aligned_dataset(d.path(), 5, 2);
    let train = read_aligned_split(d.path(), "train").unwrap();
    assert_eq!(train.len(), 5);
    assert_eq!(train[0].id, "000");
    assert!(
        matches!(&train[4].files, SampleFiles::Aligned { file } if file.ends_with("train/004.png"))
    );
    let idx = read_dataset(&aligned_spec(d.path())).unwrap();
    assert_eq!((idx.train.len(), idx.test.len()), (5, 2));
    assert!(idx.classes.is_none());
}

#[test]
fn cityscapes_reader_pairs_photos_with_all_maps_and_reads_the_class_table() {
    let d = tempfile::tempdir().unwrap();
    synth(d.path(), SynthTask::Labels2photo, 4, 2, 32);
    let (train, problems) = read_cityscapes_split(d.path(), "train").unwrap();
    assert_eq!(train.len(), 4);
    assert!(problems.is_empty(), "{problems:?}");
    for s in &train {
        let SampleFiles::Semantic {
            photo,
            label_ids,
            instance_ids,
            color,
        } = &s.files
        else {
            panic!("semantic sample expected")
        };
        assert!(photo.to_string_lossy().ends_with("_leftImg8bit.png"));
        assert!(
            label_ids
                .to_string_lossy()
                .ends_with("_gtFine_labelIds.png")
        );
        assert!(instance_ids.as_ref().unwrap().is_file());
        assert!(color.as_ref().unwrap().is_file());
    }
    let idx = read_dataset(&cityscapes_spec(d.path())).unwrap();
    assert_eq!(idx.classes.unwrap().name, "synth-labels2photo-8");
    // Without classes.json the official Cityscapes table applies.
    std::fs::remove_file(d.path().join("classes.json")).unwrap();
    let idx = read_dataset(&cityscapes_spec(d.path())).unwrap();
    assert_eq!(idx.classes.unwrap().name, "cityscapes");
}

#[test]
fn cityscapes_photo_without_label_map_is_a_named_problem_not_a_listing_failure() {
    let d = tempfile::tempdir().unwrap();
    synth(d.path(), SynthTask::Labels2photo, 2, 1, 16);
    let lab = d
        .path()
        .join("gtFine/train/synth/synth_000001_000019_gtFine_labelIds.png");
    std::fs::remove_file(&lab).unwrap();
    // Listed as a problem (so `skip_bad` can skip it); the other photo is still listed.
    let (train, problems) = read_cityscapes_split(d.path(), "train").unwrap();
    assert_eq!(train.len(), 1);
    assert_eq!(problems.len(), 1, "{problems:?}");
    let p = problems[0].to_string();
    assert!(p.contains("synth_000001_000019_leftImg8bit.png"), "{p}");
    assert!(p.contains("gtFine_labelIds.png"), "{p}");
    // No photo with a label map at all: refused naming the missing maps.
    let other = d
        .path()
        .join("gtFine/train/synth/synth_000000_000019_gtFine_labelIds.png");
    std::fs::remove_file(&other).unwrap();
    let e = read_cityscapes_split(d.path(), "train")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("2 bad file(s)") && e.contains("no label map"),
        "{e}"
    );
}

#[test]
fn a_missing_split_folder_is_named_as_a_folder_of_the_existing_root() {
    let d = tempfile::tempdir().unwrap();
    aligned_dataset(d.path(), 3, 1);
    std::fs::remove_dir_all(d.path().join("val")).unwrap();
    let e = read_dataset(&aligned_spec(d.path())).unwrap_err();
    assert!(matches!(e, ugc_data::DataError::MissingSplit { .. }), "{e}");
    let msg = e.to_string();
    let root = d.path().display().to_string();
    assert!(
        msg.contains(&format!("dataset root {root} has no split folder `val/`")),
        "{msg}"
    );
    assert!(
        msg.contains("expected layout") && msg.contains("dataset.test_split"),
        "{msg}"
    );
    assert!(!msg.contains("does not exist"), "{msg}");

    let c = tempfile::tempdir().unwrap();
    synth(c.path(), SynthTask::Labels2photo, 2, 1, 16);
    std::fs::remove_dir_all(c.path().join("leftImg8bit/train")).unwrap();
    let msg = read_dataset(&cityscapes_spec(c.path()))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("has no split folder `leftImg8bit/train/`")
            && msg.contains("_gtFine_labelIds.png"),
        "{msg}"
    );
    std::fs::remove_dir_all(c.path().join("gtFine/val")).unwrap();
    std::fs::create_dir_all(c.path().join("leftImg8bit/train")).unwrap();
    let msg = read_cityscapes_split(c.path(), "val")
        .unwrap_err()
        .to_string();
    assert!(msg.contains("has no split folder `gtFine/val/`"), "{msg}");
}

#[test]
fn folder_reader_takes_images_or_label_maps_by_format() {
    let d = tempfile::tempdir().unwrap();
    aligned_dataset(d.path(), 3, 1);
    let extra = read_folder(&d.path().join("train"), Format::Aligned, "p").unwrap();
    assert_eq!(extra.len(), 3);
    assert!(matches!(&extra[0], ExtraInput::Rgb { id, .. } if id == "000"));

    let c = tempfile::tempdir().unwrap();
    synth(c.path(), SynthTask::Labels2photo, 3, 1, 16);
    let gt = c.path().join("gtFine/train");
    let extra = read_folder(&gt, Format::Cityscapes, "p").unwrap();
    assert_eq!(extra.len(), 3, "only labelIds files are inputs");
    assert!(matches!(
        &extra[0],
        ExtraInput::Semantic {
            instance_ids: Some(_),
            ..
        }
    ));
    let empty = tempfile::tempdir().unwrap();
    let e = read_folder(empty.path(), Format::Aligned, "dataset.extra_unlabeled")
        .unwrap_err()
        .to_string();
    assert!(e.contains("dataset.extra_unlabeled"), "{e}");
}
