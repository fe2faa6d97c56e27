//! Seconds per `supernet` / `train` step on a synthetic split, for the quickstart budget.
//!
//! `cargo run -p ugc-method --example supernet_bench -- [size] [ngf] [steps] [torch_threads]`
//! (defaults 64 8 20 1): edges2photo, 32 train images, mobile-resnet, batch 4, ndf 16.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use serde_json::{Value, json};
use ugc_data::{SplitStage, SynthStage};
use ugc_engine::{
    CancelToken, DeviceKind, KindSchema, NullProgress, StageContext, StageInput, StageKind,
};
use ugc_method::supernet::SupernetStage;
use ugc_method::train::TrainStage;

fn schema(name: &str) -> KindSchema {
    let name = name.trim_end_matches(".yaml");
    ugc_kinds::Kind::from_name(name)
        .unwrap_or_else(|| panic!("no kind `{name}`"))
        .schema()
}

fn params(s: &KindSchema, over: Value) -> Value {
    let mut m = serde_json::Map::new();
    for (k, p) in &s.params {
        if let Some(d) = &p.default {
            m.insert(k.clone(), d.clone());
        }
    }
    for (k, v) in over.as_object().expect("object") {
        m.insert(k.clone(), v.clone());
    }
    Value::Object(m)
}

fn run(kind: &dyn StageKind, p: &Value, inputs: &[StageInput], out: &Path) {
    let scratch = tempfile::tempdir().expect("tempdir");
    let env = BTreeMap::new();
    let cancel = CancelToken::new();
    let ctx = StageContext {
        node: "bench",
        kind: &kind.schema().kind,
        params: p,
        inputs,
        out_dir: out,
        scratch_dir: scratch.path(),
        device: DeviceKind::Cpu,
        progress: &NullProgress,
        cancel: &cancel,
        env: &env,
        rank: None,
    };
    kind.run(&ctx).expect("stage run");
}

fn input(kind: &str, dir: &Path) -> StageInput {
    StageInput {
        name: kind.into(),
        node: kind.into(),
        point: Default::default(),
        kind: kind.into(),
        dir: dir.to_path_buf(),
    }
}

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, d: i64| a.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let (size, ngf, steps, threads) = (arg(0, 64), arg(1, 8), arg(2, 20), arg(3, 1));
    let synth = SynthStage::new(schema("synth.yaml"));
    let split = SplitStage::new(schema("split.yaml"));
    let sdir = tempfile::tempdir().expect("tempdir");
    run(
        &synth,
        &params(
            synth.schema(),
            json!({"task": "edges2photo", "n": 32, "n_test": 4, "size": size}),
        ),
        &[],
        sdir.path(),
    );
    let sp = tempfile::tempdir().expect("tempdir");
    run(
        &split,
        &params(split.schema(), json!({"label_ratio": 0.5})),
        &[input("synth", sdir.path())],
        sp.path(),
    );
    let inputs = [input("split", sp.path())];
    let common = json!({"steps": steps, "batch_size": 4, "ndf": 16, "threads": 1,
        "torch_threads": threads, "checkpoint_every": 0, "sample_every": 0});
    let arch = json!({"arch": "mobile-resnet", "ngf": ngf});
    let sn = SupernetStage::new(schema("supernet.yaml"));
    let mut p = params(sn.schema(), common.clone());
    p["arch"] = arch.clone();
    let out = tempfile::tempdir().expect("tempdir");
    let t = Instant::now();
    run(&sn, &p, &inputs, out.path());
    let s1 = t.elapsed().as_secs_f64() / steps as f64;
    let tr = TrainStage::new(schema("train.yaml"));
    let mut p = params(tr.schema(), common);
    p["arch"] = arch;
    let out = tempfile::tempdir().expect("tempdir");
    let t = Instant::now();
    run(&tr, &p, &inputs, out.path());
    let s2 = t.elapsed().as_secs_f64() / steps as f64;
    println!(
        "size {size} ngf {ngf} batch 4 torch_threads {threads}: supernet (sandwich + unlabeled) {s1:.3} s/step, train {s2:.3} s/step (incl. set-up, {steps} steps)"
    );
}
