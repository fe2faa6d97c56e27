//! Stage tests: `supernet` and `train` through the stage contract on a tiny synthetic split.

use std::path::Path;
use std::sync::Mutex;

use crate::common::{input, run, run_with, schema, synth_and_split};
use serde_json::{Value, json};
use ugc_data::{SplitStage, SynthStage};
use ugc_engine::testing::with_defaults;
use ugc_engine::{CancelToken, Progress, StageError, StageInput, StageKind};
use ugc_method::supernet::SupernetStage;

/// A tiny edges2photo split (16 train + 4 test at 32 px, half labeled).
fn tiny_split() -> (tempfile::TempDir, tempfile::TempDir) {
    synth_and_split(
        json!({"task": "edges2photo", "n": 16, "n_test": 4, "size": 32}),
        json!({"label_ratio": 0.5, "holdout": 0.0}),
    )
}

fn supernet_params(steps: u64, extra: Value) -> Value {
    let s = schema("supernet.yaml");
    let mut p = with_defaults(
        &s,
        json!({
            "arch": {"arch": "mobile-resnet", "ngf": 4, "n_blocks": 4},
            "steps": steps, "batch_size": 2, "ndf": 4, "threads": 1, "torch_threads": 1,
            "checkpoint_every": 5, "sample_every": 0, "lr": 0.001
        }),
    );
    for (k, v) in extra.as_object().unwrap() {
        p[k] = v.clone();
    }
    p
}

fn read_log(path: &Path) -> (Vec<String>, Vec<Vec<f64>>) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header = lines
        .next()
        .unwrap()
        .split(',')
        .map(str::to_string)
        .collect();
    let rows = lines
        .map(|l| l.split(',').map(|v| v.parse().unwrap()).collect())
        .collect();
    (header, rows)
}

#[test]
fn schemas_parse_and_document_every_parameter() {
    let _rng = ugc_engine::testing::torch_rng();
    for (file, kind) in [("supernet.yaml", "supernet"), ("train.yaml", "train")] {
        let s = schema(file);
        assert_eq!(s.kind, kind);
        assert!(s.gpu);
        for (n, p) in &s.params {
            assert!(!p.doc.is_empty(), "{file}: {n} undocumented");
        }
    }
}

#[test]
fn supernet_trains_and_its_l1_decreases() {
    let _rng = ugc_engine::testing::torch_rng();
    let (_s, split) = tiny_split();
    let kind = SupernetStage::new(schema("supernet.yaml"));
    let out = tempfile::tempdir().unwrap();
    let p = supernet_params(50, json!({}));
    run(&kind, &p, &[input("split", split.path())], out.path()).unwrap();
    for f in [
        "supernet/generator.safetensors",
        "supernet/arch.json",
        "supernet/discriminator.safetensors",
        "supernet/disc.json",
        "log.csv",
        "metrics.json",
        "samples/step_000050.png",
    ] {
        assert!(out.path().join(f).is_file(), "missing {f}");
    }
    let (h, rows) = read_log(&out.path().join("log.csv"));
    assert_eq!(rows.len(), 50);
    for col in [
        "largest_l1",
        "random_l1",
        "smallest_l1",
        "random_distill",
        "smallest_distill",
        "d_real",
    ] {
        assert!(h.iter().any(|c| c == col), "no column {col} in {h:?}");
    }
    let i = h.iter().position(|c| c == "largest_l1").unwrap();
    let mean = |r: &[Vec<f64>]| r.iter().map(|x| x[i]).sum::<f64>() / r.len() as f64;
    let (first, last) = (mean(&rows[..5]), mean(&rows[45..]));
    assert!(last < 0.8 * first, "L1 did not decrease: {first} -> {last}");
    let m: Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("metrics.json")).unwrap())
            .unwrap();
    assert!(m["macs_largest"].as_f64().unwrap() > m["macs_smallest"].as_f64().unwrap());
    assert_eq!(m["unlabeled_used"], 1.0);
    assert!(m.as_object().unwrap().values().all(Value::is_number));
    // The generator file loads into the architecture it names.
    let arch: ugc_nn::ArchConfig = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("supernet/arch.json")).unwrap(),
    )
    .unwrap();
    let r =
        ugc_nn::export::check_weights(&arch, &out.path().join("supernet/generator.safetensors"))
            .unwrap();
    assert!(r.is_ok(), "{r}");
}

