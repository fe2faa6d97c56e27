//! Supernet behaviour of the pix2pix families: shapes, profiler table, export equivalence,
//! gradients into sliced weights, BN recalibration, errors for wrong weights.

use rand::SeedableRng;
use tch::{Device, Kind, Tensor, nn::VarStore};
use ugc_nn::export::{check_weights, export_subnet, load_model, load_weights};
use ugc_nn::{
    Arch, ArchConfig, Mode, NnError, SubnetConfig, build_generator, profile, recalibrate_bn,
};

use crate::common::{ErrorBudget, Precision, fixture, max_abs_diff};

fn tiny(arch: Arch) -> ArchConfig {
    let c = ArchConfig::new(arch);
    match arch {
        Arch::Pix2PixUnet => ArchConfig {
            ngf: 8,
            num_downs: 5,
            ..c
        },
        _ => ArchConfig {
            ngf: 8,
            n_blocks: 4,
            space: ugc_nn::SpaceSpec {
                min_blocks: 1,
                ..c.space.clone()
            },
            ..c
        },
    }
}

const FAMILIES: [Arch; 3] = [Arch::Pix2PixResnet, Arch::MobileResnet, Arch::Pix2PixUnet];

/// The rounding budget of `tiny(arch)` on a 32x32 input (ugc-tolerance): its convolutions
/// on the deepest path with their largest fan-in, and its norms' statistics.
fn tiny_budget(arch: Arch) -> ErrorBudget {
    match arch {
        // stem 7x7x3, 2 downs, 4 blocks of 2 convs, 2 ups, head 7x7x8 = 392 terms: 14 convs;
        // 13 instance norms over at most 32x32 values.
        Arch::Pix2PixResnet => ErrorBudget::new().products(392, 14).sums(32 * 32, 2 * 13),
        // As above with each block conv separable (depthwise + pointwise): 22 convs, at most
        // 21 norms.
        Arch::MobileResnet => ErrorBudget::new().products(392, 22).sums(32 * 32, 2 * 21),
        // 5 downs and 5 ups of 4x4 kernels, the widest up over 2 x 64 channels x 16 taps;
        // batch norm over at most 2 x 16 x 16 values (train mode) or running statistics.
        _ => ErrorBudget::new()
            .products(128 * 16, 10)
            .sums(2 * 16 * 16, 2 * 8),
    }
}

fn input(n: i64) -> Tensor {
    Tensor::rand([n, 3, 32, 32], (Kind::Float, Device::Cpu)) * 2.0 - 1.0
}

#[test]
fn output_shapes_for_largest_smallest_and_random_subnets() {
    tch::manual_seed(1);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    for arch in FAMILIES {
        let vs = VarStore::new(Device::Cpu);
        let g = build_generator(&vs.root(), &tiny(arch)).unwrap();
        let space = g.search_space();
        let x = input(2);
        for sub in [space.largest(), space.smallest(), space.sample(&mut rng)] {
            let y = g.forward(&x, &sub, Mode::Train).unwrap();
            assert_eq!(y.size(), vec![2, 3, 32, 32], "{arch} {sub}");
            assert!(y.abs().max().double_value(&[]) <= 1.0, "tanh output");
        }
    }
    let vs = VarStore::new(Device::Cpu);
    let d = ugc_nn::build_discriminator(&vs.root(), &ugc_nn::DiscConfig::patchgan(6, 8)).unwrap();
    let out = d.forward(
        &Tensor::rand([2, 6, 64, 64], (Kind::Float, Device::Cpu)),
        Mode::Train,
    );
    assert_eq!(out[0].len(), 5);
    assert_eq!(out[0].last().unwrap().size(), vec![2, 1, 6, 6]);
}

