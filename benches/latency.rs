//! Issue #7 item 2: inference latency of exported students against the original model.
//!
//!     cargo bench --bench latency -- [--threads N] [--size S] [--runs R] [--warmup W]
//!         [--device cpu|cuda] [--out DIR]
//!
//! Builds the official pix2pix ResNet generator (ngf 64, 9 blocks), exports two sub-nets
//! of it with `ugc_nn::export::export_subnet` (a uniform 3/8-width student with every block,
//! and the search space's smallest sub-net), reloads every model through
//! `ugc_nn::export::load_model` (so the timed network is exactly what a user deploys) and
//! times a batch-1 forward at `S x S` with `ugc_metrics::latency::measure_latency`
//! (median of R runs after W warm-up runs). Prints one JSON line per model; the model
//! directories are kept in `--out` so `scripts/bench/latency.py` can time the same
//! architectures in PyTorch eager.

use std::path::PathBuf;

use serde_json::json;
use tch::{Device, Kind, Tensor, nn::VarStore};
use ugc_metrics::latency::{LatencyConfig, measure_latency};
use ugc_nn::export::{export_subnet, load_model};
use ugc_nn::{Arch, ArchConfig, Mode, SubnetConfig, build_generator, generator::profile};

struct Args {
    threads: i32,
    size: i64,
    runs: usize,
    warmup: usize,
    device: Device,
    out: PathBuf,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        threads: 2,
        size: 256,
        runs: 7,
        warmup: 2,
        device: Device::Cpu,
        out: PathBuf::from("target/bench/latency"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        // `cargo bench` appends `--bench`; ignore it.
        if flag == "--bench" {
            continue;
        }
        let v = it
            .next()
            .ok_or_else(|| format!("flag `{flag}` needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("bad value `{v}` for `{flag}`: {e}");
        match flag.as_str() {
            "--threads" => a.threads = v.parse().map_err(|e| bad(&e))?,
            "--size" => a.size = v.parse().map_err(|e| bad(&e))?,
            "--runs" => a.runs = v.parse().map_err(|e| bad(&e))?,
            "--warmup" => a.warmup = v.parse().map_err(|e| bad(&e))?,
            "--out" => a.out = PathBuf::from(&v),
            "--device" => {
                a.device = match v.as_str() {
                    "cpu" => Device::Cpu,
                    "cuda" => Device::Cuda(0),
                    _ => return Err(bad(&"expected cpu or cuda")),
                }
            }
            _ => return Err(format!("unknown flag `{flag}`")),
        }
    }
    Ok(a)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    tch::set_num_threads(args.threads);
    tch::manual_seed(0);
    if let Device::Cuda(_) = args.device {
        tch::Cuda::cudnn_set_benchmark(true);
    }
    let chw = [3, args.size, args.size];

    // The original model, randomly initialised (latency does not depend on the values).
    let original = ArchConfig::new(Arch::Pix2PixResnet);
    let vs = VarStore::new(Device::Cpu);
    let supernet = build_generator(&vs.root(), &original)?;
    let space = supernet.search_space();
    let largest = space.largest();
    let three_eighths = SubnetConfig {
        widths: space
            .widths
            .iter()
            .map(|w| (w.full as f64 * 0.375).round() as i64)
            .collect(),
        depth: vec![true; space.blocks.len()],
    };
    let smallest = space.smallest();

    let full_cost = profile(&original, Some(&largest), chw)?;
    let mut original_ms = None;
    for (name, sub) in [
        ("original", &largest),
        ("student_w0.375", &three_eighths),
        ("student_smallest", &smallest),
    ] {
        let dir = args.out.join(name);
        let meta = export_subnet(supernet.as_ref(), sub, &dir)?;
        let (_, model) = load_model(&dir, args.device)?;
        let run_sub = model.generator.search_space().largest();
        let cost = profile(&meta.arch, Some(&run_sub), chw)?;
        let x = Tensor::randn([1, 3, args.size, args.size], (Kind::Float, args.device));
        let report = measure_latency(
            &x,
            &LatencyConfig {
                warmup: args.warmup,
                runs: args.runs,
            },
            |x| {
                model
                    .generator
                    .forward(x, &run_sub, Mode::Eval)
                    .map_err(|e| ugc_metrics::MetricsError::InvalidParam(e.to_string()))
            },
        )?;
        let base = *original_ms.get_or_insert(report.median_ms);
        println!(
            "{}",
            json!({
                "bench": "latency",
                "impl": "ugc-pipe",
                "model": name,
                "dir": dir,
                "config": sub.to_string(),
                "macs": cost.macs,
                "params": cost.params,
                "macs_ratio": full_cost.macs as f64 / cost.macs as f64,
                "median_ms": report.median_ms,
                "min_ms": report.min_ms,
                "max_ms": report.max_ms,
                "runs": report.runs,
                "warmup": report.warmup,
                "speedup": base / report.median_ms,
                "device": report.device,
                "threads": report.threads,
                "size": args.size,
            })
        );
    }
    Ok(())
}
