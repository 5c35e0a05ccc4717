// Activation memory planning shared by the backends: values that are never live at the same time
// share a buffer, so a 32-layer model needs a handful of buffers, not hundreds.
#pragma once

#include <cstdint>
#include <vector>

#include "common/error.h"
#include "graph/graph.h"

namespace kiln {

struct ArenaPlan {
  std::vector<int64_t> value_offset;  // [value] byte offset into the arena
  int64_t total_bytes = 0;
};

// value_bytes[v]: capacity value v needs (its largest step). Greedy over the node order: a value
// takes the smallest free buffer that fits, else grows the largest free one, else opens a new one;
// a buffer frees up after its value's last use (the logits value lives to the end).
Result<ArenaPlan> plan_arena(const Graph& graph, const std::vector<int64_t>& value_bytes, int64_t alignment);

}  // namespace kiln
