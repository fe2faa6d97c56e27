use serde_json::json;
use tch::Device;
use ugc_data::SplitManifest;
use ugc_engine::{CancelToken, NullProgress, StageError};
use ugc_eval::Evaluator;
use ugc_eval::LabelSpec;

use crate::common::*;

#[test]
fn schemas_parse_and_document_every_parameter() {
    let _rng = ugc_engine::testing::torch_rng();
    // evaluator 2: its output gained log.csv (the shared training loop); evaluator 3: it
    // trains with `torch_threads` (default 1); export 2: its check compares in float64.
    for (k, version) in [("evaluator", 3), ("evaluate", 1), ("export", 2)] {
        let s = schema(k);
        assert_eq!(s.kind, k);
        assert_eq!(s.version, version, "{k}");
        assert!(s.params.values().all(|p| !p.doc.is_empty()), "{k}");
    }
    for w in ["fid_inception_weights", "drn_weights"] {
        assert!(
            schema("evaluate").external_inputs.contains(&w.into()),
            "{w}"
        );
    }
}

/// Fraction of test pixels of the most frequent class: what a constant prediction gets.
fn majority_fraction(split: &std::path::Path) -> f64 {
    let m = SplitManifest::load(split).unwrap();
    let labels = LabelSpec::for_split(&m, 250).unwrap();
    let loader = ugc_data::Loader::new(
        &m,
        split,
        ugc_data::Subset::Test,
        ugc_data::LoaderConfig::eval(64),
    )
    .unwrap();
    let mut counts = vec![0u64; labels.num_classes()];
    for b in loader.epoch(0) {
        let l: Vec<i64> =
            Vec::try_from(&labels.labels_of(&b.unwrap()).unwrap().flatten(0, -1)).unwrap();
        for v in l {
            if (v as usize) < counts.len() {
                counts[v as usize] += 1;
            }
        }
    }
    *counts.iter().max().unwrap() as f64 / counts.iter().sum::<u64>() as f64
}

#[test]
fn evaluator_learns_labels2photo_beyond_chance() {
    let _rng = ugc_engine::testing::torch_rng();
    let dir = labels_evaluator();
    let meta = read_json(&dir.join("evaluator/evaluator.json"));
    let metrics = read_json(&dir.join("metrics.json"));
    let acc = metrics["evaluator_test_pixel_accuracy"].as_f64().unwrap();
    let miou = metrics["evaluator_test_miou"].as_f64().unwrap();
    let chance = majority_fraction(&labels_split().split);
    assert!(
        acc > chance + 0.1,
        "pixel accuracy {acc} vs majority class {chance}"
    );
    // A constant prediction has mIoU <= chance / classes present.
    assert!(miou > chance / 2.0, "miou {miou}");
    assert_eq!(meta["test"]["miou"].as_f64().unwrap(), miou);
    assert_eq!(meta["labels"]["kind"], "class_table");
    assert_eq!(meta["training"]["n_images"], 32);
    assert_eq!(meta["training"]["data_digest"].as_str().unwrap().len(), 64);
    let ev = Evaluator::load(dir, Device::Cpu).unwrap();
    assert_eq!(ev.own_test_miou(), Some(miou));
}

#[test]
fn evaluator_on_edges2photo_uses_foreground_masks() {
    let _rng = ugc_engine::testing::torch_rng();
    let data = make_split("edges2photo", 16, 4, 32, 1.0);
    let out = tempfile::tempdir().unwrap();
    run(
        &evaluator_stage(),
        json!({"width": 4, "steps": 60, "lr": 0.005}),
        &[data.split_input()],
        out.path(),
    )
    .unwrap();
    let meta = read_json(&out.path().join("evaluator/evaluator.json"));
    assert_eq!(
        meta["labels"],
        json!({"kind": "foreground", "threshold": 250})
    );
    assert_eq!(meta["class_names"], json!(["background", "foreground"]));
    let acc = meta["test"]["pixel_accuracy"].as_f64().unwrap();
    let chance = majority_fraction(&data.split);
    assert!(
        acc > chance,
        "pixel accuracy {acc} vs majority class {chance}"
    );
}

#[test]
fn evaluator_resumes_bit_identically_after_a_cancel() {
    let _rng = ugc_engine::testing::torch_rng();
    let data = make_split("edges2photo", 8, 2, 16, 1.0);
    let p = json!({"width": 4, "steps": 12, "batch_size": 4, "checkpoint_every": 4});
    let whole = tempfile::tempdir().unwrap();
    run(
        &evaluator_stage(),
        p.clone(),
        &[data.split_input()],
        whole.path(),
    )
    .unwrap();

    let scratch = tempfile::tempdir().unwrap();
    let first = tempfile::tempdir().unwrap();
    let token = CancelToken::new();
    let stop = CancelAt {
        at: 7,
        token: token.clone(),
    };
    let e = run_with(
        &evaluator_stage(),
        p.clone(),
        &[data.split_input()],
        first.path(),
        scratch.path(),
        &stop,
        &token,
    )
    .unwrap_err();
    assert!(matches!(e, StageError::Cancelled), "{e}");
    assert!(scratch.path().join("ckpt/latest.json").is_file());
    let second = tempfile::tempdir().unwrap();
    run_with(
        &evaluator_stage(),
        p,
        &[data.split_input()],
        second.path(),
        scratch.path(),
        &NullProgress,
        &CancelToken::new(),
    )
    .unwrap();
    // Every committed byte (weights, evaluator.json with the loss tail, metrics.json, the
    // training log).
    assert!(second.path().join("log.csv").is_file());
    ugc_engine::testing::assert_same_tree(whole.path(), second.path());
}

#[test]
fn evaluator_errors_name_the_problem() {
    let _rng = ugc_engine::testing::torch_rng();
    let out = tempfile::tempdir().unwrap();
    let e = run(&evaluator_stage(), json!({}), &[], out.path()).unwrap_err();
    assert!(
        matches!(e, StageError::Config(_)) && e.to_string().contains("split"),
        "{e}"
    );
    let e = run(
        &evaluator_stage(),
        json!({"steps": 0}),
        &[labels_split().split_input()],
        out.path(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("steps"), "{e}");
    let missing = tempfile::tempdir().unwrap();
    let e = Evaluator::load(missing.path(), Device::Cpu).unwrap_err();
    assert!(e.to_string().contains("evaluator.json"), "{e}");
}
