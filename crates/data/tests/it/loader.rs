use ugc_data::augment::AugmentConfig;
use ugc_data::{
    InputEncoding, Loader, LoaderConfig, SplitManifest, Subset, SynthTask, read_dataset,
    split_dataset,
};
use ugc_engine::NullProgress;

use ugc_data::image_io::{png_rgb, write};

use crate::common::*;

fn split_of(spec: &ugc_data::DatasetSpec, ratio: f64, out: &std::path::Path) -> SplitManifest {
    split_dataset(
        &read_dataset(spec).unwrap(),
        &params(ratio, 0.0, 0),
        out,
        &NullProgress,
    )
    .unwrap()
}

#[test]
fn aligned_batches_hold_input_and_target_halves() {
    let d = tempfile::tempdir().unwrap();
    aligned_dataset(d.path(), 10, 3);
    let out = tempfile::tempdir().unwrap();
    let m = split_of(&aligned_spec(d.path()), 0.5, out.path());
    let l = Loader::new(&m, out.path(), Subset::Labeled, LoaderConfig::eval(2)).unwrap();
    assert_eq!((l.len(), l.batches_per_epoch()), (5, 3));
    let batches: Vec<_> = l.epoch(0).map(Result::unwrap).collect();
    assert_eq!(batches.len(), 3);
    let b = &batches[0];
    assert_eq!(b.input.size(), [2, 3, 8, 8]);
    assert!(b.labels.is_none());
    let t = b.target.as_ref().unwrap();
    let i: f64 = b.ids[0].parse().unwrap();
    let a_red = b.input.double_value(&[0, 0, 3, 3]);
    // An 8-bit value mapped to [-1, 1] in float32: two operations on values <= 2 in
    // magnitude, each within half an ulp of 2 (u·2).
    let within = 2.0 * f64::from(f32::EPSILON);
    assert!(
        (a_red - (i / 127.5 - 1.0)).abs() <= within,
        "input is the A half"
    );
    assert!(
        (t.double_value(&[0, 2, 3, 3]) - (200.0 / 127.5 - 1.0)).abs() <= within,
        "target is B"
    );
    assert_eq!(
        batches[2].input.size()[0],
        1,
        "last partial batch kept in eval"
    );
}

#[test]
fn images_of_two_sizes_in_one_batch_name_the_real_parameters() {
    let d = tempfile::tempdir().unwrap();
    aligned_dataset(d.path(), 4, 1);
    let big = ab_image(32, 16, [9, 0, 0], [0, 9, 200]);
    write(&d.path().join("train/001.png"), &png_rgb(&big)).unwrap();
    let out = tempfile::tempdir().unwrap();
    let m = split_of(&aligned_spec(d.path()), 1.0, out.path());
    let l = Loader::new(&m, out.path(), Subset::Labeled, LoaderConfig::eval(4)).unwrap();
    let e = l.epoch(0).next().unwrap().unwrap_err().to_string();
    assert!(
        e.contains("`001`") && e.contains("`image_size`") && e.contains("`crop`"),
        "{e}"
    );
    assert!(!e.contains("load_size") && !e.contains("crop_size"), "{e}");
}

#[test]
fn unlabeled_batches_have_no_target() {
    let d = tempfile::tempdir().unwrap();
    aligned_dataset(d.path(), 8, 2);
    let out = tempfile::tempdir().unwrap();
    let m = split_of(&aligned_spec(d.path()), 0.25, out.path());
    let l = Loader::new(&m, out.path(), Subset::Unlabeled, LoaderConfig::eval(3)).unwrap();
    assert_eq!(l.len(), 6);
    for b in l.epoch(0) {
        let b = b.unwrap();
        assert!(b.target.is_none());
        assert_eq!(b.input.size()[1..], [3, 8, 8]);
    }
}

#[test]
fn order_and_augmentation_do_not_depend_on_threads_but_on_epoch() {
    let d = tempfile::tempdir().unwrap();
    synth(d.path(), SynthTask::Edges2photo, 12, 1, 32);
    let out = tempfile::tempdir().unwrap();
    let m = split_of(&aligned_spec(d.path()), 1.0, out.path());
    let cfg = |threads| LoaderConfig {
        threads,
        augment: AugmentConfig {
            load_size: Some((36, 36)),
            crop_size: Some((32, 32)),
            random: true,
            flip: true,
        },
        ..LoaderConfig::train(4, 9)
    };
    let run = |threads, epoch| -> Vec<(Vec<String>, tch::Tensor)> {
        let l = Loader::new(&m, out.path(), Subset::Labeled, cfg(threads)).unwrap();
        l.epoch(epoch)
            .map(|b| {
                let b = b.unwrap();
                assert_eq!(b.input.size(), [4, 3, 32, 32]);
                (b.ids, b.target.unwrap())
            })
            .collect()
    };
    let (a, b, c) = (run(1, 0), run(2, 0), run(2, 1));
    assert_eq!(a.len(), 3);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.0, y.0);
        assert!(x.1.equal(&y.1), "thread count changed the data");
    }
    let ids =
        |v: &[(Vec<String>, tch::Tensor)]| v.iter().flat_map(|x| x.0.clone()).collect::<Vec<_>>();
    assert_ne!(ids(&a), ids(&c), "epochs should be shuffled differently");
}

