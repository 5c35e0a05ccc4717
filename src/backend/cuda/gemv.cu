// GEMV / skinny GEMM for decode: y[m, n] = sum_k x[m, k] * w[n, k] (+ bias[n]), M in [1, 8].
//
// Decode is bound by streaming the weights once: a 7B layer's w is [N, K] f16/bf16, N*K*2 bytes, and
// M <= 8 rows of x reuse each weight 8 times at most, i.e. at most 8 FLOP/byte against the H100's
// ~300 FLOP/byte balance point. So the kernel is a bandwidth kernel: the goal is the fraction of HBM
// bandwidth (a device-to-device copy measured in bench/cuda_gemv_bench.cu) reached reading w.
//
// Work split. A block of 8 warps owns 8 / k_split row groups of R consecutive rows; the k_split warps
// of a group split K (interleaved 256-element steps) and combine their sums through shared memory.
// Each lane reads w as 16-byte vectors (8 elements) for R rows and U steps before using any of them,
// so R*U independent 16-byte loads are in flight per lane; the loads bypass L1
// (ld.global.nc.L1::no_allocate) since every weight is read exactly once. x ([M, K], at most 256 KB)
// is either copied to shared memory once per block (stage_x) or read through L1 where it stays
// resident (weights do not evict it); R rows per warp cut the x traffic per weight byte to M / R.
// Accumulation is f32 throughout; one warp-shuffle reduction per output at the end.
// k_split is chosen by M (and N at M = 1) from measurements (auto_k_split).
//
// Programmatic dependent launch (launch.cuh): w does not depend on the previous kernel, so each lane
// issues its first R*U weight loads before waiting for the producer of x; the launch gap and the
// previous kernel's tail then overlap this kernel's first wave of weight traffic.
//
// Measured on H100 SXM (README.md in this folder): K = 4096, N >= 12288 streams w at 89-99% of the
// device-to-device copy bandwidth for M = 1-2 and 76-92% for M = 8; N = 4096 (16 us a call) ~75%.
//
// gemv_swiglu: the same kernel with x = silu(gate) * up computed as x is loaded (the MLP's down
// projection reading the gate_up output directly), in place of a swiglu kernel writing [M, K] and the
// GEMV reading it back: one launch and one dependent round trip less per layer. The SwiGLU math is the
// swiglu kernel's (detail::silu_mul, rounded to the activation dtype as the stored activation is), and
// the k order of every sum is the plain GEMV's, so the result equals swiglu + gemv bit for bit at the
// same k_split. The price is recomputation: every row group recomputes its K slice of x (an exp and an
// IEEE division per element, about 15 instructions instead of one conversion), N / R times in all. So
// this variant takes R = 4 rows per warp by default (half the plain kernel's recomputation at M <= 4):
// Llama-2-7B's down projection (N = 4096, K = 11008, M = 1) then makes 11 M SwiGLU evaluations, 85 k
// per SM of an H100: ~6 us of issue slots and ~6 us of the SFU's exp + reciprocal throughput, under
// ~30 us of weight streaming, which a memory-bound kernel should hide (estimate, not yet measured;
// R = 2 and 8 are kept as tunings for bench/cuda_gemv_bench.cu). Tactics time it against swiglu +
// gemv and swiglu + cuBLASLt per shape, so an engine built on its GPU keeps whichever is faster.
#include <atomic>
#include <string>

#include "backend/cuda/act_traits.cuh"
#include "backend/cuda/gemv_tuning.h"
#include "backend/cuda/kernels.h"
#include "backend/cuda/launch.cuh"

namespace kiln::cuda {
namespace {

using detail::Act;

constexpr int kWarps = 8;  // warps per block
constexpr int kThreads = kWarps * 32;
constexpr int kStepVecs = 32;  // 16-byte vectors per warp per K step (256 elements)

// Rows per warp R and K steps in flight U = 8 / R, by M: R * U = 8 loads of 16 bytes in flight per
// lane, and R grows with M so that x reads per weight byte (M / R) stay within L1 / shared-memory
// bandwidth.
constexpr int rows_per_warp(int M) { return M <= 4 ? 2 : 4; }

__device__ __forceinline__ uint4 load_streaming(const uint4* p) {
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p));
  return v;
}

