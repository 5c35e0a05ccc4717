// Graph -> graph rewrites of the build side, one per file. Each leaves graph.validate() true and
// keeps the WeightStore holding exactly the tensors the graph names.
#pragma once

#include "common/error.h"
#include "graph/graph.h"
#include "graph/weight_store.h"

namespace kiln {

// Matrices (linear weights, embedding tables; quantized ones stay as they are) to `matrix_dtype`; norm weights and biases to F32,
// the precision the kernels accumulate in.
Status convert_precision(Graph& graph, WeightStore& weights, DType matrix_dtype);

// q, k, v projections feeding one Attention node -> one Linear "<layer>.attn.qkv" [Nq+Nk+Nv, D].
// Returns how many groups were fused.
Result<int> fuse_qkv(Graph& graph, WeightStore& weights);

// gate and up projections feeding one SwiGlu (or SwiGluLinear) -> one Linear "<layer>.mlp.gate_up" [2F, D].
Result<int> fuse_gate_up(Graph& graph, WeightStore& weights);

// A residual Add immediately followed by the RmsNorm of its result -> one AddRmsNorm (one pass over
// the residual stream instead of two). Returns how many pairs were fused.
Result<int> fuse_add_rms_norm(Graph& graph);

// Rope nodes on the q and k slices that feed an Attention node move into that node (attrs rope = 1,
// rope_*): backends then rotate q and k as they write the cache (one kernel instead of three on CUDA).
Result<int> fuse_rope_into_attention(Graph& graph);

// A SwiGlu whose only reader is a Linear over its whole output -> one SwiGluLinear reading the gate
// and up slices directly: backends apply silu(gate) * up as they load the Linear's input (CUDA decode:
// one GEMV instead of a swiglu kernel and a GEMV, and no [rows, F] activation written and read back).
// Returns how many were fused.
Result<int> fuse_swiglu_into_linear(Graph& graph);

}  // namespace kiln

namespace kiln {

// The matrices quantization applies to: weights[0] of every Linear and SwiGluLinear node, in graph
// order, each once; `lm_head` is set to the one computing the logits (or "" when none).
struct QuantizableWeights {
  std::vector<std::string> names;
  std::string lm_head;
};
QuantizableWeights quantizable_weights(const Graph& graph);

// Replaces weight `name` (a Linear / SwiGluLinear matrix) by a quantized matrix: the graph declares
// it with its code dtype and QuantInfo, the store holds NAME, NAME.scales and NAME.mins. A weight
// shared with a node that cannot read it quantized (a tied embedding table) is first split: those
// nodes keep the original under its name and the Linear nodes read "<name>.linear".
Status set_quantized_weight(Graph& graph, WeightStore& weights, const std::string& name, const QuantizedMatrix& q);

}  // namespace kiln
