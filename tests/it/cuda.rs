//! CUDA checks for a GPU machine (`cargo test --features cuda-tests --test it cuda::`; the
//! library-level ones are `cargo test -p ugc-torch-ext --features cuda-tests`): the
//! quickstart at a reduced scale on `--device cuda` with bf16 autocast and channels-last in
//! every training stage, and peak GPU memory recorded for the stages that used the GPU.
#![cfg(feature = "cuda-tests")]

use crate::common::*;

#[test]
fn quickstart_on_cuda_with_bf16_and_channels_last_records_peak_gpu_memory() {
    let p = Project::new();
    let pipeline =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/quickstart.yaml");
    let cache = p.cache();
    let mut args = vec![
        "run",
        pipeline.to_str().unwrap(),
        "--json",
        "--device",
        "cuda",
        "--cache-dir",
        cache.to_str().unwrap(),
    ];
    for s in [
        "n=40",
        "steps=6",
        "eval_steps=6",
        "population=8",
        "generations=2",
        "supernet.amp=true",
        "supernet.channels_last=true",
        "distill.amp=true",
        "distill.channels_last=true",
        "original.amp=true",
        "original.channels_last=true",
    ] {
        args.extend(["--set", s]);
    }
    let o = p.run(&args);
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    assert_eq!(summary(&o)["failed"], 0);

    let o = p.run(&[
        "runs",
        "--run",
        "1",
        "--json",
        "--cache-dir",
        cache.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let on_gpu: Vec<&serde_json::Value> = rows
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["status"] == "executed" && r["device"] == "cuda:0")
        .collect();
    assert!(!on_gpu.is_empty(), "{rows}");
    for r in on_gpu {
        if ["supernet", "distill", "original"].contains(&r["node"].as_str().unwrap()) {
            let peak = r["peak_gpu_bytes"].as_u64().unwrap_or(0);
            assert!(peak > 0, "no peak GPU memory for {}: {r}", r["node"]);
        }
    }
}