/// Cancels the token when the progress reaches `at`.
struct CancelAt {
    at: u64,
    token: CancelToken,
    seen: Mutex<Vec<u64>>,
}

impl Progress for CancelAt {
    fn start(&self, _phase: &str, _total: u64) {}
    fn set(&self, step: u64) {
        self.seen.lock().unwrap().push(step);
        if step == self.at {
            self.token.cancel();
        }
    }
    fn message(&self, _msg: &str) {}
}

#[test]
fn crash_resume_gives_the_same_weights_as_an_uninterrupted_run() {
    let _rng = ugc_engine::testing::torch_rng();
    let (_s, split) = tiny_split();
    let kind = SupernetStage::new(schema("supernet.yaml"));
    let inputs = [input("split", split.path())];
    let p = supernet_params(12, json!({}));

    let full = tempfile::tempdir().unwrap();
    run(&kind, &p, &inputs, full.path()).unwrap();

    let scratch = tempfile::tempdir().unwrap();
    let token = CancelToken::new();
    let prog = CancelAt {
        at: 7,
        token: token.clone(),
        seen: Mutex::new(Vec::new()),
    };
    let out1 = tempfile::tempdir().unwrap();
    let e = run_with(
        &kind,
        &p,
        &inputs,
        out1.path(),
        scratch.path(),
        &prog,
        &token,
    )
    .unwrap_err();
    assert!(matches!(e, StageError::Cancelled), "{e}");
    assert!(!out1.path().join("supernet").exists());

    let prog2 = CancelAt {
        at: u64::MAX,
        token: CancelToken::new(),
        seen: Mutex::new(Vec::new()),
    };
    let out2 = tempfile::tempdir().unwrap();
    run_with(
        &kind,
        &p,
        &inputs,
        out2.path(),
        scratch.path(),
        &prog2,
        &CancelToken::new(),
    )
    .unwrap();
    // Resumed at 7, not from the start.
    assert_eq!(prog2.seen.lock().unwrap().first(), Some(&7));
    // Resume is invisible in the outputs: every committed byte (weights, metrics.json with
    // the loss means, the continuous 12-row log, samples) equals the uninterrupted run's.
    ugc_engine::testing::assert_same_tree(full.path(), out2.path());
    let m: Value =
        serde_json::from_str(&std::fs::read_to_string(out2.path().join("metrics.json")).unwrap())
            .unwrap();
    assert!(m.get("resumed_from").is_none(), "{m}");
    assert_eq!(read_log(&out2.path().join("log.csv")).1.len(), 12);
}

#[test]
fn supernet_errors_name_the_parameter() {
    let _rng = ugc_engine::testing::torch_rng();
    let (_s, split) = tiny_split();
    let kind = SupernetStage::new(schema("supernet.yaml"));
    let inputs = [input("split", split.path())];
    let out = tempfile::tempdir().unwrap();
    let p = supernet_params(2, json!({"arch": {"arch": "resnet9"}}));
    let e = run(&kind, &p, &inputs, out.path()).unwrap_err().to_string();
    assert!(e.contains("arch.arch") && e.contains("resnet9"), "{e}");
    let p = supernet_params(2, json!({"arch": {"arch": "mobile-resnet", "ngff": 3}}));
    let e = run(&kind, &p, &inputs, out.path()).unwrap_err().to_string();
    assert!(e.contains("ngff"), "{e}");
    let p = supernet_params(2, json!({"vgg_weights": "/nonexistent/vgg16.safetensors"}));
    let e = run(&kind, &p, &inputs, out.path()).unwrap_err().to_string();
    assert!(e.contains("/nonexistent/vgg16.safetensors"), "{e}");
    let p = supernet_params(2, json!({"batch_size": 100}));
    let e = run(&kind, &p, &inputs, out.path()).unwrap_err().to_string();
    assert!(e.contains("batch_size"), "{e}");
    let e = run(&kind, supernet_params(2, json!({})), &[], out.path()).unwrap_err();
    assert!(e.to_string().contains("split"), "{e}");
}

