//! CPU forward latency of a generator at batch 1 (issue #3's measurement):
//!
//!     cargo run --release -p ugc-nn --example forward_latency -- ARCH NGF [SIZE] [RUNS] [THREADS]
//!
//! Builds the full model with random weights, runs 3 warm-up forwards, then prints the
//! median, min and max of RUNS timed forwards (eval mode, no grad) as one JSON line.

use std::time::Instant;

use tch::{Device, Kind, Tensor, nn::VarStore};
use ugc_nn::{ArchConfig, Mode, build_generator};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arch = args
        .first()
        .map(String::as_str)
        .unwrap_or("pix2pix-resnet")
        .parse()?;
    let ngf: i64 = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(64);
    let size: i64 = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(256);
    let runs: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(20);
    let threads: i32 = args.get(4).map(|s| s.parse()).transpose()?.unwrap_or(1);
    tch::set_num_threads(threads);
    tch::manual_seed(0);
    let mut cfg = ArchConfig::new(arch);
    cfg.ngf = ngf;
    let vs = VarStore::new(Device::Cpu);
    let generator = build_generator(&vs.root(), &cfg)?;
    let full = generator.search_space().largest();
    let x = Tensor::randn([1, cfg.input_nc, size, size], (Kind::Float, Device::Cpu));
    let forward = || tch::no_grad(|| generator.forward(&x, &full, Mode::Eval));
    for _ in 0..3 {
        let _ = forward()?;
    }
    let mut ms = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        let y = forward()?;
        let _ = y.sum(Kind::Float).double_value(&[]);
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(f64::total_cmp);
    let cost = ugc_nn::profile(&cfg, None, [cfg.input_nc, size, size])?;
    println!(
        "{{\"arch\":\"{arch}\",\"ngf\":{ngf},\"size\":{size},\"threads\":{threads},\"runs\":{runs},\"median_ms\":{:.2},\"min_ms\":{:.2},\"max_ms\":{:.2},\"macs\":{},\"params\":{}}}",
        ms[runs / 2],
        ms[0],
        ms[runs - 1],
        cost.macs,
        cost.params
    );
    Ok(())
}
