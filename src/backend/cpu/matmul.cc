// matmul: y[M, N] = x[M, K] · w[N, K]^T (+ bias), weights F32/F16/BF16, the hot path of every layer.
//
// Work and traffic: 2·M·N·K FLOPs; the weights (N·K·sizeof(w) bytes) dominate memory traffic.
//   Decode (M <= kStreamMaxRows): memory-bound, so the goal is to read each weight byte exactly once
//     at full bandwidth: a "stream" pass walks 4 weight rows at a time, converting F16 (F16C) or BF16
//     (shift) to f32 in registers, and reuses those rows (still in L1) for every x row.
//   Prefill (M > kStreamMaxRows): compute-bound. Weight rows are converted once into an f32 panel
//     that fits in L2, and 4x3 register tiles (4 x rows × 3 weight rows, 12 accumulators) reuse each
//     loaded vector 3-4 times.
// Parallelism: over N (output features) in chunks of >= 12 rows, each chunk independent.
// Measured (bench/cpu_kernels_bench.cc, 2 cores of a quiet Xeon host): GEMV K=768 streams weights at
// 11-12 GB/s per thread for F32/F16/BF16, 95-115% of a plain 256 MB streaming sum (10.4 GB/s; above
// 100% where part of the rotated weights stays in the large L3); prefill M=64 runs ~37 GFLOP/s per core.
#include <algorithm>
#include <cassert>
#include <vector>

#include "backend/cpu/isa.h"
#include "backend/cpu/kernels.h"
#include "backend/cpu/matmul_internal.h"
#include "backend/cpu/simd.h"

