// gemv_swiglu (the GEMV that applies SwiGLU to its input as it loads it) against the composition it
// replaces, swiglu() into [M, K] then gemv(): bit for bit at the same k_split, and against a float64
// CPU reference. f16 and bf16, M = 1..8, K = 11008 (Llama-2-7B's down projection) and small sizes
// (a partial 256-element step, one 16-byte vector), gate and up as the two halves of one gate_up row
// or as separate buffers with other strides, every rows-per-warp tuning, outputs poisoned (NaN).
// Also gemv_glu, the gate_up GEMV with SwiGLU as its epilogue, against gemv + swiglu.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "backend/cuda/gemv_tuning.h"
#include "backend/cuda/kernels.h"
#include "cuda_test_util.h"

namespace kiln::cuda::testing {
namespace {

const DType kActs[] = {DType::F16, DType::BF16};

struct Case {
  int64_t M, K, N, ldy;
  bool fused_layout;  // gate and up as [gate | up] halves of one [M, 2K] row; else two buffers
  bool bias;
};

// Device y as doubles (act dtype or f32), and its raw bits for the bitwise comparison.
std::vector<double> y_values(const DeviceBuffer& y, DType y_dtype, std::vector<uint32_t>* bits) {
  std::vector<double> out;
  if (y_dtype == DType::F32) {
    const auto host = y.download<float>();
    for (float v : host) {
      out.push_back(v);
      uint32_t b;
      std::memcpy(&b, &v, 4);
      bits->push_back(b);
    }
  } else {
    for (uint16_t v : y.download<uint16_t>()) {
      out.push_back(from_act(v, y_dtype));
      bits->push_back(v);
    }
  }
  return out;
}

void run_case(std::mt19937& rng, DType act, DType y_dtype, const Case& c, const GemvTuning& tuning) {
  SCOPED_TRACE(::testing::Message() << "act=" << dtype_name(act) << " y=" << dtype_name(y_dtype)
                                    << " M=" << c.M << " K=" << c.K << " N=" << c.N << " ldy=" << c.ldy
                                    << " fused=" << c.fused_layout << " bias=" << c.bias << " k_split="
                                    << tuning.k_split << " rows_per_warp=" << tuning.rows_per_warp);
  // Fused: one [M, 2K] buffer, gate = cols [0, K), up = cols [K, 2K). Separate: gate [M, K + 8]
  // (stride K + 8, the pad never read) and up [M, K].
  const int64_t gate_ld = c.fused_layout ? 2 * c.K : c.K + 8, up_ld = c.fused_layout ? 2 * c.K : c.K;
  const HostAct gate_buf = random_act(rng, c.M * gate_ld, act, -3.0, 3.0);
  const HostAct up_buf = random_act(rng, c.fused_layout ? 0 : c.M * up_ld, act, -3.0, 3.0);
  const HostAct w = random_act(rng, c.N * c.K, act);
  const std::vector<float> bias = random_f32(rng, c.N, -0.5f, 0.5f);
  DeviceBuffer dgate(gate_buf.bits), dw(w.bits), dbias(bias);
  DeviceBuffer dup(std::max<size_t>(up_buf.bits.size() * 2, 16));
  if (!c.fused_layout) dup.upload(up_buf.bits);
  const uint16_t* gate = dgate.get<uint16_t>();
  const uint16_t* up = c.fused_layout ? gate + c.K : dup.get<uint16_t>();
  auto gate_at = [&](int64_t m, int64_t k) { return gate_buf.values[m * gate_ld + k]; };
  auto up_at = [&](int64_t m, int64_t k) {
    return c.fused_layout ? gate_buf.values[m * gate_ld + c.K + k] : up_buf.values[m * up_ld + k];
  };
  const float* b = c.bias ? dbias.get<float>() : nullptr;
  const size_t y_bytes = c.M * c.ldy * dtype_size(y_dtype);

  DeviceBuffer fused_y(y_bytes);
  const Status status = gemv_swiglu_tuned(gate, gate_ld, up, up_ld, c.M, c.K, dw.get(), c.N, b, fused_y.get(),
                                          c.ldy, act, y_dtype, tuning, nullptr);
  ASSERT_TRUE(status.ok()) << status.error().message;

  // The composition: swiglu into [M, K], then the plain GEMV at the same k_split.
  DeviceBuffer act_buf(c.M * c.K * 2), plain_y(y_bytes);
  ASSERT_TRUE(swiglu(gate, gate_ld, up, up_ld, c.M, c.K, act_buf.get(), act, nullptr).ok());
  GemvTuning plain_tuning;
  plain_tuning.k_split = tuning.k_split;
  const Status plain = gemv_tuned(act_buf.get(), c.M, c.K, dw.get(), c.N, b, plain_y.get(), c.ldy, act,
                                  y_dtype, plain_tuning, nullptr);
  ASSERT_TRUE(plain.ok()) << plain.error().message;

  std::vector<uint32_t> fused_bits, plain_bits;
  const std::vector<double> y = y_values(fused_y, y_dtype, &fused_bits);
  y_values(plain_y, y_dtype, &plain_bits);
  // Same SwiGLU arithmetic (detail::silu_mul, one rounding to act), same k order of every sum.
  for (size_t i = 0; i < fused_bits.size(); ++i) {
    const int64_t m = static_cast<int64_t>(i) / c.ldy, n = static_cast<int64_t>(i) % c.ldy;
    if (n >= c.N) {
      ASSERT_TRUE(std::isnan(y[i])) << "wrote past N at y[" << m << ", " << n << "]";
      continue;
    }
    ASSERT_EQ(fused_bits[i], plain_bits[i]) << "y[" << m << ", " << n << "] differs from swiglu + gemv";
  }

  // float64 reference over x = act(silu(g) * u). The device's f32 SwiGLU (__expf) may round x to the
  // neighbouring act value: <= 1 act ulp of |x| per element, so <= ulp * sum|x w| on y; plus the f32
  // accumulation (2e-5 * sum|x w|, as in the GEMV test) and y's final rounding (ulp * |ref|).
  const double out_ulp = y_dtype == DType::F32 ? 0.0 : act_ulp(y_dtype);
  std::vector<double> x(c.M * c.K);
  for (int64_t m = 0; m < c.M; ++m) {
    for (int64_t k = 0; k < c.K; ++k) {
      const double g = gate_at(m, k);
      x[m * c.K + k] = round_act(g / (1.0 + std::exp(-g)) * up_at(m, k), act);
    }
  }
  for (int64_t m = 0; m < c.M; ++m) {
    for (int64_t n = 0; n < c.N; ++n) {
      double ref = c.bias ? bias[n] : 0.0, magnitude = std::abs(ref);
      for (int64_t k = 0; k < c.K; ++k) {
        ref += x[m * c.K + k] * w.values[n * c.K + k];
        magnitude += std::abs(x[m * c.K + k] * w.values[n * c.K + k]);
      }
      const double got = y[m * c.ldy + n];
      ASSERT_LE(std::abs(got - ref), out_ulp * std::abs(ref) + (act_ulp(act) + 2e-5) * magnitude)
          << "y[" << m << ", " << n << "] = " << got << ", expected " << ref;
    }
  }
}

TEST(CudaGemvSwiglu, EqualsSwigluThenGemvAndFloat64) {
  GPU_OR_SKIP();
  std::mt19937 rng(21);
  for (DType act : kActs) {
    for (int64_t M = 1; M <= kGemvMaxRows; ++M) {
      for (bool fused : {true, false}) {
        run_case(rng, act, act, {M, 11008, 67, 67, fused, false}, {});      // Llama-2-7B's K
        run_case(rng, act, DType::F32, {M, 264, 37, 40, fused, true}, {});  // partial last K step
        run_case(rng, act, act, {M, 8, 5, 5, fused, true}, {});             // one 16-byte vector per row
      }
    }
  }
}

TEST(CudaGemvSwiglu, EveryTuningComputesTheSameFunction) {
  GPU_OR_SKIP();
  std::mt19937 rng(22);
  for (DType act : kActs) {
    for (int k_split : {1, 2, 4, 8}) {
      for (int rows_per_warp : {2, 4, 8}) {
        for (int64_t M : {1, 3, 8}) {
          GemvTuning tuning;
          tuning.k_split = k_split;
          tuning.rows_per_warp = rows_per_warp;
          run_case(rng, act, DType::F32, {M, 2056, 67, 67, true, true}, tuning);
        }
      }
    }
  }
}

// gemv_glu (SwiGLU as the epilogue of the fused gate_up GEMV) against gemv() into [M, 2F] followed by
// swiglu() on its halves: bit for bit, with y's padding columns (ldy > F) left untouched (NaN).
void run_glu_case(std::mt19937& rng, DType act, int64_t M, int64_t K, int64_t F, int64_t ldy, bool with_bias) {
  SCOPED_TRACE(::testing::Message() << "act=" << dtype_name(act) << " M=" << M << " K=" << K << " F=" << F
                                    << " ldy=" << ldy << " bias=" << with_bias);
  const HostAct x = random_act(rng, M * K, act, -2.0, 2.0);
  const HostAct w = random_act(rng, 2 * F * K, act);
  const std::vector<float> bias = random_f32(rng, 2 * F, -0.5f, 0.5f);
  DeviceBuffer dx(x.bits), dw(w.bits), dbias(bias);
  const float* b = with_bias ? dbias.get<float>() : nullptr;
  DeviceBuffer glu_y(M * ldy * 2), gate_up(M * 2 * F * 2), plain_y(M * F * 2);
  const Status glu = gemv_glu(dx.get(), M, K, dw.get(), F, b, glu_y.get(), ldy, act, nullptr);
  ASSERT_TRUE(glu.ok()) << glu.error().message;
  ASSERT_TRUE(gemv(dx.get(), M, K, dw.get(), 2 * F, b, gate_up.get(), 2 * F, act, act, nullptr).ok());
  const auto* gu = gate_up.get<uint16_t>();
  ASSERT_TRUE(swiglu(gu, 2 * F, gu + F, 2 * F, M, F, plain_y.get(), act, nullptr).ok());
  const std::vector<uint16_t> got = glu_y.download<uint16_t>(), want = plain_y.download<uint16_t>();
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t n = 0; n < ldy; ++n) {
      const uint16_t v = got[m * ldy + n];
      if (n >= F) {
        ASSERT_TRUE(std::isnan(from_act(v, act))) << "wrote past F at y[" << m << ", " << n << "]";
        continue;
      }
      ASSERT_EQ(v, want[m * F + n]) << "y[" << m << ", " << n << "] differs from gemv + swiglu";
    }
  }
}

