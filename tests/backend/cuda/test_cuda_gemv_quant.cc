// Quantized weights on the GPU (common/quant.h layouts): gemv_quant (the decode GEMV, M = 1..32),
// dequantize (prefill: W to the act dtype, then cuBLASLt) and the CUDA backend end to end.
//
// Kernels against a float64 reference built with quantize_rtn / dequantize_row: odd shapes (K = 100,
// 172, 4128, not multiples of 32 or of the group; N = 1, 7, 13, 37), group boundaries inside a block
// (int8 group 16, 48 and 96: not powers of two), rows that are all zero, constant, all negative
// (negative mins), or carry outliers, F16 and F32 scales, int8 with and without mins, int4 per group
// and per channel, M = 1..32 on the GEMV and 5 / 64 / 300 through dequantize + cuBLASLt, y in F32 and
// in the act dtype (with a padded ldy whose padding must stay untouched), fp16 and bf16 x, every
// k_split, outputs poisoned (NaN) before each call.
//
// Tolerance, derived from what an implementation may round (u = half a unit of the act dtype, 2^-11
// fp16, 2^-8 bf16): each weight once to the act dtype (|err| <= u |w|), the scale and min of a group
// to it first (errors shared by the group: u |s sum_g x q| and u |m sum_g x|), y when it is stored in
// the act dtype (u |y|), and f32 sums (2^-24 per add). Taking these as independent and uniform gives
// each output an error standard deviation sigma (reference() computes it); the check allows 6 sigma in
// RMS over all outputs of a call. The factored path rounds no weight at all, so it sits well inside.
// A wrong nibble, group or scale gives errors of order |w| |x| sqrt(K), hundreds of sigma. (An earlier
// bound, 3 units relative to |y|, failed on single outputs whose dot product cancels: it measured the
// cancellation, not the kernel.)
//
// End to end: a stories260K fp16 engine whose Linear weights are quantized (rewritten here with
// quantize_rtn) against the same engine holding the dequantized weights in fp16: prefill (cuBLASLt
// path and GEMV path) and decode steps (CUDA graphs) give the same logits within 1e-2 relative L2;
// and engines from `kiln build --quant int8 | int4-rtn | int4` on the CUDA backend against the CPU
// backend on the same build, within 2e-2.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <random>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "backend/backend.h"
#include "backend/cuda/cublas_gemm.h"
#include "backend/cuda/kernels.h"
#include "common/quant.h"
#include "compiler/build_engine.h"
#include "cuda_test_util.h"
#include "engine/engine_file.h"
#include "graph/graph.h"
#include "test_util.h"

