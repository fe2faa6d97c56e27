//! The FID Inception and DRN-D-105 networks: parameter names and shapes against the
//! PyTorch definitions, forward passes against PyTorch with formula weights, and refusal
//! of wrong or missing weights files.

use std::collections::BTreeMap;

use crate::common::{formula_image, max_abs_diff, name_list, npy_tensor, write_formula_weights};
use tch::{Device, Kind, Tensor};
use ugc_metrics::MetricsError;
use ugc_metrics::drn::{DrnConfig, DrnSeg, bilinear_up_kernel};
use ugc_metrics::features::FeatureExtractor;
use ugc_metrics::inception::FidInception;
use ugc_tolerance::{ErrorBudget, Precision};

/// Checks `ours` (computed in float64, then in float32) against the float64 reference
/// `want`: in float64 within the worst-case bound of `budget` (the implementation check),
/// in float32 within its probabilistic bound (the worst case exceeds the result for nets
/// this deep; ugc-tolerance states the probability).
fn assert_both_precisions(
    what: &str,
    budget: &ErrorBudget,
    want: &Tensor,
    mut ours: impl FnMut(Kind) -> Tensor,
) {
    assert_eq!(want.kind(), Kind::Double, "{what}: references are float64");
    let scale = f64::try_from(want.abs().max()).unwrap();
    for (kind, bound) in [
        (Kind::Double, budget.bound(Precision::F64, scale)),
        (
            Kind::Float,
            budget.bound_probabilistic(Precision::F32, scale),
        ),
    ] {
        let got = ours(kind);
        assert_eq!(got.kind(), kind, "{what}: output kind");
        let diff = max_abs_diff(&got, want);
        eprintln!("{what} {kind:?}: max |diff| {diff:.3e}, bound {bound:.3e} (scale {scale:.3e})");
        assert!(
            diff <= bound,
            "{what} in {kind:?}: max |diff| {diff:e} > bound {bound:e}"
        );
    }
}

/// Model variables vs. the reference state dict (minus buffers/heads the model omits).
fn compare_names(
    vs: &tch::nn::VarStore,
    list: &[(String, Vec<i64>)],
    omitted: impl Fn(&str) -> bool,
) {
    let ours: BTreeMap<String, Vec<i64>> = vs
        .variables()
        .into_iter()
        .map(|(n, t)| (n, t.size()))
        .collect();
    let theirs: BTreeMap<String, Vec<i64>> =
        list.iter().filter(|(n, _)| !omitted(n)).cloned().collect();
    let missing: Vec<_> = theirs.keys().filter(|k| !ours.contains_key(*k)).collect();
    let extra: Vec<_> = ours.keys().filter(|k| !theirs.contains_key(*k)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?} extra {extra:?}"
    );
    for (k, s) in &theirs {
        assert_eq!(&ours[k], s, "shape of {k}");
    }
}

/// The FID Inception's rounding budget (ugc-tolerance). The deepest path (Mixed_7c's
/// branch3x3dbl): the 5 stem convs (the widest 80x3x3 = 720 terms), 3 per Mixed_5 block
/// (<= 96x3x3), 3 in Mixed_6a, 5 per Mixed_6 block (1x7/7x1 over <= 192 channels: 1344),
/// 4 in Mixed_7a (192x3x3 = 1728) and 3 per Mixed_7 block (448x3x3 = 4032): 47
/// convolutions. Batch norm in eval mode is elementwise; the bilinear resize (4 terms), the
/// 3x3 average pools (9 terms, 11 on the path) and the final 8x8 average add sums.
fn inception_budget() -> ErrorBudget {
    ErrorBudget::new()
        .products(720, 5)
        .products(864, 3 * 3 + 3)
        .products(1344, 4 * 5)
        .products(1728, 4)
        .products(4032, 2 * 3)
        .sums(4, 1)
        .sums(9, 11)
        .sums(64, 1)
}

