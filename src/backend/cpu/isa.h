// Which instruction set the CPU kernels use: detected once at run time, capped by a limit.
//
//   scalar  portable C++ (any x86-64 or other CPU)
//   avx2    AVX2 + FMA + F16C (Haswell / Zen 1 and later)
//   avx512  AVX-512 F + BW + VL + DQ on top of avx2 (Skylake-SP / Zen 4 and later); the matmul
//           kernels use 512-bit vectors, masked tails and, where the CPU has it, AVX512_BF16.
//
// Every kernel has a path for each level at or below its best one, and the levels nest: a kernel
// without an avx512 path runs its avx2 path when avx512 is active. The limit comes from the
// environment variable KILN_CPU_ISA (scalar | avx2 | avx512), read once, or from set_isa_limit
// (tests run every path on one machine; `kiln bench` reports the active level).
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace kiln::cpu {

enum class Isa : int { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };

struct CpuFeatures {
  bool avx2 = false;         // AVX2 + FMA + F16C
  bool avx512 = false;       // AVX-512 F + BW + VL + DQ
  bool avx512_bf16 = false;  // VDPBF16PS
  bool avx512_vnni = false;  // VPDPBUSD on 512-bit vectors
  bool avx_vnni = false;     // VPDPBUSD on 256-bit vectors (AVX-VNNI, Alder Lake / Zen 5)
};

const CpuFeatures& cpu_features();  // detected once
Isa best_isa();                     // the highest level this CPU runs
Isa active_isa();                   // min(best_isa(), limit)
inline bool using_avx512() { return active_isa() >= Isa::kAvx512; }

// Caps the level (tests, benchmarks); a level above best_isa() is capped at best_isa().
void set_isa_limit(Isa limit);
// Back to the limit of KILN_CPU_ISA (or none).
void reset_isa_limit();

const char* isa_name(Isa isa);
std::optional<Isa> parse_isa(std::string_view name);
// "avx512 (avx2 avx512 avx512_bf16 avx512_vnni)": the active level and the features detected.
std::string isa_description();
// KILN_CPU_ISA's value when it is set and not a level name, for the CLI to refuse with one line.
std::optional<std::string> invalid_isa_env();

}  // namespace kiln::cpu