// x: [M, K]; w: [N, K]; y: [M, N] at stride ldy (T, or float when y_f32); bias: [N] or null.
// kSwiGlu: x is the gate ([M, K] at row stride x_ld) and up ([M, K] at stride up_ld) is given; the
// kernel multiplies w by silu(gate) * up, rounded to T. Otherwise x has row stride K (x_ld, up unused).
// kGluOut: w is a fused gate_up matrix [2N, K] (gate rows, then up rows) and y[m, n] =
// round(silu(gate[m, n]) * up[m, n]) with gate and up the GEMV's outputs rounded to T: a warp's R rows
// are R / 2 gate rows and the up rows N below them (gemv_glu).
// kNormIn (with kStageX): x is the residual stream and the staged input is rms_norm(x) * norm_w, computed
// by each block exactly as rms_norm's kernel computes it (same element-to-thread assignment, same
// block_sum, same roundings): the decode step's norm kernel goes away (gemv_fused, GemvFusion).
// kResidualOut: y (act dtype) is the residual stream and receives y = round(y + round(result)), as
// add_rms_norm would add the stored result to it.
template <class T, int M, int R, bool kStageX, bool kSwiGlu, bool kGluOut = false, bool kNormIn = false,
          bool kResidualOut = false>
__global__ void __launch_bounds__(kThreads)
    gemv_kernel(const T* __restrict__ x, int64_t x_ld, const T* __restrict__ up, int64_t up_ld, int K,
                const T* __restrict__ w, int N, const float* __restrict__ bias, void* __restrict__ y,
                int64_t ldy, bool y_f32, int k_split, const float* __restrict__ norm_w, float norm_eps) {
  static_assert(!(kStageX && kSwiGlu), "the SwiGLU input is computed as it is loaded, never staged");
  static_assert(!kGluOut || (!kSwiGlu && R % 2 == 0), "gate/up row pairs of a plain input");
  static_assert(!kNormIn || kStageX, "the normalized input is staged");
  static_assert(!(kResidualOut && kGluOut), "one epilogue");
  constexpr int U = 8 / R;                  // R * U = 8 loads of 16 bytes in flight per lane
  constexpr int kOuts = kGluOut ? R / 2 : R;  // outputs (columns of y) per warp
  extern __shared__ uint4 x_staged[];       // [M, K / 8] when kStageX
  __shared__ float partial[kWarps][R * M];  // per-warp sums before the k_split combine

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int group = warp / k_split, slice = warp % k_split;
  const int row0 = (blockIdx.x * (kWarps / k_split) + group) * kOuts;  // first output of the group
  const int kv = K / 8;  // 16-byte vectors per row

  detail::allow_dependents();
  const uint4* wrow[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    // Rows past N (last block only) re-read row N - 1 and are not stored: no divergence in the loop.
    const int64_t row = kGluOut ? min(row0 + r % kOuts, N - 1) + static_cast<int64_t>(r / kOuts) * N
                                : min(row0 + r, N - 1);
    wrow[r] = reinterpret_cast<const uint4*>(w) + row * kv;
  }
  const int stride = k_split * kStepVecs;
  uint4 wv[U][R];
  const auto load_weights = [&](int k0) {
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
      for (int r = 0; r < R; ++r)
        wv[u][r] = k0 + u * stride < kv ? load_streaming(wrow[r] + k0 + u * stride) : make_uint4(0, 0, 0, 0);
  };
  const int k_first = slice * kStepVecs + lane;
  load_weights(k_first);  // independent of the previous kernel: in flight while we wait for x
  detail::wait_for_producer();

  const uint4* xv = reinterpret_cast<const uint4*>(x);
  const uint4* upv = reinterpret_cast<const uint4*>(up);
  const int64_t x_ldv = x_ld / 8, up_ldv = up_ld / 8;
  if constexpr (kNormIn) {
    // rms_norm of each row into x_staged: the sum of squares over the thread's 8-element vectors in
    // element order, the block sum, then the rounded normalized value times the f32 weight, rounded.
    for (int m = 0; m < M; ++m) {
      const T* xr = x + m * x_ld;
      float sum_squares = 0.0f;
      for (int i = threadIdx.x * 8; i < K; i += kThreads * 8) {
        float f[8];
        detail::load_vec<T, 8>(xr + i, f);
#pragma unroll
        for (int v = 0; v < 8; ++v) sum_squares = fmaf(f[v], f[v], sum_squares);
      }
      const float inv_rms = rsqrtf(detail::block_sum(sum_squares) / static_cast<float>(K) + norm_eps);
      for (int i = threadIdx.x * 8; i < K; i += kThreads * 8) {
        float f[8];
        detail::load_vec<T, 8>(xr + i, f);
        const float4 a = __ldg(reinterpret_cast<const float4*>(norm_w + i));
        const float4 b = __ldg(reinterpret_cast<const float4*>(norm_w + i + 4));
        const float wn[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#pragma unroll
        for (int v = 0; v < 8; ++v) f[v] = detail::round_to<T>(f[v] * inv_rms) * wn[v];
        x_staged[m * kv + i / 8] = detail::pack8<T>(f);
      }
    }
    __syncthreads();
    xv = x_staged;
  } else if constexpr (kStageX) {
    for (int i = threadIdx.x; i < M * kv; i += kThreads) x_staged[i] = __ldg(xv + i);
    __syncthreads();
    xv = x_staged;
  }

  float acc[R][M];
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int m = 0; m < M; ++m) acc[r][m] = 0.0f;

  for (int k0 = k_first; k0 < kv; k0 += U * stride) {
    if (k0 != k_first) load_weights(k0);
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int k = k0 + u * stride;
      if (k >= kv) break;
      float wf[R][8];
#pragma unroll
      for (int r = 0; r < R; ++r) detail::unpack8<T>(wv[u][r], wf[r]);
#pragma unroll
      for (int m = 0; m < M; ++m) {
        float xf[8];
        if constexpr (kSwiGlu) {
          float uf[8];
          detail::unpack8<T>(__ldg(xv + m * x_ldv + k), xf);
          detail::unpack8<T>(__ldg(upv + m * up_ldv + k), uf);
#pragma unroll
          for (int e = 0; e < 8; ++e) xf[e] = detail::round_to<T>(detail::silu_mul(xf[e], uf[e]));
        } else {
          detail::unpack8<T>(kStageX ? xv[m * kv + k] : __ldg(xv + m * kv + k), xf);
        }
#pragma unroll
        for (int r = 0; r < R; ++r)
#pragma unroll
          for (int e = 0; e < 8; ++e) acc[r][m] = fmaf(xf[e], wf[r][e], acc[r][m]);
      }
    }
  }

