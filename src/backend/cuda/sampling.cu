// Sampling on the device: one block per logits row, so only token ids cross to the host.
//
// argmax: greedy decoding. sample: temperature -> top-k -> top-p -> min-p -> draw with the exact
// semantics of backend/sample_row.h (the host's sample_row gives the same id, bit for bit). No sort:
// every kept set is "p >= threshold", and the thresholds are order statistics found by radix
// selection on the bit patterns of p (one byte per pass, 256-bin shared-memory histograms of counts
// for top-k and of integer masses for top-p), as FlashInfer's top-k/top-p sampling and vLLM's
// sampler find pivots without sorting the vocabulary; the code is our own. p is recomputed from
// the logit in each pass (about 20 flops) rather than stored: the row stays in L2 between passes.
//
// Passes over the row (152k logits = 608 KB) for one row: max, 4 for top-k, 4 for top-p, one for
// the kept mass by warp segment, then a scan of the one segment (1/32 of the row) holding the draw.
// Temperature + top-p: 6 passes; + top-k: 10.
#include <cfloat>
#include <climits>
#include <cmath>

#include "backend/cuda/sampling.h"

namespace kiln::cuda {

namespace {

constexpr unsigned kFull = 0xffffffffu;

// Reduces (value, id) pairs across a warp: larger value wins, the lower id on ties (as the host).
__device__ void warp_argmax(float& best, int32_t& best_id) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    const float other = __shfl_down_sync(0xffffffffu, best, offset);
    const int32_t other_id = __shfl_down_sync(0xffffffffu, best_id, offset);
    if (other > best || (other == best && other_id < best_id)) {
      best = other;
      best_id = other_id;
    }
  }
}

// One block per row. kVec4: the row is read as 16-byte vectors (vocab % 4 == 0, aligned logits),
// unrolled so that a thread's loads are all in flight at once (a 32000-wide row is 8 vectors per
// thread): the row comes from L2 and the kernel is latency-bound.
template <bool kVec4>
__global__ void argmax_kernel(const float* __restrict__ logits, int64_t vocab, int32_t* __restrict__ ids) {
  const float* row = logits + blockIdx.x * vocab;
  float best = -FLT_MAX;
  int32_t best_id = 0x7fffffff;
  const auto take = [&](float v, int64_t i) {
    if (v > best || (v == best && i < best_id)) {
      best = v;
      best_id = static_cast<int32_t>(i);
    }
  };
  if constexpr (kVec4) {
    const float4* vec = reinterpret_cast<const float4*>(row);
    const int64_t n = vocab / 4;
#pragma unroll 8
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
      const float4 v = __ldg(vec + i);
      take(v.x, 4 * i);
      take(v.y, 4 * i + 1);
      take(v.z, 4 * i + 2);
      take(v.w, 4 * i + 3);
    }
  } else {
    for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) take(row[i], i);
  }
  // warp reduction, then across warps (lowest id wins ties, as the host argmax)
  warp_argmax(best, best_id);
  __shared__ float warp_best[32];
  __shared__ int32_t warp_id[32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) {
    warp_best[warp] = best;
    warp_id[warp] = best_id;
  }
  __syncthreads();
  if (warp == 0) {
    const int num_warps = blockDim.x / 32;
    best = lane < num_warps ? warp_best[lane] : -FLT_MAX;
    best_id = lane < num_warps ? warp_id[lane] : 0x7fffffff;
    warp_argmax(best, best_id);
    if (lane == 0) ids[blockIdx.x] = best_id;
  }
}

// ---------------------------------------------------------------- sample

constexpr int kSampleThreads = 1024;
constexpr int kSampleWarps = kSampleThreads / 32;
constexpr uint32_t kNoBin = 256;

struct SampleShared {
  unsigned long long hist[256];                 // radix pass histogram (counts or masses)
  unsigned long long warp_total[kSampleWarps];  // block reductions and scans
  float warp_max[kSampleWarps];
  int32_t warp_min_id[kSampleWarps];
  uint32_t bin;  // radix pass result: the chosen byte, the weight above it and in it, the target
  unsigned long long above, bin_weight, target;
  int32_t segment;  // the warp segment holding the draw, and the target inside it
  unsigned long long segment_target;
  int32_t found;
};

