//! Training-core tests: losses and Adam against PyTorch references
//! (`fixtures/make_refs.py`), checkpoints, perceptual networks.

use std::path::Path;

use serde_json::Value;
use tch::{Kind, Tensor};
use ugc_method::losses::{self, DistillWeights};
use ugc_method::perceptual::{DiscriminatorFeatures, FeatureNet, Vgg16};
use ugc_tolerance::{ErrorBudget, Precision};
use ugc_train::checkpoint;
use ugc_train::{Adam, AdamConfig};

fn refs() -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/refs.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn tensor(data: &Value, shape: &Value) -> Tensor {
    let v: Vec<f32> = data
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    let s: Vec<i64> = shape
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect();
    Tensor::from_slice(&v).view(s.as_slice())
}

fn close(got: f64, want: f64, rel: f64) {
    assert!(
        (got - want).abs() <= rel * want.abs().max(1e-6),
        "got {got}, want {want}"
    );
}

fn scalar(t: &Tensor) -> f64 {
    t.double_value(&[])
}

/// The relative tolerance of a loss evaluated in `kind` against its float64 reference
/// (ugc-tolerance): the worst case in float64, the probabilistic bound in float32, times
/// `amplification` (how much the formula magnifies rounding of its sums).
fn within(budget: &ErrorBudget, kind: Kind, amplification: f64) -> f64 {
    amplification
        * match kind {
            Kind::Double => budget.bound(Precision::F64, 1.0),
            _ => budget.bound_probabilistic(Precision::F32, 1.0),
        }
}

#[test]
fn losses_match_pytorch_references() {
    let _rng = ugc_engine::testing::torch_rng();
    let r = refs();
    let a32 = tensor(&r["a"], &r["shape"]);
    let b32 = tensor(&r["b"], &r["shape"]);
    let n = a32.numel() as u64;
    let f32s = |key: &str| -> Vec<Tensor> {
        r[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| tensor(&f["data"], &f["shape"]))
            .collect()
    };
    let (fa32, fb32) = (f32s("fa"), f32s("fb"));
    // SSIM: five 11x11 window sums, then the mean of the map; the variance terms
    // (E[x^2] - mu^2) cancel, and C2 = 0.03^2 bounds the amplification by 1 / C2.
    let ssim_budget = ErrorBudget::new().sums(121, 5).sums(n, 1);
    let ssim_amp = 1.0 / (0.03f64 * 0.03);
    // A mean of n absolute differences.
    let l1_budget = ErrorBudget::new().sums(n, 1);
    // Gram matrices: dot products over H·W <= 64 terms, then a mean over the C x C entries
    // of each layer, summed over 2 layers.
    let gram_budget = ErrorBudget::new().products(64, 1).sums(2 * 6 * 6, 2);
    let feature_budget = ErrorBudget::new().sums(2 * 4 * 8 * 8, 2);
    for kind in [Kind::Double, Kind::Float] {
        let (a, b) = (a32.to_kind(kind), b32.to_kind(kind));
        let fa: Vec<Tensor> = fa32.iter().map(|t| t.to_kind(kind)).collect();
        let fb: Vec<Tensor> = fb32.iter().map(|t| t.to_kind(kind)).collect();
        let ssim_within = within(&ssim_budget, kind, ssim_amp);
        close(
            scalar(&losses::ssim(&a, &b).unwrap()),
            r["ssim_ab"].as_f64().unwrap(),
            ssim_within,
        );
        close(scalar(&losses::ssim(&a, &a).unwrap()), 1.0, ssim_within);
        let l1_within = within(&l1_budget, kind, 1.0);
        close(
            scalar(&losses::l1(&a, &b)),
            r["l1_ab"].as_f64().unwrap(),
            l1_within,
        );
        close(
            scalar(&losses::total_variation(&a)),
            r["tv_a"].as_f64().unwrap(),
            within(&ErrorBudget::new().sums(n, 2), kind, 1.0),
        );
        let gram = scalar(&losses::gram_l1(&fa, &fb));
        // The L1 of Gram differences cancels: the entries are O(1), their differences
        // O(gram_l1), so rounding of the entries is magnified by 1 / gram_l1.
        let gram_amp = 1.0 / r["gram_l1"].as_f64().unwrap();
        close(
            gram,
            r["gram_l1"].as_f64().unwrap(),
            within(&gram_budget, kind, gram_amp),
        );
        close(
            scalar(&losses::feature_l1(&fa, &fb)),
            r["feature_l1"].as_f64().unwrap(),
            within(&feature_budget, kind, 1.0),
        );

        // The combination uses the documented weights: the sum of the terms above.
        let w = DistillWeights::default();
        let t = losses::distill_loss(&a, &b, &fa, &fb, &w).unwrap();
        let want = 10.0 * (1.0 - r["ssim_ab"].as_f64().unwrap())
            + 1e4 * r["gram_l1"].as_f64().unwrap()
            + 10.0 * r["feature_l1"].as_f64().unwrap()
            + 1e-5 * r["tv_a"].as_f64().unwrap();
        let combined = within(&gram_budget, kind, gram_amp)
            .max(ssim_within)
            .max(l1_within);
        close(scalar(&t.total), want, 2.0 * combined);
        assert_eq!(t.total.kind(), kind);
    }
    let (a, b, w) = (a32, b32, DistillWeights::default());
    let (fa, fb) = (fa32, fb32);
    assert!(losses::ssim(&a, &a.narrow(2, 0, 8)).is_err());
    assert!(losses::distill_loss(&a, &b, &fa, &fb[..1], &w).is_err());
}

