use serde_json::json;
use tch::{Device, Kind, Tensor};
use ugc_engine::StageError;
use ugc_nn::Mode;
use ugc_nn::export::load_model;

use crate::common::*;

#[test]
fn export_writes_an_equivalent_standalone_model() {
    let _rng = ugc_engine::testing::torch_rng();
    let src = tempfile::tempdir().unwrap();
    let cfg = fake_model_stage(src.path(), 5);
    let out = tempfile::tempdir().unwrap();
    run(
        &export_stage(),
        json!({"size": 32}),
        &[input("train", "train", src.path())],
        out.path(),
    )
    .unwrap();
    let m = read_json(&out.path().join("metrics.json"));
    let cost = ugc_nn::profile(&cfg, None, [3, 32, 32]).unwrap();
    assert_eq!(m["macs"].as_u64().unwrap(), cost.macs);
    assert_eq!(m["params"].as_u64().unwrap(), cost.params);
    // The mobile ResNet (ngf 4, 3 blocks) in float64: 18 convolutions of at most 7x7x4 =
    // 196 terms and at most 20 instance norms over <= 32x32 values; outputs within [-1, 1].
    let budget = ugc_tolerance::ErrorBudget::new()
        .products(196, 18)
        .sums(32 * 32, 2 * 20);
    let within = budget.bound(ugc_tolerance::Precision::F64, 1.0);
    assert!(m["max_abs_diff"].as_f64().unwrap() <= within);
    // Independently of the stage's own check: same output on another input.
    let (_, mut a) = load_model(&src.path().join("model"), Device::Cpu).unwrap();
    let (_, mut b) = load_model(&out.path().join("model"), Device::Cpu).unwrap();
    a.vs.double();
    b.vs.double();
    let x = {
        let _rng = torch_rng();
        tch::manual_seed(11);
        Tensor::randn([2, 3, 16, 16], (Kind::Float, Device::Cpu)).to_kind(Kind::Double)
    };
    let ya = a
        .generator
        .forward(&x, &a.generator.search_space().largest(), Mode::Eval)
        .unwrap();
    let yb = b
        .generator
        .forward(&x, &b.generator.search_space().largest(), Mode::Eval)
        .unwrap();
    assert!((ya - yb).abs().max().double_value(&[]) <= within);
    assert!(read_json(&out.path().join("export.json"))["check"]["seed"] == 0);
}

#[test]
fn export_refuses_a_dep_without_a_model() {
    let _rng = ugc_engine::testing::torch_rng();
    let empty = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let e = run(
        &export_stage(),
        json!({}),
        &[input("train", "train", empty.path())],
        out.path(),
    )
    .unwrap_err();
    assert!(matches!(e, StageError::Config(_)), "{e}");
    assert!(e.to_string().contains("model"), "{e}");
    // A size out of range never reaches the stage: planning refuses it.
    ugc_kinds::testing::assert_refused(ugc_kinds::Kind::Export, json!({"size": 0}), "size");
}
