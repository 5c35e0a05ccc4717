// Graph builder for the Llama family (Llama 1/2/3, Mistral, Qwen2, llama2.c checkpoints): the
// differences are flags of ModelConfig (GQA, q/k/v bias, tied embeddings, RoPE pairing/scaling).
//
// The graph is built unfused, op for op as HF's LlamaForCausalLM.forward; fusion is the business
// of passes/. Logits are computed only for the rows a step asks for (SelectLogitRows before the
// final norm), which is what generation needs.
#pragma once

#include <map>
#include <string>

#include "common/error.h"
#include "common/quant.h"
#include "common/tensor_view.h"
#include "format/model_config.h"
#include "graph/graph.h"
#include "graph/weight_store.h"

namespace kiln {

struct BuiltModel {
  Graph graph;
  WeightStore weights;  // exactly the tensors graph.weights names, still in their source dtype
};

// `tensors` uses HF names (model.layers.{i}.self_attn.q_proj.weight, ...). Every tensor the
// config implies must be present with the right shape; errors name the tensor, expected vs found.
// `quantized` holds Linear weights of a pre-quantized checkpoint (format/hf_quant.h) by the same
// names: the graph declares those quantized (common/quant.h) and they need no entry in `tensors`.
Result<BuiltModel> build_llama_graph(const ModelConfig& config, const std::map<std::string, TensorView>& tensors,
                                     std::map<std::string, QuantizedMatrix> quantized = {});

}  // namespace kiln
