// Every CUDA kernel of backend/cuda (attention aside) against a plain float64 CPU reference on random
// inputs, for f16 and bf16, several shapes (odd sizes, size 1, vector and scalar paths), with outputs
// poisoned (NaN) before each run so that an unwritten element fails. Tolerances are derived in comments.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "backend/cuda/gemv_tuning.h"
#include "backend/cuda/kernels.h"
#include "cuda_test_util.h"

namespace kiln::cuda::testing {
namespace {

const DType kActs[] = {DType::F16, DType::BF16};

std::string name(DType act) { return std::string(dtype_name(act)); }

// ---------------------------------------------------------------- gemv

struct GemvCase {
  int64_t M, K, N, ldy;
  bool bias;
};

// y = x w^T + bias against float64. Error budget per element: f32 accumulation of K products,
// summed in a different order than the reference: ~sqrt(K) * 2^-24 * sum|x w| in practice (bounded
// here by 2e-5 * sum|x w|, 10x above that for K <= 5000 and still below one missing term, ~1/K of
// sum|x w|); plus the final rounding to y's dtype (half an ulp; exact bound ulp * |ref| for f16/bf16, ~0 for
// f32).
void run_gemv(std::mt19937& rng, DType act, DType y_dtype, const GemvCase& c, const GemvTuning& tuning) {
  SCOPED_TRACE(::testing::Message() << "act=" << name(act) << " y=" << name(y_dtype) << " M=" << c.M
                                    << " K=" << c.K << " N=" << c.N << " ldy=" << c.ldy << " bias=" << c.bias
                                    << " k_split=" << tuning.k_split << " stage_x=" << tuning.stage_x);
  const HostAct x = random_act(rng, c.M * c.K, act), w = random_act(rng, c.N * c.K, act);
  const std::vector<float> bias = random_f32(rng, c.N, -0.5f, 0.5f);
  DeviceBuffer dx(x.bits), dw(w.bits), dbias(bias);
  const size_t y_size = dtype_size(y_dtype);
  DeviceBuffer dy(c.M * c.ldy * y_size);
  const Status status = gemv_tuned(dx.get(), c.M, c.K, dw.get(), c.N, c.bias ? dbias.get<float>() : nullptr,
                                   dy.get(), c.ldy, act, y_dtype, tuning, nullptr);
  ASSERT_TRUE(status.ok()) << status.error().message;
  std::vector<double> y(c.M * c.ldy);
  if (y_dtype == DType::F32) {
    const auto host = dy.download<float>();
    for (size_t i = 0; i < y.size(); ++i) y[i] = host[i];
  } else {
    const auto host = dy.download<uint16_t>();
    for (size_t i = 0; i < y.size(); ++i) y[i] = from_act(host[i], y_dtype);
  }
  const double out_ulp = y_dtype == DType::F32 ? 0.0 : act_ulp(y_dtype);
  for (int64_t m = 0; m < c.M; ++m) {
    for (int64_t n = 0; n < c.N; ++n) {
      double ref = c.bias ? bias[n] : 0.0, magnitude = std::abs(ref);
      for (int64_t k = 0; k < c.K; ++k) {
        ref += x.values[m * c.K + k] * w.values[n * c.K + k];
        magnitude += std::abs(x.values[m * c.K + k] * w.values[n * c.K + k]);
      }
      const double got = y[m * c.ldy + n];
      ASSERT_LE(std::abs(got - ref), out_ulp * std::abs(ref) + 2e-5 * magnitude)
          << "y[" << m << ", " << n << "] = " << got << ", expected " << ref;
    }
    for (int64_t n = c.N; n < c.ldy; ++n)
      ASSERT_TRUE(std::isnan(y[m * c.ldy + n])) << "wrote past N at " << n;
  }
}

TEST(CudaGemv, MatchesFloat64AllRowCounts) {
  GPU_OR_SKIP();
  std::mt19937 rng(1);
  for (DType act : kActs) {
    for (DType y_dtype : {act, DType::F32}) {
      for (int64_t M = 1; M <= kGemvMaxRows; ++M) {
        // K a multiple of 8 but not of 256 (partial last step), N odd and not a multiple of rows per block.
        run_gemv(rng, act, y_dtype, {M, 264, 37, 37, false}, {});
        run_gemv(rng, act, y_dtype, {M, 1000, 129, 131, true}, {});
      }
    }
  }
}

TEST(CudaGemv, SizeOneAndLargeShapes) {
  GPU_OR_SKIP();
  std::mt19937 rng(2);
  for (DType act : kActs) {
    run_gemv(rng, act, act, {1, 8, 1, 1, true}, {});
    run_gemv(rng, act, DType::F32, {3, 4104, 300, 300, true}, {});
    run_gemv(rng, act, act, {8, 4096, 513, 520, false}, {});
  }
}

TEST(CudaGemv, EveryTuningComputesTheSameFunction) {
  GPU_OR_SKIP();
  std::mt19937 rng(3);
  for (DType act : kActs) {
    for (int k_split : {1, 2, 4, 8}) {
      for (int stage_x : {0, 1}) {
        for (int64_t M : {1, 5, 8})
          run_gemv(rng, act, DType::F32, {M, 2056, 67, 67, true}, {k_split, stage_x});
      }
    }
  }
}

TEST(CudaGemv, RejectsBadArgumentsNamingKernelAndShapes) {
  GPU_OR_SKIP();
  DeviceBuffer buf(1 << 16);
  const Status odd_k =
      gemv(buf.get(), 1, 12, buf.get(), 4, nullptr, buf.get(), 4, DType::F16, DType::F16, nullptr);
  ASSERT_FALSE(odd_k.ok());
  EXPECT_NE(odd_k.error().message.find("gemv [M=1 K=12 N=4"), std::string::npos) << odd_k.error().message;
  EXPECT_FALSE(
      gemv(buf.get(), 9, 16, buf.get(), 4, nullptr, buf.get(), 4, DType::F16, DType::F16, nullptr).ok());
  EXPECT_FALSE(
      gemv(buf.get(), 1, 16, buf.get(), 4, nullptr, buf.get(), 4, DType::F32, DType::F32, nullptr).ok());
  EXPECT_FALSE(
      gemv(buf.get(), 1, 16, buf.get(), 4, nullptr, buf.get(), 4, DType::F16, DType::BF16, nullptr).ok());
  EXPECT_FALSE(
      gemv(buf.get(), 1, 16, buf.get(), 4, nullptr, buf.get(), 3, DType::F16, DType::F16, nullptr).ok());
}

// ---------------------------------------------------------------- rms_norm, add_rms_norm, add

// HF LlamaRMSNorm in float64: y = round(round(s / rms(s)) * weight), s the (rounded) input row.
// The kernel's f32 rsqrt may round the intermediate to the neighbouring act value (1 ulp), which the
// weight (|w| < 1.5) carries into y, plus the final half ulp: bound 2 ulp * (|ref| + |w| * ulp-size slack).
void expect_rms_norm(const std::vector<double>& s, const std::vector<float>& weight, int64_t M, int64_t D,
                     float eps, const std::vector<uint16_t>& y, DType act) {
  for (int64_t m = 0; m < M; ++m) {
    double sum_squares = 0.0;
    for (int64_t d = 0; d < D; ++d) sum_squares += s[m * D + d] * s[m * D + d];
    const double inv_rms = 1.0 / std::sqrt(sum_squares / static_cast<double>(D) + eps);
    for (int64_t d = 0; d < D; ++d) {
      const double normalized = s[m * D + d] * inv_rms;
      const double ref = round_act(round_act(normalized, act) * weight[d], act);
      const double got = from_act(y[m * D + d], act);
      ASSERT_LE(std::abs(got - ref),
                2 * act_ulp(act) * (std::abs(ref) + std::abs(weight[d] * normalized)) + 1e-6)
          << "y[" << m << ", " << d << "] = " << got << ", expected " << ref << " (" << name(act)
          << ", D=" << D << ")";
    }
  }
}

// D % 8 != 0: scalar path; D <= 2048 / 4096 / 8192 (row in 1 / 2 / 4 vectors per thread, the last
// partly past D at 5120); 8200: the two-pass path of wider rows.
const int64_t kNormShapes[][2] = {{1, 8},    {3, 4096}, {17, 1000}, {2, 100}, {5, 33},
                                  {1, 2048}, {2, 5120}, {1, 8192},  {2, 8200}};

TEST(CudaNorm, RmsNormMatchesFloat64) {
  GPU_OR_SKIP();
  std::mt19937 rng(4);
  for (DType act : kActs) {
    for (const auto& [M, D] : kNormShapes) {
      const HostAct x = random_act(rng, M * D, act, -2.0, 2.0);
      const std::vector<float> weight = random_f32(rng, D, 0.5f, 1.5f);
      DeviceBuffer dx(x.bits), dw(weight), dy(M * D * 2);
      ASSERT_TRUE(rms_norm(dx.get(), dw.get<float>(), M, D, 1e-5f, dy.get(), act, nullptr).ok());
      expect_rms_norm(x.values, weight, M, D, 1e-5f, dy.download<uint16_t>(), act);
      EXPECT_EQ(dx.download<uint16_t>(), x.bits) << "rms_norm wrote its input";
    }
  }
}

TEST(CudaNorm, AddRmsNormMatchesFloat64AndUnfusedComposition) {
  GPU_OR_SKIP();
  std::mt19937 rng(5);
  for (DType act : kActs) {
    for (const auto& [M, D] : kNormShapes) {
      SCOPED_TRACE(::testing::Message() << name(act) << " M=" << M << " D=" << D);
      const HostAct x = random_act(rng, M * D, act, -2.0, 2.0), r = random_act(rng, M * D, act, -2.0, 2.0);
      const std::vector<float> weight = random_f32(rng, D, 0.5f, 1.5f);
      DeviceBuffer dx(x.bits), dr(r.bits), dw(weight), dy(M * D * 2);
      ASSERT_TRUE(
          add_rms_norm(dx.get(), dr.get(), dw.get<float>(), M, D, 1e-6f, dy.get(), act, nullptr).ok());
      // The residual stream: x + r rounded to act (the f32 sum of two act values is exact here).
      const auto summed_bits = dx.download<uint16_t>();
      std::vector<double> summed(M * D);
      for (int64_t i = 0; i < M * D; ++i) {
        summed[i] = round_act(x.values[i] + r.values[i], act);
        ASSERT_EQ(from_act(summed_bits[i], act), summed[i]) << "x[" << i << "]";
      }
      const auto fused_y = dy.download<uint16_t>();
      expect_rms_norm(summed, weight, M, D, 1e-6f, fused_y, act);

      // Unfused: add, then rms_norm of the sum: bit-identical (same roundings, same reduction order).
      DeviceBuffer ux(x.bits), uy(M * D * 2);
      ASSERT_TRUE(add(ux.get(), dr.get(), M, D, act, nullptr).ok());
      EXPECT_EQ(ux.download<uint16_t>(), summed_bits);
      ASSERT_TRUE(rms_norm(ux.get(), dw.get<float>(), M, D, 1e-6f, uy.get(), act, nullptr).ok());
      EXPECT_EQ(uy.download<uint16_t>(), fused_y);
    }
  }
}

TEST(CudaNorm, RejectsBadArguments) {
  GPU_OR_SKIP();
  DeviceBuffer buf(4096);
  const Status bad = rms_norm(buf.get(), buf.get<float>(), 2, 64, 1e-5f, buf.get(), DType::F32, nullptr);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message.find("rms_norm [M=2 D=64"), std::string::npos) << bad.error().message;
  EXPECT_FALSE(
      add_rms_norm(buf.get(), buf.get(), buf.get<float>(), 0, 64, 1e-5f, buf.get(), DType::F16, nullptr)
          .ok());
  EXPECT_FALSE(add(buf.get(), buf.get(), 1, 0, DType::BF16, nullptr).ok());
}

// ---------------------------------------------------------------- swiglu

// silu(g) * u in f32 (__expf: a few f32 ulp) rounded once: half an act ulp of |ref|, bound 1 ulp.
void run_swiglu(std::mt19937& rng, DType act, int64_t M, int64_t F, bool fused_layout) {
  SCOPED_TRACE(::testing::Message() << name(act) << " M=" << M << " F=" << F << " fused=" << fused_layout);
  const int64_t ld = fused_layout ? 2 * F : F;
  const HostAct gate_up = random_act(rng, M * 2 * F, act, -6.0, 6.0);
  DeviceBuffer dgu(gate_up.bits), dout(M * F * 2);
  // Fused: gate_up [M, 2F], gate = cols [0, F), up = cols [F, 2F). Separate: gate [M, F], up [M, F].
  const auto* base = dgu.get<uint16_t>();
  const uint16_t* gate = base;
  const uint16_t* up = fused_layout ? base + F : base + M * F;
  ASSERT_TRUE(swiglu(gate, ld, up, ld, M, F, dout.get(), act, nullptr).ok());
  const auto out = dout.download<uint16_t>();
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t f = 0; f < F; ++f) {
      const double g = gate_up.values[fused_layout ? m * 2 * F + f : m * F + f];
      const double u = gate_up.values[fused_layout ? m * 2 * F + F + f : M * F + m * F + f];
      const double ref = g / (1.0 + std::exp(-g)) * u;
      const double got = from_act(out[m * F + f], act);
      ASSERT_LE(std::abs(got - ref), act_ulp(act) * std::abs(ref) + 1e-6) << "out[" << m << ", " << f << "]";
    }
  }
}

