//! Pix2PixHD, GauGAN (SPADE) and the multi-scale discriminator: cost against DESIGN §3,
//! official-name loading against PyTorch fixtures (`fixtures/official_hd_gaugan.py`),
//! export equivalence, gradients through sliced weights, BN recalibration, input errors.

use std::collections::HashMap;

use crate::common::{ErrorBudget, assert_matches_reference, convert_vars, fixture, max_abs_diff};
use tch::{Device, Kind, Tensor, nn::VarStore};
use ugc_nn::disc::{DiscConfig, build_discriminator};
use ugc_nn::spade::fold_spectral_norm;
use ugc_nn::{
    Arch, ArchConfig, Mode, NnError, SubnetConfig, Upsampling, build_generator, profile,
    recalibrate_bn,
};

/// The tensors of fixture file `name`.
fn fixture_tensors(name: &str) -> Vec<(String, Tensor)> {
    let p = fixture(name);
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

/// The ArchConfig of the GauGAN fixtures: ngf 2 -> trunk 32, nhidden 8 (the official layout
/// with a non-default hidden width).
fn gaugan_fixture_cfg(up: Upsampling) -> ArchConfig {
    ArchConfig {
        channels: Some(vec![
            32, 32, 8, 32, 8, 32, 8, 16, 16, 8, 8, 8, 8, 4, 4, 8, 2, 2, 8,
        ]),
        ..gaugan_cfg(8, 2, up)
    }
}

/// The GauGAN fixtures' deepest path: `fc`, then per SPADE block two SPADEs (mlp_shared
/// 8x3x3, gamma 8x3x3) and two 3x3 convs of at most 32 channels (288 terms): 6 per block,
/// 7 blocks (head, 2 middle, 4 up) for 42, and conv_img. Batch norm in eval mode uses its
/// running statistics: no sums.
fn gaugan_budget() -> ErrorBudget {
    ErrorBudget::new().products(32 * 9, 1 + 6 * 7 + 1)
}

/// Loads `model` (official names) into a fresh generator of `cfg` in `kind` and returns its
/// eval output on `x`.
fn run_generator(cfg: &ArchConfig, model: &[(String, Tensor)], x: &Tensor, kind: Kind) -> Tensor {
    let mut vs = VarStore::new(Device::Cpu);
    let g = build_generator(&vs.root(), cfg).unwrap();
    // Convert first: loading copies into the variables, which would round to their kind.
    convert_vars(&mut vs, kind);
    load_by_name(&vs, model);
    tch::no_grad(|| g.forward(&x.to_kind(kind), &g.search_space().largest(), Mode::Eval)).unwrap()
}

#[test]
fn pix2pixhd_loads_official_names_and_matches_pytorch() {
    let (model, io) = split_fixture(fixture_tensors("pix2pixhd_tiny.safetensors"));
    let cfg = hd_cfg(9, 4, 2, 2);
    // stem 7x7x9 = 441 terms, 2 downs, 2 blocks of 2 convs, 2 ups, head: 10 convolutions;
    // 9 instance norms, two sums each over at most 32x64 values.
    let budget = ErrorBudget::new().products(441, 10).sums(32 * 64, 2 * 9);
    let want = &io["__output__"];
    assert_matches_reference("pix2pixhd_tiny", &budget, &[("output", want)], |kind| {
        vec![run_generator(&cfg, &model, &io["__input__"], kind)]
    });
}

#[test]
fn gaugan_loads_official_names_and_matches_pytorch() {
    let (model, io) = split_fixture(fixture_tensors("gaugan_tiny.safetensors"));
    let cfg = gaugan_fixture_cfg(Upsampling::More);
    let want = &io["__output__"];
    assert_eq!(want.size(), vec![1, 3, 64, 128]);
    // The fixture's output must not be saturated, or the check only sees signs.
    let saturated = want
        .abs()
        .ge(0.999)
        .to_kind(Kind::Double)
        .mean(Kind::Double);
    assert!(saturated.double_value(&[]) < 0.05);
    assert_matches_reference(
        "gaugan_tiny",
        &gaugan_budget(),
        &[("output", want)],
        |kind| vec![run_generator(&cfg, &model, &io["__input__"], kind)],
    );
}

#[test]
fn gaugan_spectral_checkpoint_folds_and_matches_pytorch() {
    let (raw, io) = split_fixture(fixture_tensors("gaugan_tiny_spectral.safetensors"));
    assert!(raw.iter().any(|(n, _)| n == "up_0.conv_s.weight_orig"));
    // Folding runs in the precision of the tensors it is given, so each run folds its own
    // converted copy (folding in float32 first would put float32 rounding in the weights).
    let folded_in = |kind: Kind| {
        let mut model: Vec<(String, Tensor)> = raw
            .iter()
            .map(|(n, t)| (n.clone(), t.to_kind(kind)))
            .collect();
        let folded = fold_spectral_norm(&mut model).unwrap();
        (model, folded)
    };
    let (_, mut folded) = folded_in(Kind::Float);
    folded.sort();
    // conv_0 + conv_1 in 7 blocks, conv_s in the 4 up blocks.
    assert_eq!(folded.len(), 18);
    assert!(folded.contains(&"G_middle_1.conv_0".to_string()));
    let cfg = gaugan_fixture_cfg(Upsampling::Normal);
    // Folding divides each weight by its spectral norm, `u·(W v)`: one more dot product of
    // at most 288 terms per folded conv on the path.
    let budget = gaugan_budget().products(32 * 9, 14);
    let want = &io["__output__"];
    assert_matches_reference(
        "gaugan_tiny_spectral",
        &budget,
        &[("output", want)],
        |kind| {
            vec![run_generator(
                &cfg,
                &folded_in(kind).0,
                &io["__input__"],
                kind,
            )]
        },
    );

    // An incomplete triple is reported by name.
    let mut broken: Vec<(String, Tensor)> = fixture_tensors("gaugan_tiny_spectral.safetensors")
        .into_iter()
        .filter(|(n, _)| n != "head_0.conv_1.weight_v")
        .collect();
    let e = fold_spectral_norm(&mut broken).unwrap_err().to_string();
    assert!(e.contains("head_0.conv_1.weight_v"), "{e}");
}

#[test]
fn spectral_checkpoint_file_converts_and_loads_through_export_api() {
    let src = fixture("gaugan_tiny_spectral.safetensors");
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
        let (model, io) = split_fixture(fixture_tensors(file));
        let before = |name: &str| -> &Tensor {
            let n = name.strip_prefix("__after__.").unwrap();
            &model.iter().find(|(m, _)| m == n).unwrap().1
        };
        let mut want: Vec<(String, &Tensor)> = Vec::new();
        for i in 0..2 {
            for j in 0..5 {
                let name = format!("__output_{i}_{j}__");
                want.push((name.clone(), &io[&name]));
            }
        }
        let mut after: Vec<&String> = io.keys().filter(|n| n.starts_with("__after__.")).collect();
        after.sort();
        for name in &after {
            // The update is visible in the reference, so matching it proves it happened.
            assert!(max_abs_diff(before(name), &io[*name]) > 1e-6, "{name}");
            want.push(((*name).clone(), &io[*name]));
        }
        let cfg = DiscConfig {
            norm,
            ..DiscConfig::multiscale(11, 4)
        };
        // 5 4x4 convolutions per scale, the widest over 32 channels x 16 taps, and with
        // spectral norm one power iteration (2 products) and the division by sigma (1) each;
        // 3 instance norms over at most 17x33 values. u and v: one power iteration.
        let budget = ErrorBudget::new()
            .products(32 * 16, 5 * 4)
            .sums(17 * 33, 2 * 3)
            .sums(32 * 16, 2);
        let want_refs: Vec<(&str, &Tensor)> = want.iter().map(|(n, t)| (n.as_str(), *t)).collect();
        assert_matches_reference(file, &budget, &want_refs, |kind| {
            let mut vs = VarStore::new(Device::Cpu);
            let d = build_discriminator(&vs.root(), &cfg).unwrap();
            convert_vars(&mut vs, kind);
            load_by_name(&vs, &model);
            let out = tch::no_grad(|| d.forward(&io["__input__"].to_kind(kind), mode));
            assert_eq!(out.len(), 2);
            let mut got = Vec::new();
            for feats in &out {
                assert_eq!(feats.len(), 5, "n_layers + 1 outputs per scale");
                assert_eq!(feats.last().unwrap().size()[1], 1);
                got.extend(feats.iter().map(|f| f.shallow_clone()));
            }
            // One power iteration per training forward updates u and v as PyTorch does.
            let vars = vs.variables();
            got.extend(
                after
                    .iter()
                    .map(|n| vars[n.strip_prefix("__after__.").unwrap()].shallow_clone()),
            );
            got
        });
        assert_eq!(after.is_empty(), norm == ugc_nn::NormKind::Instance);
    }
}

