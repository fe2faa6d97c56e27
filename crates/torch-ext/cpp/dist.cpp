// c10d, libtorch's distributed runtime, for data-parallel training stages: a process group
// (Gloo on CPU, NCCL on CUDA, met through a TCPStore), the collectives the training core
// needs, a differentiable all-reduce (synchronised batch norm), and a bucketed gradient
// reducer whose all-reduces overlap the backward pass (what DDP's Reducer does).
//
// Every entry point catches C++ exceptions (a dead peer, a timeout) and reports them
// through its return value and `ugc_ext_last_error`, as ext.cpp does.

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "guarded.h"

// Made in dist_nccl.cpp, which alone needs the CUDA headers.
c10::intrusive_ptr<c10d::Backend> ugc_make_nccl(const c10::intrusive_ptr<c10d::Store>& store,
                                                int rank, int world,
                                                std::chrono::milliseconds timeout);

struct UgcProcessGroup {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
  at::Device device;
  int rank;
  int world;
  std::chrono::milliseconds timeout;
};

namespace {

void wait(const UgcProcessGroup& pg, const c10::intrusive_ptr<c10d::Work>& work) {
  work->wait(pg.timeout);
}

// In-place SUM all-reduce of one contiguous tensor.
void all_reduce_one(const UgcProcessGroup& pg, at::Tensor& t) {
  std::vector<at::Tensor> v{t};
  c10d::AllreduceOptions opts;
  opts.reduceOp = c10d::ReduceOp::SUM;
  opts.timeout = pg.timeout;
  wait(pg, pg.backend->allreduce(v, opts));
}

// Applies `op` to one flat buffer per dtype holding every tensor of `ts`, then copies the
// results back: c10d's collectives take one tensor (a list means one per device).
template <typename Op>
void flat_by_dtype(std::vector<at::Tensor>& ts, Op op) {
  std::vector<at::ScalarType> kinds;
  for (auto& t : ts) {
    if (std::find(kinds.begin(), kinds.end(), t.scalar_type()) == kinds.end()) {
      kinds.push_back(t.scalar_type());
    }
  }
  at::NoGradGuard no_grad;
  for (auto kind : kinds) {
    std::vector<at::Tensor> group;
    std::vector<at::Tensor> flat_parts;
    for (auto& t : ts) {
      if (t.scalar_type() == kind) {
        group.push_back(t);
        flat_parts.push_back(t.reshape({-1}));
      }
    }
    at::Tensor flat = at::cat(flat_parts);
    op(flat);
    int64_t at = 0;
    for (auto& t : group) {
      auto n = t.numel();
      t.copy_(flat.narrow(0, at, n).view(t.sizes()));
      at += n;
    }
  }
}

bool is_loopback(const std::string& host) {
  return host == "127.0.0.1" || host == "localhost" || host == "::1";
}

bool is_loopback_address(const sockaddr* sa) {
  if (sa->sa_family == AF_INET) {
    auto a = ntohl(reinterpret_cast<const sockaddr_in*>(sa)->sin_addr.s_addr);
    return (a >> 24) == 127;
  }
  if (sa->sa_family == AF_INET6) {
    return IN6_IS_ADDR_LOOPBACK(&reinterpret_cast<const sockaddr_in6*>(sa)->sin6_addr);
  }
  return false;
}

// Whether `host` resolves to at least one address and to loopback ones only: Debian's
// `127.0.1.1 <hostname>` line in /etc/hosts, or a container's `127.0.0.1 <hostname>`.
bool resolves_to_loopback_only(const std::string& host) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (getaddrinfo(host.c_str(), nullptr, &hints, &res) != 0 || res == nullptr) {
    return true;  // unresolvable counts as unusable, like loopback
  }
  bool only = true;
  for (auto* ai = res; ai; ai = ai->ai_next) {
    only = only && is_loopback_address(ai->ai_addr);
  }
  freeaddrinfo(res);
  return only;
}