#[test]
fn ssim_loss_has_gradients() {
    let _rng = ugc_engine::testing::torch_rng();
    let a = Tensor::rand([1, 3, 16, 16], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
    let b = Tensor::rand([1, 3, 16, 16], (Kind::Float, tch::Device::Cpu));
    let l = losses::ssim(&a, &b).unwrap().neg() + 1.0;
    l.backward();
    assert!(a.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
}

#[test]
fn hinge_losses_by_hand() {
    let _rng = ugc_engine::testing::torch_rng();
    let p = Tensor::from_slice(&[-2.0f32, 0.5, 1.5, 0.0]);
    // relu(1 - p) = [3, 0.5, 0, 1] -> 1.125 ; relu(1 + p) = [0, 1.5, 2.5, 1] -> 1.25
    close(scalar(&losses::hinge_d_real(&p)), 1.125, 1e-7);
    close(scalar(&losses::hinge_d_fake(&p)), 1.25, 1e-7);
    close(scalar(&losses::hinge_g(&p)), -0.0, 1e-7);
    let scales = vec![
        vec![p.shallow_clone()],
        vec![Tensor::from_slice(&[1.0f32, 3.0])],
    ];
    // mean over scales of -mean: (0 + -2) / 2
    close(
        scalar(&losses::over_scales(&scales, losses::hinge_g)),
        -1.0,
        1e-7,
    );
}

#[test]
fn adam_matches_torch_optim_adam() {
    let _rng = ugc_engine::testing::torch_rng();
    let r = refs();
    let a = &r["adam"];
    let f = |k: &str| -> Vec<f32> {
        a[k].as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect()
    };
    let p = Tensor::from_slice(&f("p0")).set_requires_grad(true);
    let target = Tensor::from_slice(&f("target"));
    let scale = Tensor::from_slice(&f("scale"));
    let lr = a["lr"].as_f64().unwrap();
    let mut opt = Adam::new(
        vec![("p".into(), p.shallow_clone())],
        AdamConfig {
            lr,
            ..Default::default()
        },
    )
    .unwrap();
    for want in a["trajectory"].as_array().unwrap() {
        opt.zero_grad();
        let loss = ((&p - &target).square() * &scale).sum(Kind::Float);
        loss.backward();
        opt.step(lr).unwrap();
        let got: Vec<f32> = Vec::try_from(&p.detach()).unwrap();
        // Adam is elementwise (no reductions, so no summation order): per step about 10
        // float32 operations of relative error u on values of magnitude <= |p| + lr, over
        // at most 5 steps; PyTorch's trajectory carries the same rounding once more.
        for (g, w) in got.iter().zip(want.as_array().unwrap()) {
            let w = w.as_f64().unwrap();
            let abs = 2.0 * 5.0 * 10.0 * ugc_tolerance::U_F32 * (w.abs() + lr);
            assert!((*g as f64 - w).abs() <= abs, "got {g}, want {w}");
        }
    }
    assert_eq!(opt.steps_taken(), 5);
}

#[test]
fn checkpoint_round_trip_and_mismatch() {
    let _rng = ugc_engine::testing::torch_rng();
    let dir = tempfile::tempdir().unwrap();
    let w = Tensor::randn([3, 4], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
    let mut opt = Adam::new(vec![("w".into(), w.shallow_clone())], AdamConfig::default()).unwrap();
    w.sum(Kind::Float).backward();
    opt.step(0.1).unwrap();
    let mut live = vec![("g.w".to_string(), w.shallow_clone())];
    live.extend(opt.state("opt_g"));
    assert_eq!(
        checkpoint::resume_or_start(dir.path(), 1, &live).unwrap(),
        0
    );
    checkpoint::save(dir.path(), 7, 1, &live).unwrap();
    let saved_w = w.detach().copy();
    let saved_m = live[1].1.copy();
    // Scramble the live state, then restore.
    tch::no_grad(|| {
        let _ = w.shallow_clone().fill_(0.0);
        let _ = live[1].1.shallow_clone().fill_(5.0);
    });
    let mut opt2 = Adam::new(vec![("w".into(), w.shallow_clone())], AdamConfig::default()).unwrap();
    let mut live2 = vec![("g.w".to_string(), w.shallow_clone())];
    live2.extend(opt2.state("opt_g"));
    assert_eq!(
        checkpoint::resume_or_start(dir.path(), 1, &live2).unwrap(),
        7
    );
    assert!(w.detach().equal(&saved_w));
    assert!(live2[1].1.equal(&saved_m));
    assert_eq!(opt2.steps_taken(), 1);
    opt2.zero_grad();
    // Another seed is refused, naming latest.json.
    let e = checkpoint::resume_or_start(dir.path(), 2, &live2)
        .unwrap_err()
        .to_string();
    assert!(e.contains("latest.json"), "{e}");
    // A mis-shaped live tensor is named.
    let other = vec![(
        "g.w".to_string(),
        Tensor::zeros([2], (Kind::Float, tch::Device::Cpu)),
    )];
    let e = checkpoint::resume_or_start(dir.path(), 1, &other)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("mis-shaped: g.w") && e.contains("unexpected: opt_g.t"),
        "{e}"
    );
    // Only the current tensor file is kept.
    checkpoint::save(dir.path(), 8, 1, &live2).unwrap();
    let files: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".safetensors"))
        .collect();
    assert_eq!(files, vec!["ckpt-8.safetensors".to_string()]);
}