#[test]
fn inception_names_shapes_and_forward_match_pytorch_fid() {
    tch::manual_seed(0);
    let list = name_list("inception_fid_names.txt");
    let random = FidInception::random(Device::Cpu);
    let is_omitted = |n: &str| n.ends_with("num_batches_tracked") || n.starts_with("fc.");
    compare_names(random.var_store(), &list, is_omitted);
    let n_tensors = list.iter().filter(|(n, _)| !is_omitted(n)).count();
    eprintln!("inception: {n_tensors} named tensors match the reference");

    // A file laid out like the converted pytorch-fid weights (fc head and counters included).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pt_inception.safetensors");
    write_formula_weights(&list, &path, |_| false, |_| None);
    let mut net = FidInception::load(&path, Device::Cpu).unwrap();
    let id = net.identity();
    assert_eq!(id.metric_name, "fid");
    let info = id.weights.unwrap();
    assert_eq!(info.loaded, n_tensors);
    assert_eq!(info.blake3.len(), 64);
    assert!(info.ignored.contains(&"fc.weight".to_string()));

    let images = formula_image(&[2, 3, 64, 80], 7);
    let want = npy_tensor("inception_formula_pool3.npy");
    assert_eq!(want.size(), vec![2, 2048]);
    let between = max_abs_diff(&want.get(0), &want.get(1));
    let budget = inception_budget();
    assert_both_precisions("inception pool3", &budget, &want, |kind| {
        net.set_kind(kind);
        net.features(&images.to_kind(kind)).unwrap()
    });
    // The bound must resolve the difference between the two images' features.
    assert!(
        budget.bound(Precision::F64, 1.0) * 1e6 < between,
        "{between}"
    );
}

#[test]
fn inception_refuses_wrong_or_missing_weights() {
    let list = name_list("inception_fid_names.txt");
    let dir = tempfile::tempdir().unwrap();

    let missing = dir.path().join("nope.safetensors");
    let err = FidInception::load(&missing, Device::Cpu).unwrap_err();
    assert!(matches!(err, MetricsError::WeightsFile { .. }), "{err}");
    assert!(
        err.to_string().contains("nope.safetensors") && err.to_string().contains("does not exist")
    );

    let junk = dir.path().join("junk.safetensors");
    std::fs::write(&junk, b"garbage").unwrap();
    let err = FidInception::load(&junk, Device::Cpu).unwrap_err();
    assert!(
        err.to_string().contains("not a readable safetensors"),
        "{err}"
    );

    // One tensor dropped, one with the wrong shape, and an ImageNet-sized head.
    let path = dir.path().join("wrong.safetensors");
    write_formula_weights(
        &list,
        &path,
        |n| n == "Mixed_6b.branch7x7_2.conv.weight",
        |n| match n {
            "Mixed_7c.branch_pool.bn.running_var" => {
                Some(Tensor::ones([191], (Kind::Float, Device::Cpu)))
            }
            "fc.weight" => Some(Tensor::zeros([1000, 2048], (Kind::Float, Device::Cpu))),
            _ => None,
        },
    );
    let err = FidInception::load(&path, Device::Cpu)
        .unwrap_err()
        .to_string();
    eprintln!("{err}");
    assert!(err.contains("Mixed_6b.branch7x7_2.conv.weight"), "{err}");
    assert!(
        err.contains("Mixed_7c.branch_pool.bn.running_var: model [192], file [191]"),
        "{err}"
    );
    assert!(err.contains("fc.weight") && err.contains("1008"), "{err}");

    // A tensor that is not part of the architecture (torchvision's aux head).
    let path = dir.path().join("aux.safetensors");
    let mut with_aux = list.clone();
    with_aux.push(("AuxLogits.conv0.conv.weight".into(), vec![128, 768, 1, 1]));
    write_formula_weights(&with_aux, &path, |_| false, |_| None);
    let err = FidInception::load(&path, Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unexpected") && err.contains("AuxLogits.conv0.conv.weight"),
        "{err}"
    );
}

#[test]
fn drn_d_105_names_shapes_and_forward_match_drnseg() {
    tch::manual_seed(0);
    let list = name_list("drn_d_105_seg_names.txt");
    let cfg = DrnConfig::d105(19);
    let random = DrnSeg::random(&cfg, Device::Cpu).unwrap();
    compare_names(random.var_store(), &list, |n| {
        n.ends_with("num_batches_tracked")
    });

    // Saved from nn.DataParallel: every name carries `module.`.
    let prefixed: Vec<(String, Vec<i64>)> = list
        .iter()
        .map(|(n, s)| (format!("module.{n}"), s.clone()))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("drn_d_105_cityscapes.safetensors");
    write_formula_weights(
        &prefixed,
        &path,
        |_| false,
        |n| (n == "module.up.weight").then(|| bilinear_up_kernel(19)),
    );
    let mut net = DrnSeg::load(&path, &cfg, Device::Cpu).unwrap();
    let x = formula_image(&[1, 3, 32, 48], 11) * 2.0 - 1.0;
    let want = npy_tensor("drn_formula_logits.npy");
    // DRN-D-105's path: stem 7x7x3 and levels 1-2 (16x3x3, 32x3x3); Bottleneck levels 3-6
    // ([3, 4, 23, 3] blocks, 3 convs each: 1x1 over 4 x planes, 3x3 over planes, 1x1 over
    // planes, planes 64/128/256/512), levels 7-8 (3x3 over 2048 first, then 512), the 1x1
    // seg head over 512, and the grouped 16x16 stride-8 transposed conv (4 taps a class).
    let budget = ErrorBudget::new()
        .products(147, 1)
        .products(288, 2)
        .products(576, 3 * 3)
        .products(1152, 4 * 3)
        .products(2304, 23 * 3)
        .products(4608, 3 * 3)
        .products(2048 * 9, 1)
        .products(4608, 3)
        .products(512, 1)
        .sums(4, 1);
    assert_both_precisions("drn logits", &budget, &want, |kind| {
        net.set_kind(kind);
        net.logits(&x.to_kind(kind))
    });
    let ours = net.logits(&x);
    assert_eq!(ours.size(), want.size());
    let agree = f64::try_from(
        ours.argmax(1, false)
            .eq_tensor(&want.argmax(1, false))
            .to_kind(Kind::Double)
            .mean(Kind::Double),
    )
    .unwrap();
    assert!(agree > 0.999, "argmax agreement {agree}");

    // Missing file / wrong architecture (19-class file for a 20-class head).
    let err = DrnSeg::load(&dir.path().join("none.safetensors"), &cfg, Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("none.safetensors"));
    let err = DrnSeg::load(&path, &DrnConfig::d105(20), Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("seg.weight") && err.contains("mis-shaped"),
        "{err}"
    );
}

