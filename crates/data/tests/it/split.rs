use std::collections::BTreeSet;
use std::path::Path;

use ugc_data::image_io::{decode_rgb, digest, list_images, read};
use ugc_data::manifest::{InputRef, UnlabeledRef};
use ugc_data::split::split_sizes;
use ugc_data::{SplitManifest, SynthTask, read_dataset, split_dataset};
use ugc_engine::NullProgress;

use crate::common::*;

fn run(spec: &ugc_data::DatasetSpec, p: &ugc_data::SplitParams, out: &Path) -> SplitManifest {
    let idx = read_dataset(spec).unwrap();
    split_dataset(&idx, p, out, &NullProgress).unwrap()
}

fn ids<'a>(it: impl Iterator<Item = &'a str>) -> BTreeSet<String> {
    it.map(String::from).collect()
}

fn all_digests(dir: &Path) -> BTreeSet<String> {
    list_images(dir, true)
        .unwrap()
        .iter()
        .map(|p| digest(&read(p).unwrap()))
        .collect()
}

#[test]
fn split_sizes_follow_the_ratios() {
    assert_eq!(split_sizes(200, 0.1, 0.1).unwrap(), (20, 18, 162));
    assert_eq!(split_sizes(200, 0.25, 0.1).unwrap(), (20, 45, 135));
    assert_eq!(split_sizes(200, 0.5, 0.1).unwrap(), (20, 90, 90));
    assert_eq!(split_sizes(200, 1.0, 0.0).unwrap(), (0, 200, 0));
    // At least one labeled pair even for a tiny ratio.
    assert_eq!(split_sizes(5, 0.01, 0.0).unwrap(), (0, 1, 4));
    assert!(split_sizes(3, 0.5, 0.9).is_err());
}

#[test]
fn ratios_are_nested_holdout_is_shared_and_roles_are_disjoint() {
    let d = tempfile::tempdir().unwrap();
    aligned_dataset(d.path(), 40, 5);
    let spec = aligned_spec(d.path());
    let mut prev: Option<BTreeSet<String>> = None;
    let mut holdout: Option<BTreeSet<String>> = None;
    for ratio in [0.1, 0.25, 0.5] {
        let out = tempfile::tempdir().unwrap();
        let m = run(&spec, &params(ratio, 0.1, 3), out.path());
        let c = &m.counts;
        let (h, l, u) = split_sizes(40, ratio, 0.1).unwrap();
        assert_eq!((c.holdout, c.labeled, c.unlabeled, c.test), (h, l, u, 5));
        let lab = ids(m.labeled().iter().map(|p| p.id.as_str()));
        let unl = ids(m.unlabeled().iter().map(|p| p.id.as_str()));
        let hol = ids(m.holdout().iter().map(|p| p.id.as_str()));
        assert_eq!(lab.len() + unl.len() + hol.len(), 40);
        assert!(lab.is_disjoint(&unl) && lab.is_disjoint(&hol) && unl.is_disjoint(&hol));
        if let Some(p) = &prev {
            assert!(
                p.is_subset(&lab),
                "labeled sets must be nested across ratios"
            );
        }
        if let Some(hh) = &holdout {
            assert_eq!(hh, &hol, "hold-out must not depend on label_ratio");
        }
        prev = Some(lab);
        holdout = Some(hol);
        // The hold-out comes from train only: every id is a train file, none a test file.
        assert!(m.holdout().iter().all(|p| match &p.input {
            InputRef::AlignedHalf { path, .. } => path.starts_with("data/holdout"),
            _ => false,
        }));
    }
}

