//! Test kinds built from small `KindSchema` YAML documents.

use std::path::Path;
use std::sync::Arc;

use crate::spec::{LoadOptions, Pipeline, SpecError, load_pipeline_str};
use crate::stage::{KindRegistry, KindSchema, StageContext, StageError, StageKind};

struct TestKind(KindSchema);

impl StageKind for TestKind {
    fn schema(&self) -> &KindSchema {
        &self.0
    }
    fn run(&self, _ctx: &StageContext<'_>) -> Result<(), StageError> {
        Ok(())
    }
}

const SCHEMAS: &[&str] = &[
    r#"
kind: synth
version: 1
not_in_key: [log_every]
params:
  task: {type: string, required: true, enum: [labels2photo, edges2photo]}
  n: {type: int, default: 64}
  size: {type: int, default: 32}
  log_every: {type: int, default: 10}
"#,
    r#"
kind: split
version: 1
params:
  label_ratio: {type: float, required: true}
  seed: {type: int, default: 0}
  out: {type: path}
"#,
    r#"
kind: train
version: 2
gpu: true
params:
  lr: {type: float, default: 0.0002}
  adf: {type: bool, default: false}
  strategy: {type: string, default: multi, enum: [largest, wide, deep, multi]}
  opt: {type: map, default: {beta1: 0.5, beta2: 0.999}}
  tag: {type: string}
"#,
    r#"
kind: command
version: 1
external_inputs: [inputs, data.root]
not_in_key: [env]
params:
  cmd: {type: string, required: true}
  inputs: {type: list, default: []}
  data: {type: map}
  env: {type: map}
"#,
    r#"
kind: dp
version: 1
gpu: true
data_parallel: {batch_params: [batch_size, unlabeled_batch_size]}
params:
  batch_size: {type: int, default: 4}
  unlabeled_batch_size: {type: int, default: 8}
  lr: {type: float, default: 0.1}
"#,
    r#"
kind: timed
version: 1
exclusive_when: time_it
params:
  time_it: {type: bool, default: true}
"#,
    r#"
kind: ranged
version: 1
deps: {required: [split]}
params:
  steps: {type: int, default: 10, range: "[1, inf)"}
  decay: {type: int, default: 0, range: "[0, inf)", at_most: steps}
  ratio: {type: float, default: 0.5, range: "(0, 1]"}
  metrics: {type: list, default: [psnr], min_items: 1, items: {type: string, enum: [psnr, ssim]}}
  weights:
    type: map
    default: {a: 1.0, b: 2.0}
    keys:
      a: {type: float, default: 1.0, range: "[0, inf)"}
      b: {type: float, default: 2.0}
  odd: {type: int, default: 1}
"#,
    r#"
kind: fit
version: 1
continues: {from: init_from, keep: keep_state, steps: steps, same: [width]}
params:
  steps: {type: int, default: 10}
  width: {type: int, default: 4}
  lr: {type: float, default: 0.1}
  init_from: {type: string}
  keep_state: {type: bool, default: false}
"#,
];

/// The cross-field check of `ranged`: `odd` must be odd.
fn odd_check(params: &serde_json::Value) -> Vec<crate::stage::ParamProblem> {
    match params["odd"].as_i64() {
        Some(n) if n % 2 == 0 => vec![crate::stage::ParamProblem::new("odd", "must be odd")],
        _ => Vec::new(),
    }
}

pub(crate) fn kinds() -> KindRegistry {
    let mut reg = KindRegistry::new();
    for text in SCHEMAS {
        let schema = KindSchema::from_yaml(text).expect("test schema parses");
        reg.register(Arc::new(TestKind(schema)));
    }
    reg.register_check("ranged", odd_check);
    reg
}

pub(crate) const FILE: &str = "/pipes/p.yaml";

pub(crate) fn load(text: &str) -> Result<Pipeline, SpecError> {
    load_pipeline_str(text, Path::new(FILE), &kinds(), &LoadOptions::default())
}

pub(crate) fn load_with(text: &str, sets: &[&str]) -> Result<Pipeline, SpecError> {
    let opts = LoadOptions {
        overrides: sets.iter().map(|s| s.to_string()).collect(),
        ..LoadOptions::default()
    };
    load_pipeline_str(text, Path::new(FILE), &kinds(), &opts)
}

/// Loads `text` for a machine of `gpus` GPUs and `cpus` cores, with `sets` applied.
pub(crate) fn load_on(
    text: &str,
    sets: &[&str],
    gpus: usize,
    cpus: usize,
) -> Result<Pipeline, SpecError> {
    let opts = LoadOptions {
        overrides: sets.iter().map(|s| s.to_string()).collect(),
        machine: Some(crate::spec::Machine { gpus, cpus }),
        ..LoadOptions::default()
    };
    load_pipeline_str(text, Path::new(FILE), &kinds(), &opts)
}

/// The error's Display, which must start with `file:line:col:`.
pub(crate) fn err(text: &str) -> String {
    match load(text) {
        Ok(_) => panic!("expected an error for:\n{text}"),
        Err(e) => e.to_string(),
    }
}
