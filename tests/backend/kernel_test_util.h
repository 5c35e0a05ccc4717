// Shared by the backend/cpu kernel tests: random inputs, the code path under test, error bounds.
#pragma once

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "backend/cpu/kernels.h"

namespace kiln::cpu::testing {

// Unit roundoff of f32 (2^-24): one correctly rounded f32 operation has relative error <= kUnit.
constexpr double kUnit = 5.9604644775390625e-8;

enum class Path { Scalar, Avx2 };

inline std::string path_name(const ::testing::TestParamInfo<Path>& info) {
  return info.param == Path::Scalar ? "Scalar" : "Avx2";
}

// Every path this CPU can run: the scalar one always, AVX2 where supported.
inline std::vector<Path> available_paths() {
  std::vector<Path> paths{Path::Scalar};
  if (cpu_has_avx2_fma()) paths.push_back(Path::Avx2);
  return paths;
}

// Fixture base: selects the path for the test and checks that the kernels really take it.
class PathTest : public ::testing::TestWithParam<Path> {
 protected:
  void SetUp() override {
    set_force_scalar(GetParam() == Path::Scalar);
    ASSERT_EQ(using_avx2(), GetParam() == Path::Avx2);
  }
  void TearDown() override { set_force_scalar(false); }
};

inline std::vector<float> random_floats(std::mt19937& rng, int64_t n, float lo = -1.0f, float hi = 1.0f) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

}  // namespace kiln::cpu::testing
