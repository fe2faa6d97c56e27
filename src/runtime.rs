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
    let count = if choice == DeviceChoice::Cpu {
        0
    } else {
        cuda_device_count()
    };
    match choice {
        DeviceChoice::Cpu => Ok(("cpu".into(), vec![])),
        DeviceChoice::Auto | DeviceChoice::Cuda if count > 0 => {
            Ok(("cuda".into(), (0..count).collect()))
        }
        DeviceChoice::Auto => Ok(("cpu".into(), vec![])),
        DeviceChoice::Cuda => Err(
            "--device cuda: no CUDA device is visible (no NVIDIA driver, or CUDA_VISIBLE_DEVICES \
             hides every GPU); use --device cpu or auto"
                .into(),
        ),
    }
}

/// GPUs visible to the CUDA driver (honours `CUDA_VISIBLE_DEVICES`), asked of
/// `libcuda.so.1` directly: the head process stays free of libtorch, whose start-up alone
/// costs about a second. The stage processes check again through libtorch and refuse a
/// CUDA device it cannot use.
pub fn cuda_device_count() -> usize {
    type CuInit = unsafe extern "C" fn(u32) -> i32;
    type CuDeviceGetCount = unsafe extern "C" fn(*mut i32) -> i32;
    // SAFETY: loading the NVIDIA driver library runs its initialisers, as any CUDA program
    // does; the two symbols have these C signatures in every driver API version.
    unsafe {
        let Ok(lib) = libloading::Library::new("libcuda.so.1") else {
            return 0;
        };
        let (Ok(init), Ok(count)) = (
            lib.get::<CuInit>(b"cuInit\0"),
            lib.get::<CuDeviceGetCount>(b"cuDeviceGetCount\0"),
        ) else {
            return 0;
        };
        if init(0) != 0 {
            return 0;
        }
        let mut n: i32 = 0;
        if count(&mut n) != 0 {
            return 0;
        }
        n.max(0) as usize
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