__device__ __forceinline__ unsigned long long warp_sum_u64(unsigned long long v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(kFull, v, offset);
  return v;
}
__device__ __forceinline__ unsigned long long warp_inclusive_scan_u64(unsigned long long v, int lane) {
  for (int offset = 1; offset < 32; offset <<= 1) {
    const unsigned long long other = __shfl_up_sync(kFull, v, offset);
    if (lane >= offset) v += other;
  }
  return v;
}

// Largest non-NaN logit (-inf when none), in every thread.
__device__ float block_max(const float* __restrict__ row, int vocab, SampleShared& sh) {
  float m = -INFINITY;
  for (int i = threadIdx.x; i < vocab; i += kSampleThreads) m = fmaxf(m, row[i]);  // fmaxf skips NaN
  for (int offset = 16; offset > 0; offset >>= 1) m = fmaxf(m, __shfl_xor_sync(kFull, m, offset));
  if (threadIdx.x % 32 == 0) sh.warp_max[threadIdx.x / 32] = m;
  __syncthreads();
  m = sh.warp_max[threadIdx.x % 32];
  for (int offset = 16; offset > 0; offset >>= 1) m = fmaxf(m, __shfl_xor_sync(kFull, m, offset));
  return m;
}

// Greedy: the lowest id whose logit equals the maximum m (0 when none: every logit NaN).
__device__ int32_t greedy_id(const float* __restrict__ row, int vocab, float m, SampleShared& sh) {
  int32_t id = INT_MAX;
  for (int i = threadIdx.x; i < vocab && id == INT_MAX; i += kSampleThreads) {
    if (row[i] == m) id = i;
  }
  for (int offset = 16; offset > 0; offset >>= 1) id = min(id, __shfl_xor_sync(kFull, id, offset));
  if (threadIdx.x % 32 == 0) sh.warp_min_id[threadIdx.x / 32] = id;
  __syncthreads();
  id = sh.warp_min_id[threadIdx.x % 32];
  for (int offset = 16; offset > 0; offset >>= 1) id = min(id, __shfl_xor_sync(kFull, id, offset));
  return id == INT_MAX ? 0 : id;
}

struct Selection {
  uint32_t key;                           // the threshold v
  unsigned long long weight_at_or_above;  // weight of the keys >= v
};

