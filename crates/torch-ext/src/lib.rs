//! The few libtorch calls tch 0.24 does not expose, through a small C++ shim
//! (`cpp/ext.cpp`, compiled against the same libtorch headers by `build.rs`):
//!
//! - [`leaky_relu`] with a slope: tch's generator drops scalar arguments that have defaults,
//!   so `Tensor::leaky_relu` is fixed at 0.01, and the `where(x >= 0, x, s x)` workaround
//!   costs about 3x the native kernel in forward + backward (docs/benchmarks.md);
//! - memory formats ([`to_channels_last`], [`set_channels_last`], [`is_channels_last`]):
//!   NHWC convolutions, the layout cuDNN's tensor-core kernels want;
//! - [`autocast`] with a chosen dtype and device: tch's `autocast` turns on CUDA autocast
//!   in libtorch's default float16 only;
//! - [`fused_adam`] (`torch.optim.Adam(fused=True)`) and [`clear_grad`] (`grad = None`);
//! - [`cuda_memory`]: the CUDA caching allocator's statistics
//!   (`torch.cuda.max_memory_allocated` and friends), for the run registry's peak GPU memory;
//! - [`dist`]: c10d process groups (Gloo, NCCL), collectives and the bucketed gradient
//!   reducer of data-parallel stages (`cpp/dist.cpp`);
//! - [`pth`]: state dicts as `torch.save` writes them (and safetensors), read without
//!   Python, for every crate that takes weights ([`pth::read_state_dict`]).

use std::ffi::CStr;
use std::os::raw::c_int;

use tch::{Device, TchError, Tensor};

pub mod dist;
pub mod pth;

pub(crate) mod ffi {
    use std::os::raw::{c_char, c_int};

    /// Opaque `at::Tensor`, the object behind tch's `C_tensor` handles.
    #[repr(C)]
    pub struct AtTensor {
        _private: [u8; 0],
    }

    unsafe extern "C" {
        pub fn ugc_ext_last_error() -> *const c_char;
        pub fn ugc_leaky_relu(x: *const AtTensor, slope: f64, out: *mut *mut AtTensor) -> c_int;
        pub fn ugc_contiguous(
            x: *const AtTensor,
            channels_last: c_int,
            out: *mut *mut AtTensor,
        ) -> c_int;
        pub fn ugc_is_contiguous(
            x: *const AtTensor,
            channels_last: c_int,
            out: *mut c_int,
        ) -> c_int;
        pub fn ugc_set_memory_format(x: *mut AtTensor, channels_last: c_int) -> c_int;
        pub fn ugc_autocast_enter(
            device: c_int,
            dtype: c_int,
            prev_enabled: *mut c_int,
            prev_dtype: *mut c_int,
        ) -> c_int;
        pub fn ugc_autocast_exit(device: c_int, prev_enabled: c_int, prev_dtype: c_int) -> c_int;
        pub fn ugc_clear_grad(x: *mut AtTensor) -> c_int;
        pub fn ugc_fused_adam(
            params: *const *mut AtTensor,
            grads: *const *mut AtTensor,
            m: *const *mut AtTensor,
            v: *const *mut AtTensor,
            n: c_int,
            step: *const AtTensor,
            lr: f64,
            beta1: f64,
            beta2: f64,
            eps: f64,
        ) -> c_int;
        pub fn ugc_cuda_memory_stats(device: c_int, out: *mut i64) -> c_int;
        pub fn ugc_cuda_reset_peak(device: c_int) -> c_int;
    }
}

/// The shim's message for a non-zero return on this thread.
pub(crate) fn last_error() -> TchError {
    // SAFETY: the shim returns a pointer to a thread-local, NUL-terminated string that
    // stays valid until the next failing call on this thread; it is copied at once.
    let msg = unsafe { CStr::from_ptr(ffi::ugc_ext_last_error()) };
    TchError::Torch(msg.to_string_lossy().into_owned())
}

pub(crate) fn check(rc: c_int) -> Result<(), TchError> {
    if rc < 0 { Err(last_error()) } else { Ok(()) }
}

