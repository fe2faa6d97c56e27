// Declarations only; see ../README.md. `ProcessGroupGloo::setTimeout` (inline) calls
// `setTimeout` on its contexts; this project never calls it.
#pragma once
#include <chrono>
namespace gloo {
class Context {
 public:
  void setTimeout(std::chrono::milliseconds timeout);
};
}  // namespace gloo