#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int m = 0; m < M; ++m) acc[r][m] = detail::warp_sum(acc[r][m]);
  if (lane == 0) {
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
      for (int m = 0; m < M; ++m) partial[warp][r * M + m] = acc[r][m];
  }
  __syncthreads();
  // Lane i of each group's first warp finishes output i = (row r, column m) of the group (and i + 32
  // when R * M > 32).
  if constexpr (kGluOut) {
    if (slice == 0) {
      for (int i = lane; i < kOuts * M; i += 32) {
        const int r = i / M, m = i % M, row = row0 + r;
        if (row < N) {
          float gate_sum = 0.0f, up_sum = 0.0f;
          for (int s = 0; s < k_split; ++s) gate_sum += partial[warp + s][i];
          for (int s = 0; s < k_split; ++s) up_sum += partial[warp + s][kOuts * M + i];
          if (bias != nullptr) {
            gate_sum += bias[row];
            up_sum += bias[N + row];
          }
          // The gate_up GEMV would store both rounded to T, and swiglu would read them back.
          const float h = detail::silu_mul(detail::round_to<T>(gate_sum), detail::round_to<T>(up_sum));
          static_cast<T*>(y)[m * ldy + row] = Act<T>::from_float(h);
        }
      }
    }
    return;
  }
  if (slice == 0) {
    for (int i = lane; i < R * M; i += 32) {
      const int r = i / M, m = i % M, row = row0 + r;
      if (row < N) {
        float sum = 0.0f;
        for (int s = 0; s < k_split; ++s) sum += partial[warp + s][i];
        if (bias != nullptr) sum += bias[row];
        if constexpr (kResidualOut) {
          T& res = static_cast<T*>(y)[m * ldy + row];
          res = Act<T>::from_float(Act<T>::to_float(res) + detail::round_to<T>(sum));
        } else if (y_f32) {
          static_cast<float*>(y)[m * ldy + row] = sum;
        } else {
          static_cast<T*>(y)[m * ldy + row] = Act<T>::from_float(sum);
        }
      }
    }
  }
}