TEST(CudaElementwise, SwigluMatchesFloat64) {
  GPU_OR_SKIP();
  std::mt19937 rng(6);
  for (DType act : kActs) {
    for (bool fused : {true, false}) {
      run_swiglu(rng, act, 1, 8, fused);
      run_swiglu(rng, act, 3, 11008, fused);
      run_swiglu(rng, act, 5, 13, fused);  // scalar path
      run_swiglu(rng, act, 7, 1, fused);
    }
  }
}

TEST(CudaElementwise, AddMatchesFloat64) {
  GPU_OR_SKIP();
  std::mt19937 rng(7);
  for (DType act : kActs) {
    for (const auto& [M, D] : kNormShapes) {
      const HostAct x = random_act(rng, M * D, act), r = random_act(rng, M * D, act);
      DeviceBuffer dx(x.bits), dr(r.bits);
      ASSERT_TRUE(add(dx.get(), dr.get(), M, D, act, nullptr).ok());
      const auto got = dx.download<uint16_t>();
      for (int64_t i = 0; i < M * D; ++i)
        ASSERT_EQ(from_act(got[i], act), round_act(x.values[i] + r.values[i], act))
            << name(act) << " i=" << i;
    }
  }
}

// ---------------------------------------------------------------- embedding, gather_rows (exact copies)

