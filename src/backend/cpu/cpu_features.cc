// Run-time CPU feature detection and the instruction-set limit (backend/cpu/isa.h).
#include <algorithm>
#include <atomic>
#include <cstdlib>

#include "backend/cpu/isa.h"
#include "backend/cpu/kernels.h"

namespace kiln::cpu {
namespace {

CpuFeatures detect() {
  CpuFeatures f;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  f.avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  f.avx512 = f.avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  f.avx512_bf16 = f.avx512 && __builtin_cpu_supports("avx512bf16");
  f.avx512_vnni = f.avx512 && __builtin_cpu_supports("avx512vnni");
  f.avx_vnni = f.avx2 && __builtin_cpu_supports("avxvnni");
#endif
  return f;
}

Isa env_limit() {
  const char* env = std::getenv("KILN_CPU_ISA");
  if (env == nullptr || *env == '\0') return Isa::kAvx512;
  return parse_isa(env).value_or(Isa::kAvx512);
}

std::atomic<int> g_limit{-1};  // -1: not read from the environment yet

}  // namespace

const CpuFeatures& cpu_features() {
  static const CpuFeatures features = detect();  // function-local: safe from static-init order
  return features;
}

Isa best_isa() {
  const CpuFeatures& f = cpu_features();
  return f.avx512 ? Isa::kAvx512 : f.avx2 ? Isa::kAvx2 : Isa::kScalar;
}

Isa active_isa() {
  int limit = g_limit.load(std::memory_order_relaxed);
  if (limit < 0) {
    limit = static_cast<int>(env_limit());
    g_limit.store(limit, std::memory_order_relaxed);
  }
  return static_cast<Isa>(std::min(limit, static_cast<int>(best_isa())));
}

void set_isa_limit(Isa limit) { g_limit.store(static_cast<int>(limit), std::memory_order_relaxed); }
void reset_isa_limit() { g_limit.store(static_cast<int>(env_limit()), std::memory_order_relaxed); }

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kScalar: return "scalar";
    case Isa::kAvx2: return "avx2";
    case Isa::kAvx512: return "avx512";
  }
  return "?";
}

std::optional<Isa> parse_isa(std::string_view name) {
  for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512})
    if (name == isa_name(isa)) return isa;
  return std::nullopt;
}

std::string isa_description() {
  const CpuFeatures& f = cpu_features();
  std::string s = std::string(isa_name(active_isa())) + " (detected:";
  if (f.avx2) s += " avx2";
  if (f.avx512) s += " avx512";
  if (f.avx512_bf16) s += " avx512_bf16";
  if (f.avx512_vnni) s += " avx512_vnni";
  if (f.avx_vnni) s += " avx_vnni";
  if (!f.avx2) s += " none";
  return s + ")";
}

std::optional<std::string> invalid_isa_env() {
  const char* env = std::getenv("KILN_CPU_ISA");
  if (env == nullptr || *env == '\0' || parse_isa(env)) return std::nullopt;
  return std::string(env);
}

bool cpu_has_avx2_fma() { return cpu_features().avx2; }
void set_force_scalar(bool force) {
  if (force) set_isa_limit(Isa::kScalar);
  else reset_isa_limit();
}
bool using_avx2() { return active_isa() >= Isa::kAvx2; }

}  // namespace kiln::cpu
