// Shared by ext.cpp and dist.cpp: C++ exceptions must not unwind into Rust, so every entry
// point runs its body through `guarded`, which returns 0, or -1 with the message kept in
// the per-thread slot that `ugc_ext_last_error` reads.
#pragma once

#include <exception>
#include <string>

// Stores `msg` as this thread's last error (defined in ext.cpp).
void ugc_ext_set_error(const std::string& msg);

template <typename F>
int guarded(F&& f) {
  try {
    f();
    return 0;
  } catch (const std::exception& e) {
    ugc_ext_set_error(e.what());
  } catch (...) {
    ugc_ext_set_error("unknown C++ exception");
  }
  return -1;
}