namespace kiln::cuda::testing {
namespace {

const DType kActs[] = {DType::F16, DType::BF16};

// Weights with every kind of row: random, all zero, constant, outliers, all negative, and larger.
std::vector<float> make_weights(std::mt19937& rng, int64_t N, int64_t K) {
  std::uniform_real_distribution<float> u(-0.05f, 0.05f);
  std::vector<float> w(N * K);
  for (int64_t n = 0; n < N; ++n) {
    float* row = w.data() + n * K;
    const int kind = N == 1 ? 0 : static_cast<int>(n % 6);
    for (int64_t k = 0; k < K; ++k) {
      switch (kind) {
        case 0: row[k] = u(rng); break;
        case 1: row[k] = 0.0f; break;                                   // all-zero row
        case 2: row[k] = n % 4 == 2 ? 0.03f : -0.02f; break;             // constant row
        case 3: row[k] = k % 37 == 5 ? 40.0f * u(rng) : u(rng); break;  // outliers
        case 4: row[k] = -0.5f + 8.0f * u(rng); break;                  // all negative: negative mins
        default: row[k] = 10.0f * u(rng); break;
      }
    }
  }
  return w;
}

// A quantized matrix uploaded: the device view and the buffers behind it.
struct DeviceQuant {
  std::unique_ptr<DeviceBuffer> codes, scales, mins;
  QuantWeightView view;
};
DeviceQuant upload(const QuantizedMatrix& q) {
  DeviceQuant d;
  d.codes = std::make_unique<DeviceBuffer>(q.codes);
  d.scales = std::make_unique<DeviceBuffer>(q.scales);
  if (q.info.has_min) d.mins = std::make_unique<DeviceBuffer>(q.mins);
  d.view = QuantWeightView{q.info.bits, q.info.group_size, q.info.scale_dtype, q.rows, q.cols,
                           d.codes->get<uint8_t>(), d.scales->get(), d.mins ? d.mins->get() : nullptr};
  return d;
}

std::vector<double> dequantized(const QuantizedMatrix& q) {
  std::vector<float> row(q.cols);
  std::vector<double> out(q.rows * q.cols);
  for (int64_t n = 0; n < q.rows; ++n) {
    dequantize_row(q.view(), n, row.data());
    for (int64_t k = 0; k < q.cols; ++k) out[n * q.cols + k] = row[k];
  }
  return out;
}

// y[m, n] = sum_k x[m, k] w[n, k] + bias[n] in float64, and sigma[m, n], the standard deviation of the
// rounding error allowed (see the top of the file).
struct Reference {
  std::vector<double> y, sigma;
};
Reference reference(const std::vector<double>& x, const QuantizedMatrix& q, const std::vector<double>& w,
                    const std::vector<float>& bias, int64_t M, DType act, bool y_rounded) {
  const int64_t N = q.rows, K = q.cols, G = q.info.group_size;
  const double u = act_ulp(act) / 2, third = 1.0 / 3.0;
  const QuantMatrixView view = q.view();
  Reference r{std::vector<double>(M * N), std::vector<double>(M * N)};
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t n = 0; n < N; ++n) {
      double s = bias.empty() ? 0.0 : bias[n], var_w = 0, var_g = 0, abs_sum = 0;
      for (int64_t g0 = 0; g0 < K; g0 += G) {
        double xq = 0, xs = 0;
        const double scale = quant_scale(view, n, g0 / G), min = quant_min(view, n, g0 / G);
        for (int64_t k = g0; k < std::min(K, g0 + G); ++k) {
          const double xv = x[m * K + k], wv = w[n * K + k];
          s += xv * wv;
          var_w += (u * xv * wv) * (u * xv * wv) * third;
          abs_sum += std::fabs(xv * wv);
          xq += xv * scale * quant_code(view, n, k);
          xs += xv;
        }
        var_g += ((u * xq) * (u * xq) + (u * min * xs) * (u * min * xs)) * third;
      }
      const double f32 = 0x1p-24 * abs_sum;  // f32 sums: a generous deterministic allowance
      r.y[m * N + n] = s;
      r.sigma[m * N + n] = std::sqrt(var_w + var_g + (y_rounded ? (u * s) * (u * s) * third : 0.0) + f32 * f32);
    }
  }
  return r;
}

// Checks y (device, [M, N] at stride ldy) against the reference: finite, RMS error within 6 sigma,
// padding untouched.
void expect_close(const DeviceBuffer& y, DType y_dtype, int64_t M, int64_t N, int64_t ldy, const Reference& ref) {
  std::vector<double> got(M * ldy);
  if (y_dtype == DType::F32) {
    const auto host = y.download<float>();
    for (int64_t i = 0; i < M * ldy; ++i) got[i] = host[i];
  } else {
    const auto host = y.download<uint16_t>();
    for (int64_t i = 0; i < M * ldy; ++i) got[i] = from_act(host[i], y_dtype);
  }
  double err2 = 0, sigma2 = 0, worst = 0;
  int64_t bad = 0, touched = 0;
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t n = 0; n < ldy; ++n) {
      const double v = got[m * ldy + n];
      if (n >= N) {
        touched += !std::isnan(v);
        continue;
      }
      if (!std::isfinite(v)) ++bad;
      const double d = v - ref.y[m * N + n], sg = ref.sigma[m * N + n];
      err2 += d * d;
      sigma2 += sg * sg;
      worst = std::max(worst, std::fabs(d) / std::max(sg, 1e-300));
    }
  }
  EXPECT_EQ(bad, 0) << "non-finite (unwritten) outputs";
  EXPECT_EQ(touched, 0) << "outputs written past N in the ldy padding";
  EXPECT_LE(std::sqrt(err2), 6.0 * std::sqrt(sigma2) + 1e-30)
      << "RMS error in sigmas: " << std::sqrt(err2 / std::max(sigma2, 1e-300)) << ", worst output " << worst << " sigma";
}

