//! Stage-two kinds through the stage contract on tiny data: search -> teachers -> adf ->
//! distill, with a hand-made supernet (random weights saved in the supernet output format).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::common::{input, run, run_with, schema, synth_and_split};
use serde_json::{Value, json};
use tch::{Device, Kind, Tensor, nn::VarStore};
use ugc_data::{SplitManifest, SplitStage, SynthStage};
use ugc_engine::{
    CancelToken, DeviceKind, NullProgress, Progress, StageContext, StageError, StageInput,
};
use ugc_method::adf::AdfStage;
use ugc_method::distill::DistillStage;
use ugc_method::search::{SearchConfigs, SearchStage};
use ugc_method::teachers::TeachersStage;
use ugc_nn::{Arch, ArchConfig, DiscConfig, Mode, SpaceSpec, SubnetConfig};

/// Runs `teachers` over a search output and a supernet (plus `extra` inputs) into a fresh
/// directory.
fn teachers(
    over: Value,
    search: &Path,
    supernet: &Path,
    extra: &[StageInput],
) -> Result<tempfile::TempDir, StageError> {
    let out = tempfile::tempdir().unwrap();
    let mut inputs = vec![input("search", search), input("supernet", supernet)];
    inputs.extend_from_slice(extra);
    run(
        &TeachersStage::new(schema("teachers")),
        over,
        &inputs,
        out.path(),
    )?;
    Ok(out)
}

/// Runs `adf` over exported teachers and a split into a fresh directory.
fn adf(over: Value, teachers: &Path, split: &Path) -> Result<tempfile::TempDir, StageError> {
    let out = tempfile::tempdir().unwrap();
    run(
        &AdfStage::new(schema("adf")),
        over,
        &[input("teachers", teachers), input("split", split)],
        out.path(),
    )?;
    Ok(out)
}

/// The five inputs of `distill`.
fn distill_inputs(
    split: &Path,
    teachers: &Path,
    search: &Path,
    supernet: &Path,
    adf: &Path,
) -> Vec<StageInput> {
    vec![
        input("split", split),
        input("teachers", teachers),
        input("search", search),
        input("supernet", supernet),
        input("adf", adf),
    ]
}

/// A randomly initialised supernet of `a` with a PatchGAN of `ndf`, in the `supernet`
/// stage's output format.
fn random_supernet(a: &ArchConfig, ndf: i64) -> tempfile::TempDir {
    let sup_dir = tempfile::tempdir().unwrap();
    let sd = sup_dir.path().join("supernet");
    std::fs::create_dir_all(&sd).unwrap();
    let vs = VarStore::new(Device::Cpu);
    let _g = ugc_nn::build_generator(&vs.root(), a).unwrap();
    vs.save(sd.join("generator.safetensors")).unwrap();
    std::fs::write(sd.join("arch.json"), serde_json::to_string(a).unwrap()).unwrap();
    let dc = DiscConfig::patchgan(6, ndf);
    let dvs = VarStore::new(Device::Cpu);
    let _d = ugc_nn::build_discriminator(&dvs.root(), &dc).unwrap();
    dvs.save(sd.join("discriminator.safetensors")).unwrap();
    std::fs::write(sd.join("disc.json"), serde_json::to_string(&dc).unwrap()).unwrap();
    sup_dir
}