// K split by M (and N at M = 1), measured on H100 and H200 (bench/cuda_gemv_bench.cu, tables in
// backend/cuda/README.md): few rows want many warps per row group (more loads in flight; the x traffic
// is small), more rows want fewer (their R * M accumulators and x conversions make each warp heavier,
// and k_split warps each read all M rows of x). At M = 1, 8 wins for N <= 12288 and 4 for the wide
// gate_up / lm_head (+1-1.5% on an H200); at M = 2, 4 beats 8 by 5-22%. Halved while a warp would get
// no full 256-element step.
int auto_k_split(int M, int64_t K, int64_t N) {
  int k_split = M == 1 ? (N >= 16384 ? 4 : 8) : M <= 4 ? 4 : 2;
  while (k_split > 1 && K / 8 < int64_t{kStepVecs} * k_split) k_split /= 2;
  return k_split;
}

// One launch's arguments. x_ld == K except for the SwiGLU variant (gate rows); up only for it.
struct GemvArgs {
  const void* x;
  int64_t x_ld;
  const void* up;
  int64_t up_ld;
  int64_t K;
  const void* w;
  int64_t N;
  const float* bias;
  void* y;
  int64_t ldy;
  bool y_f32;
  int k_split;
  const float* norm_w = nullptr;
  float norm_eps = 0.0f;
};

template <class T, int M, int R, bool kStageX, bool kSwiGlu, bool kGluOut, bool kNormIn, bool kResidualOut>
Status launch(const GemvArgs& a, cudaStream_t stream) {
  constexpr int kOuts = kGluOut ? R / 2 : R;
  const int groups_per_block = kWarps / a.k_split;
  const int64_t blocks = ((a.N + kOuts - 1) / kOuts + groups_per_block - 1) / groups_per_block;
  const size_t smem = kStageX ? static_cast<size_t>(M) * a.K * sizeof(T) : 0;
  auto* kernel = gemv_kernel<T, M, R, kStageX, kSwiGlu, kGluOut, kNormIn, kResidualOut>;
  if constexpr (kStageX) {
    // Above 48 KB, dynamic shared memory is opt-in; raised once per instantiation (and device: the
    // engine runs on one).
    static std::atomic<size_t> raised{48 * 1024};
    if (smem > raised.load()) {
      KILN_TRY(check(
          cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)),
          "gemv: raising the shared-memory limit"));
      raised.store(smem);
    }
  }
  return check(detail::launch_kernel(kernel, static_cast<unsigned>(blocks), kThreads, smem, stream,
                                     static_cast<const T*>(a.x), a.x_ld, static_cast<const T*>(a.up), a.up_ld,
                                     static_cast<int>(a.K), static_cast<const T*>(a.w), static_cast<int>(a.N),
                                     a.bias, a.y, a.ldy, a.y_f32, a.k_split, a.norm_w, a.norm_eps),
               "gemv launch");
}

// Rows per warp: the SwiGLU variant's from the tuning (0: 4), the others' by M (rows_per_warp).
template <class T, int M, bool kStageX, bool kSwiGlu, bool kGluOut, bool kNormIn, bool kResidualOut>
Status launch_r(int rows_per_warp_tuned, const GemvArgs& a, cudaStream_t stream) {
  if constexpr (!kSwiGlu) {
    return launch<T, M, rows_per_warp(M), kStageX, false, kGluOut, kNormIn, kResidualOut>(a, stream);
  } else {
    switch (rows_per_warp_tuned) {
      case 2:
        return launch<T, M, 2, kStageX, true, kGluOut, kNormIn, kResidualOut>(a, stream);
      case 8:
        return launch<T, M, 8, kStageX, true, kGluOut, kNormIn, kResidualOut>(a, stream);
      default:
        return launch<T, M, 4, kStageX, true, kGluOut, kNormIn, kResidualOut>(a, stream);
    }
  }
}