// ------------------------------------------------------------------- export, grads

/// Forward of `sub` in the supernet equals the compact model built from `extract`.
/// `budget` is the rounding budget of `cfg` on `x` (ugc-tolerance): the two evaluations
/// differ only in the memory layout of the weights, so in the kernels' summation order.
fn check_export(
    cfg: &ArchConfig,
    sub: &SubnetConfig,
    x: &Tensor,
    mode: Mode,
    budget: &ErrorBudget,
) {
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
    let bound = budget.bound(ugc_tolerance::Precision::F32, 1.0);
    assert!(
        d <= bound,
        "{:?} {sub} {mode:?}: max diff {d} > bound {bound}",
        cfg.arch
    );
}

#[test]
fn pix2pixhd_export_equals_subnet() {
    let cfg = hd_cfg(9, 8, 2, 4);
    let x = Tensor::randn([2, 9, 32, 64], (Kind::Float, Device::Cpu));
    // widths: stem, down1, down2, 4 inner, up1, up2; blocks 0..2 fixed (min_blocks 3).
    let sub: SubnetConfig = "w=4_8_16_8_32_12_16_12_4;d=1_1_1_0".parse().unwrap();
    // stem 7x7x9 = 441 terms, 2 downs, 4 blocks of 2 convs, 2 ups, head: 14 convs; 13 norms
    // over at most 2 x 32 x 64 values (batch statistics in train mode).
    let budget = ErrorBudget::new()
        .products(441, 14)
        .sums(2 * 32 * 64, 2 * 13);
    check_export(&cfg, &sub, &x, Mode::Eval, &budget);
    let mut cfg2 = cfg.clone();
    cfg2.space.min_blocks = 1;
    let sub: SubnetConfig = "w=2_8_8_8_8_8_8_4_2;d=1_0_1_0".parse().unwrap();
    check_export(&cfg2, &sub, &x, Mode::Train, &budget);
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
    // As gaugan_budget(), plus in train mode the batch statistics of 2 SPADE norms per
    // block over at most 2 x 64 x 128 values.
    let budget = gaugan_budget().sums(2 * 64 * 128, 2 * 2 * 7);
    for sub in &subs {
        check_export(&cfg, sub, &x, Mode::Eval, &budget);
    }
    check_export(&cfg, &subs[3], &x, Mode::Train, &budget);
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
    // Both sides sum the same 8 x 2 x 4 values in float32, in possibly different orders;
    // the variance first squares deviations (one more rounding).
    let n = 8 * 2 * 4;
    let scale = |t: &Tensor| t.abs().max().double_value(&[]);
    let bm = ErrorBudget::new()
        .sums(n, 1)
        .bound(ugc_tolerance::Precision::F32, scale(&mean));
    let bv = ErrorBudget::new()
        .sums(n, 3)
        .bound(ugc_tolerance::Precision::F32, scale(&var));
    assert!(
        dm <= bm && dv <= bv,
        "{dm} > {bm} or {dv} > {bv}: {rm:?} {mean:?}"
    );
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
    // pix2pixHD's get_norm_layer has instance and batch (batch is built: variants.rs).
    let cfg = ArchConfig {
        norm: ugc_nn::NormKind::None,
        ..hd_cfg(9, 8, 2, 4)
    };
    let e = profile(&cfg, None, [9, 32, 32]).unwrap_err().to_string();
    assert!(
        e.contains("norm = none") && e.contains("instance or batch"),
        "{e}"
    );
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