TEST(CudaElementwise, EmbeddingAndGatherCopyRowsExactly) {
  GPU_OR_SKIP();
  std::mt19937 rng(8);
  for (DType act : kActs) {
    for (int64_t D : {int64_t{1}, int64_t{8}, int64_t{37}, int64_t{4096}}) {
      SCOPED_TRACE(::testing::Message() << name(act) << " D=" << D);
      const int64_t V = 50;
      const HostAct table = random_act(rng, V * D, act);
      const std::vector<int32_t> ids = {3, 49, 0, 3, 17, 50 /* out of range: zero row */, -1 /* zero row */};
      const auto M = static_cast<int64_t>(ids.size());
      DeviceBuffer dtable(table.bits), dids(ids), dout(M * D * 2), dgather(M * D * 2);
      ASSERT_TRUE(embedding(dids.get<int32_t>(), M, dtable.get(), V, D, dout.get(), act, nullptr).ok());
      const auto out = dout.download<uint16_t>();
      for (int64_t m = 0; m < M; ++m) {
        const bool valid = ids[m] >= 0 && ids[m] < V;
        for (int64_t d = 0; d < D; ++d)
          ASSERT_EQ(out[m * D + d], valid ? table.bits[ids[m] * D + d] : 0) << "row " << m << " col " << d;
      }
      // gather_rows over the first 5 ids (all valid), repeated rows included.
      ASSERT_TRUE(gather_rows(dtable.get(), dids.get<int32_t>(), 5, D, dgather.get(), act, nullptr).ok());
      const auto gathered = dgather.download<uint16_t>();
      for (int64_t r = 0; r < 5; ++r)
        for (int64_t d = 0; d < D; ++d) ASSERT_EQ(gathered[r * D + d], table.bits[ids[r] * D + d]);
      for (int64_t i = 5 * D; i < M * D; ++i) ASSERT_EQ(gathered[i], 0xFFFF) << "gather wrote past R rows";
    }
  }
}