template <class T, bool kStageX, bool kSwiGlu, bool kGluOut = false, bool kNormIn = false, bool kResidualOut = false>
Status launch_m(int64_t M, int rows_per_warp_tuned, const GemvArgs& a, cudaStream_t stream) {
  switch (M) {
    case 1:
      return launch_r<T, 1, kStageX, kSwiGlu, kGluOut, kNormIn, kResidualOut>(rows_per_warp_tuned, a, stream);
    case 2:
      return launch_r<T, 2, kStageX, kSwiGlu, kGluOut, kNormIn, kResidualOut>(rows_per_warp_tuned, a, stream);
    case 3:
      return launch_r<T, 3, kStageX, kSwiGlu, kGluOut, kNormIn, kResidualOut>(rows_per_warp_tuned, a, stream);
    case 4:
      return launch_r<T, 4, kStageX, kSwiGlu, kGluOut, kNormIn, kResidualOut>(rows_per_warp_tuned, a, stream);
    case 5:
      return launch_r<T, 5, kStageX, kSwiGlu, kGluOut, kNormIn, kResidualOut>(rows_per_warp_tuned, a, stream);
    case 6:
      return launch_r<T, 6, kStageX, kSwiGlu, kGluOut, kNormIn, kResidualOut>(rows_per_warp_tuned, a, stream);
    case 7:
      return launch_r<T, 7, kStageX, kSwiGlu, kGluOut, kNormIn, kResidualOut>(rows_per_warp_tuned, a, stream);
    default:
      return launch_r<T, 8, kStageX, kSwiGlu, kGluOut, kNormIn, kResidualOut>(rows_per_warp_tuned, a, stream);
  }
}

// Checks shared by both entry points; fills k_split (auto when the tuning says 0). `shapes` formats
// the call for messages (only on error: the launch path stays free of formatting).
template <class Shapes>
Status check_gemv(const Shapes& shapes, int64_t M, int64_t K, int64_t N, int64_t ldy, DType act,
                  DType y_dtype, const void* w, void* y, const GemvTuning& tuning, int& k_split) {
  if (act != DType::F16 && act != DType::BF16)
    return make_error("{}: activation dtype must be F16 or BF16", shapes());
  if (y_dtype != act && y_dtype != DType::F32)
    return make_error("{}: y dtype must be the activation dtype or F32", shapes());
  if (M < 1 || M > kGemvMaxRows) return make_error("{}: M must be in [1, {}]", shapes(), kGemvMaxRows);
  if (K <= 0 || N <= 0 || ldy < N) return make_error("{}: need K > 0, N > 0, ldy >= N", shapes());
  if (K % 8 != 0) return make_error("{}: K must be a multiple of 8 (16-byte rows)", shapes());
  if (K > (int64_t{1} << 30) || N > (int64_t{1} << 30))
    return make_error("{}: K and N must be below 2^30", shapes());
  if (w == nullptr || y == nullptr) return make_error("{}: null pointer", shapes());
  if (!detail::is_aligned16(w)) return make_error("{}: w must be 16-byte aligned", shapes());
  k_split = tuning.k_split;
  if (k_split == 0) k_split = auto_k_split(static_cast<int>(M), K, N);
  if (k_split != 1 && k_split != 2 && k_split != 4 && k_split != 8)
    return make_error("{}: k_split must be 1, 2, 4 or 8 (found {})", shapes(), k_split);
  return Status::Ok();
}

// The shared-memory check of a staged input ([M, K] of 2-byte elements).
template <class Shapes>
Status check_staged(const Shapes& shapes, int64_t M, int64_t K) {
  int device = 0, smem_optin = 0;
  KILN_TRY(check(cudaGetDevice(&device), "gemv: cudaGetDevice"));
  KILN_TRY(check(cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
                 "gemv: shared-memory limit"));
  // Staged x must leave room for the reduction buffers in the block's shared memory.
  if (M * K * 2 + 4096 > smem_optin)
    return make_error("{}: x ({} bytes) does not fit shared memory ({} bytes)", shapes(), M * K * 2, smem_optin);
  return Status::Ok();
}

