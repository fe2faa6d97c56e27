// The few libtorch calls that tch 0.24 does not expose. Every function catches C++
// exceptions (they must not unwind into Rust) and reports failure through its return value;
// the message is kept per thread for `ugc_ext_last_error`.
//
// Tensors cross the boundary as `at::Tensor*`, the representation tch uses for its
// `C_tensor` handles: results are heap-allocated and owned by the Rust `tch::Tensor` that
// wraps them (tch frees them with `delete`).

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <c10/core/CachingDeviceAllocator.h>

#include <cstdint>
#include <string>
#include <vector>

#include "guarded.h"

namespace {
thread_local std::string last_error;

at::MemoryFormat memory_format(int channels_last) {
  return channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

at::DeviceType device_type(int code) {
  return code == 1 ? at::kCUDA : at::kCPU;
}

at::ScalarType autocast_dtype(int code) {
  return code == 1 ? at::kBFloat16 : at::kHalf;
}
}  // namespace

// guarded.h's per-thread error slot.
void ugc_ext_set_error(const std::string& msg) { last_error = msg; }

extern "C" {

const char* ugc_ext_last_error() { return last_error.c_str(); }

// `at::leaky_relu(x, slope)`: the native kernel and its native backward.
int ugc_leaky_relu(const at::Tensor* x, double slope, at::Tensor** out) {
  return guarded([&] { *out = new at::Tensor(at::leaky_relu(*x, slope)); });
}

// `x.contiguous(memory_format)`.
int ugc_contiguous(const at::Tensor* x, int channels_last, at::Tensor** out) {
  return guarded([&] { *out = new at::Tensor(x->contiguous(memory_format(channels_last))); });
}

// Whether `x` is contiguous in the given memory format (1 / 0).
int ugc_is_contiguous(const at::Tensor* x, int channels_last, int* out) {
  return guarded([&] { *out = x->is_contiguous(memory_format(channels_last)) ? 1 : 0; });
}

// Re-lays a parameter in place (`param.data = param.contiguous(fmt)`, as
// `nn.Module.to(memory_format=...)` does): every handle to it sees the new layout.
int ugc_set_memory_format(at::Tensor* x, int channels_last) {
  return guarded([&] {
    at::NoGradGuard no_grad;
    x->set_data(x->contiguous(memory_format(channels_last)));
  });
}

// Enters an autocast region for a device type (0 CPU, 1 CUDA) and dtype (0 float16,
// 1 bfloat16); the previous state goes to `prev_enabled` / `prev_dtype` for the exit call.
int ugc_autocast_enter(int device, int dtype, int* prev_enabled, int* prev_dtype) {
  return guarded([&] {
    auto t = device_type(device);
    *prev_enabled = at::autocast::is_autocast_enabled(t) ? 1 : 0;
    *prev_dtype = at::autocast::get_autocast_dtype(t) == at::kBFloat16 ? 1 : 0;
    at::autocast::set_autocast_dtype(t, autocast_dtype(dtype));
    at::autocast::set_autocast_enabled(t, true);
    at::autocast::increment_nesting();
  });
}

// Leaves the region: restores the previous state and drops the cast cache when the
// outermost region closes (as `torch.autocast.__exit__` does).
int ugc_autocast_exit(int device, int prev_enabled, int prev_dtype) {
  return guarded([&] {
    auto t = device_type(device);
    if (at::autocast::decrement_nesting() == 0) {
      at::autocast::clear_cache();
    }
    at::autocast::set_autocast_enabled(t, prev_enabled != 0);
    at::autocast::set_autocast_dtype(t, autocast_dtype(prev_dtype));
  });
}

// `param.grad = None` (`zero_grad(set_to_none=True)`, PyTorch's default): the next backward
// writes a fresh gradient instead of filling zeros and accumulating into them.
int ugc_clear_grad(at::Tensor* x) {
  return guarded([&] { x->mutable_grad() = at::Tensor(); });
}

// `torch.optim.Adam(fused=True)`'s update of n parameters in one call:
// `at::_fused_adam_` (one multi-tensor kernel on CUDA, one vectorised pass per tensor on
// the CPU). `step` is the step count after this update (a float32 scalar on the
// parameters' device); every gradient must be defined.
int ugc_fused_adam(at::Tensor* const* params, at::Tensor* const* grads, at::Tensor* const* m,
                   at::Tensor* const* v, int n, const at::Tensor* step, double lr, double beta1,
                   double beta2, double eps) {
  return guarded([&] {
    at::NoGradGuard no_grad;
    std::vector<at::Tensor> p_, g_, m_, v_, s_;
    for (int i = 0; i < n; ++i) {
      p_.push_back(*params[i]);
      g_.push_back(*grads[i]);
      m_.push_back(*m[i]);
      v_.push_back(*v[i]);
      s_.push_back(*step);
    }
    at::_fused_adam_(p_, g_, m_, v_, {}, s_, lr, beta1, beta2, /*weight_decay=*/0.0, eps,
                     /*amsgrad=*/false, /*maximize=*/false);
  });
}

// The CUDA caching allocator's statistics for one device, in bytes:
// out = [allocated current, allocated peak, reserved current, reserved peak]
// (`torch.cuda.memory_allocated / max_memory_allocated / memory_reserved /
// max_memory_reserved`). Returns 1 when CUDA's allocator is not initialised.
int ugc_cuda_memory_stats(int device, int64_t* out) {
  int status = 0;
  int rc = guarded([&] {
    auto* alloc = c10::getDeviceAllocator(at::kCUDA);
    if (!alloc->initialized()) {
      status = 1;
      return;
    }
    auto stats = alloc->getDeviceStats(static_cast<c10::DeviceIndex>(device));
    const auto all = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    out[0] = stats.allocated_bytes[all].current;
    out[1] = stats.allocated_bytes[all].peak;
    out[2] = stats.reserved_bytes[all].current;
    out[3] = stats.reserved_bytes[all].peak;
  });
  return rc != 0 ? rc : status;
}

// `torch.cuda.reset_peak_memory_stats(device)`.
int ugc_cuda_reset_peak(int device) {
  return guarded([&] {
    auto* alloc = c10::getDeviceAllocator(at::kCUDA);
    if (alloc->initialized()) {
      alloc->resetPeakStats(static_cast<c10::DeviceIndex>(device));
    }
  });
}

}  // extern "C"
