//! Pix2PixHD, GauGAN (SPADE) and the multi-scale discriminator: cost against DESIGN §3,
//! official-name loading against PyTorch fixtures (`fixtures/official_hd_gaugan.py`),
//! export equivalence, gradients through sliced weights, BN recalibration, input errors.

use std::collections::HashMap;
use std::path::PathBuf;

use tch::{Device, Kind, Tensor, nn::VarStore};
use ugc_nn::disc::{DiscConfig, build_discriminator};
use ugc_nn::spade::fold_spectral_norm;
use ugc_nn::{
    Arch, ArchConfig, Mode, NnError, SubnetConfig, Upsampling, build_generator, profile,
    recalibrate_bn,
};

fn fixture(name: &str) -> Vec<(String, Tensor)> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    Tensor::read_safetensors(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Copies `tensors` into `vs` by name. Every variable of `vs` must be given (except BN
/// `num_batches_tracked`, which the fixtures leave out) and every tensor must be used.
fn load_by_name(vs: &VarStore, tensors: &[(String, Tensor)]) {
    let vars = vs.variables();
    let given: HashMap<&str, &Tensor> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut missing = Vec::new();
    for (name, var) in &vars {
        match given.get(name.as_str()) {
            Some(src) => {
                assert_eq!(var.size(), src.size(), "shape of {name}");
                tch::no_grad(|| var.shallow_clone().copy_(src));
            }
            None if name.ends_with("num_batches_tracked") => {}
            None => missing.push(name.clone()),
        }
    }
    missing.sort();
    assert!(missing.is_empty(), "not in the file: {missing:?}");
    let mut unused: Vec<&str> = given
        .keys()
        .copied()
        .filter(|n| !vars.contains_key(*n))
        .collect();
    unused.sort();
    assert!(unused.is_empty(), "not in the model: {unused:?}");
}

/// Splits a fixture into model tensors and `__x__` test tensors.
fn split_fixture(all: Vec<(String, Tensor)>) -> (Vec<(String, Tensor)>, HashMap<String, Tensor>) {
    let (io, model): (Vec<_>, Vec<_>) = all.into_iter().partition(|(n, _)| n.starts_with("__"));
    (model, io.into_iter().collect())
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

fn hd_cfg(input_nc: i64, ngf: i64, n_down: i64, n_blocks: i64) -> ArchConfig {
    ArchConfig {
        input_nc,
        ngf,
        n_downsample: n_down,
        n_blocks,
        ..ArchConfig::new(Arch::Pix2PixHd)
    }
}

fn gaugan_cfg(input_nc: i64, ngf: i64, up: Upsampling) -> ArchConfig {
    let mut c = ArchConfig {
        input_nc,
        ngf,
        n_blocks: 2,
        upsampling: up,
        ..ArchConfig::new(Arch::Gaugan)
    };
    c.space.min_blocks = 1;
    c
}

fn within(actual: u64, reference: f64, rel: f64) -> bool {
    ((actual as f64) - reference).abs() <= rel * reference
}

// ------------------------------------------------------------------- cost (DESIGN §3)

#[test]
fn pix2pixhd_full_cost_matches_design_and_torchprofile() {
    let c = profile(&hd_cfg(36, 64, 4, 9), None, [36, 256, 512]).unwrap();
    assert!(within(c.macs, 151.32e9, 0.005), "{c:?}");
    assert!(within(c.params, 182.55e6, 0.005), "{c:?}");
    // torchprofile 0.1.0 on the PyTorch definition (`official_hd_gaugan.py profile`).
    assert_eq!(c.macs, 151_322_099_712);
    assert_eq!(c.params, 182_546_755);
}

#[test]
fn gaugan_full_cost_matches_design_more_and_normal() {
    let more = profile(&gaugan_cfg(36, 64, Upsampling::More), None, [36, 256, 512]).unwrap();
    assert!(within(more.macs, 281.41e9, 0.005), "{more:?}");
    assert!(within(more.params, 93.05e6, 0.005), "{more:?}");
    // Parameter count of the PyTorch definition (spectral norm adds buffers, not params).
    assert_eq!(more.params, 93_048_003);
    let normal = profile(
        &gaugan_cfg(36, 64, Upsampling::Normal),
        None,
        [36, 256, 512],
    )
    .unwrap();
    assert!(within(normal.macs, 292.8e9, 0.005), "{normal:?}");
    assert_eq!(normal.params, more.params);
}

#[test]
fn subnet_cost_is_smaller_and_equals_its_compact_model() {
    for cfg in [hd_cfg(9, 8, 2, 4), gaugan_cfg(9, 4, Upsampling::More)] {
        let vs = VarStore::new(Device::Cpu);
        let g = build_generator(&vs.root(), &cfg).unwrap();
        let space = g.search_space();
        let chw = [9, 64, 128];
        let full = g.cost(&space.largest(), chw).unwrap();
        let small = g.cost(&space.smallest(), chw).unwrap();
        assert!(
            small.macs < full.macs && small.params < full.params,
            "{cfg:?}"
        );
        // Params of the supernet = its variables (minus BN buffers).
        let n: i64 = vs
            .trainable_variables()
            .iter()
            .map(|t| t.numel() as i64)
            .sum();
        assert_eq!(full.params as i64, n, "{:?}", cfg.arch);
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(3);
        for _ in 0..5 {
            let sub = space.sample(&mut rng);
            let compact = g.compact_config(&sub).unwrap();
            let c1 = g.cost(&sub, chw).unwrap();
            let c2 = profile(&compact, None, chw).unwrap();
            assert_eq!(c1, c2, "{sub}");
        }
    }
}

// ------------------------------------------------------------------- official names

#[test]
fn pix2pixhd_loads_official_names_and_matches_pytorch() {
    let (model, io) = split_fixture(fixture("pix2pixhd_tiny.safetensors"));
    let vs = VarStore::new(Device::Cpu);
    let cfg = hd_cfg(9, 4, 2, 2);
    let g = build_generator(&vs.root(), &cfg).unwrap();
    load_by_name(&vs, &model);
    let y = g
        .forward(&io["__input__"], &g.search_space().largest(), Mode::Eval)
        .unwrap();
    assert!(max_abs_diff(&y, &io["__output__"]) < 1e-5);
}

#[test]
fn gaugan_loads_official_names_and_matches_pytorch() {
    let (model, io) = split_fixture(fixture("gaugan_tiny.safetensors"));
    let vs = VarStore::new(Device::Cpu);
    // ngf 2 -> trunk 32, nhidden 8: the official layout with a non-default hidden width.
    let cfg = ArchConfig {
        channels: Some(vec![
            32, 32, 8, 32, 8, 32, 8, 16, 16, 8, 8, 8, 8, 4, 4, 8, 2, 2, 8,
        ]),
        ..gaugan_cfg(8, 2, Upsampling::More)
    };
    let g = build_generator(&vs.root(), &cfg).unwrap();
    load_by_name(&vs, &model);
    let y = g
        .forward(&io["__input__"], &g.search_space().largest(), Mode::Eval)
        .unwrap();
    assert_eq!(y.size(), vec![1, 3, 64, 128]);
    assert!(max_abs_diff(&y, &io["__output__"]) < 1e-4);
}

#[test]
fn gaugan_spectral_checkpoint_folds_and_matches_pytorch() {
    let (mut model, io) = split_fixture(fixture("gaugan_tiny_spectral.safetensors"));
    assert!(model.iter().any(|(n, _)| n == "up_0.conv_s.weight_orig"));
    let mut folded = fold_spectral_norm(&mut model).unwrap();
    folded.sort();
    // conv_0 + conv_1 in 7 blocks, conv_s in the 4 up blocks.
    assert_eq!(folded.len(), 18);
    assert!(folded.contains(&"G_middle_1.conv_0".to_string()));
    let vs = VarStore::new(Device::Cpu);
    let cfg = ArchConfig {
        channels: Some(vec![
            32, 32, 8, 32, 8, 32, 8, 16, 16, 8, 8, 8, 8, 4, 4, 8, 2, 2, 8,
        ]),
        ..gaugan_cfg(8, 2, Upsampling::Normal)
    };
    let g = build_generator(&vs.root(), &cfg).unwrap();
    load_by_name(&vs, &model);
    let y = g
        .forward(&io["__input__"], &g.search_space().largest(), Mode::Eval)
        .unwrap();
    assert!(max_abs_diff(&y, &io["__output__"]) < 1e-4);

    // An incomplete triple is reported by name.
    let mut broken: Vec<(String, Tensor)> = fixture("gaugan_tiny_spectral.safetensors")
        .into_iter()
        .filter(|(n, _)| n != "head_0.conv_1.weight_v")
        .collect();
    let e = fold_spectral_norm(&mut broken).unwrap_err().to_string();
    assert!(e.contains("head_0.conv_1.weight_v"), "{e}");
}

#[test]
fn spectral_checkpoint_file_converts_and_loads_through_export_api() {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/gaugan_tiny_spectral.safetensors");
    let dir = tempfile::tempdir().unwrap();
    let dst = dir.path().join("plain.safetensors");
    let cfg = ArchConfig {
        channels: Some(vec![
            32, 32, 8, 32, 8, 32, 8, 16, 16, 8, 8, 8, 8, 4, 4, 8, 2, 2, 8,
        ]),
        ..gaugan_cfg(8, 2, Upsampling::Normal)
    };
    // The raw checkpoint is reported tensor by tensor: spectral-norm names are unexpected.
    let raw = ugc_nn::export::check_weights(&cfg, &src).unwrap();
    assert!(
        raw.unexpected
            .iter()
            .any(|n| n == "up_0.conv_s.weight_orig"),
        "{raw}"
    );
    assert!(
        raw.missing.iter().any(|n| n == "up_0.conv_s.weight"),
        "{raw}"
    );
    let folded = ugc_nn::spade::fold_spectral_norm_file(&src, &dst).unwrap();
    assert_eq!(folded.len(), 18);
    // After folding, only the fixture's test tensors and BN counters differ.
    let r = ugc_nn::export::check_weights(&cfg, &dst).unwrap();
    assert!(r.mis_shaped.is_empty(), "{r}");
    assert!(r.unexpected.iter().all(|n| n.starts_with("__")), "{r}");
    assert!(
        r.missing.iter().all(|n| n.ends_with("num_batches_tracked")),
        "{r}"
    );
    let e = ugc_nn::spade::fold_spectral_norm_file(&dir.path().join("nope.safetensors"), &dst)
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope.safetensors"), "{e}");
}

#[test]
fn multiscale_discriminator_loads_official_names_and_matches_pytorch() {
    for (file, norm, mode) in [
        (
            "multiscale_d_tiny.safetensors",
            ugc_nn::NormKind::Instance,
            Mode::Eval,
        ),
        (
            "multiscale_d_spectral_tiny.safetensors",
            ugc_nn::NormKind::SpectralInstance,
            Mode::Train,
        ),
    ] {
        let (model, io) = split_fixture(fixture(file));
        let after: Vec<(&String, &Tensor)> = io
            .iter()
            .filter(|(n, _)| n.starts_with("__after__."))
            .collect();
        let vs = VarStore::new(Device::Cpu);
        let cfg = DiscConfig {
            norm,
            ..DiscConfig::multiscale(11, 4)
        };
        let d = build_discriminator(&vs.root(), &cfg).unwrap();
        load_by_name(&vs, &model);
        let out = tch::no_grad(|| d.forward(&io["__input__"], mode));
        assert_eq!(out.len(), 2);
        for (i, feats) in out.iter().enumerate() {
            assert_eq!(feats.len(), 5, "n_layers + 1 outputs per scale");
            for (j, f) in feats.iter().enumerate() {
                let want = &io[&format!("__output_{i}_{j}__")];
                assert!(max_abs_diff(f, want) < 1e-4, "{file} scale {i} layer {j}");
            }
            assert_eq!(feats.last().unwrap().size()[1], 1);
        }
        // One power iteration per training forward updates u and v exactly as PyTorch does.
        let vars = vs.variables();
        for (name, want) in &after {
            let got = &vars[name.strip_prefix("__after__.").unwrap()];
            assert!(max_abs_diff(got, want) < 1e-5, "{name}");
            // The update really happened (the fixture stores u, v from before the forward).
            assert!(
                max_abs_diff(
                    got,
                    &model
                        .iter()
                        .find(|(n, _)| format!("__after__.{n}") == **name)
                        .unwrap()
                        .1
                ) > 1e-6,
                "{name}"
            );
        }
        assert_eq!(after.is_empty(), norm == ugc_nn::NormKind::Instance);
    }
}

// ------------------------------------------------------------------- export, grads

/// Forward of `sub` in the supernet equals the compact model built from `extract`.
fn check_export(cfg: &ArchConfig, sub: &SubnetConfig, x: &Tensor, mode: Mode) {
    tch::manual_seed(11);
    let vs = VarStore::new(Device::Cpu);
    let g = build_generator(&vs.root(), cfg).unwrap();
    // Non-trivial running statistics, so eval mode exercises their slicing.
    tch::no_grad(|| {
        for (name, t) in vs.variables() {
            if name.ends_with("running_mean") {
                t.shallow_clone()
                    .copy_(&(Tensor::randn(t.size(), (Kind::Float, Device::Cpu)) * 0.1));
            } else if name.ends_with("running_var") {
                t.shallow_clone()
                    .copy_(&(Tensor::rand(t.size(), (Kind::Float, Device::Cpu)) + 0.5));
            } else if name.ends_with("bias") {
                t.shallow_clone()
                    .copy_(&(Tensor::randn(t.size(), (Kind::Float, Device::Cpu)) * 0.1));
            } else if name.ends_with("weight") {
                t.shallow_clone()
                    .copy_(&(Tensor::randn(t.size(), (Kind::Float, Device::Cpu)) * 0.2));
            }
        }
    });
    let want = tch::no_grad(|| g.forward(x, sub, mode)).unwrap();
    let compact_cfg = g.compact_config(sub).unwrap();
    let tensors = g.extract(sub).unwrap();
    let cvs = VarStore::new(Device::Cpu);
    let compact = build_generator(&cvs.root(), &compact_cfg).unwrap();
    let with_counter: Vec<(String, Tensor)> = tensors
        .into_iter()
        .filter(|(n, _)| !n.ends_with("num_batches_tracked"))
        .collect();
    load_by_name(&cvs, &with_counter);
    let got = tch::no_grad(|| compact.forward(x, &compact.search_space().largest(), mode)).unwrap();
    let d = max_abs_diff(&got, &want);
    assert!(d < 1e-5, "{:?} {sub} {mode:?}: max diff {d}", cfg.arch);
}

#[test]
fn pix2pixhd_export_equals_subnet() {
    let cfg = hd_cfg(9, 8, 2, 4);
    let x = Tensor::randn([2, 9, 32, 64], (Kind::Float, Device::Cpu));
    // widths: stem, down1, down2, 4 inner, up1, up2; blocks 0..2 fixed (min_blocks 3).
    let sub: SubnetConfig = "w=4_8_16_8_32_12_16_12_4;d=1_1_1_0".parse().unwrap();
    check_export(&cfg, &sub, &x, Mode::Eval);
    let mut cfg2 = cfg.clone();
    cfg2.space.min_blocks = 1;
    let sub: SubnetConfig = "w=2_8_8_8_8_8_8_4_2;d=1_0_1_0".parse().unwrap();
    check_export(&cfg2, &sub, &x, Mode::Train);
}

#[test]
fn gaugan_export_equals_subnet_in_eval_and_train() {
    let cfg = gaugan_cfg(8, 2, Upsampling::More);
    let lab = Tensor::randint(8, [2, 64, 128], (Kind::Int64, Device::Cpu));
    let x = lab.one_hot(8).permute([0, 3, 1, 2]).to_kind(Kind::Float);
    let vs = VarStore::new(Device::Cpu);
    let space = build_generator(&vs.root(), &cfg).unwrap().search_space();
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(1);
    let mut subs = vec![space.largest(), space.smallest()];
    subs.extend((0..2).map(|_| space.sample(&mut rng)));
    assert!(subs.iter().any(|s| s.depth == vec![true, false]));
    for sub in &subs {
        check_export(&cfg, sub, &x, Mode::Eval);
    }
    check_export(&cfg, &subs[3], &x, Mode::Train);
}

#[test]
fn gradients_reach_only_the_active_slice_of_full_weights() {
    let cfg = gaugan_cfg(8, 2, Upsampling::Normal);
    let vs = VarStore::new(Device::Cpu);
    let g = build_generator(&vs.root(), &cfg).unwrap();
    let space = g.search_space();
    let sub = space.smallest();
    let x = Tensor::rand([2, 8, 32, 64], (Kind::Float, Device::Cpu));
    let y = g.forward(&x, &sub, Mode::Train).unwrap();
    assert_eq!(y.size(), vec![2, 3, 32, 64]);
    y.square().sum(Kind::Float).backward();
    let vars = vs.variables();
    // up_1: input = up_0.out active width, conv_0 output = up_1.middle active width.
    let names: Vec<&str> = space.widths.iter().map(|w| w.name.as_str()).collect();
    let at = |n: &str| sub.widths[names.iter().position(|x| *x == n).unwrap()];
    let (k_in, k_out) = (at("up_0.out"), at("up_1.middle"));
    let gw = vars["up_1.conv_0.weight"].grad();
    let full = vars["up_1.conv_0.weight"].size();
    assert!(k_in < full[1] && k_out < full[0]);
    let sum = |t: Tensor| t.abs().sum(Kind::Float).double_value(&[]);
    assert!(sum(gw.narrow(0, 0, k_out).narrow(1, 0, k_in)) > 0.0);
    assert_eq!(sum(gw.narrow(0, k_out, full[0] - k_out)), 0.0);
    assert_eq!(sum(gw.narrow(1, k_in, full[1] - k_in)), 0.0);
    // The SPADE hidden width slices mlp_shared's output channels.
    let h = at("up_1.hidden");
    let gs = vars["up_1.norm_0.mlp_shared.0.weight"].grad();
    assert!(sum(gs.narrow(0, 0, h)) > 0.0);
    assert_eq!(sum(gs.narrow(0, h, gs.size()[0] - h)), 0.0);

    // Pix2PixHD: the transposed conv's [in, out] slice.
    let cfg = hd_cfg(9, 8, 2, 4);
    let vs = VarStore::new(Device::Cpu);
    let g = build_generator(&vs.root(), &cfg).unwrap();
    let sub: SubnetConfig = "w=4_8_16_8_32_12_16_12_4;d=1_1_1_0".parse().unwrap();
    let x = Tensor::randn([1, 9, 32, 32], (Kind::Float, Device::Cpu));
    let y = g.forward(&x, &sub, Mode::Train).unwrap();
    assert_eq!(y.size(), vec![1, 3, 32, 32]);
    y.sum(Kind::Float).backward();
    let vars = vs.variables();
    // model.4+3*2 = 10.. blocks 10..13, ups at 14 and 17: up1 is [16 -> 12 of 16].
    let gt = vars["model.14.weight"].grad();
    assert_eq!(gt.size(), vec![32, 16, 3, 3]);
    assert!(sum(gt.narrow(0, 0, 16).narrow(1, 0, 12)) > 0.0);
    assert_eq!(sum(gt.narrow(1, 12, 4)), 0.0);
    assert_eq!(sum(gt.narrow(0, 16, 16)), 0.0);
    // The skipped block 3 gets no gradient.
    assert!(!vars["model.13.conv_block.1.weight"].grad().defined());
    assert!(vars["model.12.conv_block.1.weight"].grad().defined());
}

// ------------------------------------------------------------------- BN, errors

#[test]
fn gaugan_bn_recalibration_makes_eval_match_batch_statistics() {
    tch::manual_seed(5);
    let cfg = gaugan_cfg(8, 2, Upsampling::Normal);
    let vs = VarStore::new(Device::Cpu);
    let g = build_generator(&vs.root(), &cfg).unwrap();
    assert!(!g.batch_norms().is_empty());
    let sub = g.search_space().smallest();
    let lab = Tensor::randint(8, [8, 64, 128], (Kind::Int64, Device::Cpu));
    let x = lab.one_hot(8).permute([0, 3, 1, 2]).to_kind(Kind::Float);
    // Pretend other sub-nets trained: stale, wrong running statistics.
    tch::no_grad(|| {
        for (name, t) in vs.variables() {
            if name.ends_with("running_mean") {
                let _ = t.shallow_clone().fill_(3.0);
            } else if name.ends_with("running_var") {
                let _ = t.shallow_clone().fill_(0.05);
            }
        }
    });
    let batch_stats =
        tch::no_grad(|| g.forward(&x, &sub, Mode::Calibrate { momentum: 0.0 })).unwrap();
    let stale = tch::no_grad(|| g.forward(&x, &sub, Mode::Eval)).unwrap();
    let n = recalibrate_bn(g.as_ref(), &sub, [&x]).unwrap();
    assert_eq!(n, 1);
    let fresh = tch::no_grad(|| g.forward(&x, &sub, Mode::Eval)).unwrap();
    let (d_stale, d_fresh) = (
        max_abs_diff(&stale, &batch_stats),
        max_abs_diff(&fresh, &batch_stats),
    );
    // Running variance is unbiased, batch variance biased: close, not identical.
    assert!(d_fresh * 5.0 < d_stale, "fresh {d_fresh} stale {d_stale}");
    // Exactly: head_0's first norm now holds the statistics of `fc`'s active output.
    let vars = vs.variables();
    let k = sub.widths[0];
    let lat = x.upsample_nearest2d([2, 4], None, None);
    let fc = lat.conv2d(
        &vars["fc.weight"].narrow(0, 0, k),
        Some(&vars["fc.bias"].narrow(0, 0, k)),
        [1, 1],
        [1, 1],
        [1, 1],
        1,
    );
    let dims = [0i64, 2, 3];
    let mean = fc.mean_dim(dims.as_slice(), false, Kind::Float);
    let var = fc.var_dim(dims.as_slice(), true, false);
    let rm = vars["head_0.norm_0.param_free_norm.running_mean"].narrow(0, 0, k);
    let rv = vars["head_0.norm_0.param_free_norm.running_var"].narrow(0, 0, k);
    let (dm, dv) = (max_abs_diff(&rm, &mean), max_abs_diff(&rv, &var));
    assert!(dm < 1e-6 && dv < 1e-6, "{dm} {dv} {rm:?} {mean:?}");
}

#[test]
fn bad_inputs_and_configs_are_typed_errors() {
    let vs = VarStore::new(Device::Cpu);
    let g = build_generator(&vs.root(), &gaugan_cfg(8, 2, Upsampling::More)).unwrap();
    let sub = g.search_space().largest();
    let e = g
        .forward(
            &Tensor::zeros([1, 7, 64, 64], (Kind::Float, Device::Cpu)),
            &sub,
            Mode::Eval,
        )
        .unwrap_err();
    assert!(
        matches!(e, NnError::BadInput { .. }) && e.to_string().contains("8 label"),
        "{e}"
    );
    let e = g
        .forward(
            &Tensor::zeros([1, 8, 48, 64], (Kind::Float, Device::Cpu)),
            &sub,
            Mode::Eval,
        )
        .unwrap_err();
    assert!(e.to_string().contains("multiples of 64"), "{e}");
    let bad: SubnetConfig = "w=3".parse().unwrap();
    assert!(matches!(
        g.cost(&bad, [8, 64, 64]),
        Err(NnError::NotInSpace { .. })
    ));
    let e = profile(&hd_cfg(36, 64, 4, 9), None, [36, 8, 8]).unwrap_err();
    assert!(e.to_string().contains("4 downsamplings"), "{e}");
    let cfg = ArchConfig {
        channels: Some(vec![4, 4]),
        ..hd_cfg(9, 8, 2, 4)
    };
    let e = profile(&cfg, None, [9, 32, 32]).unwrap_err().to_string();
    assert!(
        e.contains("channels") && e.contains("9 elastic positions"),
        "{e}"
    );
    let cfg = ArchConfig {
        norm: ugc_nn::NormKind::Batch,
        ..hd_cfg(9, 8, 2, 4)
    };
    let e = profile(&cfg, None, [9, 32, 32]).unwrap_err().to_string();
    assert!(e.contains("norm = batch"), "{e}");
    let e = profile(
        &ArchConfig {
            n_blocks: 0,
            ..gaugan_cfg(8, 2, Upsampling::More)
        },
        None,
        [8, 64, 64],
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("n_blocks"), "{e}");
}