/// DESIGN §3 rows; exact values are torchprofile's on the official PyTorch definitions
/// (`make_pix2pix.py --profile`).
#[test]
fn profiler_reproduces_design_table() {
    let rows = [
        (
            ArchConfig::new(Arch::Pix2PixResnet),
            56_799_264_768u64,
            11_378_179u64,
            56.799e9,
            11.378e6,
        ),
        (
            ArchConfig::new(Arch::Pix2PixUnet),
            18_143_334_400,
            54_413_955,
            18.145e9,
            54.414e6,
        ),
        (
            ArchConfig {
                ngf: 16,
                ..ArchConfig::new(Arch::MobileResnet)
            },
            1_407_713_280,
            137_347,
            1.408e9,
            0.137e6,
        ),
        (
            ArchConfig {
                ngf: 16,
                ..ArchConfig::new(Arch::Pix2PixUnet)
            },
            1_219_449_856,
            3_404_451,
            1.220e9,
            3.40e6,
        ),
    ];
    for (cfg, macs, params, design_macs, design_params) in rows {
        let c = profile(&cfg, None, [3, 256, 256]).unwrap();
        assert_eq!(
            (c.macs, c.params),
            (macs, params),
            "{} ngf {}",
            cfg.arch,
            cfg.ngf
        );
        assert!((c.macs as f64 / design_macs - 1.0).abs() < 0.005);
        assert!((c.params as f64 / design_params - 1.0).abs() < 0.005);
    }
    // PatchGAN (ndf 64, 3 layers, batch norm, 6 input channels), torchprofile value.
    let d = ugc_nn::patchgan::cost(&ugc_nn::DiscConfig::patchgan(6, 64), [6, 256, 256]);
    assert_eq!((d.macs, d.params), (3_198_419_456, 2_768_705));
}

#[test]
fn profiler_params_equal_built_model_params() {
    for arch in FAMILIES {
        let cfg = tiny(arch);
        let vs = VarStore::new(Device::Cpu);
        let _g = build_generator(&vs.root(), &cfg).unwrap();
        let n: i64 = vs
            .trainable_variables()
            .iter()
            .map(|t| t.numel() as i64)
            .sum();
        assert_eq!(
            profile(&cfg, None, [3, 32, 32]).unwrap().params,
            n as u64,
            "{arch}"
        );
    }
}

#[test]
fn exported_subnet_equals_supernet_output_and_profile() {
    tch::manual_seed(2);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    for arch in FAMILIES {
        let cfg = tiny(arch);
        let vs = VarStore::new(Device::Cpu);
        let g = build_generator(&vs.root(), &cfg).unwrap();
        let space = g.search_space();
        let x = input(2);
        // Non-trivial BN statistics for the UNet so eval mode uses them.
        let _ = tch::no_grad(|| g.forward(&x, &space.largest(), Mode::Train));
        let mut subs = vec![space.smallest()];
        // a random sub-net that skips at least one block where the family has depth
        subs.extend(
            (0..20)
                .map(|_| space.sample(&mut rng))
                .find(|s| s.depth.iter().any(|d| !d) || s.depth.is_empty()),
        );
        for sub in subs {
            let dir = tempfile::tempdir().unwrap();
            let meta = export_subnet(g.as_ref(), &sub, dir.path()).unwrap();
            assert!(dir.path().join("model.json").is_file());
            let (meta2, m) = load_model(dir.path(), Device::Cpu).unwrap();
            assert_eq!(meta, meta2);
            let small = &m.generator;
            let y_super = tch::no_grad(|| g.forward(&x, &sub, Mode::Eval)).unwrap();
            let y_small =
                tch::no_grad(|| small.forward(&x, &small.search_space().largest(), Mode::Eval))
                    .unwrap();
            let d = max_abs_diff(&y_super, &y_small);
            let bound = tiny_budget(arch).bound(Precision::F32, 1.0);
            assert!(d <= bound, "{arch} {sub}: max |diff| {d} > bound {bound}");
            let c_sub = profile(&cfg, Some(&sub), [3, 32, 32]).unwrap();
            let c_small = profile(&meta.arch, None, [3, 32, 32]).unwrap();
            assert_eq!(c_sub, c_small, "{arch} {sub}");
            assert_eq!(meta.params, c_small.params);
            assert!(c_sub.macs < profile(&cfg, None, [3, 32, 32]).unwrap().macs);
        }
    }
}