TEST(CudaGemvGlu, EqualsGemvThenSwiglu) {
  GPU_OR_SKIP();
  std::mt19937 rng(23);
  for (DType act : kActs) {
    for (int64_t M = 1; M <= kGemvMaxRows; ++M) {
      run_glu_case(rng, act, M, 4096, 344, 344, false);  // Llama-2-7B's K, F a slice of 11008
      run_glu_case(rng, act, M, 264, 37, 40, true);      // partial K step, odd F, padded rows
      run_glu_case(rng, act, M, 8, 5, 5, true);          // one 16-byte vector per row
    }
  }
  // Llama-2-7B's gate_up at one row (2F >= 16384: k_split 4), and an odd F whose last block is partial
  // (rows past F clamped) with 4 rows per warp (M = 8).
  run_glu_case(rng, DType::F16, 1, 4096, 11008, 11008, false);
  run_glu_case(rng, DType::BF16, 8, 2056, 4099, 4099, true);
}

// GemvFusion: the norm before a GEMV (its input the residual stream) and the residual add after it,
// against the kernels they replace, bit for bit: rms_norm + gemv / gemv_glu, and gemv / gemv_swiglu +
// add. Outputs poisoned (NaN) before the calls.
void run_norm_in_case(std::mt19937& rng, DType act, int64_t M, int64_t K, int64_t N, bool glu) {
  SCOPED_TRACE(::testing::Message() << "norm-in act=" << dtype_name(act) << " M=" << M << " K=" << K << " N=" << N
                                    << " glu=" << glu);
  const HostAct x = random_act(rng, M * K, act, -2.0, 2.0);
  const std::vector<float> norm_w = random_f32(rng, K, 0.5f, 1.5f);
  const HostAct w = random_act(rng, (glu ? 2 : 1) * N * K, act);
  const float eps = 1e-5f;
  DeviceBuffer dx(x.bits), dnorm(norm_w), dw(w.bits), normed(M * K * 2), want(M * N * 2), got(M * N * 2);
  ASSERT_TRUE(rms_norm(dx.get(), dnorm.get<float>(), M, K, eps, normed.get(), act, nullptr).ok());
  GemvFusion fusion;
  fusion.norm_weight = dnorm.get<float>();
  fusion.norm_eps = eps;
  if (glu) {
    ASSERT_TRUE(gemv_glu(normed.get(), M, K, dw.get(), N, nullptr, want.get(), N, act, nullptr).ok());
    const Status s = gemv_glu(dx.get(), M, K, dw.get(), N, nullptr, got.get(), N, act, nullptr, fusion);
    ASSERT_TRUE(s.ok()) << s.error().message;
  } else {
    ASSERT_TRUE(gemv(normed.get(), M, K, dw.get(), N, nullptr, want.get(), N, act, act, nullptr).ok());
    const Status s = gemv(dx.get(), M, K, dw.get(), N, nullptr, got.get(), N, act, act, nullptr, fusion);
    ASSERT_TRUE(s.ok()) << s.error().message;
  }
  EXPECT_EQ(got.download<uint16_t>(), want.download<uint16_t>());
  EXPECT_EQ(dx.download<uint16_t>(), x.bits) << "the residual stream is only read";
}

