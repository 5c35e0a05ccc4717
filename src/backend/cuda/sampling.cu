// Greedy sampling on the device: one block per logits row, so only token ids cross to the host.
#include <cfloat>

#include "backend/cuda/sampling.h"

namespace kiln::cuda {

namespace {

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

__global__ void argmax_kernel(const float* __restrict__ logits, int64_t vocab, int32_t* __restrict__ ids) {
  const float* row = logits + blockIdx.x * vocab;
  float best = -FLT_MAX;
  int32_t best_id = 0x7fffffff;
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
    const float v = row[i];
    if (v > best || (v == best && i < best_id)) {
      best = v;
      best_id = static_cast<int32_t>(i);
    }
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

}  // namespace

Status argmax(const float* logits, int64_t rows, int64_t vocab, int32_t* ids, cudaStream_t stream) {
  if (rows <= 0 || vocab <= 0) return make_error("argmax [rows={}, vocab={}]: empty input", rows, vocab);
  argmax_kernel<<<static_cast<unsigned>(rows), 1024, 0, stream>>>(logits, vocab, ids);
  return check(cudaGetLastError(), fmt::format("argmax [rows={}, vocab={}]", rows, vocab).c_str());
}

}  // namespace kiln::cuda