struct Layout {
  const char* name;
  int bits;
  int64_t group;  // 0: per channel (the padded K)
  DType scale_dtype;
  bool has_min;
};
const Layout kLayouts[] = {
    {"int8-channel-f32", 8, 0, DType::F32, false},  // kiln build --quant int8
    {"int8-g32-f16-min", 8, 32, DType::F16, true},
    {"int8-g16-f32", 8, 16, DType::F32, false},      // two groups per 32-element block (GGUF Q6_K-like)
    {"int8-g48-f16", 8, 48, DType::F16, false},      // group boundaries inside blocks, not a power of two
    {"int4-g128-f16", 4, 128, DType::F16, true},     // kiln build --quant int4
    {"int4-g32-f32", 4, 32, DType::F32, true},       // GGUF Q4_1 / AWQ-like
    {"int4-g64-f16", 4, 64, DType::F16, true},
    {"int4-g96-f16", 4, 96, DType::F16, true},
    {"int4-channel-f32", 4, 0, DType::F32, true},
    {"int8-g4096-f32", 8, 4096, DType::F32, false},  // a group wider than K (one group, a multiple of 16)
    {"int8-g64-f16-min", 8, 64, DType::F16, true},   // factored (chunks of 4 units inside a group), with mins
    {"int4-g256-f16", 4, 256, DType::F16, true},     // factored, two chunks per group
};

// Per channel (group 0): one group of K columns, K itself, as `kiln build` writes it.
QuantInfo info_of(const Layout& l, int64_t K) {
  return QuantInfo{l.bits, l.group > 0 ? l.group : K, l.scale_dtype, l.has_min};
}

// One quantized matrix and its float64 reference, then the GEMV at several M, y dtypes and a bias.
void run_layout(std::mt19937& rng, const Layout& layout, int64_t N, int64_t K, DType act,
                const std::vector<int64_t>& rows, const GemvQuantTuning& tuning = {}) {
  SCOPED_TRACE(::testing::Message() << layout.name << " N=" << N << " K=" << K << " act=" << dtype_name(act)
                                    << " k_split=" << tuning.k_split << " factored=" << tuning.factored
                                    << " pipeline=" << tuning.pipeline << " stage_x=" << tuning.stage_x);
  const std::vector<float> w = make_weights(rng, N, K);
  const QuantizedMatrix q = quantize_rtn(w.data(), N, K, info_of(layout, K));
  const std::vector<double> wd = dequantized(q);
  DeviceQuant dq = upload(q);
  const std::vector<float> bias = random_f32(rng, N, -0.5f, 0.5f);
  DeviceBuffer dbias(bias);
  for (int64_t M : rows) {
    for (const bool y_f32 : {true, false}) {
      for (const bool with_bias : {false, true}) {
        if (with_bias && (M % 2 == 0) == y_f32) continue;  // half the combinations
        SCOPED_TRACE(::testing::Message() << "M=" << M << " y_f32=" << y_f32 << " bias=" << with_bias);
        const HostAct x = random_act(rng, M * K, act);
        DeviceBuffer dx(x.bits);
        const DType y_dtype = y_f32 ? DType::F32 : act;
        const int64_t ldy = N + 3;
        DeviceBuffer y(M * ldy * dtype_size(y_dtype));
        const Status s = gemv_quant(dx.get(), M, dq.view, with_bias ? dbias.get<float>() : nullptr, y.get(), ldy, act,
                                    y_dtype, nullptr, tuning);
        ASSERT_TRUE(s.ok()) << s.error().message;
        expect_close(y, y_dtype, M, N, ldy,
                     reference(x.values, q, wd, with_bias ? bias : std::vector<float>{}, M, act, !y_f32));
      }
    }
  }
}

TEST(CudaGemvQuant, OddShapesEveryLayout) {
  GPU_OR_SKIP();
  std::mt19937 rng(1);
  const std::vector<int64_t> rows = {1, 2, 3, 4, 5, 8, 9, 16, 17, 32};
  for (const Layout& layout : kLayouts)
    for (DType act : kActs)
      for (const auto& [N, K] : std::vector<std::pair<int64_t, int64_t>>{{1, 4096}, {7, 172}, {13, 100}, {37, 4128}})
        run_layout(rng, layout, N, K, act, rows);
}

