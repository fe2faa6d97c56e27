// The NCCL backend, in its own file: only it needs the CUDA and NCCL headers (from the
// wheel's nvidia-* packages). build.rs compiles it with UGC_HAVE_NCCL when those headers
// are found; otherwise asking for NCCL fails with a message that says so.

#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

#include <chrono>
#include <stdexcept>

#ifdef UGC_HAVE_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

c10::intrusive_ptr<c10d::Backend> ugc_make_nccl(const c10::intrusive_ptr<c10d::Store>& store,
                                                int rank, int world,
                                                std::chrono::milliseconds timeout) {
#ifdef UGC_HAVE_NCCL
  auto opts = c10d::ProcessGroupNCCL::Options::create();
  opts->timeout = timeout;
  return c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world, opts);
#else
  (void)store;
  (void)rank;
  (void)world;
  (void)timeout;
  throw std::runtime_error(
      "this build of ugc-pipe has no NCCL: the CUDA/NCCL headers of the PyTorch wheel "
      "(nvidia-nccl, nvidia-cuda-runtime) were not found when it was compiled");
#endif
}
