// Which kernels a backend launches for a graph node, for `kiln inspect` (mirrors the dispatch in
// backend/cuda/cuda_backend.cc and backend/cpu_backend.cc; the CUDA decode count is also measured
// exactly from the captured graph by `kiln bench`).
#pragma once

#include <string>

#include "graph/graph.h"

namespace kiln {

// GEMV serves Linear layers of at most this many rows on CUDA; cuBLASLt serves larger ones.
inline constexpr int64_t kCudaGemvMaxRows = 4;

// The QuantInfo of a Linear / SwiGluLinear node's matrix (weights[0]) when it is quantized, else null.
// The CUDA executor runs such a node on gemv_quant (up to kGemvQuantMaxRows rows) or dequantize +
// cuBLASLt, with none of the fp16 GEMV's fusions (gemv_swiglu, gemv_glu, norms).
const QuantInfo* node_quant(const Graph& graph, const Node& node);

// Whether a SwiGluLinear's gate and up rows suit the CUDA GEMV that applies SwiGLU as it loads its
// input (16-byte vectors: K, column offsets and row strides multiples of 8 elements).
bool cuda_gemv_swiglu_layout(const Graph& graph, const Node& node);

// Whether an Attention node's q, k and v suit 16-byte vectors (head_dim, column offsets and row
// strides multiples of 8 elements): the CUDA executor then rotates and writes the cache with
// rope_kv_write (one kernel instead of rope, rope, kv_cache_write).
bool cuda_attention_vector_layout(const Graph& graph, const Node& node);

// Whether the CUDA decode steps of an Attention node run RoPE and the KV-cache write inside the
// split-K attention kernel (paged_attention_decode): q, k, v in 16-byte vectors and, with RoPE,
// head_dim a multiple of 16. Prefill steps (and other layouts) launch rope_kv_write (or rope +
// kv_cache_write) first.
bool cuda_decode_fuses_rope_kv(const Graph& graph, const Node& node);

// For a Linear node (index `linear`) whose output is read only by one SwiGluLinear, as its gate
// (columns [0, F)) and up (columns [F, 2F)) halves: that node's index, else -1. When the SwiGluLinear
// runs SwiGLU as a separate kernel (swiglu + gemv / gemm), the CUDA executor's decode steps compute
// the Linear with gemv_glu instead, SwiGLU in its epilogue, and the separate swiglu kernel goes away.
int cuda_glu_consumer(const Graph& graph, size_t linear);

// "gemv", "cublasLt gemm", "rope_kv_write + paged_attention(decode split-K)", ...
// decode: a step of one token per sequence (few rows); otherwise a prefill step.
std::string kernels_for_node(const std::string& backend, const Graph& graph, const Node& node, bool decode);

}  // namespace kiln
