#include "passes/fuse_linears.h"

#include <cstring>
#include <set>

namespace kiln {

int find_linear_producer(const Graph& graph, int32_t value) {
  for (size_t i = 0; i < graph.nodes.size(); ++i) {
    const Node& n = graph.nodes[i];
    if (n.op == OpKind::Linear && n.output == value) return static_cast<int>(i);
  }
  return -1;
}

Result<bool> fuse_sibling_linears(Graph& graph, WeightStore& weights, const std::vector<int>& node_indices,
                                  const std::string& fused_name, const std::string& fused_weight,
                                  const std::string& fused_bias) {
  if (node_indices.size() < 2) return false;
  const Node& first = graph.nodes.at(node_indices[0]);
  const bool has_bias = first.weights.size() > 1;
  std::vector<const TensorView*> mats, biases;
  for (int idx : node_indices) {
    const Node& n = graph.nodes.at(idx);
    if (n.op != OpKind::Linear || n.inputs[0].value != first.inputs[0].value ||
        n.inputs[0].col_offset != first.inputs[0].col_offset || n.inputs[0].width != first.inputs[0].width ||
        (n.weights.size() > 1) != has_bias) {
      return false;
    }
    const TensorView* w = weights.find(n.weights[0]);
    if (!w) return make_error("fuse '{}': weight '{}' not in the store", fused_name, n.weights[0]);
    if (w->dtype != weights.find(first.weights[0])->dtype) return false;
    // Quantized siblings fuse when their layouts are equal: codes, scales and mins are per row.
    if (graph.weights.at(n.weights[0]).quant != graph.weights.at(first.weights[0]).quant) return false;
    mats.push_back(w);
    if (has_bias) {
      const TensorView* b = weights.find(n.weights[1]);
      if (!b) return make_error("fuse '{}': bias '{}' not in the store", fused_name, n.weights[1]);
      if (b->dtype != weights.find(first.weights[1])->dtype) return false;
      biases.push_back(b);
    }
  }
  // The fused node must come after anything the input depends on and before any consumer: the
  // siblings all read the same input, so the first sibling's position is safe provided nothing
  // between the siblings writes that input (in-place ops could).
  const int first_index = node_indices.front();
  for (int i = first_index + 1; i <= node_indices.back(); ++i) {
    if (graph.nodes[i].output == first.inputs[0].value) return false;
  }

  auto concat_rows = [](const std::vector<const TensorView*>& parts) {
    uint64_t total = 0;
    for (const TensorView* p : parts) total += p->nbytes;
    std::vector<uint8_t> bytes(total);
    uint64_t at = 0;
    for (const TensorView* p : parts) {
      std::memcpy(bytes.data() + at, p->data, p->nbytes);
      at += p->nbytes;
    }
    return bytes;
  };
  int64_t total_out = 0;
  std::vector<int64_t> offsets;
  for (const TensorView* m : mats) {
    offsets.push_back(total_out);
    total_out += m->shape[0];
  }
  const WeightInfo first_info = graph.weights.at(first.weights[0]);
  const int64_t in_features = first_info.shape[1];
  const DType w_dtype = mats[0]->dtype;
  const WeightInfo fused_info{w_dtype, {total_out, in_features}, first_info.quant};
  for (const StoredTensor& part : stored_tensors(fused_weight, fused_info)) {
    // The same part (codes, scales or mins) of every sibling, stacked by rows.
    std::vector<const TensorView*> parts;
    for (int idx : node_indices) {
      const std::string& name = graph.nodes.at(idx).weights[0];
      const std::string source = name + part.name.substr(fused_weight.size());
      const TensorView* t = weights.find(source);
      if (!t) return make_error("fuse '{}': weight '{}' not in the store", fused_name, source);
      parts.push_back(t);
    }
    weights.put_owned(part.name, part.dtype, part.shape, concat_rows(parts));
  }
  graph.weights[fused_weight] = fused_info;
  std::vector<std::string> fused_weights{fused_weight};
  if (has_bias) {
    const DType b_dtype = biases[0]->dtype;
    weights.put_owned(fused_bias, b_dtype, {total_out}, concat_rows(biases));
    graph.weights[fused_bias] = WeightInfo{b_dtype, {total_out}};
    fused_weights.push_back(fused_bias);
  }

  const int32_t fused_value = graph.add_value(fused_name, total_out);
  std::vector<int32_t> old_values;
  for (int idx : node_indices) old_values.push_back(graph.nodes[idx].output);
  const ValueRef input = first.inputs[0];
  graph.nodes[first_index] = Node{OpKind::Linear, fused_name, {input}, fused_value, fused_weights, {}};

  // Remove the other siblings (back to front keeps indices valid).
  for (size_t i = node_indices.size(); i-- > 1;) graph.nodes.erase(graph.nodes.begin() + node_indices[i]);

  // Redirect every use of the old outputs to their slice of the fused output.
  for (Node& n : graph.nodes) {
    for (ValueRef& r : n.inputs) {
      for (size_t s = 0; s < old_values.size(); ++s) {
        if (r.value == old_values[s]) {
          r.value = fused_value;
          r.col_offset += offsets[s];
        }
      }
    }
    for (size_t s = 0; s < old_values.size(); ++s) {
      if (n.output == old_values[s]) n.output = fused_value;  // in-place ops on a slice
    }
  }
  remove_unused(graph, weights);
  return true;
}

void remove_unused(Graph& graph, WeightStore& weights) {
  std::set<std::string> used_weights;
  for (const Node& n : graph.nodes) used_weights.insert(n.weights.begin(), n.weights.end());
  for (auto it = graph.weights.begin(); it != graph.weights.end();) {
    it = used_weights.count(it->first) ? std::next(it) : graph.weights.erase(it);
  }
  std::set<std::string> stored;  // a quantized weight is stored as several tensors
  for (const auto& [name, info] : graph.weights) {
    for (const StoredTensor& part : stored_tensors(name, info)) stored.insert(part.name);
  }
  for (auto it = weights.tensors.begin(); it != weights.tensors.end();) {
    it = stored.count(it->first) ? std::next(it) : weights.tensors.erase(it);
  }
  remove_unused_values(graph);
}

void remove_unused_values(Graph& graph) {
  std::vector<bool> used_values(graph.values.size(), false);
  for (const Node& n : graph.nodes) {
    for (const ValueRef& r : n.inputs) used_values[r.value] = true;
    used_values[n.output] = true;
  }
  if (graph.logits_value >= 0) used_values[graph.logits_value] = true;
  std::vector<int32_t> remap(graph.values.size(), -1);
  std::vector<Value> kept;
  for (size_t i = 0; i < graph.values.size(); ++i) {
    if (!used_values[i]) continue;
    remap[i] = static_cast<int32_t>(kept.size());
    kept.push_back(graph.values[i]);
  }
  graph.values = std::move(kept);
  for (Node& n : graph.nodes) {
    for (ValueRef& r : n.inputs) r.value = remap[r.value];
    n.output = remap[n.output];
  }
  if (graph.logits_value >= 0) graph.logits_value = remap[graph.logits_value];
}

}  // namespace kiln