// The fusions' own checks (both entry points that take a norm input, and those with a residual output).
template <class Shapes>
Status check_fusion(const Shapes& shapes, const GemvFusion& fusion, int64_t M, int64_t K, DType act,
                    DType y_dtype, bool norm_allowed, bool residual_allowed) {
  if (fusion.norm_weight != nullptr) {
    if (!norm_allowed) return make_error("{}: this GEMV takes no normalized input", shapes());
    if (!detail::is_aligned16(fusion.norm_weight))
      return make_error("{}: the norm weight must be 16-byte aligned", shapes());
    if (fusion.residual_out) return make_error("{}: a normalized input and a residual output together", shapes());
    KILN_TRY(check_staged(shapes, M, K));
  }
  if (fusion.residual_out) {
    if (!residual_allowed) return make_error("{}: this GEMV has no residual output", shapes());
    if (y_dtype != act) return make_error("{}: the residual output is in the activation dtype", shapes());
  }
  return Status::Ok();
}

}  // namespace

Status gemv_tuned(const void* x, int64_t M, int64_t K, const void* w, int64_t N, const float* bias, void* y,
                  int64_t ldy, DType act, DType y_dtype, const GemvTuning& tuning, cudaStream_t stream,
                  const GemvFusion& fusion) {
  const auto shapes = [&] {
    return fmt::format("gemv [M={} K={} N={} ldy={} act={} y={}{}{}]", M, K, N, ldy, dtype_name(act),
                       dtype_name(y_dtype), fusion.norm_weight ? " norm-in" : "",
                       fusion.residual_out ? " residual-out" : "");
  };
  int k_split = 0;
  KILN_TRY(check_gemv(shapes, M, K, N, ldy, act, y_dtype, w, y, tuning, k_split));
  if (x == nullptr) return make_error("{}: null pointer", shapes());
  if (!detail::is_aligned16(x)) return make_error("{}: x and w must be 16-byte aligned", shapes());
  KILN_TRY(check_fusion(shapes, fusion, M, K, act, y_dtype, true, true));
  // x through L1 by default: as fast as staging it in shared memory or faster in every measured
  // shape (README), and free of the shared-memory limit on M * K. A normalized input is staged.
  const bool norm_in = fusion.norm_weight != nullptr;
  const bool stage_x = tuning.stage_x == 1 && !norm_in;
  if (stage_x) KILN_TRY(check_staged(shapes, M, K));
  if (stage_x && fusion.residual_out) return make_error("{}: a staged x and a residual output together", shapes());

  GemvArgs args{x, K, nullptr, 0, K, w, N, bias, y, ldy, y_dtype == DType::F32, k_split};
  args.norm_w = fusion.norm_weight;
  args.norm_eps = fusion.norm_eps;
  Status status = KILN_DISPATCH_ACT(act, {
    if (norm_in) return launch_m<T, true, false, false, true, false>(M, 0, args, stream);
    if (fusion.residual_out) return launch_m<T, false, false, false, false, true>(M, 0, args, stream);
    return stage_x ? launch_m<T, true, false>(M, 0, args, stream) : launch_m<T, false, false>(M, 0, args, stream);
  });
  if (!status.ok()) return status.error().with_context(shapes());
  return check(cudaGetLastError(), shapes().c_str());
}