namespace kiln::cpu {
namespace {

constexpr int64_t kPanelBytes = 192 * 1024;  // f32 weight panel per thread; well inside L2
// Decode: software prefetch distance along the weights (matmul_avx512.cc says why linear, 2 KB).
constexpr int64_t kPrefetchBytes = 2048;
constexpr int64_t kLinearPrefetchRowBytes = 4096;

struct MatmulArgs {
  const float* x;  // [M, K]
  DType w_dtype;
  int64_t M;
  int64_t K;
  const void* w;  // [N, K] of the weight dtype
  const float* bias;  // [N] or null
  float* y;  // [M, ldy]
  int64_t ldy;
};

template <DType D>
struct Weight;
template <>
struct Weight<DType::F32> {
  using T = float;
  static float scalar(T v) { return v; }
  KILN_AVX2 static __m256 load8(const T* p) { return simd::load8(p); }
};
template <>
struct Weight<DType::F16> {
  using T = uint16_t;
  static float scalar(T v) { return f16_to_f32(v); }
  KILN_AVX2 static __m256 load8(const T* p) { return simd::load8_f16(p); }
};
template <>
struct Weight<DType::BF16> {
  using T = uint16_t;
  static float scalar(T v) { return bf16_to_f32(v); }
  KILN_AVX2 static __m256 load8(const T* p) { return simd::load8_bf16(p); }
};

// ---------------------------------------------------------------------------------------------
// AVX2 path

// y[i, j] = x[i, :] · w[j, :] (+ bias[j]) for i < MR, j < NR, with MR·NR independent accumulators.
//   x: MR rows of stride ldx;  w: NR rows of stride K;  y: MR rows of stride ldy.
template <DType D, int MR, int NR, bool kPrefetch = false>
KILN_AVX2 void tile_avx2(const float* x, int64_t ldx, const typename Weight<D>::T* w, int64_t K,
                         const float* bias, float* y, int64_t ldy) {
  __m256 acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm256_setzero_ps();
  // Short rows: one pointer walks the matrix linearly ahead; long rows: each row its own line
  // (matmul_avx512.cc's stream_tile says why and what it measured).
  const bool linear = K * static_cast<int64_t>(sizeof(*w)) <= kLinearPrefetchRowBytes;
  const char* pf = reinterpret_cast<const char*>(w) + kPrefetchBytes;
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    if constexpr (kPrefetch) {
      // Once per 64-byte line of each row.
      if ((k * static_cast<int64_t>(sizeof(*w))) % 64 == 0) {
        if (linear) {
          for (int j = 0; j < NR; ++j) _mm_prefetch(pf + 64 * j, _MM_HINT_T0);
          pf += 64 * NR;
        } else {
          for (int j = 0; j < NR; ++j)
            _mm_prefetch(reinterpret_cast<const char*>(w + j * K + k) + kPrefetchBytes, _MM_HINT_T0);
        }
      }
    }
    __m256 wv[NR];
    for (int j = 0; j < NR; ++j) wv[j] = Weight<D>::load8(w + j * K + k);
    for (int i = 0; i < MR; ++i) {
      const __m256 xv = _mm256_loadu_ps(x + i * ldx + k);
      for (int j = 0; j < NR; ++j) acc[i][j] = _mm256_fmadd_ps(xv, wv[j], acc[i][j]);
    }
  }
  for (int i = 0; i < MR; ++i) {
    for (int j = 0; j < NR; ++j) {
      float sum = simd::hsum(acc[i][j]);
      for (int64_t t = k; t < K; ++t) sum += x[i * ldx + t] * Weight<D>::scalar(w[j * K + t]);
      y[i * ldy + j] = bias ? sum + bias[j] : sum;
    }
  }
}

template <DType D, int MR>
KILN_AVX2 void tile_avx2_nr(int nr, const float* x, int64_t ldx, const typename Weight<D>::T* w,
                            int64_t K, const float* bias, float* y, int64_t ldy) {
  switch (nr) {
    case 1: return tile_avx2<D, MR, 1>(x, ldx, w, K, bias, y, ldy);
    case 2: return tile_avx2<D, MR, 2>(x, ldx, w, K, bias, y, ldy);
    case 3: return tile_avx2<D, MR, 3>(x, ldx, w, K, bias, y, ldy);
    default: return tile_avx2<D, MR, 4>(x, ldx, w, K, bias, y, ldy);
  }
}

// Any tile up to 4x4 (the remainders at the edges of M and N).
template <DType D>
KILN_AVX2 void tile_avx2_any(int mr, int nr, const float* x, int64_t ldx,
                             const typename Weight<D>::T* w, int64_t K, const float* bias, float* y,
                             int64_t ldy) {
  switch (mr) {
    case 1: return tile_avx2_nr<D, 1>(nr, x, ldx, w, K, bias, y, ldy);
    case 2: return tile_avx2_nr<D, 2>(nr, x, ldx, w, K, bias, y, ldy);
    case 3: return tile_avx2_nr<D, 3>(nr, x, ldx, w, K, bias, y, ldy);
    default: return tile_avx2_nr<D, 4>(nr, x, ldx, w, K, bias, y, ldy);
  }
}

// Decode: weight rows [n0, n1) are read from memory once, 2 at a time (matmul_avx512.cc: fewer
// concurrent streams with a linear prefetch read faster than 4 rows in lockstep); 4x2 tiles (8
// accumulators, 2 weight vectors and 1 x vector live) over all M rows.
template <DType D>
KILN_AVX2 void rows_stream_avx2(const MatmulArgs& a, int64_t n0, int64_t n1) {
  const auto* w = static_cast<const typename Weight<D>::T*>(a.w);
  const int64_t K = a.K;
  int64_t n = n0;
  for (; n + 2 <= n1; n += 2) {
    const float* bias = a.bias ? a.bias + n : nullptr;
    int64_t m = 0;
    for (; m + 4 <= a.M; m += 4)
      tile_avx2<D, 4, 2, true>(a.x + m * K, K, w + n * K, K, bias, a.y + m * a.ldy + n, a.ldy);
    switch (a.M - m) {
      case 1: tile_avx2<D, 1, 2, true>(a.x + m * K, K, w + n * K, K, bias, a.y + m * a.ldy + n, a.ldy); break;
      case 2: tile_avx2<D, 2, 2, true>(a.x + m * K, K, w + n * K, K, bias, a.y + m * a.ldy + n, a.ldy); break;
      case 3: tile_avx2<D, 3, 2, true>(a.x + m * K, K, w + n * K, K, bias, a.y + m * a.ldy + n, a.ldy); break;
      default: break;
    }
  }
  if (n < n1) {
    for (int64_t m = 0; m < a.M; m += 4) {
      const int mr = static_cast<int>(std::min<int64_t>(4, a.M - m));
      tile_avx2_any<D>(mr, 1, a.x + m * K, K, w + n * K, K, a.bias ? a.bias + n : nullptr,
                       a.y + m * a.ldy + n, a.ldy);
    }
  }
}

// Prefill: convert a panel of weight rows to f32 once (F32 weights are used in place), then sweep
// all x rows over it in 4x3 tiles (12 accumulators + 3 weight vectors + 1 x vector = 16 ymm).
template <DType D>
KILN_AVX2 void rows_panel_avx2(const MatmulArgs& a, int64_t n0, int64_t n1) {
  const auto* w = static_cast<const typename Weight<D>::T*>(a.w);
  const int64_t K = a.K;
  const int64_t panel_rows = std::clamp<int64_t>(kPanelBytes / (4 * std::max<int64_t>(K, 1)) / 3 * 3,
                                                 3, 96);
  thread_local std::vector<float> panel;  // grows to the largest panel once, then reused
  for (int64_t p0 = n0; p0 < n1; p0 += panel_rows) {
    const int64_t p1 = std::min(n1, p0 + panel_rows);
    const float* wp;
    if constexpr (D == DType::F32) {
      wp = w + p0 * K;
    } else {
      const int64_t count = (p1 - p0) * K;
      if (static_cast<int64_t>(panel.size()) < count) panel.resize(count);
      const auto* src = w + p0 * K;
      int64_t i = 0;
      for (; i + 8 <= count; i += 8) _mm256_storeu_ps(panel.data() + i, Weight<D>::load8(src + i));
      for (; i < count; ++i) panel[i] = Weight<D>::scalar(src[i]);
      wp = panel.data();
    }
    for (int64_t m = 0; m < a.M; m += 4) {
      const int mr = static_cast<int>(std::min<int64_t>(4, a.M - m));
      for (int64_t n = p0; n < p1; n += 3) {
        const int nr = static_cast<int>(std::min<int64_t>(3, p1 - n));
        tile_avx2_any<DType::F32>(mr, nr, a.x + m * K, K, wp + (n - p0) * K, K,
                                  a.bias ? a.bias + n : nullptr, a.y + m * a.ldy + n, a.ldy);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Scalar path: convert one weight row to f32, then dot it with every x row (4 accumulators).

template <DType D>
void rows_scalar(const MatmulArgs& a, int64_t n0, int64_t n1) {
  const auto* w = static_cast<const typename Weight<D>::T*>(a.w);
  const int64_t K = a.K;
  thread_local std::vector<float> row;
  if (static_cast<int64_t>(row.size()) < K) row.resize(K);
  for (int64_t n = n0; n < n1; ++n) {
    const float* wr;
    if constexpr (D == DType::F32) {
      wr = w + n * K;
    } else {
      for (int64_t k = 0; k < K; ++k) row[k] = Weight<D>::scalar(w[n * K + k]);
      wr = row.data();
    }
    for (int64_t m = 0; m < a.M; ++m) {
      const float* xr = a.x + m * K;
      float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      int64_t k = 0;
      for (; k + 4 <= K; k += 4) {
        s0 += xr[k] * wr[k];
        s1 += xr[k + 1] * wr[k + 1];
        s2 += xr[k + 2] * wr[k + 2];
        s3 += xr[k + 3] * wr[k + 3];
      }
      for (; k < K; ++k) s0 += xr[k] * wr[k];
      const float sum = (s0 + s1) + (s2 + s3);
      a.y[m * a.ldy + n] = a.bias ? sum + a.bias[n] : sum;
    }
  }
}

using RowsFn = void (*)(const MatmulArgs&, int64_t n0, int64_t n1);

void rows_avx512(const MatmulArgs& a, int64_t n0, int64_t n1) {
  matmul_rows_avx512(a.x, a.M, a.K, a.w, a.w_dtype, a.bias, a.y, a.ldy, n0, n1);
}

template <DType D>
RowsFn select_rows_fn(Isa isa, bool panel) {
  if (isa == Isa::kScalar) return &rows_scalar<D>;
  if (isa == Isa::kAvx512) return &rows_avx512;
  return panel ? &rows_panel_avx2<D> : &rows_stream_avx2<D>;
}

KILN_AVX2 void panel_sweep_avx2(const float* x, int64_t M, int64_t K, const float* wp, int64_t rows,
                                const float* bias, float* y, int64_t ldy) {
  for (int64_t m = 0; m < M; m += 4) {
    const int mr = static_cast<int>(std::min<int64_t>(4, M - m));
    for (int64_t n = 0; n < rows; n += 3) {
      const int nr = static_cast<int>(std::min<int64_t>(3, rows - n));
      tile_avx2_any<DType::F32>(mr, nr, x + m * K, K, wp + n * K, K, bias ? bias + n : nullptr, y + m * ldy + n, ldy);
    }
  }
}

}  // namespace

void matmul_f32_panel(const float* x, int64_t M, int64_t K, const float* panel, int64_t rows, const float* bias,
                      float* y, int64_t ldy) {
  if (using_avx512()) return matmul_f32_panel_avx512(x, M, K, panel, rows, bias, y, ldy);
  if (using_avx2()) return panel_sweep_avx2(x, M, K, panel, rows, bias, y, ldy);
  const MatmulArgs args{x, DType::F32, M, K, panel, bias, y, ldy};
  // rows_scalar indexes weight rows from n0: shift the output and bias instead.
  rows_scalar<DType::F32>(args, 0, rows);
}

void matmul(const float* x, int64_t M, int64_t K, const void* w, DType w_dtype, int64_t N,
            const float* bias, float* y, int64_t ldy, ThreadPool& pool) {
  assert(M >= 0 && K >= 0 && N >= 0 && ldy >= N);
  assert(w_dtype == DType::F32 || w_dtype == DType::F16 || w_dtype == DType::BF16);
  if (M == 0 || N == 0) return;
  const Isa isa = active_isa();
  const bool panel = M > kStreamMaxRows;
  RowsFn fn = nullptr;
  switch (w_dtype) {
    case DType::F16: fn = select_rows_fn<DType::F16>(isa, panel); break;
    case DType::BF16: fn = select_rows_fn<DType::BF16>(isa, panel); break;
    default: fn = select_rows_fn<DType::F32>(isa, panel); break;
  }
  const MatmulArgs args{x, w_dtype, M, K, w, bias, y, ldy};
  // Chunks carry at least ~16K multiply-adds, so tiny matmuls are not split at a loss, and are whole
  // tiles: multiples of 12 rows (AVX2: 2-row stream tiles, 3-row panel tiles) or, for the AVX-512
  // prefill, of its 64-row packed panels.
  const int64_t macs_per_row = std::max<int64_t>(1, M * K);
  const int64_t min_rows = std::max<int64_t>(12, (16384 + macs_per_row - 1) / macs_per_row);
  const int64_t quantum = (panel && isa == Isa::kAvx512) ? 64 : 12;
  const int64_t min_chunk = (min_rows + quantum - 1) / quantum * quantum;
  pool.parallel_for(N, min_chunk, [&](int64_t n0, int64_t n1) { fn(args, n0, n1); });
}

}  // namespace kiln::cpu