#[test]
fn semantic_inputs_encode_as_one_hot_with_instance_edges_or_as_colour_maps() {
    let d = tempfile::tempdir().unwrap();
    synth(d.path(), SynthTask::Labels2photo, 4, 2, 32);
    let out = tempfile::tempdir().unwrap();
    let m = split_of(&cityscapes_spec(d.path()), 1.0, out.path());
    let cfg = LoaderConfig {
        encoding: InputEncoding::OneHot {
            instance_edges: true,
        },
        ..LoaderConfig::eval(2)
    };
    let l = Loader::new(&m, out.path(), Subset::Test, cfg).unwrap();
    let b = l.epoch(0).next().unwrap().unwrap();
    assert_eq!(b.input.size(), [2, 9, 32, 32], "8 classes + 1 edge channel");
    let onehot = b.input.narrow(1, 0, 8);
    let sums = onehot.sum_dim_intlist(1, false, tch::Kind::Float);
    assert!(
        sums.eq(1.0).all().int64_value(&[]) == 1,
        "exactly one class per pixel"
    );
    let labels = b.labels.as_ref().unwrap();
    assert_eq!(labels.size(), [2, 32, 32]);
    assert!(onehot.argmax(1, false).equal(labels));
    let edges = b
        .input
        .narrow(1, 8, 1)
        .sum(tch::Kind::Float)
        .double_value(&[]);
    assert!(edges > 0.0, "instance boundaries expected");
    assert_eq!(b.target.as_ref().unwrap().size(), [2, 3, 32, 32]);

    let l = Loader::new(&m, out.path(), Subset::Test, LoaderConfig::eval(2)).unwrap();
    let b = l.epoch(0).next().unwrap().unwrap();
    assert_eq!(
        b.input.size(),
        [2, 3, 32, 32],
        "colour map input for pix2pix"
    );
    assert!(b.labels.is_some());
}

#[test]
fn one_hot_needs_a_class_table() {
    let d = tempfile::tempdir().unwrap();
    aligned_dataset(d.path(), 4, 1);
    let out = tempfile::tempdir().unwrap();
    let m = split_of(&aligned_spec(d.path()), 1.0, out.path());
    let cfg = LoaderConfig {
        encoding: InputEncoding::OneHot {
            instance_edges: false,
        },
        ..LoaderConfig::eval(2)
    };
    let e = Loader::new(&m, out.path(), Subset::Labeled, cfg)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("encoding"), "{e}");
}

#[test]
fn shard_ranges_are_disjoint_cover_every_row_and_differ_by_at_most_one() {
    use ugc_data::loader::shard_range;
    for rows in 0..12 {
        for world in 1..5 {
            let mut next = 0;
            for rank in 0..world {
                let (start, n) = shard_range(rows, rank, world);
                assert_eq!(start, next, "rows {rows} world {world} rank {rank}");
                assert!(n == rows / world || n == rows / world + 1);
                // The first `rows mod world` ranks take the extra row.
                assert_eq!(n > rows / world, rank < rows % world);
                next += n;
            }
            assert_eq!(next, rows);
        }
    }
}

/// The shards of every rank, concatenated, are the unsharded batch bit for bit: same rows,
/// same crops and flips (augmentation is seeded by the position in the global batch).
#[test]
fn shards_together_are_the_whole_augmented_batch() {
    let d = tempfile::tempdir().unwrap();
    synth(d.path(), SynthTask::Edges2photo, 10, 1, 32);
    let out = tempfile::tempdir().unwrap();
    let m = split_of(&aligned_spec(d.path()), 1.0, out.path());
    let cfg = || LoaderConfig {
        augment: AugmentConfig {
            load_size: Some((36, 36)),
            crop_size: Some((32, 32)),
            random: true,
            flip: true,
        },
        drop_last: false,
        ..LoaderConfig::train(3, 5)
    };
    let whole: Vec<_> = Loader::new(&m, out.path(), Subset::Labeled, cfg())
        .unwrap()
        .epoch(1)
        .map(Result::unwrap)
        .collect();
    // 10 examples in batches of 3: 3, 3, 3 and a last batch of 1 kept; with 2 ranks the
    // last batch would leave a rank empty, so it is refused; with drop_last it is fine.
    let e = Loader::new(&m, out.path(), Subset::Labeled, cfg())
        .unwrap()
        .shard(1, 2)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("batch of 1 rows") && e.contains("2 ranks"),
        "{e}"
    );
    let cfg = || LoaderConfig {
        drop_last: true,
        ..cfg()
    };
    let shards: Vec<Vec<_>> = (0..2)
        .map(|r| {
            let l = Loader::new(&m, out.path(), Subset::Labeled, cfg())
                .unwrap()
                .shard(r, 2)
                .unwrap();
            assert_eq!(l.batches_per_epoch(), 3, "the global batch count");
            l.epoch(1).map(Result::unwrap).collect()
        })
        .collect();
    assert_eq!(shards[0].len(), 3);
    for (k, w) in whole.iter().take(3).enumerate() {
        let (a, b) = (&shards[0][k], &shards[1][k]);
        // Odd batch: rank 0 takes two rows, rank 1 one.
        assert_eq!((a.ids.len(), b.ids.len()), (2, 1));
        assert_eq!([a.ids.clone(), b.ids.clone()].concat(), w.ids);
        let cat = |f: &dyn Fn(&ugc_data::Batch) -> tch::Tensor| tch::Tensor::cat(&[f(a), f(b)], 0);
        assert!(cat(&|x| x.input.shallow_clone()).equal(&w.input));
        assert!(
            cat(&|x| x.target.as_ref().unwrap().shallow_clone()).equal(w.target.as_ref().unwrap())
        );
    }
}