Status gemv_swiglu_tuned(const void* gate, int64_t gate_ld, const void* up, int64_t up_ld, int64_t M,
                         int64_t K, const void* w, int64_t N, const float* bias, void* y, int64_t ldy,
                         DType act, DType y_dtype, const GemvTuning& tuning, cudaStream_t stream,
                         const GemvFusion& fusion) {
  const auto shapes = [&] {
    return fmt::format("gemv_swiglu [M={} K={} N={} gate_ld={} up_ld={} ldy={} act={} y={}{}]", M, K, N,
                       gate_ld, up_ld, ldy, dtype_name(act), dtype_name(y_dtype),
                       fusion.residual_out ? " residual-out" : "");
  };
  int k_split = 0;
  KILN_TRY(check_gemv(shapes, M, K, N, ldy, act, y_dtype, w, y, tuning, k_split));
  if (gate == nullptr || up == nullptr) return make_error("{}: null pointer", shapes());
  if (gate_ld < K || up_ld < K || gate_ld % 8 != 0 || up_ld % 8 != 0)
    return make_error("{}: gate and up strides must be >= K and multiples of 8", shapes());
  if (!detail::is_aligned16(gate) || !detail::is_aligned16(up))
    return make_error("{}: gate and up must be 16-byte aligned", shapes());
  if (tuning.stage_x == 1)
    return make_error("{}: the SwiGLU input is never staged (stage_x must be 0 or -1)", shapes());
  if (tuning.rows_per_warp != 0 && tuning.rows_per_warp != 2 && tuning.rows_per_warp != 4 &&
      tuning.rows_per_warp != 8)
    return make_error("{}: rows_per_warp must be 2, 4 or 8 (found {})", shapes(), tuning.rows_per_warp);
  KILN_TRY(check_fusion(shapes, fusion, M, K, act, y_dtype, false, true));

  const GemvArgs args{gate, gate_ld, up, up_ld, K, w, N, bias, y, ldy, y_dtype == DType::F32, k_split};
  Status status = KILN_DISPATCH_ACT(act, {
    if (fusion.residual_out)
      return launch_m<T, false, true, false, false, true>(M, tuning.rows_per_warp, args, stream);
    return launch_m<T, false, true>(M, tuning.rows_per_warp, args, stream);
  });
  if (!status.ok()) return status.error().with_context(shapes());
  return check(cudaGetLastError(), shapes().c_str());
}

Status gemv_glu(const void* x, int64_t M, int64_t K, const void* w, int64_t F, const float* bias, void* y,
                int64_t ldy, DType act, cudaStream_t stream, const GemvFusion& fusion) {
  const auto shapes = [&] {
    return fmt::format("gemv_glu [M={} K={} F={} ldy={} act={}{}]", M, K, F, ldy, dtype_name(act),
                       fusion.norm_weight ? " norm-in" : "");
  };
  // k_split as the plain GEMV over the whole [2F, K] matrix picks it: the same sums, bit for bit.
  int k_split = 0;
  KILN_TRY(check_gemv(shapes, M, K, 2 * F, 2 * F, act, act, w, y, GemvTuning{}, k_split));
  if (ldy < F) return make_error("{}: need ldy >= F", shapes());
  if (x == nullptr) return make_error("{}: null pointer", shapes());
  if (!detail::is_aligned16(x)) return make_error("{}: x and w must be 16-byte aligned", shapes());
  KILN_TRY(check_fusion(shapes, fusion, M, K, act, act, true, false));
  GemvArgs args{x, K, nullptr, 0, K, w, F, bias, y, ldy, false, k_split};
  args.norm_w = fusion.norm_weight;
  args.norm_eps = fusion.norm_eps;
  Status status = KILN_DISPATCH_ACT(act, {
    if (fusion.norm_weight != nullptr) return launch_m<T, true, false, true, true, false>(M, 0, args, stream);
    return launch_m<T, false, false, true>(M, 0, args, stream);
  });
  if (!status.ok()) return status.error().with_context(shapes());
  return check(cudaGetLastError(), shapes().c_str());
}

Status gemv(const void* x, int64_t M, int64_t K, const void* w, int64_t N, const float* bias, void* y,
            int64_t ldy, DType act, DType y_dtype, cudaStream_t stream, const GemvFusion& fusion) {
  return gemv_tuned(x, M, K, w, N, bias, y, ldy, act, y_dtype, GemvTuning{}, stream, fusion);
}

Status gemv_swiglu(const void* gate, int64_t gate_ld, const void* up, int64_t up_ld, int64_t M, int64_t K,
                   const void* w, int64_t N, const float* bias, void* y, int64_t ldy, DType act,
                   DType y_dtype, cudaStream_t stream, const GemvFusion& fusion) {
  return gemv_swiglu_tuned(gate, gate_ld, up, up_ld, M, K, w, N, bias, y, ldy, act, y_dtype, GemvTuning{},
                           stream, fusion);
}

}  // namespace kiln::cuda
