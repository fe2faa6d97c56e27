use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use tch::{Device, nn::VarStore};
use ugc_data::{SplitStage, SynthStage};
pub use ugc_engine::testing::{copy_tree, input};
use ugc_engine::{CancelToken, KindSchema, Progress, StageInput};
use ugc_eval::{EvaluateStage, EvaluatorStage, ExportStage};
use ugc_nn::{Arch, ArchConfig, build_generator};

pub fn schema(name: &str) -> KindSchema {
    let name = name.trim_end_matches(".yaml");
    ugc_kinds::Kind::from_name(name)
        .unwrap_or_else(|| panic!("no kind `{name}`"))
        .schema()
}

/// libtorch's generator is one per process: see `ugc_engine::testing::torch_rng`.
pub use ugc_engine::testing::torch_rng;

pub use ugc_engine::testing::{run_quick as run, run_with_defaults as run_with};

pub fn evaluator_stage() -> EvaluatorStage {
    EvaluatorStage::new(schema("evaluator"))
}
pub fn evaluate_stage() -> EvaluateStage {
    EvaluateStage::new(schema("evaluate"))
}
pub fn export_stage() -> ExportStage {
    ExportStage::new(schema("export"))
}

pub fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// A synthetic dataset split into a folder kept for the test's duration.
pub struct Data {
    pub _dirs: Vec<tempfile::TempDir>,
    pub split: PathBuf,
}

impl Data {
    pub fn split_input(&self) -> StageInput {
        input("split", "split", &self.split)
    }
}

pub fn make_split(task: &str, n: usize, n_test: usize, size: u32, label_ratio: f64) -> Data {
    make_split_with_holdout(task, n, n_test, size, label_ratio, 0.0)
}

/// [`make_split`] with a search hold-out of `holdout` of the training examples.
pub fn make_split_with_holdout(
    task: &str,
    n: usize,
    n_test: usize,
    size: u32,
    label_ratio: f64,
    holdout: f64,
) -> Data {
    let synth = SynthStage::new(schema("synth"));
    let split = SplitStage::new(schema("split"));
    let sdir = tempfile::tempdir().unwrap();
    run(
        &synth,
        json!({"task": task, "n": n, "n_test": n_test, "size": size, "seed": 3}),
        &[],
        sdir.path(),
    )
    .unwrap();
    let out = tempfile::tempdir().unwrap();
    run(
        &split,
        json!({"label_ratio": label_ratio, "holdout": holdout}),
        &[input("data", "synth", sdir.path())],
        out.path(),
    )
    .unwrap();
    Data {
        split: out.path().to_path_buf(),
        _dirs: vec![sdir, out],
    }
}

/// The tiny labels2photo split most tests share (built once; read-only afterwards).
pub fn labels_split() -> &'static Data {
    static DATA: std::sync::OnceLock<Data> = std::sync::OnceLock::new();
    DATA.get_or_init(|| make_split("labels2photo", 32, 8, 32, 1.0))
}

/// A trained evaluator on [`labels_split`] (built once).
pub fn labels_evaluator() -> &'static Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let out = tempfile::tempdir().unwrap();
        run(
            &evaluator_stage(),
            json!({"width": 8, "steps": 120, "batch_size": 8, "lr": 0.005}),
            &[labels_split().split_input()],
            out.path(),
        )
        .unwrap();
        out
    })
    .path()
}

/// Writes a tiny random mobile-resnet (ngf 4, 3 blocks) as a model dir `<dir>/model/`.
pub fn fake_model_stage(dir: &Path, seed: i64) -> ArchConfig {
    let _rng = torch_rng();
    tch::manual_seed(seed);
    let cfg = ArchConfig {
        ngf: 4,
        n_blocks: 3,
        ..ArchConfig::new(Arch::MobileResnet)
    };
    let vs = VarStore::new(Device::Cpu);
    let g = build_generator(&vs.root(), &cfg).unwrap();
    let sub = g.search_space().largest();
    ugc_nn::export::export_subnet(g.as_ref(), &sub, &dir.join("model")).unwrap();
    cfg
}

/// Progress sink that cancels the token when a step is reached (a simulated Ctrl-C).
pub struct CancelAt {
    pub at: u64,
    pub token: CancelToken,
}

impl Progress for CancelAt {
    fn start(&self, _phase: &str, _total: u64) {}
    fn set(&self, step: u64) {
        if step >= self.at {
            self.token.cancel();
        }
    }
    fn message(&self, _msg: &str) {}
}