TEST(CudaGemvQuant, EveryKSplit) {
  GPU_OR_SKIP();
  std::mt19937 rng(2);
  for (int k_split : {1, 2, 4, 8})
    for (const Layout& layout : {kLayouts[0], kLayouts[3], kLayouts[4], kLayouts[5]})
      for (DType act : kActs)
        for (bool factored : {true, false})
          run_layout(rng, layout, 100, 2080, act, {1, 3, 8, 12, 32}, GemvQuantTuning{k_split, factored, 0, -1});
}

// M <= 8 has two kernels (the default picks the pipelined one where it fits): both, at every k_split,
// with x staged in shared memory and read through L1, on K = 2080 (17 chunks of int4 g128: more than a
// ring of 8 per slice at k_split 1, a ring left partly empty at 8) and K = 4128 / 100 (a partial last
// chunk, units past the row zero-filled; K = 100 is not a multiple of 8, so x is staged).
TEST(CudaGemvQuant, PipelinedKernelEveryKSplit) {
  GPU_OR_SKIP();
  std::mt19937 rng(7);
  for (int k_split : {1, 2, 4, 8})
    for (const Layout& layout : {kLayouts[0], kLayouts[3], kLayouts[4], kLayouts[5], kLayouts[10]})
      for (DType act : kActs)
        for (bool factored : {true, false}) {
          for (int stage_x : {0, 1})
            run_layout(rng, layout, 100, 2080, act, {1, 3, 8}, GemvQuantTuning{k_split, factored, 1, stage_x});
          run_layout(rng, layout, 37, 4128, act, {2, 5}, GemvQuantTuning{k_split, factored, 1, 1});
          run_layout(rng, layout, 13, 100, act, {1, 8}, GemvQuantTuning{k_split, factored, 1, -1});
        }
}

// Llama-2-7B's o_proj shape with the two default layouts (k_split 8, many blocks, full tiles).
TEST(CudaGemvQuant, SevenBShape) {
  GPU_OR_SKIP();
  std::mt19937 rng(3);
  for (const Layout& layout : {kLayouts[0], kLayouts[4]})
    for (DType act : kActs) run_layout(rng, layout, 4096, 4096, act, {1, 4});
}

// dequantize: each element is round(fmaf(q, scale, min)), i.e. round_act of dequantize_row's value up
// to the host's own rounding of scale * q + min (at most one unit of the act dtype apart).
TEST(CudaGemvQuant, DequantizeMatchesDequantizeRow) {
  GPU_OR_SKIP();
  std::mt19937 rng(4);
  for (const Layout& layout : kLayouts) {
    for (DType act : kActs) {
      for (const auto& [N, K] : std::vector<std::pair<int64_t, int64_t>>{{7, 172}, {13, 100}, {9, 256}, {5, 4128}}) {
        SCOPED_TRACE(::testing::Message() << layout.name << " N=" << N << " K=" << K << " act=" << dtype_name(act));
        const std::vector<float> w = make_weights(rng, N, K);
        const QuantizedMatrix q = quantize_rtn(w.data(), N, K, info_of(layout, K));
        const std::vector<double> wd = dequantized(q);
        DeviceQuant dq = upload(q);
        DeviceBuffer out(N * K * 2 + 16);  // 16 poisoned bytes past the end must stay so
        ASSERT_TRUE(dequantize(dq.view, out.get(), act, nullptr).ok());
        const auto host = out.download<uint16_t>();
        int64_t bad = 0;
        for (int64_t i = 0; i < N * K; ++i) {
          const double got = from_act(host[i], act), want = round_act(wd[i], act);
          // One unit of the act dtype at want's magnitude (fp16 subnormals: their fixed spacing 2^-24).
          if (!(std::fabs(got - want) <= act_ulp(act) * std::fabs(want) + 0x1p-24)) ++bad;
        }
        EXPECT_EQ(bad, 0);
        for (int64_t i = N * K; i < N * K + 8; ++i) EXPECT_EQ(host[i], 0xFFFF) << "written past [N, K]";
      }
    }
  }
}

