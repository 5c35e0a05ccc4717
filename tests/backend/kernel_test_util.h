// Shared by the backend/cpu kernel tests: random inputs, the code path under test, error bounds.
#pragma once

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "backend/cpu/isa.h"
#include "backend/cpu/kernels.h"

namespace kiln::cpu::testing {

// Unit roundoff of f32 (2^-24): one correctly rounded f32 operation has relative error <= kUnit.
constexpr double kUnit = 5.9604644775390625e-8;

// The instruction-set levels of backend/cpu/isa.h; every kernel test runs on each one this CPU has
// (a kernel without its own path for a level runs the next lower one there).
enum class Path { Scalar, Avx2, Avx512 };

inline Isa path_isa(Path p) { return p == Path::Scalar ? Isa::kScalar : p == Path::Avx2 ? Isa::kAvx2 : Isa::kAvx512; }

inline std::string path_name(const ::testing::TestParamInfo<Path>& info) {
  return info.param == Path::Scalar ? "Scalar" : info.param == Path::Avx2 ? "Avx2" : "Avx512";
}

// Every path this CPU can run: the scalar one always, AVX2 and AVX-512 where supported.
inline std::vector<Path> available_paths() {
  std::vector<Path> paths{Path::Scalar};
  if (best_isa() >= Isa::kAvx2) paths.push_back(Path::Avx2);
  if (best_isa() >= Isa::kAvx512) paths.push_back(Path::Avx512);
  return paths;
}

// Fixture base: selects the path for the test and checks that the kernels really take it.
class PathTest : public ::testing::TestWithParam<Path> {
 protected:
  void SetUp() override {
    set_isa_limit(path_isa(GetParam()));
    ASSERT_EQ(active_isa(), path_isa(GetParam()));
    ASSERT_EQ(using_avx2(), GetParam() != Path::Scalar);
  }
  void TearDown() override { reset_isa_limit(); }
};

inline std::vector<float> random_floats(std::mt19937& rng, int64_t n, float lo = -1.0f, float hi = 1.0f) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

}  // namespace kiln::cpu::testing
