//! Times FID feature extraction (quantise to 8 bits, bilinear resize to 299, Inception-v3
//! pool3) for N random 256x256 images.
//!
//! `cargo run -p ugc-metrics --example fid_feature_timing -- [N] [BATCH] [WEIGHTS.safetensors]`
//!
//! Without a weights file the network has random weights: the arithmetic (and so the time)
//! is the same as with the real weights, but the features are meaningless.

use std::path::Path;
use std::time::Instant;

use tch::{Device, Kind, Tensor};
use ugc_metrics::features::{FeatureExtractor, Rounding, quantize_8bit};
use ugc_metrics::inception::FidInception;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: i64 = args.first().map(|s| s.parse()).transpose()?.unwrap_or(1000);
    let batch: i64 = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(50);
    let device = Device::cuda_if_available();
    tch::manual_seed(0);
    let net = match args.get(2) {
        Some(p) => FidInception::load(Path::new(p), device)?,
        None => FidInception::random(device),
    };
    let id = net.identity();
    println!(
        "evaluator {} | device {device:?} | threads {} | {n} images 3x256x256, batch {batch}",
        id.name,
        tch::get_num_threads()
    );
    let start = Instant::now();
    let mut done = 0;
    let mut feats = Vec::new();
    while done < n {
        let b = batch.min(n - done);
        // Generator-like outputs in [-1, 1], quantised as saved PNGs would be.
        let fake = Tensor::rand([b, 3, 256, 256], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
        let images = quantize_8bit(&fake, Rounding::Truncate);
        feats.push(net.features(&images)?);
        done += b;
        eprintln!("{done}/{n} images, {:.1} s", start.elapsed().as_secs_f64());
    }
    let secs = start.elapsed().as_secs_f64();
    let f = Tensor::cat(&feats, 0);
    println!(
        "features {:?} in {secs:.1} s ({:.1} ms/image, {:.1} images/s)",
        f.size(),
        1e3 * secs / n as f64,
        n as f64 / secs
    );
    Ok(())
}