#[test]
fn drn_predict_returns_label_map_at_requested_size() {
    tch::manual_seed(1);
    let cfg = DrnConfig::d105(5);
    let net = DrnSeg::random(&cfg, Device::Cpu).unwrap();
    let images = Tensor::rand([1, 3, 16, 24], (Kind::Float, Device::Cpu));
    let pred = net.predict(&images, [32, 48]).unwrap();
    assert_eq!(pred.size(), vec![1, 32, 48]);
    let max = i64::try_from(pred.max()).unwrap();
    assert!((0..5).contains(&max));
    assert!(
        net.predict(
            &Tensor::rand([1, 1, 16, 24], (Kind::Float, Device::Cpu)),
            [32, 48]
        )
        .is_err()
    );
}

#[test]
fn feature_batching_does_not_change_features_and_random_net_is_not_fid() {
    use ugc_metrics::features::{features_in_batches, frechet_of_images};
    tch::manual_seed(3);
    let net = FidInception::random(Device::Cpu);
    let id = net.identity();
    assert_ne!(id.metric_name, "fid");
    assert!(id.weights.is_none());
    let images = Tensor::rand([4, 3, 32, 32], (Kind::Float, Device::Cpu));
    let all = features_in_batches(&net, &images, 4).unwrap();
    let split = features_in_batches(&net, &images, 3).unwrap();
    assert_eq!(all.size(), vec![4, 2048]);
    // Batches of 4 and of 3 + 1 may run other kernels: two float32 evaluations.
    let scale = f64::try_from(all.abs().max()).unwrap();
    let bound = inception_budget().bound_probabilistic(Precision::F32, scale);
    assert!(max_abs_diff(&all, &split) <= bound);
    assert!(features_in_batches(&net, &images, 0).is_err());
    let same = frechet_of_images(&net, &images, &images, 2).unwrap();
    let stats = ugc_metrics::GaussianStats::from_features(&all).unwrap();
    let trace = f64::try_from(stats.sigma.trace()).unwrap();
    // N = 4 samples in 2048 dimensions: rank-deficient, and the square root of a singular
    // matrix is accurate only to about sqrt(u) relative (Higham, Functions of Matrices,
    // §6.1), in float64 here, over a trace of D = 2048 terms.
    let within = 2048.0 * ugc_tolerance::U_F64.sqrt() * trace;
    assert!(same.abs() <= within, "{same} vs {within} (trace {trace})");
    let other = Tensor::rand([4, 3, 32, 32], (Kind::Float, Device::Cpu));
    let via_images = frechet_of_images(&net, &images, &other, 3).unwrap();
    // The same batches by hand: the same operations on the same inputs, so only the order
    // of multithreaded float64 reductions may differ, by at most gamma_D over D = 2048.
    let by_hand = |x: &Tensor| {
        let f = features_in_batches(&net, x, 3).unwrap();
        ugc_metrics::GaussianStats::from_features(&f).unwrap()
    };
    let direct = ugc_metrics::frechet_distance(&by_hand(&images), &by_hand(&other), 1e-6)
        .unwrap()
        .value;
    let within = ugc_tolerance::gamma(2048, Precision::F64) * direct.abs();
    assert!(
        (via_images - direct).abs() <= within,
        "{via_images} vs {direct}"
    );
    assert!(direct > 100.0 * same.abs());
    assert!(
        net.features(&Tensor::rand([1, 1, 32, 32], (Kind::Float, Device::Cpu)))
            .is_err()
    );
}
