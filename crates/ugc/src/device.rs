//! Devices: the engine's [`DeviceKind`] as a `tch::Device`, and settings that only make
//! sense on an accelerator.

use tch::Device;
use ugc_engine::DeviceKind;

use crate::error::MethodError;

/// Maps the engine's device to a `tch::Device`; refuses a CUDA device libtorch cannot see
/// (rather than silently training on the CPU).
pub fn tch_device(kind: DeviceKind) -> Result<Device, MethodError> {
    match kind {
        DeviceKind::Cpu => Ok(Device::Cpu),
        DeviceKind::Cuda(i) => {
            let n = tch::Cuda::device_count();
            if (i as i64) < n {
                Ok(Device::Cuda(i))
            } else {
                Err(MethodError::param(
                    "device",
                    kind,
                    format!("libtorch sees {n} CUDA device(s)"),
                ))
            }
        }
    }
}

/// Whether mixed-precision autocast may be used: on CUDA only, and only when asked for.
/// tch 0.24 exposes libtorch's autocast switch but not its dtype, so autocast runs in
/// libtorch's CUDA default (float16), not bfloat16; it is therefore opt-in.
pub fn use_autocast(device: Device, requested: bool) -> bool {
    requested && device.is_cuda()
}

/// Runs `f` under autocast when [`use_autocast`] allows it, plainly otherwise.
pub fn maybe_autocast<T>(enabled: bool, f: impl FnOnce() -> T) -> T {
    if enabled { tch::autocast(true, f) } else { f() }
}

/// Derives the seed of one training step from the stage seed, so that random state after
/// a resume is a pure function of `(seed, step)` and needs no stream to be saved.
pub fn step_seed(seed: u64, step: u64, stream: u64) -> u64 {
    // splitmix64 of the combined value: well-mixed, stable across platforms.
    let mut z = seed
        .wrapping_add(step.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(stream.wrapping_mul(0xD1B5_4A32_D192_ED03));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_maps_and_missing_cuda_is_refused() {
        assert_eq!(tch_device(DeviceKind::Cpu).unwrap(), Device::Cpu);
        if tch::Cuda::device_count() == 0 {
            let e = tch_device(DeviceKind::Cuda(0)).unwrap_err().to_string();
            assert!(e.contains("device = cuda:0"), "{e}");
        }
        assert!(!use_autocast(Device::Cpu, true));
    }

    #[test]
    fn step_seeds_differ_and_are_stable() {
        assert_ne!(step_seed(1, 0, 0), step_seed(1, 1, 0));
        assert_ne!(step_seed(1, 0, 0), step_seed(1, 0, 1));
        assert_eq!(step_seed(7, 3, 2), step_seed(7, 3, 2));
    }
}