// Radix selection, as radix_select in backend/sample_row.cc: among keys >= lower, the largest key v
// such that the weight of keys >= v reaches the target. kMass: weight = key_mass and the target is
// top_p_need(top_p, total) from the first pass's total; else weight 1 and the target is `count`.
// Histogram updates are aggregated per warp over lanes with the same bin (__match_any_sync, then
// __reduce_add_sync on two halves of the 41-bit masses): p clusters in a few exponent bins, where
// one shared atomic per lane would serialize.
template <bool kMass>
__device__ Selection radix_select(const float* __restrict__ row, int vocab, float max_logit,
                                  float inv_temperature, uint32_t lower, unsigned long long count,
                                  float top_p, SampleShared& sh) {
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  uint32_t prefix = 0;
  unsigned long long above = 0, target = count;
  for (int shift = 24;; shift -= 8) {
    for (int b = tid; b < 256; b += kSampleThreads) sh.hist[b] = 0;
    __syncthreads();
    const uint32_t high_mask = shift == 24 ? 0u : ~0u << (shift + 8);
    for (int base = 0; base < vocab; base += kSampleThreads) {  // uniform trip count: full warps below
      const int i = base + tid;
      uint32_t bin = kNoBin;
      unsigned long long w = 0;
      if (i < vocab) {
        const uint32_t key = sampling::prob_key(row[i], max_logit, inv_temperature);
        if (key >= lower && (key & high_mask) == prefix) {
          w = kMass ? sampling::key_mass(key) : 1;
          if (w != 0) bin = (key >> shift) & 255u;
        }
      }
      const unsigned peers = __match_any_sync(kFull, bin);
      if (bin != kNoBin) {
        unsigned long long sum;
        if (kMass) {  // w <= 2^40: 32 lanes of 27 low bits and of 14 high bits each fit 32 bits
          const unsigned lo = __reduce_add_sync(peers, static_cast<unsigned>(w & 0x7ffffffu));
          const unsigned hi = __reduce_add_sync(peers, static_cast<unsigned>(w >> 27));
          sum = (static_cast<unsigned long long>(hi) << 27) + lo;
        } else {
          sum = static_cast<unsigned long long>(__popc(peers));
        }
        if (lane == __ffs(peers) - 1) atomicAdd(&sh.hist[bin], sum);
      }
    }
    __syncthreads();
    if (warp == 0) {  // lane l owns bins 255 - 8l down to 248 - 8l; the first bin reaching the target wins
      const unsigned long long* h = sh.hist + 255 - 8 * lane;  // h[-j]: bin 255 - 8 lane - j
      unsigned long long lane_sum = 0;
#pragma unroll
      for (int j = 0; j < 8; ++j) lane_sum += h[-j];
      if (kMass && shift == 24) target = sampling::top_p_need(top_p, warp_sum_u64(lane_sum));
      const unsigned long long incl = warp_inclusive_scan_u64(lane_sum, lane);
      const unsigned reached = __ballot_sync(kFull, above + incl >= target);
      const int owner = reached ? __ffs(reached) - 1 : 31;
      if (lane == owner) {
        unsigned long long acc = above + incl - lane_sum;
        int j = 0;
        for (; j < 7 && acc + h[-j] < target; ++j) acc += h[-j];
        sh.bin = static_cast<uint32_t>(255 - 8 * owner - j);
        sh.above = acc;
        sh.bin_weight = h[-j];
        sh.target = target;
      }
    }
    __syncthreads();
    prefix |= sh.bin << shift;
    above = sh.above;
    target = sh.target;
    if (shift == 0) return {prefix, above + sh.bin_weight};
    // sh.bin etc. are rewritten only after the next pass's two barriers: no barrier needed here.
  }
}