#[test]
fn train_writes_a_loadable_model_of_the_chosen_subnet() {
    let _rng = ugc_engine::testing::torch_rng();
    let (_s, split) = tiny_split();
    let kind = ugc_method::train::TrainStage::new(schema("train.yaml"));
    let inputs = [input("split", split.path())];
    let out = tempfile::tempdir().unwrap();
    let arch = json!({"arch": "mobile-resnet", "ngf": 8, "n_blocks": 4});
    let cfg = ugc_nn::search_space(
        &serde_json::from_value::<ugc_nn::ArchConfig>(json!({
            "arch": "mobile-resnet", "input_nc": 3, "output_nc": 3, "ngf": 8, "n_blocks": 4,
            "num_downs": 8, "n_downsample": 4, "upsampling": "more", "norm": "instance"
        }))
        .unwrap(),
    )
    .unwrap()
    .smallest()
    .to_string();
    let p = with_defaults(
        kind.schema(),
        json!({"arch": arch, "config": cfg, "steps": 6, "batch_size": 2, "ndf": 4,
               "threads": 1, "torch_threads": 1, "sample_every": 3}),
    );
    run(&kind, &p, &inputs, out.path()).unwrap();
    let (meta, model) =
        ugc_nn::export::load_model(&out.path().join("model"), tch::Device::Cpu).unwrap();
    assert_eq!(meta.arch.arch, ugc_nn::Arch::MobileResnet);
    let x = tch::Tensor::zeros([1, 3, 32, 32], (tch::Kind::Float, tch::Device::Cpu));
    let sub = model.generator.search_space().largest();
    let y = model
        .generator
        .forward(&x, &sub, ugc_nn::Mode::Eval)
        .unwrap();
    assert_eq!(y.size(), vec![1, 3, 32, 32]);
    let m: Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("metrics.json")).unwrap())
            .unwrap();
    assert_eq!(m["params"].as_f64().unwrap(), meta.params as f64);
    assert!(m["macs"].as_f64().unwrap() > 0.0);
    assert!(out.path().join("samples/step_000003.png").is_file());
    let (h, rows) = read_log(&out.path().join("log.csv"));
    assert_eq!(rows.len(), 6);
    assert!(h.iter().any(|c| c == "model_l1"), "{h:?}");
    assert!(!h.iter().any(|c| c.contains("distill")), "{h:?}");
    // origin.json: a `config` sub-net, which the report counts as a student trained alone.
    let origin = |dir: &std::path::Path| -> Value {
        serde_json::from_str(&std::fs::read_to_string(dir.join("origin.json")).unwrap()).unwrap()
    };
    assert_eq!(
        origin(out.path()),
        json!({"arch_from": "config", "config": cfg, "subnet": true})
    );

    // A second run takes the architecture and weights of the first from a dep.
    let out2 = tempfile::tempdir().unwrap();
    let dep = StageInput {
        name: "baseline".into(),
        ..input("train", out.path())
    };
    let p2 = with_defaults(
        kind.schema(),
        json!({"from_dep": "baseline", "init_weights": true, "steps": 1, "batch_size": 2,
               "ndf": 4, "threads": 1, "torch_threads": 1}),
    );
    run(&kind, &p2, &[inputs[0].clone(), dep.clone()], out2.path()).unwrap();
    let (meta2, _) =
        ugc_nn::export::load_model(&out2.path().join("model"), tch::Device::Cpu).unwrap();
    assert_eq!(meta2.arch, meta.arch);
    // The sub-net provenance carries over from a train dep.
    assert_eq!(
        origin(out2.path()),
        json!({"arch_from": "dep", "dep": "baseline", "dep_kind": "train", "subnet": true})
    );
    let p3 = with_defaults(kind.schema(), json!({"from_dep": "nope", "steps": 1}));
    let e = run(&kind, &p3, &[inputs[0].clone(), dep], out2.path())
        .unwrap_err()
        .to_string();
    assert!(e.contains("from_dep = nope"), "{e}");

    // Errors name the parameter.
    let p = with_defaults(kind.schema(), json!({"steps": 2}));
    let e = run(&kind, &p, &inputs, out.path()).unwrap_err().to_string();
    assert!(e.contains("arch"), "{e}");
    let p = with_defaults(
        kind.schema(),
        json!({"arch": arch, "config": "w=3_3", "steps": 2}),
    );
    let e = run(&kind, &p, &inputs, out.path()).unwrap_err().to_string();
    assert!(e.contains("config = w=3_3"), "{e}");
}

