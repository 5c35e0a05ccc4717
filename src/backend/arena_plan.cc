#include "backend/arena_plan.h"

#include <algorithm>

namespace kiln {

Result<ArenaPlan> plan_arena(const Graph& graph, const std::vector<int64_t>& value_bytes, int64_t alignment,
                             const std::vector<int64_t>& node_scratch_bytes) {
  const size_t num_values = graph.values.size();
  std::vector<int> last_use(num_values, -1);
  for (size_t i = 0; i < graph.nodes.size(); ++i) {
    const Node& n = graph.nodes[i];
    for (const ValueRef& r : n.inputs) last_use[r.value] = static_cast<int>(i);
    last_use[n.output] = std::max(last_use[n.output], static_cast<int>(i));
  }
  last_use[graph.logits_value] = static_cast<int>(graph.nodes.size());  // read after the last node
  std::vector<int64_t> buffer_size;
  std::vector<bool> buffer_free;
  std::vector<int> value_buffer(num_values, -1);
  std::vector<int> scratch_buffer(graph.nodes.size(), -1);
  // The free buffer that best takes `need` bytes (grown if none fits; a new one if none is free).
  const auto take_buffer = [&](int64_t need) {
    int best = -1;
    for (size_t b = 0; b < buffer_size.size(); ++b) {
      if (!buffer_free[b]) continue;
      if (best < 0) {
        best = static_cast<int>(b);
        continue;
      }
      const bool fits = buffer_size[b] >= need, best_fits = buffer_size[best] >= need;
      if ((fits && (!best_fits || buffer_size[b] < buffer_size[best])) ||
          (!fits && !best_fits && buffer_size[b] > buffer_size[best])) {
        best = static_cast<int>(b);
      }
    }
    if (best < 0) {
      best = static_cast<int>(buffer_size.size());
      buffer_size.push_back(0);
      buffer_free.push_back(true);
    }
    buffer_size[best] = std::max(buffer_size[best], need);
    buffer_free[best] = false;
    return best;
  };
  for (size_t i = 0; i < graph.nodes.size(); ++i) {
    const int32_t out = graph.nodes[i].output;
    if (value_buffer[out] < 0) value_buffer[out] = take_buffer(value_bytes[out]);
    if (i < node_scratch_bytes.size() && node_scratch_bytes[i] > 0) {
      scratch_buffer[i] = take_buffer(node_scratch_bytes[i]);
      buffer_free[scratch_buffer[i]] = true;  // free again once node i is done
    }
    for (size_t v = 0; v < num_values; ++v) {
      if (value_buffer[v] >= 0 && last_use[v] == static_cast<int>(i)) buffer_free[value_buffer[v]] = true;
    }
  }
  ArenaPlan plan;
  std::vector<int64_t> buffer_offset(buffer_size.size(), 0);
  for (size_t b = 0; b < buffer_size.size(); ++b) {
    buffer_offset[b] = plan.total_bytes;
    plan.total_bytes += (buffer_size[b] + alignment - 1) / alignment * alignment;
  }
  plan.value_offset.assign(num_values, 0);
  for (size_t v = 0; v < num_values; ++v) {
    if (value_buffer[v] < 0) return make_error("graph value '{}' is read but never written", graph.values[v].name);
    plan.value_offset[v] = buffer_offset[value_buffer[v]];
  }
  plan.node_scratch_offset.assign(graph.nodes.size(), -1);
  for (size_t i = 0; i < graph.nodes.size(); ++i) {
    if (scratch_buffer[i] >= 0) plan.node_scratch_offset[i] = buffer_offset[scratch_buffer[i]];
  }
  return plan;
}

}  // namespace kiln