#[test]
fn vgg16_errors_name_file_and_tensors() {
    let _rng = ugc_engine::testing::torch_rng();
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("vgg16.safetensors");
    let e = Vgg16::load(&missing, tch::Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("vgg16.safetensors") && e.contains("does not exist"),
        "{e}"
    );
    let bad = dir.path().join("bad.safetensors");
    let t = Tensor::zeros([64, 3, 5, 5], (Kind::Float, tch::Device::Cpu));
    Tensor::write_safetensors(&[("features.0.weight", &t)], &bad).unwrap();
    let e = Vgg16::load(&bad, tch::Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("mis-shaped: features.0.weight"), "{e}");
    assert!(e.contains("missing: features.21.bias"), "{e}");
}

#[test]
fn vgg16_loads_torchvision_names_and_taps_four_layers() {
    let _rng = ugc_engine::testing::torch_rng();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("vgg16.safetensors");
    let convs = crate::common::TORCHVISION_VGG16_CONVS;
    let mut ts = Vec::new();
    for (i, ci, co) in convs {
        ts.push((
            format!("features.{i}.weight"),
            Tensor::randn([co, ci, 3, 3], (Kind::Float, tch::Device::Cpu)) * 0.05,
        ));
        ts.push((
            format!("features.{i}.bias"),
            Tensor::zeros([co], (Kind::Float, tch::Device::Cpu)),
        ));
    }
    // The classifier is ignored.
    ts.push((
        "classifier.0.bias".into(),
        Tensor::zeros([7], (Kind::Float, tch::Device::Cpu)),
    ));
    Tensor::write_safetensors(&ts, &file).unwrap();
    let vgg = Vgg16::load(&file, tch::Device::Cpu).unwrap();
    let x = Tensor::rand([1, 3, 16, 16], (Kind::Float, tch::Device::Cpu));
    let f = vgg.features(&x);
    let shapes: Vec<Vec<i64>> = f.iter().map(|t| t.size()).collect();
    assert_eq!(
        shapes,
        vec![
            vec![1, 64, 16, 16],
            vec![1, 128, 8, 8],
            vec![1, 256, 4, 4],
            vec![1, 512, 2, 2]
        ]
    );
}

#[test]
fn discriminator_features_exclude_predictions() {
    let _rng = ugc_engine::testing::torch_rng();
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let d = ugc_nn::build_discriminator(&vs.root(), &ugc_nn::DiscConfig::patchgan(6, 4)).unwrap();
    let cond = Tensor::rand([2, 3, 32, 32], (Kind::Float, tch::Device::Cpu));
    let x = Tensor::rand([2, 3, 32, 32], (Kind::Float, tch::Device::Cpu));
    let f = DiscriminatorFeatures::new(d.as_ref(), &cond).features(&x);
    // PatchGAN with 3 layers: 4 LeakyReLU outputs; the 1-channel prediction is dropped.
    assert_eq!(f.len(), 4);
    assert!(f.iter().all(|t| t.size()[1] > 1));
}