pub(crate) fn raw(t: &Tensor) -> *const ffi::AtTensor {
    t.as_ptr() as *const ffi::AtTensor
}

/// Wraps a tensor the shim allocated after a zero return; tch frees it on drop.
fn owned(rc: c_int, p: *mut ffi::AtTensor) -> Result<Tensor, TchError> {
    check(rc)?;
    // SAFETY: on success the shim stored a fresh `new at::Tensor(..)` in `p`, which is
    // exactly what `Tensor::from_ptr` takes ownership of.
    Ok(unsafe { Tensor::from_ptr(p as *mut _) })
}

/// `F.leaky_relu(x, slope)`: libtorch's kernel, with its native backward.
pub fn f_leaky_relu(x: &Tensor, slope: f64) -> Result<Tensor, TchError> {
    let mut out = std::ptr::null_mut();
    // SAFETY: `x` is a live tensor handle; `out` is written only on success.
    let rc = unsafe { ffi::ugc_leaky_relu(raw(x), slope, &mut out) };
    owned(rc, out)
}

/// [`f_leaky_relu`] for callers whose input is known to be valid (a floating tensor);
/// panics like tch's own infallible methods otherwise.
pub fn leaky_relu(x: &Tensor, slope: f64) -> Tensor {
    f_leaky_relu(x, slope).unwrap_or_else(|e| panic!("leaky_relu: {e}"))
}

/// `x.contiguous(memory_format=torch.channels_last)` (a copy unless already NHWC).
pub fn to_channels_last(x: &Tensor) -> Result<Tensor, TchError> {
    let mut out = std::ptr::null_mut();
    // SAFETY: as in `f_leaky_relu`.
    let rc = unsafe { ffi::ugc_contiguous(raw(x), 1, &mut out) };
    owned(rc, out)
}

/// Whether `x` is laid out channels-last (NHWC strides).
pub fn is_channels_last(x: &Tensor) -> Result<bool, TchError> {
    let mut out = 0;
    // SAFETY: `x` is a live handle; `out` is a valid `int`.
    check(unsafe { ffi::ugc_is_contiguous(raw(x), 1, &mut out) })?;
    Ok(out == 1)
}

/// Re-lays a 4-D parameter as channels-last (`true`) or back to the default contiguous
/// layout (`false`) in place (`param.data = ...`), so the module that holds it and every
/// other handle see the new layout; tensors of another rank are left as they are (as
/// `nn.Module.to(memory_format=...)` does).
pub fn set_memory_format(p: &Tensor, channels_last: bool) -> Result<(), TchError> {
    if p.dim() != 4 {
        return Ok(());
    }
    // SAFETY: the shim swaps the tensor's data under a no-grad guard; `p` stays a valid
    // handle to the same tensor object.
    check(unsafe {
        ffi::ugc_set_memory_format(p.as_ptr() as *mut ffi::AtTensor, c_int::from(channels_last))
    })
}

/// [`set_memory_format`] to channels-last.
pub fn set_channels_last(p: &Tensor) -> Result<(), TchError> {
    set_memory_format(p, true)
}

/// Mixed-precision dtype for [`autocast`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutocastDtype {
    Float16,
    BFloat16,
}

/// Runs `f` with libtorch's autocast enabled for `device`'s type (CPU or CUDA) in `dtype`,
/// restoring the previous state afterwards (also when `f` panics).
pub fn autocast<T>(device: Device, dtype: AutocastDtype, f: impl FnOnce() -> T) -> T {
    struct Exit {
        device: c_int,
        prev_enabled: c_int,
        prev_dtype: c_int,
    }
    impl Drop for Exit {
        fn drop(&mut self) {
            // SAFETY: plain values; the shim only touches libtorch's thread-local state.
            let rc =
                unsafe { ffi::ugc_autocast_exit(self.device, self.prev_enabled, self.prev_dtype) };
            debug_assert_eq!(rc, 0, "autocast exit failed");
        }
    }
    let device = c_int::from(device.is_cuda());
    let dtype = match dtype {
        AutocastDtype::Float16 => 0,
        AutocastDtype::BFloat16 => 1,
    };
    let (mut prev_enabled, mut prev_dtype) = (0, 0);
    // SAFETY: out-parameters are valid `int`s.
    let rc = unsafe { ffi::ugc_autocast_enter(device, dtype, &mut prev_enabled, &mut prev_dtype) };
    if rc != 0 {
        // Setting a thread-local flag cannot fail for CPU/CUDA; run plainly if it ever does.
        return f();
    }
    let _exit = Exit {
        device,
        prev_enabled,
        prev_dtype,
    };
    f()
}

