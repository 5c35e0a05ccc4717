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
  std::vector<int64_t> node_scratch_offset;  // [node] byte offset of the node's scratch, -1 if it has none
  int64_t total_bytes = 0;
};

// value_bytes[v]: capacity value v needs (its largest step). Greedy over the node order: a value
// takes the smallest free buffer that fits, else grows the largest free one, else opens a new one;
// a buffer frees up after its value's last use (the logits value lives to the end).
// node_scratch_bytes[i] (optional, 0 = none): scratch node i needs while it runs (e.g. the SwiGLU of
// a SwiGluLinear before a GEMM). It is placed like a value written by node i and dead after it, so it
// never overlaps node i's inputs or output.
Result<ArenaPlan> plan_arena(const Graph& graph, const std::vector<int64_t>& value_bytes, int64_t alignment,
                             const std::vector<int64_t>& node_scratch_bytes = {});

}  // namespace kiln
