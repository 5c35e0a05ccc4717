// Run-time CPU feature detection and the scalar override used by tests.
#include <atomic>

#include "backend/cpu/kernels.h"

namespace kiln::cpu {
namespace {

bool detect_avx2_fma() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
         __builtin_cpu_supports("f16c");
#else
  return false;
#endif
}

std::atomic<bool> g_force_scalar{false};

}  // namespace

bool cpu_has_avx2_fma() {
  static const bool has = detect_avx2_fma();  // function-local: safe from static-init order
  return has;
}
void set_force_scalar(bool force) { g_force_scalar.store(force, std::memory_order_relaxed); }
bool using_avx2() { return cpu_has_avx2_fma() && !g_force_scalar.load(std::memory_order_relaxed); }

}  // namespace kiln::cpu