// Prefill: dequantize into scratch, then cuBLASLt (what the executor runs above kGemvQuantMaxRows).
TEST(CudaGemvQuant, DequantizeThenCublasLt) {
  GPU_OR_SKIP();
  std::mt19937 rng(5);
  auto gemm = CublasGemm::create(size_t{32} << 20);
  ASSERT_TRUE(gemm.ok()) << gemm.error().message;
  for (const Layout& layout : {kLayouts[0], kLayouts[1], kLayouts[4], kLayouts[5]}) {
    for (DType act : kActs) {
      for (const auto& [N, K] : std::vector<std::pair<int64_t, int64_t>>{{40, 256}, {13, 4128}}) {
        const std::vector<float> w = make_weights(rng, N, K);
        const QuantizedMatrix q = quantize_rtn(w.data(), N, K, info_of(layout, K));
        const std::vector<double> wd = dequantized(q);
        DeviceQuant dq = upload(q);
        DeviceBuffer scratch(N * K * 2);
        for (int64_t M : {5, 64, 300}) {
          for (const bool y_f32 : {true, false}) {
            SCOPED_TRACE(::testing::Message() << layout.name << " N=" << N << " K=" << K << " act="
                                              << dtype_name(act) << " M=" << M << " y_f32=" << y_f32);
            const HostAct x = random_act(rng, M * K, act);
            DeviceBuffer dx(x.bits);
            const DType y_dtype = y_f32 ? DType::F32 : act;
            DeviceBuffer y(M * N * dtype_size(y_dtype));
            ASSERT_TRUE(dequantize(dq.view, scratch.get(), act, nullptr).ok());
            const Status s = (*gemm)->run(dx.get(), M, K, scratch.get(), N, nullptr, y.get(), N, act, y_dtype, nullptr);
            ASSERT_TRUE(s.ok()) << s.error().message;
            expect_close(y, y_dtype, M, N, N, reference(x.values, q, wd, {}, M, act, !y_f32));
          }
        }
      }
    }
  }
}

TEST(CudaGemvQuant, RejectsBadArguments) {
  GPU_OR_SKIP();
  std::mt19937 rng(6);
  const std::vector<float> w = make_weights(rng, 16, 64);
  const QuantizedMatrix q = quantize_rtn(w.data(), 16, 64, QuantInfo{4, 32, DType::F16, true});
  DeviceQuant dq = upload(q);
  DeviceBuffer x(64 * 64 * 2), y(64 * 16 * 4);
  const auto call = [&](const QuantWeightView& v, int64_t M, DType act = DType::F16) {
    return gemv_quant(x.get(), M, v, nullptr, y.get(), 16, act, DType::F32, nullptr);
  };
  EXPECT_TRUE(call(dq.view, 1).ok());
  EXPECT_FALSE(call(dq.view, 0).ok());
  EXPECT_FALSE(call(dq.view, kGemvQuantMaxRows + 1).ok());
  EXPECT_FALSE(call(dq.view, 1, DType::F32).ok());
  QuantWeightView v = dq.view;
  v.bits = 3;
  EXPECT_FALSE(call(v, 1).ok());
  v = dq.view;
  v.group_size = 48;  // int4 groups are multiples of 32 (or the whole row)
  EXPECT_FALSE(call(v, 1).ok());
  v = dq.view;
  v.codes += 8;  // misaligned
  EXPECT_FALSE(call(v, 1).ok());
  v = dq.view;
  v.scale_dtype = DType::BF16;
  EXPECT_FALSE(call(v, 1).ok());
  EXPECT_FALSE(gemv_quant(x.get(), 1, dq.view, nullptr, y.get(), 15, DType::F16, DType::F32, nullptr).ok());
  EXPECT_FALSE(dequantize(dq.view, nullptr, DType::F16, nullptr).ok());
  // Tunings that do not apply: the pipelined kernel above M = 8, stage_x without it, x through L1
  // with K % 8 != 0.
  const auto tuned = [&](int64_t M, int64_t K, GemvQuantTuning t) {
    QuantWeightView v2 = dq.view;
    v2.cols = K;
    return gemv_quant(x.get(), M, v2, nullptr, y.get(), 16, DType::F16, DType::F32, nullptr, t);
  };
  EXPECT_TRUE(tuned(8, 64, GemvQuantTuning{0, true, 1, 1}).ok());
  EXPECT_FALSE(tuned(9, 64, GemvQuantTuning{0, true, 1, -1}).ok());
  EXPECT_FALSE(tuned(1, 64, GemvQuantTuning{0, true, 0, 1}).ok());
  EXPECT_FALSE(tuned(9, 64, GemvQuantTuning{0, true, -1, 1}).ok());
  EXPECT_FALSE(tuned(1, 60, GemvQuantTuning{0, true, 1, 0}).ok());
  EXPECT_TRUE(tuned(1, 60, GemvQuantTuning{0, true, 1, -1}).ok());
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
}