#[test]
fn split_is_deterministic_for_a_seed_and_changes_with_it() {
    let d = tempfile::tempdir().unwrap();
    aligned_dataset(d.path(), 30, 3);
    let spec = aligned_spec(d.path());
    let (a, b, c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let ma = run(&spec, &params(0.25, 0.1, 11), a.path());
    let mb = run(&spec, &params(0.25, 0.1, 11), b.path());
    let mc = run(&spec, &params(0.25, 0.1, 12), c.path());
    assert_eq!(ma, mb);
    assert_eq!(
        read(&a.path().join("manifest.json")).unwrap(),
        read(&b.path().join("manifest.json")).unwrap()
    );
    assert_ne!(ma.labeled(), mc.labeled());
}

#[test]
fn unlabeled_aligned_examples_keep_only_their_input_half() {
    let d = tempfile::tempdir().unwrap();
    aligned_dataset(d.path(), 20, 2);
    let out = tempfile::tempdir().unwrap();
    let m = run(&aligned_spec(d.path()), &params(0.25, 0.0, 1), out.path());
    assert_eq!(m.unlabeled().len(), 15);
    let written = all_digests(out.path());
    for u in m.unlabeled() {
        let UnlabeledRef::Rgb { path } = &u.input else {
            panic!("aligned unlabeled inputs are plain images")
        };
        let p = out.path().join(path);
        let im = decode_rgb(&p, &read(&p).unwrap()).unwrap();
        assert_eq!(im.dimensions(), (8, 8), "only one half is kept");
        let i: u8 = u.id.parse().unwrap();
        assert!(im.pixels().all(|px| px.0 == [i, 0, 0]), "A half expected");
        // The original A|B file (which holds the target) is nowhere in the output.
        let orig = read(&d.path().join("train").join(format!("{}.png", u.id))).unwrap();
        assert!(
            !written.contains(&digest(&orig)),
            "target of {} leaked",
            u.id
        );
    }
    // Labeled pairs keep the whole file, with target = B half.
    for p in m.labeled() {
        let orig = read(&d.path().join("train").join(format!("{}.png", p.id))).unwrap();
        assert!(written.contains(&digest(&orig)));
    }
    m.verify(out.path()).unwrap();
}

#[test]
fn unlabeled_cityscapes_photos_never_enter_the_split() {
    let d = tempfile::tempdir().unwrap();
    synth(d.path(), SynthTask::Labels2photo, 12, 2, 16);
    let out = tempfile::tempdir().unwrap();
    let m = run(
        &cityscapes_spec(d.path()),
        &params(0.25, 0.0, 5),
        out.path(),
    );
    assert_eq!((m.counts.labeled, m.counts.unlabeled), (3, 9));
    let written = all_digests(out.path());
    for u in m.unlabeled() {
        let photo = d
            .path()
            .join(format!("leftImg8bit/train/synth/{}_leftImg8bit.png", u.id));
        assert!(
            !written.contains(&digest(&read(&photo).unwrap())),
            "photo of {} leaked",
            u.id
        );
        assert!(matches!(
            &u.input,
            UnlabeledRef::Semantic {
                instance_ids: Some(_),
                color: Some(_),
                ..
            }
        ));
    }
    let photos = list_images(out.path(), true)
        .unwrap()
        .iter()
        .filter(|p| p.to_string_lossy().ends_with("_photo.png"))
        .count();
    assert_eq!(photos, 3 + 2, "one photo per labeled and test example only");
}

#[test]
fn changing_one_image_changes_the_manifest_and_verify_catches_edits() {
    let d = tempfile::tempdir().unwrap();
    aligned_dataset(d.path(), 6, 2);
    let spec = aligned_spec(d.path());
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ma = run(&spec, &params(1.0, 0.0, 0), a.path());
    let im = ab_image(16, 8, [9, 9, 9], [1, 2, 3]);
    std::fs::write(
        d.path().join("train/003.png"),
        ugc_data::image_io::png_rgb(&im),
    )
    .unwrap();
    let mb = run(&spec, &params(1.0, 0.0, 0), b.path());
    assert_ne!(ma.files, mb.files);
    // Tampering with the committed split is detected, naming the file.
    std::fs::write(
        a.path().join("data/labeled/003.png"),
        ugc_data::image_io::png_rgb(&im),
    )
    .unwrap();
    let e = ma.verify(a.path()).unwrap_err().to_string();
    assert!(e.contains("003.png"), "{e}");
}

#[test]
fn extra_unlabeled_folder_adds_inputs() {
    let d = tempfile::tempdir().unwrap();
    aligned_dataset(d.path(), 10, 2);
    let extra = tempfile::tempdir().unwrap();
    for i in 0..4 {
        let im = image::RgbImage::from_pixel(8, 8, image::Rgb([1, 2, 3]));
        ugc_data::image_io::write(
            &extra.path().join(format!("x{i}.jpg")),
            &ugc_data::image_io::jpeg_rgb(&im, 90),
        )
        .unwrap();
    }
    let spec = ugc_data::DatasetSpec {
        extra_unlabeled: Some(extra.path().to_path_buf()),
        ..aligned_spec(d.path())
    };
    let out = tempfile::tempdir().unwrap();
    let m = run(&spec, &params(0.5, 0.0, 0), out.path());
    assert_eq!((m.counts.unlabeled, m.counts.extra_unlabeled), (5, 4));
    assert_eq!(m.unlabeled().len(), 9);
    assert!(m.unlabeled().iter().any(|u| u.id == "extra__x2"));
}

/// Prints the split sizes for the closing note (`cargo test -p ugc-data -- --nocapture split_sizes_on_synth`).
#[test]
fn split_sizes_on_synth() {
    let d = tempfile::tempdir().unwrap();
    synth(d.path(), SynthTask::Edges2photo, 200, 50, 16);
    for ratio in [0.1, 0.25, 0.5] {
        let out = tempfile::tempdir().unwrap();
        let m = run(&aligned_spec(d.path()), &params(ratio, 0.1, 0), out.path());
        let c = &m.counts;
        println!(
            "label_ratio {ratio}: train {} -> holdout {} labeled {} unlabeled {}; test {}",
            c.train_total, c.holdout, c.labeled, c.unlabeled, c.test
        );
        assert_eq!(c.holdout + c.labeled + c.unlabeled, 200);
    }
}
