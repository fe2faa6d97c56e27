//! Model latency: warm-up runs, then the median of N timed runs, with the device, batch
//! size and resolution recorded so a number is never reported without its conditions.
//! On CUDA every run is followed by a device synchronisation, so the time covers the
//! kernels and not only their launch.

use std::time::Instant;

use serde::Serialize;
use tch::{Device, Tensor};

use crate::error::{MetricsError, Result};

/// How many runs to discard and how many to time.
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize, Serialize)]
pub struct LatencyConfig {
    pub warmup: usize,
    pub runs: usize,
}

impl Default for LatencyConfig {
    fn default() -> Self {
        LatencyConfig {
            warmup: 10,
            runs: 50,
        }
    }
}

/// Timing summary in milliseconds per forward pass of the whole batch.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatencyReport {
    pub median_ms: f64,
    pub mean_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    pub warmup: usize,
    pub runs: usize,
    /// `cpu`, `cuda:0`, ...
    pub device: String,
    pub batch: i64,
    pub channels: i64,
    pub height: i64,
    pub width: i64,
    /// libtorch intra-op threads at measurement time (CPU latency depends on it).
    pub threads: i32,
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

fn device_name(device: Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(i) => format!("cuda:{i}"),
        Device::Mps => "mps".into(),
        Device::Vulkan => "vulkan".into(),
    }
}

/// Times `forward(input)` (no gradient); `input` is `N x C x H x W` on the target device.
pub fn measure_latency<F>(
    input: &Tensor,
    cfg: &LatencyConfig,
    mut forward: F,
) -> Result<LatencyReport>
where
    F: FnMut(&Tensor) -> Result<Tensor>,
{
    let s = input.size();
    let [batch, channels, height, width] = s.as_slice() else {
        return Err(MetricsError::InvalidParam(format!(
            "latency input must be N x C x H x W, got {s:?}"
        )));
    };
    if cfg.runs == 0 {
        return Err(MetricsError::InvalidParam(
            "latency runs must be >= 1".into(),
        ));
    }
    let device = input.device();
    let _guard = tch::no_grad_guard();
    for _ in 0..cfg.warmup {
        let _warm = forward(input)?;
        sync(device);
    }
    let mut times = Vec::with_capacity(cfg.runs);
    for _ in 0..cfg.runs {
        sync(device);
        let t = Instant::now();
        let out = forward(input)?;
        sync(device);
        times.push(t.elapsed().as_secs_f64() * 1e3);
        drop(out);
    }
    Ok(summarize(
        &times,
        cfg,
        device,
        [*batch, *channels, *height, *width],
    ))
}

fn summarize(times: &[f64], cfg: &LatencyConfig, device: Device, shape: [i64; 4]) -> LatencyReport {
    let mut sorted = times.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let median = if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    };
    LatencyReport {
        median_ms: median,
        mean_ms: sorted.iter().sum::<f64>() / n as f64,
        min_ms: sorted[0],
        max_ms: sorted[n - 1],
        warmup: cfg.warmup,
        runs: n,
        device: device_name(device),
        batch: shape[0],
        channels: shape[1],
        height: shape[2],
        width: shape[3],
        threads: tch::get_num_threads(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn median_of_even_and_odd() {
        let cfg = LatencyConfig { warmup: 0, runs: 4 };
        let r = summarize(&[4.0, 1.0, 3.0, 2.0], &cfg, Device::Cpu, [1, 3, 8, 8]);
        assert_eq!(r.median_ms, 2.5);
        let r = summarize(&[5.0, 1.0, 3.0], &cfg, Device::Cpu, [1, 3, 8, 8]);
        assert_eq!(r.median_ms, 3.0);
        assert_eq!((r.min_ms, r.max_ms), (1.0, 5.0));
    }

    #[test]
    fn records_conditions_and_counts_calls() {
        let x = Tensor::zeros([2, 3, 8, 16], (Kind::Float, Device::Cpu));
        let mut calls = 0;
        let r = measure_latency(&x, &LatencyConfig { warmup: 2, runs: 5 }, |t| {
            calls += 1;
            Ok(t.relu())
        })
        .unwrap();
        assert_eq!(calls, 7);
        assert_eq!((r.batch, r.channels, r.height, r.width), (2, 3, 8, 16));
        assert_eq!(r.device, "cpu");
        assert_eq!(r.runs, 5);
        assert!(r.min_ms <= r.median_ms && r.median_ms <= r.max_ms);
        assert!(
            measure_latency(&x, &LatencyConfig { warmup: 0, runs: 0 }, |t| Ok(t.relu())).is_err()
        );
    }
}