#[test]
fn exported_full_model_keeps_official_config() {
    let cfg = tiny(Arch::Pix2PixResnet);
    let vs = VarStore::new(Device::Cpu);
    let g = build_generator(&vs.root(), &cfg).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let meta = export_subnet(g.as_ref(), &g.search_space().largest(), dir.path()).unwrap();
    assert_eq!(
        meta.arch, cfg,
        "a full model exports as the standard architecture (loadable by PyTorch names)"
    );
    // A uniformly narrower sub-net becomes the standard model of a smaller ngf.
    let sub: SubnetConfig = "w=4_8_16_16_16_16_16_8_4;d=1_1_1_1".parse().unwrap();
    let meta = export_subnet(g.as_ref(), &sub, dir.path()).unwrap();
    assert_eq!((meta.arch.ngf, meta.arch.channels.clone()), (4, None));
}

#[test]
fn gradients_reach_sliced_supernet_weights() {
    tch::manual_seed(3);
    let cfg = tiny(Arch::Pix2PixResnet);
    let vs = VarStore::new(Device::Cpu);
    let g = build_generator(&vs.root(), &cfg).unwrap();
    let sub = g.search_space().smallest();
    g.forward(&input(1), &sub, Mode::Train)
        .unwrap()
        .sum(Kind::Float)
        .backward();
    let vars = vs.variables();
    let stem = vars["model.1.weight"].grad(); // [8, 3, 7, 7], active 2 outputs
    let k = sub.widths[0];
    assert!(
        stem.narrow(0, 0, k)
            .abs()
            .sum(Kind::Float)
            .double_value(&[])
            > 0.0
    );
    assert_eq!(
        stem.narrow(0, k, 8 - k)
            .abs()
            .sum(Kind::Float)
            .double_value(&[]),
        0.0
    );
    // a skipped block receives no gradient at all
    let skipped = sub.depth.iter().position(|d| !d).unwrap();
    let w = vars[&format!("model.{}.conv_block.1.weight", 10 + skipped)].grad();
    assert!(!w.defined() || w.abs().sum(Kind::Float).double_value(&[]) == 0.0);
}

#[test]
fn bn_recalibration_sets_subnet_statistics() {
    tch::manual_seed(4);
    let cfg = tiny(Arch::Pix2PixUnet);
    let vs = VarStore::new(Device::Cpu);
    let g = build_generator(&vs.root(), &cfg).unwrap();
    let sub = g.search_space().smallest();
    let batches: Vec<Tensor> = (0..4).map(|_| input(8)).collect();
    let all = Tensor::cat(&batches, 0);
    let train = tch::no_grad(|| g.forward(&all, &sub, Mode::Calibrate { momentum: 0.0 })).unwrap();
    let before = tch::no_grad(|| g.forward(&all, &sub, Mode::Eval)).unwrap();
    let n = recalibrate_bn(g.as_ref(), &sub, &batches).unwrap();
    assert_eq!(n, 4);
    let after = tch::no_grad(|| g.forward(&all, &sub, Mode::Eval)).unwrap();
    let err = |a: &Tensor| (a - &train).abs().mean(Kind::Float).double_value(&[]);
    assert!(
        err(&after) < 0.25 * err(&before),
        "before {} after {}",
        err(&before),
        err(&after)
    );
    // instance-norm families have nothing to recalibrate
    let r = build_generator(&vs.root().sub("r"), &tiny(Arch::Pix2PixResnet)).unwrap();
    assert_eq!(
        recalibrate_bn(r.as_ref(), &r.search_space().largest(), &batches).unwrap(),
        0
    );
}

