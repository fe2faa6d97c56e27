//! What the current process runs on: the resolved device, the GPUs, and the environment
//! fingerprint that enters every cache key.

use std::collections::BTreeMap;

/// `--device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceChoice {
    /// CUDA when a GPU is visible, else CPU.
    Auto,
    Cpu,
    Cuda,
}

/// The PyTorch release whose libtorch this binary links (tch 0.24 is built for it).
pub const LIBTORCH_VERSION: &str = "2.11.0";

/// Resolves `--device` into (device kind name, GPU indices). Asking for CUDA on a machine
/// without it is an error, not a silent CPU run.
pub fn resolve_device(choice: DeviceChoice) -> Result<(String, Vec<usize>), String> {
    let cuda = tch::Cuda::is_available();
    let count = if cuda {
        tch::Cuda::device_count().max(0) as usize
    } else {
        0
    };
    match choice {
        DeviceChoice::Cpu => Ok(("cpu".into(), vec![])),
        DeviceChoice::Auto if count > 0 => Ok(("cuda".into(), (0..count).collect())),
        DeviceChoice::Auto => Ok(("cpu".into(), vec![])),
        DeviceChoice::Cuda if count > 0 => Ok(("cuda".into(), (0..count).collect())),
        DeviceChoice::Cuda => Err(
            "--device cuda: no CUDA device is visible to libtorch (use --device cpu or auto)"
                .into(),
        ),
    }
}

/// The environment fingerprint of every cache key: what, besides inputs and parameters,
/// changes what a stage computes.
pub fn fingerprint() -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    env.insert("ugc_pipe".into(), env!("CARGO_PKG_VERSION").into());
    env.insert("libtorch".into(), LIBTORCH_VERSION.into());
    // Stages seed every RNG from their parameters and run deterministic kernels on the CPU.
    env.insert("determinism".into(), "seeded".into());
    env
}