// The numeric address this host sends from to reach `master`: the routing table's choice,
// found by "connecting" a UDP socket, which sends nothing.
std::optional<std::string> local_address_towards(const std::string& master) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_DGRAM;
  addrinfo* res = nullptr;
  if (getaddrinfo(master.c_str(), "9", &hints, &res) != 0) {
    return std::nullopt;
  }
  std::optional<std::string> out;
  for (auto* ai = res; ai && !out; ai = ai->ai_next) {
    int fd = ::socket(ai->ai_family, SOCK_DGRAM, 0);
    if (fd < 0) {
      continue;
    }
    sockaddr_storage local{};
    socklen_t len = sizeof local;
    char name[NI_MAXHOST];
    if (::connect(fd, ai->ai_addr, ai->ai_addrlen) == 0 &&
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len) == 0 &&
        !is_loopback_address(reinterpret_cast<sockaddr*>(&local)) &&
        ::getnameinfo(reinterpret_cast<sockaddr*>(&local), len, name, sizeof name, nullptr, 0,
                      NI_NUMERICHOST) == 0) {
      out = name;
    }
    ::close(fd);
  }
  freeaddrinfo(res);
  return out;
}

// Gloo's transport device, the address this rank's peers connect to:
// 1. the interface named by GLOO_SOCKET_IFNAME (as torch.distributed honours it);
// 2. loopback for a one-machine group (the master is loopback);
// 3. this host's name where it resolves to a non-loopback address (torch.distributed's
//    default, createDefaultDevice);
// 4. else the address this host reaches the master from. torch.distributed would bind
//    loopback here, so ranks on other nodes could not connect: the classic failure of a
//    node whose /etc/hosts maps its own name to 127.0.1.1.
std::shared_ptr<::gloo::transport::Device> gloo_device(const std::string& master) {
  if (const char* ifname = std::getenv("GLOO_SOCKET_IFNAME"); ifname && *ifname) {
    return c10d::ProcessGroupGloo::createDeviceForInterface(ifname);
  }
  if (is_loopback(master)) {
    return c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1");
  }
  char host[256] = {0};
  if (::gethostname(host, sizeof host - 1) == 0 && resolves_to_loopback_only(host)) {
    if (auto local = local_address_towards(master)) {
      return c10d::ProcessGroupGloo::createDeviceForHostname(*local);
    }
  }
  return c10d::ProcessGroupGloo::createDefaultDevice();
}

// c10d's Flight Recorder (a ring of recent collectives for post-mortem dumps, on by
// default) is switched off before the first group exists: nothing here dumps it, and in
// libtorch 2.11 its first record per group inserts into a map before taking its mutex,
// so two groups in one process (the two-rank unit tests run ranks as threads) corrupt the
// heap when their first collectives coincide (seen as a segfault in
// `FlightRecorder::recordWithResetEnabled` and as hung collectives). A user's own
// TORCH_FR_BUFFER_SIZE wins.
void disable_flight_recorder() {
  static std::once_flag once;
  std::call_once(once, [] {
    if (std::getenv("TORCH_FR_BUFFER_SIZE") == nullptr &&
        std::getenv("TORCH_NCCL_TRACE_BUFFER_SIZE") == nullptr) {
      setenv("TORCH_FR_BUFFER_SIZE", "0", 0);
    }
  });
}

}  // namespace

extern "C" {

// Joins the group: rank 0 hosts the TCP store at host:port, every rank connects, then the
// backend (0 Gloo, 1 NCCL) is created over the store. `device` is -1 for CPU or a CUDA index.
int ugc_pg_new(int backend, const char* host, int port, int rank, int world, int64_t timeout_ms,
               int device, UgcProcessGroup** out) {
  return guarded([&] {
    disable_flight_recorder();
    auto timeout = std::chrono::milliseconds(timeout_ms);
    c10d::TCPStoreOptions so;
    so.port = static_cast<std::uint16_t>(port);
    so.isServer = rank == 0;
    so.numWorkers = static_cast<std::size_t>(world);
    so.waitWorkers = true;
    so.timeout = timeout;
    auto store = c10::make_intrusive<c10d::TCPStore>(std::string(host), so);
    c10::intrusive_ptr<c10d::Backend> b;
    if (backend == 1) {
      b = ugc_make_nccl(store, rank, world, timeout);
    } else {
      auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
      opts->devices.push_back(gloo_device(host));
      b = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, opts);
    }
    at::Device dev = device < 0 ? at::Device(at::kCPU)
                                : at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(device));
    *out = new UgcProcessGroup{store, b, dev, rank, world, timeout};
  });
}

void ugc_pg_free(UgcProcessGroup* pg) { delete pg; }

// In-place SUM all-reduce of `n` tensors (any shapes; one collective per dtype).
int ugc_pg_all_reduce(UgcProcessGroup* pg, at::Tensor** ts, int n) {
  return guarded([&] {
    std::vector<at::Tensor> v;
    for (int i = 0; i < n; ++i) v.push_back(*ts[i]);
    flat_by_dtype(v, [&](at::Tensor& flat) { all_reduce_one(*pg, flat); });
  });
}