// ---- the CUDA backend on an engine with quantized Linear weights ----

using kiln::testing::shared_path;
using kiln::testing::TempDir;

// Rewrites `engine` into two engines: `quant_path` with every Linear / SwiGluLinear matrix quantized as
// `layout` says, and `deq_path` holding those same weights dequantized to fp16 (the reference the
// quantized engine must match). A matrix the embedding also reads (a tied LM head) gets its own copy
// under a new name, so the embedding table stays fp16 and the LM head (f32 logits) is quantized too.
void write_quantized_pair(const LoadedEngine& engine, const QuantInfo& layout, const std::string& quant_path,
                          const std::string& deq_path) {
  auto parsed = Graph::from_json(engine.metadata.at("graph"));
  ASSERT_TRUE(parsed.ok()) << parsed.error().message;
  Graph graph = *parsed;
  std::set<std::string> embedding_tables;
  std::map<std::string, std::string> source;  // quantized weight -> the engine tensor it comes from
  for (const Node& n : graph.nodes)
    if (n.op == OpKind::Embedding) embedding_tables.insert(n.weights[0]);
  for (Node& n : graph.nodes) {
    if (n.op != OpKind::Linear && n.op != OpKind::SwiGluLinear) continue;
    const std::string from = n.weights[0];
    if (embedding_tables.count(from)) {
      n.weights[0] = from + ".untied";
      graph.weights[n.weights[0]] = graph.weights.at(from);
    }
    source[n.weights[0]] = from;
  }
  ASSERT_FALSE(source.empty());

  Graph quant_graph = graph;
  std::map<std::string, QuantizedMatrix> quantized;
  std::map<std::string, std::vector<uint16_t>> deq;
  for (const auto& [name, from] : source) {
    const TensorView* t = engine.find(from);
    ASSERT_TRUE(t && t->dtype == DType::F16 && t->shape.size() == 2) << from;
    const int64_t N = t->shape[0], K = t->shape[1];
    std::vector<float> w(N * K);
    for (int64_t i = 0; i < N * K; ++i) {
      uint16_t h;
      std::memcpy(&h, t->data + 2 * i, 2);
      w[i] = f16_to_f32(h);
    }
    QuantInfo info = layout;
    if (info.group_size == 0) info.group_size = K;  // per channel
    QuantizedMatrix q = quantize_rtn(w.data(), N, K, info);
    std::vector<float> row(K);
    std::vector<uint16_t>& d = deq[name];
    d.resize(N * K);
    for (int64_t n = 0; n < N; ++n) {
      dequantize_row(q.view(), n, row.data());
      for (int64_t k = 0; k < K; ++k) d[n * K + k] = f32_to_f16(row[k]);
    }
    WeightInfo& wi = quant_graph.weights.at(name);
    wi.dtype = quant_code_dtype(info);
    wi.quant = info;
    quantized.emplace(name, std::move(q));
  }

  for (const bool quant : {true, false}) {
    EngineWriteSpec spec;
    spec.backend = engine.header.backend;
    spec.device_arch = engine.header.device_arch;
    spec.metadata = engine.metadata;
    spec.metadata.erase("tensors");
    spec.metadata["graph"] = (quant ? quant_graph : graph).to_json();
    for (const auto& [name, view] : engine.tensors) {
      if (!source.count(name)) spec.tensors.push_back({name, view.dtype, view.shape, view.data, view.nbytes});
    }
    for (const auto& [name, from] : source) {
      const TensorView* t = engine.find(from);
      if (!quant) {
        const auto& d = deq.at(name);
        spec.tensors.push_back({name, DType::F16, t->shape, d.data(), d.size() * 2});
        continue;
      }
      const QuantizedMatrix& q = quantized.at(name);
      for (const StoredTensor& st : stored_tensors(name, quant_graph.weights.at(name))) {
        const std::vector<uint8_t>& bytes = st.name == name ? q.codes : st.name == quant_scales_name(name) ? q.scales : q.mins;
        spec.tensors.push_back({st.name, st.dtype, st.shape, bytes.data(), bytes.size()});
      }
    }
    const Status s = write_engine(quant ? quant_path : deq_path, spec);
    ASSERT_TRUE(s.ok()) << s.error().message;
  }
}