#[test]
fn too_small_images_for_the_patchgan_are_refused_by_name() {
    let _rng = ugc_engine::testing::torch_rng();
    let synth = SynthStage::new(schema("synth.yaml"));
    let split = SplitStage::new(schema("split.yaml"));
    let sdir = tempfile::tempdir().unwrap();
    let p = with_defaults(
        synth.schema(),
        json!({"task": "edges2photo", "n": 8, "n_test": 2, "size": 16}),
    );
    run(&synth, &p, &[], sdir.path()).unwrap();
    let sp = tempfile::tempdir().unwrap();
    let p = with_defaults(split.schema(), json!({"holdout": 0.0}));
    run(&split, &p, &[input("synth", sdir.path())], sp.path()).unwrap();
    let kind = SupernetStage::new(schema("supernet.yaml"));
    let out = tempfile::tempdir().unwrap();
    let e = run(
        &kind,
        supernet_params(2, json!({})),
        &[input("split", sp.path())],
        out.path(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("crop") && e.contains("16x16"), "{e}");
}

/// A tiny labels2photo split (Cityscapes layout, class table) at 32 px.
fn tiny_label_split() -> (tempfile::TempDir, tempfile::TempDir) {
    synth_and_split(
        json!({"task": "labels2photo", "n": 8, "n_test": 2, "size": 32}),
        json!({"label_ratio": 0.5, "holdout": 0.0}),
    )
}

#[test]
fn supernet_runs_bn_unet_and_one_hot_families() {
    let _rng = ugc_engine::testing::torch_rng();
    let (_s, split) = tiny_label_split();
    let kind = SupernetStage::new(schema("supernet.yaml"));
    let inputs = [input("split", split.path())];
    for (arch, disc) in [
        (
            json!({"arch": "pix2pix-unet", "ngf": 4, "num_downs": 5}),
            "patchgan",
        ),
        (
            json!({"arch": "pix2pixhd", "ngf": 4, "n_downsample": 2, "n_blocks": 4}),
            "multiscale",
        ),
        // The official --no_instance: one channel less (no instance edges in the data).
        (
            json!({"arch": "pix2pixhd", "ngf": 4, "n_downsample": 2, "n_blocks": 2,
                   "label_nc": 8, "no_instance": true}),
            "multiscale",
        ),
    ] {
        let out = tempfile::tempdir().unwrap();
        let p = supernet_params(3, json!({"arch": arch}));
        run(&kind, &p, &inputs, out.path()).unwrap_or_else(|e| panic!("{arch}: {e}"));
        let d: Value = serde_json::from_str(
            &std::fs::read_to_string(out.path().join("supernet/disc.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(d["arch"], disc, "{arch}");
        let a: Value = serde_json::from_str(
            &std::fs::read_to_string(out.path().join("supernet/arch.json")).unwrap(),
        )
        .unwrap();
        if arch["arch"] == "pix2pixhd" {
            // The synthetic class table's 8 one-hot channels, + 1 for the instance edges.
            let edges = arch.get("no_instance").is_none();
            assert_eq!(a["input_nc"], 8 + i64::from(edges), "{arch}: {a}");
        }
        let (_, rows) = read_log(&out.path().join("log.csv"));
        assert_eq!(rows.len(), 3);
        assert!(rows.iter().flatten().all(|v| v.is_finite()));
    }
}

#[test]
fn one_random_subnet_per_step_without_sandwich_and_labels_only_without_unlabeled() {
    let _rng = ugc_engine::testing::torch_rng();
    let (_s, split) = tiny_split();
    let kind = SupernetStage::new(schema("supernet.yaml"));
    let inputs = [input("split", split.path())];
    let out = tempfile::tempdir().unwrap();
    run(
        &kind,
        supernet_params(2, json!({"sandwich": false})),
        &inputs,
        out.path(),
    )
    .unwrap();
    let (h, _) = read_log(&out.path().join("log.csv"));
    let cols: Vec<&str> = h.iter().map(String::as_str).collect();
    assert_eq!(
        cols,
        [
            "step",
            "d_real",
            "d_fake",
            "random_gan",
            "random_l1",
            "random_distill",
            "lr"
        ]
    );
    let out = tempfile::tempdir().unwrap();
    run(
        &kind,
        supernet_params(2, json!({"unlabeled": false})),
        &inputs,
        out.path(),
    )
    .unwrap();
    let (h, _) = read_log(&out.path().join("log.csv"));
    assert!(!h.iter().any(|c| c.contains("distill")), "{h:?}");
    let m: Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("metrics.json")).unwrap())
            .unwrap();
    assert_eq!(m["unlabeled_used"], 0.0);
}

#[test]
fn supernet_distills_through_a_configured_vgg16() {
    let _rng = ugc_engine::testing::torch_rng();
    let (_s, split) = tiny_split();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("vgg16.safetensors");
    let convs = crate::common::TORCHVISION_VGG16_CONVS;
    let cpu = (tch::Kind::Float, tch::Device::Cpu);
    let mut ts = Vec::new();
    for (i, ci, co) in convs {
        ts.push((
            format!("features.{i}.weight"),
            tch::Tensor::randn([co, ci, 3, 3], cpu) * 0.02,
        ));
        ts.push((format!("features.{i}.bias"), tch::Tensor::zeros([co], cpu)));
    }
    tch::Tensor::write_safetensors(&ts, &file).unwrap();
    let kind = SupernetStage::new(schema("supernet.yaml"));
    let out = tempfile::tempdir().unwrap();
    let p = supernet_params(1, json!({"vgg_weights": file}));
    run(&kind, &p, &[input("split", split.path())], out.path()).unwrap();
    let (h, rows) = read_log(&out.path().join("log.csv"));
    let i = h.iter().position(|c| c == "smallest_distill").unwrap();
    assert!(rows[0][i].is_finite() && rows[0][i] > 0.0, "{:?}", rows[0]);
    // The VGG path gives other distillation values than the discriminator's features.
    let out2 = tempfile::tempdir().unwrap();
    run(
        &kind,
        supernet_params(1, json!({})),
        &[input("split", split.path())],
        out2.path(),
    )
    .unwrap();
    let (_, rows2) = read_log(&out2.path().join("log.csv"));
    assert_ne!(rows[0][i], rows2[0][i]);
}

#[test]
fn fewer_unlabeled_inputs_than_a_batch_are_still_used() {
    let _rng = ugc_engine::testing::torch_rng();
    let synth = SynthStage::new(schema("synth.yaml"));
    let split = SplitStage::new(schema("split.yaml"));
    let sdir = tempfile::tempdir().unwrap();
    let p = with_defaults(
        synth.schema(),
        json!({"task": "edges2photo", "n": 16, "n_test": 2, "size": 32}),
    );
    run(&synth, &p, &[], sdir.path()).unwrap();
    let sp = tempfile::tempdir().unwrap();
    let p = with_defaults(split.schema(), json!({"label_ratio": 0.75, "holdout": 0.0}));
    run(&split, &p, &[input("synth", sdir.path())], sp.path()).unwrap();
    let kind = SupernetStage::new(schema("supernet.yaml"));
    let out = tempfile::tempdir().unwrap();
    // 12 labeled, 4 unlabeled, batch 6.
    let p = supernet_params(3, json!({"batch_size": 6}));
    run(&kind, &p, &[input("split", sp.path())], out.path()).unwrap();
    let m: Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("metrics.json")).unwrap())
            .unwrap();
    assert_eq!(m["unlabeled_used"], 1.0);
}
