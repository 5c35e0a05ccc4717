// CPU kernels. Activations are float32 row-major; weights may be F32/F16/BF16.
// Each kernel has an AVX2/FMA path chosen at run time when the CPU supports it and a scalar fallback
// (force the scalar path with set_force_scalar(true), used by tests). Launchers validate arguments with
// assert only: shapes are checked once when the engine is loaded, not per call.
#pragma once

#include <cstdint>

#include "backend/cpu/thread_pool.h"
#include "common/dtype.h"
#include "common/quant.h"

namespace kiln::cpu {

bool cpu_has_avx2_fma();
void set_force_scalar(bool force);  // tests compare both paths
bool using_avx2();                  // AVX2 path active

// y[m, n] = sum_k x[m, k] * w[n, k] (+ bias[n])
//   x: [M, K] f32, row stride K;  w: [N, K] of w_dtype (F32/F16/BF16);  bias: [N] f32 or null;
//   y: [M, N] f32, row stride ldy (>= N) so outputs can land in a column slice of a wider buffer.
void matmul(const float* x, int64_t M, int64_t K, const void* w, DType w_dtype, int64_t N,
            const float* bias, float* y, int64_t ldy, ThreadPool& pool);

// The same product with a quantized weight (common/quant.h): W[n, k] = scale * q + min per group.
// Decode (M <= 8) dequantizes in registers as it streams the codes (each code byte read once);
// prefill dequantizes panels of rows to f32 and runs the f32 tiles, or, with bf16_prefill on a CPU
// with AVX512_BF16 (a BF16 engine's choice), to BF16 and runs the BF16 tiles (activations rounded to
// BF16, f32 sums: the arithmetic of a BF16 matrix, ~2x the f32 rate). Activations past K read as 0.
// With w.info.act_bits == 8 (W8A8) the activation rows are first rounded to int8
// (quantize_activation_row) and the products are integer dot products (AVX2 maddubs).
void matmul_quant(const float* x, int64_t M, int64_t K, const QuantMatrixView& w, const float* bias, float* y,
                  int64_t ldy, ThreadPool& pool, bool bf16_prefill = false);

// y[m, :] = x[m, :] / sqrt(mean(x[m, :]^2) + eps) * weight   (HF LlamaRMSNorm, computed in f32)
//   x, y: [M, D] (may alias);  weight: [D] f32
void rms_norm(const float* x, const float* weight, int64_t M, int64_t D, float eps, float* y);

// In place: x[m, :] += r[m, :]   both [M, D]
void add(float* x, const float* r, int64_t M, int64_t D);

// Rotary embedding in place on `num_heads` heads of each row of x.
//   x: [M, row_stride] f32, the heads start at column `col_offset`, each head_dim wide;
//   positions: [M];  cos, sin: [max_position, head_dim / 2] tables (frequency i at column i).
//   interleaved = false: pairs (j, j + head_dim/2) (HF rotate_half); true: pairs (2j, 2j+1) (llama2.c).
void rope(float* x, int64_t M, int64_t row_stride, int64_t col_offset, int64_t num_heads,
          int64_t head_dim, const int32_t* positions, const float* cos, const float* sin,
          bool interleaved);

// out[m, f] = silu(gate_up[m, f]) * gate_up[m, F + f]
//   gate_up: [M, 2F] (gate first, then up);  out: [M, F]
void swiglu(const float* gate_up, int64_t M, int64_t F, float* out);

// out[m, :] = table[ids[m], :]   table: [V, D] of dtype;  out: [M, D] f32
void embedding(const int32_t* ids, int64_t M, const void* table, DType dtype, int64_t D, float* out);

// Element type of a paged KV cache (backend/cpu/README.md has the layouts and bytes per row).
enum class KvDtype : uint8_t { F32, F16, Int8 };

// Paged KV cache, one layer, in one of three element types:
//   f32:  k_cache, v_cache: [num_blocks, block_size, num_kv_heads, head_dim] f32.
//   f16:  k_f16, v_f16: [num_blocks, block_size, num_kv_heads, head_dim] IEEE half bits (k_cache /
//         v_cache null): x rounded to nearest even as it is stored, |x| > 65504 -> inf, as any fp16
//         cache (llama.cpp's default KV type, vLLM's "auto" for fp16 models).
//   int8: k_codes, v_codes: [num_blocks, block_size, num_kv_heads, head_dim] int8 and
//         k_scales, v_scales: [num_blocks, block_size, num_kv_heads] f32 (k_cache/v_cache null):
//         row (slot, head) holds x ≈ scale * code, symmetric, scale = max|x| / 127 of that row
//         ("dynamic per token and head", as llama.cpp's q8_0 KV and vLLM's per-token int8 KV).
// The type is the family of arrays that is set (exactly one).
struct PagedKv {
  float* k_cache;
  float* v_cache;
  int64_t num_blocks;
  int64_t block_size;
  int64_t num_kv_heads;
  int64_t head_dim;
  int8_t* k_codes = nullptr;
  float* k_scales = nullptr;
  int8_t* v_codes = nullptr;
  float* v_scales = nullptr;
  uint16_t* k_f16 = nullptr;
  uint16_t* v_f16 = nullptr;

  KvDtype dtype() const { return k_codes ? KvDtype::Int8 : k_f16 ? KvDtype::F16 : KvDtype::F32; }
  bool is_int8() const { return dtype() == KvDtype::Int8; }
};

// Quantizes one row x[n] to codes[n] with scale max|x| / 127 (round to nearest even, |code| <= 127);
// an all-zero row gets scale 0 and zero codes. Returns the scale.
float quantize_kv_row(const float* x, int64_t n, int8_t* codes);

// Writes token m's key/value into slot slot_mapping[m] (= block * block_size + offset in block);
// an f16 cache rounds each element to nearest even (the same bits as f32_to_f16 on both paths; AVX2:
// F16C vcvtps2ph), an int8 cache quantizes each (token, kv head) row as it stores it (quantize_kv_row).
//   k, v: rows of [num_kv_heads * head_dim] at k + m * row_stride (may be column slices of a QKV buffer)
void kv_cache_write(const float* k, const float* v, int64_t M, int64_t row_stride,
                    const int32_t* slot_mapping, const PagedKv& kv);

// Causal attention of M query tokens from several sequences over the paged cache (after
// kv_cache_write of the same tokens). Token m belongs to sequence token_seq[m] and sits at position
// positions[m]; it attends to that sequence's positions 0..positions[m], found through
// block_tables[token_seq[m] * max_blocks_per_seq + position / block_size]. GQA: query head h reads
// kv head h / (num_heads / num_kv_heads). Softmax in f32 with max subtraction. f16 and int8 caches
// are read as they are stored: halves (F16C vcvtph2ps) or codes are widened to f32 in registers inside
// the q·k dot and the p·v accumulation (the f16 values are exact in f32, so the arithmetic is the f32
// path's); an int8 row scale multiplies the dot (keys) or the softmax weight (values), once per row.
//   q: rows of [num_heads * head_dim] at q + m * q_stride;  out: [M, num_heads * head_dim]
void paged_attention(const float* q, int64_t M, int64_t q_stride, const int32_t* token_seq,
                     const int32_t* positions, const int32_t* block_tables,
                     int64_t max_blocks_per_seq, const PagedKv& kv, int64_t num_heads, float scale,
                     float* out, ThreadPool& pool);

}  // namespace kiln::cpu
