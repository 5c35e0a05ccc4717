// CUDA kernels of the CUDA backend, behind plain C++ launchers (callers need only cuda_runtime.h).
//
// Conventions
//   - Activations are row-major in the engine's activation dtype `act` (F16 or BF16): pointers are
//     void* plus a DType. Accumulation is always f32. Norm weights, biases, RoPE tables are f32.
//   - Every launcher checks its arguments (dtypes, sizes, alignment it relies on) and returns a
//     Status naming the kernel and the shapes; after launching it checks cudaGetLastError().
//   - Launchers never allocate and never synchronize: they are captured into CUDA graphs.
//   - Row strides are in elements. "[M, N] stride ld" means element (m, n) is at m * ld + n.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "common/dtype.h"
#include "common/error.h"

namespace kiln::cuda {

// Turns a CUDA error into a Status "<what>: <cudaGetErrorString>".
Status check(cudaError_t error, const char* what);

// ---- GEMV / small-batch GEMM for decode (weights streamed at memory bandwidth) ----
// y[m, n] = sum_k x[m, k] * w[n, k] (+ bias[n]),  M in [1, 8]
//   x: [M, K] act dtype, stride K (16-byte aligned rows: K % 8 == 0);
//   w: [N, K] same dtype as x;  bias: [N] f32 or null;
//   y: [M, N] stride ldy, dtype y_dtype (act dtype, or F32 for logits).
// Fusions of a GEMV with its neighbours in a decode step (none by default):
//   norm_weight: x is the residual stream [M, K] and the GEMV multiplies rms_norm(x) * norm_weight
//     (f32 [K], eps norm_eps) instead, computed per block exactly as rms_norm() computes it (same
//     bits); needs M * K * 2 bytes of shared memory. gemv and gemv_glu.
//   residual_out: y (act dtype) is the residual stream, y = round(y + round(result)), as
//     add_rms_norm() adds a stored result to it (same bits). gemv and gemv_swiglu.
struct GemvFusion {
  const float* norm_weight = nullptr;
  float norm_eps = 0.0f;
  bool residual_out = false;
};

Status gemv(const void* x, int64_t M, int64_t K, const void* w, int64_t N, const float* bias, void* y,
            int64_t ldy, DType act, DType y_dtype, cudaStream_t stream, const GemvFusion& fusion = {});
constexpr int64_t kGemvMaxRows = 8;
// The same with SwiGLU applied to the input as it is loaded (an MLP's down projection reading the
// gate_up output):  y[m, n] = sum_k round(silu(gate[m, k]) * up[m, k]) * w[n, k] (+ bias[n]),
// round() to the act dtype; bit-identical to swiglu() into [M, K] followed by gemv().
//   gate, up: [M, K] act dtype at row strides gate_ld / up_ld (multiples of 8, 16-byte aligned
//   pointers; fused gate_up: up = gate + K, both strides 2K);  w, bias, y as for gemv.
Status gemv_swiglu(const void* gate, int64_t gate_ld, const void* up, int64_t up_ld, int64_t M, int64_t K,
                   const void* w, int64_t N, const float* bias, void* y, int64_t ldy, DType act,
                   DType y_dtype, cudaStream_t stream, const GemvFusion& fusion = {});

// A fused gate_up projection with SwiGLU as its epilogue (an MLP's up half at decode):
//   y[m, f] = round(silu(g) * u),  g = round(sum_k x[m, k] w[f, k] + bias[f]),
//                                  u = round(sum_k x[m, k] w[F + f, k] + bias[F + f]),
// round() to the act dtype; bit-identical to gemv() into [M, 2F] followed by swiglu() on its two
// halves. w: [2F, K] (gate rows, then up rows); bias: [2F] f32 or null; y: [M, F] act, stride ldy.
Status gemv_glu(const void* x, int64_t M, int64_t K, const void* w, int64_t F, const float* bias, void* y,
                int64_t ldy, DType act, cudaStream_t stream, const GemvFusion& fusion = {});

// ---- quantized weights (common/quant.h: int8 / int4 codes, a scale and optional min per group) ----
// A quantized matrix W[N, K] in device memory: the fields of common/quant.h's QuantInfo and
// QuantMatrixView (that header is C++20; CUDA sources are C++17). Codes [N, row_bytes] 16-byte
// aligned, row_bytes = K padded to a multiple of 32, halved for int4 (GGUF Q4_0 nibble order); scales
// and mins [N, ceil(K / group_size)], F16 or F32, W = scale * q + min (mins null: min = 0). Any layout
// validate_quant accepts: bits 4 or 8, group_size a multiple of 32 (int4) or 16 (int8), or >= K.
struct QuantWeightView {
  int bits = 0;
  int64_t group_size = 0;
  DType scale_dtype = DType::F16;
  int64_t rows = 0;  // N
  int64_t cols = 0;  // K
  const uint8_t* codes = nullptr;
  const void* scales = nullptr;
  const void* mins = nullptr;
};

// Decode GEMV on quantized weights: y[m, n] = sum_k x[m, k] * W[n, k] (+ bias[n]), M in [1, 32].
//   x: [M, K] act dtype (F16 / BF16), row stride K (any K: 16-byte vectors when K % 8 == 0 and x is
//   16-byte aligned, scalar loads otherwise); bias: [N] f32 or null; y: [M, N] stride ldy, act dtype or
//   F32. Weights are dequantized in registers (int4: q * scale + min as one packed fma in the act dtype;
//   int8: fmaf in f32, rounded once) and multiplied on tensor cores with f32 accumulation.
struct GemvQuantTuning {
  int k_split = 0;  // warps splitting K per 16-row tile: 1, 2, 4, 8; 0 = auto (by grid size)
  // Apply scale and min to each chunk's mma sums where the layout allows it (one group per row, or
  // groups of 4 units: int4 g128 and int8 g64 and their multiples); false: to every weight (for
  // comparison; the path every other layout takes).
  bool factored = true;
  // M <= 8: 1 runs the pipelined kernel (codes through a cp.async ring in shared memory), 0 the register
  // ring; -1 = auto (gemv_quant.cu's kPipelineAuto: the pipelined kernel where its shared memory leaves
  // two blocks per SM).
  int pipeline = -1;
  // Pipelined kernel only: 1 copies x into shared memory per block, 0 reads it through L1 (needs K % 8
  // == 0 and a 16-byte aligned x); -1 = auto (staged when it still leaves two blocks per SM).
  int stage_x = -1;
};
constexpr int64_t kGemvQuantMaxRows = 32;
Status gemv_quant(const void* x, int64_t M, const QuantWeightView& w, const float* bias, void* y, int64_t ldy,
                  DType act, DType y_dtype, cudaStream_t stream, const GemvQuantTuning& tuning = {});
// W expanded to the act dtype: out[n, k] = round(fmaf(q, scale, min)), out: [N, K] dense (row stride K).
// Prefill runs it into a scratch matrix, then cuBLASLt.
Status dequantize(const QuantWeightView& w, void* out, DType act, cudaStream_t stream);

// ---- normalization and elementwise ----
// y = rms_norm(x) * weight  (HF LlamaRMSNorm: f32 math, cast at the end).  x, y: [M, D]; weight: [D] f32
Status rms_norm(const void* x, const float* weight, int64_t M, int64_t D, float eps, void* y, DType act,
                cudaStream_t stream);
// Fused residual: x += r; y = rms_norm(x) * weight.  x (in/out), r, y: [M, D]
Status add_rms_norm(void* x, const void* r, const float* weight, int64_t M, int64_t D, float eps, void* y,
                    DType act, cudaStream_t stream);
// x += r   [M, D]
Status add(void* x, const void* r, int64_t M, int64_t D, DType act, cudaStream_t stream);
// out[m, f] = silu(gate[m, f]) * up[m, f]; gate/up rows at stride gate_ld / up_ld (fused gate_up:
// up = gate + F, both strides 2F).  out: [M, F]
Status swiglu(const void* gate, int64_t gate_ld, const void* up, int64_t up_ld, int64_t M, int64_t F, void* out,
              DType act, cudaStream_t stream);
// out[m, :] = table[ids[m], :]   table: [V, D] act dtype; ids: device int32 [M]
Status embedding(const int32_t* ids, int64_t M, const void* table, int64_t V, int64_t D, void* out, DType act,
                 cudaStream_t stream);
// out[r, :] = in[rows[r], :]   in: [*, D]; rows: device int32 [R]
Status gather_rows(const void* in, const int32_t* rows, int64_t R, int64_t D, void* out, DType act,
                   cudaStream_t stream);

// ---- rotary embedding, in place ----
// Heads of x: row m, columns [col_offset + h * head_dim, ... + head_dim) for h < num_heads; row stride ld.
// cos/sin: [max_position, head_dim / 2] f32; positions: device int32 [M].
// interleaved = false: pairs (j, j + head_dim/2) (HF); true: pairs (2j, 2j+1) (llama2.c).
Status rope(void* x, int64_t M, int64_t ld, int64_t col_offset, int64_t num_heads, int64_t head_dim,
            const int32_t* positions, const float* cos, const float* sin, bool interleaved, DType act,
            cudaStream_t stream);

// ---- paged KV cache and attention ----
// One layer's cache: k_cache, v_cache: [num_blocks, block_size, num_kv_heads, head_dim], act dtype.
struct PagedKv {
  void* k_cache;
  void* v_cache;
  int64_t num_blocks;
  int64_t block_size;
  int64_t num_kv_heads;
  int64_t head_dim;
};

// Writes token m's k/v (rows at k + m * ld, v + m * ld) into slot slot_mapping[m] (block * block_size
// + offset); negative slots are skipped (padding).  slot_mapping: device int32 [M]
Status kv_cache_write(const void* k, const void* v, int64_t M, int64_t ld, const int32_t* slot_mapping,
                      const PagedKv& kv, DType act, cudaStream_t stream);

// Fused rope(q) + rope(k) + kv_cache_write for one attention layer, same result as the composition:
// rotates the num_heads q heads (rows at q + m * q_ld) and the kv.num_kv_heads k heads (k + m * k_ld)
// in place (head_dim = kv.head_dim, pairing as in rope()), then writes token m's roped k and its v
// (v + m * v_ld) into slot slot_mapping[m]; negative slots are skipped (padding), rows still rotated.
// q/k/v may be slices of one fused QKV row (q_ld = k_ld = v_ld). Needs head_dim % 8 == 0, strides
// % 8 == 0, 16-byte aligned pointers and tables.  positions, slot_mapping: device int32 [M]
Status rope_kv_write(void* q, int64_t q_ld, int64_t num_heads, void* k, int64_t k_ld, const void* v, int64_t v_ld,
                     int64_t M, const int32_t* positions, const float* cos, const float* sin, bool interleaved,
                     const int32_t* slot_mapping, const PagedKv& kv, DType act, cudaStream_t stream);

// Device-side description of one attention step (all device pointers).
struct AttentionBatch {
  int64_t num_tokens;          // M
  const int32_t* token_seq;    // [M] sequence row of each token
  const int32_t* positions;    // [M] position of each token (attends to 0..position)
  const int32_t* block_tables; // [num_seqs, max_blocks_per_seq]
  int64_t max_blocks_per_seq;
  int64_t max_position;        // upper bound of positions[] + 1 in this step (sizes split-K work)
};

// Causal GQA attention over the paged cache for M query tokens of many sequences (mixed prefill and
// decode). q rows at q + m * q_ld (num_heads * head_dim wide); out: [M, num_heads * head_dim].
// `workspace` of attention_workspace_bytes(...) bytes serves split-K partial results and arrival
// counters; it must be zero-filled once before its first use (every call leaves the counters zero).
// Calls sharing a workspace must be ordered on one stream.
Status paged_attention(const void* q, int64_t q_ld, const AttentionBatch& batch, const PagedKv& kv,
                       int64_t num_heads, float scale, void* out, void* workspace, size_t workspace_bytes,
                       DType act, cudaStream_t stream);
size_t attention_workspace_bytes(int64_t max_tokens, int64_t num_heads, int64_t head_dim, int64_t max_seq_len);

// The step's own k and v rows for paged_attention_decode: k (not yet rotated) at k + m * k_ld, v at
// v + m * v_ld (num_kv_heads * head_dim wide, 16-byte aligned, strides multiples of 8), each token's
// cache slot (negative: padding, not stored) and the RoPE tables ([max_position, head_dim / 2] f32;
// null: no rotation).
struct NewTokens {
  const void* k;
  int64_t k_ld;
  const void* v;
  int64_t v_ld;
  const int32_t* slots;
  const float* rope_cos;
  const float* rope_sin;
  bool rope_interleaved;
};
// A decode step in one launch: rope_kv_write (q and k rotated, k and v stored at their slots) fused
// into paged_attention's split-K kernel, which rotates q as it stages it and takes each token's own
// k/v from `fresh` (storing them) instead of the cache. The result and the cache after it equal
// rope_kv_write + paged_attention bit for bit; q is left unrotated. Every token must belong to a
// different sequence (the token's k/v is visible to its own query only); head_dim % 16 == 0 with RoPE.
// Under programmatic dependent launch the kernel reads the cache rows of earlier positions before it
// waits for the previous kernel: no kernel launched since the last non-kernel operation on the stream
// (a copy, a synchronization) may write this layer's cache (the executor uploads each step's metadata
// first, and steps are synchronized).
Status paged_attention_decode(const void* q, int64_t q_ld, const AttentionBatch& batch, const NewTokens& fresh,
                              const PagedKv& kv, int64_t num_heads, float scale, void* out, void* workspace,
                              size_t workspace_bytes, DType act, cudaStream_t stream);

}  // namespace kiln::cuda