/// Drops `p`'s gradient (`p.grad = None`, what `zero_grad()` does in PyTorch): the next
/// backward writes a fresh gradient instead of zero-filling and accumulating.
pub fn clear_grad(p: &Tensor) -> Result<(), TchError> {
    // SAFETY: `p` is a live handle; the shim resets its gradient slot only.
    check(unsafe { ffi::ugc_clear_grad(p.as_ptr() as *mut ffi::AtTensor) })
}

/// Hyper-parameters of [`fused_adam`] (no weight decay, no amsgrad).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamHyper {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

/// One Adam update of every parameter, in place, with libtorch's fused kernel
/// (`torch.optim.Adam(fused=True)`): `params[i] -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps)`
/// after the moment updates, with `bc = 1 - beta^step`. `step` is the count *after* this
/// update, as a float32 scalar on the parameters' device. All lists have the same length
/// and every tensor is defined, on one device, of one floating dtype.
pub fn fused_adam(
    params: &[Tensor],
    grads: &[Tensor],
    m: &[Tensor],
    v: &[Tensor],
    step: &Tensor,
    h: AdamHyper,
) -> Result<(), TchError> {
    let n = params.len();
    if grads.len() != n || m.len() != n || v.len() != n {
        return Err(TchError::Shape(format!(
            "fused_adam: {n} params, {} grads, {} m, {} v",
            grads.len(),
            m.len(),
            v.len()
        )));
    }
    let ptrs = |ts: &[Tensor]| -> Vec<*mut ffi::AtTensor> {
        ts.iter()
            .map(|t| t.as_ptr() as *mut ffi::AtTensor)
            .collect()
    };
    let (p, g, mm, vv) = (ptrs(params), ptrs(grads), ptrs(m), ptrs(v));
    // SAFETY: four arrays of `n` live tensor handles that outlive the call; the shim copies
    // the handles (sharing storage) and updates params, m and v in place.
    check(unsafe {
        ffi::ugc_fused_adam(
            p.as_ptr(),
            g.as_ptr(),
            mm.as_ptr(),
            vv.as_ptr(),
            n as c_int,
            raw(step),
            h.lr,
            h.beta1,
            h.beta2,
            h.eps,
        )
    })
}

/// CUDA caching-allocator statistics of one device, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CudaMemory {
    pub allocated: u64,
    pub peak_allocated: u64,
    pub reserved: u64,
    pub peak_reserved: u64,
}

/// The allocator statistics of CUDA device `index`, or `None` when CUDA is unavailable or
/// its allocator was never used in this process.
pub fn cuda_memory(index: usize) -> Option<CudaMemory> {
    if !tch::Cuda::is_available() || index as i64 >= tch::Cuda::device_count() {
        return None;
    }
    let mut out = [0i64; 4];
    // SAFETY: `out` has the four slots the shim writes.
    let rc = unsafe { ffi::ugc_cuda_memory_stats(index as c_int, out.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    let b = |v: i64| v.max(0) as u64;
    Some(CudaMemory {
        allocated: b(out[0]),
        peak_allocated: b(out[1]),
        reserved: b(out[2]),
        peak_reserved: b(out[3]),
    })
}

/// Resets the peak statistics of CUDA device `index` (no-op without CUDA).
pub fn cuda_reset_peak(index: usize) {
    if tch::Cuda::is_available() && (index as i64) < tch::Cuda::device_count() {
        // SAFETY: plain value.
        let _ = unsafe { ffi::ugc_cuda_reset_peak(index as c_int) };
    }
}

#[cfg(test)]
mod tests;
