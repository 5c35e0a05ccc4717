#include "backend/kernel_plan.h"

namespace kiln {

const QuantInfo* node_quant(const Graph& graph, const Node& node) {
  if ((node.op != OpKind::Linear && node.op != OpKind::SwiGluLinear) || node.weights.empty()) return nullptr;
  const auto it = graph.weights.find(node.weights[0]);
  return it != graph.weights.end() && it->second.quant ? &*it->second.quant : nullptr;
}

bool cuda_gemv_swiglu_layout(const Graph& graph, const Node& node) {
  if (node.op != OpKind::SwiGluLinear || node.inputs[0].width % 8 != 0 || node_quant(graph, node)) return false;
  for (const ValueRef& r : node.inputs) {
    if (r.col_offset % 8 != 0 || graph.values[r.value].width % 8 != 0) return false;
  }
  return true;
}

bool cuda_attention_vector_layout(const Graph& graph, const Node& node) {
  bool vector_layout = static_cast<int64_t>(node.attr("head_dim")) % 8 == 0;
  for (const ValueRef& r : node.inputs) {
    vector_layout = vector_layout && r.col_offset % 8 == 0 && graph.values[r.value].width % 8 == 0;
  }
  return vector_layout;
}

bool cuda_decode_fuses_rope_kv(const Graph& graph, const Node& node) {
  if (node.op != OpKind::Attention || !cuda_attention_vector_layout(graph, node)) return false;
  return node.attr("rope") == 0.0 || static_cast<int64_t>(node.attr("head_dim")) % 16 == 0;
}

int cuda_glu_consumer(const Graph& graph, size_t linear) {
  const Node& n = graph.nodes[linear];
  if (n.op != OpKind::Linear || n.output == graph.logits_value || n.inputs[0].width % 8 != 0 || node_quant(graph, n)) return -1;
  const int64_t width = graph.values[n.output].width;
  if (width % 2 != 0) return -1;
  int consumer = -1;
  for (size_t j = 0; j < graph.nodes.size(); ++j) {
    for (const ValueRef& r : graph.nodes[j].inputs) {
      if (r.value != n.output) continue;
      if (consumer >= 0 && consumer != static_cast<int>(j)) return -1;  // a second reader
      consumer = static_cast<int>(j);
    }
  }
  if (consumer < 0) return -1;
  const Node& c = graph.nodes[static_cast<size_t>(consumer)];
  const int64_t F = width / 2;
  if (c.op != OpKind::SwiGluLinear || c.inputs.size() != 2 || node_quant(graph, c)) return -1;
  const ValueRef &gate = c.inputs[0], &up = c.inputs[1];
  const bool halves = gate.value == n.output && up.value == n.output && gate.col_offset == 0 && gate.width == F &&
                      up.col_offset == F && up.width == F;
  return halves ? consumer : -1;
}

std::string kernels_for_node(const std::string& backend, const Graph& graph, const Node& node, bool decode) {
  const bool cuda = backend == "cuda";
  switch (node.op) {
    case OpKind::Embedding: return "embedding";
    case OpKind::RmsNorm: return "rms_norm";
    case OpKind::AddRmsNorm: return cuda ? "add_rms_norm" : "add + rms_norm";
    case OpKind::Add: return "add";
    case OpKind::Rope: return "rope";
    case OpKind::SwiGlu: return "swiglu";
    case OpKind::SelectLogitRows: return cuda ? "gather_rows" : "copy rows";
    case OpKind::Linear:
      if (const QuantInfo* q = node_quant(graph, node); q && cuda) {
        const std::string what = quant_describe(*q, node.inputs[0].width);
        return decode ? "gemv_quant (" + what + ", tensor cores)" : "dequantize + cublasLt gemm (" + what + ")";
      }
      if (!cuda) return "matmul";
      if (!decode) return "cublasLt gemm";
      for (size_t i = 0; i < graph.nodes.size(); ++i) {
        if (&graph.nodes[i] == &node && cuda_glu_consumer(graph, i) >= 0)
          return "gemv (gemv_glu: swiglu in its epilogue when tactics keep swiglu out of the next GEMV)";
      }
      return "gemv";
    case OpKind::SwiGluLinear:
      // CUDA decode: the GEMV applies SwiGLU to its input as it loads it (tactics may still pick
      // swiglu + gemv or swiglu + cublasLt gemm for a shape where that measured faster).
      if (const QuantInfo* q = node_quant(graph, node); q && cuda) {
        const std::string what = quant_describe(*q, node.inputs[0].width);
        return decode ? "swiglu + gemv_quant (" + what + ", tensor cores)" : "swiglu + dequantize + cublasLt gemm (" + what + ")";
      }
      if (!cuda) return "swiglu + matmul";
      if (!decode) return "swiglu + cublasLt gemm";
      if (cuda_gemv_swiglu_layout(graph, node)) return "gemv_swiglu";
      // SwiGLU apart: in the gate_up GEMV's epilogue (gemv_glu) when this node is its only reader.
      for (size_t i = 0; i < graph.nodes.size(); ++i) {
        const int consumer = cuda_glu_consumer(graph, i);
        if (consumer >= 0 && &graph.nodes[static_cast<size_t>(consumer)] == &node)
          return "cublasLt gemm (swiglu in gate_up's gemv_glu)";
      }
      return "swiglu + cublasLt gemm";
    case OpKind::Attention: {
      if (cuda && decode && cuda_decode_fuses_rope_kv(graph, node)) {
        // What the decode graphs run (eager or profiled steps, and KILN_CUDA_DECODE_ROPE_KV=0, keep the
        // separate rope_kv_write).
        return node.attr("rope") != 0.0 ? "attention_decode (split-K, with rope + kv write)"
                                         : "attention_decode (split-K, with kv write)";
      }
      std::string cache;
      if (node.attr("rope") != 0.0) {
        cache = cuda && cuda_attention_vector_layout(graph, node) ? "rope_kv_write" : "rope(q) + rope(k) + kv_cache_write";
      } else {
        cache = "kv_cache_write";
      }
      if (!cuda) return cache + " + paged_attention";
      const int64_t head_dim = static_cast<int64_t>(node.attr("head_dim"));
      const bool prefill_kernel = !decode && (head_dim == 64 || head_dim == 128);
      return cache + (prefill_kernel ? " + attention_prefill (flash, tensor cores)" : " + attention_decode (split-K)");
    }
  }
  return "?";
}

}  // namespace kiln