#[test]
fn wrong_weights_files_are_reported_by_name() {
    // official tiny ResNet (ngf 4, 2 blocks) against an ngf-8 architecture: every conv mis-shaped
    let file = fixture("resnet_tiny.safetensors");
    let cfg = ArchConfig {
        ngf: 8,
        n_blocks: 2,
        ..ArchConfig::new(Arch::Pix2PixResnet)
    };
    let r = check_weights(&cfg, &file).unwrap();
    assert!(
        r.mis_shaped
            .iter()
            .any(|m| m.name == "model.1.weight" && m.found == vec![4, 3, 7, 7])
    );
    // three blocks expected, two in the file
    let cfg3 = ArchConfig {
        ngf: 4,
        n_blocks: 3,
        ..ArchConfig::new(Arch::Pix2PixResnet)
    };
    let r = check_weights(&cfg3, &file).unwrap();
    assert!(
        r.missing
            .contains(&"model.12.conv_block.1.weight".to_string()),
        "{r}"
    );
    assert!(r.unexpected.contains(&"model.19.weight".to_string()), "{r}");
    // a UNet file against a ResNet
    let e = load_weights(&cfg3, &fixture("unet_tiny.safetensors"), Device::Cpu)
        .err()
        .unwrap();
    let msg = e.to_string();
    assert!(matches!(e, NnError::WeightsMismatch { .. }));
    assert!(
        msg.contains("unet_tiny.safetensors") && msg.contains("unexpected: model.model.0.weight"),
        "{msg}"
    );
    // a missing file and a file that is not safetensors name the path
    let e = check_weights(&cfg3, &fixture("nope.safetensors"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope.safetensors"), "{e}");
    let e = check_weights(&cfg3, &fixture("make_pix2pix.py"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("make_pix2pix.py"), "{e}");
}

#[test]
fn subnet_outside_the_space_is_an_error() {
    let vs = VarStore::new(Device::Cpu);
    let g = build_generator(&vs.root(), &tiny(Arch::MobileResnet)).unwrap();
    let bad: SubnetConfig = "w=5_16_32_32_32_32_32_16_8;d=1_1_1_1".parse().unwrap();
    let e = g
        .forward(&input(1), &bad, Mode::Eval)
        .unwrap_err()
        .to_string();
    assert!(e.contains("position 0 (stem)"), "{e}");
    let e = g.forward(
        &Tensor::zeros([1, 4, 32, 32], (Kind::Float, Device::Cpu)),
        &g.search_space().largest(),
        Mode::Eval,
    );
    assert!(e.unwrap_err().to_string().contains("[N, 3, H, W]"));
    let e = profile(&tiny(Arch::Pix2PixUnet), None, [3, 40, 40])
        .unwrap_err()
        .to_string();
    assert!(e.contains("divisible by 32"), "{e}");
}

#[test]
fn infer_image_matches_official_pre_and_post_processing() {
    use ugc_nn::infer::{InferOptions, infer_image, load_input};
    let dir = tempfile::tempdir().unwrap();
    let inp = dir.path().join("in.png");
    let img = image::RgbImage::from_fn(32, 32, |x, y| {
        image::Rgb([(x * 8) as u8, (y * 8) as u8, 128])
    });
    img.save(&inp).unwrap();
    let cfg = ArchConfig {
        ngf: 4,
        n_blocks: 2,
        ..ArchConfig::new(Arch::Pix2PixResnet)
    };
    let x = load_input(&cfg, &inp, &InferOptions::default()).unwrap();
    assert_eq!(x.size(), vec![1, 3, 32, 32]);
    // Three float32 operations (/255, *2, -1) on values of magnitude <= 2: at most 3
    // roundings of half an ulp of 2 each.
    let within = 3.0 * ugc_tolerance::U_F32 * 2.0;
    assert!((x.double_value(&[0, 0, 0, 1]) - (8.0 / 255.0 * 2.0 - 1.0)).abs() <= within);
    let out = dir.path().join("out.png");
    let weights = fixture("resnet_tiny.safetensors");
    let r = infer_image(
        &cfg,
        None,
        &weights,
        &inp,
        &out,
        Device::Cpu,
        &InferOptions::default(),
    )
    .unwrap();
    assert_eq!(r.size, [32, 32]);
    // reference: the loaded model's output, mapped as tensor2im
    let m = load_weights(&cfg, &weights, Device::Cpu).unwrap();
    let y = tch::no_grad(|| {
        m.generator
            .forward(&x, &m.generator.search_space().largest(), Mode::Eval)
    })
    .unwrap();
    let expect = ((y.double_value(&[0, 1, 5, 7]) + 1.0) / 2.0 * 255.0) as u8;
    let got = image::open(&out).unwrap().to_rgb8().get_pixel(7, 5)[1];
    assert_eq!(got, expect);
    // resize to an official load size, and an unreadable input names its path
    let r = infer_image(
        &cfg,
        None,
        &weights,
        &inp,
        &out,
        Device::Cpu,
        &InferOptions {
            load_size: Some(64),
            ..InferOptions::default()
        },
    )
    .unwrap();
    assert_eq!(r.size, [64, 64]);
    let e = infer_image(
        &cfg,
        None,
        &weights,
        &weights,
        &out,
        Device::Cpu,
        &InferOptions::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("resnet_tiny.safetensors"), "{e}");
}