void run_residual_case(std::mt19937& rng, DType act, int64_t M, int64_t K, int64_t N, bool swiglu_in) {
  SCOPED_TRACE(::testing::Message() << "residual-out act=" << dtype_name(act) << " M=" << M << " K=" << K
                                    << " N=" << N << " swiglu=" << swiglu_in);
  const HostAct x = random_act(rng, M * (swiglu_in ? 2 : 1) * K, act, -2.0, 2.0);
  const HostAct w = random_act(rng, N * K, act);
  const HostAct residual = random_act(rng, M * N, act, -4.0, 4.0);
  const std::vector<float> bias = random_f32(rng, N, -0.5f, 0.5f);
  DeviceBuffer dx(x.bits), dw(w.bits), dbias(bias), r(M * N * 2), want(residual.bits), got(residual.bits);
  const auto* gate = dx.get<uint16_t>();
  GemvFusion fusion;
  fusion.residual_out = true;
  if (swiglu_in) {
    ASSERT_TRUE(gemv_swiglu(gate, 2 * K, gate + K, 2 * K, M, K, dw.get(), N, dbias.get<float>(), r.get(), N, act, act,
                            nullptr)
                    .ok());
    const Status s = gemv_swiglu(gate, 2 * K, gate + K, 2 * K, M, K, dw.get(), N, dbias.get<float>(), got.get(), N,
                                 act, act, nullptr, fusion);
    ASSERT_TRUE(s.ok()) << s.error().message;
  } else {
    ASSERT_TRUE(gemv(dx.get(), M, K, dw.get(), N, dbias.get<float>(), r.get(), N, act, act, nullptr).ok());
    const Status s = gemv(dx.get(), M, K, dw.get(), N, dbias.get<float>(), got.get(), N, act, act, nullptr, fusion);
    ASSERT_TRUE(s.ok()) << s.error().message;
  }
  ASSERT_TRUE(add(want.get(), r.get(), M, N, act, nullptr).ok());
  EXPECT_EQ(got.download<uint16_t>(), want.download<uint16_t>());
}