// One step: `seqs` = (sequence row, first position, tokens); logits for every token.
Batch make_batch(const std::vector<std::tuple<int32_t, int32_t, std::vector<int32_t>>>& seqs, int32_t blocks_per_seq,
                 int32_t num_seqs) {
  Batch b;
  b.max_blocks_per_seq = blocks_per_seq;
  for (int32_t s = 0; s < num_seqs; ++s)
    for (int32_t j = 0; j < blocks_per_seq; ++j) b.block_tables.push_back(s * blocks_per_seq + j);
  for (const auto& [seq, start, tokens] : seqs) {
    for (size_t i = 0; i < tokens.size(); ++i) {
      b.logit_rows.push_back(b.num_tokens());
      b.tokens.push_back(tokens[i]);
      b.positions.push_back(start + static_cast<int32_t>(i));
      b.token_seq.push_back(seq);
    }
  }
  return b;
}

double relative_l2(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
    den += static_cast<double>(b[i]) * b[i];
  }
  return std::sqrt(num / den);
}

// Runs the same steps on both backends and compares their logits: a 40-token prefill (rows above
// kGemvQuantMaxRows: dequantize + cuBLASLt), a 20-token prefill of a second sequence (the GEMV with 3
// n-tiles), then decode steps of both sequences (CUDA graphs, the GEMV at M = 2).
void expect_same_logits(Backend& a, Backend& b, double tolerance) {
  const int64_t vocab = a.vocab_size();
  ASSERT_EQ(vocab, b.vocab_size());
  const int32_t blocks_per_seq = static_cast<int32_t>(512 / a.kv_geometry().block_size);
  std::mt19937 rng(7);
  std::uniform_int_distribution<int32_t> id(3, static_cast<int32_t>(vocab) - 1);
  const auto random_ids = [&](int n) {
    std::vector<int32_t> v(n);
    for (int32_t& t : v) t = id(rng);
    return v;
  };
  std::vector<Batch> steps = {make_batch({{0, 0, random_ids(40)}}, blocks_per_seq, 2),
                              make_batch({{1, 0, random_ids(20)}}, blocks_per_seq, 2)};
  int32_t pos[2] = {40, 20};
  for (size_t step = 0; step < 8; ++step) {
    if (step >= 2) {
      steps.push_back(make_batch({{0, pos[0], random_ids(1)}, {1, pos[1], random_ids(1)}}, blocks_per_seq, 2));
      ++pos[0], ++pos[1];
    }
    const Batch& batch = steps[step];
    std::vector<float> logits[2];
    Backend* backends[2] = {&a, &b};
    for (int e = 0; e < 2; ++e) {
      logits[e].assign(batch.logit_rows.size() * vocab, 0.0f);
      const Status s = backends[e]->forward(batch, logits[e].data());
      ASSERT_TRUE(s.ok()) << s.error().message;
    }
    bool finite = true;
    for (float v : logits[0]) finite = finite && std::isfinite(v);
    EXPECT_TRUE(finite) << "step " << step;
    EXPECT_LE(relative_l2(logits[0], logits[1]), tolerance) << "step " << step;
  }
}

BackendOptions small_backend_options() {
  BackendOptions options;
  options.num_threads = 2;
  options.max_tokens_per_step = 128;
  options.num_kv_blocks = 64;
  options.max_sequences = 2;
  return options;
}

class CudaQuantEngine : public ::testing::TestWithParam<QuantInfo> {};