fn json_of(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn arch() -> ArchConfig {
    ArchConfig {
        ngf: 8,
        n_blocks: 4,
        space: SpaceSpec {
            min_blocks: 2,
            ..SpaceSpec::default()
        },
        ..ArchConfig::new(Arch::MobileResnet)
    }
}

const INPUT: [i64; 3] = [3, 32, 32];

/// synth -> split on 32x32 edges2photo, and a random supernet in the supernet stage's format.
struct Fixture {
    _dirs: Vec<tempfile::TempDir>,
    split: PathBuf,
    supernet: PathBuf,
}

fn fixture() -> Fixture {
    fixture_with(0.5)
}

fn fixture_with(label_ratio: f64) -> Fixture {
    // Seeded draws for the random supernet: no parallel test may move the generator.
    let _rng = ugc_engine::testing::torch_rng();
    tch::manual_seed(0);
    let (synth_dir, split_dir) = synth_and_split(
        json!({"task": "edges2photo", "n": 24, "n_test": 4, "size": 32}),
        json!({"label_ratio": label_ratio, "holdout": 0.2}),
    );
    let sup_dir = random_supernet(&arch(), 8);
    Fixture {
        split: split_dir.path().to_path_buf(),
        supernet: sup_dir.path().to_path_buf(),
        _dirs: vec![synth_dir, split_dir, sup_dir],
    }
}

fn search(f: &Fixture, out: &Path, seed: u64) {
    run(
        &SearchStage::new(schema("search")),
        json!({"budget_ratio": 0.5, "wide_budget_ratio": 0.7, "deep_budget_ratio": 0.7,
               "input_size": INPUT, "population": 8, "generations": 2, "batch_size": 4,
               "eval_batches": 2, "seed": seed}),
        &[input("supernet", &f.supernet), input("split", &f.split)],
        out,
    )
    .unwrap();
}

#[test]
fn search_then_teachers_then_adf() {
    let _rng = ugc_engine::testing::torch_rng();
    let f = fixture();
    let s_out = tempfile::tempdir().unwrap();
    search(&f, s_out.path(), 0);
    let a = arch();
    let space = ugc_nn::search_space(&a).unwrap();
    let largest = ugc_nn::profile(&a, None, INPUT).unwrap().macs;
    let c = SearchConfigs::load(s_out.path()).unwrap();
    // Budgets hold, measured again with the profiler; MACs in configs.json are exact.
    for (cc, ratio) in [
        (&c.student, 0.5),
        (&c.wide_teacher, 0.7),
        (&c.deep_teacher, 0.7),
    ] {
        let sub: SubnetConfig = cc.config.parse().unwrap();
        let m = ugc_nn::profile(&a, Some(&sub), INPUT).unwrap();
        assert_eq!((m.macs, m.params), (cc.macs, cc.params));
        assert!(m.macs as f64 <= ratio * largest as f64, "{}", cc.config);
    }
    let wide: SubnetConfig = c.wide_teacher.config.parse().unwrap();
    let deep: SubnetConfig = c.deep_teacher.config.parse().unwrap();
    assert_eq!(wide.depth, space.smallest().depth);
    assert!(deep.depth.iter().all(|d| *d));
    assert_eq!(c.largest.macs, largest);
    // The searched student is exported as a compact model of exactly that sub-net.
    let (meta, _) =
        ugc_nn::export::load_model(&s_out.path().join("model"), tch::Device::Cpu).unwrap();
    assert_eq!(meta.source_subnet, c.student.config);
    assert_eq!(meta.params, c.student.params);
    // Every evaluated candidate is listed with its Pareto flag; the front is non-empty.
    let pareto = json_of(&s_out.path().join("pareto.json"));
    let cands = pareto["candidates"].as_array().unwrap();
    let csv = std::fs::read_to_string(s_out.path().join("pareto.csv")).unwrap();
    assert_eq!(csv.lines().count(), cands.len() + 1);
    assert!(cands.iter().any(|c| c["pareto"] == true));
    let metrics = json_of(&s_out.path().join("metrics.json"));
    assert_eq!(
        metrics["search.evaluated"].as_u64().unwrap() as usize,
        cands.len()
    );
    // Deterministic for a seed.
    let again = tempfile::tempdir().unwrap();
    search(&f, again.path(), 0);
    assert_eq!(SearchConfigs::load(again.path()).unwrap(), c);

    // Impossible budgets and bad profiling shapes are refused naming the parameter.
    let bad = tempfile::tempdir().unwrap();
    let deps = [input("supernet", &f.supernet), input("split", &f.split)];
    let search_kind = SearchStage::new(schema("search"));
    let e = run(
        &search_kind,
        json!({"budget_macs": 1000.0, "input_size": INPUT}),
        &deps,
        bad.path(),
    )
    .unwrap_err();
    assert!(matches!(e, StageError::Config(_)), "{e}");
    assert!(e.to_string().contains("budget_macs"), "{e}");
    let e = run(
        &search_kind,
        json!({"input_size": [3, 32]}),
        &deps,
        bad.path(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("input_size"), "{e}");

    // Teachers: exported compact models compute the supernet sub-net's output.
    let t_out = teachers(json!({"strategy": "multi"}), s_out.path(), &f.supernet, &[]).unwrap();
    let listed = json_of(&t_out.path().join("teachers.json"));
    assert_eq!(listed.as_array().unwrap().len(), 2);
    let mut svs = VarStore::new(Device::Cpu);
    let sup = ugc_nn::build_generator(&svs.root(), &a).unwrap();
    svs.load(f.supernet.join("supernet/generator.safetensors"))
        .unwrap();
    let x = Tensor::rand([2, 3, 32, 32], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
    for (role, sub) in [("wide", &wide), ("deep", &deep)] {
        let (meta, m) =
            ugc_nn::export::load_model(&t_out.path().join("teachers").join(role), Device::Cpu)
                .unwrap();
        assert_eq!(meta.source_subnet, sub.to_string());
        let g = &m.generator;
        let y = g
            .forward(&x, &g.search_space().largest(), Mode::Eval)
            .unwrap();
        let want = sup.forward(&x, sub, Mode::Eval).unwrap();
        let diff = (y - want).abs().max().double_value(&[]);
        // Two float32 evaluations of one mobile ResNet (ngf 8, 4 blocks) with the weights in
        // another layout: 22 convolutions of at most 7x7x8 = 392 terms, at most 21 instance
        // norms over <= 32x32 values; outputs within [-1, 1] (ugc-tolerance).
        let bound = ugc_tolerance::ErrorBudget::new()
            .products(392, 22)
            .sums(32 * 32, 2 * 21)
            .bound(ugc_tolerance::Precision::F32, 1.0);
        assert!(diff <= bound, "{role}: {diff} > {bound}");
        assert_eq!(
            ugc_nn::profile(&meta.arch, None, INPUT).unwrap().macs,
            role_macs(&c, role)
        );
    }

    // ADF: every unlabeled input scored, the decision and pseudo-labels written.
    let n_unl = SplitManifest::load(&f.split).unwrap().unlabeled().len();
    for enabled in [true, false] {
        let a_out = tempfile::tempdir().unwrap();
        run(
            &AdfStage::new(schema("adf")),
            json!({"enabled": enabled, "batch_size": 4}),
            &[input("teachers", t_out.path()), input("split", &f.split)],
            a_out.path(),
        )
        .unwrap();
        let d = json_of(&a_out.path().join("adf.json"));
        let kept = d["kept"].as_array().unwrap().len();
        let dropped = d["dropped"].as_array().unwrap().len();
        assert_eq!(kept + dropped, n_unl);
        assert_eq!(d["criterion"], "agreement");
        if !enabled {
            assert_eq!(dropped, 0);
        }
        let csv = std::fs::read_to_string(a_out.path().join("scores.csv")).unwrap();
        assert_eq!(csv.lines().count(), n_unl + 1);
        assert_eq!(
            std::fs::read_dir(a_out.path().join("pseudo"))
                .unwrap()
                .count(),
            n_unl
        );
        let m = json_of(&a_out.path().join("metrics.json"));
        assert_eq!(m["adf.kept"].as_u64().unwrap() as usize, kept);
    }
    // One teacher and no supernet: the discriminator criterion is refused with the reason.
    let t1 = teachers(json!({"strategy": "deep"}), s_out.path(), &f.supernet, &[]).unwrap();
    let e = adf(json!({}), t1.path(), &f.split).unwrap_err().to_string();
    assert!(e.contains("supernet"), "{e}");
    let a_out = tempfile::tempdir().unwrap();
    // With the supernet among the deps its discriminator scores the single teacher.
    run(
        &AdfStage::new(schema("adf")),
        json!({"threshold": "otsu"}),
        &[
            input("teachers", t1.path()),
            input("split", &f.split),
            input("supernet", &f.supernet),
        ],
        a_out.path(),
    )
    .unwrap();
    let d = json_of(&a_out.path().join("adf.json"));
    assert_eq!(d["criterion"], "discriminator");
    assert_eq!(d["threshold_rule"]["rule"], "otsu");
    let scores: Vec<f64> = std::fs::read_to_string(a_out.path().join("scores.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap().parse().unwrap())
        .collect();
    assert_eq!(scores.len(), n_unl);
    assert!(scores.iter().all(|s| s.is_finite()));
    // Scores differ per input (a constant would make the filter meaningless).
    assert!(scores.iter().any(|s| *s != scores[0]), "{scores:?}");
}

fn role_macs(c: &SearchConfigs, role: &str) -> u64 {
    match role {
        "wide" => c.wide_teacher.macs,
        "deep" => c.deep_teacher.macs,
        _ => c.largest.macs,
    }
}

/// Cancels the token once the loop reports step `at`.
struct CancelAt {
    token: CancelToken,
    at: u64,
    last: AtomicU64,
}

impl Progress for CancelAt {
    fn start(&self, _phase: &str, _total: u64) {}
    fn set(&self, step: u64) {
        self.last.store(step, Ordering::SeqCst);
        if step >= self.at {
            self.token.cancel();
        }
    }
    fn message(&self, _msg: &str) {}
}

#[test]
fn distill_runs_resumes_after_cancel_and_exports_the_searched_student() {
    let _rng = ugc_engine::testing::torch_rng();
    let f = fixture();
    let s_out = tempfile::tempdir().unwrap();
    search(&f, s_out.path(), 1);
    let t_out = teachers(json!({"strategy": "multi"}), s_out.path(), &f.supernet, &[]).unwrap();
    let a_out = adf(json!({"batch_size": 4}), t_out.path(), &f.split).unwrap();
    let inputs = distill_inputs(
        &f.split,
        t_out.path(),
        s_out.path(),
        &f.supernet,
        a_out.path(),
    );
    let params = json!({"steps": 4, "batch_size": 2, "unlabeled_batch_size": 2,
                        "adf_every": 2, "checkpoint_every": 0, "threads": 1, "seed": 3,
                        "distill_weights": {"ssim": 10.0, "style": 10000.0,
                                            "feature": 10.0, "tv": 0.00001}});
    let kind = DistillStage::new(schema("distill"));

    // Uninterrupted reference run.
    let full = tempfile::tempdir().unwrap();
    run(&kind, params.clone(), &inputs, full.path()).unwrap();

    // Cancelled after 3 steps (past the ADF re-scoring at step 2, so the resumed run
    // re-scores nothing and must take the last decision from the checkpoint), then resumed.
    let scratch = tempfile::tempdir().unwrap();
    let first = tempfile::tempdir().unwrap();
    let token = CancelToken::new();
    let cancel_at = CancelAt {
        token: token.clone(),
        at: 3,
        last: AtomicU64::new(0),
    };
    let e = run_with(
        &kind,
        params.clone(),
        &inputs,
        first.path(),
        scratch.path(),
        &cancel_at,
        &token,
    )
    .unwrap_err();
    assert!(matches!(e, StageError::Cancelled), "{e}");
    assert!(!first.path().join("model").exists());
    let ckpt = json_of(&scratch.path().join("ckpt/latest.json"));
    assert_eq!(ckpt["step"], 3, "the resumed run continues from step 3");
    // Settings outside the cache key (here the loader thread count) may change on resume,
    // and so may the order of a nested map's keys (the same cache key, so the same scratch
    // directory, must resume rather than be refused).
    let mut params = params;
    params["threads"] = json!(2);
    params["distill_weights"] =
        json!({"tv": 0.00001, "feature": 10.0, "style": 10000.0, "ssim": 10.0});
    let resumed = tempfile::tempdir().unwrap();
    run_with(
        &kind,
        params,
        &inputs,
        resumed.path(),
        scratch.path(),
        &NullProgress,
        &CancelToken::new(),
    )
    .unwrap();
    // Resume is invisible in the outputs: the student, the final teachers, adf_online/,
    // the log, samples and metrics.json are byte-identical to the uninterrupted run's.
    assert!(full.path().join("adf_online").is_dir());
    ugc_engine::testing::assert_same_tree(full.path(), resumed.path());
    let m = json_of(&resumed.path().join("metrics.json"));
    assert!(m.get("distill.resumed_from").is_none(), "{m}");

    // The compact student loads and costs exactly the searched config's MACs.
    let c = SearchConfigs::load(s_out.path()).unwrap();
    let (meta, model) =
        ugc_nn::export::load_model(&resumed.path().join("model"), Device::Cpu).unwrap();
    assert_eq!(
        meta.source_subnet,
        model.generator.search_space().largest().to_string()
    );
    let cost = ugc_nn::profile(&meta.arch, None, INPUT).unwrap();
    assert_eq!(cost.macs, c.student.macs);
    assert_eq!(cost.params, c.student.params);
    for role in ["wide", "deep"] {
        assert!(
            resumed
                .path()
                .join("teachers_final")
                .join(role)
                .join("model.json")
                .is_file()
        );
    }
    let log = std::fs::read_to_string(resumed.path().join("log.csv")).unwrap();
    assert_eq!(log.lines().count(), 5, "{log}");
    let header: Vec<&str> = log.lines().next().unwrap().split(',').collect();
    assert!(header.contains(&"adf_kept"), "{log}");
    let col = header.iter().position(|h| *h == "unlabeled_used").unwrap();
    let used: f64 = log
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(col).unwrap().parse::<f64>().unwrap())
        .sum();
    assert!(
        used > 0.0,
        "no ADF-kept unlabeled input reached the student: {log}"
    );
    assert!(resumed.path().join("adf_online/scores.csv").is_file());
    assert!(m["distill.holdout_l1"].as_f64().unwrap().is_finite());
}

/// Wall-clock figures of the stage-two kinds at quick-start scale (random supernet weights:
/// quality is not measured). Run: `cargo test -p ugc-method --test stage_two -- --ignored
/// --nocapture`.
#[test]
#[ignore]
fn quickstart_scale_timings() {
    let _rng = ugc_engine::testing::torch_rng();
    use std::time::Instant;
    let (_synth_dir, split_dir) = synth_and_split(
        json!({"task": "labels2photo", "n": 160, "n_test": 40, "size": 32}),
        json!({"label_ratio": 0.25}),
    );
    let a = ArchConfig {
        ngf: 16,
        ..ArchConfig::new(Arch::MobileResnet)
    };
    let sup_dir = random_supernet(&a, 16);
    let (split, sup) = (split_dir.path(), sup_dir.path());

    let t = Instant::now();
    let s_out = tempfile::tempdir().unwrap();
    run(
        &SearchStage::new(schema("search")),
        json!({"population": 20, "generations": 3, "eval_batches": 2, "torch_threads": 1}),
        &[input("supernet", sup), input("split", split)],
        s_out.path(),
    )
    .unwrap();
    let evaluated = json_of(&s_out.path().join("metrics.json"))["search.evaluated"].clone();
    println!(
        "search (population 20, 3 generations, 2 hold-out batches of 8): {:.1}s, {evaluated} candidates scored",
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let t_out = teachers(json!({"strategy": "multi"}), s_out.path(), sup, &[]).unwrap();
    println!("teachers (multi): {:.2}s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    let a_out = adf(json!({}), t_out.path(), split).unwrap();
    let n = SplitManifest::load(split).unwrap().unlabeled().len();
    println!(
        "adf ({n} unlabeled inputs): {:.2}s",
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let d_out = tempfile::tempdir().unwrap();
    run(
        &DistillStage::new(schema("distill")),
        json!({"steps": 50, "adf_every": 25, "torch_threads": 1}),
        &distill_inputs(split, t_out.path(), s_out.path(), sup, a_out.path()),
        d_out.path(),
    )
    .unwrap();
    println!(
        "distill (50 steps, batch 4 + 4 unlabeled, 2 teachers, 1 re-scoring): {:.1}s",
        t.elapsed().as_secs_f64()
    );
}

/// The real `supernet` stage's output feeds the stage-two chain, on a batch-norm family
/// (UNet: per-candidate and per-teacher BN recalibration paths).
#[test]
fn supernet_stage_output_feeds_search_teachers_adf_distill_on_a_bn_family() {
    let _rng = ugc_engine::testing::torch_rng();
    use ugc_method::supernet::SupernetStage;
    let f = fixture();
    let sup_out = tempfile::tempdir().unwrap();
    run(
        &SupernetStage::new(schema("supernet")),
        json!({"arch": {"arch": "pix2pix-unet", "ngf": 4, "num_downs": 5},
               "steps": 2, "batch_size": 2, "ndf": 4, "threads": 1, "torch_threads": 1,
               "checkpoint_every": 0, "sample_every": 0}),
        &[input("split", &f.split)],
        sup_out.path(),
    )
    .unwrap();
    let s_out = tempfile::tempdir().unwrap();
    let deps = [input("supernet", sup_out.path()), input("split", &f.split)];
    run(
        &SearchStage::new(schema("search")),
        json!({"input_size": INPUT, "population": 6, "generations": 1, "batch_size": 4,
               "eval_batches": 1, "calib_batches": 1, "metric": "ssim", "torch_threads": 1}),
        &deps,
        s_out.path(),
    )
    .unwrap();
    let c = SearchConfigs::load(s_out.path()).unwrap();
    assert!(c.student.score <= 1.0 && c.student.score > -1.0, "{c:?}");
    // A BN teacher is recalibrated before export, so the teachers stage needs the split.
    let e = teachers(
        json!({"strategy": "multi"}),
        s_out.path(),
        sup_out.path(),
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("split"), "{e}");
    let t_out = teachers(
        json!({"strategy": "multi", "calib_batches": 1}),
        s_out.path(),
        sup_out.path(),
        &[input("split", &f.split)],
    )
    .unwrap();
    let a_out = adf(
        json!({"threshold": "otsu", "write_pseudo": false}),
        t_out.path(),
        &f.split,
    )
    .unwrap();
    let d_out = tempfile::tempdir().unwrap();
    run(
        &DistillStage::new(schema("distill")),
        json!({"steps": 2, "batch_size": 2, "unlabeled_batch_size": 2, "adf_every": 1,
               "threads": 1, "torch_threads": 1}),
        &distill_inputs(
            &f.split,
            t_out.path(),
            s_out.path(),
            sup_out.path(),
            a_out.path(),
        ),
        d_out.path(),
    )
    .unwrap();
    // Without an adf dep every unlabeled input is used and nothing is re-scored.
    let d2 = tempfile::tempdir().unwrap();
    run(
        &DistillStage::new(schema("distill")),
        json!({"steps": 1, "batch_size": 2, "unlabeled_batch_size": 2, "adf_every": 1,
               "threads": 1, "torch_threads": 1}),
        &[
            input("split", &f.split),
            input("teachers", t_out.path()),
            input("search", s_out.path()),
            input("supernet", sup_out.path()),
        ],
        d2.path(),
    )
    .unwrap();
    let n_unl = SplitManifest::load(&f.split).unwrap().unlabeled().len() as f64;
    let m = json_of(&d2.path().join("metrics.json"));
    assert_eq!(m["distill.adf_kept_final"].as_f64().unwrap(), n_unl);
    assert!(!d2.path().join("adf_online").exists());
    // A cancelled search stops between candidates and commits nothing.
    let token = CancelToken::new();
    token.cancel();
    let s2 = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let e = run_with(
        &SearchStage::new(schema("search")),
        json!({"input_size": INPUT, "population": 6, "generations": 1}),
        &deps,
        s2.path(),
        scratch.path(),
        &NullProgress,
        &token,
    )
    .unwrap_err();
    assert!(matches!(e, StageError::Cancelled), "{e}");
    assert!(!s2.path().join("configs.json").exists());
    let (meta, _) = ugc_nn::export::load_model(&d_out.path().join("model"), Device::Cpu).unwrap();
    assert_eq!(
        ugc_nn::profile(&meta.arch, None, INPUT).unwrap().macs,
        c.student.macs
    );
}

/// Does distillation improve the searched student? Hold-out L1 of the student at its
/// supernet initialisation (the search score) vs after `distill`, on a briefly trained
/// supernet. Prints figures; run with `-- --ignored --nocapture`.
#[test]
#[ignore]
fn distill_lowers_the_student_holdout_l1() {
    let _rng = ugc_engine::testing::torch_rng();
    use std::time::Instant;
    use ugc_method::supernet::SupernetStage;
    let (_synth_dir, split_dir) = synth_and_split(
        json!({"task": "edges2photo", "n": 120, "n_test": 20, "size": 32}),
        json!({"label_ratio": 0.25, "holdout": 0.15}),
    );
    let split = split_dir.path();
    let t = Instant::now();
    let sup_out = tempfile::tempdir().unwrap();
    run(
        &SupernetStage::new(schema("supernet")),
        json!({"arch": {"arch": "mobile-resnet", "ngf": 16, "n_blocks": 6},
               "steps": 150, "batch_size": 4, "ndf": 16, "threads": 1, "torch_threads": 1,
               "checkpoint_every": 0, "sample_every": 0}),
        &[input("split", split)],
        sup_out.path(),
    )
    .unwrap();
    println!("supernet 150 steps: {:.1}s", t.elapsed().as_secs_f64());
    let s_out = tempfile::tempdir().unwrap();
    run(
        &SearchStage::new(schema("search")),
        json!({"population": 20, "generations": 3, "eval_batches": 8, "torch_threads": 1}),
        &[input("supernet", sup_out.path()), input("split", split)],
        s_out.path(),
    )
    .unwrap();
    let c = SearchConfigs::load(s_out.path()).unwrap();
    println!(
        "search: student {} ({} MACs, hold-out L1 {:.4}), wide {:.4}, deep {:.4}, largest {:.4}",
        c.student.config,
        c.student.macs,
        -c.student.score,
        -c.wide_teacher.score,
        -c.deep_teacher.score,
        -c.largest.score
    );
    let t_out = teachers(
        json!({"strategy": "multi"}),
        s_out.path(),
        sup_out.path(),
        &[],
    )
    .unwrap();
    let a_out = adf(json!({"torch_threads": 1}), t_out.path(), split).unwrap();
    let am = json_of(&a_out.path().join("metrics.json"));
    println!(
        "adf: kept {} dropped {} threshold {}",
        am["adf.kept"], am["adf.dropped"], am["adf.threshold"]
    );
    let t = Instant::now();
    let d_out = tempfile::tempdir().unwrap();
    run(
        &DistillStage::new(schema("distill")),
        json!({"steps": 150, "adf_every": 50, "threads": 1, "torch_threads": 1}),
        &distill_inputs(
            split,
            t_out.path(),
            s_out.path(),
            sup_out.path(),
            a_out.path(),
        ),
        d_out.path(),
    )
    .unwrap();
    let m = json_of(&d_out.path().join("metrics.json"));
    let after = m["distill.holdout_l1"].as_f64().unwrap();
    println!(
        "distill 150 steps: {:.1}s; student hold-out L1 {:.4} -> {after:.4}; ADF kept at the end {}",
        t.elapsed().as_secs_f64(),
        -c.student.score,
        m["distill.adf_kept_final"]
    );
    assert!(
        after < -c.student.score,
        "distillation did not lower the hold-out L1"
    );
}

/// The stage-two schemas work with the engine: a pipeline YAML using them loads, the DAG
/// builds, and the parameters the engine resolves (defaults merged, optional ones absent)
/// run every stage in topological order.
#[test]
fn pipeline_yaml_with_stage_two_kinds_resolves_and_runs() {
    let _rng = ugc_engine::testing::torch_rng();
    use std::sync::Arc;
    use ugc_engine::graph::Dag;
    use ugc_engine::spec::{LoadOptions, load_pipeline_str};
    use ugc_method::supernet::SupernetStage;
    let mut reg = ugc_engine::KindRegistry::new();
    reg.register(Arc::new(SynthStage::new(schema("synth"))));
    reg.register(Arc::new(SplitStage::new(schema("split"))));
    reg.register(Arc::new(SupernetStage::new(schema("supernet"))));
    reg.register(Arc::new(SearchStage::new(schema("search"))));
    reg.register(Arc::new(TeachersStage::new(schema("teachers"))));
    reg.register(Arc::new(AdfStage::new(schema("adf"))));
    reg.register(Arc::new(DistillStage::new(schema("distill"))));
    let text = r#"
params: {seed: 0}
stages:
  data:
    kind: synth
    params: {task: edges2photo, n: 24, n_test: 4, size: 32, seed: "${seed}"}
  split:
    kind: split
    deps: [data]
    params: {label_ratio: 0.5, holdout: 0.2}
  supernet:
    kind: supernet
    deps: [split]
    params: {arch: {arch: mobile-resnet, ngf: 4, n_blocks: 4}, steps: 2, batch_size: 2,
             ndf: 4, threads: 1, torch_threads: 1, checkpoint_every: 0, sample_every: 0}
  search:
    kind: search
    deps: [supernet, split]
    params: {input_size: [3, 32, 32], population: 6, generations: 1, eval_batches: 1,
             torch_threads: 1}
  teachers:
    kind: teachers
    deps: [search, supernet]
    params: {strategy: multi}
  adf:
    kind: adf
    deps: [teachers, split]
  distill:
    kind: distill
    deps: [split, teachers, search, supernet, adf]
    params: {steps: 2, batch_size: 2, unlabeled_batch_size: 2, adf_every: 1, threads: 1,
             torch_threads: 1}
"#;
    let root = tempfile::tempdir().unwrap();
    let p = load_pipeline_str(
        text,
        &root.path().join("p.yaml"),
        &reg,
        &LoadOptions::default(),
    )
    .unwrap();
    let dag = Dag::build(&p, &reg).unwrap();
    let mut outs: BTreeMap<String, (String, PathBuf)> = BTreeMap::new();
    for i in dag.topo_order() {
        let node = dag.node(i);
        let inputs: Vec<StageInput> = dag
            .deps(i)
            .into_iter()
            .map(|d| {
                let dn = dag.node(d);
                let (kind, dir) = &outs[&dn.id];
                StageInput {
                    name: dn.stage.clone(),
                    node: dn.id.clone(),
                    point: Default::default(),
                    kind: kind.clone(),
                    dir: dir.clone(),
                }
            })
            .collect();
        let out = root.path().join(&node.id);
        std::fs::create_dir_all(&out).unwrap();
        let scratch = root.path().join(format!("{}.scratch", node.id));
        std::fs::create_dir_all(&scratch).unwrap();
        let kind = reg.get(&node.kind).unwrap();
        let env = BTreeMap::new();
        let cancel = CancelToken::new();
        let ctx = StageContext {
            node: &node.id,
            kind: &node.kind,
            params: &node.params,
            inputs: &inputs,
            out_dir: &out,
            scratch_dir: &scratch,
            device: DeviceKind::Cpu,
            progress: &NullProgress,
            cancel: &cancel,
            env: &env,
            rank: None,
        };
        kind.run(&ctx)
            .unwrap_or_else(|e| panic!("stage {}: {e}", node.id));
        // Every metrics.json is a flat object of numbers (the engine records it).
        let mp = out.join("metrics.json");
        if mp.is_file() {
            for (k, v) in json_of(&mp).as_object().unwrap() {
                assert!(v.is_number(), "{}: {k} = {v}", node.id);
            }
        }
        outs.insert(node.id.clone(), (node.kind.clone(), out));
    }
    assert!(outs["distill"].1.join("model/model.safetensors").is_file());
    // The schemas document every parameter.
    for k in ["search", "teachers", "adf", "distill"] {
        let s = schema(k);
        assert_eq!(s.kind, k);
        assert!(s.gpu, "{k} runs networks");
        for (name, p) in &s.params {
            assert!(!p.doc.is_empty(), "{k}.{name} undocumented");
        }
    }
}

/// Fully labeled split (the 100%-labels baseline): ADF has nothing to score, distill runs on
/// labeled pairs only and still checkpoints (an empty ADF mask included).
#[test]
fn all_labeled_split_runs_adf_and_distill() {
    let _rng = ugc_engine::testing::torch_rng();
    let f = fixture_with(1.0);
    assert!(
        SplitManifest::load(&f.split)
            .unwrap()
            .unlabeled()
            .is_empty()
    );
    let s_out = tempfile::tempdir().unwrap();
    search(&f, s_out.path(), 0);
    let t_out = teachers(json!({"strategy": "multi"}), s_out.path(), &f.supernet, &[]).unwrap();
    let a_out = adf(json!({}), t_out.path(), &f.split).unwrap();
    let m = json_of(&a_out.path().join("metrics.json"));
    assert_eq!(
        (m["adf.kept"].as_u64(), m["adf.dropped"].as_u64()),
        (Some(0), Some(0))
    );
    let d_out = tempfile::tempdir().unwrap();
    run(
        &DistillStage::new(schema("distill")),
        json!({"steps": 2, "batch_size": 2, "adf_every": 1, "checkpoint_every": 1,
               "threads": 1, "torch_threads": 1}),
        &distill_inputs(
            &f.split,
            t_out.path(),
            s_out.path(),
            &f.supernet,
            a_out.path(),
        ),
        d_out.path(),
    )
    .unwrap();
    let m = json_of(&d_out.path().join("metrics.json"));
    assert_eq!(m["distill.unlabeled_used"].as_f64(), Some(0.0));
    assert!(d_out.path().join("model/model.json").is_file());
}

/// A search cancelled mid-way replays its scores from scratch on the re-run: same result
/// as an uninterrupted search, and no candidate is scored twice.
#[test]
fn cancelled_search_resumes_from_its_scored_candidates() {
    let _rng = ugc_engine::testing::torch_rng();
    let f = fixture();
    let params = json!({"budget_ratio": 0.5, "wide_budget_ratio": 0.7, "deep_budget_ratio": 0.7,
                        "input_size": INPUT, "population": 8, "generations": 2, "batch_size": 4,
                        "eval_batches": 2, "seed": 0});
    let deps = [input("supernet", &f.supernet), input("split", &f.split)];
    let kind = SearchStage::new(schema("search"));
    let full = tempfile::tempdir().unwrap();
    run(&kind, params.clone(), &deps, full.path()).unwrap();

    let scratch = tempfile::tempdir().unwrap();
    let token = CancelToken::new();
    let cancel_at = CancelAt {
        token: token.clone(),
        at: 2,
        last: AtomicU64::new(0),
    };
    let first = tempfile::tempdir().unwrap();
    let e = run_with(
        &kind,
        params.clone(),
        &deps,
        first.path(),
        scratch.path(),
        &cancel_at,
        &token,
    )
    .unwrap_err();
    assert!(matches!(e, StageError::Cancelled), "{e}");
    let lines = |p: &Path| {
        std::fs::read_to_string(p.join("search_scores.tsv"))
            .unwrap()
            .lines()
            .filter(|l| !l.is_empty())
            .count()
    };
    let scored_before = lines(scratch.path());
    assert!(scored_before > 0);
    let resumed = tempfile::tempdir().unwrap();
    run_with(
        &kind,
        params,
        &deps,
        resumed.path(),
        scratch.path(),
        &NullProgress,
        &CancelToken::new(),
    )
    .unwrap();
    assert_eq!(
        SearchConfigs::load(resumed.path()).unwrap(),
        SearchConfigs::load(full.path()).unwrap()
    );
    assert_eq!(
        std::fs::read_to_string(resumed.path().join("pareto.csv")).unwrap(),
        std::fs::read_to_string(full.path().join("pareto.csv")).unwrap()
    );
    let evaluated = json_of(&full.path().join("metrics.json"))["search.evaluated"]
        .as_u64()
        .unwrap() as usize;
    assert!(scored_before < evaluated);
    assert_eq!(
        lines(scratch.path()),
        evaluated,
        "a candidate was scored twice"
    );
}

/// `distill` as 2 data-parallel ranks equals 1 rank with the same global batches (odd: 3
/// labeled rows split 2 + 1; the ADF-kept rows of each unlabeled batch split too, or taken
/// whole by both ranks when fewer than 2 are kept), with the online ADF re-scoring at step
/// 2 decided on rank 0: the step-1 reduced gradients of the discriminator, the student and
/// the teachers, and the student's weights after 5 steps, within the tolerances of
/// `dist.rs` (derived there).
#[test]
fn distill_two_ranks_match_one() {
    const NAME: &str = "stage_two::distill_two_ranks_match_one";
    if let Some(dir) = ugc_train::testing::rank_dir() {
        return crate::dist::rank_body(&dir);
    }
    let _rng = ugc_engine::testing::torch_rng();
    let f = fixture();
    let s_out = tempfile::tempdir().unwrap();
    search(&f, s_out.path(), 1);
    let t_out = teachers(json!({"strategy": "multi"}), s_out.path(), &f.supernet, &[]).unwrap();
    let a_out = adf(json!({"batch_size": 4}), t_out.path(), &f.split).unwrap();
    let params = ugc_engine::testing::with_defaults(
        &schema("distill"),
        json!({"steps": 5, "batch_size": 3, "unlabeled_batch_size": 3,
               "adf_every": 2, "checkpoint_every": 0, "threads": 1, "torch_threads": 1,
               "seed": 3}),
    );
    let inputs: [(&str, &Path); 5] = [
        ("split", &f.split),
        ("teachers", t_out.path()),
        ("search", s_out.path()),
        ("supernet", &f.supernet),
        ("adf", a_out.path()),
    ];
    let env = crate::dist::stage_env("distill", &params, &inputs);
    let names = crate::dist::Names {
        moments: &["opt.disc.m.", "opt.student.m.", "opt.teacher."],
        weights: "student.",
        gen_moments: "opt.student.m.",
        output: "model/model.safetensors",
    };
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let one = crate::dist::trace_env(NAME, 1, d1.path(), &env, names);
    let two = crate::dist::trace_env(NAME, 2, d2.path(), &env, names);
    crate::dist::assert_match(&one, &two, "distill");
    // The online ADF keeps what the one process keeps (the scores themselves come from
    // weights equal up to rounding, so only the decisions are compared).
    let kept = |d: &Path| -> Vec<(String, String)> {
        let csv = std::fs::read_to_string(d.join("out-0/adf_online/scores.csv")).unwrap();
        csv.lines()
            .map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                (f[0].to_string(), f[2].to_string())
            })
            .collect()
    };
    let k1 = kept(d1.path());
    assert!(k1.len() > 1, "no online re-scoring: {k1:?}");
    assert_eq!(k1, kept(d2.path()));
}