// ---------------------------------------------------------------- rope

// Rotation in float64 of the act inputs with the f32 tables, rounded once. The kernel's f32 products
// can cancel (a c - b s), so the bound is half an ulp of |ref| (final rounding) plus f32 error on
// |a c| + |b s|; we allow 1 ulp * |ref| + 1e-6 * (|a c| + |b s|).
void run_rope(std::mt19937& rng, DType act, bool interleaved, int64_t M, int64_t num_heads, int64_t head_dim,
              int64_t col_offset, int64_t ld) {
  SCOPED_TRACE(::testing::Message() << name(act) << " interleaved=" << interleaved << " M=" << M << " heads="
                                    << num_heads << " head_dim=" << head_dim << " col_offset=" << col_offset);
  const int64_t half = head_dim / 2, max_position = 64;
  std::vector<float> cos(max_position * half), sin(max_position * half);
  for (int64_t p = 0; p < max_position; ++p)
    for (int64_t j = 0; j < half; ++j) {
      const double angle = p * std::pow(10000.0, -2.0 * j / head_dim);
      cos[p * half + j] = static_cast<float>(std::cos(angle));
      sin[p * half + j] = static_cast<float>(std::sin(angle));
    }
  std::vector<int32_t> positions(M);
  for (auto& p : positions) p = std::uniform_int_distribution<int32_t>(0, max_position - 1)(rng);
  const HostAct x = random_act(rng, M * ld, act, -3.0, 3.0);
  DeviceBuffer dx(x.bits), dcos(cos), dsin(sin), dpos(positions);
  ASSERT_TRUE(rope(dx.get(), M, ld, col_offset, num_heads, head_dim, dpos.get<int32_t>(), dcos.get<float>(),
                   dsin.get<float>(), interleaved, act, nullptr)
                  .ok());
  const auto got = dx.download<uint16_t>();
  std::vector<bool> rotated(M * ld, false);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t h = 0; h < num_heads; ++h)
      for (int64_t j = 0; j < half; ++j) {
        const int64_t head = m * ld + col_offset + h * head_dim;
        const int64_t ia = interleaved ? head + 2 * j : head + j,
                      ib = interleaved ? head + 2 * j + 1 : head + j + half;
        const double a = x.values[ia], b = x.values[ib];
        const double c = cos[positions[m] * half + j], s = sin[positions[m] * half + j];
        const double ref_a = a * c - b * s, ref_b = b * c + a * s, scale = std::abs(a * c) + std::abs(b * s);
        ASSERT_LE(std::abs(from_act(got[ia], act) - ref_a), act_ulp(act) * std::abs(ref_a) + 1e-6 * scale);
        ASSERT_LE(std::abs(from_act(got[ib], act) - ref_b), act_ulp(act) * std::abs(ref_b) + 1e-6 * scale);
        rotated[ia] = rotated[ib] = true;
      }
  for (int64_t i = 0; i < M * ld; ++i) {
    if (!rotated[i]) {
      ASSERT_EQ(got[i], x.bits[i]) << "rope touched column " << i % ld << " outside the heads";
    }
  }
}