__global__ void __launch_bounds__(kSampleThreads, 1)
    sample_kernel(const float* __restrict__ logits, int vocab, const RowSampling* __restrict__ rows,
                  int32_t* __restrict__ ids) {
  __shared__ SampleShared sh;
  const float* row = logits + static_cast<int64_t>(blockIdx.x) * vocab;
  const RowSampling s = rows[blockIdx.x];
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;

  const float max_logit = block_max(row, vocab, sh);
  const float inv_temperature = sampling::inverse_temperature(s.temperature);
  if (sampling::is_greedy(s, inv_temperature) || !isfinite(max_logit)) {
    const int32_t id = greedy_id(row, vocab, max_logit, sh);
    if (tid == 0) ids[blockIdx.x] = id;
    return;
  }

  uint32_t threshold = 0;
  if (s.top_k > 0 && s.top_k < vocab) {
    threshold = radix_select<false>(row, vocab, max_logit, inv_temperature, 0,
                                    static_cast<unsigned long long>(s.top_k), 1.0f, sh)
                    .key;
  }
  if (s.top_p < 1.0f)
    threshold = radix_select<true>(row, vocab, max_logit, inv_temperature, threshold, 0, s.top_p, sh).key;
  if (s.min_p > 0.0f && sampling::min_p_key(s.min_p) > threshold) threshold = sampling::min_p_key(s.min_p);

  // Kept mass per warp segment of consecutive ids (coalesced), then the segment holding the draw.
  const int segment_len = (vocab + kSampleWarps - 1) / kSampleWarps;
  {
    const int begin = warp * segment_len, end = min(vocab, begin + segment_len);
    unsigned long long mass = 0;
    for (int i = begin + lane; i < end; i += 32) {
      const uint32_t key = sampling::prob_key(row[i], max_logit, inv_temperature);
      mass += key >= threshold ? sampling::key_mass(key) : 0;
    }
    mass = warp_sum_u64(mass);
    if (lane == 0) sh.warp_total[warp] = mass;
  }
  __syncthreads();
  if (warp == 0) {
    const unsigned long long mass = sh.warp_total[lane];
    const unsigned long long incl = warp_inclusive_scan_u64(mass, lane);
    const unsigned long long target = sampling::draw_target(s.uniform, __shfl_sync(kFull, incl, 31));
    const unsigned past = __ballot_sync(kFull, incl > target);  // never empty: target < total
    const int segment = past ? __ffs(past) - 1 : kSampleWarps - 1;
    if (lane == segment) {
      sh.segment = segment;
      sh.segment_target = target - (incl - mass);
      sh.found = -1;
    }
  }
  __syncthreads();

  // Block-wide inclusive scan of the segment in id order, one id per thread per tile: the drawn
  // token is the one whose running mass passes the target.
  const int begin = sh.segment * segment_len, end = min(vocab, begin + segment_len);
  const unsigned long long target = sh.segment_target;
  unsigned long long carry = 0;
  for (int base = begin; base < end; base += kSampleThreads) {
    const int i = base + tid;
    unsigned long long w = 0;
    if (i < end) {
      const uint32_t key = sampling::prob_key(row[i], max_logit, inv_temperature);
      w = key >= threshold ? sampling::key_mass(key) : 0;
    }
    const unsigned long long incl_in_warp = warp_inclusive_scan_u64(w, lane);
    __syncthreads();  // warp_total is free (previous tile read it)
    if (lane == 31) sh.warp_total[warp] = incl_in_warp;
    __syncthreads();
    const unsigned long long warp_incl = warp_inclusive_scan_u64(sh.warp_total[lane], lane);
    const unsigned long long warp_before = __shfl_sync(kFull, warp_incl - sh.warp_total[lane], warp);
    const unsigned long long incl = carry + warp_before + incl_in_warp;
    if (w != 0 && incl > target && incl - w <= target) sh.found = i;  // exactly one thread
    carry += __shfl_sync(kFull, warp_incl, 31);
    __syncthreads();
    if (sh.found >= 0) break;
  }
  if (tid == 0) ids[blockIdx.x] = sh.found >= 0 ? sh.found : 0;
}

}  // namespace

Status argmax(const float* logits, int64_t rows, int64_t vocab, int32_t* ids, cudaStream_t stream) {
  if (rows <= 0 || vocab <= 0) return make_error("argmax [rows={}, vocab={}]: empty input", rows, vocab);
  const bool vec4 = vocab % 4 == 0 && reinterpret_cast<uintptr_t>(logits) % 16 == 0;
  (vec4 ? argmax_kernel<true> : argmax_kernel<false>)<<<static_cast<unsigned>(rows), 1024, 0, stream>>>(logits, vocab,
                                                                                                     ids);
  return check(cudaGetLastError(), fmt::format("argmax [rows={}, vocab={}]", rows, vocab).c_str());
}

Status sample(const float* logits, int64_t rows, int64_t vocab, const RowSampling* sampling, int32_t* ids,
              cudaStream_t stream) {
  if (rows <= 0 || vocab <= 0) return make_error("sample [rows={}, vocab={}]: empty input", rows, vocab);
  if (vocab > kMaxSampleVocab) {
    return make_error("sample [rows={}, vocab={}]: vocabularies up to {} tokens are supported", rows, vocab,
                      kMaxSampleVocab);
  }
  if (rows > 0x7fffffff) return make_error("sample [rows={}]: too many rows", rows);
  sample_kernel<<<static_cast<unsigned>(rows), kSampleThreads, 0, stream>>>(logits, static_cast<int>(vocab),
                                                                            sampling, ids);
  return check(cudaGetLastError(), fmt::format("sample [rows={}, vocab={}]", rows, vocab).c_str());
}

}  // namespace kiln::cuda