TEST_P(CudaQuantEngine, MatchesDequantizedFp16Engine) {
  GPU_OR_SKIP();
  TempDir dir;
  BuildOptions options;
  options.backend = "cuda";
  options.model_path = shared_path("models/stories260K/stories260K.bin");
  options.output_path = dir.file("fp16.kiln");
  options.dtype = "fp16";
  options.max_seq_len = 512;
  options.tune = false;
  const auto report = build_engine(options);
  ASSERT_TRUE(report.ok()) << report.error().message;
  auto engine = load_engine(options.output_path, {});
  ASSERT_TRUE(engine.ok()) << engine.error().message;
  write_quantized_pair(*engine, GetParam(), dir.file("quant.kiln"), dir.file("deq.kiln"));
  if (HasFatalFailure()) return;

  std::vector<LoadedEngine> engines;
  std::vector<std::unique_ptr<Backend>> backends;
  for (const char* name : {"quant.kiln", "deq.kiln"}) {
    auto e = load_engine(dir.file(name), {});
    ASSERT_TRUE(e.ok()) << e.error().message;
    engines.push_back(std::move(e).value());
  }
  for (const LoadedEngine& e : engines) {
    auto b = create_cuda_backend(e, small_backend_options());
    ASSERT_TRUE(b.ok()) << b.error().message;
    backends.push_back(std::move(b).value());
  }
  EXPECT_LT(backends[0]->weight_bytes(), backends[1]->weight_bytes());
  // Both engines compute the same function in fp16; only rounding and summation order differ.
  expect_same_logits(*backends[0], *backends[1], 1e-2);
}

INSTANTIATE_TEST_SUITE_P(Layouts, CudaQuantEngine,
                         ::testing::Values(QuantInfo{8, 0, DType::F32, false}, QuantInfo{4, 32, DType::F16, true},
                                           QuantInfo{4, 64, DType::F32, true}),
                         [](const ::testing::TestParamInfo<QuantInfo>& p) {
                           return std::string("int") + std::to_string(p.param.bits) + "_g" +
                                  std::to_string(p.param.group_size) + (p.param.scale_dtype == DType::F32 ? "_f32" : "_f16");
                         });

}  // namespace
}  // namespace kiln::cuda::testing

namespace kiln::cuda::testing {
namespace {

// An engine quantized by `kiln build --quant` (the build side's layouts and names: int8 per channel,
// int4 g128 round-to-nearest, int4 AWQ with scales folded into the norms; the tied LM head as its own
// quantized copy) on the CUDA backend against the same build for the CPU backend, which runs the
// quantized matrices with its own kernels in f32: within the 2e-2 relative L2 the fp16 parity tests
// allow against float64.
class CudaQuantBuild : public ::testing::TestWithParam<std::string> {};

TEST_P(CudaQuantBuild, MatchesCpuBackend) {
  GPU_OR_SKIP();
  TempDir dir;
  std::vector<LoadedEngine> engines;
  for (const std::string backend : {"cuda", "cpu"}) {
    BuildOptions options;
    options.backend = backend;
    options.model_path = shared_path("models/stories260K/stories260K.bin");
    options.output_path = dir.file(backend + ".kiln");
    options.dtype = "fp16";
    options.max_seq_len = 512;
    options.tune = false;
    options.quant = GetParam();
    const auto report = build_engine(options);
    ASSERT_TRUE(report.ok()) << report.error().message;
    auto e = load_engine(options.output_path, {});
    ASSERT_TRUE(e.ok()) << e.error().message;
    engines.push_back(std::move(e).value());
  }
  auto gpu = create_cuda_backend(engines[0], small_backend_options());
  ASSERT_TRUE(gpu.ok()) << gpu.error().message;
  auto cpu = create_cpu_backend(engines[1], small_backend_options());
  ASSERT_TRUE(cpu.ok()) << cpu.error().message;
  expect_same_logits(**gpu, **cpu, 2e-2);
}

INSTANTIATE_TEST_SUITE_P(Modes, CudaQuantBuild, ::testing::Values("int8", "int4-rtn", "int4"),
                         [](const ::testing::TestParamInfo<std::string>& p) {
                           std::string name = p.param;
                           for (char& c : name) c = c == '-' ? '_' : c;
                           return name;
                         });

}  // namespace
}  // namespace kiln::cuda::testing
