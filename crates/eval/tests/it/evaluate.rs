use serde_json::json;
use ugc_engine::StageError;

use crate::common::*;

/// The row of `metric` in an eval.json's `metrics` list.
fn metric_row<'a>(eval: &'a serde_json::Value, metric: &str) -> &'a serde_json::Value {
    eval["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["metric"] == metric)
        .unwrap_or_else(|| panic!("no {metric} row in {eval}"))
}

#[test]
fn reference_mode_reaches_every_ceiling() {
    let _rng = ugc_engine::testing::torch_rng();
    let out = tempfile::tempdir().unwrap();
    run(
        &evaluate_stage(),
        json!({"reference": true, "n_samples": 3}),
        &[
            labels_split().split_input(),
            input("ev", "evaluator", labels_evaluator()),
        ],
        out.path(),
    )
    .unwrap();
    let m = read_json(&out.path().join("metrics.json"));
    let own = read_json(&labels_evaluator().join("metrics.json"))["evaluator_test_miou"]
        .as_f64()
        .unwrap();
    assert_eq!(m["psnr"].as_f64().unwrap(), 100.0, "{m}");
    // Real against real: both sides are the same float64 values, so SSIM is 1 up to the
    // float64 rounding of its window sums (121 terms, then the mean): far below 1e-12.
    let within = 4.0 * ugc_tolerance::gamma(121 + 8 * 3 * 32 * 32, ugc_tolerance::Precision::F64);
    assert!((m["ssim"].as_f64().unwrap() - 1.0).abs() <= within, "{m}");
    assert_eq!(m["miou"].as_f64().unwrap(), own, "{m}");
    assert_eq!(m["evaluator_test_miou"].as_f64().unwrap(), own);
    // Identical features on both sides (the same images through the same float32 net), so
    // the means and traces cancel exactly and only the float64 square root of Σ² is
    // inexact: O(√u64 · D · tr Σ) for a rank-deficient Σ (8 images), CPU-independent.
    assert!(m["seg_fd"].as_f64().unwrap().abs() < 1e-6, "{m}");
    assert!(m.get("fid").is_none() && m.get("macs").is_none(), "{m}");
    assert_eq!(m["n_images"], 8);
    assert_eq!(m["label_fraction"], 1.0);
    let e = read_json(&out.path().join("eval.json"));
    assert_eq!(e["split"]["subset"], "test");
    assert_eq!(e["device"], "cpu");
    assert_eq!(e["metrics"][0]["metric"], "psnr");
    assert_eq!(e["metrics"][0]["evaluator"]["images_at_cap"], 8);
    let seg = metric_row(&e, "seg_fd");
    assert_eq!(seg["evaluator"]["metric_name"], "seg_fd");
    assert_eq!(
        seg["evaluator"]["weights"]["blake3"]
            .as_str()
            .unwrap()
            .len(),
        64
    );
    assert!(e["not_computed"]["fid"].is_string());
    assert_eq!(
        std::fs::read_dir(out.path().join("samples"))
            .unwrap()
            .count(),
        3
    );
    let strip = image::open(
        out.path()
            .join("samples")
            .join(e["samples"][0].as_str().unwrap()),
    )
    .unwrap();
    assert_eq!((strip.width(), strip.height()), (96, 32));
}