TEST(CudaRope, BothPairingsMatchFloat64) {
  GPU_OR_SKIP();
  std::mt19937 rng(9);
  for (DType act : kActs) {
    for (bool interleaved : {false, true}) {
      run_rope(rng, act, interleaved, 1, 1, 2, 0, 2);
      run_rope(rng, act, interleaved, 5, 4, 64, 0, 256);
      // q/k inside a fused qkv row: k heads start after 8 q heads of 16, v heads follow.
      run_rope(rng, act, interleaved, 3, 2, 16, 8 * 16, 12 * 16);
      run_rope(rng, act, interleaved, 7, 3, 128, 64, 3 * 128 + 64 + 10);
    }
  }
}

TEST(CudaRope, RejectsHeadsPastTheRow) {
  GPU_OR_SKIP();
  DeviceBuffer buf(4096);
  const Status bad = rope(buf.get(), 1, 64, 16, 1, 64, buf.get<int32_t>(), buf.get<float>(), buf.get<float>(),
                          false, DType::F16, nullptr);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message.find("rope [M=1 ld=64 col_offset=16"), std::string::npos)
      << bad.error().message;
  EXPECT_FALSE(rope(buf.get(), 1, 64, 0, 1, 7, buf.get<int32_t>(), buf.get<float>(), buf.get<float>(), false,
                    DType::F16, nullptr)
                   .ok());
}

}  // namespace
}  // namespace kiln::cuda::testing
