// Shared pieces of the paged-attention kernels (attention.cu dispatches, attention_decode.cu holds the
// split-K flash-decoding kernels, attention_prefill.cu the tensor-core tiled kernel).
//
// Work split between the two kernels, decided on the device so that the launcher needs no host copy
// of the batch: query rows are cut into tiles of kPrefillTileRows consecutive rows. A tile whose rows
// all belong to one sequence and that has at least kPrefillMinRows rows (a prefill chunk) belongs to
// the tiled kernel; every other row (decode tokens, short or mixed tiles) belongs to the split-K
// kernel. Both kernels evaluate the same predicate, prefill_tile_owns_row(), so every row is written
// exactly once whatever the mix.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "backend/cuda/act_traits.cuh"
#include "backend/cuda/kernels.h"

namespace kiln::cuda::attention {

constexpr int kPrefillTileRows = 64;  // query rows per tiled-kernel CTA
constexpr int kPrefillMinRows = 16;   // fewer rows of one sequence in a tile: split-K kernel instead
constexpr int kMaxHeadDim = 256;
constexpr float kLog2e = 1.4426950408889634f;

// Everything both kernels read; all pointers are device pointers.
struct Params {
  const void* q;  // rows at q + m * q_ld, [num_heads * head_dim] wide
  int64_t q_ld;
  void* out;            // [M, num_heads * head_dim]
  const void* k_cache;  // [num_blocks, block_size, num_kv_heads, head_dim]
  const void* v_cache;
  const int32_t* token_seq;     // [M]
  const int32_t* positions;     // [M]
  const int32_t* block_tables;  // [num_seqs, max_blocks_per_seq]
  int64_t max_blocks_per_seq;
  int num_tokens;
  int num_heads;
  int num_kv_heads;
  int head_dim;
  int block_size;
  float scale_log2;      // softmax scale * log2(e): scores are kept in the exp2 domain
  bool prefill_enabled;  // false: the split-K kernel owns every row
  // Decode steps only (paged_attention_decode; new_k non-null): q is not yet rotated and the cache
  // lacks the step's own k/v; the split-K kernel rotates q as it stages it, reads each token's newest
  // k/v row from new_k/new_v (rotating k) instead of the cache and stores it there (slot >= 0).
  const void* new_k;  // [M] rows at new_k + m * new_k_ld, num_kv_heads * head_dim wide
  int64_t new_k_ld;
  const void* new_v;
  int64_t new_v_ld;
  const int32_t* slots;  // [M] cache slot of each token; negative (padding) or >= num_slots: not stored
  int64_t num_slots;
  const float* rope_cos;  // [max_position, head_dim / 2]; null: no rotation
  const float* rope_sin;
  bool rope_interleaved;  // llama2.c pairs (2j, 2j + 1); else HF (j, j + head_dim / 2)
};

// Activation traits and 16-byte conversions: act_traits.cuh's (one definition for every kernel).
using detail::Act;
using detail::pack8;
using detail::unpack8;

// Cache row (slot * num_kv_heads + kv_head) of position p of a sequence, through its block table.
__device__ __forceinline__ int64_t cache_row(const Params& p, const int32_t* table, int position,
                                             int kv_head) {
  const int64_t block = table[position / p.block_size];
  const int64_t slot = block * p.block_size + position % p.block_size;
  return slot * p.num_kv_heads + kv_head;
}

// True if the tiled prefill kernel writes row m (see the top of this file). Called by a whole warp
// (all 32 lanes, converged); every lane gets the same answer.
__device__ __forceinline__ bool prefill_tile_owns_row(const Params& p, int m) {
  if (!p.prefill_enabled) return false;
  const int tile_begin = m / kPrefillTileRows * kPrefillTileRows;
  const int rows = min(kPrefillTileRows, p.num_tokens - tile_begin);
  if (rows < kPrefillMinRows) return false;
  const int lane = threadIdx.x % 32;
  const int seq0 = p.token_seq[tile_begin];
  bool same = true;
  for (int r = lane; r < rows; r += 32) same &= p.token_seq[tile_begin + r] == seq0;
  return __all_sync(0xffffffffu, same);
}

// Split-K chunking, decided on the device from each token's real context (position + 1): the host
// only bounds the number of splits (it knows max_position, which a captured CUDA graph sets to the
// engine's max sequence length, not the real context). A token of context L gets chunks of
// max(kDecodeMinChunk, L / splits rounded up to kDecodeChunkAlign) positions; CTAs past the last
// chunk exit at once, and a context that fits one chunk is written by its CTA directly (no merge).
constexpr int kDecodeMinChunk = 32;  // one step of the decode CTA (4 warps x 8 positions at head_dim 128)
constexpr int kDecodeChunkAlign = 32;
constexpr int kDecodeMaxSplits = 64;  // the merge holds one split per lane, two per lane at most
__host__ __device__ __forceinline__ int decode_chunk(int context, int splits) {
  const int even = (context + splits - 1) / splits;
  const int aligned = (even + kDecodeChunkAlign - 1) / kDecodeChunkAlign * kDecodeChunkAlign;
  return aligned > kDecodeMinChunk ? aligned : kDecodeMinChunk;
}

// Launchers of the two paths (no argument checks: attention.cu validated them).
// Split-K: up to `splits` chunks per (token, kv head) (decode_chunk). `workspace` (16-byte aligned,
// null only when splits == 1) holds kDecodeCounterSlots arrival counters (zero before the call, zero
// after it), then the partial results of tokens whose context spans several chunks:
// [M, num_heads, splits, head_dim] accumulators and [M, num_heads, splits, 2] (max, sum) pairs. The
// last CTA of each (token, head tile) merges them. Needs M * num_kv_heads * head tiles <=
// kDecodeCounterSlots when splits > 1.
constexpr int kDecodeCounterSlots = 4096;
constexpr size_t kDecodeCounterBytes = kDecodeCounterSlots * sizeof(unsigned);
cudaError_t launch_decode(const Params& p, DType act, int splits, void* workspace, cudaStream_t stream);
// CTAs of the split-K kernel for p's shapes that one multiprocessor holds at once.
int decode_ctas_per_sm(const Params& p, DType act);
cudaError_t launch_prefill(const Params& p, DType act, cudaStream_t stream);
// Head dims the tiled kernel has instances for.
inline bool prefill_supports_head_dim(int head_dim) { return head_dim == 64 || head_dim == 128; }

}  // namespace kiln::cuda::attention