// In-place broadcast of `n` tensors from `root`.
int ugc_pg_broadcast(UgcProcessGroup* pg, at::Tensor** ts, int n, int root) {
  return guarded([&] {
    std::vector<at::Tensor> v;
    for (int i = 0; i < n; ++i) v.push_back(*ts[i]);
    flat_by_dtype(v, [&](at::Tensor& flat) {
      std::vector<at::Tensor> one{flat};
      c10d::BroadcastOptions opts;
      opts.rootRank = root;
      opts.timeout = pg->timeout;
      wait(*pg, pg->backend->broadcast(one, opts));
    });
  });
}

// Every rank reaches this point: a one-element all-reduce on the group's device (c10d's own
// barrier guesses a CUDA device per rank under NCCL; this one cannot pick the wrong one).
int ugc_pg_barrier(UgcProcessGroup* pg) {
  return guarded([&] {
    auto t = at::zeros({1}, at::TensorOptions().dtype(at::kFloat).device(pg->device));
    all_reduce_one(*pg, t);
  });
}

}  // extern "C"

// ---------------------------------------------------------------------------------------
// Differentiable all-reduce: y = sum over ranks of x; dL/dx = sum over ranks of dL/dy
// (every rank's output depends on every rank's input with coefficient 1).

namespace {

struct AllReduceSum : public torch::autograd::Function<AllReduceSum> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            int64_t pg_addr) {
    ctx->saved_data["pg"] = pg_addr;
    auto* pg = reinterpret_cast<UgcProcessGroup*>(pg_addr);
    auto y = x.contiguous().clone();
    all_reduce_one(*pg, y);
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto* pg = reinterpret_cast<UgcProcessGroup*>(ctx->saved_data["pg"].toInt());
    auto g = grads[0].contiguous().clone();
    all_reduce_one(*pg, g);
    return {g, at::Tensor()};
  }
};

}  // namespace

extern "C" {

// The group must outlive every graph built through it (it lives for the whole stage).
int ugc_pg_all_reduce_autograd(UgcProcessGroup* pg, const at::Tensor* x, at::Tensor** out) {
  return guarded([&] {
    *out = new at::Tensor(AllReduceSum::apply(*x, reinterpret_cast<int64_t>(pg)));
  });
}

}  // extern "C"

// ---------------------------------------------------------------------------------------
// The gradient reducer. Parameters are grouped into buckets (of one dtype and device, up
// to a byte cap); during an armed backward a post-accumulate-grad hook on each parameter
// marks it ready, and a bucket whose parameters are all ready is flattened, scaled and
// all-reduced asynchronously, while the backward goes on. Buckets are launched strictly in
// bucket order, so every rank issues the same collectives in the same order whatever order
// its hooks fire in. `finish` launches the buckets not launched yet (parameters the armed
// backward did not reach, or a step without an armed backward), waits for all, and writes
// the results back into the gradients.
//
// After the first finished step the buckets are rebuilt once in the order rank 0's
// gradients became ready (broadcast, so every rank rebuilds identically): the order the
// backward produces them, which lets the first buckets launch early.
//
// Every bucket carries one extra element, the count of its parameters that have a
// gradient on this rank; after the all-reduce it must be `world` times the local count,
// else the ranks disagree on which parameters have gradients (different sub-nets), and
// finish fails instead of averaging mismatched tensors.

struct UgcGradReducer;

namespace {

struct ReadyHook : public torch::autograd::PostAccumulateGradHook {
  UgcGradReducer* reducer;
  size_t index;
  ReadyHook(UgcGradReducer* r, size_t i) : reducer(r), index(i) {}
  void operator()(const torch::autograd::Variable& tensor) override;
};

}  // namespace

struct UgcGradReducer {
  UgcProcessGroup* pg;
  std::vector<at::Tensor> params;
  double scale;
  int64_t bucket_bytes;
  int64_t first_bucket_bytes;

  std::vector<std::vector<size_t>> buckets;
  std::vector<size_t> bucket_of;

  std::mutex mu;
  bool armed = false;
  std::vector<size_t> pending;  // per bucket: parameters not yet ready
  std::vector<char> ready;      // per parameter
  size_t next = 0;              // next bucket to launch
  std::vector<at::Tensor> flats;
  std::vector<c10::intrusive_ptr<c10d::Work>> works;
  std::vector<int64_t> ready_order;
  bool rebuilt = false;
  std::string error;

