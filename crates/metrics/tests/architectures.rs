//! The FID Inception and DRN-D-105 networks: parameter names and shapes against the
//! PyTorch definitions, forward passes against PyTorch with formula weights, and refusal
//! of wrong or missing weights files.

mod common;

use std::collections::BTreeMap;

use common::{fixture, formula_image, max_abs_diff, name_list, write_formula_weights};
use tch::{Device, Kind, Tensor};
use ugc_metrics::MetricsError;
use ugc_metrics::drn::{DrnConfig, DrnSeg, bilinear_up_kernel};
use ugc_metrics::features::FeatureExtractor;
use ugc_metrics::inception::FidInception;
use ugc_metrics::npy::read_npy;

fn npy_tensor(name: &str) -> Tensor {
    let a = read_npy(&fixture(name)).unwrap();
    let shape: Vec<i64> = a.shape.iter().map(|&v| v as i64).collect();
    Tensor::from_slice(&a.data)
        .reshape(shape.as_slice())
        .to_kind(Kind::Float)
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
    let net = FidInception::load(&path, Device::Cpu).unwrap();
    let id = net.identity();
    assert_eq!(id.metric_name, "fid");
    let info = id.weights.unwrap();
    assert_eq!(info.loaded, n_tensors);
    assert_eq!(info.blake3.len(), 64);
    assert!(info.ignored.contains(&"fc.weight".to_string()));

    let images = formula_image(&[2, 3, 64, 80], 7);
    let ours = net.features(&images).unwrap();
    let want = npy_tensor("inception_formula_pool3.npy");
    assert_eq!(ours.size(), vec![2, 2048]);
    let scale = f64::try_from(want.abs().max()).unwrap();
    let diff = max_abs_diff(&ours, &want);
    let between = max_abs_diff(&want.get(0), &want.get(1));
    eprintln!(
        "inception pool3: max |diff| {diff:.3e} (feature scale {scale:.3}, between images {between:.3e})"
    );
    assert!(diff < 1e-4 * scale, "diff {diff}");
    assert!(
        diff < 0.01 * between,
        "the check must resolve image differences"
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
    let net = DrnSeg::load(&path, &cfg, Device::Cpu).unwrap();
    let x = formula_image(&[1, 3, 32, 48], 11) * 2.0 - 1.0;
    let ours = net.logits(&x);
    let want = npy_tensor("drn_formula_logits.npy");
    assert_eq!(ours.size(), want.size());
    let scale = f64::try_from(want.abs().max()).unwrap();
    let diff = max_abs_diff(&ours, &want);
    eprintln!("drn logits: max |diff| {diff:.3e} (scale {scale:.3e})");
    assert!(diff < 1e-4 * scale, "diff {diff}");
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
    let scale = f64::try_from(all.abs().max()).unwrap();
    assert!(max_abs_diff(&all, &split) < 1e-4 * scale.max(1e-6));
    assert!(features_in_batches(&net, &images, 0).is_err());
    let same = frechet_of_images(&net, &images, &images, 2).unwrap();
    let stats = ugc_metrics::GaussianStats::from_features(&all).unwrap();
    let trace = f64::try_from(stats.sigma.trace()).unwrap();
    // N = 4 samples in 2048 dimensions: rank-deficient, so only rounding-level agreement.
    assert!(same.abs() < 1e-4 * trace, "{same} vs trace {trace}");
    let other = Tensor::rand([4, 3, 32, 32], (Kind::Float, Device::Cpu));
    let via_images = frechet_of_images(&net, &images, &other, 3).unwrap();
    let fo = features_in_batches(&net, &other, 4).unwrap();
    let so = ugc_metrics::GaussianStats::from_features(&fo).unwrap();
    let direct = ugc_metrics::frechet_distance(&stats, &so, 1e-6)
        .unwrap()
        .value;
    assert!(
        (via_images - direct).abs() < 1e-6 * direct.abs(),
        "{via_images} vs {direct}"
    );
    assert!(direct > 100.0 * same.abs());
    assert!(
        net.features(&Tensor::rand([1, 1, 32, 32], (Kind::Float, Device::Cpu)))
            .is_err()
    );
}