TEST(CudaGemvFusion, NormInAndResidualOutEqualTheKernelsTheyReplace) {
  GPU_OR_SKIP();
  std::mt19937 rng(24);
  for (DType act : kActs) {
    for (int64_t M : {1, 2, 3, 4, 8}) {
      run_norm_in_case(rng, act, M, 4096, 300, false);  // Llama-2-7B's hidden size (two vectors a thread)
      run_norm_in_case(rng, act, M, 4096, 172, true);   // gate_up with SwiGLU in the epilogue
      run_norm_in_case(rng, act, M, 64, 37, false);     // stories260K's width: threads without a vector
      run_norm_in_case(rng, act, M, 2056, 9, true);     // a partial last step
      run_residual_case(rng, act, M, 4096, 300, false);
      run_residual_case(rng, act, M, 1024, 300, true);  // the down projection reading gate_up
    }
  }
}

TEST(CudaGemvFusion, RejectsUnsupportedCombinations) {
  GPU_OR_SKIP();
  DeviceBuffer buf(1 << 16);
  GemvFusion both;
  both.norm_weight = buf.get<float>();
  both.residual_out = true;
  const Status s = gemv(buf.get(), 1, 16, buf.get(), 8, nullptr, buf.get(), 8, DType::F16, DType::F16, nullptr, both);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.error().message.find("gemv [M=1 K=16 N=8"), std::string::npos) << s.error().message;
  GemvFusion residual;
  residual.residual_out = true;
  EXPECT_FALSE(gemv(buf.get(), 1, 16, buf.get(), 8, nullptr, buf.get(), 8, DType::F16, DType::F32, nullptr, residual).ok());
  EXPECT_FALSE(gemv_glu(buf.get(), 1, 16, buf.get(), 8, nullptr, buf.get(), 8, DType::F16, nullptr, residual).ok());
  GemvFusion norm;
  norm.norm_weight = reinterpret_cast<const float*>(buf.get<char>() + 4);  // misaligned
  EXPECT_FALSE(gemv(buf.get(), 1, 16, buf.get(), 8, nullptr, buf.get(), 8, DType::F16, DType::F16, nullptr, norm).ok());
  norm.norm_weight = buf.get<float>();
  const auto* g = buf.get<uint16_t>();
  EXPECT_FALSE(gemv_swiglu(g, 32, g + 16, 32, 1, 16, buf.get(), 4, nullptr, buf.get(), 4, DType::F16, DType::F16, nullptr,
                           norm)
                   .ok());
}