  void assign(const std::vector<size_t>& order) {
    buckets.clear();
    bucket_of.assign(params.size(), 0);
    std::vector<size_t> cur;
    int64_t cur_bytes = 0;
    auto cap = [&] { return buckets.empty() ? first_bucket_bytes : bucket_bytes; };
    for (size_t i : order) {
      const auto& p = params[i];
      bool other_kind = !cur.empty() && (params[cur[0]].scalar_type() != p.scalar_type() ||
                                         params[cur[0]].device() != p.device());
      if (!cur.empty() && (other_kind || cur_bytes >= cap())) {
        buckets.push_back(cur);
        cur.clear();
        cur_bytes = 0;
      }
      cur.push_back(i);
      cur_bytes += p.numel() * static_cast<int64_t>(p.element_size());
    }
    if (!cur.empty()) buckets.push_back(cur);
    for (size_t b = 0; b < buckets.size(); ++b) {
      for (size_t i : buckets[b]) bucket_of[i] = b;
    }
    reset();
  }

  void reset() {
    armed = false;
    pending.assign(buckets.size(), 0);
    for (size_t b = 0; b < buckets.size(); ++b) pending[b] = buckets[b].size();
    ready.assign(params.size(), 0);
    next = 0;
    flats.assign(buckets.size(), at::Tensor());
    works.assign(buckets.size(), c10::intrusive_ptr<c10d::Work>());
  }

  // Flattens bucket `b` (a missing gradient as zeros), appends the local count, scales, and
  // starts its all-reduce. Caller holds `mu`.
  void launch(size_t b) {
    at::NoGradGuard no_grad;
    const auto& first = params[buckets[b][0]];
    std::vector<at::Tensor> parts;
    int64_t have = 0;
    for (size_t i : buckets[b]) {
      const auto& g = params[i].grad();
      if (g.defined()) {
        parts.push_back(g.reshape({-1}));
        ++have;
      } else {
        parts.push_back(at::zeros({params[i].numel()}, first.options()));
      }
    }
    parts.push_back(at::full({1}, static_cast<double>(have) / scale, first.options()));
    at::Tensor flat = at::cat(parts);
    flat.mul_(scale);
    std::vector<at::Tensor> v{flat};
    c10d::AllreduceOptions opts;
    opts.reduceOp = c10d::ReduceOp::SUM;
    opts.timeout = pg->timeout;
    works[b] = pg->backend->allreduce(v, opts);
    flats[b] = flat;
  }

  void on_ready(size_t i) {
    std::lock_guard<std::mutex> lock(mu);
    if (!armed || ready[i]) return;
    ready[i] = 1;
    if (!rebuilt) ready_order.push_back(static_cast<int64_t>(i));
    size_t b = bucket_of[i];
    if (pending[b] > 0) --pending[b];
    try {
      while (next < buckets.size() && pending[next] == 0) {
        launch(next);
        ++next;
      }
    } catch (const std::exception& e) {
      if (error.empty()) error = e.what();
    }
  }

  void finish() {
    std::lock_guard<std::mutex> lock(mu);
    armed = false;
    if (!error.empty()) {
      std::string e = error;
      error.clear();
      reset();
      throw std::runtime_error(e);
    }
    while (next < buckets.size()) {
      launch(next);
      ++next;
    }
    at::NoGradGuard no_grad;
    // Every bucket's count element, read to the host in one transfer: one device
    // synchronisation per step, not one per bucket.
    std::vector<at::Tensor> counts;
    for (size_t b = 0; b < buckets.size(); ++b) {
      works[b]->wait(pg->timeout);
      counts.push_back(flats[b].narrow(0, flats[b].numel() - 1, 1).to(at::kDouble));
    }
    if (!counts.empty()) {
      auto totals = at::cat(counts).to(at::kCPU);
      auto total = totals.accessor<double, 1>();
      for (size_t b = 0; b < buckets.size(); ++b) {
        int64_t have = 0;
        for (size_t i : buckets[b]) have += params[i].grad().defined() ? 1 : 0;
        double expect = static_cast<double>(have) * pg->world;
        if (std::abs(total[static_cast<int64_t>(b)] - expect) > 0.5) {
          reset();
          throw std::runtime_error(
              "data-parallel ranks disagree on which parameters have gradients this step "
              "(bucket " + std::to_string(b) + ": " + std::to_string(have) + " here, " +
              std::to_string(total[static_cast<int64_t>(b)]) + " summed over " +
              std::to_string(pg->world) + " ranks); every rank must run the same sub-nets");
        }
      }
    }
    for (size_t b = 0; b < buckets.size(); ++b) {
      const auto& flat = flats[b];
      int64_t at = 0;
      for (size_t i : buckets[b]) {
        auto n = params[i].numel();
        auto g = params[i].grad();
        if (g.defined()) g.copy_(flat.narrow(0, at, n).view(g.sizes()));
        at += n;
      }
    }
    if (!rebuilt) rebuild();
    reset();
  }

