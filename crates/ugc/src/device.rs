//! Devices: the engine's [`DeviceKind`] as a `tch::Device`, and settings that only make
//! sense on an accelerator.

use tch::nn::VarStore;
use tch::{Device, Tensor};
use ugc_engine::DeviceKind;
pub use ugc_torch_ext::AutocastDtype;

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

/// GPU speed settings of a training stage, all off on the CPU: mixed-precision autocast
/// of forwards in a chosen dtype, channels-last (NHWC) weights and inputs, and cuDNN's
/// benchmark mode (chosen once per stage process, on CUDA only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Accel {
    /// Autocast dtype (`None` = full float32).
    pub autocast: Option<AutocastDtype>,
    pub channels_last: bool,
}

impl Accel {
    /// From the stage parameters `amp`, `amp_dtype` (`bf16` | `fp16`) and `channels_last`;
    /// on the CPU everything stays off (CPU autocast and NHWC are slower for these nets).
    pub fn new(
        device: Device,
        amp: bool,
        amp_dtype: &str,
        channels_last: bool,
    ) -> Result<Self, MethodError> {
        let dtype = match amp_dtype {
            "bf16" => AutocastDtype::BFloat16,
            "fp16" => AutocastDtype::Float16,
            other => {
                return Err(MethodError::param(
                    "amp_dtype",
                    other,
                    "expected bf16 or fp16",
                ));
            }
        };
        if !device.is_cuda() {
            return Ok(Accel::default());
        }
        tch::Cuda::cudnn_set_benchmark(true);
        Ok(Accel {
            autocast: amp.then_some(dtype),
            channels_last,
        })
    }

    /// Runs `f` (forwards and losses) under autocast when it is on.
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> T {
        match self.autocast {
            // Only the device *type* matters to autocast; `new` allows it on CUDA only.
            Some(dtype) => ugc_torch_ext::autocast(Device::Cuda(0), dtype, f),
            None => f(),
        }
    }

    /// A batch in the layout the weights use.
    pub fn input(&self, x: &Tensor) -> Result<Tensor, MethodError> {
        if self.channels_last && x.dim() == 4 {
            ugc_torch_ext::to_channels_last(x)
                .map_err(|e| MethodError::torch("channels-last input", e))
        } else {
            Ok(x.shallow_clone())
        }
    }

    /// Lays the store's 4-D weights out channels-last when that is on. Call before the
    /// optimiser is built, so its moments (`zeros_like`) take the same layout.
    pub fn prepare(&self, vs: &VarStore) -> Result<(), MethodError> {
        self.relayout(vs, true)
    }

    /// Back to the default layout before weights are saved or exported.
    pub fn finish(&self, vs: &VarStore) -> Result<(), MethodError> {
        self.relayout(vs, false)
    }

    fn relayout(&self, vs: &VarStore, channels_last: bool) -> Result<(), MethodError> {
        if self.channels_last {
            for (_, t) in vs.variables() {
                ugc_torch_ext::set_memory_format(&t, channels_last)
                    .map_err(|e| MethodError::torch("re-laying a weight", e))?;
            }
        }
        Ok(())
    }
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
        let cpu = Accel::new(Device::Cpu, true, "bf16", true).unwrap();
        assert_eq!(cpu, Accel::default(), "GPU settings are off on the CPU");
        let e = Accel::new(Device::Cpu, true, "fp8", false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("amp_dtype = fp8"), "{e}");
    }

    /// The channels-last path on the CPU (where `Accel::new` keeps it off): NHWC weights and
    /// inputs give the same outputs and weight gradients as the default layout, for the
    /// largest and the smallest sub-net of an elastic supernet.
    #[test]
    fn channels_last_supernet_matches_the_default_layout() {
        use ugc_nn::{Arch, ArchConfig, Mode, build_generator};
        let nhwc = Accel {
            autocast: None,
            channels_last: true,
        };
        let cfg = ArchConfig {
            ngf: 8,
            n_blocks: 3,
            ..ArchConfig::new(Arch::Pix2PixResnet)
        };
        let run = |accel: Accel| {
            tch::manual_seed(3);
            let vs = VarStore::new(Device::Cpu);
            let g = build_generator(&vs.root(), &cfg).unwrap();
            accel.prepare(&vs).unwrap();
            let x = accel
                .input(&Tensor::randn(
                    [2, 3, 32, 32],
                    (tch::Kind::Float, Device::Cpu),
                ))
                .unwrap();
            let space = g.search_space();
            let mut outs = Vec::new();
            for sub in [space.largest(), space.smallest()] {
                let y = g.forward(&x, &sub, Mode::Train).unwrap();
                y.square().mean(tch::Kind::Float).backward();
                outs.push(y.contiguous());
            }
            accel.finish(&vs).unwrap();
            let mut grads: Vec<(String, Tensor)> = vs
                .variables()
                .into_iter()
                .filter(|(_, t)| t.requires_grad())
                .map(|(n, t)| (n, t.grad().contiguous()))
                .collect();
            grads.sort_by(|a, b| a.0.cmp(&b.0));
            (outs, grads)
        };
        // Both runs must draw the same weights and input: no parallel test of this binary
        // may use libtorch's one generator in between.
        let _rng = ugc_engine::testing::torch_rng();
        let (o1, g1) = run(nhwc);
        let (o0, g0) = run(Accel::default());
        for (a, b) in o1.iter().zip(&o0) {
            assert!(a.allclose(b, 1e-4, 1e-5, false));
        }
        for ((n, a), (_, b)) in g1.iter().zip(&g0) {
            assert!(a.allclose(b, 1e-3, 1e-5, false), "gradient of {n}");
        }
    }
}