TEST(CudaGemvGlu, RejectsBadArguments) {
  GPU_OR_SKIP();
  DeviceBuffer buf(1 << 16);
  const Status small_ld = gemv_glu(buf.get(), 1, 16, buf.get(), 8, nullptr, buf.get(), 4, DType::F16, nullptr);
  ASSERT_FALSE(small_ld.ok());
  EXPECT_NE(small_ld.error().message.find("gemv_glu [M=1 K=16 F=8"), std::string::npos) << small_ld.error().message;
  EXPECT_FALSE(gemv_glu(buf.get(), 1, 12, buf.get(), 8, nullptr, buf.get(), 8, DType::F16, nullptr).ok());  // K % 8
  EXPECT_FALSE(gemv_glu(buf.get(), kGemvMaxRows + 1, 16, buf.get(), 8, nullptr, buf.get(), 8, DType::F16, nullptr).ok());
  EXPECT_FALSE(gemv_glu(buf.get(), 1, 16, buf.get(), 8, nullptr, buf.get(), 8, DType::F32, nullptr).ok());
  EXPECT_FALSE(gemv_glu(nullptr, 1, 16, buf.get(), 8, nullptr, buf.get(), 8, DType::F16, nullptr).ok());
}

TEST(CudaGemvSwiglu, RejectsBadArgumentsNamingKernelAndShapes) {
  GPU_OR_SKIP();
  DeviceBuffer buf(1 << 16);
  const auto* base = buf.get<uint16_t>();
  const Status odd_ld = gemv_swiglu(base, 20, base + 16, 20, 1, 16, buf.get(), 4, nullptr, buf.get(), 4,
                                    DType::F16, DType::F16, nullptr);
  ASSERT_FALSE(odd_ld.ok());
  EXPECT_NE(odd_ld.error().message.find("gemv_swiglu [M=1 K=16 N=4"), std::string::npos)
      << odd_ld.error().message;
  // Misaligned up (one element past a 16-byte boundary), stride below K, K not a multiple of 8, M too large.
  EXPECT_FALSE(gemv_swiglu(base, 32, base + 17, 32, 1, 16, buf.get(), 4, nullptr, buf.get(), 4, DType::F16,
                           DType::F16, nullptr)
                   .ok());
  EXPECT_FALSE(gemv_swiglu(base, 8, base + 16, 32, 1, 16, buf.get(), 4, nullptr, buf.get(), 4, DType::F16,
                           DType::F16, nullptr)
                   .ok());
  EXPECT_FALSE(gemv_swiglu(base, 24, base + 12, 24, 1, 12, buf.get(), 4, nullptr, buf.get(), 4, DType::F16,
                           DType::F16, nullptr)
                   .ok());
  EXPECT_FALSE(gemv_swiglu(base, 32, base + 16, 32, kGemvMaxRows + 1, 16, buf.get(), 4, nullptr, buf.get(), 4,
                           DType::F16, DType::F16, nullptr)
                   .ok());
  GemvTuning staged;
  staged.stage_x = 1;
  EXPECT_FALSE(gemv_swiglu_tuned(base, 32, base + 16, 32, 1, 16, buf.get(), 4, nullptr, buf.get(), 4,
                                 DType::F16, DType::F16, staged, nullptr)
                   .ok());
  GemvTuning odd_rows;
  odd_rows.rows_per_warp = 3;
  EXPECT_FALSE(gemv_swiglu_tuned(base, 32, base + 16, 32, 1, 16, buf.get(), 4, nullptr, buf.get(), 4,
                                 DType::F16, DType::F16, odd_rows, nullptr)
                   .ok());
}

}  // namespace
}  // namespace kiln::cuda::testing