  // Rebuilds the buckets in rank 0's ready order of the first step (parameters it never
  // saw ready go last, in their original order).
  void rebuild() {
    rebuilt = true;
    std::vector<int64_t> order = ready_order;
    std::vector<char> seen(params.size(), 0);
    for (auto i : order) seen[static_cast<size_t>(i)] = 1;
    for (size_t i = params.size(); i-- > 0;) {
      if (!seen[i]) order.push_back(static_cast<int64_t>(i));
    }
    auto t = at::tensor(order, at::TensorOptions().dtype(at::kLong)).to(pg->device);
    std::vector<at::Tensor> one{t};
    c10d::BroadcastOptions opts;
    opts.rootRank = 0;
    opts.timeout = pg->timeout;
    pg->backend->broadcast(one, opts)->wait(pg->timeout);
    auto cpu = t.to(at::kCPU);
    std::vector<size_t> new_order;
    std::vector<char> used(params.size(), 0);
    for (int64_t k = 0; k < cpu.numel(); ++k) {
      auto i = cpu[k].item<int64_t>();
      if (i < 0 || static_cast<size_t>(i) >= params.size() || used[static_cast<size_t>(i)]) {
        throw std::runtime_error("gradient reducer: rank 0 sent a bad bucket order");
      }
      used[static_cast<size_t>(i)] = 1;
      new_order.push_back(static_cast<size_t>(i));
    }
    ready_order.clear();
    assign(new_order);
  }
};

namespace {

void ReadyHook::operator()(const torch::autograd::Variable&) { reducer->on_ready(index); }

}  // namespace

extern "C" {

// A reducer over `n` parameters: gradients are summed over ranks after scaling by `scale`
// (1 / world gives the average). Buckets of `bucket_bytes` (the first `first_bucket_bytes`,
// small so the first all-reduce starts early), initially in reverse parameter order.
int ugc_reducer_new(UgcProcessGroup* pg, at::Tensor** ps, int n, int64_t bucket_bytes,
                    int64_t first_bucket_bytes, double scale, UgcGradReducer** out) {
  return guarded([&] {
    auto* r = new UgcGradReducer();
    r->pg = pg;
    r->scale = scale;
    r->bucket_bytes = bucket_bytes;
    r->first_bucket_bytes = first_bucket_bytes;
    for (int i = 0; i < n; ++i) r->params.push_back(*ps[i]);
    std::vector<size_t> order;
    for (size_t i = r->params.size(); i-- > 0;) order.push_back(i);
    r->assign(order);
    for (size_t i = 0; i < r->params.size(); ++i) {
      torch::autograd::impl::set_post_acc_grad_hooks(r->params[i],
                                                     std::make_unique<ReadyHook>(r, i));
    }
    *out = r;
  });
}

// Removes the hooks, then frees the reducer.
void ugc_reducer_free(UgcGradReducer* r) {
  for (auto& p : r->params) {
    try {
      torch::autograd::impl::set_post_acc_grad_hooks(p, nullptr);
    } catch (...) {
    }
  }
  delete r;
}

void ugc_reducer_arm(UgcGradReducer* r) {
  std::lock_guard<std::mutex> lock(r->mu);
  r->armed = true;
}

int ugc_reducer_finish(UgcGradReducer* r) {
  return guarded([&] { r->finish(); });
}

// Buckets in launch order, as parameter indices, for tests: `out` gets `n` indices with
// -1 after each bucket; returns the number written (or the number needed if `cap` is short).
int ugc_reducer_buckets(UgcGradReducer* r, int64_t* out, int cap) {
  std::lock_guard<std::mutex> lock(r->mu);
  int k = 0;
  for (const auto& b : r->buckets) {
    for (size_t i : b) {
      if (k < cap) out[k] = static_cast<int64_t>(i);
      ++k;
    }
    if (k < cap) out[k] = -1;
    ++k;
  }
  return k;
}

}  // extern "C"