#[test]
fn the_hold_out_is_scored_when_asked_and_a_split_without_one_is_refused() {
    let _rng = ugc_engine::testing::torch_rng();
    // 32 training examples, a quarter held out: 8 hold-out images, 4 test images.
    let data = make_split_with_holdout("labels2photo", 32, 4, 32, 1.0, 0.25);
    let out = tempfile::tempdir().unwrap();
    run(
        &evaluate_stage(),
        json!({"reference": true, "subset": "holdout", "n_samples": 0}),
        &[data.split_input()],
        out.path(),
    )
    .unwrap();
    let m = read_json(&out.path().join("metrics.json"));
    assert_eq!(m["n_images"], 8, "the hold-out, not the 4 test images: {m}");
    let e = read_json(&out.path().join("eval.json"));
    assert_eq!(e["split"]["subset"], "holdout");

    let out = tempfile::tempdir().unwrap();
    let err = run(
        &evaluate_stage(),
        json!({"reference": true, "subset": "holdout"}),
        &[labels_split().split_input()],
        out.path(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("has no holdout images"), "{err}");
}

#[test]
fn evaluates_a_model_with_cost_latency_and_samples() {
    let _rng = ugc_engine::testing::torch_rng();
    let model = tempfile::tempdir().unwrap();
    let cfg = fake_model_stage(model.path(), 1);
    let out = tempfile::tempdir().unwrap();
    run(
        &evaluate_stage(),
        json!({"latency_warmup": 1, "latency_runs": 3, "n_samples": 2}),
        &[
            labels_split().split_input(),
            input("ev", "evaluator", labels_evaluator()),
            input("student", "distill", model.path()),
        ],
        out.path(),
    )
    .unwrap();
    let m = read_json(&out.path().join("metrics.json"));
    let cost = ugc_nn::profile(&cfg, None, [3, 32, 32]).unwrap();
    assert_eq!(m["macs"].as_u64().unwrap(), cost.macs);
    assert_eq!(m["params"].as_u64().unwrap(), cost.params);
    let psnr = m["psnr"].as_f64().unwrap();
    assert!(
        psnr > 0.0 && psnr < 40.0,
        "an untrained model is far from the target: {psnr}"
    );
    assert!(m["ssim"].as_f64().unwrap() < 0.9);
    let own = m["evaluator_test_miou"].as_f64().unwrap();
    assert!(m["miou"].as_f64().unwrap() < own, "{m}");
    assert!(m["seg_fd"].as_f64().unwrap() > 1e-3, "{m}");
    assert!(m["latency_ms"].as_f64().unwrap() > 0.0);
    let e = read_json(&out.path().join("eval.json"));
    assert_eq!(e["model"]["arch"], "mobile-resnet");
    assert_eq!(e["model"]["stage"], "student");
    assert_eq!(e["model"]["input"], json!([3, 32, 32]));
    assert_eq!(e["model"]["latency"]["batch"], 1);
    assert_eq!(e["model"]["latency"]["runs"], 3);
    assert!(e["model"]["config"].is_string());
    assert_eq!(e["samples"].as_array().unwrap().len(), 2);
    // Only a train dep's origin.json is passed on; other models' eval.json has no origin.
    assert!(e["model"].get("origin").is_none(), "{e}");
}

#[test]
fn a_train_models_origin_reaches_eval_json() {
    let _rng = ugc_engine::testing::torch_rng();
    let model = tempfile::tempdir().unwrap();
    fake_model_stage(model.path(), 1);
    let origin = json!({"arch_from": "dep", "dep": "search", "dep_kind": "search", "subnet": true});
    std::fs::write(model.path().join("origin.json"), origin.to_string()).unwrap();
    let out = tempfile::tempdir().unwrap();
    run(
        &evaluate_stage(),
        json!({"latency": false, "n_samples": 0}),
        &[
            labels_split().split_input(),
            input("ev", "evaluator", labels_evaluator()),
            input("student_alone", "train", model.path()),
        ],
        out.path(),
    )
    .unwrap();
    let e = read_json(&out.path().join("eval.json"));
    assert_eq!(e["model"]["kind"], "train");
    assert_eq!(e["model"]["origin"], origin);
}

#[test]
fn evaluate_refuses_missing_models_and_missing_inception_weights() {
    let _rng = ugc_engine::testing::torch_rng();
    let empty = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let e = run(
        &evaluate_stage(),
        json!({}),
        &[
            labels_split().split_input(),
            input("student", "distill", empty.path()),
        ],
        out.path(),
    )
    .unwrap_err();
    assert!(matches!(e, StageError::Config(_)), "{e}");
    assert!(e.to_string().contains("model.json"), "{e}");

    let e = run(
        &evaluate_stage(),
        json!({}),
        &[labels_split().split_input()],
        out.path(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("model-producing dep"), "{e}");

    let teachers = tempfile::tempdir().unwrap();
    let e = run(
        &evaluate_stage(),
        json!({}),
        &[
            labels_split().split_input(),
            input("t", "teachers", teachers.path()),
        ],
        out.path(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("role"), "{e}");

    let missing = empty.path().join("pt_inception-2015-12-05.safetensors");
    let e = run(
        &evaluate_stage(),
        json!({"reference": true, "fid_inception_weights": missing}),
        &[labels_split().split_input()],
        out.path(),
    )
    .unwrap_err();
    assert!(matches!(e, StageError::Config(_)), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("fid_inception_weights") && msg.contains("pt_inception"),
        "{msg}"
    );

    // DRN mIoU: a missing file, and a split that is not Cityscapes, are refused up front.
    let drn = empty.path().join("drn_d_105_cityscapes.safetensors");
    let e = run(
        &evaluate_stage(),
        json!({"reference": true, "drn_weights": drn}),
        &[labels_split().split_input()],
        out.path(),
    )
    .unwrap_err();
    assert!(matches!(e, StageError::Config(_)), "{e}");
    assert!(e.to_string().contains("drn_weights"), "{e}");
    std::fs::write(&drn, b"not read: the split is checked first").unwrap();
    let e = run(
        &evaluate_stage(),
        json!({"reference": true, "drn_weights": drn}),
        &[labels_split().split_input()],
        out.path(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("DRN-D-105 scores Cityscapes"), "{e}");
}

#[test]
fn evaluates_a_teacher_role() {
    let _rng = ugc_engine::testing::torch_rng();
    let teachers = tempfile::tempdir().unwrap();
    // `fake_model_stage` writes `<dir>/model`; a teachers stage has `<dir>/teachers/<role>`.
    let tmp = tempfile::tempdir().unwrap();
    fake_model_stage(tmp.path(), 2);
    std::fs::create_dir_all(teachers.path().join("teachers")).unwrap();
    std::fs::rename(
        tmp.path().join("model"),
        teachers.path().join("teachers/wide"),
    )
    .unwrap();
    let out = tempfile::tempdir().unwrap();
    run(
        &evaluate_stage(),
        json!({"role": "wide", "latency": false}),
        &[
            labels_split().split_input(),
            input("t", "teachers", teachers.path()),
        ],
        out.path(),
    )
    .unwrap();
    let e = read_json(&out.path().join("eval.json"));
    assert_eq!(e["model"]["role"], "wide");
    assert!(e["not_computed"]["miou"].is_string());
    let m = read_json(&out.path().join("metrics.json"));
    assert!(m.get("latency_ms").is_none() && m.get("miou").is_none());
}

#[test]
#[ignore = "slow on a shared CPU (~40 s: 23M-parameter Inception-v3 written, hashed, loaded and run at 299x299); run with `cargo test -p ugc-eval -- --ignored`"]
fn fid_is_computed_when_inception_weights_are_configured() {
    let _rng = ugc_engine::testing::torch_rng();
    // Weights of the right architecture (random values, written by the metrics crate's own
    // network) stand in for the user's pytorch-fid file: this tests the wiring, not FID values.
    let data = make_split("edges2photo", 4, 2, 16, 1.0);
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("inception.safetensors");
    {
        let _rng = torch_rng();
        tch::manual_seed(0);
        let net = ugc_metrics::inception::FidInception::random(tch::Device::Cpu);
        net.var_store().save(&weights).unwrap();
    }
    let out = tempfile::tempdir().unwrap();
    run(
        &evaluate_stage(),
        json!({"reference": true, "fid_inception_weights": weights}),
        &[data.split_input()],
        out.path(),
    )
    .unwrap();
    let m = read_json(&out.path().join("metrics.json"));
    // As seg_fd above: identical features, only the float64 square root is inexact.
    assert!(m["fid"].as_f64().unwrap().abs() < 1e-6, "real vs real: {m}");
    let e = read_json(&out.path().join("eval.json"));
    let fid = metric_row(&e, "fid");
    assert_eq!(fid["evaluator"]["metric_name"], "fid");
    assert_eq!(
        fid["evaluator"]["weights"]["blake3"]
            .as_str()
            .unwrap()
            .len(),
        64
    );
    assert!(e["not_computed"]["miou"].is_string());
}

#[test]
fn evaluate_commits_the_same_bytes_wherever_its_inputs_lie() {
    let _rng = ugc_engine::testing::torch_rng();
    let model = tempfile::tempdir().unwrap();
    fake_model_stage(model.path(), 4);
    // The split, evaluator and model copied under two cache roots, as when a cache moves.
    let roots = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let outs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    for (root, out) in roots.iter().zip(&outs) {
        let at = |name: &str, from: &std::path::Path| {
            let dir = root.path().join("objects").join(name);
            copy_tree(from, &dir);
            dir
        };
        let inputs = [
            input("split", "split", &at("split", &labels_split().split)),
            input("ev", "evaluator", &at("ev", labels_evaluator())),
            input("student", "distill", &at("student", model.path())),
        ];
        // Latency is a measurement and differs run to run; everything else must not.
        run(
            &evaluate_stage(),
            json!({"latency": false, "n_samples": 2}),
            &inputs,
            out.path(),
        )
        .unwrap();
        let root_text = root.path().display().to_string();
        for (name, bytes) in ugc_engine::testing::read_tree(out.path()) {
            assert!(
                !String::from_utf8_lossy(&bytes).contains(&root_text),
                "{name} names the cache location {root_text}"
            );
        }
    }
    ugc_engine::testing::assert_same_tree(outs[0].path(), outs[1].path());
    let e = read_json(&outs[0].path().join("eval.json"));
    assert_eq!(e["split"]["manifest_blake3"].as_str().unwrap().len(), 64);
    let seg = metric_row(&e, "seg_fd");
    assert_eq!(seg["evaluator"]["weights"]["path"], "model.safetensors");
}
